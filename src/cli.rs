//! Command-line interface: argument parsing, progress and reports. All work is done by
//! the library.

use clap::{Args, Parser, Subcommand};
use flowgpu::data::stream::StreamPlan;
use flowgpu::data::{AugmentFill, Dataset};
use flowgpu::diffusion::StepRule;
use flowgpu::error::{Error, Result};
use flowgpu::mle::MleGrad;
use flowgpu::model::{Activation, MlpConfig, Model, ModelConfig};
use flowgpu::plot::{self, RGBColor};
use flowgpu::solve::{Method, SolveConfig, SolveStats, TimeGrid, Tolerances, Trace};
use flowgpu::train::{Coupling, NewRun, Run, RunConfig, RunPlan};
use flowgpu::{AdapterChoice, BackendChoice, GaussianPath, GpuContext, Prediction};
use flowgpu::{Sampler, TrainConfig};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

#[derive(Parser)]
#[command(
    name = "flowgpu",
    version,
    about = "Flow matching and continuous normalizing flows on any GPU (wgpu)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Train a vector field by conditional flow matching (default: two moons).
    Train(Box<TrainArgs>),
    /// Draw samples from a trained model (noise at t = 0 → data at t = 1).
    Sample(SampleArgs),
    /// Map data to latents: integrate the ODE from t = 1 back to t = 0.
    Encode(MapArgs),
    /// Map latents to data: integrate the ODE from t = 0 to t = 1.
    Decode(MapArgs),
    /// Log-likelihood of points: the instantaneous change of variables, t = 1 → 0.
    Logprob(LogprobArgs),
    /// Heat map of the model density on a 2-D grid, beside the training data.
    Density(DensityArgs),
    /// Concatenate the shards of a sharded sample, encode, decode or logprob run.
    Merge(MergeArgs),
    /// List every adapter wgpu can see.
    Adapters(AdaptersArgs),
    /// Throughput of the standard workloads (as in benches/torch_baseline.py; docs/performance.md).
    Bench(BenchArgs),
}

/// `--shard I/N`: only the rows of shard I of N, plus a manifest for `flowgpu merge`.
#[derive(Args, Clone)]
struct ShardArgs {
    /// Write only shard I of N of the rows (rows ⌊I·n/N⌋ to ⌊(I+1)·n/N⌋) and a manifest
    /// <out>.shard.json; `flowgpu merge` joins the N outputs into the unsharded file.
    #[arg(long)]
    shard: Option<flowgpu::shard::Shard>,
}

impl ShardArgs {
    fn rows(&self, n: usize) -> std::ops::Range<usize> {
        self.shard.map_or(0..n, |s| s.rows(n))
    }
}

#[derive(Args)]
struct MergeArgs {
    /// The merged file: .npy or .csv.
    #[arg(long)]
    out: PathBuf,
    /// The shard files (any order), each with its <file>.shard.json.
    #[arg(required = true)]
    parts: Vec<PathBuf>,
    /// Print one JSON object as the last line of stdout.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Clone)]
struct GpuArgs {
    /// Use the adapter whose name contains this (case-insensitive); `all`, or several
    /// names separated by commas: every adapter named (sample, encode, decode and logprob
    /// split their rows over them, train each batch; evenly unless --adapter-weights).
    #[arg(long, global = true)]
    adapter: Option<String>,
    /// Restrict the search to one backend.
    #[arg(long, value_enum, global = true)]
    backend: Option<BackendChoice>,
    /// With several adapters: their shares of the rows (or of each batch) in proportion to
    /// these integer weights, one per adapter in order (e.g. 3,1) [even].
    #[arg(long, global = true, value_name = "W,W,...")]
    adapter_weights: Option<String>,
    /// Print one JSON object as the last line of stdout.
    #[arg(long, global = true)]
    json: bool,
}

impl GpuArgs {
    /// `--adapter-weights` as given (None: even).
    fn parsed_weights(&self) -> Result<Option<Vec<u32>>> {
        let Some(list) = &self.adapter_weights else {
            return Ok(None);
        };
        let bad = || {
            Error::invalid(format!(
                "--adapter-weights '{list}': give one whole number ≥ 1 per adapter, e.g. 3,1"
            ))
        };
        list.split(',')
            .map(|v| {
                v.trim()
                    .parse::<u32>()
                    .ok()
                    .filter(|&v| v >= 1)
                    .ok_or_else(bad)
            })
            .collect::<Result<Vec<u32>>>()
            .map(Some)
    }

    /// One weight per adapter of `ctxs` (`--adapter-weights`, else all 1).
    fn weights(&self, ctxs: &[GpuContext]) -> Result<Vec<u32>> {
        let Some(w) = self.parsed_weights()? else {
            return Ok(vec![1; ctxs.len()]);
        };
        if w.len() != ctxs.len() {
            let names: Vec<String> = ctxs
                .iter()
                .map(|c| format!("{} ({})", c.adapter_name(), c.backend_name()))
                .collect();
            return Err(Error::invalid(format!(
                "--adapter-weights gives {} weights for {} adapters: {}",
                w.len(),
                ctxs.len(),
                names.join(", ")
            )));
        }
        Ok(w)
    }

    /// `--adapter all` or a comma-separated list: several adapters (`sample`, `encode`,
    /// `decode` and `logprob` split their rows over them, `train` each batch).
    fn wants_all(&self) -> bool {
        self.adapter
            .as_deref()
            .is_some_and(|a| a.eq_ignore_ascii_case("all") || a.contains(','))
    }

    /// One context, or with `--adapter all` (or a list) one per adapter.
    fn contexts(&self) -> Result<Vec<GpuContext>> {
        // Bad weights fail before any device opens.
        self.parsed_weights()?;
        if !self.wants_all() {
            return Ok(vec![self.context()?]);
        }
        let base = AdapterChoice {
            backend: self.backend,
            ..Default::default()
        };
        open_adapters(self.adapter.as_deref(), &base).and_then(|ctxs| {
            self.weights(&ctxs)?;
            Ok(ctxs)
        })
    }

