//! ODE solvers for dx/dt = v_θ(x, t), built from MLP evaluations and the fused stage
//! kernels of `shaders/ode.wgsl`: fixed-step Euler, midpoint, RK4 on a time grid, and
//! Dormand–Prince 5(4) with the step size controlled per sample.
//!
//! Sampling integrates from base noise at t = 0 to t = 1; encoding integrates data from
//! t = 1 back to 0 with the same solver (negative steps), decoding from 0 to 1. Rows are
//! processed in chunks that fit the adapter; each chunk is a handful of submits with no
//! readback until its end (adaptive: a status read every few attempts).

use crate::diffusion::StepRule;
use crate::error::{Error, Result};
use crate::gpu::{GpuContext, UniformArena};
use crate::kernels::{codes, ode, trace, Bound, Entry, Tiles};
use crate::mlp::{GpuMlp, MlpPass, PassOptions};
use crate::model::{pad4, Model};
use crate::ode::program::{run_adaptive, AdaptiveProgram, At, FixedProgram, StageKernels};
pub use crate::ode::{Method, Tableau, TimeGrid, Tolerances, Trace};

/// How to solve.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct SolveConfig {
    pub method: Method,
    /// Fixed-step solvers: number of steps.
    pub steps: usize,
    pub grid: TimeGrid,
    pub tol: Tolerances,
    /// Rows per GPU chunk.
    pub chunk: usize,
    /// Sampling only: the reverse SDE or DDIM instead of `method` on the ODE.
    pub rule: StepRule,
}

impl Default for SolveConfig {
    fn default() -> Self {
        SolveConfig {
            method: Method::Euler,
            steps: 100,
            grid: TimeGrid::Uniform,
            tol: Tolerances::default(),
            chunk: 65536,
            rule: StepRule::Ode,
        }
    }
}

impl SolveConfig {
    /// Whether the solve is adaptive (dopri5 on the ODE; the stochastic rules step on
    /// the grid).
    pub fn adaptive(&self) -> bool {
        self.rule == StepRule::Ode && self.method.adaptive()
    }

    /// The sampler as reports name it: the method, or the stochastic rule.
    pub fn describe(&self) -> String {
        match self.rule {
            StepRule::Ode => self.method.name().to_string(),
            StepRule::Sde { diffusion } => format!("sde (diffusion {diffusion})"),
            StepRule::Ddim { eta } => format!("ddim (eta {eta})"),
        }
    }

    pub fn validate(&self) -> Result<()> {
        if self.steps == 0 {
            return Err(Error::invalid("--steps must be positive"));
        }
        if self.chunk == 0 {
            return Err(Error::invalid("--chunk must be positive"));
        }
        self.rule.validate()?;
        let t = &self.tol;
        for (name, v) in [("--rtol", t.rtol), ("--atol", t.atol)] {
            if !(v > 0.0 && v.is_finite()) {
                return Err(Error::invalid(format!("{name} must be positive, got {v}")));
            }
        }
        check_f32_rtol("--rtol", t.rtol)?;
        let controller_ok = t.safety > 0.0
            && t.safety <= 1.0
            && t.fac_min > 0.0
            && t.fac_min < 1.0
            && t.fac_max > 1.0;
        if !controller_ok {
            return Err(Error::invalid("invalid step-size controller settings"));
        }
        if t.max_steps == 0 {
            return Err(Error::invalid("--max-steps must be positive"));
        }
        if let Some(h0) = t.h0 {
            if !(h0 > 0.0 && h0.is_finite()) {
                return Err(Error::invalid("--h0 must be positive"));
            }
        }
        Ok(())
    }
}

/// What a solve cost, per sample.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct SolveStats {
    /// Vector-field evaluations per sample that the GPU ran (a chunk's samples are all
    /// evaluated until its slowest one finishes).
    pub nfe: u64,
    /// Adaptive: evaluations a sample needed on its own, mean over samples (1 + 6 per
    /// attempted step); fixed-step: equal to nfe.
    pub nfe_needed_mean: f64,
    /// Adaptive: mean and max accepted / rejected steps per sample.
    pub accepted_mean: f64,
    pub rejected_mean: f64,
    pub accepted_max: u64,
    pub rejected_max: u64,
    pub rows: usize,
}

impl SolveStats {
    /// Add the statistics of another solve (another chunk, shard or adapter).
    pub fn merge(&mut self, o: &SolveStats) {
        let n = (self.rows + o.rows).max(1) as f64;
        self.accepted_mean =
            (self.accepted_mean * self.rows as f64 + o.accepted_mean * o.rows as f64) / n;
        self.rejected_mean =
            (self.rejected_mean * self.rows as f64 + o.rejected_mean * o.rows as f64) / n;
        self.accepted_max = self.accepted_max.max(o.accepted_max);
        self.rejected_max = self.rejected_max.max(o.rejected_max);
        self.nfe_needed_mean =
            (self.nfe_needed_mean * self.rows as f64 + o.nfe_needed_mean * o.rows as f64) / n;
        self.nfe = self.nfe.max(o.nfe);
        self.rows += o.rows;
    }
}

/// Fixed steps recorded per submit (bounds the uniform arena for any step count).
const STEPS_PER_SUBMIT: usize = 128;
/// Adaptive attempts recorded between two status reads (measured: 8 → 2 cut the evaluations
/// run per sample from 97 to 61 on a moons model; the status read is cheap).
const ATTEMPTS_PER_SUBMIT: usize = 2;

