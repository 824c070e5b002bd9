//! The MLP on the GPU: parameters in one flat buffer ([`GpuMlp`]) and the buffers,
//! bind groups and parameter slots to run it forward and backward on up to `capacity`
//! rows ([`MlpPass`]). Both are built once and reused for every step or chunk.

use crate::error::Result;
use crate::gpu::{GpuContext, UniformArena};
use crate::kernels::{matmul, mlp_backward, Kernel, Tiles};
use crate::model::{pad4, MlpConfig, ParamLayout, Weights};
use std::sync::Arc;

/// An MLP's parameters on the GPU, in the padded layout of [`ParamLayout`].
pub struct GpuMlp {
    pub cfg: MlpConfig,
    pub layout: ParamLayout,
    pub params: wgpu::Buffer,
}

impl GpuMlp {
    pub fn new(ctx: &GpuContext, cfg: &MlpConfig, weights: &Weights) -> Result<Self> {
        let layout = ParamLayout::new(cfg);
        let params = ctx.storage_from("params", &weights.pack(&layout))?;
        Ok(GpuMlp {
            cfg: cfg.clone(),
            layout,
            params,
        })
    }

    pub fn download(&self, ctx: &GpuContext) -> Result<Weights> {
        Ok(Weights::unpack(
            &ctx.read(&self.params, 0, self.layout.total)?,
            &self.layout,
        ))
    }
}

/// What a pass can do besides the forward pass.
#[derive(Clone, Copy, Default)]
pub struct PassOptions<'a> {
    /// The flat gradient buffer (same layout as the parameters): enables backward.
    pub grads: Option<&'a wgpu::Buffer>,
    /// Backward also computes dL/d input.
    pub input_grad: bool,
    /// Forward-mode tangent directions per row (JVPs), 0 for none.
    pub tangents: usize,
}

/// Buffers of a pass; `z` only when training or with tangents, `dz` only when training.
pub struct MlpPass {
    pub capacity: usize,
    pub rows: usize,
    pub train: bool,
    /// MLP input rows [capacity, in_pad], written by cfm_prepare or the solver stages.
    pub input: wgpu::Buffer,
    /// Output of each layer [capacity, out_pad]; the last one is v(x, t).
    pub h: Vec<wgpu::Buffer>,
    /// Pre-activations of each layer (training only).
    pub z: Vec<wgpu::Buffer>,
    /// dL/dz of each layer (training only); the last one is dL/dv.
    pub dz: Vec<wgpu::Buffer>,
    /// dL/d input [capacity, in_pad], when asked for (adjoints, tests).
    pub input_grad: Option<wgpu::Buffer>,
    /// Tangent directions per row.
    pub tangents: usize,
    /// Tangent input rows [tangents·capacity, in_pad], direction-major.
    pub tangent_input: Option<wgpu::Buffer>,
    /// Tangent outputs of each layer [tangents·capacity, out_pad]; the last one is J·u.
    pub tangent_h: Vec<wgpu::Buffer>,
    tan_groups: Vec<wgpu::BindGroup>,
    tan_params: Vec<matmul::LinearParams>,
    partial: Option<wgpu::Buffer>,
    arena: UniformArena,
    forward: Arc<Kernel>,
    back_input: Option<Arc<Kernel>>,
    back_weight: Option<Arc<Kernel>>,
    reduce: Option<Arc<Kernel>>,
    fwd_groups: Vec<wgpu::BindGroup>,
    bin_groups: Vec<Option<wgpu::BindGroup>>,
    bw_groups: Vec<wgpu::BindGroup>,
    red_groups: Vec<wgpu::BindGroup>,
    tiles: Tiles,
    fwd_params: Vec<matmul::LinearParams>,
    bwd_params: Vec<mlp_backward::BackwardParams>,
}

