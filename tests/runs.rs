//! Long runs and real data through the binary: data files, Ctrl-C and exact resume,
//! determinism, a non-finite loss, and a clear one-line error for every kind of bad input.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_flowgpu"))
}

fn run(args: &[&str]) -> (i32, String, String) {
    let out = bin().args(args).output().expect("run flowgpu");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("flowgpu-runs-{}-{name}", std::process::id()));
    std::fs::remove_dir_all(&d).ok();
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A 3-column CSV with a header: moons plus a noisy third column far from zero.
fn write_csv(path: &Path, n: usize) {
    let m = flowgpu::data::Dataset::toy("moons", n, 3).unwrap();
    let mut text = String::from("x,y,z\n");
    for (i, r) in m.points.chunks(2).enumerate() {
        text.push_str(&format!("{},{},{}\n", r[0], r[1], 100.0 + (i % 7) as f32));
    }
    std::fs::write(path, text).unwrap();
}

fn train_args<'a>(data: &'a str, out: &'a str) -> Vec<&'a str> {
    vec![
        "train",
        "--data",
        data,
        "--out",
        out,
        "--steps",
        "600",
        "--width",
        "32",
        "--depth",
        "2",
        "--checkpoint-every",
        "100",
        "--val-frac",
        "0.1",
        "--plot-samples",
        "200",
    ]
}

/// The same run for maximum likelihood: fewer, costlier steps (Hutchinson probes, midpoint).
fn mle_args<'a>(data: &'a str, out: &'a str) -> Vec<&'a str> {
    let mut a = train_args(data, out);
    a[6] = "120"; // --steps
    a[12] = "20"; // --checkpoint-every
    a.extend([
        "--objective",
        "mle",
        "--trace",
        "hutchinson",
        "--probes",
        "2",
        "--mle-solver",
        "midpoint",
        "--mle-steps",
        "2",
        "--batch",
        "128",
    ]);
    a
}

#[test]
fn ctrl_c_then_resume_ends_with_the_weights_of_an_uninterrupted_run() {
    resume_matches_uninterrupted("resume", train_args, 600);
}

#[test]
fn mle_ctrl_c_then_resume_ends_with_the_weights_of_an_uninterrupted_run() {
    resume_matches_uninterrupted("resume-mle", mle_args, 120);
}

