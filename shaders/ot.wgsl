// ot.wgsl — minibatch optimal-transport coupling (Tong et al. 2023; Pooladian et al. 2023):
// entropic OT between the batch's source points x0 and data points x1 by log-domain
// Sinkhorn, then a data partner drawn for every source point from its row of the plan.
//   ot_draw:      the batch's x0 and x1 (the same counters as cfm_prepare), into buffers.
//   ot_scale:     ε = reg · mean cost (one workgroup), so reg is scale-free.
//   sinkhorn_f:   f_i = −ε·log B − ε·LSE_j((g_j − C_ij)/ε), one thread per row.
//   sinkhorn_g:   g_j = −ε·log B − ε·LSE_i((f_i − C_ij)/ε), one thread per column.
//   sample_pairs: j(i) ~ π_ij ∝ exp((f_i + g_j − C_ij)/ε), by inverse CDF.
// C_ij = ‖x0_i − x1_j‖² is recomputed on the fly: no B×B matrix in memory.
// Host wrapper: src/kernels/ot.rs; couplings: src/train.rs.

struct OtParams {
    batch: u32,
    dim: u32,
    n_data: u32,
    n_source: u32,      // 0: x0 ~ N(0, I)
    seed: u32,
    step: u32,
    reg: f32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> p: OtParams;
@group(0) @binding(1) var<storage, read> data: array<f32>;
@group(0) @binding(2) var<storage, read> source: array<f32>;
@group(0) @binding(3) var<storage, read_write> x0: array<f32>;
@group(0) @binding(4) var<storage, read_write> x1: array<f32>;
@group(0) @binding(5) var<storage, read_write> f: array<f32>;
@group(0) @binding(6) var<storage, read_write> g: array<f32>;
@group(0) @binding(7) var<storage, read_write> pairs: array<u32>;
// eps[0] = ε (written by ot_scale).
@group(0) @binding(8) var<storage, read_write> eps: array<f32>;


fn cost(i: u32, j: u32) -> f32 {
    var c = 0.0;
    for (var k = 0u; k < p.dim; k++) {
        let d = x0[i * p.dim + k] - x1[j * p.dim + k];
        c += d * d;
    }
    return c;
}

@compute @workgroup_size(WG1, 1, 1)
fn ot_draw(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_index(gid, nwg);
    if (i >= p.batch) {
        return;
    }
    // As cfm_prepare: data row by STREAM_INDEX counter 0, source row by counter 1.
    let idx = rng_bits(p.seed, STREAM_INDEX, p.step, i, 0u) % p.n_data;
    let src = rng_bits(p.seed, STREAM_INDEX, p.step, i, 1u) % max(p.n_source, 1u);
    for (var k = 0u; k < p.dim; k++) {
        x1[i * p.dim + k] = data[idx * p.dim + k];
        if (p.n_source == 0u) {
            x0[i * p.dim + k] = normal_at(p.seed, STREAM_NOISE, p.step, i, k);
        } else {
            x0[i * p.dim + k] = source[src * p.dim + k];
        }
    }
    f[i] = 0.0;
    g[i] = 0.0;
}

var<workgroup> red_s: array<f32, WG1>;

@compute @workgroup_size(WG1, 1, 1)
fn ot_scale(@builtin(local_invocation_id) lid: vec3<u32>) {
    var s = 0.0;
    let n = p.batch * p.batch;
    for (var e = lid.x; e < n; e += WG1) {
        s += cost(e / p.batch, e % p.batch);
    }
    red_s[lid.x] = s;
    workgroupBarrier();
    for (var w = WG1 / 2u; w > 0u; w >>= 1u) {
        if (lid.x < w) {
            red_s[lid.x] += red_s[lid.x + w];
        }
        workgroupBarrier();
    }
    if (lid.x == 0u) {
        eps[0] = max(p.reg * red_s[0] / f32(n), 1e-12);
    }
}

// One thread per row: a serial online log-sum-exp over the B columns.
// A workgroup per row with a barrier tree measured 6× slower on lavapipe, where every barrier
// switches all invocations of the workgroup. Small workgroups spread B rows over the cores.
const OT_WG: u32 = WG_X * WG_Y;

fn ot_index(gid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return gid.x + gid.y * nwg.x * OT_WG;
}

@compute @workgroup_size(OT_WG, 1, 1)
fn sinkhorn_f(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = ot_index(gid, nwg);
    if (i >= p.batch) {
        return;
    }
    let e = eps[0];
    var m = -3.0e38;
    var s = 0.0;
    for (var j = 0u; j < p.batch; j++) {
        let v = (g[j] - cost(i, j)) / e;
        let mm = max(m, v);
        s = s * exp(m - mm) + exp(v - mm);
        m = mm;
    }
    f[i] = -e * log(f32(p.batch)) - e * (m + log(s));
}

@compute @workgroup_size(OT_WG, 1, 1)
fn sinkhorn_g(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let j = ot_index(gid, nwg);
    if (j >= p.batch) {
        return;
    }
    let e = eps[0];
    var m = -3.0e38;
    var s = 0.0;
    for (var i = 0u; i < p.batch; i++) {
        let v = (f[i] - cost(i, j)) / e;
        let mm = max(m, v);
        s = s * exp(m - mm) + exp(v - mm);
        m = mm;
    }
    g[j] = -e * log(f32(p.batch)) - e * (m + log(s));
}

@compute @workgroup_size(OT_WG, 1, 1)
fn sample_pairs(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = ot_index(gid, nwg);
    if (i >= p.batch) {
        return;
    }
    let e = eps[0];
    var m = -3.0e38;
    for (var j = 0u; j < p.batch; j++) {
        m = max(m, (g[j] - cost(i, j)) / e);
    }
    var total = 0.0;
    for (var j = 0u; j < p.batch; j++) {
        total += exp((g[j] - cost(i, j)) / e - m);
    }
    let u = uniform_open(rng_bits(p.seed, STREAM_COUPLING, p.step, i, 0u)) * total;
    var acc = 0.0;
    var pick = p.batch - 1u;
    for (var j = 0u; j < p.batch; j++) {
        acc += exp((g[j] - cost(i, j)) / e - m);
        if (acc >= u) {
            pick = j;
            break;
        }
    }
    pairs[i] = pick;
}
