// matmul.wgsl — batched linear layer forward with a fused epilogue:
//   Z = X·Wᵀ + b,  H = act(Z)                      (primal rows)
// and, in tangent mode, forward-mode derivatives (JVPs) of the same layer:
//   Ż = Ẋ·Wᵀ,  Ḣ = act'(Z) ⊙ Ż                      (tangent rows)
// where Z is the primal pre-activation stored by the primal pass over the same layer.
// Rows are stacked in one buffer per layer: the N primal rows first, then T tangent
// directions of N rows each (row (1 + m)·N + i is direction m of primal row i), so T
// directions are one matmul with T·N rows starting at row0 = N, and the backward pass
// (mlp_backward.wgsl) runs over primal and tangent rows together.
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
    store_pre: u32,     // 1: also store Z (backward and tangents need it), 0: inference
    tangent: u32,       // 1: tangent rows (no bias, act'(Z) of the primal row)
    primal_rows: u32,   // N, for tangent rows
    row0: u32,          // first row of X, Z and H this dispatch works on
    _pad1: u32,
}

// Outputs per thread (mirrored in src/kernels/matmul.rs).
const TILE_ROWS: u32 = 8u;
const TILE_COLS: u32 = 4u;

@group(0) @binding(0) var<uniform> p: LinearParams;
@group(0) @binding(1) var<storage, read> x: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> params: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read_write> z: array<f32>;
@group(0) @binding(4) var<storage, read_write> h: array<f32>;

fn bias_at(n: u32) -> f32 {
    let i = p.b_off + n;
    return params[i >> 2u][i & 3u];
}

// m: row within this dispatch (0 ≤ m < rows); its buffer row is row0 + m.
fn epilogue(m: u32, n0: u32, acc: vec4<f32>) {
    if (m >= p.rows) {
        return;
    }
    for (var j = 0u; j < 4u; j++) {
        let n = n0 + j;
        if (n < p.out_features) {
            let o = (p.row0 + m) * p.y_stride + n;
            if (p.tangent != 0u) {
                // The primal rows [0, N) of z were written by the primal dispatch.
                let zp = z[(m % p.primal_rows) * p.y_stride + n];
                if (p.store_pre != 0u) {
                    z[o] = acc[j];
                }
                h[o] = acc[j] * activate_grad(zp, p.activation);
            } else {
                let zv = acc[j] + bias_at(n);
                if (p.store_pre != 0u) {
                    z[o] = zv;
                }
                h[o] = activate(zv, p.activation);
            }
        }
    }
}

fn dot4(x: vec4<f32>, w0: vec4<f32>, w1: vec4<f32>, w2: vec4<f32>, w3: vec4<f32>) -> vec4<f32> {
    return vec4<f32>(dot(x, w0), dot(x, w1), dot(x, w2), dot(x, w3));
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
    let x0 = p.row0 * kv;
    let r0 = x0 + min(m0, lr) * kv; let r1 = x0 + min(m0 + 1u, lr) * kv; let r2 = x0 + min(m0 + 2u, lr) * kv; let r3 = x0 + min(m0 + 3u, lr) * kv;
    let r4 = x0 + min(m0 + 4u, lr) * kv; let r5 = x0 + min(m0 + 5u, lr) * kv; let r6 = x0 + min(m0 + 6u, lr) * kv; let r7 = x0 + min(m0 + 7u, lr) * kv;
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
