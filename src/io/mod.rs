//! File input/output helpers: atomic writes, NPY and CSV matrices.

pub mod atomic;
pub mod csv;
pub mod npy;

use std::io::Read;
use std::path::Path;

/// The most bytes a JSON configuration may have.
pub const MAX_CONFIG_BYTES: u64 = 1 << 20;
/// The most bytes a model, checkpoint or data file may have.
pub const MAX_FILE_BYTES: u64 = 1 << 36;

/// The bytes of the regular file at `path` (links followed), at most `max` of them: a
/// device, a FIFO or a file growing without end is an error, never a read until memory
/// runs out.
pub fn read_bounded(path: &Path, max: u64) -> std::io::Result<Vec<u8>> {
    use std::io::{Error, ErrorKind};
    let meta = std::fs::metadata(path)?;
    if !meta.is_file() {
        return Err(Error::new(
            ErrorKind::InvalidInput,
            "not a regular file (a device, FIFO or directory cannot be read as input)",
        ));
    }
    let mut bytes = Vec::with_capacity(meta.len().min(max) as usize);
    std::fs::File::open(path)?
        .take(max + 1)
        .read_to_end(&mut bytes)?;
    if bytes.len() as u64 > max {
        return Err(Error::new(
            ErrorKind::InvalidInput,
            format!("larger than the {max} bytes allowed for this kind of file"),
        ));
    }
    Ok(bytes)
}

/// An FNV-1a hash of byte strings, as 16 hex digits: identifies data, models and inputs
/// (not a cryptographic hash).
#[derive(Clone, Copy, Debug)]
pub struct Fingerprint(u64);

impl Default for Fingerprint {
    fn default() -> Self {
        Fingerprint(0xcbf2_9ce4_8422_2325)
    }
}

impl Fingerprint {
    pub fn add(&mut self, bytes: &[u8]) -> &mut Self {
        for &b in bytes {
            self.0 = (self.0 ^ b as u64).wrapping_mul(0x0100_0000_01b3);
        }
        self
    }
    pub fn hex(&self) -> String {
        format!("{:016x}", self.0)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn devices_and_oversized_files_are_refused() {
        let e = super::read_bounded(std::path::Path::new("/dev/zero"), 1 << 20).unwrap_err();
        assert!(e.to_string().contains("not a regular file"), "{e}");
        let p = std::env::temp_dir().join(format!("flowgpu-bounded-{}", std::process::id()));
        std::fs::write(&p, [0u8; 100]).unwrap();
        assert_eq!(super::read_bounded(&p, 100).unwrap().len(), 100);
        let e = super::read_bounded(&p, 99).unwrap_err();
        assert!(e.to_string().contains("larger than"), "{e}");
        std::fs::remove_file(p).ok();
    }
}
