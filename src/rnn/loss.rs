//! The loss of a sequence: what the outputs are compared with, and how the terms are
//! reduced over the batch and over time.
//!
//! A loss is built from its targets and can only be given the options that apply to
//! them: per-step targets ([`PerStep`]) take step weights α_t and a reduction over time,
//! a last-step target ([`LastStep`]) has neither; both take a reduction over the batch.
//! Either converts into the [`SequenceLoss`] a [`Sequence`](super::Sequence) holds.

use crate::error::{invalid, Error, Result};
use crate::ops::Reduction;
use crate::scalar::Scalar;
use ndarray::{ArrayView1, ArrayView2, ArrayView3, Axis};

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
    /// One real target per sequence, read at the last step, shape (B, Q): squared error
    /// `‖o_T − y‖²` (the influence-balancing system of the notes).
    LastValues(ArrayView2<'a, F>),
}

/// A loss over a sequence: per-step terms with weights `α_t`, summed or averaged over
/// time, each summed or averaged over the batch; or one term at the last step.
///
/// With per-step targets, `L = Σ_t c_t · s_B Σ_b l(o_{t,b}, y_{t,b})` where
/// `c_t = α_t` (1 if no weights are given) for a sum over time and `α_t / T` for a mean,
/// and `s_B = 1/B` for a mean over the batch (the default), 1 for a sum. With a
/// last-step target, `L = s_B Σ_b l(o_{T,b}, y_b)`. `l` is softmax cross-entropy for
/// classes, `‖o − y‖²` (no ½) for values, binary cross-entropy on `σ(o)` for a binary
/// target.
///
/// Built with [`SequenceLoss::classes`], [`SequenceLoss::values`],
/// [`SequenceLoss::last_class`], [`SequenceLoss::last_binary`] or
/// [`SequenceLoss::last_values`]:
///
/// ```
/// use ndarray::{Array1, Array2};
/// use timetape::rnn::{SequenceLoss, Targets};
/// use timetape::Reduction;
///
/// let labels = Array2::<usize>::zeros((4, 2));
/// let alphas = [0.1, 0.2, 0.3, 0.4];
/// let loss: SequenceLoss<f64> = SequenceLoss::classes(labels.view())
///     .weighted(&alphas)
///     .mean_over_time()
///     .sum_over_batch()
///     .into();
/// assert_eq!((loss.time(), loss.batch()), (Reduction::Mean, Reduction::Sum));
///
/// // A last-step target has no step weights and no reduction over time to set:
/// let y = Array2::<f64>::zeros((2, 3));
/// let last: SequenceLoss<f64> = SequenceLoss::last_values(y.view()).into();
/// assert!(last.is_last_step() && last.step_weights().is_none());
/// assert!(matches!(last.targets(), Targets::LastValues(_)));
/// ```
#[derive(Debug, Clone, Copy)]
pub struct SequenceLoss<'a, F> {
    pub(crate) targets: Targets<'a, F>,
    pub(crate) step_weights: Option<&'a [F]>,
    pub(crate) time: Reduction,
    pub(crate) batch: Reduction,
    /// For the rows of a larger batch ([`SequenceLoss::rows`]): that batch's size, so
    /// that a mean over the batch divides by it and the parts add up to the whole.
    pub(crate) batch_of: Option<usize>,
}

/// A loss with a target at every step, being built: step weights, reduction over time
/// and over the batch. Converts into a [`SequenceLoss`].
#[derive(Debug, Clone, Copy)]
pub struct PerStep<'a, F>(SequenceLoss<'a, F>);

/// A loss with one target per sequence at the last step, being built: reduction over
/// the batch. Converts into a [`SequenceLoss`].
///
/// Step weights and a reduction over time do not apply to a last-step target, and
/// cannot be given:
///
/// ```compile_fail
/// use ndarray::Array1;
/// use timetape::rnn::SequenceLoss;
///
/// let labels = Array1::from(vec![0usize, 1]);
/// let loss = SequenceLoss::<f64>::last_class(labels.view()).weighted(&[1.0, 2.0]);
/// ```
#[derive(Debug, Clone, Copy)]
pub struct LastStep<'a, F>(SequenceLoss<'a, F>);

impl<'a, F> SequenceLoss<'a, F> {
    fn of(targets: Targets<'a, F>) -> Self {
        SequenceLoss {
            targets,
            step_weights: None,
            time: Reduction::Sum,
            batch: Reduction::Mean,
            batch_of: None,
        }
    }

