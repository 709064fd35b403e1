//! Checkpoints: what a training run needs to continue, saved and loaded bit for bit.
//!
//! A [`Checkpoint`] borrows what it saves — the [`Params`], and optionally their
//! [`Grads`], an [`Sgd`] or [`Adam`] optimizer's state, the position of an
//! [`XiSampler`], named matrices of your own (the carried state h of a stream) and a
//! step counter — and writes it as one file in the
//! [safetensors](https://github.com/huggingface/safetensors) format. [`Loaded`] reads
//! it back into fresh objects: a run resumed from a checkpoint makes exactly the updates
//! the uninterrupted run would have made.
//!
//! ## The file
//!
//! Tensors, in the file's float type (`F32` or `F64`, little-endian, row-major), under
//! the keys `params/<name>`, `grads/<name>`, `sgd/velocity/<name>`, `adam/m/<name>`,
//! `adam/v/<name>` and `state/<name>`. Beside them, in the safetensors `__metadata__`
//! map, one JSON document under `timetape.checkpoint` (format version, scalar type,
//! hyperparameters as the bits of their `f64` values, Adam's step counts, the sampler's
//! position, the step counter, and every tensor's shape and 64-bit FNV-1a checksum of
//! its bytes), preceded by the document's own checksum (16 hex digits and a space). One
//! metadata entry keeps the file deterministic: the same state gives the same bytes.
//!
//! Loading checks everything before anything is handed out or changed: a truncated or
//! corrupted file, a file of the other float type, a parameter name or shape that does
//! not match the store is an [`Error::BadFile`] naming the key; a file that cannot be
//! read or written is an [`Error::Io`]. Optimizer state is stored by parameter name and
//! re-keyed to the store given at load.

use crate::bptt::{Law, Pi, WindowLengths, XiPosition, XiSampler};
use crate::error::{bad_file, invalid, Error, Result};
use crate::optim::{Adam, Sgd};
use crate::params::{Grads, ParamId, Params};
use crate::scalar::Scalar;
use ndarray::{Array2, ArrayView2};
use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;

/// The version of the file layout written by this build.
const FORMAT: u32 = 1;
/// The metadata entry holding the JSON document, after its checksum and a space.
const META_KEY: &str = "timetape.checkpoint";

/// 64-bit FNV-1a of `bytes`.
fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// The safetensors dtype and the name of the scalar type `F`.
pub(crate) fn dtype_of<F: Scalar>() -> (Dtype, &'static str) {
    if std::mem::size_of::<F>() == 4 {
        (Dtype::F32, "f32")
    } else {
        (Dtype::F64, "f64")
    }
}

/// The bytes of `a`, row-major, little-endian.
pub(crate) fn encode<F: Scalar>(a: ArrayView2<'_, F>) -> Vec<u8> {
    let width = std::mem::size_of::<F>();
    let mut out = Vec::with_capacity(a.len() * width);
    for &x in a.iter() {
        // as_f64 is exact, and the cast back to f32 of an f32 value too.
        if width == 4 {
            out.extend_from_slice(&(x.as_f64() as f32).to_le_bytes());
        } else {
            out.extend_from_slice(&x.as_f64().to_le_bytes());
        }
    }
    out
}

/// The matrix of shape `shape` stored in `bytes` (checked to be of its size).
pub(crate) fn decode<F: Scalar>(bytes: &[u8], shape: (usize, usize)) -> Option<Array2<F>> {
    let width = std::mem::size_of::<F>();
    if bytes.len() != shape.0.checked_mul(shape.1)?.checked_mul(width)? {
        return None;
    }
    let values = bytes
        .chunks_exact(width)
        .map(|c| {
            if width == 4 {
                let mut b = [0u8; 4];
                b.copy_from_slice(c);
                F::of(f64::from(f32::from_le_bytes(b)))
            } else {
                let mut b = [0u8; 8];
                b.copy_from_slice(c);
                F::of(f64::from_le_bytes(b))
            }
        })
        .collect();
    Array2::from_shape_vec(shape, values).ok()
}

/// The bits of a hyperparameter, through `f64` (exact for both scalar types).
fn bits<F: Scalar>(x: F) -> u64 {
    x.as_f64().to_bits()
}

fn unbits<F: Scalar>(b: u64) -> F {
    F::of(f64::from_bits(b))
}

