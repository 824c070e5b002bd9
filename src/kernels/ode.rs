//! Wrapper of `shaders/ode.wgsl`: fused Runge–Kutta stages and adaptive step control.

use super::{grid_1d, Access, Kernel, Shader, Tiles};
use crate::error::Result;
use crate::gpu::GpuContext;
use std::sync::Arc;

/// Floats per row of the adaptive clock buffer (`CLOCK` in ode.wgsl).
pub const CLOCK: usize = 8;
/// `class_id` of unconditional rows.
pub const NO_CLASS: u32 = u32::MAX;
/// Clock status codes.
pub const RUNNING: f32 = 0.0;
pub const DONE: f32 = 1.0;
pub const UNDERFLOW: f32 = 2.0;
pub const NONFINITE: f32 = 3.0;
/// Most stages a tableau may have (`coef` holds 8 values).
pub const MAX_STAGES: usize = 8;

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
    pub stage: u32,
    pub n_terms: u32,
    pub snap_rows: u32,
    pub snap_slot: u32,
    pub aug: u32,
    pub t: f32,
    pub h: f32,
    pub t_end: f32,
    pub c_next: f32,
    pub rtol: f32,
    pub atol: f32,
    pub safety: f32,
    pub fac_min: f32,
    pub fac_max: f32,
    pub h_min: f32,
    pub a_first: f32,
    pub c_first: f32,
    pub n_source: u32,
    pub n_classes: u32,
    pub class_id: u32,
    pub guidance: f32,
    pub adjoint: u32,
    pub _pad: [u32; 3],
    pub coef: [f32; 8],
    pub err_coef: [f32; 8],
}

/// The stage kernels bind: state, input, v, k, clock, traj, div (or the adjoint's input
/// gradient), cotangent.
const ALL: &[(u32, Access)] = &[
    (1, Access::ReadWrite),
    (2, Access::ReadWrite),
    (3, Access::Read),
    (4, Access::ReadWrite),
    (5, Access::ReadWrite),
    (6, Access::ReadWrite),
    (7, Access::Read),
    (9, Access::ReadWrite),
];
/// state, input, clock, cotangent.
const START: &[(u32, Access)] = &[
    (1, Access::ReadWrite),
    (2, Access::ReadWrite),
    (5, Access::ReadWrite),
    (9, Access::ReadWrite),
];
const SNAPSHOT: &[(u32, Access)] = &[(1, Access::ReadWrite), (6, Access::ReadWrite)];

pub fn start(ctx: &GpuContext) -> Result<Arc<Kernel>> {
    Kernel::get(ctx, Shader::Ode, "start", START)
}
/// state, input, clock, source, cotangent.
const BASE_NOISE: &[(u32, Access)] = &[
    (1, Access::ReadWrite),
    (2, Access::ReadWrite),
    (5, Access::ReadWrite),
    (8, Access::Read),
    (9, Access::ReadWrite),
];

pub fn base_noise(ctx: &GpuContext) -> Result<Arc<Kernel>> {
    Kernel::get(ctx, Shader::Ode, "base_noise", BASE_NOISE)
}
pub fn rk_stage(ctx: &GpuContext) -> Result<Arc<Kernel>> {
    Kernel::get(ctx, Shader::Ode, "rk_stage", ALL)
}
pub fn rk_final(ctx: &GpuContext) -> Result<Arc<Kernel>> {
    Kernel::get(ctx, Shader::Ode, "rk_final", ALL)
}
pub fn adaptive_stage(ctx: &GpuContext) -> Result<Arc<Kernel>> {
    Kernel::get(ctx, Shader::Ode, "adaptive_stage", ALL)
}
pub fn adaptive_final(ctx: &GpuContext) -> Result<Arc<Kernel>> {
    Kernel::get(ctx, Shader::Ode, "adaptive_final", ALL)
}
pub fn adaptive_error(ctx: &GpuContext) -> Result<Arc<Kernel>> {
    Kernel::get(ctx, Shader::Ode, "adaptive_error", ALL)
}
/// clock.
const GLOBAL_CONTROL: &[(u32, Access)] = &[(5, Access::ReadWrite)];

pub fn global_control(ctx: &GpuContext) -> Result<Arc<Kernel>> {
    Kernel::get(ctx, Shader::Ode, "global_control", GLOBAL_CONTROL)
}
pub fn adaptive_apply(ctx: &GpuContext) -> Result<Arc<Kernel>> {
    Kernel::get(ctx, Shader::Ode, "adaptive_apply", ALL)
}
pub fn snapshot(ctx: &GpuContext) -> Result<Arc<Kernel>> {
    Kernel::get(ctx, Shader::Ode, "snapshot", SNAPSHOT)
}

pub fn per_row_groups(p: &OdeParams, t: &Tiles) -> [u32; 3] {
    grid_1d(p.rows as usize, t.wg1)
}
pub fn snapshot_groups(p: &OdeParams, t: &Tiles) -> [u32; 3] {
    grid_1d((p.snap_rows.min(p.rows) * p.dim) as usize, t.wg1)
}