    /// Softmax cross-entropy at every step against labels (T, B): summed over time,
    /// averaged over the batch, unweighted.
    pub fn classes(labels: ArrayView2<'a, usize>) -> PerStep<'a, F> {
        PerStep(Self::of(Targets::Classes(labels)))
    }

    /// Squared error at every step against targets (T, B, Q): summed over time,
    /// averaged over the batch, unweighted.
    pub fn values(targets: ArrayView3<'a, F>) -> PerStep<'a, F> {
        PerStep(Self::of(Targets::Values(targets)))
    }

    /// Softmax cross-entropy of the last step's output against one class per sequence
    /// (B labels), averaged over the batch: `L = (1/B) Σ_b CE(o_{T,b}, y_b)`.
    ///
    /// ```
    /// use ndarray::Array1;
    /// use timetape::rnn::SequenceLoss;
    ///
    /// let labels = Array1::from(vec![0usize, 2, 1]);
    /// let loss: SequenceLoss<f64> = SequenceLoss::last_class(labels.view()).into();
    /// assert!(loss.is_last_step());
    /// ```
    pub fn last_class(labels: ArrayView1<'a, usize>) -> LastStep<'a, F> {
        LastStep(Self::of(Targets::LastClass(labels)))
    }

    /// Binary cross-entropy of `σ(o_T)` (an output of width 1) against one target in
    /// [0, 1] per sequence (B targets), averaged over the batch: the loss of the notes'
    /// M2.
    pub fn last_binary(targets: ArrayView1<'a, F>) -> LastStep<'a, F> {
        LastStep(Self::of(Targets::LastBinary(targets)))
    }

    /// Squared error `‖o_T − y_b‖²` of the last step's output against one real target
    /// per sequence (B×Q), averaged over the batch.
    pub fn last_values(targets: ArrayView2<'a, F>) -> LastStep<'a, F> {
        LastStep(Self::of(Targets::LastValues(targets)))
    }

    /// What the outputs are compared with.
    pub fn targets(&self) -> Targets<'a, F>
    where
        F: Copy,
    {
        self.targets
    }

    /// The step weights α_1..α_T, if given (per-step targets only).
    pub fn step_weights(&self) -> Option<&'a [F]> {
        self.step_weights
    }

    /// Sum (the default) or mean over time; [`Reduction::Sum`] for a last-step target.
    pub fn time(&self) -> Reduction {
        self.time
    }

    /// Mean (the default) or sum over the batch.
    pub fn batch(&self) -> Reduction {
        self.batch
    }

    /// True for losses read at the last step only.
    pub fn is_last_step(&self) -> bool {
        !matches!(self.targets, Targets::Classes(_) | Targets::Values(_))
    }
}

impl<'a, F> PerStep<'a, F> {
    /// The same loss with per-step weights α_1..α_T (checked when run: T finite values).
    pub fn weighted(mut self, alphas: &'a [F]) -> Self {
        self.0.step_weights = Some(alphas);
        self
    }

    /// The same loss averaged (not summed) over time: `c_t = α_t / T`.
    pub fn mean_over_time(mut self) -> Self {
        self.0.time = Reduction::Mean;
        self
    }

    /// The same loss summed (not averaged) over the batch rows.
    pub fn sum_over_batch(mut self) -> Self {
        self.0.batch = Reduction::Sum;
        self
    }
}

impl<'a, F> LastStep<'a, F> {
    /// The same loss summed (not averaged) over the batch rows.
    pub fn sum_over_batch(mut self) -> Self {
        self.0.batch = Reduction::Sum;
        self
    }
}

impl<'a, F> From<PerStep<'a, F>> for SequenceLoss<'a, F> {
    fn from(loss: PerStep<'a, F>) -> Self {
        loss.0
    }
}

impl<'a, F> From<LastStep<'a, F>> for SequenceLoss<'a, F> {
    fn from(loss: LastStep<'a, F>) -> Self {
        loss.0
    }
}

impl<'a, F: Scalar> SequenceLoss<'a, F> {
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
            Targets::LastValues(y) => Targets::LastValues(y.reborrow()),
        };
        SequenceLoss {
            targets,
            step_weights: self.step_weights,
            time: self.time,
            batch: self.batch,
            batch_of: self.batch_of,
        }
    }

    /// The factor `s_B` of every term: 1/B for a mean over the batch (B the whole
    /// batch's size for the rows of one, [`SequenceLoss::rows`]), 1 for a sum.
    pub(crate) fn batch_factor(&self, batch: usize) -> F {
        match self.batch {
            Reduction::Mean => F::one() / F::of(self.batch_of.unwrap_or(batch) as f64),
            Reduction::Sum => F::one(),
        }
    }

    /// The batch size B of the targets.
    fn batch_rows(&self) -> usize {
        match &self.targets {
            Targets::Classes(l) => l.ncols(),
            Targets::Values(v) => v.dim().1,
            Targets::LastClass(l) => l.len(),
            Targets::LastBinary(y) => y.len(),
            Targets::LastValues(y) => y.nrows(),
        }
    }

