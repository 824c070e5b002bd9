//! The eight 2-D toy distributions of FFJORD (Grathwohl et al., 2019), defined exactly
//! as in the reference code (FFJORD's toy definitions) so that results compare with
//! published numbers and with the PyTorch baselines.
//!
//! Everything is computed in f64 and stored as f32, row-major `[n * 2]`. Sampling
//! consumes the rng in a fixed order, so a seeded rng gives identical points.

use rand::seq::SliceRandom;
use rand::Rng;
use rand_distr::StandardNormal;
use std::f64::consts::{FRAC_1_SQRT_2, PI};

/// A 2-D toy distribution.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Toy {
    /// Two interleaved half circles ("moons").
    Moons,
    /// Eight Gaussians on a circle ("8gaussians"); has a closed-form density.
    EightGaussians,
    /// Uniform on alternating squares ("checkerboard").
    Checkerboard,
    /// Two concentric circles ("circles").
    Circles,
    /// Four concentric rings ("rings").
    Rings,
    /// Five curved arms ("pinwheel").
    Pinwheel,
    /// A noisy 2-D swiss roll ("swissroll").
    Swissroll,
    /// Two interleaved spirals ("2spirals").
    TwoSpirals,
}

/// The divisor FFJORD applies to 8gaussians (an approximation of √2 kept for fidelity).
pub const EIGHT_GAUSSIANS_DIVISOR: f64 = 1.414;

/// Standard deviation of each 8gaussians component after the final division.
pub const EIGHT_GAUSSIANS_STD: f64 = 0.5 / EIGHT_GAUSSIANS_DIVISOR;

/// Component centres of 8gaussians after the final division, in FFJORD's order.
pub const EIGHT_GAUSSIANS_CENTRES: [[f64; 2]; 8] = {
    const S: f64 = 4.0 / EIGHT_GAUSSIANS_DIVISOR;
    const D: f64 = S * FRAC_1_SQRT_2;
    [
        [S, 0.0],
        [-S, 0.0],
        [0.0, S],
        [0.0, -S],
        [D, D],
        [D, -D],
        [-D, D],
        [-D, -D],
    ]
};

/// Exact log-density of the 8gaussians mixture: eight equal-weight isotropic
/// Gaussians, evaluated with log-sum-exp so it stays finite far from the centres.
pub fn eight_gaussians_log_density(x: [f64; 2]) -> f64 {
    if x[0].is_nan() || x[1].is_nan() {
        return f64::NAN;
    }
    let var = EIGHT_GAUSSIANS_STD * EIGHT_GAUSSIANS_STD;
    let logits = EIGHT_GAUSSIANS_CENTRES.map(|c| {
        let (dx, dy) = (x[0] - c[0], x[1] - c[1]);
        -(dx * dx + dy * dy) / (2.0 * var)
    });
    let max = logits.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if !max.is_finite() {
        // Infinitely far away.
        return f64::NEG_INFINITY;
    }
    let lse = max + logits.iter().map(|l| (l - max).exp()).sum::<f64>().ln();
    lse - 8f64.ln() - (2.0 * PI * var).ln()
}

impl Toy {
    /// Every toy, in the conventional FFJORD order.
    pub const ALL: [Toy; 8] = [
        Toy::Moons,
        Toy::EightGaussians,
        Toy::Checkerboard,
        Toy::Circles,
        Toy::Rings,
        Toy::Pinwheel,
        Toy::Swissroll,
        Toy::TwoSpirals,
    ];

