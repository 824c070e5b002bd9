//! Command-line interface: argument parsing, progress and reports. All work is done by
//! the library.

use clap::{Args, Parser, Subcommand};
use flowgpu::data::Dataset;
use flowgpu::error::{Error, Result};
use flowgpu::model::{Activation, MlpConfig, Model};
use flowgpu::{plot, AdapterChoice, BackendChoice, GaussianPath, GpuContext};
use flowgpu::{SampleConfig, Sampler, TrainConfig};
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(Parser)]
#[command(
    name = "flowgpu",
    version,
    about = "Flow matching and continuous normalizing flows on any GPU (wgpu)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Train a vector field by conditional flow matching (default: two moons).
    Train(TrainArgs),
    /// Draw samples from a trained model.
    Sample(SampleArgs),
    /// List every adapter wgpu can see.
    Adapters(AdaptersArgs),
}

#[derive(Args, Clone)]
struct GpuArgs {
    /// Use the adapter whose name contains this (case-insensitive).
    #[arg(long, global = true)]
    adapter: Option<String>,
    /// Restrict the search to one backend.
    #[arg(long, value_enum, global = true)]
    backend: Option<BackendChoice>,
    /// Print one JSON object as the last line of stdout.
    #[arg(long, global = true)]
    json: bool,
}

impl GpuArgs {
    fn context(&self) -> Result<GpuContext> {
        GpuContext::new(&AdapterChoice {
            name: self.adapter.clone(),
            backend: self.backend,
        })
    }
}

#[derive(Args)]
struct TrainArgs {
    /// Built-in data set: moons, 8gaussians, checkerboard, circles, rings, pinwheel, swissroll, 2spirals.
    #[arg(long, default_value = "moons")]
    data: String,
    /// Points drawn from the built-in data set (the training pool).
    #[arg(long, default_value_t = 100_000)]
    n_data: usize,
    /// Total optimizer steps.
    #[arg(long, default_value_t = 5000)]
    steps: u64,
    #[arg(long, default_value_t = 256)]
    batch: usize,
    /// Hidden width.
    #[arg(long, default_value_t = 64)]
    width: usize,
    /// Hidden layers.
    #[arg(long, default_value_t = 3)]
    depth: usize,
    /// silu, tanh, softplus, selu, relu.
    #[arg(long, default_value = "selu")]
    activation: String,
    /// Fourier frequencies of t added to the input (0: t only).
    #[arg(long, default_value_t = 0)]
    time_features: usize,
    #[arg(long, default_value_t = 1e-3)]
    lr: f64,
    /// AdamW decoupled weight decay.
    #[arg(long, default_value_t = 0.0)]
    weight_decay: f64,
    /// Linear learning-rate warm-up steps.
    #[arg(long, default_value_t = 100)]
    warmup: u64,
    /// Learning-rate schedule after warm-up: cosine (to 0) or constant.
    #[arg(long, default_value = "cosine")]
    schedule: String,
    /// Global gradient-norm clip (0: off).
    #[arg(long, default_value_t = 1.0)]
    clip_norm: f64,
    /// EMA decay of the weights (e.g. 0.999); samples and the checkpoint use the EMA.
    #[arg(long)]
    ema: Option<f64>,
    /// Conditional path: ot (γ=t, σ=1−(1−σmin)t) or vp (cosine).
    #[arg(long, default_value = "ot")]
    path: String,
    #[arg(long, default_value_t = 0.0)]
    sigma_min: f64,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Run folder (default runs/<data>-<UTC timestamp>).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Training steps recorded per GPU submit.
    #[arg(long, default_value_t = 10)]
    steps_per_submit: usize,
    /// Steps between loss readbacks.
    #[arg(long, default_value_t = 100)]
    log_every: usize,
    /// Samples drawn for samples.png.
    #[arg(long, default_value_t = 4000)]
    plot_samples: usize,
    #[command(flatten)]
    gpu: GpuArgs,
}

#[derive(Args)]
struct SampleArgs {
    /// Run folder with model.safetensors and config.json.
    #[arg(long)]
    model: PathBuf,
    /// Number of samples.
    #[arg(short, long, default_value_t = 1000)]
    n: usize,
    /// Output file: .npy or .csv.
    #[arg(long)]
    out: PathBuf,
    /// Euler steps from t = 0 to 1.
    #[arg(long, default_value_t = 100)]
    steps: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Rows per GPU chunk.
    #[arg(long, default_value_t = 65536)]
    chunk: usize,
    /// Also plot the samples (2-D models) to this PNG.
    #[arg(long)]
    plot: Option<PathBuf>,
    #[command(flatten)]
    gpu: GpuArgs,
}

#[derive(Args)]
struct AdaptersArgs {
    #[command(flatten)]
    gpu: GpuArgs,
}

