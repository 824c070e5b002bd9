//! Wrapper of `shaders/cfm_step_subgroup.wgsl` (compiled after fused_mlp_subgroup.wgsl and
//! cfm.wgsl): a whole flow-matching step but the optimizer (draw the rows, forward, squared
//! error, backward to per-workgroup gradient slots) in one dispatch, on adapters with
//! 8-lane subgroups. The state that runs it is `mlp::FusedCfmPass`; the table is
//! [`super::fused_mlp::StepTable`].

use super::{Access, Kernel, Shader};
use crate::error::Result;
use crate::gpu::GpuContext;
use std::sync::Arc;

/// cfm.wgsl's data, input, target, source, labels, pairs (as bound for cfm_prepare), then
/// the table (uniform), params, act, grad_parts.
const STEP: &[(u32, Access)] = &[
    (1, Access::Read),
    (2, Access::ReadWrite),
    (3, Access::ReadWrite),
    (8, Access::Read),
    (9, Access::Read),
    (10, Access::Read),
    (11, Access::Uniform),
    (12, Access::Read),
    (13, Access::ReadWrite),
    (14, Access::ReadWrite),
];

/// Storage buffers the kernel binds (an adapter with fewer per stage cannot run it).
pub const STORAGE_BUFFERS: u32 = 9;

pub fn cfm_step_subgroup(ctx: &GpuContext) -> Result<Arc<Kernel>> {
    Kernel::get(ctx, Shader::CfmStepSubgroup, "cfm_step_subgroup", STEP)
}
