//! The binary: the default workflow writes a complete run folder, and bad input gives one
//! clear line on stderr, a non-zero exit and no output file.

use std::path::PathBuf;
use std::process::Command;

fn flowgpu(args: &[&str]) -> (i32, String, String) {
    flowgpu_env(args, &[])
}

fn flowgpu_env(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_flowgpu"));
    // Kernel-choice switches of the test's own environment would change what a test sees.
    for var in [
        "FLOWGPU_FUSED_STEP",
        "FLOWGPU_SUBGROUP_TILES",
        "FLOWGPU_TILES",
        "FLOWGPU_STEP_GROUP_ROWS",
    ] {
        cmd.env_remove(var);
    }
    let out = cmd
        .args(args)
        .envs(env.iter().copied())
        .output()
        .expect("run flowgpu");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("flowgpu-cli-{}-{name}", std::process::id()));
    std::fs::remove_dir_all(&d).ok();
    d
}

/// Exit code 1, one `error:` line naming `needle`, nothing that looks like a panic.
fn assert_clean_error(args: &[&str], needle: &str) {
    let (code, _, err) = flowgpu(args);
    assert_eq!(code, 1, "{args:?}: exit code {code}, stderr: {err}");
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    let last = lines.last().copied().unwrap_or("");
    assert!(
        last.starts_with("error: ") && last.contains(needle),
        "{args:?}: stderr {err}"
    );
    assert!(
        !err.contains("panicked") && !err.contains("RUST_BACKTRACE"),
        "{args:?}: {err}"
    );
}

/// A value outside an option's choices is a usage error (exit 2) that lists the choices.
fn assert_usage_error(args: &[&str], value: &str) {
    let (code, _, err) = flowgpu(args);
    assert_eq!(code, 2, "{args:?}: exit code {code}, stderr: {err}");
    assert!(
        err.starts_with("error: ")
            && err.contains(&format!("invalid value '{value}'"))
            && err.contains("possible values"),
        "{args:?}: stderr {err}"
    );
    assert!(!err.contains("panicked"), "{args:?}: {err}");
}

