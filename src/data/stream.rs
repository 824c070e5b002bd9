//! Training data larger than memory: an NPY file read in chunks, never whole.
//!
//! The statistics (per-column mean and std, in f64) and the fingerprint come from two
//! chunked passes over the file, with the bits an in-memory load gives. Training then
//! draws from a pool of P rows on the GPU, replaced every `refresh` steps: pool e holds
//! rows [e·P, (e+1)·P) of an endless stream in which each pass over the file visits its
//! blocks of B contiguous rows in a seeded random order (a new order every pass). So every
//! row is visited once per pass, reads are contiguous runs of at most B rows, and the pool
//! of a step — like every draw within it — is a pure function of the seed and the step: a
//! resumed run reads the same pools.
//!
//! Memory: the pool on the GPU, and on the host a few copies of it while one is read (the
//! f32 rows, the augmented copy, wgpu's staging) plus one block of f64 and the block order
//! (64 indices per pool's worth of rows); not the file.

use super::{ColumnMoments, Standardization};
use crate::error::{Error, Result};
use crate::io::npy::NpyLayout;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

/// Values read per chunk of the statistics passes (4 MiB of f64).
const SCAN_VALUES: usize = 1 << 19;
/// Blocks per pool: the pool mixes at least this many places of the file.
pub const BLOCKS_PER_POOL: usize = 64;

/// How a run streams its data file (config.json `run.stream`).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamPlan {
    /// The GPU pool's size in MiB of f32 rows (P = ⌊MiB·2²⁰ / (4·dim)⌋, at most the file).
    pub pool_mib: f64,
    /// Steps between pool replacements (None: P / batch, about one draw per pool row).
    pub refresh_steps: Option<u64>,
}

/// A C-order float32/float64 NPY file opened for reading rows in chunks.
pub struct NpyRows {
    file: File,
    path: PathBuf,
    layout: NpyLayout,
    rows: usize,
    dim: usize,
}