    /// The conventional (FFJORD) name.
    pub fn name(self) -> &'static str {
        match self {
            Toy::Moons => "moons",
            Toy::EightGaussians => "8gaussians",
            Toy::Checkerboard => "checkerboard",
            Toy::Circles => "circles",
            Toy::Rings => "rings",
            Toy::Pinwheel => "pinwheel",
            Toy::Swissroll => "swissroll",
            Toy::TwoSpirals => "2spirals",
        }
    }

    /// Looks a toy up by name (case-insensitive, surrounding whitespace ignored).
    pub fn from_name(s: &str) -> Option<Toy> {
        let s = s.trim();
        Toy::ALL
            .into_iter()
            .find(|t| t.name().eq_ignore_ascii_case(s))
    }

    /// All names, comma separated, for error messages.
    pub fn names() -> String {
        Toy::ALL.map(Toy::name).join(", ")
    }

    /// Draws `n` points as row-major `[n * 2]` f32.
    pub fn sample<R: Rng + ?Sized>(self, n: usize, rng: &mut R) -> Vec<f32> {
        let pts = match self {
            Toy::Moons => moons(n, rng),
            Toy::EightGaussians => eight_gaussians(n, rng),
            Toy::Checkerboard => checkerboard(n, rng),
            Toy::Circles => circles(n, rng),
            Toy::Rings => rings(n, rng),
            Toy::Pinwheel => pinwheel(n, rng),
            Toy::Swissroll => swissroll(n, rng),
            Toy::TwoSpirals => two_spirals(n, rng),
        };
        debug_assert_eq!(pts.len(), n);
        pts.iter()
            .flat_map(|p| [p[0] as f32, p[1] as f32])
            .collect()
    }
}

fn normal<R: Rng + ?Sized>(rng: &mut R) -> f64 {
    rng.sample(StandardNormal)
}

fn uniform<R: Rng + ?Sized>(rng: &mut R) -> f64 {
    rng.random::<f64>()
}

/// numpy's `linspace(0, end, m, endpoint)`.
fn linspace(end: f64, m: usize, endpoint: bool) -> impl Iterator<Item = f64> {
    let div = if endpoint {
        m.saturating_sub(1).max(1)
    } else {
        m.max(1)
    };
    (0..m).map(move |i| end * i as f64 / div as f64)
}

/// sklearn `make_moons(noise=0.1)`, then ×2 + (−1, −0.2).
fn moons<R: Rng + ?Sized>(n: usize, rng: &mut R) -> Vec<[f64; 2]> {
    let (n_out, n_in) = (n / 2, n - n / 2);
    let outer = linspace(PI, n_out, true).map(|s| [s.cos(), s.sin()]);
    let inner = linspace(PI, n_in, true).map(|s| [1.0 - s.cos(), 1.0 - s.sin() - 0.5]);
    let mut pts: Vec<[f64; 2]> = outer.chain(inner).collect();
    for p in &mut pts {
        let (nx, ny) = (normal(rng), normal(rng));
        *p = [(p[0] + 0.1 * nx) * 2.0 - 1.0, (p[1] + 0.1 * ny) * 2.0 - 0.2];
    }
    pts.shuffle(rng);
    pts
}

fn eight_gaussians<R: Rng + ?Sized>(n: usize, rng: &mut R) -> Vec<[f64; 2]> {
    let s = 4.0;
    let d = 4.0 * FRAC_1_SQRT_2;
    let centres = [
        [s, 0.0],
        [-s, 0.0],
        [0.0, s],
        [0.0, -s],
        [d, d],
        [d, -d],
        [-d, d],
        [-d, -d],
    ];
    (0..n)
        .map(|_| {
            let c = centres[rng.random_range(0..8)];
            let (nx, ny) = (normal(rng), normal(rng));
            [
                (c[0] + 0.5 * nx) / EIGHT_GAUSSIANS_DIVISOR,
                (c[1] + 0.5 * ny) / EIGHT_GAUSSIANS_DIVISOR,
            ]
        })
        .collect()
}

fn checkerboard<R: Rng + ?Sized>(n: usize, rng: &mut R) -> Vec<[f64; 2]> {
    (0..n)
        .map(|_| {
            let x1 = 4.0 * uniform(rng) - 2.0;
            let b = rng.random_range(0..2u32) as f64;
            // Python's `%` is floor-modulo, hence rem_euclid (floor(x1) may be negative).
            let x2 = uniform(rng) - 2.0 * b + x1.floor().rem_euclid(2.0);
            [x1 * 2.0, x2 * 2.0]
        })
        .collect()
}

