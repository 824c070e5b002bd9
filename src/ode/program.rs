//! The one GPU stage program: how the stages of an explicit Runge–Kutta solve become
//! parameter slots and dispatches. Sampling, encoding and log-likelihood (`solve`), the
//! maximum-likelihood forward solve, its adjoint and discretize-then-optimize (`mle`) all
//! record their solves through it; they differ only in what one field evaluation is
//! (`eval`), what follows a step (snapshots) and which buffers the stage kernels bind.
//!
//! Fixed steps ([`FixedProgram`]): every stage of every step has its own parameter slot
//! (`rk_stage`, then `rk_final` for a step's last stage). Adaptive Dormand–Prince
//! ([`AdaptiveProgram`]): one slot per stage, reused by every attempt; the kernels keep
//! each row's (or, for the adjoint, the batch's) time and step size in the clock buffer,
//! and the host reads the clocks back every few attempts ([`run_adaptive`]).

use super::Tableau;
use crate::error::{Error, Result};
use crate::gpu::UniformArena;
use crate::kernels::{ode, Bound};
use std::ops::Range;

/// A stage kernel and the kernel that ends a step (the same binding set, two entry
/// points), bound to one solve's buffers.
pub(crate) struct StageKernels {
    pub stage: Bound,
    pub last: Bound,
}

impl StageKernels {
    fn pick(&self, last: bool) -> &Bound {
        if last {
            &self.last
        } else {
            &self.stage
        }
    }
}

/// Where a solve's stages are recorded: its stage kernels, the arena slot of its first
/// stage's parameters and the grid of the stage kernels.
pub(crate) struct At<'a, K> {
    pub kernels: &'a K,
    pub slot: usize,
    pub groups: [u32; 3],
}

/// Tableau coefficients as the stage kernels read them (8 at most).
pub(crate) fn coefs(v: &[f64]) -> [f32; 8] {
    let mut c = [0.0f32; 8];
    for (d, s) in c.iter_mut().zip(v) {
        *d = *s as f32;
    }
    c
}

/// A fixed-step solve on a time grid: the parameters of every stage dispatch.
pub(crate) struct FixedProgram {
    /// (parameters, whether the stage ends its step), step by step.
    stages: Vec<(ode::OdeParams, bool)>,
    /// Stages per step.
    ns: usize,
}

impl FixedProgram {
    /// The stages of `tab` on `times` (t_0, …, t_N), from `base`'s solve parameters.
    pub fn new(tab: &Tableau, times: &[f64], base: &ode::OdeParams) -> FixedProgram {
        let ns = tab.stages();
        let mut stages = Vec::with_capacity((times.len() - 1) * ns);
        for w in times.windows(2) {
            let (ta, tb) = (w[0], w[1]);
            let h = tb - ta;
            for s in 0..ns {
                let last = s + 1 == ns;
                let (coef, t) = if last {
                    (&tab.b[..], tb)
                } else {
                    (&tab.a[s + 1][..], ta + tab.c[s + 1] * h)
                };
                let p = ode::OdeParams {
                    stage: s as u32,
                    n_terms: coef.len() as u32,
                    t: t as f32,
                    h: h as f32,
                    coef: coefs(coef),
                    ..*base
                };
                stages.push((p, last));
            }
        }
        FixedProgram { stages, ns }
    }

    /// One `affine_step` per step of `times`, x ← P·x + Q·v + R·ξ with `coefs[n]` =
    /// (P, Q, R) of step n (its index keys the step's noise).
    pub fn affine(times: &[f64], coefs: &[[f64; 3]], base: &ode::OdeParams) -> FixedProgram {
        let stages = times
            .windows(2)
            .zip(coefs)
            .enumerate()
            .map(|(n, (w, c))| {
                let p = ode::OdeParams {
                    step: n as u32,
                    t: w[1] as f32,
                    h: (w[1] - w[0]) as f32,
                    coef: self::coefs(c),
                    ..*base
                };
                (p, true)
            })
            .collect();
        FixedProgram { stages, ns: 1 }
    }

