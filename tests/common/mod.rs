//! Shared test helpers: one GPU context per test binary, chosen like the CLI does
//! (FLOWGPU_ADAPTER / FLOWGPU_BACKEND override), and comparison with tolerances.
#![allow(dead_code)]

use flowgpu::gpu::AdapterClass;
use flowgpu::{AdapterChoice, BackendChoice, GpuContext};
use std::sync::OnceLock;

pub fn ctx() -> &'static GpuContext {
    static CTX: OnceLock<GpuContext> = OnceLock::new();
    CTX.get_or_init(new_ctx)
}

/// Every kernel variant the test adapter can run: the context above and a context on the
/// same adapter for each adapter class's plain tiles that differs from it — on a software
/// adapter this includes the GPU preset (16×16 workgroups, 128-row weight-gradient
/// chunks), so the tiles a hardware adapter would take are run here too, not only
/// validated.
pub fn tile_variants() -> Vec<&'static GpuContext> {
    static PLAIN: OnceLock<Vec<GpuContext>> = OnceLock::new();
    let plain = PLAIN.get_or_init(|| {
        [AdapterClass::Software, AdapterClass::Hardware]
            .into_iter()
            .map(flowgpu::kernels::Tiles::for_class)
            .filter(|t| *t != ctx().tiles)
            .map(|t| {
                let mut c = new_ctx();
                c.tiles = t;
                c
            })
            .collect()
    });
    std::iter::once(ctx()).chain(plain.iter()).collect()
}

/// The ways a small model's training step or likelihood field can run on the test adapter:
/// the context's own (the fused one-dispatch kernels for small models with 8-lane
/// subgroups; on llvmpipe without barriers between their phases), the plain tiles of each
/// preset, and with subgroup tiles the per-layer subgroup kernels and the fused kernels with
/// their barriers (as an adapter that does not run a subgroup in lockstep would).
pub fn kernel_variants() -> Vec<&'static GpuContext> {
    static MORE: OnceLock<Vec<GpuContext>> = OnceLock::new();
    let more = MORE.get_or_init(|| {
        let mut v = Vec::new();
        if ctx().tiles.fused_step {
            let mut c = new_ctx();
            c.tiles.fused_step = false;
            v.push(c);
        }
        if ctx().tiles.fused_step && ctx().tiles.lockstep_subgroup {
            let mut c = new_ctx();
            c.tiles.lockstep_subgroup = false;
            v.push(c);
        }
        v
    });
    tile_variants().into_iter().chain(more.iter()).collect()
}

/// The adapter the tests run on: FLOWGPU_ADAPTER (a name substring) and FLOWGPU_BACKEND.
pub fn choice() -> AdapterChoice {
    let backend = std::env::var("FLOWGPU_BACKEND")
        .ok()
        .map(|b| match b.as_str() {
            "vulkan" => BackendChoice::Vulkan,
            "gl" => BackendChoice::Gl,
            "metal" => BackendChoice::Metal,
            "dx12" => BackendChoice::Dx12,
            other => panic!("unknown FLOWGPU_BACKEND {other}"),
        });
    AdapterChoice {
        name: std::env::var("FLOWGPU_ADAPTER").ok(),
        backend,
        ..Default::default()
    }
}

