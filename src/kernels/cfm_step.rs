//! Wrapper of `shaders/cfm_step_subgroup.wgsl` (compiled after cfm.wgsl): a whole
//! flow-matching step but the optimizer (draw the rows, forward, squared error, backward to
//! per-workgroup gradient slots) in one dispatch, on adapters with 8-lane subgroups. The
//! state that runs it is `mlp::FusedCfmPass`.

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
    pub n_layers: u32,
    pub group_rows: u32,
    pub slot_vec4: u32,
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

/// Mirrors `StepTable` in cfm_step_subgroup.wgsl: the uniform table of a run.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub struct StepTable {
    pub s: StepParams,
    pub layers: [StepLayer; MAX_LAYERS],
}

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

/// One workgroup per `group_rows` of `rows` rows.
pub fn step_groups(rows: usize, p: &StepParams) -> [u32; 3] {
    [(rows as u32).div_ceil(p.group_rows), 1, 1]
}
