// mlp_backward_subgroup.wgsl — backward_input, backward_weight and backward_input_jvp for
// adapters whose subgroups are exactly 8 SIMD lanes (lavapipe): compiled after
// mlp_backward.wgsl, whose parameters, bindings and store helpers they use (see
// matmul_subgroup.wgsl for when and why). Same math as the plain entry points.
//   backward_input_subgroup:  lane l owns input vec4 8·wg.x + l of the subgroup's 16 rows;
//                             rows of dZ are loaded one per lane and broadcast.
//   backward_layer_subgroup:  the two above in one dispatch (small layers, see the host);
//                             backward_layer_jvp_subgroup the same with backward_input_jvp.
//   backward_input_jvp_subgroup: the same tile for the primal rows and then for each
//                             tangent direction; the primal dZ goes through memory
//                             between directions (this lane's own rows and vec4).
//   backward_weight_subgroup: lane l owns input vec4 8·wg.x + l of 16 output features
//                             (dW rows 16·wg.y ..); per block of 8 rows, lane r loads
//                             row r's 16 dZ values and broadcasts them, each lane loads
//                             its own X vec4 of each row (48 gathered floats per 512 FMAs
//                             against 16 per 64 in the plain 8×8 tile). db: every lane sums
//                             the dZ of its own rows, one subgroupAdd at the end.
// Host wrapper: src/kernels/mlp_backward.rs.

const SG_DX_ROWS: u32 = 16u;
const SG_DW_OUT_VEC4: u32 = 4u;

// Where a subgroup works: its input vec4 (clamped for loads; `own` is false for a lane
// past the last one, which computes a copy and stores nothing), its 16 rows and the
// clamped rows of dZ each lane loads.
struct SgInput {
    own: bool,
    kv: u32,
    m0: u32,
    ra: u32,
    rb: u32,
}

// Workgroup (x, row block): input vec4s 8·x .., rows 16·block ...
fn sg_input(x: u32, block: u32, lane: u32) -> SgInput {
    var s: SgInput;
    s.own = x * 8u + lane < p.in_vec4;
    s.kv = min(x * 8u + lane, p.in_vec4 - 1u);
    s.m0 = block * SG_DX_ROWS;
    let lr = p.rows - 1u;
    s.ra = min(s.m0 + lane, lr) * p.out_vec4;
    s.rb = min(s.m0 + 8u + lane, lr) * p.out_vec4;
    return s;
}

// dZ·W of the subgroup's rows, dZ read at row offset `o` (vec4s): 0 for the primal rows,
// t·rows·out_vec4 for tangent direction t.
fn sg_dx_tile(s: SgInput, o: u32) -> Tile16 {
    let ln = p.out_features - 1u;
    var a = tile16_zero();
    for (var n4 = 0u; n4 < p.out_vec4; n4++) {
        // Rows of W past N are clamped: dZ's padding columns are zero, so they add 0.
        let w0 = params[p.w_off4 + min(4u * n4, ln) * p.in_vec4 + s.kv];
        let w1 = params[p.w_off4 + min(4u * n4 + 1u, ln) * p.in_vec4 + s.kv];
        let w2 = params[p.w_off4 + min(4u * n4 + 2u, ln) * p.in_vec4 + s.kv];
        let w3 = params[p.w_off4 + min(4u * n4 + 3u, ln) * p.in_vec4 + s.kv];
        bcast_mix16(&a, dz[o + s.ra + n4], dz[o + s.rb + n4], w0, w1, w2, w3);
    }
    return a;
}

@compute @workgroup_size(8, 1, 1)
fn backward_input_subgroup(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(subgroup_invocation_id) lane: u32,
) {
    // The grid folds row blocks past 65535 into z (host: `row_blocks`).
    sg_backward_input(wg.x, wg.y + wg.z * nwg.y, lane);
}

