// matmul_subgroup.wgsl — linear_forward and linear_jvp for adapters whose subgroups are
// exactly 8 SIMD lanes (lavapipe): compiled after matmul.wgsl, whose parameters, bindings
// and epilogues they use, on adapters with `Features::SUBGROUP` and a subgroup size of 8
// (`Tiles::for_adapter` decides; FLOWGPU_SUBGROUP_TILES=0 turns them off). Same math as
// the plain entry points of the same name.
// Why: on a software adapter every lane's load of a vec4 is a gather, and the 8×4 tile
// of matmul.wgsl spends its time in them (48 gathered floats per 128 FMAs). Here each
// workgroup is one subgroup; lane l owns 4 output features (like the plain tile) for the
// subgroup's SG_ROWS = 16 rows, loads rows m0 + l and m0 + 8 + l of X (one vec4 each per
// step along the contraction) and `subgroupBroadcast` hands each row to every lane — a
// register shuffle — so X is read once per subgroup, not once per lane: 20 gathered
// floats per 256 FMAs. Measured on lavapipe at 4096×512×512: 39.7 GFLOP/s against 14.2
// for the 8×4 tile (16 rows: 39.7, 24: 45, 32: 42, 8: 28; 16 keeps small batches whole).
// Subgroup operations need uniform control flow: no lane returns early; rows and
// columns past the end are clamped for loading and skipped when storing.
// Host wrapper: src/kernels/matmul.rs (`linear_forward`, `linear_jvp` pick these).

const SG_ROWS: u32 = 16u;

// Where a subgroup works: its 4 output features per lane, its 16 rows, the clamped rows
// each lane loads and the clamped rows of W its features read.
struct SgForward {
    n0: u32,
    m0: u32,
    ra: u32,
    rb: u32,
    c0: u32,
    c1: u32,
    c2: u32,
    c3: u32,
}

// The grid folds row blocks past 65535 into z (host: `row_blocks`).
fn sg_forward(wg: vec3<u32>, nwg: vec3<u32>, lane: u32) -> SgForward {
    var s: SgForward;
    s.n0 = (wg.x * 8u + lane) * TILE_COLS;
    s.m0 = (wg.y + wg.z * nwg.y) * SG_ROWS;
    let lr = p.rows - 1u;
    let lc = p.out_features - 1u;
    let kv = p.in_vec4;
    s.ra = min(s.m0 + lane, lr) * kv;
    s.rb = min(s.m0 + 8u + lane, lr) * kv;
    s.c0 = p.w_off4 + min(s.n0, lc) * kv;
    s.c1 = p.w_off4 + min(s.n0 + 1u, lc) * kv;
    s.c2 = p.w_off4 + min(s.n0 + 2u, lc) * kv;
    s.c3 = p.w_off4 + min(s.n0 + 3u, lc) * kv;
    return s;
}

// X·Wᵀ of the subgroup's rows, read at row offset `xo` (vec4s) of x: 0 for the primal
// rows, t·rows·in_vec4 for tangent direction t.
fn sg_tile(s: SgForward, xo: u32) -> Tile16 {
    var a = tile16_zero();
    for (var k = 0u; k < p.in_vec4; k++) {
        bcast_dot16(&a, x[xo + s.ra + k], x[xo + s.rb + k], params[s.c0 + k], params[s.c1 + k], params[s.c2 + k], params[s.c3 + k]);
    }
    return a;
}

@compute @workgroup_size(8, 1, 1)
fn linear_forward_subgroup(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(subgroup_invocation_id) lane: u32,
) {
    let s = sg_forward(wg, nwg, lane);
    let a = sg_tile(s, 0u);
    let m = s.m0;
    let n = s.n0;
    epilogue(m, n, a.r0);    epilogue(m + 1u, n, a.r1);    epilogue(m + 2u, n, a.r2);    epilogue(m + 3u, n, a.r3);
    epilogue(m + 4u, n, a.r4);    epilogue(m + 5u, n, a.r5);    epilogue(m + 6u, n, a.r6);    epilogue(m + 7u, n, a.r7);
    epilogue(m + 8u, n, a.r8);    epilogue(m + 9u, n, a.r9);    epilogue(m + 10u, n, a.r10);    epilogue(m + 11u, n, a.r11);
    epilogue(m + 12u, n, a.r12);    epilogue(m + 13u, n, a.r13);    epilogue(m + 14u, n, a.r14);    epilogue(m + 15u, n, a.r15);
}