    fn context(&self) -> Result<GpuContext> {
        if self.adapter_weights.is_some() && !self.wants_all() {
            return Err(Error::invalid(
                "--adapter-weights splits train, sample, encode, decode and logprob over several adapters: name them with --adapter all or --adapter A,B",
            ));
        }
        if self.wants_all() {
            return Err(Error::invalid(
                "several adapters split the rows of sample, encode, decode and logprob and the batches of train; name one adapter for this command",
            ));
        }
        GpuContext::new(&AdapterChoice {
            name: self.adapter.clone(),
            backend: self.backend,
            ..Default::default()
        })
    }
}

#[derive(Args)]
struct TrainArgs {
    /// Built-in data set (moons, 8gaussians, checkerboard, circles, rings, pinwheel,
    /// swissroll, 2spirals) or a data file: .csv (header optional) or .npy ([N, dim]).
    #[arg(long, default_value = "moons")]
    data: String,
    /// ANODE: augment the data with K zero dimensions (and the source with K noise ones).
    #[arg(long, default_value_t = 0)]
    augment: usize,
    /// What fills a --source's augmented dimensions: noise, or copy (its own coordinates).
    #[arg(long, value_enum, default_value_t = AugmentFill::Noise)]
    augment_fill: AugmentFill,
    /// Couple source row i with data row i (--source must have as many rows as the data).
    #[arg(long)]
    paired: bool,
    /// Pairing within a batch: independent, or sinkhorn (minibatch entropic OT on the GPU).
    #[arg(long, value_enum, default_value_t = CouplingKind::Independent)]
    coupling: CouplingKind,
    /// Sinkhorn: ε = reg · mean cost of the batch.
    #[arg(long, default_value_t = 0.05)]
    ot_reg: f64,
    /// Sinkhorn iterations per step.
    #[arg(long, default_value_t = 50)]
    ot_iters: usize,
    /// Class-conditional model: column K (0-based) of the data file holds integer class labels.
    #[arg(long)]
    label_column: Option<usize>,
    /// Probability of dropping a row's label in training (for classifier-free guidance).
    #[arg(long, default_value_t = 0.1)]
    label_dropout: f64,
    /// Source distribution x0: gaussian, a built-in toy or a .csv/.npy file (e.g. 8gaussians → moons).
    #[arg(long, default_value = "gaussian")]
    source: String,
    /// Hold out this fraction of a data file's rows; train reports their NLL at the end.
    #[arg(long, default_value_t = 0.0)]
    val_frac: f64,
    /// Standardize columns: auto (files yes, built-in toys no), on, off.
    #[arg(long, value_enum, default_value_t = Standardize::Auto)]
    standardize: Standardize,
    /// Drop rows with NaN or infinite values instead of refusing the file.
    #[arg(long)]
    drop_nonfinite: bool,
    /// Stream an NPY data file instead of loading it whole: a GPU pool of this many MiB of
    /// its rows, replaced as training goes (data larger than memory; docs/scale.md).
    #[arg(long, value_name = "MIB")]
    stream_pool: Option<f64>,
    /// Steps between pool replacements (default: pool rows / batch).
    #[arg(long, value_name = "STEPS", requires = "stream_pool")]
    stream_refresh: Option<u64>,
    /// Write a checkpoint every N steps (and always at the end and on Ctrl-C); 0: end only.
    #[arg(long, default_value_t = 1000)]
    checkpoint_every: u64,
    /// Continue the interrupted run in DIR with its stored settings (other training flags
    /// are refused).
    #[arg(long)]
    resume: Option<PathBuf>,
    /// Train up to step N of the schedule, checkpoint and stop (exit 0); --resume continues.
    #[arg(long, value_name = "N")]
    stop_after: Option<u64>,
    /// Replace the run already in --out (without it, an existing run is an error).
    #[arg(long, conflicts_with = "resume")]
    overwrite: bool,
    /// Points drawn from the built-in data set (the training pool).
    #[arg(long, default_value_t = 100_000)]
    n_data: usize,
    /// Total optimizer steps.
    #[arg(long, default_value_t = 5000)]
    steps: u64,
    #[arg(long, default_value_t = 256)]
    batch: usize,
    /// Hidden width.
    #[arg(long, default_value_t = 64)]
    width: usize,
    /// Hidden layers.
    #[arg(long, default_value_t = 3)]
    depth: usize,
    /// Hidden activation (SiLU: a smooth field, cheap for adaptive solvers).
    #[arg(long, value_enum, default_value_t = Activation::Silu)]
    activation: Activation,
    /// Fourier frequencies of t added to the input (0: t only).
    #[arg(long, default_value_t = 0)]
    time_features: usize,
    #[arg(long, default_value_t = 1e-3)]
    lr: f64,
    /// AdamW decoupled weight decay.
    #[arg(long, default_value_t = 0.0)]
    weight_decay: f64,
    /// Linear learning-rate warm-up steps.
    #[arg(long, default_value_t = 100)]
    warmup: u64,
    /// Learning-rate schedule after warm-up: cosine (to 0) or constant.
    #[arg(long, value_enum, default_value_t = Schedule::Cosine)]
    schedule: Schedule,
    /// Global gradient-norm clip (0: off).
    #[arg(long, default_value_t = 1.0)]
    clip_norm: f64,
    /// EMA decay of the weights (e.g. 0.999); samples and the checkpoint use the EMA.
    #[arg(long)]
    ema: Option<f64>,
    /// Conditional path: ot (a=t, b=1−(1−σmin)t), vp (cosine), poly (a=tⁿ), icfm (+σ·ε), sb (Schrödinger bridge), vp-sde (linear β), ve-sde (geometric σ).
    #[arg(long, default_value = "ot")]
    path: String,
    /// σ_min of ot [0] or ve-sde [0.01].
    #[arg(long)]
    sigma_min: Option<f64>,
    /// β_min of the vp-sde path.
    #[arg(long, default_value_t = 0.1)]
    beta_min: f64,
    /// β_max of the vp-sde path.
    #[arg(long, default_value_t = 20.0)]
    beta_max: f64,
    /// σ_max of the ve-sde path (its source is N(0, σ_max²)).
    #[arg(long, default_value_t = 10.0)]
    sigma_max: f64,
    /// What the network predicts: velocity (flow matching), noise (ε, DDPM), data (x1)
    /// or score; every command converts it to the velocity it integrates.
    #[arg(long, value_enum, default_value_t = Prediction::Velocity)]
    predict: Prediction,
    /// Noise level σ of the icfm and sb paths.
    #[arg(long, default_value_t = 0.1)]
    sigma: f64,
    /// Exponent n of the poly path (a = tⁿ).
    #[arg(long, default_value_t = 2.0)]
    exponent: f64,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Run folder (default runs/<data>-<UTC timestamp>).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Training steps recorded per GPU submit.
    #[arg(long, default_value_t = 10)]
    steps_per_submit: usize,
    /// Steps between loss readbacks.
    #[arg(long, default_value_t = 100)]
    log_every: usize,
    /// Samples drawn for samples.png.
    #[arg(long, default_value_t = 4000)]
    plot_samples: usize,
    /// Also write flow.gif: 1000 samples carried from noise to data over 60 frames.
    #[arg(long)]
    animate: bool,
    /// Held-out points (fresh draws of the toy) for the final NLL; 0 skips it.
    #[arg(long, default_value_t = 2000)]
    eval_n: usize,
    #[command(flatten)]
    mle: MleArgs,
    #[command(flatten)]
    gpu: GpuArgs,
}

/// Maximum-likelihood training (`--objective mle`).
#[derive(Args, Clone)]
struct MleArgs {
    /// Training objective: cfm (flow matching) or mle (maximum likelihood through the ODE,
    /// gradients by the adjoint method or --grad backprop).
    #[arg(long, value_enum, default_value_t = Objective::Cfm)]
    objective: Objective,
    /// mle: divergence by the exact trace or hutchinson (--probes per row, fixed per step).
    #[arg(long, value_enum, default_value_t = TraceKind::Exact)]
    trace: TraceKind,
    /// mle: Hutchinson probes per row.
    #[arg(long, default_value_t = 1)]
    probes: usize,
    /// mle: Hutchinson probe distribution: rademacher or gaussian.
    #[arg(long, value_enum, default_value_t = ProbeKind::Rademacher)]
    probe: ProbeKind,
    /// mle: gradient by the adjoint ODE (memory independent of the steps) or backprop
    /// (reverse mode through the solver steps from stored states: the exact gradient of the
    /// discretized objective; memory O(steps × batch × dim)).
    #[arg(long, value_enum, default_value_t = MleGrad::Adjoint)]
    grad: MleGrad,
    /// mle: solver of the forward and gradient solves: euler, midpoint, rk4 (fixed steps,
    /// one submit per --steps-per-submit steps) or dopri5 (adaptive: per-row steps forward,
    /// batch-global steps for the adjoint; a few status reads per step).
    #[arg(long, alias = "solver", value_enum, default_value_t = Method::Rk4)]
    mle_solver: Method,
    /// mle: steps of each fixed-step solve over [0, 1].
    #[arg(long, default_value_t = 8)]
    mle_steps: usize,
    /// mle, dopri5: relative tolerance.
    #[arg(long, default_value_t = 1e-5)]
    mle_rtol: f64,
    /// mle, dopri5: absolute tolerance.
    #[arg(long, default_value_t = 1e-5)]
    mle_atol: f64,
    /// mle, dopri5: most attempted steps per solve.
    #[arg(long, default_value_t = 1000)]
    mle_max_steps: usize,
    /// mle: weight λ_K of the kinetic-energy regularizer ∫‖v‖² dt.
    #[arg(long, default_value_t = 0.0)]
    kinetic: f64,
    /// mle: weight λ_J of the Jacobian Frobenius regularizer ∫‖∂v/∂x‖²_F dt (by the probes).
    #[arg(long, default_value_t = 0.0)]
    jacobian_frobenius: f64,
    /// Start from the weights of the trained model in DIR (e.g. fine-tune a flow-matching
    /// model by likelihood); its shape, path and standardization are kept.
    #[arg(long)]
    init: Option<PathBuf>,
}

impl MleArgs {
    fn config(&self) -> Result<Option<flowgpu::mle::MleConfig>> {
        if self.objective == Objective::Cfm {
            return Ok(None);
        }
        let trace = TraceArgs {
            trace: self.trace,
            probes: self.probes,
            probe: self.probe,
            probe_seed: 0,
        }
        .trace()?;
        let (probes, rademacher) = match trace {
            Trace::Exact => (0, true),
            Trace::Hutchinson {
                probes, rademacher, ..
            } => (probes, rademacher),
        };
        let c = flowgpu::mle::MleConfig {
            probes,
            rademacher,
            solver: self.mle_solver,
            steps: self.mle_steps,
            kinetic: self.kinetic,
            frobenius: self.jacobian_frobenius,
            grad: self.grad,
            rtol: self.mle_rtol,
            atol: self.mle_atol,
            max_steps: self.mle_max_steps,
        };
        c.validate()?;
        Ok(Some(c))
    }
}

/// `sample`'s stochastic samplers (diffusion models, and any Gaussian-path model).
#[derive(Args, Clone)]
struct StochasticArgs {
    /// Sample with the reverse SDE (Euler–Maruyama with the linear drift exact) instead of
    /// the ODE: one network evaluation per --steps; --solver is not used.
    #[arg(long, conflicts_with = "ddim")]
    sde: bool,
    /// --sde: scale γ of the diffusion γ·g(t) (1: the path's own reverse SDE; 0: the ODE).
    #[arg(long, default_value_t = 1.0, requires = "sde")]
    diffusion: f64,
    /// Sample with DDIM steps (one network evaluation per --steps).
    #[arg(long)]
    ddim: bool,
    /// --ddim: stochasticity η (0: deterministic DDIM; 1: DDPM's ancestral sampling).
    #[arg(long, default_value_t = 0.0, requires = "ddim")]
    eta: f64,
}

impl StochasticArgs {
    fn rule(&self) -> StepRule {
        match (self.sde, self.ddim) {
            (true, _) => StepRule::Sde {
                diffusion: self.diffusion,
            },
            (_, true) => StepRule::Ddim { eta: self.eta },
            _ => StepRule::Ode,
        }
    }
}

#[derive(Args, Clone)]
struct SolverArgs {
    /// euler, midpoint, rk4 (fixed steps) or dopri5 (adaptive, per-sample step size).
    #[arg(long, value_enum, default_value_t = Method::Euler)]
    solver: Method,
    /// Fixed-step solvers: number of steps from t = 0 to 1.
    #[arg(long, default_value_t = 100)]
    steps: usize,
    /// Fixed-step grid: uniform, start (dense near t=0), end (dense near t=1), ends.
    #[arg(long, value_enum, default_value_t = TimeGrid::Uniform)]
    time_grid: TimeGrid,
    /// dopri5: relative tolerance.
    #[arg(long, default_value_t = 1e-5)]
    rtol: f64,
    /// dopri5: absolute tolerance.
    #[arg(long, default_value_t = 1e-5)]
    atol: f64,
    /// dopri5: most attempted steps per sample.
    #[arg(long, default_value_t = 10_000)]
    max_steps: usize,
    /// dopri5: first step size (default 5% of the interval).
    #[arg(long)]
    h0: Option<f64>,
    /// Rows per GPU chunk (memory stays bounded for any N).
    #[arg(long, default_value_t = 65536)]
    chunk: usize,
}

impl SolverArgs {
    fn config(&self) -> Result<SolveConfig> {
        let cfg = SolveConfig {
            method: self.solver,
            steps: self.steps,
            grid: self.time_grid,
            tol: Tolerances {
                rtol: self.rtol,
                atol: self.atol,
                max_steps: self.max_steps,
                h0: self.h0,
                ..Tolerances::default()
            },
            chunk: self.chunk,
            rule: StepRule::Ode,
        };
        cfg.validate()?;
        Ok(cfg)
    }
}

#[derive(Args)]
struct SampleArgs {
    /// Run folder with model.safetensors and config.json.
    #[arg(long)]
    model: PathBuf,
    /// Number of samples.
    #[arg(short, long, default_value_t = 1000)]
    n: usize,
    /// Output file: .npy or .csv.
    #[arg(long)]
    out: PathBuf,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[command(flatten)]
    solver: SolverArgs,
    #[command(flatten)]
    stochastic: StochasticArgs,
    /// Also plot the samples to this .png or .svg (a corner plot for more than 2-D).
    #[arg(long)]
    plot: Option<PathBuf>,
    /// Class-conditional models: the label to sample, as written in the data's label
    /// column.
    #[arg(long, allow_negative_numbers = true)]
    class: Option<i64>,
    /// Classifier-free guidance weight w (v = (1 + w)·v(x|c) − w·v(x)).
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true)]
    guidance: f64,
    /// Also plot the trajectories of --particles samples to this .png or .svg.
    #[arg(long)]
    trajectories: Option<PathBuf>,
    /// Also write a GIF of --particles samples moving from noise (t = 0) to data (t = 1),
    /// one frame per step of a fixed-step solve (RK4 when the solver is adaptive).
    #[arg(long)]
    animate: Option<PathBuf>,
    /// Frames of --animate.
    #[arg(long, default_value_t = 60)]
    frames: usize,
    /// Samples shown by --trajectories and --animate.
    #[arg(long, default_value_t = 300)]
    particles: usize,
    #[command(flatten)]
    shard: ShardArgs,
    #[command(flatten)]
    gpu: GpuArgs,
}

