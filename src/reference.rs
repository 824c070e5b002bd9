//! The same math as the WGSL kernels, in f64 on the CPU: the oracle of the kernel tests
//! and executable documentation of what each kernel computes.

use crate::model::{Activation, MlpConfig, Weights};
use crate::path::{GaussianPath, Prediction};
use crate::rng;

/// Inputs, pre-activations and outputs of every layer for a batch (row-major).
pub struct Activations {
    /// `h[0]` is the input, `h[l + 1]` = `act(z[l])`; the last h is v.
    pub h: Vec<Vec<f64>>,
    pub z: Vec<Vec<f64>>,
}

pub use crate::model::{input_row, input_row_class, time_feature};

pub fn forward(cfg: &MlpConfig, w: &Weights, input: &[f64]) -> Activations {
    let n = input.len() / cfg.in_features();
    let acts: Vec<Activation> = cfg.layers().iter().map(|l| l.2).collect();
    let mut h = vec![input.to_vec()];
    let mut z = Vec::new();
    for (lin, act) in w.layers.iter().zip(acts) {
        let (fi, fo) = (lin.in_features, lin.out_features);
        let x = h.last().unwrap();
        let mut zl = vec![0.0; n * fo];
        for m in 0..n {
            for o in 0..fo {
                let mut s = lin.b[o] as f64;
                for k in 0..fi {
                    s += x[m * fi + k] * lin.w[o * fi + k] as f64;
                }
                zl[m * fo + o] = s;
            }
        }
        h.push(zl.iter().map(|&v| act.apply(v)).collect());
        z.push(zl);
    }
    Activations { h, z }
}

/// v(x, t) for rows of inputs.
pub fn eval(cfg: &MlpConfig, w: &Weights, input: &[f64]) -> Vec<f64> {
    forward(cfg, w, input).h.pop().unwrap()
}

/// Gradients of a scalar loss L given dL/dv.
pub struct Gradients {
    /// dL/dW per layer, [out, in] row-major.
    pub w: Vec<Vec<f64>>,
    pub b: Vec<Vec<f64>>,
    /// dL/d input.
    pub input: Vec<f64>,
}

pub fn backward(cfg: &MlpConfig, w: &Weights, acts: &Activations, dv: &[f64]) -> Gradients {
    let layer_acts: Vec<Activation> = cfg.layers().iter().map(|l| l.2).collect();
    let n = acts.h[0].len() / cfg.in_features();
    let mut gw = vec![Vec::new(); w.layers.len()];
    let mut gb = vec![Vec::new(); w.layers.len()];
    // dz of the last layer: identity activation.
    let mut dz = dv.to_vec();
    for l in (0..w.layers.len()).rev() {
        let lin = &w.layers[l];
        let (fi, fo) = (lin.in_features, lin.out_features);
        let x = &acts.h[l];
        let mut dw = vec![0.0; fo * fi];
        let mut db = vec![0.0; fo];
        let mut dx = vec![0.0; n * fi];
        for m in 0..n {
            for o in 0..fo {
                let g = dz[m * fo + o];
                db[o] += g;
                for k in 0..fi {
                    dw[o * fi + k] += g * x[m * fi + k];
                    dx[m * fi + k] += g * lin.w[o * fi + k] as f64;
                }
            }
        }
        if l > 0 {
            let act = layer_acts[l - 1];
            for (d, &zv) in dx.iter_mut().zip(&acts.z[l - 1]) {
                *d *= act.grad(zv);
            }
        }
        gw[l] = dw;
        gb[l] = db;
        dz = dx;
    }
    Gradients {
        w: gw,
        b: gb,
        input: dz,
    }
}

