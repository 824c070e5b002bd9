//! Diffusion models on the GPU: every prediction converts to the velocity the solvers
//! integrate (f64 closed forms), the stochastic sampling kernel against its f64 step, the
//! exact marginal of Gaussian data under the SDE and ancestral samplers, and trained
//! noise-prediction models on toys (sample quality, SDE = ODE marginals, DDIM's edge over
//! Euler at few steps, likelihoods against the analytic Gaussian).

mod common;

use common::{assert_close, ctx, energy_distance};
use flowgpu::data::Dataset;
use flowgpu::diffusion::StepRule;
use flowgpu::model::{input_row, Activation, MlpConfig, Weights};
use flowgpu::solve::{Method, TimeGrid, Trace};
use flowgpu::{reference, rng};
use flowgpu::{GaussianPath, Model, ModelConfig, Prediction, Sampler, SolveConfig, TrainConfig};
use rand::{Rng, SeedableRng};

const VP_SDE: GaussianPath = GaussianPath::VpSde {
    beta_min: 0.1,
    beta_max: 20.0,
};
const VE_SDE: GaussianPath = GaussianPath::VeSde {
    sigma_min: 0.01,
    sigma_max: 10.0,
};

fn model(cfg: MlpConfig, weights: Weights, path: GaussianPath, predict: Prediction) -> Model {
    Model {
        config: ModelConfig {
            predict,
            ..ModelConfig::new(cfg, path)
        },
        weights,
    }
}

fn mlp(dim: usize, width: usize, time_features: usize) -> MlpConfig {
    MlpConfig {
        dim,
        width,
        depth: 2,
        activation: Activation::Silu,
        time_features,
        classes: 0,
    }
}

/// A network whose output is exactly 0 (all weights and biases zero).
fn zero_weights(cfg: &MlpConfig) -> Weights {
    let mut w = Weights::init(cfg, &mut rand::rngs::StdRng::seed_from_u64(0));
    for l in &mut w.layers {
        l.w.iter_mut().for_each(|v| *v = 0.0);
        l.b.iter_mut().for_each(|v| *v = 0.0);
    }
    w
}

#[test]
fn every_prediction_converts_to_the_f64_velocity_on_the_gpu() {
    let cfg = mlp(3, 16, 2);
    let w = Weights::init(&cfg, &mut rand::rngs::StdRng::seed_from_u64(4));
    let mut r = rand::rngs::StdRng::seed_from_u64(9);
    let x: Vec<f32> = (0..64 * 3).map(|_| r.random_range(-2.0..2.0)).collect();
    let ot = GaussianPath::Ot { sigma_min: 0.0 };
    for path in [VP_SDE, VE_SDE, ot, GaussianPath::Vp] {
        for predict in [
            Prediction::Velocity,
            Prediction::Noise,
            Prediction::Data,
            Prediction::Score,
        ] {
            let m = model(cfg.clone(), w.clone(), path, predict);
            let s = Sampler::new(ctx(), &m).unwrap();
            for t in [0.2, 0.5, 0.9] {
                let got = s.velocity(&x, t).unwrap();
                // The stage kernel sees t in f32.
                let tf = t as f32 as f64;
                let (cx, co) = predict.to_velocity(&path, tf);
                let want: Vec<f64> = x
                    .chunks(3)
                    .flat_map(|row| {
                        let xr: Vec<f64> = row.iter().map(|&v| v as f64).collect();
                        let o = reference::eval(&cfg, &w, &input_row(&cfg, &xr, tf));
                        (0..3)
                            .map(move |j| cx * xr[j] + co * o[j])
                            .collect::<Vec<_>>()
                    })
                    .collect();
                let what = format!("{} {} t {t}", path.name(), predict.name());
                assert_close(&what, &got, &want, 1e-4, 2e-5);
            }
        }
    }
}