/// Two uninterrupted runs are identical; a run stopped by SIGINT after its first checkpoint
/// and resumed ends with the same weights, optimizer state and loss history.
fn resume_matches_uninterrupted(
    name: &str,
    args: for<'a> fn(&'a str, &'a str) -> Vec<&'a str>,
    steps: u64,
) {
    let dir = tmp(name);
    let csv = dir.join("data.csv");
    write_csv(&csv, 3000);
    let (a, b, c) = (dir.join("a"), dir.join("b"), dir.join("c"));
    // Uninterrupted, twice: same seed, same adapter, same flags → identical files.
    for out in [&a, &c] {
        let (code, _, err) = run(&args(s(&csv), s(out)));
        assert_eq!(code, 0, "{err}");
        assert!(err.contains("held-out NLL"), "{err}");
    }
    assert!(
        std::fs::read(a.join("model.safetensors")).unwrap()
            == std::fs::read(c.join("model.safetensors")).unwrap(),
        "runs are not deterministic"
    );
    let cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(a.join("config.json")).unwrap()).unwrap();
    let std = cfg["standardization"]["std"].as_array().unwrap();
    assert_eq!(std.len(), 3);
    assert!((cfg["standardization"]["mean"][2].as_f64().unwrap() - 103.0).abs() < 0.5);

    // Interrupted by SIGINT at an arbitrary step (after the first checkpoint), then resumed.
    let child = bin()
        .args(args(s(&csv), s(&b)))
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    while std::fs::read_to_string(b.join("loss.csv"))
        .map(|t| t.lines().count())
        .unwrap_or(0)
        < 2
    {
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "no checkpoint appeared"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    let step: u64 = match out.status.code() {
        Some(130) => {
            assert!(err.contains("flowgpu train --resume"), "{err}");
            let text = std::fs::read_to_string(b.join("loss.csv")).unwrap();
            (text.lines().count() - 1) as u64
        }
        // The run may have finished before the signal landed; then there is nothing to resume.
        Some(0) => steps,
        other => panic!("exit {other:?}: {err}"),
    };
    eprintln!("interrupted at step {step}");
    if step < steps {
        let (code, _, err) = run(&["train", "--resume", s(&b)]);
        assert_eq!(code, 0, "{err}");
        assert!(
            err.contains(&format!("resuming {} at step {step}", b.display())),
            "{err}"
        );
    }
    assert!(
        std::fs::read(a.join("model.safetensors")).unwrap()
            == std::fs::read(b.join("model.safetensors")).unwrap(),
        "resumed weights differ"
    );
    let (sa, sb) = (
        flowgpu::train::TrainState::load(&a.join("checkpoint.safetensors")).unwrap(),
        flowgpu::train::TrainState::load(&b.join("checkpoint.safetensors")).unwrap(),
    );
    assert!(sa == sb, "optimizer state differs");
    assert_eq!(sa.step, steps);
    assert!(
        std::fs::read(a.join("loss.csv")).unwrap() == std::fs::read(b.join("loss.csv")).unwrap(),
        "loss history differs"
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn a_non_finite_loss_stops_with_the_step_and_keeps_the_last_checkpoint() {
    let dir = tmp("nan");
    let out = dir.join("run");
    let (code, _, err) = run(&[
        "train",
        "--out",
        s(&out),
        "--steps",
        "300",
        "--lr",
        "1e30",
        "--clip-norm",
        "0",
        "--warmup",
        "0",
        "--checkpoint-every",
        "100",
        "--width",
        "16",
    ]);
    assert_eq!(code, 1, "{err}");
    let last = err.lines().last().unwrap();
    assert!(
        last.starts_with("error: the loss became")
            && last.contains("at step")
            && last.contains("--lr"),
        "{err}"
    );
    assert!(
        out.join("checkpoint.safetensors").is_file() && out.join("model.safetensors").is_file()
    );
    std::fs::remove_dir_all(&dir).ok();
}

/// Exit code 1, one `error:` line containing `needle`, no panic, and `never` not created.
fn bad(args: &[&str], needle: &str, never: &Path) {
    let (code, _, err) = run(args);
    assert_eq!(code, 1, "{args:?}: exit {code}: {err}");
    let last = err.lines().rfind(|l| !l.trim().is_empty()).unwrap_or("");
    assert!(
        last.starts_with("error: ") && last.contains(needle),
        "{args:?}: expected '{needle}' in: {err}"
    );
    assert!(
        !err.contains("panicked") && !err.contains("backtrace"),
        "{args:?}: {err}"
    );
    assert!(!never.exists(), "{args:?}: {} was created", never.display());
}

/// A value outside an option's choices: a usage error (exit 2) listing the choices.
fn bad_choice(args: &[&str], value: &str, never: &Path) {
    let (code, _, err) = run(args);
    assert_eq!(code, 2, "{args:?}: exit {code}: {err}");
    assert!(
        err.contains(&format!("invalid value '{value}'")) && err.contains("possible values"),
        "{args:?}: {err}"
    );
    assert!(!never.exists(), "{args:?}: {} was created", never.display());
}

/// The files and the failing `train` of the bad-input checks, in `dir`.
struct BadInputs<'a> {
    dir: &'a Path,
    out: PathBuf,
}

impl BadInputs<'_> {
    /// A file `name` in the folder, with `body`.
    fn file(&self, name: &str, body: &[u8]) -> String {
        let p = self.dir.join(name);
        std::fs::write(&p, body).unwrap();
        p.to_str().unwrap().to_string()
    }

    /// `train` on `data` with `extra` flags fails with `needle` and writes nothing.
    fn train(&self, data: &str, extra: &[&str], needle: &str) {
        let o = s(&self.out);
        let mut args = vec!["train", "--data", data, "--out", o];
        if !extra.iter().any(|a| a.starts_with("--steps")) {
            args.extend_from_slice(&["--steps", "20"]);
        }
        args.extend_from_slice(extra);
        bad(&args, needle, &self.out);
    }
}

#[test]
fn every_kind_of_bad_input_is_a_clear_error_without_output() {
    let dir = tmp("bad");
    let b = BadInputs {
        dir: &dir,
        out: dir.join("never"),
    };
    bad_data_files(&b);
    bad_names_and_numbers(&b);
    let model = constant_column_run(&b);
    bad_model_and_solver_flags(&b, &model);
}