#[test]
fn train_writes_a_run_folder_and_sample_reads_it() {
    let run = tmp("run");
    let r = run.to_str().unwrap();
    let (code, out, err) = flowgpu(&[
        "train",
        "--steps",
        "200",
        "--width",
        "16",
        "--plot-samples",
        "300",
        "--out",
        r,
        "--json",
    ]);
    assert_eq!(code, 0, "{err}");
    for f in [
        "model.safetensors",
        "config.json",
        "loss.csv",
        "loss.png",
        "samples.png",
    ] {
        assert!(run.join(f).is_file(), "missing {f}");
    }
    let json: serde_json::Value = serde_json::from_str(out.lines().last().unwrap()).unwrap();
    assert_eq!(json["steps"], 200);
    assert!(json["final_loss"].as_f64().unwrap().is_finite());
    assert!(json["steps_per_s"].as_f64().unwrap() > 0.0);
    assert!(json["adapter"].as_str().is_some() && json["backend"].as_str().is_some());
    let loss_rows = std::fs::read_to_string(run.join("loss.csv"))
        .unwrap()
        .lines()
        .count();
    assert_eq!(loss_rows, 201);

    let npy = run.join("s.npy");
    let (code, _, err) = flowgpu(&[
        "sample",
        "--model",
        r,
        "-n",
        "123",
        "--out",
        npy.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    let (data, shape) = flowgpu::io::npy::read_npy_f32(&std::fs::read(&npy).unwrap()).unwrap();
    assert_eq!(shape, vec![123, 2]);
    assert!(data.iter().all(|x| x.is_finite()));
    let csv = run.join("s.csv");
    let (code, _, _) = flowgpu(&[
        "sample",
        "--model",
        r,
        "-n",
        "7",
        "--out",
        csv.to_str().unwrap(),
    ]);
    assert_eq!(code, 0);
    let (rows, cols) =
        flowgpu::io::csv::parse_csv(&std::fs::read_to_string(&csv).unwrap()).unwrap();
    assert_eq!((rows.len(), cols), (14, 2));

    // Bad input for sample: no partial output.
    let bad = run.join("bad.txt");
    assert_clean_error(
        &["sample", "--model", r, "--out", bad.to_str().unwrap()],
        ".npy or .csv",
    );
    let out = run.join("never.npy");
    assert_clean_error(
        &[
            "sample",
            "--model",
            "/nonexistent/model",
            "--out",
            out.to_str().unwrap(),
        ],
        "config.json",
    );
    assert_clean_error(
        &[
            "sample",
            "--model",
            r,
            "-n",
            "0",
            "--out",
            out.to_str().unwrap(),
        ],
        "positive",
    );
    assert!(!out.exists());
    // A corrupted checkpoint is reported, not a panic.
    std::fs::write(run.join("model.safetensors"), b"garbage").unwrap();
    assert_clean_error(
        &["sample", "--model", r, "--out", out.to_str().unwrap()],
        "safetensors",
    );
    assert!(!out.exists());
    std::fs::remove_dir_all(&run).ok();
}

#[test]
fn bad_training_flags_are_clear_errors() {
    let out = tmp("never");
    let o = out.to_str().unwrap();
    assert_clean_error(
        &["train", "--data", "nope", "--out", o],
        "valid datasets: moons",
    );
    assert_usage_error(&["train", "--activation", "gelu2", "--out", o], "gelu2");
    assert_clean_error(&["train", "--path", "xx", "--out", o], "valid paths");
    assert_clean_error(&["train", "--steps", "0", "--out", o], "--steps");
    assert_clean_error(&["train", "--batch", "0", "--out", o], "--batch");
    assert_clean_error(&["train", "--width", "0", "--out", o], "--width");
    assert_clean_error(&["train", "--lr=-1", "--out", o], "--lr");
    assert_clean_error(
        &["train", "--adapter", "no-such-gpu", "--out", o],
        "no adapter name contains",
    );
    assert!(!out.exists(), "a failed run must not leave a folder");
}

#[test]
fn mle_fine_tunes_a_flow_matching_run_and_bad_mle_flags_are_clear_errors() {
    let fm = tmp("mle-fm");
    let tuned = tmp("mle-tuned");
    let (f, t) = (fm.to_str().unwrap(), tuned.to_str().unwrap());
    let common = [
        "--data",
        "8gaussians",
        "--plot-samples",
        "0",
        "--eval-n",
        "200",
    ];
    let mut args = vec!["train", "--steps", "200", "--width", "16", "--out", f];
    args.extend(common);
    let (code, _, err) = flowgpu(&args);
    assert_eq!(code, 0, "{err}");
    let mut args = vec![
        "train",
        "--objective",
        "mle",
        "--init",
        f,
        "--steps",
        "20",
        "--mle-solver",
        "midpoint",
        "--mle-steps",
        "2",
        "--kinetic",
        "0.01",
        "--out",
        t,
        "--json",
    ];
    args.extend(common);
    let (code, out, err) = flowgpu(&args);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("bits/dim"), "{err}");
    let j: serde_json::Value = serde_json::from_str(out.lines().last().unwrap()).unwrap();
    assert_eq!(j["objective"], "mle");
    assert_eq!(j["nfe_forward"], 4.0);
    assert!(j["held_out_nll"].as_f64().unwrap().is_finite());
    // The fine-tuned model keeps the shape of --init (width 16), not the default 64.
    let cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(tuned.join("config.json")).unwrap()).unwrap();
    assert_eq!(cfg["mlp"]["width"], 16);
    assert_eq!(cfg["train"]["mle"]["solver"], "midpoint");

    let never = tmp("mle-never");
    let o = never.to_str().unwrap();
    assert_usage_error(&["train", "--objective", "xx", "--out", o], "xx");
    assert_usage_error(
        &["train", "--objective", "mle", "--grad", "xx", "--out", o],
        "xx",
    );
    assert_clean_error(
        &[
            "train",
            "--objective",
            "mle",
            "--grad",
            "backprop",
            "--mle-solver",
            "dopri5",
            "--out",
            o,
        ],
        "fixed-step",
    );
    assert_clean_error(
        &[
            "train",
            "--objective",
            "mle",
            "--source",
            "moons",
            "--out",
            o,
        ],
        "Gaussian source",
    );
    assert_clean_error(
        &["train", "--objective", "mle", "--kinetic=-1", "--out", o],
        "--kinetic",
    );
    assert_clean_error(
        &[
            "train",
            "--objective",
            "mle",
            "--init",
            "/nonexistent-run",
            "--out",
            o,
        ],
        "nonexistent-run",
    );
    assert!(!never.exists(), "a failed run must not leave a folder");
}