/// The JSON document in the file's metadata.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Meta {
    format: u32,
    scalar: String,
    step: u64,
    /// Parameter names, in the order of the store saved.
    params: Vec<String>,
    /// Names of the parameters with a gradient entry, if gradients were saved.
    grads: Option<Vec<String>>,
    sgd: Option<SgdMeta>,
    adam: Option<AdamMeta>,
    sampler: Option<SamplerMeta>,
    /// Names of the user's matrices.
    matrices: Vec<String>,
    /// Every tensor: shape and checksum.
    tensors: BTreeMap<String, TensorMeta>,
}

/// SGD's hyperparameters (bits of their `f64` values) and the names with a velocity.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SgdMeta {
    lr: u64,
    momentum: u64,
    velocity: Vec<String>,
}

/// Adam's hyperparameters (bits of their `f64` values) and each parameter's step count.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct AdamMeta {
    lr: u64,
    beta1: u64,
    beta2: u64,
    eps: u64,
    steps: BTreeMap<String, u64>,
}

/// An [`XiSampler`]'s position: ChaCha8 seed (hex), stream, word position (decimal),
/// step t, segment length m.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SamplerMeta {
    seed: String,
    stream: u64,
    word_pos: String,
    t: u64,
    m: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct TensorMeta {
    shape: [usize; 2],
    fnv1a: String,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex32(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 || !s.is_ascii() {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

fn key(prefix: &str, name: &str) -> String {
    format!("{prefix}/{name}")
}

/// What to save, borrowed: parameters, and optionally gradients, optimizer state, a ξ
/// sampler's position, named matrices and a step counter.
///
/// ```
/// use ndarray::array;
/// use timetape::bptt::{Pi, XiSampler};
/// use timetape::checkpoint::{Checkpoint, Loaded};
/// use timetape::optim::Adam;
/// use timetape::{Grads, Params};
///
/// let mut params = Params::<f64>::new();
/// let w = params.add("w", array![[0.5, -0.25]])?;
/// let mut grads = Grads::new(&params);
/// grads.accumulate(w, array![[1.0, 2.0]].view())?;
/// let mut adam = Adam::new(0.1)?;
/// adam.step(&mut params, &grads)?;
/// let mut sampler = XiSampler::new(Pi::Constant(0.8), 7);
/// sampler.next_xi()?;
/// let h = array![[0.1, 0.2, 0.3]];
///
/// let bytes = Checkpoint::new(&params)
///     .adam(&adam)
///     .sampler(&sampler)
///     .matrix("h", h.view())
///     .step(1)
///     .to_bytes()?; // or .save(path)
///
/// // Fresh objects, restored from the bytes.
/// let loaded = Loaded::<f64>::from_bytes(&bytes)?; // or Loaded::open(path)
/// let mut fresh = Params::<f64>::new();
/// fresh.add("w", array![[0.0, 0.0]])?;
/// loaded.restore_params(&mut fresh)?;
/// let mut adam2 = loaded.adam(&fresh)?;
/// let mut sampler2 = loaded.sampler(Pi::Constant(0.8))?;
/// assert_eq!(fresh.get(fresh.id("w").unwrap())?, params.get(w)?);
/// assert_eq!(loaded.matrix("h")?, h);
/// assert_eq!(loaded.step(), 1);
/// assert_eq!(sampler2.next_xi()?, sampler.next_xi()?);
///
/// // The same step on both: the same parameters, bit for bit.
/// let mut grads2 = Grads::new(&fresh);
/// grads2.accumulate(fresh.id("w").unwrap(), array![[1.0, 2.0]].view())?;
/// adam.step(&mut params, &grads)?;
/// adam2.step(&mut fresh, &grads2)?;
/// assert_eq!(fresh.get(fresh.id("w").unwrap())?, params.get(w)?);
/// # Ok::<(), timetape::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct Checkpoint<'a, F> {
    params: &'a Params<F>,
    grads: Option<&'a Grads<F>>,
    sgd: Option<&'a Sgd<F>>,
    adam: Option<&'a Adam<F>>,
    sampler: Option<&'a XiSampler>,
    matrices: Vec<(String, ArrayView2<'a, F>)>,
    step: u64,
}

impl<'a, F: Scalar> Checkpoint<'a, F> {
    /// A checkpoint of `params` (step counter 0, nothing else).
    pub fn new(params: &'a Params<F>) -> Self {
        Checkpoint {
            params,
            grads: None,
            sgd: None,
            adam: None,
            sampler: None,
            matrices: Vec::new(),
            step: 0,
        }
    }

    /// Saves the gradients too (their entries, by parameter name).
    pub fn grads(mut self, grads: &'a Grads<F>) -> Self {
        self.grads = Some(grads);
        self
    }

    /// Saves an SGD optimizer: learning rate, momentum, and the velocity of every
    /// parameter that has one.
    pub fn sgd(mut self, sgd: &'a Sgd<F>) -> Self {
        self.sgd = Some(sgd);
        self
    }

    /// Saves an Adam optimizer: learning rate, β₁, β₂, ε, and every parameter's step
    /// count and moments.
    pub fn adam(mut self, adam: &'a Adam<F>) -> Self {
        self.adam = Some(adam);
        self
    }

    /// Saves the position of a ξ sampler (not its π, which may be a closure, nor its
    /// window lengths: they are given again to [`Loaded::sampler`] or
    /// [`Loaded::windows_sampler`]).
    pub fn sampler(mut self, sampler: &'a XiSampler) -> Self {
        self.sampler = Some(sampler);
        self
    }

    /// Saves a matrix of your own under `name` (the carried state h of a stream, ...),
    /// read back with [`Loaded::matrix`]. Names must be distinct (checked when saved).
    pub fn matrix(mut self, name: impl Into<String>, value: ArrayView2<'a, F>) -> Self {
        self.matrices.push((name.into(), value));
        self
    }

    /// Sets the step counter saved (read back with [`Loaded::step`]).
    pub fn step(mut self, step: u64) -> Self {
        self.step = step;
        self
    }

    /// The checkpoint as the bytes of a safetensors file.
    ///
    /// Errors: [`Error::InvalidArgument`] if the gradients or an optimizer's state hold
    /// a parameter of another store, or two matrices have the same name;
    /// [`Error::ShapeMismatch`] if a gradient or an optimizer's state is not of its
    /// parameter's shape.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        self.encode("Checkpoint::to_bytes")
    }

    /// Writes the checkpoint to `path` (through a temporary file beside it, renamed
    /// into place, so that an existing checkpoint is never left half-written).
    ///
    /// Errors: as [`Checkpoint::to_bytes`], and [`Error::Io`] if the file cannot be
    /// written.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        let op = "Checkpoint::save";
        let path = path.as_ref();
        let bytes = self.encode(op)?;
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(".tmp");
        let tmp = std::path::PathBuf::from(tmp);
        let io = |what: &str, p: &Path, e: std::io::Error| Error::Io {
            op,
            what: format!("{what} {}: {e}", p.display()),
        };
        std::fs::write(&tmp, &bytes).map_err(|e| io("write", &tmp, e))?;
        std::fs::rename(&tmp, path).map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            io("rename into", path, e)
        })
    }

    /// The name of parameter `id` of the store saved, and its shape.
    fn param_of(
        &self,
        op: &'static str,
        id: ParamId,
        what: &str,
    ) -> Result<(&str, (usize, usize))> {
        let name = self.params.name(id).map_err(|_| {
            invalid(
                op,
                format!("the {what} hold a parameter of another store than the one saved"),
            )
        })?;
        Ok((name, self.params.get(id)?.dim()))
    }

    /// The checkpoint as the bytes of a safetensors file (see [`Checkpoint::to_bytes`]).
    fn encode(&self, op: &'static str) -> Result<Vec<u8>> {
        let mut tensors = Vec::new();
        let meta = self.describe(op, &mut tensors)?;
        to_safetensors(op, meta, tensors)
    }

    /// The metadata document (its `tensors` map still empty), pushing every tensor it
    /// lists onto `tensors`: parameters, gradients, SGD, Adam, then the user's matrices.
    fn describe<'s>(&'s self, op: &'static str, tensors: &mut Named<'s, F>) -> Result<Meta> {
        let params = self.push_params(tensors)?;
        let grads = self.push_grads(op, tensors)?;
        let sgd = self.push_sgd(op, tensors)?;
        let adam = self.push_adam(op, tensors)?;
        let sampler = self.sampler.map(sampler_meta);
        let matrices = self.push_matrices(op, tensors)?;
        Ok(Meta {
            format: FORMAT,
            scalar: dtype_of::<F>().1.to_string(),
            step: self.step,
            params,
            grads,
            sgd,
            adam,
            sampler,
            matrices,
            tensors: BTreeMap::new(),
        })
    }

    /// Pushes every parameter (`params/<name>`) onto `tensors`; their names, in order.
    fn push_params<'s>(&'s self, tensors: &mut Named<'s, F>) -> Result<Vec<String>> {
        let mut names = Vec::new();
        for id in self.params.ids() {
            let name = self.params.name(id)?;
            names.push(name.to_string());
            tensors.push((key("params", name), self.params.get(id)?.view()));
        }
        Ok(names)
    }

    /// Pushes the gradients, if saved (`grads/<name>`), onto `tensors`; their names.
    fn push_grads<'s>(
        &'s self,
        op: &'static str,
        tensors: &mut Named<'s, F>,
    ) -> Result<Option<Vec<String>>> {
        let Some(grads) = self.grads else {
            return Ok(None);
        };
        let mut names = Vec::new();
        for (id, g) in grads.iter() {
            let (name, shape) = self.param_of(op, id, "gradients")?;
            fits(op, shape, &g.view())?;
            names.push(name.to_string());
            tensors.push((key("grads", name), g.view()));
        }
        Ok(Some(names))
    }

    /// Pushes the SGD velocities, if saved (`sgd/velocity/<name>`), onto `tensors`; the
    /// SGD metadata.
    fn push_sgd<'s>(
        &'s self,
        op: &'static str,
        tensors: &mut Named<'s, F>,
    ) -> Result<Option<SgdMeta>> {
        let Some(sgd) = self.sgd else {
            return Ok(None);
        };
        let (momentum, velocities) = sgd.state();
        let mut names = Vec::new();
        for (id, v) in velocities {
            let (name, shape) = self.param_of(op, id, "SGD velocities")?;
            fits(op, shape, &v.view())?;
            names.push(name.to_string());
            tensors.push((key("sgd/velocity", name), v.view()));
        }
        Ok(Some(SgdMeta {
            lr: bits(sgd.lr()),
            momentum: bits(momentum),
            velocity: names,
        }))
    }

    /// Pushes the Adam moments, if saved (`adam/m/<name>`, `adam/v/<name>`), onto
    /// `tensors`; the Adam metadata.
    fn push_adam<'s>(
        &'s self,
        op: &'static str,
        tensors: &mut Named<'s, F>,
    ) -> Result<Option<AdamMeta>> {
        let Some(adam) = self.adam else {
            return Ok(None);
        };
        let ([beta1, beta2, eps], moments) = adam.state();
        let mut steps = BTreeMap::new();
        for (id, (t, m, v)) in moments {
            let (name, shape) = self.param_of(op, id, "Adam moments")?;
            fits(op, shape, &m.view())?;
            fits(op, shape, &v.view())?;
            steps.insert(name.to_string(), *t);
            tensors.push((key("adam/m", name), m.view()));
            tensors.push((key("adam/v", name), v.view()));
        }
        Ok(Some(AdamMeta {
            lr: bits(adam.lr()),
            beta1: bits(beta1),
            beta2: bits(beta2),
            eps: bits(eps),
            steps,
        }))
    }

    /// Pushes the user's matrices (`state/<name>`) onto `tensors`; their names, in order.
    ///
    /// Errors: [`Error::InvalidArgument`] if two have the same name.
    fn push_matrices<'s>(
        &'s self,
        op: &'static str,
        tensors: &mut Named<'s, F>,
    ) -> Result<Vec<String>> {
        let mut names: Vec<String> = Vec::new();
        for (name, value) in &self.matrices {
            if names.contains(name) {
                return Err(invalid(op, format!("two matrices named {name:?}")));
            }
            names.push(name.clone());
            tensors.push((key("state", name), value.view()));
        }
        Ok(names)
    }
}

