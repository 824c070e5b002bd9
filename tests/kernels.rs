//! Each WGSL kernel against the f64 CPU reference of the same math (src/reference.rs),
//! on shapes that span several workgroups and are not multiples of the tile sizes.
//! Tolerances are stated per test; they allow for f32 rounding of sums of O(100) terms.

mod common;

use common::{assert_close, ctx, tile_variants};
use flowgpu::gpu::UniformArena;
use flowgpu::kernels::{adam, cfm};
use flowgpu::mlp::{GpuMlp, MlpPass, PassOptions};
use flowgpu::model::{pad4, Activation, MlpConfig, Weights};
use flowgpu::path::Prediction;
use flowgpu::{reference, GaussianPath, GpuContext};
use rand::{Rng, SeedableRng};

fn rng(seed: u64) -> rand::rngs::StdRng {
    rand::rngs::StdRng::seed_from_u64(seed)
}

fn cfg(act: Activation) -> MlpConfig {
    MlpConfig {
        dim: 3,
        width: 41, // 11 vec4: odd, exercises the clamped tile edges
        depth: 2,
        activation: act,
        time_features: 1,
        classes: 0,
    }
}

/// Random rows of MLP inputs (unpadded) and their padded GPU copy.
fn random_inputs(cfg: &MlpConfig, rows: usize, seed: u64) -> (Vec<f64>, Vec<f32>) {
    let mut r = rng(seed);
    let fi = cfg.in_features();
    let pad = pad4(fi);
    let x: Vec<f64> = (0..rows * fi).map(|_| r.random_range(-2.0..2.0)).collect();
    let mut g = vec![0.0f32; rows * pad];
    for m in 0..rows {
        for k in 0..fi {
            g[m * pad + k] = x[m * fi + k] as f32;
        }
    }
    (x, g)
}

/// Unpadded rows of a padded [rows, stride] buffer.
fn unpad(v: &[f32], rows: usize, cols: usize, stride: usize) -> Vec<f32> {
    (0..rows)
        .flat_map(|m| v[m * stride..m * stride + cols].to_vec())
        .collect()
}

const ACTIVATIONS: [Activation; 5] = [
    Activation::Silu,
    Activation::Tanh,
    Activation::Softplus,
    Activation::Selu,
    Activation::Relu,
];

#[test]
fn linear_forward_matches_reference_for_every_activation() {
    for ctx in tile_variants() {
        linear_forward_matches_reference(ctx);
    }
}

fn linear_forward_matches_reference(ctx: &GpuContext) {
    let variant = if ctx.tiles.subgroup8 {
        "subgroup"
    } else {
        "plain"
    };
    for (a, act) in ACTIVATIONS.into_iter().enumerate() {
        let cfg = cfg(act);
        let w = Weights::init(&cfg, &mut rng(a as u64));
        let rows = 77;
        let (x, xg) = random_inputs(&cfg, rows, 10 + a as u64);
        let mlp = GpuMlp::new(ctx, &cfg, &w).unwrap();
        let pass = MlpPass::new(ctx, &mlp, rows, Default::default()).unwrap();
        ctx.queue
            .write_buffer(&pass.input, 0, bytemuck::cast_slice(&xg));
        let mut enc = ctx.device.create_command_encoder(&Default::default());
        {
            let mut cp = enc.begin_compute_pass(&Default::default());
            pass.record_forward(&mut cp);
        }
        ctx.submit(enc).unwrap();
        let out = ctx.read(pass.output(), 0, rows * 4).unwrap();
        let want = reference::eval(&cfg, &w, &x);
        // f32 sums of ≤ 38 products of O(1) terms.
        assert_close(
            &format!("{variant} forward {act:?}"),
            &unpad(&out, rows, 3, 4),
            &want,
            1e-4,
            1e-4,
        );
    }
}

