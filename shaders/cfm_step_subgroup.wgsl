// cfm_step_subgroup.wgsl — a whole flow-matching training step but the optimizer in one
// dispatch, for small models on adapters whose subgroups are exactly 8 SIMD lanes
// (lavapipe): compiled after fused_mlp_subgroup.wgsl (the layers, tiles and the uniform
// table) and cfm.wgsl, whose parameters (binding 0: this step's CfmParams) and buffers it
// uses. Each workgroup draws its rows (cfm.wgsl's prepare_row), runs them forward through
// every layer, takes the squared error against their targets and runs backward to its
// slot of the weight gradient (the parameters, then the loss sum), which adam.wgsl adds
// up in a fixed order (`grad_parts`). One row set (no tangents); dZ overwrites Z in place.
// Host wrapper: src/kernels/cfm_step.rs; state: src/mlp.rs (`FusedCfmPass`).

// One row set: the fused layers' tangent loops compile away.
const TANGENT_ROWS: bool = false;

// dL/dv = 2·w·(w·v − u)/(mean_rows·dim) (w: cfm.wgsl's output_weight) into the last layer's dZ (the output has no activation),
// and this lane's share of Σ_rows |v − u|²/dim (cfm.wgsl's cfm_loss, row by row).
fn loss_rows(l: StepLayer, first: u32, last: u32, lane: u32) -> f32 {
    let scale = 2.0 / f32(p.mean_rows * p.dim);
    var s = 0.0;
    for (var m = first + lane; m <= last; m += 8u) {
        let w = output_weight(m);
        var se = 0.0;
        for (var j = 0u; j < l.out_vec4; j++) {
            let t = m * p.out_stride + 4u * j;
            let u = vec4<f32>(target_u[t], target_u[t + 1u], target_u[t + 2u], target_u[t + 3u]);
            let d = w * act[l.h_off4 + m * l.out_vec4 + j] - u;
            se += dot(d, d);
            act[l.d_off4 + m * l.out_vec4 + j] = scale * w * d;
        }
        s += se / f32(p.dim);
    }
    return s;
}

@compute @workgroup_size(8, 1, 1)
fn cfm_step_subgroup(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(subgroup_invocation_id) lane: u32,
) {
    let st = table.s;
    let first = wg.x * st.group_rows;
    let last = min(first + st.group_rows, p.batch) - 1u;
    let slot = wg.x * st.slot_vec4;
    // The group's rows: drawn by cfm.wgsl into `input` (and the targets), then copied as
    // vec4s into the activation buffer, each by the lane that drew it.
    let in_vec4 = table.layers[0].in_vec4;
    for (var m = first + lane; m <= last; m += 8u) {
        prepare_row(m);
        for (var j = 0u; j < in_vec4; j++) {
            let o = m * p.in_stride + 4u * j;
            act[m * in_vec4 + j] = vec4<f32>(input[o], input[o + 1u], input[o + 2u], input[o + 3u]);
        }
    }
    phase_barrier();
    forward_all(first, last, lane);
    let top = table.layers[st.n_layers - 1u];
    let s = subgroupAdd(loss_rows(top, first, last, lane));
    if (lane == 0u) {
        grad_parts[slot + st.slot_vec4 - 1u] = vec4<f32>(s, 0.0, 0.0, 0.0);
    }
    phase_barrier();
    backward_all(first, last, lane, slot);
}