/// What a CFM batch is drawn from (the buffers of `cfm_prepare`).
#[derive(Clone, Copy, Default)]
pub struct CfmDraw<'a> {
    pub data: &'a [f32],
    /// x0 pool; None: x0 ~ N(0, I).
    pub source: Option<&'a [f32]>,
    /// Source row i goes with data row i.
    pub paired: bool,
    /// One class per data row (class-conditional models).
    pub labels: Option<&'a [u32]>,
    pub label_dropout: f64,
    /// What the network is trained to output.
    pub predict: crate::path::Prediction,
}

/// The CFM batch that `cfm_prepare` draws at `step`: MLP inputs and targets.
pub fn cfm_batch(
    cfg: &MlpConfig,
    path: &GaussianPath,
    draw: &CfmDraw,
    seed: u32,
    step: u32,
    batch: usize,
) -> (Vec<f64>, Vec<f64>) {
    let d = cfg.dim;
    let data = draw.data;
    let n_data = (data.len() / d) as u32;
    let mut input = Vec::with_capacity(batch * cfg.in_features());
    let mut target = Vec::with_capacity(batch * d);
    for i in 0..batch as u32 {
        let idx = (rng::rng_bits(seed, rng::STREAM_INDEX, step, i, 0) % n_data) as usize;
        let t = rng::uniform_open(rng::rng_bits(seed, rng::STREAM_TIME, step, i, 0));
        let s = path.schedule(t);
        let mut x = Vec::with_capacity(d);
        for j in 0..d {
            let x1 = data[idx * d + j] as f64;
            let x0 = match draw.source {
                None => rng::normal_at(seed, rng::STREAM_NOISE, step, i, j as u32),
                Some(pool) => {
                    let n = (pool.len() / d) as u32;
                    let mut src = (rng::rng_bits(seed, rng::STREAM_INDEX, step, i, 1) % n) as usize;
                    if draw.paired {
                        src = idx;
                    }
                    pool[src * d + j] as f64
                }
            };
            let eps = if s.c != 0.0 || s.dc != 0.0 {
                rng::normal_at(seed, rng::STREAM_EXTRA, step, i, j as u32)
            } else {
                0.0
            };
            x.push(s.a * x1 + s.b * x0 + s.c * eps);
            target.push(match draw.predict {
                Prediction::Velocity => s.da * x1 + s.db * x0 + s.dc * eps,
                Prediction::Noise => x0,
                Prediction::Data => x1,
                // Trained as b·ŝ against −x0 (weight b², `output_weights`).
                Prediction::Score => -x0,
            });
        }
        let class = draw.labels.and_then(|l| {
            let u = rng::uniform_open(rng::rng_bits(seed, rng::STREAM_LABEL, step, i, 0));
            // The kernel compares in f32.
            let drop = (u as f32) < draw.label_dropout as f32;
            (!drop).then_some(l[idx] as usize)
        });
        input.extend(input_row_class(cfg, &x, t, class));
    }
    (input, target)
}

/// The factor on each row's output in its loss |w·o − target|² (cfm.wgsl's
/// output_weight): b(t) for score networks, else 1.
pub fn output_weights(
    path: &GaussianPath,
    predict: Prediction,
    seed: u32,
    step: u32,
    batch: usize,
) -> Vec<f64> {
    (0..batch as u32)
        .map(|i| match predict {
            Prediction::Score => {
                let t = rng::uniform_open(rng::rng_bits(seed, rng::STREAM_TIME, step, i, 0));
                path.schedule(t).b
            }
            _ => 1.0,
        })
        .collect()
}

/// L = mean over batch and dims of (w_i·o − target)² for rows of `d` values, and dL/do.
pub fn cfm_loss_weighted(o: &[f64], target: &[f64], w: &[f64], d: usize) -> (f64, Vec<f64>) {
    let n = o.len() as f64;
    let (mut loss, mut grad) = (0.0, Vec::with_capacity(o.len()));
    for (k, (a, b)) in o.iter().zip(target).enumerate() {
        let wi = w[k / d];
        let e = wi * a - b;
        loss += e * e / n;
        grad.push(2.0 * wi * e / n);
    }
    (loss, grad)
}

