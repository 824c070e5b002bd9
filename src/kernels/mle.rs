//! Wrapper of `shaders/mle.wgsl`: the adjoint's start and the parameter-gradient quadrature.

use super::{grid_1d, Entry, EntryPoint, Shader, Spec, Tiles};
use crate::error::Result;
use crate::gpu::GpuContext;

crate::params! {
    /// Mirrors `MleParams` in mle.wgsl.
    #[derive(Clone, Copy, Debug, Default)]
    pub struct MleParams {
        pub rows: u32,
        pub dim: u32,
        pub fwd_stride: u32,
        pub n_params: u32,
        pub inv_batch: f32,
        pub log_norm: f32,
        pub coef: f32,
        pub init: u32,
        /// Stage gradient slots to add (1: the gradient itself).
        pub parts: u32,
        /// Floats per slot.
        pub part_len: u32,
        pub _pad: [u32; 2],
    }
}

crate::bindings! {
    /// `adjoint_start`: the adjoint's initial state and the per-sample loss.
    pub AdjointStart(MleParams) => AdjointStartBindings {
        fwd_state: 1 Read,
        adj_state: 2 ReadWrite,
        sample_loss: 3 ReadWrite,
    }
    /// `accumulate`: adds the stage gradient slots into the parameter gradient.
    pub Accumulate(MleParams) => AccumulateBindings {
        stage_grads: 4 Read,
        grads: 5 ReadWrite,
    }
    /// `commit`: adds an accepted attempt's gradient (`stage_grads`) per the clock.
    pub Commit(MleParams) => CommitBindings {
        stage_grads: 4 Read,
        grads: 5 ReadWrite,
        clock: 6 Read,
    }
}

pub const ADJOINT_START: EntryPoint<AdjointStart> = EntryPoint::new(Shader::Mle, "adjoint_start");
pub const ACCUMULATE: EntryPoint<Accumulate> = EntryPoint::new(Shader::Mle, "accumulate");
pub const COMMIT: EntryPoint<Commit> = EntryPoint::new(Shader::Mle, "commit");

pub fn adjoint_start(ctx: &GpuContext) -> Result<Entry<AdjointStart>> {
    ADJOINT_START.get(ctx)
}
pub fn accumulate(ctx: &GpuContext) -> Result<Entry<Accumulate>> {
    ACCUMULATE.get(ctx)
}
pub fn commit(ctx: &GpuContext) -> Result<Entry<Commit>> {
    COMMIT.get(ctx)
}

/// Every entry point of this wrapper, for the reflection test.
pub fn specs() -> Vec<Spec> {
    vec![ADJOINT_START.spec(), ACCUMULATE.spec(), COMMIT.spec()]
}

pub fn per_row_groups(p: &MleParams, t: &Tiles) -> [u32; 3] {
    grid_1d(p.rows as usize, t.wg1)
}
pub fn per_param_groups(p: &MleParams, t: &Tiles) -> [u32; 3] {
    grid_1d(p.n_params as usize, t.wg1)
}
