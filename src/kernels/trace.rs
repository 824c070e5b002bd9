//! Wrapper of `shaders/trace.wgsl`: tangent directions (exact or Hutchinson probes) and
//! the divergence estimate from the tangents.

use super::{grid_1d, Access, Kernel, Shader, Tiles};
use crate::error::Result;
use crate::gpu::GpuContext;
use std::sync::Arc;

/// Mirrors `TraceParams` in trace.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
pub struct TraceParams {
    pub rows: u32,
    pub dim: u32,
    pub in_stride: u32,
    pub out_stride: u32,
    pub n_tangents: u32,
    pub probe: u32,
    pub seed: u32,
    pub row_offset: u32,
    pub a_trace: f32,
    pub a_kinetic: f32,
    pub a_frobenius: f32,
    pub _pad: u32,
}

/// Floats per row of the divergence buffer: divergence, ‖v‖², Frobenius estimate, 0.
pub const DIV_STRIDE: usize = 4;

/// MLP input (tangent rows), probes.
const PROBE_INIT: &[(u32, Access)] = &[(1, Access::ReadWrite), (2, Access::ReadWrite)];
/// probes, MLP output (v and J·u), div.
const DIVERGENCE: &[(u32, Access)] = &[
    (2, Access::ReadWrite),
    (3, Access::ReadWrite),
    (4, Access::ReadWrite),
];

pub fn probe_init(ctx: &GpuContext) -> Result<Arc<Kernel>> {
    Kernel::get(ctx, Shader::Trace, "probe_init", PROBE_INIT)
}
pub fn divergence(ctx: &GpuContext) -> Result<Arc<Kernel>> {
    Kernel::get(ctx, Shader::Trace, "divergence", DIVERGENCE)
}

/// probes, MLP output, cotangent, dv (the MLP's top dz).
const TRACE_COTANGENT: &[(u32, Access)] = &[
    (2, Access::ReadWrite),
    (3, Access::ReadWrite),
    (5, Access::Read),
    (6, Access::ReadWrite),
];

pub fn trace_cotangent(ctx: &GpuContext) -> Result<Arc<Kernel>> {
    Kernel::get(ctx, Shader::Trace, "trace_cotangent", TRACE_COTANGENT)
}

pub fn per_row_groups(p: &TraceParams, t: &Tiles) -> [u32; 3] {
    grid_1d(p.rows as usize, t.wg1)
}