#[derive(Args)]
struct MapArgs {
    /// Run folder with model.safetensors and config.json.
    #[arg(long)]
    model: PathBuf,
    /// Input rows: .npy (f32/f64, [N, dim]) or .csv.
    #[arg(long)]
    input: PathBuf,
    /// Output file: .npy or .csv.
    #[arg(long)]
    out: PathBuf,
    #[command(flatten)]
    solver: SolverArgs,
    #[command(flatten)]
    shard: ShardArgs,
    #[command(flatten)]
    gpu: GpuArgs,
}

#[derive(Args, Clone)]
struct TraceArgs {
    /// Divergence: exact (dim tangents per evaluation) or hutchinson (--probes tangents).
    #[arg(long, value_enum, default_value_t = TraceKind::Exact)]
    trace: TraceKind,
    /// Hutchinson probes per point (fixed over the solve).
    #[arg(long, default_value_t = 1)]
    probes: usize,
    /// Hutchinson probe distribution: rademacher or gaussian.
    #[arg(long, value_enum, default_value_t = ProbeKind::Rademacher)]
    probe: ProbeKind,
    /// Seed of the Hutchinson probes.
    #[arg(long, default_value_t = 0)]
    probe_seed: u64,
}

impl TraceArgs {
    fn trace(&self) -> Result<Trace> {
        match self.trace {
            TraceKind::Exact => Ok(Trace::Exact),
            TraceKind::Hutchinson if self.probes == 0 => {
                Err(Error::invalid("--probes must be positive"))
            }
            TraceKind::Hutchinson => Ok(Trace::Hutchinson {
                probes: self.probes,
                rademacher: self.probe == ProbeKind::Rademacher,
                seed: self.probe_seed,
            }),
        }
    }
}

#[derive(Args)]
struct LogprobArgs {
    /// Run folder with model.safetensors and config.json.
    #[arg(long)]
    model: PathBuf,
    /// Points: .npy (f32/f64, [N, dim]) or .csv.
    #[arg(long)]
    input: PathBuf,
    /// log p(x) per point, nats: .npy or .csv.
    #[arg(long)]
    out: PathBuf,
    /// Also write the latents z (model units): .npy or .csv.
    #[arg(long)]
    latent: Option<PathBuf>,
    #[command(flatten)]
    trace: TraceArgs,
    #[command(flatten)]
    solver: SolverArgs,
    #[command(flatten)]
    shard: ShardArgs,
    #[command(flatten)]
    gpu: GpuArgs,
}

#[derive(Args)]
struct DensityArgs {
    /// Run folder with model.safetensors and config.json (a 2-D model).
    #[arg(long)]
    model: PathBuf,
    /// Output .png or .svg: the model's log-density (left) beside a histogram of the data
    /// (right, built-in toys), on one colour scale in nats.
    #[arg(long)]
    plot: PathBuf,
    /// Grid points per axis.
    #[arg(long, default_value_t = 200)]
    grid: usize,
    /// Plot range "lo,hi" on both axes.
    #[arg(long, default_value = "-5,5", allow_hyphen_values = true)]
    range: String,
    #[command(flatten)]
    trace: TraceArgs,
    #[command(flatten)]
    solver: SolverArgs,
    #[command(flatten)]
    gpu: GpuArgs,
}

#[derive(Args)]
struct BenchArgs {
    /// Workloads to run, comma separated (default: all): G-sgemm, W-small, W-fm, S-euler, S-rk4, L-exact, L-hutch, OT-sinkhorn-256, OT-sinkhorn-1024, M-adjoint, M-backprop.
    #[arg(long)]
    only: Option<String>,
    /// Smoke run: short timings, small n, 2 solver steps.
    #[arg(long)]
    quick: bool,
    /// Seconds of timed calls per measurement (default 3, 0.5 with --quick).
    #[arg(long)]
    min_time: Option<f64>,
    /// Also append the JSON lines to this file.
    #[arg(long)]
    out: Option<PathBuf>,
    /// "all" runs every adapter, or several names separated by commas; then the split
    /// workloads run once more over all of them at once. Otherwise a name substring.
    #[arg(long)]
    adapter: Option<String>,
    #[arg(long, value_enum)]
    backend: Option<BackendChoice>,
    /// One JSON line per workload on stdout.
    #[arg(long)]
    json: bool,
    /// Also time one call of each workload dispatch by dispatch (GPU timestamps) and print
    /// where its time goes, kernel by kernel.
    #[arg(long)]
    profile: bool,
}

#[derive(Args)]
struct AdaptersArgs {
    #[command(flatten)]
    gpu: GpuArgs,
}

pub fn run() -> Result<()> {
    use clap::{CommandFactory, FromArgMatches};
    // Help and version go to stdout with exit 0; usage errors exit 2 with clap's text.
    let matches = Cli::command().get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    if let Some(("train", m)) = matches.subcommand() {
        refuse_flags_with_resume(m)?;
    }
    // The environment's settings, checked before any work.
    flowgpu::gpu::Settings::global()?;
    // Every command ends promptly and cleanly on SIGINT, SIGTERM or SIGHUP.
    let signals = Signals::install()?;
    match cli.command {
        Command::Train(a) => train(*a, &signals),
        Command::Sample(a) => sample(a),
        Command::Encode(a) => map(a, true),
        Command::Decode(a) => map(a, false),
        Command::Logprob(a) => logprob(a),
        Command::Density(a) => density(a),
        Command::Merge(a) => merge(a),
        Command::Adapters(a) => adapters(a),
        Command::Bench(a) => bench(a),
    }
}

fn adapters(a: AdaptersArgs) -> Result<()> {
    let list = flowgpu::gpu::list_adapters(a.gpu.backend)?;
    if list.is_empty() {
        return Err(Error::NoAdapter(
            "no GPU adapter found; install Mesa lavapipe (`apt-get install mesa-vulkan-drivers`) for a software adapter".into(),
        ));
    }
    for s in &list {
        println!(
            "{} | {} | {} | driver: {} {} | max buffer {} MiB, storage binding {} MiB, {} storage buffers/stage, {} B workgroup memory, {} invocations/workgroup, subgroups {}..{}; features: {}; kernel tiles: {}",
            s.name,
            s.backend,
            s.device_type,
            s.driver,
            s.driver_info,
            s.max_buffer_size >> 20,
            s.max_storage_buffer_binding_size >> 20,
            s.max_storage_buffers_per_shader_stage,
            s.max_compute_workgroup_storage_size,
            s.max_compute_invocations_per_workgroup,
            s.subgroup_sizes.0,
            s.subgroup_sizes.1,
            if s.features.is_empty() {
                "none".to_string()
            } else {
                s.features.join(", ")
            },
            s.kernel_tiles
        );
    }
    if a.gpu.json {
        println!("{}", serde_json::json!({ "adapters": list }));
    }
    Ok(())
}

/// UTC timestamp YYYYMMDD-HHMMSS for run folder names.
fn timestamp() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (days, rem) = (secs / 86400, secs % 86400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719468;
    let era = z.div_euclid(146097);
    let doe = z - era * 146097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + if m <= 2 { 1 } else { 0 };
    format!(
        "{y:04}{m:02}{d:02}-{:02}{:02}{:02}",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60
    )
}

fn progress_bar(total: u64, quiet: bool) -> indicatif::ProgressBar {
    if quiet {
        return indicatif::ProgressBar::hidden();
    }
    let pb = indicatif::ProgressBar::new(total);
    pb.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:30} {pos}/{len} steps  loss {msg}  {per_sec}  eta {eta}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    pb
}

/// `--schedule`: the learning rate after warm-up.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Schedule {
    /// Cosine decay to 0 at the last step.
    Cosine,
    Constant,
}

/// `--standardize`: per-column standardization of the data.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Standardize {
    /// Data files yes, built-in toys no.
    Auto,
    On,
    Off,
}

/// `--coupling`: pairing of source and data points within a batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum CouplingKind {
    Independent,
    /// Minibatch entropic OT (Sinkhorn on the GPU).
    Sinkhorn,
}

/// `--objective`: what training minimizes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Objective {
    /// Conditional flow matching.
    Cfm,
    /// Maximum likelihood through the ODE.
    Mle,
}

/// `--trace`: how the divergence is computed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum TraceKind {
    /// dim tangents per evaluation.
    Exact,
    /// --probes random tangents per evaluation.
    Hutchinson,
}

/// `--probe`: the Hutchinson probe distribution.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum ProbeKind {
    Rademacher,
    Gaussian,
}

/// `train --resume DIR` continues DIR with its stored settings: a training flag given with
/// it would be silently ignored, so it is an error that names the flags.
fn refuse_flags_with_resume(m: &clap::ArgMatches) -> Result<()> {
    use clap::parser::ValueSource;
    if m.value_source("resume") != Some(ValueSource::CommandLine) {
        return Ok(());
    }
    // What may change between slices of a run: where it runs and how it reports.
    const ALLOWED: [&str; 6] = [
        "resume",
        "stop_after",
        "adapter",
        "adapter_weights",
        "backend",
        "json",
    ];
    // The flattened argument structs are groups (`GpuArgs`, `MleArgs`): their members count.
    let cmd = <Cli as clap::CommandFactory>::command();
    let groups: Vec<String> = cmd
        .find_subcommand("train")
        .map(|t| t.get_groups().map(|g| g.get_id().to_string()).collect())
        .unwrap_or_default();
    let given: Vec<String> = m
        .ids()
        .map(|id| id.as_str())
        .filter(|id| !ALLOWED.contains(id) && !groups.iter().any(|g| g == id))
        .filter(|id| m.value_source(id) == Some(ValueSource::CommandLine))
        .map(|id| format!("--{}", id.replace('_', "-")))
        .collect();
    if given.is_empty() {
        return Ok(());
    }
    Err(Error::invalid(format!(
        "--resume continues a run with the settings it was started with; drop {} (or start a new run with them)",
        given.join(", ")
    )))
}

