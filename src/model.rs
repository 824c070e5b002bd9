//! The vector field v_θ(x, t): an MLP description, its parameter layout on the GPU,
//! initialization, and the checkpoint files (`model.safetensors` + `config.json`).

pub use crate::data::Standardization;
use crate::error::{Error, Result};
use crate::kernels::codes;
use crate::path::GaussianPath;
use rand::Rng;
use std::collections::HashMap;
use std::path::Path;

/// Version of the checkpoint format written in config.json.
pub const FORMAT_VERSION: u32 = 1;

#[derive(
    Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum Activation {
    #[value(skip)]
    Identity,
    Relu,
    Silu,
    Tanh,
    Softplus,
    Selu,
}

impl Activation {
    pub const NAMES: &'static str = "silu, tanh, softplus, selu, relu";

    pub fn from_name(s: &str) -> Result<Self> {
        Ok(match s {
            "silu" => Activation::Silu,
            "tanh" => Activation::Tanh,
            "softplus" => Activation::Softplus,
            "selu" => Activation::Selu,
            "relu" => Activation::Relu,
            _ => {
                return Err(Error::invalid(format!(
                    "unknown activation '{s}'; valid activations: {}",
                    Self::NAMES
                )))
            }
        })
    }

    /// Whether act'(z) is a function of act(z) (`grad_from_output` in common.wgsl): the
    /// fused training step then keeps only the layer outputs for the backward pass.
    pub fn grad_from_output(self) -> bool {
        matches!(
            self,
            Activation::Identity | Activation::Relu | Activation::Tanh | Activation::Selu
        )
    }

    /// Code of the activation in common.wgsl (ACT_*).
    pub fn gpu_code(self) -> u32 {
        match self {
            Activation::Identity => codes::ACT_IDENTITY,
            Activation::Relu => codes::ACT_RELU,
            Activation::Silu => codes::ACT_SILU,
            Activation::Tanh => codes::ACT_TANH,
            Activation::Softplus => codes::ACT_SOFTPLUS,
            Activation::Selu => codes::ACT_SELU,
        }
    }

    pub fn apply(self, z: f64) -> f64 {
        const L: f64 = 1.0507009873554805;
        const A: f64 = 1.6732632423543772;
        match self {
            Activation::Identity => z,
            Activation::Relu => z.max(0.0),
            Activation::Silu => z / (1.0 + (-z).exp()),
            Activation::Tanh => z.tanh(),
            Activation::Softplus => {
                if z > 20.0 {
                    z
                } else {
                    z.max(0.0) + (-z.abs()).exp().ln_1p()
                }
            }
            Activation::Selu => {
                if z > 0.0 {
                    L * z
                } else {
                    L * A * z.exp_m1()
                }
            }
        }
    }

    pub fn grad(self, z: f64) -> f64 {
        const L: f64 = 1.0507009873554805;
        const A: f64 = 1.6732632423543772;
        let sig = |z: f64| 1.0 / (1.0 + (-z).exp());
        match self {
            Activation::Identity => 1.0,
            Activation::Relu => {
                if z > 0.0 {
                    1.0
                } else {
                    0.0
                }
            }
            Activation::Silu => {
                let s = sig(z);
                s * (1.0 + z * (1.0 - s))
            }
            Activation::Tanh => 1.0 - z.tanh().powi(2),
            Activation::Softplus => {
                if z > 20.0 {
                    1.0
                } else {
                    sig(z)
                }
            }
            Activation::Selu => {
                if z > 0.0 {
                    L
                } else {
                    L * A * z.exp()
                }
            }
        }
    }

    /// d² act / dz²: the adjoint of a divergence needs it (tangents carry act'(z)).
    pub fn grad2(self, z: f64) -> f64 {
        const L: f64 = 1.0507009873554805;
        const A: f64 = 1.6732632423543772;
        let sig = |z: f64| 1.0 / (1.0 + (-z).exp());
        match self {
            Activation::Identity | Activation::Relu => 0.0,
            Activation::Silu => {
                let s = sig(z);
                s * (1.0 - s) * (2.0 + z * (1.0 - 2.0 * s))
            }
            Activation::Tanh => {
                let t = z.tanh();
                -2.0 * t * (1.0 - t * t)
            }
            Activation::Softplus => {
                if z > 20.0 {
                    0.0
                } else {
                    let s = sig(z);
                    s * (1.0 - s)
                }
            }
            Activation::Selu => {
                if z > 0.0 {
                    0.0
                } else {
                    L * A * z.exp()
                }
            }
        }
    }
}

