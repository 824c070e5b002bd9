//! Wrapper of `shaders/field_subgroup.wgsl` (compiled after fused_mlp_subgroup.wgsl and
//! trace.wgsl): a likelihood field evaluation (MLP with tangents, then the integrands) and
//! its vector-Jacobian product, one dispatch each, on adapters with 8-lane subgroups. The
//! state that runs them is `mle::LikelihoodField`; the table is
//! [`super::fused_mlp::StepTable`].

use super::{Access, Kernel, Shader};
use crate::error::Result;
use crate::gpu::GpuContext;
use std::sync::Arc;

/// trace.wgsl's MLP input (tangent rows), probes, MLP output, div; then the table
/// (uniform), params, act.
const EVAL: &[(u32, Access)] = &[
    (1, Access::ReadWrite),
    (2, Access::ReadWrite),
    (3, Access::ReadWrite),
    (4, Access::ReadWrite),
    (11, Access::Uniform),
    (12, Access::Read),
    (13, Access::ReadWrite),
];
/// trace.wgsl's MLP input, probes, MLP output, cotangent, dv; then the table (uniform),
/// params, act, grad_parts, input_grad.
const VJP: &[(u32, Access)] = &[
    (1, Access::ReadWrite),
    (2, Access::ReadWrite),
    (3, Access::ReadWrite),
    (5, Access::Read),
    (6, Access::ReadWrite),
    (11, Access::Uniform),
    (12, Access::Read),
    (13, Access::ReadWrite),
    (14, Access::ReadWrite),
    (15, Access::ReadWrite),
];

/// Storage buffers the VJP binds (an adapter with fewer per stage cannot run it).
pub const STORAGE_BUFFERS: u32 = 9;

pub fn field_eval_subgroup(ctx: &GpuContext) -> Result<Arc<Kernel>> {
    Kernel::get(ctx, Shader::FieldSubgroup, "field_eval_subgroup", EVAL)
}
pub fn field_vjp_subgroup(ctx: &GpuContext) -> Result<Arc<Kernel>> {
    Kernel::get(ctx, Shader::FieldSubgroup, "field_vjp_subgroup", VJP)
}
