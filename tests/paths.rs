//! Conditional paths: boundary conditions, the target is the time derivative of the
//! conditional trajectory, and the theorem flow matching rests on: regressing the marginal
//! field and regressing the conditional target have the same gradients in θ, and their
//! losses differ by a constant. (GPU = reference for every path: tests/kernels.rs.)

mod common;

use common::energy_distance;
use flowgpu::model::{Activation, MlpConfig, Weights};
use flowgpu::{reference, GaussianPath};
use rand::{Rng, SeedableRng};
use rand_distr::StandardNormal;

fn paths() -> Vec<GaussianPath> {
    vec![
        GaussianPath::Ot { sigma_min: 0.0 },
        GaussianPath::Ot { sigma_min: 0.05 },
        GaussianPath::Vp,
        GaussianPath::Poly { exponent: 2.0 },
        GaussianPath::Poly { exponent: 0.7 },
        GaussianPath::Icfm { sigma: 0.3 },
        GaussianPath::Sb { sigma: 0.5 },
    ]
}

#[test]
fn boundary_conditions() {
    for p in paths() {
        let (s0, s1) = (p.schedule(0.0), p.schedule(1.0));
        // t = 0: the source (plus the path's constant noise); t = 1: the data.
        assert!(
            s0.a.abs() < 1e-12 && (s0.b - 1.0).abs() < 1e-12,
            "{p:?} at 0: {s0:?}"
        );
        assert!((s1.a - 1.0).abs() < 1e-12, "{p:?} at 1: {s1:?}");
        let b1 = match p {
            GaussianPath::Ot { sigma_min } => sigma_min,
            _ => 0.0,
        };
        assert!((s1.b - b1).abs() < 1e-12, "{p:?}: b(1) = {}", s1.b);
        let c_ends = match p {
            GaussianPath::Icfm { sigma } => sigma,
            _ => 0.0,
        };
        assert!(
            (s0.c - c_ends).abs() < 1e-12 && (s1.c - c_ends).abs() < 1e-12,
            "{p:?}: c at the ends"
        );
    }
}

#[test]
fn target_is_the_time_derivative_of_the_conditional_trajectory() {
    let mut r = rand::rngs::StdRng::seed_from_u64(1);
    for p in paths() {
        for _ in 0..50 {
            let (x1, x0, e): (f64, f64, f64) = (
                r.random_range(-3.0..3.0),
                r.sample(StandardNormal),
                r.sample(StandardNormal),
            );
            let t: f64 = r.random_range(0.02..0.98);
            let x = |t: f64| {
                let s = p.schedule(t);
                s.a * x1 + s.b * x0 + s.c * e
            };
            let s = p.schedule(t);
            let u = s.da * x1 + s.db * x0 + s.dc * e;
            let h = 1e-6;
            let fd = (x(t + h) - x(t - h)) / (2.0 * h);
            assert!(
                (u - fd).abs() < 1e-6 * (1.0 + u.abs()),
                "{p:?} at t={t}: target {u} vs dx/dt {fd}"
            );
        }
    }
}

/// x_t | x1 ~ N(a·x1, (b² + c²)·I) for Gaussian x0 and ε: the conditional field
/// E[u | x_t = x, x1] = ȧ·x1 + (ḃb + ċc)/(b² + c²)·(x − a·x1), and the marginal field is its
/// posterior-weighted mean over the data points.
fn marginal_field(p: &GaussianPath, data: &[[f64; 2]], x: [f64; 2], t: f64) -> [f64; 2] {
    let s = p.schedule(t);
    let var = s.b * s.b + s.c * s.c;
    let k = (s.db * s.b + s.dc * s.c) / var;
    let logw: Vec<f64> = data
        .iter()
        .map(|x1| -((x[0] - s.a * x1[0]).powi(2) + (x[1] - s.a * x1[1]).powi(2)) / (2.0 * var))
        .collect();
    let m = logw.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let w: Vec<f64> = logw.iter().map(|l| (l - m).exp()).collect();
    let z: f64 = w.iter().sum();
    let mut u = [0.0; 2];
    for (x1, wj) in data.iter().zip(&w) {
        for d in 0..2 {
            u[d] += wj / z * (s.da * x1[d] + k * (x[d] - s.a * x1[d]));
        }
    }
    u
}

