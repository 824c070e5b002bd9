//! Sampling: integrate dx/dt = v_θ(x, t) from base noise at t = 0 to data at t = 1.
//! Fixed-step Euler here; each chunk of rows is one submit (base noise, then per step an
//! MLP forward and one fused `euler_step`), read back once at the end of the chunk.

use crate::error::{Error, Result};
use crate::gpu::{GpuContext, UniformArena};
use crate::kernels::{ode, Tiles};
use crate::mlp::{GpuMlp, MlpPass};
use crate::model::Model;

/// What a sampling run needs besides the model.
#[derive(Clone, Debug)]
pub struct SampleConfig {
    pub n: usize,
    pub steps: usize,
    pub seed: u64,
    /// Rows per GPU chunk (bounded memory for any n).
    pub chunk: usize,
}

impl Default for SampleConfig {
    fn default() -> Self {
        SampleConfig {
            n: 1000,
            steps: 100,
            seed: 0,
            chunk: 65536,
        }
    }
}

/// An Euler sampler bound to one model on one context.
pub struct Sampler<'a> {
    ctx: &'a GpuContext,
    model: &'a Model,
    mlp: GpuMlp,
}

impl<'a> Sampler<'a> {
    pub fn new(ctx: &'a GpuContext, model: &'a Model) -> Result<Self> {
        let mlp = GpuMlp::new(ctx, &model.config.mlp, &model.weights)?;
        Ok(Sampler { ctx, model, mlp })
    }

    /// `cfg.n` samples, row-major [n, dim], in data units (standardization undone).
    /// Sample i depends only on (seed, i), not on the chunk size.
    pub fn sample(&self, cfg: &SampleConfig) -> Result<Vec<f32>> {
        if cfg.n == 0 || cfg.steps == 0 || cfg.chunk == 0 {
            return Err(Error::invalid("-n, --steps and --chunk must be positive"));
        }
        let ctx = self.ctx;
        let mcfg = &self.model.config.mlp;
        let d = mcfg.dim;
        let tiles = Tiles::for_class(ctx.class);
        let chunk = cfg.chunk.min(cfg.n);
        let mut pass = MlpPass::new(ctx, &self.mlp, chunk, None, false)?;
        let state = ctx.storage("ode state", chunk * d)?;
        let base = ode::base_noise(ctx)?;
        let euler = ode::euler_step(ctx)?;
        let mut arena = UniformArena::new(ctx, "ode params", cfg.steps + 1);
        let g_base = base.bind(ctx, &arena, &[&state, &pass.input]);
        let g_euler = euler.bind(ctx, &arena, &[&state, &pass.input, pass.output()]);
        let h = 1.0 / cfg.steps as f64;
        let mut out = Vec::with_capacity(cfg.n * d);
        let mut start = 0;
        while start < cfg.n {
            let rows = chunk.min(cfg.n - start);
            pass.set_rows(ctx, &self.mlp, rows);
            let p0 = ode::OdeParams {
                rows: rows as u32,
                dim: d as u32,
                in_stride: self.mlp.layout.layers[0].in_pad as u32,
                out_stride: MlpPass::out_stride(mcfg) as u32,
                time_cols: mcfg.time_cols() as u32,
                row_offset: start as u32,
                seed: cfg.seed as u32,
                t: 0.0,
                h: h as f32,
                ..Default::default()
            };
            arena.set(0, &p0);
            for s in 0..cfg.steps {
                let t_next = ((s + 1) as f64 * h) as f32;
                arena.set(s + 1, &ode::OdeParams { t: t_next, ..p0 });
            }
            arena.upload(ctx, 0..cfg.steps + 1);
            let groups = ode::per_row_groups(&p0, &tiles);
            let mut enc = ctx.device.create_command_encoder(&Default::default());
            {
                let mut cp = enc.begin_compute_pass(&Default::default());
                base.dispatch(&mut cp, &g_base, 0, groups);
                for s in 0..cfg.steps {
                    pass.record_forward(&mut cp);
                    euler.dispatch(&mut cp, &g_euler, s + 1, groups);
                }
            }
            ctx.submit(enc)?;
            out.extend(ctx.read(&state, 0, rows * d)?);
            start += rows;
        }
        if let Some(s) = &self.model.config.standardization {
            s.undo(&mut out);
        }
        Ok(out)
    }
}
