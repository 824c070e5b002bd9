//! The ODE math, with no GPU: Runge–Kutta tableaus, time grids, step-size tolerances and
//! the divergence estimator's specification. The GPU solvers (`solve`, `mle`) and the f64
//! oracle both build on these.

use crate::error::{Error, Result};
use crate::path::GaussianPath;

pub(crate) mod program;

/// An explicit Runge–Kutta method: c, the strictly lower-triangular a, weights b and, for
/// embedded pairs, the error weights e = b − b̂.
#[derive(Clone, Debug, PartialEq)]
pub struct Tableau {
    pub c: Vec<f64>,
    pub a: Vec<Vec<f64>>,
    pub b: Vec<f64>,
    pub e: Option<Vec<f64>>,
    pub order: u32,
}

impl Tableau {
    pub fn stages(&self) -> usize {
        self.b.len()
    }
    pub fn euler() -> Self {
        Tableau {
            c: vec![0.0],
            a: vec![vec![]],
            b: vec![1.0],
            e: None,
            order: 1,
        }
    }
    pub fn midpoint() -> Self {
        Tableau {
            c: vec![0.0, 0.5],
            a: vec![vec![], vec![0.5]],
            b: vec![0.0, 1.0],
            e: None,
            order: 2,
        }
    }
    /// Heun's method (explicit trapezoid), second order: EDM's sampler (Karras et al. 2022).
    pub fn heun() -> Self {
        Tableau {
            c: vec![0.0, 1.0],
            a: vec![vec![], vec![1.0]],
            b: vec![0.5, 0.5],
            e: None,
            order: 2,
        }
    }
    pub fn rk4() -> Self {
        Tableau {
            c: vec![0.0, 0.5, 0.5, 1.0],
            a: vec![vec![], vec![0.5], vec![0.0, 0.5], vec![0.0, 0.0, 1.0]],
            b: vec![1.0 / 6.0, 1.0 / 3.0, 1.0 / 3.0, 1.0 / 6.0],
            e: None,
            order: 4,
        }
    }
    /// Dormand & Prince (1980), 5th-order solution, 4th-order embedded estimate, FSAL.
    pub fn dopri5() -> Self {
        let b = vec![
            35.0 / 384.0,
            0.0,
            500.0 / 1113.0,
            125.0 / 192.0,
            -2187.0 / 6784.0,
            11.0 / 84.0,
            0.0,
        ];
        let b_hat = [
            5179.0 / 57600.0,
            0.0,
            7571.0 / 16695.0,
            393.0 / 640.0,
            -92097.0 / 339200.0,
            187.0 / 2100.0,
            1.0 / 40.0,
        ];
        let e = b.iter().zip(b_hat).map(|(b, bh)| b - bh).collect();
        Tableau {
            c: vec![0.0, 0.2, 0.3, 0.8, 8.0 / 9.0, 1.0, 1.0],
            a: vec![
                vec![],
                vec![0.2],
                vec![3.0 / 40.0, 9.0 / 40.0],
                vec![44.0 / 45.0, -56.0 / 15.0, 32.0 / 9.0],
                vec![
                    19372.0 / 6561.0,
                    -25360.0 / 2187.0,
                    64448.0 / 6561.0,
                    -212.0 / 729.0,
                ],
                vec![
                    9017.0 / 3168.0,
                    -355.0 / 33.0,
                    46732.0 / 5247.0,
                    49.0 / 176.0,
                    -5103.0 / 18656.0,
                ],
                vec![
                    35.0 / 384.0,
                    0.0,
                    500.0 / 1113.0,
                    125.0 / 192.0,
                    -2187.0 / 6784.0,
                    11.0 / 84.0,
                ],
            ],
            b,
            e: Some(e),
            order: 5,
        }
    }
}

/// An ODE solver: a fixed-step Runge–Kutta method or adaptive Dormand–Prince.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    Euler,
    Midpoint,
    Heun,
    Rk4,
    Dopri5,
}