impl NpyRows {
    /// Open `path`, reading only its header; the file's size must match its shape.
    pub fn open(path: &Path) -> Result<Self> {
        let io = |e| Error::io(path, e);
        let mut file = File::open(path).map_err(io)?;
        let len = file.metadata().map_err(io)?.len() as usize;
        let mut prefix = vec![0u8; 12.min(len)];
        file.read_exact(&mut prefix).map_err(io)?;
        let end = NpyLayout::header_end(&prefix).map_err(|m| Error::format(path, m))?;
        if end > len || end > 1 << 20 {
            return Err(Error::format(path, "truncated or oversized NPY header"));
        }
        let have = prefix.len();
        if end > have {
            prefix.resize(end, 0);
            file.read_exact(&mut prefix[have..]).map_err(io)?;
        }
        let layout = NpyLayout::parse(&prefix).map_err(|m| Error::format(path, m))?;
        layout.check_size(len).map_err(|m| Error::format(path, m))?;
        if layout.fortran_order && layout.shape.len() == 2 {
            return Err(Error::format(
                path,
                "is in Fortran order; streaming reads rows, so save it C-ordered (np.save(f, np.ascontiguousarray(x)))",
            ));
        }
        let (rows, dim) = layout.rows_cols();
        if rows == 0 || dim == 0 {
            return Err(Error::format(path, "has no data rows"));
        }
        Ok(NpyRows {
            file,
            path: path.to_path_buf(),
            layout,
            rows,
            dim,
        })
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Rows [start, start + count) appended to `out` as f64 (one seek and one read).
    pub fn read(&mut self, start: usize, count: usize, out: &mut Vec<f64>) -> Result<()> {
        let row_bytes = self.dim * self.layout.item;
        let mut bytes = vec![0u8; count * row_bytes];
        let at = (self.layout.data_start + start * row_bytes) as u64;
        let io = |e| Error::io(&self.path, e);
        self.file.seek(SeekFrom::Start(at)).map_err(io)?;
        self.file.read_exact(&mut bytes).map_err(io)?;
        self.layout.decode(&bytes, out);
        Ok(())
    }

    /// Every row in chunks, in order, each chunk starting on a row.
    fn for_each_chunk(&mut self, mut f: impl FnMut(usize, &[f64]) -> Result<()>) -> Result<()> {
        let chunk_rows = (SCAN_VALUES / self.dim).max(1);
        let mut buf = Vec::with_capacity(chunk_rows * self.dim);
        for start in (0..self.rows).step_by(chunk_rows) {
            buf.clear();
            self.read(start, chunk_rows.min(self.rows - start), &mut buf)?;
            f(start, &buf)?;
        }
        Ok(())
    }
}

/// What the two passes over a file give.
#[derive(Clone, Debug, PartialEq)]
pub struct FileScan {
    /// As [`super::Dataset::standardization`] of the file loaded whole (when asked for).
    pub standardization: Option<Standardization>,
    /// As [`super::Dataset::fingerprint`] of the file loaded whole.
    pub fingerprint: String,
}

/// The fingerprint of every row and, with `moments`, the mean and std (a second chunked
/// pass; a resumed run has its standardization already); a non-finite value (as f32, what
/// training would see) is an error naming its row.
pub fn scan(rows: &mut NpyRows, want_moments: bool) -> Result<FileScan> {
    let (n, dim) = (rows.rows, rows.dim);
    let mut moments = ColumnMoments::new(dim, n);
    let mut hash = crate::io::Fingerprint::default();
    let path = rows.path.clone();
    rows.for_each_chunk(|start, chunk| {
        if let Some(k) = chunk.iter().position(|&v| !(v as f32).is_finite()) {
            return Err(Error::format(
                &path,
                format!(
                    "row {} has a value that is not finite in f32 (NaN, ±Inf or beyond ±3.4e38); a streamed file must be finite (clean it, or load it whole with --drop-nonfinite)",
                    start + k / dim
                ),
            ));
        }
        for &v in chunk {
            hash.add(&(v as f32).to_le_bytes());
        }
        moments.add_mean(chunk.iter().copied());
        Ok(())
    })?;
    if !want_moments {
        return Ok(FileScan {
            standardization: None,
            fingerprint: hash.hex(),
        });
    }
    rows.for_each_chunk(|_, chunk| {
        moments.add_spread(chunk.iter().copied());
        Ok(())
    })?;
    Ok(FileScan {
        standardization: Some(moments.finish(1e-12)),
        fingerprint: hash.hex(),
    })
}

/// One pass's block order and where each block starts within the pass.
struct PassOrder {
    pass: u64,
    blocks: Vec<usize>,
    /// starts[i]: the pass offset of blocks[i]; starts[last] = rows.
    starts: Vec<usize>,
}

/// The pools of a streamed run (see the module docs).
pub struct DataStream {
    rows: NpyRows,
    seed: u64,
    /// Rows per pool (P).
    pub pool_rows: usize,
    /// Rows per block (B).
    pub block_rows: usize,
    /// Steps per pool.
    pub refresh_steps: u64,
    /// The model's units the pools are standardized to (None: data units).
    pub standardization: Option<Standardization>,
    order: Option<PassOrder>,
    /// The pool last read.
    pub loaded: Option<u64>,
}

impl DataStream {
    /// The stream of `rows` for a run with this plan, batch and seed.
    pub fn new(rows: NpyRows, plan: &StreamPlan, batch: usize, seed: u64) -> Result<Self> {
        if !(plan.pool_mib > 0.0 && plan.pool_mib.is_finite()) {
            return Err(Error::invalid(
                "--stream-pool must be a positive size in MiB",
            ));
        }
        let fit = (plan.pool_mib * (1u64 << 20) as f64 / (4 * rows.dim) as f64) as usize;
        let pool_rows = fit.min(rows.rows);
        if pool_rows < batch {
            return Err(Error::invalid(format!(
                "--stream-pool {} MiB holds {pool_rows} rows of {} values, fewer than --batch {batch}; give the pool more memory",
                plan.pool_mib, rows.dim
            )));
        }
        if plan.refresh_steps == Some(0) {
            return Err(Error::invalid("--stream-refresh must be at least 1 step"));
        }
        Ok(DataStream {
            block_rows: (pool_rows / BLOCKS_PER_POOL).max(1),
            refresh_steps: plan
                .refresh_steps
                .unwrap_or_else(|| pool_rows.div_ceil(batch) as u64),
            pool_rows,
            rows,
            seed,
            standardization: None,
            order: None,
            loaded: None,
        })
    }