impl MlpPass {
    /// A pass over up to `capacity` rows.
    pub fn new(ctx: &GpuContext, mlp: &GpuMlp, capacity: usize, opts: PassOptions) -> Result<Self> {
        let PassOptions {
            grads,
            input_grad,
            tangents,
        } = opts;
        let capacity = capacity.max(1);
        let train = grads.is_some();
        let store_z = train || tangents > 0;
        let tiles = Tiles::for_class(ctx.class);
        let layers = &mlp.layout.layers;
        let n_layers = layers.len();
        let input = ctx.storage("mlp input", capacity * layers[0].in_pad)?;
        let mut h = Vec::new();
        let mut z = Vec::new();
        let mut dz = Vec::new();
        let mut tangent_h = Vec::new();
        for l in layers {
            h.push(ctx.storage("mlp h", capacity * l.out_pad)?);
            if store_z {
                z.push(ctx.storage("mlp z", capacity * l.out_pad)?);
            }
            if train {
                dz.push(ctx.storage("mlp dz", capacity * l.out_pad)?);
            }
            if tangents > 0 {
                tangent_h.push(ctx.storage("mlp tangent h", tangents * capacity * l.out_pad)?);
            }
        }
        // Placeholders for bindings a dispatch does not use: one per access mode, since a
        // buffer may not be both read-only and read-write in one dispatch.
        let dummy = ctx.storage("unused (read-write)", 4)?;
        let dummy_ro = ctx.storage("unused (read-only)", 4)?;
        let forward = matmul::linear_forward(ctx)?;
        let arena = UniformArena::new(ctx, "mlp params", 3 * n_layers);
        let mut fwd_groups = Vec::new();
        for (i, _) in layers.iter().enumerate() {
            let x = if i == 0 { &input } else { &h[i - 1] };
            let zb = if store_z { &z[i] } else { &dummy };
            fwd_groups.push(forward.bind(ctx, &arena, &[x, &mlp.params, zb, &h[i], &dummy_ro]));
        }
        let tangent_input = if tangents > 0 {
            Some(ctx.storage("mlp tangent input", tangents * capacity * layers[0].in_pad)?)
        } else {
            None
        };
        let mut tan_groups = Vec::new();
        if let Some(ti) = &tangent_input {
            for i in 0..n_layers {
                let x = if i == 0 { ti } else { &tangent_h[i - 1] };
                tan_groups.push(forward.bind(
                    ctx,
                    &arena,
                    &[x, &mlp.params, &dummy, &tangent_h[i], &z[i]],
                ));
            }
        }
        let mut pass = MlpPass {
            capacity,
            rows: 0,
            train,
            input,
            h,
            z,
            dz,
            input_grad: None,
            tangents,
            tangent_input,
            tangent_h,
            tan_groups,
            tan_params: Vec::new(),
            partial: None,
            arena,
            forward,
            back_input: None,
            back_weight: None,
            reduce: None,
            fwd_groups,
            bin_groups: Vec::new(),
            bw_groups: Vec::new(),
            red_groups: Vec::new(),
            tiles,
            fwd_params: Vec::new(),
            bwd_params: Vec::new(),
        };
        if let Some(grads) = grads {
            let chunk = mlp_backward::chunk_rows(capacity, &tiles);
            let n_chunks = capacity.div_ceil(chunk);
            let partial_len = if n_chunks > 1 {
                layers.iter().map(|l| n_chunks * l.size).max().unwrap_or(1)
            } else {
                1
            };
            let partial = ctx.storage("weight grad partials", partial_len)?;
            let bi = mlp_backward::backward_input(ctx)?;
            let bw = mlp_backward::backward_weight(ctx)?;
            let red = mlp_backward::reduce_chunks(ctx)?;
            for i in 0..n_layers {
                let x = if i == 0 { &pass.input } else { &pass.h[i - 1] };
                pass.bw_groups
                    .push(bw.bind(ctx, &pass.arena, &[&pass.dz[i], x, &partial, grads]));
                pass.red_groups
                    .push(red.bind(ctx, &pass.arena, &[&partial, grads]));
                pass.bin_groups.push(if i > 0 {
                    Some(bi.bind(
                        ctx,
                        &pass.arena,
                        &[&pass.dz[i], &mlp.params, &pass.z[i - 1], &pass.dz[i - 1]],
                    ))
                } else {
                    None
                });
            }
            if input_grad {
                let ig = ctx.storage("mlp input grad", capacity * layers[0].in_pad)?;
                // Layer 0 has no activation below it: the identity epilogue leaves dX.
                pass.bin_groups[0] = Some(bi.bind(
                    ctx,
                    &pass.arena,
                    &[&pass.dz[0], &mlp.params, &dummy_ro, &ig],
                ));
                pass.input_grad = Some(ig);
            }
            pass.partial = Some(partial);
            pass.back_input = Some(bi);
            pass.back_weight = Some(bw);
            pass.reduce = Some(red);
        }
        pass.set_rows(ctx, mlp, capacity);
        Ok(pass)
    }

