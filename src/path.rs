//! Conditional probability paths of flow matching, in one form:
//!   x_t = a_t·x1 + b_t·x0 + c_t·ε,   target u_t = ȧ_t·x1 + ḃ_t·x0 + ċ_t·ε,
//! with x1 from the data, x0 from the source (N(0, I) by default) and ε ~ N(0, I) extra
//! noise (only the paths with c ≠ 0 use it). The GPU side is `path_coefs()` in
//! shaders/path.wgsl; adding a path means one variant here and one branch there.
//!
//! Diffusion models are Gaussian paths too (time runs from noise at t = 0 to data at
//! t = 1): the variance-preserving and variance-exploding SDEs of Song et al. 2021 are
//! `VpSde` and `VeSde`. A network may predict the velocity, the noise x0, the data x1 or
//! the score ([`Prediction`]); on the paths with c = 0 all four are affine in each other
//! at fixed (x, t), and [`Prediction::to_velocity`] gives the conversion every solver uses.

use crate::error::{Error, Result};
use crate::kernels::codes;

#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum GaussianPath {
    /// Conditional optimal transport (Lipman et al. 2023): a = t, b = 1 − (1 − σ_min)·t.
    Ot { sigma_min: f64 },
    /// Variance preserving, cosine: a = sin(πt/2), b = cos(πt/2).
    Vp,
    /// Polynomial convex (flow_matching's PolynomialConvexScheduler): a = tⁿ, b = 1 − tⁿ.
    Poly { exponent: f64 },
    /// Independent-coupling CFM with constant noise (torchcfm's I-CFM):
    /// x_t = t·x1 + (1 − t)·x0 + σ·ε, target x1 − x0.
    Icfm { sigma: f64 },
    /// Schrödinger bridge (torchcfm's SB-CFM): c = σ·√(t(1 − t)), target
    /// x1 − x0 + σ·(1 − 2t)/(2√(t(1 − t)))·ε.
    Sb { sigma: f64 },
    /// Variance-preserving SDE with a linear β schedule (Song et al. 2021, DDPM's
    /// continuous limit): with s = 1 − t, α = exp(−½∫₀ˢβ), β(s) = β_min + s·(β_max −
    /// β_min); a = α, b = √(1 − α²).
    #[serde(rename = "vp-sde")]
    VpSde { beta_min: f64, beta_max: f64 },
    /// Variance-exploding SDE (Song et al. 2021, NCSN's continuous limit): a = 1,
    /// b = σ_min·(σ_max/σ_min)^(1 − t); the source is N(0, σ_max²·I).
    #[serde(rename = "ve-sde")]
    VeSde { sigma_min: f64, sigma_max: f64 },
}

/// What the network predicts at (x_t, t).
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    serde::Serialize,
    serde::Deserialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum Prediction {
    /// The conditional velocity u_t (flow matching), loss |v − u|².
    #[default]
    Velocity,
    /// The noise x0 (DDPM's ε-prediction), loss |ε̂ − x0|².
    Noise,
    /// The clean data x1, loss |x̂1 − x1|².
    Data,
    /// The score ∇log p_t(x_t) = −x0/b, loss b²·|ŝ + x0/b|² (Song et al.'s weighting).
    Score,
}

/// Conversions divide by a (noise, score) or b (data), which vanish at the ends of some
/// paths, and ḃ is infinite at the data end of the VP SDE: there (divisor below `T_EDGE`, or
/// a derivative not finite) the coefficients are taken at t clamped to [T_EDGE, 1 − T_EDGE];
/// elsewhere at t itself.
pub const T_EDGE: f64 = codes::T_EDGE as f64;

/// Path coefficients at t: (a, b, c) and their time derivatives.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Schedule {
    pub a: f64,
    pub b: f64,
    pub c: f64,
    pub da: f64,
    pub db: f64,
    pub dc: f64,
}

impl GaussianPath {
    pub const NAMES: &'static str = "ot, vp, poly, icfm, sb, vp-sde, ve-sde";