/// L = mean over batch and dims of (v − u)², and dL/dv.
pub fn cfm_loss(v: &[f64], target: &[f64]) -> (f64, Vec<f64>) {
    let n = v.len() as f64;
    let loss = v
        .iter()
        .zip(target)
        .map(|(a, b)| (a - b).powi(2))
        .sum::<f64>()
        / n;
    let grad = v
        .iter()
        .zip(target)
        .map(|(a, b)| 2.0 * (a - b) / n)
        .collect();
    (loss, grad)
}

/// AdamW hyper-parameters of one step.
#[derive(Clone, Copy, Debug)]
pub struct AdamStep {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    /// 1-based step.
    pub step: u32,
    pub clip_norm: f64,
}

/// One AdamW update with global-norm clipping, as `adam_update`.
pub fn adam_step(p: &mut [f64], g: &[f64], m: &mut [f64], v: &mut [f64], h: &AdamStep) {
    let norm = g.iter().map(|x| x * x).sum::<f64>().sqrt();
    let scale = if h.clip_norm > 0.0 && norm > h.clip_norm {
        h.clip_norm / (norm + 1e-6)
    } else {
        1.0
    };
    let bc1 = 1.0 - h.beta1.powi(h.step as i32);
    let bc2 = 1.0 - h.beta2.powi(h.step as i32);
    for e in 0..p.len() {
        let gi = g[e] * scale;
        let mut w = p[e] * (1.0 - h.lr * h.weight_decay);
        m[e] = h.beta1 * m[e] + (1.0 - h.beta1) * gi;
        v[e] = h.beta2 * v[e] + (1.0 - h.beta2) * gi * gi;
        w -= h.lr * (m[e] / bc1) / ((v[e] / bc2).sqrt() + h.eps);
        p[e] = w;
    }
}

/// Base noise of sample `row` (as `base_noise` in ode.wgsl).
pub fn base_noise(dim: usize, seed: u32, row: u32) -> Vec<f64> {
    (0..dim as u32)
        .map(|j| rng::normal_at(seed, rng::STREAM_BASE, row, 0, j))
        .collect()
}

/// Fixed-step Euler from t = 0 to 1 for rows of x (row-major, in place).
pub fn euler(cfg: &MlpConfig, w: &Weights, x: &mut [f64], steps: usize) {
    let d = cfg.dim;
    let h = 1.0 / steps as f64;
    for s in 0..steps {
        let t = s as f64 * h;
        let input: Vec<f64> = x.chunks(d).flat_map(|row| input_row(cfg, row, t)).collect();
        let v = eval(cfg, w, &input);
        for (xi, vi) in x.iter_mut().zip(&v) {
            *xi += h * vi;
        }
    }
}

/// A vector field v(x, t) for one row.
pub type Field<'a> = dyn Fn(&[f64], f64) -> Vec<f64> + 'a;

/// The MLP as a per-row field.
pub fn mlp_field<'a>(cfg: &'a MlpConfig, w: &'a Weights) -> impl Fn(&[f64], f64) -> Vec<f64> + 'a {
    move |x, t| eval(cfg, w, &input_row(cfg, x, t))
}

/// x + h·Σ_q a_q·k_q: the point where an explicit RK stage evaluates the field.
fn stage_point(x: &[f64], h: f64, a: &[f64], k: &[Vec<f64>]) -> Vec<f64> {
    (0..x.len())
        .map(|j| x[j] + h * a.iter().zip(k).map(|(a, kq)| a * kq[j]).sum::<f64>())
        .collect()
}

