//! Wrapper of `shaders/mle.wgsl`: the adjoint's start and the parameter-gradient quadrature.

use super::{grid_1d, Access, Kernel, Shader, Tiles};
use crate::error::Result;
use crate::gpu::GpuContext;
use std::sync::Arc;

/// Mirrors `MleParams` in mle.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
pub struct MleParams {
    pub rows: u32,
    pub dim: u32,
    pub fwd_stride: u32,
    pub n_params: u32,
    pub inv_batch: f32,
    pub log_norm: f32,
    pub coef: f32,
    pub init: u32,
    /// Stage gradient slots to add (1: the gradient itself).
    pub parts: u32,
    /// Floats per slot.
    pub part_len: u32,
    pub _pad: [u32; 2],
}

/// fwd_state, adj_state, sample_loss.
const ADJOINT_START: &[(u32, Access)] = &[
    (1, Access::Read),
    (2, Access::ReadWrite),
    (3, Access::ReadWrite),
];
/// stage_grads, grads.
const ACCUMULATE: &[(u32, Access)] = &[(4, Access::Read), (5, Access::ReadWrite)];

pub fn adjoint_start(ctx: &GpuContext) -> Result<Arc<Kernel>> {
    Kernel::get(ctx, Shader::Mle, "adjoint_start", ADJOINT_START)
}
pub fn accumulate(ctx: &GpuContext) -> Result<Arc<Kernel>> {
    Kernel::get(ctx, Shader::Mle, "accumulate", ACCUMULATE)
}

/// attempt gradient (as stage_grads), grads, clock.
const COMMIT: &[(u32, Access)] = &[(4, Access::Read), (5, Access::ReadWrite), (6, Access::Read)];

pub fn commit(ctx: &GpuContext) -> Result<Arc<Kernel>> {
    Kernel::get(ctx, Shader::Mle, "commit", COMMIT)
}

pub fn per_row_groups(p: &MleParams, t: &Tiles) -> [u32; 3] {
    grid_1d(p.rows as usize, t.wg1)
}
pub fn per_param_groups(p: &MleParams, t: &Tiles) -> [u32; 3] {
    grid_1d(p.n_params as usize, t.wg1)
}
