//! Recurrent cells, stacks of them, and the losses of a sequence.
//!
//! A cell implements [`Recurrent`]: one step of the recurrence ([`Recurrent::step`],
//! `h_t` from `x_t` and `h_{t−1}`) and an output head applied to the states of a segment
//! stacked over time ([`Recurrent::output`], one matrix product). Optionally, a
//! [`Projection`]: the state-independent work of a whole segment at once (one matrix
//! product over all its steps), which the built-in cells have. Cells know nothing of
//! truncation: [`crate::bptt`] unrolls them segment by segment, with an edge (kept,
//! detached or scaled) into every step.
//!
//! Cells: the notes' vanilla [`Rnn`] (identity, tanh, ReLU or sigmoid), [`Gru`] and
//! [`Lstm`], each under a name of its own so that several share one [`Params`]; a
//! [`Stack`] of layers; [`Embedded`] for token inputs. The notes' four models are
//! [`Rnn`] configurations, see [`models`].
//!
//! Inputs are `(T, B, D)` arrays (time, batch, features) or `(T, B)` token ids
//! ([`Sequence::tokens`]); states are B×S matrices.

mod embedded;
mod gru;
mod loss;
mod lstm;
pub mod models;
mod stack;
mod vanilla;

pub use embedded::{Embedded, EmbeddedBound, Embedding};
pub use gru::Gru;
pub use loss::{LastStep, PerStep, SequenceLoss, Targets};
pub use lstm::Lstm;
pub use stack::Stack;
pub use vanilla::{Activation, Biases, Rnn, RnnBound, RnnConfig};

use crate::error::{invalid, Result};
use crate::ops::RowsOf;
use crate::params::Params;
use crate::scalar::Scalar;
use crate::tape::{Tape, Var};
use ndarray::{ArrayView2, ArrayView3};

/// A recurrent cell that any BPTT strategy can unroll.
///
/// A cell author writes [`Recurrent::bind`] (register the parameters on a tape), the
/// widths, [`Recurrent::step`] (`h_t` from `x_t` and `h_{t−1}`) and
/// [`Recurrent::output`] (the head on states stacked over steps). That is all a cell
/// needs: see `examples/custom_cell.rs`. The state is a single B×S matrix (an LSTM
/// packs `[h c]` side by side, a [`Stack`] its layers' states), so that truncation,
/// streaming and checkpointing need only one edge per step.
///
/// Two optional methods: [`Recurrent::projection`], a time-batched input projection
/// (one matrix product over all the steps of a segment, which the built-in cells use
/// for speed), and [`Recurrent::next_input`], what a layer above reads of the state in
/// a [`Stack`] (the whole state unless overridden).
///
/// ```
/// use timetape::rnn::Recurrent;
/// use timetape::{Params, ParamId, Result, Tape, Var};
///
/// /// A leaky integrator: h_t = (1 − λ) h_{t−1} + λ tanh(x_t W + h_{t−1} U), o_t = h_t V.
/// struct Leaky { d: usize, h: usize, q: usize, lambda: f64, w: ParamId, u: ParamId, v: ParamId }
///
/// impl Recurrent<f64> for Leaky {
///     type Bound = [Var; 3];
///     fn input_width(&self) -> usize { self.d }
///     fn state_width(&self) -> usize { self.h }
///     fn output_width(&self) -> usize { self.q }
///     fn bind(&self, tape: &mut Tape<f64>, p: &Params<f64>) -> Result<[Var; 3]> {
///         Ok([tape.param(p, self.w)?, tape.param(p, self.u)?, tape.param(p, self.v)?])
///     }
///     fn step(&self, tape: &mut Tape<f64>, b: &[Var; 3], x: Var, h: Var) -> Result<Var> {
///         let xw = tape.matmul(x, b[0])?;
///         let hu = tape.matmul(h, b[1])?;
///         let a = tape.add(xw, hu)?;
///         let n = tape.tanh(a)?;
///         let keep = tape.scale(h, 1.0 - self.lambda)?;
///         let new = tape.scale(n, self.lambda)?;
///         tape.add(keep, new)
///     }
///     fn output(&self, tape: &mut Tape<f64>, b: &[Var; 3], hs: Var) -> Result<Var> {
///         tape.matmul(hs, b[2])
///     }
/// }
/// ```
pub trait Recurrent<F: Scalar> {
    /// The cell's parameters registered on one tape.
    type Bound;
    /// Input width D.
    fn input_width(&self) -> usize;
    /// State width S.
    fn state_width(&self) -> usize;
    /// Output width Q.
    fn output_width(&self) -> usize;
    /// Registers the cell's parameters on the tape (once per segment).
    fn bind(&self, tape: &mut Tape<F>, params: &Params<F>) -> Result<Self::Bound>;
    /// One step: the inputs `x_t` (B×D) and the state `h_{t−1}` (B×S) to `h_t` (B×S).
    fn step(&self, tape: &mut Tape<F>, bound: &Self::Bound, x: Var, h: Var) -> Result<Var>;
    /// The output head on states stacked over steps: n×S to n×Q (logits or predictions).
    fn output(&self, tape: &mut Tape<F>, bound: &Self::Bound, hs: Var) -> Result<Var>;