    /// Run the next dispatches on the first `rows` rows (≤ capacity).
    pub fn set_rows(&mut self, ctx: &GpuContext, mlp: &GpuMlp, rows: usize) {
        assert!(rows <= self.capacity && rows > 0);
        if rows == self.rows {
            return;
        }
        self.rows = rows;
        let layers = &mlp.layout.layers;
        let n = layers.len();
        self.fwd_params.clear();
        self.bwd_params.clear();
        self.tan_params.clear();
        let chunk = mlp_backward::chunk_rows(rows, &self.tiles);
        for (i, l) in layers.iter().enumerate() {
            let fp = matmul::LinearParams {
                rows: rows as u32,
                out_features: l.out_features as u32,
                in_vec4: (l.in_pad / 4) as u32,
                y_stride: l.out_pad as u32,
                w_off4: (l.w_off / 4) as u32,
                b_off: l.b_off as u32,
                activation: l.activation.gpu_code(),
                store_pre: (self.train || self.tangents > 0) as u32,
                tangent: 0,
                primal_rows: rows as u32,
                _pad: [0; 2],
            };
            self.arena.set(i, &fp);
            self.fwd_params.push(fp);
            if self.tangents > 0 {
                let tp = matmul::LinearParams {
                    rows: (self.tangents * rows) as u32,
                    tangent: 1,
                    store_pre: 0,
                    ..fp
                };
                self.arena.set(2 * n + i, &tp);
                self.tan_params.push(tp);
            }
            let below = if i > 0 {
                layers[i - 1].activation.gpu_code()
            } else {
                0
            };
            let bp = mlp_backward::BackwardParams {
                rows: rows as u32,
                out_features: l.out_features as u32,
                out_vec4: (l.out_pad / 4) as u32,
                in_vec4: (l.in_pad / 4) as u32,
                w_off4: (l.w_off / 4) as u32,
                activation: below,
                chunk_rows: chunk as u32,
                n_chunks: rows.div_ceil(chunk) as u32,
                layer_size: l.size as u32,
                _pad: [0; 3],
            };
            self.arena.set(n + i, &bp);
            self.bwd_params.push(bp);
        }
        self.arena.upload(ctx, 0..3 * n);
    }

    /// Output buffer v(x, t): [capacity, pad4(dim)].
    pub fn output(&self) -> &wgpu::Buffer {
        self.h.last().unwrap()
    }

    /// Row stride of the output in floats.
    pub fn out_stride(cfg: &MlpConfig) -> usize {
        pad4(cfg.dim)
    }

    pub fn record_forward(&self, pass: &mut wgpu::ComputePass<'_>) {
        for (i, p) in self.fwd_params.iter().enumerate() {
            self.forward.dispatch(
                pass,
                &self.fwd_groups[i],
                i,
                matmul::linear_forward_groups(p, &self.tiles),
            );
        }
    }

    /// Tangents J·u of every direction u in `tangent_input`, after `record_forward` (which
    /// stores the primal pre-activations they need).
    pub fn record_tangents(&self, pass: &mut wgpu::ComputePass<'_>) {
        let n = self.fwd_params.len();
        for (i, p) in self.tan_params.iter().enumerate() {
            self.forward.dispatch(
                pass,
                &self.tan_groups[i],
                2 * n + i,
                matmul::linear_forward_groups(p, &self.tiles),
            );
        }
    }

    /// Backward from dL/dv in `dz.last()` to the flat gradient buffer.
    pub fn record_backward(&self, pass: &mut wgpu::ComputePass<'_>) {
        let (bi, bw, red) = match (&self.back_input, &self.back_weight, &self.reduce) {
            (Some(a), Some(b), Some(c)) => (a, b, c),
            _ => panic!("record_backward on an inference pass"),
        };
        let n = self.bwd_params.len();
        for i in (0..n).rev() {
            let p = &self.bwd_params[i];
            bw.dispatch(
                pass,
                &self.bw_groups[i],
                n + i,
                mlp_backward::backward_weight_groups(p, &self.tiles),
            );
            if p.n_chunks > 1 {
                red.dispatch(
                    pass,
                    &self.red_groups[i],
                    n + i,
                    mlp_backward::reduce_chunks_groups(p, &self.tiles),
                );
            }
            if let Some(g) = &self.bin_groups[i] {
                bi.dispatch(
                    pass,
                    g,
                    n + i,
                    mlp_backward::backward_input_groups(p, &self.tiles),
                );
            }
        }
    }
}
