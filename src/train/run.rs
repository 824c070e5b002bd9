//! A training run as a folder: its typed configuration, its data, checkpoints, the loss
//! log, resume and held-out evaluation. `flowgpu train` is a thin layer over [`Run`];
//! `examples/resumable_run.rs` drives one from the library.
//!
//! Files of a run folder (docs/formats.md):
//! - `checkpoint.safetensors`: the checkpoint set in one file — [`TrainState`], the loss
//!   of every step (`loss`) and the [`RunConfig`] (metadata `config`). Replacing it is one
//!   atomic rename, so a kill at any instant leaves the previous set or the new one; a
//!   resume reads only this file.
//! - `config.json`, `model.safetensors` (the weights to sample with: the EMA's when `ema`
//!   is set), `loss.csv` (`step,loss,lr`): exports of the checkpoint for people and other
//!   tools, written after it (and again on resume).
//! - `.lock`: the writer lock; one process writes a run folder at a time, and the lock
//!   goes with the process however it ends.

use super::{Pools, TrainConfig, TrainState, Trainer};
use crate::data::stream::{DataStream, NpyRows, StreamPlan};
use crate::data::{AugmentFill, Dataset, Standardization};
use crate::error::{Error, Result};
use crate::gpu::GpuContext;
use crate::model::{Model, ModelConfig, Weights};
use crate::solve::{Method, Sampler, SolveConfig, Trace};
use rand::SeedableRng;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

/// What a run trains on and how it checkpoints (config.json `"run"`).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunPlan {
    /// A toy name or a data file (CSV/NPY).
    pub data: String,
    /// Column of the data file holding class labels (class-conditional models).
    #[serde(default)]
    pub label_column: Option<usize>,
    /// The source distribution x0: None for N(0, I), else a toy name or data file.
    #[serde(default)]
    pub source: Option<String>,
    /// Points drawn from a toy (files are read whole).
    pub n_data: usize,
    /// Fraction of the data held out for evaluation.
    pub val_frac: f64,
    /// Train on per-column standardized data (undone on samples).
    pub standardize: bool,
    /// Drop rows with NaN/Inf instead of refusing the file.
    pub drop_nonfinite: bool,
    /// Steps between checkpoints (0: only at the end).
    pub checkpoint_every: u64,
    /// Samples drawn for the run's sample figure (0: none).
    pub plot_samples: usize,
    /// Held-out points drawn for a toy's evaluation when nothing is held out.
    pub eval_n: usize,
    /// FNV-1a hash of the data as loaded (values and labels): a resume refuses other data.
    #[serde(default)]
    pub data_fingerprint: Option<String>,
    /// Stream the data file through a GPU pool instead of loading it whole.
    #[serde(default)]
    pub stream: Option<StreamPlan>,
}

impl RunPlan {
    /// The plan `flowgpu train --data DATA` makes by default: 100 000 points of a toy (a
    /// file is read whole), nothing held out, files standardized and toys not, a
    /// checkpoint every 1000 steps, 4000 samples in the figure, 2000 fresh toy points for
    /// the held-out NLL.
    pub fn new(data: &str) -> RunPlan {
        RunPlan {
            data: data.to_string(),
            label_column: None,
            source: None,
            n_data: 100_000,
            val_frac: 0.0,
            standardize: crate::data::toys::Toy::from_name(data).is_none(),
            drop_nonfinite: false,
            checkpoint_every: 1000,
            plot_samples: 4000,
            eval_n: 2000,
            data_fingerprint: None,
            stream: None,
        }
    }
}

/// The keys of config.json that belong to the run, not the model.
const TRAIN_KEY: &str = "train";
const PLAN_KEY: &str = "run";

/// A run's config.json: the model's configuration, the optimizer's and the plan.
#[derive(Clone, Debug, PartialEq)]
pub struct RunConfig {
    pub model: ModelConfig,
    pub train: TrainConfig,
    pub plan: RunPlan,
}

