//! Smoke test of training and sampling, run by CI on every adapter class (the GL/llvmpipe
//! adapter too: FLOWGPU_BACKEND=gl).

mod common;

use flowgpu::data::Dataset;
use flowgpu::model::{Activation, MlpConfig};
use flowgpu::train::{fit, TrainConfig};
use flowgpu::{GaussianPath, Sampler, SolveConfig};

#[test]
fn train_and_sample_smoke() {
    let ctx = common::ctx();
    let data = Dataset::toy("8gaussians", 20_000, 0).unwrap();
    let cfg = MlpConfig {
        dim: 2,
        width: 32,
        depth: 2,
        activation: Activation::Silu,
        time_features: 0,
        classes: 0,
    };
    let tc = TrainConfig {
        steps: 300,
        batch: 128,
        ..TrainConfig::default()
    };
    let (m, curve) = fit(
        ctx,
        &data,
        &cfg,
        GaussianPath::Ot { sigma_min: 0.0 },
        &tc,
        |_, _| {},
    )
    .unwrap();
    assert_eq!(curve.len(), 300);
    let first: f32 = curve[..50].iter().sum::<f32>() / 50.0;
    let last: f32 = curve[250..].iter().sum::<f32>() / 50.0;
    assert!(last < first, "loss did not fall: {first} → {last}");
    let s = Sampler::new(ctx, &m)
        .unwrap()
        .sample(
            500,
            0,
            &SolveConfig {
                steps: 20,
                chunk: 200,
                ..Default::default()
            },
        )
        .unwrap()
        .0;
    assert_eq!(s.len(), 1000);
    assert!(s.iter().all(|x| x.is_finite()));
}