/// The command-line name of an option value.
fn name_of(v: impl clap::ValueEnum) -> String {
    v.to_possible_value()
        .map(|p| p.get_name().to_string())
        .unwrap_or_default()
}

/// The run folder of a new run: `--out`, else runs/<data>-<UTC timestamp>.
fn run_dir(a: &TrainArgs) -> PathBuf {
    let name = Path::new(&a.data)
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("data")
        .to_string();
    a.out
        .clone()
        .unwrap_or_else(|| PathBuf::from("runs").join(format!("{name}-{}", timestamp())))
}

/// The optimizer's settings from the flags.
fn train_config(a: &TrainArgs) -> Result<TrainConfig> {
    let tc = TrainConfig {
        steps: a.steps,
        batch: a.batch,
        lr: a.lr,
        weight_decay: a.weight_decay,
        warmup: a.warmup,
        cosine: a.schedule == Schedule::Cosine,
        clip_norm: a.clip_norm,
        ema: a.ema,
        seed: a.seed,
        steps_per_submit: a.steps_per_submit,
        log_every: a.log_every,
        paired: a.paired,
        label_dropout: a.label_dropout,
        coupling: match a.coupling {
            CouplingKind::Independent => Coupling::Independent,
            CouplingKind::Sinkhorn => Coupling::Sinkhorn {
                reg: a.ot_reg,
                iters: a.ot_iters,
            },
        },
        mle: a.mle.config()?,
        ..TrainConfig::default()
    };
    tc.validate()?;
    Ok(tc)
}

/// A new run's configuration from the flags.
fn run_config(a: &TrainArgs) -> Result<RunConfig> {
    let is_toy = flowgpu::data::toys::Toy::from_name(&a.data).is_some();
    let plan = RunPlan {
        data: a.data.clone(),
        label_column: a.label_column,
        source: (a.source != "gaussian").then(|| a.source.clone()),
        n_data: a.n_data,
        val_frac: a.val_frac,
        standardize: match a.standardize {
            Standardize::Auto => !is_toy,
            Standardize::On => true,
            Standardize::Off => false,
        },
        drop_nonfinite: a.drop_nonfinite,
        checkpoint_every: a.checkpoint_every,
        plot_samples: a.plot_samples,
        eval_n: a.eval_n,
        data_fingerprint: None,
        stream: a.stream_pool.map(|pool_mib| StreamPlan {
            pool_mib,
            refresh_steps: a.stream_refresh,
        }),
    };
    let mlp = MlpConfig {
        dim: 0,
        width: a.width,
        depth: a.depth,
        activation: a.activation,
        time_features: a.time_features,
        classes: 0,
    };
    let flags = flowgpu::path::PathFlags {
        sigma_min: a.sigma_min,
        sigma: a.sigma,
        exponent: a.exponent,
        beta_min: a.beta_min,
        beta_max: a.beta_max,
        sigma_max: a.sigma_max,
    };
    let path = GaussianPath::from_name(&a.path, &flags)?;
    Ok(RunConfig {
        model: ModelConfig {
            data: a.data.clone(),
            seed: a.seed,
            predict: a.predict,
            ..ModelConfig::new(mlp, path)
        },
        train: train_config(a)?,
        plan,
    })
}

/// The run `train` works on: the one in `--resume`, or a new one from the flags.
fn open_run(a: &TrainArgs) -> Result<Run> {
    if let Some(dir) = &a.resume {
        return Run::resume(dir);
    }
    let new = NewRun {
        augment: a.augment,
        augment_fill: a.augment_fill,
        init: a.mle.init.as_deref().map(Model::load).transpose()?,
        overwrite: a.overwrite,
    };
    Run::create(&run_dir(a), run_config(a)?, new)
}

/// One line on the objective, for maximum-likelihood runs.
fn describe_mle(m: &flowgpu::mle::MleConfig) -> String {
    let trace = if m.probes == 0 {
        "exact trace".to_string()
    } else {
        let kind = if m.rademacher {
            "Rademacher"
        } else {
            "Gaussian"
        };
        format!("Hutchinson, {} {kind} probe(s)", m.probes)
    };
    let solver = if m.adaptive() {
        format!(
            "dopri5 (rtol {:e}, atol {:e}; NFE per step reported at the end)",
            m.rtol, m.atol
        )
    } else {
        format!(
            "{} × {} steps: {} NFE forward + {} NFE gradient per step",
            m.solver.name(),
            m.steps,
            m.nfe(),
            m.nfe_gradient()
        )
    };
    format!(
        "maximum likelihood, {} gradients, {trace}, {solver}",
        m.grad.name()
    )
}

/// How a loss reads: the CFM loss, or the NLL in nats and bits per data dimension (data
/// units) for maximum-likelihood runs.
fn loss_text(run: &Run) -> impl Fn(f32) -> String {
    let m = &run.config.model;
    let log_jac: f64 = m
        .standardization
        .as_ref()
        .map(|s| s.std.iter().map(|v| v.ln()).sum())
        .unwrap_or(0.0);
    let dims = m.density_dims() as f64;
    let mle = run.config.train.mle.is_some();
    move |l: f32| {
        if mle {
            let nats = l as f64 + log_jac;
            format!(
                "NLL {nats:.3} nats, {:.3} bits/dim",
                nats / (dims * std::f64::consts::LN_2)
            )
        } else {
            format!("{l:.4}")
        }
    }
}

/// SIGINT, SIGTERM and SIGHUP (what Ctrl-C, `timeout`, Docker, Kubernetes and Slurm
/// send). While training, a signal raises `stop`: the trainer finishes the steps already
/// submitted, writes a checkpoint and the process exits with 128 + the signal. In any
/// other phase of any command, the process removes its temporary files and exits at once
/// with that code, leaving no output that was not complete.
struct Signals {
    stop: std::sync::Arc<AtomicBool>,
    /// The signal that raised `stop`.
    which: std::sync::Arc<std::sync::atomic::AtomicI32>,
    training: std::sync::Arc<AtomicBool>,
}

impl Signals {
    fn install() -> Result<Signals> {
        use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
        let s = Signals {
            stop: Default::default(),
            which: Default::default(),
            training: Default::default(),
        };
        let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP])
            .map_err(|e| Error::invalid(format!("cannot install signal handlers: {e}")))?;
        let (stop, which, training) = (s.stop.clone(), s.which.clone(), s.training.clone());
        std::thread::spawn(move || {
            for sig in signals.forever() {
                if training.load(Ordering::SeqCst) {
                    which.store(sig, Ordering::SeqCst);
                    stop.store(true, Ordering::SeqCst);
                } else {
                    flowgpu::io::atomic::remove_temporaries();
                    std::process::exit(128 + sig);
                }
            }
        });
        Ok(s)
    }

    /// Signals raise `stop` (true) or end the process at once (false).
    fn set_training(&self, on: bool) {
        self.training.store(on, Ordering::SeqCst);
    }

    /// The exit code of a process stopped by the signal that raised `stop`.
    fn exit_code(&self) -> i32 {
        128 + self.which.load(Ordering::SeqCst)
    }
}

/// loss.png; for data of 2 or more dimensions samples.png over held-out data (the
/// training data when none is held out) and, with `--animate`, flow.gif.
fn write_figures(run: &Run, sampler: &Sampler, animate: bool) -> Result<()> {
    let tc = &run.config.train;
    let lr: Vec<f64> = (0..run.curve.len() as u64).map(|s| tc.lr_at(s)).collect();
    let png = run.dir.join("loss.png");
    let title = if tc.mle.is_some() {
        "training loss (negative log-likelihood)"
    } else {
        "training loss (flow matching)"
    };
    let loss = plot::LossFigure {
        loss: &run.curve,
        lr: &lr,
        smooth: 100,
        title,
    };
    plot::save(&png, &loss).map_err(|e| Error::io(&png, e))?;
    let (d, n) = (run.train_set.dim, run.config.plan.plot_samples);
    if d < 2 || n == 0 {
        return Ok(());
    }
    let seed = run.config.model.seed;
    let (samples, _) = sampler.sample(n, seed, &SolveConfig::default())?;
    let (shown, label) = match &run.held {
        Some(h) => (
            h.points[..h.points.len().min(n * d)].to_vec(),
            "held-out data",
        ),
        None => {
            let pts = &run.train_set.points;
            let mut shown = pts[..pts.len().min(n * d)].to_vec();
            if let Some(s) = &run.config.model.standardization {
                s.undo(&mut shown);
            }
            (shown, "training data")
        }
    };
    let png = run.dir.join("samples.png");
    let fig = plot::ScatterFigure {
        layers: vec![
            figure_layer(&shown, d, DATA_COLOUR, label),
            figure_layer(&samples, d, SAMPLE_COLOUR, "model samples"),
        ],
        title: "samples",
        max_dims: 4,
    };
    plot::save(&png, &fig).map_err(|e| Error::io(&png, e))?;
    if animate {
        let gif = run.dir.join("flow.gif");
        let cfg = SolveConfig::default();
        animate_flow(&gif, sampler, (1000, seed, 60), &cfg)?;
    }
    Ok(())
}

const DATA_COLOUR: RGBColor = RGBColor(150, 150, 150);
const SAMPLE_COLOUR: RGBColor = RGBColor(220, 50, 30);

fn figure_layer<'a>(
    points: &'a [f32],
    dim: usize,
    color: RGBColor,
    label: &'a str,
) -> plot::Layer<'a> {
    plot::Layer {
        points,
        dim,
        color,
        alpha: if color == DATA_COLOUR { 0.8 } else { 0.5 },
        label,
    }
}

