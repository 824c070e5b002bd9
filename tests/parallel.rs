//! Data-parallel training (src/train/parallel.rs) on this machine's adapters: lavapipe
//! (Vulkan) and llvmpipe (GL), whose kernels differ (the fused subgroup step against
//! per-layer kernels). The shares of a batch add up to its gradient, a two-adapter run
//! tracks the one-adapter run, runs repeat bit for bit and resume exactly.

mod common;

use common::one_error_line;
use flowgpu::mle::MleConfig;
use flowgpu::model::{Activation, MlpConfig, Weights};
use flowgpu::train::{Coupling, TrainConfig, Trainer};
use flowgpu::{GaussianPath, GpuContext};
use rand::SeedableRng;

fn cfg(classes: usize) -> MlpConfig {
    MlpConfig {
        dim: 2,
        width: 32,
        depth: 2,
        activation: Activation::Silu,
        time_features: 2,
        classes,
    }
}

/// `k` contexts over the adapters wgpu sees, in turn (lavapipe, llvmpipe-GL, lavapipe, …
/// here; on a one-adapter host, several devices on it, so the split is still exercised).
fn contexts(k: usize) -> Vec<GpuContext> {
    let mut out = Vec::new();
    while out.len() < k {
        out.extend(GpuContext::all(&Default::default()).expect("an adapter"));
    }
    out.truncate(k);
    out
}

fn data(n: usize) -> (Vec<f32>, Vec<u32>) {
    let d = flowgpu::data::Dataset::toy("moons", n, 3).unwrap();
    let labels = (0..n as u32).map(|i| i % 3).collect();
    (d.points, labels)
}

fn train_cfg(batch: usize, steps: u64) -> TrainConfig {
    TrainConfig {
        batch,
        steps,
        lr: 2e-3,
        ema: Some(0.99),
        clip_norm: 1.0,
        log_every: 10,
        seed: 11,
        ..Default::default()
    }
}

/// A trainer over `k` adapters (the first leads, returned with it), predicting noise on
/// vp, with class labels if `classes` > 0, so the share offsets reach every random draw
/// (time, noise, index and label dropout).
fn trainer(k: usize, tc: &TrainConfig, classes: usize) -> (GpuContext, Trainer) {
    weighted_trainer(&vec![1; k], tc, classes)
}

/// [`trainer`] with the batch split in proportion to `weights`.
fn weighted_trainer(weights: &[u32], tc: &TrainConfig, classes: usize) -> (GpuContext, Trainer) {
    let k = weights.len();
    let (points, labels) = data(4000);
    let w = Weights::init(&cfg(classes), &mut rand::rngs::StdRng::seed_from_u64(5));
    let build = |c: &GpuContext, tc: &TrainConfig| {
        let pools = flowgpu::train::Pools {
            data: &points,
            source: None,
            labels: (classes > 0).then_some(&labels[..]),
        };
        let mut t = Trainer::with_source(c, &cfg(classes), GaussianPath::Vp, &w, pools, tc)?;
        t.set_prediction(flowgpu::path::Prediction::Noise)?;
        Ok(t)
    };
    let mut ctxs = contexts(k);
    let lead = ctxs.remove(0);
    let t = Trainer::data_parallel_weighted(&lead, ctxs, weights, tc, build).unwrap();
    for s in t.shares(&lead) {
        eprintln!("  {} ({}): rows {:?}", s.adapter, s.backend, s.rows);
    }
    (lead, t)
}

fn max_rel(a: &[f32], b: &[f32]) -> f64 {
    let scale = b.iter().fold(0f64, |m, &x| m.max(x.abs() as f64));
    let diff = a
        .iter()
        .zip(b)
        .fold(0f64, |m, (&x, &y)| m.max((x as f64 - y as f64).abs()));
    diff / scale
}

