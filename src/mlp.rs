//! The MLP on the GPU: parameters in one flat buffer ([`GpuMlp`]) and the buffers,
//! bind groups and parameter slots to run it forward and backward on up to `capacity`
//! rows ([`MlpPass`]). Both are built once and reused for every step or chunk.

use crate::error::Result;
use crate::gpu::{GpuContext, UniformArena};
use crate::kernels::{cfm_step, fused_mlp, matmul, mlp_backward, Entry, Tiles};
use crate::model::{pad4, MlpConfig, ParamLayout, Weights};

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
    /// Forward-mode tangent directions per row (JVPs), 0 for none. With `grads`, backward
    /// also runs through the tangents (gradients of functions of J·u, e.g. a divergence).
    pub tangents: usize,
}

/// Buffers of a pass. Every per-row buffer stacks the primal rows and, after them, the
/// tangent rows: with N rows set, rows [0, N) are primal and row (1 + m)·N + i is
/// tangent direction m of primal row i (see matmul.wgsl).
pub struct MlpPass {
    pub capacity: usize,
    pub rows: usize,
    pub train: bool,
    /// MLP input rows [(1 + T)·capacity, in_pad]: written by cfm_prepare or the solver
    /// stages (primal rows) and by trace.wgsl's probes (tangent rows).
    pub input: wgpu::Buffer,
    /// Output of each layer [(1 + T)·capacity, out_pad]; the last one is v(x, t), then J·u.
    pub h: Vec<wgpu::Buffer>,
    /// Pre-activations of each layer (Z, then Ż; training or tangents only).
    pub z: Vec<wgpu::Buffer>,
    /// dL/dz of each layer (training only); the last one is dL/dv (then dL/d(J·u)).
    pub dz: Vec<wgpu::Buffer>,
    /// dL/d input [(1 + T)·capacity, in_pad], when asked for (adjoints, tests).
    pub input_grad: Option<wgpu::Buffer>,
    /// Tangent directions per row.
    pub tangents: usize,
    partial: Option<wgpu::Buffer>,
    arena: UniformArena,
    /// Forward kernel of each layer and the tiles its grid follows (narrow layers take
    /// the plain tile: `matmul::forward_for_layer`).
    forward: Vec<(Entry<matmul::Forward>, Tiles)>,
    back_input: Option<Entry<mlp_backward::Input>>,
    back_weight: Option<Entry<mlp_backward::Weight>>,
    reduce: Option<Entry<mlp_backward::ReduceChunks>>,
    /// backward_weight + backward_input(_jvp) in one dispatch (subgroup tiles), with a
    /// bind group for each layer that has an input gradient.
    back_layer: Option<Entry<mlp_backward::Layer>>,
    layer_groups: Vec<Option<wgpu::BindGroup>>,
    fwd_groups: Vec<wgpu::BindGroup>,
    bin_groups: Vec<Option<wgpu::BindGroup>>,
    bw_groups: Vec<wgpu::BindGroup>,
    red_groups: Vec<wgpu::BindGroup>,
    tiles: Tiles,
    fwd_params: Vec<matmul::LinearParams>,
    bwd_params: Vec<mlp_backward::BackwardParams>,
    /// backward_input_jvp's parameters (primal rows, activation of the layer below).
    jvp_params: Vec<mlp_backward::BackwardParams>,
}

/// Arena slot blocks (× layers): forward, backward, input backward through tangents.
const SLOT_FWD: usize = 0;
const SLOT_BWD: usize = 1;
const SLOT_JVP: usize = 2;