pub fn run() -> Result<()> {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            // Help and version go to stdout with exit 0; usage errors exit 2 with clap's text.
            e.exit();
        }
    };
    match cli.command {
        Command::Train(a) => train(a),
        Command::Sample(a) => sample(a),
        Command::Adapters(a) => adapters(a),
    }
}

fn adapters(a: AdaptersArgs) -> Result<()> {
    let list = flowgpu::gpu::list_adapters(a.gpu.backend);
    if list.is_empty() {
        return Err(Error::NoAdapter(
            "no GPU adapter found; install Mesa lavapipe (`apt-get install mesa-vulkan-drivers`) for a software adapter".into(),
        ));
    }
    for s in &list {
        println!(
            "{} | {} | {} | driver: {} {} | max buffer {} MiB, storage binding {} MiB, {} storage buffers/stage, {} B workgroup memory, {} invocations/workgroup, subgroups {}..{}",
            s.name,
            s.backend,
            s.device_type,
            s.driver,
            s.driver_info,
            s.max_buffer_size >> 20,
            s.max_storage_buffer_binding_size >> 20,
            s.max_storage_buffers_per_shader_stage,
            s.max_compute_workgroup_storage_size,
            s.max_compute_invocations_per_workgroup,
            s.subgroup_sizes.0,
            s.subgroup_sizes.1
        );
    }
    if a.gpu.json {
        println!("{}", serde_json::json!({ "adapters": list }));
    }
    Ok(())
}

/// UTC timestamp YYYYMMDD-HHMMSS for run folder names.
fn timestamp() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (days, rem) = (secs / 86400, secs % 86400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719468;
    let era = z.div_euclid(146097);
    let doe = z - era * 146097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + if m <= 2 { 1 } else { 0 };
    format!(
        "{y:04}{m:02}{d:02}-{:02}{:02}{:02}",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60
    )
}

fn progress_bar(total: u64, quiet: bool) -> indicatif::ProgressBar {
    if quiet {
        return indicatif::ProgressBar::hidden();
    }
    let pb = indicatif::ProgressBar::new(total);
    pb.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:30} {pos}/{len} steps  loss {msg}  {per_sec}  eta {eta}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    pb
}

fn train(a: TrainArgs) -> Result<()> {
    let activation = Activation::from_name(&a.activation)?;
    let path = GaussianPath::from_name(&a.path, a.sigma_min)?;
    let cosine = match a.schedule.as_str() {
        "cosine" => true,
        "constant" => false,
        s => {
            return Err(Error::invalid(format!(
                "unknown schedule '{s}'; valid schedules: cosine, constant"
            )))
        }
    };
    if a.n_data == 0 {
        return Err(Error::invalid("--n-data must be positive"));
    }
    let data = Dataset::toy(&a.data, a.n_data, a.seed)?;
    let mlp = MlpConfig {
        dim: data.dim,
        width: a.width,
        depth: a.depth,
        activation,
        time_features: a.time_features,
    };
    mlp.validate()?;
    let cfg = TrainConfig {
        steps: a.steps,
        batch: a.batch,
        lr: a.lr,
        weight_decay: a.weight_decay,
        warmup: a.warmup,
        cosine,
        clip_norm: a.clip_norm,
        ema: a.ema,
        seed: a.seed,
        steps_per_submit: a.steps_per_submit,
        log_every: a.log_every,
        ..TrainConfig::default()
    };
    cfg.validate()?;
    let out = a
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from("runs").join(format!("{}-{}", data.name, timestamp())));
    let ctx = a.gpu.context()?;
    eprintln!(
        "training on {} ({}) → {}",
        ctx.adapter_name(),
        ctx.backend_name(),
        out.display()
    );
    let pb = progress_bar(cfg.steps, false);
    let t0 = Instant::now();
    let (model, curve) = flowgpu::train::fit(&ctx, &data, &mlp, path, &cfg, |step, losses| {
        pb.set_position(step);
        if let Some(l) = losses.last() {
            pb.set_message(format!("{l:.4}"));
        }
    })?;
    let wall = t0.elapsed().as_secs_f64();
    pb.finish_and_clear();
    model.save(&out)?;
    write_loss_csv(&out.join("loss.csv"), &curve, &cfg)?;
    let png = out.join("loss.png");
    let smooth = moving_average(&curve, 100);
    plot::line_png(
        &png,
        &[(&curve, [170, 195, 235]), (&smooth, [20, 60, 160])],
        800,
        400,
        true,
    )
    .map_err(|e| Error::io(&png, e))?;
    let samples = Sampler::new(&ctx, &model)?.sample(&SampleConfig {
        n: a.plot_samples.max(1),
        steps: 100,
        seed: a.seed,
        ..Default::default()
    })?;
    let png = out.join("samples.png");
    let shown = &data.points[..data.points.len().min(2 * a.plot_samples.max(1))];
    plot::scatter_png(
        &png,
        &[
            plot::Layer {
                points: shown,
                dim: data.dim,
                color: [160, 160, 160],
                alpha: 0.5,
            },
            plot::Layer {
                points: &samples,
                dim: data.dim,
                color: [220, 50, 30],
                alpha: 0.6,
            },
        ],
        600,
        None,
    )
    .map_err(|e| Error::io(&png, e))?;
    let final_loss = mean_tail(&curve, 100);
    let steps_per_s = cfg.steps as f64 / wall;
    eprintln!(
        "done: {} steps in {wall:.1} s ({steps_per_s:.0} steps/s), final loss {final_loss:.4} (mean of last 100 steps); wrote {}/{{model.safetensors, config.json, loss.csv, loss.png, samples.png}}",
        cfg.steps,
        out.display()
    );
    if a.gpu.json {
        println!(
            "{}",
            serde_json::json!({
                "command": "train",
                "data": data.name,
                "steps": cfg.steps,
                "batch": cfg.batch,
                "final_loss": final_loss,
                "wall_s": wall,
                "steps_per_s": steps_per_s,
                "adapter": ctx.adapter_name(),
                "backend": ctx.backend_name(),
                "out": out,
            })
        );
    }
    Ok(())
}

