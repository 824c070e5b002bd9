//! WGSL kernel families and their host wrappers, one module per file in `shaders/`.
//!
//! A family's source is `common.wgsl` + its own file, prefixed by a small generated
//! preamble of tile constants chosen per adapter class. Every entry point has an explicit
//! bind-group layout: binding 0 is its parameter struct in a [`UniformArena`] slot (dynamic
//! offset), the others are storage buffers in the order the wrapper lists them.

pub mod adam;
pub mod backprop;
pub mod binding;
pub mod cfm;
pub mod cfm_step;
pub mod codes;
pub mod field;
pub mod fused_mlp;
pub mod matmul;
pub mod mle;
pub mod mlp_backward;
pub mod ode;
pub mod ot;
pub mod trace;

pub use binding::{Access, BindScratch, Bindings, Bound, Entry, EntryPoint, Slot, Spec};

use crate::error::{Error, Result};
pub use crate::gpu::Tiles;
use crate::gpu::{GpuContext, UniformArena};
use std::sync::Arc;

/// One WGSL file of `shaders/`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Shader {
    Matmul,
    MlpBackward,
    Cfm,
    Adam,
    Ode,
    Trace,
    Ot,
    Mle,
    Backprop,
    /// matmul.wgsl + matmul_subgroup.wgsl (adapters with 8-lane subgroups).
    MatmulSubgroup,
    /// mlp_backward.wgsl + mlp_backward_subgroup.wgsl (adapters with 8-lane subgroups).
    MlpBackwardSubgroup,
    /// fused_mlp_subgroup.wgsl + cfm.wgsl + cfm_step_subgroup.wgsl: a fused flow-matching
    /// step for small models (adapters with 8-lane subgroups).
    CfmStepSubgroup,
    /// fused_mlp_subgroup.wgsl + trace.wgsl + field_subgroup.wgsl: a fused likelihood field
    /// evaluation and VJP for small models (adapters with 8-lane subgroups).
    FieldSubgroup,
}

const COMMON: &str = include_str!("../../shaders/common.wgsl");
/// The tile and broadcast steps the subgroup families share (after common.wgsl).
const SUBGROUP_TILES: &str = include_str!("../../shaders/subgroup_tiles.wgsl");
/// A whole small MLP forward and backward in one workgroup (after subgroup_tiles.wgsl), for
/// the fused families.
const FUSED_MLP: &str = include_str!("../../shaders/fused_mlp_subgroup.wgsl");
/// The Gaussian paths and prediction conversions (before cfm.wgsl and ode.wgsl).
const PATHS: &str = include_str!("../../shaders/path.wgsl");

impl Shader {
    pub const ALL: [Shader; 13] = [
        Shader::Matmul,
        Shader::MlpBackward,
        Shader::Cfm,
        Shader::Adam,
        Shader::Ode,
        Shader::Trace,
        Shader::Ot,
        Shader::Mle,
        Shader::Backprop,
        Shader::MatmulSubgroup,
        Shader::MlpBackwardSubgroup,
        Shader::CfmStepSubgroup,
        Shader::FieldSubgroup,
    ];

