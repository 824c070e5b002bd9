//! `--mle-solver dopri5`: adaptive forward and adjoint solves of an MLE training step.

use super::{step_seed, MleState};
use crate::error::{Error, Result};
use crate::gpu::{GpuContext, UniformArena};
use crate::kernels::{mle, ode, Entry};
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
        let ad = self.adaptive.as_ref().expect("adaptive MLE");
        let ns = self.n_stages;
        let rows = ode::per_row_groups(&self.ode_base, &self.tiles);
        let n_rows = self.ode_base.rows as usize;
        let max = self.cfg.max_steps;
        // Forward: per-row Dormand–Prince with FSAL, as the sampler's.
        let mut attempts = 0;
        let mut first = true;
        loop {
            let mut enc = ctx.device.create_command_encoder(&Default::default());
            {
                let mut cp = enc.begin_compute_pass(&Default::default());
                if first {
                    ad.noise.dispatch(&mut cp, &ad.g_noise, FWD_INIT, rows);
                    self.field.record_probe_init(&mut cp, 0);
                    self.field.record_eval(&mut cp);
                    ad.astage
                        .dispatch(&mut cp, &ad.g_fwd_astage, FWD_STAGE, rows);
                }
                for _ in 0..ATTEMPTS {
                    for s in 1..ns - 1 {
                        self.field.record_eval(&mut cp);
                        ad.astage
                            .dispatch(&mut cp, &ad.g_fwd_astage, FWD_STAGE + s, rows);
                    }
                    self.field.record_eval(&mut cp);
                    ad.afinal
                        .dispatch(&mut cp, &ad.g_fwd_afinal, FWD_STAGE + ns - 1, rows);
                }
            }
            ctx.submit(enc)?;
            first = false;
            attempts += ATTEMPTS;
            let clock = ctx.read(&ad.clock, 0, n_rows * ode::CLOCK)?;
            if check_status(&clock, n_rows, "forward", attempts, max)? {
                break;
            }
        }
        let fwd_nfe = 1 + (ns - 1) * attempts;
        // Adjoint: batch-global steps, 7 fresh stages per attempt, gradient committed
        // for accepted attempts only.
        let params = mle::per_param_groups(&self.mle_base, &self.tiles);
        let mut adj_attempts = 0;
        let mut first = true;
        loop {
            let mut enc = ctx.device.create_command_encoder(&Default::default());
            {
                let mut cp = enc.begin_compute_pass(&Default::default());
                if first {
                    self.adj_start.dispatch(
                        &mut cp,
                        &self.g_adj_start,
                        0,
                        mle::per_row_groups(&self.mle_base, &self.tiles),
                    );
                    ad.start.dispatch(&mut cp, &ad.g_adj_start, ADJ_START, rows);
                }
                for a in 0..ATTEMPTS {
                    for s in 0..ns {
                        self.field.record_vjp(&mut cp, 0);
                        self.accumulate
                            .dispatch(&mut cp, &ad.g_accumulate, s, params);
                        if s + 1 < ns {
                            ad.astage
                                .dispatch(&mut cp, &ad.g_adj_astage, ADJ_STAGE + s, rows);
                        } else {
                            ad.aerror
                                .dispatch(&mut cp, &ad.g_adj_aerror, ADJ_STAGE + s, rows);
                        }
                    }
                    ad.control
                        .dispatch(&mut cp, &ad.g_control, ADJ_STAGE + ns, [1, 1, 1]);
                    ad.apply
                        .dispatch(&mut cp, &ad.g_adj_apply, ADJ_STAGE + ns + 1, rows);
                    let init = first && a == 0;
                    ad.commit
                        .dispatch(&mut cp, &ad.g_commit, ns + (!init) as usize, params);
                }
            }
            ctx.submit(enc)?;
            first = false;
            adj_attempts += ATTEMPTS;
            let clock = ctx.read(&ad.clock, 0, ode::CLOCK)?;
            if check_status(&clock, 1, "adjoint", adj_attempts, max)? {
                break;
            }
        }
        self.last_nfe.set((fwd_nfe, ns * adj_attempts));
        self.nfe_total.0 += fwd_nfe;
        self.nfe_total.1 += ns * adj_attempts;
        self.nfe_total.2 += 1;
        Ok(())
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

