//! Micro-benchmark of the MLP kernels: `linear_forward` alone (SGEMM + epilogue) and a
//! full forward + backward, at the layer shapes of the standard workloads. Prints achieved
//! GFLOP/s (2·M·K·N per linear layer; a backward is 2× a forward), for every kernel variant
//! the adapter runs (on lavapipe: the 8-lane subgroup tiles, then the plain tiles).
//!
//! cargo bench --bench matmul [-- --quick]

use flowgpu::mlp::{GpuMlp, MlpPass, PassOptions};
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
        }
    }
}
