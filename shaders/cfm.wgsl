// cfm.wgsl — the per-sample conditional-flow-matching step for a Gaussian path
//   x_t = γ_t·x1 + σ_t·ε,   target u_t = γ̇_t·x1 + σ̇_t·ε,
// with x1 drawn from the data pool, ε ~ N(0, I) and t ~ U[0, 1] from the counter RNG
// (no host work per step), then the squared error, its gradient and the batch loss.
//   cfm_prepare: builds the MLP input rows [x_t, time features] and the targets.
//   cfm_loss:    per-sample MSE and dL/dv for L = mean over batch and dims.
//   loss_reduce: one workgroup sums the per-sample losses in a fixed order into the
//                loss history slot of this step (the host reads it every K steps).
// Host wrapper: src/kernels/cfm.rs; paths: src/path.rs.

struct CfmParams {
    batch: u32,
    dim: u32,
    n_data: u32,
    in_stride: u32,     // MLP input row stride in floats
    out_stride: u32,    // MLP output (and target, gradient) row stride in floats
    time_cols: u32,     // number of time input columns (1 + 2·Fourier features)
    path: u32,          // PATH_* code
    sigma_min: f32,
    seed: u32,
    step: u32,          // training step: keys the RNG, so each step draws fresh numbers
    loss_slot: u32,     // index into the loss history
    _pad: u32,
}

@group(0) @binding(0) var<uniform> p: CfmParams;
@group(0) @binding(1) var<storage, read> data: array<f32>;
@group(0) @binding(2) var<storage, read_write> input: array<f32>;
@group(0) @binding(3) var<storage, read_write> target_u: array<f32>;
@group(0) @binding(4) var<storage, read> v: array<f32>;
@group(0) @binding(5) var<storage, read_write> grad_v: array<f32>;
@group(0) @binding(6) var<storage, read_write> sample_loss: array<f32>;
@group(0) @binding(7) var<storage, read_write> loss_history: array<f32>;

const PATH_OT: u32 = 0u;
const PATH_VP: u32 = 1u;
const HALF_PI: f32 = 1.5707963267948966;

// (γ_t, σ_t, γ̇_t, σ̇_t) of the path.
fn schedule(t: f32) -> vec4<f32> {
    if (p.path == PATH_VP) {
        let c = cos(HALF_PI * t);
        let s = sin(HALF_PI * t);
        return vec4<f32>(s, c, HALF_PI * c, -HALF_PI * s);
    }
    let k = 1.0 - p.sigma_min;
    return vec4<f32>(t, 1.0 - k * t, 1.0, -k);
}

@compute @workgroup_size(WG1, 1, 1)
fn cfm_prepare(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_index(gid, nwg);
    if (i >= p.batch) {
        return;
    }
    let idx = rng_bits(p.seed, STREAM_INDEX, p.step, i, 0u) % p.n_data;
    let t = uniform_open(rng_bits(p.seed, STREAM_TIME, p.step, i, 0u));
    let s = schedule(t);
    let row_in = i * p.in_stride;
    let row_out = i * p.out_stride;
    for (var j = 0u; j < p.dim; j++) {
        let x1 = data[idx * p.dim + j];
        let eps = normal_at(p.seed, STREAM_NOISE, p.step, i, j);
        input[row_in + j] = s.x * x1 + s.y * eps;
        target_u[row_out + j] = s.z * x1 + s.w * eps;
    }
    for (var c = 0u; c < p.time_cols; c++) {
        input[row_in + p.dim + c] = time_feature(c, t);
    }
}

@compute @workgroup_size(WG1, 1, 1)
fn cfm_loss(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_index(gid, nwg);
    if (i >= p.batch) {
        return;
    }
    let row = i * p.out_stride;
    let scale = 2.0 / f32(p.batch * p.dim);
    var se = 0.0;
    for (var j = 0u; j < p.dim; j++) {
        let d = v[row + j] - target_u[row + j];
        se += d * d;
        grad_v[row + j] = scale * d;
    }
    sample_loss[i] = se / f32(p.dim);
}

var<workgroup> partial_sum: array<f32, WG1>;

@compute @workgroup_size(WG1, 1, 1)
fn loss_reduce(@builtin(local_invocation_id) lid: vec3<u32>) {
    var s = 0.0;
    for (var i = lid.x; i < p.batch; i += WG1) {
        s += sample_loss[i];
    }
    partial_sum[lid.x] = s;
    workgroupBarrier();
    for (var w = WG1 / 2u; w > 0u; w >>= 1u) {
        if (lid.x < w) {
            partial_sum[lid.x] += partial_sum[lid.x + w];
        }
        workgroupBarrier();
    }
    if (lid.x == 0u) {
        loss_history[p.loss_slot] = partial_sum[0] / f32(p.batch);
    }
}
