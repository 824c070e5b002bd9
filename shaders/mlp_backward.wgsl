// mlp_backward.wgsl — backward pass of one linear layer Z = X·Wᵀ + b, given dZ:
//   backward_input:   dX = dZ·W, times act'(Z_below) in the epilogue, so the result is
//                     directly dZ of the layer below (identity act at the input layer: dX).
//   backward_weight:  dW = dZᵀ·X and db = Σ_rows dZ over one chunk of rows; each chunk
//                     writes its own partial sums (or the gradient itself when there is
//                     one chunk) — no float atomics, so the reduction is deterministic.
//   reduce_chunks:    gradient = Σ_chunks partial, in a fixed order (one vec4 per thread).
//   backward_input_jvp: with tangent rows stacked after the N primal rows (matmul.wgsl's
//                     linear_jvp), dX = dZ·W of every row, then the activation of the
//                     layer below: tangent rows Ḣ = act'(Z)⊙Ż give dŻ = act'(Z)⊙dḢ, and
//                     the primal row also collects the dependence of act'(Z) on Z:
//                     dZ = act'(Z)⊙dH + act''(Z)⊙Σ_m Ż_m⊙dḢ_m. Each thread owns 8 primal
//                     rows × 1 vec4 and the same rows of every direction, so the Σ_m stays
//                     in registers. This is how the gradient of a divergence (the adjoint
//                     of a CNF) flows back through the JVP, with no float atomics.
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
    bias_rows: u32,     // rows [0, bias_rows) have a bias (primal rows; tangents do not)
    n_tangents: u32,    // backward_input_jvp: tangent directions stacked after the rows
    _pad0: u32,
}

@group(0) @binding(0) var<uniform> p: BackwardParams;
@group(0) @binding(1) var<storage, read> dz: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> params: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> z_below: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read_write> dx: array<vec4<f32>>;
@group(0) @binding(5) var<storage, read> x_in: array<vec4<f32>>;
// Gradients as vec4s: whole-vec4 stores (a scalar store is a scatter on lavapipe). A
// layer's slice (w_off4, layer_size) starts and ends on a vec4.
@group(0) @binding(6) var<storage, read_write> partial: array<vec4<f32>>;
@group(0) @binding(7) var<storage, read_write> grads: array<vec4<f32>>;

// dX tile of one thread: 8 rows × 4 input features (one vec4), in eight vec4 variables.
// dW tile: 8 output features (two vec4 of dZ) × 8 input features (two vec4 of X), in
// sixteen vec4 variables, plus the two vec4 of the bias gradient. Explicit variables, no
// arrays, for the reason given in matmul.wgsl. Mirrored in src/kernels/mlp_backward.rs.
const DX_ROWS: u32 = 8u;
const DW_OUT_VEC4: u32 = 2u;
const DW_IN_VEC4: u32 = 2u;

fn dx_store(m: u32, kv: u32, g: vec4<f32>) {
    if (m >= p.rows) {
        return;
    }
    let o = m * p.in_vec4 + kv;
    if (p.activation != ACT_IDENTITY) {
        dx[o] = g * activate_grad4(z_below[o], p.activation);
    } else {
        dx[o] = g;
    }
}

@compute @workgroup_size(WG_X, WG_Y, 1)
fn backward_input(@builtin(global_invocation_id) gid: vec3<u32>) {
    let kv = gid.x;
    let m0 = gid.y * DX_ROWS;
    if (kv >= p.in_vec4 || m0 >= p.rows) {
        return;
    }
    let lr = p.rows - 1u;
    let ln = p.out_features - 1u;
    let nv = p.out_vec4;
    let r0 = min(m0, lr) * nv; let r1 = min(m0 + 1u, lr) * nv; let r2 = min(m0 + 2u, lr) * nv; let r3 = min(m0 + 3u, lr) * nv;
    let r4 = min(m0 + 4u, lr) * nv; let r5 = min(m0 + 5u, lr) * nv; let r6 = min(m0 + 6u, lr) * nv; let r7 = min(m0 + 7u, lr) * nv;
    var a0 = vec4<f32>(0.0); var a1 = vec4<f32>(0.0); var a2 = vec4<f32>(0.0); var a3 = vec4<f32>(0.0);
    var a4 = vec4<f32>(0.0); var a5 = vec4<f32>(0.0); var a6 = vec4<f32>(0.0); var a7 = vec4<f32>(0.0);
    for (var n4 = 0u; n4 < nv; n4++) {
        // Rows of W past N are clamped: dZ's padding columns are zero, so they add 0.
        let w0 = params[p.w_off4 + min(4u * n4, ln) * p.in_vec4 + kv];
        let w1 = params[p.w_off4 + min(4u * n4 + 1u, ln) * p.in_vec4 + kv];
        let w2 = params[p.w_off4 + min(4u * n4 + 2u, ln) * p.in_vec4 + kv];
        let w3 = params[p.w_off4 + min(4u * n4 + 3u, ln) * p.in_vec4 + kv];
        a0 += mix4(dz[r0 + n4], w0, w1, w2, w3);
        a1 += mix4(dz[r1 + n4], w0, w1, w2, w3);
        a2 += mix4(dz[r2 + n4], w0, w1, w2, w3);
        a3 += mix4(dz[r3 + n4], w0, w1, w2, w3);
        a4 += mix4(dz[r4 + n4], w0, w1, w2, w3);
        a5 += mix4(dz[r5 + n4], w0, w1, w2, w3);
        a6 += mix4(dz[r6 + n4], w0, w1, w2, w3);
        a7 += mix4(dz[r7 + n4], w0, w1, w2, w3);
    }
    dx_store(m0, kv, a0); dx_store(m0 + 1u, kv, a1); dx_store(m0 + 2u, kv, a2); dx_store(m0 + 3u, kv, a3);
    dx_store(m0 + 4u, kv, a4); dx_store(m0 + 5u, kv, a5); dx_store(m0 + 6u, kv, a6); dx_store(m0 + 7u, kv, a7);
}