/// A GIF of `particles` samples carried from the source to the data: `frames` frames
/// from a fixed-step solve with `frames − 1` steps of the solver's method and grid
/// (RK4 for adaptive solvers, whose steps are not evenly spaced in time).
fn animate_flow(
    path: &Path,
    sampler: &Sampler,
    (particles, seed, frames): (usize, u64, usize),
    cfg: &SolveConfig,
) -> Result<()> {
    let method = if cfg.adaptive() {
        Method::Rk4
    } else {
        cfg.method
    };
    let cfg = SolveConfig {
        method,
        steps: frames - 1,
        ..cfg.clone()
    };
    let snapshots = sampler.trajectories(particles, seed, &cfg)?;
    let times = cfg.grid.times_on(&sampler.path(), 0.0, 1.0, cfg.steps);
    let title = format!("flow, {} {} steps", cfg.describe(), cfg.steps);
    let anim = plot::Animation {
        frames: &snapshots,
        times: &times,
        dim: sampler.data_dim(),
        title: &title,
        side: 520,
    };
    plot::animate_gif(path, &anim).map_err(|e| Error::io(path, e))
}

/// The names of `--adapter A,B,...`, none of them empty (an empty one would match any).
fn adapter_names(list: &str) -> Result<Vec<String>> {
    let names: Vec<String> = list.split(',').map(|n| n.trim().to_string()).collect();
    if names.iter().any(String::is_empty) {
        return Err(Error::invalid(format!(
            "--adapter '{list}' has an empty name; give names separated by commas, e.g. --adapter lavapipe,llvmpipe"
        )));
    }
    Ok(names)
}

fn train(a: TrainArgs, signals: &Signals) -> Result<()> {
    let mut run = open_run(&a)?;
    let mut ctxs = a.gpu.contexts()?;
    let weights = a.gpu.weights(&ctxs)?;
    let ctx = ctxs.remove(0);
    let mut trainer = run.trainer_on(&ctx, ctxs, &weights)?;
    let steps = run.config.train.steps;
    if run.is_resumed() {
        let d = run.dir.display();
        eprintln!("resuming {d} at step {} of {steps}", trainer.step);
    }
    eprintln!(
        "training on {} → {}",
        describe_shares(&trainer.shares(&ctx)),
        run.dir.display()
    );
    if let Some(s) = run.stream() {
        eprintln!(
            "streaming {}: {} rows, a pool of {} rows ({:.1} MiB) replaced every {} steps",
            run.config.plan.data,
            s.file_rows(),
            s.pool_rows,
            (s.pool_rows * s.dim() * 4) as f64 / (1u64 << 20) as f64,
            s.refresh_steps
        );
    }
    if let Some(m) = &run.config.train.mle {
        eprintln!("{}", describe_mle(m));
    }
    let nfe = trainer.mle().map(|m| m.nfe_handle());
    let describe = loss_text(&run);
    let pb = progress_bar(steps, false);
    pb.set_position(trainer.step);
    let (t0, first_step) = (Instant::now(), trainer.step);
    signals.set_training(true);
    let until = a.stop_after.unwrap_or(steps).min(steps);
    let stopped = run.train_until(&ctx, &mut trainer, until, &signals.stop, |step, losses| {
        pb.set_position(step);
        if let Some(l) = losses.last() {
            let cost = nfe.as_ref().map_or(String::new(), |n| {
                format!(", NFE {} + {} per step", n.get().0, n.get().1)
            });
            pb.set_message(format!("{}{cost}", describe(*l)));
        }
    })?;
    signals.set_training(false);
    pb.finish_and_clear();
    if stopped {
        eprintln!(
            "interrupted at step {} of {steps}; checkpoint written. Resume with: flowgpu train --resume {}",
            trainer.step,
            run.dir.display()
        );
        std::process::exit(signals.exit_code());
    }
    if trainer.step < steps {
        eprintln!(
            "stopped at step {} of {steps} (--stop-after); checkpoint written. Resume with: flowgpu train --resume {}",
            trainer.step,
            run.dir.display()
        );
        return Ok(());
    }
    let wall = t0.elapsed().as_secs_f64();
    let model = run.model(&ctx, &trainer)?;
    let sampler = Sampler::new(&ctx, &model)?;
    write_figures(&run, &sampler, a.animate)?;
    let summary = TrainSummary {
        final_loss: run.final_loss(100),
        mle_nfe: trainer.mle().map(|m| m.mean_nfe()),
        held_out_nll: run.held_out_nll(&sampler)?,
        wall,
        steps_per_s: (steps - first_step) as f64 / wall,
        animated: a.animate,
    };
    report_train(&run, &summary, &describe, &trainer.shares(&ctx), a.gpu.json);
    Ok(())
}

/// The process's peak resident memory in MiB (Linux: VmHWM of /proc/self/status; None
/// elsewhere).
fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// "A (backend)", or for a split batch "A (backend): batch rows 0..128 + B (backend): …".
fn describe_shares(shares: &[flowgpu::train::parallel::ShareInfo]) -> String {
    if let [one] = shares {
        return format!("{} ({})", one.adapter, one.backend);
    }
    shares
        .iter()
        .map(|s| format!("{} ({}): batch rows {:?}", s.adapter, s.backend, s.rows))
        .collect::<Vec<_>>()
        .join(" + ")
}

/// What a finished training run reports.
struct TrainSummary {
    final_loss: f64,
    mle_nfe: Option<(f64, f64)>,
    held_out_nll: Option<f64>,
    wall: f64,
    steps_per_s: f64,
    /// flow.gif was written.
    animated: bool,
}

/// The final line on stderr, and the JSON summary on stdout with `--json`.
fn report_train(
    run: &Run,
    s: &TrainSummary,
    describe: &dyn Fn(f32) -> String,
    shares: &[flowgpu::train::parallel::ShareInfo],
    json: bool,
) {
    let (tc, plan) = (&run.config.train, &run.config.plan);
    let nll_text = match (&run.held, s.held_out_nll) {
        (Some(h), Some(v)) => format!(", held-out NLL {v:.4} nats ({} points)", h.len()),
        _ => String::new(),
    };
    let final_text = match s.mle_nfe {
        Some((f, g)) => format!(
            "training {}, {f:.0} + {g:.0} NFE per step (forward + gradient)",
            describe(s.final_loss as f32)
        ),
        None => format!("loss {:.4}", s.final_loss),
    };
    eprintln!(
        "done: {} steps in {:.1} s ({:.1} steps/s), final {final_text} (mean of last 100 steps){nll_text}; wrote {}/{{model.safetensors, config.json, checkpoint.safetensors, loss.csv, loss.png, samples.png{}}}",
        tc.steps,
        s.wall,
        s.steps_per_s,
        run.dir.display(),
        if s.animated { ", flow.gif" } else { "" }
    );
    if json {
        println!(
            "{}",
            serde_json::json!({
                "command": "train",
                "data": plan.data,
                "steps": tc.steps,
                "batch": tc.batch,
                "objective": if tc.mle.is_some() { "mle" } else { "cfm" },
                "final_loss": s.final_loss,
                "nfe_forward": s.mle_nfe.map(|n| n.0),
                "nfe_gradient": s.mle_nfe.map(|n| n.1),
                "held_out_nll": s.held_out_nll,
                "wall_s": s.wall,
                "steps_per_s": s.steps_per_s,
                "adapter": shares[0].adapter,
                "backend": shares[0].backend,
                "adapters": shares.iter().map(|s| serde_json::json!({
                    "name": s.adapter,
                    "backend": s.backend,
                    "rows": [s.rows.start, s.rows.end],
                })).collect::<Vec<_>>(),
                "stream": run.stream().map(|s| serde_json::json!({
                    "file_rows": s.file_rows(),
                    "pool_rows": s.pool_rows,
                    "block_rows": s.block_rows,
                    "refresh_steps": s.refresh_steps,
                })),
                "peak_rss_mib": peak_rss_mib(),
                "out": run.dir,
            })
        );
    }
}

/// A figure path that can be written: a .png in an existing directory.
fn check_figure_path(path: &Path, kinds: &[&str]) -> Result<()> {
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
    if !kinds.iter().any(|k| ext.eq_ignore_ascii_case(k)) {
        return Err(Error::invalid(format!(
            "{}: name the figure .{}",
            path.display(),
            kinds.join(" or .")
        )));
    }
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    if !dir.is_dir() {
        return Err(Error::invalid(format!(
            "{}: the directory {} does not exist",
            path.display(),
            dir.display()
        )));
    }
    Ok(())
}

/// Output format from the file extension.
fn check_output_path(path: &Path) -> Result<&'static str> {
    match path.extension().and_then(|e| e.to_str()) {
        Some("npy") => Ok("npy"),
        Some("csv") => Ok("csv"),
        _ => Err(Error::invalid(format!(
            "{}: output must end in .npy or .csv",
            path.display()
        ))),
    }
}

/// Something that streams rows into a sink and reports solver statistics.
type Producer<'a> = dyn FnMut(&mut dyn FnMut(&[f32]) -> Result<()>) -> Result<SolveStats> + 'a;

/// Write rows streamed by `produce` to an .npy or .csv file, atomically: on any error,
/// a NaN or an infinity among the rows included, the file is not created.
fn write_rows(path: &Path, n: usize, dim: usize, produce: &mut Producer) -> Result<SolveStats> {
    use std::io::Write;
    let fmt = check_output_path(path)?;
    let mut failure: Option<Error> = None;
    let mut stats = SolveStats::default();
    let res = flowgpu::io::atomic::write_atomic_with(path, |w| {
        if fmt == "npy" {
            w.write_all(&flowgpu::io::npy::npy_header(&[n, dim]))?;
        }
        let mut written = 0usize;
        let mut sink = |rows: &[f32]| -> Result<()> {
            let io = |e: std::io::Error| Error::io(path, e);
            if let Some(i) = rows.iter().position(|v| !v.is_finite()) {
                let row = (written + i) / dim.max(1);
                return Err(Error::invalid(format!(
                    "row {row} of the result is {} (the model or the solve diverged there); nothing was written to {}",
                    rows[i],
                    path.display()
                )));
            }
            written += rows.len();
            if fmt == "npy" {
                w.write_all(bytemuck::cast_slice(rows)).map_err(io)?;
            } else {
                for r in rows.chunks(dim) {
                    let line: Vec<String> = r.iter().map(|v| v.to_string()).collect();
                    writeln!(w, "{}", line.join(",")).map_err(io)?;
                }
            }
            Ok(())
        };
        match produce(&mut sink) {
            Ok(s) => {
                stats = s;
                Ok(())
            }
            Err(e) => {
                failure = Some(e);
                Err(std::io::Error::other("aborted"))
            }
        }
    });
    if let Some(e) = failure {
        return Err(e);
    }
    res.map_err(|e| Error::io(path, e))?;
    Ok(stats)
}