/// Tensors to save, each under its key, in the order pushed.
type Named<'v, F> = Vec<(String, ArrayView2<'v, F>)>;

/// Checks that `a` has its parameter's shape `shape`: else [`Error::ShapeMismatch`].
fn fits<F>(op: &'static str, shape: (usize, usize), a: &ArrayView2<'_, F>) -> Result<()> {
    if a.dim() == shape {
        Ok(())
    } else {
        Err(Error::ShapeMismatch {
            op,
            lhs: shape,
            rhs: a.dim(),
        })
    }
}

/// The metadata of a ξ sampler's position.
fn sampler_meta(sampler: &XiSampler) -> SamplerMeta {
    let pos = sampler.position();
    SamplerMeta {
        seed: hex(&pos.seed),
        stream: pos.stream,
        word_pos: pos.word_pos.to_string(),
        t: pos.t as u64,
        m: pos.m as u64,
    }
}

/// The safetensors file of `tensors`, with `meta` (completed with every tensor's shape
/// and checksum) as its checksummed metadata entry.
fn to_safetensors<F: Scalar>(
    op: &'static str,
    mut meta: Meta,
    tensors: Named<'_, F>,
) -> Result<Vec<u8>> {
    let dtype = dtype_of::<F>().0;
    let bytes: Vec<(String, Vec<u8>, [usize; 2])> = tensors
        .into_iter()
        .map(|(k, a)| {
            let (r, c) = a.dim();
            (k, encode(a), [r, c])
        })
        .collect();
    let mut views = Vec::with_capacity(bytes.len());
    for (k, b, shape) in &bytes {
        meta.tensors.insert(
            k.clone(),
            TensorMeta {
                shape: *shape,
                fnv1a: format!("{:016x}", fnv1a(b)),
            },
        );
        let view = TensorView::new(dtype, shape.to_vec(), b)
            .map_err(|e| bad_file(op, k.as_str(), e.to_string()))?;
        views.push((k.clone(), view));
    }
    let doc = serde_json::to_string(&meta).map_err(|e| bad_file(op, META_KEY, e.to_string()))?;
    let entry = format!("{:016x} {doc}", fnv1a(doc.as_bytes()));
    let info = HashMap::from([(META_KEY.to_string(), entry)]);
    safetensors::tensor::serialize(views, Some(info))
        .map_err(|e| bad_file(op, "file", e.to_string()))
}