/// Shape of the MLP: input [x (dim), t, Fourier features of t] → dim.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct MlpConfig {
    /// Data dimension (input and output).
    pub dim: usize,
    /// Hidden width.
    pub width: usize,
    /// Number of hidden layers (the MLP has depth + 1 linear layers).
    pub depth: usize,
    pub activation: Activation,
    /// Number of Fourier frequencies of t added to the input (0: t only).
    pub time_features: usize,
    /// Class-conditional models: number of classes, given to the MLP as a one-hot after
    /// the time features (all zeros: unconditional). 0: unconditional model.
    #[serde(default)]
    pub classes: usize,
}

impl MlpConfig {
    pub fn validate(&self) -> Result<()> {
        let bad = |what: &str, v: usize, lo: usize, hi: usize| {
            Err(Error::invalid(format!(
                "{what} must be between {lo} and {hi}, got {v}"
            )))
        };
        if self.dim == 0 || self.dim > 4096 {
            return bad("data dimension", self.dim, 1, 4096);
        }
        if self.width == 0 || self.width > 4096 {
            return bad("--width", self.width, 1, 4096);
        }
        if self.depth == 0 || self.depth > 64 {
            return bad("--depth", self.depth, 1, 64);
        }
        if self.time_features > 16 {
            return bad("--time-features", self.time_features, 0, 16);
        }
        if self.classes > 1024 {
            return bad("the number of classes", self.classes, 0, 1024);
        }
        Ok(())
    }

    /// Time input columns: t, then sin/cos per frequency.
    pub fn time_cols(&self) -> usize {
        1 + 2 * self.time_features
    }

    pub fn in_features(&self) -> usize {
        self.dim + self.time_cols() + self.classes
    }

    /// (in, out, activation) of each linear layer.
    pub fn layers(&self) -> Vec<(usize, usize, Activation)> {
        let mut v = vec![(self.in_features(), self.width, self.activation)];
        for _ in 1..self.depth {
            v.push((self.width, self.width, self.activation));
        }
        v.push((self.width, self.dim, Activation::Identity));
        v
    }

    /// Matmul FLOPs of one forward pass per sample (2·in·out per layer).
    pub fn flops_per_sample(&self) -> u64 {
        self.layers()
            .iter()
            .map(|&(i, o, _)| 2 * (i * o) as u64)
            .sum()
    }
}

pub fn pad4(n: usize) -> usize {
    n.div_ceil(4) * 4
}

/// Where one layer lives in the flat parameter buffer (floats). W is [out, in_pad]
/// row-major with zero padding columns, b follows, padded to out_pad.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LayerLayout {
    pub in_features: usize,
    pub in_pad: usize,
    pub out_features: usize,
    pub out_pad: usize,
    pub w_off: usize,
    pub b_off: usize,
    pub size: usize,
    pub activation: Activation,
}

#[derive(Clone, Debug, PartialEq)]
pub struct ParamLayout {
    pub layers: Vec<LayerLayout>,
    pub total: usize,
}

impl ParamLayout {
    pub fn new(cfg: &MlpConfig) -> Self {
        let mut off = 0;
        let layers = cfg
            .layers()
            .into_iter()
            .map(|(i, o, activation)| {
                let (in_pad, out_pad) = (pad4(i), pad4(o));
                let l = LayerLayout {
                    in_features: i,
                    in_pad,
                    out_features: o,
                    out_pad,
                    w_off: off,
                    b_off: off + o * in_pad,
                    size: o * in_pad + out_pad,
                    activation,
                };
                off += l.size;
                l
            })
            .collect();
        ParamLayout { layers, total: off }
    }
}

/// One linear layer on the host, PyTorch layout: w is [out, in] row-major.
#[derive(Clone, Debug, PartialEq)]
pub struct Linear {
    pub in_features: usize,
    pub out_features: usize,
    pub w: Vec<f32>,
    pub b: Vec<f32>,
}

/// All weights of an MLP on the host.
#[derive(Clone, Debug, PartialEq)]
pub struct Weights {
    pub layers: Vec<Linear>,
}

