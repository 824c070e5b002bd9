// common.wgsl — prepended to every kernel family (after the generated preamble).
// Holds what several families need: the counter-based RNG, activations and their
// derivatives, time features, and the 1-D index helper. Mirrored in src/rng.rs and
// src/reference.rs so the f64 CPU reference can reproduce GPU randomness exactly.

// PCG hash (Jarzynski & Olano 2020): a high-quality 32-bit integer hash.
fn pcg_hash(v: u32) -> u32 {
    let state = v * 747796405u + 2891336453u;
    let word = ((state >> ((state >> 28u) + 4u)) ^ state) * 277803737u;
    return (word >> 22u) ^ word;
}

// Random bits for a counter (seed, stream, a, b, c): no state, so any thread can draw
// its own numbers in any order and the result does not depend on the dispatch shape.
fn rng_bits(seed: u32, stream: u32, a: u32, b: u32, c: u32) -> u32 {
    var h = pcg_hash(seed ^ 0x9e3779b9u);
    h = pcg_hash(h ^ stream);
    h = pcg_hash(h ^ a);
    h = pcg_hash(h ^ b);
    h = pcg_hash(h ^ c);
    return h;
}

// Uniform in the open interval (0, 1): 24 random bits, centred in their cell.
fn uniform_open(bits: u32) -> f32 {
    return (f32(bits >> 8u) + 0.5) * (1.0 / 16777216.0);
}

// Two independent N(0, 1) draws by Box–Muller from counters (a, b, 2·pair + {0, 1}).
fn normal_pair(seed: u32, stream: u32, a: u32, b: u32, pair: u32) -> vec2<f32> {
    let u1 = uniform_open(rng_bits(seed, stream, a, b, 2u * pair));
    let u2 = uniform_open(rng_bits(seed, stream, a, b, 2u * pair + 1u));
    let r = sqrt(-2.0 * log(u1));
    let th = 6.283185307179586 * u2;
    return vec2<f32>(r * cos(th), r * sin(th));
}

// j-th standard normal of counter (a, b) in stream `stream`.
fn normal_at(seed: u32, stream: u32, a: u32, b: u32, j: u32) -> f32 {
    let pair = normal_pair(seed, stream, a, b, j >> 1u);
    return select(pair.x, pair.y, (j & 1u) == 1u);
}

// RNG streams (STREAM_*) and activation codes (ACT_*) come from the generated preamble
// (src/kernels/codes.rs).
const SELU_LAMBDA: f32 = 1.0507009873554805;
const SELU_ALPHA: f32 = 1.6732632423543772;

fn sigmoid(z: f32) -> f32 {
    // exp of a non-positive argument only: never overflows.
    let e = exp(-abs(z));
    return select(e / (1.0 + e), 1.0 / (1.0 + e), z >= 0.0);
}

fn tanh_stable(z: f32) -> f32 {
    let e = exp(-2.0 * abs(z));
    return sign(z) * (1.0 - e) / (1.0 + e);
}

fn activate(z: f32, act: u32) -> f32 {
    switch act {
        case ACT_RELU: { return max(z, 0.0); }
        case ACT_SILU: { return z * sigmoid(z); }
        case ACT_TANH: { return tanh_stable(z); }
        case ACT_SOFTPLUS: {
            // PyTorch's softplus (beta 1, threshold 20), written without overflow.
            return select(max(z, 0.0) + log(1.0 + exp(-abs(z))), z, z > 20.0);
        }
        case ACT_SELU: { return select(SELU_LAMBDA * SELU_ALPHA * (exp(min(z, 0.0)) - 1.0), SELU_LAMBDA * z, z > 0.0); }
        default: { return z; }
    }
}

// d act / d z at pre-activation z.
fn activate_grad(z: f32, act: u32) -> f32 {
    switch act {
        case ACT_RELU: { return select(0.0, 1.0, z > 0.0); }
        case ACT_SILU: { let s = sigmoid(z); return s * (1.0 + z * (1.0 - s)); }
        case ACT_TANH: { let t = tanh_stable(z); return 1.0 - t * t; }
        case ACT_SOFTPLUS: { return select(sigmoid(z), 1.0, z > 20.0); }
        case ACT_SELU: { return select(SELU_LAMBDA * SELU_ALPHA * exp(min(z, 0.0)), SELU_LAMBDA, z > 0.0); }
        default: { return 1.0; }
    }
}

