//! The tape: a Wengert list of nodes in creation order, and the one reverse loop.
//!
//! A node is an [`Op`](crate::ops) (plain data: parent indices and constants), its value,
//! and a `needs_grad` bit set at record time. Parents always have smaller indices than
//! their children, so creation order is a topological order: backward is a single loop
//! from the last node to the first, with no sort, no hash map and no recursion. A long
//! unroll is a deep graph; this loop does not care how deep.
//!
//! Buffers are recycled: [`Tape::clear`] moves every value and adjoint into a free list
//! keyed by capacity, and the next forward pass takes its buffers from there, so a
//! training loop reaches a steady state in which the tape allocates nothing. Buffers
//! that no request of a whole segment wanted are dropped at the next clear. The copies
//! of parameters are kept aside instead, for the next registration of the same value
//! ([`Tape::param`]).

use crate::error::{Error, Result};
use crate::ops::Op;
use crate::params::{first_non_finite, Grads, ParamId, Params};
use crate::scalar::Scalar;
use ndarray::{Array2, ArrayView2, Zip};
use std::sync::atomic::{AtomicU64, Ordering};

static NEXT_TAPE: AtomicU64 = AtomicU64::new(1);

/// A handle to a node of a [`Tape`]: small and `Copy`.
///
/// It records which tape made it and in which generation (the tape's generation moves
/// on at every [`Tape::clear`]), so a `Var` from another tape, or from before a clear,
/// is rejected with [`Error::ForeignVar`] or [`Error::StaleVar`] instead of silently
/// pointing at the wrong node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Var {
    pub(crate) tape: u64,
    pub(crate) generation: u64,
    pub(crate) index: usize,
}

impl Var {
    /// Position of the node on its tape (creation order).
    pub fn index(self) -> usize {
        self.index
    }
}

/// Size statistics of a tape, for memory benchmarks and tests of streaming.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TapeStats {
    /// Nodes on the tape now.
    pub nodes: usize,
    /// The largest number of nodes the tape has held since it was made (or since
    /// [`Tape::reset_peak`]).
    pub peak_nodes: usize,
    /// Bytes of matrix data the tape holds now: values, adjoints, saved intermediates,
    /// the copies of parameters kept for their next registration and the free list of
    /// recycled buffers.
    pub bytes: usize,
    /// The largest value of `bytes` seen at the end of a backward pass or a clear.
    pub peak_bytes: usize,
}

/// A free buffer and the epoch in which it was given back to the pool.
type FreeBuffer<F> = (u64, Vec<F>);

/// Free list of matrix storage keyed by capacity.
///
/// A request for n = r×c entries takes the smallest free buffer whose capacity is in
/// `[n, 2n]` (bounded best fit) and reshapes it, so segments of varying length
/// (randomized truncation) reuse each other's storage. A request that no free buffer
/// fits, while a smaller free buffer exists, replaces the largest smaller one (it is
/// dropped and a buffer of n entries allocated): a miss never adds to the number of
/// buffers the pool holds when one of them could be recycled. At every clear, the
/// buffers that stayed free through the whole segment that just ended (no request
/// wanted them) are dropped. So a small request never pins a large buffer, the storage
/// of shorter segments becomes that of a longer one instead of staying beside it, and
/// what the pool holds follows the segments being run: memory follows the longest
/// segment, not T.
///
/// The capacities are few (one per distinct buffer size of a segment), so they sit in a
/// short sorted `Vec` scanned linearly; emptied lists stay, so a steady state neither
/// inserts nor removes.
#[derive(Debug)]
pub(crate) struct Pool<F> {
    /// Per capacity, the free buffers with the epoch in which each was given back.
    free: Vec<(usize, Vec<FreeBuffer<F>>)>,
    bytes: usize,
    /// Moves on at every [`Pool::trim`] (a tape's `clear`) that follows a request.
    epoch: u64,
    /// Whether a buffer was asked for in this epoch.
    asked: bool,
}

impl<F> Default for Pool<F> {
    fn default() -> Self {
        Pool {
            free: Vec::new(),
            bytes: 0,
            epoch: 0,
            asked: false,
        }
    }
}