impl Trace {
    /// The probe code trace.wgsl switches on.
    pub(crate) fn probe_code(self) -> u32 {
        match self {
            Trace::Exact => codes::PROBE_EXACT,
            Trace::Hutchinson {
                rademacher: false, ..
            } => codes::PROBE_GAUSSIAN,
            Trace::Hutchinson {
                rademacher: true, ..
            } => codes::PROBE_RADEMACHER,
        }
    }
}

/// Buffers and kernels of the divergence (augmented solves only).
struct TraceState {
    spec: Trace,
    _probes: wgpu::Buffer,
    init: Entry<trace::ProbeInit>,
    divergence: Entry<trace::Divergence>,
    g_init: wgpu::BindGroup,
    g_div: wgpu::BindGroup,
}

impl TraceState {
    /// The probes of `capacity` rows of dimension `d` and the trace kernels bound to
    /// `pass` and `div`.
    fn new(
        ctx: &GpuContext,
        spec: Trace,
        pass: &MlpPass,
        arena: &UniformArena,
        div: &wgpu::Buffer,
        (capacity, d): (usize, usize),
    ) -> Result<TraceState> {
        let probes = ctx.storage("probes", spec.tangents(d) * capacity * d)?;
        let init = trace::probe_init(ctx)?;
        let divergence = trace::divergence(ctx)?;
        let g_init = init.bind(
            ctx,
            arena,
            &trace::ProbeInitBindings {
                tangent_input: &pass.input,
                probes: &probes,
            },
        );
        let g_div = divergence.bind(
            ctx,
            arena,
            &trace::DivergenceBindings {
                probes: &probes,
                tangent_out: pass.output(),
                div,
            },
        );
        Ok(TraceState {
            spec,
            _probes: probes,
            init,
            divergence,
            g_init,
            g_div,
        })
    }
}

/// Arena slots of the trace kernels (after the solver's own).
const SLOT_PROBE: usize = 0;
const SLOT_DIV: usize = 1;

/// How a chunk's initial state is made.
enum Init<'a> {
    /// x ~ N(0, I) from the counter RNG, rows [offset, offset + rows).
    Noise { seed: u64, offset: usize },
    /// Given rows (model units; with ℓ for augmented solves), global rows from `offset`.
    Rows { rows: &'a [f32], offset: usize },
}

/// GPU buffers to solve up to `capacity` rows at a time.
struct ChunkSolver {
    capacity: usize,
    pass: MlpPass,
    state: wgpu::Buffer,
    _k: wgpu::Buffer,
    clock: wgpu::Buffer,
    traj: wgpu::Buffer,
    snap_rows: usize,
    snap_slots: usize,
    arena: UniformArena,
    /// The ODE kernels bound to this solver's buffers.
    kernels: OdeKernels,
    tiles: Tiles,
    /// Separate slots for the trace kernels' parameters.
    trace_arena: UniformArena,
    trace: Option<TraceState>,
    /// Divergence per row (written by trace.wgsl, read by the stages as dℓ/dt).
    div: wgpu::Buffer,
}

/// The ode.wgsl kernels of a chunk solver.
struct OdeKernels {
    start: Bound,
    noise: Bound,
    fixed: StageKernels,
    adaptive: StageKernels,
    /// `affine_step` (both roles): the reverse-SDE and DDIM steps.
    affine: StageKernels,
    snapshot: Bound,
}

/// Which stage kernels a fixed-step solve records.
#[derive(Clone, Copy)]
enum Kernels {
    /// `rk_stage` / `rk_final`: a Runge–Kutta method on the ODE.
    Fixed,
    /// `affine_step`: a [`StepRule`] other than the ODE.
    Affine,
}

/// Which kernel makes a chunk's initial state.
#[derive(Clone, Copy)]
enum InitKernel {
    /// `start`: the state was written from the host.
    Start,
    /// `base_noise`: the state is drawn from the source.
    Noise,
}

impl ChunkSolver {
    /// Whether trajectory slot `slot` is recorded.
    fn snaps(&self, slot: usize) -> bool {
        self.snap_rows > 0 && slot < self.snap_slots
    }

    /// The parameters of a snapshot into trajectory slot `slot`, in arena slot
    /// `arena_slot` (if recording).
    fn set_snap(&mut self, base: &ode::OdeParams, slot: usize, arena_slot: usize) {
        if self.snaps(slot) {
            let p = ode::OdeParams {
                snap_slot: slot as u32,
                ..*base
            };
            self.arena.set(arena_slot, &p);
        }
    }

    /// Record the snapshot of the first rows into trajectory slot `slot` whose parameters
    /// [`set_snap`](Self::set_snap) put in `arena_slot` (if recording).
    fn record_snap(
        &self,
        cp: &mut wgpu::ComputePass<'_>,
        base: &ode::OdeParams,
        slot: usize,
        arena_slot: usize,
    ) {
        if self.snaps(slot) {
            let groups = ode::snapshot_groups(base, &self.tiles);
            self.kernels.snapshot.dispatch(cp, arena_slot, groups);
        }
    }

    fn init_kernel(&self, which: InitKernel) -> &Bound {
        match which {
            InitKernel::Start => &self.kernels.start,
            InitKernel::Noise => &self.kernels.noise,
        }
    }

