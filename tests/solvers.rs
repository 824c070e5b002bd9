//! ODE solvers: convergence orders on a field with a closed-form flow, Dormand–Prince
//! accuracy and cost, GPU against the f64 reference solvers, encode/decode round trips,
//! and chunking.

mod common;

use common::{assert_close, ctx, model_of};
use flowgpu::model::{Activation, MlpConfig, Model, Weights};
use flowgpu::solve::{Method, SolveConfig, Tableau, TimeGrid, Tolerances};
use flowgpu::{reference, GaussianPath, Sampler};
use rand::SeedableRng;

const OMEGA: f64 = 4.0;
const C: [f64; 2] = [0.5, -0.3];
const D: [f64; 2] = [0.2, 0.1];

/// v(x, t) = A·x + c·t + d with A = ω·[[0, −1], [1, 0]] (a rotation plus a time-dependent
/// drift).
fn linear_field_model() -> Model {
    common::linear_field_model(0.0, OMEGA, C, D)
}

/// Exact flow from t0 to t1 of the linear field: x(t) = R(ω(t−t0))(x0 − p(t0)) + p(t),
/// with the particular solution p(t) = p + q·t, q = −A⁻¹c, p = A⁻¹(q − d), A⁻¹ = −J/ω.
fn exact_flow(x0: &[f64], t0: f64, t1: f64) -> Vec<f64> {
    let ainv = |v: [f64; 2]| [v[1] / OMEGA, -v[0] / OMEGA]; // −J/ω · v, J·v = (−v1, v0)
    let q = ainv(C).map(|v| -v);
    let p = ainv([q[0] - D[0], q[1] - D[1]]);
    let part = |t: f64| [p[0] + q[0] * t, p[1] + q[1] * t];
    let (s, c) = (OMEGA * (t1 - t0)).sin_cos();
    x0.chunks(2)
        .flat_map(|x| {
            let (u, v) = (x[0] - part(t0)[0], x[1] - part(t0)[1]);
            [c * u - s * v + part(t1)[0], s * u + c * v + part(t1)[1]]
        })
        .collect()
}

fn start_points() -> Vec<f32> {
    let mut r = rand::rngs::StdRng::seed_from_u64(1);
    (0..64 * 2)
        .map(|_| rand::Rng::random_range(&mut r, -1.5..1.5))
        .collect()
}

fn max_err(got: &[f32], want: &[f64]) -> f64 {
    got.iter()
        .zip(want)
        .map(|(g, w)| (*g as f64 - w).abs())
        .fold(0.0, f64::max)
}

fn solve_linear(method: Method, steps: usize) -> (f64, flowgpu::SolveStats) {
    let m = linear_field_model();
    let s = Sampler::new(ctx(), &m).unwrap();
    let x0 = start_points();
    let cfg = SolveConfig {
        method,
        steps,
        ..Default::default()
    };
    let (x1, stats) = s.integrate(&x0, 0.0, 1.0, &cfg).unwrap();
    let x0d: Vec<f64> = x0.iter().map(|&v| v as f64).collect();
    (max_err(&x1, &exact_flow(&x0d, 0.0, 1.0)), stats)
}

#[test]
fn fixed_step_solvers_converge_at_their_order() {
    // Step counts where the error is far above f32 rounding (~1e-6 here) and in the
    // asymptotic regime; the measured order by step halving must lie within ±0.3.
    for (method, steps, order) in [
        (Method::Euler, [32usize, 64, 128], 1.0),
        (Method::Midpoint, [16, 32, 64], 2.0),
        (Method::Rk4, [8, 16, 32], 4.0),
    ] {
        let errs: Vec<f64> = steps.iter().map(|&k| solve_linear(method, k).0).collect();
        for w in errs.windows(2) {
            let measured = (w[0] / w[1]).log2();
            eprintln!("{method:?}: errors {errs:?}, measured order {measured:.3}");
            assert!(
                (measured - order).abs() < 0.3,
                "{method:?}: order {measured} (errors {errs:?})"
            );
        }
    }
}

