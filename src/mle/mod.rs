//! Maximum-likelihood training of a CNF, with the gradient from the adjoint method
//! (Chen et al. 2018; FFJORD, Grathwohl et al. 2019).
//!
//! One training step, all recorded into the trainer's encoder with no readback:
//! 1. forward solve of [x, ℓ, E, F] from a data batch at t = 1 to the base at t = 0
//!    (dℓ/dt = Tr ∂v/∂x by exact tangents or Hutchinson probes fixed for the step,
//!    dE/dt = ‖v‖², dF/dt = the Jacobian Frobenius estimate);
//! 2. `adjoint_start`: NLL per row and the adjoint's start [z, a = z/B];
//! 3. adjoint solve of [x, a] from t = 0 back to 1: at every stage, one backward pass of
//!    S = aᵀv + a_ℓ·div + a_E·‖v‖² + a_F·F through the MLP *and its tangents* gives
//!    ∂S/∂x (the derivative of a is −∂S/∂x) and ∂S/∂θ, summed into the gradient with the
//!    stage's quadrature weight −h·b_s;
//! 4. Adam, as for flow matching.
//!
//! a_ℓ = −1/B, a_E = −λ_K/B and a_F = −λ_J/B are constant in time (nothing depends on
//! ℓ, E, F), so the adjoint only carries a for x.
//!
//! Files: this one (settings, the fixed-step forward solve and adjoint); `field.rs` (the
//! MLP with tangents, its integrands and VJP); `dto.rs` (`--grad backprop`);
//! `adaptive.rs` (dopri5: per-row forward, batch-global adjoint).

use crate::error::{Error, Result};
use crate::gpu::{GpuContext, UniformArena};
mod adaptive;
mod dto;
mod field;

pub use field::{field_vjp, FieldVjp, LikelihoodField};

use crate::kernels::{backprop, mle, ode, Bound, Entry, Tiles};
use crate::mlp::{GpuMlp, MlpPass};
use crate::ode::program::{At, FixedProgram, StageKernels};
use crate::solve::{Method, Tableau, TimeGrid, Trace};

/// Settings of the maximum-likelihood objective (`--objective mle`).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct MleConfig {
    /// Hutchinson probes per row; 0: the exact trace (dim tangents per row).
    pub probes: usize,
    /// Rademacher instead of Gaussian probes.
    pub rademacher: bool,
    /// Solver of both solves: euler, midpoint, rk4, or dopri5 (adaptive).
    pub solver: Method,
    /// Steps of each solve over [0, 1].
    pub steps: usize,
    /// λ_K: weight of the kinetic energy ∫‖v‖² dt.
    pub kinetic: f64,
    /// λ_J: weight of the Jacobian Frobenius norm ∫‖∂v/∂x‖²_F dt.
    pub frobenius: f64,
    /// How the gradient is computed.
    #[serde(default)]
    pub grad: MleGrad,
    /// dopri5: relative and absolute tolerances and most attempts per solve.
    #[serde(default = "default_tol")]
    pub rtol: f64,
    #[serde(default = "default_tol")]
    pub atol: f64,
    #[serde(default = "default_max_attempts")]
    pub max_steps: usize,
}

fn default_tol() -> f64 {
    1e-5
}
fn default_max_attempts() -> usize {
    1000
}

impl MleGrad {
    pub fn name(self) -> &'static str {
        match self {
            MleGrad::Adjoint => "adjoint",
            MleGrad::Backprop => "backprop",
        }
    }
}

/// Gradient of the maximum-likelihood objective.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    serde::Serialize,
    serde::Deserialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum MleGrad {
    /// The adjoint ODE solved backwards: memory independent of the number of steps.
    #[default]
    Adjoint,
    /// Discretize-then-optimize: reverse mode through the solver's steps from stored
    /// states (the exact gradient of the discretized objective).
    Backprop,
}

impl Default for MleConfig {
    fn default() -> Self {
        MleConfig {
            probes: 1,
            rademacher: true,
            solver: Method::Rk4,
            steps: 8,
            kinetic: 0.0,
            frobenius: 0.0,
            grad: MleGrad::Adjoint,
            rtol: default_tol(),
            atol: default_tol(),
            max_steps: default_max_attempts(),
        }
    }
}

