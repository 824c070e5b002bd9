#!/usr/bin/env python3
"""Paired rounds of flowgpu and the PyTorch baseline on one workload.

A shared or virtual machine's speed can drift by +-25% within minutes, and PyTorch's W-small
runs in two modes, so one sequential run of each program compares phases, not programs. Each
round here runs flowgpu (fused kernels), flowgpu with FLOWGPU_FUSED_STEP=0 (per-layer
kernels) and the PyTorch baseline (benches/torch_cfm_bench.py, next to this script) back to
back, and the ratio is taken per round.

    cargo build --release
    python benches/paired.py [--workload W-small] [--rounds 6] [--min-time 3]
        [--flowgpu target/release/flowgpu] [--python python3]
        [--baseline benches/torch_cfm_bench.py]

--python is an interpreter with torch, numpy, torchcfm and POT installed.
"""

import argparse
import json
import os
import statistics
import subprocess


def rate(record):
    for key in ("steps_per_s", "nfe_per_s"):
        if record.get(key) is not None:
            return record[key]
    raise SystemExit(f"no rate in {record}")


def last_json(out, workload):
    for line in reversed(out.splitlines()):
        if line.startswith("{"):
            record = json.loads(line)
            if record.get("workload") == workload:
                return record
    raise SystemExit(f"no JSON line for {workload} in:\n{out}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workload", default="W-small")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--min-time", default="3")
    ap.add_argument("--flowgpu", default="target/release/flowgpu")
    ap.add_argument("--python", default="python3")
    ap.add_argument(
        "--baseline",
        default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "torch_cfm_bench.py"),
    )
    a = ap.parse_args()

    def flowgpu(extra):
        env = dict(os.environ, **extra)
        cmd = [a.flowgpu, "bench", "--only", a.workload, "--min-time", a.min_time, "--json"]
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
        return rate(last_json(out, a.workload))

    def torch():
        cmd = [a.python, a.baseline, "--device", "cpu", "--threads", "2",
               "--only", a.workload, "--min-time", a.min_time]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        return rate(last_json(out, a.workload))

    runs = {"fused": [], "layers": [], "torch": []}
    for i in range(a.rounds):
        runs["fused"].append(flowgpu({}))
        runs["layers"].append(flowgpu({"FLOWGPU_FUSED_STEP": "0"}))
        runs["torch"].append(torch())
        print(i, {k: round(v[-1], 3) for k, v in runs.items()}, flush=True)
    for k, v in runs.items():
        print(f"{k}: median {statistics.median(v):.3f}, range {min(v):.3f}-{max(v):.3f}")
    ratios = [f / t for f, t in zip(runs["fused"], runs["torch"])]
    print("flowgpu / PyTorch per round:", [round(r, 2) for r in ratios],
          f"median {statistics.median(ratios):.2f}")


if __name__ == "__main__":
    main()