    pub fn dim(&self) -> usize {
        self.rows.dim
    }

    /// The file's rows.
    pub fn file_rows(&self) -> usize {
        self.rows.rows
    }

    /// The pool that step `step` trains on.
    pub fn pool_of(&self, step: u64) -> u64 {
        step / self.refresh_steps
    }

    /// Pool `e`: rows [e·P, (e+1)·P) of the stream, in model units, row-major f32.
    pub fn pool(&mut self, e: u64) -> Result<Vec<f32>> {
        let (n, p) = (self.rows.rows as u64, self.pool_rows as u64);
        let mut out = Vec::with_capacity(self.pool_rows * self.rows.dim);
        let mut buf = Vec::with_capacity(self.block_rows * self.rows.dim);
        let at_row = |e: u64| {
            e.checked_mul(p)
                .ok_or_else(|| Error::invalid("the stream's row position overflows: fewer steps, or a larger --stream-refresh"))
        };
        let (mut at, end) = (at_row(e)?, at_row(e + 1)?);
        while at < end {
            let (pass, offset) = (at / n, (at % n) as usize);
            let order = self.order_of(pass);
            let i = order.starts.partition_point(|&s| s <= offset) - 1;
            let within = offset - order.starts[i];
            let run = (order.starts[i + 1] - offset).min((end - at) as usize);
            let first = order.blocks[i] * self.block_rows + within;
            buf.clear();
            self.rows.read(first, run, &mut buf)?;
            self.push_model_units(&buf, &mut out);
            at += run as u64;
        }
        self.loaded = Some(e);
        Ok(out)
    }

    fn push_model_units(&self, values: &[f64], out: &mut Vec<f32>) {
        match &self.standardization {
            Some(s) => {
                let d = self.rows.dim;
                out.extend(
                    values
                        .iter()
                        .enumerate()
                        .map(|(k, v)| ((v - s.mean[k % d]) / s.std[k % d]) as f32),
                );
            }
            None => out.extend(values.iter().map(|&v| v as f32)),
        }
    }