impl MleConfig {
    pub fn validate(&self) -> Result<()> {
        let m = self.solver;
        if m.adaptive() {
            if self.grad == MleGrad::Backprop {
                return Err(Error::invalid(
                    "--grad backprop needs a fixed-step solver (euler, midpoint, rk4); dopri5 trains with --grad adjoint",
                ));
            }
            if !(self.rtol > 0.0 && self.atol > 0.0) || self.max_steps == 0 {
                return Err(Error::invalid(
                    "--mle-rtol, --mle-atol and --mle-max-steps must be positive",
                ));
            }
            crate::solve::check_f32_rtol("--mle-rtol", self.rtol)?;
        }
        if self.steps == 0 {
            return Err(Error::invalid("--mle-steps must be positive"));
        }
        // Each step's stage parameters take uniform slots: keep them well inside a buffer.
        if !m.adaptive() && self.steps > 4096 {
            return Err(Error::invalid(
                "--mle-steps must be at most 4096 (use dopri5 for stiff fields)",
            ));
        }
        for (name, v) in [
            ("--kinetic", self.kinetic),
            ("--jacobian-frobenius", self.frobenius),
        ] {
            if !(v >= 0.0 && v.is_finite()) {
                return Err(Error::invalid(format!("{name} must be ≥ 0")));
            }
        }
        Ok(())
    }

    /// dopri5: adaptive forward (per-row steps) and adjoint (batch-global steps) solves.
    pub fn adaptive(&self) -> bool {
        self.solver.adaptive()
    }

    pub fn tableau(&self) -> Tableau {
        self.solver.tableau()
    }

    /// Field evaluations of the forward solve of one training step (fixed-step solvers;
    /// dopri5 reports its own counts).
    pub fn nfe(&self) -> usize {
        self.steps * self.tableau().stages()
    }

    /// Field evaluations (each a vector-Jacobian product, except backprop's recomputed
    /// stages) of the gradient of one training step: the adjoint solve, or backprop's
    /// S VJPs plus S − 1 recomputed stages per step.
    pub fn nfe_gradient(&self) -> usize {
        match self.grad {
            MleGrad::Adjoint => self.nfe(),
            MleGrad::Backprop => self.nfe() + self.steps * (self.tableau().stages() - 1),
        }
    }

    /// The divergence estimator with the probe seed of one training step.
    pub fn trace(&self, seed: u32) -> Trace {
        if self.probes == 0 {
            Trace::Exact
        } else {
            Trace::Hutchinson {
                probes: self.probes,
                rademacher: self.rademacher,
                seed: seed as u64,
            }
        }
    }
}

/// The RNG seed of training step `step`: keys both its data draws and its probes.
pub fn step_seed(seed: u64, step: u64) -> u32 {
    crate::rng::pcg_hash(seed as u32 ^ crate::rng::pcg_hash(step as u32 ^ 0x6d6c_6500))
}

/// Buffers and bind groups of one ODE solve driven by the stage kernels of ode.wgsl.
struct OdeSolve {
    state: wgpu::Buffer,
    k: wgpu::Buffer,
    /// The kernel that makes the initial state (`base_noise` or `start`).
    init: Bound,
    kernels: StageKernels,
}

/// The buffers the solves of a step share.
struct StepBuffers<'a> {
    /// [x, ℓ, E, F] per row.
    fwd_state: &'a wgpu::Buffer,
    /// [x, a] per row.
    adj_state: &'a wgpu::Buffer,
    clock: &'a wgpu::Buffer,
    history: &'a wgpu::Buffer,
    /// The data pool the forward solve starts from.
    data: &'a wgpu::Buffer,
    /// Rows (the batch) and data dimension.
    rows: usize,
    dim: usize,
}