#[test]
fn dopri5_meets_tolerance_and_beats_rk4_in_evaluations() {
    let m = linear_field_model();
    let s = Sampler::new(ctx(), &m).unwrap();
    let x0 = start_points();
    let x0d: Vec<f64> = x0.iter().map(|&v| v as f64).collect();
    let exact = exact_flow(&x0d, 0.0, 1.0);
    let mut last_err = f64::INFINITY;
    for tol in [1e-3, 1e-4, 1e-5] {
        let cfg = SolveConfig {
            method: Method::Dopri5,
            tol: Tolerances {
                rtol: tol,
                atol: tol,
                ..Default::default()
            },
            ..Default::default()
        };
        let (x1, stats) = s.integrate(&x0, 0.0, 1.0, &cfg).unwrap();
        let err = max_err(&x1, &exact);
        eprintln!("dopri5 tol {tol:e}: max error {err:.3e}, nfe needed {:.1}, executed {}, rejected {:.2}", stats.nfe_needed_mean, stats.nfe, stats.rejected_mean);
        // Local tolerances bound the global error up to a modest factor on this field.
        assert!(err < 20.0 * tol, "tol {tol}: error {err}");
        assert!(
            err < last_err,
            "tighter tolerance must not be less accurate"
        );
        last_err = err;
        if tol == 1e-5 {
            // RK4 with as many evaluations as dopri5 needed is less accurate.
            let rk4_steps = (stats.nfe_needed_mean / 4.0).floor() as usize;
            let (rk4_err, _) = solve_linear(Method::Rk4, rk4_steps);
            eprintln!(
                "rk4 with {rk4_steps} steps ({} evaluations): error {rk4_err:.3e}",
                4 * rk4_steps
            );
            assert!(rk4_err > err, "rk4 {rk4_err} vs dopri5 {err} at equal cost");
        }
    }
}

fn random_model(seed: u64) -> Model {
    let cfg = MlpConfig {
        dim: 2,
        width: 24,
        depth: 2,
        activation: Activation::Tanh,
        time_features: 1,
        classes: 0,
    };
    let w = Weights::init(&cfg, &mut rand::rngs::StdRng::seed_from_u64(seed));
    model_of(cfg, w)
}

#[test]
fn gpu_solvers_match_f64_reference_on_an_mlp() {
    let m = random_model(2);
    let s = Sampler::new(ctx(), &m).unwrap();
    let x0 = start_points();
    let field = reference::mlp_field(&m.config.mlp, &m.weights);
    for (method, grid) in [
        (Method::Euler, TimeGrid::Uniform),
        (Method::Midpoint, TimeGrid::Start),
        (Method::Rk4, TimeGrid::Ends),
        (Method::Rk4, TimeGrid::End),
    ] {
        for (t0, t1) in [(0.0, 1.0), (1.0, 0.0)] {
            let cfg = SolveConfig {
                method,
                steps: 20,
                grid,
                ..Default::default()
            };
            let (got, _) = s.integrate(&x0, t0, t1, &cfg).unwrap();
            let mut want: Vec<f64> = x0.iter().map(|&v| v as f64).collect();
            reference::rk_solve(
                &field,
                &mut want,
                2,
                &grid.times(t0, t1, 20),
                &method.tableau(),
            );
            // f32 stage arithmetic and MLP over 20 steps.
            assert_close(
                &format!("{method:?} {grid:?} {t0}→{t1}"),
                &got,
                &want,
                1e-4,
                1e-4,
            );
        }
    }
    let tol = Tolerances {
        rtol: 1e-6,
        atol: 1e-6,
        ..Default::default()
    };
    let cfg = SolveConfig {
        method: Method::Dopri5,
        tol,
        ..Default::default()
    };
    let (got, stats) = s.integrate(&x0, 0.0, 1.0, &cfg).unwrap();
    let mut want: Vec<f64> = x0.iter().map(|&v| v as f64).collect();
    let counts = reference::dopri5_solve(&field, &mut want, 2, 0.0, 1.0, &tol).unwrap();
    // Both meet the tolerance; accept/reject decisions may differ near err ≈ 1 in f32.
    assert_close("dopri5", &got, &want, 1e-4, 1e-4);
    let ref_acc = counts.iter().map(|c| c.0 as f64).sum::<f64>() / counts.len() as f64;
    assert!(
        (stats.accepted_mean - ref_acc).abs() <= 0.2 * ref_acc + 1.0,
        "accepted steps {} vs reference {ref_acc}",
        stats.accepted_mean
    );
}

