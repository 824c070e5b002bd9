//! Conditional flow matching training on the GPU.
//!
//! One step, as recorded into the encoder: `cfm_prepare` draws x1, t and ε on the GPU and
//! writes the MLP inputs and targets → `linear_forward` per layer → `cfm_loss` (with the
//! batch loss) → backward per layer into the flat gradient buffer → `grad_sq_partial`
//! (when clipping) → `adam_update`. Small models on 8-lane-subgroup adapters take the fused
//! step instead: `cfm_step_subgroup` (draw, forward, loss, backward into one gradient slot
//! per row group) → `grad_sq_partial` (when clipping) → `adam_update` (adds the slots and
//! writes the batch loss). `steps_per_submit` steps share one encoder and one submit; the host
//! writes their learning rates into uniform slots before the submit and reads the loss
//! history back only every `log_every` steps.

use crate::error::{Error, Result};
use crate::gpu::{GpuContext, UniformArena};
use crate::kernels::{adam, cfm, ot, Entry, Tiles};
use crate::mlp::{CfmBuffers, FusedCfmPass, GpuMlp, MlpPass, PassOptions};
use crate::model::{MlpConfig, Weights};
use crate::path::{GaussianPath, Prediction};
use std::sync::atomic::{AtomicBool, Ordering};

pub mod parallel;
pub mod run;
pub use run::{NewRun, Run, RunConfig, RunPlan};

/// How source and data points of a batch are paired.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Coupling {
    /// Independent draws (or the given pairs with `paired`).
    #[default]
    Independent,
    /// Minibatch entropic OT: log-domain Sinkhorn on the GPU with ε = reg · mean cost,
    /// `iters` iterations, then each source point's partner drawn from its plan row.
    Sinkhorn { reg: f64, iters: usize },
}

/// Optimizer and schedule settings of a run.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TrainConfig {
    /// Total optimizer steps of the run.
    pub steps: u64,
    pub batch: usize,
    pub lr: f64,
    pub weight_decay: f64,
    /// Linear warm-up steps, then cosine decay to 0 at `steps` (or constant if !cosine).
    pub warmup: u64,
    pub cosine: bool,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    /// Global gradient-norm clip (≤ 0: off).
    pub clip_norm: f64,
    /// EMA decay of the weights (None: no EMA; sampling uses the raw weights).
    pub ema: Option<f64>,
    pub seed: u64,
    /// Steps recorded per submit.
    pub steps_per_submit: usize,
    /// Steps between loss readbacks (a multiple of steps_per_submit).
    pub log_every: usize,
    /// Paired coupling: source row i goes with data row i (needs a source pool of the same
    /// length as the data), instead of independent draws.
    #[serde(default)]
    pub paired: bool,
    /// Class-conditional models: probability of dropping a row's label (the unconditional
    /// field that classifier-free guidance needs).
    #[serde(default = "default_label_dropout")]
    pub label_dropout: f64,
    /// Pairing of source and data points within a batch.
    #[serde(default)]
    pub coupling: Coupling,
    /// Maximum-likelihood objective with the adjoint method instead of flow matching.
    #[serde(default)]
    pub mle: Option<crate::mle::MleConfig>,
}

fn default_label_dropout() -> f64 {
    0.1
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            steps: 5000,
            batch: 256,
            lr: 1e-3,
            weight_decay: 0.0,
            warmup: 100,
            cosine: true,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            clip_norm: 1.0,
            ema: None,
            seed: 0,
            steps_per_submit: 10,
            log_every: 100,
            paired: false,
            label_dropout: 0.1,
            coupling: Coupling::Independent,
            mle: None,
        }
    }
}

/// Most training steps recorded in one submit.
pub const MAX_STEPS_PER_SUBMIT: usize = 1000;
/// Most steps between two loss readbacks.
pub const MAX_LOG_EVERY: usize = 1 << 20;

impl TrainConfig {
    pub fn validate(&self) -> Result<()> {
        let pos = |name: &str, ok: bool| {
            if ok {
                Ok(())
            } else {
                Err(Error::invalid(format!("{name} must be positive")))
            }
        };
        pos("--steps", self.steps > 0)?;
        pos("--batch", self.batch > 0)?;
        pos("--lr", self.lr > 0.0 && self.lr.is_finite())?;
        pos("--steps-per-submit", self.steps_per_submit > 0)?;
        pos("--log-every", self.log_every > 0)?;
        // Each step recorded in a submit takes uniform slots, and each logged step a float
        // of the loss history: keep both well inside one buffer.
        if self.steps_per_submit > MAX_STEPS_PER_SUBMIT || self.log_every > MAX_LOG_EVERY {
            return Err(Error::invalid(format!(
                "--steps-per-submit must be at most {MAX_STEPS_PER_SUBMIT} and --log-every at most {MAX_LOG_EVERY}"
            )));
        }
        if !(self.weight_decay >= 0.0 && self.weight_decay.is_finite()) {
            return Err(Error::invalid("--weight-decay must be ≥ 0"));
        }
        if let Coupling::Sinkhorn { reg, iters } = self.coupling {
            if !(reg > 0.0 && reg.is_finite()) || iters == 0 {
                return Err(Error::invalid("--ot-reg and --ot-iters must be positive"));
            }
            if self.paired {
                return Err(Error::invalid(
                    "--paired and an OT coupling exclude each other",
                ));
            }
        }
        if let Some(m) = &self.mle {
            m.validate()?;
            if self.paired || self.coupling != Coupling::Independent {
                return Err(Error::invalid(
                    "--objective mle trains on data alone: no --paired or --coupling",
                ));
            }
        }
        if let Some(d) = self.ema {
            if !(0.0..1.0).contains(&d) {
                return Err(Error::invalid("--ema must be in [0, 1)"));
            }
        }
        if self.batch > u32::MAX as usize / 4 {
            return Err(Error::invalid("--batch is too large"));
        }
        Ok(())
    }