// Vec4 `local4` of this layer's slice: into the gradient, or chunk's partial sums.
fn store_weight_grad(chunk: u32, local4: u32, v: vec4<f32>) {
    if (p.n_chunks == 1u) {
        grads[p.w_off4 + local4] = v;
    } else {
        partial[chunk * (p.layer_size >> 2u) + local4] = v;
    }
}

// Row n of dW (one output feature), input vec4 column kv, if both exist.
fn dw_store(chunk: u32, n: u32, kv: u32, g: vec4<f32>) {
    if (n >= p.out_features || kv >= p.in_vec4) {
        return;
    }
    store_weight_grad(chunk, n * p.in_vec4 + kv, g);
}

// Bias features 4·nv .. 4·nv + 4, if any exists (zeros in the padding past N).
fn db_store(chunk: u32, nv: u32, g: vec4<f32>) {
    if (4u * nv >= p.out_features) {
        return;
    }
    let real = vec4<u32>(4u * nv) + vec4<u32>(0u, 1u, 2u, 3u) < vec4<u32>(p.out_features);
    store_weight_grad(chunk, p.out_features * p.in_vec4 + nv, select(vec4<f32>(0.0), g, real));
}

@compute @workgroup_size(WG_X, WG_Y, 1)
fn backward_weight(@builtin(global_invocation_id) gid: vec3<u32>) {
    let kv0 = gid.x * DW_IN_VEC4;
    let nv0 = gid.y * DW_OUT_VEC4;
    let chunk = gid.z;
    if (kv0 >= p.in_vec4 || nv0 >= p.out_vec4) {
        return;
    }
    let ka = kv0;
    let kb = min(kv0 + 1u, p.in_vec4 - 1u);
    let na = nv0;
    let nb = min(nv0 + 1u, p.out_vec4 - 1u);
    let m_begin = chunk * p.chunk_rows;
    let m_end = min(m_begin + p.chunk_rows, p.rows);
    // g{r}{a|b}{a|b}: dW rows 4·n-vec + r of n-vec a|b, input vec4 a|b.
    var g0aa = vec4<f32>(0.0); var g1aa = vec4<f32>(0.0); var g2aa = vec4<f32>(0.0); var g3aa = vec4<f32>(0.0);
    var g0ab = vec4<f32>(0.0); var g1ab = vec4<f32>(0.0); var g2ab = vec4<f32>(0.0); var g3ab = vec4<f32>(0.0);
    var g0ba = vec4<f32>(0.0); var g1ba = vec4<f32>(0.0); var g2ba = vec4<f32>(0.0); var g3ba = vec4<f32>(0.0);
    var g0bb = vec4<f32>(0.0); var g1bb = vec4<f32>(0.0); var g2bb = vec4<f32>(0.0); var g3bb = vec4<f32>(0.0);
    var ba = vec4<f32>(0.0);
    var bb = vec4<f32>(0.0);
    for (var m = m_begin; m < m_end; m++) {
        let da = dz[m * p.out_vec4 + na];
        let db = dz[m * p.out_vec4 + nb];
        let xa = x_in[m * p.in_vec4 + ka];
        let xb = x_in[m * p.in_vec4 + kb];
        let with_bias = m < p.bias_rows;
        ba += select(vec4<f32>(0.0), da, with_bias);
        bb += select(vec4<f32>(0.0), db, with_bias);
        g0aa += da.x * xa; g1aa += da.y * xa; g2aa += da.z * xa; g3aa += da.w * xa;
        g0ab += da.x * xb; g1ab += da.y * xb; g2ab += da.z * xb; g3ab += da.w * xb;
        g0ba += db.x * xa; g1ba += db.y * xa; g2ba += db.z * xa; g3ba += db.w * xa;
        g0bb += db.x * xb; g1bb += db.y * xb; g2bb += db.z * xb; g3bb += db.w * xb;
    }
    // Column and row blocks past the end were clamped above: store only real ones.
    let kb_real = kv0 + 1u;
    let nb_real = nv0 + 1u;
    let n_a = 4u * na;
    dw_store(chunk, n_a, ka, g0aa); dw_store(chunk, n_a + 1u, ka, g1aa); dw_store(chunk, n_a + 2u, ka, g2aa); dw_store(chunk, n_a + 3u, ka, g3aa);
    dw_store(chunk, n_a, kb_real, g0ab); dw_store(chunk, n_a + 1u, kb_real, g1ab); dw_store(chunk, n_a + 2u, kb_real, g2ab); dw_store(chunk, n_a + 3u, kb_real, g3ab);
    if (nb_real < p.out_vec4) {
        let n_b = 4u * nb_real;
        dw_store(chunk, n_b, ka, g0ba); dw_store(chunk, n_b + 1u, ka, g1ba); dw_store(chunk, n_b + 2u, ka, g2ba); dw_store(chunk, n_b + 3u, ka, g3ba);
        dw_store(chunk, n_b, kb_real, g0bb); dw_store(chunk, n_b + 1u, kb_real, g1bb); dw_store(chunk, n_b + 2u, kb_real, g2bb); dw_store(chunk, n_b + 3u, kb_real, g3bb);
    }
    if (gid.x == 0u) {
        db_store(chunk, na, ba);
        if (nb_real < p.out_vec4) {
            db_store(chunk, nb_real, bb);
        }
    }
}

