//! Wrapper of `shaders/cfm_step_subgroup.wgsl`: a whole flow-matching step's MLP work
//! (forward, squared error, backward to per-workgroup gradient slots) in one dispatch, on
//! adapters with 8-lane subgroups. The state that runs it is `mlp::FusedCfmPass`.

use super::{Access, Kernel, Shader};
use crate::error::Result;
use crate::gpu::GpuContext;
use std::sync::Arc;

/// Rows per row tile of the kernel (its forward and input-gradient tiles).
pub const TILE_ROWS: usize = 16;

/// Mirrors `StepParams` in cfm_step_subgroup.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
pub struct StepParams {
    pub rows: u32,
    pub n_layers: u32,
    pub group_rows: u32,
    pub slot_vec4: u32,
    pub dim: u32,
    pub target_vec4: u32,
    pub loss_scale: f32,
    pub _pad: u32,
}

/// Mirrors `StepLayer` in cfm_step_subgroup.wgsl (offsets in vec4s).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
pub struct StepLayer {
    pub in_vec4: u32,
    pub out_features: u32,
    pub out_vec4: u32,
    pub w_off4: u32,
    pub b_off4: u32,
    pub activation: u32,
    pub x_off4: u32,
    pub z_off4: u32,
    pub h_off4: u32,
    pub below_act: u32,
    pub below_z_off4: u32,
    pub store_z: u32,
}

/// Layers `StepLayer` a uniform table holds (`MAX_LAYERS` in cfm_step_subgroup.wgsl).
pub const MAX_LAYERS: usize = 16;

/// layers (uniform), params, act, target, grad_parts.
const STEP: &[(u32, Access)] = &[
    (1, Access::Uniform),
    (2, Access::Read),
    (3, Access::ReadWrite),
    (4, Access::Read),
    (5, Access::ReadWrite),
];

pub fn cfm_step_subgroup(ctx: &GpuContext) -> Result<Arc<Kernel>> {
    Kernel::get(ctx, Shader::CfmStepSubgroup, "cfm_step_subgroup", STEP)
}

/// One workgroup per `group_rows` rows.
pub fn step_groups(p: &StepParams) -> [u32; 3] {
    [p.rows.div_ceil(p.group_rows), 1, 1]
}