    fn new(
        ctx: &GpuContext,
        mlp: &GpuMlp,
        capacity: usize,
        snap_rows: usize,
        snap_slots: usize,
        trace_spec: Option<Trace>,
        source: &wgpu::Buffer,
    ) -> Result<Self> {
        let d = mlp.cfg.dim;
        let sd = d + trace_spec.is_some() as usize;
        let tangents = trace_spec.map(|t| t.tangents(d)).unwrap_or(0);
        // Class-conditional models may be guided: room for an unconditional twin per row.
        let mlp_rows = if mlp.cfg.classes > 0 {
            2 * capacity
        } else {
            capacity
        };
        let pass = MlpPass::new(
            ctx,
            mlp,
            mlp_rows,
            PassOptions {
                tangents,
                ..Default::default()
            },
        )?;
        let state = ctx.storage("ode state", capacity * sd)?;
        let k = ctx.storage("ode stages", ode::MAX_STAGES * capacity * sd)?;
        let clock = ctx.storage("ode clocks", capacity * ode::CLOCK)?;
        let traj = ctx.storage("trajectories", (snap_rows * d * snap_slots).max(1))?;
        let slots = 2 + STEPS_PER_SUBMIT * (ode::MAX_STAGES + 1) + ATTEMPTS_PER_SUBMIT;
        let arena = UniformArena::new(ctx, "ode params", slots);
        let trace_arena = UniformArena::new(ctx, "trace params", 2);
        let div = ctx.storage("divergence", capacity * trace::DIV_STRIDE)?;
        // Only adjoint solves (src/mle/) write stage cotangents.
        let cotangent = ctx.storage("unused cotangent", 4)?;
        let trace = match trace_spec {
            Some(spec) => {
                let rows = (capacity, d);
                Some(TraceState::new(ctx, spec, &pass, &trace_arena, &div, rows)?)
            }
            None => None,
        };
        let all = ode::StageBindings {
            state: &state,
            input: &pass.input,
            v: pass.output(),
            k: &k,
            clock: &clock,
            traj: &traj,
            div: &div,
            cotangent: &cotangent,
        };
        let kernels = OdeKernels {
            start: ode::start(ctx)?.bound(
                ctx,
                &arena,
                &ode::StartBindings {
                    state: &state,
                    input: &pass.input,
                    clock: &clock,
                    cotangent: &cotangent,
                },
            ),
            noise: ode::base_noise(ctx)?.bound(
                ctx,
                &arena,
                &ode::BaseNoiseBindings {
                    state: &state,
                    input: &pass.input,
                    clock: &clock,
                    source,
                    cotangent: &cotangent,
                },
            ),
            fixed: StageKernels {
                stage: ode::rk_stage(ctx)?.bound(ctx, &arena, &all),
                last: ode::rk_final(ctx)?.bound(ctx, &arena, &all),
            },
            adaptive: StageKernels {
                stage: ode::adaptive_stage(ctx)?.bound(ctx, &arena, &all),
                last: ode::adaptive_final(ctx)?.bound(ctx, &arena, &all),
            },
            affine: StageKernels {
                stage: ode::affine_step(ctx)?.bound(ctx, &arena, &all),
                last: ode::affine_step(ctx)?.bound(ctx, &arena, &all),
            },
            snapshot: ode::snapshot(ctx)?.bound(
                ctx,
                &arena,
                &ode::SnapshotBindings {
                    state: &state,
                    traj: &traj,
                },
            ),
        };
        Ok(ChunkSolver {
            capacity,
            pass,
            state,
            _k: k,
            clock,
            traj,
            snap_rows,
            snap_slots,
            arena,
            kernels,
            tiles: ctx.tiles,
            trace_arena,
            trace,
            div,
        })
    }

    /// One evaluation of the field at the current input rows: the MLP, and for augmented
    /// solves its tangents and the divergence.
    fn record_eval(&self, cp: &mut wgpu::ComputePass<'_>) {
        self.pass.record_forward(cp);
        if let Some(t) = &self.trace {
            let groups = trace::per_row_groups(
                &trace::TraceParams {
                    rows: self.pass.rows as u32,
                    ..Default::default()
                },
                &self.tiles,
            );
            t.divergence.dispatch(cp, &t.g_div, SLOT_DIV, groups);
        }
    }

    /// Set the trace parameters of a chunk and record the probe initialization.
    fn record_probe_init(
        &mut self,
        ctx: &GpuContext,
        cp: &mut wgpu::ComputePass<'_>,
        mlp: &GpuMlp,
        rows: usize,
        offset: usize,
    ) {
        let Some(t) = &self.trace else { return };
        let d = mlp.cfg.dim;
        let p = trace::TraceParams {
            rows: rows as u32,
            dim: d as u32,
            in_stride: mlp.layout.layers[0].in_pad as u32,
            out_stride: pad4(d) as u32,
            n_tangents: t.spec.tangents(d) as u32,
            probe: t.spec.probe_code(),
            seed: t.spec.seed() as u32,
            row_offset: offset as u32,
            ..Default::default()
        };
        self.trace_arena.set(SLOT_PROBE, &p);
        self.trace_arena.set(SLOT_DIV, &p);
        self.trace_arena.upload(ctx, 0..2);
        t.init.dispatch(
            cp,
            &t.g_init,
            SLOT_PROBE,
            trace::per_row_groups(&p, &self.tiles),
        );
    }
}

/// Rows of an adaptive solve's clock readback still running, or an error naming the first
/// row that failed (`what`: the solve; `blowup`: advice for a non-finite error estimate).
/// The solver state is f32: a relative tolerance below its precision cannot be met by
/// any step, whatever the vector field, so it is refused up front.
pub(crate) fn check_f32_rtol(flag: &str, rtol: f64) -> Result<()> {
    if rtol < f32::EPSILON as f64 {
        return Err(Error::invalid(format!(
            "{flag} {rtol:e} is below f32 precision ({:.1e}): the solver's state is f32, so no step can meet it; use {flag} 1e-6 or more",
            f32::EPSILON
        )));
    }
    Ok(())
}

