//! Wrapper of `shaders/backprop.wgsl`: reverse mode through fixed Runge–Kutta steps.

use super::{grid_1d, Entry, EntryPoint, Shader, Spec, Tiles};
use crate::error::Result;
use crate::gpu::GpuContext;

crate::params! {
    /// Mirrors `BackpropParams` in backprop.wgsl.
    #[derive(Clone, Copy, Debug, Default)]
    pub struct BackpropParams {
        pub rows: u32,
        pub dim: u32,
        pub in_stride: u32,
        pub time_cols: u32,
        pub fwd_stride: u32,
        pub hist_slot: u32,
        pub stage: u32,
        pub n_stages: u32,
        pub t: f32,
        pub h: f32,
        pub inv_batch: f32,
        pub _pad: u32,
        pub a_row: [f32; 8],
        pub cot: [f32; 8],
    }
}

crate::bindings! {
    /// `bp_start`: the state at the end of the solve and the cotangent accumulators.
    pub Start(BackpropParams) => StartBindings {
        state: 2 ReadWrite,
        bars: 7 ReadWrite,
    }
    /// `bp_restore`: a step's start state from the history.
    pub Restore(BackpropParams) => RestoreBindings {
        history: 1 Read,
        state: 2 ReadWrite,
        input: 3 ReadWrite,
    }
    /// `bp_stage_input`: a stage's MLP input from the history and earlier stages.
    pub StageInput(BackpropParams) => StageInputBindings {
        history: 1 Read,
        input: 3 ReadWrite,
        k: 4 Read,
    }
    /// `bp_cotangent`: a stage's cotangent from the accumulators.
    pub Cotangent(BackpropParams) => CotangentBindings {
        cotangent: 5 ReadWrite,
        bars: 7 ReadWrite,
    }
    /// `bp_collect`: adds a stage's input gradient into the accumulators.
    pub Collect(BackpropParams) => CollectBindings {
        input_grad: 6 Read,
        bars: 7 ReadWrite,
    }
}

pub const BP_START: EntryPoint<Start> = EntryPoint::new(Shader::Backprop, "bp_start");
pub const BP_RESTORE: EntryPoint<Restore> = EntryPoint::new(Shader::Backprop, "bp_restore");
pub const BP_STAGE_INPUT: EntryPoint<StageInput> =
    EntryPoint::new(Shader::Backprop, "bp_stage_input");
pub const BP_COTANGENT: EntryPoint<Cotangent> = EntryPoint::new(Shader::Backprop, "bp_cotangent");
pub const BP_COLLECT: EntryPoint<Collect> = EntryPoint::new(Shader::Backprop, "bp_collect");

pub fn bp_start(ctx: &GpuContext) -> Result<Entry<Start>> {
    BP_START.get(ctx)
}
pub fn bp_restore(ctx: &GpuContext) -> Result<Entry<Restore>> {
    BP_RESTORE.get(ctx)
}
pub fn bp_stage_input(ctx: &GpuContext) -> Result<Entry<StageInput>> {
    BP_STAGE_INPUT.get(ctx)
}
pub fn bp_cotangent(ctx: &GpuContext) -> Result<Entry<Cotangent>> {
    BP_COTANGENT.get(ctx)
}
pub fn bp_collect(ctx: &GpuContext) -> Result<Entry<Collect>> {
    BP_COLLECT.get(ctx)
}

/// Every entry point of this wrapper, for the reflection test.
pub fn specs() -> Vec<Spec> {
    vec![
        BP_START.spec(),
        BP_RESTORE.spec(),
        BP_STAGE_INPUT.spec(),
        BP_COTANGENT.spec(),
        BP_COLLECT.spec(),
    ]
}

pub fn per_row_groups(p: &BackpropParams, t: &Tiles) -> [u32; 3] {
    grid_1d(p.rows as usize, t.wg1)
}