impl Weights {
    /// PyTorch's nn.Linear default: W and b uniform in ±1/√in.
    pub fn init<R: Rng + ?Sized>(cfg: &MlpConfig, rng: &mut R) -> Self {
        let layers = cfg
            .layers()
            .into_iter()
            .map(|(i, o, _)| {
                let bound = 1.0 / (i as f32).sqrt();
                let mut u = || rng.random_range(-bound..bound);
                Linear {
                    in_features: i,
                    out_features: o,
                    w: (0..i * o).map(|_| u()).collect(),
                    b: (0..o).map(|_| u()).collect(),
                }
            })
            .collect();
        Weights { layers }
    }

    /// Into the padded flat GPU layout.
    pub fn pack(&self, layout: &ParamLayout) -> Vec<f32> {
        let mut flat = vec![0.0f32; layout.total];
        for (l, lin) in layout.layers.iter().zip(&self.layers) {
            for o in 0..l.out_features {
                let src = &lin.w[o * l.in_features..(o + 1) * l.in_features];
                flat[l.w_off + o * l.in_pad..][..l.in_features].copy_from_slice(src);
            }
            flat[l.b_off..l.b_off + l.out_features].copy_from_slice(&lin.b);
        }
        flat
    }

    /// From the padded flat GPU layout.
    pub fn unpack(flat: &[f32], layout: &ParamLayout) -> Self {
        let layers = layout
            .layers
            .iter()
            .map(|l| {
                let mut w = Vec::with_capacity(l.in_features * l.out_features);
                for o in 0..l.out_features {
                    w.extend_from_slice(&flat[l.w_off + o * l.in_pad..][..l.in_features]);
                }
                Linear {
                    in_features: l.in_features,
                    out_features: l.out_features,
                    w,
                    b: flat[l.b_off..l.b_off + l.out_features].to_vec(),
                }
            })
            .collect();
        Weights { layers }
    }

    /// `layers.{i}.weight` / `layers.{i}.bias` as safetensors bytes (F32, PyTorch layout).
    pub fn to_safetensors(&self) -> Result<Vec<u8>> {
        use safetensors::tensor::{Dtype, TensorView};
        let mut views = Vec::new();
        for (i, l) in self.layers.iter().enumerate() {
            views.push((
                format!("layers.{i}.weight"),
                TensorView::new(
                    Dtype::F32,
                    vec![l.out_features, l.in_features],
                    bytemuck::cast_slice(&l.w),
                )
                .map_err(|e| Error::invalid(e.to_string()))?,
            ));
            views.push((
                format!("layers.{i}.bias"),
                TensorView::new(Dtype::F32, vec![l.out_features], bytemuck::cast_slice(&l.b))
                    .map_err(|e| Error::invalid(e.to_string()))?,
            ));
        }
        let mut meta = HashMap::new();
        meta.insert("format".to_string(), "flowgpu".to_string());
        safetensors::serialize(views, Some(meta)).map_err(|e| Error::invalid(e.to_string()))
    }

    /// Parse safetensors bytes, checking every tensor's name, dtype and shape against `cfg`.
    pub fn from_safetensors(bytes: &[u8], cfg: &MlpConfig, path: &Path) -> Result<Self> {
        let st = safetensors::SafeTensors::deserialize(bytes)
            .map_err(|e| Error::format(path, format!("not a valid safetensors file: {e}")))?;
        let expected = cfg.layers();
        let n_expected = 2 * expected.len();
        if st.len() != n_expected {
            return Err(Error::format(
                path,
                format!(
                    "expected {n_expected} tensors for a {}-layer MLP, found {}",
                    expected.len(),
                    st.len()
                ),
            ));
        }
        let read = |name: &str, shape: &[usize]| -> Result<Vec<f32>> {
            let t = st
                .tensor(name)
                .map_err(|_| Error::format(path, format!("missing tensor '{name}'")))?;
            if t.dtype() != safetensors::Dtype::F32 {
                return Err(Error::format(
                    path,
                    format!("tensor '{name}' has dtype {:?}, expected F32", t.dtype()),
                ));
            }
            if t.shape() != shape {
                return Err(Error::format(
                    path,
                    format!(
                        "tensor '{name}' has shape {:?}, expected {:?}",
                        t.shape(),
                        shape
                    ),
                ));
            }
            let v: Vec<f32> = t
                .data()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            if v.iter().any(|x| !x.is_finite()) {
                return Err(Error::format(
                    path,
                    format!("tensor '{name}' holds NaN or infinite values"),
                ));
            }
            Ok(v)
        };
        let mut layers = Vec::new();
        for (i, &(fi, fo, _)) in expected.iter().enumerate() {
            layers.push(Linear {
                in_features: fi,
                out_features: fo,
                w: read(&format!("layers.{i}.weight"), &[fo, fi])?,
                b: read(&format!("layers.{i}.bias"), &[fo])?,
            });
        }
        Ok(Weights { layers })
    }
}