@compute @workgroup_size(WG1, 1, 1)
fn reduce_chunks(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let e = flat_index(gid, nwg);
    let n4 = p.layer_size >> 2u;
    if (e >= n4) {
        return;
    }
    var s = vec4<f32>(0.0);
    for (var c = 0u; c < p.n_chunks; c++) {
        s += partial[c * n4 + e];
    }
    grads[p.w_off4 + e] = s;
}

// act'(Z) of primal row m, feature vec4 kv (1 for the identity: no Z is bound then).
fn g1_at(m: u32, kv: u32) -> vec4<f32> {
    if (p.activation == ACT_IDENTITY || m >= p.rows) {
        return vec4<f32>(1.0);
    }
    return activate_grad4(z_below[m * p.in_vec4 + kv], p.activation);
}

// Tangent row t·N + m: writes its dŻ_below = act'(Z)·dḢ and returns the primal row's
// second-order term act''(Z)·Ż·dḢ.
fn jvp_tangent(m: u32, t: u32, kv: u32, b: vec4<f32>) -> vec4<f32> {
    if (m >= p.rows) {
        return vec4<f32>(0.0);
    }
    let o = (t * p.rows + m) * p.in_vec4 + kv;
    if (p.activation == ACT_IDENTITY) {
        dx[o] = b;
        return vec4<f32>(0.0);
    }
    let z = z_below[m * p.in_vec4 + kv];
    let g2 = vec4<f32>(activate_grad2(z.x, p.activation), activate_grad2(z.y, p.activation), activate_grad2(z.z, p.activation), activate_grad2(z.w, p.activation));
    dx[o] = activate_grad4(z, p.activation) * b;
    return g2 * z_below[o] * b;
}

fn jvp_store(m: u32, kv: u32, acc: vec4<f32>) {
    if (m < p.rows) {
        dx[m * p.in_vec4 + kv] = acc;
    }
}

