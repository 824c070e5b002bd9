//! Data sets: the built-in 2D toys and user files (CSV, NPY), as flat row-major f32, with
//! per-column standardization and a held-out split.

pub mod stream;
pub mod toys;

use crate::error::{Error, Result};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use std::path::Path;

/// What fills the augmented dimensions of the source (the data's are zeros).
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    serde::Serialize,
    serde::Deserialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum AugmentFill {
    /// Independent N(0, 1) noise, as in ANODE.
    #[default]
    Noise,
    /// Copies of the source point's own coordinates (cyclically): straight conditional
    /// paths then stay apart where, with independent noise, they would collide.
    Copy,
}

/// A data set in memory, row-major [n, dim].
#[derive(Clone, Debug)]
pub struct Dataset {
    /// A toy name or the file path it came from.
    pub name: String,
    pub dim: usize,
    pub points: Vec<f32>,
    /// Class of each row (an index into `class_labels`), for class-conditional models.
    pub labels: Option<Vec<u32>>,
    /// The data's label value of each class, ascending (empty without labels).
    pub class_labels: Vec<i64>,
    /// A data file's values as parsed, in f64 and row-aligned with `points`, until
    /// [`standardize`](Self::standardize) uses them: statistics and standardization come
    /// from them, so a column of Unix times keeps its seconds. None for toys.
    pub exact: Option<Vec<f64>>,
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
                "unknown dataset '{name}'; valid datasets: {}, or a .csv/.npy file",
                toys::Toy::names()
            ))
        })?;
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        Ok(Dataset {
            name: toy.name().to_string(),
            dim: 2,
            points: toy.sample(n, &mut rng),
            labels: None,
            class_labels: Vec::new(),
            exact: None,
        })
    }

    /// A toy name, or a path ending in .csv or .npy.
    pub fn load(spec: &str, n_toy: usize, seed: u64, drop_nonfinite: bool) -> Result<Self> {
        let ext = Path::new(spec).extension().and_then(|e| e.to_str());
        match ext {
            Some("csv") | Some("npy") => Self::from_file(Path::new(spec), drop_nonfinite),
            _ => Self::toy(spec, n_toy, seed),
        }
    }

    /// Rows of a .csv (header row optional) or .npy (f32/f64, 1-D or 2-D, C or Fortran
    /// order) file. Non-finite values are an error, or with `drop_nonfinite` their rows
    /// are dropped.
    pub fn from_file(path: &Path, drop_nonfinite: bool) -> Result<Self> {
        let bytes = crate::io::read_bounded(path, crate::io::MAX_FILE_BYTES)
            .map_err(|e| Error::io(path, e))?;
        Self::from_bytes(&bytes, path, drop_nonfinite)
    }

    /// As [`from_file`](Self::from_file), for the bytes of a file named `path`.
    pub fn from_bytes(bytes: &[u8], path: &Path, drop_nonfinite: bool) -> Result<Self> {
        let (exact, dim) = match path.extension().and_then(|e| e.to_str()) {
            Some("npy") => {
                let (d, shape) =
                    crate::io::npy::read_npy_f64(bytes).map_err(|m| Error::format(path, m))?;
                let dim = if shape.len() == 2 { shape[1] } else { 1 };
                (d, dim)
            }
            Some("csv") => {
                let text = std::str::from_utf8(bytes)
                    .map_err(|_| Error::format(path, "not UTF-8 text"))?;
                crate::io::csv::parse_csv_f64(text).map_err(|m| Error::format(path, m))?
            }
            _ => {
                return Err(Error::invalid(format!(
                    "{}: data files must end in .csv or .npy",
                    path.display()
                )))
            }
        };
        if dim == 0 || exact.is_empty() {
            return Err(Error::format(path, "has no data rows"));
        }
        let mut ds = Dataset {
            name: path.display().to_string(),
            dim,
            points: exact.iter().map(|&v| v as f32).collect(),
            labels: None,
            class_labels: Vec::new(),
            exact: Some(exact),
        };
        let bad: Vec<usize> = (0..ds.len())
            .filter(|&i| ds.row(i).iter().any(|v| !v.is_finite()))
            .collect();
        if let Some(&first) = bad.first() {
            if !drop_nonfinite {
                let col = ds
                    .row(first)
                    .iter()
                    .position(|v| !v.is_finite())
                    .unwrap_or(0);
                return Err(Error::format(
                    path,
                    format!(
                        "row {} column {} is {} ({} rows hold NaN or infinite values); clean the data or pass --drop-nonfinite",
                        first + 1,
                        col + 1,
                        ds.row(first)[col],
                        bad.len()
                    ),
                ));
            }
            let kept: Vec<usize> = (0..ds.len())
                .filter(|i| bad.binary_search(i).is_err())
                .collect();
            let keep: Vec<f32> = kept.iter().flat_map(|&i| ds.row(i).to_vec()).collect();
            ds.exact = ds.exact.as_ref().map(|e| {
                kept.iter()
                    .flat_map(|&i| e[i * dim..(i + 1) * dim].to_vec())
                    .collect()
            });
            if keep.is_empty() {
                return Err(Error::format(
                    path,
                    "every row holds NaN or infinite values",
                ));
            }
            log::warn!(
                "{}: dropped {} rows with non-finite values",
                path.display(),
                bad.len()
            );
            ds.points = keep;
        }
        Ok(ds)
    }

    /// ANODE for a source pool: widen rows to dim + k with `fill` in the new columns.
    pub fn augment_source(
        points: &[f32],
        dim: usize,
        k: usize,
        fill: AugmentFill,
        seed: u64,
    ) -> Vec<f32> {
        match fill {
            AugmentFill::Noise => Self::augment(points, dim, k, Some(seed)),
            AugmentFill::Copy => points
                .chunks(dim)
                .flat_map(|r| r.iter().copied().chain((0..k).map(move |j| r[j % dim])))
                .collect(),
        }
    }

    /// ANODE: rows of `dim` values widened to dim + k, the new columns zero (data) or, with
    /// a seed, N(0, 1) noise (a source).
    pub fn augment(points: &[f32], dim: usize, k: usize, noise_seed: Option<u64>) -> Vec<f32> {
        use rand_distr::Distribution;
        let mut rng = rand::rngs::StdRng::seed_from_u64(noise_seed.unwrap_or(0));
        let mut out = Vec::with_capacity(points.len() / dim * (dim + k));
        for r in points.chunks(dim) {
            out.extend_from_slice(r);
            for _ in 0..k {
                out.push(match noise_seed {
                    Some(_) => rand_distr::StandardNormal.sample(&mut rng),
                    None => 0.0,
                });
            }
        }
        out
    }

    /// Move column `col` (0-based) out of the points into class labels: the distinct
    /// integer values of the column, ascending, are the classes 0..C−1 (`class_labels`
    /// keeps the table, so labels 1, 2, 5 make three classes, not six). Returns C.
    pub fn take_label_column(&mut self, col: usize) -> Result<usize> {
        if col >= self.dim || self.dim < 2 {
            return Err(Error::invalid(format!(
                "--label-column {col} needs a data file with more than {col} columns and at least one feature besides it (it has {})",
                self.dim
            )));
        }
        let mut values = Vec::with_capacity(self.len());
        // The parsed values when there are some, so that f32 rounding merges no labels.
        let column: Vec<f64> = match &self.exact {
            Some(e) => e.iter().skip(col).step_by(self.dim).copied().collect(),
            None => self
                .points
                .iter()
                .skip(col)
                .step_by(self.dim)
                .map(|&v| v as f64)
                .collect(),
        };
        for (i, &v) in column.iter().enumerate() {
            // Integers up to 2^24 are exact in f32 (in which toy labels arrive).
            if !(v.fract() == 0.0 && v.abs() <= 16_777_216.0) {
                return Err(Error::invalid(format!(
                    "{}: row {} has label {v} in column {col}; labels must be integers (|label| ≤ 2^24)",
                    self.name,
                    i + 1
                )));
            }
            values.push(v as i64);
        }
        let mut table = values.clone();
        table.sort_unstable();
        table.dedup();
        if table.len() > 1024 {
            return Err(Error::invalid(format!(
                "{}: column {col} holds {} distinct labels; class-conditional models take at most 1024",
                self.name,
                table.len()
            )));
        }
        let index = |v: &i64| table.binary_search(v).unwrap_or(0) as u32;
        self.labels = Some(values.iter().map(index).collect());
        let d = self.dim;
        self.points = drop_column(&self.points, d, col);
        self.exact = self.exact.as_ref().map(|e| drop_column(e, d, col));
        self.dim -= 1;
        self.class_labels = table;
        Ok(self.class_labels.len())
    }

    pub fn row(&self, i: usize) -> &[f32] {
        &self.points[i * self.dim..(i + 1) * self.dim]
    }

    /// Per-column mean and standard deviation. A constant column gets std 1 (it is only
    /// centred), so nothing is divided by zero.
    /// FNV-1a hash (hex) of the values and labels: identifies the data a run trained on.
    pub fn fingerprint(&self) -> String {
        let mut h = crate::io::Fingerprint::default();
        h.add(bytemuck::cast_slice::<f32, u8>(&self.points));
        for l in self.labels.iter().flatten() {
            h.add(&l.to_le_bytes());
        }
        h.hex()
    }

    /// Classes of a labelled set (0 without labels).
    pub fn n_classes(&self) -> usize {
        self.class_labels.len()
    }

    pub fn standardization(&self) -> Standardization {
        let mut m = ColumnMoments::new(self.dim, self.len());
        // A column is constant when its spread is below what its values' storage resolves:
        // 1e-12 of its magnitude for the parsed f64 values, 1e-6 for f32.
        match &self.exact {
            Some(e) => {
                m.add_mean(e.iter().copied());
                m.add_spread(e.iter().copied());
                m.finish(1e-12)
            }
            None => {
                let values = || self.points.iter().map(|&v| v as f64);
                m.add_mean(values());
                m.add_spread(values());
                m.finish(1e-6)
            }
        }
    }

    /// Standardize the points with `s`, from the parsed f64 values when the set has them
    /// (then dropped: the points are no longer raw).
    pub fn standardize(&mut self, s: &Standardization) {
        match self.exact.take() {
            Some(e) => {
                let d = self.dim;
                for (k, (p, v)) in self.points.iter_mut().zip(&e).enumerate() {
                    *p = ((v - s.mean[k % d]) / s.std[k % d]) as f32;
                }
            }
            None => s.apply(&mut self.points),
        }
    }

    /// Shuffle rows (seeded) and hold out `val_frac` of them (at least one row when > 0).
    pub fn split(self, val_frac: f64, seed: u64) -> Result<(Dataset, Option<Dataset>)> {
        if !(0.0..1.0).contains(&val_frac) {
            return Err(Error::invalid(format!(
                "--val-frac must be in [0, 1), got {val_frac}"
            )));
        }
        if val_frac == 0.0 {
            return Ok((self, None));
        }
        let n = self.len();
        let n_val = ((n as f64 * val_frac).round() as usize).max(1);
        if n_val >= n {
            return Err(Error::invalid(format!(
                "--val-frac {val_frac} leaves no training rows out of {n}"
            )));
        }
        let mut idx: Vec<usize> = (0..n).collect();
        idx.shuffle(&mut rand::rngs::StdRng::seed_from_u64(seed ^ 0x51ed));
        let take = |ids: &[usize]| -> Vec<f32> {
            ids.iter().flat_map(|&i| self.row(i).to_vec()).collect()
        };
        let take_exact = |ids: &[usize]| -> Option<Vec<f64>> {
            let d = self.dim;
            self.exact.as_ref().map(|e| {
                ids.iter()
                    .flat_map(|&i| e[i * d..(i + 1) * d].to_vec())
                    .collect()
            })
        };
        let take_labels = |ids: &[usize]| -> Option<Vec<u32>> {
            self.labels
                .as_ref()
                .map(|l| ids.iter().map(|&i| l[i]).collect())
        };
        let val = Dataset {
            name: format!("{} (held out)", self.name),
            dim: self.dim,
            points: take(&idx[..n_val]),
            labels: take_labels(&idx[..n_val]),
            class_labels: self.class_labels.clone(),
            exact: take_exact(&idx[..n_val]),
        };
        let train = Dataset {
            name: self.name.clone(),
            dim: self.dim,
            points: take(&idx[n_val..]),
            labels: take_labels(&idx[n_val..]),
            class_labels: self.class_labels.clone(),
            exact: take_exact(&idx[n_val..]),
        };
        Ok((train, Some(val)))
    }
}

