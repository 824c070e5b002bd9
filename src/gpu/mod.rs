//! GPU context: adapter choice, device, buffers, error capture and readback.
//!
//! Every GPU command takes an [`AdapterChoice`]; the default prefers a hardware adapter
//! and falls back to a software one (lavapipe over Vulkan first, llvmpipe over GL next).
//! wgpu errors never panic: they are captured by an uncaptured-error handler and a
//! device-lost callback and surface as [`Error::Gpu`] at the next [`GpuContext::check`].

pub mod arena;
pub mod pipeline_cache;
pub mod profile;
pub mod settings;
pub mod tiles;

pub use arena::UniformArena;
pub use settings::Settings;
pub use tiles::Tiles;

use crate::error::{Error, Result};
use std::sync::{Arc, Mutex};
use wgpu::util::DeviceExt;

/// Compiled pipelines of a context (see [`GpuContext::pipelines`]).
pub(crate) type PipelineMap = Mutex<
    std::collections::HashMap<(&'static str, &'static str), Arc<dyn std::any::Any + Send + Sync>>,
>;

/// Which backend to restrict the adapter search to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendChoice {
    Vulkan,
    Metal,
    Dx12,
    Gl,
}

impl BackendChoice {
    fn backends(self) -> wgpu::Backends {
        match self {
            BackendChoice::Vulkan => wgpu::Backends::VULKAN,
            BackendChoice::Metal => wgpu::Backends::METAL,
            BackendChoice::Dx12 => wgpu::Backends::DX12,
            BackendChoice::Gl => wgpu::Backends::GL,
        }
    }
}

/// How to pick an adapter: an optional case-insensitive name substring and backend.
#[derive(Clone, Debug, Default)]
pub struct AdapterChoice {
    pub name: Option<String>,
    pub backend: Option<BackendChoice>,
    /// Open the device with timestamp queries and a [`profile::Profiler`].
    pub profile: bool,
    /// Where the on-disk pipeline cache lives (None: `$FLOWGPU_PIPELINE_CACHE` or the
    /// user's cache directory; see [`pipeline_cache`]).
    pub pipeline_cache_dir: Option<std::path::PathBuf>,
}

/// Broad class of an adapter; kernels choose their tile shapes by it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AdapterClass {
    /// A software rasterizer on the CPU (lavapipe, llvmpipe, WARP, SwiftShader).
    Software,
    /// Discrete, integrated or virtual GPU.
    Hardware,
}

/// What `flowgpu adapters` prints about one adapter.
#[derive(Clone, Debug, serde::Serialize)]
pub struct AdapterSummary {
    pub name: String,
    pub backend: String,
    pub device_type: String,
    pub driver: String,
    pub driver_info: String,
    pub max_buffer_size: u64,
    pub max_storage_buffer_binding_size: u64,
    pub max_storage_buffers_per_shader_stage: u32,
    pub max_compute_workgroup_storage_size: u32,
    pub max_compute_invocations_per_workgroup: u32,
    pub max_compute_workgroups_per_dimension: u32,
    pub subgroup_sizes: (u32, u32),
    /// The MLP kernel variant flowgpu runs on it ("subgroup8" or "plain").
    pub kernel_tiles: String,
    /// The optional features that matter to flowgpu's kernels and profiling.
    pub features: Vec<String>,
}

fn backend_name(b: wgpu::Backend) -> String {
    match b {
        wgpu::Backend::Vulkan => "vulkan",
        wgpu::Backend::Metal => "metal",
        wgpu::Backend::Dx12 => "dx12",
        wgpu::Backend::Gl => "gl",
        wgpu::Backend::BrowserWebGpu => "webgpu",
        _ => "other",
    }
    .to_string()
}