pub(crate) fn running_rows(clock: &[f32], rows: usize, what: &str, blowup: &str) -> Result<usize> {
    let mut running = 0;
    for (i, c) in clock.chunks(ode::CLOCK).take(rows).enumerate() {
        match c[4] {
            ode::RUNNING => running += 1,
            ode::DONE => {}
            ode::UNDERFLOW => {
                return Err(Error::invalid(format!(
                    "{what}: step size underflow for sample {i} at t = {}; loosen the tolerances (--rtol/--atol, for training --mle-rtol/--mle-atol)",
                    c[0]
                )))
            }
            _ => {
                return Err(Error::invalid(format!(
                    "{what}: non-finite error estimate for sample {i} at t = {}; {blowup}",
                    c[0]
                )))
            }
        }
    }
    Ok(running)
}

/// Integrates a model's vector field on one context.
pub struct Sampler<'a> {
    ctx: &'a GpuContext,
    model: &'a Model,
    mlp: GpuMlp,
    /// Source pool (model units) when the model's source is not N(0, I).
    source: wgpu::Buffer,
    n_source: usize,
    /// Class of the samples (ode::NO_CLASS: unconditional) and guidance weight.
    class_id: u32,
    guidance: f32,
}

impl<'a> Sampler<'a> {
    pub fn new(ctx: &'a GpuContext, model: &'a Model) -> Result<Self> {
        let mlp = GpuMlp::new(ctx, &model.config.mlp, &model.weights)?;
        let mut pool = Vec::new();
        if let Some(spec) = &model.config.source {
            let ds = crate::data::Dataset::load(spec, 100_000, model.config.seed, false)?;
            let dd = model.config.data_dim();
            if ds.dim != dd {
                return Err(Error::invalid(format!(
                    "the source '{spec}' has dimension {}, the data {dd}",
                    ds.dim
                )));
            }
            pool = ds.points;
            if let Some(s) = &model.config.standardization {
                s.apply(&mut pool);
            }
            // ANODE: the source gets noise in the augmented dimensions.
            pool = crate::data::Dataset::augment_source(
                &pool,
                dd,
                model.config.augment,
                model.config.augment_fill,
                model.config.seed ^ 0xa0de,
            );
        }
        let n_source = pool.len() / model.config.mlp.dim;
        let source = ctx.storage_from("source pool", &pool)?;
        Ok(Sampler {
            ctx,
            model,
            mlp,
            source,
            n_source,
            class_id: ode::NO_CLASS,
            guidance: 0.0,
        })
    }

    /// Class-conditional models: draw from `class` (None: unconditional) with
    /// classifier-free guidance weight w, v = (1 + w)·v(x, t | c) − w·v(x, t).
    pub fn condition(&mut self, class: Option<usize>, guidance: f64) -> Result<()> {
        let classes = self.model.config.mlp.classes;
        if let Some(c) = class {
            if c >= classes {
                return Err(Error::invalid(format!(
                    "--class {c} is out of range: the model has {classes} classes"
                )));
            }
        }
        if !guidance.is_finite() {
            return Err(Error::invalid("--guidance must be finite"));
        }
        self.class_id = class.map(|c| c as u32).unwrap_or(ode::NO_CLASS);
        self.guidance = guidance as f32;
        Ok(())
    }

    /// The stage kernels' view of the model's path and prediction (converting its output
    /// to a velocity) and of its source's scale.
    fn conversion_params(&self) -> ode::OdeParams {
        let path = &self.model.config.path;
        let [path_param, path_param2] = path.gpu_params();
        ode::OdeParams {
            path: path.gpu_code(),
            path_param,
            path_param2,
            predict: self.model.config.predict.gpu_code(),
            source_scale: path.source_scale() as f32,
            ..Default::default()
        }
    }

    fn guided(&self) -> bool {
        self.class_id != ode::NO_CLASS && self.guidance != 0.0
    }

    /// The model's Gaussian path.
    pub fn path(&self) -> crate::path::GaussianPath {
        self.model.config.path
    }

    /// Dimension the vector field works in (data + augmented dimensions).
    pub fn dim(&self) -> usize {
        self.model.config.mlp.dim
    }

    /// Dimension of the data.
    pub fn data_dim(&self) -> usize {
        self.model.config.data_dim()
    }

    /// Model-space rows → data rows: drop augmented dimensions, undo standardization.
    fn to_data(&self, x: &[f32]) -> Vec<f32> {
        let (d, dd) = (self.dim(), self.data_dim());
        let mut out: Vec<f32> = x.chunks(d).flat_map(|r| r[..dd].to_vec()).collect();
        if let Some(s) = &self.model.config.standardization {
            s.undo(&mut out);
        }
        out
    }

    /// Data rows → model-space rows: standardize, append zeros for augmented dimensions.
    fn to_model(&self, x: &[f32]) -> Result<Vec<f32>> {
        let dd = self.data_dim();
        if x.is_empty() || !x.len().is_multiple_of(dd) {
            return Err(Error::invalid(format!(
                "input must be a non-empty [n, {dd}] array"
            )));
        }
        let mut m = x.to_vec();
        if let Some(s) = &self.model.config.standardization {
            s.apply(&mut m);
        }
        Ok(crate::data::Dataset::augment(
            &m,
            dd,
            self.model.config.augment,
            None,
        ))
    }