/// Trailing moving average over `w` points (shorter at the start).
fn moving_average(v: &[f32], w: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(v.len());
    let mut s = 0.0f64;
    for i in 0..v.len() {
        s += v[i] as f64;
        if i >= w {
            s -= v[i - w] as f64;
        }
        out.push((s / (i + 1).min(w) as f64) as f32);
    }
    out
}

fn mean_tail(v: &[f32], n: usize) -> f64 {
    let tail = &v[v.len().saturating_sub(n)..];
    tail.iter().map(|&x| x as f64).sum::<f64>() / tail.len().max(1) as f64
}

fn write_loss_csv(path: &Path, curve: &[f32], cfg: &TrainConfig) -> Result<()> {
    use std::io::Write;
    flowgpu::io::atomic::write_atomic_with(path, |w| {
        writeln!(w, "step,loss,lr")?;
        for (i, l) in curve.iter().enumerate() {
            writeln!(w, "{},{},{}", i + 1, l, cfg.lr_at(i as u64))?;
        }
        Ok(())
    })
    .map_err(|e| Error::io(path, e))
}

/// Output format from the file extension.
fn check_output_path(path: &Path) -> Result<&'static str> {
    match path.extension().and_then(|e| e.to_str()) {
        Some("npy") => Ok("npy"),
        Some("csv") => Ok("csv"),
        _ => Err(Error::invalid(format!(
            "{}: output must end in .npy or .csv",
            path.display()
        ))),
    }
}

fn sample(a: SampleArgs) -> Result<()> {
    let fmt = check_output_path(&a.out)?;
    if a.n == 0 || a.steps == 0 || a.chunk == 0 {
        return Err(Error::invalid("-n, --steps and --chunk must be positive"));
    }
    let model = Model::load(&a.model)?;
    let ctx = a.gpu.context()?;
    let t0 = Instant::now();
    let samples = Sampler::new(&ctx, &model)?.sample(&SampleConfig {
        n: a.n,
        steps: a.steps,
        seed: a.seed,
        chunk: a.chunk,
    })?;
    let wall = t0.elapsed().as_secs_f64();
    let d = model.config.mlp.dim;
    match fmt {
        "npy" => flowgpu::io::npy::write_npy_f32(&a.out, &samples, &[a.n, d]),
        _ => flowgpu::io::csv::write_csv(&a.out, &samples, d, None),
    }
    .map_err(|e| Error::io(&a.out, e))?;
    if let Some(png) = &a.plot {
        if d >= 2 {
            plot::scatter_png(
                png,
                &[plot::Layer {
                    points: &samples,
                    dim: d,
                    color: [220, 50, 30],
                    alpha: 0.6,
                }],
                600,
                None,
            )
            .map_err(|e| Error::io(png, e))?;
        }
    }
    let rate = (a.n * a.steps) as f64 / wall;
    eprintln!(
        "sampled {} points with {} Euler steps in {wall:.2} s ({rate:.3e} samples·steps/s) → {}",
        a.n,
        a.steps,
        a.out.display()
    );
    if a.gpu.json {
        println!(
            "{}",
            serde_json::json!({
                "command": "sample",
                "n": a.n,
                "solver": "euler",
                "steps": a.steps,
                "nfe": a.steps,
                "wall_s": wall,
                "sample_steps_per_s": rate,
                "adapter": ctx.adapter_name(),
                "backend": ctx.backend_name(),
                "out": a.out,
            })
        );
    }
    Ok(())
}
