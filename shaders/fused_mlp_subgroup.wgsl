// fused_mlp_subgroup.wgsl — a whole small MLP forward and backward inside one workgroup,
// for the fused kernels on adapters whose subgroups are exactly 8 SIMD lanes (lavapipe):
// prepended (after subgroup_tiles.wgsl) to cfm_step_subgroup.wgsl (a flow-matching step)
// and field_subgroup.wgsl (a likelihood field evaluation and its vector-Jacobian product).
// Each workgroup (one subgroup) owns `group_rows` batch rows: a row's forward and backward
// never need another row, so only the weight gradient crosses workgroups, as one partial
// sum per workgroup (`grad_parts` slot) that its consumer adds up in a fixed order.
// Why: a small model's step on lavapipe spent half its time in dispatch overhead — 11
// dispatches at ~50–90 µs each for W-small, whatever their work — so a step or a field
// evaluation becomes one dispatch.
// Rows come in `sets`: the primal rows and, for a JVP, one set of tangent rows per
// direction (Ż = Ẋ·Wᵀ, Ḣ = act'(Z)⊙Ż; the backward pass takes the act'' term back into
// the primal rows, as mlp_backward.wgsl's backward_input_jvp). Activations live in one
// buffer (`act`), one region per quantity and layer, each [sets · cap_rows, width]: the
// input rows, then per layer Z, H and dZ (dZ shares Z's region in the flow-matching step:
// one row set, and the backward pass overwrites Z once act'(Z) has been used).
// Tiles as in matmul_subgroup.wgsl and mlp_backward_subgroup.wgsl (which explain the
// broadcast): forward lane = 4 output features of 16 rows; input gradient lane = 1 input
// vec4 of 16 rows; weight gradient lane = 1 input vec4 of 16 output features over the
// group's rows. Z is stored only where the backward pass needs it (act' not a function of
// H, or tangent rows).
// The including file defines `const TANGENT_ROWS: bool`: false compiles the tangent loops
// away (measured: the flow-matching step ran 33% slower with them present but idle).
// Subgroup operations and barriers need uniform control flow: every loop that contains one
// has bounds that depend only on the uniform table and the workgroup; rows and features
// past the end are clamped for loading and skipped when storing.
// Host: src/mlp.rs (`FusedLayout`); kernels: src/kernels/cfm_step.rs, field.rs.

