#!/usr/bin/env python3
"""PyTorch reference benchmark for conditional flow matching (CFM) and continuous normalizing flows.

The workloads mirror the ones the flowgpu (Rust/wgpu) benchmarks measure, so both can be run side by
side on the same machine. Every workload prints one JSON object per line on stdout (G-sgemm prints one
per matrix shape); progress messages go to stderr, so stdout is clean JSONL. See docs/performance.md
(section "Workloads") for the workload contract.

    python benches/torch_cfm_bench.py --list
    python benches/torch_cfm_bench.py --quick                        # smoke run, about a minute on 2 CPU cores
    python benches/torch_cfm_bench.py --device cpu --threads 2 --out cpu.jsonl
    python benches/torch_cfm_bench.py --device cuda --out cuda.jsonl

Dependencies: torch, numpy, torchcfm and POT (only the OT-* workloads import them). Nothing is
downloaded at run time.
"""

import argparse
import datetime
import json
import math
import os
import platform
import statistics
import sys
import time
import warnings

# numpy and torch are imported in import_numeric(), after --threads has been applied to the environment:
# OpenMP, MKL and OpenBLAS read their thread counts when the libraries are loaded.
np = None
torch = None

# ----------------------------------------------------------------------------------------------------
# Workload contract (the names are shared with the flowgpu benchmarks; do not rename them)
# ----------------------------------------------------------------------------------------------------

WORKLOADS = {
    "W-small": "CFM train step, MLP [x,t] 3->64->64->64->2 (SELU), batch 256, Adam 1e-3, x1 = moons",
    "W-fm": "CFM train step, MLP [x,t] 3->512x4->2 (SiLU), batch 4096, Adam 1e-3, x1 = checkerboard",
    "S-euler": "sample n=65536 points through the W-fm network, fixed-step Euler",
    "S-rk4": "sample n=65536 points through the W-fm network, fixed-step RK4",
    "L-exact": "log-likelihood of 8192 points, W-fm network, RK4, exact divergence (one VJP per dim)",
    "L-hutch": "log-likelihood of 8192 points, W-fm network, RK4, Hutchinson (1 Rademacher probe per solve)",
    "OT-exact-256": "torchcfm OTPlanSampler('exact').sample_plan, batch 256 (POT emd, CPU)",
    "OT-exact-1024": "torchcfm OTPlanSampler('exact').sample_plan, batch 1024 (POT emd, CPU)",
    "OT-sinkhorn-1024": "torchcfm OTPlanSampler('sinkhorn', reg=0.05).sample_plan, batch 1024 (POT, CPU)",
    "G-sgemm": "torch.matmul fp32 GFLOP/s for (M,K,N) = (4096,512,512), (65536,512,512), (256,64,64)",
}

# The two networks. hidden_layers counts the activated hidden layers, so a network has
# hidden_layers + 1 Linear layers: (dim+1) -> width, (hidden_layers-1) x width -> width, width -> dim.
NETS = {
    # torchcfm's 2D tutorial: torchcfm.models.MLP(dim=2, w=64, time_varying=True).
    "W-small": dict(width=64, hidden_layers=3, activation="SELU", batch=256, data="moons"),
    # flow_matching's 2D example (examples/2d_flow_matching): MLP(hidden_dim=512), Swish == SiLU.
    "W-fm": dict(width=512, hidden_layers=4, activation="SiLU", batch=4096, data="checkerboard"),
}

GEMM_SHAPES = [(4096, 512, 512), (65536, 512, 512), (256, 64, 64)]

OT_CASES = {
    "OT-exact-256": ("exact", 256),
    "OT-exact-1024": ("exact", 1024),
    "OT-sinkhorn-1024": ("sinkhorn", 1024),
}
SINKHORN_REG = 0.05

DIM = 2  # the toy problems are 2-D
POOL_SIZE = 1 << 20  # points pre-generated per data set (8 MiB of float32)
GROUP_TARGET_S = 0.02  # "auto" timing groups hold enough calls for about this long