/// A checkpoint read back and verified (checksums, float type, metadata), from which
/// the saved objects are rebuilt.
///
/// Every tensor is checked when the file is opened; each accessor then checks what it
/// is given (parameter names and shapes) before it builds or changes anything.
#[derive(Debug, Clone)]
pub struct Loaded<F> {
    meta: Meta,
    tensors: HashMap<String, Array2<F>>,
    sampler: Option<XiPosition>,
}

impl<F: Scalar> Loaded<F> {
    /// Reads and verifies the checkpoint at `path`.
    ///
    /// Errors: [`Error::Io`] if the file cannot be read; [`Error::BadFile`] (naming the
    /// key) for a file that is not a checkpoint of this format, is truncated or
    /// corrupted (a checksum does not match), or holds the other float type.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let op = "Loaded::open";
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|e| Error::Io {
            op,
            what: format!("read {}: {e}", path.display()),
        })?;
        Self::parse(op, &bytes)
    }

    /// Reads and verifies a checkpoint from its bytes ([`Checkpoint::to_bytes`]).
    ///
    /// Errors: as [`Loaded::open`], without [`Error::Io`].
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        Self::parse("Loaded::from_bytes", bytes)
    }

    /// Reads and verifies a checkpoint from `bytes`: its metadata, every tensor, and the
    /// sampler's position (see [`Loaded::open`]).
    fn parse(op: &'static str, bytes: &[u8]) -> Result<Self> {
        let (st, meta) = read_meta(op, bytes)?;
        check_header::<F>(op, &meta)?;
        check_tensor_lists(op, &st, &meta)?;
        let tensors = read_tensors(op, &st, &meta)?;
        let sampler = meta
            .sampler
            .as_ref()
            .map(|s| sampler_position(op, s))
            .transpose()?;
        Ok(Loaded {
            meta,
            tensors,
            sampler,
        })
    }

    /// The step counter saved ([`Checkpoint::step`]).
    pub fn step(&self) -> u64 {
        self.meta.step
    }

    /// Loads the saved parameter values into `params`, by name. The store must have
    /// exactly the parameters saved (the same names, the same shapes); all are loaded,
    /// or, on error, none.
    ///
    /// Errors: [`Error::BadFile`] naming the key (`params/<name>`) of a parameter that
    /// only one of the file and the store has, or that has another shape, or a
    /// non-finite value.
    pub fn restore_params(&self, params: &mut Params<F>) -> Result<()> {
        let op = "Loaded::restore_params";
        let mut updates = Vec::with_capacity(params.len());
        for id in params.ids() {
            let name = params.name(id)?;
            let k = key("params", name);
            let value = self.tensors.get(&k).ok_or_else(|| {
                bad_file(
                    op,
                    k.as_str(),
                    "the store has this parameter, the file does not",
                )
            })?;
            check_shape(op, &k, value, params.get(id)?.dim())?;
            if value.iter().any(|x| !x.is_finite()) {
                return Err(bad_file(op, k.as_str(), "non-finite value"));
            }
            updates.push((id, value));
        }
        for name in &self.meta.params {
            if params.id(name).is_none() {
                return Err(bad_file(
                    op,
                    key("params", name),
                    "the file has this parameter, the store does not",
                ));
            }
        }
        for (id, value) in updates {
            params.set(id, value.view())?;
        }
        Ok(())
    }

    /// The saved gradients, keyed to the parameters of `params` of the same names.
    ///
    /// Errors: [`Error::BadFile`] if no gradients were saved (key `grads`), or naming
    /// the key of a gradient whose parameter `params` lacks or has in another shape.
    pub fn grads(&self, params: &Params<F>) -> Result<Grads<F>> {
        let op = "Loaded::grads";
        let names = self
            .meta
            .grads
            .as_ref()
            .ok_or_else(|| bad_file(op, "grads", "the checkpoint holds no gradients"))?;
        let mut grads = Grads::new(params);
        for name in names {
            let (id, g) = self.state_of(op, params, "grads", name)?;
            grads.accumulate(id, g.view())?;
        }
        Ok(grads)
    }

    /// The saved SGD optimizer, its velocities keyed to the parameters of `params` of
    /// the same names.
    ///
    /// Errors: [`Error::BadFile`] if no SGD state was saved (key `sgd`), or naming the
    /// key of a velocity whose parameter `params` lacks or has in another shape.
    pub fn sgd(&self, params: &Params<F>) -> Result<Sgd<F>> {
        let op = "Loaded::sgd";
        let meta = self
            .meta
            .sgd
            .as_ref()
            .ok_or_else(|| bad_file(op, "sgd", "the checkpoint holds no SGD state"))?;
        let mut sgd = Sgd::new(unbits::<F>(meta.lr))
            .and_then(|s| s.with_momentum(unbits(meta.momentum)))
            .map_err(|e| bad_file(op, "sgd", e.to_string()))?;
        let mut velocities = Vec::with_capacity(meta.velocity.len());
        for name in &meta.velocity {
            velocities.push(self.state_of(op, params, "sgd/velocity", name)?);
        }
        for (id, v) in velocities {
            sgd.set_velocity(id, v.clone());
        }
        Ok(sgd)
    }

    /// The saved Adam optimizer, its step counts and moments keyed to the parameters of
    /// `params` of the same names.
    ///
    /// Errors: [`Error::BadFile`] if no Adam state was saved (key `adam`), or naming the
    /// key of a moment whose parameter `params` lacks or has in another shape.
    pub fn adam(&self, params: &Params<F>) -> Result<Adam<F>> {
        let op = "Loaded::adam";
        let meta = self
            .meta
            .adam
            .as_ref()
            .ok_or_else(|| bad_file(op, "adam", "the checkpoint holds no Adam state"))?;
        let mut adam = Adam::new(unbits::<F>(meta.lr))
            .and_then(|a| a.with_betas(unbits(meta.beta1), unbits(meta.beta2), unbits(meta.eps)))
            .map_err(|e| bad_file(op, "adam", e.to_string()))?;
        let mut moments = Vec::with_capacity(meta.steps.len());
        for (name, &t) in &meta.steps {
            let (id, m) = self.state_of(op, params, "adam/m", name)?;
            let (_, v) = self.state_of(op, params, "adam/v", name)?;
            moments.push((id, (t, m.clone(), v.clone())));
        }
        for (id, mv) in moments {
            adam.set_moments(id, mv);
        }
        Ok(adam)
    }

    /// The saved ξ sampler with survival probabilities `pi` (not saved: pass the π of
    /// the saved sampler to continue its draws exactly).
    ///
    /// Errors: [`Error::BadFile`] if no sampler was saved (key `sampler`).
    pub fn sampler(&self, pi: Pi) -> Result<XiSampler> {
        let pos = self.sampler.as_ref().ok_or_else(|| {
            bad_file(
                "Loaded::sampler",
                "sampler",
                "the checkpoint holds no sampler",
            )
        })?;
        Ok(XiSampler::at_position(Law::Randomized(pi), pos))
    }

    /// The saved sampler of windows ([`XiSampler::windows`]) with the window lengths
    /// `lengths` (not saved: pass those of the saved sampler to continue its windows
    /// exactly). For a [`Stream`](crate::bptt::Stream), see
    /// [`Stream::with_sampler`](crate::bptt::Stream::with_sampler).
    ///
    /// Errors: [`Error::BadFile`] if no sampler was saved (key `sampler`).
    pub fn windows_sampler(&self, lengths: WindowLengths) -> Result<XiSampler> {
        let pos = self.sampler.as_ref().ok_or_else(|| {
            bad_file(
                "Loaded::windows_sampler",
                "sampler",
                "the checkpoint holds no sampler",
            )
        })?;
        Ok(XiSampler::at_position(Law::Windows(lengths), pos))
    }

    /// The matrix saved under `name` ([`Checkpoint::matrix`]).
    ///
    /// Errors: [`Error::BadFile`] naming the key `state/<name>` if there is none.
    pub fn matrix(&self, name: &str) -> Result<Array2<F>> {
        let k = key("state", name);
        self.tensors
            .get(&k)
            .cloned()
            .ok_or_else(|| bad_file("Loaded::matrix", k, "no matrix of this name in the file"))
    }

    /// The tensor `prefix/name`, with the id of the parameter `name` of `params`, of
    /// its shape.
    fn state_of(
        &self,
        op: &'static str,
        params: &Params<F>,
        prefix: &str,
        name: &str,
    ) -> Result<(ParamId, &Array2<F>)> {
        let k = key(prefix, name);
        let id = params
            .id(name)
            .ok_or_else(|| bad_file(op, k.as_str(), "no parameter of this name in the store"))?;
        let value = self
            .tensors
            .get(&k)
            .ok_or_else(|| bad_file(op, k.as_str(), "missing from the file"))?;
        check_shape(op, &k, value, params.get(id)?.dim())?;
        Ok((id, value))
    }
}

