// cfm_step_subgroup.wgsl — a whole flow-matching training step but the optimizer in one
// dispatch, for small models on adapters whose subgroups are exactly 8 SIMD lanes
// (lavapipe): compiled after cfm.wgsl, whose parameters (binding 0: this step's CfmParams)
// and buffers it uses, it draws the batch rows (cfm.wgsl's prepare_row), runs them forward
// through every layer, takes the squared error against their targets and runs backward to
// the weight gradient. Each workgroup (one subgroup) owns
// `group_rows` batch rows: a row's forward and backward never need another row, so only
// the weight gradient crosses workgroups, as one partial sum per workgroup that
// adam.wgsl adds up in a fixed order (`grad_parts`).
// Why: W-small (3→64→64→64→2, batch 256) spent half its step in dispatch overhead on
// lavapipe — 11 dispatches at ~50–90 µs each, whatever their work (a 256×64×64 matmul is
// ~120 µs of arithmetic and ~90 µs of launch) — so the step becomes this kernel and
// adam_update.
// Tiles as in matmul_subgroup.wgsl and mlp_backward_subgroup.wgsl (which explain the
// broadcast): forward lane = 4 output features of 16 rows; input gradient lane = 1 input
// vec4 of 16 rows; weight gradient lane = 1 input vec4 of 16 output features over the
// group's rows. Activations live in one buffer (`act`): the input rows, then Z and H of
// every layer, [rows, out_pad] each; the backward pass overwrites each Z with dL/dZ
// once act'(Z) has been used, the last layer's Z with dL/dv. Z is stored only where
// act'(Z) needs it (SiLU, softplus): for the others act' comes from H
// (activate_grad_from_output4), a third fewer stores in the forward pass.
// Subgroup operations and barriers need uniform control flow: every loop that contains one
// has bounds that depend only on the parameters and the workgroup (the lane-strided loops
// over rows, drawing them and taking the loss, contain none); rows and features past the
// end are clamped for loading and skipped when storing.
// Host wrapper: src/kernels/cfm_step.rs; state: src/mlp.rs (`FusedCfmPass`).

struct StepParams {
    n_layers: u32,
    group_rows: u32,    // rows per workgroup (a multiple of 16)
    slot_vec4: u32,     // vec4s per gradient slot: the parameters, then the loss sum
    _pad0: u32,
}

// One linear layer Z = X·Wᵀ + b, H = act(Z); offsets in vec4s.
struct StepLayer {
    in_vec4: u32,       // padded inputs / 4 (row stride of X and of W)
    out_features: u32,
    out_vec4: u32,      // padded outputs / 4 (row stride of Z and H)
    w_off4: u32,        // W [out, in_pad] in params and in a gradient slot
    b_off4: u32,        // b [out_pad]
    activation: u32,
    x_off4: u32,        // X in act: the input rows, or H of the layer below
    z_off4: u32,        // Z in act (dL/dZ after the backward pass reaches it)
    h_off4: u32,        // H in act
    below_act: u32,     // activation of the layer below (for act'(Z_below))
    below_z_off4: u32,  // Z of the layer below in act (unused for layer 0)
    store_z: u32,       // 1: the forward pass stores Z (act' needs it), else only H
}

// The step's shape and layers, fixed for a run. A uniform table, not storage: llvmpipe then
// knows every lane sees the same layer, so loop bounds and the activation switch are real
// branches and loads are scalar.
const MAX_LAYERS: u32 = 16u;
struct StepTable {
    s: StepParams,
    layers: array<StepLayer, MAX_LAYERS>,
}
@group(0) @binding(11) var<uniform> table: StepTable;
@group(0) @binding(12) var<storage, read> params: array<vec4<f32>>;
@group(0) @binding(13) var<storage, read_write> act: array<vec4<f32>>;
// Slot g (workgroup g): its partial dL/dθ in the parameter layout, then (loss sum, 0, 0, 0).
@group(0) @binding(14) var<storage, read_write> grad_parts: array<vec4<f32>>;

fn fwd_tile(l: StepLayer, m0: u32, last: u32, n0: u32, lane: u32) -> Tile16 {
    let kv = l.in_vec4;
    let lc = l.out_features - 1u;
    let ra = l.x_off4 + min(m0 + lane, last) * kv;
    let rb = l.x_off4 + min(m0 + 8u + lane, last) * kv;
    let c0 = l.w_off4 + min(n0, lc) * kv;
    let c1 = l.w_off4 + min(n0 + 1u, lc) * kv;
    let c2 = l.w_off4 + min(n0 + 2u, lc) * kv;
    let c3 = l.w_off4 + min(n0 + 3u, lc) * kv;
    var a = tile16_zero();
    for (var k = 0u; k < kv; k++) {
        bcast_dot16(&a, act[ra + k], act[rb + k], params[c0 + k], params[c1 + k], params[c2 + k], params[c3 + k]);
    }
    return a;
}

