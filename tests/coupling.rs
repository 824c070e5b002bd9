//! Minibatch OT coupling: the GPU Sinkhorn plan is valid and matches an f64 Sinkhorn, small
//! batches recover the exact OT permutation, and OT-CFM has straighter paths (better
//! few-step samples) than independent CFM on the same data and budget.

mod common;

use common::{ctx, energy_distance};
use flowgpu::model::{Activation, MlpConfig, Weights};
use flowgpu::train::{Coupling, TrainConfig, Trainer};
use flowgpu::{GaussianPath, Sampler, SolveConfig};
use rand::SeedableRng;

fn cfg() -> MlpConfig {
    MlpConfig {
        dim: 2,
        width: 64,
        depth: 3,
        activation: Activation::Silu,
        time_features: 0,
        classes: 0,
    }
}

/// (x0, x1, f, g, pairs, ε) of one coupling.
type OtState = (Vec<f64>, Vec<f64>, Vec<f64>, Vec<f64>, Vec<usize>, f64);

/// One training step with a Sinkhorn coupling.
fn one_step(batch: usize, reg: f64, iters: usize) -> OtState {
    let ctx = ctx();
    let data = flowgpu::data::Dataset::toy("moons", 10_000, 0).unwrap();
    let w = Weights::init(&cfg(), &mut rand::rngs::StdRng::seed_from_u64(0));
    let tc = TrainConfig {
        batch,
        steps: 10,
        coupling: Coupling::Sinkhorn { reg, iters },
        ..Default::default()
    };
    let mut tr = Trainer::new(
        ctx,
        &cfg(),
        GaussianPath::Ot { sigma_min: 0.0 },
        &w,
        &data.points,
        &tc,
    )
    .unwrap();
    tr.run_steps(ctx, 1).unwrap();
    let [x0, x1, f, g, pairs, eps] = tr.ot_state(ctx).unwrap().unwrap();
    let to64 = |v: Vec<f32>| v.into_iter().map(|x| x as f64).collect::<Vec<f64>>();
    let pairs = pairs.iter().map(|p| p.to_bits() as usize).collect();
    (to64(x0), to64(x1), to64(f), to64(g), pairs, eps[0] as f64)
}

fn cost(x0: &[f64], x1: &[f64], i: usize, j: usize) -> f64 {
    (x0[2 * i] - x1[2 * j]).powi(2) + (x0[2 * i + 1] - x1[2 * j + 1]).powi(2)
}

#[test]
fn sinkhorn_plan_has_the_right_marginals_and_matches_f64_sinkhorn() {
    let (b, iters) = (64, 200);
    let (x0, x1, f, g, pairs, eps) = one_step(b, 0.05, iters);
    // ε = reg · mean cost.
    let mean_cost = (0..b)
        .flat_map(|i| (0..b).map(move |j| (i, j)))
        .map(|(i, j)| cost(&x0, &x1, i, j))
        .sum::<f64>()
        / (b * b) as f64;
    assert!(
        (eps - 0.05 * mean_cost).abs() < 1e-4 * eps,
        "ε {eps} vs {}",
        0.05 * mean_cost
    );
    // Plan marginals: columns exact after the last g update, rows close after 200 iterations.
    let plan = |i: usize, j: usize| ((f[i] + g[j] - cost(&x0, &x1, i, j)) / eps).exp();
    for i in 0..b {
        let row: f64 = (0..b).map(|j| plan(i, j)).sum();
        let col: f64 = (0..b).map(|j| plan(j, i)).sum();
        assert!(
            (row * b as f64 - 1.0).abs() < 0.02,
            "row {i} mass {}",
            row * b as f64
        );
        assert!(
            (col * b as f64 - 1.0).abs() < 1e-3,
            "column {i} mass {}",
            col * b as f64
        );
    }
    // The same iterations in f64.
    let (mut fr, mut gr) = (vec![0.0; b], vec![0.0; b]);
    let lse = |v: &mut dyn Iterator<Item = f64>| {
        let v: Vec<f64> = v.collect();
        let m = v.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        m + v.iter().map(|x| (x - m).exp()).sum::<f64>().ln()
    };
    #[allow(clippy::needless_range_loop)] // the math reads as indices
    for _ in 0..iters {
        for i in 0..b {
            fr[i] = -eps * (b as f64).ln()
                - eps * lse(&mut (0..b).map(|j| (gr[j] - cost(&x0, &x1, i, j)) / eps));
        }
        for j in 0..b {
            gr[j] = -eps * (b as f64).ln()
                - eps * lse(&mut (0..b).map(|i| (fr[i] - cost(&x0, &x1, i, j)) / eps));
        }
    }
    let scale = mean_cost;
    for i in 0..b {
        assert!(
            (f[i] - fr[i]).abs() < 1e-3 * scale && (g[i] - gr[i]).abs() < 1e-3 * scale,
            "potentials differ at {i}"
        );
    }
    assert!(pairs.iter().all(|&p| p < b));
}