#[test]
fn marginal_and_conditional_flow_matching_have_the_same_gradient() {
    let data = [
        [1.5, 0.5],
        [-1.0, 1.2],
        [0.3, -1.4],
        [-1.6, -0.4],
        [0.8, 1.9],
    ];
    let cfg = MlpConfig {
        dim: 2,
        width: 6,
        depth: 1,
        activation: Activation::Tanh,
        time_features: 0,
        classes: 0,
    };
    let mut r = rand::rngs::StdRng::seed_from_u64(2);
    let w1 = Weights::init(&cfg, &mut r);
    let w2 = Weights::init(&cfg, &mut r);
    let flat = |g: &reference::Gradients| -> Vec<f64> {
        g.w.iter()
            .zip(&g.b)
            .flat_map(|(w, b)| w.iter().chain(b).copied())
            .collect()
    };
    for p in paths() {
        // B batches of N samples (t, x1, x0, ε): per batch, the gradient of each loss and
        // the loss difference at two parameter settings.
        let (batches, n) = (40, 500);
        let mut gdiff: Vec<Vec<f64>> = Vec::new();
        let mut gscale = 0.0f64;
        let mut const_diff = Vec::new();
        for _ in 0..batches {
            let mut input = Vec::new();
            let (mut u_cond, mut u_marg) = (Vec::new(), Vec::new());
            for _ in 0..n {
                let t: f64 = r.random_range(0.01..0.99);
                let x1 = data[r.random_range(0..data.len())];
                let s = p.schedule(t);
                let mut x = [0.0; 2];
                for d in 0..2 {
                    let (x0, e): (f64, f64) = (r.sample(StandardNormal), r.sample(StandardNormal));
                    x[d] = s.a * x1[d] + s.b * x0 + s.c * e;
                    u_cond.push(s.da * x1[d] + s.db * x0 + s.dc * e);
                }
                u_marg.extend(marginal_field(&p, &data, x, t));
                input.extend(reference::input_row(&cfg, &x, t));
            }
            let grad_of = |w: &Weights, u: &[f64]| {
                let acts = reference::forward(&cfg, w, &input);
                let (loss, dv) = reference::cfm_loss(acts.h.last().unwrap(), u);
                (loss, flat(&reference::backward(&cfg, w, &acts, &dv)))
            };
            let (lc1, gc) = grad_of(&w1, &u_cond);
            let (lm1, gm) = grad_of(&w1, &u_marg);
            let (lc2, _) = grad_of(&w2, &u_cond);
            let (lm2, _) = grad_of(&w2, &u_marg);
            gscale = gscale.max(gm.iter().fold(0.0, |a, b| a.max(b.abs())));
            gdiff.push(gc.iter().zip(&gm).map(|(a, b)| a - b).collect());
            const_diff.push((lc1 - lm1) - (lc2 - lm2));
        }
        // Each gradient coordinate: the conditional−marginal difference has mean 0 within
        // 4.5 standard errors (over 40 batches; max over all coordinates).
        let dim = gdiff[0].len();
        let mut worst = 0.0f64;
        for k in 0..dim {
            let xs: Vec<f64> = gdiff.iter().map(|g| g[k]).collect();
            let mean = xs.iter().sum::<f64>() / batches as f64;
            let se = (xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>()
                / ((batches - 1) * batches) as f64)
                .sqrt();
            worst = worst.max(mean.abs() / (se + 1e-12 * gscale));
        }
        let cm = const_diff.iter().sum::<f64>() / batches as f64;
        let cse = (const_diff.iter().map(|x| (x - cm).powi(2)).sum::<f64>()
            / ((batches - 1) * batches) as f64)
            .sqrt();
        eprintln!(
            "{p:?}: worst gradient z-score {worst:.2}, loss-difference change {cm:.4} ± {cse:.4}"
        );
        assert!(worst < 4.5, "{p:?}: gradients differ (z = {worst})");
        assert!(
            cm.abs() < 4.0 * cse,
            "{p:?}: L_cond − L_marg depends on θ: {cm} ± {cse}"
        );
    }
}