/// The sampling kernel's steps against their f64 arithmetic: a zero network predicting
/// noise on the VP SDE has v = c_x(t)·x, so three SDE steps are x ← (P + Q·c_x)·x + R·ξ
/// with ξ the counter RNG's draw for (row, step); and the result does not depend on how
/// the rows are split into chunks.
#[test]
fn the_stochastic_step_kernel_matches_its_f64_steps_and_ignores_chunking() {
    let cfg = mlp(2, 8, 0);
    let m = model(cfg.clone(), zero_weights(&cfg), VP_SDE, Prediction::Noise);
    let s = Sampler::new(ctx(), &m).unwrap();
    let (n, seed) = (50usize, 7u64);
    let rule = StepRule::Sde { diffusion: 1.0 };
    let sc = SolveConfig {
        steps: 3,
        rule,
        ..Default::default()
    };
    let (got, _) = s.sample(n, seed, &sc).unwrap();
    let times = [0.0, 1.0 / 3.0, 2.0 / 3.0, 1.0];
    let coefs = rule.program(&VP_SDE, &times);
    let mut want = Vec::new();
    for row in 0..n as u32 {
        let mut x = reference::base_noise(2, seed as u32, row);
        for (k, [p, q, r]) in coefs.iter().enumerate() {
            let (cx, _) = Prediction::Noise.to_velocity(&VP_SDE, times[k] as f32 as f64);
            for (j, xj) in x.iter_mut().enumerate() {
                let xi = rng::normal_at(seed as u32, rng::STREAM_SDE, row, k as u32, j as u32);
                *xj = (p + q * cx) * *xj + r * xi;
            }
        }
        want.extend(x);
    }
    assert_close("three SDE steps", &got, &want, 1e-4, 1e-5);
    let chunked = SolveConfig { chunk: 7, ..sc };
    assert_eq!(s.sample(n, seed, &chunked).unwrap().0, got);
    // γ = 0 is the ODE's Euler step.
    let ode = SolveConfig {
        steps: 3,
        ..Default::default()
    };
    let gamma0 = SolveConfig {
        rule: StepRule::Sde { diffusion: 0.0 },
        ..ode.clone()
    };
    assert_close(
        "γ = 0 vs Euler",
        &s.sample(n, seed, &gamma0).unwrap().0,
        &s.sample(n, seed, &ode)
            .unwrap()
            .0
            .iter()
            .map(|&v| v as f64)
            .collect::<Vec<_>>(),
        1e-5,
        1e-6,
    );
}

/// Mean and covariance of 2-D samples.
fn moments(x: &[f32]) -> ([f64; 2], [f64; 3]) {
    let n = (x.len() / 2) as f64;
    let m = [0, 1].map(|j| x.iter().skip(j).step_by(2).map(|&v| v as f64).sum::<f64>() / n);
    let c = |a: usize, b: usize| {
        x.chunks(2)
            .map(|r| (r[a] as f64 - m[a]) * (r[b] as f64 - m[b]))
            .sum::<f64>()
            / n
    };
    (m, [c(0, 0), c(0, 1), c(1, 1)])
}

/// For N(0, I) data on a variance-preserving path the marginal is N(0, I) at every t and
/// the exact velocity is 0, which a zero network represents exactly: the reverse SDE (its
/// own and half its diffusion) and DDIM/ancestral steps must keep N(0, I) (20 000 samples:
/// Monte Carlo error ≈ 0.007 on the mean, 0.01 on the covariance).
#[test]
fn stochastic_samplers_keep_the_exact_marginal_of_gaussian_data() {
    let cfg = mlp(2, 8, 0);
    for path in [GaussianPath::Vp, VP_SDE] {
        let m = model(cfg.clone(), zero_weights(&cfg), path, Prediction::Velocity);
        let s = Sampler::new(ctx(), &m).unwrap();
        // The ancestral step plugs in the posterior mean of x1 and so loses variance at
        // first order in the step: 5% at 100 steps, 1.3% at 400.
        for (rule, steps) in [
            (StepRule::Sde { diffusion: 1.0 }, 100),
            (StepRule::Sde { diffusion: 0.5 }, 100),
            (StepRule::Ddim { eta: 1.0 }, 400),
            (StepRule::Ddim { eta: 0.0 }, 100),
        ] {
            let sc = SolveConfig {
                steps,
                rule,
                ..Default::default()
            };
            let (x, _) = s.sample(20_000, 3, &sc).unwrap();
            let (mean, cov) = moments(&x);
            eprintln!(
                "{} {rule:?}: mean {mean:.4?}, covariance {cov:.4?}",
                path.name()
            );
            assert!(
                mean.iter().all(|v| v.abs() < 0.03),
                "{rule:?}: mean {mean:?}"
            );
            let want = [1.0, 0.0, 1.0];
            assert!(
                cov.iter().zip(want).all(|(c, w)| (c - w).abs() < 0.05),
                "{} {rule:?}: covariance {cov:?}",
                path.name()
            );
        }
    }
}