fn check_shape<F>(
    op: &'static str,
    k: &str,
    value: &Array2<F>,
    shape: (usize, usize),
) -> Result<()> {
    if value.dim() == shape {
        Ok(())
    } else {
        Err(bad_file(
            op,
            k,
            format!(
                "shape {:?} in the file, {shape:?} in the store",
                value.dim()
            ),
        ))
    }
}

/// The tensor keys the lists of `meta` call for.
fn expected_keys(meta: &Meta) -> BTreeSet<String> {
    let mut want = BTreeSet::new();
    want.extend(meta.params.iter().map(|n| key("params", n)));
    if let Some(g) = &meta.grads {
        want.extend(g.iter().map(|n| key("grads", n)));
    }
    if let Some(s) = &meta.sgd {
        want.extend(s.velocity.iter().map(|n| key("sgd/velocity", n)));
    }
    if let Some(a) = &meta.adam {
        for n in a.steps.keys() {
            want.insert(key("adam/m", n));
            want.insert(key("adam/v", n));
        }
    }
    want.extend(meta.matrices.iter().map(|n| key("state", n)));
    want
}

/// The safetensors file in `bytes` and its metadata document (checksum verified).
fn read_meta<'b>(op: &'static str, bytes: &'b [u8]) -> Result<(SafeTensors<'b>, Meta)> {
    let file = |what: String| bad_file(op, "file", what);
    let (_, header) = SafeTensors::read_metadata(bytes).map_err(|e| {
        file(format!(
            "not a safetensors file (truncated or corrupted?): {e}"
        ))
    })?;
    let st = SafeTensors::deserialize(bytes)
        .map_err(|e| file(format!("not a safetensors file: {e}")))?;
    let info = header
        .metadata()
        .as_ref()
        .ok_or_else(|| bad_file(op, "__metadata__", "missing: not a timetape checkpoint"))?;
    let entry = info
        .get(META_KEY)
        .ok_or_else(|| bad_file(op, META_KEY, "missing: not a timetape checkpoint"))?;
    Ok((st, meta_of_entry(op, entry)?))
}

