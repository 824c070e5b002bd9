//! `--mle-solver dopri5`: adaptive forward and adjoint solves of an MLE training step.

use super::{step_seed, MleState};
use crate::error::Result;
use crate::gpu::{GpuContext, UniformArena};
use crate::kernels::{mle, ode, Entry};
use crate::ode::program::{coefs, run_adaptive, AdaptiveProgram, At, GlobalKernels, StageKernels};
use crate::solve::Tableau;

impl MleState {
    /// dopri5: solve training step `step`'s forward and adjoint ODEs, submitting every
    /// `ATTEMPTS` attempts and reading the step status back in between.
    pub fn run_adaptive_step(&mut self, ctx: &GpuContext, step: u64) -> Result<()> {
        let seed = step_seed(self.seed, step);
        {
            let ad = self.adaptive.as_mut().expect("adaptive MLE");
            let fwd_init = ode::OdeParams {
                seed,
                ..ad.fwd_base
            };
            ad.arena.set(FWD_INIT, &fwd_init);
            ad.arena.upload(ctx, FWD_INIT..FWD_INIT + 1);
        }
        self.field.set_probe_seed(0, seed, 0);
        self.field.upload_probes(ctx, 0..1);
        let fwd_attempts = self.adaptive_forward(ctx)?;
        let adj_attempts = self.adaptive_adjoint(ctx)?;
        let ns = self.n_stages;
        let fwd_nfe = 1 + (ns - 1) * fwd_attempts;
        self.last_nfe.set((fwd_nfe, ns * adj_attempts));
        self.nfe_total.0 += fwd_nfe;
        self.nfe_total.1 += ns * adj_attempts;
        self.nfe_total.2 += 1;
        Ok(())
    }

    /// The forward solve: per-row Dormand–Prince with FSAL, as the sampler's.
    fn adaptive_forward(&self, ctx: &GpuContext) -> Result<usize> {
        let ad = self.adaptive.as_ref().expect("adaptive MLE");
        let rows = ode::per_row_groups(&self.ode_base, &self.tiles);
        let n_rows = self.ode_base.rows as usize;
        let max = self.cfg.max_steps;
        run_adaptive(
            ATTEMPTS,
            max,
            |first| {
                ctx.submit_pass(|cp| {
                    if first {
                        ad.noise.dispatch(cp, &ad.g_noise, FWD_INIT, rows);
                        self.field.record_probe_init(cp, 0);
                    }
                    ad.program.record_per_row(
                        cp,
                        first,
                        ATTEMPTS,
                        At {
                            kernels: &ad.fwd_kernels,
                            slot: FWD_STAGE,
                            groups: rows,
                        },
                        |cp| self.field.record_eval(cp),
                        |_, _| {},
                    );
                })?;
                let clock = ctx.read(&ad.clock, 0, n_rows * ode::CLOCK)?;
                running(&clock, n_rows, "forward")
            },
            |_| too_long("forward", max),
        )
    }

    /// The adjoint: batch-global steps, S fresh stages per attempt, the parameter
    /// gradient committed for accepted attempts only.
    fn adaptive_adjoint(&self, ctx: &GpuContext) -> Result<usize> {
        let ad = self.adaptive.as_ref().expect("adaptive MLE");
        let rows = ode::per_row_groups(&self.ode_base, &self.tiles);
        let params = mle::per_param_groups(&self.mle_base, &self.tiles);
        let max = self.cfg.max_steps;
        let ns = self.n_stages;
        run_adaptive(
            ATTEMPTS,
            max,
            |first| {
                ctx.submit_pass(|cp| {
                    if first {
                        let groups = mle::per_row_groups(&self.mle_base, &self.tiles);
                        self.quad
                            .adj_start
                            .dispatch(cp, &self.quad.g_adj_start, 0, groups);
                        ad.start.dispatch(cp, &ad.g_adj_start, ADJ_START, rows);
                    }
                    ad.program.record_batch_global(
                        cp,
                        ATTEMPTS,
                        At {
                            kernels: &ad.adj_kernels,
                            slot: ADJ_STAGE,
                            groups: rows,
                        },
                        |cp, s| {
                            self.field.record_vjp(cp, 0);
                            self.quad
                                .accumulate
                                .dispatch(cp, &ad.g_accumulate, s, params);
                        },
                        |cp, a| {
                            // The first commit of a step initializes the gradient.
                            let init = first && a == 0;
                            let slot = ns + (!init) as usize;
                            ad.commit.dispatch(cp, &ad.g_commit, slot, params);
                        },
                    );
                })?;
                let clock = ctx.read(&ad.clock, 0, ode::CLOCK)?;
                running(&clock, 1, "adjoint")
            },
            |_| too_long("adjoint", max),
        )
    }
}

