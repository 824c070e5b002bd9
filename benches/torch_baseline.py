#!/usr/bin/env python3
"""PyTorch reference for flowgpu's standard benchmark workloads (`flowgpu bench`).

Every workload of src/bench.rs, in eager PyTorch, with the same name, network, sizes, solver and
optimizer, reported under the same JSON field names, so that one run of each program on the
same machine gives a ratio. benches/paired.py runs this script with --json back to back with
`flowgpu bench --json` in paired rounds and divides the rates round by round.

    python3 benches/torch_baseline.py [--device cpu|cuda] [--threads N] [--only W-small,...]
        [--min-time SECONDS] [--quick] [--json] [--list]

fp32 throughout; the networks are nn.Linear MLPs from [x (2), t] to a 2-D velocity.
  G-sgemm          y = x·Wᵀ + b at (M, K, N) = (4096, 512, 512), (65536, 512, 512), (256, 64, 64).
  W-small, W-fm    one CFM training step on the OT path (σ_min = 0), x0 ~ N(0, I), t ~ U(0, 1),
                   MSE over batch and dims, AdamW (lr 1e-3, no decay, no clipping): 3×64 SELU,
                   batch 256 of moons / 4×512 SiLU, batch 4096 of checkerboard.
  S-euler, S-rk4   one sampling solve 0 → 1 of n = 65536 points, 10 steps, W-fm's network.
  L-exact, L-hutch one log-likelihood solve 1 → 0 of [x, ℓ], RK4 × 10, n = 8192 of 8gaussians;
                   Tr ∂v/∂x from forward-mode tangents through the MLP: one row set per
                   dimension (exact) or one Rademacher probe fixed for the solve.
  OT-sinkhorn-256, -1024  one minibatch coupling: draw, ε = 0.05·mean cost, 50 log-domain
                   Sinkhorn iterations, a partner per row drawn from its plan row.
  M-adjoint, M-backprop  one maximum-likelihood step: 3×64 SiLU, batch 256 of 8gaussians, exact
                   trace, RK4 × 8, clip norm 1, AdamW lr 1e-4; the gradient by the adjoint solve
                   of [x, a] 0 → 1 (torch.autograd.grad of S = aᵀv − div/B at every stage,
                   weighted −h·b_s) or by backpropagation through the forward solve.
--quick is flowgpu's: 0.5 s, n 8192 / 1024, 2 solver steps (2 MLE steps).

Timing as src/bench.rs: untimed warm-up, then groups of calls until --min-time s have passed
(≥ 3 groups; solves: 1 call a group, ≥ 1 group, 2 with --quick), torch.cuda.synchronize()
around each group on cuda; rate = timed calls / timed seconds, ms_median = the median group's
time per call. FLOPs use flowgpu's formula (2·in·out per linear layer per sample; a training
step 3 forwards; a solve passes·F·n·NFE, passes 1, L-exact 3, L-hutch 2; an MLE step
F·B·3·(NFE + recomputed + 3·VJPs)), so GFLOP/s compare like with like.

Output: a table, and with --json one JSON line per record after it with the fields of
`flowgpu bench --json`: workload, adapter, backend, unit, steps_per_s (W-*, M-*), nfe_per_s
(S-*, L-*, M-*), sample_steps_per_s (S-*, L-*), plans_per_s (OT-*), gflops, ms_median,
timed_calls, flops_per_call, shape (G-sgemm), n, steps, loss_first, loss_last, quick; plus
threads and torch (version). flowgpu's sgemm_gflops, sgemm_pct, peak_buffer_bytes, tiles and
train_step have no counterpart here.

Not identical: draws come from torch's generator, not flowgpu's counter RNG; M-backprop keeps
the autograd graph where flowgpu recomputes 3 stages a step (the FLOP count stays flowgpu's);
OT builds the B×B cost matrix (no FLOPs counted, as in flowgpu). Needs torch only, imported in
main() so that --help and --list work without it.
"""

