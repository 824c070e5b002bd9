//! The field of a likelihood solve on the GPU: the MLP with tangent rows, the integrands of
//! trace.wgsl, and the vector-Jacobian product of S through the tangents.

use crate::error::Result;
use crate::gpu::{GpuContext, UniformArena};
use crate::kernels::{field, fused_mlp, trace, Entry, Tiles};
use crate::mlp::{FusedLayout, GpuMlp, MlpPass, PassOptions};
use crate::solve::Trace;

/// The field of a likelihood solve on the GPU: the MLP with tangent rows (probes or exact
/// directions), the integrands of trace.wgsl, and the backward pass of S through the
/// tangents into a per-stage gradient. Small models on adapters with 8-lane subgroups take
/// the fused kernels of field_subgroup.wgsl (one dispatch per evaluation and per VJP, the
/// stage gradient in one slot per workgroup); the others, the per-layer kernels.
pub struct LikelihoodField {
    pub pass: MlpPass,
    pub trace: Trace,
    /// Probe directions [T·rows, dim].
    pub probes: wgpu::Buffer,
    /// [rows, 4]: divergence, ‖v‖², Frobenius estimate, 0.
    pub div: wgpu::Buffer,
    /// The adjoint a at the current stage [rows, dim] (written by ode.wgsl).
    pub cotangent: wgpu::Buffer,
    /// ∂S/∂θ of the last backward pass (flat parameter layout), in
    /// [`grad_parts`](Self::grad_parts) slots of the parameter count to add.
    pub stage_grads: wgpu::Buffer,
    fused: Option<FusedField>,
    arena: UniformArena,
    probe_slots: usize,
    cot_slots: usize,
    base: trace::TraceParams,
    init: Entry<trace::ProbeInit>,
    divergence: Entry<trace::Divergence>,
    seed_cot: Entry<trace::TraceCotangent>,
    g_init: wgpu::BindGroup,
    g_div: wgpu::BindGroup,
    g_cot: wgpu::BindGroup,
    tiles: Tiles,
}

/// The one-dispatch evaluation and VJP of field_subgroup.wgsl and what they bind.
struct FusedField {
    eval: Entry<field::Eval>,
    vjp: Entry<field::Vjp>,
    g_eval: wgpu::BindGroup,
    g_vjp: wgpu::BindGroup,
    params: fused_mlp::StepParams,
    /// dS/dv and dS/d(J·u) in the MLP output's layout (cotangent_row's scratch).
    dv: wgpu::Buffer,
    /// dS/dx of the primal rows [capacity, in_pad].
    input_grad: wgpu::Buffer,
    // Kept alive for the bind groups.
    _table: wgpu::Buffer,
    _act: wgpu::Buffer,
}

