// backprop.wgsl — discretize-then-optimize gradients of a fixed-step likelihood solve
// (`--grad backprop`, src/mle/dto.rs): reverse mode through the Runge–Kutta steps, the exact
// gradient of the discretized objective (the adjoint ODE's alternative).
// The forward solve stores x_n after every step in `history` [N + 1][rows][dim]. Step n
// (x_{n+1} = x_n + h·Σ_s b_s·k_s, k_s = f(X_s), X_s = x_n + h·Σ_{q<s} a_{sq}·k_q) is
// reversed with x̄ = ∂L/∂x_{n+1} in bars[0]:
//   bp_restore:     state = x_n (extras 0) and the MLP input at t_n, so that ode.wgsl's
//                   rk_stage recomputes the stages k_q, q < S − 1, into the stage buffer;
//   then for s = S − 1 … 0:
//   bp_stage_input: the MLP input X_s at t_n + c_s·h;
//   bp_cotangent:   k̄_s = h·b_s·x̄ + Σ_{r>s} h·a_{rs}·X̄_r into `cotangent`, which
//                   trace.wgsl and the backward pass turn into ∂/∂x and ∂/∂θ of
//                   k̄_sᵀf(X_s) (plus the ℓ, E, F terms, weighted h·b_s);
//   bp_collect:     X̄_s = that ∂/∂x into bars[1 + s]; at s = 0, x̄ ← x̄ + Σ_r X̄_r.
//   bp_start:       x̄ = ∂L/∂z = z/B from the forward state.
// Host wrapper: src/kernels/backprop.rs.

struct BackpropParams {
    rows: u32,
    dim: u32,
    in_stride: u32,     // MLP input row stride in floats
    time_cols: u32,
    fwd_stride: u32,    // floats per forward-state (and stage) row: dim + 3
    hist_slot: u32,     // n: history slot of x_n
    stage: u32,         // s
    n_stages: u32,      // S
    t: f32,             // time of the MLP input written (t_n + c_s·h; restore: t_n)
    h: f32,             // step size (negative from data to base)
    inv_batch: f32,     // 1/B
    _pad: u32,
    a_row: array<vec4<f32>, 2>,   // a_{s,q} for q < s
    cot: array<vec4<f32>, 2>,     // [0]: h·b_s; [1 + r]: h·a_{r,s}
}

@group(0) @binding(0) var<uniform> p: BackpropParams;
@group(0) @binding(1) var<storage, read> history: array<f32>;
@group(0) @binding(2) var<storage, read_write> state: array<f32>;
@group(0) @binding(3) var<storage, read_write> input: array<f32>;
@group(0) @binding(4) var<storage, read> k: array<f32>;
@group(0) @binding(5) var<storage, read_write> cotangent: array<f32>;
@group(0) @binding(6) var<storage, read> input_grad: array<f32>;
@group(0) @binding(7) var<storage, read_write> bars: array<f32>;

fn a_row_at(q: u32) -> f32 {
    return p.a_row[q >> 2u][q & 3u];
}
fn cot_at(q: u32) -> f32 {
    return p.cot[q >> 2u][q & 3u];
}
fn hist(i: u32, j: u32) -> f32 {
    return history[(p.hist_slot * p.rows + i) * p.dim + j];
}
fn bar(slot: u32, i: u32, j: u32) -> u32 {
    return (slot * p.rows + i) * p.dim + j;
}
fn write_time(i: u32) {
    for (var c = 0u; c < p.time_cols; c++) {
        input[i * p.in_stride + p.dim + c] = time_feature(c, p.t);
    }
}

@compute @workgroup_size(WG1, 1, 1)
fn bp_start(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_index(gid, nwg);
    if (i >= p.rows) {
        return;
    }
    for (var j = 0u; j < p.dim; j++) {
        bars[bar(0u, i, j)] = state[i * p.fwd_stride + j] * p.inv_batch;
    }
}

@compute @workgroup_size(WG1, 1, 1)
fn bp_restore(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_index(gid, nwg);
    if (i >= p.rows) {
        return;
    }
    for (var j = 0u; j < p.fwd_stride; j++) {
        var x = 0.0;
        if (j < p.dim) {
            x = hist(i, j);
            input[i * p.in_stride + j] = x;
        }
        state[i * p.fwd_stride + j] = x;
    }
    write_time(i);
}

@compute @workgroup_size(WG1, 1, 1)
fn bp_stage_input(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_index(gid, nwg);
    if (i >= p.rows) {
        return;
    }
    for (var j = 0u; j < p.dim; j++) {
        var acc = 0.0;
        for (var q = 0u; q < p.stage; q++) {
            acc += a_row_at(q) * k[(q * p.rows + i) * p.fwd_stride + j];
        }
        input[i * p.in_stride + j] = hist(i, j) + p.h * acc;
    }
    write_time(i);
}

@compute @workgroup_size(WG1, 1, 1)
fn bp_cotangent(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_index(gid, nwg);
    if (i >= p.rows) {
        return;
    }
    for (var j = 0u; j < p.dim; j++) {
        var acc = cot_at(0u) * bars[bar(0u, i, j)];
        for (var r = p.stage + 1u; r < p.n_stages; r++) {
            acc += cot_at(1u + r) * bars[bar(1u + r, i, j)];
        }
        cotangent[i * p.dim + j] = acc;
    }
}

@compute @workgroup_size(WG1, 1, 1)
fn bp_collect(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_index(gid, nwg);
    if (i >= p.rows) {
        return;
    }
    for (var j = 0u; j < p.dim; j++) {
        bars[bar(1u + p.stage, i, j)] = input_grad[i * p.in_stride + j];
        if (p.stage == 0u) {
            var acc = bars[bar(0u, i, j)];
            for (var r = 0u; r < p.n_stages; r++) {
                acc += bars[bar(1u + r, i, j)];
            }
            bars[bar(0u, i, j)] = acc;
        }
    }
}
