//! Train a flow-matching model on two moons and draw samples, with the library API.
//! cargo run --release --example train_and_sample

use flowgpu::{data::Dataset, train::fit, AdapterChoice, GaussianPath, GpuContext};
use flowgpu::{Activation, MlpConfig, Sampler, SolveConfig, TrainConfig};

fn main() -> flowgpu::Result<()> {
    let ctx = GpuContext::new(&AdapterChoice::default())?;
    let data = Dataset::toy("moons", 100_000, 0)?;
    let mlp = MlpConfig {
        dim: 2,
        width: 64,
        depth: 3,
        activation: Activation::Selu,
        time_features: 0,
        classes: 0,
    };
    let cfg = TrainConfig {
        steps: 2000,
        ..TrainConfig::default()
    };
    let path = GaussianPath::Ot { sigma_min: 0.0 };
    let (model, losses) = fit(&ctx, &data, &mlp, path, &cfg, |_, _| {})?;
    let (samples, _) = Sampler::new(&ctx, &model)?.sample(5, 0, &SolveConfig::default())?;
    println!(
        "final loss {:.3}; samples {:?}",
        losses.last().unwrap(),
        samples.chunks(2).collect::<Vec<_>>()
    );
    model.save(std::path::Path::new("runs/example"))
}