impl<F: Scalar> Pool<F> {
    /// A buffer of the given shape; its contents are arbitrary (the caller overwrites it).
    pub(crate) fn take(&mut self, shape: (usize, usize)) -> Array2<F> {
        self.asked = true;
        if let Some(a) = self.try_take(shape) {
            return a;
        }
        let n = shape.0 * shape.1;
        // Recycle the largest smaller buffer: drop it, so that the new one replaces it.
        if let Some((cap, list)) = self
            .free
            .iter_mut()
            .rev()
            .find(|(cap, list)| *cap < n && !list.is_empty())
        {
            list.pop();
            self.bytes -= *cap * std::mem::size_of::<F>();
        }
        Array2::zeros(shape)
    }

    /// A free buffer of the given shape, if one fits (capacity in `[n, 2n]`; no
    /// allocation).
    pub(crate) fn try_take(&mut self, shape: (usize, usize)) -> Option<Array2<F>> {
        self.asked = true;
        let n = shape.0 * shape.1;
        let (cap, list) = self
            .free
            .iter_mut()
            .find(|(cap, list)| *cap >= n && !list.is_empty())?;
        if *cap > n.saturating_mul(2) {
            return None;
        }
        let (_, mut v) = list.pop()?;
        self.bytes -= *cap * std::mem::size_of::<F>();
        v.resize(n, F::zero());
        ndarray::Array1::from_vec(v)
            .into_shape_with_order(shape)
            .ok()
    }

    pub(crate) fn give(&mut self, a: Array2<F>) {
        if a.is_empty() {
            return;
        }
        let (v, _) = a.into_raw_vec_and_offset();
        let cap = v.capacity();
        self.bytes += cap * std::mem::size_of::<F>();
        let entry = (self.epoch, v);
        match self.free.binary_search_by_key(&cap, |(c, _)| *c) {
            Ok(i) => self.free[i].1.push(entry),
            Err(i) => self.free.insert(i, (cap, vec![entry])),
        }
    }

    /// Drops the buffers that stayed free through the whole epoch that ends now (no
    /// request of the last segment wanted them), and starts a new epoch. An epoch in
    /// which nothing was asked for (two clears in a row) says nothing about what the
    /// next segment wants: it keeps every buffer and goes on.
    pub(crate) fn trim(&mut self) {
        if !std::mem::take(&mut self.asked) {
            return;
        }
        let (epoch, sz) = (self.epoch, std::mem::size_of::<F>());
        let mut dropped = 0;
        for (cap, list) in &mut self.free {
            // Each list is a stack whose entries were pushed in non-decreasing epochs and
            // popped from the top: the idle ones are a prefix.
            let idle = list.partition_point(|(since, _)| *since < epoch);
            list.drain(..idle);
            dropped += idle * *cap * sz;
        }
        self.bytes -= dropped;
        self.epoch += 1;
    }
}