    /// Draw `n` samples (noise at t = 0 → t = 1), in data units, delivered chunk by chunk
    /// to `sink` (so memory stays bounded for any n). Sample i depends only on (seed, i).
    pub fn sample_into(
        &self,
        n: usize,
        seed: u64,
        cfg: &SolveConfig,
        sink: &mut dyn FnMut(&[f32]) -> Result<()>,
    ) -> Result<SolveStats> {
        if n == 0 {
            return Err(Error::invalid("-n must be positive"));
        }
        self.sample_rows_into(0..n, seed, cfg, sink)
    }

    /// Samples `rows` (global indices) of a run of `seed`: exactly those rows of
    /// [`sample_into`](Self::sample_into) of any larger n, so shards of a run concatenate to
    /// the whole. An empty range delivers nothing.
    pub fn sample_rows_into(
        &self,
        rows: std::ops::Range<usize>,
        seed: u64,
        cfg: &SolveConfig,
        sink: &mut dyn FnMut(&[f32]) -> Result<()>,
    ) -> Result<SolveStats> {
        cfg.validate()?;
        if rows.end > u32::MAX as usize {
            return Err(Error::invalid("-n must be below 2^32"));
        }
        let (mut start, n) = (rows.start, rows.end);
        if start >= n {
            return Ok(SolveStats::default());
        }
        let capacity = self.capacity(cfg.chunk.min(n - start), 0)?;
        let mut cs = ChunkSolver::new(self.ctx, &self.mlp, capacity, 0, 0, None, &self.source)?;
        let mut stats = SolveStats::default();
        while start < n {
            let rows = capacity.min(n - start);
            let (x, s) = self.solve_chunk(
                &mut cs,
                rows,
                Init::Noise {
                    seed,
                    offset: start,
                },
                0.0,
                1.0,
                cfg,
            )?;
            sink(&self.to_data(&x))?;
            stats.merge(&s);
            start += rows;
        }
        Ok(stats)
    }

    /// `n` samples in memory (see [`sample_into`](Self::sample_into)).
    pub fn sample(&self, n: usize, seed: u64, cfg: &SolveConfig) -> Result<(Vec<f32>, SolveStats)> {
        let mut out = Vec::with_capacity(n * self.data_dim());
        let stats = self.sample_into(n, seed, cfg, &mut |x| {
            out.extend_from_slice(x);
            Ok(())
        })?;
        Ok((out, stats))
    }

    /// Data → latent: integrate from t = 1 back to t = 0. Rows in data units; latents have
    /// the model's dimension (data + augmented).
    pub fn encode(&self, x: &[f32], cfg: &SolveConfig) -> Result<(Vec<f32>, SolveStats)> {
        self.integrate(&self.to_model(x)?, 1.0, 0.0, cfg)
    }

    /// Latent → data: integrate from t = 0 to t = 1. Returns rows in data units.
    pub fn decode(&self, z: &[f32], cfg: &SolveConfig) -> Result<(Vec<f32>, SolveStats)> {
        let (x, s) = self.integrate(z, 0.0, 1.0, cfg)?;
        Ok((self.to_data(&x), s))
    }

    /// Integrate rows (model units) from t0 to t1.
    pub fn integrate(
        &self,
        x: &[f32],
        t0: f64,
        t1: f64,
        cfg: &SolveConfig,
    ) -> Result<(Vec<f32>, SolveStats)> {
        self.integrate_rows(x, (t0, t1), cfg, None, 0)
    }

    /// The velocity the solvers integrate at (x, t), x in model units: the network's
    /// output converted from what it predicts. (One Euler step of length 1 from t, less x:
    /// exactly the stage kernels' conversion, to f32 rounding of x + v.)
    pub fn velocity(&self, x: &[f32], t: f64) -> Result<Vec<f32>> {
        let cfg = SolveConfig {
            method: Method::Euler,
            steps: 1,
            ..SolveConfig::default()
        };
        let (y, _) = self.integrate(x, t, t + 1.0, &cfg)?;
        Ok(y.iter().zip(x).map(|(a, b)| a - b).collect())
    }

    /// Log-density of rows x (data units) under the model: the augmented ODE [x, ℓ] with
    /// dℓ/dt = Tr(∂v/∂x) from t = 1 to 0, ℓ(1) = 0, gives z = x(0) and
    /// log p(x) = log N(z; 0, s²·I) + ℓ(0) (− Σ log std for standardized data), s the
    /// path's source scale (σ_max for the VE SDE, else 1).
    /// Returns (log p per row, z per row in model units, cost).
    pub fn log_prob(
        &self,
        x: &[f32],
        trace: Trace,
        cfg: &SolveConfig,
    ) -> Result<(Vec<f64>, Vec<f32>, SolveStats)> {
        self.log_prob_from(x, 0, trace, cfg)
    }