impl MlpPass {
    /// A pass over up to `capacity` rows.
    pub fn new(ctx: &GpuContext, mlp: &GpuMlp, capacity: usize, opts: PassOptions) -> Result<Self> {
        let PassOptions {
            grads,
            input_grad,
            tangents,
        } = opts;
        let capacity = capacity.max(1);
        let stacked = (1 + tangents) * capacity;
        let train = grads.is_some();
        let store_z = train || tangents > 0;
        let tiles = ctx.tiles;
        let layers = &mlp.layout.layers;
        let n_layers = layers.len();
        let input = ctx.storage("mlp input", stacked * layers[0].in_pad)?;
        let mut h = Vec::new();
        let mut z = Vec::new();
        let mut dz = Vec::new();
        for l in layers {
            h.push(ctx.storage("mlp h", stacked * l.out_pad)?);
            if store_z {
                z.push(ctx.storage("mlp z", stacked * l.out_pad)?);
            }
            if train {
                dz.push(ctx.storage("mlp dz", stacked * l.out_pad)?);
            }
        }
        // Placeholders for bindings a dispatch does not use: one per access mode, since a
        // buffer may not be both read-only and read-write in one dispatch.
        let dummy = ctx.storage("unused (read-write)", 4)?;
        let dummy_ro = ctx.storage("unused (read-only)", 4)?;
        // With tangent rows, one dispatch per layer computes them with the primal rows.
        let forward = layers
            .iter()
            .map(|l| matmul::forward_for_layer(ctx, l.out_features, tangents))
            .collect::<Result<Vec<_>>>()?;
        let arena = UniformArena::new(ctx, "mlp params", 3 * n_layers);
        let mut fwd_groups = Vec::new();
        for (i, _) in layers.iter().enumerate() {
            let x = if i == 0 { &input } else { &h[i - 1] };
            let zb = if store_z { &z[i] } else { &dummy };
            fwd_groups.push(forward[i].0.bind(
                ctx,
                &arena,
                &matmul::ForwardBindings {
                    x,
                    params: &mlp.params,
                    z: zb,
                    h: &h[i],
                },
            ));
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
            partial: None,
            arena,
            forward,
            back_input: None,
            back_weight: None,
            reduce: None,
            back_layer: None,
            layer_groups: Vec::new(),
            fwd_groups,
            bin_groups: Vec::new(),
            bw_groups: Vec::new(),
            red_groups: Vec::new(),
            tiles,
            fwd_params: Vec::new(),
            bwd_params: Vec::new(),
            jvp_params: Vec::new(),
        };
        if let Some(grads) = grads {
            pass.bind_backward(ctx, mlp, grads, input_grad, &dummy_ro)?;
        }
        pass.set_rows(ctx, mlp, capacity);
        Ok(pass)
    }