/// Runs backward on the GPU from a given dL/dv; returns (flat grads, dz of layer 0, dX).
fn gpu_backward(
    ctx: &GpuContext,
    cfg: &MlpConfig,
    w: &Weights,
    xg: &[f32],
    dv: &[f64],
    rows: usize,
) -> (Weights, Vec<f32>, Vec<f32>) {
    let mlp = GpuMlp::new(ctx, cfg, w).unwrap();
    let grads = ctx.storage("grads", mlp.layout.total).unwrap();
    let pass = MlpPass::new(
        ctx,
        &mlp,
        rows,
        PassOptions {
            grads: Some(&grads),
            input_grad: true,
            tangents: 0,
        },
    )
    .unwrap();
    ctx.queue
        .write_buffer(&pass.input, 0, bytemuck::cast_slice(xg));
    let mut dvg = vec![0.0f32; rows * 4];
    for m in 0..rows {
        for j in 0..cfg.dim {
            dvg[m * 4 + j] = dv[m * cfg.dim + j] as f32;
        }
    }
    let mut enc = ctx.device.create_command_encoder(&Default::default());
    {
        let mut cp = enc.begin_compute_pass(&Default::default());
        pass.record_forward(&mut cp);
    }
    // dL/dv goes in after the forward pass (the buffer is only read by backward).
    ctx.submit(enc).unwrap();
    ctx.queue
        .write_buffer(pass.dz.last().unwrap(), 0, bytemuck::cast_slice(&dvg));
    let mut enc = ctx.device.create_command_encoder(&Default::default());
    {
        let mut cp = enc.begin_compute_pass(&Default::default());
        pass.record_backward(&mut cp);
    }
    ctx.submit(enc).unwrap();
    let g = Weights::unpack(&ctx.read(&grads, 0, mlp.layout.total).unwrap(), &mlp.layout);
    let l0 = &mlp.layout.layers[0];
    let dz0 = unpad(
        &ctx.read(&pass.dz[0], 0, rows * l0.out_pad).unwrap(),
        rows,
        l0.out_features,
        l0.out_pad,
    );
    let dx = unpad(
        &ctx.read(pass.input_grad.as_ref().unwrap(), 0, rows * l0.in_pad)
            .unwrap(),
        rows,
        l0.in_features,
        l0.in_pad,
    );
    (g, dz0, dx)
}

fn max_abs(v: &[f64]) -> f64 {
    v.iter().fold(0.0, |a, b| a.max(b.abs()))
}

#[test]
fn backward_matches_reference_single_and_multi_chunk() {
    // 50 rows: one chunk (direct write); 600 and 1100 rows: several chunks + reduction pass
    // (past 256 rows with the plain tiles, past 1024 with the subgroup tiles). Width 41 runs
    // the subgroup tiles' fused weight+input kernel, width 97 the two separate ones
    // (`mlp_backward::fuse_backward`).
    for (a, (act, rows, width)) in [
        (Activation::Silu, 50, 41),
        (Activation::Tanh, 600, 41),
        (Activation::Selu, 1100, 41),
        (Activation::Silu, 1100, 97),
    ]
    .into_iter()
    .enumerate()
    {
        let cfg = MlpConfig { width, ..cfg(act) };
        let w = Weights::init(&cfg, &mut rng(100 + a as u64));
        let (x, xg) = random_inputs(&cfg, rows, 200 + a as u64);
        let mut r = rng(300 + a as u64);
        let dv: Vec<f64> = (0..rows * cfg.dim)
            .map(|_| r.random_range(-1.0..1.0))
            .collect();
        let acts = reference::forward(&cfg, &w, &x);
        let want = reference::backward(&cfg, &w, &acts, &dv);
        // dz of layer 0 = dX of layer 1 ⊙ act'(z0): checks backward_input's epilogue.
        let acts_grad: Vec<f64> = {
            let l1 = &w.layers[1];
            let (fi, fo) = (l1.in_features, l1.out_features);
            // dz0 = (dz1 · W1) ⊙ act'(z0)
            let mut full = vec![0.0; rows * fi];
            let g1 = reference_dz(&cfg, &w, &acts, &dv, 1);
            for m in 0..rows {
                for o in 0..fo {
                    for k in 0..fi {
                        full[m * fi + k] += g1[m * fo + o] * l1.w[o * fi + k] as f64;
                    }
                }
            }
            full.iter()
                .zip(&acts.z[0])
                .map(|(d, z)| d * act.grad(*z))
                .collect()
        };
        for ctx in tile_variants() {
            let (g, dz0, dx) = gpu_backward(ctx, &cfg, &w, &xg, &dv, rows);
            let variant = if ctx.tiles.subgroup8 {
                "subgroup"
            } else {
                "plain"
            };
            for l in 0..want.w.len() {
                // Sums over `rows` terms: tolerance relative to the largest entry.
                let atol = 1e-5 * max_abs(&want.w[l]).max(1.0) * (rows as f64).sqrt();
                assert_close(
                    &format!("{variant} {act:?} rows {rows} dW[{l}]"),
                    &g.layers[l].w,
                    &want.w[l],
                    1e-4,
                    atol,
                );
                let atol = 1e-5 * max_abs(&want.b[l]).max(1.0) * (rows as f64).sqrt();
                assert_close(
                    &format!("{variant} {act:?} rows {rows} db[{l}]"),
                    &g.layers[l].b,
                    &want.b[l],
                    1e-4,
                    atol,
                );
            }
            assert_close(
                &format!("{variant} {act:?} dz0"),
                &dz0,
                &acts_grad,
                1e-4,
                1e-5,
            );
            assert_close(
                &format!("{variant} {act:?} dX"),
                &dx,
                &want.input,
                1e-4,
                1e-5,
            );
        }
    }
}