/// Time input columns (time_feature in common.wgsl).
pub fn time_feature(c: usize, t: f64) -> f64 {
    if c == 0 {
        return t;
    }
    let f = (c - 1) >> 1;
    let w = std::f64::consts::PI * (1u64 << f) as f64 * t;
    if (c - 1) & 1 == 1 {
        w.cos()
    } else {
        w.sin()
    }
}

/// One MLP input row [x, time features, class one-hot (all zeros)].
pub fn input_row(cfg: &MlpConfig, x: &[f64], t: f64) -> Vec<f64> {
    input_row_class(cfg, x, t, None)
}

/// One MLP input row [x, time features, one-hot of `class`] (no class: all zeros).
pub fn input_row_class(cfg: &MlpConfig, x: &[f64], t: f64, class: Option<usize>) -> Vec<f64> {
    let mut row = x.to_vec();
    row.extend((0..cfg.time_cols()).map(|c| time_feature(c, t)));
    row.extend((0..cfg.classes).map(|k| if Some(k) == class { 1.0 } else { 0.0 }));
    row
}

/// Everything besides the weights needed to rebuild a model (config.json). A training
/// run's config.json adds its own `"train"` and `"run"` sections
/// (`crate::train::run::RunConfig`), which the model does not read.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    pub format_version: u32,
    pub mlp: MlpConfig,
    pub path: GaussianPath,
    /// Name of the training data (a toy name or a file path).
    pub data: String,
    /// Applied to data before training; undone on samples. None: data used as is.
    pub standardization: Option<Standardization>,
    /// Source distribution x0 of the flow: None for N(0, I), else a toy name or data file
    /// (its points are standardized like the data).
    #[serde(default)]
    pub source: Option<String>,
    /// ANODE: extra dimensions K appended to the data (zeros) and the source (noise); the
    /// MLP works in mlp.dim = data dimension + K and samples are projected back.
    #[serde(default)]
    pub augment: usize,
    /// What fills the source's augmented dimensions.
    #[serde(default)]
    pub augment_fill: crate::data::AugmentFill,
    /// Class-conditional models: the data's label value of each class, ascending (class
    /// k is the k-th distinct label of the label column). Absent: the labels are the
    /// class numbers 0..classes−1.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub class_labels: Vec<i64>,
    /// What the network outputs; every solver converts it to a velocity.
    #[serde(default)]
    pub predict: crate::path::Prediction,
    pub seed: u64,
}

/// Sections of config.json that a training run owns (`crate::train::run::RunConfig`).
const RUN_SECTIONS: [&str; 2] = ["train", "run"];

/// A model on the host: configuration and weights.
#[derive(Clone, Debug)]
pub struct Model {
    pub config: ModelConfig,
    pub weights: Weights,
}

impl ModelConfig {
    /// A configuration with defaults for everything but the network and the path: N(0, I)
    /// source, no standardization, no augmentation, seed 0.
    pub fn new(mlp: MlpConfig, path: GaussianPath) -> Self {
        ModelConfig {
            format_version: FORMAT_VERSION,
            mlp,
            path,
            data: String::new(),
            standardization: None,
            source: None,
            augment: 0,
            augment_fill: Default::default(),
            class_labels: Vec::new(),
            predict: Default::default(),
            seed: 0,
        }
    }

