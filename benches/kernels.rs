//! Micro-benchmark of the kernels around the MLP (benches/matmul.rs has the MLP's): the
//! optimizer, the CFM batch draw, a Runge–Kutta stage, the divergence, a Sinkhorn update and
//! the MLE gradient quadrature, each dispatched alone at the size of a standard workload
//! and at one element. The one-element time is the adapter's floor for a dispatch of that
//! kernel (on lavapipe it, not the arithmetic, is most of a small kernel's cost); the
//! difference, per element, is the kernel's own work. Streaming kernels also report
//! achieved GB/s from the bytes they must move.
//!
//! cargo bench --bench kernels [-- --quick]

use flowgpu::gpu::UniformArena;
use flowgpu::kernels::{adam, cfm, mle, ode, ot, trace, BindScratch};
use flowgpu::model::{Activation, MlpConfig, ParamLayout};
use flowgpu::{AdapterChoice, GpuContext};
use std::time::Instant;

/// One kernel at one size: its parameter slot, grid and what an element is.
struct Case {
    name: String,
    kernel: Box<dyn BindScratch>,
    /// Its parameters, in slot 0.
    params: UniformArena,
    groups: [u32; 3],
    /// Elements (rows, parameters) of the problem.
    elements: usize,
    /// Bytes the kernel must read and write, for streaming kernels.
    bytes: Option<f64>,
}

/// Median seconds per dispatch over `reps` submits of `calls` dispatches each.
fn time_case(ctx: &GpuContext, case: &Case, buf_len: usize, calls: usize, reps: usize) -> f64 {
    let kernel = case
        .kernel
        .bind_scratch(ctx, &case.params, buf_len)
        .unwrap();
    let run = || {
        let mut enc = ctx.device.create_command_encoder(&Default::default());
        {
            let mut cp = enc.begin_compute_pass(&Default::default());
            for _ in 0..calls {
                kernel.dispatch(&mut cp, 0, case.groups);
            }
        }
        ctx.submit(enc).unwrap();
        ctx.wait().unwrap();
    };
    run();
    let mut t: Vec<f64> = (0..reps)
        .map(|_| {
            let t0 = Instant::now();
            run();
            t0.elapsed().as_secs_f64() / calls as f64
        })
        .collect();
    t.sort_by(|a, b| a.total_cmp(b));
    t[t.len() / 2]
}

/// A parameter arena holding `p` in slot 0.
fn slot<T: bytemuck::Pod>(ctx: &GpuContext, p: &T) -> UniformArena {
    let mut arena = UniformArena::new(ctx, "bench params", 1);
    arena.set(0, p);
    arena.upload(ctx, 0..1);
    arena
}

