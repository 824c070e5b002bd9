//! `--grad backprop`: discretize-then-optimize through the fixed RK steps (backprop.wgsl).

use super::MleState;
use crate::error::Result;
use crate::gpu::GpuContext;
use crate::gpu::UniformArena;
use crate::kernels::{backprop, ode, Entry};

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
                for s in 0..ns - 1 {
                    self.field.record_eval(cp);
                    let slot = self.steps_per_submit + 1 + n * ns + s;
                    self.stage.dispatch(
                        cp,
                        &self.fwd.g_stage,
                        slot,
                        ode::per_row_groups(&self.ode_base, &self.tiles),
                    );
                }
            }
            for s in (0..ns).rev() {
                let slot = n * ns + s;
                bp.stage_input.dispatch(cp, &bp.g_stage_input, slot, rows);
                bp.cotangent.dispatch(cp, &bp.g_cotangent, slot, rows);
                self.field.record_vjp(cp, s);
                self.accumulate
                    .dispatch(cp, &self.g_accumulate, if first { 1 } else { 2 }, params);
                first = false;
                bp.collect.dispatch(cp, &bp.g_collect, slot, rows);
            }
        }
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
