//! Sharded commands: the N shards of `sample`, `encode`, `decode` and `logprob` (Hutchinson
//! probes too) merge into the unsharded output byte for byte, with uneven N, empty shards
//! and shards run in other chunk sizes; `merge` refuses incomplete, duplicated and mixed
//! sets; the one-host recipe of docs/scale.md (xargs) runs as written.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_flowgpu");

fn flowgpu(args: &[&str]) -> (i32, String) {
    let out = Command::new(BIN).args(args).output().expect("run flowgpu");
    let err = String::from_utf8_lossy(&out.stderr).into();
    (out.status.code().unwrap_or(-1), err)
}

fn ok(args: &[&str]) {
    let (code, err) = flowgpu(args);
    assert_eq!(code, 0, "{args:?}: {err}");
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("flowgpu-shards-{}-{name}", std::process::id()));
    std::fs::remove_dir_all(&d).ok();
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Run `args` (with `--out` appended per shard) as `count` shards, merge them, and return
/// the merged bytes; `extra(i)` adds per-shard flags (chunk sizes).
fn sharded(dir: &Path, tag: &str, args: &[&str], count: usize, ext: &str) -> Vec<u8> {
    let mut parts = Vec::new();
    for i in 0..count {
        let part = dir.join(format!("{tag}-{i}.{ext}"));
        let shard = format!("{i}/{count}");
        let chunk = (3 + 5 * i).to_string();
        let mut a: Vec<&str> = args.to_vec();
        a.extend(["--shard", &shard, "--chunk", &chunk, "--out", s(&part)]);
        ok(&a);
        parts.push(part);
    }
    let merged = dir.join(format!("{tag}-merged.{ext}"));
    let mut m = vec!["merge", "--out", s(&merged)];
    m.extend(parts.iter().rev().map(|p| s(p)));
    ok(&m);
    std::fs::read(&merged).unwrap()
}

/// A small model trained for `steps` steps, in `dir`/run.
fn tiny_model(dir: &Path, steps: u32) -> PathBuf {
    let run = dir.join("run");
    let steps = steps.to_string();
    ok(&[
        "train",
        "--steps",
        &steps,
        "--width",
        "8",
        "--plot-samples",
        "0",
        "--eval-n",
        "0",
        "--out",
        s(&run),
    ]);
    run
}

#[test]
fn shards_merge_into_the_unsharded_output_bit_for_bit() {
    let dir = tmp("bits");
    let run = tiny_model(&dir, 50);
    let m = s(&run);
    let full = dir.join("full.npy");
    let sample = [
        "sample", "--model", m, "-n", "103", "--solver", "rk4", "--steps", "5",
    ];
    ok(&[&sample[..], &["--out", s(&full)]].concat());
    let want = std::fs::read(&full).unwrap();
    assert_eq!(
        sharded(&dir, "s4", &sample, 4, "npy"),
        want,
        "sample, 4 shards"
    );
    // 7 shards of 103 rows in chunks of 3..33 rows; CSV.
    let full_csv = dir.join("full.csv");
    ok(&[&sample[..], &["--out", s(&full_csv)]].concat());
    let want_csv = std::fs::read(&full_csv).unwrap();
    assert_eq!(
        sharded(&dir, "s7", &sample, 7, "csv"),
        want_csv,
        "sample, 7 CSV shards"
    );
    // More shards than rows: empty shards.
    let few = ["sample", "--model", m, "-n", "5", "--steps", "4"];
    let five = dir.join("five.npy");
    ok(&[
        "sample",
        "--model",
        m,
        "-n",
        "5",
        "--steps",
        "4",
        "--out",
        s(&five),
    ]);
    assert_eq!(
        sharded(&dir, "s8", &few, 8, "npy"),
        std::fs::read(&five).unwrap(),
        "8 shards of 5 rows"
    );

    for (cmd, input) in [("encode", &full), ("decode", &full)] {
        let out = dir.join(format!("{cmd}.npy"));
        let args = [
            "--model",
            m,
            "--input",
            s(input),
            "--solver",
            "rk4",
            "--steps",
            "5",
        ];
        let mut a = vec![cmd];
        a.extend(args);
        ok(&[a.as_slice(), &["--out", s(&out)]].concat());
        assert_eq!(
            sharded(&dir, cmd, &a, 3, "npy"),
            std::fs::read(&out).unwrap(),
            "{cmd}"
        );
    }

    // Hutchinson probes are keyed by the global row.
    let lp = dir.join("lp.npy");
    let args = [
        "logprob",
        "--model",
        m,
        "--input",
        s(&full),
        "--trace",
        "hutchinson",
        "--probes",
        "2",
        "--steps",
        "6",
    ];
    ok(&[&args[..], &["--out", s(&lp)]].concat());
    assert_eq!(
        sharded(&dir, "lp", &args, 5, "npy"),
        std::fs::read(&lp).unwrap(),
        "logprob"
    );
}

