//! Atomic file writes: write a temp file next to the target, fsync, rename.
//!
//! Renaming within one directory is atomic on POSIX file systems, so a reader (or a
//! crash) sees either the old file or the complete new one, never a torn write.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// File operations of atomic writes done so far, and the one the process aborts at
/// instead (fault-injection tests: `FLOWGPU_FAULT_AFTER_FILE_OPS`, `gpu::Settings`).
static OPS: AtomicU64 = AtomicU64::new(0);
static ABORT_AT: AtomicU64 = AtomicU64::new(u64::MAX);

/// Abort the process, as a kill would, instead of its `n`th file operation (1-based) of an
/// atomic write: create, write, fsync, rename, directory fsync.
pub fn abort_at_file_op(n: u64) {
    ABORT_AT.store(n, Ordering::SeqCst);
}

/// Count one file operation; abort when it is the one fault injection asked for.
fn file_op() {
    if OPS.fetch_add(1, Ordering::SeqCst) + 1 >= ABORT_AT.load(Ordering::SeqCst) {
        std::process::abort();
    }
}

/// Temp files being written now, so that a process ending on a signal can remove them
/// ([`remove_temporaries`]).
static IN_FLIGHT: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

fn in_flight() -> std::sync::MutexGuard<'static, Vec<PathBuf>> {
    IN_FLIGHT.lock().unwrap_or_else(|p| p.into_inner())
}

/// Remove every temp file this process is writing (before it exits on a signal: no
/// `.<name>.tmp-*` file outlives its command).
pub fn remove_temporaries() {
    for p in in_flight().drain(..) {
        let _ = std::fs::remove_file(p);
    }
}

/// Distinguishes temp files of concurrent writers inside one process (the pid alone
/// would collide when two threads write the same target).
static COUNTER: AtomicU64 = AtomicU64::new(0);

/// The temp path `.<name>.tmp-<pid>-<n>` in the same directory as `path`.
fn temp_path(path: &Path) -> io::Result<PathBuf> {
    let name = path.file_name().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("cannot write {}: path has no file name", path.display()),
        )
    })?;
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".tmp-{}-{}", std::process::id(), n));
    Ok(path.with_file_name(tmp_name))
}

/// Writes `bytes` to `path` atomically.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    write_atomic_with(path, |w| w.write_all(bytes))
}

/// Atomically writes `path` with a streaming writer: `f` writes into a buffered temp
/// file, which is flushed, fsynced and renamed over `path` only if `f` succeeds.
/// On any error the temp file is removed and `path` is left untouched.
pub fn write_atomic_with(
    path: &Path,
    f: impl FnOnce(&mut BufWriter<File>) -> io::Result<()>,
) -> io::Result<()> {
    let tmp = temp_path(path)?;
    in_flight().push(tmp.clone());
    let result = (|| {
        file_op();
        let mut writer = BufWriter::new(File::create(&tmp)?);
        file_op();
        f(&mut writer)?;
        let file = writer.into_inner().map_err(|e| e.into_error())?;
        file_op();
        file.sync_all()?;
        drop(file);
        file_op();
        std::fs::rename(&tmp, path)
    })();
    in_flight().retain(|p| p != &tmp);
    match result {
        Ok(()) => {
            file_op();
            sync_parent_dir(path);
            Ok(())
        }
        Err(e) => {
            // Best effort: the original error is what the caller needs to see.
            let _ = std::fs::remove_file(&tmp);
            Err(io::Error::new(
                e.kind(),
                format!("writing {}: {e}", path.display()),
            ))
        }
    }
}

/// Makes the rename itself durable. Best effort: some platforms and file systems
/// cannot open or fsync a directory, and the data is already safely in place.
fn sync_parent_dir(path: &Path) {
    #[cfg(unix)]
    {
        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
    }
    #[cfg(not(unix))]
    let _ = path;
}

/// A fresh, empty scratch directory for tests, unique per process and tag.
#[cfg(test)]
pub(crate) fn scratch_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("flowgpu-test-{}-{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create scratch dir");
    dir
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn writes_and_replaces() {
        let dir = scratch_dir("atomic-replace");
        let p = dir.join("a.bin");
        write_atomic(&p, b"first").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"first");
        write_atomic(&p, b"second, longer").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"second, longer");
        assert_eq!(entries(&dir), vec!["a.bin"], "no temp files left behind");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn streaming_writer() {
        let dir = scratch_dir("atomic-stream");
        let p = dir.join("s.txt");
        write_atomic_with(&p, |w| {
            for i in 0..3 {
                writeln!(w, "line {i}")?;
            }
            Ok(())
        })
        .unwrap();
        assert_eq!(
            std::fs::read_to_string(&p).unwrap(),
            "line 0\nline 1\nline 2\n"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn error_keeps_old_file_and_removes_temp() {
        let dir = scratch_dir("atomic-error");
        let p = dir.join("keep.txt");
        write_atomic(&p, b"old").unwrap();
        let err = write_atomic_with(&p, |w| {
            w.write_all(b"partial")?;
            Err(io::Error::other("boom"))
        })
        .unwrap_err();
        assert!(err.to_string().contains("boom"), "{err}");
        assert!(err.to_string().contains("keep.txt"), "{err}");
        assert_eq!(std::fs::read(&p).unwrap(), b"old");
        assert_eq!(entries(&dir), vec!["keep.txt"]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn missing_directory_is_an_error() {
        let dir = scratch_dir("atomic-missing");
        let p = dir.join("no/such/dir/x.bin");
        assert!(write_atomic(&p, b"x").is_err());
        assert!(write_atomic(Path::new("/"), b"x").is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
