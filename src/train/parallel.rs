//! Data-parallel flow-matching training over several adapters of one host.
//!
//! Every adapter holds the whole model and trains on a share of each batch: adapter k of K
//! draws global batch rows ⌊k·B/K⌋ to ⌊(k+1)·B/K⌋ (or in proportion to weights,
//! [`crate::shard::weighted_rows`]), keyed by their global row (cfm.wgsl's `row0`), so the
//! K shares draw exactly the rows of the one-adapter batch, and each
//! averages its loss over the whole batch (`mean_rows`), so the shares' gradients add up to
//! the batch gradient. A step:
//!
//! 1. every adapter, in its own thread, runs its share (one submit) and reads back its
//!    gradient and loss share (one wait);
//! 2. the host adds the shares in f64 in adapter order (a fixed order, so a run is a pure
//!    function of its seed and adapter set) and rounds once to f32;
//! 3. the first adapter (the lead, which alone holds Adam's moments and the EMA) applies
//!    the update, and its new weights are read back and written to the others.
//!
//! wgpu has no peer-to-peer copies, so the reduction goes through the host: two waits and
//! 2·K + 1 parameter-sized transfers per step (K gradients read, one written to the lead,
//! its weights read and written to the K − 1 others), against none for one adapter. It pays
//! where an adapter's share of forward and backward costs more than that.
//!
//! The lead's `cfg.batch` is its share; [`Trainer::batch_rows`] is the whole batch.

use super::{StepMlp, TrainConfig, Trainer};
use crate::error::{Error, Result};
use crate::gpu::GpuContext;
use crate::shard::weighted_rows;

/// Another adapter's trainer (its own context) and its share of the batch.
pub struct Replica {
    pub ctx: GpuContext,
    pub(super) trainer: Trainer,
}

/// The adapters of a data-parallel run with their batch rows, for reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShareInfo {
    pub adapter: String,
    pub backend: String,
    pub rows: std::ops::Range<usize>,
}

/// Why `cfg` cannot be split over `adapters` adapters, if it cannot.
fn check_splittable(cfg: &TrainConfig, adapters: usize) -> Result<()> {
    if cfg.mle.is_some() {
        return Err(Error::invalid(
            "data-parallel training is for flow matching; --objective mle trains on one adapter",
        ));
    }
    if !matches!(cfg.coupling, super::Coupling::Independent) {
        return Err(Error::invalid(
            "minibatch-OT couples the whole batch, which one adapter must hold; drop --coupling or train on one adapter",
        ));
    }
    if cfg.batch < adapters {
        return Err(Error::invalid(format!(
            "--batch {} is smaller than the {adapters} adapters it would be split over",
            cfg.batch
        )));
    }
    Ok(())
}

impl Trainer {
    /// A trainer whose batch is split over `ctx` (the lead) and every context of `others`,
    /// each trainer made by `build(ctx, cfg)` with its share as the batch. Without others,
    /// the one-adapter trainer.
    pub fn data_parallel(
        ctx: &GpuContext,
        others: Vec<GpuContext>,
        cfg: &TrainConfig,
        build: impl Fn(&GpuContext, &TrainConfig) -> Result<Trainer>,
    ) -> Result<Trainer> {
        let even = vec![1; others.len() + 1];
        Self::data_parallel_weighted(ctx, others, &even, cfg, build)
    }