# ----------------------------------------------------------------------------------------------------
# 2-D toy data: the FFJORD definitions (Grathwohl et al. 2019, lib/toy_data.py), vectorised in numpy
# ----------------------------------------------------------------------------------------------------


def toy_moons(n, rng):
    """sklearn make_moons(noise=0.1) (evenly spaced angles, shuffled), then x*2 + (-1, -0.2)."""
    n_out = n // 2
    n_in = n - n_out
    s_out = np.linspace(0.0, math.pi, n_out)
    s_in = np.linspace(0.0, math.pi, n_in)
    outer = np.stack([np.cos(s_out), np.sin(s_out)], axis=1)
    inner = np.stack([1.0 - np.cos(s_in), 1.0 - np.sin(s_in) - 0.5], axis=1)
    x = np.concatenate([outer, inner], axis=0)
    x += 0.1 * rng.standard_normal(x.shape)
    x = x * 2.0 + np.array([-1.0, -0.2])
    rng.shuffle(x)
    return x.astype(np.float32)


def toy_checkerboard(n, rng):
    """x1 = 4U - 2; x2 = U - 2B + (floor(x1) mod 2), B uniform in {0, 1}; then x2."""
    x1 = rng.random(n) * 4.0 - 2.0
    x2 = rng.random(n) - rng.integers(0, 2, n) * 2.0 + np.floor(x1) % 2.0
    return (np.stack([x1, x2], axis=1) * 2.0).astype(np.float32)


def toy_8gaussians(n, rng):
    """Centres 4*{(+-1,0), (0,+-1), (+-1/sqrt2, +-1/sqrt2)}; centre + 0.5*N; then /1.414."""
    r = 1.0 / math.sqrt(2.0)
    centres = 4.0 * np.array(
        [(1, 0), (-1, 0), (0, 1), (0, -1), (r, r), (r, -r), (-r, r), (-r, -r)], dtype=np.float64
    )
    x = 0.5 * rng.standard_normal((n, 2)) + centres[rng.integers(0, 8, n)]
    return (x / 1.414).astype(np.float32)


TOYS = {"moons": toy_moons, "checkerboard": toy_checkerboard, "8gaussians": toy_8gaussians}


class Pool:
    """A pool of toy points generated once with numpy and kept on the device.

    Batches are contiguous slices taken in turn (wrapping around), so drawing a batch costs no
    host-device copy and no synchronisation, and data generation stays out of the timed code.
    """

    def __init__(self, data, device, n=POOL_SIZE, seed=1):
        rng = np.random.default_rng(seed)
        self.x = torch.from_numpy(TOYS[data](n, rng)).to(device)
        self.pos = 0

    def next(self, batch):
        if self.pos + batch > self.x.shape[0]:
            self.pos = 0
        out = self.x[self.pos : self.pos + batch]
        self.pos += batch
        return out


# ----------------------------------------------------------------------------------------------------
# Network and analytic FLOP counts
# ----------------------------------------------------------------------------------------------------


def make_mlp(width, hidden_layers, activation):
    """MLP on the concatenated input [x (DIM), t (1)] -> velocity (DIM)."""
    act = getattr(torch.nn, activation)
    layers = [torch.nn.Linear(DIM + 1, width), act()]
    for _ in range(hidden_layers - 1):
        layers += [torch.nn.Linear(width, width), act()]
    layers.append(torch.nn.Linear(width, DIM))
    return torch.nn.Sequential(*layers)


def forward_flops(width, hidden_layers):
    """Matmul FLOPs of one forward pass for one sample: 2*in*out per Linear (bias and activation ignored)."""
    return 2 * ((DIM + 1) * width + (hidden_layers - 1) * width * width + width * DIM)