/// Fixed-step explicit Runge–Kutta on the grid `times`, every row of x (row-major).
pub fn rk_solve(f: &Field, x: &mut [f64], dim: usize, times: &[f64], tab: &crate::ode::Tableau) {
    for row in x.chunks_mut(dim) {
        for w in times.windows(2) {
            let (t, h) = (w[0], w[1] - w[0]);
            let mut k: Vec<Vec<f64>> = Vec::new();
            for s in 0..tab.stages() {
                k.push(f(&stage_point(row, h, &tab.a[s], &k), t + tab.c[s] * h));
            }
            for j in 0..dim {
                row[j] += h * tab.b.iter().zip(&k).map(|(b, kq)| b * kq[j]).sum::<f64>();
            }
        }
    }
}

/// Dormand–Prince 5(4) per row with the controller of `adaptive_final` in ode.wgsl.
/// Returns (accepted, rejected) steps per row; None if a row fails (underflow, max steps).
pub fn dopri5_solve(
    f: &Field,
    x: &mut [f64],
    dim: usize,
    t0: f64,
    t1: f64,
    tol: &crate::ode::Tolerances,
) -> Option<Vec<(u32, u32)>> {
    let tab = crate::ode::Tableau::dopri5();
    let e = tab.e.clone().unwrap();
    let mut counts = Vec::new();
    for row in x.chunks_mut(dim) {
        let (mut t, mut acc_n, mut rej_n) = (t0, 0u32, 0u32);
        let mut h = tol
            .h0
            .unwrap_or(0.05 * (t1 - t0).abs())
            .min((t1 - t0).abs())
            * (t1 - t0).signum();
        let mut k0 = f(row, t);
        loop {
            if (acc_n + rej_n) as usize >= tol.max_steps {
                return None;
            }
            let mut k = vec![k0.clone()];
            for s in 1..7 {
                k.push(f(&stage_point(row, h, &tab.a[s], &k), t + tab.c[s] * h));
            }
            let mut err_sq = 0.0;
            let mut x_new = vec![0.0; dim];
            for j in 0..dim {
                x_new[j] = row[j] + h * tab.b.iter().zip(&k).map(|(b, kq)| b * kq[j]).sum::<f64>();
                let err = h * e.iter().zip(&k).map(|(e, kq)| e * kq[j]).sum::<f64>();
                let sc = tol.atol + tol.rtol * row[j].abs().max(x_new[j].abs());
                err_sq += (err / sc).powi(2);
            }
            let err = (err_sq / dim as f64).sqrt();
            let fac = tol.safety * err.max(1e-10).powf(-0.2);
            let mut h_new;
            if err <= 1.0 {
                row.copy_from_slice(&x_new);
                t += h;
                k0 = k[6].clone();
                acc_n += 1;
                h_new = h * fac.clamp(tol.fac_min, tol.fac_max);
            } else {
                rej_n += 1;
                h_new = h * fac.clamp(tol.fac_min, 1.0);
            }
            let remaining = t1 - t;
            if remaining.abs() <= 1e-6 * t1.abs().max(1.0) {
                break;
            }
            if h_new.abs() > remaining.abs() {
                h_new = remaining;
            }
            if h_new.abs() < tol.h_min {
                return None;
            }
            h = h_new;
        }
        counts.push((acc_n, rej_n));
    }
    Some(counts)
}

/// J·u, the derivative of v(x, t) along u (time not perturbed), by forward mode in f64.
pub fn jvp(cfg: &MlpConfig, w: &Weights, x: &[f64], t: f64, u: &[f64]) -> Vec<f64> {
    let input = input_row(cfg, x, t);
    let acts = forward(cfg, w, &input);
    let layer_acts: Vec<Activation> = cfg.layers().iter().map(|l| l.2).collect();
    let mut tan: Vec<f64> = u
        .iter()
        .copied()
        .chain(std::iter::repeat_n(0.0, cfg.in_features() - cfg.dim))
        .collect();
    for (l, lin) in w.layers.iter().enumerate() {
        let (fi, fo) = (lin.in_features, lin.out_features);
        tan = (0..fo)
            .map(|o| {
                let zt: f64 = (0..fi).map(|k| tan[k] * lin.w[o * fi + k] as f64).sum();
                zt * layer_acts[l].grad(acts.z[l][o])
            })
            .collect();
    }
    tan
}

