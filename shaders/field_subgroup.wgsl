// field_subgroup.wgsl — the field of a likelihood solve in one dispatch for small models, on
// adapters whose subgroups are exactly 8 SIMD lanes (lavapipe): compiled after
// fused_mlp_subgroup.wgsl (the layers, tiles and the uniform table) and trace.wgsl, whose
// parameters (binding 0), buffers and per-row integrands it uses. Same math as the
// per-layer path (matmul.wgsl's linear_jvp, trace.wgsl, mlp_backward.wgsl's
// backward_input_jvp), in one workgroup per `group_rows` primal rows and their tangent rows:
//   field_eval_subgroup: the MLP forward on the primal and tangent rows of the MLP input
//                        (v and J·u into the MLP output buffer), then divergence_row.
//   field_vjp_subgroup:  the same forward, cotangent_row's dS/dv and dS/d(J·u), backward
//                        through the tangents to this group's slot of ∂S/∂θ (mle.wgsl
//                        adds the slots) and ∂S/∂x of its primal rows (`input_grad`).
// Why: an MLE training step at W-small's size ran 551 dispatches, four or more per field
// evaluation at ~50–100 µs of launch each on lavapipe.
// Host wrapper: src/kernels/field.rs; state: src/mle/field.rs (`LikelihoodField`).

// Tangent rows: the fused layers run them.
const TANGENT_ROWS: bool = true;

// dS/dx of the primal rows [rows, in_vec4] (the MLP input's layout).
@group(0) @binding(15) var<storage, read_write> input_grad: array<vec4<f32>>;

// Primal rows [first, last] of this group, the same rows of every tangent set.
struct Rows {
    first: u32,
    last: u32,
}

fn group_rows_of(wg: u32) -> Rows {
    let first = wg * table.s.group_rows;
    return Rows(first, min(first + table.s.group_rows, p.rows) - 1u);
}

// The MLP input rows of the group, every set (the solver's primal rows, trace.wgsl's
// tangent rows; row t·rows + m of the stacked buffer), into act as vec4s.
fn load_inputs(r: Rows, lane: u32) {
    let l0 = table.layers[0];
    for (var t = 0u; t < table.s.sets; t++) {
        for (var m = r.first + lane; m <= r.last; m += 8u) {
            let src = (t * p.rows + m) * p.in_stride;
            let dst = l0.x_off4 + (t * table.s.cap_rows + m) * l0.in_vec4;
            for (var j = 0u; j < l0.in_vec4; j++) {
                let o = src + 4u * j;
                act[dst + j] = vec4<f32>(tangent_input[o], tangent_input[o + 1u], tangent_input[o + 2u], tangent_input[o + 3u]);
            }
        }
    }
}

// v and J·u of the group's rows into the stacked MLP output (trace.wgsl's tangent_out,
// which the solver stages read), each lane its own rows.
fn store_outputs(r: Rows, lane: u32) {
    let top = table.layers[table.s.n_layers - 1u];
    for (var t = 0u; t < table.s.sets; t++) {
        for (var m = r.first + lane; m <= r.last; m += 8u) {
            let src = top.h_off4 + (t * table.s.cap_rows + m) * top.out_vec4;
            let dst = (t * p.rows + m) * p.out_stride;
            for (var j = 0u; j < top.out_vec4; j++) {
                let v = act[src + j];
                let o = dst + 4u * j;
                tangent_out[o] = v.x;
                tangent_out[o + 1u] = v.y;
                tangent_out[o + 2u] = v.z;
                tangent_out[o + 3u] = v.w;
            }
        }
    }
}

// The group's rows forward, their outputs stored for the other kernels and this lane's
// rows to read back.
fn field_forward(r: Rows, lane: u32) {
    load_inputs(r, lane);
    phase_barrier();
    forward_all(r.first, r.last, lane);
    store_outputs(r, lane);
    phase_barrier();
}

@compute @workgroup_size(8, 1, 1)
fn field_eval_subgroup(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(subgroup_invocation_id) lane: u32,
) {
    let r = group_rows_of(wg.x);
    field_forward(r, lane);
    for (var i = r.first + lane; i <= r.last; i += 8u) {
        divergence_row(i);
    }
}

@compute @workgroup_size(8, 1, 1)
fn field_vjp_subgroup(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(subgroup_invocation_id) lane: u32,
) {
    let r = group_rows_of(wg.x);
    field_forward(r, lane);
    // dS/dv and dS/d(J·u) of this lane's rows (cotangent_row writes dv in the MLP output's
    // layout), then as vec4s into the top layer's dZ (zeros in the padding features).
    let top = table.layers[table.s.n_layers - 1u];
    for (var i = r.first + lane; i <= r.last; i += 8u) {
        cotangent_row(i);
        for (var t = 0u; t < table.s.sets; t++) {
            let src = (t * p.rows + i) * p.out_stride;
            let dst = top.d_off4 + (t * table.s.cap_rows + i) * top.out_vec4;
            for (var j = 0u; j < top.out_vec4; j++) {
                let o = src + 4u * j;
                let real = vec4<u32>(4u * j) + vec4<u32>(0u, 1u, 2u, 3u) < vec4<u32>(p.dim);
                act[dst + j] = select(vec4<f32>(0.0), vec4<f32>(dv[o], dv[o + 1u], dv[o + 2u], dv[o + 3u]), real);
            }
        }
    }
    phase_barrier();
    backward_all(r.first, r.last, lane, wg.x * table.s.slot_vec4);
    // Layer 0's input gradient went to its `below_d_off4` region: the primal rows out.
    let l0 = table.layers[0];
    for (var m = r.first + lane; m <= r.last; m += 8u) {
        for (var j = 0u; j < l0.in_vec4; j++) {
            input_grad[m * l0.in_vec4 + j] = act[l0.below_d_off4 + m * l0.in_vec4 + j];
        }
    }
}
