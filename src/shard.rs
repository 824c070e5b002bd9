//! Sharded commands: the rows of `sample`, `encode`, `decode` and `logprob` split into N
//! shards that any batch system can run apart (Slurm job arrays, Kubernetes Indexed Jobs,
//! GNU parallel). Shard I of N takes rows [⌊I·n/N⌋, ⌊(I+1)·n/N⌋); every sample's noise and
//! every Hutchinson probe is keyed by the row's global index, so a shard's rows are
//! exactly the unsharded run's. Each shard writes its rows and a manifest
//! (`<output>.shard.json`); [`merge`] checks that a set of shards is complete, distinct and
//! from one run, and writes the unsharded file, byte for byte.

use crate::error::{Error, Result};
use crate::io::Fingerprint;
use serde::{Deserialize, Serialize};
use std::ops::Range;
use std::path::{Path, PathBuf};

/// Shard `index` of `count`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shard {
    pub index: usize,
    pub count: usize,
}

impl std::str::FromStr for Shard {
    type Err = String;
    /// "I/N" with 0 ≤ I < N.
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let bad = || format!("'{s}' is not a shard I/N with 0 ≤ I < N (e.g. 0/4)");
        let (i, n) = s.split_once('/').ok_or_else(bad)?;
        let (index, count) = (
            i.trim().parse().map_err(|_| bad())?,
            n.trim().parse().map_err(|_| bad())?,
        );
        if count == 0 || index >= count {
            return Err(bad());
        }
        Ok(Shard { index, count })
    }
}

impl Shard {
    /// This shard's rows of `n`.
    pub fn rows(&self, n: usize) -> Range<usize> {
        let edge = |i: usize| (i as u128 * n as u128 / self.count as u128) as usize;
        edge(self.index)..edge(self.index + 1)
    }
}

/// Part `k` of `n` rows split in proportion to integer `weights` (one per part): rows
/// [⌊n·S_k/S⌋, ⌊n·S_(k+1)/S⌋), S_k the sum of the weights before part k and S all of them.
/// Equal weights give shard k of K's rows exactly; all-zero weights give every part none.
pub fn weighted_rows(n: usize, weights: &[u32], k: usize) -> Range<usize> {
    assert!(k < weights.len(), "part {k} of {} weights", weights.len());
    let total: u128 = weights.iter().map(|&w| w as u128).sum::<u128>().max(1);
    let edge = |part: usize| {
        let before: u128 = weights[..part].iter().map(|&w| w as u128).sum();
        (n as u128 * before / total) as usize
    };
    edge(k)..edge(k + 1)
}

/// What a shard's output file holds: enough to check that shards belong together.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// `sample`, `encode`, `decode` or `logprob`.
    pub command: String,
    /// Which output of the command (`rows`, `logp`, `latent`).
    pub output: String,
    /// Fingerprint of the model's config.json and model.safetensors.
    pub model: String,
    /// Fingerprint of the input file (none for `sample`).
    pub input: Option<String>,
    /// Every setting that decides the rows (solver, seed, class, trace, …).
    pub settings: serde_json::Value,
    /// Rows of the whole run, and values per row.
    pub n: usize,
    pub dim: usize,
    /// [I, N].
    pub shard: [usize; 2],
    /// [start, end) of this shard's rows.
    pub rows: [usize; 2],
    /// Fingerprint of the output file's bytes: a manifest belongs to one file.
    pub file: String,
}

/// Fingerprint of a model folder's files.
pub fn model_fingerprint(dir: &Path) -> Result<String> {
    let mut h = Fingerprint::default();
    for f in ["config.json", "model.safetensors"] {
        let p = dir.join(f);
        let bytes =
            crate::io::read_bounded(&p, crate::io::MAX_FILE_BYTES).map_err(|e| Error::io(&p, e))?;
        h.add(&bytes);
    }
    Ok(h.hex())
}

/// Fingerprint of a file's bytes.
pub fn file_fingerprint(path: &Path) -> Result<String> {
    let bytes =
        crate::io::read_bounded(path, crate::io::MAX_FILE_BYTES).map_err(|e| Error::io(path, e))?;
    Ok(Fingerprint::default().add(&bytes).hex())
}

impl Manifest {
    /// The manifest file of an output file.
    pub fn path_for(output: &Path) -> PathBuf {
        let mut name = output.file_name().unwrap_or_default().to_os_string();
        name.push(".shard.json");
        output.with_file_name(name)
    }

    pub fn write(&self, output: &Path) -> Result<()> {
        let path = Self::path_for(output);
        let json = serde_json::to_vec_pretty(self).map_err(|e| Error::invalid(e.to_string()))?;
        crate::io::atomic::write_atomic(&path, &json).map_err(|e| Error::io(&path, e))
    }

    pub fn read(output: &Path) -> Result<Manifest> {
        let path = Self::path_for(output);
        let bytes = crate::io::read_bounded(&path, crate::io::MAX_CONFIG_BYTES).map_err(|e| {
            Error::invalid(format!(
                "{}: no shard manifest {} ({e}); was it written with --shard?",
                output.display(),
                path.display()
            ))
        })?;
        let m: Manifest = serde_json::from_slice(&bytes)
            .map_err(|e| Error::format(&path, format!("not a shard manifest: {e}")))?;
        let [i, count] = m.shard;
        let sane = count > 0
            && i < count
            && m.rows[0] <= m.rows[1]
            && m.rows[1] <= m.n
            && m.n.checked_mul(m.dim.max(1)).is_some_and(|v| v <= 1 << 34);
        if !sane {
            return Err(Error::format(&path, "is not a consistent shard manifest"));
        }
        Ok(m)
    }