/// Tr(∂v/∂x) at (x, t), exactly: Σ_j (J·e_j)_j.
pub fn trace_exact(cfg: &MlpConfig, w: &Weights, x: &[f64], t: f64) -> f64 {
    (0..cfg.dim)
        .map(|j| {
            let mut e = vec![0.0; cfg.dim];
            e[j] = 1.0;
            jvp(cfg, w, x, t, &e)[j]
        })
        .sum()
}

/// log p(x) of one row by RK4 on the augmented ODE [x, ℓ], dℓ/dt = Tr(∂v/∂x), from t = 1 to
/// 0 with `steps` uniform steps: log p(x) = log N(z) + ℓ(0). Returns (log p, z).
pub fn log_prob_rk4(cfg: &MlpConfig, w: &Weights, x: &[f64], steps: usize) -> (f64, Vec<f64>) {
    let d = cfg.dim;
    let field = |s: &[f64], t: f64| -> Vec<f64> {
        let mut v = eval(cfg, w, &input_row(cfg, &s[..d], t));
        v.push(trace_exact(cfg, w, &s[..d], t));
        v
    };
    let mut s: Vec<f64> = x.iter().copied().chain([0.0]).collect();
    let times = crate::ode::TimeGrid::Uniform.times(1.0, 0.0, steps);
    rk_solve(&field, &mut s, d + 1, &times, &crate::ode::Tableau::rk4());
    let z = s[..d].to_vec();
    let logn = -0.5 * d as f64 * (2.0 * std::f64::consts::PI).ln()
        - 0.5 * z.iter().map(|v| v * v).sum::<f64>();
    (logn + s[d], z)
}

/// Tangent directions of one row for a divergence estimate, as trace.wgsl draws them, and
/// the weight of each direction's term (1 for exact, 1/M for Hutchinson).
#[derive(Clone, Debug)]
pub struct Probes {
    pub u: Vec<Vec<f64>>,
    pub scale: f64,
}

impl Probes {
    /// The directions `probe_init` writes for global row `row`.
    pub fn draw(trace: crate::ode::Trace, dim: usize, row: u32) -> Probes {
        use crate::ode::Trace;
        match trace {
            Trace::Exact => Probes {
                u: (0..dim)
                    .map(|m| (0..dim).map(|j| (m == j) as u8 as f64).collect())
                    .collect(),
                scale: 1.0,
            },
            Trace::Hutchinson {
                probes,
                rademacher,
                seed,
            } => {
                let seed = seed as u32;
                let value = |m: u32, j: u32| {
                    if rademacher {
                        let bits = rng::rng_bits(seed, rng::STREAM_PROBE, row, m, j);
                        if bits & 0x8000_0000 != 0 {
                            1.0
                        } else {
                            -1.0
                        }
                    } else {
                        rng::normal_at(seed, rng::STREAM_PROBE, row, m, j)
                    }
                };
                Probes {
                    u: (0..probes as u32)
                        .map(|m| (0..dim as u32).map(|j| value(m, j)).collect())
                        .collect(),
                    scale: 1.0 / probes as f64,
                }
            }
        }
    }
}

/// One row's field and the integrands of a likelihood solve: v, the divergence estimate
/// Σ_m scale·u_mᵀJu_m, the kinetic energy ‖v‖², the Frobenius estimate Σ_m scale·‖Ju_m‖².
pub struct FieldEval {
    pub v: Vec<f64>,
    pub div: f64,
    pub kinetic: f64,
    pub frobenius: f64,
}

/// Forward pass of one row with tangents: (activations, tangent Ż and Ḣ per direction).
type TangentPass = (Activations, Vec<Vec<Vec<f64>>>, Vec<Vec<Vec<f64>>>);

