// mle.wgsl — maximum-likelihood training of a CNF by the adjoint method (src/mle/).
// The forward solve (ode.wgsl, aug = 3) carries [x, ℓ, E, F] from data at t = 1 to the
// base at t = 0; the adjoint solve (ode.wgsl, adjoint = 1) carries [x, a] back from
// t = 0 to 1 with da/dt = −∂S/∂x; the parameter gradient is the quadrature
// G = −∫₀¹ ∂S/∂θ dt over the adjoint's RK stages, summed here stage by stage.
//   adjoint_start: per row, NLL = ½‖z‖² + (d/2)·log 2π − ℓ(0) into sample_loss, and the
//                  adjoint's initial state [z, a(0) = ∂L/∂z = z/B] (L = batch mean).
//   accumulate:    G = (init ? 0 : G) + coef·(∂S/∂θ of this stage), elementwise, so the
//                  whole gradient is built without float atomics, in a fixed order; ∂S/∂θ
//                  may come in `parts` slots (the fused field's workgroups), added in order.
//   commit:        adaptive adjoint: G = (init ? 0 : G) + coef·h·G_attempt, with h the
//                  step of the attempt if the global controller accepted it, else 0
//                  (clock[7] of row 0, written by ode.wgsl's global_control).
// Host wrapper: src/kernels/mle.rs.

struct MleParams {
    rows: u32,
    dim: u32,
    fwd_stride: u32,    // floats per forward-state row (dim + 3)
    n_params: u32,      // accumulate: floats in the gradient
    inv_batch: f32,     // 1/B: the objective is a batch mean
    log_norm: f32,      // (d/2)·log 2π
    coef: f32,          // accumulate: weight of this stage (−h·b_s)
    init: u32,          // accumulate: 1 on the first stage (overwrite)
    parts: u32,         // stage gradient slots to add (field_subgroup.wgsl: one per workgroup)
    part_len: u32,      // floats per slot
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> p: MleParams;
@group(0) @binding(1) var<storage, read> fwd_state: array<f32>;
@group(0) @binding(2) var<storage, read_write> adj_state: array<f32>;
@group(0) @binding(3) var<storage, read_write> sample_loss: array<f32>;
@group(0) @binding(4) var<storage, read> stage_grads: array<f32>;
@group(0) @binding(5) var<storage, read_write> grads: array<f32>;
@group(0) @binding(6) var<storage, read> clock: array<f32>;

@compute @workgroup_size(WG1, 1, 1)
fn adjoint_start(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_index(gid, nwg);
    if (i >= p.rows) {
        return;
    }
    let f = i * p.fwd_stride;
    let a = i * 2u * p.dim;
    var sq = 0.0;
    for (var j = 0u; j < p.dim; j++) {
        let z = fwd_state[f + j];
        sq += z * z;
        adj_state[a + j] = z;
        adj_state[a + p.dim + j] = z * p.inv_batch;
    }
    sample_loss[i] = 0.5 * sq + p.log_norm - fwd_state[f + p.dim];
}

// ∂S/∂θ of element e: the sum of the slots in order.
fn stage_grad(e: u32) -> f32 {
    var g = stage_grads[e];
    for (var c = 1u; c < p.parts; c++) {
        g += stage_grads[c * p.part_len + e];
    }
    return g;
}

@compute @workgroup_size(WG1, 1, 1)
fn accumulate(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let e = flat_index(gid, nwg);
    if (e >= p.n_params) {
        return;
    }
    let g = p.coef * stage_grad(e);
    if (p.init != 0u) {
        grads[e] = g;
    } else {
        grads[e] += g;
    }
}

@compute @workgroup_size(WG1, 1, 1)
fn commit(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let e = flat_index(gid, nwg);
    if (e >= p.n_params) {
        return;
    }
    // A rejected attempt (h = 0) adds nothing, even if its gradient overflowed.
    let h = clock[7];
    let g = select(0.0, p.coef * h * stage_grad(e), h != 0.0);  // parts = 1: one attempt buffer
    if (p.init != 0u) {
        grads[e] = g;
    } else {
        grads[e] += g;
    }
}