/// dL/dz of layer `l` by the reference (pre-activation gradient).
fn reference_dz(
    cfg: &MlpConfig,
    w: &Weights,
    acts: &reference::Activations,
    dv: &[f64],
    l: usize,
) -> Vec<f64> {
    // The bias gradient of layer l is Σ_rows dz_l; to get dz_l itself, backprop by hand.
    let layer_acts: Vec<Activation> = cfg.layers().iter().map(|x| x.2).collect();
    let n = acts.h[0].len() / cfg.in_features();
    let mut dz = dv.to_vec();
    for i in (l + 1..w.layers.len()).rev() {
        let lin = &w.layers[i];
        let (fi, fo) = (lin.in_features, lin.out_features);
        let mut dx = vec![0.0; n * fi];
        for m in 0..n {
            for o in 0..fo {
                for k in 0..fi {
                    dx[m * fi + k] += dz[m * fo + o] * lin.w[o * fi + k] as f64;
                }
            }
        }
        for (d, &z) in dx.iter_mut().zip(&acts.z[i - 1]) {
            *d *= layer_acts[i - 1].grad(z);
        }
        dz = dx;
    }
    dz
}

#[test]
fn reference_backward_matches_finite_differences() {
    // L = Σ c·v for fixed random c: dL/dθ from reference::backward vs central differences.
    for (a, act) in ACTIVATIONS.into_iter().enumerate() {
        let cfg = MlpConfig {
            width: 9,
            ..cfg(act)
        };
        let w = Weights::init(&cfg, &mut rng(400 + a as u64));
        let rows = 5;
        let (x, _) = random_inputs(&cfg, rows, 500 + a as u64);
        let mut r = rng(600 + a as u64);
        let c: Vec<f64> = (0..rows * cfg.dim)
            .map(|_| r.random_range(-1.0..1.0))
            .collect();
        let loss = |w: &Weights, x: &[f64]| -> f64 {
            reference::eval(&cfg, w, x)
                .iter()
                .zip(&c)
                .map(|(v, c)| v * c)
                .sum()
        };
        let acts = reference::forward(&cfg, &w, &x);
        let g = reference::backward(&cfg, &w, &acts, &c);
        // Weights are f32 on the host: perturb by an f32-representable step and use it.
        let h = 1e-3f32;
        for l in 0..w.layers.len() {
            for idx in [0, w.layers[l].w.len() / 2, w.layers[l].w.len() - 1] {
                let (mut wp, mut wm) = (w.clone(), w.clone());
                wp.layers[l].w[idx] += h;
                wm.layers[l].w[idx] -= h;
                let step = (wp.layers[l].w[idx] - wm.layers[l].w[idx]) as f64;
                let fd = (loss(&wp, &x) - loss(&wm, &x)) / step;
                let an = g.w[l][idx];
                assert!(
                    (fd - an).abs() <= 1e-4 * (1.0 + an.abs()),
                    "{act:?} dW[{l}][{idx}]: fd {fd} vs {an}"
                );
            }
            let (mut wp, mut wm) = (w.clone(), w.clone());
            wp.layers[l].b[0] += h;
            wm.layers[l].b[0] -= h;
            let step = (wp.layers[l].b[0] - wm.layers[l].b[0]) as f64;
            let fd = (loss(&wp, &x) - loss(&wm, &x)) / step;
            assert!(
                (fd - g.b[l][0]).abs() <= 1e-4 * (1.0 + fd.abs()),
                "{act:?} db[{l}]"
            );
        }
        for idx in [0, 7, x.len() - 1] {
            let h = 1e-5;
            let (mut xp, mut xm) = (x.clone(), x.clone());
            xp[idx] += h;
            xm[idx] -= h;
            let fd = (loss(&w, &xp) - loss(&w, &xm)) / (2.0 * h);
            assert!(
                (fd - g.input[idx]).abs() <= 1e-6 * (1.0 + fd.abs()),
                "{act:?} dX[{idx}]: fd {fd} vs {}",
                g.input[idx]
            );
        }
    }
}