/// Rows of `d` values without column `col`.
fn drop_column<T: Copy>(v: &[T], d: usize, col: usize) -> Vec<T> {
    v.chunks(d)
        .flat_map(|r| {
            r.iter()
                .enumerate()
                .filter(|(j, _)| *j != col)
                .map(|(_, x)| *x)
        })
        .collect()
}

/// Per-column mean and standard deviation of row-major values in two passes (the mean,
/// then the spread about it), accumulated in row order: the values may come in chunks
/// that start on a row ([`stream`]) and give the bits of one whole pass.
pub struct ColumnMoments {
    dim: usize,
    rows: f64,
    mean: Vec<f64>,
    var: Vec<f64>,
    /// Values taken in the current pass (to place the next chunk's columns).
    seen: usize,
}

impl ColumnMoments {
    /// For `rows` rows of `dim` columns (the mean adds each value / rows).
    pub fn new(dim: usize, rows: usize) -> Self {
        ColumnMoments {
            dim,
            rows: rows as f64,
            mean: vec![0.0; dim],
            var: vec![0.0; dim],
            seen: 0,
        }
    }

    /// First pass: every value, in row order.
    pub fn add_mean(&mut self, values: impl Iterator<Item = f64>) {
        for v in values {
            self.mean[self.seen % self.dim] += v / self.rows;
            self.seen += 1;
        }
    }