import argparse
import json
import math
import sys
import time

WORKLOADS = ["G-sgemm", "W-small", "W-fm", "S-euler", "S-rk4", "L-exact", "L-hutch",
             "OT-sinkhorn-256", "OT-sinkhorn-1024", "M-adjoint", "M-backprop"]

# Butcher tableaus (c, a, b) of src/ode.rs.
TABLEAUS = {
    "euler": ([0.0], [[]], [1.0]),
    "rk4": ([0.0, 0.5, 0.5, 1.0], [[], [0.5], [0.0, 0.5], [0.0, 0.0, 1.0]],
            [1 / 6, 1 / 3, 1 / 3, 1 / 6]),
}
SELU_L, SELU_A = 1.0507009873554805, 1.6732632423543772
torch = None  # imported in main()


def net_config(name):
    """bench.rs `net`: (dim, width, depth, activation, time_features, batch, data)."""
    if name == "W-small":
        return dict(dim=2, width=64, depth=3, act="selu", time_features=0), 256, "moons"
    return dict(dim=2, width=512, depth=4, act="silu", time_features=0), 4096, "checkerboard"


def flops_per_sample(cfg):
    """MlpConfig::flops_per_sample: 2·in·out per linear layer (matmuls only)."""
    dims = [cfg["dim"] + 1 + 2 * cfg["time_features"]] + [cfg["width"]] * cfg["depth"]
    dims.append(cfg["dim"])
    return sum(2 * i * o for i, o in zip(dims[:-1], dims[1:]))