/// Missing, empty, ragged, non-numeric, non-finite, truncated and mistyped data files.
fn bad_data_files(b: &BadInputs) {
    let (dir, f, train) = (
        b.dir,
        |n: &str, x: &[u8]| b.file(n, x),
        |d: &str, e: &[&str], n: &str| b.train(d, e, n),
    );
    // Data files.
    train(s(&dir.join("missing.csv")), &[], "missing.csv");
    train(&f("empty.csv", b""), &[], "empty");
    train(&f("header.csv", b"a,b\n"), &[], "header");
    train(&f("ragged.csv", b"1,2\n3\n"), &[], "row 2");
    train(&f("text.csv", b"1,2\n3,abc\n"), &[], "abc");
    train(&f("nan.csv", b"1,2\n3,nan\n4,5\n"), &[], "--drop-nonfinite");
    train(&f("inf.csv", b"1,2\n3,inf\n4,5\n"), &[], "--drop-nonfinite");
    train(&f("few.csv", b"1,2\n3,4\n5,6\n"), &[], "fewer than --batch");
    let mut npy = flowgpu::io::npy::npy_header(&[4, 2]);
    npy.extend_from_slice(&[0u8; 12]);
    train(&f("trunc.npy", &npy), &[], "npy");
    let mut i4 = flowgpu::io::npy::npy_header(&[2, 2]);
    let dict_at = i4.windows(3).position(|w| w == b"<f4").unwrap();
    i4[dict_at..dict_at + 3].copy_from_slice(b"<i4");
    i4.extend_from_slice(&[0u8; 16]);
    train(&f("int.npy", &i4), &[], "i4");
    let mut d3 = flowgpu::io::npy::npy_header(&[2, 2, 2]);
    d3.extend_from_slice(&[0u8; 32]);
    train(&f("d3.npy", &d3), &[], "3");
    train(&f("data.txt", b"1,2\n"), &[], "valid datasets");
}

/// Option values outside their choices, and numbers out of range.
fn bad_names_and_numbers(b: &BadInputs) {
    let (out, train) = (&b.out, |d: &str, e: &[&str], n: &str| b.train(d, e, n));
    let o = s(out);
    // Names and numbers.
    train(
        "moons",
        &["--steps-per-submit", "100000000"],
        "--steps-per-submit",
    );
    let choice = |flag: &str, value: &str| {
        bad_choice(&["train", "--out", o, flag, value], value, out);
    };
    choice("--activation", "gelu");
    choice("--standardize", "maybe");
    choice("--schedule", "linear");
    choice("--coupling", "hungarian");
    choice("--augment-fill", "zeros");
    train("moons", &["--path", "xx"], "valid paths");
    train("moons", &["--steps", "0"], "--steps");
    train("moons", &["--batch", "0"], "--batch");
    train("moons", &["--width", "0"], "--width");
    train("moons", &["--depth", "0"], "--depth");
    train("moons", &["--lr=-1"], "--lr");
    train("moons", &["--val-frac", "1.5"], "--val-frac");
    train(
        "moons",
        &["--batch", "600000", "--n-data", "600000"],
        "storage binding limit",
    );
}

/// A file with a constant column trains (std 1); returns its run folder.
fn constant_column_run(b: &BadInputs) -> PathBuf {
    let (dir, f, train) = (
        b.dir,
        |n: &str, x: &[u8]| b.file(n, x),
        |d: &str, e: &[&str], n: &str| b.train(d, e, n),
    );
    // A constant column trains fine (std 1, no division by zero).
    let mut constant = String::from("a,b\n");
    for i in 0..400 {
        constant.push_str(&format!("{},{}\n", (i as f32 * 0.37).sin(), 5.0));
    }
    let cpath = f("constant.csv", constant.as_bytes());
    let crun = dir.join("constant-run");
    let (code, _, err) = run(&[
        "train",
        "--data",
        &cpath,
        "--out",
        s(&crun),
        "--steps",
        "50",
        "--width",
        "8",
        "--plot-samples",
        "10",
    ]);
    assert_eq!(code, 0, "{err}");
    // With --drop-nonfinite the NaN file loses its bad row and is then too small.
    train(
        s(&dir.join("nan.csv")),
        &["--drop-nonfinite"],
        "fewer than --batch",
    );

    crun
}