fn sg_backward_input(x: u32, block: u32, lane: u32) {
    let s = sg_input(x, block, lane);
    let a = sg_dx_tile(s, 0u);
    if (s.own) {
        let m = s.m0;
        let kv = s.kv;
        dx_store(m, kv, a.r0); dx_store(m + 1u, kv, a.r1); dx_store(m + 2u, kv, a.r2); dx_store(m + 3u, kv, a.r3);
        dx_store(m + 4u, kv, a.r4); dx_store(m + 5u, kv, a.r5); dx_store(m + 6u, kv, a.r6); dx_store(m + 7u, kv, a.r7);
        dx_store(m + 8u, kv, a.r8); dx_store(m + 9u, kv, a.r9); dx_store(m + 10u, kv, a.r10); dx_store(m + 11u, kv, a.r11);
        dx_store(m + 12u, kv, a.r12); dx_store(m + 13u, kv, a.r13); dx_store(m + 14u, kv, a.r14); dx_store(m + 15u, kv, a.r15);
    }
}

// One tangent row's share: writes the tangent's dŻ_below and adds the act'' term to the
// primal row's dZ_below, which this lane stored before (same row, same vec4).
fn sg_jvp_tangent(m: u32, t: u32, kv: u32, b: vec4<f32>) {
    if (m < p.rows) {
        dx[m * p.in_vec4 + kv] += jvp_tangent(m, t, kv, b);
    }
}

@compute @workgroup_size(8, 1, 1)
fn backward_input_jvp_subgroup(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(subgroup_invocation_id) lane: u32,
) {
    sg_backward_input_jvp(wg.x, wg.y + wg.z * nwg.y, lane);
}

fn sg_backward_input_jvp(x: u32, block: u32, lane: u32) {
    let s = sg_input(x, block, lane);
    // Rows as the store helpers see them: past the end for a lane that stores nothing.
    let m = select(p.rows, s.m0, s.own);
    let kv = s.kv;
    let a = sg_dx_tile(s, 0u);
    jvp_store(m, kv, a.r0 * g1_at(m, kv));
    jvp_store(m + 1u, kv, a.r1 * g1_at(m + 1u, kv));
    jvp_store(m + 2u, kv, a.r2 * g1_at(m + 2u, kv));
    jvp_store(m + 3u, kv, a.r3 * g1_at(m + 3u, kv));
    jvp_store(m + 4u, kv, a.r4 * g1_at(m + 4u, kv));
    jvp_store(m + 5u, kv, a.r5 * g1_at(m + 5u, kv));
    jvp_store(m + 6u, kv, a.r6 * g1_at(m + 6u, kv));
    jvp_store(m + 7u, kv, a.r7 * g1_at(m + 7u, kv));
    jvp_store(m + 8u, kv, a.r8 * g1_at(m + 8u, kv));
    jvp_store(m + 9u, kv, a.r9 * g1_at(m + 9u, kv));
    jvp_store(m + 10u, kv, a.r10 * g1_at(m + 10u, kv));
    jvp_store(m + 11u, kv, a.r11 * g1_at(m + 11u, kv));
    jvp_store(m + 12u, kv, a.r12 * g1_at(m + 12u, kv));
    jvp_store(m + 13u, kv, a.r13 * g1_at(m + 13u, kv));
    jvp_store(m + 14u, kv, a.r14 * g1_at(m + 14u, kv));
    jvp_store(m + 15u, kv, a.r15 * g1_at(m + 15u, kv));
    for (var t = 1u; t <= p.n_tangents; t++) {
        let b = sg_dx_tile(s, t * p.rows * p.out_vec4);
        sg_jvp_tangent(m, t, kv, b.r0); sg_jvp_tangent(m + 1u, t, kv, b.r1);
        sg_jvp_tangent(m + 2u, t, kv, b.r2); sg_jvp_tangent(m + 3u, t, kv, b.r3);
        sg_jvp_tangent(m + 4u, t, kv, b.r4); sg_jvp_tangent(m + 5u, t, kv, b.r5);
        sg_jvp_tangent(m + 6u, t, kv, b.r6); sg_jvp_tangent(m + 7u, t, kv, b.r7);
        sg_jvp_tangent(m + 8u, t, kv, b.r8); sg_jvp_tangent(m + 9u, t, kv, b.r9);
        sg_jvp_tangent(m + 10u, t, kv, b.r10); sg_jvp_tangent(m + 11u, t, kv, b.r11);
        sg_jvp_tangent(m + 12u, t, kv, b.r12); sg_jvp_tangent(m + 13u, t, kv, b.r13);
        sg_jvp_tangent(m + 14u, t, kv, b.r14); sg_jvp_tangent(m + 15u, t, kv, b.r15);
    }
}