fn forward_tangents(cfg: &MlpConfig, w: &Weights, x: &[f64], t: f64, pr: &Probes) -> TangentPass {
    let acts = forward(cfg, w, &input_row(cfg, x, t));
    let layer_acts: Vec<Activation> = cfg.layers().iter().map(|l| l.2).collect();
    let mut zt = Vec::new(); // [m][layer] Ż
    let mut ht = Vec::new(); // [m][layer + 1] Ḣ (index 0: the input tangent)
    for u in &pr.u {
        let mut hs = vec![u
            .iter()
            .copied()
            .chain(std::iter::repeat_n(0.0, cfg.in_features() - cfg.dim))
            .collect::<Vec<f64>>()];
        let mut zs = Vec::new();
        for (l, lin) in w.layers.iter().enumerate() {
            let (fi, fo) = (lin.in_features, lin.out_features);
            let prev = hs.last().unwrap();
            let z: Vec<f64> = (0..fo)
                .map(|o| (0..fi).map(|k| prev[k] * lin.w[o * fi + k] as f64).sum())
                .collect();
            let h = z
                .iter()
                .zip(&acts.z[l])
                .map(|(zt, zp)| zt * layer_acts[l].grad(*zp))
                .collect();
            zs.push(z);
            hs.push(h);
        }
        zt.push(zs);
        ht.push(hs);
    }
    (acts, zt, ht)
}

/// v and the likelihood integrands of one row at (x, t).
pub fn field_eval(cfg: &MlpConfig, w: &Weights, x: &[f64], t: f64, pr: &Probes) -> FieldEval {
    let (acts, _, ht) = forward_tangents(cfg, w, x, t, pr);
    let v = acts.h.last().unwrap().clone();
    let (mut div, mut frob) = (0.0, 0.0);
    for (u, h) in pr.u.iter().zip(&ht) {
        let ju = h.last().unwrap();
        div += pr.scale * u.iter().zip(ju).map(|(a, b)| a * b).sum::<f64>();
        frob += pr.scale * ju.iter().map(|a| a * a).sum::<f64>();
    }
    FieldEval {
        kinetic: v.iter().map(|a| a * a).sum(),
        v,
        div,
        frobenius: frob,
    }
}

/// The weights of S = aᵀv + a_trace·div + a_kinetic·‖v‖² + a_frobenius·frobenius, the
/// scalar whose gradient the adjoint of a likelihood solve needs at every stage.
#[derive(Clone, Copy, Debug)]
pub struct FieldCotangent<'a> {
    pub a: &'a [f64],
    pub a_trace: f64,
    pub a_kinetic: f64,
    pub a_frobenius: f64,
}

impl FieldCotangent<'_> {
    pub fn value(&self, e: &FieldEval) -> f64 {
        self.a.iter().zip(&e.v).map(|(a, v)| a * v).sum::<f64>()
            + self.a_trace * e.div
            + self.a_kinetic * e.kinetic
            + self.a_frobenius * e.frobenius
    }
}