// Z = acc + b and H = act(Z) of row m, features n0 .. n0 + 4 (zeros in the padding; b
// is the bias of those features, loaded once per tile).
fn fwd_store(l: StepLayer, m: u32, last: u32, n0: u32, b: vec4<f32>, acc: vec4<f32>) {
    if (m > last || n0 >= l.out_features) {
        return;
    }
    let real = vec4<u32>(n0) + vec4<u32>(0u, 1u, 2u, 3u) < vec4<u32>(l.out_features);
    let zv = select(vec4<f32>(0.0), acc + b, real);
    let o = m * l.out_vec4 + n0 / 4u;
    if (l.store_z != 0u) {
        act[l.z_off4 + o] = zv;
    }
    act[l.h_off4 + o] = select(vec4<f32>(0.0), activate4(zv, l.activation), real);
}

fn forward_layer(l: StepLayer, first: u32, last: u32, lane: u32) {
    let col_blocks = (l.out_vec4 + 7u) / 8u;
    for (var cb = 0u; cb < col_blocks; cb++) {
        let n0 = (cb * 8u + lane) * 4u;
        let b = params[l.b_off4 + min(n0 / 4u, l.out_vec4 - 1u)];
        for (var m = first; m <= last; m += 16u) {
            let a = fwd_tile(l, m, last, n0, lane);
            fwd_store(l, m, last, n0, b, a.r0);    fwd_store(l, m + 1u, last, n0, b, a.r1);
            fwd_store(l, m + 2u, last, n0, b, a.r2);    fwd_store(l, m + 3u, last, n0, b, a.r3);
            fwd_store(l, m + 4u, last, n0, b, a.r4);    fwd_store(l, m + 5u, last, n0, b, a.r5);
            fwd_store(l, m + 6u, last, n0, b, a.r6);    fwd_store(l, m + 7u, last, n0, b, a.r7);
            fwd_store(l, m + 8u, last, n0, b, a.r8);    fwd_store(l, m + 9u, last, n0, b, a.r9);
            fwd_store(l, m + 10u, last, n0, b, a.r10);    fwd_store(l, m + 11u, last, n0, b, a.r11);
            fwd_store(l, m + 12u, last, n0, b, a.r12);    fwd_store(l, m + 13u, last, n0, b, a.r13);
            fwd_store(l, m + 14u, last, n0, b, a.r14);    fwd_store(l, m + 15u, last, n0, b, a.r15);
        }
    }
}

// dL/dv = 2·(v − u)/(batch·dim) into the last layer's Z (the output has no activation),
// and this lane's share of Σ_rows |v − u|²/dim (cfm.wgsl's cfm_loss, row by row).
fn loss_rows(l: StepLayer, first: u32, last: u32, lane: u32) -> f32 {
    let scale = 2.0 / f32(p.batch * p.dim);
    var s = 0.0;
    for (var m = first + lane; m <= last; m += 8u) {
        var se = 0.0;
        for (var j = 0u; j < l.out_vec4; j++) {
            let t = m * p.out_stride + 4u * j;
            let u = vec4<f32>(target_u[t], target_u[t + 1u], target_u[t + 2u], target_u[t + 3u]);
            let d = act[l.h_off4 + m * l.out_vec4 + j] - u;
            se += dot(d, d);
            act[l.z_off4 + m * l.out_vec4 + j] = scale * d;
        }
        s += se / f32(p.dim);
    }
    return s;
}

// dZ·W for rows m0 .. m0 + 16 and input vec4 kv (dZ in the layer's Z slot).
fn dx_tile(l: StepLayer, m0: u32, last: u32, kv: u32, lane: u32) -> Tile16 {
    let ln = l.out_features - 1u;
    let ra = l.z_off4 + min(m0 + lane, last) * l.out_vec4;
    let rb = l.z_off4 + min(m0 + 8u + lane, last) * l.out_vec4;
    var a = tile16_zero();
    for (var n4 = 0u; n4 < l.out_vec4; n4++) {
        // Rows of W past N are clamped: dZ's padding columns are zero, so they add 0.
        let w0 = params[l.w_off4 + min(4u * n4, ln) * l.in_vec4 + kv];
        let w1 = params[l.w_off4 + min(4u * n4 + 1u, ln) * l.in_vec4 + kv];
        let w2 = params[l.w_off4 + min(4u * n4 + 2u, ln) * l.in_vec4 + kv];
        let w3 = params[l.w_off4 + min(4u * n4 + 3u, ln) * l.in_vec4 + kv];
        bcast_mix16(&a, act[ra + n4], act[rb + n4], w0, w1, w2, w3);
    }
    return a;
}