@compute @workgroup_size(8, 1, 1)
fn backward_weight_subgroup(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(subgroup_invocation_id) lane: u32,
) {
    sg_backward_weight(wg.x, wg.y, wg.z, lane, p.rows);
}

// Workgroup (x, y) of row chunk `chunk`: input vec4s 8·x .., output features 16·y ..,
// over `rows` rows (p.rows, or the stacked rows when p describes the primal ones).
fn sg_backward_weight(x: u32, y: u32, chunk: u32, lane: u32, rows: u32) {
    let kv_real = x * 8u + lane;
    let kv = min(kv_real, p.in_vec4 - 1u);
    let nv0 = y * SG_DW_OUT_VEC4;
    let lv = p.out_vec4 - 1u;
    let n0 = min(nv0, lv); let n1 = min(nv0 + 1u, lv); let n2 = min(nv0 + 2u, lv); let n3 = min(nv0 + 3u, lv);
    let m_begin = chunk * p.chunk_rows;
    let m_end = min(m_begin + p.chunk_rows, rows);
    // g.r{4·q + r}: dW row 4·(nv0 + q) + r, input vec4 kv.
    var g = tile16_zero();
    var b0 = vec4<f32>(0.0); var b1 = vec4<f32>(0.0); var b2 = vec4<f32>(0.0); var b3 = vec4<f32>(0.0);
    for (var mb = m_begin; mb < m_end; mb += 8u) {
        // Lane l's row of dZ (zero past the chunk, so the broadcast rows add nothing).
        let ml = mb + lane;
        let mc = min(ml, m_end - 1u) * p.out_vec4;
        let keep = ml < m_end;
        let d0 = select(vec4<f32>(0.0), dz[mc + n0], keep);
        let d1 = select(vec4<f32>(0.0), dz[mc + n1], keep);
        let d2 = select(vec4<f32>(0.0), dz[mc + n2], keep);
        let d3 = select(vec4<f32>(0.0), dz[mc + n3], keep);
        let with_bias = keep && ml < p.bias_rows;
        b0 += select(vec4<f32>(0.0), d0, with_bias); b1 += select(vec4<f32>(0.0), d1, with_bias);
        b2 += select(vec4<f32>(0.0), d2, with_bias); b3 += select(vec4<f32>(0.0), d3, with_bias);
        // Row mb + r: its dZ values come from lane r, its X vec4 from this lane's column.
        dw_row(&g, subgroupBroadcast(d0, 0u), subgroupBroadcast(d1, 0u), subgroupBroadcast(d2, 0u), subgroupBroadcast(d3, 0u), x_in[min(mb, m_end - 1u) * p.in_vec4 + kv]);
        dw_row(&g, subgroupBroadcast(d0, 1u), subgroupBroadcast(d1, 1u), subgroupBroadcast(d2, 1u), subgroupBroadcast(d3, 1u), x_in[min(mb + 1u, m_end - 1u) * p.in_vec4 + kv]);
        dw_row(&g, subgroupBroadcast(d0, 2u), subgroupBroadcast(d1, 2u), subgroupBroadcast(d2, 2u), subgroupBroadcast(d3, 2u), x_in[min(mb + 2u, m_end - 1u) * p.in_vec4 + kv]);
        dw_row(&g, subgroupBroadcast(d0, 3u), subgroupBroadcast(d1, 3u), subgroupBroadcast(d2, 3u), subgroupBroadcast(d3, 3u), x_in[min(mb + 3u, m_end - 1u) * p.in_vec4 + kv]);
        dw_row(&g, subgroupBroadcast(d0, 4u), subgroupBroadcast(d1, 4u), subgroupBroadcast(d2, 4u), subgroupBroadcast(d3, 4u), x_in[min(mb + 4u, m_end - 1u) * p.in_vec4 + kv]);
        dw_row(&g, subgroupBroadcast(d0, 5u), subgroupBroadcast(d1, 5u), subgroupBroadcast(d2, 5u), subgroupBroadcast(d3, 5u), x_in[min(mb + 5u, m_end - 1u) * p.in_vec4 + kv]);
        dw_row(&g, subgroupBroadcast(d0, 6u), subgroupBroadcast(d1, 6u), subgroupBroadcast(d2, 6u), subgroupBroadcast(d3, 6u), x_in[min(mb + 6u, m_end - 1u) * p.in_vec4 + kv]);
        dw_row(&g, subgroupBroadcast(d0, 7u), subgroupBroadcast(d1, 7u), subgroupBroadcast(d2, 7u), subgroupBroadcast(d3, 7u), x_in[min(mb + 7u, m_end - 1u) * p.in_vec4 + kv]);
    }
    b0 = subgroupAdd(b0); b1 = subgroupAdd(b1); b2 = subgroupAdd(b2); b3 = subgroupAdd(b3);
    if (kv_real < p.in_vec4) {
        let na = 4u * nv0;
        dw_store(chunk, na, kv, g.r0); dw_store(chunk, na + 1u, kv, g.r1); dw_store(chunk, na + 2u, kv, g.r2); dw_store(chunk, na + 3u, kv, g.r3);
        dw_store(chunk, na + 4u, kv, g.r4); dw_store(chunk, na + 5u, kv, g.r5); dw_store(chunk, na + 6u, kv, g.r6); dw_store(chunk, na + 7u, kv, g.r7);
        dw_store(chunk, na + 8u, kv, g.r8); dw_store(chunk, na + 9u, kv, g.r9); dw_store(chunk, na + 10u, kv, g.r10); dw_store(chunk, na + 11u, kv, g.r11);
        dw_store(chunk, na + 12u, kv, g.r12); dw_store(chunk, na + 13u, kv, g.r13); dw_store(chunk, na + 14u, kv, g.r14); dw_store(chunk, na + 15u, kv, g.r15);
    }
    // db_store skips features past N (and so the clamped copies past the last vec4).
    if (x == 0u && lane == 0u) {
        db_store(chunk, nv0, b0); db_store(chunk, nv0 + 1u, b1);
        db_store(chunk, nv0 + 2u, b2); db_store(chunk, nv0 + 3u, b3);
    }
}

