//! The ops of the tape, one file per family, each op's forward and backward rule side
//! by side.
//!
//! `Op` is plain data (parent indices and constants); `backward_node` is the one
//! exhaustive `match` that dispatches to the rules. There is no wildcard arm: an op
//! without a backward rule does not compile.
//!
//! Accumulation convention: the first contribution to a parent's adjoint *writes* the
//! buffer (which comes from the free list with arbitrary contents), later ones *add*.
//! Every rule receives `fresh` to tell which; nothing is zero-filled only to be added to.

pub(crate) mod activation;
pub(crate) mod control;
pub(crate) mod elementwise;
pub(crate) mod gates;
pub(crate) mod gather;
pub(crate) mod linalg;
pub(crate) mod loss;
pub(crate) mod reduce;
pub(crate) mod shape;

pub use activation::Activation;
pub(crate) use activation::Unary;
pub use elementwise::Binary;
pub use linalg::RowsOf;
pub use loss::Reduction;
pub use shape::Along;

use crate::error::{Error, Result};
pub(crate) use crate::kernels::rows_into;
use crate::kernels::{gemm_onto, gemm_panels, Panels, Start, Write};
use crate::params::ParamId;
use crate::scalar::Scalar;
use crate::tape::{Pool, Tape};
use ndarray::{Array2, ArrayView2, Axis, Slice, Zip};

/// One recorded operation: what it was and which nodes it read (indices into the tape).
#[derive(Debug, Clone, Copy)]
pub(crate) enum Op<F> {
    /// A constant or a variable: nothing to propagate to.
    Leaf,
    /// A registered parameter: its adjoint goes into `Grads`.
    Param(ParamId),
    MatMul(usize, usize),
    /// `φ(a b + c)`: the fused affine op.
    Affine {
        a: usize,
        b: usize,
        c: Option<(usize, linalg::Addend)>,
        act: Activation,
    },
    Transpose(usize),
    Binary(Binary, usize, usize),
    Unary(Unary<F>, usize),
    /// Sum of all entries times a factor (1 for `sum`, 1/n for `mean`).
    Sum(usize, F),
    /// Concatenation of `lists[start..start + len]` along `axis`.
    Concat {
        axis: Along,
        start: usize,
        len: usize,
    },
    /// Rows or columns `start..start + (output extent)` of the parent.
    Slice {
        axis: Along,
        parent: usize,
        start: usize,
    },
    SoftmaxXent(loss::XentOp<F>),
    BceWithLogits(loss::BceOp<F>),
    SquaredError(loss::SquaredErrorOp<F>),
    /// Rows of `table` picked by the ids `labels[ids..ids + (output rows)]`.
    GatherRows {
        table: usize,
        ids: usize,
    },
    /// One fused LSTM step: gate pre-activations and the state `[h c]`.
    LstmCell {
        a: usize,
        state: usize,
        saved: usize,
    },
    /// One fused LSTM step with its product: the input part (node, first row), `W_h`,
    /// the bias, the state `[h c]`.
    LstmStep {
        u: (usize, usize),
        w: usize,
        b: Option<usize>,
        state: usize,
        saved: usize,
    },
    /// One fused GRU step: input part (node, first row), state part and the state `h`.
    GruCell {
        u: (usize, usize),
        s: usize,
        h: usize,
        saved: usize,
    },
    /// A detached copy: backward stops here.
    Detach,
    ScaleGrad(usize, F),
    /// `scale_grad` with one factor per row, `side.weights[at..at + rows]`.
    ScaleGradRows {
        a: usize,
        at: usize,
    },
}

