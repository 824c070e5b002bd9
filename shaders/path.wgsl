// path.wgsl — the Gaussian conditional paths and the conversion of a network's output to
// a velocity, shared by the families that need them (cfm.wgsl trains on a path,
// ode.wgsl integrates a model of any prediction kind). Mirrors src/path.rs.
//   path_coefs:  a, b, c and their time derivatives at t.
//   to_velocity: (c_x, c_o) with v = c_x·x + c_o·o for an output o of kind `predict`.

struct Coefs {
    a: f32,
    b: f32,
    c: f32,
    da: f32,
    db: f32,
    dc: f32,
}

const HALF_PI: f32 = 1.5707963267948966;

// 1 − exp(−x) without cancellation for small x ≥ 0.
fn one_minus_exp_neg(x: f32) -> f32 {
    if (x < 1e-3) {
        return x * (1.0 - x * (0.5 - x / 6.0));
    }
    return 1.0 - exp(-x);
}

// Path coefficients at t (GaussianPath::schedule in src/path.rs); q0, q1: gpu_params.
fn path_coefs(path: u32, q0: f32, q1: f32, t: f32) -> Coefs {
    switch path {
        case PATH_VP: {
            let c = cos(HALF_PI * t);
            let s = sin(HALF_PI * t);
            return Coefs(s, c, 0.0, HALF_PI * c, -HALF_PI * s, 0.0);
        }
        case PATH_POLY: {
            let tn = pow(t, q0);
            let d = q0 * pow(t, q0 - 1.0);
            return Coefs(tn, 1.0 - tn, 0.0, d, -d, 0.0);
        }
        case PATH_ICFM: {
            return Coefs(t, 1.0 - t, q0, 1.0, -1.0, 0.0);
        }
        case PATH_SB: {
            let r = sqrt(t * (1.0 - t));
            return Coefs(t, 1.0 - t, q0 * r, 1.0, -1.0, q0 * (1.0 - 2.0 * t) / (2.0 * r));
        }
        case PATH_VP_SDE: {
            let s = 1.0 - t;
            let beta = q0 + s * (q1 - q0);
            let big_b = q0 * s + 0.5 * (q1 - q0) * s * s;
            let alpha = exp(-0.5 * big_b);
            let b = sqrt(one_minus_exp_neg(big_b));
            let da = 0.5 * beta * alpha;
            return Coefs(alpha, b, 0.0, da, -alpha * da / b, 0.0);
        }
        case PATH_VE_SDE: {
            let r = log(q1 / q0);
            let b = q0 * exp(r * (1.0 - t));
            return Coefs(1.0, b, 0.0, 0.0, -r * b, 0.0);
        }
        default: { // PATH_OT
            let k = 1.0 - q0;
            return Coefs(t, 1.0 - k * t, 0.0, 1.0, -k, 0.0);
        }
    }
}

// Prediction::to_velocity: noise v = (ȧ/a)·x + (ḃ − ȧ·b/a)·ε̂, data v = (ḃ/b)·x +
// (ȧ − ḃ·a/b)·x̂1, score ε̂ = −b·ŝ; where the divisor (a; b for data) is below T_EDGE or a
// derivative is not finite, the coefficients are taken at t clamped to [T_EDGE, 1 − T_EDGE].
fn to_velocity(predict: u32, path: u32, q0: f32, q1: f32, t: f32) -> vec2<f32> {
    if (predict == PREDICT_VELOCITY) {
        return vec2<f32>(0.0, 1.0);
    }
    var s = path_coefs(path, q0, q1, t);
    let divisor = select(s.a, s.b, predict == PREDICT_DATA);
    // ḃ is infinite at the data end of the VP SDE (|x| > 1e30 also catches inf).
    if (divisor < T_EDGE || !(abs(s.da) <= 1e30 && abs(s.db) <= 1e30)) {
        s = path_coefs(path, q0, q1, clamp(t, T_EDGE, 1.0 - T_EDGE));
    }
    let noise = vec2<f32>(s.da / s.a, s.db - s.da * s.b / s.a);
    switch predict {
        case PREDICT_DATA: {
            return vec2<f32>(s.db / s.b, s.da - s.db * s.a / s.b);
        }
        case PREDICT_SCORE: {
            return vec2<f32>(noise.x, -noise.y * s.b);
        }
        default: {
            return noise;
        }
    }
}
