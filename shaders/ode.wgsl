// ode.wgsl — fused solver stages for dx/dt = v(x, t): each kernel updates the state and
// writes the next MLP input rows [x, time features] in the same pass, so a fixed-step
// solve is MLP evaluations plus one small kernel per stage, with no readback.
//   base_noise: x ~ N(0, I) keyed by the global row index (chunking does not change
//               the samples), and the input rows at t.
//   euler_step: x ← x + h·v(x, t), input rows at t + h.
// Host wrapper: src/kernels/ode.rs.

struct OdeParams {
    rows: u32,
    dim: u32,
    in_stride: u32,     // MLP input row stride in floats
    out_stride: u32,    // MLP output row stride in floats
    time_cols: u32,
    row_offset: u32,    // global index of row 0 (RNG key of base_noise)
    seed: u32,
    _pad: u32,
    t: f32,             // time of the input rows written (after the update)
    h: f32,             // step size
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> p: OdeParams;
@group(0) @binding(1) var<storage, read_write> state: array<f32>;
@group(0) @binding(2) var<storage, read_write> input: array<f32>;
@group(0) @binding(3) var<storage, read> v: array<f32>;

fn write_time(i: u32) {
    for (var c = 0u; c < p.time_cols; c++) {
        input[i * p.in_stride + p.dim + c] = time_feature(c, p.t);
    }
}

@compute @workgroup_size(WG1, 1, 1)
fn base_noise(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_index(gid, nwg);
    if (i >= p.rows) {
        return;
    }
    for (var j = 0u; j < p.dim; j++) {
        let x = normal_at(p.seed, STREAM_BASE, p.row_offset + i, 0u, j);
        state[i * p.dim + j] = x;
        input[i * p.in_stride + j] = x;
    }
    write_time(i);
}

@compute @workgroup_size(WG1, 1, 1)
fn euler_step(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_index(gid, nwg);
    if (i >= p.rows) {
        return;
    }
    for (var j = 0u; j < p.dim; j++) {
        let x = state[i * p.dim + j] + p.h * v[i * p.out_stride + j];
        state[i * p.dim + j] = x;
        input[i * p.in_stride + j] = x;
    }
    write_time(i);
}
