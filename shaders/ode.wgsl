// ode.wgsl — fused explicit Runge–Kutta stages for dx/dt = v(x, t). After each MLP
// evaluation one small kernel stores v as stage k_s and writes the next MLP input rows
// [x + h·Σ_q c_q·k_q, time features], so a solve is MLP evaluations plus one kernel per
// stage, with no readback. The Butcher tableaus live on the host (src/solve.rs) and
// arrive as coefficients in the parameter slot of each stage.
//   start:          input rows from the state at time t (and the adaptive clocks).
//   base_noise:     state ~ N(0, I) keyed by the global row index, then as start.
//   rk_stage:       fixed step: k_s = v; input = x + h·Σ coef_q·k_q at time t.
//   rk_final:       fixed step: k_s = v; x ← x + h·Σ coef_q·k_q; input = x at time t.
//   adaptive_stage: per-row t_i, h_i: k_s = v; input = x + h_i·Σ coef_q·k_q at t_i + c·h_i.
//   adaptive_final: Dormand–Prince 5(4) with per-row step control: x_new, error estimate
//                   and its norm, accept/reject, new h_i, FSAL, input of stage 1.
//   snapshot:       copy the first snap_rows states into trajectory slot snap_slot.
//   affine_step:    stochastic and exponential-integrator sampling (reverse SDE, DDIM,
//                   ancestral): x ← P·x + Q·v + R·ξ with (P, Q, R) = coef[0..3] from the
//                   host (src/diffusion.rs) and ξ ~ N(0, I) keyed by (global row, step).
// A network that predicts noise, data or the score is converted to the velocity in
// `deriv` (path.wgsl's to_velocity at the evaluation point's x and t), so every solver
// integrates every kind of model; dℓ/dt converts with it: c_x·dim + c_o·Tr(∂o/∂x).
// Batch-global step control (the adjoint solve of MLE training, src/mle/adaptive.rs): one h for
// all rows, so that the parameter-gradient quadrature weighs each stage once for the
// whole batch. An attempt is 7 fresh stages (no FSAL) through adaptive_stage, then:
//   adaptive_error: stores the last stage and the row's Σ_j (err_j/scale_j)² in clock[5];
//   global_control: one workgroup: err = √(Σ_rows clock[5] / (rows·sdim)), Hairer's
//                   controller as in adaptive_final, the decision written into every
//                   row's clock; clock[7] = h of an accepted attempt, else 0;
//   adaptive_apply: x ← x + clock[7]·Σ b_q·k_q, and the input of the next attempt.
// Classifier-free guidance (a class and w ≠ 0): the MLP runs on 2·rows rows, the first
// half with the class one-hot, the second without, and the stage kernels combine them.
// With aug = K > 0 the state carries K more components per row after x. Likelihood
// solves: ℓ, then the kinetic energy and the Jacobian Frobenius estimate, whose
// derivatives come from trace.wgsl (binding div, 4 floats per row): dℓ/dt = Tr(∂v/∂x).
// Adjoint solves (adjoint = 1, aug = dim): the state is [x, a] and the derivative of a is
// −(dS/dx) from the MLP's backward pass (binding div holds its input gradient rows);
// the stage values of a go to `cotangent`, where trace.wgsl seeds the next backward.
// Host wrapper: src/kernels/ode.rs; solvers: src/solve.rs.