impl<F: Scalar> Op<F> {
    /// The name of the op, as its errors give it.
    pub(crate) fn name(&self) -> &'static str {
        match self {
            Op::Leaf => "constant",
            Op::Param(_) => "param",
            Op::MatMul(..) => "matmul",
            Op::Affine { .. } => "affine",
            Op::Transpose(_) => "transpose",
            Op::Binary(kind, ..) => kind.name(),
            Op::Unary(kind, _) => kind.name(),
            Op::Sum(..) => "sum",
            Op::Concat { .. } => "concat",
            Op::Slice { .. } => "slice",
            Op::SoftmaxXent(_) => "softmax_cross_entropy",
            Op::BceWithLogits(_) => "bce_with_logits",
            Op::SquaredError(_) => "squared_error",
            Op::GatherRows { .. } => "gather_rows",
            Op::LstmCell { .. } => "lstm_cell",
            Op::LstmStep { .. } => "lstm_step",
            Op::GruCell { .. } => "gru_cell",
            Op::Detach => "detach",
            Op::ScaleGrad(..) => "scale_grad",
            Op::ScaleGradRows { .. } => "scale_grad_rows",
        }
    }
}

/// What a backward rule sees: all values, and the adjoints of the nodes before it.
pub(crate) struct Ctx<'a, F: Scalar> {
    pub(crate) values: &'a [Array2<F>],
    needs_grad: &'a [bool],
    parents: &'a mut [Option<Array2<F>>],
    /// The one adjoint being written from its last rows up (see [`Ctx::rows_slot`]).
    row_blocks: &'a mut Option<RowBlocks<F>>,
    pool: &'a mut Pool<F>,
    staging: &'a mut Staging<F>,
    transposes: &'a mut PanelCopies<F>,
    /// Scratch for the products by panels.
    panel_scratch: &'a mut Vec<F>,
    /// The first failure of a rule (an internal shape inconsistency), reported by
    /// [`backward_node`] instead of a panic or a skipped contribution.
    failed: Option<Error>,
}

/// Products whose left operand has fewer rows than this gather their contribution to
/// the right operand's adjoint (see [`Staging`]). From 8 rows on, a product per step
/// runs about as fast as a gathered one, and gathering would only add copies.
pub(crate) const GATHER_BELOW_ROWS: usize = 8;

/// A gathered batch is added once it holds this many rows, so that what is held stays
/// bounded on a long segment.
pub(crate) const GATHER_FLUSH_ROWS: usize = 256;

/// Weight-gradient contributions `aᵀ r` of thin products (a batch of one, say), gathered
/// until they reach [`GATHER_FLUSH_ROWS`] rows or the reverse sweep reaches the right
/// operand, then added as one matrix product `[a_1; a_2; …]ᵀ [r_1; r_2; …]`. A weight
/// used at every step of an unroll receives one product per 256 steps instead of one
/// outer product per step: the same sum in another order, at the speed of a large
/// product.
#[derive(Debug, Default)]
pub(crate) struct Staging<F> {
    entries: Vec<Staged<F>>,
}

#[derive(Debug, Default)]
struct Staged<F> {
    /// The node whose adjoint receives the sum.
    target: usize,
    rows: usize,
    a: Vec<F>,
    r: Vec<F>,
}

impl<F: Scalar> Staging<F> {
    /// Drops whatever an interrupted pass left behind.
    pub(crate) fn reset(&mut self) {
        for e in &mut self.entries {
            e.rows = 0;
            e.a.clear();
            e.r.clear();
        }
    }

    /// Appends the rows of `a` (m×k) and `r` (m×n) for `target`; gives the entry's index.
    fn push(&mut self, target: usize, a: ArrayView2<'_, F>, r: ArrayView2<'_, F>) -> usize {
        let pos = self
            .entries
            .iter()
            .position(|e| e.rows > 0 && e.target == target)
            .or_else(|| self.entries.iter().position(|e| e.rows == 0));
        let p = pos.unwrap_or_else(|| {
            self.entries.push(Staged::default());
            self.entries.len() - 1
        });
        let e = &mut self.entries[p];
        e.target = target;
        e.rows += a.nrows();
        for row in a.rows() {
            e.a.extend(row.iter().copied());
        }
        for row in r.rows() {
            e.r.extend(row.iter().copied());
        }
        p
    }
}