/// Adaptive attempts recorded between two status reads.
const ATTEMPTS: usize = 2;
// Slots of the adaptive arena.
const FWD_INIT: usize = 0;
const FWD_STAGE: usize = 1; // + s for s < S − 1; + S − 1: adaptive_final
const ADJ_START: usize = 8;
const ADJ_STAGE: usize = 9; // + s for s < S − 1; + S − 1: error; + S: control; + S + 1: apply
const ADAPTIVE_SLOTS: usize = ADJ_STAGE + ode::MAX_STAGES + 2;

/// An adaptive solve of `base` from t0 to t1 under the objective's tolerances (first
/// step 5% of the interval; Hairer–Wanner's controller constants).
fn with_tolerances(
    base: &ode::OdeParams,
    cfg: &super::MleConfig,
    t0: f64,
    t1: f64,
) -> ode::OdeParams {
    ode::OdeParams {
        t: t0 as f32,
        h: (0.05 * (t1 - t0)) as f32,
        t_end: t1 as f32,
        rtol: cfg.rtol as f32,
        atol: cfg.atol as f32,
        safety: 0.9,
        fac_min: 0.2,
        fac_max: 10.0,
        h_min: 1e-6,
        ..*base
    }
}

/// The quadrature slots: stage s adds b_s·∂S/∂θ into the attempt's gradient (the first
/// initializes it); slots S and S + 1 commit an accepted attempt with weight −h (the
/// step's first commit initializes the parameter gradient).
fn set_quadrature(quad: &mut UniformArena, tab: &Tableau, base: &mle::MleParams) {
    let ns = tab.stages();
    for (s, b) in tab.b.iter().enumerate() {
        let mp = mle::MleParams {
            coef: *b as f32,
            init: (s == 0) as u32,
            ..*base
        };
        quad.set(s, &mp);
    }
    for init in [1u32, 0] {
        // The attempt's gradient is one buffer, whatever the field's slots.
        let mp = mle::MleParams {
            coef: -1.0,
            init,
            parts: 1,
            ..*base
        };
        quad.set(ns + (init == 0) as usize, &mp);
    }
}

/// Rows of a solve still running; an error for a failed one.
fn running(clock: &[f32], rows: usize, which: &str) -> Result<usize> {
    crate::solve::running_rows(
        clock,
        rows,
        &format!("dopri5 ({which} solve)"),
        "the field blows up (lower --lr, add --kinetic)",
    )
}

fn too_long(which: &str, max: usize) -> String {
    format!(
        "dopri5 ({which} solve): not done within --mle-max-steps {max} attempts; loosen --mle-rtol/--mle-atol or regularize (--kinetic, --jacobian-frobenius)"
    )
}

/// `--mle-solver dopri5`: the forward solve with per-row step control (as sampling), the
/// adjoint with one step size for the batch (ode.wgsl's global_control), so that the
/// parameter gradient of an attempt — Σ_s b_s·∂S/∂θ, accumulated per stage — is added
/// with weight −h once the attempt is accepted (mle.wgsl's commit). A step is several
/// submits with a status readback between them, like any adaptive solve.
pub(super) struct Adaptive {
    arena: UniformArena,
    _quad: UniformArena,
    fwd_base: ode::OdeParams,
    clock: wgpu::Buffer,
    _attempt_grads: wgpu::Buffer,
    /// The Dormand–Prince stages (written for both solves).
    program: AdaptiveProgram,
    noise: Entry<ode::BaseNoise>,
    start: Entry<ode::Start>,
    commit: Entry<mle::Commit>,
    fwd_kernels: StageKernels,
    adj_kernels: GlobalKernels,
    g_noise: wgpu::BindGroup,
    g_adj_start: wgpu::BindGroup,
    g_accumulate: wgpu::BindGroup,
    g_commit: wgpu::BindGroup,
}

