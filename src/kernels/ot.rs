//! Wrapper of `shaders/ot.wgsl`: minibatch OT coupling by log-domain Sinkhorn.

use super::{grid_1d, Access, Kernel, Shader, Tiles};
use crate::error::Result;
use crate::gpu::GpuContext;
use std::sync::Arc;

/// Mirrors `OtParams` in ot.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
pub struct OtParams {
    pub batch: u32,
    pub dim: u32,
    pub n_data: u32,
    pub n_source: u32,
    pub seed: u32,
    pub step: u32,
    pub reg: f32,
    pub _pad: u32,
}

/// data, source, x0, x1, f, g.
const DRAW: &[(u32, Access)] = &[
    (1, Access::Read),
    (2, Access::Read),
    (3, Access::ReadWrite),
    (4, Access::ReadWrite),
    (5, Access::ReadWrite),
    (6, Access::ReadWrite),
];
/// x0, x1, f, g, pairs, eps.
const SOLVE: &[(u32, Access)] = &[
    (3, Access::ReadWrite),
    (4, Access::ReadWrite),
    (5, Access::ReadWrite),
    (6, Access::ReadWrite),
    (7, Access::ReadWrite),
    (8, Access::ReadWrite),
];

pub fn ot_draw(ctx: &GpuContext) -> Result<Arc<Kernel>> {
    Kernel::get(ctx, Shader::Ot, "ot_draw", DRAW)
}
pub fn ot_scale(ctx: &GpuContext) -> Result<Arc<Kernel>> {
    Kernel::get(ctx, Shader::Ot, "ot_scale", SOLVE)
}
pub fn sinkhorn_f(ctx: &GpuContext) -> Result<Arc<Kernel>> {
    Kernel::get(ctx, Shader::Ot, "sinkhorn_f", SOLVE)
}
pub fn sinkhorn_g(ctx: &GpuContext) -> Result<Arc<Kernel>> {
    Kernel::get(ctx, Shader::Ot, "sinkhorn_g", SOLVE)
}
pub fn sample_pairs(ctx: &GpuContext) -> Result<Arc<Kernel>> {
    Kernel::get(ctx, Shader::Ot, "sample_pairs", SOLVE)
}

/// Grid of `ot_draw` (WG1 threads per workgroup).
pub fn per_row_threads(p: &OtParams, t: &Tiles) -> [u32; 3] {
    grid_1d(p.batch as usize, t.wg1)
}

/// Grid of the Sinkhorn updates and pair sampling (`OT_WG` = wg_x·wg_y threads).
pub fn per_row_small(p: &OtParams, t: &Tiles) -> [u32; 3] {
    grid_1d(p.batch as usize, t.wg_x * t.wg_y)
}
