//! Wrapper of `shaders/matmul.wgsl` (the batched linear-layer forward) and of its
//! 8-lane-subgroup variant `shaders/matmul_subgroup.wgsl`, which `linear_forward` picks
//! when the context's tiles say so (same parameters and bindings).

use super::{div_ceil, Entry, EntryPoint, Shader, Spec, Tiles};
use crate::error::Result;
use crate::gpu::GpuContext;

/// Outputs per thread (`TILE_ROWS`, `TILE_COLS` in matmul.wgsl).
pub const TILE_ROWS: u32 = 8;
pub const TILE_COLS: u32 = 4;
/// Rows per subgroup of linear_forward_subgroup and linear_jvp_subgroup (`SG_ROWS`); a workgroup is one
/// 8-lane subgroup covering 8·TILE_COLS output features.
pub const SG_ROWS: u32 = 16;
const SG_LANES: u32 = 8;

crate::params! {
    /// Mirrors `LinearParams` in matmul.wgsl.
    #[derive(Clone, Copy, Debug, Default)]
    pub struct LinearParams {
        pub rows: u32,
        pub out_features: u32,
        pub in_vec4: u32,
        pub y_stride: u32,
        pub w_off4: u32,
        pub b_off: u32,
        pub activation: u32,
        pub store_pre: u32,
        pub tangents: u32,
        pub _pad: [u32; 3],
    }
}

crate::bindings! {
    /// `linear_forward`, `linear_jvp` and their subgroup variants: one layer's
    /// pre-activation `z` and activation `h` from its input `x`.
    pub Forward(LinearParams) => ForwardBindings {
        x: 1 Read,
        params: 2 Read,
        z: 3 ReadWrite,
        h: 4 ReadWrite,
    }
}

pub const LINEAR_FORWARD: EntryPoint<Forward> = EntryPoint::new(Shader::Matmul, "linear_forward");
pub const LINEAR_JVP: EntryPoint<Forward> = EntryPoint::new(Shader::Matmul, "linear_jvp");
pub const LINEAR_FORWARD_SUBGROUP: EntryPoint<Forward> =
    EntryPoint::new(Shader::MatmulSubgroup, "linear_forward_subgroup");
pub const LINEAR_JVP_SUBGROUP: EntryPoint<Forward> =
    EntryPoint::new(Shader::MatmulSubgroup, "linear_jvp_subgroup");

/// Every entry point of this wrapper, for the reflection test.
pub fn specs() -> Vec<Spec> {
    vec![
        LINEAR_FORWARD.spec(),
        LINEAR_JVP.spec(),
        LINEAR_FORWARD_SUBGROUP.spec(),
        LINEAR_JVP_SUBGROUP.spec(),
    ]
}

/// The forward kernel for a layer with `out_features` outputs and `tangents` tangent
/// directions, and the tiles its grid follows. The subgroup tile covers 32 output
/// features per subgroup, so for a narrow layer (the 2-D output layer: 2 of 32 real) its
/// lanes would mostly compute clamped copies: such layers take the plain tile.
pub fn forward_for_layer(
    ctx: &GpuContext,
    out_features: usize,
    tangents: usize,
) -> Result<(Entry<Forward>, Tiles)> {
    let narrow = out_features <= 8;
    let tiles = Tiles {
        subgroup8: ctx.tiles.subgroup8 && !narrow,
        ..ctx.tiles
    };
    let kernel = match (tangents > 0, tiles.subgroup8) {
        (false, true) => linear_forward(ctx)?,
        (true, true) => linear_jvp(ctx)?,
        (false, false) => LINEAR_FORWARD.get(ctx)?,
        (true, false) => LINEAR_JVP.get(ctx)?,
    };
    Ok((kernel, tiles))
}

pub fn linear_forward(ctx: &GpuContext) -> Result<Entry<Forward>> {
    if ctx.tiles.subgroup8 {
        LINEAR_FORWARD_SUBGROUP.get(ctx)
    } else {
        LINEAR_FORWARD.get(ctx)
    }
}

/// Primal rows and their tangent rows in one dispatch (same bindings).
pub fn linear_jvp(ctx: &GpuContext) -> Result<Entry<Forward>> {
    if ctx.tiles.subgroup8 {
        LINEAR_JVP_SUBGROUP.get(ctx)
    } else {
        LINEAR_JVP.get(ctx)
    }
}

/// Grid of linear_forward and linear_jvp (both variants: same tiles for both entries).
pub fn linear_forward_groups(p: &LinearParams, t: &Tiles) -> [u32; 3] {
    if t.subgroup8 {
        let [y, z] = row_blocks(p.rows as usize, SG_ROWS);
        return [
            div_ceil(p.out_features as usize, TILE_COLS * SG_LANES),
            y,
            z,
        ];
    }
    [
        div_ceil(p.out_features as usize, TILE_COLS * t.wg_x),
        div_ceil(p.rows as usize, TILE_ROWS * t.wg_y),
        1,
    ]
}

/// Workgroups along y and z for `rows` rows in blocks of `block` (one block per
/// workgroup): the subgroup kernels fold blocks past 65535 into z (`wg.y + wg.z·nwg.y`).
pub(crate) fn row_blocks(rows: usize, block: u32) -> [u32; 2] {
    let blocks = rows.div_ceil(block as usize).max(1);
    let y = blocks.min(65535);
    [y as u32, blocks.div_ceil(y) as u32]
}
