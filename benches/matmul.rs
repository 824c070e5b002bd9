//! Micro-benchmark of the MLP kernels: `linear_forward` alone (SGEMM + epilogue) and a
//! full forward + backward, at the layer shapes of the standard workloads. Prints achieved
//! GFLOP/s (2·M·K·N per linear layer; a backward is 2× a forward), for every kernel variant
//! the adapter runs (on lavapipe: the 8-lane subgroup tiles, then the plain tiles), and the
//! fused training step (`cfm_step_subgroup.wgsl`: draw, forward, loss, backward) where the
//! adapter and shape take it.
//!
//! cargo bench --bench matmul [-- --quick]

use flowgpu::gpu::UniformArena;
use flowgpu::kernels::cfm::CfmParams;
use flowgpu::mlp::{CfmBuffers, FusedCfmPass, GpuMlp, MlpPass, PassOptions};
use flowgpu::model::{Activation, MlpConfig, Weights};
use flowgpu::{AdapterChoice, GpuContext};
use rand::SeedableRng;
use std::time::Instant;

/// Median seconds per call of `f` over `reps` timed calls after one warm-up.
fn time(ctx: &GpuContext, reps: usize, mut f: impl FnMut()) -> f64 {
    f();
    ctx.wait().unwrap();
    let mut t = Vec::new();
    for _ in 0..reps {
        let t0 = Instant::now();
        f();
        ctx.wait().unwrap();
        t.push(t0.elapsed().as_secs_f64());
    }
    t.sort_by(|a, b| a.total_cmp(b));
    t[t.len() / 2]
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let ctx = GpuContext::new(&AdapterChoice::default()).expect("no adapter");
    println!("adapter: {} ({})", ctx.adapter_name(), ctx.backend_name());
    let mut variants = vec![ctx];
    if variants[0].tiles.subgroup8 {
        let mut plain = GpuContext::new(&AdapterChoice::default()).expect("no adapter");
        plain.tiles = flowgpu::kernels::Tiles::for_class(plain.class);
        variants.push(plain);
    }
    // (name, rows, width, depth, activation, calls per timed group)
    let args: Vec<String> = std::env::args().collect();
    // --shape ROWS,WIDTH,DEPTH: one custom shape (for tuning runs).
    let custom: Option<Vec<usize>> = args
        .iter()
        .position(|a| a == "--shape")
        .and_then(|i| args.get(i + 1))
        .map(|s| s.split(',').filter_map(|x| x.parse().ok()).collect());
    let custom_shape;
    let shapes: &[(&str, usize, usize, usize, Activation, usize)] = if let Some(c) = custom {
        custom_shape = [("custom", c[0], c[1], c[2], Activation::Silu, 4)];
        &custom_shape
    } else if quick {
        &[("W-small 256x64", 256, 64, 3, Activation::Selu, 50)]
    } else {
        &[
            ("W-small 256x64", 256, 64, 3, Activation::Selu, 50),
            ("W-fm 4096x512", 4096, 512, 4, Activation::Silu, 2),
        ]
    };
    for ctx in &variants {
        let tiles = ctx.tiles.variant();
        for &(name, rows, width, depth, act, calls) in shapes {
            let cfg = MlpConfig {
                dim: 2,
                width,
                depth,
                activation: act,
                time_features: 0,
                classes: 0,
            };
            let w = Weights::init(&cfg, &mut rand::rngs::StdRng::seed_from_u64(0));
            let mlp = GpuMlp::new(ctx, &cfg, &w).unwrap();
            let grads = ctx.storage("grads", mlp.layout.total).unwrap();
            let pass = MlpPass::new(
                ctx,
                &mlp,
                rows,
                PassOptions {
                    grads: Some(&grads),
                    ..Default::default()
                },
            )
            .unwrap();
            let flops = (cfg.flops_per_sample() * rows as u64) as f64;
            // One hidden layer alone: the SGEMM at this shape.
            let hidden = 2.0 * (rows * width * width) as f64;
            let run = |fwd: bool, bwd: bool| {
                let mut enc = ctx.device.create_command_encoder(&Default::default());
                {
                    let mut cp = enc.begin_compute_pass(&Default::default());
                    for _ in 0..calls {
                        if fwd {
                            pass.record_forward(&mut cp);
                        }
                        if bwd {
                            pass.record_backward(&mut cp);
                        }
                    }
                }
                ctx.submit(enc).unwrap();
            };
            let reps = if quick { 5 } else { 10 };
            let tf = time(ctx, reps, || run(true, false)) / calls as f64;
            let tb = time(ctx, reps, || run(false, true)) / calls as f64;
            println!(
            "{name} ({tiles} tiles): forward {:.3} ms ({:.2} GFLOP/s), backward {:.3} ms ({:.2} GFLOP/s), forward+backward {:.2} GFLOP/s; hidden-layer share {:.0}%",
            tf * 1e3,
            flops / tf / 1e9,
            tb * 1e3,
            2.0 * flops / tb / 1e9,
            3.0 * flops / (tf + tb) / 1e9,
            100.0 * hidden * (depth - 1) as f64 / flops
        );
            if FusedCfmPass::suits(ctx, &mlp.layout, rows) {
                let t = fused_step(ctx, &mlp, rows, calls, reps);
                println!(
                    "{name} fused step (draw, forward, loss, backward; one dispatch): {:.3} ms ({:.2} GFLOP/s)",
                    t * 1e3,
                    3.0 * flops / t / 1e9
                );
            }
        }
    }
}

/// Seconds per call of the fused training step on `rows` rows of moons-like data.
fn fused_step(ctx: &GpuContext, mlp: &GpuMlp, rows: usize, calls: usize, reps: usize) -> f64 {
    let layout = &mlp.layout;
    let data: Vec<f32> = (0..2000).map(|i| (i % 17) as f32 * 0.1 - 0.8).collect();
    let data = ctx.storage_from("data", &data).unwrap();
    let target = ctx.storage("target", rows * 4).unwrap();
    let unused = ctx.storage("unused", 4).unwrap();
    let pairs = ctx.storage("pairs", rows).unwrap();
    let grads = ctx
        .storage(
            "grad slots",
            FusedCfmPass::groups_for(rows) * FusedCfmPass::slot_len(layout),
        )
        .unwrap();
    let mut arena = UniformArena::new(ctx, "cfm params", 1);
    arena.set(
        0,
        &CfmParams {
            batch: rows as u32,
            dim: 2,
            n_data: 1000,
            in_stride: layout.layers[0].in_pad as u32,
            out_stride: 4,
            time_cols: 1,
            mean_rows: rows as u32,
            ..Default::default()
        },
    );
    arena.upload(ctx, 0..1);
    let bufs = CfmBuffers {
        data: &data,
        target: &target,
        source: &unused,
        labels: &unused,
        pairs: &pairs,
    };
    let step = FusedCfmPass::new(ctx, mlp, rows, &arena, &bufs, &grads).unwrap();
    let t = time(ctx, reps, || {
        let mut enc = ctx.device.create_command_encoder(&Default::default());
        {
            let mut cp = enc.begin_compute_pass(&Default::default());
            for _ in 0..calls {
                step.record(&mut cp, 0);
            }
        }
        ctx.submit(enc).unwrap();
    });
    t / calls as f64
}