def velocity(net, x, t):
    """v(x, t): the network applied to [x, t], with the scalar time t broadcast to a column."""
    return net(torch.cat([x, x.new_full((x.shape[0], 1), t)], dim=1))


def frozen_fm_net(device):
    """The W-fm network, randomly initialised (seed 0), parameters frozen. Used by S-* and L-*.

    Weights do not change the cost of a fixed-step solve, so no training is needed.
    """
    cfg = NETS["W-fm"]
    torch.manual_seed(0)
    net = make_mlp(cfg["width"], cfg["hidden_layers"], cfg["activation"]).to(device).eval()
    for p in net.parameters():
        p.requires_grad_(False)
    return net, cfg


# ----------------------------------------------------------------------------------------------------
# Timing
# ----------------------------------------------------------------------------------------------------


class Ctx:
    """Run-wide settings shared by all workloads."""

    def __init__(self, args, device):
        self.args = args
        self.device = device
        self.cuda = device.type == "cuda"
        self.min_time = args.min_time

    def sync(self):
        """Wait for all queued device work; must precede every clock read on CUDA."""
        if self.cuda:
            torch.cuda.synchronize(self.device)


def measure(ctx, fn, warmup, group=1, min_samples=3):
    """Time repeated calls of fn() for at least ctx.min_time seconds and min_samples timing groups.

    Calls run in groups of `group` calls ("auto": as many as take about GROUP_TARGET_S), and the
    device is synchronised before every clock read, so on CUDA a group's time includes all its
    kernels. The warm-up calls run first, untimed; they absorb lazy initialisation (CUDA context,
    cuBLAS handles, the caching allocator, autograd engine threads, optimizer state).

    Returns per-call figures: ms_median and ms_min over the groups (group time / group size),
    calls_per_s = timed calls / timed seconds.
    """
    for _ in range(warmup):
        fn()
    ctx.sync()
    if group == "auto":
        t0 = time.perf_counter()
        fn()
        ctx.sync()
        one = max(time.perf_counter() - t0, 1e-7)
        group = max(1, min(10_000, int(GROUP_TARGET_S / one)))
    per_call = []
    total = 0.0
    while total < ctx.min_time or len(per_call) < min_samples:
        t0 = time.perf_counter()
        for _ in range(group):
            fn()
        ctx.sync()
        dt = time.perf_counter() - t0
        per_call.append(dt / group)
        total += dt
    calls = group * len(per_call)
    return {
        "timed_calls": calls,
        "timed_s": round(total, 4),
        "calls_per_timing_group": group,
        "calls_per_s": calls / total,
        "ms_mean": 1e3 * total / calls,
        "ms_median": 1e3 * statistics.median(per_call),
        "ms_min": 1e3 * min(per_call),
    }


def timing_fields(r, suffix=""):
    """The timing figures of a measure() result, with an optional name suffix."""
    keys = ["ms_median", "ms_min", "ms_mean", "timed_calls", "calls_per_timing_group", "timed_s"]
    return {k + suffix: r[k] for k in keys}


# ----------------------------------------------------------------------------------------------------
# W-small, W-fm: one CFM training step
# ----------------------------------------------------------------------------------------------------