/// The shares' gradients, added on the host, are the whole batch's gradient: uneven
/// shares (100 rows over 2 and 3 adapters, evenly and by weights 3:1 and 1:2:5) within f32
/// summation-order error (1e-6).
#[test]
fn shares_add_up_to_the_batch_gradient() {
    let tc = TrainConfig {
        label_dropout: 0.3,
        ..train_cfg(100, 10)
    };
    let (c1, mut one) = trainer(1, &tc, 3);
    let (g1, l1) = one.step_gradient(&c1).unwrap();
    assert!(g1.iter().any(|&x| x != 0.0));
    for weights in [&[1, 1][..], &[1, 1, 1], &[3, 1], &[1, 2, 5]] {
        let k = weights.len();
        let (ck, mut dp) = weighted_trainer(weights, &tc, 3);
        let shares = dp.shares(&ck);
        assert_eq!(shares.len(), k);
        assert_eq!(shares[k - 1].rows.end, 100);
        assert_eq!(dp.batch_rows(), 100);
        let (g, l) = dp.step_gradient(&ck).unwrap();
        let err = max_rel(&g, &g1);
        eprintln!("weights {weights:?}: gradient max rel {err:.2e}, loss {l} vs {l1}");
        assert!(err < 1e-6, "gradient differs by {err:.2e}");
        assert!(((l - l1) / l1).abs() < 1e-5, "loss {l} vs {l1}");
    }
}

/// What a two-adapter run gives against the one-adapter run: 200 AdamW steps with clipping
/// and EMA, weights within 1e-5 of their scale and every logged loss within 1e-5
/// (summation order differs, so Adam's normalised steps drift apart slowly).
#[test]
fn two_adapter_training_tracks_one_adapter() {
    let tc = train_cfg(128, 200);
    let mut curves = Vec::new();
    let mut weights = Vec::new();
    for k in [1, 2] {
        let (c, mut t) = trainer(k, &tc, 0);
        let mut curve = Vec::new();
        t.run_until(&c, 200, &Default::default(), |_, l| {
            curve.extend_from_slice(l);
            Ok(())
        })
        .unwrap();
        weights.push(t.weights(&c, false).unwrap().pack(&t.mlp.layout));
        weights.push(t.weights(&c, true).unwrap().pack(&t.mlp.layout));
        curves.push(curve);
    }
    let (raw, ema) = (
        max_rel(&weights[2], &weights[0]),
        max_rel(&weights[3], &weights[1]),
    );
    let loss = curves[0]
        .iter()
        .zip(&curves[1])
        .map(|(a, b)| ((a - b) / a).abs())
        .fold(0f32, f32::max);
    eprintln!("after 200 steps: weights max rel {raw:.2e}, EMA {ema:.2e}, losses {loss:.2e}");
    assert_eq!(curves[1].len(), 200);
    assert!(raw < 1e-5 && ema < 1e-5, "weights {raw:.2e}, EMA {ema:.2e}");
    assert!(loss < 1e-5, "losses differ by {loss:.2e}");
    assert!(curves[0][190..].iter().sum::<f32>() < curves[0][..10].iter().sum::<f32>());
}

/// A data-parallel run is a pure function of its seed and adapter set: twice the same
/// bits, and stopping at step 30 and resuming from the saved state gives the bits of the
/// uninterrupted run.
#[test]
fn data_parallel_runs_repeat_and_resume_bit_for_bit() {
    let tc = train_cfg(64, 60);
    let run = |stop_at: Option<u64>| {
        let (mut c, mut t) = trainer(2, &tc, 3);
        if let Some(s) = stop_at {
            t.run_until(&c, s, &Default::default(), |_, _| Ok(()))
                .unwrap();
            let state = t.state(&c).unwrap();
            (c, t) = trainer(2, &tc, 3);
            t.restore(&c, &state).unwrap();
        }
        t.run_until(&c, 60, &Default::default(), |_, _| Ok(()))
            .unwrap();
        t.state(&c).unwrap()
    };
    let a = run(None);
    assert_eq!(a.step, 60);
    assert!(a == run(None), "two runs differ");
    assert!(a == run(Some(30)), "the resumed run differs");
}