#[test]
fn cfm_prepare_and_loss_match_reference_for_each_path() {
    let ctx = ctx();
    let tiles = ctx.tiles;
    let cfg = cfg(Activation::Silu); // dim 3, 3 time columns: input stride 8, output 4
    let (batch, n_data) = (300, 1000);
    let mut r = rng(7);
    let data: Vec<f32> = (0..n_data * 3).map(|_| r.random_range(-3.0..3.0)).collect();
    let pool: Vec<f32> = (0..77 * 3).map(|_| r.random_range(-1.0..1.0)).collect();
    // A paired source: one row per data row.
    let paired_pool: Vec<f32> = (0..n_data * 3).map(|_| r.random_range(-1.0..1.0)).collect();
    let cases = [
        (GaussianPath::Ot { sigma_min: 0.0 }, false),
        (GaussianPath::Ot { sigma_min: 0.1 }, false),
        (GaussianPath::Vp, false),
        (GaussianPath::Poly { exponent: 1.5 }, false),
        (GaussianPath::Icfm { sigma: 0.2 }, false),
        (GaussianPath::Sb { sigma: 0.5 }, false),
        (GaussianPath::Icfm { sigma: 0.1 }, true),
        (GaussianPath::Ot { sigma_min: 0.0 }, true),
    ];
    // The diffusion paths, and every prediction target (the score with its b² weight).
    let vp_sde = GaussianPath::VpSde {
        beta_min: 0.1,
        beta_max: 20.0,
    };
    let ve_sde = GaussianPath::VeSde {
        sigma_min: 0.01,
        sigma_max: 10.0,
    };
    let mut all: Vec<(GaussianPath, bool, Prediction)> = cases
        .iter()
        .map(|&(p, pool)| (p, pool, Prediction::Velocity))
        .collect();
    let paired_case = all.len() - 1;
    all.extend([
        (vp_sde, false, Prediction::Velocity),
        (ve_sde, false, Prediction::Velocity),
        (vp_sde, false, Prediction::Noise),
        (vp_sde, false, Prediction::Data),
        (ve_sde, false, Prediction::Score),
        (
            GaussianPath::Ot { sigma_min: 0.0 },
            false,
            Prediction::Score,
        ),
    ]);
    for (pi, (path, use_pool, predict)) in all.into_iter().enumerate() {
        let data_buf = ctx.storage_from("data", &data).unwrap();
        // The last case couples source row i with data row i.
        let paired = pi == paired_case;
        let source = match (use_pool, paired) {
            (true, true) => Some(&paired_pool[..]),
            (true, false) => Some(&pool[..]),
            _ => None,
        };
        let source_buf = ctx.storage_from("source", source.unwrap_or(&[])).unwrap();
        let input = ctx.storage("input", batch * 8).unwrap();
        let target = ctx.storage("target", batch * 4).unwrap();
        let vg: Vec<f32> = (0..batch * 4).map(|_| r.random_range(-2.0..2.0)).collect();
        let v = ctx.storage_from("v", &vg).unwrap();
        let grad = ctx.storage("grad", batch * 4).unwrap();
        let sample_loss = ctx.storage("sample loss", batch).unwrap();
        let history = ctx.storage("history", 8).unwrap();
        let mut arena = UniformArena::new(ctx, "p", 1);
        let p = cfm::CfmParams {
            batch: batch as u32,
            dim: 3,
            n_data: n_data as u32,
            in_stride: 8,
            out_stride: 4,
            time_cols: 3,
            path: path.gpu_code(),
            path_param: path.gpu_params()[0],
            path_param2: path.gpu_params()[1],
            seed: 42 + pi as u32,
            step: 12345,
            loss_slot: 5,
            n_source: source.map(|s| s.len() / 3).unwrap_or(0) as u32,
            paired: paired as u32,
            n_classes: 0,
            label_dropout: 0.0,
            coupled: 0,
            predict: predict.gpu_code(),
            row0: 0,
            mean_rows: batch as u32,
        };
        arena.set(0, &p);
        arena.upload(ctx, 0..1);
        let (kp, kl, kr) = (
            cfm::cfm_prepare(ctx).unwrap(),
            cfm::cfm_loss(ctx).unwrap(),
            cfm::loss_reduce(ctx).unwrap(),
        );
        let no_labels = ctx.storage("labels", 1).unwrap();
        let gp = kp.bind(
            ctx,
            &arena,
            &cfm::PrepareBindings {
                data: &data_buf,
                input: &input,
                target_u: &target,
                source: &source_buf,
                labels: &no_labels,
                pairs: &no_labels,
            },
        );
        let gl = kl.bind(
            ctx,
            &arena,
            &cfm::LossBindings {
                target_u: &target,
                v: &v,
                grad_v: &grad,
                sample_loss: &sample_loss,
                loss_history: &history,
            },
        );
        let gr = kr.bind(
            ctx,
            &arena,
            &cfm::ReduceBindings {
                sample_loss: &sample_loss,
                loss_history: &history,
            },
        );
        let mut enc = ctx.device.create_command_encoder(&Default::default());
        {
            let mut cp = enc.begin_compute_pass(&Default::default());
            let groups = cfm::per_sample_groups(&p, &tiles);
            kp.dispatch(&mut cp, &gp, 0, groups);
            kl.dispatch(&mut cp, &gl, 0, [1, 1, 1]);
        }
        ctx.submit(enc).unwrap();
        let draw = reference::CfmDraw {
            data: &data,
            source,
            paired,
            predict,
            ..Default::default()
        };
        let (want_in, want_u) = reference::cfm_batch(&cfg, &path, &draw, p.seed, p.step, batch);
        let name = format!("{} {}", path.name(), predict.name());
        let got_in = unpad(&ctx.read(&input, 0, batch * 8).unwrap(), batch, 6, 8);
        let got_u = unpad(&ctx.read(&target, 0, batch * 4).unwrap(), batch, 3, 4);
        // Box–Muller, powers and trig in f32: ~1e-6 relative (the SB target's 1/√(t(1−t))
        // amplifies t's rounding near the ends: 1e-4 there).
        // VP-SDE's ḃ = −α·ȧ/b grows as 1/√(1 − t) near the data: 1e-4 there too.
        let rtol = if matches!(path.name(), "sb" | "vp-sde") {
            1e-4
        } else {
            1e-5
        };
        assert_close(&format!("{name} x_t"), &got_in, &want_in, rtol, 2e-5);
        assert_close(&format!("{name} target"), &got_u, &want_u, rtol, 2e-5);
        let v64: Vec<f64> = unpad(&vg, batch, 3, 4).iter().map(|&x| x as f64).collect();
        let w = reference::output_weights(&path, predict, p.seed, p.step, batch);
        let (want_loss, want_grad) = reference::cfm_loss_weighted(&v64, &want_u, &w, 3);
        let got_grad = unpad(&ctx.read(&grad, 0, batch * 4).unwrap(), batch, 3, 4);
        assert_close("dL/dv", &got_grad, &want_grad, 1e-4, 1e-8);
        let got_loss = ctx.read(&history, 5, 1).unwrap()[0];
        assert_close("loss", &[got_loss], &[want_loss], 1e-4, 0.0);
        // loss_reduce (the MLE path's) gives the same mean from the per-sample losses.
        ctx.queue
            .write_buffer(&history, 20, bytemuck::bytes_of(&0.0f32));
        let mut enc = ctx.device.create_command_encoder(&Default::default());
        {
            let mut cp = enc.begin_compute_pass(&Default::default());
            kr.dispatch(&mut cp, &gr, 0, [1, 1, 1]);
        }
        ctx.submit(enc).unwrap();
        let reduced = ctx.read(&history, 5, 1).unwrap()[0];
        assert_close("loss_reduce", &[reduced], &[want_loss], 1e-4, 0.0);
    }
}