struct OdeParams {
    rows: u32,
    dim: u32,
    in_stride: u32,     // MLP input row stride in floats
    out_stride: u32,    // MLP output row stride in floats
    time_cols: u32,
    row_offset: u32,    // global index of row 0 (RNG key of base_noise)
    seed: u32,
    stage: u32,         // k slot that receives v
    n_terms: u32,       // number of coefficients used
    snap_rows: u32,
    snap_slot: u32,
    aug: u32,           // 1: state rows carry ℓ after x (log-likelihood)
    t: f32,             // fixed step: time of the input rows written
    h: f32,             // fixed step: step size; start: initial step of adaptive clocks
    t_end: f32,         // adaptive: end of the integration interval
    c_next: f32,        // adaptive_stage: c of the stage whose input is written
    rtol: f32,
    atol: f32,
    safety: f32,
    fac_min: f32,
    fac_max: f32,
    h_min: f32,         // adaptive: |h| below this is an underflow
    a_first: f32,       // adaptive_final: a_{1,0}, to write the input of stage 1
    c_first: f32,       // adaptive_final: c_1
    n_source: u32,      // base_noise: 0 draws N(0, I), else rows of the source pool
    n_classes: u32,     // class one-hot columns of the MLP input (after the time features)
    class_id: u32,      // class of the rows (NO_CLASS: unconditional)
    guidance: f32,      // classifier-free guidance w: v = (1 + w)·v(x|c) − w·v(x)
    adjoint: u32,       // 1: the aug components are the adjoint a (see above)
    path: u32,          // PATH_* and its parameters (path.wgsl): converting the output
    path_param: f32,
    path_param2: f32,
    predict: u32,       // PREDICT_*: what the MLP outputs (converted to v in `deriv`)
    step: u32,          // affine_step: the step's index (keys its noise)
    source_scale: f32,  // base_noise: the source is N(0, scale²·I) (0 means 1)
    _pad0: u32,
    coef: array<vec4<f32>, 2>,
    err_coef: array<vec4<f32>, 2>,
}

@group(0) @binding(0) var<uniform> p: OdeParams;
@group(0) @binding(1) var<storage, read_write> state: array<f32>;
@group(0) @binding(2) var<storage, read_write> input: array<f32>;
@group(0) @binding(3) var<storage, read> v: array<f32>;
@group(0) @binding(4) var<storage, read_write> k: array<f32>;
// Per row: t, h, accepted steps, rejected steps, status (0 running, 1 done, 2 step-size
// underflow, 3 non-finite error estimate).
@group(0) @binding(5) var<storage, read_write> clock: array<f32>;
@group(0) @binding(6) var<storage, read_write> traj: array<f32>;
@group(0) @binding(7) var<storage, read> div: array<f32>;
@group(0) @binding(8) var<storage, read> source: array<f32>;
@group(0) @binding(9) var<storage, read_write> cotangent: array<f32>;


fn guided() -> bool {
    return p.class_id != NO_CLASS && p.guidance != 0.0;
}

fn coef_at(q: u32) -> f32 {
    return p.coef[q >> 2u][q & 3u];
}
fn err_coef_at(q: u32) -> f32 {
    return p.err_coef[q >> 2u][q & 3u];
}

// Components per state row: x, then ℓ when augmented.
fn sdim() -> u32 {
    return p.dim + p.aug;
}

fn k_at(s: u32, i: u32, j: u32) -> f32 {
    return k[(s * p.rows + i) * sdim() + j];
}

// (c_x, c_o) of row i's last evaluation: v = c_x·x + c_o·o at the point and time the
// MLP input row holds (read before a kernel overwrites that component or the time).
fn conversion(i: u32) -> vec2<f32> {
    let t = input[i * p.in_stride + p.dim];
    return to_velocity(p.predict, p.path, p.path_param, p.path_param2, t);
}

// Derivative of state component j of row i from the last evaluation.
fn deriv(i: u32, j: u32) -> f32 {
    if (j < p.dim) {
        var o = v[i * p.out_stride + j];
        if (guided()) {
            let vu = v[(i + p.rows) * p.out_stride + j];
            o = (1.0 + p.guidance) * o - p.guidance * vu;
        }
        if (p.predict == PREDICT_VELOCITY) {
            return o;
        }
        let c = conversion(i);
        return c.x * input[i * p.in_stride + j] + c.y * o;
    }
    if (p.adjoint != 0u) {
        return -div[i * p.in_stride + j - p.dim];
    }
    let d = div[i * DIV_STRIDE + j - p.dim];
    if (j == p.dim && p.predict != PREDICT_VELOCITY) {
        let c = conversion(i);
        return c.x * f32(p.dim) + c.y * d;
    }
    return d;
}

