//! `flowgpu bench`: the standard workloads, with the same names, networks and sizes as the
//! PyTorch reference `benches/torch_baseline.py`, so one run of each on one machine gives a
//! ratio.
//! FLOPs are counted analytically as the baseline does (matmuls only: 2·in·out per linear
//! layer per sample; a training step is 3× a forward; L-exact 3×, L-hutch 2× per evaluation),
//! and each workload is also put against flowgpu's own matmul kernel at the same layer shape
//! (`sgemm_gflops`), so "fast" is a ratio to what the adapter does on a plain SGEMM.

use crate::data::Dataset;
use crate::error::{Error, Result};
use crate::gpu::{GpuContext, UniformArena};
use crate::kernels::matmul;
use crate::model::{Activation, MlpConfig, Model, ModelConfig, Weights};
use crate::path::GaussianPath;
use crate::solve::{Method, Sampler, SolveConfig, Trace};
use crate::train::{TrainConfig, Trainer};
use rand::SeedableRng;
use std::time::Instant;

/// Workload names, in run order (M-*: maximum-likelihood training steps, flowgpu only).
pub const WORKLOADS: [&str; 11] = [
    "G-sgemm",
    "W-small",
    "W-fm",
    "S-euler",
    "S-rk4",
    "L-exact",
    "L-hutch",
    "OT-sinkhorn-256",
    "OT-sinkhorn-1024",
    "M-adjoint",
    "M-backprop",
];

/// Workloads that `bench --adapter all` also runs split over every adapter at once:
/// data-parallel training steps, and sampling rows split as `sample --adapter all` does.
pub const SPLIT_WORKLOADS: [&str; 4] = ["W-small", "W-fm", "S-euler", "S-rk4"];

/// Bench options.
#[derive(Clone, Debug)]
pub struct BenchConfig {
    /// Smoke run: short timings, small n, 2 solver steps.
    pub quick: bool,
    /// Seconds of timed calls per measurement.
    pub min_time: f64,
    /// S-* points, L-* points, solver steps.
    pub n_sample: usize,
    pub n_loglik: usize,
    pub steps: usize,
}

impl BenchConfig {
    pub fn new(quick: bool) -> Self {
        if quick {
            BenchConfig {
                quick,
                min_time: 0.5,
                n_sample: 8192,
                n_loglik: 1024,
                steps: 2,
            }
        } else {
            BenchConfig {
                quick,
                min_time: 3.0,
                n_sample: 65536,
                n_loglik: 8192,
                steps: 10,
            }
        }
    }
}

/// One result line (field names as in the PyTorch baseline's JSON).
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct BenchRecord {
    pub workload: String,
    pub adapter: String,
    pub backend: String,
    /// The MLP kernel variant: "subgroup8" (8-lane subgroup tiles) or "plain".
    pub tiles: String,
    /// Flow-matching training workloads: how the step ran, "fused" (one dispatch for the
    /// MLP, `cfm_step_subgroup.wgsl`) or "layers" (per-layer kernels).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub train_step: Option<String>,
    pub unit: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub steps_per_s: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nfe_per_s: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sample_steps_per_s: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub plans_per_s: Option<f64>,
    pub gflops: f64,
    pub ms_median: f64,
    pub timed_calls: usize,
    pub flops_per_call: f64,
    /// flowgpu's matmul kernel at this workload's hidden-layer shape.
    pub sgemm_gflops: f64,
    pub sgemm_pct: f64,
    pub peak_buffer_bytes: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shape: Option<[usize; 3]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub n: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub steps: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub loss_first: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub loss_last: Option<f32>,
    pub quick: bool,
    /// `--profile`: kernel time of one call, per kernel.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub profile: Option<Vec<crate::gpu::profile::KernelTime>>,
    /// A split workload: every adapter it ran on at once, in order (`adapter` is the first).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub adapters: Option<Vec<String>>,
    /// A split workload: its rate over the first adapter's alone, measured in the same run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vs_first: Option<f64>,
    /// A split workload: each adapter's weight (its share of the rows or the batch).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub weights: Option<Vec<u32>>,
}

impl BenchRecord {
    /// The workload's rate: steps, NFE or plans per second (None for G-sgemm).
    pub fn rate(&self) -> Option<f64> {
        self.steps_per_s.or(self.nfe_per_s).or(self.plans_per_s)
    }
}

