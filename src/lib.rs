//! flowgpu: conditional flow matching and continuous normalizing flows on any GPU.
//!
//! Rooms of the house, in dependency order (no cycles; `tests/architecture.rs`):
//! - [`gpu`]: the device — adapter choice, context, buffers, settings ([`gpu::Settings`],
//!   every `FLOWGPU_*` variable), the device profile ([`gpu::Tiles`]);
//! - [`kernels`]: one wrapper per WGSL file of `shaders/`, each entry point's bindings and
//!   parameters declared once;
//! - [`model`], [`mlp`]: the MLP, its parameter layout and files; the MLP on the GPU;
//! - [`ode`]: tableaus and grids, and the one GPU stage program every solve records through;
//! - [`path`], [`mle`], [`train`]: conditional paths, the maximum-likelihood objective, the
//!   trainer and training runs ([`train::Run`]);
//! - [`solve`]: sampling, encoding, log-likelihood; [`bench`](mod@bench): the standard
//!   throughput workloads;
//! - [`data`], [`io`], [`plot`]: data sets, file formats, figures.
//!
//! [`reference`](mod@reference) is the f64 oracle of the tests: public so that the
//! integration tests can call it, not part of the API, and never used by production code.

#![warn(clippy::too_many_lines)] // functions stay short: clippy.toml sets 120 lines

pub mod bench;
pub mod data;
pub mod diffusion;
pub mod error;
pub mod gpu;
pub mod io;
pub mod kernels;
pub mod mle;
pub mod mlp;
pub mod model;
pub mod ode;
pub mod path;
pub mod plot;
#[doc(hidden)]
pub mod reference;
pub mod rng;
pub mod shard;
pub mod solve;
pub mod train;

pub use error::{Error, Result};
pub use gpu::{AdapterChoice, BackendChoice, GpuContext};
pub use model::{Activation, MlpConfig, Model, ModelConfig, Weights};
pub use path::{GaussianPath, Prediction};
pub use solve::{Method, Sampler, SolveConfig, SolveStats, TimeGrid, Tolerances, Trace};
pub use train::{TrainConfig, Trainer};
