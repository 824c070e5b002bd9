//! The counter-based RNG of `shaders/common.wgsl`, bit for bit on the CPU.
//!
//! GPU kernels draw their randomness (data indices, t, ε, base noise) from a hash of
//! (seed, stream, counters) rather than from a sequential generator, so the f64 reference
//! can reproduce a GPU training step exactly, and results do not depend on how work is
//! split into workgroups or chunks.

pub const STREAM_INDEX: u32 = 1;
pub const STREAM_TIME: u32 = 2;
pub const STREAM_NOISE: u32 = 3;
pub const STREAM_BASE: u32 = 4;
pub const STREAM_PROBE: u32 = 5;
pub const STREAM_EXTRA: u32 = 6;
pub const STREAM_LABEL: u32 = 7;
pub const STREAM_COUPLING: u32 = 8;
/// The noise of stochastic sampling steps (reverse SDE, ancestral), keyed by (row, step).
pub const STREAM_SDE: u32 = 9;

pub fn pcg_hash(v: u32) -> u32 {
    let state = v.wrapping_mul(747796405).wrapping_add(2891336453);
    let word = ((state >> ((state >> 28) + 4)) ^ state).wrapping_mul(277803737);
    (word >> 22) ^ word
}

pub fn rng_bits(seed: u32, stream: u32, a: u32, b: u32, c: u32) -> u32 {
    let mut h = pcg_hash(seed ^ 0x9e3779b9);
    h = pcg_hash(h ^ stream);
    h = pcg_hash(h ^ a);
    h = pcg_hash(h ^ b);
    pcg_hash(h ^ c)
}

/// Uniform in (0, 1), as `uniform_open` (exact in f32, so also exact in f64).
pub fn uniform_open(bits: u32) -> f64 {
    ((bits >> 8) as f64 + 0.5) * (1.0 / 16777216.0)
}

pub fn normal_at(seed: u32, stream: u32, a: u32, b: u32, j: u32) -> f64 {
    let pair = j >> 1;
    let u1 = uniform_open(rng_bits(seed, stream, a, b, 2 * pair));
    let u2 = uniform_open(rng_bits(seed, stream, a, b, 2 * pair + 1));
    let r = (-2.0 * u1.ln()).sqrt();
    let th = std::f64::consts::TAU * u2;
    if j & 1 == 1 {
        r * th.sin()
    } else {
        r * th.cos()
    }
}