impl LikelihoodField {
    /// A field over up to `capacity` rows with `probe_slots` probe-seed slots and
    /// `cot_slots` sets of weights of S.
    pub fn new(
        ctx: &GpuContext,
        mlp: &GpuMlp,
        capacity: usize,
        trace_kind: Trace,
        probe_slots: usize,
        cot_slots: usize,
    ) -> Result<Self> {
        let d = mlp.cfg.dim;
        let tangents = trace_kind.tangents(d);
        let fuse = FusedLayout::suits(
            ctx,
            &mlp.layout,
            (1 + tangents) * capacity,
            field::STORAGE_BUFFERS,
        );
        let slots = if fuse {
            FusedLayout::groups_for(capacity, capacity)
        } else {
            1
        };
        let stage_grads = ctx.storage("stage grads", slots * mlp.layout.total)?;
        // The fused kernels need of the pass only its input and output rows: no backward
        // buffers or kernels then.
        let pass = MlpPass::new(
            ctx,
            mlp,
            capacity,
            PassOptions {
                grads: (!fuse).then_some(&stage_grads),
                input_grad: !fuse,
                tangents,
            },
        )?;
        let probes = ctx.storage("probes", tangents * capacity * d)?;
        let div = ctx.storage("divergence", capacity * trace::DIV_STRIDE)?;
        let cotangent = ctx.storage("cotangent", capacity * d)?;
        let arena = UniformArena::new(ctx, "likelihood field params", probe_slots + 1 + cot_slots);
        let init = trace::probe_init(ctx)?;
        let divergence = trace::divergence(ctx)?;
        let seed_cot = trace::trace_cotangent(ctx)?;
        let g_init = init.bind(
            ctx,
            &arena,
            &trace::ProbeInitBindings {
                tangent_input: &pass.input,
                probes: &probes,
            },
        );
        let g_div = divergence.bind(
            ctx,
            &arena,
            &trace::DivergenceBindings {
                probes: &probes,
                tangent_out: pass.output(),
                div: &div,
            },
        );
        let fused = if fuse {
            let bufs = FieldBuffers {
                probes: &probes,
                div: &div,
                cotangent: &cotangent,
                stage_grads: &stage_grads,
            };
            Some(FusedField::new(ctx, mlp, &pass, &arena, &bufs, tangents)?)
        } else {
            None
        };
        let dv = match &fused {
            Some(f) => &f.dv,
            None => pass.dz.last().expect("a training pass"),
        };
        let g_cot = seed_cot.bind(
            ctx,
            &arena,
            &trace::TraceCotangentBindings {
                probes: &probes,
                tangent_out: pass.output(),
                cotangent: &cotangent,
                dv,
            },
        );
        let base = trace::TraceParams {
            dim: d as u32,
            in_stride: mlp.layout.layers[0].in_pad as u32,
            out_stride: MlpPass::out_stride(&mlp.cfg) as u32,
            n_tangents: tangents as u32,
            probe: trace_kind.probe_code(),
            seed: trace_kind.seed() as u32,
            ..Default::default()
        };
        Ok(LikelihoodField {
            pass,
            trace: trace_kind,
            probes,
            div,
            cotangent,
            stage_grads,
            fused,
            arena,
            probe_slots,
            cot_slots,
            base,
            init,
            divergence,
            seed_cot,
            g_init,
            g_div,
            g_cot,
            tiles: ctx.tiles,
        })
    }

    /// Work on `rows` rows; `weights[c]` are the weights of S's trace, kinetic and
    /// Frobenius terms in cotangent slot c. Sets every slot; call
    /// [`upload`](Self::upload) before recording.
    pub fn set_rows(&mut self, ctx: &GpuContext, mlp: &GpuMlp, rows: usize, weights: &[[f64; 3]]) {
        assert_eq!(weights.len(), self.cot_slots);
        self.pass.set_rows(ctx, mlp, rows);
        self.base.rows = rows as u32;
        for s in 0..=self.probe_slots {
            self.arena.set(s, &self.base);
        }
        for (c, a) in weights.iter().enumerate() {
            let p = trace::TraceParams {
                a_trace: a[0] as f32,
                a_kinetic: a[1] as f32,
                a_frobenius: a[2] as f32,
                ..self.base
            };
            self.arena.set(self.probe_slots + 1 + c, &p);
        }
    }

    /// Probe seed (and global index of row 0) of probe slot `slot`.
    pub fn set_probe_seed(&mut self, slot: usize, seed: u32, row_offset: u32) {
        let p = trace::TraceParams {
            seed,
            row_offset,
            ..self.base
        };
        self.arena.set(slot, &p);
    }

    pub fn upload(&self, ctx: &GpuContext) {
        self.arena
            .upload(ctx, 0..self.probe_slots + 1 + self.cot_slots);
    }

    /// Upload only probe slots `slots` (the per-step seeds; the rest is set once).
    pub fn upload_probes(&self, ctx: &GpuContext, slots: std::ops::Range<usize>) {
        assert!(slots.end <= self.probe_slots);
        self.arena.upload(ctx, slots);
    }