impl Adaptive {
    pub(super) fn new(
        ctx: &GpuContext,
        st: &MleState,
        data: &wgpu::Buffer,
        clock: &wgpu::Buffer,
        grads: &wgpu::Buffer,
        history: &wgpu::Buffer,
        fwd_base: &ode::OdeParams,
    ) -> Result<Self> {
        let cfg = &st.cfg;
        let tab = Tableau::dopri5();
        let ns = tab.stages();
        let field = &st.field;
        let p = &field.pass;
        let mut arena = UniformArena::new(ctx, "mle adaptive params", ADAPTIVE_SLOTS);
        let mut quad = UniformArena::new(ctx, "mle adaptive quadrature", ns + 2);
        let attempt_grads = ctx.storage("attempt grads", st.mle_base.n_params as usize)?;
        let noise = ode::base_noise(ctx)?;
        let start = ode::start(ctx)?;
        let astage = ode::adaptive_stage(ctx)?;
        let afinal = ode::adaptive_final(ctx)?;
        let aerror = ode::adaptive_error(ctx)?;
        let control = ode::global_control(ctx)?;
        let apply = ode::adaptive_apply(ctx)?;
        let commit = mle::commit(ctx)?;
        let input_grad = field.input_grad();
        let fwd_all = ode::StageBindings {
            state: &st.fwd.state,
            input: &p.input,
            v: p.output(),
            k: &st.fwd.k,
            clock,
            traj: history,
            div: &field.div,
            cotangent: &field.cotangent,
        };
        // The adjoint's stages read the field's input gradient where the forward reads
        // the divergence.
        let adj_all = ode::StageBindings {
            state: &st.adj.state,
            k: &st.adj.k,
            div: input_grad,
            ..fwd_all
        };
        let fwd = with_tolerances(fwd_base, cfg, 1.0, 0.0);
        let adjoint = ode::OdeParams {
            aug: st.ode_base.dim,
            adjoint: 1,
            ..st.ode_base
        };
        let adj = with_tolerances(&adjoint, cfg, 0.0, 1.0);
        arena.set(FWD_INIT, &fwd);
        arena.set(ADJ_START, &adj);
        let program = AdaptiveProgram::new(&tab, &fwd);
        program.write(&mut arena, FWD_STAGE);
        AdaptiveProgram::new(&tab, &adj).write(&mut arena, ADJ_STAGE);
        arena.set(ADJ_STAGE + ns, &adj);
        arena.set(
            ADJ_STAGE + ns + 1,
            &ode::OdeParams {
                n_terms: ns as u32,
                coef: coefs(&tab.b),
                ..adj
            },
        );
        arena.upload(ctx, 0..ADAPTIVE_SLOTS);
        set_quadrature(&mut quad, &tab, &st.mle_base);
        quad.upload(ctx, 0..ns + 2);
        Ok(Adaptive {
            g_noise: noise.bind(
                ctx,
                &arena,
                &ode::BaseNoiseBindings {
                    state: &st.fwd.state,
                    input: &p.input,
                    clock,
                    source: data,
                    cotangent: &field.cotangent,
                },
            ),
            g_adj_start: start.bind(
                ctx,
                &arena,
                &ode::StartBindings {
                    state: &st.adj.state,
                    input: &p.input,
                    clock,
                    cotangent: &field.cotangent,
                },
            ),
            fwd_kernels: StageKernels {
                stage: astage.bound(ctx, &arena, &fwd_all),
                last: afinal.bound(ctx, &arena, &fwd_all),
            },
            adj_kernels: GlobalKernels {
                stage: astage.bound(ctx, &arena, &adj_all),
                error: aerror.bound(ctx, &arena, &adj_all),
                control: control.bound(ctx, &arena, &ode::GlobalControlBindings { clock }),
                apply: apply.bound(ctx, &arena, &adj_all),
            },
            g_accumulate: st.quad.accumulate.bind(
                ctx,
                &quad,
                &mle::AccumulateBindings {
                    stage_grads: &field.stage_grads,
                    grads: &attempt_grads,
                },
            ),
            g_commit: commit.bind(
                ctx,
                &quad,
                &mle::CommitBindings {
                    stage_grads: &attempt_grads,
                    grads,
                    clock,
                },
            ),
            arena,
            _quad: quad,
            fwd_base: fwd,
            clock: clock.clone(),
            _attempt_grads: attempt_grads,
            program,
            noise,
            start,
            commit,
        })
    }
}