/// Rows of an .npy or .csv file, checked against the model's dimension.
fn read_rows(path: &Path, dim: usize) -> Result<Vec<f32>> {
    let ds = Dataset::from_file(path, false)?;
    if ds.dim != dim {
        return Err(Error::format(
            path,
            format!("has {} columns, the model has dimension {dim}", ds.dim),
        ));
    }
    Ok(ds.points)
}

fn solve_json(cfg: &SolveConfig, stats: &SolveStats) -> serde_json::Value {
    let mut j = serde_json::json!({
        "solver": cfg.method.name(),
        "nfe": stats.nfe,
    });
    match cfg.rule {
        StepRule::Ode => {}
        StepRule::Sde { diffusion } => {
            j["solver"] = "sde".into();
            j["diffusion"] = diffusion.into();
        }
        StepRule::Ddim { eta } => {
            j["solver"] = "ddim".into();
            j["eta"] = eta.into();
        }
    }
    if cfg.adaptive() {
        j["rtol"] = cfg.tol.rtol.into();
        j["atol"] = cfg.tol.atol.into();
        j["nfe_needed_mean"] = stats.nfe_needed_mean.into();
        j["accepted_mean"] = stats.accepted_mean.into();
        j["rejected_mean"] = stats.rejected_mean.into();
        j["accepted_max"] = stats.accepted_max.into();
        j["rejected_max"] = stats.rejected_max.into();
    } else {
        j["steps"] = cfg.steps.into();
        j["time_grid"] = serde_json::to_value(cfg.grid).unwrap_or_default();
    }
    j
}

/// Solver steps per sample: fixed steps, or mean accepted steps for dopri5.
fn steps_per_sample(cfg: &SolveConfig, stats: &SolveStats) -> f64 {
    if cfg.adaptive() {
        stats.accepted_mean
    } else {
        cfg.steps as f64
    }
}

fn sample(a: SampleArgs) -> Result<()> {
    check_output_path(&a.out)?;
    if a.n == 0 {
        return Err(Error::invalid("-n must be positive"));
    }
    if (a.trajectories.is_some() || a.animate.is_some()) && a.particles == 0 {
        return Err(Error::invalid("--particles must be positive"));
    }
    if !(2..=1000).contains(&a.frames) {
        return Err(Error::invalid("--frames must be between 2 and 1000"));
    }
    // Figures are checked before the samples are written: a bad figure path must not
    // fail the command after its main output exists.
    for fig in a.plot.iter().chain(&a.trajectories) {
        check_figure_path(fig, &["png", "svg"])?;
    }
    if let Some(gif) = &a.animate {
        check_figure_path(gif, &["gif"])?;
    }
    let cfg = SolveConfig {
        rule: a.stochastic.rule(),
        ..a.solver.config()?
    };
    cfg.validate()?;
    let model = Model::load(&a.model)?;
    let ctxs = a.gpu.contexts()?;
    let ctx = &ctxs[0];
    let class = a.class.map(|l| model.config.class_of(l)).transpose()?;
    let sampler = conditioned_sampler(ctx, &model, class, a.guidance)?;
    let d = model.config.data_dim();
    let range = a.shard.rows(a.n);
    let t0 = Instant::now();
    let pb = progress_bar(range.len() as u64, false);
    pb.set_message("samples");
    // Keep up to 20 000 samples for the plot; the rest streams to the file.
    let mut kept: Vec<f32> = Vec::new();
    let mut keep = |rows: &[f32]| {
        if kept.len() < 20_000 * d {
            kept.extend_from_slice(&rows[..rows.len().min(20_000 * d - kept.len())]);
        }
        pb.inc((rows.len() / d) as u64);
    };
    let mut parts = Vec::new();
    let stats = if ctxs.len() == 1 {
        write_rows(&a.out, range.len(), d, &mut |sink| {
            sampler.sample_rows_into(range.clone(), a.seed, &cfg, &mut |rows| {
                keep(rows);
                sink(rows)
            })
        })?
    } else {
        let done = over_adapters(&ctxs, &a.gpu.weights(&ctxs)?, range.clone(), &|c, part| {
            let mut out = Vec::new();
            let sampler = conditioned_sampler(c, &model, class, a.guidance)?;
            let s = sampler.sample_rows_into(part, a.seed, &cfg, &mut |r| {
                out.extend_from_slice(r);
                Ok(())
            })?;
            Ok((out, s))
        })?;
        parts = done.iter().map(|(p, _)| p.clone()).collect();
        write_rows(&a.out, range.len(), d, &mut |sink| {
            let mut stats = SolveStats::default();
            for (_, (rows, s)) in &done {
                keep(rows);
                sink(rows)?;
                stats.merge(s);
            }
            Ok(stats)
        })?
    };
    pb.finish_and_clear();
    let wall = t0.elapsed().as_secs_f64();
    let run = serde_json::json!({ "seed": a.seed, "class": a.class, "guidance": a.guidance });
    ShardRun {
        shard: a.shard.shard,
        command: "sample",
        model: &a.model,
        input: None,
        settings: shard_settings(&cfg, run),
        n: a.n,
    }
    .write(&a.out, "rows", d)?;
    sample_figures(&a, &sampler, &kept, range.len(), &cfg)?;
    let rate = range.len() as f64 * steps_per_sample(&cfg, &stats) / wall;
    eprintln!(
        "sampled {} points with {} (nfe {}) in {wall:.2} s ({rate:.3e} samples·steps/s) → {}",
        range.len(),
        cfg.describe(),
        stats.nfe,
        a.out.display()
    );
    if a.gpu.json {
        let mut j = solve_json(&cfg, &stats);
        j["command"] = "sample".into();
        j["n"] = range.len().into();
        if let Some(s) = a.shard.shard {
            j["shard"] = serde_json::json!([s.index, s.count]);
        }
        j["wall_s"] = wall.into();
        j["sample_steps_per_s"] = rate.into();
        j["adapter"] = ctx.adapter_name().into();
        j["backend"] = ctx.backend_name().into();
        if !parts.is_empty() {
            j["adapters"] = adapters_json(&ctxs, &parts);
        }
        j["out"] = a.out.to_string_lossy().into();
        println!("{j}");
    }
    Ok(())
}

/// Paths of `particles` samples in (x1, x2), coloured by time. Adaptive solvers record
/// every attempt, whose times are not stored: their paths are coloured by attempt.
fn plot_trajectories(
    fig: &Path,
    sampler: &Sampler,
    particles: usize,
    seed: u64,
    cfg: &SolveConfig,
) -> Result<()> {
    let snapshots = sampler.trajectories(particles, seed, cfg)?;
    let times: Vec<f64> = if cfg.adaptive() {
        let n = snapshots.len().max(2) - 1;
        (0..snapshots.len()).map(|k| k as f64 / n as f64).collect()
    } else {
        cfg.grid.times_on(&sampler.path(), 0.0, 1.0, cfg.steps)
    };
    let title = format!("{particles} trajectories, {}", cfg.describe());
    let traj = plot::TrajectoryFigure {
        snapshots: &snapshots,
        times: &times,
        dim: sampler.data_dim(),
        title: &title,
        time_label: if cfg.adaptive() {
            "attempt / attempts"
        } else {
            "t"
        },
    };
    plot::save(fig, &traj).map_err(|e| Error::io(fig, e))
}

fn map(a: MapArgs, encode: bool) -> Result<()> {
    check_output_path(&a.out)?;
    let cfg = a.solver.config()?;
    let model = Model::load(&a.model)?;
    // Encoding reads data rows and writes latents of the model's (augmented) dimension.
    let (d_in, d) = if encode {
        (model.config.data_dim(), model.config.mlp.dim)
    } else {
        (model.config.mlp.dim, model.config.data_dim())
    };
    let all = read_rows(&a.input, d_in)?;
    let range = a.shard.rows(all.len() / d_in);
    let x = &all[range.start * d_in..range.end * d_in];
    let ctxs = a.gpu.contexts()?;
    let ctx = &ctxs[0];
    let t0 = Instant::now();
    let done = over_adapters(&ctxs, &a.gpu.weights(&ctxs)?, range.clone(), &|c, part| {
        let xs = &all[part.start * d_in..part.end * d_in];
        if xs.is_empty() {
            return Ok((Vec::new(), SolveStats::default()));
        }
        let s = Sampler::new(c, &model)?;
        if encode {
            s.encode(xs, &cfg)
        } else {
            s.decode(xs, &cfg)
        }
    })?;
    let (mut y, mut stats) = (Vec::with_capacity(range.len() * d), SolveStats::default());
    for (_, (ys, s)) in &done {
        y.extend_from_slice(ys);
        stats.merge(s);
    }
    let wall = t0.elapsed().as_secs_f64();
    let n = x.len() / d_in;
    write_rows(&a.out, n, d, &mut |sink| {
        sink(&y)?;
        Ok(stats.clone())
    })?;
    let what = if encode { "encode" } else { "decode" };
    ShardRun {
        shard: a.shard.shard,
        command: what,
        model: &a.model,
        input: Some(&a.input),
        settings: shard_settings(&cfg, serde_json::Value::Null),
        n: all.len() / d_in,
    }
    .write(&a.out, "rows", d)?;
    eprintln!(
        "{what}d {n} rows with {} (nfe {}) in {wall:.2} s → {}",
        cfg.method.name(),
        stats.nfe,
        a.out.display()
    );
    if a.gpu.json {
        let mut j = solve_json(&cfg, &stats);
        j["command"] = what.into();
        j["n"] = n.into();
        j["wall_s"] = wall.into();
        j["sample_steps_per_s"] = (n as f64 * steps_per_sample(&cfg, &stats) / wall).into();
        j["adapter"] = ctx.adapter_name().into();
        j["backend"] = ctx.backend_name().into();
        if ctxs.len() > 1 {
            let parts: Vec<_> = done.iter().map(|(p, _)| p.clone()).collect();
            j["adapters"] = adapters_json(&ctxs, &parts);
        }
        println!("{j}");
    }
    Ok(())
}