/// Train a network to output `predict` on `path` from `data`.
fn train(data: &[f32], dim: usize, path: GaussianPath, predict: Prediction, steps: u64) -> Model {
    let cfg = MlpConfig {
        dim,
        width: 64,
        depth: 3,
        activation: Activation::Silu,
        time_features: 2,
        classes: 0,
    };
    let tc = TrainConfig {
        steps,
        batch: 256,
        seed: 0,
        ..TrainConfig::default()
    };
    let w = Weights::init(&cfg, &mut rand::rngs::StdRng::seed_from_u64(1));
    let mut tr = flowgpu::Trainer::new(ctx(), &cfg, path, &w, data, &tc).unwrap();
    tr.set_prediction(predict).unwrap();
    let never = std::sync::atomic::AtomicBool::new(false);
    tr.run_until(ctx(), steps, &never, |_, _| Ok(())).unwrap();
    model(cfg, tr.weights(ctx(), false).unwrap(), path, predict)
}

/// Energy distance of `n` samples of `s` (seed 3) to fresh moons.
fn moons_distance(s: &Sampler, sc: &SolveConfig, fresh: &[f32]) -> (f64, Vec<f32>) {
    let x = s.sample(fresh.len() / 2, 3, sc).unwrap().0;
    (energy_distance(&x, fresh), x)
}

fn solve(method: Method, steps: usize, grid: TimeGrid, rule: StepRule) -> SolveConfig {
    SolveConfig {
        method,
        steps,
        grid,
        rule,
        ..Default::default()
    }
}

/// A noise-prediction model on the VP SDE samples moons within the flow-matching bound of
/// tests/training.rs (energy distance < 0.03) with the probability-flow ODE and with the
/// reverse SDE, and the two samplers' samples agree within that noise.
#[test]
fn a_noise_model_on_the_vp_sde_samples_moons_by_ode_and_sde() {
    let data = Dataset::toy("moons", 50_000, 0).unwrap();
    let m = train(&data.points, 2, VP_SDE, Prediction::Noise, 1500);
    let s = Sampler::new(ctx(), &m).unwrap();
    let fresh = Dataset::toy("moons", 1500, 12345).unwrap().points;
    let u = TimeGrid::Uniform;
    let (e_ode, ode) = moons_distance(&s, &solve(Method::Euler, 100, u, StepRule::Ode), &fresh);
    let sde_rule = StepRule::Sde { diffusion: 1.0 };
    let (e_sde, sde) = moons_distance(&s, &solve(Method::Euler, 200, u, sde_rule), &fresh);
    let e_between = energy_distance(&ode, &sde);
    eprintln!(
        "VP-SDE noise model, energy distance to fresh moons: ODE (Euler 100) {e_ode:.4}, SDE (200 steps) {e_sde:.4}, ODE vs SDE samples {e_between:.4}"
    );
    assert!(e_ode < 0.03 && e_sde < 0.03, "{e_ode} {e_sde}");
    assert!(e_between < 0.03, "SDE and ODE samples differ: {e_between}");
}

/// On the variance-exploding SDE (σ from 10 to 0.01, geometric in t), a score model at
/// 10 network evaluations: DDIM (an exact step for a constant noise estimate) and Heun on
/// EDM's grid beat Euler on the uniform grid by a clear margin.
#[test]
fn at_ten_evaluations_ddim_and_heun_edm_beat_euler_on_the_ve_sde() {
    let data = Dataset::toy("moons", 50_000, 0).unwrap();
    let m = train(&data.points, 2, VE_SDE, Prediction::Score, 1500);
    let s = Sampler::new(ctx(), &m).unwrap();
    let fresh = Dataset::toy("moons", 1500, 12345).unwrap().points;
    let (u, edm) = (TimeGrid::Uniform, TimeGrid::Edm);
    let ode = StepRule::Ode;
    let (euler, _) = moons_distance(&s, &solve(Method::Euler, 10, u, ode), &fresh);
    let ddim_rule = StepRule::Ddim { eta: 0.0 };
    let (ddim, _) = moons_distance(&s, &solve(Method::Euler, 10, u, ddim_rule), &fresh);
    let (heun, _) = moons_distance(&s, &solve(Method::Heun, 5, edm, ode), &fresh);
    let (fine, _) = moons_distance(&s, &solve(Method::Rk4, 100, edm, ode), &fresh);
    eprintln!(
        "VE-SDE score model, energy distance to fresh moons at 10 evaluations: Euler {euler:.4}, DDIM {ddim:.4}, Heun-EDM {heun:.4} (RK4-EDM at 400: {fine:.4})"
    );
    assert!(fine < 0.03, "the model itself: {fine}");
    assert!(
        ddim < 0.5 * euler && heun < 0.5 * euler,
        "Euler {euler}, DDIM {ddim}, Heun-EDM {heun}"
    );
}