// Component j of the point where the field is evaluated next: x goes to the MLP input,
// an adjoint a to the cotangent rows; ℓ and the other integrals are not inputs.
fn set_input(i: u32, j: u32, x: f32) {
    if (j < p.dim) {
        input[i * p.in_stride + j] = x;
        if (guided()) {
            input[(i + p.rows) * p.in_stride + j] = x;
        }
    } else if (p.adjoint != 0u) {
        cotangent[i * p.dim + j - p.dim] = x;
    }
}

// Time features and class one-hot of row i (and of its unconditional twin).
fn write_time(i: u32, t: f32) {
    for (var c = 0u; c < p.time_cols; c++) {
        input[i * p.in_stride + p.dim + c] = time_feature(c, t);
    }
    let cls = i * p.in_stride + p.dim + p.time_cols;
    for (var k = 0u; k < p.n_classes; k++) {
        input[cls + k] = select(0.0, 1.0, k == p.class_id);
    }
    if (guided()) {
        let u = (i + p.rows) * p.in_stride;
        for (var c = 0u; c < p.time_cols; c++) {
            input[u + p.dim + c] = time_feature(c, t);
        }
        for (var k = 0u; k < p.n_classes; k++) {
            input[u + p.dim + p.time_cols + k] = 0.0;
        }
    }
}

// Σ_q coef_q·k_q for row i, component j, after storing v as k_s.
fn store_and_combine(i: u32, j: u32) -> f32 {
    k[(p.stage * p.rows + i) * sdim() + j] = deriv(i, j);
    var acc = 0.0;
    for (var q = 0u; q < p.n_terms; q++) {
        acc += coef_at(q) * k_at(q, i, j);
    }
    return acc;
}

fn init_clock(i: u32) {
    clock[i * CLOCK] = p.t;
    clock[i * CLOCK + 1u] = p.h;
    clock[i * CLOCK + 2u] = 0.0;
    clock[i * CLOCK + 3u] = 0.0;
    clock[i * CLOCK + 4u] = RUNNING;
}

@compute @workgroup_size(WG1, 1, 1)
fn start(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_index(gid, nwg);
    if (i >= p.rows) {
        return;
    }
    for (var j = 0u; j < sdim(); j++) {
        set_input(i, j, state[i * sdim() + j]);
    }
    write_time(i, p.t);
    init_clock(i);
}

@compute @workgroup_size(WG1, 1, 1)
fn base_noise(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_index(gid, nwg);
    if (i >= p.rows) {
        return;
    }
    let src = rng_bits(p.seed, STREAM_BASE, p.row_offset + i, 1u, 0u) % max(p.n_source, 1u);
    for (var j = 0u; j < p.dim; j++) {
        var x = 0.0;
        if (p.n_source == 0u) {
            let scale = select(p.source_scale, 1.0, p.source_scale == 0.0);
            x = scale * normal_at(p.seed, STREAM_BASE, p.row_offset + i, 0u, j);
        } else {
            x = source[src * p.dim + j];
        }
        state[i * sdim() + j] = x;
        set_input(i, j, x);
    }
    for (var j = p.dim; j < sdim(); j++) {
        state[i * sdim() + j] = 0.0;
    }
    write_time(i, p.t);
    init_clock(i);
}

@compute @workgroup_size(WG1, 1, 1)
fn rk_stage(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_index(gid, nwg);
    if (i >= p.rows) {
        return;
    }
    for (var j = 0u; j < sdim(); j++) {
        set_input(i, j, state[i * sdim() + j] + p.h * store_and_combine(i, j));
    }
    write_time(i, p.t);
}

@compute @workgroup_size(WG1, 1, 1)
fn rk_final(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_index(gid, nwg);
    if (i >= p.rows) {
        return;
    }
    for (var j = 0u; j < sdim(); j++) {
        let x = state[i * sdim() + j] + p.h * store_and_combine(i, j);
        state[i * sdim() + j] = x;
        set_input(i, j, x);
    }
    write_time(i, p.t);
}