impl OdeSolve {
    /// The forward solve (from data rows, reading the divergence) and the adjoint (from
    /// the NLL's gradient, reading the field's input gradient) of a step.
    fn both(
        ctx: &GpuContext,
        field: &LikelihoodField,
        arena: &UniformArena,
        b: &StepBuffers,
    ) -> Result<(OdeSolve, OdeSolve)> {
        let (input, d) = (&field.pass.input, b.dim);
        let noise = ode::BaseNoiseBindings {
            state: b.fwd_state,
            input,
            clock: b.clock,
            source: b.data,
            cotangent: &field.cotangent,
        };
        let fwd_init = ode::base_noise(ctx)?.bound(ctx, arena, &noise);
        let fwd_bufs = (b.fwd_state, &field.div, d + 3);
        let fwd = OdeSolve::new(ctx, field, arena, b, fwd_bufs, fwd_init)?;
        let start = ode::StartBindings {
            state: b.adj_state,
            input,
            clock: b.clock,
            cotangent: &field.cotangent,
        };
        let adj_init = ode::start(ctx)?.bound(ctx, arena, &start);
        let adj_bufs = (b.adj_state, field.input_grad(), 2 * d);
        let adj = OdeSolve::new(ctx, field, arena, b, adj_bufs, adj_init)?;
        Ok((fwd, adj))
    }
}

/// The adjoint's start (the NLL and a(0)) and the quadrature that adds each stage's
/// parameter gradient, bound to the step's buffers.
struct Quadrature {
    adj_start: Entry<mle::AdjointStart>,
    accumulate: Entry<mle::Accumulate>,
    g_adj_start: wgpu::BindGroup,
    g_accumulate: wgpu::BindGroup,
}

impl Quadrature {
    fn new(
        ctx: &GpuContext,
        arena: &UniformArena,
        start: &mle::AdjointStartBindings,
        accumulate: &mle::AccumulateBindings,
    ) -> Result<Quadrature> {
        let adj_start = mle::adjoint_start(ctx)?;
        let acc = mle::accumulate(ctx)?;
        Ok(Quadrature {
            g_adj_start: adj_start.bind(ctx, arena, start),
            g_accumulate: acc.bind(ctx, arena, accumulate),
            adj_start,
            accumulate: acc,
        })
    }
}

impl OdeSolve {
    /// A solve of `state` (`width` floats per row) with the stage kernels bound to it, the
    /// step's shared buffers and the field's rows; `div` is what the stages read as dℓ/dt
    /// (the divergence integrands, or the adjoint's input gradient); `init` makes the state.
    fn new(
        ctx: &GpuContext,
        field: &LikelihoodField,
        arena: &UniformArena,
        b: &StepBuffers,
        (state, div, width): (&wgpu::Buffer, &wgpu::Buffer, usize),
        init: Bound,
    ) -> Result<OdeSolve> {
        let k = ctx.storage("mle ode stages", ode::MAX_STAGES * b.rows * width)?;
        let all = ode::StageBindings {
            state,
            input: &field.pass.input,
            v: field.pass.output(),
            k: &k,
            clock: b.clock,
            traj: b.history,
            div,
            cotangent: &field.cotangent,
        };
        Ok(OdeSolve {
            init,
            kernels: StageKernels {
                stage: ode::rk_stage(ctx)?.bound(ctx, arena, &all),
                last: ode::rk_final(ctx)?.bound(ctx, arena, &all),
            },
            state: state.clone(),
            k,
        })
    }
}

/// The likelihood field of a training step, with the weights of S per cotangent slot: the
/// adjoint's are the constant adjoints of ℓ, E, F; backprop's are those times h·b_s of
/// each stage (h < 0 from data to base).
fn likelihood_field(
    ctx: &GpuContext,
    mlp: &GpuMlp,
    cfg: &MleConfig,
    batch: usize,
    probe_slots: usize,
) -> Result<LikelihoodField> {
    let inv_b = 1.0 / batch as f64;
    let a_const = [-inv_b, -cfg.kinetic * inv_b, -cfg.frobenius * inv_b];
    let h_fwd = -1.0 / cfg.steps as f64;
    let cot_weights: Vec<[f64; 3]> = if cfg.grad == MleGrad::Backprop {
        let b = &cfg.tableau().b;
        b.iter().map(|b| a_const.map(|a| a * h_fwd * b)).collect()
    } else {
        vec![a_const]
    };
    let n_cot = cot_weights.len();
    let mut field = LikelihoodField::new(ctx, mlp, batch, cfg.trace(0), probe_slots, n_cot)?;
    field.set_rows(ctx, mlp, batch, &cot_weights);
    Ok(field)
}