    fn groups(&self) -> [u32; 3] {
        trace::per_row_groups(&self.base, &self.tiles)
    }

    /// Slots of `stage_grads` the last VJP wrote (its workgroups): the sum is ∂S/∂θ.
    pub fn grad_parts(&self) -> usize {
        self.fused.as_ref().map_or(1, |f| {
            fused_mlp::groups(self.base.rows as usize, &f.params)[0] as usize
        })
    }

    /// ∂S/∂x of the primal rows [rows, in_pad] from the last VJP (the adjoint stages read it).
    pub fn input_grad(&self) -> &wgpu::Buffer {
        match &self.fused {
            Some(f) => &f.input_grad,
            None => self
                .pass
                .input_grad
                .as_ref()
                .expect("a pass with an input gradient"),
        }
    }

    /// Whether evaluations and VJPs take the fused kernels (one dispatch each).
    pub fn is_fused(&self) -> bool {
        self.fused.is_some()
    }

    /// Draw the tangent directions into the MLP's tangent input rows (fixed until the next
    /// call: over a whole step, forward and adjoint).
    pub fn record_probe_init(&self, cp: &mut wgpu::ComputePass<'_>, slot: usize) {
        self.init.dispatch(cp, &self.g_init, slot, self.groups());
    }

    /// v and the likelihood integrands at the current input rows.
    pub fn record_eval(&self, cp: &mut wgpu::ComputePass<'_>) {
        if let Some(f) = &self.fused {
            let groups = fused_mlp::groups(self.base.rows as usize, &f.params);
            f.eval.dispatch(cp, &f.g_eval, self.probe_slots, groups);
            return;
        }
        self.pass.record_forward(cp);
        self.divergence
            .dispatch(cp, &self.g_div, self.probe_slots, self.groups());
    }

    /// ∂S/∂x (the pass's input gradient) and ∂S/∂θ (`stage_grads`) at the current input
    /// rows, with a from `cotangent` and the weights of cotangent slot `cot_slot`.
    pub fn record_vjp(&self, cp: &mut wgpu::ComputePass<'_>, cot_slot: usize) {
        if let Some(f) = &self.fused {
            let groups = fused_mlp::groups(self.base.rows as usize, &f.params);
            f.vjp
                .dispatch(cp, &f.g_vjp, self.probe_slots + 1 + cot_slot, groups);
            return;
        }
        self.pass.record_forward(cp);
        self.seed_cot.dispatch(
            cp,
            &self.g_cot,
            self.probe_slots + 1 + cot_slot,
            self.groups(),
        );
        self.pass.record_backward(cp);
    }
}

/// ∂S/∂(input) rows, ∂S/∂θ and the integrands of S at rows x (model units) and time t:
/// the GPU side of the adjoint's per-stage work, for tests and tools.
pub struct FieldVjp {
    /// [rows, 4]: divergence, ‖v‖², Frobenius estimate, 0.
    pub integrands: Vec<f32>,
    /// [rows, in_pad]: gradient of S with respect to each MLP input row.
    pub input_grad: Vec<f32>,
    /// Flat parameter layout.
    pub grads: Vec<f32>,
    /// Whether the fused kernels ran (field_subgroup.wgsl).
    pub fused: bool,
}