/// With a profiling context: time one more call dispatch by dispatch.
fn profile_one(
    ctx: &GpuContext,
    mut call: impl FnMut() -> Result<()>,
) -> Result<Option<Vec<crate::gpu::profile::KernelTime>>> {
    let Some(p) = &ctx.profiler else {
        return Ok(None);
    };
    ctx.wait()?;
    p.start();
    call()?;
    p.finish(ctx).map(Some)
}

/// Timings of training steps.
struct TrainTiming {
    calls: usize,
    secs: f64,
    ms: f64,
    flops: f64,
    loss_first: f32,
    loss_last: f32,
    profile: Option<Vec<crate::gpu::profile::KernelTime>>,
}

impl TrainTiming {
    fn rate(&self) -> f64 {
        self.calls as f64 / self.secs
    }

    /// `base` with the rates, FLOPs and losses filled in.
    fn record(self, base: BenchRecord, sgemm_gflops: f64) -> BenchRecord {
        let gflops = self.flops * self.rate() / 1e9;
        BenchRecord {
            steps_per_s: Some(self.rate()),
            gflops,
            ms_median: self.ms,
            timed_calls: self.calls,
            flops_per_call: self.flops,
            sgemm_gflops,
            sgemm_pct: 100.0 * gflops / sgemm_gflops,
            loss_first: Some(self.loss_first),
            loss_last: Some(self.loss_last),
            profile: self.profile,
            ..base
        }
    }
}

/// Time training steps of `tr` (`flops` per step): one submit of warm-up, timed groups of
/// whole submits, and with a profiling context one more step dispatch by dispatch.
fn time_training(
    ctx: &GpuContext,
    tr: &mut Trainer,
    flops: f64,
    min_time: f64,
) -> Result<TrainTiming> {
    let k = tr.cfg.steps_per_submit;
    tr.run_steps(ctx, k)?;
    let loss_first = tr.recent_losses(ctx, k)?[0];
    let per_group = (((0.1 / (flops / 5e9)).ceil() as usize).div_ceil(k) * k).clamp(k, 200);
    let (calls, secs, ms) = time_calls(min_time, 3, per_group, |c| {
        let mut left = c;
        while left > 0 {
            let n = left.min(k);
            tr.run_steps(ctx, n)?;
            left -= n;
        }
        ctx.wait()
    })?;
    let loss_last = tr.recent_losses(ctx, 1)?[0];
    let profile = profile_one(ctx, || tr.run_steps(ctx, 1))?;
    Ok(TrainTiming {
        calls,
        secs,
        ms,
        flops,
        loss_first,
        loss_last,
        profile,
    })
}

/// Time `call` in groups until `min_time` s have passed (at least `min_groups` groups);
/// returns (calls, seconds, median ms per call).
fn time_calls(
    min_time: f64,
    min_groups: usize,
    calls_per_group: usize,
    mut call: impl FnMut(usize) -> Result<()>,
) -> Result<(usize, f64, f64)> {
    let mut per_call = Vec::new();
    let (mut calls, mut total) = (0, 0.0);
    while total < min_time || per_call.len() < min_groups {
        let t0 = Instant::now();
        call(calls_per_group)?;
        let dt = t0.elapsed().as_secs_f64();
        per_call.push(dt / calls_per_group as f64);
        calls += calls_per_group;
        total += dt;
    }
    per_call.sort_by(|a, b| a.total_cmp(b));
    Ok((calls, total, 1e3 * per_call[per_call.len() / 2]))
}

fn net(name: &str) -> (MlpConfig, usize, &'static str) {
    match name {
        "W-small" => (
            MlpConfig {
                dim: 2,
                width: 64,
                depth: 3,
                activation: Activation::Selu,
                time_features: 0,
                classes: 0,
            },
            256,
            "moons",
        ),
        _ => (
            MlpConfig {
                dim: 2,
                width: 512,
                depth: 4,
                activation: Activation::Silu,
                time_features: 0,
                classes: 0,
            },
            4096,
            "checkerboard",
        ),
    }
}