    /// The block order of pass `pass` (cached: pools walk passes forward).
    fn order_of(&mut self, pass: u64) -> &PassOrder {
        if self.order.as_ref().map(|o| o.pass) != Some(pass) {
            let (n, b) = (self.rows.rows, self.block_rows);
            let mut blocks: Vec<usize> = (0..n.div_ceil(b)).collect();
            let key = self.seed ^ pass.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ 0x5757_ea11;
            blocks.shuffle(&mut rand::rngs::StdRng::seed_from_u64(key));
            let mut starts = Vec::with_capacity(blocks.len() + 1);
            let mut at = 0;
            for &k in &blocks {
                starts.push(at);
                at += b.min(n - k * b);
            }
            starts.push(at);
            self.order = Some(PassOrder {
                pass,
                blocks,
                starts,
            });
        }
        self.order.as_ref().expect("just set")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(name: &str, rows: usize, dim: usize) -> PathBuf {
        let p =
            std::env::temp_dir().join(format!("flowgpu-stream-{}-{name}.npy", std::process::id()));
        let v: Vec<f32> = (0..rows * dim).map(|k| (k / dim) as f32).collect();
        crate::io::npy::write_npy_f32(&p, &v, &[rows, dim]).unwrap();
        p
    }

    fn stream(path: &Path, mib: f64, seed: u64) -> DataStream {
        let plan = StreamPlan {
            pool_mib: mib,
            refresh_steps: None,
        };
        DataStream::new(NpyRows::open(path).unwrap(), &plan, 4, seed).unwrap()
    }

    /// Every pass visits every row once (the file's rows hold their own index), pools are
    /// pure functions of (seed, e) and differ between seeds, and partial last blocks and
    /// pools that straddle two passes are read right.
    #[test]
    fn pools_cover_every_row_once_per_pass() {
        let (rows, dim) = (1003, 3);
        let path = write("cover", rows, dim);
        // 64 rows of 3 f32 per pool: 1 block row each → blocks of 1; use a bigger pool too.
        for mib in [
            64.0 * 12.0 / (1 << 20) as f64,
            300.0 * 12.0 / (1 << 20) as f64,
        ] {
            let mut s = stream(&path, mib, 9);
            let p = s.pool_rows;
            let pools = (3 * rows).div_ceil(p) as u64;
            let mut seen = Vec::new();
            for e in 0..pools {
                let pool = s.pool(e).unwrap();
                assert_eq!(pool.len(), p * dim);
                for r in pool.chunks(dim) {
                    assert!(r.iter().all(|&v| v == r[0]), "a row is whole");
                    seen.push(r[0] as usize);
                }
            }
            for pass in 0..3 {
                let mut v = seen[pass * rows..(pass + 1) * rows].to_vec();
                v.sort_unstable();
                assert_eq!(v, (0..rows).collect::<Vec<_>>(), "pass {pass}, pool {p}");
            }
            assert_ne!(
                seen[..rows],
                seen[rows..2 * rows],
                "each pass has its own order"
            );
            assert_eq!(stream(&path, mib, 9).pool(5).unwrap(), s.pool(5).unwrap());
            assert_ne!(stream(&path, mib, 10).pool(5).unwrap(), s.pool(5).unwrap());
        }
        std::fs::remove_file(path).ok();
    }

    /// Malformed headers are errors, never panics: short files, a v1 header length of 0
    /// or 1, a header longer than the file, trailing bytes.
    #[test]
    fn bad_headers_are_errors() {
        let p = std::env::temp_dir().join(format!("flowgpu-stream-{}-bad.npy", std::process::id()));
        let good = crate::io::npy::npy_header(&[2, 2]);
        let mut cases: Vec<Vec<u8>> = vec![
            vec![],
            b"\x93NUMPY".to_vec(),
            b"\x93NUMPY\x01\x00\x00\x00".to_vec(),
            b"\x93NUMPY\x01\x00\x01\x00x".to_vec(),
            b"\x93NUMPY\x01\x00\x00\x00abcdefgh".to_vec(),
            b"\x93NUMPY\x01\x00\xff\xff".to_vec(),
            good.clone(),
        ];
        let mut trailing = good.clone();
        trailing.extend_from_slice(&[0u8; 20]);
        cases.push(trailing);
        for bytes in cases {
            std::fs::write(&p, &bytes).unwrap();
            assert!(NpyRows::open(&p).is_err(), "{bytes:?}");
        }
        std::fs::remove_file(p).ok();
    }

    /// The chunked passes give the bits of the whole-file statistics and fingerprint.
    #[test]
    fn scan_matches_the_whole_file() {
        let p =
            std::env::temp_dir().join(format!("flowgpu-stream-{}-scan.npy", std::process::id()));
        let (rows, dim) = (SCAN_VALUES / 3 + 777, 3);
        let v: Vec<f32> = (0..rows * dim)
            .map(|k| ((k * 7919) % 1000) as f32 * 0.37 + 1.7e6 * (k % 3 == 0) as u8 as f32)
            .collect();
        crate::io::npy::write_npy_f32(&p, &v, &[rows, dim]).unwrap();
        let whole = super::super::Dataset::from_file(&p, false).unwrap();
        let got = scan(&mut NpyRows::open(&p).unwrap(), true).unwrap();
        let fingerprint_only = scan(&mut NpyRows::open(&p).unwrap(), false).unwrap();
        assert_eq!(fingerprint_only.fingerprint, got.fingerprint);
        assert_eq!(got.standardization, Some(whole.standardization()));
        assert_eq!(got.fingerprint, whole.fingerprint());
        std::fs::remove_file(p).ok();
    }
}
