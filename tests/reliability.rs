//! The reliability promises of docs/reliability.md, each a case that failed before it was
//! kept: a run folder is never silently replaced and has one writer; the checkpoint set is
//! one unit, so every state a kill can leave resumes to the uninterrupted weights; every
//! scheduler signal ends every phase cleanly; nothing non-finite is written as a result.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_flowgpu"))
}

fn run(args: &[&str]) -> (i32, String) {
    let out = bin().args(args).output().expect("run flowgpu");
    let code = out.status.code().unwrap_or(-1);
    (code, String::from_utf8_lossy(&out.stderr).into())
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("flowgpu-rel-{}-{name}", std::process::id()));
    std::fs::remove_dir_all(&d).ok();
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A small moons run into `out` (600 steps, a checkpoint every 100).
fn train_args(out: &Path) -> Vec<String> {
    [
        "train",
        "--data",
        "moons",
        "--n-data",
        "4000",
        "--steps",
        "600",
        "--width",
        "16",
        "--depth",
        "2",
        "--checkpoint-every",
        "100",
        "--plot-samples",
        "0",
        "--eval-n",
        "0",
        "--out",
        s(out),
    ]
    .map(String::from)
    .to_vec()
}

/// `args` with `extra` flags: a flag already there gets the new value, others are added.
fn with(mut args: Vec<String>, extra: &[&str]) -> Vec<String> {
    let mut i = 0;
    while i < extra.len() {
        let flag = extra[i];
        let value = extra.get(i + 1).filter(|v| !v.starts_with("--"));
        match (args.iter().position(|a| a == flag), value) {
            (Some(at), Some(v)) => args[at + 1] = v.to_string(),
            (None, Some(v)) => args.extend([flag.to_string(), v.to_string()]),
            (_, None) => args.push(flag.to_string()),
        }
        i += 1 + value.is_some() as usize;
    }
    args
}

fn train(out: &Path, extra: &[&str]) -> (i32, String) {
    let args = with(train_args(out), extra);
    let refs: Vec<&str> = args.iter().map(|a| a.as_str()).collect();
    run(&refs)
}

/// Files whose names start with '.' and contain ".tmp-": atomic writes in flight.
fn temporaries(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.') && n.contains(".tmp-"))
        .collect()
}

/// Start `args`, wait until `ready()` holds, send `signal`, and return the exit code.
fn signal_when(args: &[String], signal: &str, ready: impl Fn() -> bool) -> i32 {
    let mut child = bin().args(args).stderr(Stdio::null()).spawn().unwrap();
    let t0 = Instant::now();
    while !ready() {
        assert!(t0.elapsed() < Duration::from_secs(120), "never ready");
        std::thread::sleep(Duration::from_millis(10));
    }
    let pid = child.id().to_string();
    Command::new("kill").args([signal, &pid]).status().unwrap();
    child.wait().unwrap().code().unwrap_or(-1)
}

#[test]
fn an_existing_run_is_never_replaced_unless_asked() {
    let dir = tmp("overwrite");
    let out = dir.join("run");
    let (code, err) = train(&out, &["--steps", "100"]);
    assert_eq!(code, 0, "{err}");
    let before = std::fs::read(out.join("checkpoint.safetensors")).unwrap();
    let (code, err) = train(&out, &["--steps", "100", "--seed", "1"]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("already holds a run") && err.contains("--overwrite"),
        "{err}"
    );
    assert_eq!(
        before,
        std::fs::read(out.join("checkpoint.safetensors")).unwrap()
    );
    let (code, err) = train(&out, &["--steps", "100", "--seed", "1", "--overwrite"]);
    assert_eq!(code, 0, "{err}");
    assert_ne!(
        before,
        std::fs::read(out.join("checkpoint.safetensors")).unwrap()
    );
}

#[test]
fn a_run_folder_has_one_writer_at_a_time() {
    let dir = tmp("writers");
    let out = dir.join("run");
    let args = with(
        train_args(&out),
        &["--steps", "20000", "--checkpoint-every", "20000"],
    );
    let mut first = bin().args(&args).stderr(Stdio::null()).spawn().unwrap();
    let t0 = Instant::now();
    while !out.join("checkpoint.safetensors").exists() {
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "no first checkpoint"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let (code, err) = train(&out, &["--overwrite"]);
    first.kill().unwrap();
    first.wait().unwrap();
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("being written by another flowgpu process"),
        "{err}"
    );
    // The lock goes with its process, however it ended (here: SIGKILL).
    let (code, err) = train(&out, &["--overwrite", "--steps", "50"]);
    assert_eq!(code, 0, "{err}");
}

