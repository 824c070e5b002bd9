// mlp_backward.wgsl — backward pass of one linear layer Z = X·Wᵀ + b, given dZ:
//   backward_input:   dX = dZ·W, times act'(Z_below) in the epilogue, so the result is
//                     directly dZ of the layer below (identity act at the input layer: dX).
//   backward_weight:  dW = dZᵀ·X and db = Σ_rows dZ over one chunk of rows; each chunk
//                     writes its own partial sums (or the gradient itself when there is
//                     one chunk) — no float atomics, so the reduction is deterministic.
//   reduce_chunks:    gradient = Σ_chunks partial, in a fixed order.
// Layouts as in matmul.wgsl: rows padded to vec4 along features, W [out, in_padded].
// Host wrapper: src/kernels/mlp_backward.rs.

struct BackwardParams {
    rows: u32,          // batch rows M
    out_features: u32,  // N
    out_vec4: u32,      // padded N / 4 (row stride of dZ in vec4s)
    in_vec4: u32,       // padded K / 4 (row stride of X, Z_below, dX in vec4s)
    w_off4: u32,        // offset of W in params/grads, in vec4s
    activation: u32,    // activation of the layer below (for act'(Z_below))
    chunk_rows: u32,    // rows per partial-sum chunk
    n_chunks: u32,      // number of chunks (1: write the gradient directly)
    layer_size: u32,    // floats in this layer's slice: W (N·in_padded) then b (padded N)
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> p: BackwardParams;
@group(0) @binding(1) var<storage, read> dz: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> params: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> z_below: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read_write> dx: array<vec4<f32>>;
@group(0) @binding(5) var<storage, read> x_in: array<vec4<f32>>;
@group(0) @binding(6) var<storage, read_write> partial: array<f32>;
@group(0) @binding(7) var<storage, read_write> grads: array<f32>;

// One thread: TM rows × TKV vec4 columns of dX.
@compute @workgroup_size(WG_X, WG_Y, 1)
fn backward_input(@builtin(global_invocation_id) gid: vec3<u32>) {
    let kv0 = gid.x * TKV;
    let m0 = gid.y * TM;
    if (kv0 >= p.in_vec4 || m0 >= p.rows) {
        return;
    }
    let last_row = p.rows - 1u;
    let last_n = p.out_features - 1u;
    let last_kv = p.in_vec4 - 1u;
    var acc: array<vec4<f32>, TM * TKV>;
    for (var n4 = 0u; n4 < p.out_vec4; n4++) {
        var a: array<vec4<f32>, TM>;
        for (var i = 0u; i < TM; i++) {
            a[i] = dz[min(m0 + i, last_row) * p.out_vec4 + n4];
        }
        // Rows of W past N are clamped: dZ's padding columns are zero, so they add 0.
        let r0 = p.w_off4 + min(4u * n4, last_n) * p.in_vec4;
        let r1 = p.w_off4 + min(4u * n4 + 1u, last_n) * p.in_vec4;
        let r2 = p.w_off4 + min(4u * n4 + 2u, last_n) * p.in_vec4;
        let r3 = p.w_off4 + min(4u * n4 + 3u, last_n) * p.in_vec4;
        for (var j = 0u; j < TKV; j++) {
            let kv = min(kv0 + j, last_kv);
            let w0 = params[r0 + kv];
            let w1 = params[r1 + kv];
            let w2 = params[r2 + kv];
            let w3 = params[r3 + kv];
            for (var i = 0u; i < TM; i++) {
                acc[i * TKV + j] += a[i].x * w0 + a[i].y * w1 + a[i].z * w2 + a[i].w * w3;
            }
        }
    }
    for (var i = 0u; i < TM; i++) {
        let m = m0 + i;
        if (m >= p.rows) {
            break;
        }
        for (var j = 0u; j < TKV; j++) {
            let kv = kv0 + j;
            if (kv >= p.in_vec4) {
                break;
            }
            let o = m * p.in_vec4 + kv;
            var g = acc[i * TKV + j];
            if (p.activation != ACT_IDENTITY) {
                g *= activate_grad4(z_below[o], p.activation);
            }
            dx[o] = g;
        }
    }
}

fn store_weight_grad(chunk: u32, local: u32, v: f32) {
    if (p.n_chunks == 1u) {
        grads[4u * p.w_off4 + local] = v;
    } else {
        partial[chunk * p.layer_size + local] = v;
    }
}

// One thread: 4·TNV output rows × TKV vec4 input columns of dW, over one chunk of rows.
@compute @workgroup_size(WG_X, WG_Y, 1)
fn backward_weight(@builtin(global_invocation_id) gid: vec3<u32>) {
    let kv0 = gid.x * TKV;
    let nv0 = gid.y * TNV;
    let chunk = gid.z;
    if (kv0 >= p.in_vec4 || nv0 >= p.out_vec4) {
        return;
    }
    let last_kv = p.in_vec4 - 1u;
    let last_nv = p.out_vec4 - 1u;
    let m_begin = chunk * p.chunk_rows;
    let m_end = min(m_begin + p.chunk_rows, p.rows);
    var acc: array<vec4<f32>, 4u * TNV * TKV>;
    var bacc: array<vec4<f32>, TNV>;
    for (var m = m_begin; m < m_end; m++) {
        var d: array<vec4<f32>, TNV>;
        for (var a = 0u; a < TNV; a++) {
            d[a] = dz[m * p.out_vec4 + min(nv0 + a, last_nv)];
            bacc[a] += d[a];
        }
        for (var j = 0u; j < TKV; j++) {
            let xv = x_in[m * p.in_vec4 + min(kv0 + j, last_kv)];
            for (var a = 0u; a < TNV; a++) {
                let base = (4u * a) * TKV + j;
                acc[base] += d[a].x * xv;
                acc[base + TKV] += d[a].y * xv;
                acc[base + 2u * TKV] += d[a].z * xv;
                acc[base + 3u * TKV] += d[a].w * xv;
            }
        }
    }
    let in_floats = 4u * p.in_vec4;
    for (var a = 0u; a < TNV; a++) {
        for (var r = 0u; r < 4u; r++) {
            let n = 4u * (nv0 + a) + r;
            if (n >= p.out_features) {
                break;
            }
            for (var j = 0u; j < TKV; j++) {
                let kv = kv0 + j;
                if (kv >= p.in_vec4) {
                    break;
                }
                let g = acc[(4u * a + r) * TKV + j];
                let local = n * in_floats + 4u * kv;
                store_weight_grad(chunk, local, g.x);
                store_weight_grad(chunk, local + 1u, g.y);
                store_weight_grad(chunk, local + 2u, g.z);
                store_weight_grad(chunk, local + 3u, g.w);
            }
            if (gid.x == 0u) {
                store_weight_grad(chunk, p.out_features * in_floats + n, bacc[a][r]);
            }
        }
    }
}

@compute @workgroup_size(WG1, 1, 1)
fn reduce_chunks(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let e = flat_index(gid, nwg);
    if (e >= p.layer_size) {
        return;
    }
    var s = 0.0;
    for (var c = 0u; c < p.n_chunks; c++) {
        s += partial[c * p.layer_size + e];
    }
    grads[4u * p.w_off4 + e] = s;
}
