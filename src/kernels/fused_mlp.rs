//! Mirror of `shaders/fused_mlp_subgroup.wgsl`: the uniform table of the fused kernels
//! (cfm_step_subgroup, field_subgroup), which run a whole small MLP forward and backward in
//! one workgroup per row group. `mlp::FusedLayout` fills it.

/// Rows per row tile of the fused kernels (their forward and input-gradient tiles).
pub const TILE_ROWS: usize = 16;

/// Layers a table holds.
pub const MAX_LAYERS: usize = super::codes::MAX_LAYERS as usize;

/// Mirrors `StepParams` in fused_mlp_subgroup.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
pub struct StepParams {
    pub n_layers: u32,
    pub group_rows: u32,
    pub slot_vec4: u32,
    /// Row sets: 1 + tangent directions.
    pub sets: u32,
    /// Rows per set in every region of the activation buffer.
    pub cap_rows: u32,
    pub _pad: [u32; 3],
}

/// Mirrors `StepLayer` in fused_mlp_subgroup.wgsl (offsets in vec4s).
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
    pub d_off4: u32,
    pub below_act: u32,
    pub below_z_off4: u32,
    pub below_d_off4: u32,
    pub below_sets: u32,
    pub store_z: u32,
    pub _pad: u32,
}

/// Mirrors `StepTable` in fused_mlp_subgroup.wgsl: the uniform table of a run.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub struct StepTable {
    pub s: StepParams,
    pub layers: [StepLayer; MAX_LAYERS],
}

/// One workgroup per `group_rows` of `rows` rows.
pub fn groups(rows: usize, p: &StepParams) -> [u32; 3] {
    [(rows as u32).div_ceil(p.group_rows), 1, 1]
}
