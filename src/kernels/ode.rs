//! Wrapper of `shaders/ode.wgsl`: fused solver stages.

use super::{grid_1d, Access, Kernel, Shader, Tiles};
use crate::error::Result;
use crate::gpu::GpuContext;
use std::sync::Arc;

/// Mirrors `OdeParams` in ode.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
pub struct OdeParams {
    pub rows: u32,
    pub dim: u32,
    pub in_stride: u32,
    pub out_stride: u32,
    pub time_cols: u32,
    pub row_offset: u32,
    pub seed: u32,
    pub _pad: u32,
    pub t: f32,
    pub h: f32,
    pub _pad1: [u32; 2],
}

/// state, input, v.
const STAGE: &[(u32, Access)] = &[
    (1, Access::ReadWrite),
    (2, Access::ReadWrite),
    (3, Access::Read),
];
/// state, input.
const BASE: &[(u32, Access)] = &[(1, Access::ReadWrite), (2, Access::ReadWrite)];

pub fn base_noise(ctx: &GpuContext) -> Result<Arc<Kernel>> {
    Kernel::get(ctx, Shader::Ode, "base_noise", BASE)
}
pub fn euler_step(ctx: &GpuContext) -> Result<Arc<Kernel>> {
    Kernel::get(ctx, Shader::Ode, "euler_step", STAGE)
}

pub fn per_row_groups(p: &OdeParams, t: &Tiles) -> [u32; 3] {
    grid_1d(p.rows as usize, t.wg1)
}
