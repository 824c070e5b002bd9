//! Wrapper of `shaders/adam.wgsl`: AdamW with global gradient-norm clipping and EMA.

use super::{grid_1d, Entry, EntryPoint, Shader, Spec, Tiles};
use crate::error::Result;
use crate::gpu::GpuContext;

/// Gradient vec4s per thread in `grad_sq_partial` (`ITEMS` in adam.wgsl).
pub const ITEMS: usize = 16;

crate::params! {
    /// Mirrors `AdamParams` in adam.wgsl.
    #[derive(Clone, Copy, Debug, Default)]
    pub struct AdamParams {
        pub n: u32,
        pub n_partials: u32,
        pub use_ema: u32,
        pub step: u32,
        pub lr: f32,
        pub beta1: f32,
        pub beta2: f32,
        pub eps: f32,
        pub weight_decay: f32,
        pub bias_corr1: f32,
        pub bias_corr2: f32,
        pub clip_norm: f32,
        pub ema_decay: f32,
        /// ≤ 1: `grads` is the gradient; else it holds this many partial sums to add up.
        pub grad_parts: u32,
        /// Vec4s per partial slot (the parameters, then the slot's loss sum).
        pub part_vec4: u32,
        /// History slot of this step's loss (with `loss_rows` > 0).
        pub loss_slot: u32,
        /// > 0: adam_update also writes the batch loss, Σ_slots loss sum / loss_rows.
        pub loss_rows: u32,
        pub _pad: [u32; 3],
    }
}

crate::bindings! {
    /// `grad_sq_partial`: per-workgroup sums of squared gradients (for clipping).
    pub GradSq(AdamParams) => GradSqBindings {
        grads: 1 Read,
        partials: 2 ReadWrite,
    }
    /// `adam_update`, `adam_update_clipped`: the AdamW step, EMA and the batch loss.
    pub Update(AdamParams) => UpdateBindings {
        grads: 1 Read,
        partials: 2 ReadWrite,
        params: 3 ReadWrite,
        moments: 4 ReadWrite,
        ema: 5 ReadWrite,
        loss_history: 6 ReadWrite,
    }
}

pub const GRAD_SQ_PARTIAL: EntryPoint<GradSq> = EntryPoint::new(Shader::Adam, "grad_sq_partial");
pub const ADAM_UPDATE: EntryPoint<Update> = EntryPoint::new(Shader::Adam, "adam_update");
pub const ADAM_UPDATE_CLIPPED: EntryPoint<Update> =
    EntryPoint::new(Shader::Adam, "adam_update_clipped");

pub fn grad_sq_partial(ctx: &GpuContext) -> Result<Entry<GradSq>> {
    GRAD_SQ_PARTIAL.get(ctx)
}
/// The update without clipping, or with (`adam_update_clipped`: after `grad_sq_partial`).
pub fn adam_update(ctx: &GpuContext, clipped: bool) -> Result<Entry<Update>> {
    if clipped {
        ADAM_UPDATE_CLIPPED.get(ctx)
    } else {
        ADAM_UPDATE.get(ctx)
    }
}

/// Every entry point of this wrapper, for the reflection test.
pub fn specs() -> Vec<Spec> {
    vec![
        GRAD_SQ_PARTIAL.spec(),
        ADAM_UPDATE.spec(),
        ADAM_UPDATE_CLIPPED.spec(),
    ]
}

/// Workgroups (= partial sums) of `grad_sq_partial` for `n` parameters (a multiple of 4:
/// the kernels read vec4s).
pub fn n_partials(n: usize, t: &Tiles) -> usize {
    assert_eq!(
        n % 4,
        0,
        "adam.wgsl needs a parameter count that is a multiple of 4"
    );
    (n / 4).div_ceil(t.wg1 as usize * ITEMS).max(1)
}
pub fn grad_sq_groups(p: &AdamParams, _t: &Tiles) -> [u32; 3] {
    grid_1d(p.n_partials as usize, 1)
}
/// One thread per parameter vec4, and one more for the loss when `loss_rows` > 0.
pub fn update_groups(p: &AdamParams, t: &Tiles) -> [u32; 3] {
    grid_1d(p.n as usize / 4 + (p.loss_rows > 0) as usize, t.wg1)
}