impl<F: Scalar> Staged<F> {
    /// `acc (=|+=) Aᵀ R` over the gathered rows, then empties the entry (keeping its
    /// allocations). The gathered rows must fit `acc` (k×n): a mismatch is an error,
    /// never a skipped contribution.
    fn add_into(&mut self, acc: &mut Array2<F>, fresh: bool) -> Result<()> {
        let (k, n) = acc.dim();
        let rows = self.rows;
        self.rows = 0;
        let shapes = (
            ArrayView2::from_shape((rows, k), &self.a),
            ArrayView2::from_shape((rows, n), &self.r),
        );
        let out = match shapes {
            (Ok(a), Ok(r)) => {
                let beta = if fresh { F::zero() } else { F::one() };
                crate::kernels::gemm(F::one(), &a.t(), &r, beta, &mut acc.view_mut());
                Ok(())
            }
            _ => Err(Error::ShapeMismatch {
                op: "backward (gathered weight gradient)",
                lhs: (k, n),
                rhs: (self.a.len(), self.r.len()),
            }),
        };
        self.a.clear();
        self.r.clear();
        out
    }
}

/// Copies of the right factors that a tape multiplies by again and again (a recurrent
/// weight, once per step), laid out in column panels ([`Panels`]), which the product
/// kernel reads faster than the factor itself once it outgrows the core's cache. The
/// tape keeps two sets: the panels of `b` for the forward products (`Tape::panels`),
/// made only for a `b` of more than [`PANEL_COLS`](crate::kernels::PANEL_COLS) columns
/// (narrower, the one panel would be `b` itself), and those of `bᵀ` for the backward
/// rules (`Tape::transposes`, for every width: `ā += r bᵀ` would otherwise read `bᵀ`, a
/// matrix stored by columns, more slowly; up to 128 columns the one panel is the
/// row-major `bᵀ`). A copy is made at the [`COPY_AT_USE`]-th use
/// and kept until the tape is cleared (values never change once recorded), so that a
/// factor used once or twice (a weight under `Fixed { k: 1 }`) is never copied.
#[derive(Debug, Default)]
pub(crate) struct PanelCopies<F> {
    uses: std::collections::HashMap<usize, u32>,
    copies: Vec<(usize, Panels<F>)>,
}

/// The use at which a right factor gets its copy.
pub(crate) const COPY_AT_USE: u32 = 3;

impl<F: Scalar> PanelCopies<F> {
    /// Counts a use of node `b`, whose value (or its transpose, for the backward rules)
    /// is `vb`; gives the panels of `vb` once it has them.
    pub(crate) fn note_use(
        &mut self,
        b: usize,
        vb: ArrayView2<'_, F>,
        pool: &mut Pool<F>,
    ) -> Option<&Panels<F>> {
        let uses = self.uses.entry(b).or_insert(0);
        *uses += 1;
        if *uses == COPY_AT_USE {
            let buf = pool.take(vb.dim());
            self.copies.push((b, Panels::of(vb, buf)));
        }
        if *uses < COPY_AT_USE {
            return None;
        }
        self.copies.iter().find(|(n, _)| *n == b).map(|(_, p)| p)
    }

    /// Entries held in copies.
    pub(crate) fn len(&self) -> usize {
        self.copies.iter().map(|(_, p)| p.len()).sum()
    }

    /// Forgets every node; the copies go to `pool`.
    pub(crate) fn clear(&mut self, pool: &mut Pool<F>) {
        self.uses.clear();
        for (_, p) in self.copies.drain(..) {
            pool.give(p.into_buffer());
        }
    }
}

/// The tape's side lists, which ops index into by position (so that [`Op`] stays small
/// and `Copy`).
#[derive(Debug, Default)]
pub(crate) struct Side<F> {
    /// Parent lists of n-ary ops (concat).
    pub(crate) lists: Vec<usize>,
    /// Integer labels of the cross-entropy ops and ids of the gather ops.
    pub(crate) labels: Vec<usize>,
    /// Per-row weights of the cross-entropy and squared-error ops.
    pub(crate) weights: Vec<F>,
    /// Intermediates saved for backward (softmax probabilities).
    pub(crate) saved: Vec<Array2<F>>,
}

