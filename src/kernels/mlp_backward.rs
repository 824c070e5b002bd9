//! Wrapper of `shaders/mlp_backward.wgsl` (input and weight gradients of a linear layer)
//! and of its 8-lane-subgroup variant `shaders/mlp_backward_subgroup.wgsl`, picked when
//! the context's tiles say so (same parameters and bindings).

use super::{div_ceil, grid_1d, Entry, EntryPoint, Shader, Spec, Tiles};
use crate::error::Result;
use crate::gpu::GpuContext;

/// Per-thread tiles (`DX_ROWS`, `DW_OUT_VEC4`, `DW_IN_VEC4` in mlp_backward.wgsl).
pub const DX_ROWS: u32 = 8;
pub const DW_OUT_VEC4: u32 = 2;
pub const DW_IN_VEC4: u32 = 2;
/// Subgroup tiles (`SG_DX_ROWS`, `SG_DW_OUT_VEC4` in mlp_backward_subgroup.wgsl): one
/// 8-lane subgroup per workgroup, one input vec4 per lane.
pub const SG_DX_ROWS: u32 = 16;
pub const SG_DW_OUT_VEC4: u32 = 4;
const SG_LANES: u32 = 8;

crate::params! {
    /// Mirrors `BackwardParams` in mlp_backward.wgsl.
    #[derive(Clone, Copy, Debug, Default)]
    pub struct BackwardParams {
        pub rows: u32,
        pub out_features: u32,
        pub out_vec4: u32,
        pub in_vec4: u32,
        pub w_off4: u32,
        pub activation: u32,
        pub chunk_rows: u32,
        pub n_chunks: u32,
        pub layer_size: u32,
        pub bias_rows: u32,
        pub n_tangents: u32,
        pub _pad: u32,
    }
}

crate::bindings! {
    /// `backward_input(_jvp)(_subgroup)`: a layer's input gradient.
    pub Input(BackwardParams) => InputBindings {
        dz: 1 Read,
        params: 2 Read,
        z_below: 3 Read,
        dx: 4 ReadWrite,
    }
    /// `backward_weight(_subgroup)`: a layer's weight gradient, per row chunk.
    pub Weight(BackwardParams) => WeightBindings {
        dz: 1 Read,
        x_in: 5 Read,
        partial: 6 ReadWrite,
        grads: 7 ReadWrite,
    }
    /// `backward_layer(_jvp)_subgroup`: both gradients of a layer in one dispatch.
    pub Layer(BackwardParams) => LayerBindings {
        dz: 1 Read,
        params: 2 Read,
        z_below: 3 Read,
        dx: 4 ReadWrite,
        x_in: 5 Read,
        partial: 6 ReadWrite,
        grads: 7 ReadWrite,
    }
    /// `reduce_chunks`: adds the chunks' weight gradients.
    pub ReduceChunks(BackwardParams) => ReduceChunksBindings {
        partial: 6 ReadWrite,
        grads: 7 ReadWrite,
    }
}

pub const BACKWARD_INPUT: EntryPoint<Input> =
    EntryPoint::new(Shader::MlpBackward, "backward_input");
pub const BACKWARD_INPUT_JVP: EntryPoint<Input> =
    EntryPoint::new(Shader::MlpBackward, "backward_input_jvp");
pub const BACKWARD_WEIGHT: EntryPoint<Weight> =
    EntryPoint::new(Shader::MlpBackward, "backward_weight");
pub const REDUCE_CHUNKS: EntryPoint<ReduceChunks> =
    EntryPoint::new(Shader::MlpBackward, "reduce_chunks");
pub const BACKWARD_INPUT_SUBGROUP: EntryPoint<Input> =
    EntryPoint::new(Shader::MlpBackwardSubgroup, "backward_input_subgroup");
pub const BACKWARD_INPUT_JVP_SUBGROUP: EntryPoint<Input> =
    EntryPoint::new(Shader::MlpBackwardSubgroup, "backward_input_jvp_subgroup");