/// A reverse-mode autodiff tape over 2-D `ndarray` matrices (a Wengert list).
///
/// Values are batch-major: a batch of B vectors of width n is a B×n matrix, a single
/// vector a 1×n row. Every op checks its operands and returns a [`Result`]; none panics
/// on user input.
///
/// ```
/// use ndarray::array;
/// use timetape::{Params, Tape};
///
/// // y = tanh(x W), loss = Σ y
/// let mut params = Params::<f64>::new();
/// let w = params.add("W", array![[0.1, 0.2], [0.3, 0.4]])?;
/// let mut tape = Tape::new();
/// let x = tape.constant(array![[1.0, -1.0]])?;
/// let wv = tape.param(&params, w)?;
/// let xw = tape.matmul(x, wv)?;
/// let y = tape.tanh(xw)?;
/// let loss = tape.sum(y)?;
/// let grads = tape.backward(loss)?;
/// // ∂loss/∂W_ij = x_i (1 − y_j²)
/// let yv = tape.value(y)?.to_owned();
/// let g = grads.get(w).unwrap();
/// assert!((g[[1, 0]] - (-1.0) * (1.0 - yv[[0, 0]].powi(2))).abs() < 1e-15);
/// # Ok::<(), timetape::Error>(())
/// ```
#[derive(Debug)]
pub struct Tape<F: Scalar> {
    pub(crate) id: u64,
    pub(crate) generation: u64,
    pub(crate) ops: Vec<Op<F>>,
    pub(crate) values: Vec<Array2<F>>,
    pub(crate) needs_grad: Vec<bool>,
    /// Nodes whose adjoint is kept when adjoints are released.
    retained: Vec<bool>,
    release: bool,
    check_finite: bool,
    flush_subnormals: bool,
    pub(crate) adjoints: Vec<Option<Array2<F>>>,
    /// The one adjoint being written step by step from its last rows up, and the weight
    /// gradient deferred on its rows (`ops::Ctx::rows_slot`, `ops::Ctx::defer_at_b`).
    pub(crate) row_blocks: Option<crate::ops::RowBlocks<F>>,
    /// The side lists that ops index into (concat parents, labels, weights, saved
    /// intermediates).
    pub(crate) side: crate::ops::Side<F>,
    pub(crate) pool: Pool<F>,
    /// Thin weight-gradient contributions gathered during a backward pass.
    pub(crate) staging: crate::ops::Staging<F>,
    /// Column panels of right factors used again and again in forward products.
    pub(crate) panels: crate::ops::PanelCopies<F>,
    /// Column panels of the transposes of right factors used again and again in
    /// backward rules.
    pub(crate) transposes: crate::ops::PanelCopies<F>,
    /// Scratch of the products by panels.
    pub(crate) panel_scratch: Vec<F>,
    /// The parameters bound on this tape: node, key and version of the value copied.
    bound: Vec<(usize, u64, u64)>,
    /// Copies of parameters bound before the last clear, by (key, version): the next
    /// `param` of an unchanged parameter takes its copy from here instead of copying
    /// and checking the store's value again.
    param_cache: Vec<(u64, u64, Array2<F>)>,
    peak_nodes: usize,
    peak_bytes: usize,
}

impl<F: Scalar> Default for Tape<F> {
    fn default() -> Self {
        Self::new()
    }
}

impl<F: Scalar> Tape<F> {
    /// An empty tape.
    pub fn new() -> Self {
        Tape {
            id: NEXT_TAPE.fetch_add(1, Ordering::Relaxed),
            generation: 0,
            ops: Vec::new(),
            values: Vec::new(),
            needs_grad: Vec::new(),
            retained: Vec::new(),
            release: false,
            check_finite: false,
            flush_subnormals: false,
            adjoints: Vec::new(),
            row_blocks: None,
            side: Default::default(),
            pool: Pool::default(),
            staging: Default::default(),
            panels: Default::default(),
            transposes: Default::default(),
            panel_scratch: Vec::new(),
            bound: Vec::new(),
            param_cache: Vec::new(),
            peak_nodes: 0,
            peak_bytes: 0,
        }
    }

    /// Empties the tape but keeps its allocations: node storage keeps its capacity and
    /// every matrix buffer goes to a free list that later ops draw from (buffers that
    /// stayed in the free list since the previous clear, unwanted, are dropped), except
    /// the copies of parameters, which are kept for their next registration
    /// ([`Tape::param`]). Every `Var` of the tape becomes stale.
    pub fn clear(&mut self) {
        self.note_peak_bytes();
        self.pool.trim();
        self.ops.clear();
        self.needs_grad.clear();
        self.retained.clear();
        // Copies of parameters not bound again since the last clear are freed, those
        // bound on this tape kept for the next binding (one per value). A clear of an
        // empty tape (a second clear in a row) keeps what is kept.
        if !self.values.is_empty() {
            for (_, _, v) in self.param_cache.drain(..) {
                self.pool.give(v);
            }
        }
        for (node, key, version) in self.bound.drain(..) {
            let v = std::mem::take(&mut self.values[node]);
            if self
                .param_cache
                .iter()
                .any(|e| (e.0, e.1) == (key, version))
            {
                self.pool.give(v);
            } else {
                self.param_cache.push((key, version, v));
            }
        }
        for v in self.values.drain(..) {
            self.pool.give(v);
        }
        for a in self.adjoints.drain(..).flatten() {
            self.pool.give(a);
        }
        if let Some(rb) = self.row_blocks.take() {
            rb.drop_into(&mut self.pool);
        }
        self.side.clear(&mut self.pool);
        self.panels.clear(&mut self.pool);
        self.transposes.clear(&mut self.pool);
        self.generation += 1;
    }