#[test]
fn adam_with_clipping_weight_decay_and_ema_matches_reference() {
    // The gradient as one buffer, and as 3 partial slots (cfm_step_subgroup.wgsl's
    // layout: parameters, then a loss-sum vec4) that adam adds up with the batch loss; with
    // clipping (grad_sq_partial + adam_update_clipped) and without (adam_update).
    for (parts, clip) in [(1usize, true), (3, true), (3, false)] {
        adam_case(parts, clip);
    }
}

fn adam_case(parts: usize, clip: bool) {
    let clip_norm = if clip { 1.0 } else { 0.0 };
    let ctx = ctx();
    let tiles = ctx.tiles;
    // Several grad_sq workgroups, not a multiple of a workgroup (a multiple of 4, as every
    // flat parameter buffer: the kernels read vec4s).
    let n = 70_004;
    let slot = n + 4;
    let mut r = rng(9);
    let mut p: Vec<f64> = (0..n)
        .map(|_| r.random_range(-1.0..1.0f32) as f64)
        .collect();
    let mut m = vec![0.0; n];
    let mut v = vec![0.0; n];
    let params = ctx
        .storage_from("p", &p.iter().map(|&x| x as f32).collect::<Vec<_>>())
        .unwrap();
    let ema = ctx
        .storage_from("ema", &p.iter().map(|&x| x as f32).collect::<Vec<_>>())
        .unwrap();
    let mut ema_ref = p.clone();
    let moments = ctx.storage("m", 2 * n).unwrap();
    let n_partials = adam::n_partials(n, &tiles);
    let partials = ctx.storage("partials", n_partials).unwrap();
    let grads = ctx.storage("g", parts * slot).unwrap();
    let history = ctx.storage("loss history", 4).unwrap();
    let (kq, ku) = (
        adam::grad_sq_partial(ctx).unwrap(),
        adam::adam_update(ctx, clip).unwrap(),
    );
    let mut arena = UniformArena::new(ctx, "p", 1);
    let gq = kq.bind(
        ctx,
        &arena,
        &adam::GradSqBindings {
            grads: &grads,
            partials: &partials,
        },
    );
    let gu = ku.bind(
        ctx,
        &arena,
        &adam::UpdateBindings {
            grads: &grads,
            partials: &partials,
            params: &params,
            moments: &moments,
            ema: &ema,
            loss_history: &history,
        },
    );
    let mut want_loss = 0.0;
    for step in 1..=3u32 {
        // With clipping, steps 1 and 3 are clipped (norm ≫ 1), step 2 is not.
        let scale = if step == 2 { 1e-3 } else { 1.0 };
        // Each slot holds random parts; the gradient is their sum.
        let mut host = vec![0f32; parts * slot];
        let mut g = vec![0f64; n];
        want_loss = 0.0;
        for c in 0..parts {
            for (j, gj) in g.iter_mut().enumerate() {
                let x = r.random_range(-1.0..1.0f32) * scale;
                host[c * slot + j] = x;
                *gj += x as f64;
            }
            let l = r.random_range(0.0..10.0f32);
            host[c * slot + n] = l;
            want_loss += l as f64 / 256.0;
        }
        ctx.queue
            .write_buffer(&grads, 0, bytemuck::cast_slice(&host));
        let h = reference::AdamStep {
            lr: 1e-2,
            beta1: 0.9,
            beta2: 0.99,
            eps: 1e-8,
            weight_decay: 0.1,
            step,
            clip_norm,
        };
        let ap = adam::AdamParams {
            n: n as u32,
            n_partials: n_partials as u32,
            use_ema: 1,
            step,
            lr: h.lr as f32,
            beta1: h.beta1 as f32,
            beta2: h.beta2 as f32,
            eps: h.eps as f32,
            weight_decay: h.weight_decay as f32,
            bias_corr1: (1.0 - h.beta1.powi(step as i32)) as f32,
            bias_corr2: (1.0 - h.beta2.powi(step as i32)) as f32,
            clip_norm: clip_norm as f32,
            ema_decay: 0.9,
            grad_parts: parts as u32,
            part_vec4: (slot / 4) as u32,
            loss_slot: 2,
            loss_rows: if parts > 1 { 256 } else { 0 },
            _pad: [0; 3],
        };
        arena.set(0, &ap);
        arena.upload(ctx, 0..1);
        let mut enc = ctx.device.create_command_encoder(&Default::default());
        {
            let mut cp = enc.begin_compute_pass(&Default::default());
            if clip {
                kq.dispatch(&mut cp, &gq, 0, adam::grad_sq_groups(&ap, &tiles));
            }
            ku.dispatch(&mut cp, &gu, 0, adam::update_groups(&ap, &tiles));
        }
        ctx.submit(enc).unwrap();
        reference::adam_step(&mut p, &g, &mut m, &mut v, &h);
        for (e, &w) in ema_ref.iter_mut().zip(&p) {
            *e = 0.9 * *e + 0.1 * w;
        }
    }
    if parts > 1 {
        let loss = ctx.read(&history, 2, 1).unwrap();
        assert_close("loss from slots", &loss, &[want_loss], 1e-6, 0.0);
    }
    // Adam's step is ~lr per element whatever the gradient: compare to 1e-5 of lr scale.
    assert_close("params", &ctx.read(&params, 0, n).unwrap(), &p, 1e-5, 1e-6);
    assert_close("ema", &ctx.read(&ema, 0, n).unwrap(), &ema_ref, 1e-5, 1e-6);
    let mv = ctx.read(&moments, 0, 2 * n).unwrap();
    assert_close("m", &mv[..n], &m, 1e-4, 1e-7);
    assert_close("v", &mv[n..], &v, 1e-4, 1e-9);
}