    /// EMA decay at 0-based step `s`: the configured decay, warmed up as (1 + s)/(10 + s)
    /// (the usual schedule of an exponential moving average of weights): a constant 0.999
    /// from the first step would keep the initialization in the average for thousands of
    /// steps, and the saved model of a short run would be mostly untrained.
    pub fn ema_decay_at(&self, s: u64) -> f64 {
        self.ema
            .map_or(0.0, |d| d.min((1.0 + s as f64) / (10.0 + s as f64)))
    }

    /// Learning rate at 0-based step `s`: linear warm-up, then cosine decay to 0.
    pub fn lr_at(&self, s: u64) -> f64 {
        if s < self.warmup {
            return self.lr * (s + 1) as f64 / self.warmup as f64;
        }
        if !self.cosine {
            return self.lr;
        }
        let span = (self.steps.saturating_sub(self.warmup)).max(1) as f64;
        let progress = ((s - self.warmup) as f64 / span).min(1.0);
        self.lr * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
    }
}

/// The GPU state of a training run.
pub struct Trainer {
    pub cfg: TrainConfig,
    pub mlp: GpuMlp,
    pub path: GaussianPath,
    /// Steps done so far.
    pub step: u64,
    /// Step up to which losses were read back.
    last_read: u64,
    /// The median |loss| of the first readback: the scale divergence is judged against.
    loss_scale: Option<f64>,
    step_mlp: StepMlp,
    /// The gradient; with the fused step, its partial slots (adam adds them up).
    grads: wgpu::Buffer,
    moments: wgpu::Buffer,
    ema: wgpu::Buffer,
    /// Per-step loss, `log_every` slots, read back every `log_every` steps.
    loss_history: wgpu::Buffer,
    /// Slots [0, K) hold each step's CfmParams, [K, 2K) its AdamParams.
    arena: UniformArena,
    cfm_base: cfm::CfmParams,
    adam_base: adam::AdamParams,
    kernels: StepKernels,
    tiles: Tiles,
    // Kept alive for the bind groups.
    data: wgpu::Buffer,
    _target: wgpu::Buffer,
    _sample_loss: wgpu::Buffer,
    _partials: wgpu::Buffer,
    _source: wgpu::Buffer,
    _labels: wgpu::Buffer,
    ot: Option<OtState>,
    mle: Option<crate::mle::MleState>,
    /// Data parallelism: the other adapters' trainers, each with a share of the batch
    /// (this one holds the first share and the optimizer).
    replicas: Vec<parallel::Replica>,
    /// Data parallelism: the host-mappable buffer every step's readbacks go through.
    readback: Option<wgpu::Buffer>,
}

/// How a flow-matching step runs the MLP.
enum StepMlp {
    /// Per-layer kernels (any adapter) with cfm_loss between forward and backward.
    Layers {
        pass: Box<MlpPass>,
        loss: Entry<cfm::Loss>,
        g_loss: wgpu::BindGroup,
    },
    /// One dispatch for forward, loss and backward (small models, 8-lane subgroups); adam
    /// adds its gradient slots and writes the loss.
    Fused(FusedCfmPass),
}

/// GPU state of the minibatch-OT coupling.
struct OtState {
    base: ot::OtParams,
    iters: usize,
    draw: Entry<ot::Draw>,
    scale: Entry<ot::Solve>,
    sink_f: Entry<ot::Solve>,
    sink_g: Entry<ot::Solve>,
    sample: Entry<ot::Solve>,
    g_draw: wgpu::BindGroup,
    g_solve: wgpu::BindGroup,
    /// x0, x1, f, g, pairs and ε, kept for tests and alive for the bind groups.
    buffers: Vec<wgpu::Buffer>,
}

/// The host pools a trainer draws from (model units), row-major with the model's dim.
#[derive(Clone, Copy, Debug)]
pub struct Pools<'a> {
    /// Data rows x1.
    pub data: &'a [f32],
    /// Source rows x0 (None: x0 ~ N(0, I)).
    pub source: Option<&'a [f32]>,
    /// One class label per data row (class-conditional models).
    pub labels: Option<&'a [u32]>,
}

impl Pools<'_> {
    fn rows(&self, d: usize) -> usize {
        self.data.len() / d
    }
    fn source_rows(&self, d: usize) -> usize {
        self.source.map_or(0, |s| s.len() / d)
    }

    /// Shapes that fit the model, labels in range, and what the objective needs.
    fn validate(&self, mlp_cfg: &MlpConfig, cfg: &TrainConfig) -> Result<()> {
        let d = mlp_cfg.dim;
        if self.data.is_empty() || !self.data.len().is_multiple_of(d) {
            return Err(Error::invalid(format!(
                "training data must be a non-empty [n, {d}] array"
            )));
        }
        if let Some(s) = self.source {
            if s.is_empty() || !s.len().is_multiple_of(d) {
                return Err(Error::invalid(format!(
                    "the source must be a non-empty [n, {d}] array"
                )));
            }
        }
        if cfg.paired && self.source.map(|s| s.len()) != Some(self.data.len()) {
            return Err(Error::invalid(
                "a paired coupling needs a source with as many rows as the data",
            ));
        }
        if cfg.mle.is_some() && self.source.is_some() {
            return Err(Error::invalid(
                "--objective mle needs the Gaussian source (a density); drop --source",
            ));
        }
        let c = mlp_cfg.classes;
        match self.labels {
            None if c == 0 => Ok(()),
            Some(l) if c > 0 && l.len() == self.rows(d) && l.iter().all(|&v| (v as usize) < c) => {
                Ok(())
            }
            _ => Err(Error::invalid(format!(
                "a model with {c} classes needs one label in 0..{c} per data row"
            ))),
        }
    }
}

/// The per-sample and per-step loss buffers of a training step.
struct LossBuffers<'a> {
    sample: &'a wgpu::Buffer,
    history: &'a wgpu::Buffer,
}