    /// The cell's time-batched input projection, if it has one (`None` unless
    /// overridden): then the runners call [`Projection::project_inputs`] once per
    /// segment and [`Projection::step_projected`] at each step, instead of
    /// [`Recurrent::step`]. The two must compute the same `h_t`.
    fn projection(&self) -> Option<&dyn Projection<F, Self::Bound>> {
        None
    }

    /// Width of [`Recurrent::next_input`].
    fn next_input_width(&self) -> usize {
        self.state_width()
    }

    /// What the layer above reads of the state `h` (B×S) in a [`Stack`]: the whole state
    /// unless overridden (an LSTM gives `h` of `[h c]`).
    fn next_input(&self, tape: &mut Tape<F>, h: Var) -> Result<Var> {
        let _ = tape;
        Ok(h)
    }

    /// The inputs of a segment of tokens ((k·B) ids, step after step) as a (k·B)×D
    /// matrix. Only a cell with an embedding reads tokens ([`Embedded`] overrides this);
    /// the default refuses them.
    fn embed(&self, tape: &mut Tape<F>, bound: &Self::Bound, ids: &[usize]) -> Result<Var> {
        let _ = (tape, bound, ids);
        Err(invalid(
            "Recurrent::embed",
            "this cell reads real inputs, not tokens: wrap it in rnn::Embedded",
        ))
    }
}

/// A time-batched input projection ([`Recurrent::projection`]): the state-independent
/// part of every step of a segment computed at once, one matrix product over all of its
/// steps instead of one per step.
pub trait Projection<F: Scalar, B> {
    /// The k steps' inputs, `(k·B) × D` stacked step after step, to `(k·B) × P`.
    fn project_inputs(&self, tape: &mut Tape<F>, bound: &B, xs: Var) -> Result<Var>;
    /// One step: `h_{t−1}` (B×S) to `h_t` (B×S), given the rows of the segment's
    /// projected inputs ((k·B)×P) that belong to this step, `RowsOf(u, rows)` (read them
    /// with [`Tape::affine_rows`] or [`Tape::slice_rows`]).
    fn step_projected(&self, tape: &mut Tape<F>, bound: &B, u: RowsOf, h: Var) -> Result<Var>;
}

/// [`Recurrent::step`] of a cell with a projection: the projection of the one step's
/// inputs, then [`Projection::step_projected`] on all its rows.
pub(crate) fn step_by_projection<F: Scalar, B>(
    p: &dyn Projection<F, B>,
    tape: &mut Tape<F>,
    bound: &B,
    x: Var,
    h: Var,
) -> Result<Var> {
    let rows = tape.shape(x)?.0;
    let u = p.project_inputs(tape, bound, x)?;
    p.step_projected(tape, bound, RowsOf(u, 0..rows), h)
}

/// The widths of a cell with an output head: input D, hidden H, output Q.
///
/// ```
/// use timetape::rnn::{Gru, Sizes};
/// use timetape::Params;
///
/// let mut params = Params::<f64>::new();
/// let encoder = Gru::named(&mut params, "enc.", Sizes::new(3, 8, 4), 0)?;
/// let decoder = Gru::named(&mut params, "dec.", Sizes::new(4, 8, 3), 1)?;
/// assert_eq!(params.name(encoder.w_h)?, "enc.W_h");
/// assert_eq!(params.name(decoder.w_h)?, "dec.W_h");
/// # Ok::<(), timetape::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sizes {
    /// Input width D.
    pub input: usize,
    /// Hidden width H.
    pub hidden: usize,
    /// Output width Q.
    pub output: usize,
}

impl Sizes {
    /// D inputs, H hidden units, Q outputs.
    pub fn new(input: usize, hidden: usize, output: usize) -> Self {
        Sizes {
            input,
            hidden,
            output,
        }
    }
    /// Checks that no width is zero (what every cell's constructor requires).
    pub(crate) fn check(self, op: &'static str) -> Result<Self> {
        if self.input == 0 || self.hidden == 0 || self.output == 0 {
            return Err(invalid(op, "sizes must be positive"));
        }
        Ok(self)
    }
}