#[test]
fn cfm_prepare_writes_class_one_hots_with_label_dropout() {
    let ctx = ctx();
    let tiles = ctx.tiles;
    // dim 3, 3 time columns, 5 classes: 11 inputs, stride 12.
    let cfg = MlpConfig {
        classes: 5,
        ..cfg(Activation::Silu)
    };
    let (batch, n_data) = (400, 600);
    let mut r = rng(17);
    let data: Vec<f32> = (0..n_data * 3).map(|_| r.random_range(-3.0..3.0)).collect();
    let labels: Vec<u32> = (0..n_data).map(|_| r.random_range(0..5u32)).collect();
    let path = GaussianPath::Ot { sigma_min: 0.0 };
    let data_buf = ctx.storage_from("data", &data).unwrap();
    let label_buf = ctx
        .storage_from("labels", bytemuck::cast_slice(&labels))
        .unwrap();
    let source_buf = ctx.storage("source", 1).unwrap();
    let input = ctx.storage("input", batch * 12).unwrap();
    let target = ctx.storage("target", batch * 4).unwrap();
    let mut arena = UniformArena::new(ctx, "p", 1);
    let p = cfm::CfmParams {
        batch: batch as u32,
        dim: 3,
        n_data: n_data as u32,
        in_stride: 12,
        out_stride: 4,
        time_cols: 3,
        path: path.gpu_code(),
        path_param: 0.0,
        seed: 3,
        step: 77,
        loss_slot: 0,
        n_source: 0,
        paired: 0,
        n_classes: 5,
        label_dropout: 0.25,
        coupled: 0,
        mean_rows: batch as u32,
        ..Default::default()
    };
    arena.set(0, &p);
    arena.upload(ctx, 0..1);
    let kp = cfm::cfm_prepare(ctx).unwrap();
    let gp = kp.bind(
        ctx,
        &arena,
        &cfm::PrepareBindings {
            data: &data_buf,
            input: &input,
            target_u: &target,
            source: &source_buf,
            labels: &label_buf,
            // Unused (no coupling): any read-only buffer.
            pairs: &source_buf,
        },
    );
    let mut enc = ctx.device.create_command_encoder(&Default::default());
    {
        let mut cp = enc.begin_compute_pass(&Default::default());
        kp.dispatch(&mut cp, &gp, 0, cfm::per_sample_groups(&p, &tiles));
    }
    ctx.submit(enc).unwrap();
    let draw = reference::CfmDraw {
        data: &data,
        labels: Some(&labels),
        label_dropout: 0.25,
        ..Default::default()
    };
    let (want_in, _) = reference::cfm_batch(&cfg, &path, &draw, 3, 77, batch);
    let got = unpad(&ctx.read(&input, 0, batch * 12).unwrap(), batch, 11, 12);
    assert_close("inputs with class columns", &got, &want_in, 1e-5, 2e-5);
    // About a quarter of the rows are unconditional (all-zero one-hot).
    let dropped = got
        .chunks(11)
        .filter(|r| r[6..].iter().all(|&v| v == 0.0))
        .count();
    assert!(
        (60..140).contains(&dropped),
        "{dropped} of {batch} rows dropped their label"
    );
}

