//! Uniform parameters of many dispatches packed into one buffer.
//!
//! Each dispatch's parameter struct sits in its own 256-byte slot (the largest
//! `min_uniform_buffer_offset_alignment` any backend requires) and is bound with a dynamic
//! offset, so one bind group per buffer set serves every layer and every step, and the
//! whole table is written with a single `write_buffer` per submit at most.

use crate::gpu::GpuContext;

pub const SLOT_BYTES: usize = 256;

pub struct UniformArena {
    host: Vec<u8>,
    pub buffer: wgpu::Buffer,
}

impl UniformArena {
    /// Room for `slots` parameter structs.
    pub fn new(ctx: &GpuContext, label: &str, slots: usize) -> Self {
        let host = vec![0u8; slots.max(1) * SLOT_BYTES];
        let buffer = ctx.uniform_from(label, &host);
        UniformArena { host, buffer }
    }

    pub fn slots(&self) -> usize {
        self.host.len() / SLOT_BYTES
    }

    /// Store `value` in slot `slot` (host side; call [`upload`](Self::upload) to send).
    pub fn set<T: bytemuck::Pod>(&mut self, slot: usize, value: &T) -> u32 {
        let bytes = bytemuck::bytes_of(value);
        assert!(
            bytes.len() <= SLOT_BYTES,
            "uniform struct larger than a slot"
        );
        let at = slot * SLOT_BYTES;
        self.host[at..at + bytes.len()].copy_from_slice(bytes);
        at as u32
    }

    /// Dynamic offset of a slot.
    pub fn offset(slot: usize) -> u32 {
        (slot * SLOT_BYTES) as u32
    }

    /// Send slots `range` to the GPU.
    pub fn upload(&self, ctx: &GpuContext, range: std::ops::Range<usize>) {
        let (a, b) = (range.start * SLOT_BYTES, range.end * SLOT_BYTES);
        ctx.queue
            .write_buffer(&self.buffer, a as u64, &self.host[a..b]);
    }
}
