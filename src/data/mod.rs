//! Training data: the built-in 2D toys and (later) user files, as flat row-major f32.

pub mod toys;

use crate::error::{Error, Result};
use rand::SeedableRng;

/// A data set in memory, row-major [n, dim].
#[derive(Clone, Debug)]
pub struct Dataset {
    pub name: String,
    pub dim: usize,
    pub points: Vec<f32>,
}

impl Dataset {
    pub fn len(&self) -> usize {
        self.points.len() / self.dim
    }
    pub fn is_empty(&self) -> bool {
        self.points.is_empty()
    }

    /// `n` points of a built-in toy, deterministic in `seed`.
    pub fn toy(name: &str, n: usize, seed: u64) -> Result<Self> {
        let toy = toys::Toy::from_name(name).ok_or_else(|| {
            Error::invalid(format!(
                "unknown dataset '{name}'; valid datasets: {}",
                toys::Toy::names()
            ))
        })?;
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        Ok(Dataset {
            name: toy.name().to_string(),
            dim: 2,
            points: toy.sample(n, &mut rng),
        })
    }
}