#[test]
fn merge_refuses_incomplete_duplicated_and_mixed_shards() {
    let dir = tmp("refuse");
    let run = tiny_model(&dir, 20);
    let m = s(&run);
    let part = |i: usize, seed: &str| {
        let p = dir.join(format!("p{i}-{seed}.npy"));
        let shard = format!("{i}/3");
        ok(&[
            "sample",
            "--model",
            m,
            "-n",
            "30",
            "--seed",
            seed,
            "--steps",
            "4",
            "--shard",
            &shard,
            "--out",
            s(&p),
        ]);
        p
    };
    let (p0, p1, p2, q2) = (part(0, "1"), part(1, "1"), part(2, "1"), part(2, "2"));
    let out = dir.join("merged.npy");
    for (parts, needle) in [
        (vec![&p0, &p1], "shard 2/3 is missing"),
        (vec![&p0, &p1, &p1, &p2], "shard 1/3 is twice"),
        (vec![&p0, &p1, &q2], "not shards of the same run"),
    ] {
        let mut a = vec!["merge", "--out", s(&out)];
        a.extend(parts.iter().map(|p| s(p)));
        let (code, err) = flowgpu(&a);
        assert_eq!(code, 1, "{err}");
        assert!(err.contains(needle), "{needle}: {err}");
        assert!(!out.exists());
    }
    // A shard file changed after its shard ran; a shard's path reused by a run without
    // --shard (its stale manifest is removed).
    let mut bytes = std::fs::read(&p0).unwrap();
    *bytes.last_mut().unwrap() ^= 1;
    std::fs::write(&p0, bytes).unwrap();
    let (code, err) = flowgpu(&["merge", "--out", s(&out), s(&p0), s(&p1), s(&p2)]);
    assert!(
        code == 1 && err.contains("changed after the shard ran"),
        "{err}"
    );
    ok(&[
        "sample",
        "--model",
        m,
        "-n",
        "10",
        "--steps",
        "4",
        "--out",
        s(&p1),
    ]);
    let (code, err) = flowgpu(&["merge", "--out", s(&out), s(&p0), s(&p1), s(&p2)]);
    assert!(code == 1 && err.contains("no shard manifest"), "{err}");
    assert!(!out.exists());
    // A file that is not a shard.
    let full = dir.join("full.npy");
    ok(&[
        "sample",
        "--model",
        m,
        "-n",
        "30",
        "--steps",
        "4",
        "--out",
        s(&full),
    ]);
    let (code, err) = flowgpu(&["merge", "--out", s(&out), s(&full)]);
    assert!(code == 1 && err.contains("no shard manifest"), "{err}");
    let (code, err) = flowgpu(&["sample", "--model", m, "--out", s(&out), "--shard", "3/3"]);
    assert!(code == 2 && err.contains("0 ≤ I < N"), "{err}");
}

/// docs/scale.md's one-host recipe: `seq 0 3 | xargs -P 2 …`, then merge.
#[test]
fn the_xargs_recipe_runs_as_written() {
    let dir = tmp("xargs");
    tiny_model(&dir, 20); // the recipe names it by its folder, run
    let script = format!(
        "cd {d} && seq 0 3 | xargs -P 2 -I{{}} {BIN} sample --model run -n 1000 --shard {{}}/4 --out part-{{}}.npy && {BIN} merge --out samples.npy part-*.npy && {BIN} sample --model run -n 1000 --out whole.npy",
        d = s(&dir)
    );
    let out = Command::new("sh").arg("-c").arg(&script).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        std::fs::read(dir.join("samples.npy")).unwrap(),
        std::fs::read(dir.join("whole.npy")).unwrap()
    );
}