fn random_model(cfg: &MlpConfig) -> Model {
    let w = Weights::init(cfg, &mut rand::rngs::StdRng::seed_from_u64(0));
    Model {
        config: ModelConfig {
            data: "bench".into(),
            source: None,
            seed: 0,
            ..ModelConfig::new(cfg.clone(), GaussianPath::Ot { sigma_min: 0.0 })
        },
        weights: w,
    }
}

/// The optimizer of the training workloads: constant learning rate, no clipping.
fn bench_train_config(batch: usize) -> TrainConfig {
    TrainConfig {
        steps: u64::MAX / 4,
        batch,
        warmup: 0,
        cosine: false,
        clip_norm: 0.0,
        ..TrainConfig::default()
    }
}

/// A trainer for a benchmark network with random weights (OT path).
fn bench_trainer(
    ctx: &GpuContext,
    mlp: &MlpConfig,
    pool: &[f32],
    tc: &TrainConfig,
) -> Result<Trainer> {
    let m = random_model(mlp);
    Trainer::new(
        ctx,
        mlp,
        GaussianPath::Ot { sigma_min: 0.0 },
        &m.weights,
        pool,
        tc,
    )
}

/// GFLOP/s of flowgpu's `linear_forward` (identity epilogue) on an (M, K, N) problem.
pub fn sgemm(ctx: &GpuContext, m: usize, k: usize, n: usize, min_time: f64) -> Result<f64> {
    let tiles = ctx.tiles;
    let k4 = k.div_ceil(4);
    let x = ctx.storage("sgemm x", m * 4 * k4)?;
    let w = ctx.storage("sgemm w", n * 4 * k4 + n.div_ceil(4) * 4)?;
    let y = ctx.storage("sgemm y", m * n.div_ceil(4) * 4)?;
    let unused = ctx.storage("unused", 4)?;
    let kern = matmul::linear_forward(ctx)?;
    let mut arena = UniformArena::new(ctx, "sgemm", 1);
    let p = matmul::LinearParams {
        rows: m as u32,
        out_features: n as u32,
        in_vec4: k4 as u32,
        y_stride: (n.div_ceil(4) * 4) as u32,
        w_off4: 0,
        b_off: (n * 4 * k4) as u32,
        activation: 0,
        store_pre: 0,
        tangents: 0,
        _pad: [0; 3],
    };
    arena.set(0, &p);
    arena.upload(ctx, 0..1);
    let g = kern.bind(
        ctx,
        &arena,
        &matmul::ForwardBindings {
            x: &x,
            params: &w,
            z: &unused,
            h: &y,
        },
    );
    let flops = 2.0 * (m * k * n) as f64;
    let per_group = ((0.02 / (flops / 10e9)).ceil() as usize).clamp(1, 200);
    let (calls, secs, _) = time_calls(min_time, 3, per_group, |c| {
        let mut enc = ctx.device.create_command_encoder(&Default::default());
        {
            let mut cp = enc.begin_compute_pass(&Default::default());
            for _ in 0..c {
                kern.dispatch(&mut cp, &g, 0, matmul::linear_forward_groups(&p, &tiles));
            }
        }
        ctx.submit(enc)?;
        ctx.wait()
    })?;
    Ok(flops * calls as f64 / secs / 1e9)
}

/// SGEMM GFLOP/s at the shapes of the workloads' layers, measured once per shape.
struct SgemmCache {
    min_time: f64,
    at_shape: std::collections::HashMap<(usize, usize), f64>,
}

impl SgemmCache {
    /// GFLOP/s of an [m, k] × [k, k] matmul.
    fn at(&mut self, ctx: &GpuContext, m: usize, k: usize) -> Result<f64> {
        if let Some(v) = self.at_shape.get(&(m, k)) {
            return Ok(*v);
        }
        let v = sgemm(ctx, m, k, k, self.min_time)?;
        self.at_shape.insert((m, k), v);
        Ok(v)
    }
}

/// What every record of a run shares, and what it measures against.
struct BenchRun<'a> {
    ctx: &'a GpuContext,
    cfg: &'a BenchConfig,
    base: BenchRecord,
    sgemm: SgemmCache,
    /// Bytes allocated before the workload.
    bytes0: u64,
}

impl<'a> BenchRun<'a> {
    /// What a workload's records share: the context, the configuration, the bytes
    /// allocated before it and the record's common fields.
    fn shared(&self) -> (&'a GpuContext, &'a BenchConfig, u64, BenchRecord) {
        (self.ctx, self.cfg, self.bytes0, self.base.clone())
    }
}