    /// [`log_prob`](Self::log_prob) of rows whose first is row `first_row` of a larger set:
    /// Hutchinson probes are keyed by the global row, so the rows of a shard get exactly the
    /// unsharded run's values.
    pub fn log_prob_from(
        &self,
        x: &[f32],
        first_row: usize,
        trace: Trace,
        cfg: &SolveConfig,
    ) -> Result<(Vec<f64>, Vec<f32>, SolveStats)> {
        let d = self.dim();
        if self.guided() {
            return Err(Error::invalid(
                "log-likelihood of a guided field is not a density: use --guidance 0",
            ));
        }
        if let Some(src) = &self.model.config.source {
            return Err(Error::invalid(format!(
                "log-likelihood needs a source distribution with a density (the Gaussian); this model flows from '{src}'"
            )));
        }
        if let Trace::Hutchinson { probes, .. } = trace {
            if probes == 0 {
                return Err(Error::invalid("--probes must be positive"));
            }
        }
        // ANODE models: this is log p(x, 0), the density of the zero-padded point in the
        // augmented space (see README), not log p(x).
        let m = self.to_model(x)?;
        let log_jac = match &self.model.config.standardization {
            Some(s) => -s.std.iter().map(|v| v.ln()).sum::<f64>(),
            None => 0.0,
        };
        let aug: Vec<f32> = m
            .chunks(d)
            .flat_map(|r| r.iter().copied().chain([0.0]))
            .collect();
        let (out, stats) = self.integrate_rows(&aug, (1.0, 0.0), cfg, Some(trace), first_row)?;
        // The source N(0, s²·I) (s = σ_max for the VE SDE, else 1).
        let s2 = self.model.config.path.source_scale().powi(2);
        let log_norm = -0.5 * d as f64 * (2.0 * std::f64::consts::PI * s2).ln();
        let mut logp = Vec::with_capacity(out.len() / (d + 1));
        let mut z = Vec::with_capacity(m.len());
        for r in out.chunks(d + 1) {
            let sq: f64 = r[..d].iter().map(|&v| (v as f64).powi(2)).sum();
            logp.push(log_norm - 0.5 * sq / s2 + r[d] as f64 + log_jac);
            z.extend_from_slice(&r[..d]);
        }
        Ok((logp, z, stats))
    }

    /// Per-row divergence estimate Tr(∂o/∂x) of the network's output o at (x, t), x in model
    /// units (tests, tools): Tr(∂v/∂x) for velocity models; for other predictions the
    /// solvers' dℓ/dt is c_x·dim + c_o·Tr(∂o/∂x) (`Prediction::to_velocity`).
    pub fn divergence(&self, x: &[f32], t: f64, trace: Trace) -> Result<Vec<f32>> {
        let d = self.dim();
        let n = x.len() / d;
        let mut cs = ChunkSolver::new(self.ctx, &self.mlp, n, 0, 0, Some(trace), &self.source)?;
        cs.pass.set_rows(self.ctx, &self.mlp, n);
        let mcfg = &self.model.config.mlp;
        let in_pad = self.mlp.layout.layers[0].in_pad;
        let mut input = vec![0.0f32; n * in_pad];
        for (i, r) in x.chunks(d).enumerate() {
            let row =
                crate::model::input_row(mcfg, &r.iter().map(|&v| v as f64).collect::<Vec<_>>(), t);
            for (c, v) in row.iter().enumerate() {
                input[i * in_pad + c] = *v as f32;
            }
        }
        self.ctx
            .queue
            .write_buffer(&cs.pass.input, 0, bytemuck::cast_slice(&input));
        let mut enc = self.ctx.device.create_command_encoder(&Default::default());
        {
            let mut cp = enc.begin_compute_pass(&Default::default());
            cs.record_probe_init(self.ctx, &mut cp, &self.mlp, n, 0);
            cs.record_eval(&mut cp);
        }
        self.ctx.submit(enc)?;
        let div = self.ctx.read(&cs.div, 0, n * trace::DIV_STRIDE)?;
        Ok(div.iter().step_by(trace::DIV_STRIDE).copied().collect())
    }

    /// Integrate rows of d (+1 with a trace) components from t0 to t1, in chunks.
    fn integrate_rows(
        &self,
        x: &[f32],
        (t0, t1): (f64, f64),
        cfg: &SolveConfig,
        trace: Option<Trace>,
        first_row: usize,
    ) -> Result<(Vec<f32>, SolveStats)> {
        cfg.validate()?;
        let sd = self.dim() + trace.is_some() as usize;
        if x.is_empty() || !x.len().is_multiple_of(sd) {
            return Err(Error::invalid(format!(
                "input must be a non-empty [n, {}] array",
                self.dim()
            )));
        }
        let n = x.len() / sd;
        let tangents = trace.map(|t| t.tangents(self.dim())).unwrap_or(0);
        let capacity = self.capacity(cfg.chunk.min(n), tangents)?;
        let mut cs = ChunkSolver::new(self.ctx, &self.mlp, capacity, 0, 0, trace, &self.source)?;
        let mut out = Vec::with_capacity(x.len());
        let mut stats = SolveStats::default();
        for (c, rows) in x.chunks(capacity * sd).enumerate() {
            let init = Init::Rows {
                rows,
                offset: first_row + c * capacity,
            };
            let (y, s) = self.solve_chunk(&mut cs, rows.len() / sd, init, t0, t1, cfg)?;
            out.extend(y);
            stats.merge(&s);
        }
        Ok((out, stats))
    }