// dL/dZ_below = (dZ·W)·act'(Z_below) of row m, input vec4 kv, into Z_below's slot; act'
// from Z_below, or from H_below (this layer's input) when that determines it.
fn dx_store(l: StepLayer, m: u32, last: u32, kv: u32, own: bool, g: vec4<f32>) {
    if (!own || m > last) {
        return;
    }
    let i = m * l.in_vec4 + kv;
    let o = l.below_z_off4 + i;
    if (grad_from_output(l.below_act)) {
        act[o] = g * activate_grad_from_output4(act[l.x_off4 + i], l.below_act);
    } else {
        act[o] = g * activate_grad4(act[o], l.below_act);
    }
}

fn backward_input_layer(l: StepLayer, first: u32, last: u32, lane: u32) {
    let blocks = (l.in_vec4 + 7u) / 8u;
    for (var m = first; m <= last; m += 16u) {
        for (var kb = 0u; kb < blocks; kb++) {
            let own = kb * 8u + lane < l.in_vec4;
            let kv = min(kb * 8u + lane, l.in_vec4 - 1u);
            let a = dx_tile(l, m, last, kv, lane);
            dx_store(l, m, last, kv, own, a.r0);    dx_store(l, m + 1u, last, kv, own, a.r1);
            dx_store(l, m + 2u, last, kv, own, a.r2);    dx_store(l, m + 3u, last, kv, own, a.r3);
            dx_store(l, m + 4u, last, kv, own, a.r4);    dx_store(l, m + 5u, last, kv, own, a.r5);
            dx_store(l, m + 6u, last, kv, own, a.r6);    dx_store(l, m + 7u, last, kv, own, a.r7);
            dx_store(l, m + 8u, last, kv, own, a.r8);    dx_store(l, m + 9u, last, kv, own, a.r9);
            dx_store(l, m + 10u, last, kv, own, a.r10);    dx_store(l, m + 11u, last, kv, own, a.r11);
            dx_store(l, m + 12u, last, kv, own, a.r12);    dx_store(l, m + 13u, last, kv, own, a.r13);
            dx_store(l, m + 14u, last, kv, own, a.r14);    dx_store(l, m + 15u, last, kv, own, a.r15);
        }
    }
}

// Row n of this group's dW slot, input vec4 kv, if the row exists.
fn dw_store(l: StepLayer, slot: u32, n: u32, kv: u32, g: vec4<f32>) {
    if (n < l.out_features) {
        grad_parts[slot + l.w_off4 + n * l.in_vec4 + kv] = g;
    }
}

// db of features 4·nv .. 4·nv + 4 (zeros in the padding), if any exists.
fn db_store(l: StepLayer, slot: u32, nv: u32, g: vec4<f32>) {
    if (nv < l.out_vec4) {
        let real = vec4<u32>(4u * nv) + vec4<u32>(0u, 1u, 2u, 3u) < vec4<u32>(l.out_features);
        grad_parts[slot + l.b_off4 + nv] = select(vec4<f32>(0.0), g, real);
    }
}

