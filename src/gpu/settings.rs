//! Every `FLOWGPU_*` environment variable, read once per process and typed. Nothing else
//! in the crate reads the environment; a malformed value is an error at context creation,
//! never a silent default. docs/cli.md lists the same variables for users.

use super::BackendChoice;
use crate::error::{Error, Result};
use std::path::PathBuf;
use std::sync::OnceLock;

/// Where the on-disk pipeline cache lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CacheDir {
    /// The user's cache directory (`$XDG_CACHE_HOME/flowgpu`, else `~/.cache/flowgpu`).
    Default,
    /// `FLOWGPU_PIPELINE_CACHE=off` (or `0`, or empty).
    Off,
    /// `FLOWGPU_PIPELINE_CACHE=DIR`.
    Dir(PathBuf),
}

/// The process's settings from the environment.
#[derive(Clone, Debug, PartialEq)]
pub struct Settings {
    /// `FLOWGPU_ADAPTER`: a case-insensitive substring of the adapter's name; used when a
    /// command or [`super::AdapterChoice`] names none.
    pub adapter: Option<String>,
    /// `FLOWGPU_BACKEND` (`vulkan`, `metal`, `dx12`, `gl`): used when none is named.
    pub backend: Option<BackendChoice>,
    /// `FLOWGPU_PIPELINE_CACHE`: the on-disk pipeline cache's directory, or `off`.
    pub pipeline_cache: CacheDir,
    /// `FLOWGPU_TILES=wg_x,wg_y,weight_chunk_rows`: plain tiles of that shape on every
    /// adapter (tuning runs; implies no subgroup tiles).
    pub tiles: Option<[u32; 3]>,
    /// `FLOWGPU_SUBGROUP_TILES=0`: the plain tiles even where 8-lane subgroups exist.
    pub subgroup_tiles: bool,
    /// `FLOWGPU_FUSED_STEP=0`: the per-layer kernels for training steps of small models.
    pub fused_step: bool,
    /// `FLOWGPU_PHASE_BARRIERS=1`: keep the fused kernels' barriers where a subgroup runs
    /// in lockstep (CPU adapters), where they are otherwise compiled out.
    pub phase_barriers: bool,
    /// `FLOWGPU_STEP_GROUP_ROWS`: rows per workgroup of the fused training step [128].
    pub step_group_rows: usize,
    /// `FLOWGPU_FAULT_AFTER_FILE_OPS=N`, for fault-injection tests: the process aborts, as
    /// a kill would, instead of its Nth file operation of an atomic write.
    pub fault_after_file_ops: Option<u64>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            adapter: None,
            backend: None,
            pipeline_cache: CacheDir::Default,
            tiles: None,
            subgroup_tiles: true,
            fused_step: true,
            phase_barriers: false,
            step_group_rows: 128,
            fault_after_file_ops: None,
        }
    }
}

impl Settings {
    /// The settings from `var` (a lookup of variables by name): pure, for tests.
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Settings> {
        let d = Settings::default();
        Ok(Settings {
            adapter: var("FLOWGPU_ADAPTER").filter(|v| !v.is_empty()),
            backend: parse(&var, "FLOWGPU_BACKEND", backend)?,
            pipeline_cache: match var("FLOWGPU_PIPELINE_CACHE") {
                None => CacheDir::Default,
                Some(v) if v.is_empty() || v == "off" || v == "0" => CacheDir::Off,
                Some(v) => CacheDir::Dir(PathBuf::from(v)),
            },
            tiles: parse(&var, "FLOWGPU_TILES", tiles)?,
            subgroup_tiles: parse(&var, "FLOWGPU_SUBGROUP_TILES", switch)?
                .unwrap_or(d.subgroup_tiles),
            fused_step: parse(&var, "FLOWGPU_FUSED_STEP", switch)?.unwrap_or(d.fused_step),
            phase_barriers: parse(&var, "FLOWGPU_PHASE_BARRIERS", switch)?
                .unwrap_or(d.phase_barriers),
            step_group_rows: parse(&var, "FLOWGPU_STEP_GROUP_ROWS", positive)?
                .unwrap_or(d.step_group_rows),
            fault_after_file_ops: parse(&var, "FLOWGPU_FAULT_AFTER_FILE_OPS", |v| {
                positive(v).map(|n| n as u64)
            })?,
        })
    }