/// The cases at `n` elements (rows, or parameters for the optimizer and quadrature).
fn cases(ctx: &GpuContext, n_params: usize, rows: usize, ot_batch: usize) -> Vec<Case> {
    let t = &ctx.tiles;
    let mut v = Vec::new();
    // AdamW from 2 gradient slots (the fused step's) with the batch loss, no clipping.
    let slot_vec4 = n_params / 4 + 1;
    let ap = adam::AdamParams {
        n: n_params as u32,
        n_partials: adam::n_partials(n_params, t) as u32,
        lr: 1e-3,
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        bias_corr1: 0.1,
        bias_corr2: 0.001,
        grad_parts: 2,
        part_vec4: slot_vec4 as u32,
        loss_rows: 256,
        ..Default::default()
    };
    v.push(Case {
        name: "adam.wgsl::adam_update (2 slots)".into(),
        kernel: Box::new(adam::adam_update(ctx, false).unwrap()),
        params: slot(ctx, &ap),
        groups: adam::update_groups(&ap, t),
        elements: n_params,
        // Reads 2 gradient slots, θ, m, v; writes θ, m, v.
        bytes: Some(8.0 * 4.0 * n_params as f64),
    });
    v.push(Case {
        name: "adam.wgsl::adam_update_clipped (2 slots)".into(),
        kernel: Box::new(adam::adam_update(ctx, true).unwrap()),
        params: slot(
            ctx,
            &adam::AdamParams {
                clip_norm: 1.0,
                ..ap
            },
        ),
        groups: adam::update_groups(&ap, t),
        elements: n_params,
        bytes: Some(8.0 * 4.0 * n_params as f64),
    });
    v.push(Case {
        name: "adam.wgsl::grad_sq_partial (2 slots)".into(),
        kernel: Box::new(adam::grad_sq_partial(ctx).unwrap()),
        params: slot(ctx, &ap),
        groups: adam::grad_sq_groups(&ap, t),
        elements: n_params,
        bytes: Some(2.0 * 4.0 * n_params as f64),
    });
    let mp = mle::MleParams {
        n_params: n_params as u32,
        coef: 0.5,
        ..Default::default()
    };
    v.push(Case {
        name: "mle.wgsl::accumulate".into(),
        kernel: Box::new(mle::accumulate(ctx).unwrap()),
        params: slot(ctx, &mp),
        groups: mle::per_param_groups(&mp, t),
        elements: n_params,
        bytes: Some(3.0 * 4.0 * n_params as f64),
    });
    // The OT path's batch draw for a 2-D model with t as the third input.
    let cp = cfm::CfmParams {
        batch: rows as u32,
        dim: 2,
        n_data: 100_000,
        in_stride: 4,
        out_stride: 4,
        time_cols: 1,
        seed: 7,
        mean_rows: rows as u32,
        ..Default::default()
    };
    v.push(Case {
        name: "cfm.wgsl::cfm_prepare (OT path)".into(),
        kernel: Box::new(cfm::cfm_prepare(ctx).unwrap()),
        params: slot(ctx, &cp),
        groups: cfm::per_sample_groups(&cp, t),
        elements: rows,
        bytes: None,
    });
    // An RK4 stage of a 2-D solve: state update and the next stage's MLP input rows.
    let op = ode::OdeParams {
        rows: rows as u32,
        dim: 2,
        in_stride: 4,
        out_stride: 4,
        time_cols: 1,
        n_terms: 1,
        h: 0.1,
        c_next: 0.5,
        class_id: ode::NO_CLASS,
        coef: [0.5, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0],
        ..Default::default()
    };
    v.push(Case {
        name: "ode.wgsl::rk_stage (RK4, dim 2)".into(),
        kernel: Box::new(ode::rk_stage(ctx).unwrap()),
        params: slot(ctx, &op),
        groups: ode::per_row_groups(&op, t),
        elements: rows,
        bytes: None,
    });
    // The exact divergence of a 2-D field from its 2 tangent rows.
    let tp = trace::TraceParams {
        rows: rows as u32,
        dim: 2,
        in_stride: 4,
        out_stride: 4,
        n_tangents: 2,
        ..Default::default()
    };
    v.push(Case {
        name: "trace.wgsl::divergence (exact, dim 2)".into(),
        kernel: Box::new(trace::divergence(ctx).unwrap()),
        params: slot(ctx, &tp),
        groups: trace::per_row_groups(&tp, t),
        elements: rows,
        bytes: None,
    });
    // One Sinkhorn half-step: a log-sum-exp over the batch for every row (B² work).
    let sp = ot::OtParams {
        batch: ot_batch as u32,
        dim: 2,
        reg: 0.05,
        ..Default::default()
    };
    v.push(Case {
        name: "ot.wgsl::sinkhorn_f (rows × batch)".into(),
        kernel: Box::new(ot::sinkhorn_f(ctx).unwrap()),
        params: slot(ctx, &sp),
        groups: ot::per_row_small(&sp, t),
        elements: ot_batch * ot_batch,
        bytes: None,
    });
    v
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let ctx = GpuContext::new(&AdapterChoice::default()).expect("no adapter");
    println!("adapter: {} ({})", ctx.adapter_name(), ctx.backend_name());
    // W-small's parameters (3×64), W-fm's (4×512); a solve chunk of 65536 rows; OT batch 256.
    let model = |width, depth| {
        ParamLayout::new(&MlpConfig {
            dim: 2,
            width,
            depth,
            activation: Activation::Silu,
            time_features: 0,
            classes: 0,
        })
        .total
    };
    let sizes: Vec<(&str, usize, usize, usize)> = if quick {
        vec![("W-small params, 4096 rows", model(64, 3), 4096, 256)]
    } else {
        vec![
            (
                "W-small params, 4096 rows, OT batch 256",
                model(64, 3),
                4096,
                256,
            ),
            (
                "W-fm params, 65536 rows, OT batch 1024",
                model(512, 4),
                65536,
                1024,
            ),
        ]
    };
    let (calls, reps) = if quick { (20, 3) } else { (50, 7) };
    for (label, n_params, rows, ot_batch) in sizes {
        println!("\n{label}:");
        let buf_len = (3 * n_params).max(16 * rows).max(4 * ot_batch * ot_batch);
        let floors = cases(&ctx, 4, 1, 1);
        for (case, floor) in cases(&ctx, n_params, rows, ot_batch).iter().zip(&floors) {
            let t = time_case(&ctx, case, buf_len, calls, reps);
            let t0 = time_case(&ctx, floor, buf_len, calls, reps);
            let per = (t - t0).max(0.0) / case.elements as f64;
            let gbs = case
                .bytes
                .map_or(String::new(), |b| format!(", {:.2} GB/s", b / t / 1e9));
            println!(
                "  {:<40} {:>9.1} µs/call (floor {:>6.1} µs at 1 element), {:>8.2} ns per element beyond it{gbs}",
                case.name,
                t * 1e6,
                t0 * 1e6,
                per * 1e9
            );
        }
    }
}
