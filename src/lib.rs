//! flowgpu: conditional flow matching and continuous normalizing flows on any GPU.
//!
//! Rooms of the house, following the data:
//! - [`gpu`]: adapter choice, device, buffers, readback, error capture;
//! - [`kernels`]: one wrapper per WGSL file of `shaders/`;
//! - [`model`]: the MLP, its parameter layout and checkpoint files; [`mlp`]: the MLP on the GPU;
//! - [`path`]: conditional paths; [`train`]: the training loop, checkpoints, resume;
//!   [`mle`]: maximum-likelihood training with the adjoint method;
//! - [`solve`]: ODE solvers, sampling, encoding, log-likelihood; [`reference`](mod@reference): the f64 CPU
//!   oracle of every kernel; [`bench`](mod@bench): the standard throughput workloads;
//! - [`data`], [`io`], [`plot`]: data sets, file formats, PNG figures.

pub mod bench;
pub mod data;
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
pub mod reference;
pub mod rng;
pub mod solve;
pub mod train;

pub use error::{Error, Result};
pub use gpu::{AdapterChoice, BackendChoice, GpuContext};
pub use model::{Activation, MlpConfig, Model, ModelConfig, Weights};
pub use path::GaussianPath;
pub use solve::{Method, Sampler, SolveConfig, SolveStats, TimeGrid, Tolerances, Trace};
pub use train::{TrainConfig, Trainer};
