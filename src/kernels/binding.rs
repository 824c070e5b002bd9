//! The host side of the host↔shader contract, declared once per entry point.
//!
//! Every entry point binds its parameter struct at binding 0 (a [`UniformArena`] slot with
//! a dynamic offset) and named buffers after it. A wrapper declares those buffers with
//! [`bindings!`](crate::bindings) as a struct whose field names are the WGSL variable
//! names, and the parameter struct with [`params!`](crate::params), which records each
//! field's offset. Callers fill the struct by name ([`Entry::bind`]); no caller sees a
//! binding number. `tests/bindings.rs` reflects every entry point with naga and checks
//! names, binding numbers, access modes and the parameter struct's offsets and size
//! against these declarations.

use super::{Kernel, Shader};
use crate::error::Result;
use crate::gpu::{GpuContext, UniformArena};
use std::marker::PhantomData;
use std::sync::Arc;

/// How a buffer after binding 0 is bound.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// `var<storage, read>`.
    Read,
    /// `var<storage, read_write>`.
    ReadWrite,
    /// A small constant table as a uniform buffer: a software adapter knows its values are
    /// the same in every lane (real branches, scalar loads) where a storage read is per lane.
    Uniform,
}

/// One named buffer binding of an entry point.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Slot {
    /// The WGSL variable's name.
    pub name: &'static str,
    pub binding: u32,
    pub access: Access,
}

/// One field of a parameter struct: its name and byte offset.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Field {
    pub name: &'static str,
    pub offset: usize,
}

/// A parameter struct that mirrors a WGSL uniform struct (declared with
/// [`params!`](crate::params)).
pub trait Params: bytemuck::Pod {
    /// The WGSL struct's name.
    const WGSL_NAME: &'static str;
    /// Fields in declaration order (padding fields, named `_…`, included).
    const FIELDS: &'static [Field];
}

/// The buffers an entry point binds after its parameter slot (declared with
/// [`bindings!`](crate::bindings)); several entry points of one family may share a set.
pub trait Bindings: 'static {
    /// The parameter struct at binding 0.
    type Params: Params;
    /// The buffers by name, as callers fill them.
    type Buffers<'a>;
    /// The slots, in the order of [`Bindings::buffers`].
    const SLOTS: &'static [Slot];
    /// The buffers of `b` in slot order.
    fn buffers<'a>(b: &Self::Buffers<'a>) -> Vec<&'a wgpu::Buffer>;
}

/// What the reflection test checks of one entry point.
#[derive(Clone, Copy, Debug)]
pub struct Spec {
    pub shader: Shader,
    pub entry: &'static str,
    pub slots: &'static [Slot],
    pub params: &'static str,
    pub params_fields: &'static [Field],
    pub params_size: usize,
}

/// An entry point of a shader family with its binding set `B`: the one place that names
/// it, used both to compile it ([`EntryPoint::get`]) and by the reflection test.
pub struct EntryPoint<B: Bindings> {
    pub shader: Shader,
    pub entry: &'static str,
    _b: PhantomData<fn() -> B>,
}

impl<B: Bindings> EntryPoint<B> {
    pub const fn new(shader: Shader, entry: &'static str) -> Self {
        EntryPoint {
            shader,
            entry,
            _b: PhantomData,
        }
    }

    /// The compiled kernel of this entry point (compiled once per context).
    pub fn get(&self, ctx: &GpuContext) -> Result<Entry<B>> {
        Ok(Entry {
            kernel: Kernel::get(ctx, self.shader, self.entry, B::SLOTS)?,
            _b: PhantomData,
        })
    }

    /// What the reflection test checks.
    pub fn spec(&self) -> Spec {
        Spec {
            shader: self.shader,
            entry: self.entry,
            slots: B::SLOTS,
            params: <B::Params as Params>::WGSL_NAME,
            params_fields: <B::Params as Params>::FIELDS,
            params_size: std::mem::size_of::<B::Params>(),
        }
    }
}

/// A compiled entry point that binds the buffers of `B`.
pub struct Entry<B: Bindings> {
    kernel: Arc<Kernel>,
    _b: PhantomData<fn() -> B>,
}

impl<B: Bindings> Clone for Entry<B> {
    fn clone(&self) -> Self {
        Entry {
            kernel: self.kernel.clone(),
            _b: PhantomData,
        }
    }
}

impl<B: Bindings> Entry<B> {
    /// A bind group: the arena's slot at binding 0, then the named buffers.
    pub fn bind(
        &self,
        ctx: &GpuContext,
        arena: &UniformArena,
        buffers: &B::Buffers<'_>,
    ) -> wgpu::BindGroup {
        self.kernel.bind(ctx, arena, &B::buffers(buffers))
    }