#[test]
fn exact_reference_rk4_has_order_four() {
    // The f64 reference itself, without float32 floors: order 4 at fine steps too.
    let m = linear_field_model();
    let field = reference::mlp_field(&m.config.mlp, &m.weights);
    let x0: Vec<f64> = start_points().iter().map(|&v| v as f64).collect();
    let exact = exact_flow(&x0, 0.0, 1.0);
    let err = |k: usize| {
        let mut x = x0.clone();
        reference::rk_solve(
            &field,
            &mut x,
            2,
            &TimeGrid::Uniform.times(0.0, 1.0, k),
            &Tableau::rk4(),
        );
        x.iter()
            .zip(&exact)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f64::max)
    };
    let order = (err(64) / err(128)).log2();
    assert!((order - 4.0).abs() < 0.1, "order {order}");
}

#[test]
fn chunking_does_not_change_samples_and_time_grids_are_sane() {
    let m = random_model(4);
    let s = Sampler::new(ctx(), &m).unwrap();
    for method in [Method::Rk4, Method::Dopri5] {
        let cfg = SolveConfig {
            method,
            steps: 10,
            chunk: 1000,
            ..Default::default()
        };
        let (a, _) = s.sample(300, 5, &cfg).unwrap();
        let (b, _) = s
            .sample(
                300,
                5,
                &SolveConfig {
                    chunk: 77,
                    ..cfg.clone()
                },
            )
            .unwrap();
        assert_eq!(a, b, "{method:?}");
    }
    for grid in [
        TimeGrid::Uniform,
        TimeGrid::Start,
        TimeGrid::End,
        TimeGrid::Ends,
    ] {
        for (t0, t1) in [(0.0, 1.0), (1.0, 0.0)] {
            let ts = grid.times(t0, t1, 16);
            assert_eq!((ts[0], ts[16]), (t0, t1));
            assert!(
                ts.windows(2).all(|w| (w[1] - w[0]) * (t1 - t0) > 0.0),
                "{grid:?} not monotone"
            );
        }
    }
    // "start" is dense near t = 0, "end" near t = 1, in either direction.
    let fwd = TimeGrid::Start.times(0.0, 1.0, 16);
    assert!(fwd[1] - fwd[0] < fwd[16] - fwd[15]);
    let bwd = TimeGrid::Start.times(1.0, 0.0, 16);
    assert!(bwd[0] - bwd[1] > bwd[15] - bwd[16]);
}

#[test]
fn encode_then_decode_returns_the_input_for_a_trained_model() {
    let ctx = ctx();
    let data = flowgpu::data::Dataset::toy("moons", 20_000, 0).unwrap();
    let cfg = MlpConfig {
        dim: 2,
        width: 48,
        depth: 2,
        activation: Activation::Silu,
        time_features: 0,
        classes: 0,
    };
    let tc = flowgpu::TrainConfig {
        steps: 600,
        ..Default::default()
    };
    let (m, _) = flowgpu::train::fit(
        ctx,
        &data,
        &cfg,
        GaussianPath::Ot { sigma_min: 0.0 },
        &tc,
        |_, _| {},
    )
    .unwrap();
    let s = Sampler::new(ctx, &m).unwrap();
    let x = &data.points[..2 * 500];
    let x64: Vec<f64> = x.iter().map(|&v| v as f64).collect();
    for cfg in [
        SolveConfig {
            method: Method::Rk4,
            steps: 50,
            ..Default::default()
        },
        SolveConfig {
            method: Method::Dopri5,
            tol: Tolerances {
                rtol: 1e-6,
                atol: 1e-6,
                ..Default::default()
            },
            ..Default::default()
        },
    ] {
        let (z, _) = s.encode(x, &cfg).unwrap();
        let (back, _) = s.decode(&z, &cfg).unwrap();
        // The flow is invertible; what remains is solver and f32 error.
        assert_close(
            &format!("{:?} round trip", cfg.method),
            &back,
            &x64,
            1e-3,
            1e-3,
        );
        // Latents look like N(0, I): mean near 0, variance near 1 per coordinate.
        let n = (z.len() / 2) as f64;
        for j in 0..2 {
            let mean = z.iter().skip(j).step_by(2).map(|&v| v as f64).sum::<f64>() / n;
            let var = z
                .iter()
                .skip(j)
                .step_by(2)
                .map(|&v| (v as f64 - mean).powi(2))
                .sum::<f64>()
                / n;
            assert!(
                mean.abs() < 0.25 && (var - 1.0).abs() < 0.35,
                "latent coordinate {j}: mean {mean}, var {var}"
            );
        }
    }
}