    /// Stages per step.
    pub fn stages_per_step(&self) -> usize {
        self.ns
    }

    /// Steps of the solve.
    pub fn steps(&self) -> usize {
        self.stages.len() / self.ns.max(1)
    }

    /// Stage dispatches of steps `steps`.
    fn range(&self, steps: &Range<usize>) -> Range<usize> {
        steps.start * self.ns..steps.end * self.ns
    }

    /// Write the parameters of steps `steps` into consecutive slots from `slot`; returns
    /// the slot after them.
    pub fn write(&self, arena: &mut UniformArena, steps: Range<usize>, slot: usize) -> usize {
        let r = self.range(&steps);
        for (i, (p, _)) in self.stages[r.clone()].iter().enumerate() {
            arena.set(slot + i, p);
        }
        slot + r.len()
    }

    /// Record steps `steps` with their parameters in consecutive slots from `at.slot` (as
    /// [`write`](Self::write) put them): before each stage kernel, `eval(cp, i)` records
    /// the field evaluation it combines (i: the stage's index in the whole solve); after
    /// each step, `after_step(cp, n)` with n the number of steps done.
    pub fn record(
        &self,
        cp: &mut wgpu::ComputePass<'_>,
        steps: Range<usize>,
        at: At<StageKernels>,
        mut eval: impl FnMut(&mut wgpu::ComputePass<'_>, usize),
        mut after_step: impl FnMut(&mut wgpu::ComputePass<'_>, usize),
    ) {
        let At {
            kernels,
            slot,
            groups,
        } = at;
        let r = self.range(&steps);
        for (j, (_, last)) in self.stages[r.clone()].iter().enumerate() {
            let i = r.start + j;
            eval(cp, i);
            kernels.pick(*last).dispatch(cp, slot + j, groups);
            if *last {
                after_step(cp, i / self.ns + 1);
            }
        }
    }
}

impl FixedProgram {
    /// Record step `n`'s stages but its last, with the solve's parameters from `at.slot` (as
    /// [`write`](Self::write) put them): discretize-then-optimize recomputes a step's
    /// stage values from its restored start state.
    pub fn record_recompute(
        &self,
        cp: &mut wgpu::ComputePass<'_>,
        n: usize,
        at: At<StageKernels>,
        mut eval: impl FnMut(&mut wgpu::ComputePass<'_>),
    ) {
        for s in 0..self.ns - 1 {
            eval(cp);
            let slot = at.slot + n * self.ns + s;
            at.kernels.stage.dispatch(cp, slot, at.groups);
        }
    }
}

/// An adaptive embedded pair (Dormand–Prince 5(4) with FSAL): one parameter slot per
/// stage, reused by every attempt.
pub(crate) struct AdaptiveProgram {
    /// Stages 0..S−2, then the final stage with the error weights.
    stages: Vec<ode::OdeParams>,
}

impl AdaptiveProgram {
    pub fn new(tab: &Tableau, base: &ode::OdeParams) -> AdaptiveProgram {
        let ns = tab.stages();
        let e = tab
            .e
            .as_ref()
            .expect("an adaptive tableau has error weights");
        let mut stages: Vec<ode::OdeParams> = (0..ns - 1)
            .map(|s| {
                let a = &tab.a[s + 1];
                ode::OdeParams {
                    stage: s as u32,
                    n_terms: a.len() as u32,
                    c_next: tab.c[s + 1] as f32,
                    coef: coefs(a),
                    ..*base
                }
            })
            .collect();
        stages.push(ode::OdeParams {
            stage: (ns - 1) as u32,
            n_terms: ns as u32,
            coef: coefs(&tab.b),
            err_coef: coefs(e),
            a_first: tab.a[1][0] as f32,
            c_first: tab.c[1] as f32,
            ..*base
        });
        AdaptiveProgram { stages }
    }

    /// Stages per attempt.
    pub fn stages(&self) -> usize {
        self.stages.len()
    }

    /// Write the stage parameters into slots `slot..slot + stages()`.
    pub fn write(&self, arena: &mut UniformArena, slot: usize) {
        for (s, p) in self.stages.iter().enumerate() {
            arena.set(slot + s, p);
        }
    }

    /// Record `attempts` attempts of a per-row solve whose stage parameters are in slots
    /// from `at.slot`. On the `first` submit, the initial evaluation and stage come first
    /// (FSAL: an attempt then evaluates S − 1 new stages). `eval` records a field
    /// evaluation; `after_attempt(cp, a)` runs after attempt a of this submit.
    pub fn record_per_row(
        &self,
        cp: &mut wgpu::ComputePass<'_>,
        first: bool,
        attempts: usize,
        at: At<StageKernels>,
        mut eval: impl FnMut(&mut wgpu::ComputePass<'_>),
        mut after_attempt: impl FnMut(&mut wgpu::ComputePass<'_>, usize),
    ) {
        let At {
            kernels,
            slot,
            groups,
        } = at;
        let ns = self.stages();
        if first {
            eval(cp);
            kernels.stage.dispatch(cp, slot, groups);
        }
        for a in 0..attempts {
            for s in 1..ns - 1 {
                eval(cp);
                kernels.stage.dispatch(cp, slot + s, groups);
            }
            eval(cp);
            kernels.last.dispatch(cp, slot + ns - 1, groups);
            after_attempt(cp, a);
        }
    }
}

/// The kernels of a batch-global adaptive solve (one step size for every row: the
/// adjoint's), bound to its buffers.
pub(crate) struct GlobalKernels {
    /// `adaptive_stage`.
    pub stage: Bound,
    /// `adaptive_error`: the last stage and the batch's error norm.
    pub error: Bound,
    /// `global_control`: the batch's step decision (one workgroup).
    pub control: Bound,
    /// `adaptive_apply`: accept (advance) or reject the attempt.
    pub apply: Bound,
}

impl AdaptiveProgram {
    /// Record `attempts` attempts of a batch-global solve whose stage parameters are in
    /// slots from `at.slot`, followed by the control's (`at.slot + S`) and the apply's
    /// (`at.slot + S + 1`): S fresh stages per attempt (no FSAL: the adjoint's field changes
    /// with the state it carries), `eval(cp, s)` before stage s; `after_attempt(cp, a)`.
    pub fn record_batch_global(
        &self,
        cp: &mut wgpu::ComputePass<'_>,
        attempts: usize,
        at: At<GlobalKernels>,
        mut eval: impl FnMut(&mut wgpu::ComputePass<'_>, usize),
        mut after_attempt: impl FnMut(&mut wgpu::ComputePass<'_>, usize),
    ) {
        let At {
            kernels,
            slot,
            groups,
        } = at;
        let ns = self.stages();
        for a in 0..attempts {
            for s in 0..ns {
                eval(cp, s);
                let k = if s + 1 < ns {
                    &kernels.stage
                } else {
                    &kernels.error
                };
                k.dispatch(cp, slot + s, groups);
            }
            kernels.control.dispatch(cp, slot + ns, [1, 1, 1]);
            kernels.apply.dispatch(cp, slot + ns + 1, groups);
            after_attempt(cp, a);
        }
    }
}

/// Drive an adaptive solve: `submit(first)` records and submits `per_submit` attempts,
/// reads the clocks back and returns the rows still running. Returns the attempts made;
/// an error (`too_long(running)`) when the solve is not done within `max_attempts`.
pub(crate) fn run_adaptive(
    per_submit: usize,
    max_attempts: usize,
    mut submit: impl FnMut(bool) -> Result<usize>,
    too_long: impl Fn(usize) -> String,
) -> Result<usize> {
    let mut attempts = 0;
    loop {
        let left = submit(attempts == 0)?;
        attempts += per_submit;
        if left == 0 {
            return Ok(attempts);
        }
        if attempts >= max_attempts {
            return Err(Error::invalid(too_long(left)));
        }
    }
}
