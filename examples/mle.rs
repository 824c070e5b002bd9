//! Maximum-likelihood training of a CNF on 8gaussians with adjoint gradients, then its
//! held-out log-likelihood with dopri5, with the library API.
//! cargo run --release --example mle

use flowgpu::mle::MleConfig;
use flowgpu::solve::{Method, Trace};
use flowgpu::{data::Dataset, train::fit, AdapterChoice, GaussianPath, GpuContext};
use flowgpu::{Activation, MlpConfig, Sampler, SolveConfig, TrainConfig};

fn main() -> flowgpu::Result<()> {
    let ctx = GpuContext::new(&AdapterChoice::default())?;
    let data = Dataset::toy("8gaussians", 100_000, 0)?;
    let mlp = MlpConfig {
        dim: 2,
        width: 32,
        depth: 3,
        activation: Activation::Silu,
        time_features: 0,
        classes: 0,
    };
    let cfg = TrainConfig {
        steps: 300,
        lr: 5e-3,
        warmup: 20,
        mle: Some(MleConfig {
            probes: 0, // exact trace; Hutchinson with probes > 0
            solver: flowgpu::Method::Midpoint,
            steps: 4,
            kinetic: 0.01,
            frobenius: 0.01,
            ..MleConfig::default()
        }),
        ..TrainConfig::default()
    };
    let path = GaussianPath::Ot { sigma_min: 0.0 }; // unused by MLE
    let (model, nll) = fit(&ctx, &data, &mlp, path, &cfg, |_, _| {})?;
    let held_out = Dataset::toy("8gaussians", 1000, 1)?;
    let solve = SolveConfig {
        method: Method::Dopri5,
        ..SolveConfig::default()
    };
    let (logp, _, _) =
        Sampler::new(&ctx, &model)?.log_prob(&held_out.points, Trace::Exact, &solve)?;
    println!(
        "training NLL {:.3} nats; held-out NLL {:.3} nats",
        nll.last().unwrap(),
        -logp.iter().sum::<f64>() / logp.len() as f64
    );
    Ok(())
}