    /// Second pass: every value again, in row order (after the whole first pass).
    pub fn add_spread(&mut self, values: impl Iterator<Item = f64>) {
        let total = self.rows as usize * self.dim;
        assert!(self.seen >= total, "add_spread before the whole mean pass");
        for v in values {
            let k = (self.seen - total) % self.dim;
            self.var[k] += (v - self.mean[k]).powi(2) / self.rows;
            self.seen += 1;
        }
    }

    /// The standardization; a column whose spread is within `resolution` of its magnitude
    /// is constant and keeps std 1 (per column: a Unix-time column beside one of values
    /// ~1e-3 leaves the small one alone, and one of seconds around 1.7e9 keeps its spread).
    pub fn finish(self, resolution: f64) -> Standardization {
        let std = self
            .var
            .iter()
            .zip(&self.mean)
            .map(|(&v, m)| {
                let s = v.sqrt();
                if s > resolution * m.abs() && s > f64::MIN_POSITIVE {
                    s
                } else {
                    1.0
                }
            })
            .collect();
        Standardization {
            mean: self.mean,
            std,
        }
    }
}

/// Per-column standardization of the data: the model sees (x − mean) / std.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Standardization {
    pub mean: Vec<f64>,
    pub std: Vec<f64>,
}

impl Standardization {
    pub fn apply(&self, data: &mut [f32]) {
        for row in data.chunks_mut(self.mean.len()) {
            for ((x, m), s) in row.iter_mut().zip(&self.mean).zip(&self.std) {
                *x = ((*x as f64 - m) / s) as f32;
            }
        }
    }
    pub fn undo(&self, data: &mut [f32]) {
        for row in data.chunks_mut(self.mean.len()) {
            for ((x, m), s) in row.iter_mut().zip(&self.mean).zip(&self.std) {
                *x = (*x as f64 * s + m) as f32;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(columns: &[Vec<f32>]) -> Dataset {
        let n = columns[0].len();
        Dataset {
            name: "test".into(),
            dim: columns.len(),
            points: (0..n)
                .flat_map(|i| columns.iter().map(move |c| c[i]))
                .collect(),
            labels: None,
            class_labels: Vec::new(),
            exact: None,
        }
    }

    /// A Unix-time column (seconds apart around 1.7e9, where f32 resolves 128 s) beside
    /// one of values ~1e-3: statistics and standardization from the parsed f64 values keep
    /// every second distinct and both columns at unit spread.
    #[test]
    fn statistics_come_from_the_parsed_values() {
        let mut csv = String::from("time,small\n");
        for i in 0..1000 {
            csv.push_str(&format!(
                "{},{}\n",
                1_700_000_000 + i,
                1e-3 * (i as f64 * 0.37).sin()
            ));
        }
        let mut ds = Dataset::from_bytes(csv.as_bytes(), Path::new("t.csv"), false).unwrap();
        let s = ds.standardization();
        assert!((s.mean[0] - 1_700_000_499.5).abs() < 1e-3, "{}", s.mean[0]);
        assert!((s.std[0] / (1000.0 / 12f64.sqrt()) - 1.0).abs() < 1e-3);
        ds.standardize(&s);
        let mut col: Vec<f32> = ds.points.iter().step_by(2).copied().collect();
        col.sort_by(f32::total_cmp);
        col.dedup();
        assert_eq!(col.len(), 1000, "every second stays distinct");
        let sd = |c: usize| {
            let v: Vec<f64> = ds
                .points
                .iter()
                .skip(c)
                .step_by(2)
                .map(|&x| x as f64)
                .collect();
            let m = v.iter().sum::<f64>() / v.len() as f64;
            (v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / v.len() as f64).sqrt()
        };
        assert!((sd(0) - 1.0).abs() < 1e-4 && (sd(1) - 1.0).abs() < 1e-4);
    }

    /// config.json keeps the statistics to the last bit (resume compares them exactly;
    /// serde_json's default float parser is off by one ulp on this value).
    #[test]
    fn standardization_survives_json_exactly() {
        let s = Standardization {
            mean: vec![0.024193523800430668, 102.99333333333402],
            std: vec![0.9991893536989437, 2.0031345806380916],
        };
        let back: Standardization =
            serde_json::from_str(&serde_json::to_string(&s).unwrap()).unwrap();
        assert_eq!(back, s);
    }

    #[test]
    fn labels_map_to_classes_through_a_table() {
        let mut ds = set(&[vec![0.1, 0.2, 0.3, 0.4], vec![5.0, 1.0, 2.0, 5.0]]);
        assert_eq!(ds.take_label_column(1).unwrap(), 3);
        assert_eq!(ds.class_labels, vec![1, 2, 5]);
        assert_eq!(ds.labels, Some(vec![2, 0, 1, 2]));
        assert_eq!((ds.dim, ds.points.clone()), (1, vec![0.1, 0.2, 0.3, 0.4]));
        let mut neg = set(&[vec![0.0, 1.0], vec![-3.0, 7.0]]);
        assert_eq!(neg.take_label_column(1).unwrap(), 2);
        assert_eq!(neg.class_labels, vec![-3, 7]);
        let mut frac = set(&[vec![0.0], vec![0.5]]);
        assert!(frac.take_label_column(1).is_err());
    }

    #[test]
    fn a_small_column_beside_a_huge_one_keeps_its_own_spread() {
        let n = 2000;
        let time: Vec<f32> = (0..n).map(|i| 1.7e9 + 1000.0 * i as f32).collect();
        let small: Vec<f32> = (0..n).map(|i| 1e-3 * (i as f32 * 0.37).sin()).collect();
        let flat = vec![5.0f32; n];
        let s = set(&[time, small.clone(), flat]).standardization();
        let mean = small.iter().map(|&v| v as f64).sum::<f64>() / n as f64;
        let var = small
            .iter()
            .map(|&v| (v as f64 - mean).powi(2))
            .sum::<f64>()
            / n as f64;
        assert!((s.std[1] / var.sqrt() - 1.0).abs() < 1e-6, "{:?}", s.std);
        assert!((s.std[0] / (1000.0 * n as f64 / 12f64.sqrt()) - 1.0).abs() < 0.01);
        assert_eq!(s.std[2], 1.0, "a constant column is left unscaled");
    }
}