struct StepParams {
    n_layers: u32,
    group_rows: u32,    // rows per workgroup (a multiple of 16)
    slot_vec4: u32,     // vec4s per gradient slot
    sets: u32,          // row sets: 1 + tangent directions
    cap_rows: u32,      // rows per set in every region of act
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

// One linear layer Z = X·Wᵀ + b, H = act(Z); offsets in vec4s.
struct StepLayer {
    in_vec4: u32,       // padded inputs / 4 (row stride of X and of W)
    out_features: u32,
    out_vec4: u32,      // padded outputs / 4 (row stride of Z, H, dZ)
    w_off4: u32,        // W [out, in_pad] in params and in a gradient slot
    b_off4: u32,        // b [out_pad]
    activation: u32,
    x_off4: u32,        // X in act: the input rows, or H of the layer below
    z_off4: u32,        // Z in act
    h_off4: u32,        // H in act
    d_off4: u32,        // dL/dZ in act (= z_off4: in place)
    below_act: u32,     // activation of the layer below (identity below layer 0)
    below_z_off4: u32,  // Z of the layer below (unused below layer 0)
    below_d_off4: u32,  // where dL/dZ of the layer below (or dL/dX of layer 0) goes
    below_sets: u32,    // row sets whose input gradient is needed (0: none)
    store_z: u32,       // 1: the forward pass stores Z, else only H
    _pad0: u32,
}

// The model's shape and layers, fixed for a run. A uniform table, not storage: llvmpipe then
// knows every lane sees the same layer, so loop bounds and the activation switch are real
// branches and loads are scalar.
struct StepTable {
    s: StepParams,
    layers: array<StepLayer, MAX_LAYERS>,
}
@group(0) @binding(11) var<uniform> table: StepTable;
@group(0) @binding(12) var<storage, read> params: array<vec4<f32>>;
@group(0) @binding(13) var<storage, read_write> act: array<vec4<f32>>;
// Slot g (workgroup g): its partial dL/dθ in the parameter layout, then what the kernel adds.
@group(0) @binding(14) var<storage, read_write> grad_parts: array<vec4<f32>>;

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

// X·Wᵀ of rows m0 .. m0 + 16 (X at vec4 offset xo), features n0 .. n0 + 4 of this lane.
fn fwd_tile(l: StepLayer, xo: u32, m0: u32, last: u32, n0: u32, lane: u32) -> Tile16 {
    let kv = l.in_vec4;
    let lc = l.out_features - 1u;
    let ra = xo + min(m0 + lane, last) * kv;
    let rb = xo + min(m0 + 8u + lane, last) * kv;
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

// Which of the 4 features from n0 exist.
fn real_features(l: StepLayer, n0: u32) -> vec4<bool> {
    return vec4<u32>(n0) + vec4<u32>(0u, 1u, 2u, 3u) < vec4<u32>(l.out_features);
}

// Z = acc + b and H = act(Z) of primal row m, features n0 .. n0 + 4 (zeros in the
// padding; b is the bias of those features, loaded once per tile).
fn fwd_store(l: StepLayer, m: u32, last: u32, n0: u32, b: vec4<f32>, acc: vec4<f32>) {
    if (m > last || n0 >= l.out_features) {
        return;
    }
    let real = real_features(l, n0);
    let zv = select(vec4<f32>(0.0), acc + b, real);
    let o = m * l.out_vec4 + n0 / 4u;
    if (l.store_z != 0u) {
        act[l.z_off4 + o] = zv;
    }
    act[l.h_off4 + o] = select(vec4<f32>(0.0), activate4(zv, l.activation), real);
}

// Ż = acc and Ḣ = act'(Z)⊙Ż of tangent row m of the set at offset `so`, with the primal Z
// this lane stored (same row, same features).
fn jvp_store(l: StepLayer, m: u32, last: u32, n0: u32, so: u32, acc: vec4<f32>) {
    if (m > last || n0 >= l.out_features) {
        return;
    }
    let zt = select(vec4<f32>(0.0), acc, real_features(l, n0));
    let o = m * l.out_vec4 + n0 / 4u;
    act[l.z_off4 + so + o] = zt;
    act[l.h_off4 + so + o] = zt * activate_grad4(act[l.z_off4 + o], l.activation);
}

fn forward_layer(l: StepLayer, first: u32, last: u32, lane: u32) {
    let col_blocks = (l.out_vec4 + 7u) / 8u;
    let set_in = table.s.cap_rows * l.in_vec4;
    let set_out = table.s.cap_rows * l.out_vec4;
    for (var cb = 0u; cb < col_blocks; cb++) {
        let n0 = (cb * 8u + lane) * 4u;
        let b = params[l.b_off4 + min(n0 / 4u, l.out_vec4 - 1u)];
        for (var m = first; m <= last; m += 16u) {
            let a = fwd_tile(l, l.x_off4, m, last, n0, lane);
            fwd_store(l, m, last, n0, b, a.r0);    fwd_store(l, m + 1u, last, n0, b, a.r1);
            fwd_store(l, m + 2u, last, n0, b, a.r2);    fwd_store(l, m + 3u, last, n0, b, a.r3);
            fwd_store(l, m + 4u, last, n0, b, a.r4);    fwd_store(l, m + 5u, last, n0, b, a.r5);
            fwd_store(l, m + 6u, last, n0, b, a.r6);    fwd_store(l, m + 7u, last, n0, b, a.r7);
            fwd_store(l, m + 8u, last, n0, b, a.r8);    fwd_store(l, m + 9u, last, n0, b, a.r9);
            fwd_store(l, m + 10u, last, n0, b, a.r10);    fwd_store(l, m + 11u, last, n0, b, a.r11);
            fwd_store(l, m + 12u, last, n0, b, a.r12);    fwd_store(l, m + 13u, last, n0, b, a.r13);
            fwd_store(l, m + 14u, last, n0, b, a.r14);    fwd_store(l, m + 15u, last, n0, b, a.r15);
            for (var t = 1u; TANGENT_ROWS && t < table.s.sets; t++) {
                let so = t * set_out;
                let c = fwd_tile(l, l.x_off4 + t * set_in, m, last, n0, lane);
                jvp_store(l, m, last, n0, so, c.r0);    jvp_store(l, m + 1u, last, n0, so, c.r1);
                jvp_store(l, m + 2u, last, n0, so, c.r2);    jvp_store(l, m + 3u, last, n0, so, c.r3);
                jvp_store(l, m + 4u, last, n0, so, c.r4);    jvp_store(l, m + 5u, last, n0, so, c.r5);
                jvp_store(l, m + 6u, last, n0, so, c.r6);    jvp_store(l, m + 7u, last, n0, so, c.r7);
                jvp_store(l, m + 8u, last, n0, so, c.r8);    jvp_store(l, m + 9u, last, n0, so, c.r9);
                jvp_store(l, m + 10u, last, n0, so, c.r10);    jvp_store(l, m + 11u, last, n0, so, c.r11);
                jvp_store(l, m + 12u, last, n0, so, c.r12);    jvp_store(l, m + 13u, last, n0, so, c.r13);
                jvp_store(l, m + 14u, last, n0, so, c.r14);    jvp_store(l, m + 15u, last, n0, so, c.r15);
            }
        }
    }
}

// dZ·W for rows m0 .. m0 + 16 of the set whose dZ starts at `dz_off4`, input vec4 kv.
fn dx_tile(l: StepLayer, dz_off4: u32, m0: u32, last: u32, kv: u32, lane: u32) -> Tile16 {
    let ln = l.out_features - 1u;
    let ra = dz_off4 + min(m0 + lane, last) * l.out_vec4;
    let rb = dz_off4 + min(m0 + 8u + lane, last) * l.out_vec4;
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

// dL/dZ_below = (dZ·W)⊙act'(Z_below) of primal row m, input vec4 kv; act' from Z_below,
// or from H_below (this layer's input) when that determines it.
fn dx_store(l: StepLayer, m: u32, last: u32, kv: u32, own: bool, g: vec4<f32>) {
    if (!own || m > last) {
        return;
    }
    let i = m * l.in_vec4 + kv;
    if (!TANGENT_ROWS && grad_from_output(l.below_act)) {
        act[l.below_d_off4 + i] = g * activate_grad_from_output4(act[l.x_off4 + i], l.below_act);
    } else if (l.below_act == ACT_IDENTITY) {
        act[l.below_d_off4 + i] = g;
    } else {
        act[l.below_d_off4 + i] = g * activate_grad4(act[l.below_z_off4 + i], l.below_act);
    }
}

// Tangent row m of the set at offset `si` (in the layer below's regions): dŻ_below =
// act'(Z_below)⊙dẊ, and the primal row's dZ_below gains act''(Z_below)⊙Ż_below⊙dẊ (this
// lane stored it before: same row, same vec4).
fn dx_store_tangent(l: StepLayer, m: u32, last: u32, kv: u32, own: bool, si: u32, g: vec4<f32>) {
    if (!own || m > last) {
        return;
    }
    let i = m * l.in_vec4 + kv;
    if (l.below_act == ACT_IDENTITY) {
        act[l.below_d_off4 + si + i] = g;
        return;
    }
    let z = act[l.below_z_off4 + i];
    let g2 = vec4<f32>(activate_grad2(z.x, l.below_act), activate_grad2(z.y, l.below_act), activate_grad2(z.z, l.below_act), activate_grad2(z.w, l.below_act));
    act[l.below_d_off4 + i] += g2 * act[l.below_z_off4 + si + i] * g;
    act[l.below_d_off4 + si + i] = activate_grad4(z, l.below_act) * g;
}

fn backward_input_layer(l: StepLayer, first: u32, last: u32, lane: u32) {
    let blocks = (l.in_vec4 + 7u) / 8u;
    let set_in = table.s.cap_rows * l.in_vec4;
    let set_out = table.s.cap_rows * l.out_vec4;
    for (var m = first; m <= last; m += 16u) {
        for (var kb = 0u; kb < blocks; kb++) {
            let own = kb * 8u + lane < l.in_vec4;
            let kv = min(kb * 8u + lane, l.in_vec4 - 1u);
            let a = dx_tile(l, l.d_off4, m, last, kv, lane);
            dx_store(l, m, last, kv, own, a.r0);    dx_store(l, m + 1u, last, kv, own, a.r1);
            dx_store(l, m + 2u, last, kv, own, a.r2);    dx_store(l, m + 3u, last, kv, own, a.r3);
            dx_store(l, m + 4u, last, kv, own, a.r4);    dx_store(l, m + 5u, last, kv, own, a.r5);
            dx_store(l, m + 6u, last, kv, own, a.r6);    dx_store(l, m + 7u, last, kv, own, a.r7);
            dx_store(l, m + 8u, last, kv, own, a.r8);    dx_store(l, m + 9u, last, kv, own, a.r9);
            dx_store(l, m + 10u, last, kv, own, a.r10);    dx_store(l, m + 11u, last, kv, own, a.r11);
            dx_store(l, m + 12u, last, kv, own, a.r12);    dx_store(l, m + 13u, last, kv, own, a.r13);
            dx_store(l, m + 14u, last, kv, own, a.r14);    dx_store(l, m + 15u, last, kv, own, a.r15);
            for (var t = 1u; TANGENT_ROWS && t < l.below_sets; t++) {
                let si = t * set_in;
                let c = dx_tile(l, l.d_off4 + t * set_out, m, last, kv, lane);
                dx_store_tangent(l, m, last, kv, own, si, c.r0);    dx_store_tangent(l, m + 1u, last, kv, own, si, c.r1);
                dx_store_tangent(l, m + 2u, last, kv, own, si, c.r2);    dx_store_tangent(l, m + 3u, last, kv, own, si, c.r3);
                dx_store_tangent(l, m + 4u, last, kv, own, si, c.r4);    dx_store_tangent(l, m + 5u, last, kv, own, si, c.r5);
                dx_store_tangent(l, m + 6u, last, kv, own, si, c.r6);    dx_store_tangent(l, m + 7u, last, kv, own, si, c.r7);
                dx_store_tangent(l, m + 8u, last, kv, own, si, c.r8);    dx_store_tangent(l, m + 9u, last, kv, own, si, c.r9);
                dx_store_tangent(l, m + 10u, last, kv, own, si, c.r10);    dx_store_tangent(l, m + 11u, last, kv, own, si, c.r11);
                dx_store_tangent(l, m + 12u, last, kv, own, si, c.r12);    dx_store_tangent(l, m + 13u, last, kv, own, si, c.r13);
                dx_store_tangent(l, m + 14u, last, kv, own, si, c.r14);    dx_store_tangent(l, m + 15u, last, kv, own, si, c.r15);
            }
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
        grad_parts[slot + l.b_off4 + nv] = select(vec4<f32>(0.0), g, real_features(l, 4u * nv));
    }
}

// Bias-gradient sums of 16 output features.
struct Bias4 {
    b0: vec4<f32>,
    b1: vec4<f32>,
    b2: vec4<f32>,
    b3: vec4<f32>,
}

// One row set's share of a weight-gradient tile: its rows' dZ (at dzo, features n) times
// their X (at xo, this lane's input vec4); the primal set also adds its dZ to the bias sums.
fn dw_set(l: StepLayer, xo: u32, dzo: u32, first: u32, last: u32, lane: u32, n: vec4<u32>, g: ptr<function, Tile16>, b: ptr<function, Bias4>, with_bias: bool) {
    let iv = l.in_vec4;
    for (var mb = first; mb <= last; mb += 8u) {
        // Lane r's row of dZ (zero past the group's rows: broadcast, it adds nothing).
        let ml = mb + lane;
        let keep = ml <= last;
        let mc = dzo + min(ml, last) * l.out_vec4;
        let d0 = select(vec4<f32>(0.0), act[mc + n.x], keep);
        let d1 = select(vec4<f32>(0.0), act[mc + n.y], keep);
        let d2 = select(vec4<f32>(0.0), act[mc + n.z], keep);
        let d3 = select(vec4<f32>(0.0), act[mc + n.w], keep);
        if (with_bias) {
            (*b).b0 += d0; (*b).b1 += d1; (*b).b2 += d2; (*b).b3 += d3;
        }
        dw_row(g, subgroupBroadcast(d0, 0u), subgroupBroadcast(d1, 0u), subgroupBroadcast(d2, 0u), subgroupBroadcast(d3, 0u), act[xo + min(mb, last) * iv]);
        dw_row(g, subgroupBroadcast(d0, 1u), subgroupBroadcast(d1, 1u), subgroupBroadcast(d2, 1u), subgroupBroadcast(d3, 1u), act[xo + min(mb + 1u, last) * iv]);
        dw_row(g, subgroupBroadcast(d0, 2u), subgroupBroadcast(d1, 2u), subgroupBroadcast(d2, 2u), subgroupBroadcast(d3, 2u), act[xo + min(mb + 2u, last) * iv]);
        dw_row(g, subgroupBroadcast(d0, 3u), subgroupBroadcast(d1, 3u), subgroupBroadcast(d2, 3u), subgroupBroadcast(d3, 3u), act[xo + min(mb + 3u, last) * iv]);
        dw_row(g, subgroupBroadcast(d0, 4u), subgroupBroadcast(d1, 4u), subgroupBroadcast(d2, 4u), subgroupBroadcast(d3, 4u), act[xo + min(mb + 4u, last) * iv]);
        dw_row(g, subgroupBroadcast(d0, 5u), subgroupBroadcast(d1, 5u), subgroupBroadcast(d2, 5u), subgroupBroadcast(d3, 5u), act[xo + min(mb + 5u, last) * iv]);
        dw_row(g, subgroupBroadcast(d0, 6u), subgroupBroadcast(d1, 6u), subgroupBroadcast(d2, 6u), subgroupBroadcast(d3, 6u), act[xo + min(mb + 6u, last) * iv]);
        dw_row(g, subgroupBroadcast(d0, 7u), subgroupBroadcast(d1, 7u), subgroupBroadcast(d2, 7u), subgroupBroadcast(d3, 7u), act[xo + min(mb + 7u, last) * iv]);
    }
}

// dW = Σ_rows dZᵀ·X over the group's rows of every set and db = Σ dZ over its primal rows,
// into its slot: per tile, lane r loads row mb + r's 16 dZ values and broadcasts them,
// every lane its X vec4.
fn backward_weight_layer(l: StepLayer, first: u32, last: u32, lane: u32, slot: u32) {
    let blocks = (l.in_vec4 + 7u) / 8u;
    let out_blocks = (l.out_vec4 + 3u) / 4u;
    let lv = l.out_vec4 - 1u;
    let set_in = table.s.cap_rows * l.in_vec4;
    let set_out = table.s.cap_rows * l.out_vec4;
    for (var kb = 0u; kb < blocks; kb++) {
        let kv_real = kb * 8u + lane;
        let kv = min(kv_real, l.in_vec4 - 1u);
        for (var ob = 0u; ob < out_blocks; ob++) {
            let nv0 = ob * 4u;
            let n0 = min(nv0, lv); let n1 = min(nv0 + 1u, lv); let n2 = min(nv0 + 2u, lv); let n3 = min(nv0 + 3u, lv);
            var g = tile16_zero();
            let z = vec4<f32>(0.0);
            var b = Bias4(z, z, z, z);
            let n = vec4<u32>(n0, n1, n2, n3);
            dw_set(l, l.x_off4 + kv, l.d_off4, first, last, lane, n, &g, &b, true);
            for (var t = 1u; TANGENT_ROWS && t < table.s.sets; t++) {
                dw_set(l, l.x_off4 + t * set_in + kv, l.d_off4 + t * set_out, first, last, lane, n, &g, &b, false);
            }
            let b0 = subgroupAdd(b.b0); let b1 = subgroupAdd(b.b1); let b2 = subgroupAdd(b.b2); let b3 = subgroupAdd(b.b3);
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

// The group's rows [first, last] of every set, forward through every layer.
fn forward_all(first: u32, last: u32, lane: u32) {
    for (var i = 0u; i < table.s.n_layers; i++) {
        forward_layer(table.layers[i], first, last, lane);
        phase_barrier();
    }
}

// Backward from dL/dZ of the top layer (in its dZ region) to this group's gradient slot
// and, where a layer asks for it, the gradient of its input.
fn backward_all(first: u32, last: u32, lane: u32, slot: u32) {
    for (var i = table.s.n_layers; i > 0u; i--) {
        let l = table.layers[i - 1u];
        backward_weight_layer(l, first, last, lane, slot);
        if (l.below_sets > 0u) {
            backward_input_layer(l, first, last, lane);
        }
        phase_barrier();
    }
}