/// What cannot be split is refused with one line: the MLE objective, a minibatch-OT
/// coupling (it couples the whole batch), a batch smaller than the adapter count, and
/// weights that leave an adapter no rows.
#[test]
fn unsplittable_runs_are_refused() {
    let cases = [
        (
            TrainConfig {
                mle: Some(MleConfig::default()),
                ..train_cfg(64, 10)
            },
            "--objective mle",
            &[1, 1][..],
        ),
        (
            TrainConfig {
                coupling: Coupling::Sinkhorn {
                    reg: 0.05,
                    iters: 20,
                },
                ..train_cfg(64, 10)
            },
            "minibatch-OT",
            &[1, 1],
        ),
        (train_cfg(1, 10), "smaller than the 2 adapters", &[1, 1]),
        (
            train_cfg(64, 10),
            "share of --batch 64 is empty",
            &[1, 1000],
        ),
    ];
    let (points, _) = data(500);
    let w = Weights::init(&cfg(0), &mut rand::rngs::StdRng::seed_from_u64(5));
    for (tc, want, weights) in cases {
        let mut ctxs = contexts(2);
        let lead = ctxs.remove(0);
        let build = |c: &GpuContext, tc: &TrainConfig| {
            Trainer::new(
                c,
                &cfg(0),
                GaussianPath::Ot { sigma_min: 0.0 },
                &w,
                &points,
                tc,
            )
        };
        let err = match Trainer::data_parallel_weighted(&lead, ctxs, weights, &tc, build) {
            Ok(_) => panic!("{want}: accepted"),
            Err(e) => e.to_string(),
        };
        assert!(err.contains(want) && !err.contains('\n'), "{err}");
    }
}

/// `flowgpu train --adapter all`: the batch split over every adapter in `--json`, the same
/// final loss as one adapter (within 1e-5), and a one-line refusal of what cannot split.
#[test]
fn train_command_splits_the_batch_over_every_adapter() {
    const BIN: &str = env!("CARGO_BIN_EXE_flowgpu");
    let dir = std::env::temp_dir().join(format!("flowgpu-parallel-{}", std::process::id()));
    std::fs::remove_dir_all(&dir).ok();
    let train = |name: &str, extra: &[&str]| {
        let out = std::process::Command::new(BIN)
            .args(["train", "--data", "moons", "--steps", "60", "--batch", "96"])
            .args(["--json", "--out", dir.join(name).to_str().unwrap()])
            .args(extra)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr).to_string();
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        let json = stdout
            .lines()
            .last()
            .and_then(|l| serde_json::from_str::<serde_json::Value>(l).ok());
        (out.status.code(), err, json)
    };
    let (code, err, one) = train("one", &[]);
    assert_eq!(code, Some(0), "{err}");
    let two = common::two_adapters();
    let (code, err, all) = train("all", &["--adapter", &two]);
    assert_eq!(code, Some(0), "{err}");
    let all = all.unwrap();
    let adapters = all["adapters"].as_array().unwrap();
    eprintln!("{adapters:?}");
    assert!(adapters.len() >= 2);
    let mut next = 0;
    for a in adapters {
        assert_eq!(a["rows"][0].as_u64(), Some(next));
        next = a["rows"][1].as_u64().unwrap();
    }
    assert_eq!(next, 96);
    let (l1, lk) = (
        one.unwrap()["final_loss"].as_f64().unwrap(),
        all["final_loss"].as_f64().unwrap(),
    );
    assert!(((l1 - lk) / l1).abs() < 1e-5, "final loss {lk} vs {l1}");
    // A time slice on every adapter, resumed with the batch split 3 : 1.
    let (code, err, _) = train("slices", &["--adapter", &two, "--stop-after", "30"]);
    assert_eq!(code, Some(0), "{err}");
    // Weight 3 for the first adapter, 1 for each other.
    let k = adapters.len();
    let weights = std::iter::once("3".to_string())
        .chain(std::iter::repeat_n("1".to_string(), k - 1))
        .collect::<Vec<_>>()
        .join(",");
    let out = std::process::Command::new(BIN)
        .args(["train", "--resume", dir.join("slices").to_str().unwrap()])
        .args(["--adapter", &two, "--adapter-weights", &weights, "--json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let j: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    let first = (96 * 3 / (k + 2)) as u64;
    assert_eq!(j["adapters"][0]["rows"], serde_json::json!([0, first]));
    let l = j["final_loss"].as_f64().unwrap();
    assert!(
        ((l1 - l) / l1).abs() < 1e-5,
        "resumed final loss {l} vs {l1}"
    );
    let (code, err, _) = train("ot", &["--adapter", &two, "--coupling", "sinkhorn"]);
    {
        assert_eq!(code, Some(1), "{err}");
        assert!(
            err.contains("minibatch-OT") && one_error_line(&err),
            "{err}"
        );
    }
    std::fs::remove_dir_all(&dir).ok();
}