/// The stage kernels' parameters of every solve of a step (`ode_base`), and the forward
/// solve's: [x, ℓ, E, F] from the data (t = 1) to the base, with snapshots of every row.
fn ode_bases(mlp: &GpuMlp, batch: usize, n_data: usize) -> (ode::OdeParams, ode::OdeParams) {
    let ode_base = ode::OdeParams {
        rows: batch as u32,
        dim: mlp.cfg.dim as u32,
        in_stride: mlp.layout.layers[0].in_pad as u32,
        out_stride: MlpPass::out_stride(&mlp.cfg) as u32,
        time_cols: mlp.cfg.time_cols() as u32,
        class_id: ode::NO_CLASS,
        ..Default::default()
    };
    let fwd_base = ode::OdeParams {
        aug: 3,
        n_source: n_data as u32,
        t: 1.0,
        snap_rows: batch as u32,
        ..ode_base
    };
    (ode_base, fwd_base)
}

/// The parameters of mle.wgsl's kernels for a step over `batch` rows.
fn mle_params(mlp: &GpuMlp, batch: usize, field: &LikelihoodField) -> mle::MleParams {
    let d = mlp.cfg.dim;
    mle::MleParams {
        rows: batch as u32,
        dim: d as u32,
        fwd_stride: (d + 3) as u32,
        n_params: mlp.layout.total as u32,
        inv_batch: (1.0 / batch as f64) as f32,
        log_norm: (0.5 * d as f64 * (2.0 * std::f64::consts::PI).ln()) as f32,
        coef: 0.0,
        init: 0,
        // The field's rows are set once, to the batch: its slot count is fixed.
        parts: field.grad_parts() as u32,
        part_len: mlp.layout.total as u32,
        _pad: [0; 2],
    }
}

/// The GPU state of the maximum-likelihood objective inside a [`crate::train::Trainer`].
pub struct MleState {
    pub cfg: MleConfig,
    field: LikelihoodField,
    fwd: OdeSolve,
    adj: OdeSolve,
    fwd_state: wgpu::Buffer,
    /// Slots [0, K): per-step forward init; K: adjoint start; then the forward stages,
    /// the adjoint stages, and the N + 1 history snapshots (backprop).
    ode_arena: UniformArena,
    /// Slot 0: adjoint_start; then one accumulate slot per adjoint stage (adjoint) or
    /// two (backprop: the first stage initializes, the others add).
    mle_arena: UniformArena,
    ode_base: ode::OdeParams,
    mle_base: mle::MleParams,
    /// The fixed-step forward and adjoint solves (their stages in `ode_arena`).
    fwd_program: Option<FixedProgram>,
    adj_program: Option<FixedProgram>,
    quad: Quadrature,
    backprop: Option<dto::Backprop>,
    adaptive: Option<adaptive::Adaptive>,
    /// Field evaluations of the last step: (forward, gradient).
    last_nfe: NfeHandle,
    /// Adaptive: total evaluations (forward, gradient) and steps counted.
    nfe_total: (usize, usize, usize),
    n_stages: usize,
    steps_per_submit: usize,
    seed: u64,
    n_data: u32,
    tiles: Tiles,
}

/// What the trainer gives the objective: its batch, pools and output buffers.
pub struct MleLink<'a> {
    pub batch: usize,
    /// The (model-unit) data pool and its rows.
    pub data: &'a wgpu::Buffer,
    pub n_data: usize,
    /// Gets each row's NLL.
    pub sample_loss: &'a wgpu::Buffer,
    /// Gets the gradient of the batch objective.
    pub grads: &'a wgpu::Buffer,
    /// Training steps recorded per submit.
    pub steps_per_submit: usize,
    pub seed: u64,
}

