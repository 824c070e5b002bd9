// adam.wgsl — AdamW over one flat parameter buffer, with global gradient-norm clipping
// and an optional EMA of the weights fused into the same pass. The gradient may come in
// `grad_parts` partial sums (slots of `part_vec4` vec4s, cfm_step_subgroup.wgsl's
// workgroups): both kernels add them in slot order (the host does the same to read the
// gradient) and, with `loss_rows` > 0, one extra thread of adam_update adds the slots'
// loss sums (the vec4 after the parameters) into the history. Every buffer is read as
// vec4s, one per thread (a flat parameter buffer's length is a multiple of 4): a quarter of
// the invocations, which is most of the cost of this pass on a software adapter.
//   grad_sq_partial: each workgroup sums the squares of its slice of the gradient.
//   adam_update:     every thread updates its element: decoupled weight decay (PyTorch
//                    AdamW), Adam moments with bias correction, then EMA.
//   adam_update_clipped: the same after one thread of every workgroup has summed all
//                    partial sums (same order in every workgroup, so the clip factor is
//                    identical and deterministic) and shared it through one barrier.
// Host wrapper: src/kernels/adam.rs.

struct AdamParams {
    n: u32,             // parameters (a multiple of 4)
    n_partials: u32,    // workgroups of grad_sq_partial
    use_ema: u32,
    step: u32,          // 1-based step (informative; bias corrections come precomputed)
    lr: f32,
    beta1: f32,
    beta2: f32,
    eps: f32,
    weight_decay: f32,
    bias_corr1: f32,    // 1 − β1^step
    bias_corr2: f32,    // 1 − β2^step
    clip_norm: f32,     // ≤ 0: no clipping
    ema_decay: f32,
    grad_parts: u32,    // ≤ 1: the gradient itself; else partial sums to add up
    part_vec4: u32,     // vec4s per partial slot
    loss_slot: u32,     // history slot of this step's loss (with loss_rows > 0)
    loss_rows: u32,     // > 0: the batch loss is Σ_slots loss sum / loss_rows
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> p: AdamParams;
@group(0) @binding(1) var<storage, read> grads: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read_write> partials: array<f32>;
@group(0) @binding(3) var<storage, read_write> params: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read_write> moments: array<vec4<f32>>; // m in [0, n), v in [n, 2n)
@group(0) @binding(5) var<storage, read_write> ema: array<vec4<f32>>;
@group(0) @binding(6) var<storage, read_write> loss_history: array<f32>;

const ITEMS: u32 = 16u; // gradient vec4s per thread in grad_sq_partial

var<workgroup> red: array<f32, WG1>;

// Gradient vec4 e: the sum of the partial slots in order.
fn grad_at(e: u32) -> vec4<f32> {
    var g = grads[e];
    for (var c = 1u; c < p.grad_parts; c++) {
        g += grads[c * p.part_vec4 + e];
    }
    return g;
}
var<workgroup> clip_scale: f32;

fn reduce_workgroup(lid: u32, v: f32) -> f32 {
    red[lid] = v;
    workgroupBarrier();
    for (var w = WG1 / 2u; w > 0u; w >>= 1u) {
        if (lid < w) {
            red[lid] += red[lid + w];
        }
        workgroupBarrier();
    }
    let total = red[0];
    workgroupBarrier();
    return total;
}

@compute @workgroup_size(WG1, 1, 1)
fn grad_sq_partial(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let wg = wid.x + wid.y * nwg.x;
    let base = wg * WG1 * ITEMS;
    var s = 0.0;
    for (var k = 0u; k < ITEMS; k++) {
        let e = base + k * WG1 + lid.x;
        if (e < p.n / 4u) {
            let g = grad_at(e);
            s += dot(g, g);
        }
    }
    let total = reduce_workgroup(lid.x, s);
    if (lid.x == 0u && wg < p.n_partials) {
        partials[wg] = total;
    }
}

// Without clipping: no barrier. llvmpipe runs a kernel that has one as coroutines, which
// cost even where the barrier is never reached: 10–27 µs per call at W-small's 8.9k
// parameters, ~15% of this kernel there (benches/kernels.rs, paired runs).
@compute @workgroup_size(WG1, 1, 1)
fn adam_update(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    update_element(flat_index(gid, nwg), 1.0);
}

@compute @workgroup_size(WG1, 1, 1)
fn adam_update_clipped(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    // Measured on lavapipe: a barrier tree over the partials made this kernel 3.7× slower
    // than grad_sq_partial at W-small's 13k parameters; every thread summing the partials
    // itself cost 155 ms per step at W-fm's 790k parameters (193 partials per thread).
    // One summing thread and one barrier cost neither.
    if (lid.x == 0u) {
        var s = 0.0;
        for (var i = 0u; i < p.n_partials; i++) {
            s += partials[i];
        }
        let norm = sqrt(s);
        clip_scale = select(1.0, p.clip_norm / (norm + 1e-6), norm > p.clip_norm);
    }
    workgroupBarrier();
    update_element(flat_index(gid, nwg), clip_scale);
}

// Thread e: parameter vec4 e, and for e = n/4 the batch loss (with loss_rows > 0).
fn update_element(e: u32, scale: f32) {
    let n4 = p.n / 4u;
    if (e == n4 && p.loss_rows > 0u) {
        var total = 0.0;
        for (var c = 0u; c < max(p.grad_parts, 1u); c++) {
            total += grads[c * p.part_vec4 + n4].x;
        }
        loss_history[p.loss_slot] = total / f32(p.loss_rows);
    }
    if (e >= n4) {
        return;
    }
    let g = grad_at(e) * scale;
    var w = params[e] * (1.0 - p.lr * p.weight_decay);
    let m = p.beta1 * moments[e] + (1.0 - p.beta1) * g;
    let v = p.beta2 * moments[n4 + e] + (1.0 - p.beta2) * g * g;
    moments[e] = m;
    moments[n4 + e] = v;
    let m_hat = m / p.bias_corr1;
    let v_hat = v / p.bias_corr2;
    w -= p.lr * m_hat / (sqrt(v_hat) + p.eps);
    params[e] = w;
    if (p.use_ema != 0u) {
        ema[e] = p.ema_decay * ema[e] + (1.0 - p.ema_decay) * w;
    }
}