    /// Positions of the first `particles` samples after every step (or accepted/rejected
    /// attempt for dopri5), starting with the noise: `[snapshots][particles·dim]`, data units.
    pub fn trajectories(
        &self,
        particles: usize,
        seed: u64,
        cfg: &SolveConfig,
    ) -> Result<Vec<Vec<f32>>> {
        cfg.validate()?;
        let d = self.dim();
        let slots = if cfg.adaptive() {
            cfg.tol.max_steps.min(4096) + 1
        } else {
            cfg.steps + 1
        };
        let mut cs = ChunkSolver::new(
            self.ctx,
            &self.mlp,
            particles.max(1),
            particles.max(1),
            slots,
            None,
            &self.source,
        )?;
        let (_, stats) = self.solve_chunk(
            &mut cs,
            particles.max(1),
            Init::Noise { seed, offset: 0 },
            0.0,
            1.0,
            cfg,
        )?;
        let taken = if cfg.adaptive() {
            (stats.accepted_max + stats.rejected_max) as usize + 1
        } else {
            slots
        };
        let flat = self
            .ctx
            .read(&cs.traj, 0, taken.min(slots) * particles * d)?;
        Ok(flat
            .chunks(particles * d)
            .map(|c| self.to_data(c))
            .collect())
    }

    /// Rows per chunk: as asked, but within the adapter's storage-binding limit (the MLP
    /// buffers hold 1 + `tangents` stacked rows per row).
    fn capacity(&self, want: usize, tangents: usize) -> Result<usize> {
        let layers = &self.mlp.layout.layers;
        let widest = layers
            .iter()
            .map(|l| l.out_pad.max(l.in_pad))
            .max()
            .unwrap_or(4);
        // Guided class-conditional solves run an unconditional twin of every row.
        let twins = if self.model.config.mlp.classes > 0 {
            2
        } else {
            1
        };
        let per_row =
            ((widest * (1 + tangents)).max(ode::MAX_STAGES * (self.dim() + 1)) * 4 * twins) as u64;
        let fit = (self.ctx.limits.max_storage_buffer_binding_size / per_row).max(1) as usize;
        Ok(want.min(fit).max(1))
    }

    fn solve_chunk(
        &self,
        cs: &mut ChunkSolver,
        rows: usize,
        init: Init,
        t0: f64,
        t1: f64,
        cfg: &SolveConfig,
    ) -> Result<(Vec<f32>, SolveStats)> {
        let ctx = self.ctx;
        let mcfg = &self.model.config.mlp;
        let d = mcfg.dim;
        assert!(rows <= cs.capacity);
        let mlp_rows = if self.guided() { 2 * rows } else { rows };
        cs.pass.set_rows(ctx, &self.mlp, mlp_rows);
        let tab = cfg.method.tableau();
        let tol = &cfg.tol;
        let h0 = tol
            .h0
            .unwrap_or(0.05 * (t1 - t0).abs())
            .min((t1 - t0).abs())
            * (t1 - t0).signum();
        let mut base = ode::OdeParams {
            rows: rows as u32,
            dim: d as u32,
            in_stride: self.mlp.layout.layers[0].in_pad as u32,
            out_stride: MlpPass::out_stride(mcfg) as u32,
            time_cols: mcfg.time_cols() as u32,
            snap_rows: cs.snap_rows as u32,
            aug: cs.trace.is_some() as u32,
            n_classes: mcfg.classes as u32,
            class_id: self.class_id,
            guidance: self.guidance,
            t: t0 as f32,
            h: h0 as f32,
            t_end: t1 as f32,
            rtol: tol.rtol as f32,
            atol: tol.atol as f32,
            safety: tol.safety as f32,
            fac_min: tol.fac_min as f32,
            fac_max: tol.fac_max as f32,
            h_min: tol.h_min as f32,
            ..self.conversion_params()
        };
        let path = &self.model.config.path;
        if cfg.rule != StepRule::Ode && (self.n_source > 0 || !path.is_affine()) {
            return Err(Error::invalid(format!(
                "the {} sampler needs the Gaussian source and a path without extra noise (ot, vp, poly, vp-sde, ve-sde)",
                cfg.rule.name()
            )));
        }
        if cfg.rule != StepRule::Ode && !matches!(init, Init::Noise { .. }) {
            return Err(Error::invalid(format!(
                "the {} sampler draws samples (noise at t = 0 to data at t = 1); encode, decode and logprob solve the ODE",
                cfg.rule.name()
            )));
        }
        let sd = d + base.aug as usize;
        // Initial state and first MLP input.
        let mut probe_offset = 0;
        let init_kernel = match init {
            Init::Noise { seed, offset } => {
                // The seed and row offset also key the stochastic steps' noise.
                base.seed = seed as u32;
                base.row_offset = offset as u32;
                cs.arena.set(
                    0,
                    &ode::OdeParams {
                        n_source: self.n_source as u32,
                        ..base
                    },
                );
                InitKernel::Noise
            }
            Init::Rows { rows: x, offset } => {
                ctx.queue
                    .write_buffer(&cs.state, 0, bytemuck::cast_slice(x));
                cs.arena.set(0, &base);
                probe_offset = offset;
                InitKernel::Start
            }
        };
        // Probes are drawn once per chunk and stay fixed over the whole solve.
        if cs.trace.is_some() {
            let mut enc = ctx.device.create_command_encoder(&Default::default());
            {
                let mut cp = enc.begin_compute_pass(&Default::default());
                cs.record_probe_init(ctx, &mut cp, &self.mlp, rows, probe_offset);
            }
            ctx.submit(enc)?;
        }
        let stats = if cfg.adaptive() {
            let program = AdaptiveProgram::new(&tab, &base);
            run_adaptive_chunk(self.ctx, cs, init_kernel, &program, base, cfg.tol.max_steps)?
        } else {
            let times = cfg
                .grid
                .times_on(&self.model.config.path, t0, t1, cfg.steps);
            let (program, kernels) = match cfg.rule {
                StepRule::Ode => (FixedProgram::new(&tab, &times, &base), Kernels::Fixed),
                rule => {
                    let coefs = rule.program(&self.model.config.path, &times);
                    (FixedProgram::affine(&times, &coefs, &base), Kernels::Affine)
                }
            };
            run_fixed_chunk(self.ctx, cs, (init_kernel, kernels), &program, base)?
        };
        let x = ctx.read(&cs.state, 0, rows * sd)?;
        Ok((x, stats))
    }
}