// dW = Σ_rows dZᵀ·X and db = Σ_rows dZ over the group's rows, into its slot: per tile,
// lane r loads row mb + r's 16 dZ values and broadcasts them, every lane its X vec4.
fn backward_weight_layer(l: StepLayer, first: u32, last: u32, lane: u32, slot: u32) {
    let blocks = (l.in_vec4 + 7u) / 8u;
    let out_blocks = (l.out_vec4 + 3u) / 4u;
    let lv = l.out_vec4 - 1u;
    for (var kb = 0u; kb < blocks; kb++) {
        let kv_real = kb * 8u + lane;
        let kv = min(kv_real, l.in_vec4 - 1u);
        for (var ob = 0u; ob < out_blocks; ob++) {
            let nv0 = ob * 4u;
            let n0 = min(nv0, lv); let n1 = min(nv0 + 1u, lv); let n2 = min(nv0 + 2u, lv); let n3 = min(nv0 + 3u, lv);
            var g = tile16_zero();
            var b0 = vec4<f32>(0.0); var b1 = vec4<f32>(0.0); var b2 = vec4<f32>(0.0); var b3 = vec4<f32>(0.0);
            for (var mb = first; mb <= last; mb += 8u) {
                // Lane r's row of dZ (zero past the group's rows: broadcast, it adds nothing).
                let ml = mb + lane;
                let keep = ml <= last;
                let mc = l.z_off4 + min(ml, last) * l.out_vec4;
                let d0 = select(vec4<f32>(0.0), act[mc + n0], keep);
                let d1 = select(vec4<f32>(0.0), act[mc + n1], keep);
                let d2 = select(vec4<f32>(0.0), act[mc + n2], keep);
                let d3 = select(vec4<f32>(0.0), act[mc + n3], keep);
                b0 += d0; b1 += d1; b2 += d2; b3 += d3;
                let xo = l.x_off4 + kv;
                let iv = l.in_vec4;
                dw_row(&g, subgroupBroadcast(d0, 0u), subgroupBroadcast(d1, 0u), subgroupBroadcast(d2, 0u), subgroupBroadcast(d3, 0u), act[xo + min(mb, last) * iv]);
                dw_row(&g, subgroupBroadcast(d0, 1u), subgroupBroadcast(d1, 1u), subgroupBroadcast(d2, 1u), subgroupBroadcast(d3, 1u), act[xo + min(mb + 1u, last) * iv]);
                dw_row(&g, subgroupBroadcast(d0, 2u), subgroupBroadcast(d1, 2u), subgroupBroadcast(d2, 2u), subgroupBroadcast(d3, 2u), act[xo + min(mb + 2u, last) * iv]);
                dw_row(&g, subgroupBroadcast(d0, 3u), subgroupBroadcast(d1, 3u), subgroupBroadcast(d2, 3u), subgroupBroadcast(d3, 3u), act[xo + min(mb + 3u, last) * iv]);
                dw_row(&g, subgroupBroadcast(d0, 4u), subgroupBroadcast(d1, 4u), subgroupBroadcast(d2, 4u), subgroupBroadcast(d3, 4u), act[xo + min(mb + 4u, last) * iv]);
                dw_row(&g, subgroupBroadcast(d0, 5u), subgroupBroadcast(d1, 5u), subgroupBroadcast(d2, 5u), subgroupBroadcast(d3, 5u), act[xo + min(mb + 5u, last) * iv]);
                dw_row(&g, subgroupBroadcast(d0, 6u), subgroupBroadcast(d1, 6u), subgroupBroadcast(d2, 6u), subgroupBroadcast(d3, 6u), act[xo + min(mb + 6u, last) * iv]);
                dw_row(&g, subgroupBroadcast(d0, 7u), subgroupBroadcast(d1, 7u), subgroupBroadcast(d2, 7u), subgroupBroadcast(d3, 7u), act[xo + min(mb + 7u, last) * iv]);
            }
            b0 = subgroupAdd(b0); b1 = subgroupAdd(b1); b2 = subgroupAdd(b2); b3 = subgroupAdd(b3);
            if (kv_real < l.in_vec4) {
                let na = 4u * nv0;
                dw_store(l, slot, na, kv, g.r0); dw_store(l, slot, na + 1u, kv, g.r1); dw_store(l, slot, na + 2u, kv, g.r2); dw_store(l, slot, na + 3u, kv, g.r3);
                dw_store(l, slot, na + 4u, kv, g.r4); dw_store(l, slot, na + 5u, kv, g.r5); dw_store(l, slot, na + 6u, kv, g.r6); dw_store(l, slot, na + 7u, kv, g.r7);
                dw_store(l, slot, na + 8u, kv, g.r8); dw_store(l, slot, na + 9u, kv, g.r9); dw_store(l, slot, na + 10u, kv, g.r10); dw_store(l, slot, na + 11u, kv, g.r11);
                dw_store(l, slot, na + 12u, kv, g.r12); dw_store(l, slot, na + 13u, kv, g.r13); dw_store(l, slot, na + 14u, kv, g.r14); dw_store(l, slot, na + 15u, kv, g.r15);
            }
            if (kb == 0u && lane == 0u) {
                db_store(l, slot, nv0, b0); db_store(l, slot, nv0 + 1u, b1);
                db_store(l, slot, nv0 + 2u, b2); db_store(l, slot, nv0 + 3u, b3);
            }
        }
    }
}

// Between phases, every lane's stores become visible to every lane. Where the adapter runs
// the workgroup (one subgroup) as one SIMD thread in program order — llvmpipe,
// LOCKSTEP_SUBGROUP in the preamble — that already holds, and a barrier anywhere makes
// llvmpipe compile the kernel as a coroutine that suspends at it: measured 945 → 720 µs per
// W-small step kernel without them.
fn phase_barrier() {
    if (!LOCKSTEP_SUBGROUP) {
        storageBarrier();
    }
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
    for (var i = 0u; i < st.n_layers; i++) {
        forward_layer(table.layers[i], first, last, lane);
        phase_barrier();
    }
    let top = table.layers[st.n_layers - 1u];
    let s = subgroupAdd(loss_rows(top, first, last, lane));
    if (lane == 0u) {
        grad_parts[slot + st.slot_vec4 - 1u] = vec4<f32>(s, 0.0, 0.0, 0.0);
    }
    phase_barrier();
    for (var i = st.n_layers; i > 0u; i--) {
        let l = table.layers[i - 1u];
        backward_weight_layer(l, first, last, lane, slot);
        if (i > 1u) {
            backward_input_layer(l, first, last, lane);
        }
        phase_barrier();
    }
}