impl<F: Scalar> Side<F> {
    /// Empties the lists; the saved intermediates go to `pool`.
    pub(crate) fn clear(&mut self, pool: &mut Pool<F>) {
        for s in self.saved.drain(..) {
            pool.give(s);
        }
        self.lists.clear();
        self.labels.clear();
        self.weights.clear();
    }

    /// Appends an op's per-row weights, if it has any; gives where they start.
    pub(crate) fn push_weights(&mut self, weights: Option<&[F]>) -> Option<usize> {
        weights.map(|w| {
            let at = self.weights.len();
            self.weights.extend_from_slice(w);
            at
        })
    }

    /// The `rows` weights starting at `start`, for an op that has weights.
    pub(crate) fn weights(&self, start: Option<usize>, rows: usize) -> Option<&[F]> {
        start.map(|w| &self.weights[w..w + rows])
    }
}

/// Adds the gathered contributions for node `i` into its adjoint (before node `i` is
/// visited by the reverse sweep). Inlined down to one test on a tape that gathered
/// nothing.
#[inline]
pub(crate) fn flush_staged<F: Scalar>(tape: &mut Tape<F>, i: usize) -> Result<()> {
    if tape.staging.entries.is_empty() {
        return Ok(());
    }
    flush_staged_entry(tape, i)
}

/// [`flush_staged`] once something was gathered.
fn flush_staged_entry<F: Scalar>(tape: &mut Tape<F>, i: usize) -> Result<()> {
    let Tape {
        values,
        needs_grad,
        adjoints,
        pool,
        staging,
        ..
    } = tape;
    let Some(e) = staging
        .entries
        .iter_mut()
        .find(|e| e.rows > 0 && e.target == i)
    else {
        return Ok(());
    };
    let mut cx = Ctx {
        values,
        needs_grad,
        parents: adjoints,
        row_blocks: &mut None,
        pool,
        staging: &mut Staging::default(),
        transposes: &mut PanelCopies::default(),
        panel_scratch: &mut Vec::new(),
        failed: None,
    };
    match cx.slot(i) {
        Some((acc, fresh)) => e.add_into(acc, fresh),
        None => Ok(()),
    }
}

