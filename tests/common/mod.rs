//! Shared test helpers: one GPU context per test binary, chosen like the CLI does
//! (FLOWGPU_ADAPTER / FLOWGPU_BACKEND override), and comparison with tolerances.
#![allow(dead_code)]

use flowgpu::{AdapterChoice, BackendChoice, GpuContext};
use std::sync::OnceLock;

pub fn ctx() -> &'static GpuContext {
    static CTX: OnceLock<GpuContext> = OnceLock::new();
    CTX.get_or_init(|| {
        let backend = std::env::var("FLOWGPU_BACKEND")
            .ok()
            .map(|b| match b.as_str() {
                "vulkan" => BackendChoice::Vulkan,
                "gl" => BackendChoice::Gl,
                "metal" => BackendChoice::Metal,
                "dx12" => BackendChoice::Dx12,
                other => panic!("unknown FLOWGPU_BACKEND {other}"),
            });
        let choice = AdapterChoice {
            name: std::env::var("FLOWGPU_ADAPTER").ok(),
            backend,
        };
        let c = GpuContext::new(&choice).expect("tests need a wgpu adapter (see README)");
        eprintln!("test adapter: {} ({})", c.adapter_name(), c.backend_name());
        c
    })
}

/// Largest violation of |a − b| ≤ atol + rtol·|b|, as a ratio (≤ 1 passes).
pub fn assert_close(what: &str, got: &[f32], want: &[f64], rtol: f64, atol: f64) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let mut worst = (0.0f64, 0usize);
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let err = (g as f64 - w).abs();
        // A NaN or infinite value is the worst violation there is.
        let r = if err == 0.0 {
            0.0
        } else if err.is_finite() {
            err / (atol + rtol * w.abs())
        } else {
            f64::INFINITY
        };
        if r > worst.0 {
            worst = (r, i);
        }
    }
    let i = worst.1;
    assert!(
        worst.0 <= 1.0,
        "{what}: element {i} got {} want {} (|err| / tol = {:.3})",
        got[i],
        want[i],
        worst.0
    );
}