impl MleState {
    pub fn new(ctx: &GpuContext, mlp: &GpuMlp, cfg: &MleConfig, link: MleLink) -> Result<Self> {
        let MleLink {
            batch,
            data,
            n_data,
            sample_loss,
            grads,
            steps_per_submit,
            seed,
        } = link;
        cfg.validate()?;
        if mlp.cfg.classes > 0 {
            return Err(Error::invalid(
                "--objective mle does not train class-conditional models",
            ));
        }
        let d = mlp.cfg.dim;
        let k_slots = steps_per_submit;
        let tab = cfg.tableau();
        let ns = tab.stages();
        let n_steps = cfg.steps;
        let backprop_mode = cfg.grad == MleGrad::Backprop;
        let inv_b = 1.0 / batch as f64;
        let field = likelihood_field(ctx, mlp, cfg, batch, k_slots)?;
        let fwd_stride = d + 3;
        let fwd_state = ctx.storage("mle forward state", batch * fwd_stride)?;
        let adj_state = ctx.storage("mle adjoint state", batch * 2 * d)?;
        let clock = ctx.storage("mle clocks", batch * ode::CLOCK)?;
        let history = ctx.storage(
            "mle state history",
            if backprop_mode {
                (n_steps + 1) * batch * d
            } else {
                1
            },
        )?;
        let n_evals = cfg.nfe();
        let ode_arena = UniformArena::new(
            ctx,
            "mle ode params",
            k_slots + 1 + 2 * n_evals + n_steps + 1,
        );
        let mle_arena = UniformArena::new(ctx, "mle params", 1 + n_evals.max(2));
        let input_grad = field.input_grad();
        let step_bufs = StepBuffers {
            fwd_state: &fwd_state,
            adj_state: &adj_state,
            clock: &clock,
            history: &history,
            data,
            rows: batch,
            dim: d,
        };
        let (fwd, adj) = OdeSolve::both(ctx, &field, &ode_arena, &step_bufs)?;
        let quad = Quadrature::new(
            ctx,
            &mle_arena,
            &mle::AdjointStartBindings {
                fwd_state: &fwd_state,
                adj_state: &adj_state,
                sample_loss,
            },
            &mle::AccumulateBindings {
                stage_grads: &field.stage_grads,
                grads,
            },
        )?;
        let (ode_base, fwd_base) = ode_bases(mlp, batch, n_data);
        let backprop = if backprop_mode {
            let bufs = dto::BackpropBuffers {
                fwd_state: &fwd_state,
                history: &history,
                k: &fwd.k,
                input_grad,
            };
            let base = dto::Backprop::params(&ode_base, ns, inv_b);
            Some(dto::Backprop::new(
                ctx, &field, &ode_arena, &bufs, base, n_evals,
            )?)
        } else {
            None
        };
        let mle_base = mle_params(mlp, batch, &field);
        let mut st = MleState {
            cfg: cfg.clone(),
            field,
            fwd,
            adj,
            fwd_state,
            ode_arena,
            mle_arena,
            ode_base,
            mle_base,
            fwd_program: None,
            adj_program: None,
            quad,
            backprop,
            adaptive: None,
            last_nfe: NfeHandle::new((cfg.nfe(), cfg.nfe_gradient())),
            nfe_total: (0, 0, 0),
            n_stages: ns,
            steps_per_submit,
            seed,
            n_data: n_data as u32,
            tiles: ctx.tiles,
        };
        if cfg.adaptive() {
            st.adaptive = Some(adaptive::Adaptive::new(
                ctx, &st, data, &clock, grads, &history, &fwd_base,
            )?);
        }
        st.set_fixed_slots(ctx, &tab, &fwd_base);
        for i in 0..k_slots {
            st.set_step(i, 0);
        }
        st.upload(ctx);
        Ok(st)
    }

