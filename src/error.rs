//! One error type for the library; the binary prints it as a single line.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No adapter matched, or none exists at all.
    #[error("{0}")]
    NoAdapter(String),
    /// Validation, out-of-memory or device-lost errors reported by wgpu.
    #[error("GPU error: {0}")]
    Gpu(String),
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A file exists but its contents are not what flowgpu expects.
    #[error("{}: {msg}", path.display())]
    Format { path: PathBuf, msg: String },
    /// A user-supplied value is out of range or unknown.
    #[error("{0}")]
    InvalidInput(String),
    /// Training diverged (a non-finite or exploding loss); the run keeps its last
    /// checkpoint.
    #[error("{0}")]
    Diverged(String),
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
    pub fn format(path: impl Into<PathBuf>, msg: impl Into<String>) -> Self {
        Error::Format {
            path: path.into(),
            msg: msg.into(),
        }
    }
    pub fn invalid(msg: impl Into<String>) -> Self {
        Error::InvalidInput(msg.into())
    }
}