/// `--adapter all` splits the rows evenly over every adapter wgpu sees, in one process:
/// adapter k's rows are exactly what that adapter alone writes for shard k/K (lavapipe and
/// llvmpipe-GL here, whose kernels differ, so the rows are compared adapter by adapter).
#[test]
fn adapter_all_splits_the_rows_over_every_adapter() {
    let dir = tmp("all");
    let run = tiny_model(&dir, 20);
    let m = s(&run);
    let read = |p: &Path| {
        flowgpu::io::npy::read_npy_f32(&std::fs::read(p).unwrap())
            .unwrap()
            .0
    };
    let all = dir.join("all.npy");
    let out = Command::new(BIN)
        .args([
            "sample",
            "--model",
            m,
            "-n",
            "101",
            "--steps",
            "8",
            "--adapter",
            "all",
            "--json",
            "--out",
            s(&all),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let j: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    let rows = read(&all);
    let adapters = j["adapters"].as_array().cloned().unwrap_or_default();
    eprintln!("--adapter all: {adapters:?}");
    let k_all = adapters.len().max(1);
    let mut covered = 0;
    for (k, a) in adapters.iter().enumerate() {
        let (lo, hi) = (
            a["rows"][0].as_u64().unwrap() as usize,
            a["rows"][1].as_u64().unwrap() as usize,
        );
        assert_eq!(lo, covered);
        covered = hi;
        let part = dir.join(format!("part-{k}.npy"));
        let shard = format!("{k}/{k_all}");
        let backend = a["backend"].as_str().unwrap();
        ok(&[
            "sample",
            "--model",
            m,
            "-n",
            "101",
            "--steps",
            "8",
            "--backend",
            backend,
            "--shard",
            &shard,
            "--out",
            s(&part),
        ]);
        assert_eq!(read(&part), rows[2 * lo..2 * hi], "adapter {k} ({backend})");
    }
    if adapters.is_empty() {
        // One adapter: --adapter all is the plain command.
        let one = dir.join("one.npy");
        ok(&[
            "sample",
            "--model",
            m,
            "-n",
            "101",
            "--steps",
            "8",
            "--out",
            s(&one),
        ]);
        assert_eq!(read(&one), rows);
    } else {
        assert_eq!(covered, 101);
    }
    let (code, err) = flowgpu(&[
        "density",
        "--model",
        m,
        "--adapter",
        "all",
        "--plot",
        s(&dir.join("d.png")),
    ]);
    assert!(
        code == 1 && err.contains("name one adapter for this command"),
        "{err}"
    );
}

/// `--adapter-weights 3,1,…` (3 for the first adapter, 1 for each other) splits the rows
/// in proportion (75 and 26 of 101 over two adapters), and each adapter's rows are exactly
/// what that adapter alone writes for them (rows are keyed globally); bad weights, a count
/// that does not match the adapters, and weights with one adapter are refused with one line.
#[test]
fn adapter_weights_split_the_rows_in_proportion() {
    let dir = tmp("weights");
    let run = tiny_model(&dir, 20);
    let m = s(&run);
    let read = |p: &Path| {
        flowgpu::io::npy::read_npy_f32(&std::fs::read(p).unwrap())
            .unwrap()
            .0
    };
    let sample = ["sample", "--model", m, "-n", "101", "--steps", "8"];
    let out = dir.join("w.npy");
    let run_json = |extra: &[&str]| {
        let o = Command::new(BIN).args(sample).args(extra).output().unwrap();
        let err = String::from_utf8_lossy(&o.stderr).to_string();
        (
            o.status.code(),
            err,
            String::from_utf8_lossy(&o.stdout).to_string(),
        )
    };
    let two = common::two_adapters();
    for (weights, want) in [
        ("3,0", "whole number ≥ 1"),
        ("x", "whole number ≥ 1"),
        ("1,1,1,1,1,1,1,1,1", "9 weights for"),
    ] {
        let (code, err, _) = run_json(&[
            "--adapter",
            &two,
            "--adapter-weights",
            weights,
            "--out",
            s(&out),
        ]);
        assert!(code == Some(1) && err.contains(want), "{weights}: {err}");
    }
    let (code, err, _) = run_json(&["--adapter-weights", "3", "--out", s(&out)]);
    assert!(code == Some(1) && err.contains("several adapters"), "{err}");
    // Over every adapter (or two devices on the one there is).
    let (code, err, stdout) = run_json(&["--adapter", &two, "--json", "--out", s(&out)]);
    assert_eq!(code, Some(0), "{err}");
    let j: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    let k = j["adapters"].as_array().unwrap().len();
    assert!(k >= 2);
    let weights: Vec<String> = (0..k)
        .map(|i| if i == 0 { "3" } else { "1" }.into())
        .collect();
    let (code, err, stdout) = run_json(&[
        "--adapter",
        &two,
        "--adapter-weights",
        &weights.join(","),
        "--json",
        "--out",
        s(&out),
    ]);
    assert_eq!(code, Some(0), "{err}");
    let j: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    let rows = read(&out);
    let adapters = j["adapters"].as_array().unwrap();
    let ranges: Vec<(usize, usize)> = adapters
        .iter()
        .map(|a| {
            (
                a["rows"][0].as_u64().unwrap() as usize,
                a["rows"][1].as_u64().unwrap() as usize,
            )
        })
        .collect();
    let edge = |i: usize| 101 * (3 * i.min(1) + i.saturating_sub(1)) / (k + 2);
    let want: Vec<(usize, usize)> = (0..k).map(|i| (edge(i), edge(i + 1))).collect();
    assert_eq!(ranges, want);
    // Each adapter's rows against that adapter alone, where its backend names it alone.
    let backends: Vec<&str> = adapters
        .iter()
        .map(|a| a["backend"].as_str().unwrap())
        .collect();
    for (b, (lo, hi)) in backends.iter().zip(&ranges) {
        let alone = dir.join(format!("{b}.npy"));
        if backends.iter().filter(|x| *x == b).count() == 1 {
            ok(&[&sample[..], &["--backend", b, "--out", s(&alone)]].concat());
        } else if two != "all" {
            // Two devices on the one adapter: the default adapter is it.
            ok(&[&sample[..], &["--out", s(&alone)]].concat());
        } else {
            // Several adapters of one backend: no flag names this one alone.
            continue;
        }
        assert_eq!(read(&alone)[2 * lo..2 * hi], rows[2 * lo..2 * hi], "{b}");
    }
}