    /// The class of data label `label` (through `class_labels` when the model has it).
    pub fn class_of(&self, label: i64) -> Result<usize> {
        let classes = self.mlp.classes;
        if classes == 0 {
            return Err(Error::invalid(
                "--class needs a class-conditional model (trained with --label-column)",
            ));
        }
        let found = if self.class_labels.is_empty() {
            (0..classes as i64)
                .contains(&label)
                .then_some(label as usize)
        } else {
            self.class_labels.binary_search(&label).ok()
        };
        found.ok_or_else(|| {
            let names: Vec<String> = if self.class_labels.is_empty() {
                vec![format!("0..{}", classes - 1)]
            } else {
                self.class_labels
                    .iter()
                    .take(20)
                    .map(|l| l.to_string())
                    .collect()
            };
            Error::invalid(format!(
                "--class {label} is not a label of this model; its labels are {}{}",
                names.join(", "),
                if self.class_labels.len() > 20 {
                    ", …"
                } else {
                    ""
                }
            ))
        })
    }

    /// Dimensions of the density that likelihoods are of: the model's. For an augmented
    /// (ANODE) model that is the joint density of (x, 0) over data and augmented
    /// dimensions, so NLLs and bits per dimension count all of them, in training and in
    /// `logprob` alike.
    pub fn density_dims(&self) -> usize {
        self.mlp.dim
    }

    /// Dimension of the data (the model's, less the augmented dimensions).
    pub fn data_dim(&self) -> usize {
        self.mlp.dim - self.augment
    }
}

impl Model {
    /// Write `model.safetensors` and `config.json` into `dir`, each atomically.
    pub fn save(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let st = dir.join("model.safetensors");
        crate::io::atomic::write_atomic(&st, &self.weights.to_safetensors()?)
            .map_err(|e| Error::io(&st, e))?;
        let cj = dir.join("config.json");
        let json =
            serde_json::to_vec_pretty(&self.config).map_err(|e| Error::invalid(e.to_string()))?;
        crate::io::atomic::write_atomic(&cj, &json).map_err(|e| Error::io(&cj, e))
    }

    /// Read a model folder written by [`save`](Self::save), validating everything.
    pub fn load(dir: &Path) -> Result<Self> {
        let cj = dir.join("config.json");
        let text = crate::io::read_bounded(&cj, crate::io::MAX_CONFIG_BYTES)
            .map_err(|e| Error::io(&cj, e))?;
        let st = dir.join("model.safetensors");
        let config = Self::parse_config(&text, &cj)?;
        let bytes = crate::io::read_bounded(&st, crate::io::MAX_FILE_BYTES)
            .map_err(|e| Error::io(&st, e))?;
        let weights = Weights::from_safetensors(&bytes, &config.mlp, &st)?;
        Ok(Model { config, weights })
    }

    /// Parse and validate config.json bytes (`path` names the file in errors).
    /// The model's fields are typed and an unknown one is an error; the run's sections are
    /// skipped.
    pub fn parse_config(text: &[u8], path: &Path) -> Result<ModelConfig> {
        let invalid = |e: serde_json::Error| Error::format(path, format!("invalid config: {e}"));
        let mut v: serde_json::Value = serde_json::from_slice(text).map_err(invalid)?;
        if let Some(obj) = v.as_object_mut() {
            for k in RUN_SECTIONS {
                obj.remove(k);
            }
        }
        let config: ModelConfig = serde_json::from_value(v).map_err(invalid)?;
        if config.format_version != FORMAT_VERSION {
            return Err(Error::format(
                path,
                format!(
                    "format_version {} is not supported (this flowgpu reads version {FORMAT_VERSION})",
                    config.format_version
                ),
            ));
        }
        config
            .mlp
            .validate()
            .map_err(|e| Error::format(path, e.to_string()))?;
        if config.augment >= config.mlp.dim {
            return Err(Error::format(
                path,
                "augment must be smaller than the model dimension",
            ));
        }
        let labels = &config.class_labels;
        if !labels.is_empty()
            && (labels.len() != config.mlp.classes || labels.windows(2).any(|w| w[0] >= w[1]))
        {
            return Err(Error::format(
                path,
                "class_labels must hold one ascending, distinct label per class",
            ));
        }
        if let Some(s) = &config.standardization {
            if s.mean.len() != config.mlp.dim - config.augment
                || s.std.len() != config.mlp.dim - config.augment
                || s.std.iter().any(|v| !(*v > 0.0 && v.is_finite()))
                || s.mean.iter().any(|v| !v.is_finite())
            {
                return Err(Error::format(path, "invalid standardization"));
            }
        }
        Ok(config)
    }
}