impl StepMlp {
    /// The per-layer step: an MLP pass with gradients, and cfm_loss between its forward
    /// and backward.
    fn layers(
        ctx: &GpuContext,
        mlp: &GpuMlp,
        cfg: &TrainConfig,
        arena: &UniformArena,
        grads: &wgpu::Buffer,
        target: &wgpu::Buffer,
        losses: LossBuffers,
    ) -> Result<StepMlp> {
        let pass = MlpPass::new(
            ctx,
            mlp,
            cfg.batch,
            PassOptions {
                grads: Some(grads),
                ..Default::default()
            },
        )?;
        let loss = cfm::cfm_loss(ctx)?;
        let g_loss = loss.bind(
            ctx,
            arena,
            &cfm::LossBindings {
                target_u: target,
                v: pass.output(),
                grad_v: pass.dz.last().expect("a training pass has dz"),
                sample_loss: losses.sample,
                loss_history: losses.history,
            },
        );
        Ok(StepMlp::Layers {
            pass: Box::new(pass),
            loss,
            g_loss,
        })
    }
}

/// The optimizer's buffers: gradient, norm partials, parameters, moments, EMA.
struct StepState<'a> {
    grads: &'a wgpu::Buffer,
    partials: &'a wgpu::Buffer,
    params: &'a wgpu::Buffer,
    moments: &'a wgpu::Buffer,
    ema: &'a wgpu::Buffer,
}

/// The kernels every flow-matching step runs around the MLP, bound to the trainer's
/// buffers: the batch draw, the loss reduction (MLE) and the optimizer.
struct StepKernels {
    prepare: Entry<cfm::Prepare>,
    reduce: Entry<cfm::Reduce>,
    grad_sq: Entry<adam::GradSq>,
    update: Entry<adam::Update>,
    g_prepare: wgpu::BindGroup,
    g_reduce: wgpu::BindGroup,
    g_grad_sq: wgpu::BindGroup,
    g_update: wgpu::BindGroup,
}

impl StepKernels {
    fn new(
        ctx: &GpuContext,
        arena: &UniformArena,
        cfg: &TrainConfig,
        bufs: &CfmBuffers,
        input: &wgpu::Buffer,
        opt: StepState,
        losses: LossBuffers,
    ) -> Result<StepKernels> {
        let prepare = cfm::cfm_prepare(ctx)?;
        let reduce = cfm::loss_reduce(ctx)?;
        let grad_sq = adam::grad_sq_partial(ctx)?;
        let update = adam::adam_update(ctx, cfg.clip_norm > 0.0)?;
        let g_prepare = prepare.bind(
            ctx,
            arena,
            &cfm::PrepareBindings {
                data: bufs.data,
                input,
                target_u: bufs.target,
                source: bufs.source,
                labels: bufs.labels,
                pairs: bufs.pairs,
            },
        );
        let g_reduce = reduce.bind(
            ctx,
            arena,
            &cfm::ReduceBindings {
                sample_loss: losses.sample,
                loss_history: losses.history,
            },
        );
        let g_grad_sq = grad_sq.bind(
            ctx,
            arena,
            &adam::GradSqBindings {
                grads: opt.grads,
                partials: opt.partials,
            },
        );
        let g_update = update.bind(
            ctx,
            arena,
            &adam::UpdateBindings {
                grads: opt.grads,
                partials: opt.partials,
                params: opt.params,
                moments: opt.moments,
                ema: opt.ema,
                loss_history: losses.history,
            },
        );
        Ok(StepKernels {
            prepare,
            reduce,
            grad_sq,
            update,
            g_prepare,
            g_reduce,
            g_grad_sq,
            g_update,
        })
    }
}

/// A pool the GPU can bind whole; a larger one is refused with the way out.
fn fits_binding(ctx: &GpuContext, what: &str, pool: &[f32]) -> Result<()> {
    let (bytes, limit) = (
        pool.len() as u64 * 4,
        ctx.limits.max_storage_buffer_binding_size,
    );
    if bytes <= limit {
        return Ok(());
    }
    let mib = |b: u64| b as f64 / (1u64 << 20) as f64;
    Err(Error::invalid(format!(
        "the {what} takes {:.0} MiB, more than the {:.0} MiB this adapter binds at once; stream the data file with --stream-pool {:.0} (docs/scale.md)",
        mib(bytes),
        mib(limit),
        (mib(limit) / 2.0).floor()
    )))
}