/// sklearn `make_circles(factor=0.5, noise=0.08)`, then ×3.
fn circles<R: Rng + ?Sized>(n: usize, rng: &mut R) -> Vec<[f64; 2]> {
    let (n_out, n_in) = (n / 2, n - n / 2);
    let outer = linspace(2.0 * PI, n_out, false).map(|a| [a.cos(), a.sin()]);
    let inner = linspace(2.0 * PI, n_in, false).map(|a| [0.5 * a.cos(), 0.5 * a.sin()]);
    let mut pts: Vec<[f64; 2]> = outer.chain(inner).collect();
    for p in &mut pts {
        let (nx, ny) = (normal(rng), normal(rng));
        *p = [(p[0] + 0.08 * nx) * 3.0, (p[1] + 0.08 * ny) * 3.0];
    }
    pts.shuffle(rng);
    pts
}

fn rings<R: Rng + ?Sized>(n: usize, rng: &mut R) -> Vec<[f64; 2]> {
    // As in FFJORD, the three outer rings get n/4 points and the innermost the rest.
    let q = n / 4;
    let counts = [(1.0, q), (0.75, q), (0.5, q), (0.25, n - 3 * q)];
    let mut pts: Vec<[f64; 2]> = counts
        .iter()
        .flat_map(|&(r, m)| linspace(2.0 * PI, m, false).map(move |a| [r * a.cos(), r * a.sin()]))
        .map(|p| [p[0] * 3.0, p[1] * 3.0])
        .collect();
    pts.shuffle(rng);
    for p in &mut pts {
        p[0] += 0.08 * normal(rng);
        p[1] += 0.08 * normal(rng);
    }
    pts
}

fn pinwheel<R: Rng + ?Sized>(n: usize, rng: &mut R) -> Vec<[f64; 2]> {
    const ARMS: usize = 5;
    let mut pts: Vec<[f64; 2]> = (0..n)
        .map(|i| {
            // Contiguous, balanced arm labels (FFJORD drops the n % 5 remainder
            // instead; we must return exactly n points).
            let k = i * ARMS / n;
            let f0 = 0.3 * normal(rng) + 1.0;
            let f1 = 0.1 * normal(rng);
            let a = 2.0 * PI * k as f64 / ARMS as f64 + 0.25 * f0.exp();
            let (s, c) = a.sin_cos();
            [2.0 * (f0 * c + f1 * s), 2.0 * (-f0 * s + f1 * c)]
        })
        .collect();
    pts.shuffle(rng);
    pts
}

/// sklearn `make_swiss_roll(noise=1.0)` projected to (x, z), then /5.
fn swissroll<R: Rng + ?Sized>(n: usize, rng: &mut R) -> Vec<[f64; 2]> {
    (0..n)
        .map(|_| {
            let t = 1.5 * PI * (1.0 + 2.0 * uniform(rng));
            let (nx, ny) = (normal(rng), normal(rng));
            [(t * t.cos() + nx) / 5.0, (t * t.sin() + ny) / 5.0]
        })
        .collect()
}