// Whether act'(z) is a function of h = act(z) (then the backward pass needs only H).
fn grad_from_output(act: u32) -> bool {
    return act == ACT_IDENTITY || act == ACT_RELU || act == ACT_TANH || act == ACT_SELU;
}

// act'(z) from h = act(z), for the activations of grad_from_output: ReLU h > 0 ⇔ z > 0;
// tanh 1 − h²; SELU λ for h > 0, else λα·e^z = h + λα (an absolute error of ~1 ulp of λα,
// 2e-7, where λα·e^z is tiny: relative 1e-3 at z = −10; harmless next to the gradient).
fn activate_grad_from_output4(h: vec4<f32>, act: u32) -> vec4<f32> {
    switch act {
        case ACT_RELU: { return select(vec4<f32>(0.0), vec4<f32>(1.0), h > vec4<f32>(0.0)); }
        case ACT_TANH: { return 1.0 - h * h; }
        case ACT_SELU: { return select(h + SELU_LAMBDA * SELU_ALPHA, vec4<f32>(SELU_LAMBDA), h > vec4<f32>(0.0)); }
        default: { return vec4<f32>(1.0); }
    }
}

// d² act / dz² (the gradient of a divergence goes through act'(z)).
fn activate_grad2(z: f32, act: u32) -> f32 {
    switch act {
        case ACT_SILU: { let s = sigmoid(z); return s * (1.0 - s) * (2.0 + z * (1.0 - 2.0 * s)); }
        case ACT_TANH: { let t = tanh_stable(z); return -2.0 * t * (1.0 - t * t); }
        case ACT_SOFTPLUS: { let s = sigmoid(z); return select(s * (1.0 - s), 0.0, z > 20.0); }
        case ACT_SELU: { return select(SELU_LAMBDA * SELU_ALPHA * exp(min(z, 0.0)), 0.0, z > 0.0); }
        default: { return 0.0; }
    }
}

fn activate4(z: vec4<f32>, act: u32) -> vec4<f32> {
    if (act == ACT_IDENTITY) { return z; }
    return vec4<f32>(activate(z.x, act), activate(z.y, act), activate(z.z, act), activate(z.w, act));
}

fn activate_grad4(z: vec4<f32>, act: u32) -> vec4<f32> {
    if (act == ACT_IDENTITY) { return vec4<f32>(1.0); }
    return vec4<f32>(activate_grad(z.x, act), activate_grad(z.y, act), activate_grad(z.z, act), activate_grad(z.w, act));
}

// Time input column c of the MLP: c = 0 is t itself; then pairs
// sin(2^f·π·t), cos(2^f·π·t) for f = 0, 1, ... (optional Fourier features).
fn time_feature(c: u32, t: f32) -> f32 {
    if (c == 0u) { return t; }
    let f = (c - 1u) >> 1u;
    let w = 3.141592653589793 * f32(1u << f) * t;
    return select(sin(w), cos(w), ((c - 1u) & 1u) == 1u);
}

// Flat index of a 1-D kernel launched on a 2-D grid of WG1-thread workgroups
// (one dimension caps at 65535 workgroups).
fn flat_index(gid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return gid.x + gid.y * nwg.x * WG1;
}

// (a·w0, a·w1, a·w2, a·w3): a vec4 of inputs against four rows of W (forward, 4 outputs).
fn dot4(a: vec4<f32>, w0: vec4<f32>, w1: vec4<f32>, w2: vec4<f32>, w3: vec4<f32>) -> vec4<f32> {
    return vec4<f32>(dot(a, w0), dot(a, w1), dot(a, w2), dot(a, w3));
}

// a.x·w0 + a.y·w1 + a.z·w2 + a.w·w3: a vec4 of dZ against four rows of W (input gradient).
fn mix4(a: vec4<f32>, w0: vec4<f32>, w1: vec4<f32>, w2: vec4<f32>, w3: vec4<f32>) -> vec4<f32> {
    return a.x * w0 + a.y * w1 + a.z * w2 + a.w * w3;
}