@compute @workgroup_size(WG1, 1, 1)
fn affine_step(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_index(gid, nwg);
    if (i >= p.rows) {
        return;
    }
    let pqr = p.coef[0];
    for (var j = 0u; j < p.dim; j++) {
        var x = pqr.x * state[i * sdim() + j] + pqr.y * deriv(i, j);
        if (pqr.z != 0.0) {
            x += pqr.z * normal_at(p.seed, STREAM_SDE, p.row_offset + i, p.step, j);
        }
        state[i * sdim() + j] = x;
        set_input(i, j, x);
    }
    write_time(i, p.t);
}

@compute @workgroup_size(WG1, 1, 1)
fn adaptive_stage(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_index(gid, nwg);
    if (i >= p.rows) {
        return;
    }
    let t = clock[i * CLOCK];
    let h = clock[i * CLOCK + 1u];
    for (var j = 0u; j < sdim(); j++) {
        set_input(i, j, state[i * sdim() + j] + h * store_and_combine(i, j));
    }
    write_time(i, t + p.c_next * h);
}

// Store the last stage (for dopri5 FSAL: v at the proposed point), then return
// Σ_j (err_j / scale_j)² of row i for the 5th-order solution (coef = b, b_last = 0) and
// the embedded error (err_coef = b − b̂).
fn store_last_and_error(i: u32, h: f32) -> f32 {
    let sd = sdim();
    for (var j = 0u; j < sd; j++) {
        k[(p.stage * p.rows + i) * sd + j] = deriv(i, j);
    }
    var err_sq = 0.0;
    for (var j = 0u; j < sd; j++) {
        var acc = 0.0;
        var err = 0.0;
        for (var q = 0u; q < p.n_terms; q++) {
            let kq = k_at(q, i, j);
            acc += coef_at(q) * kq;
            err += err_coef_at(q) * kq;
        }
        let x = state[i * sd + j];
        let scale = p.atol + p.rtol * max(abs(x), abs(x + h * acc));
        let e = h * err / scale;
        err_sq += e * e;
    }
    return err_sq;
}

// Hairer's controller for one step of size h at t with error norm err_norm:
// (t_new, h_new, status, accepted: 1, rejected: 0, not running: −1). fac = safety·err^(−1/5),
// clamped, no growth after a rejection, never past the end.
fn control(t: f32, h: f32, status: f32, err_norm: f32) -> vec4<f32> {
    if (status != RUNNING) {
        return vec4<f32>(t, h, status, -1.0);
    }
    if (!(err_norm <= 1e30)) {
        return vec4<f32>(t, 0.0, NONFINITE, -1.0);
    }
    let fac = p.safety * pow(max(err_norm, 1e-10), -0.2);
    var t_new = t;
    var h_new = h * clamp(fac, p.fac_min, 1.0);
    var accepted = 0.0;
    if (err_norm <= 1.0) {
        accepted = 1.0;
        t_new = t + h;
        h_new = h * clamp(fac, p.fac_min, p.fac_max);
    }
    var st = RUNNING;
    let remaining = p.t_end - t_new;
    if (abs(remaining) <= 1e-6 * max(1.0, abs(p.t_end))) {
        st = DONE;
        h_new = 0.0;
        t_new = p.t_end;
    } else {
        if (abs(h_new) > abs(remaining)) {
            h_new = remaining;
        }
        if (abs(h_new) < p.h_min) {
            st = UNDERFLOW;
            h_new = 0.0;
        }
    }
    return vec4<f32>(t_new, h_new, st, accepted);
}