/// A sequence to run: its inputs `xs` (T, B, D), its initial state (zeros unless
/// given) and its loss.
///
/// ```
/// use ndarray::{Array2, Array3};
/// use timetape::rnn::{Sequence, SequenceLoss};
///
/// let xs = Array3::<f64>::zeros((10, 2, 3));
/// let labels = Array2::<usize>::zeros((10, 2));
/// let h0 = Array2::<f64>::ones((2, 4));
/// let seq = Sequence::new(xs.view(), SequenceLoss::classes(labels.view())).with_h0(h0.view());
/// assert_eq!(seq.len(), 10);
/// ```
#[derive(Debug, Clone, Copy)]
pub struct Sequence<'a, F> {
    /// Real inputs (T, B, D); (T, B, 0) for a sequence of tokens.
    pub(crate) xs: ArrayView3<'a, F>,
    /// Token ids (T, B), for a cell that embeds them ([`Embedded`]).
    pub(crate) tokens: Option<ArrayView2<'a, usize>>,
    pub(crate) h0: Option<ArrayView2<'a, F>>,
    pub(crate) loss: SequenceLoss<'a, F>,
    /// Per-row resets (T, B): true where a row's state returns to its initial state
    /// before that step.
    pub(crate) resets: Option<ArrayView2<'a, bool>>,
}

impl<'a, F: Scalar> Sequence<'a, F> {
    /// The inputs `xs` (T, B, D) with their loss, from `h_0 = 0`.
    pub fn new<'x: 'a, 'l: 'a>(
        xs: ArrayView3<'x, F>,
        loss: impl Into<SequenceLoss<'l, F>>,
    ) -> Self {
        Sequence {
            xs: xs.reborrow(),
            tokens: None,
            h0: None,
            loss: loss.into().reborrow(),
            resets: None,
        }
    }

    /// Token ids (T, B) with their loss, from `h_0 = 0`, for a cell that embeds them
    /// ([`Embedded`]: each id selects a row of its table); a cell without an embedding
    /// refuses them when run.
    ///
    /// ```
    /// use ndarray::Array2;
    /// use timetape::rnn::{Sequence, SequenceLoss};
    ///
    /// let ids = Array2::<usize>::zeros((10, 2));
    /// let next = Array2::<usize>::ones((10, 2));
    /// let seq = Sequence::<f32>::tokens(ids.view(), SequenceLoss::classes(next.view()));
    /// assert_eq!(seq.len(), 10);
    /// assert!(seq.token_ids().is_some());
    /// ```
    pub fn tokens<'x: 'a, 'l: 'a>(
        ids: ArrayView2<'x, usize>,
        loss: impl Into<SequenceLoss<'l, F>>,
    ) -> Self {
        let (t, b) = ids.dim();
        let (empty, none): (&'a [F], &'a [[F; 0]]) = (&[], &[]);
        // A (T, B, 0) view of no data cannot fail; (1, 0, 0) is the unreachable fallback.
        let xs = ArrayView3::from_shape((t, b, 0), empty)
            .unwrap_or_else(|_| ArrayView2::from(none).insert_axis(ndarray::Axis(0)));
        Sequence {
            xs,
            tokens: Some(ids.reborrow()),
            h0: None,
            loss: loss.into().reborrow(),
            resets: None,
        }
    }

    /// The same sequence from the initial state `h0` (B×S; checked when run), or from
    /// zeros for `None`.
    pub fn with_h0<'h: 'a>(mut self, h0: impl Into<Option<ArrayView2<'h, F>>>) -> Self {
        self.h0 = h0.into().map(|h| h.reborrow());
        self
    }

    /// The same sequence with episode boundaries inside it: `resets[[t, r]]` true (a
    /// (T, B) mask) sets row r's state back to its initial state (row r of h_0, or zeros)
    /// before step t, as if a new sequence started there in that row; no gradient
    /// crosses the boundary. The other rows go on. Every runner honours it (checked when
    /// run: the mask must be T×B).
    ///
    /// ```
    /// use ndarray::{Array2, Array3};
    /// use timetape::bptt::{run, Run, Truncation};
    /// use timetape::rnn::{models, Sequence, SequenceLoss, Sizes};
    /// use timetape::Params;
    ///
    /// let mut params = Params::<f64>::new();
    /// let cell = models::m3(&mut params, Sizes::new(2, 3, 2), 0)?;
    /// let xs = Array3::from_shape_fn((6, 2, 2), |(t, b, d)| ((t + 3 * b + d) as f64).sin());
    /// let labels = Array2::from_shape_fn((6, 2), |(t, b)| (t + b) % 2);
    /// // Row 1 starts a new episode at step 3 (0-based).
    /// let resets = Array2::from_shape_fn((6, 2), |(t, b)| b == 1 && t == 3);
    /// let seq = Sequence::new(xs.view(), SequenceLoss::classes(labels.view())).with_resets(resets.view());
    /// let r = run(&cell, &params, &seq, &Run::new(Truncation::Full))?;
    /// assert!(r.loss.is_finite());
    /// # Ok::<(), timetape::Error>(())
    /// ```
    pub fn with_resets<'r: 'a>(mut self, resets: ArrayView2<'r, bool>) -> Self {
        self.resets = Some(resets.reborrow());
        self
    }

