//! A resumable training run through the library: create a run folder, train part of the
//! way, stop (as Ctrl-C would), then resume it from its checkpoint and finish. The
//! result is the run an uninterrupted training gives, step for step.
//! cargo run --release --example resumable_run

use flowgpu::train::{NewRun, Run, RunConfig, RunPlan};
use flowgpu::TrainConfig;
use flowgpu::{Activation, AdapterChoice, GaussianPath, GpuContext, MlpConfig, ModelConfig};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

fn main() -> flowgpu::Result<()> {
    let ctx = GpuContext::new(&AdapterChoice::default())?;
    let dir = Path::new("runs/resumable-example");
    let config = RunConfig {
        model: ModelConfig::new(
            MlpConfig {
                dim: 0, // set from the data
                width: 32,
                depth: 3,
                activation: Activation::Silu,
                time_features: 0,
                classes: 0,
            },
            GaussianPath::Ot { sigma_min: 0.0 },
        ),
        train: TrainConfig {
            steps: 1000,
            ..TrainConfig::default()
        },
        plan: RunPlan::new("moons"),
    };
    // Train, and stop after the first loss readback past step 400.
    let fresh = NewRun {
        overwrite: true, // the example replaces its own earlier run
        ..NewRun::default()
    };
    let mut run = Run::create(dir, config, fresh)?;
    let mut trainer = run.trainer(&ctx)?;
    let stop = AtomicBool::new(false);
    let stopped = run.train(&ctx, &mut trainer, &stop, |step, _| {
        if step >= 400 {
            stop.store(true, Ordering::SeqCst);
        }
    })?;
    println!("stopped: {stopped}, at step {}", trainer.step);

    // Later (another process, after a crash): resume from the folder alone.
    let mut run = Run::resume(dir)?;
    let mut trainer = run.trainer(&ctx)?;
    run.train(&ctx, &mut trainer, &AtomicBool::new(false), |_, _| {})?;
    println!(
        "done at step {}: final loss {:.4} (mean of the last 100 steps)",
        trainer.step,
        run.final_loss(100)
    );
    Ok(())
}
