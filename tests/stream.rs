//! Streamed training data (`train --stream-pool`, src/data/stream.rs): a file larger than
//! the memory set for it trains with bounded memory, measured; a streamed run resumes bit
//! for bit; what streaming cannot do is refused with one line.

mod common;

use common::one_error_line;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_flowgpu");

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("flowgpu-stream-{}-{name}", std::process::id()));
    std::fs::remove_dir_all(&d).ok();
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// An f32 NPY file of `rows` × `dim`, written row block by row block (never whole in
/// memory): two Gaussian clusters at ±3 along the first axis, the rest N(0, 1)-ish.
fn write_npy(path: &Path, rows: usize, dim: usize) {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    f.write_all(&flowgpu::io::npy::npy_header(&[rows, dim]))
        .unwrap();
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut uniform = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 11) as f64 / (1u64 << 53) as f64
    };
    let mut block = Vec::with_capacity(4096 * dim * 4);
    for r in 0..rows {
        for j in 0..dim {
            // Sum of 4 uniforms: mean 2, variance 1/3 → standardized-ish.
            let g = (0..4).map(|_| uniform()).sum::<f64>() - 2.0;
            let v = g * 1.7
                + if j == 0 {
                    3.0 * (r % 2) as f64 * 2.0 - 3.0
                } else {
                    0.0
                };
            block.extend_from_slice(&(v as f32).to_le_bytes());
        }
        if block.len() >= 4096 * dim * 4 {
            f.write_all(&block).unwrap();
            block.clear();
        }
    }
    f.write_all(&block).unwrap();
    f.flush().unwrap();
}

/// (exit code, stderr, last stdout line as JSON).
fn flowgpu(args: &[&str]) -> (i32, String, Option<serde_json::Value>) {
    let out = Command::new(BIN).args(args).output().expect("run flowgpu");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let json = stdout
        .lines()
        .last()
        .and_then(|l| serde_json::from_str(l).ok());
    let err = String::from_utf8_lossy(&out.stderr).into();
    (out.status.code().unwrap_or(-1), err, json)
}

/// `flowgpu train --data DATA --out OUT --json` with `flags`, asserting it succeeds: its
/// summary (none when it stops early).
fn train(data: &Path, out: &Path, flags: &[&str]) -> Option<serde_json::Value> {
    let mut args = vec!["train", "--data", data.to_str().unwrap()];
    args.extend_from_slice(&["--out", out.to_str().unwrap(), "--json"]);
    args.extend_from_slice(flags);
    let (code, err, json) = flowgpu(&args);
    assert_eq!(code, 0, "{err}");
    json
}

/// A 768 MiB file (12.6M rows of 16 f32) trains with an 8 MiB pool: the whole process
/// peaks below half the file's size (lavapipe itself takes ~200 MiB here), having
/// scanned every row for the statistics and replaced its pool every 128 steps.
#[test]
fn a_file_larger_than_its_memory_trains_with_bounded_memory() {
    let dir = tmp("big");
    let data = dir.join("big.npy");
    let (rows, dim) = (12_582_912, 16);
    write_npy(&data, rows, dim);
    let file_mib = std::fs::metadata(&data).unwrap().len() as f64 / (1u64 << 20) as f64;
    let flags = [
        "--stream-pool",
        "8",
        "--stream-refresh",
        "128",
        "--steps",
        "400",
        "--batch",
        "256",
        "--plot-samples",
        "500",
    ];
    let j = train(&data, &dir.join("run"), &flags).expect("a summary");
    std::fs::remove_file(&data).ok();
    let peak = j["peak_rss_mib"].as_f64();
    eprintln!(
        "file {file_mib:.0} MiB, pool 8 MiB: peak RSS {peak:?} MiB; stream {}",
        j["stream"]
    );
    assert_eq!(j["stream"]["file_rows"].as_u64(), Some(rows as u64));
    assert_eq!(j["stream"]["pool_rows"].as_u64(), Some(131_072));
    if cfg!(target_os = "linux") {
        let peak = peak.expect("Linux reports VmHWM");
        assert!(
            peak < file_mib / 2.0,
            "peak {peak:.0} MiB, file {file_mib:.0} MiB"
        );
    }
    let loss = j["final_loss"].as_f64().unwrap();
    assert!(loss.is_finite() && loss < 2.0, "final loss {loss}");
    std::fs::remove_dir_all(&dir).ok();
}