def toy(name, n, gen, device):
    """src/data/toys.rs: moons, checkerboard, 8gaussians (seeded generator, then to device)."""
    randn = lambda *s: torch.randn(*s, generator=gen, dtype=torch.float64)
    rand = lambda *s: torch.rand(*s, generator=gen, dtype=torch.float64)
    if name == "moons":  # sklearn make_moons(noise=0.1), ×2 + (−1, −0.2), shuffled
        a_out = torch.linspace(0, math.pi, n // 2, dtype=torch.float64)
        a_in = torch.linspace(0, math.pi, n - n // 2, dtype=torch.float64)
        p = torch.cat([torch.stack([a_out.cos(), a_out.sin()], 1),
                       torch.stack([1 - a_in.cos(), 1 - a_in.sin() - 0.5], 1)])
        p = (p + 0.1 * randn(n, 2)) * 2 - torch.tensor([1.0, 0.2], dtype=torch.float64)
        p = p[torch.randperm(n, generator=gen)]
    elif name == "checkerboard":
        x1 = 4 * rand(n) - 2
        b = torch.randint(0, 2, (n,), generator=gen).double()
        x2 = rand(n) - 2 * b + torch.remainder(x1.floor(), 2)
        p = torch.stack([x1, x2], 1) * 2
    else:  # 8gaussians (FFJORD): centres on a radius-4 circle, σ 0.5, all / 1.414
        d = 4 / math.sqrt(2)
        c = torch.tensor([[4, 0], [-4, 0], [0, 4], [0, -4], [d, d], [d, -d], [-d, d], [-d, -d]],
                         dtype=torch.float64)
        p = (c[torch.randint(0, 8, (n,), generator=gen)] + 0.5 * randn(n, 2)) / 1.414
    return p.float().to(device)


def silu_grad(z):
    s = torch.sigmoid(z)
    return s * (1 + z * (1 - s))


def make_mlp(cfg, device):
    """The flowgpu MLP as nn.Linear layers: [x, t, sin/cos(π·2^f·t)] → depth × act → dim."""
    act, act_grad = {
        "selu": (torch.nn.functional.selu,
                 lambda z: torch.where(z > 0, z.new_tensor(SELU_L), SELU_L * SELU_A * z.exp())),
        "silu": (torch.nn.functional.silu, silu_grad),
    }[cfg["act"]]
    d, tf = cfg["dim"], cfg["time_features"]

    class Mlp(torch.nn.Module):
        def __init__(self):
            super().__init__()
            dims = [d + 1 + 2 * tf] + [cfg["width"]] * cfg["depth"] + [d]
            self.layers = torch.nn.ModuleList(
                torch.nn.Linear(i, o) for i, o in zip(dims[:-1], dims[1:]))

        def inputs(self, x, t):
            # Time columns as model.rs time_feature: t, then sin, cos of π·2^f·t per f.
            if not torch.is_tensor(t):
                t = x.new_full((x.shape[0], 1), float(t))
            cols = [x, t]
            for f in range(tf):
                w = math.pi * 2 ** f * t
                cols += [w.sin(), w.cos()]
            return torch.cat(cols, 1)

        def forward(self, x, t):
            h = self.inputs(x, t)
            for lin in self.layers[:-1]:
                h = act(lin(h))
            return self.layers[-1](h)

        def jvp(self, x, t, u):
            """v and J·u for tangent row sets u [T, n, dim] (flowgpu's tangent passes)."""
            h, dh = self.inputs(x, t), u
            for k, lin in enumerate(self.layers):
                w = lin.weight[:, :d] if k == 0 else lin.weight  # t has no tangent
                z, dz = lin(h), dh @ w.t()
                if k == len(self.layers) - 1:
                    return z, dz
                h, dh = act(z), act_grad(z) * dz

    return Mlp().to(device)


def div_field(net, u):
    """Field of [x, ℓ]: dx/dt = v, dℓ/dt = Σ_T uᵀ(J u) (exact trace for u = basis vectors)."""
    def f(y, t, _w):
        v, jv = net.jvp(y[0], t, u)
        return [v, (jv * u).sum(dim=(0, 2))]
    return f


def rk_solve(f, y, t0, t1, steps, method):
    """Fixed-step explicit RK on a list of tensors; f(y, t, h·b_s) returns dy/dt."""
    c, a, b = TABLEAUS[method]
    h = (t1 - t0) / steps

    def comb(coefs, ks):
        out = list(y)
        for q, w in enumerate(coefs):
            if w:
                out = [o + (h * w) * k for o, k in zip(out, ks[q])]
        return out

    for i in range(steps):
        t = t0 + (t1 - t0) * i / steps
        ks = []
        for s in range(len(b)):
            ks.append(f(comb(a[s], ks), t + c[s] * h, h * b[s]))
        y = comb(b, ks)
    return y


def time_calls(min_time, min_groups, per_group, call, sync):
    """bench.rs time_calls: groups until min_time s (≥ min_groups); (calls, s, median ms)."""
    per_call, calls, total = [], 0, 0.0
    while total < min_time or len(per_call) < min_groups:
        sync()
        t0 = time.perf_counter()
        call(per_group)
        sync()
        dt = time.perf_counter() - t0
        per_call.append(dt / per_group)
        calls, total = calls + per_group, total + dt
    per_call.sort()
    return calls, total, 1e3 * per_call[len(per_call) // 2]


def time_training(step, flops, k, min_time, sync):
    """bench.rs time_training: k warm-up steps, groups of ~0.1 s (a multiple of k, ≤ 200)."""
    losses = [step() for _ in range(k)]
    loss_first = losses[0].item()
    per_group = min(max(math.ceil(math.ceil(0.1 / (flops / 5e9)) / k) * k, k), 200)
    last = []

    def group(c):
        for _ in range(c):
            last[:] = [step()]
    calls, secs, ms = time_calls(min_time, 3, per_group, group, sync)
    rate = calls / secs
    return dict(steps_per_s=rate, gflops=flops * rate / 1e9, ms_median=ms, timed_calls=calls,
                flops_per_call=flops, loss_first=loss_first, loss_last=last[0].item())


def run(name, a, dev, sync):
    """Records of one workload (dicts with flowgpu's bench field names)."""
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    quick = a.quick
    n_sample, n_loglik, steps = (8192, 1024, 2) if quick else (65536, 8192, 10)

    if name == "G-sgemm":
        out = []
        for m, k, n in [(4096, 512, 512), (65536, 512, 512), (256, 64, 64)]:
            m = min(m, 8192) if quick else m
            x, w = torch.randn(m, k, device=dev), torch.randn(n, k, device=dev)
            b, y = torch.randn(n, device=dev), torch.empty(m, n, device=dev)
            flops = 2.0 * m * k * n
            torch.addmm(b, x, w.t(), out=y)
            per_group = min(max(math.ceil(0.02 / (flops / 10e9)), 1), 200)

            def mm(c):
                for _ in range(c):
                    torch.addmm(b, x, w.t(), out=y)
            calls, secs, _ = time_calls(a.min_time, 3, per_group, mm, sync)
            g = flops * calls / secs / 1e9
            out.append(dict(unit="one matmul", gflops=g, ms_median=1e3 * flops / (g * 1e9),
                            timed_calls=calls, flops_per_call=flops, shape=[m, k, n]))
        return out

    if name in ("W-small", "W-fm"):
        cfg, batch, data = net_config(name)
        pool = toy(data, 1 << 20, gen, dev)
        net = make_mlp(cfg, dev)
        opt = torch.optim.AdamW(net.parameters(), lr=1e-3, betas=(0.9, 0.999), eps=1e-8,
                                weight_decay=0.0)

        def step():
            x1 = pool[torch.randint(0, pool.shape[0], (batch,), device=dev)]
            x0 = torch.randn(batch, cfg["dim"], device=dev)
            t = torch.rand(batch, 1, device=dev)
            xt, target = t * x1 + (1 - t) * x0, x1 - x0  # OT path, σ_min = 0
            loss = (net(xt, t) - target).square().mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            return loss.detach()
        flops = 3.0 * flops_per_sample(cfg) * batch
        rec = time_training(step, flops, 10, a.min_time, sync)  # steps_per_submit 10
        return [dict(rec, unit="one training step", n=batch)]

    if name in ("S-euler", "S-rk4", "L-exact", "L-hutch"):
        cfg, _, _ = net_config("W-fm")
        net = make_mlp(cfg, dev).requires_grad_(False)
        d = cfg["dim"]
        method = "euler" if name == "S-euler" else "rk4"
        loglik = name.startswith("L")
        n = n_loglik if loglik else n_sample
        passes = {"L-exact": 3.0, "L-hutch": 2.0}.get(name, 1.0)
        points = toy("8gaussians", n, gen, dev)
        log_norm = 0.5 * d * math.log(2 * math.pi)

        def solve(k):
            with torch.inference_mode():
                if not loglik:  # sample: noise at t = 0 → data at t = 1, to the host
                    x = torch.randn(n, d, device=dev)
                    return rk_solve(lambda y, t, _w: [net(y[0], t)], [x], 0.0, 1.0, k,
                                    method)[0].cpu()
                if name == "L-exact":
                    u = torch.eye(d, device=dev)[:, None, :].expand(d, n, d)
                else:  # one Rademacher probe per row, fixed for the solve
                    u = (torch.randint(0, 2, (1, n, d), device=dev) * 2 - 1).float()
                z, ell = rk_solve(div_field(net, u), [points, points.new_zeros(n)],
                                  1.0, 0.0, k, method)
                return (-log_norm - 0.5 * z.square().sum(1) + ell).cpu()
        solve(1)  # warm-up: one step at full size (kernels, allocator)
        stages = len(TABLEAUS[method][2])
        nfe = steps * stages
        flops = passes * flops_per_sample(cfg) * n * nfe
        calls, secs, ms = time_calls(a.min_time, 2 if quick else 1, 1,
                                     lambda c: [solve(steps) for _ in range(c)], sync)
        solves = calls / secs
        return [dict(unit="one solve", nfe_per_s=solves * nfe,
                     sample_steps_per_s=solves * steps, gflops=flops * solves / 1e9,
                     ms_median=ms, timed_calls=calls, flops_per_call=flops, n=n, steps=steps)]

    if name.startswith("OT-sinkhorn"):
        batch = 256 if name.endswith("256") else 1024
        pool = toy("moons", 1 << 16, gen, dev)
        reg, iters, log_b = 0.05, 50, math.log(batch)

        def coupling():
            x1 = pool[torch.randint(0, pool.shape[0], (batch,), device=dev)]
            x0 = torch.randn(batch, 2, device=dev)
            cost = (x0[:, None, :] - x1[None, :, :]).square().sum(-1)  # C_ij = ‖x0_i − x1_j‖²
            eps = (reg * cost.mean()).clamp_min(1e-12)
            f, g = cost.new_zeros(batch), cost.new_zeros(batch)
            for _ in range(iters):
                f = -eps * log_b - eps * torch.logsumexp((g[None, :] - cost) / eps, 1)
                g = -eps * log_b - eps * torch.logsumexp((f[:, None] - cost) / eps, 0)
            # Row i of the plan ∝ exp((f_i + g_j − C_ij)/ε): f_i is a constant of the row.
            pairs = torch.multinomial(torch.softmax((g[None, :] - cost) / eps, 1), 1)[:, 0]
            return x0, x1[pairs]
        coupling()
        calls, secs, ms = time_calls(a.min_time, 3, 1,
                                     lambda c: [coupling() for _ in range(c)], sync)
        return [dict(unit="one coupling (50 Sinkhorn iterations + pairs)",
                     plans_per_s=calls / secs, gflops=0.0, ms_median=ms, timed_calls=calls,
                     flops_per_call=0.0, n=batch)]

    if name in ("M-adjoint", "M-backprop"):
        cfg, batch, _ = net_config("W-small")
        cfg["act"] = "silu"  # MLE needs act''
        d = cfg["dim"]
        mle_steps = 2 if quick else 8
        pool = toy("8gaussians", 1 << 16, gen, dev)
        net = make_mlp(cfg, dev)
        params = list(net.parameters())
        opt = torch.optim.AdamW(params, lr=1e-4, betas=(0.9, 0.999), eps=1e-8,
                                weight_decay=0.0)
        u = torch.eye(d, device=dev)[:, None, :].expand(d, batch, d)  # exact trace
        log_norm = 0.5 * d * math.log(2 * math.pi)

        def nll(z, ell):  # mle.wgsl adjoint_start: ½‖z‖² + (d/2)·log 2π − ℓ(0)
            return 0.5 * z.square().sum(1) + log_norm - ell

        def step():
            x = pool[torch.randint(0, pool.shape[0], (batch,), device=dev)]
            ell0 = x.new_zeros(batch)
            if name == "M-backprop":  # discretize-then-optimize: autograd through the solve
                z, ell = rk_solve(div_field(net, u), [x, ell0], 1.0, 0.0, mle_steps, "rk4")
                loss = nll(z, ell).mean()
                opt.zero_grad(set_to_none=True)
                loss.backward()
            else:
                with torch.no_grad():
                    z, ell = rk_solve(div_field(net, u), [x, ell0], 1.0, 0.0, mle_steps,
                                      "rk4")
                loss = nll(z, ell).mean()
                grads = [torch.zeros_like(p) for p in params]
                a_ell = -1.0 / batch  # ∂L/∂ℓ, constant in time

                def adjoint(y, t, w):  # y = [x, a]; w = h·b_s of this stage
                    with torch.enable_grad():
                        xs = y[0].detach().requires_grad_(True)
                        v, div = div_field(net, u)([xs], t, w)
                        s = (y[1] * v).sum() + a_ell * div.sum()
                        gx, *gp = torch.autograd.grad(s, [xs] + params)
                    for acc, g in zip(grads, gp):
                        acc.add_(g, alpha=-w)
                    return [v.detach(), -gx]
                rk_solve(adjoint, [z, z / batch], 0.0, 1.0, mle_steps, "rk4")
                for p, g in zip(params, grads):
                    p.grad = g
            torch.nn.utils.clip_grad_norm_(params, 1.0)  # TrainConfig default clip_norm
            opt.step()
            return loss.detach()
        nfe = mle_steps * 4
        nfe_grad = nfe if name == "M-adjoint" else nfe + mle_steps * 3
        f = flops_per_sample(cfg) * batch
        flops = float(f * (1 + d) * (nfe + (nfe_grad - nfe) + 3 * nfe))
        rec = time_training(step, flops, 1, a.min_time, sync)  # steps_per_submit 1
        return [dict(rec, unit="one MLE training step", n=batch, steps=mle_steps,
                     nfe_per_s=rec["steps_per_s"] * (nfe + nfe_grad))]
    raise ValueError(name)


def main():
    global torch
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's)")
    ap.add_argument("--only", help="comma-separated workloads (default: all)")
    ap.add_argument("--min-time", type=float, help="seconds of timed calls (default 3, 0.5 quick)")
    ap.add_argument("--quick", action="store_true", help="short timings, small n, 2 steps")
    ap.add_argument("--json", action="store_true", help="one JSON line per record on stdout")
    ap.add_argument("--list", action="store_true", help="print the workload names and exit")
    a = ap.parse_args()
    if a.list:
        print("\n".join(WORKLOADS))
        return
    names = [s.strip() for s in a.only.split(",") if s.strip()] if a.only else WORKLOADS
    bad = [s for s in names if s not in WORKLOADS]
    if bad:
        ap.error(f"unknown workload {bad[0]!r}; valid workloads: {', '.join(WORKLOADS)}")
    if a.min_time is None:
        a.min_time = 0.5 if a.quick else 3.0
    if not (a.min_time > 0 and math.isfinite(a.min_time)):
        ap.error("--min-time must be positive")

    import torch as _torch
    torch = _torch
    if a.threads:
        torch.set_num_threads(a.threads)
    torch.backends.cuda.matmul.allow_tf32 = False  # fp32 throughout, as flowgpu
    torch.set_float32_matmul_precision("highest")
    if a.device == "cuda":
        if not torch.cuda.is_available():
            sys.exit("error: --device cuda but torch.cuda.is_available() is False")
        dev, sync = torch.device("cuda"), torch.cuda.synchronize
        adapter = torch.cuda.get_device_name()
    else:
        dev, sync = torch.device("cpu"), (lambda: None)
        adapter = f"cpu ({torch.get_num_threads()} threads)"
    base = dict(adapter=adapter, backend=f"torch-{a.device}", threads=torch.get_num_threads(),
                torch=torch.__version__, quick=a.quick)

    print(f"{'workload':<17} {'rate':>20} {'GFLOP/s':>9} {'ms/call':>10}")
    lines = []
    for name in names:
        print(f"bench: {name} on {adapter} (torch {torch.__version__})", file=sys.stderr)
        for rec in run(name, a, dev, sync):
            r = dict(workload=name, **base, **rec)
            if "steps_per_s" in r:
                rate = f"{r['steps_per_s']:.1f} steps/s"
            elif "nfe_per_s" in r:
                rate = f"{r['nfe_per_s']:.3f} NFE/s"
            elif "plans_per_s" in r:
                rate = f"{r['plans_per_s']:.1f} plans/s"
            else:
                rate = "x".join(map(str, r["shape"]))
            print(f"{name:<17} {rate:>20} {r['gflops']:>9.2f} {r['ms_median']:>10.3f}",
                  flush=True)
            lines.append(json.dumps(r))
    if a.json:
        print("\n".join(lines))


if __name__ == "__main__":
    main()
