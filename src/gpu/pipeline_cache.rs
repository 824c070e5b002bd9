//! The on-disk pipeline cache: compiled pipelines kept across runs where the backend
//! supports it (wgpu: Vulkan, `Features::PIPELINE_CACHE`).
//!
//! Where: `$FLOWGPU_PIPELINE_CACHE` (a directory; `off` disables), else
//! `$XDG_CACHE_HOME/flowgpu`, else `$HOME/.cache/flowgpu`; one file per driver, named by
//! `wgpu::util::pipeline_cache_key` (vendor and device id; wgpu and the driver check the
//! driver version themselves). The file is wgpu's cache data behind our own header with a
//! length and an FNV-1a hash: a torn or edited file is ignored, never handed to the driver,
//! which trusts what it is given. Writes are atomic (temp file + rename), so concurrent
//! runs leave one complete file. A cache that cannot be read or written only costs
//! compile time: it is logged, never an error.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

const MAGIC: &[u8; 8] = b"FLOWGPC1";
const HEADER: usize = 24;

/// A device's pipeline cache and the file it came from and goes back to.
pub struct DiskPipelineCache {
    pub cache: wgpu::PipelineCache,
    path: PathBuf,
    /// Pipelines were compiled since the load: the data may have grown.
    dirty: AtomicBool,
    /// Bytes of valid cache data read at open (0: none).
    pub loaded_bytes: usize,
}

/// The directory the cache lives in, or None when disabled or no home is known.
pub fn cache_dir(setting: &super::settings::CacheDir) -> Option<PathBuf> {
    use super::settings::CacheDir;
    match setting {
        CacheDir::Off => None,
        CacheDir::Dir(d) => Some(d.clone()),
        CacheDir::Default => std::env::var_os("XDG_CACHE_HOME")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache")))
            .map(|d| d.join("flowgpu")),
    }
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Our header around wgpu's data: magic, length, hash.
pub fn encode(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER + data.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&(data.len() as u64).to_le_bytes());
    out.extend_from_slice(&fnv1a(data).to_le_bytes());
    out.extend_from_slice(data);
    out
}

/// wgpu's data inside a file written by [`encode`], or None if the file is not one
/// (wrong magic, torn, or altered).
pub fn decode(file: &[u8]) -> Option<&[u8]> {
    if file.len() < HEADER || &file[..8] != MAGIC {
        return None;
    }
    let len = u64::from_le_bytes(file[8..16].try_into().ok()?) as usize;
    let hash = u64::from_le_bytes(file[16..24].try_into().ok()?);
    let data = &file[HEADER..];
    (data.len() == len && fnv1a(data) == hash).then_some(data)
}

impl DiskPipelineCache {
    /// The cache for this device in `dir`, primed from disk when a valid file exists; None
    /// where the backend has no pipeline cache.
    pub fn open(
        device: &wgpu::Device,
        info: &wgpu::AdapterInfo,
        features: wgpu::Features,
        dir: &Path,
    ) -> Option<Self> {
        if !features.contains(wgpu::Features::PIPELINE_CACHE) {
            return None;
        }
        let path = dir.join(wgpu::util::pipeline_cache_key(info)?);
        let file = std::fs::read(&path).ok();
        let data = file.as_deref().and_then(decode);
        if file.is_some() && data.is_none() {
            log::warn!("ignoring damaged pipeline cache {}", path.display());
        }
        // SAFETY: `data` is exactly what `PipelineCache::get_data` returned in an earlier
        // run (our hash checks it came back unaltered); wgpu checks that it was made for
        // this adapter and driver, and `fallback` makes it start empty if not.
        let cache = unsafe {
            device.create_pipeline_cache(&wgpu::PipelineCacheDescriptor {
                label: Some("flowgpu pipeline cache"),
                data,
                fallback: true,
            })
        };
        Some(DiskPipelineCache {
            cache,
            path,
            dirty: AtomicBool::new(false),
            loaded_bytes: data.map_or(0, |d| d.len()),
        })
    }

    /// Note that a pipeline was compiled through the cache.
    pub fn touch(&self) {
        self.dirty.store(true, Ordering::Relaxed);
    }

    /// Where the cache is kept.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Write the cache back if pipelines were compiled since it was loaded or saved.
    pub fn save(&self) -> std::io::Result<()> {
        if !self.dirty.swap(false, Ordering::Relaxed) {
            return Ok(());
        }
        let Some(data) = self.cache.get_data() else {
            return Ok(());
        };
        // Every pipeline came from the file (the cache did not grow): nothing to write.
        if data.len() == self.loaded_bytes {
            return Ok(());
        }
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        crate::io::atomic::write_atomic(&self.path, &encode(&data))
    }
}

impl Drop for DiskPipelineCache {
    fn drop(&mut self) {
        if let Err(e) = self.save() {
            log::warn!(
                "could not save the pipeline cache {}: {e}",
                self.path.display()
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trip_and_damage() {
        let data: Vec<u8> = (0..1000u32).map(|i| (i * 7 % 251) as u8).collect();
        let file = encode(&data);
        assert_eq!(decode(&file), Some(&data[..]));
        // Torn: any shorter file is rejected.
        assert_eq!(decode(&file[..file.len() - 1]), None);
        assert_eq!(decode(&file[..10]), None);
        // Altered: one flipped bit in the body or the header.
        let mut bad = file.clone();
        bad[HEADER + 500] ^= 4;
        assert_eq!(decode(&bad), None);
        let mut bad = file.clone();
        bad[3] ^= 1;
        assert_eq!(decode(&bad), None);
        assert_eq!(decode(&encode(&[])), Some(&[][..]));
    }
}