    /// Record one dispatch with the parameters in arena slot `slot`.
    pub fn dispatch(
        &self,
        pass: &mut wgpu::ComputePass<'_>,
        group: &wgpu::BindGroup,
        slot: usize,
        workgroups: [u32; 3],
    ) {
        self.kernel.dispatch(pass, group, slot, workgroups)
    }

    /// The kernel with its bind group: what a driver that picks among kernels of
    /// different binding sets at record time (the ODE stage program) keeps.
    pub fn bound(&self, ctx: &GpuContext, arena: &UniformArena, buffers: &B::Buffers<'_>) -> Bound {
        Bound {
            group: self.bind(ctx, arena, buffers),
            kernel: self.kernel.clone(),
        }
    }

    /// The entry point's name.
    pub fn name(&self) -> &'static str {
        self.kernel.entry
    }
}

/// Declares a parameter struct that mirrors a WGSL uniform struct of the same name: a
/// `#[repr(C)]` Pod struct and its [`Params`] impl with every field's offset. The caller
/// derives `Clone, Copy` (and what else it needs).
#[macro_export]
macro_rules! params {
    ($(#[$m:meta])* $vis:vis struct $name:ident {
        $($(#[$fm:meta])* $fvis:vis $field:ident : $ty:ty),+ $(,)?
    }) => {
        $(#[$m])*
        #[repr(C)]
        #[derive(bytemuck::Pod, bytemuck::Zeroable)]
        $vis struct $name { $($(#[$fm])* $fvis $field: $ty),+ }

        impl $crate::kernels::binding::Params for $name {
            const WGSL_NAME: &'static str = stringify!($name);
            const FIELDS: &'static [$crate::kernels::binding::Field] = &[$(
                $crate::kernels::binding::Field {
                    name: stringify!($field),
                    offset: ::std::mem::offset_of!($name, $field),
                }
            ),+];
        }
    };
}

/// Declares a binding set: a marker type implementing [`Bindings`] and a struct of named
/// buffers. `name: binding Access` per buffer, with the WGSL variable's name:
///
/// ```ignore
/// bindings! {
///     /// cfm_prepare: reads the pools, writes the MLP input rows and the targets.
///     pub Prepare(CfmParams) => PrepareBindings {
///         data: 1 Read, input: 2 ReadWrite, target_u: 3 ReadWrite,
///     }
/// }
/// ```
#[macro_export]
macro_rules! bindings {
    ($(
        $(#[$m:meta])* $vis:vis $marker:ident($params:ty) => $buffers:ident {
            $($(#[$fm:meta])* $field:ident : $binding:literal $access:ident),+ $(,)?
        }
    )+) => {$(
        $(#[$m])*
        $vis enum $marker {}

        #[doc = concat!("The buffers of [`", stringify!($marker), "`], by WGSL name.")]
        #[derive(Clone, Copy)]
        $vis struct $buffers<'a> {
            $($(#[$fm])* pub $field: &'a wgpu::Buffer),+
        }

        impl $crate::kernels::binding::Bindings for $marker {
            type Params = $params;
            type Buffers<'a> = $buffers<'a>;
            const SLOTS: &'static [$crate::kernels::binding::Slot] = &[$(
                $crate::kernels::binding::Slot {
                    name: stringify!($field),
                    binding: $binding,
                    access: $crate::kernels::binding::Access::$access,
                }
            ),+];
            fn buffers<'a>(b: &Self::Buffers<'a>) -> Vec<&'a wgpu::Buffer> {
                vec![$(b.$field),+]
            }
        }
    )+};
}

/// A compiled entry point with its bind group (bound by name through [`Entry::bound`]).
pub struct Bound {
    kernel: Arc<Kernel>,
    group: wgpu::BindGroup,
}

impl Bound {
    /// Record one dispatch with the parameters in arena slot `slot`.
    pub fn dispatch(&self, pass: &mut wgpu::ComputePass<'_>, slot: usize, workgroups: [u32; 3]) {
        self.kernel.dispatch(pass, &self.group, slot, workgroups)
    }
}

/// Binds fresh zeroed storage buffers of `floats` floats to every slot of an entry point:
/// for benchmarks that time a kernel alone, whatever its binding set.
pub trait BindScratch {
    /// The kernel bound to one new buffer per slot.
    fn bind_scratch(&self, ctx: &GpuContext, arena: &UniformArena, floats: usize) -> Result<Bound>;
}

impl<B: Bindings> BindScratch for Entry<B> {
    fn bind_scratch(&self, ctx: &GpuContext, arena: &UniformArena, floats: usize) -> Result<Bound> {
        let buffers = B::SLOTS
            .iter()
            .map(|s| ctx.storage(s.name, floats))
            .collect::<Result<Vec<_>>>()?;
        let refs: Vec<&wgpu::Buffer> = buffers.iter().collect();
        Ok(Bound {
            group: self.kernel.bind(ctx, arena, &refs),
            kernel: self.kernel.clone(),
        })
    }
}