// Tiles as backward_input (8 primal rows × 1 vec4), plus the same rows of every tangent
// direction, W re-read per direction. The tile is repeated rather than shared with
// backward_input for the reason given in matmul.wgsl (one kernel for both cost the plain
// case its registers there); a first version looping one row at a time ran 2.5× slower.
@compute @workgroup_size(WG_X, WG_Y, 1)
fn backward_input_jvp(@builtin(global_invocation_id) gid: vec3<u32>) {
    let kv = gid.x;
    let m0 = gid.y * DX_ROWS;
    if (kv >= p.in_vec4 || m0 >= p.rows) {
        return;
    }
    let lr = p.rows - 1u;
    let ln = p.out_features - 1u;
    let nv = p.out_vec4;
    let r0 = min(m0, lr) * nv; let r1 = min(m0 + 1u, lr) * nv; let r2 = min(m0 + 2u, lr) * nv; let r3 = min(m0 + 3u, lr) * nv;
    let r4 = min(m0 + 4u, lr) * nv; let r5 = min(m0 + 5u, lr) * nv; let r6 = min(m0 + 6u, lr) * nv; let r7 = min(m0 + 7u, lr) * nv;
    var a0 = vec4<f32>(0.0); var a1 = vec4<f32>(0.0); var a2 = vec4<f32>(0.0); var a3 = vec4<f32>(0.0);
    var a4 = vec4<f32>(0.0); var a5 = vec4<f32>(0.0); var a6 = vec4<f32>(0.0); var a7 = vec4<f32>(0.0);
    for (var n4 = 0u; n4 < nv; n4++) {
        let w0 = params[p.w_off4 + min(4u * n4, ln) * p.in_vec4 + kv];
        let w1 = params[p.w_off4 + min(4u * n4 + 1u, ln) * p.in_vec4 + kv];
        let w2 = params[p.w_off4 + min(4u * n4 + 2u, ln) * p.in_vec4 + kv];
        let w3 = params[p.w_off4 + min(4u * n4 + 3u, ln) * p.in_vec4 + kv];
        a0 += mix4(dz[r0 + n4], w0, w1, w2, w3);
        a1 += mix4(dz[r1 + n4], w0, w1, w2, w3);
        a2 += mix4(dz[r2 + n4], w0, w1, w2, w3);
        a3 += mix4(dz[r3 + n4], w0, w1, w2, w3);
        a4 += mix4(dz[r4 + n4], w0, w1, w2, w3);
        a5 += mix4(dz[r5 + n4], w0, w1, w2, w3);
        a6 += mix4(dz[r6 + n4], w0, w1, w2, w3);
        a7 += mix4(dz[r7 + n4], w0, w1, w2, w3);
    }
    a0 *= g1_at(m0, kv); a1 *= g1_at(m0 + 1u, kv); a2 *= g1_at(m0 + 2u, kv); a3 *= g1_at(m0 + 3u, kv);
    a4 *= g1_at(m0 + 4u, kv); a5 *= g1_at(m0 + 5u, kv); a6 *= g1_at(m0 + 6u, kv); a7 *= g1_at(m0 + 7u, kv);
    for (var t = 1u; t <= p.n_tangents; t++) {
        let o = t * p.rows * nv;
        var b0 = vec4<f32>(0.0); var b1 = vec4<f32>(0.0); var b2 = vec4<f32>(0.0); var b3 = vec4<f32>(0.0);
        var b4 = vec4<f32>(0.0); var b5 = vec4<f32>(0.0); var b6 = vec4<f32>(0.0); var b7 = vec4<f32>(0.0);
        for (var n4 = 0u; n4 < nv; n4++) {
            let w0 = params[p.w_off4 + min(4u * n4, ln) * p.in_vec4 + kv];
            let w1 = params[p.w_off4 + min(4u * n4 + 1u, ln) * p.in_vec4 + kv];
            let w2 = params[p.w_off4 + min(4u * n4 + 2u, ln) * p.in_vec4 + kv];
            let w3 = params[p.w_off4 + min(4u * n4 + 3u, ln) * p.in_vec4 + kv];
            b0 += mix4(dz[o + r0 + n4], w0, w1, w2, w3);
            b1 += mix4(dz[o + r1 + n4], w0, w1, w2, w3);
            b2 += mix4(dz[o + r2 + n4], w0, w1, w2, w3);
            b3 += mix4(dz[o + r3 + n4], w0, w1, w2, w3);
            b4 += mix4(dz[o + r4 + n4], w0, w1, w2, w3);
            b5 += mix4(dz[o + r5 + n4], w0, w1, w2, w3);
            b6 += mix4(dz[o + r6 + n4], w0, w1, w2, w3);
            b7 += mix4(dz[o + r7 + n4], w0, w1, w2, w3);
        }
        a0 += jvp_tangent(m0, t, kv, b0); a1 += jvp_tangent(m0 + 1u, t, kv, b1);
        a2 += jvp_tangent(m0 + 2u, t, kv, b2); a3 += jvp_tangent(m0 + 3u, t, kv, b3);
        a4 += jvp_tangent(m0 + 4u, t, kv, b4); a5 += jvp_tangent(m0 + 5u, t, kv, b5);
        a6 += jvp_tangent(m0 + 6u, t, kv, b6); a7 += jvp_tangent(m0 + 7u, t, kv, b7);
    }
    jvp_store(m0, kv, a0); jvp_store(m0 + 1u, kv, a1); jvp_store(m0 + 2u, kv, a2); jvp_store(m0 + 3u, kv, a3);
    jvp_store(m0 + 4u, kv, a4); jvp_store(m0 + 5u, kv, a5); jvp_store(m0 + 6u, kv, a6); jvp_store(m0 + 7u, kv, a7);
}