    /// [`data_parallel`](Self::data_parallel) with each adapter's share of the batch in
    /// proportion to its weight (`weights`: the lead's, then each of `others`'), as
    /// [`crate::shard::weighted_rows`] splits rows: give a faster adapter more.
    pub fn data_parallel_weighted(
        ctx: &GpuContext,
        others: Vec<GpuContext>,
        weights: &[u32],
        cfg: &TrainConfig,
        build: impl Fn(&GpuContext, &TrainConfig) -> Result<Trainer>,
    ) -> Result<Trainer> {
        if others.is_empty() {
            return build(ctx, cfg);
        }
        let count = others.len() + 1;
        check_splittable(cfg, count)?;
        if weights.len() != count {
            return Err(Error::invalid(format!(
                "{} adapter weights for {count} adapters",
                weights.len()
            )));
        }
        let share = |index: usize| weighted_rows(cfg.batch, weights, index);
        if let Some(k) = (0..count).find(|&k| share(k).is_empty()) {
            return Err(Error::invalid(format!(
                "adapter {k}'s share of --batch {} is empty with weights {weights:?}; give it a larger weight or the batch more rows",
                cfg.batch
            )));
        }
        let build_share = |c: &GpuContext, index: usize| -> Result<Trainer> {
            let rows = share(index);
            let mut t = build(
                c,
                &TrainConfig {
                    batch: rows.len(),
                    ..cfg.clone()
                },
            )?;
            t.cfm_base.row0 = rows.start as u32;
            t.cfm_base.mean_rows = cfg.batch as u32;
            t.readback = Some(c.readback_buffer(t.readback_len()));
            Ok(t)
        };
        let mut lead = build_share(ctx, 0)?;
        for (k, c) in others.into_iter().enumerate() {
            let trainer = build_share(&c, k + 1)?;
            lead.replicas.push(Replica { ctx: c, trainer });
        }
        Ok(lead)
    }

    /// The adapters this trainer runs on, with their batch rows (one entry without data
    /// parallelism).
    pub fn shares(&self, ctx: &GpuContext) -> Vec<ShareInfo> {
        let info = |c: &GpuContext, t: &Trainer| {
            let row0 = t.cfm_base.row0 as usize;
            ShareInfo {
                adapter: c.adapter_name().to_string(),
                backend: c.backend_name(),
                rows: row0..row0 + t.cfm_base.batch as usize,
            }
        };
        std::iter::once(info(ctx, self))
            .chain(self.replicas.iter().map(|r| info(&r.ctx, &r.trainer)))
            .collect()
    }

    /// GPU buffer bytes allocated on `ctx` and every replica's adapter.
    pub fn allocated_bytes(&self, ctx: &GpuContext) -> u64 {
        ctx.allocated_bytes()
            + self
                .replicas
                .iter()
                .map(|r| r.ctx.allocated_bytes())
                .sum::<u64>()
    }

    /// The rows of a whole batch (all shares).
    pub fn batch_rows(&self) -> usize {
        self.cfm_base.mean_rows as usize
    }

    /// The gradient and loss of the next step over the whole batch, without updating
    /// (every share's, added as a data-parallel step adds them; tests and benchmarks).
    pub fn step_gradient(&mut self, ctx: &GpuContext) -> Result<(Vec<f32>, f32)> {
        if self.replicas.is_empty() {
            return self.share_gradient(ctx);
        }
        self.reduced_gradient(ctx)
    }

    /// `n` data-parallel steps (see the module docs).
    pub(super) fn run_parallel_steps(&mut self, ctx: &GpuContext, n: usize) -> Result<()> {
        for _ in 0..n {
            let (grad, loss) = self.reduced_gradient(ctx)?;
            self.apply_gradient(ctx, &grad, loss)?;
            let n = self.mlp.layout.total;
            let mut weights = self.read_back(ctx, &[(&self.mlp.params, 0, n)])?;
            self.broadcast_weights(&weights.swap_remove(0))?;
        }
        Ok(())
    }