/// Every folder state a kill during a checkpoint can leave — the new checkpoint not yet
/// renamed (a temp file beside the old set), renamed before none, some or all of its
/// exports — resumes to the weights of the uninterrupted run.
#[test]
fn every_state_a_kill_leaves_resumes_to_the_uninterrupted_weights() {
    let dir = tmp("fault");
    let reference = dir.join("reference");
    let (code, err) = train(&reference, &[]);
    assert_eq!(code, 0, "{err}");
    let want = checkpoint(&reference);
    // Checkpoint sets at steps 200 (old) and 300 (new) of the same run.
    let sets: Vec<PathBuf> = [200, 300]
        .iter()
        .map(|&steps| {
            let d = dir.join(format!("at-{steps}"));
            let st = steps.to_string();
            // The same run stopped at `steps`: its schedule is the 600-step one.
            let (code, err) = train(&d, &["--stop-after", &st]);
            assert_eq!(code, 0, "{err}");
            d
        })
        .collect();
    let exports = ["model.safetensors", "config.json", "loss.csv"];
    for state in 0..=exports.len() + 1 {
        let d = dir.join(format!("state-{state}"));
        copy_dir(&sets[0], &d);
        if state == 0 {
            // Killed before the rename: the new checkpoint is a stray temp file.
            std::fs::copy(
                sets[1].join("checkpoint.safetensors"),
                d.join(".checkpoint.safetensors.tmp-1-0"),
            )
            .unwrap();
        } else {
            std::fs::copy(
                sets[1].join("checkpoint.safetensors"),
                d.join("checkpoint.safetensors"),
            )
            .unwrap();
            for f in &exports[..state - 1] {
                std::fs::copy(sets[1].join(f), d.join(f)).unwrap();
            }
        }
        let (code, err) = run(&["train", "--resume", s(&d)]);
        assert_eq!(code, 0, "state {state}: {err}");
        assert!(
            checkpoint(&d) == want,
            "state {state} resumed to other weights"
        );
        assert!(
            temporaries(&d).is_empty(),
            "state {state}: {:?}",
            temporaries(&d)
        );
    }
}

/// What a resumed run must reproduce: step, parameters, optimizer moments, EMA, the loss
/// of every step, and the model file.
#[derive(PartialEq)]
struct Snapshot {
    step: u64,
    tensors: [Vec<f32>; 4],
    model: Vec<u8>,
}