#[test]
fn a_flow_from_a_non_gaussian_source_starts_there_and_reaches_the_data() {
    use flowgpu::solve::{Sampler, SolveConfig};
    let ctx = common::ctx();
    let data = flowgpu::data::Dataset::toy("moons", 50_000, 0).unwrap();
    let source = flowgpu::data::Dataset::toy("8gaussians", 50_000, 1).unwrap();
    let cfg = MlpConfig {
        dim: 2,
        width: 64,
        depth: 3,
        activation: Activation::Silu,
        time_features: 0,
        classes: 0,
    };
    let tc = flowgpu::TrainConfig {
        steps: 1500,
        ..Default::default()
    };
    let path = GaussianPath::Icfm { sigma: 0.05 };
    let config = flowgpu::ModelConfig {
        source: Some("8gaussians".into()),
        seed: 1,
        ..flowgpu::ModelConfig::new(cfg.clone(), path)
    };
    let model = trained(
        &cfg,
        path,
        0,
        &data.points,
        Some(&source.points),
        None,
        &tc,
        config,
    );
    let s = Sampler::new(ctx, &model).unwrap();
    let solve = SolveConfig {
        method: flowgpu::Method::Rk4,
        steps: 20,
        ..Default::default()
    };
    let traj = s.trajectories(1000, 3, &solve).unwrap();
    // Starting points are source points: each within 1.5 of an 8gaussians centre (std 0.35).
    let centres = flowgpu::data::toys::EIGHT_GAUSSIANS_CENTRES;
    let near = traj[0]
        .chunks(2)
        .filter(|p| {
            centres
                .iter()
                .any(|c| ((p[0] as f64 - c[0]).powi(2) + (p[1] as f64 - c[1]).powi(2)).sqrt() < 1.5)
        })
        .count();
    assert!(
        near >= 990,
        "only {near} of 1000 starting points are near the source"
    );
    // End points are moons: energy distance to fresh moons, against the source's.
    let fresh = flowgpu::data::Dataset::toy("moons", 1000, 99)
        .unwrap()
        .points;
    let ed = energy_distance;
    let (end, start) = (ed(traj.last().unwrap(), &fresh), ed(&traj[0], &fresh));
    eprintln!("energy distance to moons: start {start:.4}, end {end:.4}");
    assert!(end < 0.05 && end < start / 5.0, "end {end}, start {start}");
}

/// Train a paired flow x0 → x1 = −x0 in 1-D (K = 0) or augmented (K = 1) and return the
/// mean squared error of the transported test points.
fn mirror_mse(k: usize, fill: flowgpu::data::AugmentFill) -> f64 {
    use flowgpu::data::Dataset;
    use flowgpu::solve::{Sampler, SolveConfig};
    let ctx = common::ctx();
    let mut r = rand::rngs::StdRng::seed_from_u64(0);
    let s: Vec<f32> = (0..20_000)
        .map(|_| r.sample::<f32, _>(StandardNormal))
        .collect();
    let x1: Vec<f32> = s.iter().map(|v| -v).collect();
    let test: Vec<f32> = (0..1000)
        .map(|_| r.sample::<f32, _>(StandardNormal))
        .collect();
    let data = Dataset::augment(&x1, 1, k, None);
    let source = Dataset::augment_source(&s, 1, k, fill, 5);
    let cfg = MlpConfig {
        dim: 1 + k,
        width: 64,
        depth: 3,
        activation: Activation::Silu,
        time_features: 0,
        classes: 0,
    };
    let tc = flowgpu::TrainConfig {
        steps: 2000,
        paired: true,
        ..Default::default()
    };
    let path = GaussianPath::Ot { sigma_min: 0.0 };
    let config = flowgpu::ModelConfig::new(cfg.clone(), path);
    let model = trained(&cfg, path, 1, &data, Some(&source), None, &tc, config);
    let sm = Sampler::new(ctx, &model).unwrap();
    let x0 = Dataset::augment_source(&test, 1, k, fill, 9);
    let solve = SolveConfig {
        method: flowgpu::Method::Rk4,
        steps: 50,
        ..Default::default()
    };
    let (y, _) = sm.integrate(&x0, 0.0, 1.0, &solve).unwrap();
    y.chunks(1 + k)
        .zip(&test)
        .map(|(r, t)| ((r[0] + t) as f64).powi(2))
        .sum::<f64>()
        / test.len() as f64
}

