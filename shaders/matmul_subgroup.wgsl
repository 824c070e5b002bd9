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

// Row block of a subgroup: the grid folds blocks past 65535 into z (host: sg_row_grid).
fn sg_row_block(wg: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return wg.y + wg.z * nwg.y;
}

@compute @workgroup_size(8, 1, 1)
fn linear_forward_subgroup(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(subgroup_invocation_id) lane: u32,
) {
    let n0 = (wg.x * 8u + lane) * TILE_COLS;
    let m0 = sg_row_block(wg, nwg) * SG_ROWS;
    let lr = p.rows - 1u;
    let lc = p.out_features - 1u;
    let kv = p.in_vec4;
    let ra = min(m0 + lane, lr) * kv;
    let rb = min(m0 + 8u + lane, lr) * kv;
    let c0 = p.w_off4 + min(n0, lc) * kv; let c1 = p.w_off4 + min(n0 + 1u, lc) * kv;
    let c2 = p.w_off4 + min(n0 + 2u, lc) * kv; let c3 = p.w_off4 + min(n0 + 3u, lc) * kv;
    var a0 = vec4<f32>(0.0); var a1 = vec4<f32>(0.0); var a2 = vec4<f32>(0.0); var a3 = vec4<f32>(0.0);
    var a4 = vec4<f32>(0.0); var a5 = vec4<f32>(0.0); var a6 = vec4<f32>(0.0); var a7 = vec4<f32>(0.0);
    var a8 = vec4<f32>(0.0); var a9 = vec4<f32>(0.0); var a10 = vec4<f32>(0.0); var a11 = vec4<f32>(0.0);
    var a12 = vec4<f32>(0.0); var a13 = vec4<f32>(0.0); var a14 = vec4<f32>(0.0); var a15 = vec4<f32>(0.0);
    for (var k = 0u; k < kv; k++) {
        let w0 = params[c0 + k]; let w1 = params[c1 + k]; let w2 = params[c2 + k]; let w3 = params[c3 + k];
        let xa = x[ra + k];
        let xb = x[rb + k];
        a0 += dot4(subgroupBroadcast(xa, 0u), w0, w1, w2, w3);
        a1 += dot4(subgroupBroadcast(xa, 1u), w0, w1, w2, w3);
        a2 += dot4(subgroupBroadcast(xa, 2u), w0, w1, w2, w3);
        a3 += dot4(subgroupBroadcast(xa, 3u), w0, w1, w2, w3);
        a4 += dot4(subgroupBroadcast(xa, 4u), w0, w1, w2, w3);
        a5 += dot4(subgroupBroadcast(xa, 5u), w0, w1, w2, w3);
        a6 += dot4(subgroupBroadcast(xa, 6u), w0, w1, w2, w3);
        a7 += dot4(subgroupBroadcast(xa, 7u), w0, w1, w2, w3);
        a8 += dot4(subgroupBroadcast(xb, 0u), w0, w1, w2, w3);
        a9 += dot4(subgroupBroadcast(xb, 1u), w0, w1, w2, w3);
        a10 += dot4(subgroupBroadcast(xb, 2u), w0, w1, w2, w3);
        a11 += dot4(subgroupBroadcast(xb, 3u), w0, w1, w2, w3);
        a12 += dot4(subgroupBroadcast(xb, 4u), w0, w1, w2, w3);
        a13 += dot4(subgroupBroadcast(xb, 5u), w0, w1, w2, w3);
        a14 += dot4(subgroupBroadcast(xb, 6u), w0, w1, w2, w3);
        a15 += dot4(subgroupBroadcast(xb, 7u), w0, w1, w2, w3);
    }
    epilogue(m0, n0, a0); epilogue(m0 + 1u, n0, a1); epilogue(m0 + 2u, n0, a2); epilogue(m0 + 3u, n0, a3);
    epilogue(m0 + 4u, n0, a4); epilogue(m0 + 5u, n0, a5); epilogue(m0 + 6u, n0, a6); epilogue(m0 + 7u, n0, a7);
    epilogue(m0 + 8u, n0, a8); epilogue(m0 + 9u, n0, a9); epilogue(m0 + 10u, n0, a10); epilogue(m0 + 11u, n0, a11);
    epilogue(m0 + 12u, n0, a12); epilogue(m0 + 13u, n0, a13); epilogue(m0 + 14u, n0, a14); epilogue(m0 + 15u, n0, a15);
}