    /// The batch rows `rows` of this loss, as a part of the whole batch: a mean over the
    /// batch still divides by the whole batch's size, so that the losses and gradients
    /// of the parts of a batch add up to those of the whole (what a data-parallel run
    /// sums). See [`Sequence::rows`](super::Sequence::rows).
    ///
    /// Errors: [`Error::InvalidArgument`] for rows outside the batch.
    pub fn rows(&self, rows: std::ops::Range<usize>) -> Result<SequenceLoss<'a, F>> {
        let op = "SequenceLoss::rows";
        let batch = self.batch_rows();
        if rows.start > rows.end || rows.end > batch {
            return Err(invalid(
                op,
                format!("rows {rows:?} outside a batch of {batch}"),
            ));
        }
        let whole = self.batch_of.unwrap_or(batch);
        let slice = ndarray::Slice::from(rows);
        let targets = match self.targets {
            Targets::Classes(l) => Targets::Classes(l.slice_axis_move(Axis(1), slice)),
            Targets::Values(v) => Targets::Values(v.slice_axis_move(Axis(1), slice)),
            Targets::LastClass(l) => Targets::LastClass(l.slice_axis_move(Axis(0), slice)),
            Targets::LastBinary(y) => Targets::LastBinary(y.slice_axis_move(Axis(0), slice)),
            Targets::LastValues(y) => Targets::LastValues(y.slice_axis_move(Axis(0), slice)),
        };
        Ok(SequenceLoss {
            targets,
            batch_of: Some(whole),
            ..*self
        })
    }

    /// The coefficients `c_t` of a per-step loss over `t_len` steps (α_t, or α_t / T
    /// for a mean over time; 1 for a last-step target), without the batch factor.
    pub(crate) fn step_coefficients(&self, t_len: usize) -> Vec<F> {
        (0..t_len).map(|t| self.coefficient(t, t_len)).collect()
    }

    /// The coefficient `c_t` of step `t` (0-based) of a loss over `t_len` steps: `α_t`
    /// (1 without weights, and for a last-step target), divided by T for a mean over
    /// time; without the batch factor.
    pub(crate) fn coefficient(&self, t: usize, t_len: usize) -> F {
        let alpha = match self.step_weights {
            Some(w) if !self.is_last_step() => w.get(t).copied().unwrap_or(F::one()),
            _ => F::one(),
        };
        match self.time {
            Reduction::Sum => alpha,
            Reduction::Mean => alpha / F::of(t_len as f64),
        }
    }

    /// Checks the targets against a sequence of `t_len` steps of `batch` rows and a cell
    /// with `q` outputs.
    ///
    /// Errors: [`Error::ShapeMismatch`] for targets or weights of the wrong shape,
    /// [`Error::LabelOutOfRange`] for a label ≥ Q, [`Error::NonFinite`] for a non-finite
    /// target value, [`Error::InvalidArgument`] for a binary target outside [0, 1], a
    /// binary target on more than one output, or a non-finite step weight.
    pub fn validate(&self, t_len: usize, batch: usize, q: usize) -> Result<()> {
        let op = "SequenceLoss";
        let mismatch = |got: (usize, usize)| Error::ShapeMismatch {
            op,
            lhs: (t_len, batch),
            rhs: got,
        };
        match self.targets {
            Targets::Classes(l) if l.dim() != (t_len, batch) => return Err(mismatch(l.dim())),
            Targets::Classes(l) => labels_below(op, l.iter(), q)?,
            Targets::Values(v) => {
                let (a, b, c) = v.dim();
                if (a, b) != (t_len, batch) || c != q {
                    return Err(mismatch((a, b)));
                }
                values_finite(op, v.iter())?;
            }
            Targets::LastClass(l) if l.len() != batch => return Err(mismatch((1, l.len()))),
            Targets::LastClass(l) => labels_below(op, l.iter(), q)?,
            Targets::LastBinary(y) if y.len() != batch => return Err(mismatch((1, y.len()))),
            Targets::LastBinary(_) if q != 1 => {
                let why = format!("a binary target needs 1 output, the cell has {q}");
                return Err(invalid(op, why));
            }
            Targets::LastBinary(y) => {
                if y.iter().any(|&v| !(v >= F::zero() && v <= F::one())) {
                    return Err(invalid(op, "binary target outside [0, 1]"));
                }
            }
            Targets::LastValues(y) if y.dim() != (batch, q) => {
                return Err(Error::ShapeMismatch {
                    op,
                    lhs: (batch, q),
                    rhs: y.dim(),
                })
            }
            Targets::LastValues(y) => values_finite(op, y.iter())?,
        }
        if let Some(w) = self.step_weights {
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

/// [`Error::NonFinite`] for the first non-finite target value.
fn values_finite<'v, F: Scalar + 'v>(
    op: &'static str,
    values: impl Iterator<Item = &'v F>,
) -> Result<()> {
    match crate::params::first_non_finite(values) {
        Some(at) => Err(Error::NonFinite {
            op,
            what: format!("target value {at}"),
        }),
        None => Ok(()),
    }
}