/// First n/2 points on one spiral, the rest on its reflection through the origin
/// (not shuffled, as in FFJORD).
fn two_spirals<R: Rng + ?Sized>(n: usize, rng: &mut R) -> Vec<[f64; 2]> {
    (0..n)
        .map(|i| {
            let s = uniform(rng).sqrt() * 540.0 * (2.0 * PI) / 360.0;
            let px = -s.cos() * s + 0.5 * uniform(rng);
            let py = s.sin() * s + 0.5 * uniform(rng);
            let sign = if i < n / 2 { 1.0 } else { -1.0 };
            let (nx, ny) = (normal(rng), normal(rng));
            [sign * px / 3.0 + 0.1 * nx, sign * py / 3.0 + 0.1 * ny]
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    fn stats(p: &[f32]) -> ([f64; 2], [f64; 2], [f64; 4]) {
        let n = (p.len() / 2) as f64;
        let mut mean = [0.0; 2];
        let mut range = [f64::MAX, f64::MIN, f64::MAX, f64::MIN];
        for r in p.chunks_exact(2) {
            for d in 0..2 {
                let v = r[d] as f64;
                mean[d] += v / n;
                range[2 * d] = range[2 * d].min(v);
                range[2 * d + 1] = range[2 * d + 1].max(v);
            }
        }
        let mut var = [0.0; 2];
        for r in p.chunks_exact(2) {
            for d in 0..2 {
                var[d] += (r[d] as f64 - mean[d]).powi(2) / n;
            }
        }
        (mean, [var[0].sqrt(), var[1].sqrt()], range)
    }

    #[test]
    fn names_round_trip() {
        for t in Toy::ALL {
            assert_eq!(Toy::from_name(t.name()), Some(t));
            assert_eq!(Toy::from_name(&t.name().to_uppercase()), Some(t));
        }
        assert_eq!(Toy::from_name("nope"), None);
        assert_eq!(
            Toy::names(),
            "moons, 8gaussians, checkerboard, circles, rings, pinwheel, swissroll, 2spirals"
        );
    }

    /// Means and spreads implied by the definitions (derivations in comments), checked
    /// loosely on 20k points.
    #[test]
    fn samples_are_plausible() {
        let n = 20_000;
        // (toy, expected mean, tolerance, plausible |coordinate| bound)
        let cases = [
            // moons: outer mean (0, 2/π), inner (1, 1/2 − 2/π) → (0.5, 0.25); ×2 + (−1, −0.2).
            (Toy::Moons, [0.0, 0.3], 0.03, 4.5),
            (Toy::EightGaussians, [0.0, 0.0], 0.05, 5.0),
            // checkerboard: E[x1] = 0, E[x2] = 0.5 − 1 + 0.5 = 0.
            (Toy::Checkerboard, [0.0, 0.0], 0.05, 4.0),
            (Toy::Circles, [0.0, 0.0], 0.02, 4.5),
            (Toy::Rings, [0.0, 0.0], 0.02, 4.5),
            (Toy::Pinwheel, [0.0, 0.0], 0.05, 8.0),
            // swissroll: t ~ U[1.5π, 4.5π]; E[t cos t] = 6π/3π = 2, E[t sin t] = 2/3π; /5.
            (Toy::Swissroll, [0.4, 2.0 / (15.0 * PI)], 0.06, 5.0),
            // 2spirals: symmetric halves, but each half's sample mean has its own noise.
            (Toy::TwoSpirals, [0.0, 0.0], 0.08, 4.5),
        ];
        for (i, (toy, want, tol, bound)) in cases.into_iter().enumerate() {
            let mut rng = StdRng::seed_from_u64(i as u64);
            let p = toy.sample(n, &mut rng);
            assert_eq!(p.len(), 2 * n);
            assert!(p.iter().all(|v| v.is_finite()), "{toy:?}");
            let (mean, std, range) = stats(&p);
            for d in 0..2 {
                assert!((mean[d] - want[d]).abs() < tol, "{toy:?} mean {mean:?}");
                assert!(std[d] > 0.3 && std[d] < 3.0, "{toy:?} std {std:?}");
            }
            assert!(
                range.iter().all(|r| r.abs() < bound),
                "{toy:?} range {range:?}"
            );
        }
    }

    #[test]
    fn shape_specific_properties() {
        let mut rng = StdRng::seed_from_u64(11);
        // checkerboard lies in [-4, 4)² on alternating 2×2 squares: the square indices
        // (floor(x/2), floor(y/2)) always have an even sum.
        let p = Toy::Checkerboard.sample(5000, &mut rng);
        for r in p.chunks_exact(2) {
            assert!((-4.0..4.0).contains(&r[0]) && (-4.0..4.0).contains(&r[1]));
            let parity = ((r[0] / 2.0).floor() + (r[1] / 2.0).floor()) as i64;
            assert_eq!(parity.rem_euclid(2), 0, "{r:?}");
        }
        // circles: radii 3 and 1.5 in equal numbers.
        let p = Toy::Circles.sample(4000, &mut rng);
        let outer = p
            .chunks_exact(2)
            .filter(|r| r[0].hypot(r[1]) > 2.25)
            .count();
        assert!((1900..=2100).contains(&outer), "{outer}");
        // 2spirals: the second half mirrors the first, so the two halves' means cancel.
        let p = Toy::TwoSpirals.sample(20_000, &mut rng);
        let (m1, _, _) = stats(&p[..20_000]);
        let (m2, _, _) = stats(&p[20_000..]);
        assert!((m1[0] + m2[0]).abs() < 0.1 && (m1[1] + m2[1]).abs() < 0.1);
        // 8gaussians: almost every point is within 4 std of some centre.
        let p = Toy::EightGaussians.sample(4000, &mut rng);
        let far = p
            .chunks_exact(2)
            .filter(|r| {
                EIGHT_GAUSSIANS_CENTRES.iter().all(|c| {
                    (r[0] as f64 - c[0]).hypot(r[1] as f64 - c[1]) > 4.0 * EIGHT_GAUSSIANS_STD
                })
            })
            .count();
        assert!(far < 5, "{far}");
    }

    #[test]
    fn odd_and_tiny_sizes() {
        let mut rng = StdRng::seed_from_u64(5);
        for toy in Toy::ALL {
            for n in [0, 1, 2, 3, 7, 101] {
                let p = toy.sample(n, &mut rng);
                assert_eq!(p.len(), 2 * n, "{toy:?} n={n}");
                assert!(p.iter().all(|v| v.is_finite()));
            }
        }
    }

    #[test]
    fn deterministic_given_seed() {
        for toy in Toy::ALL {
            let a = toy.sample(257, &mut StdRng::seed_from_u64(42));
            let b = toy.sample(257, &mut StdRng::seed_from_u64(42));
            let c = toy.sample(257, &mut StdRng::seed_from_u64(43));
            assert_eq!(a, b, "{toy:?}");
            assert_ne!(a, c, "{toy:?}");
        }
        // Works through a trait object too (R: ?Sized).
        let mut rng = StdRng::seed_from_u64(1);
        let dyn_rng: &mut dyn rand::RngCore = &mut rng;
        assert_eq!(Toy::Moons.sample(3, dyn_rng).len(), 6);
    }

    #[test]
    fn eight_gaussians_density_normalised() {
        // Midpoint rule over [-6, 6]²; the mass outside is negligible (centres at
        // radius 2.83, std 0.354).
        let (lo, hi, m) = (-6.0, 6.0, 1200);
        let h = (hi - lo) / m as f64;
        let mut total = 0.0;
        for i in 0..m {
            for j in 0..m {
                let x = [lo + (i as f64 + 0.5) * h, lo + (j as f64 + 0.5) * h];
                total += eight_gaussians_log_density(x).exp() * h * h;
            }
        }
        assert!((total - 1.0).abs() < 1e-4, "integral {total}");
    }

    #[test]
    fn eight_gaussians_density_values() {
        // At a centre the own component dominates: log(1/8 · 1/(2πσ²)) (others are
        // ≥ 2.16 apart ≈ 6σ, contributing < 1e-8 relative).
        let c = EIGHT_GAUSSIANS_CENTRES[0];
        let var = EIGHT_GAUSSIANS_STD * EIGHT_GAUSSIANS_STD;
        let want = -(8.0 * 2.0 * PI * var).ln();
        assert!((eight_gaussians_log_density(c) - want).abs() < 1e-6);
        // Stable far away: finite and very negative, not -inf.
        let far = eight_gaussians_log_density([1e3, -1e3]);
        assert!(far.is_finite() && far < -1e6);
        assert!(eight_gaussians_log_density([f64::NAN, 0.0]).is_nan());
        // Symmetric under the dihedral symmetries of the centres.
        let a = eight_gaussians_log_density([0.7, 1.9]);
        for q in [[1.9, 0.7], [-0.7, 1.9], [0.7, -1.9], [-1.9, -0.7]] {
            assert!((eight_gaussians_log_density(q) - a).abs() < 1e-12);
        }
        // Sample average log-density ≈ −entropy, which for well-separated components
        // is ln 8 + entropy of one Gaussian: ln 8 + 1 + ln(2πσ²) with a minus sign.
        let p = Toy::EightGaussians.sample(20_000, &mut StdRng::seed_from_u64(9));
        let avg: f64 = p
            .chunks_exact(2)
            .map(|r| eight_gaussians_log_density([r[0] as f64, r[1] as f64]))
            .sum::<f64>()
            / 20_000.0;
        let neg_entropy = -(8f64.ln() + 1.0 + (2.0 * PI * var).ln());
        assert!((avg - neg_entropy).abs() < 0.03, "{avg} vs {neg_entropy}");
    }
}