/// A fixed-step solve of one chunk: `STEPS_PER_SUBMIT` steps per submit, with no readback.
/// Arena slots of a submit: 0 the initial state's kernel, then the steps' stages, then
/// their snapshots.
fn run_fixed_chunk(
    ctx: &GpuContext,
    cs: &mut ChunkSolver,
    (init, kernels): (InitKernel, Kernels),
    program: &FixedProgram,
    base: ode::OdeParams,
) -> Result<SolveStats> {
    let groups = ode::per_row_groups(&base, &cs.tiles);
    let steps = program.steps();
    let mut step = 0;
    while step < steps {
        let seg = STEPS_PER_SUBMIT.min(steps - step);
        let snap0 = program.write(&mut cs.arena, step..step + seg, 1);
        // Trajectory slots snapshot in this submit: the initial state's on the first.
        let first_snap = if step == 0 { 0 } else { step + 1 };
        for n in first_snap..=step + seg {
            cs.set_snap(&base, n, snap0 + n - first_snap);
        }
        cs.arena.upload(ctx, 0..snap0 + step + seg + 1 - first_snap);
        let cs = &*cs;
        ctx.submit_pass(|cp| {
            if step == 0 {
                cs.init_kernel(init).dispatch(cp, 0, groups);
                cs.record_snap(cp, &base, 0, snap0);
            }
            program.record(
                cp,
                step..step + seg,
                At {
                    kernels: match kernels {
                        Kernels::Fixed => &cs.kernels.fixed,
                        Kernels::Affine => &cs.kernels.affine,
                    },
                    slot: 1,
                    groups,
                },
                |cp, _| cs.record_eval(cp),
                |cp, n| cs.record_snap(cp, &base, n, snap0 + n - first_snap),
            );
        })?;
        step += seg;
    }
    let nfe = (steps * program.stages_per_step()) as u64;
    Ok(SolveStats {
        nfe,
        nfe_needed_mean: nfe as f64,
        rows: base.rows as usize,
        ..Default::default()
    })
}

/// A per-row adaptive solve of one chunk: `ATTEMPTS_PER_SUBMIT` attempts per submit, then
/// a clock readback. Arena slots: 0 the initial state's kernel, 1.. the stages, then the
/// snapshots of a submit.
fn run_adaptive_chunk(
    ctx: &GpuContext,
    cs: &mut ChunkSolver,
    init: InitKernel,
    program: &AdaptiveProgram,
    base: ode::OdeParams,
    max_attempts: usize,
) -> Result<SolveStats> {
    let groups = ode::per_row_groups(&base, &cs.tiles);
    let rows = base.rows as usize;
    program.write(&mut cs.arena, 1);
    let snap0 = 1 + program.stages();
    let mut done = 0;
    let mut clock = Vec::new();
    let attempts = run_adaptive(
        ATTEMPTS_PER_SUBMIT,
        max_attempts,
        |first| {
            cs.set_snap(&base, 0, snap0);
            for a in 0..ATTEMPTS_PER_SUBMIT {
                cs.set_snap(&base, done + a + 1, snap0 + 1 + a);
            }
            cs.arena.upload(ctx, 0..snap0 + 1 + ATTEMPTS_PER_SUBMIT);
            ctx.submit_pass(|cp| {
                if first {
                    cs.init_kernel(init).dispatch(cp, 0, groups);
                    cs.record_snap(cp, &base, 0, snap0);
                }
                program.record_per_row(
                    cp,
                    first,
                    ATTEMPTS_PER_SUBMIT,
                    At {
                        kernels: &cs.kernels.adaptive,
                        slot: 1,
                        groups,
                    },
                    |cp| cs.record_eval(cp),
                    |cp, a| cs.record_snap(cp, &base, done + a + 1, snap0 + 1 + a),
                );
            })?;
            done += ATTEMPTS_PER_SUBMIT;
            clock = ctx.read(&cs.clock, 0, rows * ode::CLOCK)?;
            running_rows(&clock, rows, "dopri5", "the vector field blows up there")
        },
        |running| {
            format!(
                "dopri5: {running} of {rows} samples did not reach the end within --max-steps {max_attempts}; loosen --rtol/--atol or raise --max-steps"
            )
        },
    )?;
    let acc: Vec<f64> = clock.chunks(ode::CLOCK).map(|c| c[2] as f64).collect();
    let rej: Vec<f64> = clock.chunks(ode::CLOCK).map(|c| c[3] as f64).collect();
    let (acc_sum, rej_sum) = (acc.iter().sum::<f64>(), rej.iter().sum::<f64>());
    let new_stages = (program.stages() - 1) as f64; // FSAL
    Ok(SolveStats {
        nfe: 1 + (program.stages() as u64 - 1) * attempts as u64,
        nfe_needed_mean: 1.0 + new_stages * (acc_sum + rej_sum) / rows as f64,
        accepted_mean: acc_sum / rows as f64,
        rejected_mean: rej_sum / rows as f64,
        accepted_max: acc.iter().fold(0.0f64, |a, &b| a.max(b)) as u64,
        rejected_max: rej.iter().fold(0.0f64, |a, &b| a.max(b)) as u64,
        rows,
    })
}
