//! The device profile: workgroup shapes and kernel variants for an adapter, a pure
//! function of its class, its subgroup sizes and the [`Settings`].

use super::settings::Settings;
use super::AdapterClass;

/// Workgroup shapes and batching choices, fixed per adapter class. (The register tiles
/// per thread are fixed in the WGSL files; their wrappers mirror them.)
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tiles {
    /// 2-D workgroup shape of the matmul-like kernels.
    pub wg_x: u32,
    pub wg_y: u32,
    /// Workgroup size of the 1-D kernels (also their reduction width).
    pub wg1: u32,
    /// Rows per weight-gradient partial sum.
    pub weight_chunk_rows: u32,
    /// Batches up to this many rows take one chunk (no reduction pass).
    pub single_chunk_rows: u32,
    /// The MLP kernels use the subgroup-broadcast tiles of `matmul_subgroup.wgsl` and
    /// `mlp_backward_subgroup.wgsl` (adapters whose subgroups are exactly 8 lanes).
    pub subgroup8: bool,
    /// Small models train with the one-dispatch step of `cfm_step_subgroup.wgsl` (needs
    /// `subgroup8`; `Settings::fused_step`).
    pub fused_step: bool,
    /// The adapter runs a one-subgroup workgroup as one SIMD thread, in program order (a
    /// CPU adapter: llvmpipe), so its lanes see each other's storage writes without a
    /// barrier and the fused step drops its barriers between phases (`LOCKSTEP_SUBGROUP`
    /// in the preamble; `Settings::phase_barriers` keeps them).
    pub lockstep_subgroup: bool,
}

impl Tiles {
    /// Software adapters run a workgroup on one core in SIMD-8 groups: small workgroups,
    /// long chunks. Real GPUs want many threads per workgroup and more chunks.
    pub fn for_class(class: AdapterClass) -> Tiles {
        match class {
            AdapterClass::Software => Tiles {
                wg_x: 8,
                wg_y: 8,
                wg1: 256,
                weight_chunk_rows: 256,
                single_chunk_rows: 256,
                subgroup8: false,
                fused_step: false,
                lockstep_subgroup: false,
            },
            AdapterClass::Hardware => Tiles {
                wg_x: 16,
                wg_y: 16,
                wg1: 256,
                weight_chunk_rows: 128,
                single_chunk_rows: 128,
                subgroup8: false,
                fused_step: false,
                lockstep_subgroup: false,
            },
        }
    }

    /// The tiles for an adapter: its class's preset, with the subgroup tiles when the
    /// device has subgroups of exactly 8 lanes (lavapipe: 2–3× the GFLOP/s of the plain
    /// tiles) unless the settings turn them off or fix the plain tiles' shape. A pure
    /// function of the adapter and the settings.
    pub fn for_adapter(
        class: AdapterClass,
        subgroup_sizes: (u32, u32),
        subgroups: bool,
        settings: &Settings,
    ) -> Tiles {
        if let Some([wg_x, wg_y, chunk]) = settings.tiles {
            // Tuning runs of the plain tiles.
            return Tiles {
                wg_x,
                wg_y,
                weight_chunk_rows: chunk,
                single_chunk_rows: chunk,
                ..Self::for_class(class)
            };
        }
        let base = Self::for_class(class);
        if !subgroups || subgroup_sizes != (8, 8) || !settings.subgroup_tiles {
            return base;
        }
        Tiles {
            subgroup8: true,
            fused_step: settings.fused_step,
            lockstep_subgroup: class == AdapterClass::Software && !settings.phase_barriers,
            // A subgroup weight-gradient workgroup covers 16 × 32 weights: one chunk of up to
            // 1024 rows still gives 2 cores enough workgroups at width 64 and saves the
            // reduction pass (MLE steps at batch 256 × 3 stacked rows: 128 dispatches);
            // longer batches keep 256-row chunks (1024 measured ~10% slower at W-fm).
            single_chunk_rows: 1024,
            ..base
        }
    }

    /// Name of the MLP kernel variant, as `flowgpu bench` and `adapters` report it.
    pub fn variant(&self) -> &'static str {
        if self.subgroup8 {
            "subgroup8"
        } else {
            "plain"
        }
    }
}