    /// From the CLI: name and the parameters of every path ([`PathFlags`]).
    pub fn from_name(name: &str, f: &PathFlags) -> Result<Self> {
        match name {
            "vp-sde" => return Self::vp_sde(f.beta_min, f.beta_max),
            "ve-sde" => return Self::ve_sde(f.sigma_min.unwrap_or(0.01), f.sigma_max),
            _ => {}
        }
        let (sigma_min, sigma, exponent) = (f.sigma_min.unwrap_or(0.0), f.sigma, f.exponent);
        if !(0.0..1.0).contains(&sigma_min) {
            return Err(Error::invalid(format!(
                "--sigma-min must be in [0, 1), got {sigma_min}"
            )));
        }
        if !(sigma >= 0.0 && sigma.is_finite()) {
            return Err(Error::invalid(format!("--sigma must be ≥ 0, got {sigma}")));
        }
        if !(exponent > 0.0 && exponent.is_finite()) {
            return Err(Error::invalid(format!(
                "--exponent must be positive, got {exponent}"
            )));
        }
        match name {
            "ot" => Ok(GaussianPath::Ot { sigma_min }),
            "vp" => Ok(GaussianPath::Vp),
            "poly" => Ok(GaussianPath::Poly { exponent }),
            "icfm" => Ok(GaussianPath::Icfm { sigma }),
            "sb" => Ok(GaussianPath::Sb { sigma }),
            "vp-sde" | "ve-sde" => unreachable!("handled above"),
            _ => Err(Error::invalid(format!(
                "unknown path '{name}'; valid paths: {}",
                Self::NAMES
            ))),
        }
    }

    fn vp_sde(beta_min: f64, beta_max: f64) -> Result<Self> {
        // β_max ≤ 200 keeps α(0) = exp(−½∫β) ≥ e^−50, within f32's range on the GPU.
        if !(beta_min > 0.0 && beta_max >= beta_min && beta_max <= 200.0) {
            return Err(Error::invalid(format!(
                "--beta-min and --beta-max must satisfy 0 < β_min ≤ β_max ≤ 200, got {beta_min} and {beta_max}"
            )));
        }
        Ok(GaussianPath::VpSde { beta_min, beta_max })
    }

    fn ve_sde(sigma_min: f64, sigma_max: f64) -> Result<Self> {
        if !(sigma_min > 0.0 && sigma_max > sigma_min && sigma_max <= 1e4) {
            return Err(Error::invalid(format!(
                "--sigma-min and --sigma-max of ve-sde must satisfy 0 < σ_min < σ_max ≤ 1e4, got {sigma_min} and {sigma_max}"
            )));
        }
        Ok(GaussianPath::VeSde {
            sigma_min,
            sigma_max,
        })
    }

    /// The scale of the source at t = 0: b(0) = σ_max for the VE SDE (its source is
    /// N(0, σ_max²·I)), 1 for every other path.
    pub fn source_scale(&self) -> f64 {
        match *self {
            GaussianPath::VeSde { sigma_max, .. } => sigma_max,
            _ => 1.0,
        }
    }

    /// Whether the path has no extra noise (c ≡ 0): the paths whose predictions convert.
    pub fn is_affine(&self) -> bool {
        !matches!(self, GaussianPath::Icfm { .. } | GaussianPath::Sb { .. })
    }