    /// Drops the free list of recycled buffers (after a run with unusually long segments,
    /// say), the kept copies of parameters and the scratch of the products by column
    /// panels, returning their memory; later ops allocate again as needed.
    pub fn free_buffers(&mut self) {
        self.pool = Pool::default();
        self.param_cache = Vec::new();
        self.panel_scratch = Vec::new();
    }

    /// Number of nodes on the tape.
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    /// True if the tape has no node.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// Size statistics: nodes now and at peak, bytes held now and at peak.
    pub fn stats(&self) -> TapeStats {
        TapeStats {
            nodes: self.ops.len(),
            peak_nodes: self.peak_nodes,
            bytes: self.bytes(),
            peak_bytes: self.peak_bytes.max(self.bytes()),
        }
    }

    /// Forgets the peaks recorded in [`TapeStats`].
    pub fn reset_peak(&mut self) {
        self.peak_nodes = self.ops.len();
        self.peak_bytes = self.bytes();
    }

    fn bytes(&self) -> usize {
        let sz = std::mem::size_of::<F>();
        let held: usize = self.values.iter().map(|a| a.len()).sum::<usize>()
            + self
                .adjoints
                .iter()
                .flatten()
                .map(|a| a.len())
                .sum::<usize>()
            + self.side.saved.iter().map(|a| a.len()).sum::<usize>()
            + self.panels.len()
            + self.transposes.len()
            + self.panel_scratch.capacity()
            + self
                .param_cache
                .iter()
                .map(|(_, _, a)| a.len())
                .sum::<usize>();
        held * sz + self.pool.bytes
    }

    fn note_peak_bytes(&mut self) {
        self.peak_bytes = self.peak_bytes.max(self.bytes());
    }

    /// Checks that `v` belongs to this tape and this generation; gives its index.
    pub(crate) fn idx(&self, op: &'static str, v: Var) -> Result<usize> {
        if v.tape != self.id {
            return Err(Error::ForeignVar { op });
        }
        if v.generation != self.generation || v.index() >= self.ops.len() {
            return Err(Error::StaleVar { op });
        }
        Ok(v.index())
    }

    /// Records a node. `needs_grad` says whether an adjoint is computed for it. With
    /// [`Tape::set_check_finite`], a non-finite value is refused, naming the op.
    pub(crate) fn push(&mut self, op: Op<F>, value: Array2<F>, needs_grad: bool) -> Result<Var> {
        if self.check_finite {
            if let Some(at) = crate::params::first_non_finite(value.iter()) {
                self.pool.give(value);
                return Err(Error::NonFinite {
                    op: op.name(),
                    what: format!("entry {at} of the output of node {}", self.ops.len()),
                });
            }
        }
        let index = self.ops.len();
        self.ops.push(op);
        self.values.push(value);
        self.needs_grad.push(needs_grad);
        self.retained.push(false);
        self.peak_nodes = self.peak_nodes.max(self.ops.len());
        Ok(Var {
            tape: self.id,
            generation: self.generation,
            index,
        })
    }