fn summarize(adapter: &wgpu::Adapter, settings: &Settings) -> AdapterSummary {
    let info = adapter.get_info();
    let l = adapter.limits();
    AdapterSummary {
        name: info.name.clone(),
        backend: backend_name(info.backend),
        device_type: format!("{:?}", info.device_type),
        driver: info.driver.clone(),
        driver_info: info.driver_info.clone(),
        max_buffer_size: l.max_buffer_size,
        max_storage_buffer_binding_size: l.max_storage_buffer_binding_size,
        max_storage_buffers_per_shader_stage: l.max_storage_buffers_per_shader_stage,
        max_compute_workgroup_storage_size: l.max_compute_workgroup_storage_size,
        max_compute_invocations_per_workgroup: l.max_compute_invocations_per_workgroup,
        max_compute_workgroups_per_dimension: l.max_compute_workgroups_per_dimension,
        subgroup_sizes: (info.subgroup_min_size, info.subgroup_max_size),
        kernel_tiles: tiles_of(adapter, settings).variant().to_string(),
        features: notable_features(adapter.features()),
    }
}

fn class_of(info: &wgpu::AdapterInfo) -> AdapterClass {
    if info.device_type == wgpu::DeviceType::Cpu {
        AdapterClass::Software
    } else {
        AdapterClass::Hardware
    }
}

/// The kernel tiles for an adapter (a device opened on it requests its subgroup feature).
fn tiles_of(adapter: &wgpu::Adapter, settings: &Settings) -> Tiles {
    let info = adapter.get_info();
    Tiles::for_adapter(
        class_of(&info),
        (info.subgroup_min_size, info.subgroup_max_size),
        adapter.features().contains(wgpu::Features::SUBGROUP),
        settings,
    )
}

/// Names of the optional features flowgpu can use or report.
fn notable_features(f: wgpu::Features) -> Vec<String> {
    [
        (wgpu::Features::TIMESTAMP_QUERY, "timestamp-query"),
        (
            wgpu::Features::TIMESTAMP_QUERY_INSIDE_PASSES,
            "timestamp-query-inside-passes",
        ),
        (wgpu::Features::SUBGROUP, "subgroup"),
        (wgpu::Features::SHADER_F16, "shader-f16"),
        (wgpu::Features::PIPELINE_CACHE, "pipeline-cache"),
    ]
    .iter()
    .filter(|(flag, _)| f.contains(*flag))
    .map(|(_, name)| name.to_string())
    .collect()
}

fn instance(backend: Option<BackendChoice>) -> wgpu::Instance {
    let mut desc = wgpu::InstanceDescriptor::new_without_display_handle_from_env();
    desc.backends = match backend {
        Some(b) => b.backends(),
        None => {
            wgpu::Backends::VULKAN
                | wgpu::Backends::METAL
                | wgpu::Backends::DX12
                | wgpu::Backends::GL
        }
    };
    wgpu::Instance::new(desc)
}

/// Preference order: hardware before software, Vulkan/Metal/DX12 before GL.
fn preference(info: &wgpu::AdapterInfo) -> (u32, u32) {
    let ty = match info.device_type {
        wgpu::DeviceType::DiscreteGpu => 0,
        wgpu::DeviceType::IntegratedGpu => 1,
        wgpu::DeviceType::VirtualGpu => 2,
        wgpu::DeviceType::Other => 3,
        wgpu::DeviceType::Cpu => 4,
    };
    let be = match info.backend {
        wgpu::Backend::Vulkan | wgpu::Backend::Metal | wgpu::Backend::Dx12 => 0,
        _ => 1,
    };
    (ty, be)
}

const NO_ADAPTER_HELP: &str =
    "no GPU adapter found. To run on the CPU, install a software adapter: \
on Debian/Ubuntu `apt-get install mesa-vulkan-drivers` (Mesa lavapipe, Vulkan) or \
`libegl-mesa0 libgl1-mesa-dri` (llvmpipe, GL); see `flowgpu adapters`";

/// Every adapter wgpu can see, in preference order.
pub fn list_adapters(backend: Option<BackendChoice>) -> Result<Vec<AdapterSummary>> {
    let settings = Settings::global()?;
    let backend = backend.or(settings.backend);
    let inst = instance(backend);
    let mut adapters = pollster::block_on(inst.enumerate_adapters(inst_backends(backend)));
    adapters.sort_by_key(|a| preference(&a.get_info()));
    Ok(adapters.iter().map(|a| summarize(a, settings)).collect())
}

/// Every adapter of `backend` (all backends: None), in preference order; none is an error.
fn adapters_of(backend: Option<BackendChoice>) -> Result<Vec<wgpu::Adapter>> {
    let inst = instance(backend);
    let mut adapters = pollster::block_on(inst.enumerate_adapters(inst_backends(backend)));
    if adapters.is_empty() {
        return Err(Error::NoAdapter(NO_ADAPTER_HELP.into()));
    }
    adapters.sort_by_key(|a| preference(&a.get_info()));
    Ok(adapters)
}

