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

use crate::error::{Error, Result};
use crate::gpu::{GpuContext, UniformArena};
use crate::kernels::{mle, ode, trace, Kernel, Tiles};
use crate::mlp::{GpuMlp, MlpPass, PassOptions};
use crate::solve::{fixed_stage_params, Method, Tableau, TimeGrid, Trace};
use std::sync::Arc;

/// Settings of the maximum-likelihood objective (`--objective mle`).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct MleConfig {
    /// Hutchinson probes per row; 0: the exact trace (dim tangents per row).
    pub probes: usize,
    /// Rademacher instead of Gaussian probes.
    pub rademacher: bool,
    /// Fixed-step solver of both solves: euler, midpoint or rk4.
    pub solver: String,
    /// Steps of each solve over [0, 1].
    pub steps: usize,
    /// λ_K: weight of the kinetic energy ∫‖v‖² dt.
    pub kinetic: f64,
    /// λ_J: weight of the Jacobian Frobenius norm ∫‖∂v/∂x‖²_F dt.
    pub frobenius: f64,
}

impl Default for MleConfig {
    fn default() -> Self {
        MleConfig {
            probes: 1,
            rademacher: true,
            solver: "rk4".into(),
            steps: 8,
            kinetic: 0.0,
            frobenius: 0.0,
        }
    }
}