    /// The process's settings, read from the environment on first use.
    pub fn global() -> Result<&'static Settings> {
        static SETTINGS: OnceLock<std::result::Result<Settings, String>> = OnceLock::new();
        SETTINGS
            .get_or_init(|| {
                let s = Settings::from_vars(|k| std::env::var(k).ok());
                if let Ok(Some(n)) = s.as_ref().map(|s| s.fault_after_file_ops) {
                    crate::io::atomic::abort_at_file_op(n);
                }
                s.map_err(|e| e.to_string())
            })
            .as_ref()
            .map_err(|e| Error::invalid(e.clone()))
    }
}

/// `name`'s value through `f`, with the variable named in the error.
fn parse<T>(
    var: &impl Fn(&str) -> Option<String>,
    name: &str,
    f: fn(&str) -> Option<T>,
) -> Result<Option<T>> {
    match var(name) {
        None => Ok(None),
        Some(v) => f(v.trim()).map(Some).ok_or_else(|| {
            Error::invalid(format!(
                "environment variable {name}={v:?} is not valid (see docs/cli.md)"
            ))
        }),
    }
}

fn switch(v: &str) -> Option<bool> {
    match v {
        "1" | "on" | "true" => Some(true),
        "0" | "off" | "false" => Some(false),
        _ => None,
    }
}

fn positive(v: &str) -> Option<usize> {
    v.parse().ok().filter(|&n| n > 0)
}

fn backend(v: &str) -> Option<BackendChoice> {
    <BackendChoice as clap::ValueEnum>::from_str(v, true).ok()
}

fn tiles(v: &str) -> Option<[u32; 3]> {
    let n: Vec<u32> = v
        .split(',')
        .map(|x| x.trim().parse().ok())
        .collect::<Option<_>>()?;
    match n[..] {
        [x, y, c] if x > 0 && y > 0 && c > 0 => Some([x, y, c]),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: Vec<(String, String)> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone())
    }

    #[test]
    fn no_variables_give_the_defaults() {
        assert_eq!(Settings::from_vars(vars(&[])).unwrap(), Settings::default());
    }

    #[test]
    fn every_variable_is_read_and_typed() {
        let s = Settings::from_vars(vars(&[
            ("FLOWGPU_ADAPTER", "llvmpipe"),
            ("FLOWGPU_BACKEND", "GL"),
            ("FLOWGPU_PIPELINE_CACHE", "off"),
            ("FLOWGPU_TILES", "16, 8,64"),
            ("FLOWGPU_SUBGROUP_TILES", "0"),
            ("FLOWGPU_FUSED_STEP", "0"),
            ("FLOWGPU_PHASE_BARRIERS", "1"),
            ("FLOWGPU_STEP_GROUP_ROWS", "64"),
        ]))
        .unwrap();
        assert_eq!(s.adapter.as_deref(), Some("llvmpipe"));
        assert_eq!(s.backend, Some(BackendChoice::Gl));
        assert_eq!(s.pipeline_cache, CacheDir::Off);
        assert_eq!(s.tiles, Some([16, 8, 64]));
        assert!(!s.subgroup_tiles && !s.fused_step && s.phase_barriers);
        assert_eq!(s.step_group_rows, 64);
    }

    #[test]
    fn a_malformed_value_is_an_error_naming_the_variable() {
        for (k, v) in [
            ("FLOWGPU_BACKEND", "cuda"),
            ("FLOWGPU_TILES", "8,8"),
            ("FLOWGPU_TILES", "8,0,64"),
            ("FLOWGPU_FUSED_STEP", "maybe"),
            ("FLOWGPU_STEP_GROUP_ROWS", "0"),
        ] {
            let e = Settings::from_vars(vars(&[(k, v)]))
                .unwrap_err()
                .to_string();
            assert!(e.contains(k), "{e}");
        }
    }
}