impl<F: Scalar> Ctx<'_, F> {
    /// A scratch buffer for a rule's intermediate (give it back with [`Ctx::recycle`]).
    pub(crate) fn scratch(&mut self, shape: (usize, usize)) -> Array2<F> {
        self.pool.take(shape)
    }

    /// Whether node `p` needs a gradient.
    pub(crate) fn needs_grad(&self, p: usize) -> bool {
        self.needs_grad[p]
    }

    /// Takes the adjoint buffer of parent `p` out, to read it while other adjoints are
    /// written (give it back with [`Ctx::put_adjoint`] before the rule returns).
    pub(crate) fn take_adjoint(&mut self, p: usize) -> Option<Array2<F>> {
        self.parents[p].take()
    }

    /// Puts back the adjoint buffer of parent `p` taken by [`Ctx::take_adjoint`].
    pub(crate) fn put_adjoint(&mut self, p: usize, a: Array2<F>) {
        self.parents[p] = Some(a);
    }

    /// Returns a scratch buffer to the free list.
    pub(crate) fn recycle(&mut self, a: Array2<F>) {
        self.pool.give(a);
    }

    /// Adds `aᵀ r` into the adjoint of `b`: at once, or gathered with the other thin
    /// contributions to `b` when `a` has fewer than [`GATHER_BELOW_ROWS`] rows.
    pub(crate) fn add_at_b(&mut self, b: usize, a: ArrayView2<'_, F>, r: ArrayView2<'_, F>) {
        if !self.needs_grad[b] {
            return;
        }
        if a.nrows() < GATHER_BELOW_ROWS {
            let e = self.staging.push(b, a, r);
            if self.staging.entries[e].rows >= GATHER_FLUSH_ROWS {
                let mut entry = std::mem::take(&mut self.staging.entries[e]);
                if let Some((acc, fresh)) = self.slot(b) {
                    if let Err(err) = entry.add_into(acc, fresh) {
                        self.failed.get_or_insert(err);
                    }
                }
                self.staging.entries[e] = entry;
            }
        } else if let Some((acc, fresh)) = self.slot(b) {
            let beta = if fresh { F::zero() } else { F::one() };
            crate::kernels::gemm(F::one(), &a.t(), &r, beta, &mut acc.view_mut());
        }
    }

    /// Adds `r bᵀ` into the adjoint of `a`, reading `bᵀ` from its panels once `b` has
    /// them (see [`PanelCopies`]).
    pub(crate) fn add_r_bt(&mut self, a: usize, r: ArrayView2<'_, F>, b: usize) {
        if !self.needs_grad[a] {
            return;
        }
        settle_rows(self.parents, self.pool, self.row_blocks, Some(a));
        let fresh = self.parents[a].is_none();
        let mut acc = match self.parents[a].take() {
            Some(acc) => acc,
            None => self.pool.take(self.values[a].dim()),
        };
        let start = if fresh { Start::Zero } else { Start::Kept };
        self.r_bt_into(r, b, start, &mut acc);
        self.parents[a] = Some(acc);
    }

    /// `dst = start + r bᵀ`, reading `bᵀ` from its panels once `b` has them.
    pub(crate) fn r_bt_into(
        &mut self,
        r: ArrayView2<'_, F>,
        b: usize,
        start: Start<'_, F>,
        dst: &mut Array2<F>,
    ) {
        let vb = &self.values[b];
        match self.transposes.note_use(b, vb.t(), self.pool) {
            Some(bt) => gemm_panels(&r, bt, start, &mut dst.view_mut(), self.panel_scratch),
            None => gemm_onto(&r, &vb.t(), start, &mut dst.view_mut()),
        }
    }

    /// The adjoint buffer of parent `p` and whether it is fresh (arbitrary contents: the
    /// rule must write, not add). `None` if `p` needs no gradient.
    pub(crate) fn slot(&mut self, p: usize) -> Option<(&mut Array2<F>, bool)> {
        if !self.needs_grad[p] {
            return None;
        }
        settle_rows(self.parents, self.pool, self.row_blocks, Some(p));
        let fresh = self.parents[p].is_none();
        if fresh {
            self.parents[p] = Some(self.pool.take(self.values[p].dim()));
        }
        self.parents[p].as_mut().map(|a| (a, fresh))
    }

    /// Rows `rows` of the adjoint buffer of parent `p` and whether they are fresh
    /// (arbitrary contents: write, not add). `None` if `p` needs no gradient.
    ///
    /// The recurrent steps of a segment contribute to the adjoint of its input
    /// projection one row block each, from the last step back. The first contribution
    /// into the last rows of a fresh buffer does not zero-fill the rest: the buffer
    /// remembers the first row written ([`RowBlocks`]), and each next block that ends
    /// there is written, not added. Anything else that touches the buffer, or the sweep
    /// reaching its node, first fills the rows above with zeros ([`settle_rows`]). One
    /// buffer at a time is written this way.
    pub(crate) fn rows_slot(
        &mut self,
        p: usize,
        rows: std::ops::Range<usize>,
    ) -> Option<(ndarray::ArrayViewMut2<'_, F>, bool)> {
        if !self.needs_grad[p] {
            return None;
        }
        let current = self.row_blocks.as_ref().map(|rb| (rb.node, rb.first));
        let fresh = match (current, self.parents[p].is_none()) {
            (_, true) if rows.end == self.values[p].nrows() => {
                settle_rows(self.parents, self.pool, self.row_blocks, None);
                self.parents[p] = Some(self.pool.take(self.values[p].dim()));
                *self.row_blocks = Some(RowBlocks {
                    node: p,
                    first: rows.end,
                    deferred: None,
                });
                true
            }
            (Some((q, first)), false) => q == p && rows.end == first,
            _ => false,
        };
        match self.row_blocks.as_mut() {
            Some(rb) if fresh => rb.first = rows.start,
            _ => {
                if let Some((acc, new)) = self.slot(p) {
                    if new {
                        acc.fill(F::zero());
                    }
                }
            }
        }
        let acc = self.parents[p].as_mut()?;
        Some((acc.slice_axis_mut(Axis(0), Slice::from(rows)), fresh))
    }

    /// Defers `W̄ += hᵀ ā` for the step whose `ā` was just written into the fresh rows
    /// `rows` of the adjoint of `u` (through [`Ctx::rows_slot`]), `w` being the node of
    /// `W`: `h`'s rows are kept beside those of the adjoint, and one product over every
    /// deferred step, `W̄ += Hᵀ Ā`, is added when the rows are complete ([`settle_rows`]).
    /// One product with as many rows as the segment runs faster than one per step, and
    /// reads `Ā` where it already is. `false` (nothing deferred: add the product now)
    /// unless those rows are the last written and join the blocks deferred so far for
    /// the same `w`.
    pub(crate) fn defer_at_b(
        &mut self,
        w: usize,
        u: usize,
        rows: std::ops::Range<usize>,
        h: ArrayView2<'_, F>,
    ) -> bool {
        let Some(rb) = self.row_blocks.as_mut() else {
            return false;
        };
        // Deferred blocks stay contiguous, for one weight: any other block is added now.
        let joins = rb
            .deferred
            .as_ref()
            .is_none_or(|d| d.target == w && d.from == rows.end);
        if (rb.node, rb.first) != (u, rows.start) || !self.needs_grad[w] || !joins {
            return false;
        }
        let d = rb.deferred.get_or_insert_with(|| Deferred {
            target: w,
            h: self.pool.take((self.values[u].nrows(), h.ncols())),
            from: rows.end,
            end: rows.end,
        });
        d.from = rows.start;
        rows_into(
            d.h.slice_axis_mut(Axis(0), Slice::from(rows)),
            h,
            Write::Set,
        );
        true
    }
}