    /// The backward kernels and their bind groups: per-layer weight and input gradients
    /// (and the fused layer kernel where the tiles have it), into `grads`.
    fn bind_backward(
        &mut self,
        ctx: &GpuContext,
        mlp: &GpuMlp,
        grads: &wgpu::Buffer,
        input_grad: bool,
        dummy_ro: &wgpu::Buffer,
    ) -> Result<()> {
        let layers = &mlp.layout.layers;
        let tangents = self.tangents;
        let stacked = (1 + tangents) * self.capacity;
        let chunk = mlp_backward::chunk_rows(stacked, &self.tiles);
        let n_chunks = stacked.div_ceil(chunk);
        let partial_len = if n_chunks > 1 {
            layers.iter().map(|l| n_chunks * l.size).max().unwrap_or(1)
        } else {
            1
        };
        let partial = ctx.storage("weight grad partials", partial_len)?;
        // With tangents, the input gradient runs through the tangent rows too.
        let bi = if tangents > 0 {
            mlp_backward::backward_input_jvp(ctx)?
        } else {
            mlp_backward::backward_input(ctx)?
        };
        let bw = mlp_backward::backward_weight(ctx)?;
        let red = mlp_backward::reduce_chunks(ctx)?;
        for i in 0..layers.len() {
            let x = if i == 0 { &self.input } else { &self.h[i - 1] };
            self.bw_groups.push(bw.bind(
                ctx,
                &self.arena,
                &mlp_backward::WeightBindings {
                    dz: &self.dz[i],
                    x_in: x,
                    partial: &partial,
                    grads,
                },
            ));
            self.red_groups.push(red.bind(
                ctx,
                &self.arena,
                &mlp_backward::ReduceChunksBindings {
                    partial: &partial,
                    grads,
                },
            ));
            let below = (i > 0).then(|| {
                bi.bind(
                    ctx,
                    &self.arena,
                    &mlp_backward::InputBindings {
                        dz: &self.dz[i],
                        params: &mlp.params,
                        z_below: &self.z[i - 1],
                        dx: &self.dz[i - 1],
                    },
                )
            });
            self.bin_groups.push(below);
        }
        if input_grad {
            let ig = ctx.storage("mlp input grad", stacked * layers[0].in_pad)?;
            // Layer 0 has no activation below it: the identity epilogue leaves dX.
            self.bin_groups[0] = Some(bi.bind(
                ctx,
                &self.arena,
                &mlp_backward::InputBindings {
                    dz: &self.dz[0],
                    params: &mlp.params,
                    z_below: dummy_ro,
                    dx: &ig,
                },
            ));
            self.input_grad = Some(ig);
        }
        if let Some(fused) = mlp_backward::backward_layer(ctx, tangents > 0)? {
            for i in 0..layers.len() {
                let x = if i == 0 { &self.input } else { &self.h[i - 1] };
                // The input-gradient half's buffers, as bound for backward_input.
                let below = match (i, &self.input_grad) {
                    (0, Some(ig)) => Some((dummy_ro, ig)),
                    (0, None) => None,
                    _ => Some((&self.z[i - 1], &self.dz[i - 1])),
                };
                self.layer_groups.push(below.map(|(zb, dx)| {
                    fused.bind(
                        ctx,
                        &self.arena,
                        &mlp_backward::LayerBindings {
                            dz: &self.dz[i],
                            params: &mlp.params,
                            z_below: zb,
                            dx,
                            x_in: x,
                            partial: &partial,
                            grads,
                        },
                    )
                }));
            }
            self.back_layer = Some(fused);
        }
        self.partial = Some(partial);
        self.back_input = Some(bi);
        self.back_weight = Some(bw);
        self.reduce = Some(red);
        Ok(())
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
        let t = self.tangents;
        let stacked = (1 + t) * rows;
        self.fwd_params.clear();
        self.bwd_params.clear();
        self.jvp_params.clear();
        let chunk = mlp_backward::chunk_rows(stacked, &self.tiles);
        for (i, l) in layers.iter().enumerate() {
            // With tangents, linear_jvp keeps Z in registers (its subgroup variant always
            // stores the primal Z, to read it back): Ż is stored only for the backward pass.
            let fp = matmul::LinearParams {
                rows: rows as u32,
                out_features: l.out_features as u32,
                in_vec4: (l.in_pad / 4) as u32,
                y_stride: l.out_pad as u32,
                w_off4: (l.w_off / 4) as u32,
                b_off: l.b_off as u32,
                activation: l.activation.gpu_code(),
                store_pre: self.train as u32,
                tangents: t as u32,
                _pad: [0; 3],
            };
            self.arena.set(SLOT_FWD * n + i, &fp);
            self.fwd_params.push(fp);
            let below = if i > 0 {
                layers[i - 1].activation.gpu_code()
            } else {
                0
            };
            let bp = mlp_backward::BackwardParams {
                rows: stacked as u32,
                out_features: l.out_features as u32,
                out_vec4: (l.out_pad / 4) as u32,
                in_vec4: (l.in_pad / 4) as u32,
                w_off4: (l.w_off / 4) as u32,
                // With tangents, backward_input_jvp applies the activation (SLOT_JVP).
                activation: if t > 0 { 0 } else { below },
                chunk_rows: chunk as u32,
                n_chunks: stacked.div_ceil(chunk) as u32,
                layer_size: l.size as u32,
                bias_rows: rows as u32,
                n_tangents: t as u32,
                _pad: 0,
            };
            self.arena.set(SLOT_BWD * n + i, &bp);
            self.bwd_params.push(bp);
            let tbp = mlp_backward::BackwardParams {
                rows: rows as u32,
                activation: below,
                ..bp
            };
            self.arena.set(SLOT_JVP * n + i, &tbp);
            self.jvp_params.push(tbp);
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

    /// v(x, t) for the primal rows and, with tangents, J·u for every direction u in the
    /// tangent rows of `input` (one `linear_jvp` dispatch per layer).
    pub fn record_forward(&self, pass: &mut wgpu::ComputePass<'_>) {
        let n = self.fwd_params.len();
        for (i, p) in self.fwd_params.iter().enumerate() {
            let (kernel, tiles) = &self.forward[i];
            let grid = matmul::linear_forward_groups(p, tiles);
            kernel.dispatch(pass, &self.fwd_groups[i], SLOT_FWD * n + i, grid);
        }
    }

    /// Backward from dL/dv (and dL/d(J·u) in the tangent rows) in `dz.last()` to the flat
    /// gradient buffer (overwritten) and, if asked for, `input_grad`.
    pub fn record_backward(&self, pass: &mut wgpu::ComputePass<'_>) {
        let (bi, bw, red) = match (&self.back_input, &self.back_weight, &self.reduce) {
            (Some(a), Some(b), Some(c)) => (a, b, c),
            _ => panic!("record_backward on an inference pass"),
        };
        let n = self.bwd_params.len();
        for i in (0..n).rev() {
            let p = &self.bwd_params[i];
            // With tangents the fused kernel takes backward_input_jvp's parameters.
            let (fp, slot) = if self.tangents > 0 {
                (&self.jvp_params[i], SLOT_JVP * n + i)
            } else {
                (p, SLOT_BWD * n + i)
            };
            // Weight and input gradient in one dispatch where the layer allows it.
            let fused = self
                .back_layer
                .as_ref()
                .filter(|_| mlp_backward::fuse_backward(p))
                .zip(self.layer_groups.get(i).and_then(Option::as_ref));
            match fused {
                Some((k, g)) => {
                    k.dispatch(
                        pass,
                        g,
                        slot,
                        mlp_backward::backward_layer_groups(fp, &self.tiles),
                    );
                }
                None => bw.dispatch(
                    pass,
                    &self.bw_groups[i],
                    SLOT_BWD * n + i,
                    mlp_backward::backward_weight_groups(p, &self.tiles),
                ),
            }
            if p.n_chunks > 1 {
                red.dispatch(
                    pass,
                    &self.red_groups[i],
                    SLOT_BWD * n + i,
                    mlp_backward::reduce_chunks_groups(p, &self.tiles),
                );
            }
            // backward_input(_jvp) (with tangents: primal rows, tangent rows with them).
            if let (None, Some(g)) = (fused, &self.bin_groups[i]) {
                bi.dispatch(
                    pass,
                    g,
                    slot,
                    mlp_backward::backward_input_groups(fp, &self.tiles),
                );
            }
        }
    }
}

/// Where a fused kernel (fused_mlp_subgroup.wgsl) keeps a small MLP's activations, and its
/// uniform table: regions of one buffer, each [sets · cap_rows, width] — the input rows,
/// then Z, H and dZ of every layer.
pub struct FusedLayout {
    pub table: fused_mlp::StepTable,
    /// Floats of the activation buffer.
    pub act_len: usize,
}

/// The fused kernels serve models whose forward pass is at most this many multiply-adds per
/// batch (all row sets): W-small is 2.2M (6.5M with 2 tangent sets); past ~8M the
/// per-layer kernels' wider grids pay for their dispatches (W-fm is 3.2G).
const FUSED_MAX_MACS: usize = 8 << 20;

impl FusedLayout {
    /// `sets` row sets (1 + tangent directions) of up to `cap_rows` rows. With `input_grad`,
    /// the input gradient of layer 0's primal rows goes to a last region (the likelihood
    /// field); without, layer 0 has no input gradient (the flow-matching step). dZ overwrites
    /// Z in place when there is one row set and no input gradient, else gets regions of its
    /// own (Z stays for act' and act'' of the tangent rows).
    pub fn new(
        layout: &ParamLayout,
        cap_rows: usize,
        sets: usize,
        input_grad: bool,
        slot_len: usize,
    ) -> Result<Self> {
        let layers = &layout.layers;
        if layers.len() > fused_mlp::MAX_LAYERS {
            return Err(crate::error::Error::invalid(format!(
                "the fused kernels take at most {} layers",
                fused_mlp::MAX_LAYERS
            )));
        }
        let four = |floats: usize| (floats / 4) as u32;
        let mut off = sets * cap_rows * layers[0].in_pad;
        let mut region = |width: usize| {
            let at = off;
            off += sets * cap_rows * width;
            four(at)
        };
        let mut table = fused_mlp::StepTable {
            s: Default::default(),
            layers: [Default::default(); fused_mlp::MAX_LAYERS],
        };
        for (i, l) in layers.iter().enumerate() {
            let z_off4 = region(l.out_pad);
            let h_off4 = region(l.out_pad);
            // In place only without tangent rows: their act'' term needs Z after dZ exists.
            let d_off4 = if input_grad || sets > 1 {
                region(l.out_pad)
            } else {
                z_off4
            };
            let below = i.checked_sub(1).map(|j| (&layers[j], table.layers[j]));
            table.layers[i] = fused_mlp::StepLayer {
                in_vec4: four(l.in_pad),
                out_features: l.out_features as u32,
                out_vec4: four(l.out_pad),
                w_off4: four(l.w_off),
                b_off4: four(l.b_off),
                activation: l.activation.gpu_code(),
                x_off4: below.map_or(0, |(_, d)| d.h_off4),
                z_off4,
                h_off4,
                d_off4,
                below_act: below.map_or(0, |(bl, _)| bl.activation.gpu_code()),
                below_z_off4: below.map_or(0, |(_, d)| d.z_off4),
                below_d_off4: below.map_or(0, |(_, d)| d.d_off4),
                below_sets: if i > 0 {
                    sets as u32
                } else {
                    input_grad as u32
                },
                store_z: (sets > 1 || !l.activation.grad_from_output()) as u32,
                _pad: 0,
            };
        }
        if input_grad {
            // Primal rows only: the tangent inputs are constants of the solve.
            table.layers[0].below_d_off4 = four(off);
            off += cap_rows * layers[0].in_pad;
        }
        table.s = fused_mlp::StepParams {
            n_layers: layers.len() as u32,
            group_rows: Self::group_rows(cap_rows) as u32,
            slot_vec4: four(slot_len),
            sets: sets as u32,
            cap_rows: cap_rows as u32,
            _pad: [0; 3],
        };
        Ok(FusedLayout {
            table,
            act_len: off,
        })
    }

    /// Whether the fused kernels serve this model on this adapter: the adapter's tiles have
    /// them (`Tiles::fused_step`), it binds `storage_buffers` storage buffers per stage, and
    /// the model is small.
    pub fn suits(
        ctx: &GpuContext,
        layout: &ParamLayout,
        rows: usize,
        storage_buffers: u32,
    ) -> bool {
        let macs: usize = layout.layers.iter().map(|l| l.in_pad * l.out_pad).sum();
        ctx.tiles.subgroup8
            && ctx.tiles.fused_step
            && ctx.limits.max_storage_buffers_per_shader_stage >= storage_buffers
            && layout.layers.len() <= fused_mlp::MAX_LAYERS
            && rows * macs <= FUSED_MAX_MACS
    }

    /// Rows per workgroup: 128 (multiples of 16, the kernel's row tile); fewer, longer
    /// groups mean fewer gradient slots to write and add, more mean more cores busy.
    /// Measured at W-small (batch 256) on lavapipe, 2 cores: 32 rows 1160 µs per step
    /// kernel, 64 rows 1030, 128 rows 980.
    pub fn group_rows(rows: usize) -> usize {
        // A context exists by now, so the settings parsed.
        let want = crate::gpu::Settings::global().map_or(128, |s| s.step_group_rows);
        let tile = fused_mlp::TILE_ROWS;
        let all = rows.div_ceil(tile).max(1) * tile;
        (want.div_ceil(tile).max(1) * tile).min(all)
    }

    /// Workgroups (= gradient slots) for `rows` rows when the table was made for `cap_rows`.
    pub fn groups_for(rows: usize, cap_rows: usize) -> usize {
        rows.div_ceil(Self::group_rows(cap_rows))
    }
}

/// A whole flow-matching step but the optimizer in one dispatch (`cfm_step_subgroup.wgsl`)
/// for small models on adapters with 8-lane subgroups: the batch is cut into row groups,
/// one workgroup each, which draws its rows (cfm.wgsl's `prepare_row`), runs them forward
/// and backward and writes its own slot of partial weight gradients and loss sum, which
/// `adam_update` adds up (`AdamParams::grad_parts`).
pub struct FusedCfmPass {
    pub rows: usize,
    /// Workgroups (= gradient slots).
    pub groups: usize,
    /// Floats per gradient slot: the parameters, then one vec4 holding the loss sum.
    pub slot_len: usize,
    /// Input rows [rows, in_pad] as cfm.wgsl draws them.
    pub input: wgpu::Buffer,
    /// The input rows again as vec4s, then Z and H of every layer ([rows, out_pad] each).
    pub act: wgpu::Buffer,
    kernel: Entry<cfm_step::Step>,
    group: wgpu::BindGroup,
    params: fused_mlp::StepParams,
    // Kept alive for the bind group.
    _table: wgpu::Buffer,
}

/// The buffers of cfm.wgsl the fused step binds, as the trainer binds them for cfm_prepare.
pub struct CfmBuffers<'a> {
    pub data: &'a wgpu::Buffer,
    pub target: &'a wgpu::Buffer,
    pub source: &'a wgpu::Buffer,
    pub labels: &'a wgpu::Buffer,
    pub pairs: &'a wgpu::Buffer,
}

impl FusedCfmPass {
    /// Whether a training run takes the fused step (see [`FusedLayout::suits`]).
    pub fn suits(ctx: &GpuContext, layout: &ParamLayout, rows: usize) -> bool {
        FusedLayout::suits(ctx, layout, rows, cfm_step::STORAGE_BUFFERS)
    }