fn inst_backends(backend: Option<BackendChoice>) -> wgpu::Backends {
    backend
        .map(|b| b.backends())
        .unwrap_or(wgpu::Backends::all())
}

/// Errors reported asynchronously by wgpu, kept until the next check.
type ErrorSlot = Arc<Mutex<Option<String>>>;

/// The sum, in slot order, of the first `len` floats of the `slot_len`-float slots of
/// `all` (per-workgroup partial gradients, added as adam.wgsl adds them).
pub fn sum_slots(all: &[f32], slot_len: usize, len: usize) -> Vec<f32> {
    let mut sum = all[..len].to_vec();
    for slot in all.chunks(slot_len).skip(1) {
        for (a, b) in sum.iter_mut().zip(slot) {
            *a += b;
        }
    }
    sum
}

/// A device and queue on the chosen adapter, plus what kernels need to know about it.
pub struct GpuContext {
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
    pub info: wgpu::AdapterInfo,
    pub limits: wgpu::Limits,
    pub class: AdapterClass,
    /// Tile shapes and kernel variants for this device (see [`Tiles`]).
    pub tiles: Tiles,
    errors: ErrorSlot,
    /// Compiled kernels, keyed by (shader file, entry point); their type is the kernels
    /// layer's, which this layer does not know.
    pub(crate) pipelines: PipelineMap,
    /// The driver's compiled pipelines kept on disk across runs, where the backend can
    /// (Vulkan); written back when the context is dropped.
    pub disk_cache: Option<pipeline_cache::DiskPipelineCache>,
    /// Bytes of storage buffers created so far (benchmarks report the growth).
    allocated: std::sync::atomic::AtomicU64,
    /// Per-dispatch timestamps, when opened with `AdapterChoice::profile`.
    pub profiler: Option<Arc<profile::Profiler>>,
}

impl GpuContext {
    /// Pick an adapter as `choice` says and open a device with the adapter's own limits.
    /// Where `choice` names no adapter or backend, `FLOWGPU_ADAPTER` and `FLOWGPU_BACKEND`
    /// do ([`Settings`]).
    pub fn new(choice: &AdapterChoice) -> Result<Self> {
        let settings = Settings::global()?;
        let mut adapters = adapters_of(choice.backend.or(settings.backend))?;
        if let Some(name) = choice.name.as_ref().or(settings.adapter.as_ref()) {
            let needle = name.to_lowercase();
            let all: Vec<String> = adapters
                .iter()
                .map(|a| {
                    let i = a.get_info();
                    format!("{} ({})", i.name, backend_name(i.backend))
                })
                .collect();
            adapters.retain(|a| a.get_info().name.to_lowercase().contains(&needle));
            if adapters.is_empty() {
                return Err(Error::NoAdapter(format!(
                    "no adapter name contains '{name}'; available: {}",
                    all.join(", ")
                )));
            }
        }
        let adapter = adapters.remove(0);
        Self::from_adapter(adapter, choice)
    }

    /// A context on every adapter wgpu sees (within `choice.backend`), in preference order:
    /// `--adapter all`.
    pub fn all(choice: &AdapterChoice) -> Result<Vec<Self>> {
        let settings = Settings::global()?;
        adapters_of(choice.backend.or(settings.backend))?
            .into_iter()
            .map(|a| Self::from_adapter(a, choice))
            .collect()
    }