/// An adjoint written by row blocks from its last rows up (see [`Ctx::rows_slot`]), and
/// the weight gradient deferred on those rows (see [`Ctx::defer_at_b`]).
#[derive(Debug)]
pub(crate) struct RowBlocks<F> {
    /// The node whose adjoint is written this way.
    node: usize,
    /// The first row written: rows above it hold arbitrary contents.
    first: usize,
    deferred: Option<Deferred<F>>,
}

/// `W̄ += Hᵀ Ā` over rows `from..end` of an adjoint `Ā`, waiting for those rows to be
/// complete.
#[derive(Debug)]
struct Deferred<F> {
    /// The node of `W`.
    target: usize,
    /// `H`, row for row with the adjoint (only rows `from..end` are set).
    h: Array2<F>,
    from: usize,
    end: usize,
}

impl<F: Scalar> RowBlocks<F> {
    /// Gives its buffer back without adding anything (a pass that ended early).
    pub(crate) fn drop_into(self, pool: &mut Pool<F>) {
        if let Some(d) = self.deferred {
            pool.give(d.h);
        }
    }
}

impl<F: Scalar> Deferred<F> {
    /// Adds `Hᵀ Ā` over its rows into the adjoint of `W` (written if that is fresh), `Ā`
    /// being the adjoint of node `node`, and gives `H` back.
    fn add_into(self, adjoints: &mut [Option<Array2<F>>], pool: &mut Pool<F>, node: usize) {
        let rows = Slice::from(self.from..self.end);
        // The adjoint is there: it is taken out only inside `lstm_step_vjp`, which never
        // settles it meanwhile (`u` is neither `W_h` nor the state there).
        let Some(a_bar) = adjoints.get_mut(node).and_then(Option::take) else {
            unreachable!("a deferred weight gradient outlived the adjoint it reads")
        };
        let (h, r) = (
            self.h.slice_axis(Axis(0), rows),
            a_bar.slice_axis(Axis(0), rows),
        );
        let fresh = adjoints[self.target].is_none();
        let acc = adjoints[self.target].get_or_insert_with(|| pool.take((h.ncols(), r.ncols())));
        let beta = if fresh { F::zero() } else { F::one() };
        crate::kernels::gemm(F::one(), &h.t(), &r, beta, &mut acc.view_mut());
        adjoints[node] = Some(a_bar);
        pool.give(self.h);
    }
}

