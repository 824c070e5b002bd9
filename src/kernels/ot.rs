//! Wrapper of `shaders/ot.wgsl`: minibatch OT coupling by log-domain Sinkhorn.

use super::{grid_1d, Entry, EntryPoint, Shader, Spec, Tiles};
use crate::error::Result;
use crate::gpu::GpuContext;

crate::params! {
    /// Mirrors `OtParams` in ot.wgsl.
    #[derive(Clone, Copy, Debug, Default)]
    pub struct OtParams {
        pub batch: u32,
        pub dim: u32,
        pub n_data: u32,
        pub n_source: u32,
        pub seed: u32,
        pub step: u32,
        pub reg: f32,
        pub _pad: u32,
    }
}

crate::bindings! {
    /// `ot_draw`: the batch's source and data rows and the initial potentials.
    pub Draw(OtParams) => DrawBindings {
        data: 1 Read,
        source: 2 Read,
        x0: 3 ReadWrite,
        x1: 4 ReadWrite,
        f: 5 ReadWrite,
        g: 6 ReadWrite,
    }
    /// `ot_scale`, `sinkhorn_f`, `sinkhorn_g`, `sample_pairs`: the Sinkhorn solve.
    pub Solve(OtParams) => SolveBindings {
        x0: 3 ReadWrite,
        x1: 4 ReadWrite,
        f: 5 ReadWrite,
        g: 6 ReadWrite,
        pairs: 7 ReadWrite,
        eps: 8 ReadWrite,
    }
}

pub const OT_DRAW: EntryPoint<Draw> = EntryPoint::new(Shader::Ot, "ot_draw");
pub const OT_SCALE: EntryPoint<Solve> = EntryPoint::new(Shader::Ot, "ot_scale");
pub const SINKHORN_F: EntryPoint<Solve> = EntryPoint::new(Shader::Ot, "sinkhorn_f");
pub const SINKHORN_G: EntryPoint<Solve> = EntryPoint::new(Shader::Ot, "sinkhorn_g");
pub const SAMPLE_PAIRS: EntryPoint<Solve> = EntryPoint::new(Shader::Ot, "sample_pairs");

pub fn ot_draw(ctx: &GpuContext) -> Result<Entry<Draw>> {
    OT_DRAW.get(ctx)
}
pub fn ot_scale(ctx: &GpuContext) -> Result<Entry<Solve>> {
    OT_SCALE.get(ctx)
}
pub fn sinkhorn_f(ctx: &GpuContext) -> Result<Entry<Solve>> {
    SINKHORN_F.get(ctx)
}
pub fn sinkhorn_g(ctx: &GpuContext) -> Result<Entry<Solve>> {
    SINKHORN_G.get(ctx)
}
pub fn sample_pairs(ctx: &GpuContext) -> Result<Entry<Solve>> {
    SAMPLE_PAIRS.get(ctx)
}

/// Every entry point of this wrapper, for the reflection test.
pub fn specs() -> Vec<Spec> {
    vec![
        OT_DRAW.spec(),
        OT_SCALE.spec(),
        SINKHORN_F.spec(),
        SINKHORN_G.spec(),
        SAMPLE_PAIRS.spec(),
    ]
}

/// Grid of `ot_draw` (WG1 threads per workgroup).
pub fn per_row_threads(p: &OtParams, t: &Tiles) -> [u32; 3] {
    grid_1d(p.batch as usize, t.wg1)
}

/// Grid of the Sinkhorn updates and pair sampling (`OT_WG` = wg_x·wg_y threads).
pub fn per_row_small(p: &OtParams, t: &Tiles) -> [u32; 3] {
    grid_1d(p.batch as usize, t.wg_x * t.wg_y)
}
