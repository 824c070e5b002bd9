//! Sample with each solver, encode data to latents and decode them back.
//! cargo run --release --example solvers -- runs/moons   (a folder written by `flowgpu train`)

use flowgpu::solve::{Method, SolveConfig, Tolerances};
use flowgpu::{AdapterChoice, GpuContext, Model, Sampler};

fn main() -> flowgpu::Result<()> {
    let dir = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "runs/moons".into());
    let ctx = GpuContext::new(&AdapterChoice::default())?;
    let model = Model::load(std::path::Path::new(&dir))?;
    let sampler = Sampler::new(&ctx, &model)?;
    for method in [Method::Euler, Method::Midpoint, Method::Rk4] {
        let cfg = SolveConfig {
            method,
            steps: 20,
            ..Default::default()
        };
        let (x, stats) = sampler.sample(10_000, 0, &cfg)?;
        println!("{method:?}: {} samples, nfe {}", x.len() / 2, stats.nfe);
    }
    let tol = Tolerances {
        rtol: 1e-5,
        atol: 1e-5,
        ..Default::default()
    };
    let dopri = SolveConfig {
        method: Method::Dopri5,
        tol,
        ..Default::default()
    };
    let (x, stats) = sampler.sample(10_000, 0, &dopri)?;
    println!(
        "dopri5: nfe {} (needed per sample {:.1}), rejected {:.2}",
        stats.nfe, stats.nfe_needed_mean, stats.rejected_mean
    );
    let (z, _) = sampler.encode(&x, &dopri)?;
    let (back, _) = sampler.decode(&z, &dopri)?;
    let err = x
        .iter()
        .zip(&back)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    println!("encode → decode max error {err:.2e}");
    Ok(())
}