/// Completes the adjoint being written from its last rows up (see [`Ctx::rows_slot`]),
/// if it is `p`'s or `p` is the target of its deferred weight gradient (any node's for
/// `None`): adds the deferred product, fills with zeros the rows no contribution
/// reached, and ends that state. Inlined down to one test when there is no such
/// adjoint, as on every node of a tape without recurrent steps.
#[inline]
pub(crate) fn settle_rows<F: Scalar>(
    adjoints: &mut [Option<Array2<F>>],
    pool: &mut Pool<F>,
    row_blocks: &mut Option<RowBlocks<F>>,
    p: Option<usize>,
) {
    if row_blocks.is_some() {
        settle_if_concerned(adjoints, pool, row_blocks, p);
    }
}

/// [`settle_rows`] when there is an adjoint written by row blocks: out of line, so that
/// the test above is all the other nodes pay.
#[cold]
#[inline(never)]
fn settle_if_concerned<F: Scalar>(
    adjoints: &mut [Option<Array2<F>>],
    pool: &mut Pool<F>,
    row_blocks: &mut Option<RowBlocks<F>>,
    p: Option<usize>,
) {
    let Some(rb) = row_blocks.as_ref() else {
        return;
    };
    let concerned = |p: usize| p == rb.node || rb.deferred.as_ref().is_some_and(|d| d.target == p);
    if p.is_none_or(concerned) {
        if let Some(rb) = row_blocks.take() {
            rb.settle(adjoints, pool);
        }
    }
}

impl<F: Scalar> RowBlocks<F> {
    /// [`settle_rows`] once it is this adjoint's turn.
    fn settle(self, adjoints: &mut [Option<Array2<F>>], pool: &mut Pool<F>) {
        if let Some(d) = self.deferred {
            d.add_into(adjoints, pool, self.node);
        }
        if let Some(acc) = adjoints.get_mut(self.node).and_then(Option::as_mut) {
            acc.slice_axis_mut(Axis(0), Slice::from(..self.first))
                .fill(F::zero());
        }
    }
}

/// `acc = f(a)` if fresh, else `acc += f(a)`.
pub(crate) fn put1<F: Scalar>(
    acc: &mut Array2<F>,
    fresh: bool,
    a: ArrayView2<'_, F>,
    f: impl Fn(F) -> F,
) {
    // Contiguous operands (the common case) go through plain slice loops: no Zip set-up,
    // which dominates for small matrices.
    if let (Some(o), Some(a)) = (acc.as_slice_mut(), a.as_slice()) {
        if fresh {
            o.iter_mut().zip(a).for_each(|(o, &a)| *o = f(a));
        } else {
            o.iter_mut().zip(a).for_each(|(o, &a)| *o = *o + f(a));
        }
        return;
    }
    let z = Zip::from(acc).and(&a);
    if fresh {
        z.for_each(|o, &a| *o = f(a));
    } else {
        z.for_each(|o, &a| *o = *o + f(a));
    }
}

/// `acc = f(a, b)` if fresh, else `acc += f(a, b)`.
pub(crate) fn put2<F: Scalar>(
    acc: &mut Array2<F>,
    fresh: bool,
    a: ArrayView2<'_, F>,
    b: ArrayView2<'_, F>,
    f: impl Fn(F, F) -> F,
) {
    if let (Some(o), Some(a), Some(b)) = (acc.as_slice_mut(), a.as_slice(), b.as_slice()) {
        let it = o.iter_mut().zip(a).zip(b);
        if fresh {
            it.for_each(|((o, &a), &b)| *o = f(a, b));
        } else {
            it.for_each(|((o, &a), &b)| *o = *o + f(a, b));
        }
        return;
    }
    let z = Zip::from(acc).and(&a).and(&b);
    if fresh {
        z.for_each(|o, &a, &b| *o = f(a, b));
    } else {
        z.for_each(|o, &a, &b| *o = *o + f(a, b));
    }
}