impl Method {
    pub const NAMES: &'static str = "euler, midpoint, heun, rk4, dopri5";
    pub fn from_name(s: &str) -> Result<Self> {
        Ok(match s {
            "euler" => Method::Euler,
            "midpoint" => Method::Midpoint,
            "heun" => Method::Heun,
            "rk4" => Method::Rk4,
            "dopri5" => Method::Dopri5,
            _ => {
                return Err(Error::invalid(format!(
                    "unknown solver '{s}'; valid solvers: {}",
                    Self::NAMES
                )))
            }
        })
    }
    pub fn name(self) -> &'static str {
        match self {
            Method::Euler => "euler",
            Method::Midpoint => "midpoint",
            Method::Heun => "heun",
            Method::Rk4 => "rk4",
            Method::Dopri5 => "dopri5",
        }
    }
    pub fn tableau(self) -> Tableau {
        match self {
            Method::Euler => Tableau::euler(),
            Method::Midpoint => Tableau::midpoint(),
            Method::Heun => Tableau::heun(),
            Method::Rk4 => Tableau::rk4(),
            Method::Dopri5 => Tableau::dopri5(),
        }
    }
    pub fn adaptive(self) -> bool {
        self == Method::Dopri5
    }
}

/// Where fixed steps are placed on [0, 1] (mapped onto [t0, t1]): u_k = k/K, then
/// uniform: u; start: u² (dense near t = 0); end: 1 − (1 − u)² (dense near t = 1);
/// ends: (1 − cos πu)/2 (dense near both).
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum TimeGrid {
    Uniform,
    Start,
    End,
    Ends,
    /// EDM's grid (Karras et al. 2022, ρ = 7): uniform in σ^(1/ρ) for the path's noise
    /// level σ(t) = b/a, from min(σ(0), 80) to max(σ(1), 0.002), with t = 0 and 1 added.
    Edm,
}

impl TimeGrid {
    pub const NAMES: &'static str = "uniform, start, end, ends, edm";
    pub fn from_name(s: &str) -> Result<Self> {
        Ok(match s {
            "uniform" => TimeGrid::Uniform,
            "start" => TimeGrid::Start,
            "end" => TimeGrid::End,
            "ends" => TimeGrid::Ends,
            "edm" => TimeGrid::Edm,
            _ => {
                return Err(Error::invalid(format!(
                    "unknown time grid '{s}'; valid grids: {}",
                    Self::NAMES
                )))
            }
        })
    }
    fn warp(self, u: f64) -> f64 {
        match self {
            TimeGrid::Uniform => u,
            TimeGrid::Start => u * u,
            TimeGrid::End => 1.0 - (1.0 - u) * (1.0 - u),
            TimeGrid::Ends => 0.5 * (1.0 - (std::f64::consts::PI * u).cos()),
            TimeGrid::Edm => u,
        }
    }

    /// K + 1 times from t0 to t1 on `path` (only the EDM grid depends on it).
    pub fn times_on(self, path: &GaussianPath, t0: f64, t1: f64, steps: usize) -> Vec<f64> {
        if self != TimeGrid::Edm {
            return self.times(t0, t1, steps);
        }
        let forward = edm_times(path, steps);
        let (lo, hi) = (t0.min(t1), t0.max(t1));
        let mut ts: Vec<f64> = forward.iter().map(|u| lo + (hi - lo) * u).collect();
        if t1 < t0 {
            ts.reverse();
        }
        ts
    }
    /// K + 1 times from t0 to t1. The grid is defined in model time (0 = noise, 1 = data),
    /// so "start" is dense near t = 0 whichever way the solve runs. The EDM grid needs the
    /// path ([`times_on`](Self::times_on)); here it is the OT path's.
    pub fn times(self, t0: f64, t1: f64, steps: usize) -> Vec<f64> {
        if self == TimeGrid::Edm {
            return self.times_on(&GaussianPath::Ot { sigma_min: 0.0 }, t0, t1, steps);
        }
        (0..=steps)
            .map(|k| {
                let u = k as f64 / steps as f64;
                if t1 >= t0 {
                    t0 + (t1 - t0) * self.warp(u)
                } else {
                    // Backwards: reuse the forward grid on [t1, t0], traversed in reverse.
                    t1 + (t0 - t1) * self.warp(1.0 - u)
                }
            })
            .collect()
    }
}