/// Run one workload on a context.
pub fn run(ctx: &GpuContext, name: &str, cfg: &BenchConfig) -> Result<Vec<BenchRecord>> {
    let mut r = BenchRun {
        ctx,
        cfg,
        base: BenchRecord {
            workload: name.to_string(),
            adapter: ctx.adapter_name().to_string(),
            backend: ctx.backend_name(),
            tiles: ctx.tiles.variant().to_string(),
            quick: cfg.quick,
            ..Default::default()
        },
        sgemm: SgemmCache {
            min_time: cfg.min_time.min(1.0),
            at_shape: Default::default(),
        },
        bytes0: ctx.allocated_bytes(),
    };
    match name {
        "G-sgemm" => bench_sgemm(&r),
        "W-small" | "W-fm" => bench_training(&mut r, name),
        "S-euler" | "S-rk4" | "L-exact" | "L-hutch" => bench_solve(&mut r, name),
        "M-adjoint" | "M-backprop" => bench_mle(&mut r, name),
        "OT-sinkhorn-256" | "OT-sinkhorn-1024" => bench_coupling(&r, name),
        _ => Err(Error::invalid(format!(
            "unknown workload '{name}'; valid workloads: {}",
            WORKLOADS.join(", ")
        ))),
    }
}

/// G-sgemm: the matmul alone at three shapes.
fn bench_sgemm(r: &BenchRun) -> Result<Vec<BenchRecord>> {
    let BenchRun { ctx, cfg, base, .. } = r;
    let mut out = Vec::new();
    for (m, k, n) in [(4096, 512, 512), (65536, 512, 512), (256, 64, 64)] {
        let m = if cfg.quick { m.min(8192) } else { m };
        let before = ctx.allocated_bytes();
        let g = sgemm(ctx, m, k, n, cfg.min_time)?;
        let flops = 2.0 * (m * k * n) as f64;
        out.push(BenchRecord {
            unit: "one matmul".into(),
            gflops: g,
            ms_median: 1e3 * flops / (g * 1e9),
            flops_per_call: flops,
            sgemm_gflops: g,
            sgemm_pct: 100.0,
            peak_buffer_bytes: ctx.allocated_bytes() - before,
            shape: Some([m, k, n]),
            ..base.clone()
        });
    }
    Ok(out)
}

/// W-small, W-fm: flow-matching training steps.
fn bench_training(r: &mut BenchRun, name: &str) -> Result<Vec<BenchRecord>> {
    let (ctx, cfg, bytes0, base) = r.shared();
    let (mlp, batch, data) = net(name);
    let pool = Dataset::toy(data, 1 << 20, 0)?;
    let tc = bench_train_config(batch);
    let mut tr = bench_trainer(ctx, &mlp, &pool.points, &tc)?;
    let flops = 3.0 * (mlp.flops_per_sample() * batch as u64) as f64;
    let t = time_training(ctx, &mut tr, flops, cfg.min_time)?;
    let sg = r.sgemm.at(ctx, batch, mlp.width)?;
    let train_step = Some(tr.step_kind().to_string());
    Ok(vec![t.record(
        BenchRecord {
            unit: "one training step".into(),
            train_step,
            n: Some(batch),
            peak_buffer_bytes: ctx.allocated_bytes() - bytes0,
            ..base
        },
        sg,
    )])
}