impl MleConfig {
    pub fn validate(&self) -> Result<()> {
        let m = Method::from_name(&self.solver)?;
        if m.adaptive() {
            return Err(Error::invalid(
                "--objective mle integrates with a fixed-step solver (euler, midpoint, rk4); evaluate the trained model with dopri5 (flowgpu logprob)",
            ));
        }
        if self.steps == 0 {
            return Err(Error::invalid("--mle-steps must be positive"));
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

    pub fn tableau(&self) -> Tableau {
        Method::from_name(&self.solver)
            .map(|m| m.tableau())
            .unwrap_or_else(|_| Tableau::rk4())
    }

    /// Field evaluations per step of each solve (forward, adjoint).
    pub fn nfe(&self) -> usize {
        self.steps * self.tableau().stages()
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

/// The field of a likelihood solve on the GPU: the MLP with tangent rows (probes or exact
/// directions), the integrands of trace.wgsl, and the backward pass of S through the
/// tangents into a per-stage gradient.
pub struct LikelihoodField {
    pub pass: MlpPass,
    pub trace: Trace,
    /// Probe directions [T·rows, dim].
    pub probes: wgpu::Buffer,
    /// [rows, 4]: divergence, ‖v‖², Frobenius estimate, 0.
    pub div: wgpu::Buffer,
    /// The adjoint a at the current stage [rows, dim] (written by ode.wgsl).
    pub cotangent: wgpu::Buffer,
    /// ∂S/∂θ of the last backward pass (flat parameter layout).
    pub stage_grads: wgpu::Buffer,
    arena: UniformArena,
    probe_slots: usize,
    base: trace::TraceParams,
    init: Arc<Kernel>,
    divergence: Arc<Kernel>,
    seed_cot: Arc<Kernel>,
    g_init: wgpu::BindGroup,
    g_div: wgpu::BindGroup,
    g_cot: wgpu::BindGroup,
    tiles: Tiles,
}

impl LikelihoodField {
    /// A field over up to `capacity` rows with `probe_slots` probe-seed slots.
    pub fn new(
        ctx: &GpuContext,
        mlp: &GpuMlp,
        capacity: usize,
        trace_kind: Trace,
        probe_slots: usize,
    ) -> Result<Self> {
        let d = mlp.cfg.dim;
        let tangents = trace_kind.tangents(d);
        let stage_grads = ctx.storage("stage grads", mlp.layout.total)?;
        let pass = MlpPass::new(
            ctx,
            mlp,
            capacity,
            PassOptions {
                grads: Some(&stage_grads),
                input_grad: true,
                tangents,
            },
        )?;
        let probes = ctx.storage("probes", tangents * capacity * d)?;
        let div = ctx.storage("divergence", capacity * trace::DIV_STRIDE)?;
        let cotangent = ctx.storage("cotangent", capacity * d)?;
        let arena = UniformArena::new(ctx, "likelihood field params", probe_slots + 2);
        let init = trace::probe_init(ctx)?;
        let divergence = trace::divergence(ctx)?;
        let seed_cot = trace::trace_cotangent(ctx)?;
        let g_init = init.bind(ctx, &arena, &[&pass.input, &probes]);
        let g_div = divergence.bind(ctx, &arena, &[&probes, pass.output(), &div]);
        let g_cot = seed_cot.bind(
            ctx,
            &arena,
            &[&probes, pass.output(), &cotangent, pass.dz.last().unwrap()],
        );
        let base = trace::TraceParams {
            dim: d as u32,
            in_stride: mlp.layout.layers[0].in_pad as u32,
            out_stride: MlpPass::out_stride(&mlp.cfg) as u32,
            n_tangents: tangents as u32,
            probe: trace_kind.probe_code(),
            seed: trace_kind.seed() as u32,
            ..Default::default()
        };
        Ok(LikelihoodField {
            pass,
            trace: trace_kind,
            probes,
            div,
            cotangent,
            stage_grads,
            arena,
            probe_slots,
            base,
            init,
            divergence,
            seed_cot,
            g_init,
            g_div,
            g_cot,
            tiles: Tiles::for_class(ctx.class),
        })
    }

    /// Work on `rows` rows, with the weights of S's trace, kinetic and Frobenius terms.
    /// Sets every slot; call [`upload`](Self::upload) before recording.
    pub fn set_rows(&mut self, ctx: &GpuContext, mlp: &GpuMlp, rows: usize, a: [f64; 3]) {
        self.pass.set_rows(ctx, mlp, rows);
        self.base.rows = rows as u32;
        self.base.a_trace = a[0] as f32;
        self.base.a_kinetic = a[1] as f32;
        self.base.a_frobenius = a[2] as f32;
        for s in 0..self.probe_slots + 2 {
            self.arena.set(s, &self.base);
        }
    }

    /// Probe seed (and global index of row 0) of probe slot `slot`.
    pub fn set_probe_seed(&mut self, slot: usize, seed: u32, row_offset: u32) {
        let p = trace::TraceParams {
            seed,
            row_offset,
            ..self.base
        };
        self.arena.set(slot, &p);
    }

    pub fn upload(&self, ctx: &GpuContext) {
        self.arena.upload(ctx, 0..self.probe_slots + 2);
    }

    fn groups(&self) -> [u32; 3] {
        trace::per_row_groups(&self.base, &self.tiles)
    }

    /// Draw the tangent directions into the MLP's tangent input rows (fixed until the next
    /// call: over a whole step, forward and adjoint).
    pub fn record_probe_init(&self, cp: &mut wgpu::ComputePass<'_>, slot: usize) {
        self.init.dispatch(cp, &self.g_init, slot, self.groups());
    }

    /// v and the likelihood integrands at the current input rows.
    pub fn record_eval(&self, cp: &mut wgpu::ComputePass<'_>) {
        self.pass.record_forward(cp);
        self.pass.record_tangents(cp);
        self.divergence
            .dispatch(cp, &self.g_div, self.probe_slots, self.groups());
    }

    /// ∂S/∂x (the pass's input gradient) and ∂S/∂θ (`stage_grads`) at the current input
    /// rows, with a from `cotangent`.
    pub fn record_vjp(&self, cp: &mut wgpu::ComputePass<'_>) {
        self.pass.record_forward(cp);
        self.pass.record_tangents(cp);
        self.seed_cot
            .dispatch(cp, &self.g_cot, self.probe_slots + 1, self.groups());
        self.pass.record_backward(cp);
    }
}

/// ∂S/∂(input) rows, ∂S/∂θ and the integrands of S at rows x (model units) and time t:
/// the GPU side of the adjoint's per-stage work, for tests and tools.
pub struct FieldVjp {
    /// [rows, 4]: divergence, ‖v‖², Frobenius estimate, 0.
    pub integrands: Vec<f32>,
    /// [rows, in_pad]: gradient of S with respect to each MLP input row.
    pub input_grad: Vec<f32>,
    /// Flat parameter layout.
    pub grads: Vec<f32>,
}

/// Evaluate [`FieldVjp`] once on the GPU (a per row, weights a_trace, a_kinetic, a_frobenius).
pub fn field_vjp(
    ctx: &GpuContext,
    mlp: &GpuMlp,
    x: &[f32],
    t: f64,
    trace_kind: Trace,
    a: &[f32],
    weights: [f64; 3],
) -> Result<FieldVjp> {
    let d = mlp.cfg.dim;
    let n = x.len() / d;
    let mut field = LikelihoodField::new(ctx, mlp, n, trace_kind, 1)?;
    field.set_rows(ctx, mlp, n, weights);
    field.set_probe_seed(0, trace_kind.seed() as u32, 0);
    field.upload(ctx);
    let in_pad = mlp.layout.layers[0].in_pad;
    let mut input = vec![0.0f32; n * in_pad];
    for (i, r) in x.chunks(d).enumerate() {
        let xr: Vec<f64> = r.iter().map(|&v| v as f64).collect();
        for (c, v) in crate::reference::input_row(&mlp.cfg, &xr, t)
            .iter()
            .enumerate()
        {
            input[i * in_pad + c] = *v as f32;
        }
    }
    ctx.queue
        .write_buffer(&field.pass.input, 0, bytemuck::cast_slice(&input));
    ctx.queue
        .write_buffer(&field.cotangent, 0, bytemuck::cast_slice(a));
    let mut enc = ctx.device.create_command_encoder(&Default::default());
    {
        let mut cp = enc.begin_compute_pass(&Default::default());
        field.record_probe_init(&mut cp, 0);
        field.record_eval(&mut cp);
        field.record_vjp(&mut cp);
    }
    ctx.submit(enc)?;
    Ok(FieldVjp {
        integrands: ctx.read(&field.div, 0, n * trace::DIV_STRIDE)?,
        input_grad: ctx.read(field.pass.input_grad.as_ref().unwrap(), 0, n * in_pad)?,
        grads: ctx.read(&field.stage_grads, 0, mlp.layout.total)?,
    })
}

/// Buffers and bind groups of one ODE solve driven by the stage kernels of ode.wgsl.
struct OdeSolve {
    _state: wgpu::Buffer,
    _k: wgpu::Buffer,
    g_init: wgpu::BindGroup,
    g_stage: wgpu::BindGroup,
    g_final: wgpu::BindGroup,
}

/// The GPU state of the maximum-likelihood objective inside a [`crate::train::Trainer`].
pub struct MleState {
    pub cfg: MleConfig,
    field: LikelihoodField,
    fwd: OdeSolve,
    adj: OdeSolve,
    fwd_state: wgpu::Buffer,
    /// Slots [0, K): per-step forward init; K: adjoint start; then the forward stages,
    /// then the adjoint stages.
    ode_arena: UniformArena,
    /// Slot 0: adjoint_start; then one accumulate slot per adjoint stage.
    mle_arena: UniformArena,
    ode_base: ode::OdeParams,
    mle_base: mle::MleParams,
    fwd_last: Vec<bool>,
    adj_last: Vec<bool>,
    noise: Arc<Kernel>,
    start: Arc<Kernel>,
    stage: Arc<Kernel>,
    final_: Arc<Kernel>,
    adj_start: Arc<Kernel>,
    accumulate: Arc<Kernel>,
    g_adj_start: wgpu::BindGroup,
    g_accumulate: wgpu::BindGroup,
    steps_per_submit: usize,
    seed: u64,
    n_data: u32,
    tiles: Tiles,
}

impl MleState {
    /// `data`: the (model-unit) data pool; `sample_loss` gets each row's NLL and `grads`
    /// the gradient of the batch objective.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        ctx: &GpuContext,
        mlp: &GpuMlp,
        cfg: &MleConfig,
        batch: usize,
        data: &wgpu::Buffer,
        n_data: usize,
        sample_loss: &wgpu::Buffer,
        grads: &wgpu::Buffer,
        steps_per_submit: usize,
        seed: u64,
    ) -> Result<Self> {
        cfg.validate()?;
        if mlp.cfg.classes > 0 {
            return Err(Error::invalid(
                "--objective mle does not train class-conditional models",
            ));
        }
        let d = mlp.cfg.dim;
        let k_slots = steps_per_submit;
        let trace_kind = cfg.trace(0);
        let mut field = LikelihoodField::new(ctx, mlp, batch, trace_kind, k_slots)?;
        let inv_b = 1.0 / batch as f64;
        field.set_rows(
            ctx,
            mlp,
            batch,
            [-inv_b, -cfg.kinetic * inv_b, -cfg.frobenius * inv_b],
        );
        let tab = cfg.tableau();
        let fwd_stride = d + 3;
        let fwd_state = ctx.storage("mle forward state", batch * fwd_stride)?;
        let adj_state = ctx.storage("mle adjoint state", batch * 2 * d)?;
        let clock = ctx.storage("mle clocks", batch * ode::CLOCK)?;
        let traj = ctx.storage("unused trajectories", 4)?;
        let n_stages = cfg.nfe();
        let ode_arena = UniformArena::new(ctx, "mle ode params", k_slots + 1 + 2 * n_stages);
        let mle_arena = UniformArena::new(ctx, "mle params", 1 + n_stages);
        let noise = ode::base_noise(ctx)?;
        let start = ode::start(ctx)?;
        let stage = ode::rk_stage(ctx)?;
        let final_ = ode::rk_final(ctx)?;
        let adj_start = mle::adjoint_start(ctx)?;
        let accumulate = mle::accumulate(ctx)?;
        let p = &field.pass;
        let make = |state: &wgpu::Buffer,
                    sd: usize,
                    extra: &wgpu::Buffer,
                    init: &Arc<Kernel>,
                    init_bufs: &[&wgpu::Buffer]|
         -> Result<OdeSolve> {
            let k = ctx.storage("mle ode stages", ode::MAX_STAGES * batch * sd)?;
            let all = [
                state,
                &p.input,
                p.output(),
                &k,
                &clock,
                &traj,
                extra,
                &field.cotangent,
            ];
            Ok(OdeSolve {
                g_init: init.bind(ctx, &ode_arena, init_bufs),
                g_stage: stage.bind(ctx, &ode_arena, &all),
                g_final: final_.bind(ctx, &ode_arena, &all),
                _state: state.clone(),
                _k: k,
            })
        };
        let fwd = make(
            &fwd_state,
            fwd_stride,
            &field.div,
            &noise,
            &[&fwd_state, &p.input, &clock, data, &field.cotangent],
        )?;
        let adj = make(
            &adj_state,
            2 * d,
            p.input_grad.as_ref().expect("input grad"),
            &start,
            &[&adj_state, &p.input, &clock, &field.cotangent],
        )?;
        let g_adj_start = adj_start.bind(ctx, &mle_arena, &[&fwd_state, &adj_state, sample_loss]);
        let g_accumulate = accumulate.bind(ctx, &mle_arena, &[&field.stage_grads, grads]);
        let ode_base = ode::OdeParams {
            rows: batch as u32,
            dim: d as u32,
            in_stride: mlp.layout.layers[0].in_pad as u32,
            out_stride: MlpPass::out_stride(&mlp.cfg) as u32,
            time_cols: mlp.cfg.time_cols() as u32,
            class_id: ode::NO_CLASS,
            ..Default::default()
        };
        let mle_base = mle::MleParams {
            rows: batch as u32,
            dim: d as u32,
            fwd_stride: fwd_stride as u32,
            n_params: mlp.layout.total as u32,
            inv_batch: inv_b as f32,
            log_norm: (0.5 * d as f64 * (2.0 * std::f64::consts::PI).ln()) as f32,
            coef: 0.0,
            init: 0,
        };
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
            fwd_last: Vec::new(),
            adj_last: Vec::new(),
            noise,
            start,
            stage,
            final_,
            adj_start,
            accumulate,
            g_adj_start,
            g_accumulate,
            steps_per_submit,
            seed,
            n_data: n_data as u32,
            tiles: Tiles::for_class(ctx.class),
        };
        // Step-independent slots: the stages of both solves and the quadrature weights.
        let fwd_base = ode::OdeParams {
            aug: 3,
            n_source: n_data as u32,
            t: 1.0,
            ..ode_base
        };
        let adj_base = ode::OdeParams {
            aug: d as u32,
            adjoint: 1,
            t: 0.0,
            ..ode_base
        };
        st.ode_arena.set(k_slots, &adj_base);
        let fwd_times = TimeGrid::Uniform.times(1.0, 0.0, cfg.steps);
        let adj_times = TimeGrid::Uniform.times(0.0, 1.0, cfg.steps);
        let mut slot = k_slots + 1;
        for (p, last) in fixed_stage_params(&tab, &fwd_times, &fwd_base) {
            st.ode_arena.set(slot, &p);
            st.fwd_last.push(last);
            slot += 1;
        }
        st.mle_arena.set(0, &st.mle_base);
        let ns = tab.stages();
        for (n, (p, last)) in fixed_stage_params(&tab, &adj_times, &adj_base)
            .into_iter()
            .enumerate()
        {
            st.ode_arena.set(slot, &p);
            st.adj_last.push(last);
            slot += 1;
            let h = adj_times[n / ns + 1] - adj_times[n / ns];
            let mp = mle::MleParams {
                coef: (-h * tab.b[n % ns]) as f32,
                init: (n == 0) as u32,
                ..st.mle_base
            };
            st.mle_arena.set(1 + n, &mp);
        }
        st.mle_arena.upload(ctx, 0..1 + n_stages);
        for i in 0..k_slots {
            st.set_step(i, 0);
        }
        st.upload(ctx);
        Ok(st)
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

    pub fn upload(&self, ctx: &GpuContext) {
        let n = self.ode_arena_len();
        self.ode_arena.upload(ctx, 0..n);
        self.field.upload(ctx);
    }

    fn ode_arena_len(&self) -> usize {
        self.steps_per_submit + 1 + self.fwd_last.len() + self.adj_last.len()
    }

    /// Record training step slot `i`: forward solve, NLL, adjoint solve, gradient.
    pub fn record_step(&self, cp: &mut wgpu::ComputePass<'_>, i: usize) {
        let k = self.steps_per_submit;
        let rows = ode::per_row_groups(&self.ode_base, &self.tiles);
        self.noise.dispatch(cp, &self.fwd.g_init, i, rows);
        self.field.record_probe_init(cp, i);
        let mut slot = k + 1;
        for &last in &self.fwd_last {
            self.field.record_eval(cp);
            let (kern, g) = if last {
                (&self.final_, &self.fwd.g_final)
            } else {
                (&self.stage, &self.fwd.g_stage)
            };
            kern.dispatch(cp, g, slot, rows);
            slot += 1;
        }
        self.adj_start.dispatch(
            cp,
            &self.g_adj_start,
            0,
            mle::per_row_groups(&self.mle_base, &self.tiles),
        );
        self.start.dispatch(cp, &self.adj.g_init, k, rows);
        let params = mle::per_param_groups(&self.mle_base, &self.tiles);
        for (n, &last) in self.adj_last.iter().enumerate() {
            self.field.record_vjp(cp);
            self.accumulate
                .dispatch(cp, &self.g_accumulate, 1 + n, params);
            let (kern, g) = if last {
                (&self.final_, &self.adj.g_final)
            } else {
                (&self.stage, &self.adj.g_stage)
            };
            kern.dispatch(cp, g, slot, rows);
            slot += 1;
        }
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