/// `acc = f(a, b, c)` if fresh, else `acc += f(a, b, c)`.
pub(crate) fn put3<F: Scalar>(
    acc: &mut Array2<F>,
    fresh: bool,
    a: ArrayView2<'_, F>,
    b: ArrayView2<'_, F>,
    c: ArrayView2<'_, F>,
    f: impl Fn(F, F, F) -> F,
) {
    if let (Some(o), Some(a), Some(b), Some(c)) =
        (acc.as_slice_mut(), a.as_slice(), b.as_slice(), c.as_slice())
    {
        let it = o.iter_mut().zip(a).zip(b).zip(c);
        if fresh {
            it.for_each(|(((o, &a), &b), &c)| *o = f(a, b, c));
        } else {
            it.for_each(|(((o, &a), &b), &c)| *o = *o + f(a, b, c));
        }
        return;
    }
    let z = Zip::from(acc).and(&a).and(&b).and(&c);
    if fresh {
        z.for_each(|o, &a, &b, &c| *o = f(a, b, c));
    } else {
        z.for_each(|o, &a, &b, &c| *o = *o + f(a, b, c));
    }
}

/// Propagates the adjoint of node `i` to its parents: the one exhaustive match.
pub(crate) fn backward_node<F: Scalar>(tape: &mut Tape<F>, i: usize) -> Result<()> {
    let Tape {
        ops,
        values,
        needs_grad,
        adjoints,
        row_blocks,
        side,
        pool,
        staging,
        transposes,
        panel_scratch,
        ..
    } = tape;
    let (parents, rest) = adjoints.split_at_mut(i);
    let Some(g) = rest[0].as_ref() else {
        return Ok(());
    };
    let g = g.view();
    let y = values[i].view();
    let mut cx = Ctx {
        values,
        needs_grad,
        parents,
        row_blocks,
        pool,
        staging,
        transposes,
        panel_scratch,
        failed: None,
    };
    match ops[i] {
        Op::Leaf | Op::Param(_) | Op::Detach => {}
        Op::MatMul(a, b) => linalg::matmul_vjp(&mut cx, g, a, b),
        Op::Affine { a, b, c, act } => linalg::affine_vjp(&mut cx, g, y, a, b, c, act),
        Op::Transpose(a) => linalg::transpose_vjp(&mut cx, g, a),
        Op::Binary(kind, a, b) => elementwise::binary_vjp(&mut cx, g, kind, a, b),
        Op::Unary(kind, a) => activation::unary_vjp(&mut cx, g, y, kind, a),
        Op::Sum(a, c) => reduce::sum_vjp(&mut cx, g, a, c),
        Op::Concat { axis, start, len } => {
            shape::concat_vjp(&mut cx, g, axis, &side.lists[start..start + len])
        }
        Op::Slice {
            axis,
            parent,
            start,
        } => shape::slice_vjp(&mut cx, g, axis, parent, start),
        Op::SoftmaxXent(op) => loss::softmax_xent_vjp(&mut cx, g, op, side),
        Op::BceWithLogits(op) => loss::bce_vjp(&mut cx, g, op),
        Op::SquaredError(op) => loss::squared_error_vjp(&mut cx, g, op, side),
        Op::GatherRows { table, ids } => {
            gather::gather_rows_vjp(&mut cx, g, table, &side.labels[ids..ids + g.nrows()])
        }
        Op::LstmCell { a, state, saved } => {
            gates::lstm_cell_vjp(&mut cx, g, (a, state), side.saved[saved].view())
        }
        Op::LstmStep {
            u,
            w,
            b,
            state,
            saved,
        } => gates::lstm_step_vjp(&mut cx, g, (u, (w, b), state), side.saved[saved].view()),
        Op::GruCell { u, s, h, saved } => {
            gates::gru_cell_vjp(&mut cx, g, (u, s, h), side.saved[saved].view())
        }
        Op::ScaleGrad(a, c) => control::scale_grad_vjp(&mut cx, g, a, c),
        Op::ScaleGradRows { a, at } => {
            control::scale_grad_rows_vjp(&mut cx, g, a, &side.weights[at..at + g.nrows()])
        }
    }
    cx.failed.map_or(Ok(()), Err)
}