/// EDM's ρ and noise-level range.
const EDM_RHO: f64 = 7.0;
const EDM_SIGMA_MAX: f64 = 80.0;
const EDM_SIGMA_MIN: f64 = 0.002;

/// The EDM grid on [0, 1] in model time: σ_k uniform in σ^(1/ρ) between the ends of the
/// path's range of σ = b/a (clipped to [0.002, 80]); t = 0 and t = 1 are always grid
/// points, the clipped ends become their neighbours.
fn edm_times(path: &GaussianPath, steps: usize) -> Vec<f64> {
    let sigma = |t: f64| {
        let s = path.schedule(t);
        if s.a > 0.0 {
            s.b / s.a
        } else {
            f64::INFINITY
        }
    };
    let (s0, s1) = (sigma(0.0), sigma(1.0));
    let (hi_is_start, lo_is_end) = (s0 <= EDM_SIGMA_MAX, s1 >= EDM_SIGMA_MIN);
    let i0 = usize::from(!hi_is_start);
    let i1 = if lo_is_end {
        steps
    } else {
        steps.saturating_sub(1)
    };
    if steps < 3 || i1 <= i0 {
        return TimeGrid::Uniform.times(0.0, 1.0, steps);
    }
    let (hi, lo) = (s0.min(EDM_SIGMA_MAX), s1.max(EDM_SIGMA_MIN));
    let (r_hi, r_lo) = (hi.powf(1.0 / EDM_RHO), lo.powf(1.0 / EDM_RHO));
    let m = (i1 - i0) as f64;
    (0..=steps)
        .map(|k| match k {
            0 => 0.0,
            k if k == steps => 1.0,
            k => {
                let target = (r_hi + (k - i0) as f64 / m * (r_lo - r_hi)).powf(EDM_RHO);
                invert_decreasing(&sigma, target)
            }
        })
        .collect()
}

/// t in [0, 1] with f(t) = target for f decreasing (bisection to f64 resolution).
fn invert_decreasing(f: &impl Fn(f64) -> f64, target: f64) -> f64 {
    let (mut lo, mut hi) = (0.0f64, 1.0f64);
    for _ in 0..64 {
        let mid = 0.5 * (lo + hi);
        if f(mid) > target {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    0.5 * (lo + hi)
}

/// Settings of the adaptive solver (Hairer & Wanner's standard controller).
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct Tolerances {
    pub rtol: f64,
    pub atol: f64,
    pub safety: f64,
    pub fac_min: f64,
    pub fac_max: f64,
    /// Attempted steps per sample before giving up.
    pub max_steps: usize,
    /// First step size (absolute); None: 5% of the interval.
    pub h0: Option<f64>,
    /// |h| below this is a step-size underflow (an error).
    pub h_min: f64,
}

impl Default for Tolerances {
    fn default() -> Self {
        Tolerances {
            rtol: 1e-5,
            atol: 1e-5,
            safety: 0.9,
            fac_min: 0.2,
            fac_max: 10.0,
            max_steps: 10_000,
            h0: None,
            h_min: 1e-7,
        }
    }
}

/// How the divergence is estimated when solving the augmented ODE [x, ℓ].
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum Trace {
    /// Exact: dim tangents per row (J·e_j), cost grows linearly with dim.
    Exact,
    /// Hutchinson with `probes` Gaussian or Rademacher probes per row, fixed over a solve.
    Hutchinson {
        probes: usize,
        rademacher: bool,
        seed: u64,
    },
}

impl Trace {
    pub fn tangents(self, dim: usize) -> usize {
        match self {
            Trace::Exact => dim,
            Trace::Hutchinson { probes, .. } => probes,
        }
    }
    pub fn seed(self) -> u64 {
        match self {
            Trace::Exact => 0,
            Trace::Hutchinson { seed, .. } => seed,
        }
    }
}