impl RunConfig {
    /// The JSON object: the model's fields, then `"train"` and `"run"`.
    pub fn to_json(&self) -> Result<Vec<u8>> {
        let bad = |e: serde_json::Error| Error::invalid(format!("config.json: {e}"));
        let mut v = serde_json::to_value(&self.model).map_err(bad)?;
        let obj = v
            .as_object_mut()
            .ok_or_else(|| Error::invalid("config.json: the model is not an object"))?;
        obj.insert(
            TRAIN_KEY.into(),
            serde_json::to_value(&self.train).map_err(bad)?,
        );
        obj.insert(
            PLAN_KEY.into(),
            serde_json::to_value(&self.plan).map_err(bad)?,
        );
        serde_json::to_vec_pretty(&v).map_err(bad)
    }

    /// Parse and validate a run's config.json (`path` names the file in errors): every
    /// section typed, an unknown or missing field is an error.
    pub fn parse(text: &[u8], path: &Path) -> Result<RunConfig> {
        let bad =
            |what: &str, e: serde_json::Error| Error::format(path, format!("invalid {what}: {e}"));
        let mut v: serde_json::Value =
            serde_json::from_slice(text).map_err(|e| bad("config", e))?;
        let obj = v
            .as_object_mut()
            .ok_or_else(|| Error::format(path, "is not a JSON object"))?;
        let missing = |k: &str| {
            Error::format(
                path,
                format!("has no \"{k}\" section: not a training run's folder"),
            )
        };
        let train = obj.remove(TRAIN_KEY).ok_or_else(|| missing(TRAIN_KEY))?;
        let plan = obj.remove(PLAN_KEY).ok_or_else(|| missing(PLAN_KEY))?;
        let train: TrainConfig =
            serde_json::from_value(train).map_err(|e| bad("\"train\" section", e))?;
        train.validate()?;
        let plan: RunPlan = serde_json::from_value(plan).map_err(|e| bad("\"run\" section", e))?;
        let model = Model::parse_config(&serde_json::to_vec(&v).unwrap_or_default(), path)?;
        Ok(RunConfig { model, train, plan })
    }

    fn read(dir: &Path) -> Result<RunConfig> {
        let cj = dir.join("config.json");
        let text = crate::io::read_bounded(&cj, crate::io::MAX_CONFIG_BYTES)
            .map_err(|e| Error::io(&cj, e))?;
        Self::parse(&text, &cj)
    }
}

/// How a new run's model is made besides its configuration.
#[derive(Clone, Debug, Default)]
pub struct NewRun {
    /// ANODE: extra dimensions appended to the data (zeros) and the source.
    pub augment: usize,
    /// What fills the source's augmented dimensions.
    pub augment_fill: AugmentFill,
    /// Train this model further: its shape, path, ANODE settings and standardization
    /// replace the configuration's (the data is re-standardized with its statistics).
    pub init: Option<Model>,
    /// Replace a run already in the folder (else that is an error).
    pub overwrite: bool,
}

/// A training run: its folder, configuration, data and progress.
pub struct Run {
    pub dir: PathBuf,
    pub config: RunConfig,
    /// The training split in model units.
    pub train_set: Dataset,
    /// The held-out split in data units, if any.
    pub held: Option<Dataset>,
    /// The source pool in model units (augmented), if the source is not N(0, I).
    source: Option<Vec<f32>>,
    /// The weights training starts from (a fresh run's) or the folder's (a resumed one's).
    weights: Weights,
    /// Loss of every step done.
    pub curve: Vec<f32>,
    /// The checkpoint a resumed run continues from.
    resume_state: Option<TrainState>,
    /// Replace a run already in `dir` (a new run only).
    overwrite: bool,
    /// Held while this process writes the folder.
    lock: Option<RunLock>,
    /// The data file's stream, when the run streams it (`train_set` is then the pool).
    stream: Option<DataStream>,
}

/// The writer lock of a run folder: an OS file lock on `.lock`, released when the
/// process ends however it ends, so a crash never leaves a folder locked.
struct RunLock {
    _file: std::fs::File,
}