/// S-euler, S-rk4: sampling solves; L-exact, L-hutch: log-likelihood solves.
fn bench_solve(r: &mut BenchRun, name: &str) -> Result<Vec<BenchRecord>> {
    let (ctx, cfg, bytes0, base) = r.shared();
    let (mlp, _, _) = net("W-fm");
    let m = random_model(&mlp);
    let s = Sampler::new(ctx, &m)?;
    let method = if name == "S-euler" {
        Method::Euler
    } else {
        Method::Rk4
    };
    let stages = if method == Method::Euler { 1 } else { 4 };
    let solve = SolveConfig {
        method,
        steps: cfg.steps,
        chunk: 1 << 20,
        ..SolveConfig::default()
    };
    let loglik = name.starts_with('L');
    let n = if loglik { cfg.n_loglik } else { cfg.n_sample };
    let (passes, trace) = match name {
        "L-exact" => (3.0, Some(Trace::Exact)),
        "L-hutch" => (
            2.0,
            Some(Trace::Hutchinson {
                probes: 1,
                rademacher: true,
                seed: 0,
            }),
        ),
        _ => (1.0, None),
    };
    let points = Dataset::toy("8gaussians", n, 0)?.points;
    let solve_n = |s: &Sampler, n: usize| -> Result<()> {
        match trace {
            Some(t) => s.log_prob(&points[..2 * n], t, &solve).map(|_| ()),
            None => s.sample(n, 0, &solve).map(|_| ()),
        }
    };
    let one = |s: &Sampler| solve_n(s, n);
    // Warm-up on a few points: compiles the pipelines without a full-size solve.
    solve_n(&s, n.min(256))?;
    // Buffers scale with the chunk: the largest solve's allocation, measured.
    let before = ctx.allocated_bytes();
    let peak_of_full = |ctx: &GpuContext| ctx.allocated_bytes() - before;
    let nfe = cfg.steps * stages;
    let flops = passes * (mlp.flops_per_sample() * n as u64) as f64 * nfe as f64;
    let min_groups = if cfg.quick { 2 } else { 1 };
    let timing = SolveTiming::time(cfg, min_groups, flops, nfe, n, || one(&s))?;
    let peak = peak_of_full(ctx) / timing.calls as u64 + (before - bytes0);
    let profile = profile_one(ctx, || one(&s))?;
    let sg = r.sgemm.at(ctx, n.min(65536), mlp.width)?;
    Ok(vec![BenchRecord {
        profile,
        peak_buffer_bytes: peak,
        ..timing.record(base, sg)
    }])
}

/// Timings of solves.
struct SolveTiming {
    calls: usize,
    secs: f64,
    ms: f64,
    /// FLOPs per solve.
    flops: f64,
    /// Evaluations per sample, and solver steps, of a solve.
    nfe: usize,
    steps: usize,
    /// Points per solve.
    n: usize,
}

impl SolveTiming {
    /// Time `solve` (one solve of `n` points, `flops` FLOPs and `nfe` evaluations per
    /// point, `cfg.steps` steps) for `cfg.min_time` s, at least `min_groups` calls.
    fn time(
        cfg: &BenchConfig,
        min_groups: usize,
        flops: f64,
        nfe: usize,
        n: usize,
        mut solve: impl FnMut() -> Result<()>,
    ) -> Result<Self> {
        let (calls, secs, ms) = time_calls(cfg.min_time, min_groups, 1, |_| solve())?;
        Ok(SolveTiming {
            calls,
            secs,
            ms,
            flops,
            nfe,
            steps: cfg.steps,
            n,
        })
    }

    /// `base` with the rates and FLOPs filled in.
    fn record(&self, base: BenchRecord, sgemm_gflops: f64) -> BenchRecord {
        let solves = self.calls as f64 / self.secs;
        let gflops = self.flops * solves / 1e9;
        BenchRecord {
            unit: "one solve".into(),
            nfe_per_s: Some(solves * self.nfe as f64),
            sample_steps_per_s: Some(solves * self.steps as f64),
            gflops,
            ms_median: self.ms,
            timed_calls: self.calls,
            flops_per_call: self.flops,
            sgemm_gflops,
            sgemm_pct: 100.0 * gflops / sgemm_gflops,
            n: Some(self.n),
            steps: Some(self.steps),
            ..base
        }
    }
}

