//! Wrapper of `shaders/field_subgroup.wgsl` (compiled after fused_mlp_subgroup.wgsl and
//! trace.wgsl): a likelihood field evaluation (MLP with tangents, then the integrands) and
//! its vector-Jacobian product, one dispatch each, on adapters with 8-lane subgroups. The
//! state that runs them is `mle::LikelihoodField`; the table is
//! [`super::fused_mlp::StepTable`].

use super::trace::TraceParams;
use super::{Entry, EntryPoint, Shader, Spec};
use crate::error::Result;
use crate::gpu::GpuContext;

crate::bindings! {
    /// `field_eval_subgroup`: trace.wgsl's buffers of a field evaluation, then the table
    /// (uniform), params and activations of fused_mlp_subgroup.wgsl.
    pub Eval(TraceParams) => EvalBindings {
        tangent_input: 1 ReadWrite,
        probes: 2 ReadWrite,
        tangent_out: 3 ReadWrite,
        div: 4 ReadWrite,
        table: 11 Uniform,
        params: 12 Read,
        act: 13 ReadWrite,
    }
    /// `field_vjp_subgroup`: trace.wgsl's buffers of a VJP, then the table (uniform),
    /// params, activations, gradient slots and the input gradient.
    pub Vjp(TraceParams) => VjpBindings {
        tangent_input: 1 ReadWrite,
        probes: 2 ReadWrite,
        tangent_out: 3 ReadWrite,
        cotangent: 5 Read,
        dv: 6 ReadWrite,
        table: 11 Uniform,
        params: 12 Read,
        act: 13 ReadWrite,
        grad_parts: 14 ReadWrite,
        input_grad: 15 ReadWrite,
    }
}

/// Storage buffers the VJP binds (an adapter with fewer per stage cannot run it).
pub const STORAGE_BUFFERS: u32 = 9;

pub const FIELD_EVAL: EntryPoint<Eval> =
    EntryPoint::new(Shader::FieldSubgroup, "field_eval_subgroup");
pub const FIELD_VJP: EntryPoint<Vjp> = EntryPoint::new(Shader::FieldSubgroup, "field_vjp_subgroup");

pub fn field_eval_subgroup(ctx: &GpuContext) -> Result<Entry<Eval>> {
    FIELD_EVAL.get(ctx)
}
pub fn field_vjp_subgroup(ctx: &GpuContext) -> Result<Entry<Vjp>> {
    FIELD_VJP.get(ctx)
}

/// Every entry point of this wrapper, for the reflection test.
pub fn specs() -> Vec<Spec> {
    vec![FIELD_EVAL.spec(), FIELD_VJP.spec()]
}
