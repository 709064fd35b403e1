//! Recurrent cells, and the losses of a sequence.
//!
//! A cell implements [`Recurrent`]: state-independent work for a whole segment at once
//! ([`Recurrent::project_inputs`], one matrix product over all its steps), one step of
//! the recurrence ([`Recurrent::step`]), and an output head applied to the states of a
//! segment stacked over time ([`Recurrent::output`], again one matrix product). Cells
//! know nothing of truncation: [`crate::bptt`] unrolls them segment by segment, with an
//! edge (kept, detached or scaled) into every step.
//!
//! Cells: the notes' vanilla [`Rnn`] (identity, tanh, ReLU or sigmoid), [`Gru`] and
//! [`Lstm`]. The notes' four models are [`Rnn`] configurations, see [`models`].
//!
//! Inputs are `(T, B, D)` arrays (time, batch, features); states are B×S matrices.

mod gru;
mod loss;
mod lstm;
pub mod models;
mod vanilla;

pub use gru::Gru;
pub use loss::{LastStep, PerStep, SequenceLoss, Targets};
pub use lstm::Lstm;
pub use vanilla::{Activation, Biases, Rnn, RnnBound, RnnConfig};

use crate::error::{invalid, Result};
use crate::params::Params;
use crate::scalar::Scalar;
use crate::tape::{Tape, Var};
use ndarray::{ArrayView2, ArrayView3};

/// A recurrent cell that any BPTT strategy can unroll.
///
/// The state is a single B×S matrix (an LSTM packs `[h c]` side by side), so that
/// truncation, streaming and checkpointing need only one edge per step.
pub trait Recurrent<F: Scalar> {
    /// The cell's parameters registered on one tape.
    type Bound: Copy;
    /// Input width D.
    fn input_width(&self) -> usize;
    /// State width S.
    fn state_width(&self) -> usize;
    /// Output width Q.
    fn output_width(&self) -> usize;
    /// Registers the cell's parameters on the tape (once per segment).
    fn bind(&self, tape: &mut Tape<F>, params: &Params<F>) -> Result<Self::Bound>;
    /// The part of every step that does not depend on the state, for the k steps of a
    /// segment at once: `(k·B) × D` inputs, stacked step after step, to `(k·B) × P`.
    fn project_inputs(&self, tape: &mut Tape<F>, bound: &Self::Bound, xs: Var) -> Result<Var>;
    /// One step: `h_{t−1}` (B×S) to `h_t` (B×S), given the segment's projected inputs
    /// `u` ((k·B)×P, from [`Recurrent::project_inputs`]) and the rows of `u` that belong
    /// to this step (read them with [`Tape::affine_rows`] or [`Tape::slice_rows`]).
    fn step(
        &self,
        tape: &mut Tape<F>,
        bound: &Self::Bound,
        u: Var,
        rows: std::ops::Range<usize>,
        h_prev: Var,
    ) -> Result<Var>;
    /// The output head on states stacked over steps: n×S to n×Q (logits or predictions).
    fn output(&self, tape: &mut Tape<F>, bound: &Self::Bound, hs: Var) -> Result<Var>;
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
    pub(crate) xs: ArrayView3<'a, F>,
    pub(crate) h0: Option<ArrayView2<'a, F>>,
    pub(crate) loss: SequenceLoss<'a, F>,
}

impl<'a, F: Scalar> Sequence<'a, F> {
    /// The inputs `xs` (T, B, D) with their loss, from `h_0 = 0`.
    pub fn new<'x: 'a, 'l: 'a>(
        xs: ArrayView3<'x, F>,
        loss: impl Into<SequenceLoss<'l, F>>,
    ) -> Self {
        Sequence {
            xs: xs.reborrow(),
            h0: None,
            loss: loss.into().reborrow(),
        }
    }

    /// The same sequence from the initial state `h0` (B×S; checked when run), or from
    /// zeros for `None`.
    pub fn with_h0<'h: 'a>(mut self, h0: impl Into<Option<ArrayView2<'h, F>>>) -> Self {
        self.h0 = h0.into().map(|h| h.reborrow());
        self
    }

    /// Number of steps T.
    pub fn len(&self) -> usize {
        self.xs.dim().0
    }

    /// True if the sequence has no step.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The inputs, (T, B, D).
    pub fn inputs(&self) -> ArrayView3<'a, F> {
        self.xs
    }

    /// The initial state, if one was given (zeros otherwise).
    pub fn initial_state(&self) -> Option<ArrayView2<'a, F>> {
        self.h0
    }

    /// The loss.
    pub fn loss(&self) -> &SequenceLoss<'a, F> {
        &self.loss
    }
}