fn logprob(a: LogprobArgs) -> Result<()> {
    check_output_path(&a.out)?;
    if let Some(l) = &a.latent {
        check_output_path(l)?;
    }
    let cfg = a.solver.config()?;
    let trace = a.trace.trace()?;
    let model = Model::load(&a.model)?;
    let d = model.config.data_dim();
    let all = read_rows(&a.input, d)?;
    let range = a.shard.rows(all.len() / d);
    if range.is_empty() {
        return Err(Error::invalid(format!(
            "shard {} of {} rows is empty; use fewer shards",
            a.shard
                .shard
                .map_or(String::new(), |s| format!("{}/{}", s.index, s.count)),
            all.len() / d
        )));
    }
    let ctxs = a.gpu.contexts()?;
    let ctx = &ctxs[0];
    let t0 = Instant::now();
    let done = over_adapters(&ctxs, &a.gpu.weights(&ctxs)?, range.clone(), &|c, part| {
        let xs = &all[part.start * d..part.end * d];
        if xs.is_empty() {
            return Ok((Vec::new(), Vec::new(), SolveStats::default()));
        }
        Sampler::new(c, &model)?.log_prob_from(xs, part.start, trace, &cfg)
    })?;
    let (mut logp, mut z, mut stats) = (Vec::new(), Vec::new(), SolveStats::default());
    for (_, (l, zs, s)) in &done {
        logp.extend_from_slice(l);
        z.extend_from_slice(zs);
        stats.merge(s);
    }
    let d_latent = model.config.mlp.dim;
    let wall = t0.elapsed().as_secs_f64();
    let n = logp.len();
    let lp32: Vec<f32> = logp.iter().map(|&v| v as f32).collect();
    write_rows(&a.out, n, 1, &mut |sink| {
        sink(&lp32)?;
        Ok(stats.clone())
    })?;
    if let Some(l) = &a.latent {
        write_rows(l, n, d_latent, &mut |sink| {
            sink(&z)?;
            Ok(stats.clone())
        })?;
    }
    let shard_run = ShardRun {
        shard: a.shard.shard,
        command: "logprob",
        model: &a.model,
        input: Some(&a.input),
        settings: shard_settings(&cfg, serde_json::json!({ "trace": format!("{trace:?}") })),
        n: all.len() / d,
    };
    shard_run.write(&a.out, "logp", 1)?;
    if let Some(l) = &a.latent {
        shard_run.write(l, "latent", d_latent)?;
    }
    let nll = -logp.iter().sum::<f64>() / n as f64;
    let dims = model.config.density_dims();
    let bpd = nll / (dims as f64 * std::f64::consts::LN_2);
    eprintln!(
        "{n} points: mean NLL {nll:.4} nats ({bpd:.4} bits/dim), {} trace, {} (nfe {}) in {wall:.2} s → {}",
        name_of(a.trace.trace),
        cfg.method.name(),
        stats.nfe,
        a.out.display()
    );
    if a.gpu.json {
        let mut j = solve_json(&cfg, &stats);
        j["command"] = "logprob".into();
        j["n"] = n.into();
        j["nll_nats"] = nll.into();
        j["bits_per_dim"] = bpd.into();
        j["density_dims"] = dims.into();
        j["trace"] = name_of(a.trace.trace).into();
        if let Trace::Hutchinson { probes, .. } = trace {
            j["probes"] = probes.into();
            j["probe"] = name_of(a.trace.probe).into();
        }
        j["wall_s"] = wall.into();
        j["adapter"] = ctx.adapter_name().into();
        j["backend"] = ctx.backend_name().into();
        if ctxs.len() > 1 {
            let parts: Vec<_> = done.iter().map(|(p, _)| p.clone()).collect();
            j["adapters"] = adapters_json(&ctxs, &parts);
        }
        println!("{j}");
    }
    Ok(())
}

/// The log-density of 200 000 fresh draws of a built-in toy on the (g, lo, hi) grid
/// (−∞ in empty cells); None for data files, which cannot be redrawn.
fn toy_log_histogram(data: &str, (g, lo, hi): (usize, f64, f64)) -> Option<Vec<f64>> {
    let n = 200_000;
    let set = Dataset::toy(data, n, 1).ok()?;
    let cell = (hi - lo) / g as f64;
    let mut count = vec![0u32; g * g];
    for p in set.points.chunks(2) {
        let ix = ((p[0] as f64 - lo) / cell).floor();
        let iy = ((p[1] as f64 - lo) / cell).floor();
        if ix >= 0.0 && iy >= 0.0 && (ix as usize) < g && (iy as usize) < g {
            count[iy as usize * g + ix as usize] += 1;
        }
    }
    let norm = (n as f64 * cell * cell).ln();
    Some(count.iter().map(|&c| (c as f64).ln() - norm).collect())
}

fn density(a: DensityArgs) -> Result<()> {
    check_figure_path(&a.plot, &["png", "svg"])?;
    let cfg = a.solver.config()?;
    let trace = a.trace.trace()?;
    let range: Vec<f64> = a
        .range
        .split(',')
        .filter_map(|v| v.trim().parse().ok())
        .collect();
    if range.len() != 2 || range[0] >= range[1] || range.iter().any(|v| !v.is_finite()) {
        return Err(Error::invalid(format!(
            "--range must be 'lo,hi' with lo < hi, got '{}'",
            a.range
        )));
    }
    if a.grid < 2 || a.grid > 2000 {
        return Err(Error::invalid("--grid must be between 2 and 2000"));
    }
    let model = Model::load(&a.model)?;
    if model.config.data_dim() != 2 {
        return Err(Error::invalid(format!(
            "density plots need a 2-D model; this one has dimension {}",
            model.config.data_dim()
        )));
    }
    let ctx = a.gpu.context()?;
    let sampler = Sampler::new(&ctx, &model)?;
    let (g, lo, hi) = (a.grid, range[0], range[1]);
    let cell = (hi - lo) / g as f64;
    // Cell (ix, iy) at index iy·g + ix, y growing with iy.
    let mut pts = Vec::with_capacity(g * g * 2);
    for iy in 0..g {
        for ix in 0..g {
            pts.push((lo + (ix as f64 + 0.5) * cell) as f32);
            pts.push((lo + (iy as f64 + 0.5) * cell) as f32);
        }
    }
    let t0 = Instant::now();
    let (logp, _, stats) = sampler.log_prob(&pts, trace, &cfg)?;
    let wall = t0.elapsed().as_secs_f64();
    let dens: Vec<f64> = logp.iter().map(|&v| v.exp()).collect();
    let hist = toy_log_histogram(&model.config.data, (g, lo, hi));
    let title = format!("density, {} {}", cfg.method.name(), model.config.data);
    let fig = plot::DensityFigure {
        grid: g,
        lo,
        hi,
        model: &logp,
        data: hist.as_deref(),
        title: &title,
    };
    plot::save(&a.plot, &fig).map_err(|e| Error::io(&a.plot, e))?;
    let mass: f64 = dens.iter().sum::<f64>() * cell * cell;
    eprintln!("density on a {g}×{g} grid over [{lo}, {hi}]² in {wall:.1} s (nfe {}); mass in the window {mass:.4} → {}", stats.nfe, a.plot.display());
    if a.gpu.json {
        let mut j = solve_json(&cfg, &stats);
        j["command"] = "density".into();
        j["grid"] = g.into();
        j["mass"] = mass.into();
        j["wall_s"] = wall.into();
        j["adapter"] = ctx.adapter_name().into();
        j["backend"] = ctx.backend_name().into();
        println!("{j}");
    }
    Ok(())
}

/// The adapters `bench` runs on: every one (`--adapter all`), each of a list, or one.
fn bench_contexts(a: &BenchArgs) -> Result<Vec<GpuContext>> {
    let base = AdapterChoice {
        backend: a.backend,
        profile: a.profile,
        ..Default::default()
    };
    open_adapters(a.adapter.as_deref(), &base)
}

/// The adapters `--adapter` names (`base` sets the rest of the choice): every one for
/// `all`, in `GpuContext::all`'s order (two identical GPUs are two adapters), each of a
/// comma-separated list, or the one a name (or the default choice) picks.
fn open_adapters(spec: Option<&str>, base: &AdapterChoice) -> Result<Vec<GpuContext>> {
    match spec {
        Some(all) if all.eq_ignore_ascii_case("all") => GpuContext::all(base),
        Some(list) => adapter_names(list)?
            .into_iter()
            .map(|name| {
                GpuContext::new(&AdapterChoice {
                    name: Some(name),
                    ..base.clone()
                })
            })
            .collect(),
        None => Ok(vec![GpuContext::new(base)?]),
    }
}

/// `bench --adapter all` on a host with several adapters: the split workloads over all of
/// them at once, each against the first adapter's rate in `alone` (this run's, one record
/// per adapter and workload in adapter order), evenly and, where the adapters' own rates
/// differ, weighted by them (a weighted split that cannot run is reported and skipped).
fn bench_split(
    a: &BenchArgs,
    names: &[String],
    cfg: &flowgpu::bench::BenchConfig,
    alone: &[flowgpu::bench::BenchRecord],
) -> Result<Vec<flowgpu::bench::BenchRecord>> {
    use flowgpu::bench;
    let mut out = Vec::new();
    for name in names
        .iter()
        .filter(|n| bench::SPLIT_WORKLOADS.contains(&n.as_str()))
    {
        let rates: Vec<Option<f64>> = alone
            .iter()
            .filter(|r| &r.workload == name)
            .map(|r| r.rate())
            .collect();
        let base = rates.first().copied().flatten();
        let even = vec![1; rates.len()];
        let mut splits = vec![even.clone()];
        splits.extend(throughput_weights(&rates).filter(|w| *w != even));
        for weights in splits {
            let list = weights
                .iter()
                .map(u32::to_string)
                .collect::<Vec<_>>()
                .join(",");
            eprintln!(
                "bench: {name} split over {} adapters, --adapter-weights {list}",
                weights.len()
            );
            let records = match bench::run_split(bench_contexts(a)?, name, cfg, &weights) {
                Ok(r) => r,
                Err(e) if weights != even => {
                    eprintln!("bench: {name} with --adapter-weights {list} skipped: {e}");
                    continue;
                }
                Err(e) => return Err(e),
            };
            for mut r in records {
                r.vs_first = base.zip(r.rate()).map(|(b, k)| k / b);
                print_bench_record(&r);
                if let Some(v) = r.vs_first {
                    println!(
                        "  {name} on {} adapters at once (--adapter-weights {list}): {v:.2}× the first adapter alone",
                        weights.len()
                    );
                }
                out.push(r);
            }
        }
    }
    Ok(out)
}