/// The metadata document of the entry `entry` (its checksum, a space, the JSON).
fn meta_of_entry(op: &'static str, entry: &str) -> Result<Meta> {
    let (sum, doc) = entry
        .split_once(' ')
        .ok_or_else(|| bad_file(op, META_KEY, "no checksum before the document"))?;
    if sum != format!("{:016x}", fnv1a(doc.as_bytes())) {
        return Err(bad_file(
            op,
            META_KEY,
            "checksum mismatch (the file is corrupted)",
        ));
    }
    serde_json::from_str(doc).map_err(|e| bad_file(op, META_KEY, format!("unreadable: {e}")))
}

/// Checks that `meta` is of this build's format version and of the scalar type `F`.
fn check_header<F: Scalar>(op: &'static str, meta: &Meta) -> Result<()> {
    if meta.format != FORMAT {
        return Err(bad_file(
            op,
            "format",
            format!("version {} (this build reads {FORMAT})", meta.format),
        ));
    }
    let scalar = dtype_of::<F>().1;
    if meta.scalar != scalar {
        return Err(bad_file(
            op,
            "scalar",
            format!("the file holds {} values, loaded as {scalar}", meta.scalar),
        ));
    }
    Ok(())
}

/// Checks that the tensors `meta` lists are those its other lists call for, and that
/// the file holds no tensor it does not list.
fn check_tensor_lists(op: &'static str, st: &SafeTensors<'_>, meta: &Meta) -> Result<()> {
    let expected = expected_keys(meta);
    let listed: BTreeSet<String> = meta.tensors.keys().cloned().collect();
    if let Some(k) = expected.symmetric_difference(&listed).next() {
        return Err(bad_file(
            op,
            k.as_str(),
            "the metadata's list of tensors does not match its contents",
        ));
    }
    let mut names = st.names();
    names.sort_unstable();
    for name in names {
        if !meta.tensors.contains_key(name) {
            return Err(bad_file(op, name, "a tensor the metadata does not list"));
        }
    }
    Ok(())
}