def bench_train(ctx, name):
    cfg = NETS[name]
    dev = ctx.device
    batch = cfg["batch"]
    torch.manual_seed(0)
    net = make_mlp(cfg["width"], cfg["hidden_layers"], cfg["activation"]).to(dev)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    pool = Pool(cfg["data"], dev)

    def path(x0, x1, t):
        """Straight (OT) path with sigma = 0: x_t = t*x1 + (1-t)*x0, target u_t = x1 - x0."""
        return t * x1 + (1.0 - t) * x0, x1 - x0

    def step():
        x1 = pool.next(batch)
        x0 = torch.randn_like(x1)  # source: N(0, I)
        t = torch.rand(batch, 1, device=dev)
        xt, ut = path(x0, x1, t)
        loss = torch.mean((net(torch.cat([xt, t], dim=1)) - ut) ** 2)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss

    # Untimed check that the path matches torchcfm's ConditionalFlowMatcher(sigma=0) (the tutorial's).
    torchcfm_diff = None
    try:
        from torchcfm.conditional_flow_matching import ConditionalFlowMatcher

        x1 = pool.next(batch)
        x0 = torch.randn_like(x1)
        t = torch.rand(batch, 1, device=dev)
        _, xt_ref, ut_ref = ConditionalFlowMatcher(sigma=0.0).sample_location_and_conditional_flow(
            x0, x1, t=t[:, 0]
        )
        xt, ut = path(x0, x1, t)
        torchcfm_diff = max((xt - xt_ref).abs().max().item(), (ut - ut_ref).abs().max().item())
    except ImportError:
        pass

    loss_first = step().item()
    # (a) the loss is read back to the host after every step (a logging loop; a sync per step on CUDA)
    every = measure(ctx, lambda: step().item(), warmup=10, group=1)
    # (b) the loss is read back only at the end (steps stay queued; the timer syncs once per group)
    end = measure(ctx, step, warmup=3, group="auto")
    loss_last = step().item()

    flops_step = 3 * forward_flops(cfg["width"], cfg["hidden_layers"]) * batch
    rec = dict(cfg)
    rec.update(
        {
            "optimizer": "Adam(lr=1e-3)",
            "path": "OT, sigma=0",
            "params": sum(p.numel() for p in net.parameters()),
            "unit": "train step",
            "steps_per_s": end["calls_per_s"],
            "steps_per_s_readback_every_step": every["calls_per_s"],
            "gflops": flops_step * end["calls_per_s"] / 1e9,
            "gflops_readback_every_step": flops_step * every["calls_per_s"] / 1e9,
            "flops_per_call": flops_step,
        }
    )
    rec.update(timing_fields(end))
    rec.update(timing_fields(every, "_readback_every_step"))
    rec.update({"loss_first": loss_first, "loss_last": loss_last, "torchcfm_path_max_abs_diff": torchcfm_diff})
    return [rec]


# ----------------------------------------------------------------------------------------------------
# S-euler, S-rk4: sampling by fixed-step integration from t=0 (noise) to t=1 (data)
# ----------------------------------------------------------------------------------------------------


def rk4_step(f, x, t, h):
    """Classic 4-stage Runge-Kutta step for dx/dt = f(x, t)."""
    k1 = f(x, t)
    k2 = f(x + (0.5 * h) * k1, t + 0.5 * h)
    k3 = f(x + (0.5 * h) * k2, t + 0.5 * h)
    k4 = f(x + h * k3, t + h)
    return x + (h / 6.0) * (k1 + 2.0 * k2 + 2.0 * k3 + k4)


def bench_sample(ctx, solver):
    net, cfg = frozen_fm_net(ctx.device)
    n, steps = ctx.args.n, ctx.args.steps
    nfe_per_step = {"euler": 1, "rk4": 4}[solver]
    torch.manual_seed(1)
    x_init = torch.randn(n, DIM, device=ctx.device)

    def f(x, t):
        return velocity(net, x, t)

    def solve(nsteps):
        h = 1.0 / nsteps
        x = x_init
        with torch.inference_mode():
            for k in range(nsteps):
                t = k * h
                if solver == "euler":
                    x = x + h * f(x, t)
                else:
                    x = rk4_step(f, x, t, h)
        return x

    # Warm-up: a full solve on CUDA (cheap there), a 2-step solve on CPU (same kernels and shapes).
    solve(steps if ctx.cuda else min(2, steps))
    out = {}
    r = measure(ctx, lambda: out.__setitem__("x", solve(steps)), warmup=0, group=1, min_samples=2)
    solves_per_s = r["calls_per_s"]
    nfe_per_s = nfe_per_step * steps * solves_per_s
    flops_call = forward_flops(cfg["width"], cfg["hidden_layers"]) * n * nfe_per_step * steps
    rec = {k: cfg[k] for k in ("width", "hidden_layers", "activation")}
    rec.update(
        {
            "weights": "random init (seed 0)",
            "n": n,
            "solver": solver,
            "steps": steps,
            "nfe_per_solve": nfe_per_step * steps,
            "unit": f"solve ({steps} {solver} steps, {n} points)",
            "nfe_per_s": nfe_per_s,
            "sample_steps_per_s": steps * solves_per_s,
            "point_steps_per_s": n * steps * solves_per_s,
            "gflops": flops_call * solves_per_s / 1e9,
            "flops_per_call": flops_call,
        }
    )
    rec.update(timing_fields(r))
    rec["output_finite"] = bool(torch.isfinite(out["x"]).all().item())
    return [rec]


