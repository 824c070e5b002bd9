//! Wrapper of `shaders/backprop.wgsl`: reverse mode through fixed Runge–Kutta steps.

use super::{grid_1d, Access, Kernel, Shader, Tiles};
use crate::error::Result;
use crate::gpu::GpuContext;
use std::sync::Arc;

/// Mirrors `BackpropParams` in backprop.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
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

/// Bindings per entry point, from: 1 history, 2 state, 3 input, 4 stage buffer k,
/// 5 cotangent, 6 input_grad, 7 bars.
const START: &[(u32, Access)] = &[(2, Access::ReadWrite), (7, Access::ReadWrite)];
const RESTORE: &[(u32, Access)] = &[
    (1, Access::Read),
    (2, Access::ReadWrite),
    (3, Access::ReadWrite),
];
const STAGE_INPUT: &[(u32, Access)] =
    &[(1, Access::Read), (3, Access::ReadWrite), (4, Access::Read)];
const COTANGENT: &[(u32, Access)] = &[(5, Access::ReadWrite), (7, Access::ReadWrite)];
const COLLECT: &[(u32, Access)] = &[(6, Access::Read), (7, Access::ReadWrite)];

pub fn bp_start(ctx: &GpuContext) -> Result<Arc<Kernel>> {
    Kernel::get(ctx, Shader::Backprop, "bp_start", START)
}
pub fn bp_restore(ctx: &GpuContext) -> Result<Arc<Kernel>> {
    Kernel::get(ctx, Shader::Backprop, "bp_restore", RESTORE)
}
pub fn bp_stage_input(ctx: &GpuContext) -> Result<Arc<Kernel>> {
    Kernel::get(ctx, Shader::Backprop, "bp_stage_input", STAGE_INPUT)
}
pub fn bp_cotangent(ctx: &GpuContext) -> Result<Arc<Kernel>> {
    Kernel::get(ctx, Shader::Backprop, "bp_cotangent", COTANGENT)
}
pub fn bp_collect(ctx: &GpuContext) -> Result<Arc<Kernel>> {
    Kernel::get(ctx, Shader::Backprop, "bp_collect", COLLECT)
}

pub fn per_row_groups(p: &BackpropParams, t: &Tiles) -> [u32; 3] {
    grid_1d(p.rows as usize, t.wg1)
}
