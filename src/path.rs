//! Conditional probability paths of flow matching, in one form:
//!   x_t = a_t·x1 + b_t·x0 + c_t·ε,   target u_t = ȧ_t·x1 + ḃ_t·x0 + ċ_t·ε,
//! with x1 from the data, x0 from the source (N(0, I) by default) and ε ~ N(0, I) extra
//! noise (only the paths with c ≠ 0 use it). The GPU side is `schedule()` in
//! shaders/cfm.wgsl; adding a path means one variant here and one branch there.

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
}

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
    pub const NAMES: &'static str = "ot, vp, poly, icfm, sb";

    /// From the CLI: name, σ_min (ot), σ (icfm, sb), exponent (poly).
    pub fn from_name(name: &str, sigma_min: f64, sigma: f64, exponent: f64) -> Result<Self> {
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
            _ => Err(Error::invalid(format!(
                "unknown path '{name}'; valid paths: {}",
                Self::NAMES
            ))),
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            GaussianPath::Ot { .. } => "ot",
            GaussianPath::Vp => "vp",
            GaussianPath::Poly { .. } => "poly",
            GaussianPath::Icfm { .. } => "icfm",
            GaussianPath::Sb { .. } => "sb",
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
        }
    }

    /// The path's one parameter as the kernel sees it (σ_min, exponent or σ).
    pub fn gpu_param(&self) -> f64 {
        match self {
            GaussianPath::Ot { sigma_min } => *sigma_min,
            GaussianPath::Vp => 0.0,
            GaussianPath::Poly { exponent } => *exponent,
            GaussianPath::Icfm { sigma } | GaussianPath::Sb { sigma } => *sigma,
        }
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