#[test]
fn adapters_lists_at_least_one() {
    let (code, out, _) = flowgpu(&["adapters", "--json"]);
    assert_eq!(code, 0);
    let json: serde_json::Value = serde_json::from_str(out.lines().last().unwrap()).unwrap();
    assert!(!json["adapters"].as_array().unwrap().is_empty());
}

/// `bench --adapter all` adds the split workloads: W-small trained data-parallel over
/// every adapter at once, evenly and weighted by the adapters' rates, each with its rate
/// against the first adapter's alone.
#[test]
fn bench_reports_a_multi_adapter_figure() {
    let (code, out, err) = flowgpu_env(
        &[
            "bench",
            "--quick",
            "--only",
            "W-small",
            "--adapter",
            "all",
            "--json",
            "--min-time",
            "0.2",
        ],
        &[],
    );
    assert_eq!(code, 0, "{err}");
    let records: Vec<serde_json::Value> = out
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let singles = records.iter().filter(|r| r["adapters"].is_null()).count();
    let split: Vec<_> = records
        .iter()
        .filter(|r| !r["adapters"].is_null())
        .collect();
    eprintln!("{singles} adapters; split: {split:?}");
    if singles > 1 {
        // Even, then (where the adapters' rates differ) weighted by them.
        assert!((1..=2).contains(&split.len()), "{split:?}");
        assert_eq!(split[0]["weights"], serde_json::json!(vec![1; singles]));
        for s in &split {
            assert_eq!(s["adapters"].as_array().unwrap().len(), singles);
            assert!(s["steps_per_s"].as_f64().unwrap() > 0.0);
            let ratio = s["vs_first"].as_f64().unwrap();
            assert!(ratio.is_finite() && ratio > 0.0, "{ratio}");
            assert!(s["peak_buffer_bytes"].as_u64().unwrap() > 0);
        }
    }
}

#[test]
fn bench_profile_counts_the_dispatches_of_a_training_step() {
    // W-small's step, three ways. Per-layer kernels: prepare, 4 forward, loss (with the
    // batch loss), 4 weight-gradient, 3 input-gradient (with the subgroup tiles: 3 fused
    // weight+input and 1 weight-gradient), Adam (no gradient-norm pass: the benchmark
    // does not clip). The fused step (8-lane subgroups, the default there): one step kernel
    // (which draws its rows) and Adam (which adds the gradient slots and writes the loss).
    // A change that adds dispatches to the step shows here.
    for env in [
        vec![],
        vec![("FLOWGPU_FUSED_STEP", "0")],
        vec![("FLOWGPU_SUBGROUP_TILES", "0")],
    ] {
        let (code, out, err) = flowgpu_env(
            &[
                "bench",
                "--quick",
                "--only",
                "W-small",
                "--profile",
                "--json",
                "--min-time",
                "0.2",
            ],
            &env,
        );
        // Needs timestamp queries inside passes: lavapipe, the test adapter, has them.
        assert_eq!(code, 0, "{err}");
        let j: serde_json::Value = serde_json::from_str(out.lines().last().unwrap()).unwrap();
        let profile = j["profile"].as_array().expect("a profile");
        // Kernels are named "file::entry"; the subgroup variant of an entry adds "_subgroup".
        let count = |entry: &str| {
            profile
                .iter()
                .filter(|p| {
                    let k = p["kernel"].as_str().unwrap();
                    k.ends_with(&format!("::{entry}"))
                        || k.ends_with(&format!("::{entry}_subgroup"))
                })
                .map(|p| p["dispatches"].as_u64().unwrap())
                .sum::<u64>()
        };
        let total: u64 = profile
            .iter()
            .map(|p| p["dispatches"].as_u64().unwrap())
            .sum();
        assert_eq!(count("grad_sq_partial"), 0);
        assert_eq!(count("loss_reduce"), 0);
        assert_eq!(count("adam_update"), 1);
        let fused = j["tiles"] == "subgroup8" && env.is_empty();
        assert_eq!(j["train_step"], if fused { "fused" } else { "layers" });
        if fused {
            assert_eq!(count("cfm_step"), 1);
            assert_eq!(total, 2, "{profile:?}");
            continue;
        }
        assert_eq!(count("cfm_prepare"), 1);
        assert_eq!(count("linear_forward"), 4);
        if j["tiles"] == "subgroup8" {
            // The subgroup tiles do dW and dX of layers 1–3 in one dispatch each.
            assert_eq!(count("backward_layer"), 3);
            assert_eq!(count("backward_weight"), 1);
            assert_eq!(count("backward_input"), 0);
            assert_eq!(total, 11, "{profile:?}");
        } else {
            assert_eq!(count("backward_weight"), 4);
            assert_eq!(count("backward_input"), 3);
            assert_eq!(total, 14, "{profile:?}");
        }
        assert!(profile
            .iter()
            .all(|p| p["total_ms"].as_f64().unwrap() > 0.0));
    }
}