    /// The per-row resets, if any ([`Sequence::with_resets`]).
    pub fn resets(&self) -> Option<ArrayView2<'a, bool>> {
        self.resets
    }

    /// Number of steps T.
    pub fn len(&self) -> usize {
        self.xs.dim().0
    }

    /// True if the sequence has no step.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The real inputs, (T, B, D); (T, B, 0) for a sequence of tokens.
    pub fn inputs(&self) -> ArrayView3<'a, F> {
        self.xs
    }

    /// The token ids (T, B), for a sequence of tokens ([`Sequence::tokens`]).
    pub fn token_ids(&self) -> Option<ArrayView2<'a, usize>> {
        self.tokens
    }

    /// The initial state, if one was given (zeros otherwise).
    pub fn initial_state(&self) -> Option<ArrayView2<'a, F>> {
        self.h0
    }

    /// The loss.
    pub fn loss(&self) -> &SequenceLoss<'a, F> {
        &self.loss
    }

    /// Batch size B.
    pub fn batch(&self) -> usize {
        self.xs.dim().1
    }

    /// The batch rows `rows` of this sequence (inputs or tokens, targets, initial state),
    /// as a part of the whole: a mean over the batch in its loss still divides by the
    /// whole batch's size, so that the losses and gradients of the parts add up to those
    /// of the whole. This is how a batch is split across workers
    /// ([`bptt::Parallel`](crate::bptt::Parallel), or processes).
    ///
    /// ```
    /// use ndarray::{Array2, Array3};
    /// use timetape::bptt::{run, Run, Truncation};
    /// use timetape::rnn::{models, Sequence, SequenceLoss, Sizes};
    /// use timetape::Params;
    ///
    /// let mut params = Params::<f64>::new();
    /// let cell = models::m3(&mut params, Sizes::new(2, 3, 2), 0)?;
    /// let xs = Array3::from_shape_fn((5, 4, 2), |(t, b, d)| (t + 2 * b + d) as f64 * 0.1);
    /// let labels = Array2::from_shape_fn((5, 4), |(t, b)| (t + b) % 2);
    /// let seq = Sequence::new(xs.view(), SequenceLoss::classes(labels.view()));
    /// let how = Run::new(Truncation::Full);
    /// let whole = run(&cell, &params, &seq, &how)?;
    /// let top = run(&cell, &params, &seq.rows(0..2)?, &how)?;
    /// let bottom = run(&cell, &params, &seq.rows(2..4)?, &how)?;
    /// assert!((top.loss + bottom.loss - whole.loss).abs() < 1e-12);
    /// # Ok::<(), timetape::Error>(())
    /// ```
    ///
    /// Errors: [`Error::InvalidArgument`](crate::Error::InvalidArgument) for rows
    /// outside the batch; [`Error::ShapeMismatch`](crate::Error::ShapeMismatch) for an
    /// `h0` or resets without the batch's rows.
    pub fn rows(&self, rows: std::ops::Range<usize>) -> Result<Sequence<'a, F>> {
        let b = self.batch();
        if rows.start > rows.end || rows.end > b {
            return Err(invalid(
                "Sequence::rows",
                format!("rows {rows:?} outside a batch of {b}"),
            ));
        }
        // What is sliced by rows must have the batch's rows (checked here, before the
        // slice, since a run would only see the slice).
        let mismatch = |op, lhs, rhs| Err(crate::error::Error::ShapeMismatch { op, lhs, rhs });
        if let Some(h) = self.h0.filter(|h| h.nrows() != b) {
            return mismatch("Sequence::rows (h0)", (b, h.ncols()), h.dim());
        }
        if let Some(m) = self.resets.filter(|m| m.dim() != (self.len(), b)) {
            return mismatch("Sequence::rows (resets)", (self.len(), b), m.dim());
        }
        let slice = ndarray::Slice::from(rows.clone());
        Ok(Sequence {
            xs: self.xs.slice_axis_move(ndarray::Axis(1), slice),
            tokens: self
                .tokens
                .map(|t| t.slice_axis_move(ndarray::Axis(1), slice)),
            h0: self.h0.map(|h| h.slice_axis_move(ndarray::Axis(0), slice)),
            loss: self.loss.rows(rows)?,
            resets: self
                .resets
                .map(|m| m.slice_axis_move(ndarray::Axis(1), slice)),
        })
    }
}