# ----------------------------------------------------------------------------------------------------
# L-exact, L-hutch: log-likelihood by integrating [x, a] from t=1 (data) back to t=0 (noise)
# ----------------------------------------------------------------------------------------------------


def velocity_and_divergence(net, x, t, probe):
    """v(x, t) and its divergence tr(dv/dx), computed with reverse-mode autograd.

    probe is None: exact divergence, one VJP per dimension (e_i^T J, keep the i-th entry).
    probe is a tensor: Hutchinson estimate eps^T J eps with that probe, one VJP.
    Network parameters are frozen, so each VJP costs about one forward pass in matmul FLOPs.
    """
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        v = velocity(net, x, t)
        if probe is None:
            div = torch.zeros(x.shape[0], device=x.device)
            for i in range(DIM):
                e_i = torch.zeros_like(v)
                e_i[:, i] = 1.0
                (g,) = torch.autograd.grad(v, x, grad_outputs=e_i, retain_graph=i < DIM - 1)
                div = div + g[:, i]
        else:
            (g,) = torch.autograd.grad(v, x, grad_outputs=probe)
            div = (g * probe).sum(dim=1)
    return v.detach(), div.detach()


def bench_loglik(ctx, mode):
    net, cfg = frozen_fm_net(ctx.device)
    dev = ctx.device
    n, steps = ctx.args.n_loglik, ctx.args.steps
    x_data = Pool("8gaussians", dev, n=max(n, 1024), seed=2).next(n)
    torch.manual_seed(2)

    def solve(nsteps):
        """RK4 on d[x, a]/dt = [v, div v] from t=1 to t=0; log p1(x1) = log N(x(0); 0, I) + a(0)."""
        # Hutchinson: one Rademacher probe per point, drawn once and held fixed over the solve.
        probe = None if mode == "exact" else torch.randint(0, 2, (n, DIM), device=dev).float() * 2 - 1
        h = -1.0 / nsteps
        x = x_data
        a = torch.zeros(n, device=dev)
        for k in range(nsteps):
            t = 1.0 + k * h
            v1, d1 = velocity_and_divergence(net, x, t, probe)
            v2, d2 = velocity_and_divergence(net, x + (0.5 * h) * v1, t + 0.5 * h, probe)
            v3, d3 = velocity_and_divergence(net, x + (0.5 * h) * v2, t + 0.5 * h, probe)
            v4, d4 = velocity_and_divergence(net, x + h * v3, t + h, probe)
            x = x + (h / 6.0) * (v1 + 2.0 * v2 + 2.0 * v3 + v4)
            a = a + (h / 6.0) * (d1 + 2.0 * d2 + 2.0 * d3 + d4)
        return -0.5 * (x**2).sum(dim=1) - 0.5 * DIM * math.log(2.0 * math.pi) + a

    # Untimed check of the divergence against the trace of the full Jacobian (torch.func) on 64 points.
    xs = x_data[:64]
    div_exact = velocity_and_divergence(net, xs, 0.5, None)[1]
    jac = torch.func.vmap(torch.func.jacrev(lambda z: velocity(net, z[None], 0.5)[0]))(xs)
    div_check = (div_exact - jac.diagonal(dim1=1, dim2=2).sum(dim=1)).abs().max().item()

    solve(steps if ctx.cuda else min(2, steps))  # warm-up (see bench_sample)
    out = {}
    r = measure(ctx, lambda: out.__setitem__("logp", solve(steps)), warmup=0, group=1, min_samples=2)
    solves_per_s = r["calls_per_s"]
    nfe_per_solve = 4 * steps
    passes = 1 + (DIM if mode == "exact" else 1)  # forward + VJPs, each ~ one forward in FLOPs
    flops_call = passes * forward_flops(cfg["width"], cfg["hidden_layers"]) * n * nfe_per_solve
    rec = {k: cfg[k] for k in ("width", "hidden_layers", "activation")}
    rec.update(
        {
            "weights": "random init (seed 0)",
            "data": "8gaussians",
            "n": n,
            "solver": "rk4",
            "steps": steps,
            "divergence": "exact (autograd, 1 VJP per dim)" if mode == "exact" else "hutchinson (1 Rademacher probe)",
            "vjps_per_nfe": DIM if mode == "exact" else 1,
            "nfe_per_solve": nfe_per_solve,
            "unit": f"solve ({steps} rk4 steps, {n} points)",
            "nfe_per_s": nfe_per_solve * solves_per_s,
            "sample_steps_per_s": steps * solves_per_s,
            "point_steps_per_s": n * steps * solves_per_s,
            "gflops": flops_call * solves_per_s / 1e9,
            "flops_per_call": flops_call,
        }
    )
    rec.update(timing_fields(r))
    rec["mean_logp"] = out["logp"].mean().item()
    rec["divergence_vs_jacobian_trace_max_abs_err"] = div_check
    return [rec]