fn new_ctx() -> GpuContext {
    {
        let choice = choice();
        let c = GpuContext::new(&choice).expect("tests need a wgpu adapter (see README)");
        eprintln!(
            "test adapter: {} ({}), subgroup tiles: {}",
            c.adapter_name(),
            c.backend_name(),
            c.tiles.subgroup8
        );
        c
    }
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

/// A model with default settings (OT path, N(0, I) source) around the given weights.
pub fn model_of(cfg: flowgpu::MlpConfig, weights: flowgpu::Weights) -> flowgpu::Model {
    let path = flowgpu::GaussianPath::Ot { sigma_min: 0.0 };
    flowgpu::Model {
        config: flowgpu::ModelConfig::new(cfg, path),
        weights,
    }
}

/// Energy distance between two 2-D point sets: 2E|X−Y| − E|X−X'| − E|Y−Y'| (0 iff equal
/// distributions).
pub fn energy_distance(a: &[f32], b: &[f32]) -> f64 {
    let mean_dist = |p: &[f32], q: &[f32]| -> f64 {
        let mut s = 0.0;
        for x in p.chunks(2) {
            for y in q.chunks(2) {
                s += (((x[0] - y[0]) as f64).powi(2) + ((x[1] - y[1]) as f64).powi(2)).sqrt();
            }
        }
        s / ((p.len() / 2) * (q.len() / 2)) as f64
    };
    2.0 * mean_dist(a, b) - mean_dist(a, a) - mean_dist(b, b)
}

/// v(x, t) = A·x + c·t + d in 2-D with A = [[a, −ω], [ω, a]] (trace 2a), represented
/// exactly by an MLP with identity activation: its flow is known in closed form.
pub fn linear_field_model(a: f64, omega: f64, c: [f64; 2], d: [f64; 2]) -> flowgpu::Model {
    use flowgpu::model::{Activation, Linear, MlpConfig, Weights};
    let cfg = MlpConfig {
        dim: 2,
        width: 3,
        depth: 1,
        activation: Activation::Identity,
        time_features: 0,
        classes: 0,
    };
    let (a, w, c0, c1) = (a as f32, omega as f32, c[0] as f32, c[1] as f32);
    let weights = Weights {
        layers: vec![
            Linear {
                in_features: 3,
                out_features: 3,
                w: vec![1., 0., 0., 0., 1., 0., 0., 0., 1.],
                b: vec![0.; 3],
            },
            Linear {
                in_features: 3,
                out_features: 2,
                w: vec![a, -w, c0, w, a, c1],
                b: vec![d[0] as f32, d[1] as f32],
            },
        ],
    };
    model_of(cfg, weights)
}

/// A model's fit to 8gaussians: held-out NLL of 1000 fresh points (seed 999; dopri5 at 1e-5,
/// exact trace), the true entropy on the same points, and KL(p‖q) = mean(log p − log q)
/// with its standard error.
#[derive(Clone, Copy, Debug)]
pub struct TruthGap {
    pub nll: f64,
    pub entropy: f64,
    pub kl: f64,
    pub se: f64,
}

impl TruthGap {
    /// Prints the gap and asserts 0 ≤ KL < `bound` (the lower side within 3 standard errors:
    /// a model may not beat the true density).
    pub fn assert_kl_below(&self, what: &str, bound: f64) {
        let TruthGap {
            nll,
            entropy,
            kl,
            se,
        } = *self;
        eprintln!(
            "{what}: held-out NLL {nll:.4} nats, true entropy {entropy:.4}, KL {kl:.4} ± {se:.4}"
        );
        assert!(
            kl > -3.0 * se,
            "model beats the true density: KL {kl} ± {se}"
        );
        assert!(kl < bound, "KL {kl} too large");
    }
}

pub fn eight_gaussians_gap(m: &flowgpu::Model) -> TruthGap {
    use flowgpu::data::toys::eight_gaussians_log_density;
    use flowgpu::solve::{Method, SolveConfig, Tolerances, Trace};
    let held_out = flowgpu::data::Dataset::toy("8gaussians", 1000, 999)
        .unwrap()
        .points;
    let solve = SolveConfig {
        method: Method::Dopri5,
        tol: Tolerances {
            rtol: 1e-5,
            atol: 1e-5,
            ..Default::default()
        },
        ..Default::default()
    };
    let s = flowgpu::Sampler::new(ctx(), m).unwrap();
    let (logp, _, _) = s.log_prob(&held_out, Trace::Exact, &solve).unwrap();
    let truth: Vec<f64> = held_out
        .chunks(2)
        .map(|r| eight_gaussians_log_density([r[0] as f64, r[1] as f64]))
        .collect();
    let n = logp.len() as f64;
    let diffs: Vec<f64> = truth.iter().zip(&logp).map(|(p, q)| p - q).collect();
    let kl = diffs.iter().sum::<f64>() / n;
    TruthGap {
        nll: -logp.iter().sum::<f64>() / n,
        entropy: -truth.iter().sum::<f64>() / n,
        kl,
        se: (diffs.iter().map(|d| (d - kl).powi(2)).sum::<f64>() / (n * (n - 1.0))).sqrt(),
    }
}

/// The error is one line (Mesa's warning about a missing XDG_RUNTIME_DIR aside).
pub fn one_error_line(err: &str) -> bool {
    err.lines()
        .filter(|l| !l.contains("XDG_RUNTIME_DIR"))
        .count()
        == 1
}

/// An `--adapter` value naming two adapters: `all` where wgpu sees several (lavapipe and
/// llvmpipe-GL here), else the one adapter twice (two devices on it), so that what splits
/// over adapters is exercised on any host.
pub fn two_adapters() -> String {
    let all = GpuContext::all(&Default::default()).expect("an adapter");
    if all.len() >= 2 {
        return "all".into();
    }
    let name = all[0].adapter_name().to_string();
    format!("{name},{name}")
}