    /// Step-independent parameter slots: both solves' stages, the quadrature weights, the
    /// history snapshots and the reverse stages.
    fn set_fixed_slots(&mut self, ctx: &GpuContext, tab: &Tableau, fwd_base: &ode::OdeParams) {
        let (k_slots, ns, n_steps) = (self.steps_per_submit, self.n_stages, self.cfg.steps);
        let d = self.ode_base.dim;
        let adj_base = ode::OdeParams {
            aug: d,
            adjoint: 1,
            t: 0.0,
            ..self.ode_base
        };
        self.ode_arena.set(k_slots, &adj_base);
        let fwd_times = TimeGrid::Uniform.times(1.0, 0.0, n_steps);
        let adj_times = TimeGrid::Uniform.times(0.0, 1.0, n_steps);
        let fwd = FixedProgram::new(tab, &fwd_times, fwd_base);
        let adj = FixedProgram::new(tab, &adj_times, &adj_base);
        let slot = fwd.write(&mut self.ode_arena, 0..n_steps, k_slots + 1);
        let slot = adj.write(&mut self.ode_arena, 0..n_steps, slot);
        self.fwd_program = Some(fwd);
        self.adj_program = Some(adj);
        self.mle_arena.set(0, &self.mle_base);
        for n in 0..n_steps * ns {
            if self.backprop.is_none() {
                let h = adj_times[n / ns + 1] - adj_times[n / ns];
                let mp = mle::MleParams {
                    coef: (-h * tab.b[n % ns]) as f32,
                    init: (n == 0) as u32,
                    ..self.mle_base
                };
                self.mle_arena.set(1 + n, &mp);
            }
        }
        for n in 0..=n_steps {
            let p = ode::OdeParams {
                snap_slot: n as u32,
                ..*fwd_base
            };
            self.ode_arena.set(slot + n, &p);
        }
        if let Some(bp) = &mut self.backprop {
            for init in [1, 0] {
                let mp = mle::MleParams {
                    coef: 1.0,
                    init,
                    ..self.mle_base
                };
                self.mle_arena.set(2 - init as usize, &mp);
            }
            let h = fwd_times[1] - fwd_times[0];
            // cot holds h·b_s and h·a_{r,s} for r < S: 1 + S ≤ 8 values.
            assert!(
                ns < ode::MAX_STAGES,
                "backprop supports tableaus of ≤ 7 stages"
            );
            for (n, t_n) in fwd_times[..n_steps].iter().enumerate() {
                for s in 0..ns {
                    let mut a_row = [0.0f32; 8];
                    for (q, a) in tab.a[s].iter().enumerate() {
                        a_row[q] = *a as f32;
                    }
                    let mut cot = [0.0f32; 8];
                    cot[0] = (h * tab.b[s]) as f32;
                    for r in s + 1..ns {
                        cot[1 + r] = (h * tab.a[r].get(s).copied().unwrap_or(0.0)) as f32;
                    }
                    let p = backprop::BackpropParams {
                        hist_slot: n as u32,
                        stage: s as u32,
                        t: (t_n + tab.c[s] * h) as f32,
                        h: h as f32,
                        a_row,
                        cot,
                        ..bp.base
                    };
                    bp.arena.set(n * ns + s, &p);
                }
            }
            bp.arena.upload(ctx, 0..n_steps * ns);
        }
        self.mle_arena.upload(ctx, 0..1 + self.cfg.nfe().max(2));
    }

    /// Slot `i` of the next submit runs training step `step` (0-based).
    pub fn set_step(&mut self, i: usize, step: u64) {
        let seed = step_seed(self.seed, step);
        let p = ode::OdeParams {
            aug: 3,
            n_source: self.n_data,
            t: 1.0,
            seed,
            ..self.ode_base
        };
        self.ode_arena.set(i, &p);
        self.field.set_probe_seed(i, seed, 0);
    }

    /// Upload every parameter slot (once, at construction).
    fn upload(&self, ctx: &GpuContext) {
        self.ode_arena.upload(ctx, 0..self.ode_arena_len());
        self.field.upload(ctx);
    }

    /// Upload the per-step slots of the next `n` steps ([`set_step`](Self::set_step)); the
    /// stage and quadrature slots do not change between steps.
    pub fn upload_steps(&self, ctx: &GpuContext, n: usize) {
        self.ode_arena.upload(ctx, 0..n);
        self.field.upload_probes(ctx, 0..n);
    }

    fn ode_arena_len(&self) -> usize {
        self.snapshot_slot(0) + self.cfg.steps + 1
    }

    fn snapshot_slot(&self, n: usize) -> usize {
        // After both solves' stage slots.
        self.steps_per_submit + 1 + 2 * self.cfg.steps * self.n_stages + n
    }