    pub fn name(&self) -> &'static str {
        match self {
            GaussianPath::Ot { .. } => "ot",
            GaussianPath::Vp => "vp",
            GaussianPath::Poly { .. } => "poly",
            GaussianPath::Icfm { .. } => "icfm",
            GaussianPath::Sb { .. } => "sb",
            GaussianPath::VpSde { .. } => "vp-sde",
            GaussianPath::VeSde { .. } => "ve-sde",
        }
    }

    /// Code of the path in cfm.wgsl (PATH_*).
    pub fn gpu_code(&self) -> u32 {
        match self {
            GaussianPath::Ot { .. } => codes::PATH_OT,
            GaussianPath::Vp => codes::PATH_VP,
            GaussianPath::Poly { .. } => codes::PATH_POLY,
            GaussianPath::Icfm { .. } => codes::PATH_ICFM,
            GaussianPath::Sb { .. } => codes::PATH_SB,
            GaussianPath::VpSde { .. } => codes::PATH_VP_SDE,
            GaussianPath::VeSde { .. } => codes::PATH_VE_SDE,
        }
    }

    /// The path's parameters as the kernels see them: (σ_min, exponent or σ; 0), (β_min,
    /// β_max) or (σ_min, σ_max).
    pub fn gpu_params(&self) -> [f32; 2] {
        let (p, q) = match *self {
            GaussianPath::Ot { sigma_min } => (sigma_min, 0.0),
            GaussianPath::Vp => (0.0, 0.0),
            GaussianPath::Poly { exponent } => (exponent, 0.0),
            GaussianPath::Icfm { sigma } | GaussianPath::Sb { sigma } => (sigma, 0.0),
            GaussianPath::VpSde { beta_min, beta_max } => (beta_min, beta_max),
            GaussianPath::VeSde {
                sigma_min,
                sigma_max,
            } => (sigma_min, sigma_max),
        };
        [p as f32, q as f32]
    }

    pub fn schedule(&self, t: f64) -> Schedule {
        let zero = |a, b, da, db| Schedule {
            a,
            b,
            c: 0.0,
            da,
            db,
            dc: 0.0,
        };
        match *self {
            GaussianPath::Ot { sigma_min } => {
                let k = 1.0 - sigma_min;
                zero(t, 1.0 - k * t, 1.0, -k)
            }
            GaussianPath::Vp => {
                let h = std::f64::consts::FRAC_PI_2;
                let (s, c) = (h * t).sin_cos();
                zero(s, c, h * c, -h * s)
            }
            GaussianPath::Poly { exponent: n } => {
                let tn = t.powf(n);
                let d = n * t.powf(n - 1.0);
                zero(tn, 1.0 - tn, d, -d)
            }
            GaussianPath::Icfm { sigma } => Schedule {
                a: t,
                b: 1.0 - t,
                c: sigma,
                da: 1.0,
                db: -1.0,
                dc: 0.0,
            },
            GaussianPath::VpSde { beta_min, beta_max } => {
                let s = 1.0 - t;
                let beta = beta_min + s * (beta_max - beta_min);
                let big_b = beta_min * s + 0.5 * (beta_max - beta_min) * s * s;
                let alpha = (-0.5 * big_b).exp();
                // b² = 1 − α² = −expm1(−B), accurate where B is small (t near 1).
                let b = (-(-big_b).exp_m1()).sqrt();
                let da = 0.5 * beta * alpha;
                zero(alpha, b, da, -alpha * da / b)
            }
            GaussianPath::VeSde {
                sigma_min,
                sigma_max,
            } => {
                let r = (sigma_max / sigma_min).ln();
                let b = sigma_min * (r * (1.0 - t)).exp();
                zero(1.0, b, 0.0, -r * b)
            }
            GaussianPath::Sb { sigma } => {
                let r = (t * (1.0 - t)).sqrt();
                Schedule {
                    a: t,
                    b: 1.0 - t,
                    c: sigma * r,
                    da: 1.0,
                    db: -1.0,
                    dc: sigma * (1.0 - 2.0 * t) / (2.0 * r),
                }
            }
        }
    }
}

/// The path parameters the CLI offers, for [`GaussianPath::from_name`].
#[derive(Clone, Copy, Debug)]
pub struct PathFlags {
    /// ot: σ_min ∈ [0, 1) [0]; ve-sde: σ_min [0.01].
    pub sigma_min: Option<f64>,
    pub sigma: f64,
    pub exponent: f64,
    pub beta_min: f64,
    pub beta_max: f64,
    pub sigma_max: f64,
}

impl Default for PathFlags {
    fn default() -> Self {
        PathFlags {
            sigma_min: None,
            sigma: 0.1,
            exponent: 2.0,
            beta_min: 0.1,
            beta_max: 20.0,
            sigma_max: 10.0,
        }
    }
}