/// The on-disk pipeline cache: written when a context that compiled pipelines is dropped,
/// read back by the next one, and a damaged file is ignored (the run still compiles) and
/// replaced. Backends without a pipeline cache (GL) write nothing.
#[test]
fn pipeline_cache_round_trips_and_survives_damage() {
    use flowgpu::gpu::pipeline_cache::decode;
    let dir = std::env::temp_dir().join(format!("flowgpu-pipeline-cache-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let choice = flowgpu::AdapterChoice {
        pipeline_cache_dir: Some(dir.clone()),
        ..common::choice()
    };
    let open = || GpuContext::new(&choice).expect("adapter");
    let ctx = open();
    let Some(path) = ctx.disk_cache.as_ref().map(|c| c.path().to_path_buf()) else {
        flowgpu::kernels::trace::probe_init(&ctx).unwrap();
        drop(ctx);
        assert!(
            !dir.exists(),
            "a backend without a pipeline cache wrote one"
        );
        return;
    };
    assert_eq!(ctx.disk_cache.as_ref().unwrap().loaded_bytes, 0);
    flowgpu::kernels::trace::probe_init(&ctx).unwrap();
    drop(ctx);
    let file = std::fs::read(&path).expect("cache written at drop");
    let data = decode(&file).expect("a valid cache file").to_vec();
    assert!(!data.is_empty());

    let ctx = open();
    assert_eq!(ctx.disk_cache.as_ref().unwrap().loaded_bytes, data.len());
    drop(ctx);

    // A torn file: ignored, the kernel still compiles, and the drop writes a whole one.
    std::fs::write(&path, &file[..file.len() - 3]).unwrap();
    let ctx = open();
    assert_eq!(ctx.disk_cache.as_ref().unwrap().loaded_bytes, 0);
    flowgpu::kernels::trace::probe_init(&ctx).unwrap();
    ctx.check().unwrap();
    drop(ctx);
    assert!(decode(&std::fs::read(&path).unwrap()).is_some());
    let _ = std::fs::remove_dir_all(&dir);
}