// backward_weight_subgroup's and backward_input_subgroup's workgroups in one dispatch: both
// read this layer's dZ and neither writes what the other reads, so the step saves one
// dispatch per layer (~50–100 µs each on lavapipe). Workgroups [0, weight groups) do dW,
// the rest dX; the grid is 1-D, folded into x and y (host: `backward_layer_groups`).
@compute @workgroup_size(8, 1, 1)
fn backward_layer_subgroup(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(subgroup_invocation_id) lane: u32,
) {
    backward_layer(wg.x + wg.y * nwg.x, lane, false);
}

// The same with tangent rows: p holds backward_input_jvp's parameters (primal rows, the
// activation below); the weight half runs over all (1 + T)·rows stacked rows.
@compute @workgroup_size(8, 1, 1)
fn backward_layer_jvp_subgroup(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(subgroup_invocation_id) lane: u32,
) {
    backward_layer(wg.x + wg.y * nwg.x, lane, true);
}

fn backward_layer(flat: u32, lane: u32, jvp: bool) {
    let gx = (p.in_vec4 + 7u) / 8u;
    let gy = (p.out_vec4 + SG_DW_OUT_VEC4 - 1u) / SG_DW_OUT_VEC4;
    let n_weight = gx * gy * p.n_chunks;
    // Uniform per workgroup, and a workgroup is one subgroup: the subgroup operations in
    // either branch run in uniform control flow.
    if (flat < n_weight) {
        let rows = select(p.rows, p.rows * (1u + p.n_tangents), jvp);
        sg_backward_weight(flat % gx, (flat / gx) % gy, flat / (gx * gy), lane, rows);
    } else if (jvp) {
        let f = flat - n_weight;
        sg_backward_input_jvp(f % gx, f / gx, lane);
    } else {
        let f = flat - n_weight;
        sg_backward_input(f % gx, f / gx, lane);
    }
}
