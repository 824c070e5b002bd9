//! Wrapper of `shaders/matmul.wgsl`: the batched linear-layer forward.

use super::{div_ceil, Access, Kernel, Shader, Tiles};
use crate::error::Result;
use crate::gpu::GpuContext;
use std::sync::Arc;

/// Outputs per thread (`TILE_ROWS`, `TILE_COLS` in matmul.wgsl).
pub const TILE_ROWS: u32 = 8;
pub const TILE_COLS: u32 = 4;

/// Mirrors `LinearParams` in matmul.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
pub struct LinearParams {
    pub rows: u32,
    pub out_features: u32,
    pub in_vec4: u32,
    pub y_stride: u32,
    pub w_off4: u32,
    pub b_off: u32,
    pub activation: u32,
    pub store_pre: u32,
    pub tangents: u32,
    pub _pad: [u32; 3],
}

/// Bindings after the uniform: x, params, z, h.
const LINEAR_FORWARD: &[(u32, Access)] = &[
    (1, Access::Read),
    (2, Access::Read),
    (3, Access::ReadWrite),
    (4, Access::ReadWrite),
];

pub fn linear_forward(ctx: &GpuContext) -> Result<Arc<Kernel>> {
    Kernel::get(ctx, Shader::Matmul, "linear_forward", LINEAR_FORWARD)
}

/// Primal rows and their tangent rows in one dispatch (same bindings).
pub fn linear_jvp(ctx: &GpuContext) -> Result<Arc<Kernel>> {
    Kernel::get(ctx, Shader::Matmul, "linear_jvp", LINEAR_FORWARD)
}

pub fn linear_forward_groups(p: &LinearParams, t: &Tiles) -> [u32; 3] {
    [
        div_ceil(p.out_features as usize, TILE_COLS * t.wg_x),
        div_ceil(p.rows as usize, TILE_ROWS * t.wg_y),
        1,
    ]
}