/// Integer weights in proportion to the adapters' rates (the slowest 4, then divided by
/// their greatest common divisor: equal rates give all 1), if every rate is known.
fn throughput_weights(rates: &[Option<f64>]) -> Option<Vec<u32>> {
    let rates: Vec<f64> = rates.iter().copied().collect::<Option<_>>()?;
    let slowest = rates.iter().copied().fold(f64::INFINITY, f64::min);
    if !(slowest > 0.0 && slowest.is_finite()) {
        return None;
    }
    let w: Vec<u32> = rates
        .iter()
        .map(|r| ((4.0 * r / slowest).round().min(1e6) as u32).max(1))
        .collect();
    let gcd = |mut a: u32, mut b: u32| {
        while b != 0 {
            (a, b) = (b, a % b);
        }
        a
    };
    let g = w.iter().copied().fold(0, gcd).max(1);
    Some(w.iter().map(|v| v / g).collect())
}

/// One row of `flowgpu bench`'s table, and its dispatch profile when measured.
fn print_bench_record(r: &flowgpu::bench::BenchRecord) {
    let rate = if let Some(s) = r.steps_per_s {
        format!("{s:.1} steps/s")
    } else if let Some(n) = r.nfe_per_s {
        format!("{n:.3} NFE/s")
    } else if let Some(p) = r.plans_per_s {
        format!("{p:.1} plans/s")
    } else {
        let s = r.shape.unwrap_or_default();
        format!("{}x{}x{}", s[0], s[1], s[2])
    };
    // Long adapter names are cut: the backend and kernel tiles keep rows apart.
    println!(
        "{:<10} {:<24} {:<17} {:>18} {:>9.2} {:>10.2} {:>7.0}% {:>10.1}",
        r.workload,
        r.adapter.chars().take(24).collect::<String>(),
        format!("{}, {}", r.backend, r.tiles),
        rate,
        r.gflops,
        r.sgemm_gflops,
        r.sgemm_pct,
        r.peak_buffer_bytes as f64 / (1 << 20) as f64
    );
    let Some(p) = &r.profile else { return };
    let total: f64 = p.iter().map(|k| k.total_ms).sum();
    println!(
        "  profile of {}: {} dispatches, {total:.3} ms of kernel time",
        r.unit,
        p.iter().map(|k| k.dispatches).sum::<usize>()
    );
    for k in p {
        println!(
            "    {:<40} {:>5} × {:>9.1} µs = {:>8.3} ms ({:>4.1}%)",
            k.kernel,
            k.dispatches,
            1e3 * k.total_ms / k.dispatches as f64,
            k.total_ms,
            100.0 * k.total_ms / total
        );
    }
}

fn bench(a: BenchArgs) -> Result<()> {
    use flowgpu::bench;
    let mut cfg = bench::BenchConfig::new(a.quick);
    if let Some(t) = a.min_time {
        if !(t > 0.0 && t.is_finite()) {
            return Err(Error::invalid("--min-time must be positive"));
        }
        cfg.min_time = t;
    }
    let names: Vec<String> = match &a.only {
        Some(list) => list
            .split(',')
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect(),
        None => bench::WORKLOADS.iter().map(|s| s.to_string()).collect(),
    };
    let mut seen = std::collections::HashSet::new();
    let names: Vec<String> = names
        .into_iter()
        .filter(|n| seen.insert(n.clone()))
        .collect();
    for n in &names {
        if !bench::WORKLOADS.contains(&n.as_str()) {
            return Err(Error::invalid(format!(
                "unknown workload '{n}'; valid workloads: {}",
                bench::WORKLOADS.join(", ")
            )));
        }
    }
    let (mut lines, mut records) = (Vec::new(), Vec::new());
    println!(
        "{:<10} {:<24} {:<17} {:>18} {:>9} {:>10} {:>8} {:>10}",
        "workload", "adapter", "backend, tiles", "rate", "GFLOP/s", "SGEMM", "% SGEMM", "peak MiB"
    );
    let contexts = bench_contexts(&a)?;
    for ctx in &contexts {
        for name in &names {
            eprintln!(
                "bench: {name} on {} ({}, {} tiles)",
                ctx.adapter_name(),
                ctx.backend_name(),
                ctx.tiles.variant()
            );
            for r in bench::run(ctx, name, &cfg)? {
                print_bench_record(&r);
                lines.push(serde_json::to_string(&r).map_err(|e| Error::invalid(e.to_string()))?);
                records.push(r);
            }
        }
    }
    if contexts.len() > 1 {
        drop(contexts);
        for r in bench_split(&a, &names, &cfg, &records)? {
            lines.push(serde_json::to_string(&r).map_err(|e| Error::invalid(e.to_string()))?);
        }
    }
    if let Some(path) = &a.out {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| Error::io(path, e))?;
        for l in &lines {
            writeln!(f, "{l}").map_err(|e| Error::io(path, e))?;
        }
    }
    if a.json {
        for l in &lines {
            println!("{l}");
        }
    }
    Ok(())
}

/// The settings that decide a sharded command's rows (not where or in what chunks it ran).
fn shard_settings(cfg: &SolveConfig, extra: serde_json::Value) -> serde_json::Value {
    let mut solver = serde_json::to_value(cfg).unwrap_or_default();
    if let Some(o) = solver.as_object_mut() {
        o.remove("chunk");
    }
    serde_json::json!({ "solver": solver, "run": extra })
}

/// The manifest of a shard's output (nothing without --shard).
struct ShardRun<'a> {
    shard: Option<flowgpu::shard::Shard>,
    command: &'a str,
    model: &'a Path,
    input: Option<&'a Path>,
    settings: serde_json::Value,
    n: usize,
}

impl ShardRun<'_> {
    fn write(&self, out: &Path, output: &str, dim: usize) -> Result<()> {
        let Some(s) = self.shard else {
            return flowgpu::shard::Manifest::remove(out);
        };
        let r = s.rows(self.n);
        flowgpu::shard::Manifest {
            command: self.command.into(),
            output: output.into(),
            model: flowgpu::shard::model_fingerprint(self.model)?,
            input: self
                .input
                .map(flowgpu::shard::file_fingerprint)
                .transpose()?,
            settings: self.settings.clone(),
            n: self.n,
            dim,
            shard: [s.index, s.count],
            rows: [r.start, r.end],
            file: flowgpu::shard::file_fingerprint(out)?,
        }
        .write(out)
    }
}

fn merge(a: MergeArgs) -> Result<()> {
    check_output_path(&a.out)?;
    let m = flowgpu::shard::merge(&a.parts, &a.out)?;
    eprintln!(
        "merged {} shards of {} {} rows ({} × {}) → {}",
        a.parts.len(),
        m.command,
        m.output,
        m.n,
        m.dim,
        a.out.display()
    );
    if a.json {
        let j = serde_json::json!({
            "command": "merge",
            "shards": a.parts.len(),
            "of": m.command,
            "n": m.n,
            "dim": m.dim,
            "out": a.out,
        });
        println!("{j}");
    }
    Ok(())
}

/// Rows `range` split over `ctxs` in proportion to `weights` (equal weights: adapter k takes
/// part k of K, as `--shard k/K` would within the range), each part computed by `work` on
/// its adapter in its own thread; the parts in row order.
fn over_adapters<T: Send>(
    ctxs: &[GpuContext],
    weights: &[u32],
    range: std::ops::Range<usize>,
    work: &(dyn Fn(&GpuContext, std::ops::Range<usize>) -> Result<T> + Sync),
) -> Result<Vec<(std::ops::Range<usize>, T)>> {
    let parts: Vec<std::ops::Range<usize>> = (0..ctxs.len())
        .map(|k| {
            let r = flowgpu::shard::weighted_rows(range.len(), weights, k);
            range.start + r.start..range.start + r.end
        })
        .collect();
    std::thread::scope(|scope| {
        let handles: Vec<_> = ctxs
            .iter()
            .zip(&parts)
            .map(|(ctx, part)| scope.spawn(move || work(ctx, part.clone())))
            .collect();
        let results: Vec<Result<T>> = handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(Error::Gpu("an adapter's thread failed".into())))
            })
            .collect();
        results
            .into_iter()
            .zip(parts.iter().cloned())
            .map(|(r, p)| r.map(|t| (p, t)))
            .collect()
    })
}

/// The adapters of `ctxs` with their rows, for `--json`.
fn adapters_json(ctxs: &[GpuContext], parts: &[std::ops::Range<usize>]) -> serde_json::Value {
    ctxs.iter()
        .zip(parts)
        .map(|(c, r)| {
            serde_json::json!({
                "name": c.adapter_name(),
                "backend": c.backend_name(),
                "rows": [r.start, r.end],
            })
        })
        .collect()
}

/// A sampler of `model` on `ctx`, drawing `class` with guidance weight `guidance`.
fn conditioned_sampler<'a>(
    ctx: &'a GpuContext,
    model: &'a Model,
    class: Option<usize>,
    guidance: f64,
) -> Result<Sampler<'a>> {
    let mut s = Sampler::new(ctx, model)?;
    s.condition(class, guidance)?;
    Ok(s)
}

/// `sample`'s figures: the samples kept for the plot (`kept`, of `n` drawn), the
/// trajectories and the animation, each when asked (and the data has 2 or more dimensions).
fn sample_figures(
    a: &SampleArgs,
    sampler: &Sampler,
    kept: &[f32],
    n: usize,
    cfg: &SolveConfig,
) -> Result<()> {
    let d = sampler.data_dim();
    if let (Some(fig), true) = (&a.plot, d >= 2) {
        let layers = vec![figure_layer(kept, d, SAMPLE_COLOUR, "model samples")];
        let title = format!("{n} samples, {}", cfg.describe());
        let scatter = plot::ScatterFigure {
            layers,
            title: &title,
            max_dims: 4,
        };
        plot::save(fig, &scatter).map_err(|e| Error::io(fig, e))?;
    }
    if let (Some(fig), true) = (&a.trajectories, d >= 2) {
        plot_trajectories(fig, sampler, a.particles, a.seed, cfg)?;
    }
    if let (Some(gif), true) = (&a.animate, d >= 2) {
        animate_flow(gif, sampler, (a.particles, a.seed, a.frames), cfg)?;
    }
    Ok(())
}