/// dS/dx and dS/dθ of one row by reverse mode through the tangent pass (the math of
/// trace_cotangent + linear_jvp and the backward kernels): returns the gradients,
/// with `input` the gradient of the whole MLP input row.
pub fn field_vjp(
    cfg: &MlpConfig,
    w: &Weights,
    x: &[f64],
    t: f64,
    pr: &Probes,
    cot: &FieldCotangent,
) -> Gradients {
    let (acts, zt, ht) = forward_tangents(cfg, w, x, t, pr);
    let layer_acts: Vec<Activation> = cfg.layers().iter().map(|l| l.2).collect();
    let n_l = w.layers.len();
    let v = acts.h.last().unwrap();
    let mut dh: Vec<f64> = (0..cfg.dim)
        .map(|j| cot.a[j] + 2.0 * cot.a_kinetic * v[j])
        .collect();
    let mut dht: Vec<Vec<f64>> =
        pr.u.iter()
            .zip(&ht)
            .map(|(u, h)| {
                (0..cfg.dim)
                    .map(|j| pr.scale * (cot.a_trace * u[j] + 2.0 * cot.a_frobenius * h[n_l][j]))
                    .collect()
            })
            .collect();
    let mut gw = vec![Vec::new(); n_l];
    let mut gb = vec![Vec::new(); n_l];
    for l in (0..n_l).rev() {
        let lin = &w.layers[l];
        let (fi, fo) = (lin.in_features, lin.out_features);
        let act = layer_acts[l];
        let zl = &acts.z[l];
        let dz: Vec<f64> = (0..fo)
            .map(|o| {
                let second: f64 = (0..pr.u.len()).map(|m| zt[m][l][o] * dht[m][o]).sum();
                act.grad(zl[o]) * dh[o] + act.grad2(zl[o]) * second
            })
            .collect();
        let dzt: Vec<Vec<f64>> = dht
            .iter()
            .map(|d| (0..fo).map(|o| act.grad(zl[o]) * d[o]).collect())
            .collect();
        let mut dw = vec![0.0; fo * fi];
        for o in 0..fo {
            for k in 0..fi {
                dw[o * fi + k] = dz[o] * acts.h[l][k]
                    + (0..pr.u.len())
                        .map(|m| dzt[m][o] * ht[m][l][k])
                        .sum::<f64>();
            }
        }
        let back = |d: &[f64]| -> Vec<f64> {
            (0..fi)
                .map(|k| (0..fo).map(|o| d[o] * lin.w[o * fi + k] as f64).sum())
                .collect()
        };
        dh = back(&dz);
        dht = dzt.iter().map(|d| back(d)).collect();
        gw[l] = dw;
        gb[l] = dz;
    }
    Gradients {
        w: gw,
        b: gb,
        input: dh,
    }
}

/// What a maximum-likelihood objective integrates and weighs.
#[derive(Clone, Debug)]
pub struct MleSpec {
    pub tableau: crate::ode::Tableau,
    /// Uniform steps from t = 1 to 0.
    pub steps: usize,
    /// λ of ∫‖v‖² dt.
    pub kinetic: f64,
    /// λ of ∫ frobenius dt.
    pub frobenius: f64,
}

/// The discretized objective of one batch: the mean over rows of
/// −log N(z) − ℓ(0) + λ_K·∫‖v‖² + λ_J·∫frobenius, with the augmented state [x, ℓ, E, F]
/// solved from t = 1 to 0 by the spec's fixed-step tableau. Returns (objective, mean NLL).
pub fn mle_objective(
    cfg: &MlpConfig,
    w: &Weights,
    rows: &[f64],
    probes: &[Probes],
    spec: &MleSpec,
) -> (f64, f64) {
    let d = cfg.dim;
    let b = rows.len() / d;
    let times = crate::ode::TimeGrid::Uniform.times(1.0, 0.0, spec.steps);
    let log_norm = 0.5 * d as f64 * (2.0 * std::f64::consts::PI).ln();
    let (mut obj, mut nll) = (0.0, 0.0);
    for (x, pr) in rows.chunks(d).zip(probes) {
        let field = |s: &[f64], t: f64| -> Vec<f64> {
            let e = field_eval(cfg, w, &s[..d], t, pr);
            let mut out = e.v;
            out.extend([e.div, e.kinetic, e.frobenius]);
            out
        };
        let mut s: Vec<f64> = x.iter().copied().chain([0.0; 3]).collect();
        rk_solve(&field, &mut s, d + 3, &times, &spec.tableau);
        let row_nll = 0.5 * s[..d].iter().map(|v| v * v).sum::<f64>() + log_norm - s[d];
        nll += row_nll / b as f64;
        obj += (row_nll - spec.kinetic * s[d + 1] - spec.frobenius * s[d + 2]) / b as f64;
    }
    (obj, nll)
}
