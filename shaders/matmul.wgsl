// matmul.wgsl — batched linear layer forward with a fused epilogue:
//   Z = X·Wᵀ + b,  H = act(Z)
// X is [rows, in] row-major, W is [out, in] (PyTorch nn.Linear layout), both padded
// to a multiple of 4 along `in` so every load is a vec4 along the contraction.
// Register blocking: each thread owns a TM×TN tile of outputs (TM rows of the batch,
// TN output features) and reads X and W straight from memory, no workgroup memory:
// on software adapters loads dominate, and this reuses each loaded vec4 TN or TM times.
// Host wrapper: src/kernels/matmul.rs.

struct LinearParams {
    rows: u32,          // batch rows M
    out_features: u32,  // N
    in_vec4: u32,       // padded input features / 4 (= row stride of X and W in vec4s)
    y_stride: u32,      // row stride of Z and H in floats (a multiple of 4)
    w_off4: u32,        // offset of W in the parameter buffer, in vec4s
    b_off: u32,         // offset of b in the parameter buffer, in floats
    activation: u32,    // ACT_* code
    store_pre: u32,     // 1: also store Z (backward needs it), 0: inference
}

@group(0) @binding(0) var<uniform> p: LinearParams;
@group(0) @binding(1) var<storage, read> x: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> params: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read_write> z: array<f32>;
@group(0) @binding(4) var<storage, read_write> h: array<f32>;

fn bias_at(n: u32) -> f32 {
    let i = p.b_off + n;
    return params[i >> 2u][i & 3u];
}

@compute @workgroup_size(WG_X, WG_Y, 1)
fn linear_forward(@builtin(global_invocation_id) gid: vec3<u32>) {
    let n0 = gid.x * TN;
    let m0 = gid.y * TM;
    if (n0 >= p.out_features || m0 >= p.rows) {
        return;
    }
    let last_row = p.rows - 1u;
    let last_col = p.out_features - 1u;
    var acc: array<f32, TM * TN>;
    for (var k = 0u; k < p.in_vec4; k++) {
        // Out-of-range rows/columns are clamped (valid loads) and masked at the store.
        var xv: array<vec4<f32>, TM>;
        for (var i = 0u; i < TM; i++) {
            xv[i] = x[min(m0 + i, last_row) * p.in_vec4 + k];
        }
        for (var j = 0u; j < TN; j++) {
            let w = params[p.w_off4 + min(n0 + j, last_col) * p.in_vec4 + k];
            for (var i = 0u; i < TM; i++) {
                acc[i * TN + j] += dot(xv[i], w);
            }
        }
    }
    for (var j = 0u; j < TN; j++) {
        let n = n0 + j;
        if (n >= p.out_features) {
            break;
        }
        let b = bias_at(n);
        for (var i = 0u; i < TM; i++) {
            let m = m0 + i;
            if (m >= p.rows) {
                break;
            }
            let zv = acc[i * TN + j] + b;
            let o = m * p.y_stride + n;
            if (p.store_pre != 0u) {
                z[o] = zv;
            }
            h[o] = activate(zv, p.activation);
        }
    }
}
