//! Numeric codes and layout constants that Rust and WGSL share, declared once here. The
//! generated preamble of every shader family declares them as WGSL constants
//! ([`wgsl`]), so no shader and no host file writes their values as literals.

use crate::rng;

/// Declares each code as a Rust constant and lists them for [`wgsl`].
macro_rules! shared {
    ($($(#[$m:meta])* $name:ident: $ty:ident = $val:expr;)+) => {
        $($(#[$m])* pub const $name: $ty = $val;)+
        /// Every shared constant: (name, WGSL type, WGSL literal).
        fn table() -> Vec<(&'static str, &'static str, String)> {
            vec![$((stringify!($name), stringify!($ty), Lit::lit($name))),+]
        }
    };
}

/// A WGSL literal of a constant's value.
trait Lit {
    fn lit(self) -> String;
}
impl Lit for u32 {
    fn lit(self) -> String {
        format!("{self}u")
    }
}
impl Lit for f32 {
    fn lit(self) -> String {
        format!("{self:?}")
    }
}

shared! {
    /// Conditional paths (`GaussianPath::gpu_code`, cfm.wgsl's `schedule`).
    PATH_OT: u32 = 0;
    PATH_VP: u32 = 1;
    PATH_POLY: u32 = 2;
    PATH_ICFM: u32 = 3;
    PATH_SB: u32 = 4;
    PATH_VP_SDE: u32 = 5;
    PATH_VE_SDE: u32 = 6;
    /// Network outputs (`Prediction::gpu_code`, path.wgsl's `to_velocity`).
    PREDICT_VELOCITY: u32 = 0;
    PREDICT_NOISE: u32 = 1;
    PREDICT_DATA: u32 = 2;
    PREDICT_SCORE: u32 = 3;
    /// path.wgsl's clamp of conversion times (`path::T_EDGE`).
    T_EDGE: f32 = 1e-3;
    /// Activations (`Activation::gpu_code`, common.wgsl's `act`).
    ACT_IDENTITY: u32 = 0;
    ACT_RELU: u32 = 1;
    ACT_SILU: u32 = 2;
    ACT_TANH: u32 = 3;
    ACT_SOFTPLUS: u32 = 4;
    ACT_SELU: u32 = 5;
    /// Divergence probes (`Trace::probe_code`, trace.wgsl's `probe_value`).
    PROBE_EXACT: u32 = 0;
    PROBE_GAUSSIAN: u32 = 1;
    PROBE_RADEMACHER: u32 = 2;
    /// Counter-RNG streams: one per purpose, so draws never collide ([`rng`]).
    STREAM_INDEX: u32 = rng::STREAM_INDEX;
    STREAM_TIME: u32 = rng::STREAM_TIME;
    STREAM_NOISE: u32 = rng::STREAM_NOISE;
    STREAM_BASE: u32 = rng::STREAM_BASE;
    STREAM_PROBE: u32 = rng::STREAM_PROBE;
    STREAM_EXTRA: u32 = rng::STREAM_EXTRA;
    STREAM_LABEL: u32 = rng::STREAM_LABEL;
    STREAM_COUPLING: u32 = rng::STREAM_COUPLING;
    STREAM_SDE: u32 = rng::STREAM_SDE;
    /// Per-row status in the adaptive clock buffer (ode.wgsl).
    RUNNING: f32 = 0.0;
    DONE: f32 = 1.0;
    UNDERFLOW: f32 = 2.0;
    NONFINITE: f32 = 3.0;
    /// Floats per row of the adaptive clock buffer.
    CLOCK: u32 = 8;
    /// Floats per row of the divergence buffer: divergence, ‖v‖², Frobenius estimate, 0.
    DIV_STRIDE: u32 = 4;
    /// `class_id` of unconditional rows.
    NO_CLASS: u32 = u32::MAX;
    /// Layers a fused kernel's table holds (fused_mlp_subgroup.wgsl).
    MAX_LAYERS: u32 = 16;
}

/// The WGSL declarations of every shared constant.
pub fn wgsl() -> String {
    table()
        .into_iter()
        .map(|(name, ty, lit)| format!("const {name}: {ty} = {lit};\n"))
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn wgsl_literals_are_typed() {
        let s = super::wgsl();
        assert!(s.contains("const PATH_VP: u32 = 1u;\n"));
        assert!(s.contains("const DONE: f32 = 1.0;\n"));
        assert!(s.contains("const NO_CLASS: u32 = 4294967295u;\n"));
    }
}