# ----------------------------------------------------------------------------------------------------
# OT-*: minibatch optimal-transport coupling as torchcfm computes it (POT on the CPU)
# ----------------------------------------------------------------------------------------------------


def bench_ot(ctx, name):
    import ot
    from torchcfm.optimal_transport import OTPlanSampler

    method, batch = OT_CASES[name]
    dev = ctx.device
    sampler = OTPlanSampler(method=method, reg=SINKHORN_REG)
    pool = Pool("moons", dev)
    np.random.seed(0)  # sample_map draws the pairs with numpy's global generator
    torch.manual_seed(3)
    f64 = torch.float64

    def batch_pair():
        # float64 points, so the cost matrix torchcfm hands to POT is float64 (see sinkhorn notes below).
        return torch.randn(batch, DIM, device=dev, dtype=f64), pool.next(batch).to(f64)

    def call():
        x0, x1 = batch_pair()
        return sampler.sample_plan(x0, x1)

    for _ in range(2):  # warm-up, outside the warning count
        call()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        r = measure(ctx, call, warmup=0, group=1)
    rec = {
        "method": method,
        "batch": batch,
        "reg": SINKHORN_REG if method == "sinkhorn" else None,
        "source": "N(0,I)",
        "data": "moons",
        "input_dtype": "float64",
        "solver": "ot.emd (numThreads=1)" if method == "exact" else "ot.sinkhorn (sinkhorn_knopp, numItermax=1000, stopThr=1e-9)",
        "unit": "sample_plan call (cdist, plan, np.random.choice of pairs, gather)",
        "plans_per_s": r["calls_per_s"],
        "gflops": None,
    }
    rec.update(timing_fields(r))
    # Warnings raised during the timed calls, by message (POT warns when Sinkhorn hits numItermax).
    counts = {}
    for w in caught:
        msg = str(w.message).split(".")[0][:80]
        counts[msg] = counts.get(msg, 0) + 1
    rec["warnings_during_timing"] = counts

    if method == "sinkhorn":
        # Untimed diagnostics. (1) Iterations POT runs on one batch. (2) With float32 inputs the cost
        # matrix is float32 and POT forms K = exp(-M/reg) in float32, which underflows to 0 for
        # M > ~5.2 at reg 0.05; a point whose whole row or column of K is 0 makes POT stop at
        # iteration 0 with "numerical errors" and return an invalid plan. Report how often that
        # happens on this data, which is why the timed calls use float64.
        x0, x1 = batch_pair()
        m64 = (torch.cdist(x0, x1) ** 2).cpu().numpy()
        u = ot.unif(batch)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            plan, log = ot.sinkhorn(u, u, m64, reg=SINKHORN_REG, log=True)
        rec["sinkhorn_iterations"] = int(log["niter"]) + 1
        rec["sinkhorn_final_err"] = float(log["err"][-1]) if log.get("err") else None
        rec["plan_mass"] = float(plan.sum())
        n_diag, bad = 20, 0
        for _ in range(n_diag):
            x0, x1 = batch_pair()
            m32 = (torch.cdist(x0.float(), x1.float()) ** 2).cpu().numpy()
            k32 = np.exp(m32 / np.float32(-SINKHORN_REG))
            bad += bool((k32.sum(axis=0) == 0).any() or (k32.sum(axis=1) == 0).any())
        rec["float32_kernel_underflow_fraction"] = bad / n_diag
    return [rec]


