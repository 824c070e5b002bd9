//! `--grad backprop`: discretize-then-optimize through the fixed RK steps (backprop.wgsl).

use super::{LikelihoodField, MleState};
use crate::error::Result;
use crate::gpu::GpuContext;
use crate::gpu::UniformArena;
use crate::kernels::{backprop, ode, Entry};
use crate::ode::program::At;

/// `--grad backprop`: the stored states and the reverse-mode kernels of backprop.wgsl.
pub(super) struct Backprop {
    pub(super) _history: wgpu::Buffer,
    pub(super) _bars: wgpu::Buffer,
    /// One slot per (step n, stage s), n-major.
    pub(super) arena: UniformArena,
    pub(super) base: backprop::BackpropParams,
    pub(super) start: Entry<backprop::Start>,
    pub(super) restore: Entry<backprop::Restore>,
    pub(super) stage_input: Entry<backprop::StageInput>,
    pub(super) cotangent: Entry<backprop::Cotangent>,
    pub(super) collect: Entry<backprop::Collect>,
    pub(super) snapshot: Entry<ode::Snapshot>,
    pub(super) g_start: wgpu::BindGroup,
    pub(super) g_restore: wgpu::BindGroup,
    pub(super) g_stage_input: wgpu::BindGroup,
    pub(super) g_cotangent: wgpu::BindGroup,
    pub(super) g_collect: wgpu::BindGroup,
    pub(super) g_snapshot: wgpu::BindGroup,
}

impl MleState {
    /// Reverse mode through the forward solve's steps, last to first.
    pub(super) fn record_backprop(
        &self,
        cp: &mut wgpu::ComputePass<'_>,
        bp: &Backprop,
        params: [u32; 3],
    ) {
        let ns = self.n_stages;
        let rows = backprop::per_row_groups(&bp.base, &self.tiles);
        bp.start.dispatch(cp, &bp.g_start, 0, rows);
        let mut first = true;
        for n in (0..self.cfg.steps).rev() {
            // Recompute k_q, q < S − 1, of step n with the forward's own stage slots.
            if ns > 1 {
                bp.restore.dispatch(cp, &bp.g_restore, n * ns, rows);
                let fwd = self.fwd_program.as_ref().expect("fixed-step programs");
                fwd.record_recompute(
                    cp,
                    n,
                    At {
                        kernels: &self.fwd.kernels,
                        slot: self.steps_per_submit + 1,
                        groups: ode::per_row_groups(&self.ode_base, &self.tiles),
                    },
                    |cp| self.field.record_eval(cp),
                );
            }
            for s in (0..ns).rev() {
                let slot = n * ns + s;
                bp.stage_input.dispatch(cp, &bp.g_stage_input, slot, rows);
                bp.cotangent.dispatch(cp, &bp.g_cotangent, slot, rows);
                self.field.record_vjp(cp, s);
                self.quad.accumulate.dispatch(
                    cp,
                    &self.quad.g_accumulate,
                    if first { 1 } else { 2 },
                    params,
                );
                first = false;
                bp.collect.dispatch(cp, &bp.g_collect, slot, rows);
            }
        }
    }
}

/// The forward solve's buffers that backprop binds.
pub(super) struct BackpropBuffers<'a> {
    pub(super) fwd_state: &'a wgpu::Buffer,
    /// The forward states at every step (snapshots).
    pub(super) history: &'a wgpu::Buffer,
    /// The forward solve's stage values.
    pub(super) k: &'a wgpu::Buffer,
    /// The field's input gradient (its VJP's dS/dx).
    pub(super) input_grad: &'a wgpu::Buffer,
}

impl Backprop {
    /// backprop.wgsl's parameters for the solves of `ode_base` with `n_stages` stages.
    pub(super) fn params(
        ode_base: &ode::OdeParams,
        n_stages: usize,
        inv_batch: f64,
    ) -> backprop::BackpropParams {
        backprop::BackpropParams {
            rows: ode_base.rows,
            dim: ode_base.dim,
            in_stride: ode_base.in_stride,
            time_cols: ode_base.time_cols,
            fwd_stride: ode_base.dim + 3,
            n_stages: n_stages as u32,
            inv_batch: inv_batch as f32,
            ..Default::default()
        }
    }

    /// The reverse-mode kernels bound to the forward solve's buffers and the field's;
    /// `n_evals` parameter slots (one per stage of every step).
    pub(super) fn new(
        ctx: &GpuContext,
        field: &LikelihoodField,
        ode_arena: &UniformArena,
        bufs: &BackpropBuffers,
        base: backprop::BackpropParams,
        n_evals: usize,
    ) -> Result<Backprop> {
        let (batch, d, ns) = (
            base.rows as usize,
            base.dim as usize,
            base.n_stages as usize,
        );
        let bars = ctx.storage("mle stage cotangents", (ns + 1) * batch * d)?;
        let bp = BackpropKernels::get(ctx)?;
        let arena = UniformArena::new(ctx, "backprop params", n_evals);
        let snapshot = ode::snapshot(ctx)?;
        let input = &field.pass.input;
        Ok(Backprop {
            g_start: bp.start.bind(
                ctx,
                &arena,
                &backprop::StartBindings {
                    state: bufs.fwd_state,
                    bars: &bars,
                },
            ),
            g_restore: bp.restore.bind(
                ctx,
                &arena,
                &backprop::RestoreBindings {
                    history: bufs.history,
                    state: bufs.fwd_state,
                    input,
                },
            ),
            g_stage_input: bp.stage_input.bind(
                ctx,
                &arena,
                &backprop::StageInputBindings {
                    history: bufs.history,
                    input,
                    k: bufs.k,
                },
            ),
            g_cotangent: bp.cotangent.bind(
                ctx,
                &arena,
                &backprop::CotangentBindings {
                    cotangent: &field.cotangent,
                    bars: &bars,
                },
            ),
            g_collect: bp.collect.bind(
                ctx,
                &arena,
                &backprop::CollectBindings {
                    input_grad: bufs.input_grad,
                    bars: &bars,
                },
            ),
            g_snapshot: snapshot.bind(
                ctx,
                ode_arena,
                &ode::SnapshotBindings {
                    state: bufs.fwd_state,
                    traj: bufs.history,
                },
            ),
            snapshot,
            start: bp.start,
            restore: bp.restore,
            stage_input: bp.stage_input,
            cotangent: bp.cotangent,
            collect: bp.collect,
            base,
            arena,
            _history: bufs.history.clone(),
            _bars: bars,
        })
    }
}

/// The entry points of backprop.wgsl.
pub(super) struct BackpropKernels {
    pub(super) start: Entry<backprop::Start>,
    pub(super) restore: Entry<backprop::Restore>,
    pub(super) stage_input: Entry<backprop::StageInput>,
    pub(super) cotangent: Entry<backprop::Cotangent>,
    pub(super) collect: Entry<backprop::Collect>,
}

impl BackpropKernels {
    pub(super) fn get(ctx: &GpuContext) -> Result<Self> {
        Ok(BackpropKernels {
            start: backprop::bp_start(ctx)?,
            restore: backprop::bp_restore(ctx)?,
            stage_input: backprop::bp_stage_input(ctx)?,
            cotangent: backprop::bp_cotangent(ctx)?,
            collect: backprop::bp_collect(ctx)?,
        })
    }
}