impl RunLock {
    fn take(dir: &Path) -> Result<RunLock> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let path = dir.join(".lock");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| Error::io(&path, e))?;
        match file.try_lock() {
            Ok(()) => {
                // Temp files left by a writer that was killed: the lock says it is gone.
                remove_stale_temporaries(dir);
                Ok(RunLock { _file: file })
            }
            Err(std::fs::TryLockError::WouldBlock) => Err(Error::invalid(format!(
                "{} is being written by another flowgpu process; wait for it to end or choose another --out",
                dir.display()
            ))),
            Err(std::fs::TryLockError::Error(e)) => Err(Error::io(&path, e)),
        }
    }
}

/// Remove `.<name>.tmp-*` files (atomic writes a killed process left) from `dir`.
fn remove_stale_temporaries(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let name = name.to_string_lossy();
        if name.starts_with('.') && name.contains(".tmp-") {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// Files of a run folder (a new run replaces them all with `--overwrite`).
const RUN_FILES: [&str; 6] = [
    "checkpoint.safetensors",
    "config.json",
    "model.safetensors",
    "loss.csv",
    "loss.png",
    "samples.png",
];

/// Whether `dir` holds a run (a checkpoint or a configuration).
fn holds_run(dir: &Path) -> bool {
    RUN_FILES[..2].iter().any(|f| dir.join(f).exists())
}

/// A new run may not silently replace another one.
fn refuse_existing(dir: &Path) -> Result<()> {
    if holds_run(dir) {
        return Err(Error::invalid(format!(
            "{d} already holds a run; continue it with --resume {d}, or pass --overwrite to replace it",
            d = dir.display()
        )));
    }
    Ok(())
}

impl Run {
    /// A new run in `dir` (created; the first checkpoint is written by [`Run::trainer`]).
    /// `config.model.mlp.dim` and `classes` are set from the data.
    pub fn create(dir: &Path, mut config: RunConfig, new: NewRun) -> Result<Run> {
        if !new.overwrite {
            refuse_existing(dir)?;
        }
        config.train.validate()?;
        let loaded = load_data(&mut config.plan, config.model.seed, config.train.batch)?;
        let (mut train_set, held, std) = (loaded.train, loaded.held, loaded.std);
        if loaded.stream.is_none() {
            check_batch(&train_set, &config.train)?;
        }
        let m = &mut config.model;
        m.augment = new.augment;
        m.augment_fill = new.augment_fill;
        if m.augment_fill == AugmentFill::Copy && config.plan.source.is_none() {
            return Err(Error::invalid(
                "--augment-fill copy needs a --source (the Gaussian source gets noise)",
            ));
        }
        m.mlp.classes = train_set.n_classes();
        m.class_labels = train_set.class_labels.clone();
        m.mlp.dim = train_set.dim + new.augment;
        m.standardization = std;
        m.source = config.plan.source.clone();
        m.mlp.validate()?;
        let split = config.plan.val_frac > 0.0 || config.plan.stream.is_some();
        if config.train.paired && (split || config.plan.source.is_none()) {
            return Err(Error::invalid(
                "--paired needs a --source file with one row per data row, and neither --val-frac nor --stream-pool",
            ));
        }
        let weights = match &new.init {
            Some(init) => {
                adopt_init_model(m, &mut train_set, init)?;
                init.weights.clone()
            }
            None => {
                let mut rng = rand::rngs::StdRng::seed_from_u64(config.train.seed);
                Weights::init(&m.mlp, &mut rng)
            }
        };
        let mut run = Self::assemble(dir, config, train_set, held, weights, None)?;
        run.overwrite = new.overwrite;
        run.adopt_stream(loaded.stream, 0)?;
        Ok(run)
    }

    /// The run in `dir`, to continue from its last checkpoint.
    pub fn resume(dir: &Path) -> Result<Run> {
        if !holds_run(dir) {
            return Err(Error::invalid(format!(
                "{} holds no run to resume",
                dir.display()
            )));
        }
        let lock = RunLock::take(dir)?;
        let saved = SavedCheckpoint::read(dir)?;
        let mut config = saved.config;
        let loaded = load_data(&mut config.plan, config.model.seed, config.train.batch)?;
        let (mut train_set, held, std) = (loaded.train, loaded.held, loaded.std);
        if loaded.stream.is_none() {
            check_batch(&train_set, &config.train)?;
        }
        if config.model.data_dim() != train_set.dim {
            return Err(Error::invalid(format!(
                "the data now has dimension {}, the run's model {}",
                train_set.dim,
                config.model.data_dim()
            )));
        }
        // The model's units are the run's stored ones (an --init run keeps its model's).
        if config.model.standardization != std {
            restandardize(
                &mut train_set,
                std.as_ref(),
                config.model.standardization.as_ref(),
            );
        }
        let weights = Model::load(dir)?.weights;
        let step = saved.state.step;
        let mut run = Self::assemble(dir, config, train_set, held, weights, Some(saved.state))?;
        run.curve = saved.curve;
        run.lock = Some(lock);
        run.adopt_stream(loaded.stream, step)?;
        Ok(run)
    }

    fn assemble(
        dir: &Path,
        config: RunConfig,
        train_set: Dataset,
        held: Option<Dataset>,
        weights: Weights,
        resume_state: Option<TrainState>,
    ) -> Result<Run> {
        config.model.mlp.validate()?;
        if config.train.mle.is_some() && config.model.augment > 0 {
            return Err(Error::invalid(
                "--objective mle with --augment: the zero-padded dimensions make the likelihood unbounded; train ANODE models with flow matching",
            ));
        }
        let m = &config.model;
        let source = load_source(
            &config.plan,
            m.seed,
            train_set.dim,
            m.standardization.as_ref(),
        )?
        // ANODE: zeros in the augmented dimensions of the data, noise in the source's.
        .map(|s| {
            let seed = m.seed ^ 0xa0de;
            Dataset::augment_source(&s, train_set.dim, m.augment, m.augment_fill, seed)
        });
        Ok(Run {
            dir: dir.to_path_buf(),
            curve: Vec::with_capacity(config.train.steps as usize),
            config,
            train_set,
            held,
            source,
            weights,
            resume_state,
            overwrite: false,
            lock: None,
            stream: None,
        })
    }

    /// Take the run's data stream (if it streams), its pools in the model's units, and
    /// read the pool that training resumes at (`step`).
    fn adopt_stream(&mut self, stream: Option<DataStream>, step: u64) -> Result<()> {
        let Some(mut s) = stream else { return Ok(()) };
        s.standardization = self.config.model.standardization.clone();
        self.train_set.points = s.pool(s.pool_of(step))?;
        self.stream = Some(s);
        Ok(())
    }

    /// The data stream of a run that streams its file.
    pub fn stream(&self) -> Option<&DataStream> {
        self.stream.as_ref()
    }

    /// A streamed run's pool for the trainer's step, read and sent to the trainer unless it
    /// is the pool already there.
    fn sync_pool(&mut self, ctx: &GpuContext, trainer: &mut Trainer) -> Result<()> {
        let Some(s) = self.stream.as_mut() else {
            return Ok(());
        };
        let e = s.pool_of(trainer.step);
        if s.loaded == Some(e) {
            return Ok(());
        }
        self.train_set.points = s.pool(e)?;
        let m = &self.config.model;
        let pool = Dataset::augment(&self.train_set.points, self.train_set.dim, m.augment, None);
        trainer.replace_data(ctx, &pool)
    }

    /// Whether this run continues an earlier one.
    pub fn is_resumed(&self) -> bool {
        self.resume_state.is_some()
    }

    /// The trainer of this run on `ctx`: restored to the checkpoint when resuming; for a
    /// new run, the folder is created and its first checkpoint (step 0) written.
    pub fn trainer(&mut self, ctx: &GpuContext) -> Result<Trainer> {
        self.trainer_on(ctx, Vec::new(), &[1])
    }

    /// [`trainer`](Self::trainer) with each batch split over `ctx` and `others` in
    /// proportion to `weights` (data-parallel, [`crate::train::parallel`]).
    pub fn trainer_on(
        &mut self,
        ctx: &GpuContext,
        others: Vec<GpuContext>,
        weights: &[u32],
    ) -> Result<Trainer> {
        let m = &self.config.model;
        let pool = Dataset::augment(&self.train_set.points, self.train_set.dim, m.augment, None);
        let pools = Pools {
            data: &pool,
            source: self.source.as_deref(),
            labels: self.train_set.labels.as_deref(),
        };
        let build = |c: &GpuContext, tc: &TrainConfig| {
            let mut t = Trainer::with_source(c, &m.mlp, m.path, &self.weights, pools, tc)?;
            t.set_prediction(m.predict)?;
            Ok(t)
        };
        let mut trainer =
            Trainer::data_parallel_weighted(ctx, others, weights, &self.config.train, build)?;
        match &self.resume_state {
            Some(st) => {
                trainer.restore(ctx, st)?;
                // The exports may lag the checkpoint (a kill between the two).
                self.export(ctx, &trainer)?;
            }
            None => {
                self.lock = Some(RunLock::take(&self.dir)?);
                // Checked again under the lock: another run may have started meanwhile.
                if self.overwrite {
                    self.clear()?;
                } else {
                    refuse_existing(&self.dir)?;
                }
                self.checkpoint(ctx, &trainer)?;
            }
        }
        Ok(trainer)
    }

    /// Train to the end, checkpointing every `plan.checkpoint_every` steps and at the end
    /// (or when `stop` is raised: then it returns `true` after that checkpoint).
    /// `on_log(step, recent_losses)` runs after every loss readback.
    pub fn train(
        &mut self,
        ctx: &GpuContext,
        trainer: &mut Trainer,
        stop: &AtomicBool,
        on_log: impl FnMut(u64, &[f32]),
    ) -> Result<bool> {
        let steps = self.config.train.steps;
        self.train_until(ctx, trainer, steps, stop, on_log)
    }

    /// [`train`](Self::train) up to step `until` of the run's schedule (a time slice of a
    /// longer run: resume it later), with a checkpoint there.
    pub fn train_until(
        &mut self,
        ctx: &GpuContext,
        trainer: &mut Trainer,
        until: u64,
        stop: &AtomicBool,
        mut on_log: impl FnMut(u64, &[f32]),
    ) -> Result<bool> {
        let steps = until.min(self.config.train.steps);
        let every = match self.config.plan.checkpoint_every {
            0 => steps,
            n => n,
        };
        let refresh = self.stream.as_ref().map_or(u64::MAX, |s| s.refresh_steps);
        while trainer.step < steps {
            self.sync_pool(ctx, trainer)?;
            let next = ((trainer.step / every) + 1) * every;
            let pool_end = (trainer.step / refresh)
                .saturating_add(1)
                .saturating_mul(refresh);
            let curve = &mut self.curve;
            let target = next.min(steps).min(pool_end);
            let stopped = trainer.run_until(ctx, target, stop, |step, losses| {
                curve.extend_from_slice(losses);
                on_log(step, losses);
                Ok(())
            })?;
            if trainer.step.is_multiple_of(every) || trainer.step == steps || stopped {
                self.checkpoint(ctx, trainer)?;
            }
            if stopped {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Write the checkpoint set (one file: optimizer state, losses, configuration), then
    /// its exports.
    pub fn checkpoint(&self, ctx: &GpuContext, trainer: &Trainer) -> Result<()> {
        let saved = SavedCheckpoint {
            state: trainer.state(ctx)?,
            curve: self.curve.clone(),
            config: self.config.clone(),
        };
        saved.write(&self.dir)?;
        self.export(ctx, trainer)
    }

    /// The files people and other tools read: model.safetensors, config.json, loss.csv.
    fn export(&self, ctx: &GpuContext, trainer: &Trainer) -> Result<()> {
        use crate::io::atomic::write_atomic;
        let st = self.dir.join("model.safetensors");
        let weights = trainer.weights(ctx, true)?;
        write_atomic(&st, &weights.to_safetensors()?).map_err(|e| Error::io(&st, e))?;
        let cj = self.dir.join("config.json");
        write_atomic(&cj, &self.config.to_json()?).map_err(|e| Error::io(&cj, e))?;
        write_loss_csv(&self.dir.join("loss.csv"), &self.curve, &self.config.train)
    }

    /// Remove the files of a run this one replaces (`--overwrite`).
    fn clear(&self) -> Result<()> {
        for f in RUN_FILES {
            let p = self.dir.join(f);
            match std::fs::remove_file(&p) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(Error::io(&p, e)),
                _ => {}
            }
        }
        Ok(())
    }

    /// The model the trainer holds now (the EMA's weights when the run keeps one).
    pub fn model(&self, ctx: &GpuContext, trainer: &Trainer) -> Result<Model> {
        Ok(Model {
            config: self.config.model.clone(),
            weights: trainer.weights(ctx, true)?,
        })
    }

    /// Mean loss of the last `n` steps.
    pub fn final_loss(&self, n: usize) -> f64 {
        let tail = &self.curve[self.curve.len().saturating_sub(n)..];
        tail.iter().map(|&x| x as f64).sum::<f64>() / tail.len().max(1) as f64
    }

    /// Held-out NLL in nats per point (data units): exact trace, RK4 with 50 steps (a
    /// fixed, predictable cost). None without held-out data, or for models whose
    /// likelihood is not the data's (a non-Gaussian source, ANODE).
    pub fn held_out_nll(&self, sampler: &Sampler) -> Result<Option<f64>> {
        let m = &self.config.model;
        let Some(h) = &self.held else { return Ok(None) };
        if m.source.is_some() || m.augment > 0 {
            return Ok(None);
        }
        let solve = SolveConfig {
            method: Method::Rk4,
            steps: 50,
            ..SolveConfig::default()
        };
        let (logp, _, _) = sampler.log_prob(&h.points, Trace::Exact, &solve)?;
        Ok(Some(-logp.iter().sum::<f64>() / logp.len() as f64))
    }
}

/// The checkpoint set of a run, stored in one file (`checkpoint.safetensors`).
struct SavedCheckpoint {
    state: TrainState,
    /// The loss of every step done.
    curve: Vec<f32>,
    config: RunConfig,
}

impl SavedCheckpoint {
    fn write(&self, dir: &Path) -> Result<()> {
        let path = dir.join("checkpoint.safetensors");
        let config =
            String::from_utf8(self.config.to_json()?).map_err(|e| Error::invalid(e.to_string()))?;
        let bytes = self
            .state
            .to_safetensors(&[("loss", &self.curve)], &[("config", config)])?;
        crate::io::atomic::write_atomic(&path, &bytes).map_err(|e| Error::io(&path, e))
    }

    /// The set in `dir`; a checkpoint without its losses and configuration (written by an
    /// earlier format) takes them from config.json and loss.csv.
    fn read(dir: &Path) -> Result<SavedCheckpoint> {
        let path = dir.join("checkpoint.safetensors");
        let bytes = crate::io::read_bounded(&path, crate::io::MAX_FILE_BYTES)
            .map_err(|e| Error::io(&path, e))?;
        let state = TrainState::from_bytes(&bytes, &path)?;
        let (meta, loss) = TrainState::extras(&bytes, &path, "loss")?;
        let config = match meta.get("config") {
            Some(c) => RunConfig::parse(c.as_bytes(), &path)?,
            None => RunConfig::read(dir)?,
        };
        let curve = match loss {
            Some(l) if l.len() as u64 == state.step => l,
            Some(l) => {
                return Err(Error::format(
                    &path,
                    format!("holds {} losses for step {}", l.len(), state.step),
                ))
            }
            None => read_loss_csv(&dir.join("loss.csv"), state.step)?,
        };
        Ok(SavedCheckpoint {
            state,
            curve,
            config,
        })
    }
}

/// A run's data as its plan says.
struct LoadedData {
    /// The training split (a streamed run: its first pool) in model units.
    train: Dataset,
    /// The held-out split in data units.
    held: Option<Dataset>,
    std: Option<Standardization>,
    stream: Option<DataStream>,
}

/// The data of a run, as its plan says. A new run records the data's fingerprint in its
/// plan; a resumed one must match it.
fn load_data(plan: &mut RunPlan, seed: u64, batch: usize) -> Result<LoadedData> {
    if plan.n_data == 0 {
        return Err(Error::invalid("--n-data must be positive"));
    }
    if plan.stream.is_some() {
        return load_stream(plan, seed, batch);
    }
    let mut all = Dataset::load(&plan.data, plan.n_data, seed, plan.drop_nonfinite)?;
    if let Some(col) = plan.label_column {
        all.take_label_column(col)?;
    }
    check_fingerprint(plan, all.fingerprint())?;
    let is_toy = crate::data::toys::Toy::from_name(&plan.data).is_some();
    let (mut train, mut held) = all.split(plan.val_frac, seed)?;
    if held.is_none() && is_toy && plan.eval_n > 0 {
        held = Some(Dataset::toy(
            &plan.data,
            plan.eval_n,
            seed.wrapping_add(0x5eed),
        )?);
    }
    let std = plan.standardize.then(|| {
        let s = train.standardization();
        train.standardize(&s);
        s
    });
    // The parsed f64 values have served the statistics; the run keeps f32 points only.
    train.exact = None;
    if let Some(h) = held.as_mut() {
        h.exact = None;
    }
    Ok(LoadedData {
        train,
        held,
        std,
        stream: None,
    })
}

/// A new run records the data's fingerprint; a resumed one refuses other data.
fn check_fingerprint(plan: &mut RunPlan, fingerprint: String) -> Result<()> {
    match &plan.data_fingerprint {
        Some(f) if *f != fingerprint => Err(Error::invalid(format!(
            "the data '{}' is not the data this run was trained on (fingerprint {fingerprint}, the run's {f}); restore it, or start a new run",
            plan.data
        ))),
        Some(_) => Ok(()),
        None => {
            plan.data_fingerprint = Some(fingerprint);
            Ok(())
        }
    }
}

/// A streamed NPY file: its fingerprint and (a new run standardizing its data) statistics
/// from chunked passes; the training set is empty until the run reads its first pool
/// ([`Run::adopt_stream`], in the model's units).
fn load_stream(plan: &mut RunPlan, seed: u64, batch: usize) -> Result<LoadedData> {
    let refuse = |what: &str| {
        Err(Error::invalid(format!(
            "--stream-pool reads an NPY file in chunks; {what}"
        )))
    };
    if !plan.data.ends_with(".npy") {
        return refuse("save the data with np.save (toys and CSV files load whole)");
    }
    if plan.val_frac > 0.0 || plan.label_column.is_some() || plan.drop_nonfinite {
        return refuse("--val-frac, --label-column and --drop-nonfinite need the file in memory");
    }
    let spec = plan.stream.clone().unwrap_or(StreamPlan {
        pool_mib: 0.0,
        refresh_steps: None,
    });
    let mut rows = NpyRows::open(Path::new(&plan.data))?;
    // A resumed run has its standardization: the fingerprint pass suffices.
    let new_run = plan.data_fingerprint.is_none();
    let scan = crate::data::stream::scan(&mut rows, new_run && plan.standardize)?;
    check_fingerprint(plan, scan.fingerprint)?;
    let std = scan.standardization;
    let stream = DataStream::new(rows, &spec, batch, seed)?;
    let train = Dataset {
        name: plan.data.clone(),
        dim: stream.dim(),
        points: Vec::new(),
        labels: None,
        class_labels: Vec::new(),
        exact: None,
    };
    Ok(LoadedData {
        train,
        held: None,
        std,
        stream: Some(stream),
    })
}

/// The source pool of a run (model units), if its source is not N(0, I).
fn load_source(
    plan: &RunPlan,
    seed: u64,
    dim: usize,
    std: Option<&Standardization>,
) -> Result<Option<Vec<f32>>> {
    let Some(spec) = &plan.source else {
        return Ok(None);
    };
    let mut ds = Dataset::load(spec, plan.n_data, seed.wrapping_add(1), plan.drop_nonfinite)?;
    if ds.dim != dim {
        return Err(Error::invalid(format!(
            "the source '{spec}' has dimension {}, the data {dim}",
            ds.dim
        )));
    }
    if let Some(s) = std {
        ds.standardize(s);
    }
    Ok(Some(ds.points))
}

fn check_batch(train_set: &Dataset, tc: &TrainConfig) -> Result<()> {
    if train_set.len() < tc.batch {
        return Err(Error::invalid(format!(
            "the training data has {} rows, fewer than --batch {}; use a smaller batch",
            train_set.len(),
            tc.batch
        )));
    }
    Ok(())
}

/// Move `set` from the units of `from` to those of `to` (None: data units).
fn restandardize(set: &mut Dataset, from: Option<&Standardization>, to: Option<&Standardization>) {
    if let Some(s) = from {
        s.undo(&mut set.points);
    }
    if let Some(s) = to {
        s.apply(&mut set.points);
    }
}

/// `NewRun::init`: the model's shape, path, ANODE settings and standardization replace
/// the configuration's (the data is re-standardized with its statistics).
fn adopt_init_model(config: &mut ModelConfig, train: &mut Dataset, m: &Model) -> Result<()> {
    if m.config.data_dim() != train.dim {
        return Err(Error::invalid(format!(
            "--init: the model has data dimension {}, the data {}",
            m.config.data_dim(),
            train.dim
        )));
    }
    if m.config.mlp.classes != config.mlp.classes {
        return Err(Error::invalid(format!(
            "--init: the model has {} classes, the data {}",
            m.config.mlp.classes, config.mlp.classes
        )));
    }
    restandardize(
        train,
        config.standardization.as_ref(),
        m.config.standardization.as_ref(),
    );
    config.mlp = m.config.mlp.clone();
    config.path = m.config.path;
    config.augment = m.config.augment;
    config.augment_fill = m.config.augment_fill;
    config.standardization = m.config.standardization.clone();
    Ok(())
}

fn write_loss_csv(path: &Path, curve: &[f32], cfg: &TrainConfig) -> Result<()> {
    let rows = curve.iter().enumerate().map(|(i, l)| {
        [
            (i + 1).to_string(),
            l.to_string(),
            cfg.lr_at(i as u64).to_string(),
        ]
    });
    crate::io::csv::write_records(path, Some(&["step", "loss", "lr"]), rows)
        .map_err(|e| Error::io(path, e))
}

fn read_loss_csv(path: &Path, steps: u64) -> Result<Vec<f32>> {
    let bytes =
        crate::io::read_bounded(path, crate::io::MAX_FILE_BYTES).map_err(|e| Error::io(path, e))?;
    let mut reader = csv::ReaderBuilder::new()
        .flexible(true)
        .from_reader(bytes.as_slice());
    let v: Vec<f32> = reader
        .records()
        .take(steps as usize)
        .map(|r| {
            r.ok()
                .and_then(|r| r.get(1).and_then(|x| x.trim().parse().ok()))
                .unwrap_or(f32::NAN)
        })
        .collect();
    if v.len() as u64 != steps {
        return Err(Error::format(
            path,
            format!(
                "holds {} losses, the checkpoint is at step {steps}",
                v.len()
            ),
        ));
    }
    Ok(v)
}