/// The median of |l| over `losses` (0 for none).
fn median_abs(losses: &[f32]) -> f64 {
    let mut v: Vec<f64> = losses.iter().map(|l| l.abs() as f64).collect();
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

/// The VE SDE's source is N(0, σ_max²·I), which its flow-matching targets build in: it takes
/// neither a source pool (sampling would start from the pool unscaled) nor maximum
/// likelihood (whose base density is N(0, I)).
fn check_source_scale(path: &GaussianPath, pools: &Pools, cfg: &TrainConfig) -> Result<()> {
    if path.source_scale() == 1.0 {
        return Ok(());
    }
    if pools.source.is_some() {
        return Err(Error::invalid(format!(
            "the {} path's source is N(0, σ_max²·I); drop --source",
            path.name()
        )));
    }
    if cfg.mle.is_some() {
        return Err(Error::invalid(format!(
            "--objective mle trains against an N(0, I) source; the {} path's is N(0, σ_max²·I): train it by flow matching",
            path.name()
        )));
    }
    Ok(())
}

/// cfm.wgsl's fixed parameters of a run (the step and its loss slot are set per step).
fn cfm_params(
    cfg: &TrainConfig,
    mlp: &GpuMlp,
    path: GaussianPath,
    pools: &Pools,
) -> cfm::CfmParams {
    let d = mlp.cfg.dim;
    cfm::CfmParams {
        batch: cfg.batch as u32,
        dim: d as u32,
        n_data: pools.rows(d) as u32,
        in_stride: mlp.layout.layers[0].in_pad as u32,
        out_stride: MlpPass::out_stride(&mlp.cfg) as u32,
        time_cols: mlp.cfg.time_cols() as u32,
        path: path.gpu_code(),
        path_param: path.gpu_params()[0],
        path_param2: path.gpu_params()[1],
        n_source: pools.source_rows(d) as u32,
        paired: cfg.paired as u32,
        n_classes: mlp.cfg.classes as u32,
        label_dropout: cfg.label_dropout as f32,
        coupled: matches!(cfg.coupling, Coupling::Sinkhorn { .. }) as u32,
        seed: cfg.seed as u32,
        mean_rows: cfg.batch as u32,
        ..Default::default()
    }
}

/// AdamW's fixed parameters (the step's learning rate and bias corrections are set per
/// step); with the fused step it adds the gradient slots and writes the batch loss.
fn adam_params(cfg: &TrainConfig, n: usize, n_partials: usize, step: &StepMlp) -> adam::AdamParams {
    let base = adam::AdamParams {
        n: n as u32,
        n_partials: n_partials as u32,
        use_ema: cfg.ema.is_some() as u32,
        beta1: cfg.beta1 as f32,
        beta2: cfg.beta2 as f32,
        eps: cfg.eps as f32,
        weight_decay: cfg.weight_decay as f32,
        clip_norm: cfg.clip_norm as f32,
        ema_decay: cfg.ema.unwrap_or(0.0) as f32,
        ..Default::default()
    };
    match step {
        StepMlp::Fused(f) => adam::AdamParams {
            grad_parts: f.groups as u32,
            part_vec4: (f.slot_len / 4) as u32,
            loss_rows: cfg.batch as u32,
            ..base
        },
        StepMlp::Layers { .. } => base,
    }
}

impl OtState {
    /// The coupling's state, if the run couples its batches by minibatch OT.
    fn for_coupling(
        ctx: &GpuContext,
        arena: &UniformArena,
        bufs: &CfmBuffers,
        cfg: &TrainConfig,
        pools: &Pools,
        d: usize,
    ) -> Result<Option<OtState>> {
        let Coupling::Sinkhorn { reg, iters } = cfg.coupling else {
            return Ok(None);
        };
        let base = ot::OtParams {
            batch: cfg.batch as u32,
            dim: d as u32,
            n_data: pools.rows(d) as u32,
            n_source: pools.source_rows(d) as u32,
            seed: cfg.seed as u32,
            step: 0,
            reg: reg as f32,
            _pad: 0,
        };
        OtState::new(ctx, arena, bufs, base, iters).map(Some)
    }

    /// The Sinkhorn kernels bound to the pools and their own buffers.
    fn new(
        ctx: &GpuContext,
        arena: &UniformArena,
        bufs: &CfmBuffers,
        base: ot::OtParams,
        iters: usize,
    ) -> Result<OtState> {
        let (b, d) = (base.batch as usize, base.dim as usize);
        let x0 = ctx.storage("ot x0", b * d)?;
        let x1 = ctx.storage("ot x1", b * d)?;
        let f = ctx.storage("ot f", b)?;
        let g = ctx.storage("ot g", b)?;
        let eps = ctx.storage("ot eps", 1)?;
        let draw = ot::ot_draw(ctx)?;
        let scale = ot::ot_scale(ctx)?;
        let g_draw = draw.bind(
            ctx,
            arena,
            &ot::DrawBindings {
                data: bufs.data,
                source: bufs.source,
                x0: &x0,
                x1: &x1,
                f: &f,
                g: &g,
            },
        );
        let g_solve = scale.bind(
            ctx,
            arena,
            &ot::SolveBindings {
                x0: &x0,
                x1: &x1,
                f: &f,
                g: &g,
                pairs: bufs.pairs,
                eps: &eps,
            },
        );
        Ok(OtState {
            base,
            iters,
            draw,
            scale,
            sink_f: ot::sinkhorn_f(ctx)?,
            sink_g: ot::sinkhorn_g(ctx)?,
            sample: ot::sample_pairs(ctx)?,
            g_draw,
            g_solve,
            buffers: vec![x0, x1, f, g, bufs.pairs.clone(), eps],
        })
    }
}

impl Trainer {
    /// Upload the (already standardized) data pool and the initial weights; x0 ~ N(0, I).
    /// Train the network to output `predict` instead of the velocity (the targets and,
    /// for the score, the loss weight change; nothing else does).
    pub fn set_prediction(&mut self, predict: Prediction) -> Result<()> {
        predict.check(&self.path)?;
        if predict != Prediction::Velocity && self.cfg.mle.is_some() {
            return Err(Error::invalid(format!(
                "--predict {} trains by flow matching; --objective mle trains the velocity",
                predict.name()
            )));
        }
        let gaussian_source = self.cfm_base.n_source == 0;
        if matches!(predict, Prediction::Noise | Prediction::Score) && !gaussian_source {
            return Err(Error::invalid(format!(
                "--predict {} needs the Gaussian source (its noise and score); drop --source",
                predict.name()
            )));
        }
        self.cfm_base.predict = predict.gpu_code();
        Ok(())
    }

    pub fn new(
        ctx: &GpuContext,
        mlp_cfg: &MlpConfig,
        path: GaussianPath,
        weights: &Weights,
        data: &[f32],
        cfg: &TrainConfig,
    ) -> Result<Self> {
        let pools = Pools {
            data,
            source: None,
            labels: None,
        };
        Self::with_source(ctx, mlp_cfg, path, weights, pools, cfg)
    }

    /// As [`new`](Self::new), with x0 drawn from a source pool (model units) if given, and
    /// one class label per data row for class-conditional models (mlp_cfg.classes > 0).
    pub fn with_source(
        ctx: &GpuContext,
        mlp_cfg: &MlpConfig,
        path: GaussianPath,
        weights: &Weights,
        pools: Pools,
        cfg: &TrainConfig,
    ) -> Result<Self> {
        cfg.validate()?;
        mlp_cfg.validate()?;
        pools.validate(mlp_cfg, cfg)?;
        check_source_scale(&path, &pools, cfg)?;
        let d = mlp_cfg.dim;
        let mut cfg = cfg.clone();
        cfg.log_every = cfg.log_every.div_ceil(cfg.steps_per_submit) * cfg.steps_per_submit;
        let mlp = GpuMlp::new(ctx, mlp_cfg, weights)?;
        let n = mlp.layout.total;
        let fused = cfg.mle.is_none() && FusedCfmPass::suits(ctx, &mlp.layout, cfg.batch);
        let grads = if fused {
            let slots = FusedCfmPass::groups_for(cfg.batch);
            ctx.storage("grad slots", slots * FusedCfmPass::slot_len(&mlp.layout))?
        } else {
            ctx.storage("grads", n)?
        };
        fits_binding(ctx, "training data", pools.data)?;
        fits_binding(ctx, "source", pools.source.unwrap_or(&[]))?;
        let data_buf = ctx.storage_from("data pool", pools.data)?;
        let source_buf = ctx.storage_from("source pool", pools.source.unwrap_or(&[]))?;
        let labels = bytemuck::cast_slice(pools.labels.unwrap_or(&[]));
        let label_buf = ctx.storage_from("labels", labels)?;
        let pairs_buf = ctx.storage("ot pairs", cfg.batch)?;
        let out_stride = MlpPass::out_stride(mlp_cfg);
        let target = ctx.storage("cfm target", cfg.batch * out_stride)?;
        let sample_loss = ctx.storage("per-sample loss", cfg.batch)?;
        let loss_history = ctx.storage("loss history", cfg.log_every)?;
        let n_partials = adam::n_partials(n, &ctx.tiles);
        let partials = ctx.storage("grad norm partials", n_partials)?;
        let moments = ctx.storage("adam moments", 2 * n)?;
        let ema = ctx.storage_from("ema", &weights.pack(&mlp.layout))?;
        let k = cfg.steps_per_submit;
        let arena = UniformArena::new(ctx, "train step params", 3 * k);
        let bufs = CfmBuffers {
            data: &data_buf,
            target: &target,
            source: &source_buf,
            labels: &label_buf,
            pairs: &pairs_buf,
        };
        let step_mlp = if fused {
            StepMlp::Fused(FusedCfmPass::new(
                ctx, &mlp, cfg.batch, &arena, &bufs, &grads,
            )?)
        } else {
            let losses = LossBuffers {
                sample: &sample_loss,
                history: &loss_history,
            };
            StepMlp::layers(ctx, &mlp, &cfg, &arena, &grads, &target, losses)?
        };
        let input = match &step_mlp {
            StepMlp::Layers { pass, .. } => &pass.input,
            // Unused: the fused kernel draws its rows itself.
            StepMlp::Fused(f) => &f.input,
        };
        let kernels = StepKernels::new(
            ctx,
            &arena,
            &cfg,
            &bufs,
            input,
            StepState {
                grads: &grads,
                partials: &partials,
                params: &mlp.params,
                moments: &moments,
                ema: &ema,
            },
            LossBuffers {
                sample: &sample_loss,
                history: &loss_history,
            },
        )?;
        let cfm_base = cfm_params(&cfg, &mlp, path, &pools);
        let adam_base = adam_params(&cfg, n, n_partials, &step_mlp);
        let ot_state = OtState::for_coupling(ctx, &arena, &bufs, &cfg, &pools, d)?;
        let mle = match &cfg.mle {
            Some(m) => {
                let link = crate::mle::MleLink {
                    batch: cfg.batch,
                    data: &data_buf,
                    n_data: pools.rows(d),
                    sample_loss: &sample_loss,
                    grads: &grads,
                    steps_per_submit: k,
                    seed: cfg.seed,
                };
                Some(crate::mle::MleState::new(ctx, &mlp, m, link)?)
            }
            None => None,
        };
        Ok(Trainer {
            cfg,
            mlp,
            path,
            step: 0,
            last_read: 0,
            loss_scale: None,
            step_mlp,
            grads,
            moments,
            ema,
            loss_history,
            arena,
            cfm_base,
            adam_base,
            kernels,
            tiles: ctx.tiles,
            data: data_buf,
            _target: target,
            _sample_loss: sample_loss,
            _partials: partials,
            _source: source_buf,
            _labels: label_buf,
            ot: ot_state,
            mle,
            replicas: Vec::new(),
            readback: None,
        })
    }

    /// Record and submit the next `n` (≤ steps_per_submit) steps: one encoder, one submit,
    /// no readback.
    pub fn run_steps(&mut self, ctx: &GpuContext, n: usize) -> Result<()> {
        let k = self.cfg.steps_per_submit;
        assert!(n <= k);
        if !self.replicas.is_empty() {
            return self.run_parallel_steps(ctx, n);
        }
        for i in 0..n {
            let s = self.step + i as u64; // 0-based
            self.arena.set(i, &self.cfm_step_params(s));
            self.arena.set(k + i, &self.adam_step_params(s));
            if let Some(m) = &mut self.mle {
                m.set_step(i, s);
            }
            if let Some(o) = &self.ot {
                self.arena.set(
                    2 * k + i,
                    &ot::OtParams {
                        step: s as u32,
                        ..o.base
                    },
                );
            }
        }
        self.arena.upload(ctx, 0..3 * k);
        if let Some(m) = &self.mle {
            m.upload_steps(ctx, n);
        }
        if self.mle.as_ref().is_some_and(|m| m.adaptive()) {
            // dopri5 MLE: each step's solves submit on their own, then its update.
            for i in 0..n {
                let step = self.step + i as u64;
                if let Some(m) = self.mle.as_mut() {
                    m.run_adaptive_step(ctx, step)?;
                }
                let mut enc = ctx.device.create_command_encoder(&Default::default());
                {
                    let mut pass = enc.begin_compute_pass(&Default::default());
                    self.record_update(&mut pass, i);
                }
                ctx.submit(enc)?;
            }
            self.step += n as u64;
            return Ok(());
        }
        let mut enc = ctx.device.create_command_encoder(&Default::default());
        {
            let mut pass = enc.begin_compute_pass(&Default::default());
            for i in 0..n {
                if let Some(m) = &self.mle {
                    m.record_step(&mut pass, i);
                } else {
                    self.record_coupling(&mut pass, 2 * k + i);
                    self.record_gradient(&mut pass, i);
                }
                self.record_update(&mut pass, i);
            }
        }
        ctx.submit(enc)?;
        self.step += n as u64;
        Ok(())
    }

    /// cfm.wgsl's parameters of step `s` (0-based).
    fn cfm_step_params(&self, s: u64) -> cfm::CfmParams {
        cfm::CfmParams {
            step: s as u32,
            loss_slot: (s % self.cfg.log_every as u64) as u32,
            ..self.cfm_base
        }
    }

    /// AdamW's parameters of step `s` (0-based): its learning rate and bias corrections.
    fn adam_step_params(&self, s: u64) -> adam::AdamParams {
        let t = (s + 1) as i32;
        adam::AdamParams {
            step: t as u32,
            lr: self.cfg.lr_at(s.min(self.cfg.steps.saturating_sub(1))) as f32,
            bias_corr1: (1.0 - self.cfg.beta1.powi(t)) as f32,
            bias_corr2: (1.0 - self.cfg.beta2.powi(t)) as f32,
            ema_decay: self.cfg.ema_decay_at(s) as f32,
            loss_slot: (s % self.cfg.log_every as u64) as u32,
            ..self.adam_base
        }
    }

    /// A flow-matching step's loss and gradient with the CfmParams of arena slot `i`:
    /// draw, forward, loss, backward (or the one fused dispatch).
    fn record_gradient(&self, pass: &mut wgpu::ComputePass<'_>, i: usize) {
        match &self.step_mlp {
            StepMlp::Layers {
                pass: p,
                loss,
                g_loss,
            } => {
                let per_sample = cfm::per_sample_groups(&self.cfm_base, &self.tiles);
                self.kernels
                    .prepare
                    .dispatch(pass, &self.kernels.g_prepare, i, per_sample);
                p.record_forward(pass);
                // Also writes this step's batch loss (no loss_reduce).
                loss.dispatch(pass, g_loss, i, [1, 1, 1]);
                p.record_backward(pass);
            }
            // Draws its rows itself; adam_update adds up its loss and gradient slots.
            StepMlp::Fused(f) => f.record(pass, i),
        }
    }

    /// The MLE loss of step slot `i` into the history (cfm_loss, or with the fused step
    /// adam_update, writes the flow-matching one), then the optimizer update.
    fn record_update(&self, pass: &mut wgpu::ComputePass<'_>, i: usize) {
        let k = self.cfg.steps_per_submit;
        if self.mle.is_some() {
            self.kernels
                .reduce
                .dispatch(pass, &self.kernels.g_reduce, i, [1, 1, 1]);
        }
        // The gradient norm only serves clipping: without it, one dispatch less.
        if self.cfg.clip_norm > 0.0 {
            self.kernels.grad_sq.dispatch(
                pass,
                &self.kernels.g_grad_sq,
                k + i,
                adam::grad_sq_groups(&self.adam_base, &self.tiles),
            );
        }
        self.kernels.update.dispatch(
            pass,
            &self.kernels.g_update,
            k + i,
            adam::update_groups(&self.adam_base, &self.tiles),
        );
    }

    /// Losses of the last `n` steps (n ≤ log_every, all within the current history window).
    pub fn recent_losses(&self, ctx: &GpuContext, n: usize) -> Result<Vec<f32>> {
        let h = self.cfg.log_every as u64;
        let end = self.step;
        let start = end - n as u64;
        let all = ctx.read(&self.loss_history, 0, h as usize)?;
        Ok((start..end).map(|s| all[(s % h) as usize]).collect())
    }

    /// Current weights (the raw ones, or the EMA if enabled and `ema` is true).
    pub fn weights(&self, ctx: &GpuContext, ema: bool) -> Result<Weights> {
        let buf = if ema && self.cfg.ema.is_some() {
            &self.ema
        } else {
            &self.mlp.params
        };
        Ok(Weights::unpack(
            &ctx.read(buf, 0, self.mlp.layout.total)?,
            &self.mlp.layout,
        ))
    }

    /// How a flow-matching step runs: "fused" (`cfm_step_subgroup.wgsl`) or "layers".
    pub fn step_kind(&self) -> &'static str {
        match self.step_mlp {
            StepMlp::Fused(_) => "fused",
            StepMlp::Layers { .. } => "layers",
        }
    }

    /// The maximum-likelihood state, when training by `--objective mle`.
    pub fn mle(&self) -> Option<&crate::mle::MleState> {
        self.mle.as_ref()
    }

    /// The flat gradient buffer of the last step (tests).
    pub fn grads(&self, ctx: &GpuContext) -> Result<Vec<f32>> {
        let n = self.mlp.layout.total;
        let StepMlp::Fused(f) = &self.step_mlp else {
            return ctx.read(&self.grads, 0, n);
        };
        // The fused step's slots, added in adam.wgsl's order.
        ctx.read_slot_sum(&self.grads, f.groups, f.slot_len, n)
    }

    /// Record and submit `n` coupling solves alone (benchmarks): draw, Sinkhorn, pairs.
    pub fn run_coupling(&mut self, ctx: &GpuContext, n: usize) -> Result<()> {
        let Some(o) = &self.ot else {
            return Err(Error::invalid("this trainer has no OT coupling"));
        };
        let k = self.cfg.steps_per_submit;
        self.arena.set(
            2 * k,
            &ot::OtParams {
                step: self.step as u32,
                ..o.base
            },
        );
        self.arena.upload(ctx, 2 * k..2 * k + 1);
        let mut enc = ctx.device.create_command_encoder(&Default::default());
        {
            let mut pass = enc.begin_compute_pass(&Default::default());
            for _ in 0..n {
                self.record_coupling(&mut pass, 2 * k);
            }
        }
        ctx.submit(enc)
    }

    fn record_coupling(&self, pass: &mut wgpu::ComputePass<'_>, slot: usize) {
        if let Some(o) = &self.ot {
            let threads = ot::per_row_threads(&o.base, &self.tiles);
            let small = ot::per_row_small(&o.base, &self.tiles);
            o.draw.dispatch(pass, &o.g_draw, slot, threads);
            o.scale.dispatch(pass, &o.g_solve, slot, [1, 1, 1]);
            for _ in 0..o.iters {
                o.sink_f.dispatch(pass, &o.g_solve, slot, small);
                o.sink_g.dispatch(pass, &o.g_solve, slot, small);
            }
            o.sample.dispatch(pass, &o.g_solve, slot, small);
        }
    }

    /// The last step's OT state (x0, x1, f, g, pairs as f32 bits, ε), for tests.
    pub fn ot_state(&self, ctx: &GpuContext) -> Result<Option<[Vec<f32>; 6]>> {
        let Some(o) = &self.ot else { return Ok(None) };
        let (b, d) = (self.cfg.batch, self.mlp.cfg.dim);
        let sizes = [b * d, b * d, b, b, b, 1];
        let mut out: Vec<Vec<f32>> = Vec::new();
        for (buf, n) in o.buffers.iter().zip(sizes) {
            out.push(ctx.read(buf, 0, n)?);
        }
        Ok(Some(
            out.try_into().map_err(|_| Error::invalid("ot state"))?,
        ))
    }

    /// Adam's first and second moments, flat (tests, checkpoints).
    pub fn moments(&self, ctx: &GpuContext) -> Result<Vec<f32>> {
        ctx.read(&self.moments, 0, 2 * self.mlp.layout.total)
    }

    /// Run until step `target` (≤ cfg.steps) or until `stop` is set (checked between
    /// submits, so the steps already recorded finish). Losses are read back every
    /// `log_every` steps and when the call returns, and passed to `on_log(step, losses)`.
    /// A non-finite loss is an error naming its step. Returns true if stopped early.
    pub fn run_until(
        &mut self,
        ctx: &GpuContext,
        target: u64,
        stop: &AtomicBool,
        mut on_log: impl FnMut(u64, &[f32]) -> Result<()>,
    ) -> Result<bool> {
        let target = target.min(self.cfg.steps);
        let k = self.cfg.steps_per_submit as u64;
        let h = self.cfg.log_every as u64;
        let mut stopped = false;
        while self.step < target {
            let window_end = ((self.step / h) + 1) * h;
            let n = k.min(target - self.step).min(window_end - self.step);
            self.run_steps(ctx, n as usize)?;
            stopped = stop.load(Ordering::SeqCst);
            if self.step.is_multiple_of(h) || self.step == target || stopped {
                self.read_losses(ctx, &mut on_log)?;
            }
            if stopped {
                break;
            }
        }
        Ok(stopped && self.step < self.cfg.steps)
    }

    fn read_losses(
        &mut self,
        ctx: &GpuContext,
        on_log: &mut impl FnMut(u64, &[f32]) -> Result<()>,
    ) -> Result<()> {
        let since = (self.step - self.last_read) as usize;
        if since == 0 {
            return Ok(());
        }
        let losses = self.recent_losses(ctx, since)?;
        let scale = *self.loss_scale.get_or_insert_with(|| median_abs(&losses));
        // Diverged: not finite, or a million times the scale of the first losses read
        // (an exploding run would otherwise end "successfully" with a loss of 1e25).
        let diverged = |l: f32| !l.is_finite() || (l.abs() as f64) > 1e6 * (1.0 + scale);
        if let Some((i, l)) = losses.iter().enumerate().find(|(_, l)| diverged(**l)) {
            let at = self.last_read + i as u64 + 1;
            return Err(Error::Diverged(format!(
                "the loss became {l} at step {at} (it started near {scale:.3}); training stopped, the last checkpoint is kept. Try a lower --lr, gradient clipping (--clip-norm), or check the data for extreme values"
            )));
        }
        self.last_read = self.step;
        on_log(self.step, &losses)
    }

    /// Everything needed to continue this run exactly: step, weights, Adam moments, EMA.
    pub fn state(&self, ctx: &GpuContext) -> Result<TrainState> {
        let n = self.mlp.layout.total;
        Ok(TrainState {
            step: self.step,
            params: ctx.read(&self.mlp.params, 0, n)?,
            moments: ctx.read(&self.moments, 0, 2 * n)?,
            ema: ctx.read(&self.ema, 0, n)?,
        })
    }

    /// Replace the data pool's rows (model units, as many as before): a streamed run's
    /// next pool, on every adapter of a data-parallel trainer.
    pub fn replace_data(&mut self, ctx: &GpuContext, pool: &[f32]) -> Result<()> {
        let want = self.cfm_base.n_data as usize * self.cfm_base.dim as usize;
        if pool.len() != want {
            return Err(Error::invalid(format!(
                "a replacement data pool has {} values, the trainer's {want}",
                pool.len()
            )));
        }
        ctx.queue
            .write_buffer(&self.data, 0, bytemuck::cast_slice(pool));
        for r in &mut self.replicas {
            r.trainer.replace_data(&r.ctx, pool)?;
        }
        ctx.check()
    }

    /// Continue from a saved state (same model shape and settings).
    pub fn restore(&mut self, ctx: &GpuContext, st: &TrainState) -> Result<()> {
        let n = self.mlp.layout.total;
        if st.params.len() != n || st.moments.len() != 2 * n || st.ema.len() != n {
            return Err(Error::invalid(
                "the checkpoint does not match this model's shape",
            ));
        }
        if st.step > self.cfg.steps {
            return Err(Error::invalid(format!(
                "the checkpoint is at step {}, past the run's {} steps",
                st.step, self.cfg.steps
            )));
        }
        ctx.queue
            .write_buffer(&self.mlp.params, 0, bytemuck::cast_slice(&st.params));
        ctx.queue
            .write_buffer(&self.moments, 0, bytemuck::cast_slice(&st.moments));
        ctx.queue
            .write_buffer(&self.ema, 0, bytemuck::cast_slice(&st.ema));
        self.step = st.step;
        self.last_read = st.step;
        self.broadcast_weights(&st.params)?;
        ctx.wait()
    }
}

