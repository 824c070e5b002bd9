//! Wrapper of `shaders/cfm_step_subgroup.wgsl` (compiled after fused_mlp_subgroup.wgsl and
//! cfm.wgsl): a whole flow-matching step but the optimizer (draw the rows, forward, squared
//! error, backward to per-workgroup gradient slots) in one dispatch, on adapters with
//! 8-lane subgroups. The state that runs it is `mlp::FusedCfmPass`; the table is
//! [`super::fused_mlp::StepTable`].

use super::cfm::CfmParams;
use super::{Entry, EntryPoint, Shader, Spec};
use crate::error::Result;
use crate::gpu::GpuContext;

crate::bindings! {
    /// `cfm_step_subgroup`: cfm.wgsl's buffers as bound for cfm_prepare, then the table
    /// (uniform), params, activations and gradient slots of fused_mlp_subgroup.wgsl.
    pub Step(CfmParams) => StepBindings {
        data: 1 Read,
        input: 2 ReadWrite,
        target_u: 3 ReadWrite,
        source: 8 Read,
        labels: 9 Read,
        pairs: 10 Read,
        table: 11 Uniform,
        params: 12 Read,
        act: 13 ReadWrite,
        grad_parts: 14 ReadWrite,
    }
}

/// Storage buffers the kernel binds (an adapter with fewer per stage cannot run it).
pub const STORAGE_BUFFERS: u32 = 9;

pub const CFM_STEP: EntryPoint<Step> =
    EntryPoint::new(Shader::CfmStepSubgroup, "cfm_step_subgroup");

pub fn cfm_step_subgroup(ctx: &GpuContext) -> Result<Entry<Step>> {
    CFM_STEP.get(ctx)
}

/// Every entry point of this wrapper, for the reflection test.
pub fn specs() -> Vec<Spec> {
    vec![CFM_STEP.spec()]
}