pub const BACKWARD_WEIGHT_SUBGROUP: EntryPoint<Weight> =
    EntryPoint::new(Shader::MlpBackwardSubgroup, "backward_weight_subgroup");
pub const BACKWARD_LAYER_SUBGROUP: EntryPoint<Layer> =
    EntryPoint::new(Shader::MlpBackwardSubgroup, "backward_layer_subgroup");
pub const BACKWARD_LAYER_JVP_SUBGROUP: EntryPoint<Layer> =
    EntryPoint::new(Shader::MlpBackwardSubgroup, "backward_layer_jvp_subgroup");

/// Every entry point of this wrapper, for the reflection test.
pub fn specs() -> Vec<Spec> {
    vec![
        BACKWARD_INPUT.spec(),
        BACKWARD_INPUT_JVP.spec(),
        BACKWARD_WEIGHT.spec(),
        REDUCE_CHUNKS.spec(),
        BACKWARD_INPUT_SUBGROUP.spec(),
        BACKWARD_INPUT_JVP_SUBGROUP.spec(),
        BACKWARD_WEIGHT_SUBGROUP.spec(),
        BACKWARD_LAYER_SUBGROUP.spec(),
        BACKWARD_LAYER_JVP_SUBGROUP.spec(),
    ]
}

pub fn backward_input(ctx: &GpuContext) -> Result<Entry<Input>> {
    if ctx.tiles.subgroup8 {
        BACKWARD_INPUT_SUBGROUP.get(ctx)
    } else {
        BACKWARD_INPUT.get(ctx)
    }
}
pub fn backward_weight(ctx: &GpuContext) -> Result<Entry<Weight>> {
    if ctx.tiles.subgroup8 {
        BACKWARD_WEIGHT_SUBGROUP.get(ctx)
    } else {
        BACKWARD_WEIGHT.get(ctx)
    }
}
/// backward_weight and backward_input of one layer in one dispatch: subgroup tiles only
/// (None with the plain tiles, whose two kernels have different workgroup shapes). Worth it
/// for small layers only (`fuse_backward`).
/// With tangents (`backward_layer_jvp_subgroup`) it takes backward_input_jvp's parameters.
pub fn backward_layer(ctx: &GpuContext, tangents: bool) -> Result<Option<Entry<Layer>>> {
    if !ctx.tiles.subgroup8 {
        return Ok(None);
    }
    let entry = if tangents {
        BACKWARD_LAYER_JVP_SUBGROUP
    } else {
        BACKWARD_LAYER_SUBGROUP
    };
    entry.get(ctx).map(Some)
}
pub fn reduce_chunks(ctx: &GpuContext) -> Result<Entry<ReduceChunks>> {
    REDUCE_CHUNKS.get(ctx)
}

/// backward_input through tangent rows (same bindings as backward_input).
pub fn backward_input_jvp(ctx: &GpuContext) -> Result<Entry<Input>> {
    if ctx.tiles.subgroup8 {
        BACKWARD_INPUT_JVP_SUBGROUP.get(ctx)
    } else {
        BACKWARD_INPUT_JVP.get(ctx)
    }
}

/// Grid of backward_input and backward_input_jvp (same tiles for both entries).
pub fn backward_input_groups(p: &BackwardParams, t: &Tiles) -> [u32; 3] {
    if t.subgroup8 {
        let [y, z] = super::matmul::row_blocks(p.rows as usize, SG_DX_ROWS);
        return [div_ceil(p.in_vec4 as usize, SG_LANES), y, z];
    }
    [
        div_ceil(p.in_vec4 as usize, t.wg_x),
        div_ceil(p.rows as usize, DX_ROWS * t.wg_y),
        1,
    ]
}
pub fn backward_weight_groups(p: &BackwardParams, t: &Tiles) -> [u32; 3] {
    if t.subgroup8 {
        return [
            div_ceil(p.in_vec4 as usize, SG_LANES),
            div_ceil(p.out_vec4 as usize, SG_DW_OUT_VEC4),
            p.n_chunks,
        ];
    }
    [
        div_ceil(p.in_vec4 as usize, DW_IN_VEC4 * t.wg_x),
        div_ceil(p.out_vec4 as usize, DW_OUT_VEC4 * t.wg_y),
        p.n_chunks,
    ]
}
/// Whether a layer's backward runs as one backward_layer dispatch: the fused kernel saves a
/// dispatch (~50–100 µs on lavapipe) but compiles to slower code (W-fm's 4096×512×512
/// layers: 132 ms against 48 + 53 ms for the two kernels), so only small layers use it.
pub fn fuse_backward(p: &BackwardParams) -> bool {
    const MAX_MULTIPLY_ADDS: u64 = 1 << 22;
    p.rows as u64 * 16 * p.in_vec4 as u64 * p.out_vec4 as u64 <= MAX_MULTIPLY_ADDS
}