/// M-adjoint, M-backprop: one maximum-likelihood training step.
fn bench_mle(r: &mut BenchRun, name: &str) -> Result<Vec<BenchRecord>> {
    let (ctx, cfg, bytes0, base) = r.shared();
    // One MLE step: W-small's 3×64 net with SiLU (MLE needs act''), batch 256,
    // 8gaussians, exact trace, RK4 × 8 steps. FLOPs: a field evaluation runs the
    // primal and 2 tangent row sets (3 forwards), a VJP that plus a backward over
    // them (2× a forward each: 9 forwards); backprop also recomputes 3 stages a step.
    let (mut mlp, batch, _) = net("W-small");
    mlp.activation = Activation::Silu;
    let pool = Dataset::toy("8gaussians", 1 << 16, 0)?;
    let mc = crate::mle::MleConfig {
        probes: 0,
        solver: crate::solve::Method::Rk4,
        steps: if cfg.quick { 2 } else { 8 },
        grad: if name == "M-adjoint" {
            crate::mle::MleGrad::Adjoint
        } else {
            crate::mle::MleGrad::Backprop
        },
        ..Default::default()
    };
    let tc = TrainConfig {
        steps: u64::MAX / 4,
        batch,
        warmup: 0,
        cosine: false,
        lr: 1e-4,
        steps_per_submit: 1,
        log_every: 1,
        mle: Some(mc.clone()),
        ..TrainConfig::default()
    };
    let mut tr = bench_trainer(ctx, &mlp, &pool.points, &tc)?;
    let f = (mlp.flops_per_sample() * batch as u64) as f64;
    let sets = (1 + mlp.dim) as f64;
    let recompute = (mc.nfe_gradient() - mc.nfe()) as f64;
    let vjps = mc.nfe() as f64;
    let flops = f * sets * (mc.nfe() as f64 + recompute + 3.0 * vjps);
    let t = time_training(ctx, &mut tr, flops, cfg.min_time)?;
    let sg = r.sgemm.at(ctx, batch * (1 + mlp.dim), mlp.width)?;
    let nfe_per_s = t.rate() * (mc.nfe() + mc.nfe_gradient()) as f64;
    Ok(vec![t.record(
        BenchRecord {
            unit: "one MLE training step".into(),
            nfe_per_s: Some(nfe_per_s),
            n: Some(batch),
            steps: Some(mc.steps),
            peak_buffer_bytes: ctx.allocated_bytes() - bytes0,
            ..base
        },
        sg,
    )])
}

/// OT-sinkhorn-*: one minibatch coupling.
fn bench_coupling(r: &BenchRun, name: &str) -> Result<Vec<BenchRecord>> {
    let (ctx, cfg, bytes0, base) = r.shared();
    // The coupling alone: draw, ε, 50 log-domain Sinkhorn iterations, pair sampling
    // (POT's baseline runs to its 1000-iteration cap at reg 0.05).
    let batch = if name.ends_with("256") { 256 } else { 1024 };
    let (mlp, _, _) = net("W-small");
    let pool = Dataset::toy("moons", 1 << 16, 0)?;
    let tc = TrainConfig {
        batch,
        coupling: crate::train::Coupling::Sinkhorn {
            reg: 0.05,
            iters: 50,
        },
        ..TrainConfig::default()
    };
    let mut tr = bench_trainer(ctx, &mlp, &pool.points, &tc)?;
    tr.run_coupling(ctx, 1)?;
    ctx.wait()?;
    let (calls, secs, ms) = time_calls(cfg.min_time, 3, 1, |c| {
        tr.run_coupling(ctx, c)?;
        ctx.wait()
    })?;
    Ok(vec![BenchRecord {
        unit: "one coupling (50 Sinkhorn iterations + pairs)".into(),
        plans_per_s: Some(calls as f64 / secs),
        ms_median: ms,
        timed_calls: calls,
        n: Some(batch),
        peak_buffer_bytes: ctx.allocated_bytes() - bytes0,
        ..base
    }])
}

/// `name` (one of [`SPLIT_WORKLOADS`]) split over every context of `ctxs` at once: W-* as
/// data-parallel training (each adapter a share of the batch, the gradient reduced through
/// the host), S-* with the rows split, one thread per adapter; the shares in proportion to
/// `weights`. The record carries
/// every adapter's name; the SGEMM ratio is to the first adapter's SGEMM, and the buffer
/// bytes are every adapter's together.
pub fn run_split(
    ctxs: Vec<GpuContext>,
    name: &str,
    cfg: &BenchConfig,
    weights: &[u32],
) -> Result<Vec<BenchRecord>> {
    if ctxs.is_empty() || !SPLIT_WORKLOADS.contains(&name) {
        return Err(Error::invalid(format!(
            "'{name}' does not split over adapters; these do: {}",
            SPLIT_WORKLOADS.join(", ")
        )));
    }
    if weights.len() != ctxs.len() {
        return Err(Error::invalid("one weight per adapter"));
    }
    let names: Vec<String> = ctxs.iter().map(|c| c.adapter_name().to_string()).collect();
    let backends: Vec<String> = ctxs.iter().map(|c| c.backend_name()).collect();
    let base = BenchRecord {
        workload: name.to_string(),
        adapter: names[0].clone(),
        backend: backends.join("+"),
        tiles: ctxs
            .iter()
            .map(|c| c.tiles.variant())
            .collect::<Vec<_>>()
            .join("+"),
        quick: cfg.quick,
        adapters: Some(names),
        weights: Some(weights.to_vec()),
        ..Default::default()
    };
    let record = if name.starts_with('W') {
        split_training(ctxs, name, cfg, weights, base)?
    } else {
        split_sampling(&ctxs, name, cfg, weights, base)?
    };
    Ok(vec![record])
}