# ----------------------------------------------------------------------------------------------------
# G-sgemm: plain fp32 matmul throughput at the shapes the workloads use
# ----------------------------------------------------------------------------------------------------


def bench_sgemm(ctx):
    recs = []
    g = torch.Generator(device=ctx.device).manual_seed(4)
    for m, k, n in GEMM_SHAPES:
        a = torch.randn(m, k, device=ctx.device, generator=g)
        b = torch.randn(k, n, device=ctx.device, generator=g)
        c = torch.empty(m, n, device=ctx.device)
        r = measure(ctx, lambda: torch.matmul(a, b, out=c), warmup=3, group="auto")
        flops = 2 * m * k * n
        rec = {"M": m, "K": k, "N": n, "layout": "A[M,K] @ B[K,N], row-major", "unit": "matmul"}
        rec["gflops"] = flops * r["calls_per_s"] / 1e9
        rec["gflops_best"] = flops / (r["ms_min"] / 1e3) / 1e9
        rec["flops_per_call"] = flops
        rec.update(timing_fields(r))
        recs.append(rec)
        del a, b, c
    return recs


# ----------------------------------------------------------------------------------------------------
# Driver
# ----------------------------------------------------------------------------------------------------


def run_workload(ctx, name):
    if name in NETS:
        return bench_train(ctx, name)
    if name == "S-euler":
        return bench_sample(ctx, "euler")
    if name == "S-rk4":
        return bench_sample(ctx, "rk4")
    if name == "L-exact":
        return bench_loglik(ctx, "exact")
    if name == "L-hutch":
        return bench_loglik(ctx, "hutch")
    if name in OT_CASES:
        return bench_ot(ctx, name)
    if name == "G-sgemm":
        return bench_sgemm(ctx)
    raise KeyError(name)


def cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def common_fields(ctx):
    """Fields repeated in every record, so each line stands on its own."""
    rec = {"device": ctx.device.type}
    if ctx.cuda:
        props = torch.cuda.get_device_properties(ctx.device)
        rec["device_name"] = props.name
        rec["cuda"] = torch.version.cuda
        rec["gpu_sms"] = props.multi_processor_count
    else:
        rec["device_name"] = f"{cpu_name()} ({os.cpu_count()} logical CPUs)"
        rec["cpu_capability"] = torch.backends.cpu.get_cpu_capability()
    rec.update(
        {
            "torch": torch.__version__,
            "numpy": np.__version__,
            "python": platform.python_version(),
            "threads": torch.get_num_threads(),
            "dtype": "float32",
            "matmul_precision": torch.get_float32_matmul_precision(),
            "quick": ctx.args.quick,
            "min_time_s": ctx.min_time,
        }
    )
    return rec