// Primal outputs of linear_jvp_subgroup: Z is stored whatever store_pre says (with
// tangents the pass always has Z buffers), for the tangent epilogues to read back.
fn jvp_primal(m: u32, n0: u32, acc: vec4<f32>) {
    store_out(m, n0, acc, true);
}

// Tangent outputs of row `row` (primal row m): Ḣ = act'(Z)·Ż with the primal Z read back
// from what this lane stored (same features, same rows).
fn jvp_tangent_out(m: u32, row: u32, n0: u32, acc: vec4<f32>) {
    if (m < p.rows) {
        jvp_epilogue(m, row, n0, acc, z[out4(m, n0)]);
    }
}

// linear_jvp's math with 16-row tiles: the primal Z goes through memory (the plain kernel
// keeps it in registers, which 16 rows of primal, Z and tangent would overflow).
@compute @workgroup_size(8, 1, 1)
fn linear_jvp_subgroup(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(subgroup_invocation_id) lane: u32,
) {
    let s = sg_forward(wg, nwg, lane);
    let m = s.m0;
    let n = s.n0;
    let a = sg_tile(s, 0u);
    jvp_primal(m, n, a.r0);    jvp_primal(m + 1u, n, a.r1);    jvp_primal(m + 2u, n, a.r2);    jvp_primal(m + 3u, n, a.r3);
    jvp_primal(m + 4u, n, a.r4);    jvp_primal(m + 5u, n, a.r5);    jvp_primal(m + 6u, n, a.r6);    jvp_primal(m + 7u, n, a.r7);
    jvp_primal(m + 8u, n, a.r8);    jvp_primal(m + 9u, n, a.r9);    jvp_primal(m + 10u, n, a.r10);    jvp_primal(m + 11u, n, a.r11);
    jvp_primal(m + 12u, n, a.r12);    jvp_primal(m + 13u, n, a.r13);    jvp_primal(m + 14u, n, a.r14);    jvp_primal(m + 15u, n, a.r15);
    for (var t = 1u; t <= p.tangents; t++) {
        let base = t * p.rows;
        let b = sg_tile(s, base * p.in_vec4);
        jvp_tangent_out(m, base + m, n, b.r0);        jvp_tangent_out(m + 1u, base + m + 1u, n, b.r1);
        jvp_tangent_out(m + 2u, base + m + 2u, n, b.r2);        jvp_tangent_out(m + 3u, base + m + 3u, n, b.r3);
        jvp_tangent_out(m + 4u, base + m + 4u, n, b.r4);        jvp_tangent_out(m + 5u, base + m + 5u, n, b.r5);
        jvp_tangent_out(m + 6u, base + m + 6u, n, b.r6);        jvp_tangent_out(m + 7u, base + m + 7u, n, b.r7);
        jvp_tangent_out(m + 8u, base + m + 8u, n, b.r8);        jvp_tangent_out(m + 9u, base + m + 9u, n, b.r9);
        jvp_tangent_out(m + 10u, base + m + 10u, n, b.r10);        jvp_tangent_out(m + 11u, base + m + 11u, n, b.r11);
        jvp_tangent_out(m + 12u, base + m + 12u, n, b.r12);        jvp_tangent_out(m + 13u, base + m + 13u, n, b.r13);
        jvp_tangent_out(m + 14u, base + m + 14u, n, b.r14);        jvp_tangent_out(m + 15u, base + m + 15u, n, b.r15);
    }
}
