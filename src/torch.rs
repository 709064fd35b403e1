//! PyTorch interchange: read and write the `state_dict` of a recurrent model saved with
//! `safetensors.torch.save_file`, so that a model prototyped in PyTorch can be checked or
//! continued here (with the truncated and randomized gradients PyTorch does not offer),
//! and the reverse.
//!
//! The model is the usual one: `embedding` (an optional `nn.Embedding`) → `rnn`
//! (`nn.RNN` with `tanh` or `relu`, `nn.GRU` or `nn.LSTM`; any number of layers,
//! unidirectional, with biases, `batch_first` irrelevant) → `head` (`nn.Linear`). The
//! state-dict keys are `embedding.weight`, `rnn.weight_ih_l{k}`, `rnn.weight_hh_l{k}`,
//! `rnn.bias_ih_l{k}`, `rnn.bias_hh_l{k}`, `head.weight`, `head.bias` (the module
//! prefixes can be changed with [`Prefixes`]).
//!
//! | PyTorch (layer k) | timetape (`rnn.l{k}.` prefix) |
//! |---|---|
//! | `weight_ih_l{k}` (G·H × D), gates in PyTorch's order (`r z n`, `i f g o`) | `W_x` (`W_xh` for `nn.RNN`) = its transpose, D × G·H, the same gate order |
//! | `weight_hh_l{k}` (G·H × H) | `W_h` (`W_hh`) = its transpose |
//! | `bias_ih_l{k}`, `bias_hh_l{k}` of `nn.GRU` | `b_x`, `b_h` (kept apart: `b_hn` sits inside `r ⊙ (·)`) |
//! | `bias_ih_l{k}` + `bias_hh_l{k}` of `nn.RNN`, `nn.LSTM` | `b_h`, `b`: one bias, their sum |
//! | `head.weight` (Q × H), `head.bias` | the top layer's `W_hq` (its transpose), `b_q` |
//! | `embedding.weight` (V × D) | the [`Embedding`] table, as is |
//!
//! The summed biases are the one choice that loses anything: exporting writes the sum
//! as `bias_ih` and zeros as `bias_hh`, which PyTorch evaluates to the same outputs
//! (export then import is bit-identical; import then export moves PyTorch's split). The
//! lower layers of a stack carry an output head of width 1 that nothing reads
//! ([`Stack`]); it is neither imported nor exported.
//!
//! ```
//! use timetape::rnn::{Lstm, Recurrent};
//! use timetape::torch::{self, TorchOptions};
//! use timetape::Params;
//!
//! // A state dict as PyTorch writes it (here made by timetape itself).
//! let mut params = Params::<f64>::new();
//! let spec = torch::Spec { input: 3, hidden: 4, output: 2, layers: 2, vocab: None };
//! let model = torch::TorchModel::<Lstm>::new(&mut params, &spec, &TorchOptions::default(), 7)?;
//! let bytes = torch::save_state_dict(&model, &params)?;
//!
//! let mut loaded = Params::<f64>::new();
//! let again: torch::TorchModel<Lstm> =
//!     torch::load_state_dict(&bytes, &mut loaded, &TorchOptions::default())?;
//! assert_eq!(again.stack().layers().len(), 2);
//! assert_eq!(Recurrent::<f64>::output_width(again.stack()), 2);
//! assert_eq!(torch::state_dict(&again, &loaded)?, torch::state_dict(&model, &params)?);
//! # Ok::<(), timetape::Error>(())
//! ```

use crate::error::{bad_file, invalid, Error, Result};
use crate::params::{Grads, ParamId, Params};
use crate::rnn::{Embedded, Embedding, Gru, Lstm, Rnn, RnnConfig, Sizes, Stack};
use crate::scalar::Scalar;
use crate::Activation;
use ndarray::Array2;
use safetensors::{Dtype, SafeTensors};
use std::collections::BTreeMap;
use std::path::Path;

/// The module prefixes of the state dict (with their dots).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prefixes {
    /// Of the `nn.Embedding` (`embedding.`).
    pub embedding: String,
    /// Of the recurrent module (`rnn.`).
    pub rnn: String,
    /// Of the `nn.Linear` head (`head.`).
    pub head: String,
}

impl Default for Prefixes {
    fn default() -> Self {
        Prefixes {
            embedding: "embedding.".into(),
            rnn: "rnn.".into(),
            head: "head.".into(),
        }
    }
}