#[test]
fn class_labels_that_are_not_0_to_k_map_through_the_config_table() {
    let dir = tmp("labels");
    std::fs::create_dir_all(&dir).unwrap();
    let mut csv = String::from("x,y,label\n");
    for i in 0..600 {
        let (label, cx) = [(1, -4.0), (2, 0.0), (5, 4.0)][i % 3];
        let j = (i as f64 * 0.7548).fract() - 0.5;
        csv.push_str(&format!(
            "{},{},{label}\n",
            cx + j,
            (i as f64 * 0.5698).fract() - 0.5
        ));
    }
    let data = dir.join("blobs.csv");
    std::fs::write(&data, csv).unwrap();
    let run = dir.join("run");
    let r = run.to_str().unwrap();
    let (code, _, err) = flowgpu(&[
        "train",
        "--data",
        data.to_str().unwrap(),
        "--label-column",
        "2",
        "--steps",
        "100",
        "--width",
        "16",
        "--batch",
        "64",
        "--plot-samples",
        "0",
        "--out",
        r,
    ]);
    assert_eq!(code, 0, "{err}");
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("config.json")).unwrap()).unwrap();
    assert_eq!(
        config["mlp"]["classes"], 3,
        "labels 1, 2, 5 are three classes"
    );
    assert_eq!(config["class_labels"], serde_json::json!([1, 2, 5]));
    let out = dir.join("five.npy");
    let o = out.to_str().unwrap();
    let (code, _, err) = flowgpu(&[
        "sample", "--model", r, "--class", "5", "-n", "50", "--out", o,
    ]);
    assert_eq!(code, 0, "{err}");
    assert_clean_error(
        &[
            "sample",
            "--model",
            r,
            "--class",
            "3",
            "-n",
            "50",
            "--out",
            &format!("{o}.x.npy"),
        ],
        "its labels are 1, 2, 5",
    );
}

#[test]
fn an_augmented_model_counts_every_dimension_of_its_density() {
    let dir = tmp("augment-bpd");
    let run = dir.join("run");
    let r = run.to_str().unwrap();
    let (code, _, err) = flowgpu(&[
        "train",
        "--steps",
        "50",
        "--width",
        "16",
        "--augment",
        "2",
        "--plot-samples",
        "0",
        "--eval-n",
        "0",
        "--out",
        r,
    ]);
    assert_eq!(code, 0, "{err}");
    let pts = dir.join("pts.csv");
    std::fs::write(&pts, "0.5,0.25\n-1,0.75\n").unwrap();
    let out = dir.join("lp.npy");
    let (code, stdout, err) = flowgpu(&[
        "logprob",
        "--model",
        r,
        "--input",
        pts.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--json",
    ]);
    assert_eq!(code, 0, "{err}");
    let j: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!(j["density_dims"], 4, "2 data + 2 augmented dimensions");
    let (nll, bpd) = (
        j["nll_nats"].as_f64().unwrap(),
        j["bits_per_dim"].as_f64().unwrap(),
    );
    assert!(
        (bpd - nll / (4.0 * std::f64::consts::LN_2)).abs() < 1e-9,
        "{nll} {bpd}"
    );
}

