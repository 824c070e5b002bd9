//! Gaussian conditional probability paths x_t = γ_t·x1 + σ_t·ε and their CFM targets
//! u_t = γ̇_t·x1 + σ̇_t·ε. The GPU side is `schedule()` in shaders/cfm.wgsl; adding a
//! path means one variant here and one branch there.

use crate::error::{Error, Result};

#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum GaussianPath {
    /// Conditional optimal transport (Lipman et al. 2023): γ_t = t, σ_t = 1 − (1 − σ_min)·t.
    Ot { sigma_min: f64 },
    /// Variance preserving, cosine: γ_t = sin(πt/2), σ_t = cos(πt/2).
    Vp,
}

impl GaussianPath {
    pub const NAMES: &'static str = "ot, vp";

    pub fn from_name(name: &str, sigma_min: f64) -> Result<Self> {
        if !(0.0..1.0).contains(&sigma_min) {
            return Err(Error::invalid(format!(
                "--sigma-min must be in [0, 1), got {sigma_min}"
            )));
        }
        match name {
            "ot" => Ok(GaussianPath::Ot { sigma_min }),
            "vp" => Ok(GaussianPath::Vp),
            _ => Err(Error::invalid(format!(
                "unknown path '{name}'; valid paths: {}",
                Self::NAMES
            ))),
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            GaussianPath::Ot { .. } => "ot",
            GaussianPath::Vp => "vp",
        }
    }

    /// Code of the path in cfm.wgsl (PATH_*).
    pub fn gpu_code(&self) -> u32 {
        match self {
            GaussianPath::Ot { .. } => 0,
            GaussianPath::Vp => 1,
        }
    }

    pub fn sigma_min(&self) -> f64 {
        match self {
            GaussianPath::Ot { sigma_min } => *sigma_min,
            GaussianPath::Vp => 0.0,
        }
    }

    /// (γ_t, σ_t, γ̇_t, σ̇_t).
    pub fn schedule(&self, t: f64) -> [f64; 4] {
        match self {
            GaussianPath::Ot { sigma_min } => {
                let k = 1.0 - sigma_min;
                [t, 1.0 - k * t, 1.0, -k]
            }
            GaussianPath::Vp => {
                let h = std::f64::consts::FRAC_PI_2;
                let (s, c) = (h * t).sin_cos();
                [s, c, h * c, -h * s]
            }
        }
    }
}