/// The resumable state of a training run (`checkpoint.safetensors`).
#[derive(Clone, Debug, PartialEq)]
pub struct TrainState {
    /// Steps done.
    pub step: u64,
    /// Flat parameters in the GPU layout (model::ParamLayout).
    pub params: Vec<f32>,
    /// Adam's m then v, flat.
    pub moments: Vec<f32>,
    pub ema: Vec<f32>,
}

impl TrainState {
    /// safetensors with tensors `params`, `adam_m`, `adam_v`, `ema` (F32, flat GPU layout)
    /// and the step in the metadata, written atomically.
    pub fn save(&self, path: &std::path::Path) -> Result<()> {
        let bytes = self.to_safetensors(&[], &[])?;
        crate::io::atomic::write_atomic(path, &bytes).map_err(|e| Error::io(path, e))
    }

    /// The state as safetensors bytes, with `extra` F32 tensors and metadata entries.
    pub fn to_safetensors(
        &self,
        extra: &[(&str, &[f32])],
        extra_meta: &[(&str, String)],
    ) -> Result<Vec<u8>> {
        use safetensors::tensor::{Dtype, TensorView};
        let n = self.params.len();
        fn view(v: &[f32]) -> Result<TensorView<'_>> {
            TensorView::new(Dtype::F32, vec![v.len()], bytemuck::cast_slice(v))
                .map_err(|e| Error::invalid(e.to_string()))
        }
        let mut tensors = vec![
            ("params".to_string(), view(&self.params)?),
            ("adam_m".to_string(), view(&self.moments[..n])?),
            ("adam_v".to_string(), view(&self.moments[n..])?),
            ("ema".to_string(), view(&self.ema)?),
        ];
        for (name, v) in extra {
            tensors.push((name.to_string(), view(v)?));
        }
        let mut meta = std::collections::HashMap::new();
        meta.insert("format".to_string(), "flowgpu-checkpoint".to_string());
        meta.insert("step".to_string(), self.step.to_string());
        for (k, v) in extra_meta {
            meta.insert(k.to_string(), v.clone());
        }
        safetensors::serialize(tensors, Some(meta)).map_err(|e| Error::invalid(e.to_string()))
    }

    /// The metadata of checkpoint bytes and its F32 tensor `tensor`, if present.
    pub fn extras(bytes: &[u8], path: &std::path::Path, tensor: &str) -> Result<Extras> {
        let bad = |e: safetensors::SafeTensorError| {
            Error::format(path, format!("not a valid checkpoint: {e}"))
        };
        let (_, meta) = safetensors::SafeTensors::read_metadata(bytes).map_err(bad)?;
        let meta = meta.metadata().clone().unwrap_or_default();
        let st = safetensors::SafeTensors::deserialize(bytes).map_err(bad)?;
        let values = match st.tensor(tensor) {
            Ok(t) if t.dtype() == safetensors::Dtype::F32 => Some(
                t.data()
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect(),
            ),
            Ok(_) => return Err(Error::format(path, format!("tensor '{tensor}' is not F32"))),
            Err(_) => None,
        };
        Ok((meta, values))
    }

    pub fn load(path: &std::path::Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        Self::from_bytes(&bytes, path)
    }

    /// Parse checkpoint bytes (`path` names the file in errors).
    pub fn from_bytes(bytes: &[u8], path: &std::path::Path) -> Result<Self> {
        let (_, meta) = safetensors::SafeTensors::read_metadata(bytes)
            .map_err(|e| Error::format(path, format!("not a valid checkpoint: {e}")))?;
        let step = meta
            .metadata()
            .as_ref()
            .and_then(|m| m.get("step"))
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| Error::format(path, "checkpoint has no step"))?;
        let st = safetensors::SafeTensors::deserialize(bytes)
            .map_err(|e| Error::format(path, format!("not a valid checkpoint: {e}")))?;
        let get = |name: &str| -> Result<Vec<f32>> {
            let t = st
                .tensor(name)
                .map_err(|_| Error::format(path, format!("checkpoint has no tensor '{name}'")))?;
            if t.dtype() != safetensors::Dtype::F32 {
                return Err(Error::format(path, format!("tensor '{name}' is not F32")));
            }
            Ok(t.data()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect())
        };
        let mut moments = get("adam_m")?;
        moments.extend(get("adam_v")?);
        Ok(TrainState {
            step,
            params: get("params")?,
            moments,
            ema: get("ema")?,
        })
    }
}