    pub fn file_name(self) -> &'static str {
        match self {
            Shader::Matmul => "matmul.wgsl",
            Shader::MlpBackward => "mlp_backward.wgsl",
            Shader::Cfm => "cfm.wgsl",
            Shader::Adam => "adam.wgsl",
            Shader::Ode => "ode.wgsl",
            Shader::Trace => "trace.wgsl",
            Shader::Ot => "ot.wgsl",
            Shader::Mle => "mle.wgsl",
            Shader::Backprop => "backprop.wgsl",
            Shader::MatmulSubgroup => "matmul_subgroup.wgsl",
            Shader::MlpBackwardSubgroup => "mlp_backward_subgroup.wgsl",
            Shader::CfmStepSubgroup => "cfm_step_subgroup.wgsl",
            Shader::FieldSubgroup => "field_subgroup.wgsl",
        }
    }

    /// Whether the family uses subgroup operations (and so needs `Features::SUBGROUP`).
    pub fn needs_subgroups(self) -> bool {
        matches!(
            self,
            Shader::MatmulSubgroup
                | Shader::MlpBackwardSubgroup
                | Shader::CfmStepSubgroup
                | Shader::FieldSubgroup
        )
    }

    /// The family this one extends: its file is compiled after the base family's.
    fn base(self) -> Option<Shader> {
        match self {
            Shader::MatmulSubgroup => Some(Shader::Matmul),
            Shader::MlpBackwardSubgroup => Some(Shader::MlpBackward),
            Shader::CfmStepSubgroup => Some(Shader::Cfm),
            Shader::FieldSubgroup => Some(Shader::Trace),
            _ => None,
        }
    }

    fn body(self) -> &'static str {
        match self {
            Shader::Matmul => include_str!("../../shaders/matmul.wgsl"),
            Shader::MlpBackward => include_str!("../../shaders/mlp_backward.wgsl"),
            Shader::Cfm => include_str!("../../shaders/cfm.wgsl"),
            Shader::Adam => include_str!("../../shaders/adam.wgsl"),
            Shader::Ode => include_str!("../../shaders/ode.wgsl"),
            Shader::Trace => include_str!("../../shaders/trace.wgsl"),
            Shader::Ot => include_str!("../../shaders/ot.wgsl"),
            Shader::Mle => include_str!("../../shaders/mle.wgsl"),
            Shader::Backprop => include_str!("../../shaders/backprop.wgsl"),
            Shader::MatmulSubgroup => include_str!("../../shaders/matmul_subgroup.wgsl"),
            Shader::MlpBackwardSubgroup => {
                include_str!("../../shaders/mlp_backward_subgroup.wgsl")
            }
            Shader::CfmStepSubgroup => include_str!("../../shaders/cfm_step_subgroup.wgsl"),
            Shader::FieldSubgroup => include_str!("../../shaders/field_subgroup.wgsl"),
        }
    }

    /// The full WGSL compiled for an adapter class.
    pub fn source(self, tiles: &Tiles) -> String {
        let base = self.base().map_or("", Shader::body);
        let subgroup = if self.needs_subgroups() {
            SUBGROUP_TILES
        } else {
            ""
        };
        let fused = match self {
            Shader::CfmStepSubgroup | Shader::FieldSubgroup => FUSED_MLP,
            _ => "",
        };
        let paths = match self {
            Shader::Cfm | Shader::CfmStepSubgroup | Shader::Ode => PATHS,
            _ => "",
        };
        format!(
            "{}\n{}\n{}\n{}\n{}\n{}\n{}",
            preamble(tiles),
            COMMON,
            subgroup,
            fused,
            paths,
            base,
            self.body()
        )
    }
}

/// The generated head of every family: the tile constants of `tiles` and the constants
/// shared with Rust ([`codes`]).
fn preamble(tiles: &Tiles) -> String {
    format!(
        "// generated by src/kernels/mod.rs\nconst WG_X: u32 = {}u;\nconst WG_Y: u32 = {}u;\nconst WG1: u32 = {}u;\nconst LOCKSTEP_SUBGROUP: bool = {};\n// shared with Rust: src/kernels/codes.rs\n{}",
        tiles.wg_x,
        tiles.wg_y,
        tiles.wg1,
        tiles.lockstep_subgroup,
        codes::wgsl()
    )
}

/// Parse and validate a family's WGSL with naga (no adapter needed).
pub fn validate(shader: Shader, tiles: &Tiles) -> std::result::Result<(), String> {
    let src = shader.source(tiles);
    let module = naga::front::wgsl::parse_str(&src)
        .map_err(|e| format!("{}: {}", shader.file_name(), e.emit_to_string(&src)))?;
    let caps = if shader.needs_subgroups() {
        naga::valid::Capabilities::SUBGROUP
    } else {
        naga::valid::Capabilities::default()
    };
    naga::valid::Validator::new(naga::valid::ValidationFlags::all(), caps)
        .validate(&module)
        .map_err(|e| format!("{}: {}", shader.file_name(), e.emit_to_string(&src)))?;
    Ok(())
}

/// One compiled entry point with its bind-group layout.
pub struct Kernel {
    pub shader: Shader,
    pub entry: &'static str,
    pipeline: wgpu::ComputePipeline,
    layout: wgpu::BindGroupLayout,
    storage: &'static [Slot],
    profiler: Option<Arc<crate::gpu::profile::Profiler>>,
}

impl Kernel {
    /// The kernel `entry` of `shader`, compiled once per context and cached (callers go
    /// through [`EntryPoint::get`], which names the binding set).
    pub(crate) fn get(
        ctx: &GpuContext,
        shader: Shader,
        entry: &'static str,
        storage: &'static [Slot],
    ) -> Result<Arc<Kernel>> {
        let key = (shader.file_name(), entry);
        let mut cache = ctx.pipelines.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(k) = cache
            .get(&key)
            .and_then(|k| k.clone().downcast::<Kernel>().ok())
        {
            return Ok(k);
        }
        let k = Arc::new(Self::compile(ctx, shader, entry, storage)?);
        cache.insert(key, k.clone());
        Ok(k)
    }

