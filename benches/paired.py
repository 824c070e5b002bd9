#!/usr/bin/env python3
"""Paired rounds of flowgpu and the PyTorch baseline on one workload.

A shared or virtual machine's speed can drift by +-25% within minutes, and PyTorch's W-small
runs in two modes, so one sequential run of each program compares phases, not programs. Each
round here runs flowgpu (fused kernels), flowgpu with FLOWGPU_FUSED_STEP=0 (per-layer
kernels) and the PyTorch baseline (benches/torch_baseline.py, next to this script) back to
back, and the ratio is taken per round.

    cargo build --release
    python benches/paired.py [--workload W-small] [--rounds 6] [--min-time 3]
        [--flowgpu target/release/flowgpu] [--python python3]
        [--baseline benches/torch_baseline.py] [--device cpu] [--threads 2] [--shape M,K,N]

--python is an interpreter with torch installed (the baseline needs nothing else). Both
programs run with --json and print one JSON line per record with the same field names; the
rate compared is steps_per_s (W-*, M-*), nfe_per_s (S-*, L-*), plans_per_s (OT-*) or, for
G-sgemm, gflops of the record whose shape is --shape (default: the last one, 256x64x64).
"""

import argparse
import json
import os
import statistics
import subprocess

RATE_KEYS = ("steps_per_s", "nfe_per_s", "plans_per_s", "gflops")


def rate(record):
    """The record's rate (higher is faster) and its field name."""
    for key in RATE_KEYS:
        if record.get(key) is not None:
            return record[key], key
    raise SystemExit(f"no rate ({', '.join(RATE_KEYS)}) in {record}")


def last_json(out, workload, shape=None):
    """The last JSON line of `out` for `workload` (and `shape`, for G-sgemm)."""
    for line in reversed(out.splitlines()):
        if not line.startswith("{"):
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if record.get("workload") == workload and (
                shape is None or record.get("shape") == shape):
            return record
    raise SystemExit(f"no JSON line for {workload}"
                     f"{'' if shape is None else f' {shape}'} in:\n{out}")


def run(cmd, env=None):
    p = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if p.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} exited {p.returncode}:\n{p.stderr[-4000:]}")
    return p.stdout


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workload", default="W-small")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--min-time", default="3")
    ap.add_argument("--flowgpu", default="target/release/flowgpu")
    ap.add_argument("--python", default="python3")
    ap.add_argument(
        "--baseline",
        default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "torch_baseline.py"),
    )
    ap.add_argument("--device", default="cpu", help="the baseline's --device (cpu or cuda)")
    ap.add_argument("--threads", default="2", help="the baseline's --threads")
    ap.add_argument("--shape", help="G-sgemm: compare the record of this M,K,N")
    a = ap.parse_args()
    shape = [int(v) for v in a.shape.split(",")] if a.shape else None

    def flowgpu(extra):
        env = dict(os.environ, **extra)
        cmd = [a.flowgpu, "bench", "--only", a.workload, "--min-time", a.min_time, "--json"]
        return rate(last_json(run(cmd, env), a.workload, shape))

    def torch():
        cmd = [a.python, a.baseline, "--device", a.device, "--threads", a.threads,
               "--only", a.workload, "--min-time", a.min_time, "--json"]
        return rate(last_json(run(cmd), a.workload, shape))

    runs = {"fused": [], "layers": [], "torch": []}
    for i in range(a.rounds):
        fused, key = flowgpu({})
        layers, _ = flowgpu({"FLOWGPU_FUSED_STEP": "0"})
        baseline, _ = torch()
        runs["fused"].append(fused)
        runs["layers"].append(layers)
        runs["torch"].append(baseline)
        if i == 0:
            print(f"{a.workload}: comparing {key}", flush=True)
        print(i, {k: round(v[-1], 3) for k, v in runs.items()}, flush=True)
    for k, v in runs.items():
        print(f"{k}: median {statistics.median(v):.3f}, range {min(v):.3f}-{max(v):.3f}")
    ratios = [f / t for f, t in zip(runs["fused"], runs["torch"])]
    print("flowgpu / PyTorch per round:", [round(r, 2) for r in ratios],
          f"median {statistics.median(ratios):.2f}")


if __name__ == "__main__":
    main()