/// Log-likelihoods of a noise-prediction model through the probability-flow ODE against
/// the analytic density of its Gaussian training data.
#[test]
fn likelihoods_of_a_diffusion_model_match_the_analytic_gaussian() {
    let (mu, sd) = ([1.0f64, -0.5], [0.5f64, 1.0]);
    let gauss = |seed: u64, n: usize| -> Vec<f32> {
        let mut r = rand::rngs::StdRng::seed_from_u64(seed);
        (0..n)
            .flat_map(|_| {
                let z: [f64; 2] = [
                    r.sample(rand_distr::StandardNormal),
                    r.sample(rand_distr::StandardNormal),
                ];
                [0, 1].map(|j| (mu[j] + sd[j] * z[j]) as f32)
            })
            .collect()
    };
    let m = train(&gauss(0, 50_000), 2, VP_SDE, Prediction::Noise, 1500);
    let s = Sampler::new(ctx(), &m).unwrap();
    let held = gauss(99, 500);
    let sc = SolveConfig {
        method: Method::Rk4,
        steps: 100,
        ..Default::default()
    };
    let (logp, _, _) = s.log_prob(&held, Trace::Exact, &sc).unwrap();
    let truth: Vec<f64> = held
        .chunks(2)
        .map(|r| {
            (0..2)
                .map(|j| {
                    let z = (r[j] as f64 - mu[j]) / sd[j];
                    -0.5 * z * z - sd[j].ln() - 0.5 * (2.0 * std::f64::consts::PI).ln()
                })
                .sum()
        })
        .collect();
    let n = logp.len() as f64;
    let gap = truth.iter().zip(&logp).map(|(p, q)| p - q).sum::<f64>() / n;
    let rms = (truth
        .iter()
        .zip(&logp)
        .map(|(p, q)| (p - q).powi(2))
        .sum::<f64>()
        / n)
        .sqrt();
    eprintln!("VP-SDE noise model on N(μ, diag σ²): KL estimate {gap:.4} nats, RMS log-density error {rms:.4}");
    assert!(gap.abs() < 0.05 && rms < 0.15, "KL {gap}, RMS {rms}");
}

/// The VE SDE's source is N(0, σ_max²·I): a zero noise network has v = ḃ·0 = 0, so
/// log p(x) is that Gaussian's density exactly and samples have its spread.
#[test]
fn the_ve_sde_source_has_its_sigma_max() {
    let cfg = mlp(2, 8, 0);
    let m = model(cfg.clone(), zero_weights(&cfg), VE_SDE, Prediction::Noise);
    let s = Sampler::new(ctx(), &m).unwrap();
    let x: Vec<f32> = vec![0.0, 0.0, 3.0, -4.0, 12.0, 1.0];
    let (logp, _, _) = s
        .log_prob(&x, Trace::Exact, &SolveConfig::default())
        .unwrap();
    let want: Vec<f64> = x
        .chunks(2)
        .map(|r| {
            let sq = (r[0] as f64).powi(2) + (r[1] as f64).powi(2);
            -sq / 200.0 - (2.0 * std::f64::consts::PI * 100.0).ln()
        })
        .collect();
    let got: Vec<f32> = logp.iter().map(|&v| v as f32).collect();
    assert_close("log N(x; 0, 10²·I)", &got, &want, 1e-6, 1e-6);
    let (samples, _) = s.sample(20_000, 1, &SolveConfig::default()).unwrap();
    let (_, cov) = moments(&samples);
    assert!(
        (cov[0] / 100.0 - 1.0).abs() < 0.05 && (cov[2] / 100.0 - 1.0).abs() < 0.05,
        "{cov:?}"
    );
}