/// A streamed run stopped between pool replacements and resumed writes the model of the
/// uninterrupted run, byte for byte (the pool of a step is a function of the seed).
#[test]
fn a_streamed_run_resumes_bit_for_bit() {
    let dir = tmp("resume");
    let data = dir.join("d.npy");
    write_npy(&data, 50_000, 4);
    let run = |name: &str, extra: &[&str]| {
        let out = dir.join(name);
        let mut flags = vec!["--stream-pool", "0.25", "--stream-refresh", "37", "--steps"];
        flags.extend_from_slice(&["200", "--batch", "128", "--checkpoint-every", "60"]);
        flags.extend_from_slice(&["--plot-samples", "0"]);
        flags.extend_from_slice(extra);
        train(&data, &out, &flags);
        std::fs::read(out.join("model.safetensors")).unwrap()
    };
    let whole = run("whole", &[]);
    run("parts", &["--stop-after", "90"]);
    let (code, err, _) = flowgpu(&["train", "--resume", dir.join("parts").to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    let resumed = std::fs::read(dir.join("parts/model.safetensors")).unwrap();
    assert!(whole == resumed, "the resumed streamed run differs");
    std::fs::remove_dir_all(&dir).ok();
}

/// One line and exit code 1 for what streaming cannot do.
#[test]
fn streaming_refuses_what_it_cannot_do() {
    let dir = tmp("refuse");
    let npy = dir.join("d.npy");
    write_npy(&npy, 1000, 2);
    let csv = dir.join("d.csv");
    std::fs::write(&csv, "1,2\n3,4\n").unwrap();
    let fortran = dir.join("f.npy");
    let mut bytes = std::fs::read(&npy).unwrap();
    let at = bytes.windows(5).position(|w| w == b"False").unwrap();
    bytes[at..at + 5].copy_from_slice(b"True ");
    std::fs::write(&fortran, bytes).unwrap();
    let source = npy.to_str().unwrap().to_string();
    let paired: &[&str] = &["--source", &source, "--paired"];
    let cases: [(&Path, &[&str], &str); 7] = [
        (&csv, &[], "save the data with np.save"),
        (Path::new("moons"), &[], "save the data with np.save"),
        (&npy, &["--val-frac", "0.1"], "need the file in memory"),
        (&npy, &["--stream-pool", "0.001"], "fewer than --batch"),
        (&fortran, &[], "Fortran order"),
        (&npy, &["--stream-refresh", "0"], "at least 1 step"),
        (&npy, paired, "neither --val-frac nor --stream-pool"),
    ];
    for (data, extra, want) in cases {
        let out = dir.join("run");
        let mut args = vec![
            "train",
            "--data",
            data.to_str().unwrap(),
            "--steps",
            "5",
            "--out",
            out.to_str().unwrap(),
        ];
        if !extra.contains(&"--stream-pool") {
            args.extend_from_slice(&["--stream-pool", "1"]);
        }
        args.extend_from_slice(extra);
        let (code, err, _) = flowgpu(&args);
        assert!(
            code == 1 && err.contains(want) && one_error_line(&err),
            "{extra:?}: {code} {err}"
        );
        assert!(!out.join("model.safetensors").exists());
    }
    std::fs::remove_dir_all(&dir).ok();
}

/// A library caller that stops a streamed run exactly at a pool boundary and goes on with
/// the same `Run` and trainer gets the uninterrupted run's weights: the pool follows the
/// step, not the call.
#[test]
fn continuing_at_a_pool_boundary_takes_the_next_pool() {
    use flowgpu::train::{NewRun, Run, RunConfig, RunPlan};
    use flowgpu::{GaussianPath, GpuContext, MlpConfig, ModelConfig, TrainConfig};
    let dir = tmp("boundary");
    let data = dir.join("d.npy");
    write_npy(&data, 20_000, 3);
    let ctx = GpuContext::new(&Default::default()).unwrap();
    let stop = std::sync::atomic::AtomicBool::new(false);
    let weights = |name: &str, pause_at: Option<u64>| {
        let mlp = MlpConfig {
            dim: 3,
            width: 16,
            depth: 2,
            activation: flowgpu::Activation::Silu,
            time_features: 0,
            classes: 0,
        };
        let mut plan = RunPlan::new(data.to_str().unwrap());
        plan.stream = Some(flowgpu::data::stream::StreamPlan {
            pool_mib: 0.05,
            refresh_steps: Some(37),
        });
        plan.plot_samples = 0;
        let config = RunConfig {
            model: ModelConfig::new(mlp, GaussianPath::Ot { sigma_min: 0.0 }),
            train: TrainConfig {
                steps: 120,
                batch: 64,
                ..TrainConfig::default()
            },
            plan,
        };
        let mut run = Run::create(&dir.join(name), config, NewRun::default()).unwrap();
        let mut t = run.trainer(&ctx).unwrap();
        if let Some(at) = pause_at {
            run.train_until(&ctx, &mut t, at, &stop, |_, _| {}).unwrap();
        }
        run.train(&ctx, &mut t, &stop, |_, _| {}).unwrap();
        // Steps 111..120 train on pool 3 (37 steps a pool).
        assert_eq!(run.stream().unwrap().loaded, Some(3));
        t.weights(&ctx, false).unwrap().pack(&t.mlp.layout)
    };
    let whole = weights("whole", None);
    assert!(
        whole == weights("paused", Some(74)),
        "the pool after the pause differs"
    );
    std::fs::remove_dir_all(&dir).ok();
}

/// A streamed run split over every adapter (`--stream-pool` with `--adapter all`): each
/// pool reaches every adapter, and the run ends at the one-adapter run's loss (within 1e-5).
#[test]
fn a_streamed_run_splits_over_every_adapter() {
    let dir = tmp("split");
    let data = dir.join("d.npy");
    write_npy(&data, 30_000, 4);
    let run = |name: &str, extra: &[&str]| {
        let mut flags = vec!["--stream-pool", "0.25", "--stream-refresh", "40", "--steps"];
        flags.extend_from_slice(&["160", "--batch", "128", "--plot-samples", "0"]);
        flags.extend_from_slice(extra);
        train(&data, &dir.join(name), &flags).expect("a summary")
    };
    let one = run("one", &[]);
    let all = run("all", &["--adapter", &common::two_adapters()]);
    assert!(all["adapters"].as_array().unwrap().len() >= 2);
    let (l1, lk) = (
        one["final_loss"].as_f64().unwrap(),
        all["final_loss"].as_f64().unwrap(),
    );
    eprintln!("adapters {}: final loss {lk} against {l1}", all["adapters"]);
    assert!(((l1 - lk) / l1).abs() < 1e-5, "final loss {lk} vs {l1}");
    std::fs::remove_dir_all(&dir).ok();
}