#[test]
fn small_batches_recover_the_exact_ot_permutation() {
    // Batch 6: brute force over the 720 permutations; a small ε makes the plan a permutation.
    let b = 6;
    let (x0, x1, _, _, pairs, _) = one_step(b, 0.002, 1000);
    let mut perm: Vec<usize> = (0..b).collect();
    let mut best = (f64::INFINITY, perm.clone());
    // Heap's algorithm.
    fn heap(k: usize, a: &mut Vec<usize>, visit: &mut dyn FnMut(&[usize])) {
        if k == 1 {
            visit(a);
            return;
        }
        for i in 0..k {
            heap(k - 1, a, visit);
            if k.is_multiple_of(2) {
                a.swap(i, k - 1)
            } else {
                a.swap(0, k - 1)
            }
        }
    }
    heap(b, &mut perm, &mut |p| {
        let c: f64 = (0..b).map(|i| cost(&x0, &x1, i, p[i])).sum();
        if c < best.0 {
            best = (c, p.to_vec());
        }
    });
    assert_eq!(
        pairs, best.1,
        "Sinkhorn pairs vs the optimal permutation (cost {})",
        best.0
    );
}

#[test]
fn ot_coupling_gives_straighter_paths_than_independent() {
    let ctx = ctx();
    let data = flowgpu::data::Dataset::toy("moons", 50_000, 0).unwrap();
    let fresh = flowgpu::data::Dataset::toy("moons", 1000, 77)
        .unwrap()
        .points;
    let mut eds = Vec::new();
    // A short budget (Sinkhorn costs 2 dispatches per iteration, ~7 ms a step on lavapipe).
    for coupling in [
        Coupling::Independent,
        Coupling::Sinkhorn {
            reg: 0.05,
            iters: 10,
        },
    ] {
        let tc = TrainConfig {
            steps: 400,
            batch: 128,
            coupling,
            ..Default::default()
        };
        let (m, _) = flowgpu::train::fit(
            ctx,
            &data,
            &cfg(),
            GaussianPath::Ot { sigma_min: 0.0 },
            &tc,
            |_, _| {},
        )
        .unwrap();
        let s = Sampler::new(ctx, &m).unwrap();
        // Normalized path energy: E ∫‖v‖² dt / E‖x(1) − x(0)‖² − 1 (0 for straight paths at
        // constant speed), from 64-step Euler trajectories of 300 particles.
        let traj = s
            .trajectories(
                300,
                9,
                &SolveConfig {
                    steps: 64,
                    ..Default::default()
                },
            )
            .unwrap();
        let (mut energy, mut chord) = (0.0, 0.0);
        for p in 0..300 {
            let at = |k: usize, d: usize| traj[k][2 * p + d] as f64;
            for k in 0..64 {
                energy +=
                    ((at(k + 1, 0) - at(k, 0)).powi(2) + (at(k + 1, 1) - at(k, 1)).powi(2)) * 64.0;
            }
            chord += (at(64, 0) - at(0, 0)).powi(2) + (at(64, 1) - at(0, 1)).powi(2);
        }
        let path_energy = energy / chord - 1.0;
        let mut row = vec![path_energy];
        for steps in [1, 2, 4] {
            let (x, _) = s
                .sample(
                    1000,
                    5,
                    &SolveConfig {
                        steps,
                        ..Default::default()
                    },
                )
                .unwrap();
            row.push(energy_distance(&x, &fresh));
        }
        eprintln!("{coupling:?}: normalized path energy, then energy distance with 1/2/4 Euler steps: {row:.4?}");
        eds.push(row);
    }
    for (k, (ind, ot)) in eds[0].iter().zip(&eds[1]).enumerate() {
        assert!(
            *ot < 0.7 * ind,
            "OT {ot} vs independent {ind} at step count index {k}"
        );
    }
}
