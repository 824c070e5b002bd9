// trace.wgsl — the divergence Tr(∂v/∂x) for the instantaneous change of variables,
// from forward-mode tangents J·u computed by matmul.wgsl's tangent mode (tangent row
// (1 + m)·N + i of the stacked MLP buffers is direction m of row i):
//   probe_init: writes the tangent directions u_m of every row into the MLP's tangent
//               input rows (zero in the time columns: t is not perturbed) and keeps them:
//               exact: u_m = e_m for m < dim (Σ_m (J·e_m)_m is the exact trace);
//               hutchinson: M probes, Gaussian or Rademacher (E[u] = 0, Cov(u) = I), keyed
//               by (seed, global row, m, j), so they stay fixed over a solve (FFJORD).
//   divergence: per row, [div, kinetic, frobenius, 0]: div = (1/M)·Σ_m u_mᵀ(J·u_m)
//               (M = 1 divisor for exact), kinetic = ‖v‖², frobenius = (1/M)·Σ_m ‖J·u_m‖²
//               (an unbiased estimate of ‖J‖_F²; exact probes give it exactly).
//   trace_cotangent: seeds the backward pass through the tangents for the adjoint of
//               S = aᵀv + a_trace·div + a_kinetic·kinetic + a_frobenius·frobenius:
//               dS/dv = a + 2·a_kinetic·v in the primal rows and, in tangent row m,
//               dS/d(J·u_m) = (a_trace·u_m + 2·a_frobenius·J·u_m)/M. The per-row a comes
//               from the adjoint solver's stage (ode.wgsl, binding cotangent).
// Host wrapper: src/kernels/trace.rs; log-likelihood: src/solve.rs; MLE: src/mle/.

struct TraceParams {
    rows: u32,
    dim: u32,
    in_stride: u32,     // MLP input row stride in floats
    out_stride: u32,    // MLP output row stride in floats
    n_tangents: u32,    // tangent directions per row (dim for exact, M for hutchinson)
    probe: u32,         // PROBE_* code
    seed: u32,
    row_offset: u32,    // global index of row 0 (probe RNG key)
    a_trace: f32,       // trace_cotangent: weights of the divergence, kinetic energy and
    a_kinetic: f32,     // Frobenius terms in S
    a_frobenius: f32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> p: TraceParams;
@group(0) @binding(1) var<storage, read_write> tangent_input: array<f32>;
@group(0) @binding(2) var<storage, read_write> probes: array<f32>;
// Read-write: the fused field (field_subgroup.wgsl) writes the MLP output here.
@group(0) @binding(3) var<storage, read_write> tangent_out: array<f32>;
@group(0) @binding(4) var<storage, read_write> div: array<f32>;
@group(0) @binding(5) var<storage, read> cotangent: array<f32>;
@group(0) @binding(6) var<storage, read_write> dv: array<f32>;

// Floats per row of `div` (DIV_STRIDE in src/kernels/trace.rs).

fn probe_value(i: u32, m: u32, j: u32) -> f32 {
    switch p.probe {
        case PROBE_GAUSSIAN: {
            return normal_at(p.seed, STREAM_PROBE, p.row_offset + i, m, j);
        }
        case PROBE_RADEMACHER: {
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
        let tr = r + p.rows;
        for (var j = 0u; j < p.dim; j++) {
            let u = probe_value(i, m, j);
            probes[r * p.dim + j] = u;
            tangent_input[tr * p.in_stride + j] = u;
        }
        // Time and class columns are not perturbed. Zeroed here because these rows of the
        // stacked input buffer may hold primal rows of an earlier, larger chunk.
        for (var c = p.dim; c < p.in_stride; c++) {
            tangent_input[tr * p.in_stride + c] = 0.0;
        }
    }
}

fn probe_scale() -> f32 {
    return select(1.0 / f32(p.n_tangents), 1.0, p.probe == PROBE_EXACT);
}

@compute @workgroup_size(WG1, 1, 1)
fn divergence(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_index(gid, nwg);
    if (i < p.rows) {
        divergence_row(i);
    }
}

// Row i's [div, kinetic, frobenius, 0] (also called by field_subgroup.wgsl).
fn divergence_row(i: u32) {
    var s = 0.0;
    var frob = 0.0;
    for (var m = 0u; m < p.n_tangents; m++) {
        let r = m * p.rows + i;
        let tr = r + p.rows;
        for (var j = 0u; j < p.dim; j++) {
            let ju = tangent_out[tr * p.out_stride + j];
            s += probes[r * p.dim + j] * ju;
            frob += ju * ju;
        }
    }
    var kin = 0.0;
    for (var j = 0u; j < p.dim; j++) {
        let v = tangent_out[i * p.out_stride + j];
        kin += v * v;
    }
    let o = i * DIV_STRIDE;
    div[o] = s * probe_scale();
    div[o + 1u] = kin;
    div[o + 2u] = frob * probe_scale();
    div[o + 3u] = 0.0;
}

@compute @workgroup_size(WG1, 1, 1)
fn trace_cotangent(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_index(gid, nwg);
    if (i < p.rows) {
        cotangent_row(i);
    }
}

// dS/dv and dS/d(J·u_m) of row i into dv (also called by field_subgroup.wgsl).
fn cotangent_row(i: u32) {
    for (var j = 0u; j < p.dim; j++) {
        let o = i * p.out_stride + j;
        dv[o] = cotangent[i * p.dim + j] + 2.0 * p.a_kinetic * tangent_out[o];
    }
    let sc = probe_scale();
    for (var m = 0u; m < p.n_tangents; m++) {
        let r = m * p.rows + i;
        let tr = r + p.rows;
        for (var j = 0u; j < p.dim; j++) {
            let o = tr * p.out_stride + j;
            dv[o] = sc * (p.a_trace * probes[r * p.dim + j] + 2.0 * p.a_frobenius * tangent_out[o]);
        }
    }
}