    fn compile(
        ctx: &GpuContext,
        shader: Shader,
        entry: &'static str,
        storage: &'static [Slot],
    ) -> Result<Kernel> {
        let tiles = ctx.tiles;
        let scope = ctx.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let desc = wgpu::ShaderModuleDescriptor {
            label: Some(shader.file_name()),
            source: wgpu::ShaderSource::Wgsl(shader.source(&tiles).into()),
        };
        let module = ctx.device.create_shader_module(desc);
        let mut entries = vec![wgpu::BindGroupLayoutEntry {
            binding: 0,
            visibility: wgpu::ShaderStages::COMPUTE,
            ty: wgpu::BindingType::Buffer {
                ty: wgpu::BufferBindingType::Uniform,
                has_dynamic_offset: true,
                min_binding_size: None,
            },
            count: None,
        }];
        for &Slot {
            binding, access, ..
        } in storage
        {
            let ty = match access {
                Access::Uniform => wgpu::BufferBindingType::Uniform,
                _ => wgpu::BufferBindingType::Storage {
                    read_only: access == Access::Read,
                },
            };
            entries.push(wgpu::BindGroupLayoutEntry {
                binding,
                visibility: wgpu::ShaderStages::COMPUTE,
                ty: wgpu::BindingType::Buffer {
                    ty,
                    has_dynamic_offset: false,
                    min_binding_size: None,
                },
                count: None,
            });
        }
        let layout = ctx
            .device
            .create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
                label: Some(entry),
                entries: &entries,
            });
        let pipeline_layout = ctx
            .device
            .create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
                label: Some(entry),
                bind_group_layouts: &[Some(&layout)],
                immediate_size: 0,
            });
        let pipeline = ctx
            .device
            .create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(entry),
                layout: Some(&pipeline_layout),
                module: &module,
                entry_point: Some(entry),
                compilation_options: Default::default(),
                cache: ctx.disk_cache.as_ref().map(|c| &c.cache),
            });
        if let Some(c) = &ctx.disk_cache {
            c.touch();
        }
        if let Some(e) = pollster::block_on(scope.pop()) {
            return Err(Error::Gpu(format!(
                "compiling {}::{entry} failed: {e}",
                shader.file_name()
            )));
        }
        Ok(Kernel {
            shader,
            entry,
            pipeline,
            layout,
            storage,
            profiler: ctx.profiler.clone(),
        })
    }

    /// A bind group: the arena's slot at binding 0, then `buffers` in the order of the
    /// kernel's storage bindings.
    pub(crate) fn bind(
        &self,
        ctx: &GpuContext,
        arena: &UniformArena,
        buffers: &[&wgpu::Buffer],
    ) -> wgpu::BindGroup {
        assert_eq!(
            buffers.len(),
            self.storage.len(),
            "{}: wrong number of buffers",
            self.entry
        );
        let mut entries = vec![wgpu::BindGroupEntry {
            binding: 0,
            resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                buffer: &arena.buffer,
                offset: 0,
                size: std::num::NonZeroU64::new(crate::gpu::arena::SLOT_BYTES as u64),
            }),
        }];
        for (slot, buf) in self.storage.iter().zip(buffers) {
            entries.push(wgpu::BindGroupEntry {
                binding: slot.binding,
                resource: buf.as_entire_binding(),
            });
        }
        ctx.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some(self.entry),
            layout: &self.layout,
            entries: &entries,
        })
    }

    /// Record one dispatch with the parameters in arena slot `slot`.
    pub(crate) fn dispatch(
        &self,
        pass: &mut wgpu::ComputePass<'_>,
        group: &wgpu::BindGroup,
        slot: usize,
        workgroups: [u32; 3],
    ) {
        if workgroups.contains(&0) {
            return;
        }
        let record = |pass: &mut wgpu::ComputePass<'_>| {
            pass.set_pipeline(&self.pipeline);
            pass.set_bind_group(0, group, &[UniformArena::offset(slot)]);
            pass.dispatch_workgroups(workgroups[0], workgroups[1], workgroups[2]);
        };
        match &self.profiler {
            Some(p) => p.around(
                pass,
                || format!("{}::{}", self.shader.file_name(), self.entry),
                record,
            ),
            None => record(pass),
        }
    }
}

/// Every entry point of every wrapper: what `tests/bindings.rs` reflects with naga.
pub fn specs() -> Vec<Spec> {
    [
        adam::specs(),
        backprop::specs(),
        cfm::specs(),
        cfm_step::specs(),
        field::specs(),
        matmul::specs(),
        mle::specs(),
        mlp_backward::specs(),
        ode::specs(),
        ot::specs(),
        trace::specs(),
    ]
    .concat()
}

/// Workgroups for `threads` threads of a 1-D kernel with `wg` threads per workgroup,
/// folded into a 2-D grid (see `flat_index` in common.wgsl).
pub fn grid_1d(threads: usize, wg: u32) -> [u32; 3] {
    let groups = threads.div_ceil(wg as usize).max(1);
    let x = groups.min(65535);
    [x as u32, groups.div_ceil(x) as u32, 1]
}

pub(crate) fn div_ceil(a: usize, b: u32) -> u32 {
    a.div_ceil(b as usize) as u32
}