/// backward_layer_(jvp_)subgroup: the weight workgroups, then the input ones, in a folded
/// 1-D grid (with tangents, `p` is backward_input_jvp's: rows are the primal rows, and the
/// weight half's chunks are those of the stacked rows, as n_chunks says).
pub fn backward_layer_groups(p: &BackwardParams, _t: &Tiles) -> [u32; 3] {
    let gx = p.in_vec4.div_ceil(SG_LANES) as usize;
    let weight = gx * p.out_vec4.div_ceil(SG_DW_OUT_VEC4) as usize * p.n_chunks as usize;
    let input = gx * (p.rows as usize).div_ceil(SG_DX_ROWS as usize);
    grid_1d(weight + input, 1)
}
pub fn reduce_chunks_groups(p: &BackwardParams, t: &Tiles) -> [u32; 3] {
    grid_1d(p.layer_size as usize / 4, t.wg1)
}

/// Rows per weight-gradient chunk: enough chunks to occupy the adapter, few enough that
/// the reduction stays cheap. One chunk (no reduction pass) for small batches.
pub fn chunk_rows(rows: usize, t: &Tiles) -> usize {
    if rows <= t.single_chunk_rows as usize {
        rows.max(1)
    } else {
        t.weight_chunk_rows as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpu::AdapterClass;
    use crate::kernels::matmul::row_blocks;

    fn subgroup_tiles() -> Tiles {
        Tiles {
            subgroup8: true,
            ..Tiles::for_class(AdapterClass::Software)
        }
    }

    #[test]
    fn row_blocks_cover_every_row_within_the_grid_limit() {
        for rows in [1, 15, 16, 17, 65535 * 16, 65535 * 16 + 1, 3_000_001] {
            let [y, z] = row_blocks(rows, 16);
            assert!(y <= 65535 && z <= 65535, "{rows}: {y} × {z}");
            let blocks = (y as usize) * (z as usize);
            // Every block exists; the fold adds at most one partial row of y blocks.
            assert!(blocks * 16 >= rows, "{rows}");
            assert!(blocks < rows.div_ceil(16) + y as usize, "{rows}");
        }
    }

    #[test]
    fn backward_layer_grid_holds_both_halves() {
        let t = subgroup_tiles();
        for (rows, in_vec4, out_vec4, n_chunks) in [
            (256, 16, 16, 1),
            (1100, 11, 11, 5),
            (50, 1, 1, 1),
            (2_000_000, 2, 1, 1),
        ] {
            let p = BackwardParams {
                rows,
                in_vec4,
                out_vec4,
                n_chunks,
                ..Default::default()
            };
            let gx = in_vec4.div_ceil(8) as u64;
            let weight = gx * out_vec4.div_ceil(SG_DW_OUT_VEC4) as u64 * n_chunks as u64;
            let input = gx * rows.div_ceil(SG_DX_ROWS) as u64;
            let [x, y, z] = backward_layer_groups(&p, &t);
            assert_eq!(z, 1);
            assert!(x <= 65535 && y <= 65535);
            let n = x as u64 * y as u64;
            assert!(
                n >= weight + input && n < weight + input + x as u64,
                "{rows}"
            );
        }
    }
}