/// How to read (and name) a state dict.
#[derive(Debug, Clone, PartialEq)]
pub struct TorchOptions {
    /// The nonlinearity of an `nn.RNN` (`Tanh`, the default, or `Relu`; a state dict
    /// does not say which). Ignored for `nn.GRU` and `nn.LSTM`.
    pub activation: Activation,
    /// The module prefixes.
    pub prefixes: Prefixes,
}

impl Default for TorchOptions {
    fn default() -> Self {
        TorchOptions {
            activation: Activation::Tanh,
            prefixes: Prefixes::default(),
        }
    }
}

/// The float type of a state dict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precision {
    /// `torch.float32`.
    F32,
    /// `torch.float64`.
    F64,
}

/// The widths of a model: `input` D (the embedding width with an embedding), `hidden` H,
/// `output` Q (the head's), `layers`, and `vocab` V if the model starts with an embedding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Spec {
    /// D.
    pub input: usize,
    /// H.
    pub hidden: usize,
    /// Q.
    pub output: usize,
    /// Recurrent layers (`num_layers`).
    pub layers: usize,
    /// V, for a model that reads tokens through an `nn.Embedding`.
    pub vocab: Option<usize>,
}

mod sealed {
    use super::{ParamId, Params, Result, Scalar, Sizes, TorchOptions};