    /// Remove the manifest of `output`, if any (an output written without --shard has
    /// none, so a stale one must not survive it).
    pub fn remove(output: &Path) -> Result<()> {
        let path = Self::path_for(output);
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Error::io(&path, e)),
            _ => Ok(()),
        }
    }

    /// Everything but the shard's own place: equal for every shard of one run.
    fn run_key(&self) -> Manifest {
        Manifest {
            shard: [0, self.shard[1]],
            rows: [0, 0],
            file: String::new(),
            ..self.clone()
        }
    }
}

/// Check that `parts` are the complete, distinct shards of one run and return them in
/// shard order with their manifests.
pub fn check_parts(parts: &[PathBuf]) -> Result<Vec<(PathBuf, Manifest)>> {
    let mut all: Vec<(PathBuf, Manifest)> = parts
        .iter()
        .map(|p| Ok((p.clone(), Manifest::read(p)?)))
        .collect::<Result<_>>()?;
    let Some((first_path, first)) = all.first().cloned() else {
        return Err(Error::invalid("merge needs the shard files"));
    };
    for (p, m) in &all {
        if m.run_key() != first.run_key() {
            return Err(Error::invalid(format!(
                "{} and {} are not shards of the same run (model, input, settings or size differ)",
                first_path.display(),
                p.display()
            )));
        }
    }
    all.sort_by_key(|(_, m)| m.shard[0]);
    let count = first.shard[1];
    for (i, (p, m)) in all.iter().enumerate() {
        if m.shard[0] != i {
            let what = if m.shard[0] < i { "twice" } else { "missing" };
            let which = if m.shard[0] < i { m.shard[0] } else { i };
            return Err(Error::invalid(format!(
                "shard {which}/{count} is {what} (at {})",
                p.display()
            )));
        }
        let want = Shard { index: i, count }.rows(first.n);
        if m.rows != [want.start, want.end] {
            return Err(Error::invalid(format!(
                "{}: rows {:?} are not shard {i}/{count}'s {want:?}",
                p.display(),
                m.rows
            )));
        }
    }
    if all.len() != count {
        return Err(Error::invalid(format!(
            "shard {}/{count} is missing ({} of {count} given)",
            all.len(),
            all.len()
        )));
    }
    Ok(all)
}

/// Concatenate the rows of a complete set of shards into `out` (.npy or .csv, as the
/// unsharded command writes it). Returns the run's manifest.
pub fn merge(parts: &[PathBuf], out: &Path) -> Result<Manifest> {
    let all = check_parts(parts)?;
    let first = all[0].1.clone();
    let mut rows = Vec::with_capacity(first.n * first.dim);
    for (p, m) in &all {
        let bytes =
            crate::io::read_bounded(p, crate::io::MAX_FILE_BYTES).map_err(|e| Error::io(p, e))?;
        if Fingerprint::default().add(&bytes).hex() != m.file {
            return Err(Error::invalid(format!(
                "{} is not the file its manifest was written for (it changed after the shard ran)",
                p.display()
            )));
        }
        if m.rows[0] == m.rows[1] {
            continue;
        }
        let (data, cols) = match p.extension().and_then(|e| e.to_str()) {
            Some("npy") => {
                let (d, shape) =
                    crate::io::npy::read_npy_f32(&bytes).map_err(|e| Error::format(p, e))?;
                (d, shape.get(1).copied().unwrap_or(1))
            }
            _ => {
                let text =
                    std::str::from_utf8(&bytes).map_err(|_| Error::format(p, "not UTF-8"))?;
                crate::io::csv::parse_csv(text).map_err(|e| Error::format(p, e))?
            }
        };
        let want = m.rows[1] - m.rows[0];
        if cols != first.dim || data.len() != want * first.dim {
            return Err(Error::format(
                p,
                format!(
                    "holds {} values in rows of {cols}; its manifest says {want} rows of {}",
                    data.len(),
                    first.dim
                ),
            ));
        }
        rows.extend(data);
    }
    let written = match out.extension().and_then(|e| e.to_str()) {
        Some("npy") => crate::io::npy::write_npy_f32(out, &rows, &[first.n, first.dim]),
        Some("csv") => crate::io::csv::write_csv(out, &rows, first.dim, None),
        _ => {
            return Err(Error::invalid(format!(
                "{}: the merged file must end in .npy or .csv",
                out.display()
            )))
        }
    };
    written.map_err(|e| Error::io(out, e))?;
    Ok(first)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_cover_the_rows_once_in_order() {
        for (n, count) in [(103, 4), (5, 7), (0, 3), (1000, 1)] {
            let mut next = 0;
            for index in 0..count {
                let r = Shard { index, count }.rows(n);
                assert_eq!(r.start, next);
                next = r.end;
            }
            assert_eq!(next, n);
        }
        assert_eq!("2/5".parse::<Shard>(), Ok(Shard { index: 2, count: 5 }));
        for bad in ["5/5", "1", "a/2", "0/0", "-1/3"] {
            assert!(bad.parse::<Shard>().is_err(), "{bad}");
        }
    }

    /// Weighted parts cover the rows in order, follow the weights, and equal weights are
    /// the shards.
    #[test]
    fn weighted_rows_split_in_proportion() {
        for n in [0, 1, 7, 100, 1003] {
            for k_all in 1..5 {
                let ones = vec![1; k_all];
                for k in 0..k_all {
                    let shard = Shard {
                        index: k,
                        count: k_all,
                    }
                    .rows(n);
                    assert_eq!(weighted_rows(n, &ones, k), shard);
                }
            }
        }
        let w = [3, 1, 0, 4];
        let parts: Vec<_> = (0..4).map(|k| weighted_rows(800, &w, k)).collect();
        assert_eq!(parts, vec![0..300, 300..400, 400..400, 400..800]);
    }
}
