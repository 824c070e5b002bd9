// matmul.wgsl — batched linear layer forward with a fused epilogue:
//   linear_forward:  Z = X·Wᵀ + b,  H = act(Z)
//   linear_jvp:      the same for the N primal rows, and for each of T tangent directions
//                    (rows stacked after the primal ones: row (1 + m)·N + i is direction
//                    m of primal row i) the forward-mode derivative Ż = Ẋ·Wᵀ,
//                    Ḣ = act'(Z) ⊙ Ż, with Z kept in registers: one dispatch per layer
//                    for a JVP, and the backward pass (mlp_backward.wgsl) then runs over
//                    primal and tangent rows together. linear_jvp repeats linear_forward's
//                    primal tile on purpose: one kernel for both (T = 0 for plain rows)
//                    measured 3× slower on plain SGEMM on lavapipe (2.9 vs 10.7 GFLOP/s
//                    at 4096×512×512), the tangent loop costing the primal tile its registers.
// X is [rows, in] row-major, W is [out, in] (PyTorch nn.Linear layout), both padded
// to a multiple of 4 along `in` so every load is a vec4 along the contraction.
// Register blocking: each thread owns an 8×4 tile of outputs (8 batch rows, 4 output
// features) held in eight vec4 variables, and reads X and W straight from memory, no
// workgroup memory: each loaded vec4 of W serves 8 rows, each of X 4 features. The tile
// is written out without arrays on purpose: local arrays indexed in loops compile to
// memory on software adapters (measured 2× slower on lavapipe).
// Host wrapper: src/kernels/matmul.rs.

