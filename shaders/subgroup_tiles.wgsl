// subgroup_tiles.wgsl — prepended (after common.wgsl) to the families that use 8-lane
// subgroups (matmul_subgroup, mlp_backward_subgroup, cfm_step_subgroup): the register tile
// and the broadcast steps they share. A lane owns 16 rows of one output vec4 (forward) or
// input vec4 (input gradient); each of the subgroup's 8 lanes loads one of 8 rows and
// subgroupBroadcast (a register shuffle) hands it to the others. NIR inlines every function,
// so the tile stays in registers.

// 16 vec4 accumulators of one lane.
struct Tile16 {
    r0: vec4<f32>, r1: vec4<f32>, r2: vec4<f32>, r3: vec4<f32>,
    r4: vec4<f32>, r5: vec4<f32>, r6: vec4<f32>, r7: vec4<f32>,
    r8: vec4<f32>, r9: vec4<f32>, r10: vec4<f32>, r11: vec4<f32>,
    r12: vec4<f32>, r13: vec4<f32>, r14: vec4<f32>, r15: vec4<f32>,
}

fn tile16_zero() -> Tile16 {
    let z = vec4<f32>(0.0);
    return Tile16(z, z, z, z, z, z, z, z, z, z, z, z, z, z, z, z);
}

// One step along the contraction of a forward tile: rows xa (lane r holds row r) and xb (row
// 8 + r), broadcast to every lane, against this lane's 4 rows of W.
fn bcast_dot16(a: ptr<function, Tile16>, xa: vec4<f32>, xb: vec4<f32>, w0: vec4<f32>, w1: vec4<f32>, w2: vec4<f32>, w3: vec4<f32>) {
    (*a).r0 += dot4(subgroupBroadcast(xa, 0u), w0, w1, w2, w3);
    (*a).r1 += dot4(subgroupBroadcast(xa, 1u), w0, w1, w2, w3);
    (*a).r2 += dot4(subgroupBroadcast(xa, 2u), w0, w1, w2, w3);
    (*a).r3 += dot4(subgroupBroadcast(xa, 3u), w0, w1, w2, w3);
    (*a).r4 += dot4(subgroupBroadcast(xa, 4u), w0, w1, w2, w3);
    (*a).r5 += dot4(subgroupBroadcast(xa, 5u), w0, w1, w2, w3);
    (*a).r6 += dot4(subgroupBroadcast(xa, 6u), w0, w1, w2, w3);
    (*a).r7 += dot4(subgroupBroadcast(xa, 7u), w0, w1, w2, w3);
    (*a).r8 += dot4(subgroupBroadcast(xb, 0u), w0, w1, w2, w3);
    (*a).r9 += dot4(subgroupBroadcast(xb, 1u), w0, w1, w2, w3);
    (*a).r10 += dot4(subgroupBroadcast(xb, 2u), w0, w1, w2, w3);
    (*a).r11 += dot4(subgroupBroadcast(xb, 3u), w0, w1, w2, w3);
    (*a).r12 += dot4(subgroupBroadcast(xb, 4u), w0, w1, w2, w3);
    (*a).r13 += dot4(subgroupBroadcast(xb, 5u), w0, w1, w2, w3);
    (*a).r14 += dot4(subgroupBroadcast(xb, 6u), w0, w1, w2, w3);
    (*a).r15 += dot4(subgroupBroadcast(xb, 7u), w0, w1, w2, w3);
}

// One step of an input-gradient tile: dZ vec4s da (lane r: row r) and db (row 8 + r),
// broadcast, against four rows of W at this lane's input vec4.
fn bcast_mix16(a: ptr<function, Tile16>, da: vec4<f32>, db: vec4<f32>, w0: vec4<f32>, w1: vec4<f32>, w2: vec4<f32>, w3: vec4<f32>) {
    (*a).r0 += mix4(subgroupBroadcast(da, 0u), w0, w1, w2, w3);
    (*a).r1 += mix4(subgroupBroadcast(da, 1u), w0, w1, w2, w3);
    (*a).r2 += mix4(subgroupBroadcast(da, 2u), w0, w1, w2, w3);
    (*a).r3 += mix4(subgroupBroadcast(da, 3u), w0, w1, w2, w3);
    (*a).r4 += mix4(subgroupBroadcast(da, 4u), w0, w1, w2, w3);
    (*a).r5 += mix4(subgroupBroadcast(da, 5u), w0, w1, w2, w3);
    (*a).r6 += mix4(subgroupBroadcast(da, 6u), w0, w1, w2, w3);
    (*a).r7 += mix4(subgroupBroadcast(da, 7u), w0, w1, w2, w3);
    (*a).r8 += mix4(subgroupBroadcast(db, 0u), w0, w1, w2, w3);
    (*a).r9 += mix4(subgroupBroadcast(db, 1u), w0, w1, w2, w3);
    (*a).r10 += mix4(subgroupBroadcast(db, 2u), w0, w1, w2, w3);
    (*a).r11 += mix4(subgroupBroadcast(db, 3u), w0, w1, w2, w3);
    (*a).r12 += mix4(subgroupBroadcast(db, 4u), w0, w1, w2, w3);
    (*a).r13 += mix4(subgroupBroadcast(db, 5u), w0, w1, w2, w3);
    (*a).r14 += mix4(subgroupBroadcast(db, 6u), w0, w1, w2, w3);
    (*a).r15 += mix4(subgroupBroadcast(db, 7u), w0, w1, w2, w3);
}

// One row's share of a 16-output × 1-vec4 weight-gradient tile: dZ values e (4 outputs
// each) times this lane's X vec4 of the row.
fn dw_row(g: ptr<function, Tile16>, e0: vec4<f32>, e1: vec4<f32>, e2: vec4<f32>, e3: vec4<f32>, xr: vec4<f32>) {
    (*g).r0 += e0.x * xr; (*g).r1 += e0.y * xr; (*g).r2 += e0.z * xr; (*g).r3 += e0.w * xr;
    (*g).r4 += e1.x * xr; (*g).r5 += e1.y * xr; (*g).r6 += e1.z * xr; (*g).r7 += e1.w * xr;
    (*g).r8 += e2.x * xr; (*g).r9 += e2.y * xr; (*g).r10 += e2.z * xr; (*g).r11 += e2.w * xr;
    (*g).r12 += e3.x * xr; (*g).r13 += e3.y * xr; (*g).r14 += e3.z * xr; (*g).r15 += e3.w * xr;
}