#[test]
fn diffusion_models_train_and_sample_by_ode_sde_and_ddim() {
    let dir = tmp("diffusion");
    let run = dir.join("run");
    let r = run.to_str().unwrap();
    let (code, _, err) = flowgpu(&[
        "train",
        "--path",
        "vp-sde",
        "--predict",
        "noise",
        "--steps",
        "100",
        "--width",
        "16",
        "--plot-samples",
        "0",
        "--eval-n",
        "0",
        "--out",
        r,
    ]);
    assert_eq!(code, 0, "{err}");
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["predict"], "noise");
    assert_eq!(config["path"]["kind"], "vp-sde");
    assert_eq!(config["path"]["beta_max"], 20.0);
    let out = dir.join("s.npy");
    let o = out.to_str().unwrap();
    for (flags, solver, key, value) in [
        (&["--sde"][..], "sde", "diffusion", 1.0),
        (
            &["--sde", "--diffusion", "0.5"][..],
            "sde",
            "diffusion",
            0.5,
        ),
        (&["--ddim", "--eta", "1"][..], "ddim", "eta", 1.0),
    ] {
        let mut args = vec!["sample", "--model", r, "-n", "64", "--out", o, "--json"];
        args.extend_from_slice(flags);
        let (code, stdout, err) = flowgpu(&args);
        assert_eq!(code, 0, "{flags:?}: {err}");
        let j: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
        assert_eq!(
            (j["solver"].as_str(), j[key].as_f64()),
            (Some(solver), Some(value))
        );
        let (x, _) = flowgpu::io::npy::read_npy_f32(&std::fs::read(&out).unwrap()).unwrap();
        assert!(x.len() == 128 && x.iter().all(|v| v.is_finite()));
    }
    let never = dir.join("never.npy");
    let n = never.to_str().unwrap();
    assert_clean_error(
        &["sample", "--model", r, "--out", n, "--ddim", "--eta", "2"],
        "--eta must be in [0, 1]",
    );
    for bad in [
        &["sample", "--model", r, "--out", n, "--diffusion", "2"][..],
        &["sample", "--model", r, "--out", n, "--sde", "--ddim"][..],
    ] {
        let (code, _, err) = flowgpu(bad);
        assert_eq!(code, 2, "{bad:?}: {err}");
    }
    assert!(!never.exists());
    let other = dir.join("other");
    let ot = other.to_str().unwrap();
    let short = [
        "--steps",
        "10",
        "--width",
        "8",
        "--plot-samples",
        "0",
        "--out",
        ot,
    ];
    for (flags, needle) in [
        (
            &["--path", "icfm", "--predict", "noise"][..],
            "needs a path without extra noise",
        ),
        (
            &["--predict", "score", "--objective", "mle"][..],
            "--objective mle trains the velocity",
        ),
        (
            &["--path", "ve-sde", "--sigma-min", "0"][..],
            "0 < σ_min < σ_max",
        ),
        (
            &["--path", "vp-sde", "--beta-min", "5", "--beta-max", "1"][..],
            "β_min ≤ β_max",
        ),
        (
            &["--path", "ve-sde", "--objective", "mle"][..],
            "trains against an N(0, I) source",
        ),
        (
            &["--path", "ve-sde", "--source", "8gaussians"][..],
            "drop --source",
        ),
    ] {
        let mut args = vec!["train"];
        args.extend_from_slice(flags);
        args.extend_from_slice(&short);
        assert_clean_error(&args, needle);
        assert!(!other.exists(), "{flags:?} left a run folder");
    }
}

/// `train --resume` takes only where the run goes on and how it reports (`--stop-after`,
/// `--adapter`, `--adapter-weights`, `--backend`, `--json`); any other flag is refused by
/// its own name (not the name of the group of flags it belongs to).
#[test]
fn resume_takes_where_to_run_and_refuses_training_flags() {
    let dir = tmp("resume-flags");
    let run = dir.join("run");
    let r = run.to_str().unwrap();
    let (code, _, err) = flowgpu(&[
        "train",
        "--steps",
        "20",
        "--stop-after",
        "10",
        "--width",
        "8",
        "--plot-samples",
        "0",
        "--eval-n",
        "0",
        "--out",
        r,
    ]);
    assert_eq!(code, 0, "{err}");
    for (flags, drop) in [
        (&["--mle-steps", "4"][..], "drop --mle-steps ("),
        (&["--lr", "0.1", "--width", "9"][..], "--width"),
    ] {
        let mut args = vec!["train", "--resume", r];
        args.extend_from_slice(flags);
        let (code, _, err) = flowgpu(&args);
        assert!(code == 1 && err.contains(drop), "{flags:?}: {err}");
        assert!(!err.contains("Args"), "a group's name in: {err}");
    }
    let (code, _, err) = flowgpu(&[
        "train",
        "--resume",
        r,
        "--adapter",
        "llvmpipe",
        "--stop-after",
        "15",
        "--json",
    ]);
    assert_eq!(code, 0, "{err}");
}
