//! Wrapper of `shaders/cfm.wgsl`: CFM inputs and targets, loss and its gradient.

use super::{grid_1d, Access, Kernel, Shader, Tiles};
use crate::error::Result;
use crate::gpu::GpuContext;
use std::sync::Arc;

/// Mirrors `CfmParams` in cfm.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
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
}

/// data, input, target, source, labels, pairs.
const PREPARE: &[(u32, Access)] = &[
    (1, Access::Read),
    (2, Access::ReadWrite),
    (3, Access::ReadWrite),
    (8, Access::Read),
    (9, Access::Read),
    (10, Access::Read),
];
/// target, v, grad_v, sample_loss, loss_history.
const LOSS: &[(u32, Access)] = &[
    (3, Access::ReadWrite),
    (4, Access::Read),
    (5, Access::ReadWrite),
    (6, Access::ReadWrite),
    (7, Access::ReadWrite),
];
/// sample_loss, loss_history.
const REDUCE: &[(u32, Access)] = &[(6, Access::ReadWrite), (7, Access::ReadWrite)];

pub fn cfm_prepare(ctx: &GpuContext) -> Result<Arc<Kernel>> {
    Kernel::get(ctx, Shader::Cfm, "cfm_prepare", PREPARE)
}
/// One workgroup (dispatch `[1, 1, 1]`): per-sample loss and gradient, and the batch loss.
pub fn cfm_loss(ctx: &GpuContext) -> Result<Arc<Kernel>> {
    Kernel::get(ctx, Shader::Cfm, "cfm_loss", LOSS)
}
pub fn loss_reduce(ctx: &GpuContext) -> Result<Arc<Kernel>> {
    Kernel::get(ctx, Shader::Cfm, "loss_reduce", REDUCE)
}

pub fn per_sample_groups(p: &CfmParams, t: &Tiles) -> [u32; 3] {
    grid_1d(p.batch as usize, t.wg1)
}