    /// The value of a node.
    pub fn value(&self, v: Var) -> Result<ArrayView2<'_, F>> {
        let i = self.idx("value", v)?;
        Ok(self.values[i].view())
    }

    /// The value of a 1×1 node as a scalar (a loss).
    pub fn scalar(&self, v: Var) -> Result<F> {
        let i = self.idx("scalar", v)?;
        let a = &self.values[i];
        if a.dim() != (1, 1) {
            return Err(Error::NonScalarLoss {
                op: "scalar",
                shape: a.dim(),
            });
        }
        Ok(a[[0, 0]])
    }

    /// The shape (rows, cols) of a node's value.
    pub fn shape(&self, v: Var) -> Result<(usize, usize)> {
        let i = self.idx("shape", v)?;
        Ok(self.values[i].dim())
    }

    fn check_input(op: &'static str, a: &ArrayView2<'_, F>) -> Result<()> {
        if a.is_empty() {
            return Err(Error::EmptyInput {
                op,
                what: "matrix with no elements",
            });
        }
        if let Some(at) = crate::params::first_non_finite(a.iter()) {
            return Err(Error::NonFinite {
                op,
                what: format!("entry {at} of the input"),
            });
        }
        Ok(())
    }

    /// An input: a leaf that gradients do not flow into.
    ///
    /// Errors: [`Error::EmptyInput`] for a matrix with no elements,
    /// [`Error::NonFinite`] for a NaN or infinite entry.
    pub fn constant(&mut self, value: Array2<F>) -> Result<Var> {
        Self::check_input("constant", &value.view())?;
        // The caller's buffer joins the free list at the next clear: retire a free one of
        // the same shape in exchange, or a loop of `constant` calls grows the pool forever.
        drop(self.pool.try_take(value.dim()));
        self.push(Op::Leaf, value, false)
    }

    /// An input copied from a view into a recycled buffer (no allocation in steady state).
    ///
    /// Errors: as [`Tape::constant`].
    pub fn constant_view(&mut self, value: ArrayView2<'_, F>) -> Result<Var> {
        Self::check_input("constant_view", &value)?;
        let mut buf = self.pool.take(value.dim());
        buf.assign(&value);
        self.push(Op::Leaf, buf, false)
    }

    /// A leaf whose adjoint is computed and can be read with [`Tape::adjoint`] after a
    /// backward pass, though it is not a parameter (for instance the hidden state at the
    /// start of a segment, whose ∂L/∂h is passed on to the previous segment).
    ///
    /// Errors: as [`Tape::constant`].
    pub fn variable(&mut self, value: ArrayView2<'_, F>) -> Result<Var> {
        Self::check_input("variable", &value)?;
        let mut buf = self.pool.take(value.dim());
        buf.assign(&value);
        self.push(Op::Leaf, buf, true)
    }

    /// Registers a parameter of `params` on the tape (its value is copied into a recycled
    /// buffer). Its gradient is reported by [`Tape::backward`] under `id`; registering it
    /// several times, or using it many times, sums the contributions.
    ///
    /// The copy outlives [`Tape::clear`]: registering the same parameter again after a
    /// clear, while its value has not changed (no [`Params::set`] or
    /// [`Params::get_mut`] since), takes that copy back instead of copying and checking
    /// the value again. Segments of a truncated run re-register every weight; this keeps
    /// that from costing a copy of each weight per segment.
    ///
    /// Errors: [`Error::ForeignParam`] if `id` is not from `params`;
    /// [`Error::NonFinite`] if an entry of the parameter is NaN or infinite, and
    /// [`Error::EmptyInput`] if it has no elements (both only possible through
    /// [`Params::get_mut`]), naming the parameter.
    pub fn param(&mut self, params: &Params<F>, id: ParamId) -> Result<Var> {
        let i = params.check("param", id)?;
        let version = params.version(i);
        let cached = self
            .param_cache
            .iter()
            .position(|&(k, v, _)| (k, v) == (id.key, version));
        let buf = match cached {
            // The copy of this very value, checked when it was made.
            Some(at) => self.param_cache.swap_remove(at).2,
            None => {
                params.check_finite("param", id)?;
                let p = params.get(id)?;
                // A kept copy of an older value of this parameter is overwritten rather
                // than held beside the new one.
                let stale = self
                    .param_cache
                    .iter()
                    .position(|(k, _, v)| *k == id.key && v.dim() == p.dim());
                let mut buf = match stale {
                    Some(at) => self.param_cache.swap_remove(at).2,
                    None => self.pool.take(p.dim()),
                };
                buf.assign(p);
                buf
            }
        };
        let node = self.values.len();
        let var = self.push(Op::Param(id), buf, true)?;
        self.bound.push((node, id.key, version));
        Ok(var)
    }

    /// Reverse pass from a 1×1 loss (seed 1). Returns the gradient of every parameter the
    /// loss reaches.
    ///
    /// Errors: [`Error::NonScalarLoss`] if `loss` is not 1×1; foreign or stale `Var`.
    pub fn backward(&mut self, loss: Var) -> Result<Grads<F>> {
        let mut grads = Grads::default();
        self.backward_into(loss, &mut grads)?;
        Ok(grads)
    }

    /// Like [`Tape::backward`], but adds the gradients into `grads` (which keeps its
    /// allocations across steps).
    pub fn backward_into(&mut self, loss: Var, grads: &mut Grads<F>) -> Result<()> {
        let i = self.idx("backward", loss)?;
        if self.values[i].dim() != (1, 1) {
            return Err(Error::NonScalarLoss {
                op: "backward",
                shape: self.values[i].dim(),
            });
        }
        let one = ndarray::arr2(&[[F::one()]]);
        self.backward_with_into(&[(loss, one.view())], grads)
    }

    /// Reverse pass seeded with arbitrary output adjoints: a vector–Jacobian product.
    /// Seeds on the same node add up. Used to pass ∂L/∂h from one segment to the next
    /// (checkpointing, streaming).
    ///
    /// ```
    /// use ndarray::array;
    /// use timetape::{Params, Tape};
    ///
    /// let mut params = Params::<f64>::new();
    /// let w = params.add("w", array![[2.0, 0.0], [0.0, 3.0]])?;
    /// let mut tape = Tape::new();
    /// let h = tape.variable(array![[1.0, 1.0]].view())?;
    /// let wv = tape.param(&params, w)?;
    /// let y = tape.matmul(h, wv)?;
    /// // seed ∂L/∂y = [1, 10]: ∂L/∂h = [1, 10] Wᵀ = [2, 30]
    /// let grads = tape.backward_with(&[(y, array![[1.0, 10.0]])])?;
    /// assert_eq!(tape.adjoint(h)?.unwrap(), array![[2.0, 30.0]]);
    /// assert_eq!(grads.get(w).unwrap(), array![[1.0, 10.0], [1.0, 10.0]]);
    /// # Ok::<(), timetape::Error>(())
    /// ```
    pub fn backward_with(&mut self, seeds: &[(Var, Array2<F>)]) -> Result<Grads<F>> {
        let views: Vec<(Var, ArrayView2<'_, F>)> =
            seeds.iter().map(|(v, a)| (*v, a.view())).collect();
        let mut grads = Grads::default();
        self.backward_with_into(&views, &mut grads)?;
        Ok(grads)
    }

    /// Like [`Tape::backward_with`], adding into `grads`.
    pub fn backward_with_into(
        &mut self,
        seeds: &[(Var, ArrayView2<'_, F>)],
        grads: &mut Grads<F>,
    ) -> Result<()> {
        let top = self.check_seeds(seeds)?;
        self.staging.reset();
        // Recycle the adjoints of an earlier pass.
        for a in self.adjoints.drain(..).flatten() {
            self.pool.give(a);
        }
        self.adjoints.resize_with(self.ops.len(), || None);
        if let Some(rb) = self.row_blocks.take() {
            rb.drop_into(&mut self.pool);
        }
        self.seed(seeds);
        let swept = self.sweep(top, grads);
        let (adjoints, pool) = (&mut self.adjoints, &mut self.pool);
        crate::ops::settle_rows(adjoints, pool, &mut self.row_blocks, None);
        swept?;
        self.note_peak_bytes();
        // One check of what is handed out: an overflow in the sweep, in the sum over a
        // parameter's registrations, or in gradients added into earlier ones.
        grads.check_finite("backward")
    }

    /// Checks every seed (a live `Var` of this tape, the shape of its node, finite, and
    /// a finite node value to start from); gives the highest seeded node.
    fn check_seeds(&self, seeds: &[(Var, ArrayView2<'_, F>)]) -> Result<usize> {
        if seeds.is_empty() {
            return Err(Error::EmptyInput {
                op: "backward_with",
                what: "no seeds",
            });
        }
        let mut top = 0;
        for (v, a) in seeds {
            let i = self.idx("backward_with", *v)?;
            if self.values[i].dim() != a.dim() {
                return Err(Error::ShapeMismatch {
                    op: "backward_with",
                    lhs: self.values[i].dim(),
                    rhs: a.dim(),
                });
            }
            if first_non_finite(a.iter()).is_some() {
                return Err(Error::NonFinite {
                    op: "backward_with",
                    what: format!("seed adjoint of node {i}"),
                });
            }
            if let Some(at) = first_non_finite(self.values[i].iter()) {
                return Err(Error::NonFinite {
                    op: "backward",
                    what: format!(
                        "entry {at} of node {i} ({}), which the pass starts from: \
                         an overflow in the forward pass (Tape::set_check_finite finds the op)",
                        self.ops[i].name()
                    ),
                });
            }
            top = top.max(i);
        }
        Ok(top)
    }

    /// Writes (or adds, for a node seeded twice) the checked seeds into the adjoints of
    /// the nodes that need a gradient.
    fn seed(&mut self, seeds: &[(Var, ArrayView2<'_, F>)]) {
        for (v, a) in seeds {
            let i = v.index();
            if !self.needs_grad[i] {
                continue;
            }
            match &mut self.adjoints[i] {
                Some(acc) => Zip::from(acc).and(a).for_each(|x, &y| *x = *x + y),
                slot @ None => {
                    let mut buf = self.pool.take(a.dim());
                    buf.assign(a);
                    *slot = Some(buf);
                }
            }
        }
    }

    /// The reverse loop from node `top` down to the first: each node's rule runs once its
    /// adjoint is complete; parameters add theirs into `grads`.
    fn sweep(&mut self, top: usize, grads: &mut Grads<F>) -> Result<()> {
        for i in (0..=top).rev() {
            // Every contribution to node i is in: an adjoint written by row blocks gets
            // zeros in the rows none of them reached.
            let (adjoints, pool) = (&mut self.adjoints, &mut self.pool);
            crate::ops::settle_rows(adjoints, pool, &mut self.row_blocks, Some(i));
            crate::ops::flush_staged(self, i)?;
            if !self.needs_grad[i] || self.adjoints[i].is_none() {
                continue;
            }
            if let Op::Param(id) = self.ops[i] {
                if let Some(g) = &self.adjoints[i] {
                    grads.accumulate(id, g.view())?;
                }
                continue;
            }
            if self.flush_subnormals {
                flush_subnormal(self.adjoints[i].as_mut());
            }
            crate::ops::backward_node(self, i)?;
            let keep = !self.release
                || self.retained[i]
                || matches!(self.ops[i], Op::Leaf | Op::Param(_) | Op::Detach);
            if !keep {
                if let Some(a) = self.adjoints[i].take() {
                    self.pool.give(a);
                }
            }
        }
        Ok(())
    }

    /// Sets to zero the entries of every adjoint below the smallest normal number
    /// (`|x| < F::min_positive_value()`: 1.2e-38 for f32, 2.2e-308 for f64) before it is
    /// propagated (`true`), or leaves them (`false`, the default). Arithmetic on
    /// subnormal numbers is slow on most processors, and the adjoints of a long,
    /// contractive unroll in f32 pass through the subnormal range: full BPTT of a tanh
    /// RNN over 1000 steps with a last-step loss ran 13× slower for it on this project's
    /// machine (`examples/subnormals.rs`). The change to the gradient is below the
    /// smallest normal number in every entry it touches. Costs one pass over each
    /// adjoint. (The processor's flush-to-zero mode would need code this crate does not
    /// allow itself, hence the pass in the sweep.)
    pub fn set_flush_subnormals(&mut self, flush: bool) {
        self.flush_subnormals = flush;
    }

    /// Frees the adjoint of every intermediate node as soon as its backward rule has run
    /// (`true`), or keeps them all for [`Tape::adjoint`] (`false`, the default). Leaves,
    /// parameters, [`Tape::detach`] nodes and nodes marked with [`Tape::retain_grad`]
    /// always keep theirs. Releasing lowers the peak memory of a backward pass: only the
    /// adjoints on the current frontier of the reverse sweep are alive.
    pub fn set_release_adjoints(&mut self, release: bool) {
        self.release = release;
    }

    /// Checks the output of every op recorded from now on (`true`) and refuses a NaN or
    /// infinite one with [`Error::NonFinite`] naming the op and the node: the way to find
    /// where a non-finite value first arose (an overflow: inputs, parameters and seeds
    /// are always checked, so nothing else can start one). Off by default: it costs one
    /// pass over every output. Without it, a non-finite value that reaches the loss or a
    /// gradient is still reported by the backward pass, without naming the op.
    ///
    /// ```
    /// use ndarray::array;
    /// use timetape::{Error, Tape};
    ///
    /// let mut tape = Tape::<f64>::new();
    /// tape.set_check_finite(true);
    /// let x = tape.constant(array![[800.0]])?;
    /// let err = tape.exp(x).unwrap_err(); // e^800 overflows
    /// assert!(matches!(err, Error::NonFinite { op: "exp", .. }));
    /// # Ok::<(), Error>(())
    /// ```
    pub fn set_check_finite(&mut self, check: bool) {
        self.check_finite = check;
    }

    /// Keeps the adjoint of `v` after a backward pass even when adjoints are released.
    pub fn retain_grad(&mut self, v: Var) -> Result<()> {
        let i = self.idx("retain_grad", v)?;
        self.retained[i] = true;
        Ok(())
    }

    /// The adjoint ∂L/∂v of a node after the last backward pass; `None` if the loss does
    /// not reach it, it is a constant, or its adjoint was released
    /// ([`Tape::set_release_adjoints`]).
    pub fn adjoint(&self, v: Var) -> Result<Option<ArrayView2<'_, F>>> {
        let i = self.idx("adjoint", v)?;
        Ok(self
            .adjoints
            .get(i)
            .and_then(|a| a.as_ref())
            .map(|a| a.view()))
    }
}

/// Zeroes the subnormal entries of an adjoint ([`Tape::set_flush_subnormals`]).
fn flush_subnormal<F: Scalar>(adjoint: Option<&mut Array2<F>>) {
    if let Some(a) = adjoint {
        let tiny = F::min_positive_value();
        a.mapv_inplace(|x| if x.abs() < tiny { F::zero() } else { x });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array2;

    /// The kept copy of an unchanged parameter is taken back as it is, not copied again:
    /// a mark written into the kept copy (which no public path can do) shows up in the
    /// registered value, also after a second clear in a row. Once the value changes, the
    /// store's value is copied (into the same buffer) and the mark is gone.
    #[test]
    fn an_unchanged_parameter_takes_back_its_kept_copy_without_copying() -> Result<()> {
        let mut params = Params::<f64>::new();
        let w = params.add("W", Array2::from_elem((3, 4), 0.5))?;
        let mut tape = Tape::new();
        tape.param(&params, w)?;
        tape.clear();
        tape.clear();
        assert_eq!(tape.param_cache.len(), 1);
        tape.param_cache[0].2[[1, 2]] = 99.0;
        let again = tape.param(&params, w)?;
        assert!(tape.param_cache.is_empty());
        assert_eq!(tape.value(again)?[[1, 2]], 99.0);
        // Registered twice: one copy kept per value.
        tape.param(&params, w)?;
        tape.clear();
        assert_eq!(tape.param_cache.len(), 1);
        let ptr = tape.param_cache[0].2.as_ptr();
        params.get_mut(w)?[[0, 0]] = 0.25;
        let changed = tape.param(&params, w)?;
        let v = tape.value(changed)?;
        assert_eq!((v.as_ptr(), v[[1, 2]], v[[0, 0]]), (ptr, 0.5, 0.25));
        Ok(())
    }

    /// `Workspace::run` clears its tape on entry and again before recording the segment.
    /// The second clear follows no request, so it must not count as an epoch in which
    /// the adjoints given back by the last backward pass went unwanted: before this,
    /// it dropped them and every run allocated (and page-faulted) them again.
    #[test]
    fn two_clears_in_a_row_keep_the_buffers_the_next_recording_wants() -> Result<()> {
        let mut tape = Tape::<f64>::new();
        let record = |tape: &mut Tape<f64>| -> Result<()> {
            tape.set_release_adjoints(true);
            let x = tape.variable(Array2::from_elem((64, 64), 0.5).view())?;
            let y = tape.tanh(x)?;
            let z = tape.tanh(y)?;
            let loss = tape.sum(z)?;
            tape.backward(loss)?;
            Ok(())
        };
        record(&mut tape)?;
        tape.clear();
        let held = tape.pool.bytes;
        tape.clear();
        assert_eq!(tape.pool.bytes, held, "the second clear dropped buffers");
        Ok(())
    }
}
