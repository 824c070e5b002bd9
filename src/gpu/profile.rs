//! Per-dispatch GPU timestamps: where the time of a training step or a solve goes, kernel
//! by kernel (`flowgpu bench --profile`). Needs the adapter's timestamp queries inside
//! compute passes (lavapipe has them; llvmpipe's GL backend does not).

use super::GpuContext;
use crate::error::{Error, Result};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Mutex;

/// Dispatches one profile can time (two queries each; wgpu allows 4096 per set).
pub const MAX_DISPATCHES: u32 = 2048;

/// The features a profiling context asks for.
pub const FEATURES: wgpu::Features =
    wgpu::Features::TIMESTAMP_QUERY.union(wgpu::Features::TIMESTAMP_QUERY_INSIDE_PASSES);

pub struct Profiler {
    query_set: wgpu::QuerySet,
    resolve: wgpu::Buffer,
    period_ns: f64,
    active: AtomicBool,
    next: AtomicU32,
    labels: Mutex<Vec<String>>,
}

/// Time spent in one kernel over a profile.
#[derive(Clone, Debug, serde::Serialize)]
pub struct KernelTime {
    /// `file::entry`, e.g. `matmul.wgsl::linear_forward`.
    pub kernel: String,
    pub dispatches: usize,
    pub total_ms: f64,
}

impl Profiler {
    pub(crate) fn new(device: &wgpu::Device, queue: &wgpu::Queue) -> Self {
        let query_set = device.create_query_set(&wgpu::QuerySetDescriptor {
            label: Some("profile"),
            ty: wgpu::QueryType::Timestamp,
            count: 2 * MAX_DISPATCHES,
        });
        let resolve = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("profile resolve"),
            size: 16 * MAX_DISPATCHES as u64,
            usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: false,
        });
        Profiler {
            query_set,
            resolve,
            period_ns: queue.get_timestamp_period() as f64,
            active: AtomicBool::new(false),
            next: AtomicU32::new(0),
            labels: Mutex::new(Vec::new()),
        }
    }

    /// Start timing every dispatch recorded from now on.
    pub fn start(&self) {
        self.next.store(0, Ordering::SeqCst);
        self.labels
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        self.active.store(true, Ordering::SeqCst);
    }

    /// Record `dispatch` between two timestamps when a profile is running and has room.
    pub(crate) fn around(
        &self,
        pass: &mut wgpu::ComputePass<'_>,
        label: impl FnOnce() -> String,
        dispatch: impl FnOnce(&mut wgpu::ComputePass<'_>),
    ) {
        if !self.active.load(Ordering::Relaxed) {
            return dispatch(pass);
        }
        let i = self.next.fetch_add(1, Ordering::SeqCst);
        if i >= MAX_DISPATCHES {
            return dispatch(pass);
        }
        self.labels
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(label());
        pass.write_timestamp(&self.query_set, 2 * i);
        dispatch(pass);
        pass.write_timestamp(&self.query_set, 2 * i + 1);
    }

    /// Stop, wait for the GPU, and sum the time of the recorded dispatches per kernel
    /// (largest first).
    pub fn finish(&self, ctx: &GpuContext) -> Result<Vec<KernelTime>> {
        self.active.store(false, Ordering::SeqCst);
        let labels = std::mem::take(&mut *self.labels.lock().unwrap_or_else(|p| p.into_inner()));
        let n = labels.len() as u32;
        if n == 0 {
            return Ok(Vec::new());
        }
        let mut enc = ctx.device.create_command_encoder(&Default::default());
        enc.resolve_query_set(&self.query_set, 0..2 * n, &self.resolve, 0);
        ctx.submit(enc)?;
        let raw = ctx.read(&self.resolve, 0, 4 * n as usize)?;
        let ticks: Vec<u64> = raw
            .chunks(2)
            .map(|c| c[0].to_bits() as u64 | ((c[1].to_bits() as u64) << 32))
            .collect();
        let mut out: Vec<KernelTime> = Vec::new();
        for (i, label) in labels.into_iter().enumerate() {
            let dt = ticks[2 * i + 1].saturating_sub(ticks[2 * i]) as f64 * self.period_ns;
            match out.iter_mut().find(|k| k.kernel == label) {
                Some(k) => {
                    k.dispatches += 1;
                    k.total_ms += dt * 1e-6;
                }
                None => out.push(KernelTime {
                    kernel: label,
                    dispatches: 1,
                    total_ms: dt * 1e-6,
                }),
            }
        }
        out.sort_by(|a, b| b.total_ms.total_cmp(&a.total_ms));
        if out.iter().all(|k| k.total_ms == 0.0) {
            return Err(Error::Gpu(
                "the adapter returned zero timestamps; it cannot profile".into(),
            ));
        }
        Ok(out)
    }
}
