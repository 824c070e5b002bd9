//! Wrapper of `shaders/trace.wgsl`: tangent directions (exact or Hutchinson probes) and
//! the divergence estimate from the tangents.

use super::{grid_1d, Entry, EntryPoint, Shader, Spec, Tiles};
use crate::error::Result;
use crate::gpu::GpuContext;

crate::params! {
    /// Mirrors `TraceParams` in trace.wgsl.
    #[derive(Clone, Copy, Debug, Default)]
    pub struct TraceParams {
        pub rows: u32,
        pub dim: u32,
        pub in_stride: u32,
        pub out_stride: u32,
        pub n_tangents: u32,
        pub probe: u32,
        pub seed: u32,
        pub row_offset: u32,
        pub a_trace: f32,
        pub a_kinetic: f32,
        pub a_frobenius: f32,
        pub _pad: u32,
    }
}

/// Floats per row of the divergence buffer: divergence, ‖v‖², Frobenius estimate, 0.
pub const DIV_STRIDE: usize = super::codes::DIV_STRIDE as usize;

crate::bindings! {
    /// `probe_init`: tangent rows of the MLP input and the probes.
    pub ProbeInit(TraceParams) => ProbeInitBindings {
        tangent_input: 1 ReadWrite,
        probes: 2 ReadWrite,
    }
    /// `divergence`: the divergence integrands from the MLP output (v and J·u).
    pub Divergence(TraceParams) => DivergenceBindings {
        probes: 2 ReadWrite,
        tangent_out: 3 ReadWrite,
        div: 4 ReadWrite,
    }
    /// `trace_cotangent`: the MLP's top dz (`dv`) from the likelihood cotangent.
    pub TraceCotangent(TraceParams) => TraceCotangentBindings {
        probes: 2 ReadWrite,
        tangent_out: 3 ReadWrite,
        cotangent: 5 Read,
        dv: 6 ReadWrite,
    }
}

pub const PROBE_INIT: EntryPoint<ProbeInit> = EntryPoint::new(Shader::Trace, "probe_init");
pub const DIVERGENCE: EntryPoint<Divergence> = EntryPoint::new(Shader::Trace, "divergence");
pub const TRACE_COTANGENT: EntryPoint<TraceCotangent> =
    EntryPoint::new(Shader::Trace, "trace_cotangent");

pub fn probe_init(ctx: &GpuContext) -> Result<Entry<ProbeInit>> {
    PROBE_INIT.get(ctx)
}
pub fn divergence(ctx: &GpuContext) -> Result<Entry<Divergence>> {
    DIVERGENCE.get(ctx)
}
pub fn trace_cotangent(ctx: &GpuContext) -> Result<Entry<TraceCotangent>> {
    TRACE_COTANGENT.get(ctx)
}

/// Every entry point of this wrapper, for the reflection test.
pub fn specs() -> Vec<Spec> {
    vec![PROBE_INIT.spec(), DIVERGENCE.spec(), TRACE_COTANGENT.spec()]
}

pub fn per_row_groups(p: &TraceParams, t: &Tiles) -> [u32; 3] {
    grid_1d(p.rows as usize, t.wg1)
}