/// Evaluate [`FieldVjp`] once on the GPU (a per row, weights a_trace, a_kinetic, a_frobenius).
pub fn field_vjp(
    ctx: &GpuContext,
    mlp: &GpuMlp,
    x: &[f32],
    t: f64,
    trace_kind: Trace,
    a: &[f32],
    weights: [f64; 3],
) -> Result<FieldVjp> {
    let d = mlp.cfg.dim;
    let n = x.len() / d;
    let mut field = LikelihoodField::new(ctx, mlp, n, trace_kind, 1, 1)?;
    field.set_rows(ctx, mlp, n, &[weights]);
    field.set_probe_seed(0, trace_kind.seed() as u32, 0);
    field.upload(ctx);
    let in_pad = mlp.layout.layers[0].in_pad;
    let mut input = vec![0.0f32; n * in_pad];
    for (i, r) in x.chunks(d).enumerate() {
        let xr: Vec<f64> = r.iter().map(|&v| v as f64).collect();
        for (c, v) in crate::model::input_row(&mlp.cfg, &xr, t).iter().enumerate() {
            input[i * in_pad + c] = *v as f32;
        }
    }
    ctx.queue
        .write_buffer(&field.pass.input, 0, bytemuck::cast_slice(&input));
    ctx.queue
        .write_buffer(&field.cotangent, 0, bytemuck::cast_slice(a));
    let mut enc = ctx.device.create_command_encoder(&Default::default());
    {
        let mut cp = enc.begin_compute_pass(&Default::default());
        field.record_probe_init(&mut cp, 0);
        field.record_eval(&mut cp);
        field.record_vjp(&mut cp, 0);
    }
    ctx.submit(enc)?;
    Ok(FieldVjp {
        integrands: ctx.read(&field.div, 0, n * trace::DIV_STRIDE)?,
        input_grad: ctx.read(field.input_grad(), 0, n * in_pad)?,
        grads: ctx.read_slot_sum(
            &field.stage_grads,
            field.grad_parts(),
            mlp.layout.total,
            mlp.layout.total,
        )?,
        fused: field.is_fused(),
    })
}

/// The buffers of a likelihood field that its fused kernels bind besides the MLP's.
struct FieldBuffers<'a> {
    probes: &'a wgpu::Buffer,
    div: &'a wgpu::Buffer,
    cotangent: &'a wgpu::Buffer,
    stage_grads: &'a wgpu::Buffer,
}

impl FusedField {
    /// The one-dispatch evaluation and VJP over `pass`'s input and output rows.
    fn new(
        ctx: &GpuContext,
        mlp: &GpuMlp,
        pass: &MlpPass,
        arena: &UniformArena,
        bufs: &FieldBuffers,
        tangents: usize,
    ) -> Result<FusedField> {
        let fl = FusedLayout::new(
            &mlp.layout,
            pass.capacity,
            1 + tangents,
            true,
            mlp.layout.total,
        )?;
        let table = ctx.uniform_from("fused field table", bytemuck::bytes_of(&fl.table));
        let act = ctx.storage("fused field activations", fl.act_len)?;
        let out_stride = MlpPass::out_stride(&mlp.cfg);
        let dv = ctx.storage("dS/dv", (1 + tangents) * pass.capacity * out_stride)?;
        let input_grad = ctx.storage("dS/dx", pass.capacity * mlp.layout.layers[0].in_pad)?;
        let eval = field::field_eval_subgroup(ctx)?;
        let vjp = field::field_vjp_subgroup(ctx)?;
        let g_eval = eval.bind(
            ctx,
            arena,
            &field::EvalBindings {
                tangent_input: &pass.input,
                probes: bufs.probes,
                tangent_out: pass.output(),
                div: bufs.div,
                table: &table,
                params: &mlp.params,
                act: &act,
            },
        );
        let g_vjp = vjp.bind(
            ctx,
            arena,
            &field::VjpBindings {
                tangent_input: &pass.input,
                probes: bufs.probes,
                tangent_out: pass.output(),
                cotangent: bufs.cotangent,
                dv: &dv,
                table: &table,
                params: &mlp.params,
                act: &act,
                grad_parts: bufs.stage_grads,
                input_grad: &input_grad,
            },
        );
        Ok(FusedField {
            eval,
            vjp,
            g_eval,
            g_vjp,
            params: fl.table.s,
            dv,
            input_grad,
            _table: table,
            _act: act,
        })
    }
}