// linear_jvp with 8 rows per subgroup (one loaded per lane): its primal Z stays in
// registers for the tangent epilogues, as in linear_jvp, so 16 rows would not fit.
@compute @workgroup_size(8, 1, 1)
fn linear_jvp_subgroup(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(subgroup_invocation_id) lane: u32,
) {
    let n0 = (wg.x * 8u + lane) * TILE_COLS;
    let m0 = sg_row_block(wg, nwg) * 8u;
    let lr = p.rows - 1u;
    let lc = p.out_features - 1u;
    let kv = p.in_vec4;
    let ra = min(m0 + lane, lr) * kv;
    let c0 = p.w_off4 + min(n0, lc) * kv; let c1 = p.w_off4 + min(n0 + 1u, lc) * kv;
    let c2 = p.w_off4 + min(n0 + 2u, lc) * kv; let c3 = p.w_off4 + min(n0 + 3u, lc) * kv;
    var a0 = vec4<f32>(0.0); var a1 = vec4<f32>(0.0); var a2 = vec4<f32>(0.0); var a3 = vec4<f32>(0.0);
    var a4 = vec4<f32>(0.0); var a5 = vec4<f32>(0.0); var a6 = vec4<f32>(0.0); var a7 = vec4<f32>(0.0);
    for (var k = 0u; k < kv; k++) {
        let w0 = params[c0 + k]; let w1 = params[c1 + k]; let w2 = params[c2 + k]; let w3 = params[c3 + k];
        let xa = x[ra + k];
        a0 += dot4(subgroupBroadcast(xa, 0u), w0, w1, w2, w3);
        a1 += dot4(subgroupBroadcast(xa, 1u), w0, w1, w2, w3);
        a2 += dot4(subgroupBroadcast(xa, 2u), w0, w1, w2, w3);
        a3 += dot4(subgroupBroadcast(xa, 3u), w0, w1, w2, w3);
        a4 += dot4(subgroupBroadcast(xa, 4u), w0, w1, w2, w3);
        a5 += dot4(subgroupBroadcast(xa, 5u), w0, w1, w2, w3);
        a6 += dot4(subgroupBroadcast(xa, 6u), w0, w1, w2, w3);
        a7 += dot4(subgroupBroadcast(xa, 7u), w0, w1, w2, w3);
    }
    epilogue(m0, n0, a0); epilogue(m0 + 1u, n0, a1); epilogue(m0 + 2u, n0, a2); epilogue(m0 + 3u, n0, a3);
    epilogue(m0 + 4u, n0, a4); epilogue(m0 + 5u, n0, a5); epilogue(m0 + 6u, n0, a6); epilogue(m0 + 7u, n0, a7);
    let b = bias4(n0);
    let z0 = a0 + b; let z1 = a1 + b; let z2 = a2 + b; let z3 = a3 + b;
    let z4 = a4 + b; let z5 = a5 + b; let z6 = a6 + b; let z7 = a7 + b;
    for (var t = 1u; t <= p.tangents; t++) {
        let base = t * p.rows;
        let o = base * kv;
        var b0 = vec4<f32>(0.0); var b1 = vec4<f32>(0.0); var b2 = vec4<f32>(0.0); var b3 = vec4<f32>(0.0);
        var b4 = vec4<f32>(0.0); var b5 = vec4<f32>(0.0); var b6 = vec4<f32>(0.0); var b7 = vec4<f32>(0.0);
        for (var k = 0u; k < kv; k++) {
            let w0 = params[c0 + k]; let w1 = params[c1 + k]; let w2 = params[c2 + k]; let w3 = params[c3 + k];
            let xa = x[o + ra + k];
            b0 += dot4(subgroupBroadcast(xa, 0u), w0, w1, w2, w3);
            b1 += dot4(subgroupBroadcast(xa, 1u), w0, w1, w2, w3);
            b2 += dot4(subgroupBroadcast(xa, 2u), w0, w1, w2, w3);
            b3 += dot4(subgroupBroadcast(xa, 3u), w0, w1, w2, w3);
            b4 += dot4(subgroupBroadcast(xa, 4u), w0, w1, w2, w3);
            b5 += dot4(subgroupBroadcast(xa, 5u), w0, w1, w2, w3);
            b6 += dot4(subgroupBroadcast(xa, 6u), w0, w1, w2, w3);
            b7 += dot4(subgroupBroadcast(xa, 7u), w0, w1, w2, w3);
        }
        jvp_epilogue(m0, base + m0, n0, b0, z0); jvp_epilogue(m0 + 1u, base + m0 + 1u, n0, b1, z1);
        jvp_epilogue(m0 + 2u, base + m0 + 2u, n0, b2, z2); jvp_epilogue(m0 + 3u, base + m0 + 3u, n0, b3, z3);
        jvp_epilogue(m0 + 4u, base + m0 + 4u, n0, b4, z4); jvp_epilogue(m0 + 5u, base + m0 + 5u, n0, b5, z5);
        jvp_epilogue(m0 + 6u, base + m0 + 6u, n0, b6, z6); jvp_epilogue(m0 + 7u, base + m0 + 7u, n0, b7, z7);
    }
}