#[test]
fn augmentation_lets_a_flow_reverse_orientation() {
    // x ↦ −x cannot be the time-one map of a 1-D ODE (flows preserve order); with one extra
    // dimension carrying a copy of the source point, the straight conditional paths no
    // longer collide at t = ½ and the map is learned.
    let plain = mirror_mse(0, flowgpu::data::AugmentFill::Noise);
    let copy = mirror_mse(1, flowgpu::data::AugmentFill::Copy);
    eprintln!("x ↦ −x: MSE plain 1-D {plain:.4}, augmented (copy) {copy:.4}");
    assert!(plain > 1.0, "a 1-D flow should fail at x ↦ −x: MSE {plain}");
    assert!(copy < 0.05, "augmented flow MSE {copy}");
}

#[test]
fn class_conditional_samples_land_in_their_component() {
    use flowgpu::data::toys::EIGHT_GAUSSIANS_CENTRES as C;
    use flowgpu::solve::{Sampler, SolveConfig};
    let ctx = common::ctx();
    let nearest = |p: &[f32]| -> u32 {
        (0..8)
            .min_by(|&a, &b| {
                let d =
                    |k: usize| (p[0] as f64 - C[k][0]).powi(2) + (p[1] as f64 - C[k][1]).powi(2);
                d(a).total_cmp(&d(b))
            })
            .unwrap() as u32
    };
    let data = flowgpu::data::Dataset::toy("8gaussians", 50_000, 0).unwrap();
    // The 8 components as classes (nearest centre: right for 99.8% of the points).
    let labels: Vec<u32> = data.points.chunks(2).map(nearest).collect();
    let cfg = MlpConfig {
        dim: 2,
        width: 64,
        depth: 3,
        activation: Activation::Silu,
        time_features: 0,
        classes: 8,
    };
    let tc = flowgpu::TrainConfig {
        steps: 2000,
        batch: 512,
        lr: 3e-3,
        ..Default::default()
    };
    let path = GaussianPath::Ot { sigma_min: 0.0 };
    let config = flowgpu::ModelConfig::new(cfg.clone(), path);
    let model = trained(
        &cfg,
        path,
        0,
        &data.points,
        None,
        Some(&labels),
        &tc,
        config,
    );
    let mut s = Sampler::new(ctx, &model).unwrap();
    let solve = SolveConfig {
        method: flowgpu::Method::Rk4,
        steps: 20,
        ..Default::default()
    };
    for w in [0.0, 2.0] {
        let mut hits = 0;
        for k in 0..8 {
            s.condition(Some(k), w).unwrap();
            let (x, _) = s.sample(200, k as u64, &solve).unwrap();
            hits += x.chunks(2).filter(|p| nearest(p) == k as u32).count();
        }
        let frac = hits as f64 / 1600.0;
        eprintln!(
            "guidance {w}: {:.1}% of class-k samples in component k",
            100.0 * frac
        );
        assert!(
            frac > if w == 0.0 { 0.8 } else { 0.95 },
            "guidance {w}: only {frac}"
        );
    }
    // Unconditional sampling still covers all components.
    s.condition(None, 0.0).unwrap();
    let (x, _) = s.sample(1600, 1, &solve).unwrap();
    let mut seen = [0; 8];
    x.chunks(2).for_each(|p| seen[nearest(p) as usize] += 1);
    assert!(
        seen.iter().all(|&c| c > 100),
        "unconditional samples per component {seen:?}"
    );
    assert!(s.condition(Some(8), 1.0).is_err());
}

/// Train a model from the given pools (x0 source and class labels optional) and wrap its
/// weights in `config`.
#[allow(clippy::too_many_arguments)]
fn trained(
    cfg: &MlpConfig,
    path: GaussianPath,
    weight_seed: u64,
    data: &[f32],
    source: Option<&[f32]>,
    labels: Option<&[u32]>,
    tc: &flowgpu::TrainConfig,
    config: flowgpu::ModelConfig,
) -> flowgpu::Model {
    let ctx = common::ctx();
    let w = Weights::init(cfg, &mut rand::rngs::StdRng::seed_from_u64(weight_seed));
    let mut tr = {
        let pools = flowgpu::train::Pools {
            data,
            source,
            labels,
        };
        flowgpu::Trainer::with_source(ctx, cfg, path, &w, pools, tc).unwrap()
    };
    let never = std::sync::atomic::AtomicBool::new(false);
    tr.run_until(ctx, tc.steps, &never, |_, _| Ok(())).unwrap();
    flowgpu::Model {
        config,
        weights: tr.weights(ctx, false).unwrap(),
    }
}