    /// Floats per gradient slot of a model.
    pub fn slot_len(layout: &ParamLayout) -> usize {
        layout.total + 4
    }

    /// Gradient slots for `rows` rows.
    pub fn groups_for(rows: usize) -> usize {
        FusedLayout::groups_for(rows, rows)
    }

    /// A pass over `rows` rows, its parameters (cfm.wgsl's CfmParams, one slot per step) in
    /// `arena`; `grad_parts` has room for `groups_for(rows)` slots.
    pub fn new(
        ctx: &GpuContext,
        mlp: &GpuMlp,
        rows: usize,
        arena: &UniformArena,
        cfm: &CfmBuffers,
        grad_parts: &wgpu::Buffer,
    ) -> Result<Self> {
        let layers = &mlp.layout.layers;
        let slot_len = Self::slot_len(&mlp.layout);
        let fl = FusedLayout::new(&mlp.layout, rows, 1, false, slot_len)?;
        let table = fl.table;
        let params = table.s;
        let table_buf = ctx.uniform_from("fused step table", bytemuck::bytes_of(&table));
        let input = ctx.storage("fused step input", rows * layers[0].in_pad)?;
        let act = ctx.storage("fused step activations", fl.act_len)?;
        let kernel = cfm_step::cfm_step_subgroup(ctx)?;
        let group = kernel.bind(
            ctx,
            arena,
            &cfm_step::StepBindings {
                data: cfm.data,
                input: &input,
                target_u: cfm.target,
                source: cfm.source,
                labels: cfm.labels,
                pairs: cfm.pairs,
                table: &table_buf,
                params: &mlp.params,
                act: &act,
                grad_parts,
            },
        );
        Ok(FusedCfmPass {
            rows,
            groups: Self::groups_for(rows),
            slot_len,
            input,
            act,
            kernel,
            group,
            params,
            _table: table_buf,
        })
    }

    /// The step with the CfmParams of arena slot `slot`: one dispatch.
    pub fn record(&self, pass: &mut wgpu::ComputePass<'_>, slot: usize) {
        self.kernel.dispatch(
            pass,
            &self.group,
            slot,
            fused_mlp::groups(self.rows, &self.params),
        );
    }
}