@compute @workgroup_size(WG1, 1, 1)
fn adaptive_final(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_index(gid, nwg);
    if (i >= p.rows) {
        return;
    }
    let c0 = i * CLOCK;
    let h = clock[c0 + 1u];
    let sd = sdim();
    let err_norm = sqrt(store_last_and_error(i, h) / f32(sd));
    let dec = control(clock[c0], h, clock[c0 + 4u], err_norm);
    if (dec.w > 0.5) {
        for (var j = 0u; j < sd; j++) {
            var acc = 0.0;
            for (var q = 0u; q < p.n_terms; q++) {
                acc += coef_at(q) * k_at(q, i, j);
            }
            state[i * sd + j] += h * acc;
            // FSAL: the last stage is the first stage of the next step.
            k[i * sd + j] = k_at(p.stage, i, j);
        }
        clock[c0 + 2u] += 1.0;
    } else if (dec.w > -0.5) {
        clock[c0 + 3u] += 1.0;
    }
    let h_new = dec.y;
    clock[c0] = dec.x;
    clock[c0 + 1u] = h_new;
    clock[c0 + 4u] = dec.z;
    for (var j = 0u; j < sd; j++) {
        set_input(i, j, state[i * sd + j] + h_new * p.a_first * k_at(0u, i, j));
    }
    write_time(i, dec.x + p.c_first * h_new);
}

@compute @workgroup_size(WG1, 1, 1)
fn snapshot(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let e = flat_index(gid, nwg);
    let n = min(p.snap_rows, p.rows) * p.dim;
    if (e >= n) {
        return;
    }
    let row = e / p.dim;
    traj[p.snap_slot * p.snap_rows * p.dim + e] = state[row * sdim() + e % p.dim];
}

@compute @workgroup_size(WG1, 1, 1)
fn adaptive_error(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_index(gid, nwg);
    if (i >= p.rows) {
        return;
    }
    clock[i * CLOCK + 5u] = store_last_and_error(i, clock[i * CLOCK + 1u]);
}

var<workgroup> wg_sum: array<f32, WG1>;
var<workgroup> wg_decision: vec4<f32>;

@compute @workgroup_size(WG1, 1, 1)
fn global_control(@builtin(local_invocation_id) lid: vec3<u32>) {
    var s = 0.0;
    for (var i = lid.x; i < p.rows; i += WG1) {
        s += clock[i * CLOCK + 5u];
    }
    wg_sum[lid.x] = s;
    workgroupBarrier();
    for (var w = WG1 / 2u; w > 0u; w >>= 1u) {
        if (lid.x < w) {
            wg_sum[lid.x] += wg_sum[lid.x + w];
        }
        workgroupBarrier();
    }
    if (lid.x == 0u) {
        // Every row's clock holds the same t, h and status.
        let err_norm = sqrt(wg_sum[0] / f32(p.rows * sdim()));
        wg_decision = control(clock[0], clock[1], clock[4], err_norm);
    }
    workgroupBarrier();
    let dec = wg_decision;
    for (var i = lid.x; i < p.rows; i += WG1) {
        let c0 = i * CLOCK;
        clock[c0 + 7u] = select(0.0, clock[c0 + 1u], dec.w > 0.5);
        clock[c0] = dec.x;
        clock[c0 + 1u] = dec.y;
        clock[c0 + 4u] = dec.z;
        if (dec.w > 0.5) {
            clock[c0 + 2u] += 1.0;
        } else if (dec.w > -0.5) {
            clock[c0 + 3u] += 1.0;
        }
    }
}

@compute @workgroup_size(WG1, 1, 1)
fn adaptive_apply(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_index(gid, nwg);
    if (i >= p.rows) {
        return;
    }
    let c0 = i * CLOCK;
    let h = clock[c0 + 7u];
    let sd = sdim();
    for (var j = 0u; j < sd; j++) {
        var x = state[i * sd + j];
        if (h != 0.0) {
            var acc = 0.0;
            for (var q = 0u; q < p.n_terms; q++) {
                acc += coef_at(q) * k_at(q, i, j);
            }
            x += h * acc;
            state[i * sd + j] = x;
        }
        set_input(i, j, x);
    }
    write_time(i, clock[c0]);
}