    /// Every share's gradient and loss at this step, computed concurrently and added in
    /// f64 in adapter order.
    fn reduced_gradient(&mut self, ctx: &GpuContext) -> Result<(Vec<f32>, f32)> {
        let step = self.step;
        let mut replicas = std::mem::take(&mut self.replicas);
        let (lead, rest) = std::thread::scope(|scope| {
            let handles: Vec<_> = replicas
                .iter_mut()
                .map(|r| {
                    r.trainer.step = step;
                    scope.spawn(move || r.trainer.share_gradient(&r.ctx))
                })
                .collect();
            let lead = self.share_gradient(ctx);
            let rest: Vec<Result<(Vec<f32>, f32)>> = handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|_| Err(Error::Gpu("an adapter's thread failed".into())))
                })
                .collect();
            (lead, rest)
        });
        self.replicas = replicas;
        let mut shares = vec![lead?];
        for r in rest {
            shares.push(r?);
        }
        let mut grad = vec![0f64; self.mlp.layout.total];
        let mut loss = 0f64;
        for (g, l) in &shares {
            for (a, b) in grad.iter_mut().zip(g) {
                *a += *b as f64;
            }
            loss += *l as f64;
        }
        Ok((grad.iter().map(|&g| g as f32).collect(), loss as f32))
    }

    /// This trainer's share of the next step: its gradient and its loss share (both
    /// averaged over the whole batch), read back in one wait; no update.
    fn share_gradient(&mut self, ctx: &GpuContext) -> Result<(Vec<f32>, f32)> {
        let n = self.mlp.layout.total;
        let cp = self.cfm_step_params(self.step);
        self.arena.set(0, &cp);
        self.arena.upload(ctx, 0..1);
        ctx.submit_pass(|pass| self.record_gradient(pass, 0))?;
        match &self.step_mlp {
            StepMlp::Layers { .. } => {
                let slot = cp.loss_slot as usize;
                let mut parts =
                    self.read_back(ctx, &[(&self.grads, 0, n), (&self.loss_history, slot, 1)])?;
                let loss = parts[1][0];
                Ok((std::mem::take(&mut parts[0]), loss))
            }
            StepMlp::Fused(f) => {
                // Each slot: the parameters' gradient, then the slot's loss sum.
                let all = self.read_back(ctx, &[(&self.grads, 0, f.groups * f.slot_len)])?;
                let mut sum = crate::gpu::sum_slots(&all[0], f.slot_len, n + 1);
                let loss = sum.pop().unwrap_or(0.0) / cp.mean_rows as f32;
                Ok((sum, loss))
            }
        }
    }

    /// Floats the largest readback of a data-parallel step takes: its gradient (a fused
    /// step's every slot) and loss, or the weights.
    fn readback_len(&self) -> usize {
        let n = self.mlp.layout.total;
        match &self.step_mlp {
            StepMlp::Layers { .. } => n + 1,
            StepMlp::Fused(f) => (f.groups * f.slot_len).max(n),
        }
    }

    /// `ranges` to the host through this trainer's readback buffer (a one-adapter trainer,
    /// which reads back rarely, allocates one for the call).
    fn read_back(
        &self,
        ctx: &GpuContext,
        ranges: &[(&wgpu::Buffer, usize, usize)],
    ) -> Result<Vec<Vec<f32>>> {
        match &self.readback {
            Some(b) => ctx.read_ranges_via(b, ranges),
            None => ctx.read_ranges(ranges),
        }
    }

    /// The optimizer step with the batch gradient `grad` and batch loss `loss` (into the
    /// loss history): one submit.
    fn apply_gradient(&mut self, ctx: &GpuContext, grad: &[f32], loss: f32) -> Result<()> {
        let k = self.cfg.steps_per_submit;
        let s = self.step;
        // The gradient goes in as one slot (a fused step's other slots are not read).
        let ap = crate::kernels::adam::AdamParams {
            grad_parts: 1,
            loss_rows: 0,
            ..self.adam_step_params(s)
        };
        ctx.queue
            .write_buffer(&self.grads, 0, bytemuck::cast_slice(grad));
        ctx.queue.write_buffer(
            &self.loss_history,
            4 * (ap.loss_slot as u64),
            bytemuck::bytes_of(&loss),
        );
        self.arena.set(k, &ap);
        self.arena.upload(ctx, k..k + 1);
        ctx.submit_pass(|pass| self.record_update(pass, 0))?;
        self.step += 1;
        Ok(())
    }

    /// Write `weights` (flat) to every replica, which then stands at this trainer's step.
    pub(super) fn broadcast_weights(&mut self, weights: &[f32]) -> Result<()> {
        for r in &mut self.replicas {
            r.ctx
                .queue
                .write_buffer(&r.trainer.mlp.params, 0, bytemuck::cast_slice(weights));
            r.trainer.step = self.step;
            r.ctx.check()?;
        }
        Ok(())
    }
}