/// A checkpoint's metadata and one of its extra tensors ([`TrainState::extras`]).
pub type Extras = (std::collections::HashMap<String, String>, Option<Vec<f32>>);

/// Losses recorded by [`fit`]: one per step.
pub type LossCurve = Vec<f32>;

/// Train a fresh model on `data` (already in model units) and return it with its loss
/// curve. `on_log(step, recent_losses)` runs after every loss readback (progress bars).
pub fn fit(
    ctx: &GpuContext,
    data: &crate::data::Dataset,
    mlp_cfg: &MlpConfig,
    path: GaussianPath,
    cfg: &TrainConfig,
    mut on_log: impl FnMut(u64, &[f32]),
) -> Result<(crate::model::Model, LossCurve)> {
    use rand::SeedableRng;
    if data.dim != mlp_cfg.dim {
        return Err(Error::invalid(format!(
            "data has dimension {}, the model {}",
            data.dim, mlp_cfg.dim
        )));
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(cfg.seed);
    let weights = Weights::init(mlp_cfg, &mut rng);
    let mut trainer = Trainer::new(ctx, mlp_cfg, path, &weights, &data.points, cfg)?;
    let mut curve = Vec::with_capacity(cfg.steps as usize);
    let never = AtomicBool::new(false);
    trainer.run_until(ctx, cfg.steps, &never, |step, losses| {
        curve.extend_from_slice(losses);
        on_log(step, losses);
        Ok(())
    })?;
    let model = crate::model::Model {
        config: crate::model::ModelConfig {
            data: data.name.clone(),
            seed: cfg.seed,
            class_labels: data.class_labels.clone(),
            ..crate::model::ModelConfig::new(mlp_cfg.clone(), path)
        },
        weights: trainer.weights(ctx, true)?,
    };
    Ok((model, curve))
}
