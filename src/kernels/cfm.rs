//! Wrapper of `shaders/cfm.wgsl`: CFM inputs and targets, loss and its gradient.

use super::{grid_1d, Entry, EntryPoint, Shader, Spec, Tiles};
use crate::error::Result;
use crate::gpu::GpuContext;

crate::params! {
    /// Mirrors `CfmParams` in cfm.wgsl.
    #[derive(Clone, Copy, Debug, Default)]
    pub struct CfmParams {
        pub batch: u32,
        pub dim: u32,
        pub n_data: u32,
        pub in_stride: u32,
        pub out_stride: u32,
        pub time_cols: u32,
        pub path: u32,
        pub path_param: f32,
        pub seed: u32,
        pub step: u32,
        pub loss_slot: u32,
        pub n_source: u32,
        pub paired: u32,
        pub n_classes: u32,
        pub label_dropout: f32,
        pub coupled: u32,
        pub path_param2: f32,
        pub predict: u32,
        pub row0: u32,
        pub mean_rows: u32,
    }
}

crate::bindings! {
    /// `cfm_prepare`: the MLP input rows and targets from the pools.
    pub Prepare(CfmParams) => PrepareBindings {
        data: 1 Read,
        input: 2 ReadWrite,
        target_u: 3 ReadWrite,
        source: 8 Read,
        labels: 9 Read,
        pairs: 10 Read,
    }
    /// `cfm_loss`: per-sample loss and its gradient, and the batch loss.
    pub Loss(CfmParams) => LossBindings {
        target_u: 3 ReadWrite,
        v: 4 Read,
        grad_v: 5 ReadWrite,
        sample_loss: 6 ReadWrite,
        loss_history: 7 ReadWrite,
    }
    /// `loss_reduce`: the batch mean of per-sample losses.
    pub Reduce(CfmParams) => ReduceBindings {
        sample_loss: 6 ReadWrite,
        loss_history: 7 ReadWrite,
    }
}

pub const CFM_PREPARE: EntryPoint<Prepare> = EntryPoint::new(Shader::Cfm, "cfm_prepare");
/// One workgroup (dispatch `[1, 1, 1]`): per-sample loss and gradient, and the batch loss.
pub const CFM_LOSS: EntryPoint<Loss> = EntryPoint::new(Shader::Cfm, "cfm_loss");
pub const LOSS_REDUCE: EntryPoint<Reduce> = EntryPoint::new(Shader::Cfm, "loss_reduce");

pub fn cfm_prepare(ctx: &GpuContext) -> Result<Entry<Prepare>> {
    CFM_PREPARE.get(ctx)
}
pub fn cfm_loss(ctx: &GpuContext) -> Result<Entry<Loss>> {
    CFM_LOSS.get(ctx)
}
pub fn loss_reduce(ctx: &GpuContext) -> Result<Entry<Reduce>> {
    LOSS_REDUCE.get(ctx)
}

/// Every entry point of this wrapper, for the reflection test.
pub fn specs() -> Vec<Spec> {
    vec![CFM_PREPARE.spec(), CFM_LOSS.spec(), LOSS_REDUCE.spec()]
}

pub fn per_sample_groups(p: &CfmParams, t: &Tiles) -> [u32; 3] {
    grid_1d(p.batch as usize, t.wg1)
}