def import_numeric(threads):
    """Import numpy and torch after exporting the thread count (see the note at the top)."""
    global np, torch
    if threads:
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            os.environ[var] = str(threads)
    import numpy as np  # noqa: F811
    import torch  # noqa: F811

    if threads:
        torch.set_num_threads(threads)


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", choices=["cpu", "cuda"], help="default: cuda if available, else cpu")
    ap.add_argument("--threads", type=int, help="CPU threads for torch/OpenMP/MKL/OpenBLAS (default: torch's)")
    ap.add_argument("--min-time", type=float, help="seconds of timed calls per measurement (default 5; 0.5 with --quick)")
    ap.add_argument("--only", default="", help="comma-separated workload names (default: all)")
    ap.add_argument("--out", help="also append the JSON lines to this file")
    ap.add_argument("--quick", action="store_true", help="smoke run: short timings, small ODE sizes, 2 solver steps")
    ap.add_argument("--list", action="store_true", help="list the workloads and exit")
    ap.add_argument("--n", type=int, help="points for S-euler/S-rk4 (default 65536; 8192 with --quick)")
    ap.add_argument("--n-loglik", type=int, help="points for L-exact/L-hutch (default 8192; 1024 with --quick)")
    ap.add_argument("--steps", type=int, help="fixed solver steps per timed solve (default 100 on cuda, 10 on cpu, 2 with --quick)")
    ap.add_argument(
        "--matmul-precision",
        default="highest",
        choices=["highest", "high", "medium"],
        help="torch.set_float32_matmul_precision; 'highest' (default) is plain fp32, 'high' allows TF32 on GPUs",
    )
    args = ap.parse_args(argv)
    only = [w.strip() for w in args.only.split(",") if w.strip()]
    unknown = [w for w in only if w not in WORKLOADS]
    if unknown:
        ap.error(f"unknown workload(s) {unknown}; known: {', '.join(WORKLOADS)}")
    args.selected = [w for w in WORKLOADS if not only or w in only]
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.list:
        for name, desc in WORKLOADS.items():
            print(f"{name:18s} {desc}")
        return 0

    import_numeric(args.threads)
    if args.device is None:
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.device == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda but torch.cuda.is_available() is False", file=sys.stderr)
        return 2
    device = torch.device(args.device, 0) if args.device == "cuda" else torch.device("cpu")
    torch.set_float32_matmul_precision(args.matmul_precision)

    # Defaults that depend on the device and --quick.
    if args.min_time is None:
        args.min_time = 0.5 if args.quick else 5.0
    if args.n is None:
        args.n = 8192 if args.quick else 65536
    if args.n_loglik is None:
        args.n_loglik = 1024 if args.quick else 8192
    if args.steps is None:
        args.steps = 2 if args.quick else (100 if args.device == "cuda" else 10)

    ctx = Ctx(args, device)
    if ctx.cuda:
        # Create the context and the cuBLAS handle before any workload runs.
        torch.cuda.init()
        torch.ones(8, 8, device=device).matmul(torch.ones(8, 8, device=device))
        ctx.sync()
    base = common_fields(ctx)

    failed = 0
    for name in args.selected:
        print(f"[torch_cfm_bench] {name} ...", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        if ctx.cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
        try:
            recs = run_workload(ctx, name)
        except Exception as e:  # keep going: one failing workload should not hide the others
            failed += 1
            recs = [{"error": f"{type(e).__name__}: {e}"}]
        for rec in recs:
            line = {"workload": name, **base, **rec}
            if ctx.cuda:
                line["peak_mem_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
            line["date"] = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
            text = json.dumps(line)
            print(text, flush=True)
            if args.out:
                with open(args.out, "a") as f:
                    f.write(text + "\n")
        print(f"[torch_cfm_bench] {name} done in {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