impl Prediction {
    pub fn name(self) -> &'static str {
        match self {
            Prediction::Velocity => "velocity",
            Prediction::Noise => "noise",
            Prediction::Data => "data",
            Prediction::Score => "score",
        }
    }

    /// Code of the prediction in path.wgsl (PREDICT_*).
    pub fn gpu_code(self) -> u32 {
        match self {
            Prediction::Velocity => codes::PREDICT_VELOCITY,
            Prediction::Noise => codes::PREDICT_NOISE,
            Prediction::Data => codes::PREDICT_DATA,
            Prediction::Score => codes::PREDICT_SCORE,
        }
    }

    /// (c_x, c_o) with v = c_x·x + c_o·o: the velocity at (x, t) of a network output o of
    /// this kind on `path` (c = 0). From x = a·x̂1 + b·ε̂, v = ȧ·x̂1 + ḃ·ε̂ and ŝ = −ε̂/b:
    /// noise: v = (ȧ/a)·x + (ḃ − ȧ·b/a)·ε̂; data: v = (ḃ/b)·x + (ȧ − ḃ·a/b)·x̂1;
    /// score: ε̂ = −b·ŝ. Where the divisor (a, or b for data) is below T_EDGE, the
    /// coefficients are taken at t clamped to [T_EDGE, 1 − T_EDGE].
    pub fn to_velocity(self, path: &GaussianPath, t: f64) -> (f64, f64) {
        if self == Prediction::Velocity {
            return (0.0, 1.0);
        }
        let mut s = path.schedule(t);
        let divisor = if self == Prediction::Data { s.b } else { s.a };
        if divisor < T_EDGE || !(s.da.is_finite() && s.db.is_finite()) {
            s = path.schedule(t.clamp(T_EDGE, 1.0 - T_EDGE));
        }
        match self {
            Prediction::Noise => (s.da / s.a, s.db - s.da * s.b / s.a),
            Prediction::Data => (s.db / s.b, s.da - s.db * s.a / s.b),
            Prediction::Score => (s.da / s.a, -(s.db - s.da * s.b / s.a) * s.b),
            Prediction::Velocity => unreachable!(),
        }
    }

    /// Refuse a prediction the path cannot convert (extra noise c ≠ 0).
    pub fn check(self, path: &GaussianPath) -> Result<()> {
        if self != Prediction::Velocity && !path.is_affine() {
            return Err(Error::invalid(format!(
                "--predict {} needs a path without extra noise (ot, vp, poly, vp-sde, ve-sde); {} adds σ·ε",
                self.name(),
                path.name()
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PATHS: [GaussianPath; 5] = [
        GaussianPath::Ot { sigma_min: 0.0 },
        GaussianPath::Vp,
        GaussianPath::Poly { exponent: 2.0 },
        GaussianPath::VpSde {
            beta_min: 0.1,
            beta_max: 20.0,
        },
        GaussianPath::VeSde {
            sigma_min: 0.01,
            sigma_max: 10.0,
        },
    ];

    #[test]
    fn schedule_derivatives_match_finite_differences() {
        for path in PATHS {
            for t in [0.05, 0.3, 0.7, 0.95] {
                let (s, h) = (path.schedule(t), 1e-6);
                let (p, m) = (path.schedule(t + h), path.schedule(t - h));
                let da = (p.a - m.a) / (2.0 * h);
                let db = (p.b - m.b) / (2.0 * h);
                assert!(
                    (da - s.da).abs() < 1e-5 * (1.0 + s.da.abs()),
                    "{path:?} t {t}: ȧ {da} vs {}",
                    s.da
                );
                assert!(
                    (db - s.db).abs() < 1e-5 * (1.0 + s.db.abs()),
                    "{path:?} t {t}: ḃ {db} vs {}",
                    s.db
                );
            }
        }
        let vp = GaussianPath::VpSde {
            beta_min: 0.1,
            beta_max: 20.0,
        }
        .schedule(1.0 - 1e-9);
        assert!((vp.a * vp.a + vp.b * vp.b - 1.0).abs() < 1e-12 && vp.b > 0.0);
        let ve = GaussianPath::VeSde {
            sigma_min: 0.01,
            sigma_max: 10.0,
        };
        assert!(
            (ve.schedule(0.0).b - 10.0).abs() < 1e-12 && (ve.schedule(1.0).b - 0.01).abs() < 1e-15
        );
    }

    /// On x = a·x1 + b·x0 every prediction of the true pair converts to the true velocity.
    #[test]
    fn every_prediction_converts_to_the_conditional_velocity() {
        let (x1, x0) = (0.7, -1.3);
        for path in PATHS {
            for t in [0.01, 0.2, 0.5, 0.8, 0.99] {
                let s = path.schedule(t);
                let x = s.a * x1 + s.b * x0;
                let u = s.da * x1 + s.db * x0;
                for (pred, o) in [
                    (Prediction::Velocity, u),
                    (Prediction::Noise, x0),
                    (Prediction::Data, x1),
                    (Prediction::Score, -x0 / s.b),
                ] {
                    let (cx, co) = pred.to_velocity(&path, t);
                    let v = cx * x + co * o;
                    assert!(
                        (v - u).abs() < 1e-9 * (1.0 + u.abs()),
                        "{path:?} {pred:?} t {t}: {v} vs {u}"
                    );
                }
            }
        }
    }
}
