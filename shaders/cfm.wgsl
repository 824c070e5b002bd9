// cfm.wgsl — the per-sample conditional-flow-matching step for a conditional path
//   x_t = a_t·x1 + b_t·x0 + c_t·ε,   target u_t = ȧ_t·x1 + ḃ_t·x0 + ċ_t·ε,
// with x1 drawn from the data pool, x0 from the source (N(0, I), or a source pool),
// ε ~ N(0, I) extra noise and t ~ U(0, 1), all from the counter RNG (no host work per
// step), then the squared error, its gradient and the batch loss.
//   cfm_prepare: builds the MLP input rows [x_t, time features] and the targets (one
//                thread per row, `prepare_row`, which cfm_step_subgroup.wgsl calls too).
//   cfm_loss:    per-sample MSE and dL/dv for L = mean over batch and dims, and the batch
//                loss into the history slot of this step (the host reads it every K
//                steps): one workgroup, so the step needs no separate reduction dispatch.
//   loss_reduce: the batch mean of per-sample losses written by another kernel (MLE).
// Both sum in a fixed order: every thread its rows, then thread 0 the threads' sums.
// Host wrapper: src/kernels/cfm.rs; paths: src/path.rs.

struct CfmParams {
    batch: u32,
    dim: u32,
    n_data: u32,
    in_stride: u32,     // MLP input row stride in floats
    out_stride: u32,    // MLP output (and target, gradient) row stride in floats
    time_cols: u32,     // number of time input columns (1 + 2·Fourier features)
    path: u32,          // PATH_* code
    path_param: f32,    // σ_min (ot, ve-sde), exponent (poly), σ (icfm, sb), β_min (vp-sde)
    seed: u32,
    step: u32,          // training step: keys the RNG, so each step draws fresh numbers
    loss_slot: u32,     // index into the loss history
    n_source: u32,      // 0: x0 ~ N(0, I); else rows in the source pool
    paired: u32,        // 1: source row i is coupled with data row i (a given coupling)
    n_classes: u32,     // class-conditional models: one-hot columns after the time features
    label_dropout: f32, // probability of training a row unconditionally (all-zero one-hot)
    coupled: u32,       // 1: row i's data partner is batch row pairs[i] (minibatch OT)
    path_param2: f32,   // β_max (vp-sde), σ_max (ve-sde)
    predict: u32,       // PREDICT_*: what the network's output is trained to be
    row0: u32,          // global batch row of local row 0 (data-parallel shares): keys the RNG
    mean_rows: u32,     // rows the loss and its gradient average over (the whole batch)
}

@group(0) @binding(0) var<uniform> p: CfmParams;
@group(0) @binding(1) var<storage, read> data: array<f32>;
@group(0) @binding(2) var<storage, read_write> input: array<f32>;
@group(0) @binding(3) var<storage, read_write> target_u: array<f32>;
@group(0) @binding(4) var<storage, read> v: array<f32>;
@group(0) @binding(5) var<storage, read_write> grad_v: array<f32>;
@group(0) @binding(6) var<storage, read_write> sample_loss: array<f32>;
@group(0) @binding(7) var<storage, read_write> loss_history: array<f32>;
@group(0) @binding(8) var<storage, read> source: array<f32>;
@group(0) @binding(9) var<storage, read> labels: array<u32>;
@group(0) @binding(10) var<storage, read> pairs: array<u32>;

// Path coefficients at t (path.wgsl).
fn schedule(t: f32) -> Coefs {
    return path_coefs(p.path, p.path_param, p.path_param2, t);
}

@compute @workgroup_size(WG1, 1, 1)
fn cfm_prepare(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_index(gid, nwg);
    if (i < p.batch) {
        prepare_row(i);
    }
}

// The regression target of the network's output (a score network is trained on b·ŝ
// against −x0, i.e. with Song et al.'s weight b², see output_weight).
fn target_of(s: Coefs, x1: f32, x0: f32, eps: f32) -> f32 {
    switch p.predict {
        case PREDICT_NOISE: { return x0; }
        case PREDICT_DATA: { return x1; }
        case PREDICT_SCORE: { return -x0; }
        default: { return s.da * x1 + s.db * x0 + s.dc * eps; }
    }
}