    fn from_adapter(adapter: wgpu::Adapter, choice: &AdapterChoice) -> Result<Self> {
        let profile = choice.profile;
        let info = adapter.get_info();
        let limits = adapter.limits();
        if profile && !adapter.features().contains(profile::FEATURES) {
            return Err(Error::invalid(format!(
                "--profile needs timestamp queries inside compute passes, which {} ({}) does not have",
                info.name,
                backend_name(info.backend)
            )));
        }
        let desc = wgpu::DeviceDescriptor {
            label: Some("flowgpu"),
            required_features: (if profile {
                profile::FEATURES
            } else {
                wgpu::Features::empty()
            }) | (adapter.features()
                & (wgpu::Features::SUBGROUP | wgpu::Features::PIPELINE_CACHE)),
            required_limits: limits.clone(),
            experimental_features: wgpu::ExperimentalFeatures::disabled(),
            memory_hints: wgpu::MemoryHints::Performance,
            trace: wgpu::Trace::Off,
        };
        let (device, queue) = pollster::block_on(adapter.request_device(&desc))
            .map_err(|e| Error::Gpu(format!("cannot open device on {}: {e}", info.name)))?;
        let errors: ErrorSlot = Arc::new(Mutex::new(None));
        let slot = errors.clone();
        device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
            let mut s = slot.lock().unwrap_or_else(|p| p.into_inner());
            if s.is_none() {
                *s = Some(e.to_string());
            }
        }));
        let slot = errors.clone();
        device.set_device_lost_callback(move |reason, msg| {
            let mut s = slot.lock().unwrap_or_else(|p| p.into_inner());
            if s.is_none() && reason != wgpu::DeviceLostReason::Destroyed {
                *s = Some(format!("device lost ({reason:?}): {msg}"));
            }
        });
        let class = class_of(&info);
        let profiler = profile.then(|| Arc::new(profile::Profiler::new(&device, &queue)));
        let settings = Settings::global()?;
        let tiles = tiles_of(&adapter, settings);
        let cache_dir = choice
            .pipeline_cache_dir
            .clone()
            .or_else(|| pipeline_cache::cache_dir(&settings.pipeline_cache));
        let disk_cache = cache_dir.and_then(|dir| {
            pipeline_cache::DiskPipelineCache::open(&device, &info, device.features(), &dir)
        });
        Ok(GpuContext {
            device,
            queue,
            info,
            limits,
            class,
            tiles,
            errors,
            pipelines: Default::default(),
            disk_cache,
            allocated: Default::default(),
            profiler,
        })
    }

    /// Bytes of storage buffers created on this context so far.
    pub fn allocated_bytes(&self) -> u64 {
        self.allocated.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Adapter name and backend, as reported to users.
    pub fn adapter_name(&self) -> &str {
        &self.info.name
    }
    pub fn backend_name(&self) -> String {
        backend_name(self.info.backend)
    }

    /// Turn any error wgpu reported since the last check into an `Err`.
    pub fn check(&self) -> Result<()> {
        let mut s = self.errors.lock().unwrap_or_else(|p| p.into_inner());
        match s.take() {
            Some(msg) => Err(Error::Gpu(msg)),
            None => Ok(()),
        }
    }

    /// A zero-initialized storage buffer of `len` f32 (at least one element).
    pub fn storage(&self, label: &str, len: usize) -> Result<wgpu::Buffer> {
        let size = (len.max(4) * 4) as u64;
        if size > self.limits.max_storage_buffer_binding_size {
            return Err(Error::invalid(format!(
                "buffer '{label}' needs {size} bytes, more than this adapter's storage binding limit of {} bytes; use a smaller batch or width",
                self.limits.max_storage_buffer_binding_size
            )));
        }
        self.allocated
            .fetch_add(size, std::sync::atomic::Ordering::Relaxed);
        Ok(self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size,
            usage: wgpu::BufferUsages::STORAGE
                | wgpu::BufferUsages::COPY_SRC
                | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        }))
    }

    /// A storage buffer holding `data`.
    pub fn storage_from(&self, label: &str, data: &[f32]) -> Result<wgpu::Buffer> {
        let buf = self.storage(label, data.len())?;
        if !data.is_empty() {
            self.queue.write_buffer(&buf, 0, bytemuck::cast_slice(data));
        }
        Ok(buf)
    }

    /// A uniform buffer initialised with raw bytes.
    pub fn uniform_from(&self, label: &str, bytes: &[u8]) -> wgpu::Buffer {
        self.device
            .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some(label),
                contents: bytes,
                usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
            })
    }

    /// Submit an encoder's work.
    pub fn submit(&self, encoder: wgpu::CommandEncoder) -> Result<()> {
        self.queue.submit(Some(encoder.finish()));
        self.check()
    }

    /// Record one compute pass with `record` and submit it: one encoder, one submit.
    pub fn submit_pass(&self, record: impl FnOnce(&mut wgpu::ComputePass<'_>)) -> Result<()> {
        let mut enc = self.device.create_command_encoder(&Default::default());
        {
            let mut cp = enc.begin_compute_pass(&Default::default());
            record(&mut cp);
        }
        self.submit(enc)
    }

    /// The sum, in slot order, of the first `len` floats of `slots` slots of `slot_len`
    /// floats each (per-workgroup partial gradients, added as the kernels add them).
    pub fn read_slot_sum(
        &self,
        buf: &wgpu::Buffer,
        slots: usize,
        slot_len: usize,
        len: usize,
    ) -> Result<Vec<f32>> {
        Ok(sum_slots(
            &self.read(buf, 0, slots * slot_len)?,
            slot_len,
            len,
        ))
    }

    /// Copy `len` f32 starting at element `offset` of `buf` to the host (waits for the GPU).
    pub fn read(&self, buf: &wgpu::Buffer, offset: usize, len: usize) -> Result<Vec<f32>> {
        let mut parts = self.read_ranges(&[(buf, offset, len)])?;
        Ok(parts.pop().unwrap_or_default())
    }

    /// Several ranges `(buffer, first element, length)` of f32 to the host in one copy
    /// submit and one wait (a data-parallel step reads its gradient and loss together).
    pub fn read_ranges(&self, ranges: &[(&wgpu::Buffer, usize, usize)]) -> Result<Vec<Vec<f32>>> {
        let total: usize = ranges.iter().map(|r| r.2).sum();
        if total == 0 {
            return Ok(vec![Vec::new(); ranges.len()]);
        }
        self.read_ranges_via(&self.readback_buffer(total), ranges)
    }

    /// A host-mappable buffer of `len` f32 for [`read_ranges_via`](Self::read_ranges_via):
    /// kept by a caller that reads back every step, so no step allocates one.
    pub fn readback_buffer(&self, len: usize) -> wgpu::Buffer {
        self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("readback"),
            size: (len.max(1) * 4) as u64,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        })
    }

    /// [`read_ranges`](Self::read_ranges) through `staging` (from
    /// [`readback_buffer`](Self::readback_buffer), large enough for all the ranges).
    pub fn read_ranges_via(
        &self,
        staging: &wgpu::Buffer,
        ranges: &[(&wgpu::Buffer, usize, usize)],
    ) -> Result<Vec<Vec<f32>>> {
        let total = ranges.iter().map(|r| r.2).sum::<usize>() as u64 * 4;
        if total == 0 || total > staging.size() {
            return Err(Error::Gpu(format!(
                "a readback of {total} bytes through a {}-byte buffer",
                staging.size()
            )));
        }
        let mut enc = self.device.create_command_encoder(&Default::default());
        let mut at = 0u64;
        for &(buf, offset, len) in ranges {
            let bytes = (len * 4) as u64;
            if bytes > 0 {
                enc.copy_buffer_to_buffer(buf, (offset * 4) as u64, staging, at, bytes);
            }
            at += bytes;
        }
        self.queue.submit(Some(enc.finish()));
        let slice = staging.slice(..total);
        let (tx, rx) = std::sync::mpsc::channel();
        slice.map_async(wgpu::MapMode::Read, move |r| {
            let _ = tx.send(r);
        });
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| Error::Gpu(format!("waiting for the GPU failed: {e}")))?;
        self.check()?;
        rx.recv()
            .map_err(|_| Error::Gpu("readback callback never ran".into()))?
            .map_err(|e| Error::Gpu(format!("readback failed: {e}")))?;
        let flat = {
            let view = slice
                .get_mapped_range()
                .map_err(|e| Error::Gpu(format!("readback mapping failed: {e}")))?;
            bytemuck::cast_slice::<u8, f32>(&view).to_vec()
        };
        staging.unmap();
        let mut rest = flat.as_slice();
        Ok(ranges
            .iter()
            .map(|r| {
                let (head, tail) = rest.split_at(r.2);
                rest = tail;
                head.to_vec()
            })
            .collect())
    }

    /// Wait until all submitted work is done.
    pub fn wait(&self) -> Result<()> {
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| Error::Gpu(format!("waiting for the GPU failed: {e}")))?;
        self.check()
    }
}