    /// How a timetape parameter appears in the state dict.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum Role {
        /// A weight stored transposed (`weight_ih`, `weight_hh`, `head.weight`).
        Transposed,
        /// A bias of its own (1-D in PyTorch).
        Bias,
        /// The first of two PyTorch biases whose sum is this parameter.
        SumFirst,
        /// The second of them.
        SumSecond,
        /// Stored as is (the embedding table).
        AsIs,
    }

    /// A layer's parameters by the key suffix of their PyTorch counterpart, and the
    /// head's (`W_hq`, `b_q`).
    pub type Keys = (Vec<(&'static str, ParamId, Role)>, [Option<ParamId>; 2]);

    /// What the import and export need of a cell.
    pub trait Layer: Sized + Clone + std::fmt::Debug + PartialEq {
        /// Gate blocks G of the weights: 1, 3, 4.
        const GATES: usize;
        /// The PyTorch module's name, for messages.
        const MODULE: &'static str;

        /// A layer named with `prefix`.
        fn build<F: Scalar>(
            params: &mut Params<F>,
            prefix: &str,
            sizes: Sizes,
            how: (&TorchOptions, u64),
        ) -> Result<Self>;

        /// The layer's parameters by the key suffix of their PyTorch counterpart, and
        /// the head's (`W_hq`, `b_q`).
        fn keys(&self) -> Keys;
    }
}

use sealed::{Layer, Role};

/// The keys of a layer whose input and recurrent weights are `w_x`, `w_h`, with the
/// biases `bias_ih`, `bias_hh` as given, and its head.
fn layer_keys(
    (w_x, w_h): (ParamId, ParamId),
    biases: Option<[(ParamId, Role); 2]>,
    head: [Option<ParamId>; 2],
) -> sealed::Keys {
    let mut keys = vec![
        ("weight_ih", w_x, Role::Transposed),
        ("weight_hh", w_h, Role::Transposed),
    ];
    if let Some([(b_ih, r_ih), (b_hh, r_hh)]) = biases {
        keys.push(("bias_ih", b_ih, r_ih));
        keys.push(("bias_hh", b_hh, r_hh));
    }
    (keys, head)
}

/// The cells with a PyTorch counterpart: [`Rnn`] (`nn.RNN`), [`Gru`] (`nn.GRU`),
/// [`Lstm`] (`nn.LSTM`). Sealed.
pub trait TorchCell: sealed::Layer {}

impl TorchCell for Rnn {}
impl TorchCell for Gru {}
impl TorchCell for Lstm {}

impl Layer for Rnn {
    const GATES: usize = 1;
    const MODULE: &'static str = "nn.RNN";

    fn build<F: Scalar>(
        params: &mut Params<F>,
        prefix: &str,
        sizes: Sizes,
        (options, seed): (&TorchOptions, u64),
    ) -> Result<Self> {
        if !matches!(options.activation, Activation::Tanh | Activation::Relu) {
            return Err(invalid(
                "torch::load_state_dict",
                "nn.RNN has a tanh or relu nonlinearity",
            ));
        }
        let config = RnnConfig::new(sizes.input, sizes.hidden, sizes.output)
            .activation(options.activation)
            .named(prefix);
        Rnn::new(params, config, seed)
    }

    fn keys(&self) -> sealed::Keys {
        let biases = self
            .b_h
            .map(|b| [(b, Role::SumFirst), (b, Role::SumSecond)]);
        layer_keys((self.w_xh, self.w_hh), biases, [Some(self.w_hq), self.b_q])
    }
}

impl Layer for Gru {
    const GATES: usize = 3;
    const MODULE: &'static str = "nn.GRU";

    fn build<F: Scalar>(
        params: &mut Params<F>,
        prefix: &str,
        sizes: Sizes,
        (_, seed): (&TorchOptions, u64),
    ) -> Result<Self> {
        Gru::named(params, prefix, sizes, seed)
    }

    fn keys(&self) -> sealed::Keys {
        let biases = [(self.b_x, Role::Bias), (self.b_h, Role::Bias)];
        layer_keys(
            (self.w_x, self.w_h),
            Some(biases),
            [Some(self.w_hq), Some(self.b_q)],
        )
    }
}

impl Layer for Lstm {
    const GATES: usize = 4;
    const MODULE: &'static str = "nn.LSTM";

    fn build<F: Scalar>(
        params: &mut Params<F>,
        prefix: &str,
        sizes: Sizes,
        (_, seed): (&TorchOptions, u64),
    ) -> Result<Self> {
        Lstm::named(params, prefix, sizes, seed)
    }

    fn keys(&self) -> sealed::Keys {
        let biases = [(self.b, Role::SumFirst), (self.b, Role::SumSecond)];
        layer_keys(
            (self.w_x, self.w_h),
            Some(biases),
            [Some(self.w_hq), Some(self.b_q)],
        )
    }
}

/// A model with a PyTorch counterpart: an optional [`Embedding`], a [`Stack`] of cells
/// `C`, whose top layer's head is the `nn.Linear`. Run it as
/// [`TorchModel::stack`] on real inputs, or [`TorchModel::embedded`] on tokens.
#[derive(Debug, Clone, PartialEq)]
pub struct TorchModel<C> {
    embedding: Option<Embedding>,
    stack: Stack<C>,
    prefixes: Prefixes,
}

impl<C: TorchCell> TorchModel<C> {
    /// A new model of the widths `spec` in `params`, named as its state dict would be
    /// (`rnn.l0.W_x`, …, `embedding.weight`), initialized from `seed` as the cells are.
    ///
    /// Errors: [`Error::InvalidArgument`] for a zero width or layer count, a name that
    /// `params` already has, or an `nn.RNN` activation other than tanh or relu.
    pub fn new<F: Scalar>(
        params: &mut Params<F>,
        spec: &Spec,
        options: &TorchOptions,
        seed: u64,
    ) -> Result<Self> {
        if spec.layers == 0 {
            return Err(invalid("TorchModel::new", "no layer"));
        }
        let p = &options.prefixes;
        let embedding = match spec.vocab {
            Some(v) => {
                let name = format!("{}weight", p.embedding);
                Some(Embedding::new(params, &name, (v, spec.input), seed)?)
            }
            None => None,
        };
        let mut layers = Vec::with_capacity(spec.layers);
        for k in 0..spec.layers {
            let input = if k == 0 { spec.input } else { spec.hidden };
            let output = if k + 1 == spec.layers { spec.output } else { 1 };
            let prefix = format!("{}l{k}.", p.rnn);
            let sizes = Sizes::new(input, spec.hidden, output);
            let layer_seed = seed.wrapping_add(k as u64 + 1);
            layers.push(C::build(params, &prefix, sizes, (options, layer_seed))?);
        }
        Ok(TorchModel {
            embedding,
            stack: Stack::new(layers)?,
            prefixes: p.clone(),
        })
    }

    /// The embedding, if the model reads tokens.
    pub fn embedding(&self) -> Option<Embedding> {
        self.embedding
    }

    /// The recurrent layers with the head: the model on real inputs (B×D per step).
    pub fn stack(&self) -> &Stack<C> {
        &self.stack
    }

    /// The model on tokens, if it has an embedding (run with
    /// [`Sequence::tokens`](crate::rnn::Sequence::tokens)).
    pub fn embedded(&self) -> Option<Embedded<Stack<C>>> {
        self.embedding.map(|e| Embedded::new(e, self.stack.clone()))
    }

    /// Every state-dict key with its parameter and how it is stored.
    fn entries(&self) -> Vec<(String, ParamId, Role)> {
        let p = &self.prefixes;
        let mut out = Vec::new();
        if let Some(e) = self.embedding {
            out.push((format!("{}weight", p.embedding), e.table, Role::AsIs));
        }
        let layers = self.stack.layers();
        for (k, layer) in layers.iter().enumerate() {
            let (keys, head) = layer.keys();
            for (suffix, id, role) in keys {
                out.push((format!("{}{suffix}_l{k}", p.rnn), id, role));
            }
            if k + 1 == layers.len() {
                if let Some(w) = head[0] {
                    out.push((format!("{}weight", p.head), w, Role::Transposed));
                }
                if let Some(b) = head[1] {
                    out.push((format!("{}bias", p.head), b, Role::Bias));
                }
            }
        }
        out
    }
}

/// The float type of the state dict in `bytes` (of its first tensor).
///
/// Errors: [`Error::BadFile`] for bytes that are not a safetensors file, an empty one,
/// or a dtype other than float32 and float64.
pub fn precision(bytes: &[u8]) -> Result<Precision> {
    let op = "torch::precision";
    let st = SafeTensors::deserialize(bytes).map_err(|e| bad_file(op, "file", e.to_string()))?;
    let names = st.names();
    let Some(first) = names.first() else {
        return Err(bad_file(op, "file", "no tensor"));
    };
    let view = st
        .tensor(first)
        .map_err(|e| bad_file(op, *first, e.to_string()))?;
    match view.dtype() {
        Dtype::F32 => Ok(Precision::F32),
        Dtype::F64 => Ok(Precision::F64),
        d => Err(bad_file(op, *first, format!("unsupported dtype {d:?}"))),
    }
}

/// The tensors of a state dict as matrices (a 1-D tensor as one row), checked to be of
/// the float type `F`.
fn read_all<F: Scalar>(op: &'static str, bytes: &[u8]) -> Result<BTreeMap<String, Array2<F>>> {
    let st = SafeTensors::deserialize(bytes).map_err(|e| bad_file(op, "file", e.to_string()))?;
    let (want, _) = crate::checkpoint::dtype_of::<F>();
    let mut out = BTreeMap::new();
    for (name, view) in st.tensors() {
        if view.dtype() != want {
            let what = format!("dtype {:?}, expected {want:?}", view.dtype());
            return Err(bad_file(op, name, what));
        }
        let shape = match *view.shape() {
            [n] => (1, n),
            [r, c] => (r, c),
            ref s => return Err(bad_file(op, name, format!("a tensor of shape {s:?}"))),
        };
        let m = crate::checkpoint::decode(view.data(), shape)
            .ok_or_else(|| bad_file(op, name.as_str(), "data of the wrong size"))?;
        out.insert(name, m);
    }
    Ok(out)
}

/// The widths of the model in `tensors` for a cell of `gates` blocks.
fn infer_spec<F: Scalar>(
    op: &'static str,
    tensors: &BTreeMap<String, Array2<F>>,
    gates: usize,
    p: &Prefixes,
) -> Result<Spec> {
    let get = |key: &str| tensors.get(key).ok_or_else(|| bad_file(op, key, "missing"));
    let whh = get(&format!("{}weight_hh_l0", p.rnn))?;
    let hidden = whh.ncols();
    let wih = get(&format!("{}weight_ih_l0", p.rnn))?;
    let layers = (0..)
        .take_while(|k| tensors.contains_key(&format!("{}weight_ih_l{k}", p.rnn)))
        .count();
    let head = get(&format!("{}weight", p.head))?;
    let vocab = tensors
        .get(&format!("{}weight", p.embedding))
        .map(|e| e.nrows());
    if hidden == 0 || whh.nrows() != gates * hidden {
        let key = format!("{}weight_hh_l0", p.rnn);
        let what = format!("shape {:?}, expected ({}·H, H)", whh.dim(), gates);
        return Err(bad_file(op, key, what));
    }
    Ok(Spec {
        input: wih.ncols(),
        hidden,
        output: head.nrows(),
        layers,
        vocab,
    })
}

/// A model read from the state dict in `bytes` (as written by
/// `safetensors.torch.save_file(model.state_dict(), path)`), with its parameters added
/// to `params` under the names of [`TorchModel::new`]. Choose the cell type for the
/// module: `load_state_dict::<f64, Lstm>(…)` for an `nn.LSTM`.
///
/// Errors (nothing is added to `params` then): [`Error::BadFile`] naming the key for
/// bytes that are not a safetensors file, a missing key, a tensor of the wrong shape,
/// a dtype other than `F`'s, a non-finite value, or a key the model does not have (a bidirectional layer,
/// `proj_size`, another module); [`Error::InvalidArgument`] if `params` already has one
/// of the names, or for an `nn.RNN` activation other than tanh or relu.
pub fn load_state_dict<F: Scalar, C: TorchCell>(
    bytes: &[u8],
    params: &mut Params<F>,
    options: &TorchOptions,
) -> Result<TorchModel<C>> {
    let op = "torch::load_state_dict";
    let tensors = read_all::<F>(op, bytes)?;
    let spec = infer_spec(op, &tensors, C::GATES, &options.prefixes)?;
    // Build into a scratch store first: every key and shape is checked before `params`
    // changes.
    let mut scratch = Params::<F>::new();
    let model = TorchModel::<C>::new(&mut scratch, &spec, options, 0)?;
    let entries = model.entries();
    let values = values_of(op, C::MODULE, &tensors, &entries, &scratch)?;
    if let Some(extra) = tensors.keys().find(|k| !entries.iter().any(|e| &e.0 == *k)) {
        let what = format!(
            "not a key of this model (embedding → {} → linear head, unidirectional, \
             no proj_size)",
            C::MODULE
        );
        return Err(bad_file(op, extra.as_str(), what));
    }
    for id in scratch.ids() {
        let name = scratch.name(id)?;
        if params.id(name).is_some() {
            return Err(invalid(op, format!("the store already has {name:?}")));
        }
    }
    for (id, v) in values {
        scratch.set(id, v.view()).map_err(|e| {
            let key = entries
                .iter()
                .find(|x| x.1 == id)
                .map_or("?", |x| x.0.as_str());
            bad_file(op, key, e.to_string())
        })?;
    }
    // Same names, same order: the ids of `params` are the scratch ids shifted.
    let model = TorchModel::<C>::new(params, &spec, options, 0)?;
    for id in scratch.ids() {
        let name = scratch.name(id)?;
        let target = params.id(name).ok_or_else(|| invalid(op, "name lost"))?;
        params.set(target, scratch.get(id)?.view())?;
    }
    Ok(model)
}

/// The parameter values of the model's `entries` from the state dict's `tensors`, in
/// timetape's layout (transposed back, the two summed biases added), each checked for
/// its key and shape against the scratch store's parameters.
fn values_of<F: Scalar>(
    op: &'static str,
    module: &str,
    tensors: &BTreeMap<String, Array2<F>>,
    entries: &[(String, ParamId, Role)],
    scratch: &Params<F>,
) -> Result<Vec<(ParamId, Array2<F>)>> {
    let mut values: Vec<(ParamId, Array2<F>)> = Vec::new();
    for (key, id, role) in entries {
        let want = torch_shape(scratch.get(*id)?.dim(), *role);
        let t = tensors
            .get(key)
            .ok_or_else(|| bad_file(op, key.as_str(), format!("missing ({module})")))?;
        if t.dim() != want {
            let what = format!("shape {:?}, expected {want:?}", t.dim());
            return Err(bad_file(op, key.as_str(), what));
        }
        let v = match role {
            Role::Transposed => t.t().to_owned(),
            Role::SumSecond => match values.iter_mut().find(|(i, _)| i == id) {
                Some((_, first)) => {
                    first.zip_mut_with(t, |a, &b| *a = *a + b);
                    continue;
                }
                None => t.clone(),
            },
            _ => t.clone(),
        };
        values.push((*id, v));
    }
    Ok(values)
}

/// The shape in the state dict of a parameter of shape `dim`.
fn torch_shape(dim: (usize, usize), role: Role) -> (usize, usize) {
    match role {
        Role::Transposed => (dim.1, dim.0),
        _ => dim,
    }
}

/// [`load_state_dict`] from a file.
///
/// Errors: [`Error::Io`] if the file cannot be read; otherwise as [`load_state_dict`].
pub fn load_state_dict_file<F: Scalar, C: TorchCell>(
    path: impl AsRef<Path>,
    params: &mut Params<F>,
    options: &TorchOptions,
) -> Result<TorchModel<C>> {
    let path = path.as_ref();
    let bytes = std::fs::read(path).map_err(|e| Error::Io {
        op: "torch::load_state_dict_file",
        what: format!("read {}: {e}", path.display()),
    })?;
    load_state_dict(&bytes, params, options)
}

/// The model's parameters as PyTorch's state dict holds them: `(key, tensor)` in the
/// layout of the module (weights transposed back, a summed bias as `bias_ih` with zeros
/// as `bias_hh`, biases as 1×n rows).
///
/// Errors: [`Error::ForeignParam`] if `params` is not the model's store.
pub fn state_dict<F: Scalar, C: TorchCell>(
    model: &TorchModel<C>,
    params: &Params<F>,
) -> Result<Vec<(String, Array2<F>)>> {
    model
        .entries()
        .into_iter()
        .map(|(key, id, role)| {
            let v = params.get(id)?;
            let t = match role {
                Role::Transposed => v.t().to_owned(),
                Role::SumSecond => Array2::zeros(v.dim()),
                _ => v.clone(),
            };
            Ok((key, t))
        })
        .collect()
}

/// The gradients in the layout of PyTorch's `param.grad`, keyed like the state dict: a
/// summed bias's gradient goes to both `bias_ih` and `bias_hh` (∂L/∂b_ih = ∂L/∂b_hh =
/// ∂L/∂b). For comparing with PyTorch's gradients.
///
/// Errors: [`Error::ForeignParam`] or [`Error::NoGradient`] if `grads` has no entry for
/// one of the model's parameters.
pub fn state_dict_grads<F: Scalar, C: TorchCell>(
    model: &TorchModel<C>,
    grads: &Grads<F>,
) -> Result<Vec<(String, Array2<F>)>> {
    model
        .entries()
        .into_iter()
        .map(|(key, id, role)| {
            let g = grads.get(id)?;
            let t = match role {
                Role::Transposed => g.t().to_owned(),
                _ => g.clone(),
            };
            Ok((key, t))
        })
        .collect()
}

/// The model's state dict as safetensors bytes (the float type of `F`), which PyTorch
/// loads with `model.load_state_dict(safetensors.torch.load_file(path))`.
///
/// Errors: as [`state_dict`]; [`Error::InvalidArgument`] if serializing fails.
pub fn save_state_dict<F: Scalar, C: TorchCell>(
    model: &TorchModel<C>,
    params: &Params<F>,
) -> Result<Vec<u8>> {
    let op = "torch::save_state_dict";
    let tensors = state_dict(model, params)?;
    let (dtype, _) = crate::checkpoint::dtype_of::<F>();
    let mut owned = Vec::with_capacity(tensors.len());
    for (key, t) in &tensors {
        let bytes = crate::checkpoint::encode(t.view());
        // Biases (and the head's) are 1-D in PyTorch.
        let shape = if key.contains("bias") {
            vec![t.len()]
        } else {
            vec![t.nrows(), t.ncols()]
        };
        owned.push((key.clone(), shape, bytes));
    }
    let views = owned
        .iter()
        .map(|(k, shape, bytes)| {
            safetensors::tensor::TensorView::new(dtype, shape.clone(), bytes)
                .map(|v| (k.clone(), v))
                .map_err(|e| invalid(op, e.to_string()))
        })
        .collect::<Result<Vec<_>>>()?;
    safetensors::tensor::serialize(views, None).map_err(|e| invalid(op, e.to_string()))
}

/// [`save_state_dict`] to a file.
///
/// Errors: [`Error::Io`] if the file cannot be written; otherwise as
/// [`save_state_dict`].
pub fn save_state_dict_file<F: Scalar, C: TorchCell>(
    path: impl AsRef<Path>,
    model: &TorchModel<C>,
    params: &Params<F>,
) -> Result<()> {
    let path = path.as_ref();
    let bytes = save_state_dict(model, params)?;
    std::fs::write(path, bytes).map_err(|e| Error::Io {
        op: "torch::save_state_dict_file",
        what: format!("write {}: {e}", path.display()),
    })
}