// The factor on row i's output in its loss |w·o − target|²: b(t) for a score network,
// else 1 (t is redrawn from the same counter as prepare_row's).
fn output_weight(i: u32) -> f32 {
    if (p.predict != PREDICT_SCORE) {
        return 1.0;
    }
    let t = uniform_open(rng_bits(p.seed, STREAM_TIME, p.step, p.row0 + i, 0u));
    return schedule(t).b;
}

// Input row i ([x_t, time features, one-hot]) and its target (also cfm_step_subgroup.wgsl's).
// Its random numbers are keyed by the global row g = row0 + i, so a batch split over
// adapters draws exactly the rows of the whole batch.
fn prepare_row(i: u32) {
    let g = p.row0 + i;
    // The data row: this row's own draw, or (coupled) the draw of its OT partner row.
    var partner = g;
    if (p.coupled != 0u) {
        partner = pairs[i];
    }
    let idx = rng_bits(p.seed, STREAM_INDEX, p.step, partner, 0u) % p.n_data;
    let t = uniform_open(rng_bits(p.seed, STREAM_TIME, p.step, g, 0u));
    let s = schedule(t);
    // The source row: its own random index (independent coupling), or the data row's
    // (paired coupling).
    var src = rng_bits(p.seed, STREAM_INDEX, p.step, g, 1u) % max(p.n_source, 1u);
    if (p.paired != 0u) {
        src = idx;
    }
    let row_in = i * p.in_stride;
    let row_out = i * p.out_stride;
    for (var j = 0u; j < p.dim; j++) {
        let x1 = data[idx * p.dim + j];
        var x0 = 0.0;
        if (p.n_source == 0u) {
            x0 = normal_at(p.seed, STREAM_NOISE, p.step, g, j);
        } else {
            x0 = source[src * p.dim + j];
        }
        var eps = 0.0;
        if (s.c != 0.0 || s.dc != 0.0) {
            eps = normal_at(p.seed, STREAM_EXTRA, p.step, g, j);
        }
        input[row_in + j] = s.a * x1 + s.b * x0 + s.c * eps;
        target_u[row_out + j] = target_of(s, x1, x0, eps);
    }
    for (var c = 0u; c < p.time_cols; c++) {
        input[row_in + p.dim + c] = time_feature(c, t);
    }
    if (p.n_classes > 0u) {
        // Label dropout trains the unconditional field too (classifier-free guidance).
        let drop = uniform_open(rng_bits(p.seed, STREAM_LABEL, p.step, g, 0u)) < p.label_dropout;
        let label = labels[idx];
        for (var k = 0u; k < p.n_classes; k++) {
            input[row_in + p.dim + p.time_cols + k] = select(0.0, 1.0, k == label && !drop);
        }
    }
}

var<workgroup> partial_sum: array<f32, WG1>;

// Batch mean of the threads' sums into the history (one barrier; thread 0 adds the WG1
// sums serially: a barrier tree measured slower on lavapipe).
fn store_mean_loss(lid: u32, s: f32) {
    partial_sum[lid] = s;
    workgroupBarrier();
    if (lid == 0u) {
        var total = 0.0;
        for (var k = 0u; k < WG1; k++) {
            total += partial_sum[k];
        }
        loss_history[p.loss_slot] = total / f32(p.mean_rows);
    }
}

// One workgroup: thread l handles rows l, l + WG1, ...
@compute @workgroup_size(WG1, 1, 1)
fn cfm_loss(@builtin(local_invocation_id) lid: vec3<u32>) {
    let scale = 2.0 / f32(p.mean_rows * p.dim);
    var s = 0.0;
    for (var i = lid.x; i < p.batch; i += WG1) {
        let row = i * p.out_stride;
        let w = output_weight(i);
        var se = 0.0;
        for (var j = 0u; j < p.dim; j++) {
            let d = w * v[row + j] - target_u[row + j];
            se += d * d;
            grad_v[row + j] = scale * w * d;
        }
        sample_loss[i] = se / f32(p.dim);
        s += se / f32(p.dim);
    }
    store_mean_loss(lid.x, s);
}

@compute @workgroup_size(WG1, 1, 1)
fn loss_reduce(@builtin(local_invocation_id) lid: vec3<u32>) {
    var s = 0.0;
    for (var i = lid.x; i < p.batch; i += WG1) {
        s += sample_loss[i];
    }
    store_mean_loss(lid.x, s);
}
