// trace.wgsl — the divergence Tr(∂v/∂x) for the instantaneous change of variables,
// from forward-mode tangents J·u computed by matmul.wgsl's tangent mode:
//   probe_init: writes the tangent directions u_m of every row into the MLP's tangent
//               input rows (zero in the time columns: t is not perturbed) and keeps them:
//               exact: u_m = e_m for m < dim (Σ_m (J·e_m)_m is the exact trace);
//               hutchinson: M probes, Gaussian or Rademacher (E[u] = 0, Cov(u) = I), keyed
//               by (seed, global row, m, j), so they stay fixed over a solve (FFJORD).
//   divergence: div_i = (1/M)·Σ_m u_mᵀ(J·u_m) (M = 1 divisor for exact).
// Host wrapper: src/kernels/trace.rs; log-likelihood: src/density.rs.

struct TraceParams {
    rows: u32,
    dim: u32,
    in_stride: u32,     // MLP input row stride in floats
    out_stride: u32,    // MLP output row stride in floats
    n_tangents: u32,    // tangent directions per row (dim for exact, M for hutchinson)
    probe: u32,         // PROBE_* code
    seed: u32,
    row_offset: u32,    // global index of row 0 (probe RNG key)
}

@group(0) @binding(0) var<uniform> p: TraceParams;
@group(0) @binding(1) var<storage, read_write> tangent_input: array<f32>;
@group(0) @binding(2) var<storage, read_write> probes: array<f32>;
@group(0) @binding(3) var<storage, read> tangent_out: array<f32>;
@group(0) @binding(4) var<storage, read_write> div: array<f32>;

const PROBE_EXACT: u32 = 0u;
const PROBE_GAUSSIAN: u32 = 1u;
const PROBE_RADEMACHER: u32 = 2u;
const STREAM_PROBE: u32 = 5u;

fn probe_value(i: u32, m: u32, j: u32) -> f32 {
    switch p.probe {
        case 1u: {
            return normal_at(p.seed, STREAM_PROBE, p.row_offset + i, m, j);
        }
        case 2u: {
            let bits = rng_bits(p.seed, STREAM_PROBE, p.row_offset + i, m, j);
            return select(-1.0, 1.0, (bits & 0x80000000u) != 0u);
        }
        default: {
            return select(0.0, 1.0, m == j);
        }
    }
}

@compute @workgroup_size(WG1, 1, 1)
fn probe_init(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_index(gid, nwg);
    if (i >= p.rows) {
        return;
    }
    for (var m = 0u; m < p.n_tangents; m++) {
        let r = m * p.rows + i;
        for (var j = 0u; j < p.dim; j++) {
            let u = probe_value(i, m, j);
            probes[r * p.dim + j] = u;
            tangent_input[r * p.in_stride + j] = u;
        }
    }
}

@compute @workgroup_size(WG1, 1, 1)
fn divergence(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_index(gid, nwg);
    if (i >= p.rows) {
        return;
    }
    var s = 0.0;
    for (var m = 0u; m < p.n_tangents; m++) {
        let r = m * p.rows + i;
        for (var j = 0u; j < p.dim; j++) {
            s += probes[r * p.dim + j] * tangent_out[r * p.out_stride + j];
        }
    }
    if (p.probe != PROBE_EXACT) {
        s /= f32(p.n_tangents);
    }
    div[i] = s;
}