/// Every tensor `meta` lists, read from `st` and verified, by key.
fn read_tensors<F: Scalar>(
    op: &'static str,
    st: &SafeTensors<'_>,
    meta: &Meta,
) -> Result<HashMap<String, Array2<F>>> {
    let mut tensors = HashMap::with_capacity(meta.tensors.len());
    for (k, tm) in &meta.tensors {
        let view = st
            .tensor(k)
            .map_err(|_| bad_file(op, k.as_str(), "missing from the file"))?;
        tensors.insert(k.clone(), read_tensor(op, k, tm, &view)?);
    }
    Ok(tensors)
}

/// The tensor `k` of the file, checked against its metadata `tm` (dtype, shape,
/// checksum) and decoded.
fn read_tensor<F: Scalar>(
    op: &'static str,
    k: &str,
    tm: &TensorMeta,
    view: &TensorView<'_>,
) -> Result<Array2<F>> {
    let dtype = dtype_of::<F>().0;
    if view.dtype() != dtype {
        return Err(bad_file(
            op,
            k,
            format!("dtype {:?}, expected {dtype:?}", view.dtype()),
        ));
    }
    if view.shape() != tm.shape {
        return Err(bad_file(
            op,
            k,
            format!("shape {:?}, the metadata says {:?}", view.shape(), tm.shape),
        ));
    }
    if format!("{:016x}", fnv1a(view.data())) != tm.fnv1a {
        return Err(bad_file(op, k, "checksum mismatch (the file is corrupted)"));
    }
    decode(view.data(), (tm.shape[0], tm.shape[1]))
        .ok_or_else(|| bad_file(op, k, "size does not match the shape"))
}

/// The ξ sampler's position saved as `s`.
fn sampler_position(op: &'static str, s: &SamplerMeta) -> Result<XiPosition> {
    let bad = |what: &str| bad_file(op, "sampler", what.to_string());
    Ok(XiPosition {
        seed: unhex32(&s.seed).ok_or_else(|| bad("bad seed"))?,
        stream: s.stream,
        word_pos: s.word_pos.parse().map_err(|_| bad("bad word position"))?,
        t: usize::try_from(s.t).map_err(|_| bad("t out of range"))?,
        m: usize::try_from(s.m).map_err(|_| bad("m out of range"))?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a_matches_the_reference_values() {
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a(b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn encode_and_decode_are_inverse_bit_for_bit() {
        let a = ndarray::array![[0.1f32, -0.0, f32::MIN_POSITIVE / 2.0], [1e30, -3.5, 7.0]];
        assert_eq!(decode::<f32>(&encode(a.view()), (2, 3)), Some(a.clone()));
        let b = a.mapv(|x| f64::from(x) / 3.0);
        assert_eq!(decode::<f64>(&encode(b.view()), (2, 3)), Some(b));
        assert_eq!(decode::<f64>(&[0u8; 7], (1, 1)), None);
    }
}