struct LinearParams {
    rows: u32,          // batch rows M
    out_features: u32,  // N
    in_vec4: u32,       // padded input features / 4 (= row stride of X and W in vec4s)
    y_stride: u32,      // row stride of Z and H in floats (a multiple of 4)
    w_off4: u32,        // offset of W in the parameter buffer, in vec4s
    b_off: u32,         // offset of b in the parameter buffer, in floats
    activation: u32,    // ACT_* code
    store_pre: u32,     // 1: also store Z (and Ż) for the backward pass, 0: inference
    tangents: u32,      // linear_jvp: tangent directions stacked after the N primal rows
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

// Outputs per thread (mirrored in src/kernels/matmul.rs).
const TILE_ROWS: u32 = 8u;
const TILE_COLS: u32 = 4u;

@group(0) @binding(0) var<uniform> p: LinearParams;
@group(0) @binding(1) var<storage, read> x: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> params: array<vec4<f32>>;
// Z and H as vec4s: the epilogues store whole vec4s (4 scalar stores cost ~4× one vec4
// store on lavapipe, where each is a scatter), with zeros in the padding features past N.
@group(0) @binding(3) var<storage, read_write> z: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read_write> h: array<vec4<f32>>;

// b[n0 .. n0 + 4): b_off and n0 are multiples of 4 and b's padding is zero.
fn bias4(n0: u32) -> vec4<f32> {
    return params[(p.b_off + n0) >> 2u];
}

// Which of the 4 features from n0 exist.
fn real4(n0: u32) -> vec4<bool> {
    return vec4<u32>(n0) + vec4<u32>(0u, 1u, 2u, 3u) < vec4<u32>(p.out_features);
}

// Vec4 index of row m, features n0 .. n0 + 4 (y_stride and n0 are multiples of 4).
fn out4(m: u32, n0: u32) -> u32 {
    return (m * p.y_stride + n0) >> 2u;
}

// Z = acc + b and H = act(Z) of row m, features n0 .. n0 + 4; Z is stored if `keep_z`.
fn store_out(m: u32, n0: u32, acc: vec4<f32>, keep_z: bool) {
    if (m >= p.rows || n0 >= p.out_features) {
        return;
    }
    let real = real4(n0);
    let zv = select(vec4<f32>(0.0), acc + bias4(n0), real);
    let o = out4(m, n0);
    if (keep_z) {
        z[o] = zv;
    }
    h[o] = select(vec4<f32>(0.0), activate4(zv, p.activation), real);
}

fn epilogue(m: u32, n0: u32, acc: vec4<f32>) {
    store_out(m, n0, acc, p.store_pre != 0u);
}

@compute @workgroup_size(WG_X, WG_Y, 1)
fn linear_forward(@builtin(global_invocation_id) gid: vec3<u32>) {
    let n0 = gid.x * TILE_COLS;
    let m0 = gid.y * TILE_ROWS;
    if (n0 >= p.out_features || m0 >= p.rows) {
        return;
    }
    let lr = p.rows - 1u;
    let lc = p.out_features - 1u;
    let kv = p.in_vec4;
    let r0 = min(m0, lr) * kv; let r1 = min(m0 + 1u, lr) * kv; let r2 = min(m0 + 2u, lr) * kv; let r3 = min(m0 + 3u, lr) * kv;
    let r4 = min(m0 + 4u, lr) * kv; let r5 = min(m0 + 5u, lr) * kv; let r6 = min(m0 + 6u, lr) * kv; let r7 = min(m0 + 7u, lr) * kv;
    let c0 = p.w_off4 + min(n0, lc) * kv; let c1 = p.w_off4 + min(n0 + 1u, lc) * kv;
    let c2 = p.w_off4 + min(n0 + 2u, lc) * kv; let c3 = p.w_off4 + min(n0 + 3u, lc) * kv;
    var a0 = vec4<f32>(0.0); var a1 = vec4<f32>(0.0); var a2 = vec4<f32>(0.0); var a3 = vec4<f32>(0.0);
    var a4 = vec4<f32>(0.0); var a5 = vec4<f32>(0.0); var a6 = vec4<f32>(0.0); var a7 = vec4<f32>(0.0);
    for (var k = 0u; k < kv; k++) {
        let w0 = params[c0 + k]; let w1 = params[c1 + k]; let w2 = params[c2 + k]; let w3 = params[c3 + k];
        a0 += dot4(x[r0 + k], w0, w1, w2, w3);
        a1 += dot4(x[r1 + k], w0, w1, w2, w3);
        a2 += dot4(x[r2 + k], w0, w1, w2, w3);
        a3 += dot4(x[r3 + k], w0, w1, w2, w3);
        a4 += dot4(x[r4 + k], w0, w1, w2, w3);
        a5 += dot4(x[r5 + k], w0, w1, w2, w3);
        a6 += dot4(x[r6 + k], w0, w1, w2, w3);
        a7 += dot4(x[r7 + k], w0, w1, w2, w3);
    }
    epilogue(m0, n0, a0); epilogue(m0 + 1u, n0, a1); epilogue(m0 + 2u, n0, a2); epilogue(m0 + 3u, n0, a3);
    epilogue(m0 + 4u, n0, a4); epilogue(m0 + 5u, n0, a5); epilogue(m0 + 6u, n0, a6); epilogue(m0 + 7u, n0, a7);
}

// Tangent outputs of direction row `row` (primal row m) from their accumulators and the
// primal Z of the same outputs. W is re-read per direction (from cache).
fn jvp_epilogue(m: u32, row: u32, n0: u32, acc: vec4<f32>, zp: vec4<f32>) {
    if (m >= p.rows || n0 >= p.out_features) {
        return;
    }
    let zt = select(vec4<f32>(0.0), acc, real4(n0));
    let o = out4(row, n0);
    if (p.store_pre != 0u) {
        z[o] = zt;
    }
    h[o] = zt * activate_grad4(zp, p.activation);
}

@compute @workgroup_size(WG_X, WG_Y, 1)
fn linear_jvp(@builtin(global_invocation_id) gid: vec3<u32>) {
    let n0 = gid.x * TILE_COLS;
    let m0 = gid.y * TILE_ROWS;
    if (n0 >= p.out_features || m0 >= p.rows) {
        return;
    }
    let lr = p.rows - 1u;
    let lc = p.out_features - 1u;
    let kv = p.in_vec4;
    let r0 = min(m0, lr) * kv; let r1 = min(m0 + 1u, lr) * kv; let r2 = min(m0 + 2u, lr) * kv; let r3 = min(m0 + 3u, lr) * kv;
    let r4 = min(m0 + 4u, lr) * kv; let r5 = min(m0 + 5u, lr) * kv; let r6 = min(m0 + 6u, lr) * kv; let r7 = min(m0 + 7u, lr) * kv;
    let c0 = p.w_off4 + min(n0, lc) * kv; let c1 = p.w_off4 + min(n0 + 1u, lc) * kv;
    let c2 = p.w_off4 + min(n0 + 2u, lc) * kv; let c3 = p.w_off4 + min(n0 + 3u, lc) * kv;
    // Primal tile.
    var a0 = vec4<f32>(0.0); var a1 = vec4<f32>(0.0); var a2 = vec4<f32>(0.0); var a3 = vec4<f32>(0.0);
    var a4 = vec4<f32>(0.0); var a5 = vec4<f32>(0.0); var a6 = vec4<f32>(0.0); var a7 = vec4<f32>(0.0);
    for (var k = 0u; k < kv; k++) {
        let w0 = params[c0 + k]; let w1 = params[c1 + k]; let w2 = params[c2 + k]; let w3 = params[c3 + k];
        a0 += dot4(x[r0 + k], w0, w1, w2, w3);
        a1 += dot4(x[r1 + k], w0, w1, w2, w3);
        a2 += dot4(x[r2 + k], w0, w1, w2, w3);
        a3 += dot4(x[r3 + k], w0, w1, w2, w3);
        a4 += dot4(x[r4 + k], w0, w1, w2, w3);
        a5 += dot4(x[r5 + k], w0, w1, w2, w3);
        a6 += dot4(x[r6 + k], w0, w1, w2, w3);
        a7 += dot4(x[r7 + k], w0, w1, w2, w3);
    }
    epilogue(m0, n0, a0); epilogue(m0 + 1u, n0, a1); epilogue(m0 + 2u, n0, a2); epilogue(m0 + 3u, n0, a3);
    epilogue(m0 + 4u, n0, a4); epilogue(m0 + 5u, n0, a5); epilogue(m0 + 6u, n0, a6); epilogue(m0 + 7u, n0, a7);
    let b = bias4(n0);
    let z0 = a0 + b; let z1 = a1 + b; let z2 = a2 + b; let z3 = a3 + b;
    let z4 = a4 + b; let z5 = a5 + b; let z6 = a6 + b; let z7 = a7 + b;
    // Tangent tiles, direction by direction.
    for (var t = 1u; t <= p.tangents; t++) {
        let base = t * p.rows;
        let o = base * kv;
        var b0 = vec4<f32>(0.0); var b1 = vec4<f32>(0.0); var b2 = vec4<f32>(0.0); var b3 = vec4<f32>(0.0);
        var b4 = vec4<f32>(0.0); var b5 = vec4<f32>(0.0); var b6 = vec4<f32>(0.0); var b7 = vec4<f32>(0.0);
        for (var k = 0u; k < kv; k++) {
            let w0 = params[c0 + k]; let w1 = params[c1 + k]; let w2 = params[c2 + k]; let w3 = params[c3 + k];
            b0 += dot4(x[o + r0 + k], w0, w1, w2, w3);
            b1 += dot4(x[o + r1 + k], w0, w1, w2, w3);
            b2 += dot4(x[o + r2 + k], w0, w1, w2, w3);
            b3 += dot4(x[o + r3 + k], w0, w1, w2, w3);
            b4 += dot4(x[o + r4 + k], w0, w1, w2, w3);
            b5 += dot4(x[o + r5 + k], w0, w1, w2, w3);
            b6 += dot4(x[o + r6 + k], w0, w1, w2, w3);
            b7 += dot4(x[o + r7 + k], w0, w1, w2, w3);
        }
        jvp_epilogue(m0, base + m0, n0, b0, z0); jvp_epilogue(m0 + 1u, base + m0 + 1u, n0, b1, z1);
        jvp_epilogue(m0 + 2u, base + m0 + 2u, n0, b2, z2); jvp_epilogue(m0 + 3u, base + m0 + 3u, n0, b3, z3);
        jvp_epilogue(m0 + 4u, base + m0 + 4u, n0, b4, z4); jvp_epilogue(m0 + 5u, base + m0 + 5u, n0, b5, z5);
        jvp_epilogue(m0 + 6u, base + m0 + 6u, n0, b6, z6); jvp_epilogue(m0 + 7u, base + m0 + 7u, n0, b7, z7);
    }
}