    /// Record training step slot `i`: forward solve, NLL, gradient (adjoint or backprop).
    pub fn record_step(&self, cp: &mut wgpu::ComputePass<'_>, i: usize) {
        let k = self.steps_per_submit;
        let rows = ode::per_row_groups(&self.ode_base, &self.tiles);
        self.fwd.init.dispatch(cp, i, rows);
        self.field.record_probe_init(cp, i);
        let bp = self.backprop.as_ref();
        if let Some(bp) = bp {
            bp.snapshot.dispatch(
                cp,
                &bp.g_snapshot,
                self.snapshot_slot(0),
                self.snap_groups(),
            );
        }
        let steps = self.cfg.steps;
        let fwd = self.fwd_program.as_ref().expect("fixed-step programs");
        fwd.record(
            cp,
            0..steps,
            At {
                kernels: &self.fwd.kernels,
                slot: k + 1,
                groups: rows,
            },
            |cp, _| self.field.record_eval(cp),
            |cp, n| {
                if let Some(bp) = bp {
                    let slot = self.snapshot_slot(n);
                    bp.snapshot
                        .dispatch(cp, &bp.g_snapshot, slot, self.snap_groups());
                }
            },
        );
        self.quad.adj_start.dispatch(
            cp,
            &self.quad.g_adj_start,
            0,
            mle::per_row_groups(&self.mle_base, &self.tiles),
        );
        let params = mle::per_param_groups(&self.mle_base, &self.tiles);
        if let Some(bp) = bp {
            self.record_backprop(cp, bp, params);
            return;
        }
        self.adj.init.dispatch(cp, k, rows);
        let adj = self.adj_program.as_ref().expect("fixed-step programs");
        adj.record(
            cp,
            0..steps,
            At {
                kernels: &self.adj.kernels,
                slot: k + 1 + steps * self.n_stages,
                groups: rows,
            },
            |cp, n| {
                self.field.record_vjp(cp, 0);
                self.quad
                    .accumulate
                    .dispatch(cp, &self.quad.g_accumulate, 1 + n, params);
            },
            |_, _| {},
        );
    }

    fn snap_groups(&self) -> [u32; 3] {
        ode::snapshot_groups(
            &ode::OdeParams {
                snap_rows: self.ode_base.rows,
                ..self.ode_base
            },
            &self.tiles,
        )
    }

    /// dopri5: the step runs its own submits (see `adaptive.rs`).
    pub fn adaptive(&self) -> bool {
        self.adaptive.is_some()
    }

    /// Field evaluations per row of the last training step: (forward, gradient).
    pub fn last_nfe(&self) -> (usize, usize) {
        self.last_nfe.get()
    }

    /// A handle that always reads [`last_nfe`](Self::last_nfe) (progress displays that
    /// cannot borrow the trainer while it runs).
    pub fn nfe_handle(&self) -> NfeHandle {
        self.last_nfe.clone()
    }

    /// Mean field evaluations per row and step since the start: (forward, gradient).
    pub fn mean_nfe(&self) -> (f64, f64) {
        let n = self.nfe_total.2.max(1) as f64;
        if self.adaptive.is_none() {
            let (f, g) = self.last_nfe.get();
            return (f as f64, g as f64);
        }
        (self.nfe_total.0 as f64 / n, self.nfe_total.1 as f64 / n)
    }

    /// The forward solve's final state [z, ℓ, E, F] per row (tests, diagnostics).
    pub fn forward_state(&self, ctx: &GpuContext) -> Result<Vec<f32>> {
        ctx.read(
            &self.fwd_state,
            0,
            self.ode_base.rows as usize * (self.ode_base.dim as usize + 3),
        )
    }
}

impl OdeSolve {}

/// The evaluations of the last step, (forward, gradient), shared with a progress display
/// (a trainer may run on another thread, hence atomics).
#[derive(Clone, Debug)]
pub struct NfeHandle(std::sync::Arc<[std::sync::atomic::AtomicUsize; 2]>);

impl NfeHandle {
    fn new(nfe: (usize, usize)) -> Self {
        let h = NfeHandle(std::sync::Arc::new(Default::default()));
        h.set(nfe);
        h
    }

    /// The last step's (forward, gradient) evaluations.
    pub fn get(&self) -> (usize, usize) {
        use std::sync::atomic::Ordering::Relaxed;
        (self.0[0].load(Relaxed), self.0[1].load(Relaxed))
    }

    pub(crate) fn set(&self, nfe: (usize, usize)) {
        use std::sync::atomic::Ordering::Relaxed;
        self.0[0].store(nfe.0, Relaxed);
        self.0[1].store(nfe.1, Relaxed);
    }
}