/// The snapshot of a run folder's checkpoint and model file.
fn checkpoint(dir: &Path) -> Snapshot {
    let path = dir.join("checkpoint.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    let st = flowgpu::train::TrainState::from_bytes(&bytes, &path).unwrap();
    let (_, loss) = flowgpu::train::TrainState::extras(&bytes, &path, "loss").unwrap();
    Snapshot {
        step: st.step,
        tensors: [st.params, st.moments, st.ema, loss.unwrap()],
        model: std::fs::read(dir.join("model.safetensors")).unwrap(),
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let name = e.file_name();
        if !name.to_string_lossy().starts_with('.') {
            std::fs::copy(e.path(), to.join(name)).unwrap();
        }
    }
}

#[test]
fn sigterm_and_sighup_stop_training_with_a_checkpoint_and_the_conventional_code() {
    for (signal, code) in [("-TERM", 143), ("-HUP", 129)] {
        let dir = tmp(&format!("signal{signal}"));
        let out = dir.join("run");
        let loss = out.join("loss.csv");
        let got = signal_when(&train_args(&out), signal, || {
            std::fs::read_to_string(&loss).is_ok_and(|t| t.lines().count() > 1)
        });
        assert_eq!(got, code, "{signal}");
        assert!(temporaries(&out).is_empty(), "{:?}", temporaries(&out));
        let (c, err) = run(&["train", "--resume", s(&out)]);
        assert_eq!(c, 0, "{signal}: {err}");
    }
}

#[test]
fn a_signal_outside_the_training_loop_ends_the_command_with_no_output() {
    let dir = tmp("signal-sample");
    let model = dir.join("model");
    let (code, err) = train(&model, &["--steps", "100"]);
    assert_eq!(code, 0, "{err}");
    let out = dir.join("samples.npy");
    let args: Vec<String> = [
        "sample",
        "--model",
        s(&model),
        "-n",
        "2000000",
        "--solver",
        "rk4",
        "--steps",
        "50",
        "--out",
        s(&out),
    ]
    .map(String::from)
    .to_vec();
    // Once its temp file exists, the sampler is mid-write.
    let got = signal_when(&args, "-TERM", || !temporaries(&dir).is_empty());
    assert_eq!(got, 143);
    assert!(!out.exists(), "a partial result was written");
    assert!(temporaries(&dir).is_empty(), "{:?}", temporaries(&dir));
}

#[test]
fn a_diverging_run_stops_with_its_step_and_keeps_the_last_good_checkpoint() {
    let dir = tmp("diverge");
    let out = dir.join("run");
    let extra = [
        "--lr",
        "30",
        "--warmup",
        "0",
        "--schedule",
        "constant",
        "--clip-norm",
        "0",
    ];
    let (code, err) = train(&out, &extra);
    assert_eq!(code, 1, "{err}");
    let last = err.lines().last().unwrap_or("");
    assert!(last.contains("at step") && last.contains("--lr"), "{err}");
    assert!(out.join("checkpoint.safetensors").exists());
    // The kept model samples finite points.
    let samples = dir.join("s.npy");
    let (code, err) = run(&["sample", "--model", s(&out), "--out", s(&samples)]);
    assert_eq!(code, 0, "{err}");
}

#[test]
fn a_model_that_produces_non_finite_values_writes_nothing() {
    use flowgpu::model::Model;
    let dir = tmp("nonfinite");
    let good = dir.join("good");
    let (code, err) = train(&good, &["--steps", "50"]);
    assert_eq!(code, 0, "{err}");
    // The same model with weights scaled until its field overflows.
    let mut m = Model::load(&good).unwrap();
    for l in &mut m.weights.layers {
        l.w.iter_mut().for_each(|w| *w *= 1e12);
    }
    let bad = dir.join("bad");
    m.save(&bad).unwrap();
    let pts = dir.join("pts.csv");
    std::fs::write(&pts, "0.1,0.2\n0.3,0.4\n").unwrap();
    let out = dir.join("out.npy");
    for args in [
        vec!["sample", "--model", s(&bad), "--out", s(&out)],
        vec![
            "decode",
            "--model",
            s(&bad),
            "--input",
            s(&pts),
            "--out",
            s(&out),
        ],
        vec![
            "encode",
            "--model",
            s(&bad),
            "--input",
            s(&pts),
            "--out",
            s(&out),
        ],
        vec![
            "logprob",
            "--model",
            s(&bad),
            "--input",
            s(&pts),
            "--out",
            s(&out),
        ],
    ] {
        let (code, err) = run(&args);
        assert_eq!(code, 1, "{args:?}: {err}");
        assert!(
            err.contains("diverged") && err.contains("nothing was written"),
            "{err}"
        );
        assert!(!out.exists(), "{args:?} wrote {}", out.display());
    }
}

#[test]
fn resume_refuses_changed_data_and_conflicting_flags() {
    let dir = tmp("resume-honest");
    let csv = dir.join("data.csv");
    let m = flowgpu::data::Dataset::toy("moons", 2000, 5).unwrap();
    let text: String = m
        .points
        .chunks(2)
        .map(|r| format!("{},{}\n", r[0], r[1]))
        .collect();
    std::fs::write(&csv, &text).unwrap();
    let out = dir.join("run");
    let (code, err) = train(&out, &["--data", s(&csv), "--stop-after", "100"]);
    assert_eq!(code, 0, "{err}");
    let (code, err) = run(&["train", "--resume", s(&out), "--lr", "0.1", "--steps", "9"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("--lr") && err.contains("--steps"), "{err}");
    std::fs::write(&csv, text.replacen('.', ".9", 1)).unwrap();
    let (code, err) = run(&["train", "--resume", s(&out), "--stop-after", "200"]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("not the data this run was trained on"),
        "{err}"
    );
    std::fs::write(&csv, &text).unwrap();
    let (code, err) = run(&["train", "--resume", s(&out), "--stop-after", "200"]);
    assert_eq!(code, 0, "{err}");
}

/// Fault injection: a run resumed from its step-200 checkpoint and trained to step 300 is
/// killed (aborted) instead of each of its file operations in turn — its exports on resume,
/// then the step-300 checkpoint set, the rename window included — and every folder it
/// leaves resumes to step 300 with the weights of the run that was never killed.
#[test]
fn a_kill_at_every_file_operation_of_a_checkpoint_leaves_a_resumable_folder() {
    let dir = tmp("inject");
    let reference = dir.join("reference");
    let (code, err) = train(&reference, &["--stop-after", "300"]);
    assert_eq!(code, 0, "{err}");
    let want = checkpoint(&reference);
    let base = dir.join("base");
    let (code, err) = train(&base, &["--stop-after", "200"]);
    assert_eq!(code, 0, "{err}");
    let mut killed = 0;
    for n in 1.. {
        let d = dir.join(format!("op-{n}"));
        copy_dir(&base, &d);
        let status = bin()
            .args(["train", "--resume", s(&d), "--stop-after", "300"])
            .env("FLOWGPU_FAULT_AFTER_FILE_OPS", n.to_string())
            .stderr(Stdio::null())
            .status()
            .unwrap();
        let done = status.success();
        killed += !done as usize;
        let (code, err) = run(&["train", "--resume", s(&d), "--stop-after", "300"]);
        assert_eq!(code, 0, "killed at file operation {n}: {err}");
        assert!(
            checkpoint(&d) == want,
            "killed at file operation {n}: other weights"
        );
        assert!(temporaries(&d).is_empty(), "op {n}: {:?}", temporaries(&d));
        if done {
            break; // n is past the last file operation: every one was tried
        }
    }
    // Exports on resume (3 files) and the checkpoint set (4): 5 operations each.
    assert_eq!(killed, 35, "file operations tried");
}
