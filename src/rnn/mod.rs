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
mod lstm;
pub mod models;
mod vanilla;

pub use gru::Gru;
pub use lstm::Lstm;
pub use vanilla::{Activation, Biases, Rnn, RnnBound, RnnConfig};

use crate::error::{invalid, Error, Result};
use crate::ops::Reduction;
use crate::params::Params;
use crate::scalar::Scalar;
use crate::tape::{Tape, Var};
use ndarray::{ArrayView1, ArrayView2, ArrayView3};

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
    pub fn new<'x: 'a, 'l: 'a>(xs: ArrayView3<'x, F>, loss: SequenceLoss<'l, F>) -> Self {
        Sequence {
            xs: xs.reborrow(),
            h0: None,
            loss: loss.reborrow(),
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

/// Targets of a sequence loss.
#[derive(Debug, Clone, Copy)]
pub enum Targets<'a, F> {
    /// A class label at every step, shape (T, B): softmax cross-entropy on the outputs.
    Classes(ArrayView2<'a, usize>),
    /// A real target at every step, shape (T, B, Q): squared error `‖o_t − y_t‖²`.
    Values(ArrayView3<'a, F>),
    /// One class label per sequence, read at the last step, shape (B): softmax
    /// cross-entropy on `o_T`.
    LastClass(ArrayView1<'a, usize>),
    /// One binary target in [0, 1] per sequence, read at the last step, shape (B): the
    /// output must have width 1; `σ(o_T)` against it by binary cross-entropy (M2).
    LastBinary(ArrayView1<'a, F>),
}

/// A loss over a sequence: per-step terms with weights `α_t`, summed or averaged over
/// time, each averaged over the batch.
///
/// With per-step targets, `L = Σ_t c_t · (1/B) Σ_b l(o_{t,b}, y_{t,b})` where
/// `c_t = α_t` (1 if no weights are given) for [`Reduction::Sum`] and `α_t / T` for
/// [`Reduction::Mean`]. With last-step targets, `L = (1/B) Σ_b l(o_{T,b}, y_b)`.
#[derive(Debug, Clone, Copy)]
pub struct SequenceLoss<'a, F> {
    /// What the outputs are compared with.
    pub targets: Targets<'a, F>,
    /// Per-step weights α_1..α_T (per-step targets only: a last-step target with
    /// weights is refused by [`SequenceLoss::validate`]).
    pub step_weights: Option<&'a [F]>,
    /// Sum or mean over time (ignored for last-step targets).
    pub time: Reduction,
}

impl<'a, F: Scalar> SequenceLoss<'a, F> {
    /// Softmax cross-entropy at every step, summed over time, unweighted.
    pub fn classes(labels: ArrayView2<'a, usize>) -> Self {
        SequenceLoss {
            targets: Targets::Classes(labels),
            step_weights: None,
            time: Reduction::Sum,
        }
    }

    /// Squared error at every step, summed over time, unweighted.
    pub fn values(targets: ArrayView3<'a, F>) -> Self {
        SequenceLoss {
            targets: Targets::Values(targets),
            step_weights: None,
            time: Reduction::Sum,
        }
    }

    /// Softmax cross-entropy of the last step's output against one class per sequence
    /// (B labels): `L = (1/B) Σ_b CE(o_{T,b}, y_b)`.
    ///
    /// ```
    /// use ndarray::Array1;
    /// use timetape::rnn::SequenceLoss;
    ///
    /// let labels = Array1::from(vec![0usize, 2, 1]);
    /// let loss = SequenceLoss::<f64>::last_class(labels.view());
    /// assert!(loss.is_last_step());
    /// ```
    pub fn last_class(labels: ArrayView1<'a, usize>) -> Self {
        SequenceLoss {
            targets: Targets::LastClass(labels),
            step_weights: None,
            time: Reduction::Sum,
        }
    }

    /// Binary cross-entropy of `σ(o_T)` (an output of width 1) against one target in
    /// [0, 1] per sequence (B targets): the last-step loss of the notes' M2.
    pub fn last_binary(targets: ArrayView1<'a, F>) -> Self {
        SequenceLoss {
            targets: Targets::LastBinary(targets),
            step_weights: None,
            time: Reduction::Sum,
        }
    }

    /// The same loss with per-step weights α_t.
    pub fn weighted(mut self, alphas: &'a [F]) -> Self {
        self.step_weights = Some(alphas);
        self
    }

    /// The same loss averaged (not summed) over time.
    pub fn mean_over_time(mut self) -> Self {
        self.time = Reduction::Mean;
        self
    }

    /// The same loss, borrowing its targets for a shorter lifetime (ndarray's views are
    /// invariant in their lifetime, so this is not a plain coercion).
    pub fn reborrow<'b>(self) -> SequenceLoss<'b, F>
    where
        'a: 'b,
    {
        let targets = match self.targets {
            Targets::Classes(l) => Targets::Classes(l.reborrow()),
            Targets::Values(v) => Targets::Values(v.reborrow()),
            Targets::LastClass(l) => Targets::LastClass(l.reborrow()),
            Targets::LastBinary(y) => Targets::LastBinary(y.reborrow()),
        };
        SequenceLoss {
            targets,
            step_weights: self.step_weights,
            time: self.time,
        }
    }

    /// True for losses read at the last step only.
    pub fn is_last_step(&self) -> bool {
        matches!(self.targets, Targets::LastClass(_) | Targets::LastBinary(_))
    }

    /// Checks the targets against a sequence of `t_len` steps of `batch` rows and a cell
    /// with `q` outputs.
    pub fn validate(&self, t_len: usize, batch: usize, q: usize) -> Result<()> {
        let op = "SequenceLoss";
        let mismatch = |got: (usize, usize)| Error::ShapeMismatch {
            op,
            lhs: (t_len, batch),
            rhs: got,
        };
        match self.targets {
            Targets::Classes(l) => {
                if l.dim() != (t_len, batch) {
                    return Err(mismatch(l.dim()));
                }
                labels_below(op, l.iter(), q)?;
            }
            Targets::Values(v) => {
                let (a, b, c) = v.dim();
                if (a, b) != (t_len, batch) || c != q {
                    return Err(mismatch((a, b)));
                }
                if let Some(at) = crate::params::first_non_finite(v.iter()) {
                    return Err(Error::NonFinite {
                        op,
                        what: format!("target value {at}"),
                    });
                }
            }
            Targets::LastClass(l) => {
                if l.len() != batch {
                    return Err(mismatch((1, l.len())));
                }
                labels_below(op, l.iter(), q)?;
            }
            Targets::LastBinary(y) => {
                if y.len() != batch {
                    return Err(mismatch((1, y.len())));
                }
                if q != 1 {
                    return Err(invalid(
                        op,
                        format!("LastBinary needs 1 output, the cell has {q}"),
                    ));
                }
                if y.iter().any(|&v| !(v >= F::zero() && v <= F::one())) {
                    return Err(invalid(op, "binary target outside [0, 1]"));
                }
            }
        }
        if let Some(w) = self.step_weights {
            if self.is_last_step() {
                return Err(invalid(
                    op,
                    "step weights apply to per-step targets, not to a last-step target",
                ));
            }
            if w.len() != t_len {
                return Err(mismatch((w.len(), 1)));
            }
            if w.iter().any(|x| !x.is_finite()) {
                return Err(invalid(op, "non-finite step weight"));
            }
        }
        Ok(())
    }
}

/// α_t of a per-step loss (1 without weights, and for a last-step target, which has
/// none), never indexing out of range.
pub(crate) fn step_weight<F: Scalar>(loss: &SequenceLoss<'_, F>, t: usize) -> F {
    match loss.step_weights {
        Some(w) if !loss.is_last_step() => w.get(t).copied().unwrap_or(F::one()),
        _ => F::one(),
    }
}

/// [`Error::LabelOutOfRange`] for the first label ≥ `classes`.
fn labels_below<'l>(
    op: &'static str,
    mut labels: impl Iterator<Item = &'l usize>,
    classes: usize,
) -> Result<()> {
    match labels.find(|&&l| l >= classes) {
        Some(&label) => Err(Error::LabelOutOfRange { op, label, classes }),
        None => Ok(()),
    }
}