/// Bad model folders, inputs and solver flags of sample, encode and logprob.
fn bad_model_and_solver_flags(b: &BadInputs, crun: &Path) {
    let (dir, f) = (b.dir, |n: &str, x: &[u8]| b.file(n, x));
    // Models and solver flags.
    let model = s(crun);
    let pts = f("pts.csv", b"0.1,0.2\n0.3,0.4\n");
    let pts3 = f("pts3.csv", b"0.1,0.2,0.3\n");
    let res = dir.join("never.npy");
    let r = s(&res);
    // Figure options are checked before the samples are written.
    let traj = s(&dir.join("t.png")).to_string();
    bad(
        &[
            "sample",
            "--model",
            model,
            "--out",
            r,
            "--trajectories",
            &traj,
            "--particles",
            "0",
        ],
        "--particles",
        &res,
    );
    let nowhere = s(&dir.join("no-such-dir").join("p.png")).to_string();
    bad(
        &["sample", "--model", model, "--out", r, "--plot", &nowhere],
        "does not exist",
        &res,
    );
    bad_choice(
        &["sample", "--model", model, "--out", r, "--solver", "rk5"],
        "rk5",
        &res,
    );
    bad(
        &["sample", "--model", model, "--out", r, "--steps", "0"],
        "--steps",
        &res,
    );
    bad(
        &[
            "sample", "--model", model, "--out", r, "--solver", "dopri5", "--rtol", "0",
        ],
        "--rtol",
        &res,
    );
    // A tolerance no f32 step can meet is refused as such, not blamed on the field.
    bad(
        &[
            "sample", "--model", model, "--out", r, "--solver", "dopri5", "--rtol", "1e-9",
        ],
        "below f32 precision",
        &res,
    );
    bad_choice(
        &["sample", "--model", model, "--out", r, "--time-grid", "log"],
        "log",
        &res,
    );
    bad(
        &[
            "logprob",
            "--model",
            model,
            "--input",
            &pts,
            "--out",
            r,
            "--trace",
            "hutchinson",
            "--probes",
            "0",
        ],
        "--probes",
        &res,
    );
    bad_choice(
        &[
            "logprob", "--model", model, "--input", &pts, "--out", r, "--trace", "exactly",
        ],
        "exactly",
        &res,
    );
    bad(
        &["encode", "--model", model, "--input", &pts3, "--out", r],
        "dimension 2",
        &res,
    );
    bad(
        &[
            "encode",
            "--model",
            s(&dir.join("nope")),
            "--input",
            &pts,
            "--out",
            r,
        ],
        "config.json",
        &res,
    );
    // Corrupted model folders.
    let broken = dir.join("broken");
    std::fs::create_dir_all(&broken).unwrap();
    let cj = std::fs::read_to_string(crun.join("config.json")).unwrap();
    let st = std::fs::read(crun.join("model.safetensors")).unwrap();
    let b = s(&broken);
    std::fs::write(broken.join("config.json"), &cj).unwrap();
    std::fs::write(broken.join("model.safetensors"), &st[..st.len() / 2]).unwrap();
    bad(&["sample", "--model", b, "--out", r], "safetensors", &res);
    std::fs::remove_file(broken.join("model.safetensors")).unwrap();
    bad(
        &["sample", "--model", b, "--out", r],
        "model.safetensors",
        &res,
    );
    std::fs::write(broken.join("model.safetensors"), &st).unwrap();
    std::fs::write(broken.join("config.json"), &cj[..cj.len() / 2]).unwrap();
    bad(&["sample", "--model", b, "--out", r], "config", &res);
    std::fs::write(
        broken.join("config.json"),
        cj.replace("\"format_version\": 1", "\"format_version\": 99"),
    )
    .unwrap();
    bad(
        &["sample", "--model", b, "--out", r],
        "format_version 99",
        &res,
    );
    std::fs::write(
        broken.join("config.json"),
        cj.replace("\"width\": 8", "\"width\": 9"),
    )
    .unwrap();
    bad(&["sample", "--model", b, "--out", r], "shape", &res);
    // Rename a tensor in the header, byte for byte (same length, so the file stays valid).
    let mut renamed = st.clone();
    let at = renamed
        .windows(15)
        .position(|w| w == b"layers.0.weight")
        .unwrap();
    renamed[at + 9] = b'W';
    std::fs::write(broken.join("config.json"), &cj).unwrap();
    std::fs::write(broken.join("model.safetensors"), renamed).unwrap();
    bad(
        &["sample", "--model", b, "--out", r],
        "layers.0.weight",
        &res,
    );
    std::fs::remove_dir_all(dir).ok();
}