/// W-small, W-fm over several adapters (data-parallel steps).
fn split_training(
    ctxs: Vec<GpuContext>,
    name: &str,
    cfg: &BenchConfig,
    weights: &[u32],
    base: BenchRecord,
) -> Result<BenchRecord> {
    let (mlp, batch, data) = net(name);
    let pool = Dataset::toy(data, 1 << 20, 0)?;
    let tc = bench_train_config(batch);
    let mut ctxs = ctxs.into_iter();
    let lead = ctxs.next().ok_or_else(|| Error::invalid("no adapter"))?;
    let build = |c: &GpuContext, tc: &TrainConfig| bench_trainer(c, &mlp, &pool.points, tc);
    let mut tr = Trainer::data_parallel_weighted(&lead, ctxs.collect(), weights, &tc, build)?;
    let flops = 3.0 * (mlp.flops_per_sample() * batch as u64) as f64;
    let t = time_training(&lead, &mut tr, flops, cfg.min_time)?;
    let sg = SgemmCache {
        min_time: cfg.min_time.min(1.0),
        at_shape: Default::default(),
    }
    .at(&lead, batch, mlp.width)?;
    Ok(t.record(
        BenchRecord {
            unit: "one training step".into(),
            train_step: Some(tr.step_kind().to_string()),
            n: Some(batch),
            peak_buffer_bytes: tr.allocated_bytes(&lead),
            ..base
        },
        sg,
    ))
}

/// S-euler, S-rk4 with the rows split over the adapters by `weights`, one thread each.
fn split_sampling(
    ctxs: &[GpuContext],
    name: &str,
    cfg: &BenchConfig,
    weights: &[u32],
    base: BenchRecord,
) -> Result<BenchRecord> {
    let (mlp, _, _) = net("W-fm");
    let m = random_model(&mlp);
    let (method, stages) = if name == "S-euler" {
        (Method::Euler, 1)
    } else {
        (Method::Rk4, 4)
    };
    let solve = SolveConfig {
        method,
        steps: cfg.steps,
        chunk: 1 << 20,
        ..SolveConfig::default()
    };
    let n = cfg.n_sample;
    let samplers = ctxs
        .iter()
        .map(|c| Sampler::new(c, &m))
        .collect::<Result<Vec<_>>>()?;
    let solve_all = |n: usize| -> Result<()> {
        std::thread::scope(|scope| {
            let handles: Vec<_> = samplers
                .iter()
                .enumerate()
                .map(|(index, s)| {
                    let rows = crate::shard::weighted_rows(n, weights, index);
                    let solve = &solve;
                    scope.spawn(move || s.sample_rows_into(rows, 0, solve, &mut |_| Ok(())))
                })
                .collect();
            for h in handles {
                h.join()
                    .map_err(|_| Error::Gpu("an adapter's thread failed".into()))??;
            }
            Ok(())
        })
    };
    solve_all(n.min(256 * ctxs.len()))?;
    let nfe = cfg.steps * stages;
    let flops = (mlp.flops_per_sample() * n as u64) as f64 * nfe as f64;
    let timing = SolveTiming::time(cfg, 2, flops, nfe, n, || solve_all(n))?;
    let sg = SgemmCache {
        min_time: cfg.min_time.min(1.0),
        at_shape: Default::default(),
    }
    .at(&ctxs[0], n.min(65536), mlp.width)?;
    Ok(BenchRecord {
        peak_buffer_bytes: ctxs.iter().map(|c| c.allocated_bytes()).sum(),
        ..timing.record(base, sg)
    })
}