/// true when every row is done; an error for a failed or too long solve.
fn check_status(
    clock: &[f32],
    rows: usize,
    which: &str,
    attempts: usize,
    max: usize,
) -> Result<bool> {
    let what = format!("dopri5 ({which} solve)");
    let running = crate::solve::running_rows(
        clock,
        rows,
        &what,
        "the field blows up (lower --lr, add --kinetic)",
    )?;
    if running > 0 && attempts >= max {
        return Err(Error::invalid(format!(
            "{what}: not done within --mle-max-steps {max} attempts; loosen --mle-rtol/--mle-atol or regularize (--kinetic, --jacobian-frobenius)"
        )));
    }
    Ok(running == 0)
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
    noise: Entry<ode::BaseNoise>,
    start: Entry<ode::Start>,
    astage: Entry<ode::Stage>,
    afinal: Entry<ode::Stage>,
    aerror: Entry<ode::Stage>,
    control: Entry<ode::GlobalControl>,
    apply: Entry<ode::Stage>,
    commit: Entry<mle::Commit>,
    g_noise: wgpu::BindGroup,
    g_adj_start: wgpu::BindGroup,
    g_fwd_astage: wgpu::BindGroup,
    g_fwd_afinal: wgpu::BindGroup,
    g_adj_astage: wgpu::BindGroup,
    g_adj_aerror: wgpu::BindGroup,
    g_adj_apply: wgpu::BindGroup,
    g_control: wgpu::BindGroup,
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
        let e = tab.e.clone().expect("dopri5 error weights");
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
        let tol = |base: &ode::OdeParams, t0: f64, t1: f64| ode::OdeParams {
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
        };
        let fwd = tol(fwd_base, 1.0, 0.0);
        let adj = tol(
            &ode::OdeParams {
                aug: st.ode_base.dim,
                adjoint: 1,
                ..st.ode_base
            },
            0.0,
            1.0,
        );
        let coefs = |v: &[f64]| {
            let mut c = [0.0f32; 8];
            for (d, s) in c.iter_mut().zip(v) {
                *d = *s as f32;
            }
            c
        };
        arena.set(FWD_INIT, &fwd);
        arena.set(ADJ_START, &adj);
        for s in 0..ns - 1 {
            for (slot, base) in [(FWD_STAGE + s, &fwd), (ADJ_STAGE + s, &adj)] {
                let sp = ode::OdeParams {
                    stage: s as u32,
                    n_terms: tab.a[s + 1].len() as u32,
                    c_next: tab.c[s + 1] as f32,
                    coef: coefs(&tab.a[s + 1]),
                    ..*base
                };
                arena.set(slot, &sp);
            }
        }
        for (slot, base) in [(FWD_STAGE + ns - 1, &fwd), (ADJ_STAGE + ns - 1, &adj)] {
            let fp = ode::OdeParams {
                stage: (ns - 1) as u32,
                n_terms: ns as u32,
                coef: coefs(&tab.b),
                err_coef: coefs(&e),
                a_first: tab.a[1][0] as f32,
                c_first: tab.c[1] as f32,
                ..*base
            };
            arena.set(slot, &fp);
        }
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
        for (s, b) in tab.b.iter().enumerate() {
            let mp = mle::MleParams {
                coef: *b as f32,
                init: (s == 0) as u32,
                ..st.mle_base
            };
            quad.set(s, &mp);
        }
        for init in [1u32, 0] {
            // The attempt's gradient is one buffer, whatever the field's slots.
            let mp = mle::MleParams {
                coef: -1.0,
                init,
                parts: 1,
                ..st.mle_base
            };
            quad.set(ns + (init == 0) as usize, &mp);
        }
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
            g_fwd_astage: astage.bind(ctx, &arena, &fwd_all),
            g_fwd_afinal: afinal.bind(ctx, &arena, &fwd_all),
            g_adj_astage: astage.bind(ctx, &arena, &adj_all),
            g_adj_aerror: aerror.bind(ctx, &arena, &adj_all),
            g_adj_apply: apply.bind(ctx, &arena, &adj_all),
            g_control: control.bind(ctx, &arena, &ode::GlobalControlBindings { clock }),
            g_accumulate: st.accumulate.bind(
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
            noise,
            start,
            astage,
            afinal,
            aerror,
            control,
            apply,
            commit,
        })
    }
}
