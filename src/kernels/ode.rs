//! Wrapper of `shaders/ode.wgsl`: fused Runge–Kutta stages and adaptive step control.

use super::{codes, grid_1d, Entry, EntryPoint, Shader, Spec, Tiles};
use crate::error::Result;
use crate::gpu::GpuContext;

/// Floats per row of the adaptive clock buffer.
pub const CLOCK: usize = codes::CLOCK as usize;
pub use super::codes::{DONE, NONFINITE, NO_CLASS, RUNNING, UNDERFLOW};
/// Most stages a tableau may have (`coef` holds 8 values).
pub const MAX_STAGES: usize = 8;

crate::params! {
    /// Mirrors `OdeParams` in ode.wgsl.
    #[derive(Clone, Copy, Debug, Default)]
    pub struct OdeParams {
        pub rows: u32,
        pub dim: u32,
        pub in_stride: u32,
        pub out_stride: u32,
        pub time_cols: u32,
        pub row_offset: u32,
        pub seed: u32,
        pub stage: u32,
        pub n_terms: u32,
        pub snap_rows: u32,
        pub snap_slot: u32,
        pub aug: u32,
        pub t: f32,
        pub h: f32,
        pub t_end: f32,
        pub c_next: f32,
        pub rtol: f32,
        pub atol: f32,
        pub safety: f32,
        pub fac_min: f32,
        pub fac_max: f32,
        pub h_min: f32,
        pub a_first: f32,
        pub c_first: f32,
        pub n_source: u32,
        pub n_classes: u32,
        pub class_id: u32,
        pub guidance: f32,
        pub adjoint: u32,
        pub path: u32,
        pub path_param: f32,
        pub path_param2: f32,
        pub predict: u32,
        pub step: u32,
        pub source_scale: f32,
        pub _pad: u32,
        pub coef: [f32; 8],
        pub err_coef: [f32; 8],
    }
}

crate::bindings! {
    /// The stage kernels (`rk_stage`, `rk_final`, `adaptive_*`): every buffer of a solve;
    /// `div` holds the divergence integrands (or the adjoint's input gradient).
    pub Stage(OdeParams) => StageBindings {
        state: 1 ReadWrite,
        input: 2 ReadWrite,
        v: 3 Read,
        k: 4 ReadWrite,
        clock: 5 ReadWrite,
        traj: 6 ReadWrite,
        div: 7 Read,
        cotangent: 9 ReadWrite,
    }
    /// `start`: the initial state, the first MLP input and the clocks.
    pub Start(OdeParams) => StartBindings {
        state: 1 ReadWrite,
        input: 2 ReadWrite,
        clock: 5 ReadWrite,
        cotangent: 9 ReadWrite,
    }
    /// `base_noise`: `start` with the state drawn from the source.
    pub BaseNoise(OdeParams) => BaseNoiseBindings {
        state: 1 ReadWrite,
        input: 2 ReadWrite,
        clock: 5 ReadWrite,
        source: 8 Read,
        cotangent: 9 ReadWrite,
    }
    /// `global_control`: one step size for the whole batch from the rows' clocks.
    pub GlobalControl(OdeParams) => GlobalControlBindings {
        clock: 5 ReadWrite,
    }
    /// `snapshot`: copies the state into a trajectory slot.
    pub Snapshot(OdeParams) => SnapshotBindings {
        state: 1 ReadWrite,
        traj: 6 ReadWrite,
    }
}

pub const START: EntryPoint<Start> = EntryPoint::new(Shader::Ode, "start");
pub const BASE_NOISE: EntryPoint<BaseNoise> = EntryPoint::new(Shader::Ode, "base_noise");
pub const RK_STAGE: EntryPoint<Stage> = EntryPoint::new(Shader::Ode, "rk_stage");
pub const RK_FINAL: EntryPoint<Stage> = EntryPoint::new(Shader::Ode, "rk_final");
pub const AFFINE_STEP: EntryPoint<Stage> = EntryPoint::new(Shader::Ode, "affine_step");
pub const ADAPTIVE_STAGE: EntryPoint<Stage> = EntryPoint::new(Shader::Ode, "adaptive_stage");
pub const ADAPTIVE_FINAL: EntryPoint<Stage> = EntryPoint::new(Shader::Ode, "adaptive_final");
pub const ADAPTIVE_ERROR: EntryPoint<Stage> = EntryPoint::new(Shader::Ode, "adaptive_error");
pub const ADAPTIVE_APPLY: EntryPoint<Stage> = EntryPoint::new(Shader::Ode, "adaptive_apply");
pub const GLOBAL_CONTROL: EntryPoint<GlobalControl> =
    EntryPoint::new(Shader::Ode, "global_control");
pub const SNAPSHOT: EntryPoint<Snapshot> = EntryPoint::new(Shader::Ode, "snapshot");

pub fn start(ctx: &GpuContext) -> Result<Entry<Start>> {
    START.get(ctx)
}
pub fn base_noise(ctx: &GpuContext) -> Result<Entry<BaseNoise>> {
    BASE_NOISE.get(ctx)
}
pub fn rk_stage(ctx: &GpuContext) -> Result<Entry<Stage>> {
    RK_STAGE.get(ctx)
}
pub fn rk_final(ctx: &GpuContext) -> Result<Entry<Stage>> {
    RK_FINAL.get(ctx)
}
pub fn affine_step(ctx: &GpuContext) -> Result<Entry<Stage>> {
    AFFINE_STEP.get(ctx)
}
pub fn adaptive_stage(ctx: &GpuContext) -> Result<Entry<Stage>> {
    ADAPTIVE_STAGE.get(ctx)
}
pub fn adaptive_final(ctx: &GpuContext) -> Result<Entry<Stage>> {
    ADAPTIVE_FINAL.get(ctx)
}
pub fn adaptive_error(ctx: &GpuContext) -> Result<Entry<Stage>> {
    ADAPTIVE_ERROR.get(ctx)
}
pub fn global_control(ctx: &GpuContext) -> Result<Entry<GlobalControl>> {
    GLOBAL_CONTROL.get(ctx)
}
pub fn adaptive_apply(ctx: &GpuContext) -> Result<Entry<Stage>> {
    ADAPTIVE_APPLY.get(ctx)
}
pub fn snapshot(ctx: &GpuContext) -> Result<Entry<Snapshot>> {
    SNAPSHOT.get(ctx)
}

/// Every entry point of this wrapper, for the reflection test.
pub fn specs() -> Vec<Spec> {
    vec![
        START.spec(),
        BASE_NOISE.spec(),
        RK_STAGE.spec(),
        RK_FINAL.spec(),
        AFFINE_STEP.spec(),
        ADAPTIVE_STAGE.spec(),
        ADAPTIVE_FINAL.spec(),
        ADAPTIVE_ERROR.spec(),
        ADAPTIVE_APPLY.spec(),
        GLOBAL_CONTROL.spec(),
        SNAPSHOT.spec(),
    ]
}

pub fn per_row_groups(p: &OdeParams, t: &Tiles) -> [u32; 3] {
    grid_1d(p.rows as usize, t.wg1)
}
pub fn snapshot_groups(p: &OdeParams, t: &Tiles) -> [u32; 3] {
    grid_1d((p.snap_rows.min(p.rows) * p.dim) as usize, t.wg1)
}
