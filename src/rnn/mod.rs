//! Recurrent models unrolled on the tape.
//!
//! A cell implements [`Recurrent`]: state-independent work for a whole segment at once
//! ([`Recurrent::project_inputs`], one matrix product over all its steps), one step of
//! the recurrence ([`Recurrent::step`]), and an output head applied to the states of a
//! segment stacked over time ([`Recurrent::output`], again one matrix product). The
//! unroll ([`unroll_segment`]) applies an [`Edge`] to every `h_{t−1} → step t` edge:
//! keep it, [`detach`](crate::Tape::detach) it, or [`scale_grad`](crate::Tape::scale_grad)
//! it; full, truncated and randomized BPTT are all patterns of edges (see
//! [`crate::bptt`]).
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
pub use vanilla::{Activation, Rnn, RnnBound, RnnConfig};

use crate::error::{invalid, Error, Result};
use crate::ops::Reduction;
use crate::params::Params;
use crate::scalar::Scalar;
use crate::tape::{Tape, Var};
use ndarray::{Array2, ArrayView1, ArrayView2, ArrayView3, Axis};

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

/// What happens on the edge `h_{t−1} → step t`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Edge<F> {
    /// Gradient flows unchanged (ξ_t = 1).
    Keep,
    /// Gradient stops (ξ_t = 0): [`Tape::detach`].
    Detach,
    /// Gradient is multiplied by the factor (ξ_t = 1/π_t): [`Tape::scale_grad`].
    Scale(F),
}

impl<F: Scalar> Edge<F> {
    /// The edge that realizes a value ξ of the estimator: 0 detaches, 1 keeps, anything
    /// else scales.
    pub fn from_xi(xi: F) -> Self {
        if xi == F::zero() {
            Edge::Detach
        } else if xi == F::one() {
            Edge::Keep
        } else {
            Edge::Scale(xi)
        }
    }
}

/// Unrolls `cell` over the k steps of `xs` (k, B, D) from state `h_in`, applying
/// `edges[t]` to the edge into step t. Returns the k states `h_1 … h_k`.
///
/// The input projection of all k steps is one matrix product; only `h_{t−1} W_hh` and
/// the activation are done step by step.
///
/// Errors: [`Error::EmptyInput`] for k = 0; [`Error::ShapeMismatch`] for inputs of the
/// wrong width, a state of the wrong shape, or `edges.len() != k`.
pub fn unroll_segment<F: Scalar, C: Recurrent<F>>(
    cell: &C,
    tape: &mut Tape<F>,
    bound: &C::Bound,
    xs: ArrayView3<'_, F>,
    h_in: Var,
    edges: &[Edge<F>],
) -> Result<Vec<Var>> {
    let mut states = Vec::with_capacity(xs.len_of(Axis(0)));
    unroll_segment_into(cell, tape, bound, xs, h_in, edges, &mut states, None)?;
    Ok(states)
}

/// [`unroll_segment`] writing the states into a reused `Vec` (cleared first), and, with
/// `loss`, recording each step's loss term right after the step: the output head and
/// the loss of step t sit next to step t on the tape, so the reverse sweep meets them
/// just before it needs ∂L/∂h_t, and with released adjoints
/// ([`Tape::set_release_adjoints`]) only a few B×S adjoints are alive at a time.
/// Returns the segment's loss (`None` if it holds no term).
#[allow(clippy::too_many_arguments)]
pub(crate) fn unroll_segment_into<F: Scalar, C: Recurrent<F>>(
    cell: &C,
    tape: &mut Tape<F>,
    bound: &C::Bound,
    xs: ArrayView3<'_, F>,
    h_in: Var,
    edges: &[Edge<F>],
    states: &mut Vec<Var>,
    loss: Option<StepLosses<'_, '_, F>>,
) -> Result<Option<Var>> {
    let mut loss = loss;
    let op = "unroll";
    let (k, b, d) = xs.dim();
    if k == 0 || b == 0 {
        return Err(Error::EmptyInput {
            op,
            what: "sequence with no steps or no batch rows",
        });
    }
    if d != cell.input_width() {
        return Err(Error::ShapeMismatch {
            op,
            lhs: (b, cell.input_width()),
            rhs: (b, d),
        });
    }
    if edges.len() != k {
        return Err(Error::ShapeMismatch {
            op,
            lhs: (k, b),
            rhs: (edges.len(), 1),
        });
    }
    let hs = tape.shape(h_in)?;
    if hs != (b, cell.state_width()) {
        return Err(Error::ShapeMismatch {
            op,
            lhs: (b, cell.state_width()),
            rhs: hs,
        });
    }
    let flat = xs
        .to_shape((k * b, d))
        .map_err(|e| invalid(op, e.to_string()))?;
    let xv = tape.constant_view(flat.view())?;
    let u = cell.project_inputs(tape, bound, xv)?;
    states.clear();
    let mut h = h_in;
    for (t, edge) in edges.iter().enumerate() {
        let h_prev = match *edge {
            Edge::Keep => h,
            Edge::Detach => tape.detach(h)?,
            Edge::Scale(c) => tape.scale_grad(h, c)?,
        };
        h = cell
            .step(tape, bound, u, t * b..(t + 1) * b, h_prev)
            .map_err(|e| e.at_step(t))?;
        // A cell's contract: h_t has h_{t−1}'s shape (else the carried state breaks).
        let got = tape.shape(h)?;
        if got != hs {
            return Err(Error::ShapeMismatch {
                op: "Recurrent::step (the new state)",
                lhs: hs,
                rhs: got,
            });
        }
        states.push(h);
        if let Some(loss) = loss.as_mut() {
            loss.step(cell, tape, bound, t, h)
                .map_err(|e| e.at_step(t))?;
        }
    }
    match loss {
        Some(loss) => loss.total(tape),
        None => Ok(None),
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

    /// The coefficient `c_t / B` of the loss terms of step `t` (0-based).
    fn row_weight(&self, t: usize, t_len: usize, batch: usize) -> F {
        let alpha = step_weight(self, t);
        let time = match self.time {
            Reduction::Sum => F::one(),
            Reduction::Mean => F::one() / F::of(t_len as f64),
        };
        alpha * time / F::of(batch as f64)
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

/// Reusable scratch for the loss terms of a segment.
#[derive(Debug, Default)]
pub(crate) struct LossScratch<F> {
    labels: Vec<usize>,
    weights: Vec<F>,
    terms: Vec<Var>,
    pending: Vec<Var>,
    heads: Vec<(std::ops::Range<usize>, Var)>,
}

/// The output head and loss of per-step targets run on chunks of consecutive steps with
/// at least this many rows in all (⌈32/B⌉ steps): one product per step for batches of 32
/// and more, one product per chunk for smaller batches, where per-step products would be
/// too thin to run fast.
pub const HEAD_CHUNK_ROWS: usize = 32;

/// The loss terms of a segment, recorded step by step during the unroll
/// ([`unroll_segment_into`]).
#[derive(Debug)]
pub(crate) struct StepLosses<'l, 's, F> {
    loss: SequenceLoss<'l, F>,
    /// Local index of the first step whose loss this segment holds (`loss` is local to
    /// the steps from there on).
    from: usize,
    /// Steps in the segment.
    len: usize,
    scratch: &'s mut LossScratch<F>,
}

impl<'l, 's, F: Scalar> StepLosses<'l, 's, F> {
    /// The terms of `loss` (local to steps `from..len` of a segment of `len` steps);
    /// `loss` must have been validated with [`SequenceLoss::validate`].
    pub(crate) fn new(
        loss: SequenceLoss<'l, F>,
        from: usize,
        len: usize,
        scratch: &'s mut LossScratch<F>,
    ) -> Self {
        scratch.terms.clear();
        scratch.pending.clear();
        scratch.heads.clear();
        StepLosses {
            loss,
            from,
            len,
            scratch,
        }
    }

    /// Records the loss term of local step `t` with state `h` (if it has one).
    fn step<C: Recurrent<F>>(
        &mut self,
        cell: &C,
        tape: &mut Tape<F>,
        bound: &C::Bound,
        t: usize,
        h: Var,
    ) -> Result<()> {
        if t < self.from {
            return Ok(());
        }
        let j = t - self.from;
        let n = self.len - self.from;
        let b = tape.shape(h)?.0;
        let sc = &mut *self.scratch;
        let term = match self.loss.targets {
            Targets::LastClass(l) => {
                if j + 1 != n {
                    return Ok(());
                }
                let o = cell.output(tape, bound, h)?;
                sc.heads.push((t..t + 1, o));
                sc.labels.clear();
                sc.labels.extend(l.iter().copied());
                tape.softmax_cross_entropy(o, &sc.labels, None, Reduction::Mean)?
            }
            Targets::LastBinary(y) => {
                if j + 1 != n {
                    return Ok(());
                }
                let o = cell.output(tape, bound, h)?;
                sc.heads.push((t..t + 1, o));
                let yv = y
                    .to_shape((b, 1))
                    .map_err(|e| invalid("SequenceLoss", e.to_string()))?;
                let yt = tape.constant_view(yv.view())?;
                tape.bce_with_logits(o, yt, Reduction::Mean)?
            }
            Targets::Classes(_) | Targets::Values(_) => {
                sc.pending.push(h);
                let chunk = HEAD_CHUNK_ROWS.div_ceil(b);
                if sc.pending.len() < chunk && j + 1 < n {
                    return Ok(());
                }
                self.chunk_term(cell, tape, bound, j + 1 - self.scratch.pending.len(), b)?
            }
        };
        self.scratch.terms.push(term);
        Ok(())
    }

    /// The loss term of the pending steps `j0 ..` (local indices): one output head over
    /// their stacked states and one fused loss.
    fn chunk_term<C: Recurrent<F>>(
        &mut self,
        cell: &C,
        tape: &mut Tape<F>,
        bound: &C::Bound,
        j0: usize,
        b: usize,
    ) -> Result<Var> {
        let n = self.len - self.from;
        let sc = &mut *self.scratch;
        let count = sc.pending.len();
        let hs = match sc.pending.as_slice() {
            [one] => *one,
            many => tape.concat_rows(many)?,
        };
        sc.pending.clear();
        let o = cell.output(tape, bound, hs)?;
        let t0 = self.from + j0;
        sc.heads.push((t0..t0 + count, o));
        sc.weights.clear();
        for j in j0..j0 + count {
            let w = self.loss.row_weight(j, n, b);
            sc.weights.extend(std::iter::repeat_n(w, b));
        }
        match self.loss.targets {
            Targets::Classes(l) => {
                sc.labels.clear();
                for j in j0..j0 + count {
                    sc.labels.extend(l.row(j).iter().copied());
                }
                tape.softmax_cross_entropy(o, &sc.labels, Some(&sc.weights), Reduction::Sum)
            }
            Targets::Values(v) => {
                let q = v.len_of(Axis(2));
                let rows = v.slice_axis(Axis(0), ndarray::Slice::from(j0..j0 + count));
                let flat = rows
                    .to_shape((count * b, q))
                    .map_err(|e| invalid("SequenceLoss", e.to_string()))?;
                let yt = tape.constant_view(flat.view())?;
                tape.squared_error(o, yt, Some(&sc.weights), Reduction::Sum)
            }
            Targets::LastClass(_) | Targets::LastBinary(_) => {
                Err(invalid("SequenceLoss", "last-step targets have no chunks"))
            }
        }
    }

    /// The sum of the recorded terms.
    fn total(self, tape: &mut Tape<F>) -> Result<Option<Var>> {
        match self.scratch.terms.as_slice() {
            [] => Ok(None),
            [one] => Ok(Some(*one)),
            terms => {
                let stacked = tape.concat_rows(terms)?;
                tape.sum(stacked).map(Some)
            }
        }
    }
}

/// A whole sequence unrolled on one tape.
#[derive(Debug, Clone)]
pub struct Unrolled {
    /// The initial state h_0 (a variable: its adjoint ∂L/∂h_0 can be read).
    pub h0: Var,
    /// The states h_1 … h_T; after a backward pass `tape.adjoint(states[t])` is ∂L/∂h_{t+1}.
    pub states: Vec<Var>,
    /// The loss, 1×1.
    pub loss: Var,
    /// The outputs: each entry is a node of the output head covering the steps of its
    /// range (0-based), their rows stacked step after step (B rows per step), so `o_t`
    /// is rows `(t − start)·B ..` of the node whose range holds t. Steps without a loss
    /// term (before the last, for a last-step loss) have no output.
    pub outputs: Vec<(std::ops::Range<usize>, Var)>,
}

/// Unrolls `cell` over the whole sequence `xs` (T, B, D) on `tape` with every edge kept
/// (full BPTT), from `h0` (zeros if `None`), and builds the loss.
///
/// ```
/// use ndarray::{Array2, Array3};
/// use timetape::rnn::{self, models, SequenceLoss};
/// use timetape::{Params, Tape};
///
/// let mut params = Params::<f64>::new();
/// let cell = models::m3(&mut params, 3, 4, 2, 0)?; // D = 3, H = 4, Q = 2, seed 0
/// let xs = Array3::from_elem((5, 1, 3), 0.5);      // T = 5, B = 1
/// let labels = Array2::from_elem((5, 1), 1usize);
/// let mut tape = Tape::new();
/// let run = rnn::unroll(&cell, &mut tape, &params, xs.view(), None, &SequenceLoss::classes(labels.view()))?;
/// let grads = tape.backward(run.loss)?;
/// assert_eq!(grads.iter().count(), 5); // W_xh, W_hh, b_h, W_hq, b_q
/// # Ok::<(), timetape::Error>(())
/// ```
pub fn unroll<F: Scalar, C: Recurrent<F>>(
    cell: &C,
    tape: &mut Tape<F>,
    params: &Params<F>,
    xs: ArrayView3<'_, F>,
    h0: Option<ArrayView2<'_, F>>,
    loss: &SequenceLoss<'_, F>,
) -> Result<Unrolled> {
    unroll_with_edges(cell, tape, params, xs, h0, loss, None)
}

/// [`unroll`] with an explicit edge for every step (`None`: all [`Edge::Keep`]).
pub fn unroll_with_edges<F: Scalar, C: Recurrent<F>>(
    cell: &C,
    tape: &mut Tape<F>,
    params: &Params<F>,
    xs: ArrayView3<'_, F>,
    h0: Option<ArrayView2<'_, F>>,
    loss: &SequenceLoss<'_, F>,
    edges: Option<&[Edge<F>]>,
) -> Result<Unrolled> {
    let (t_len, b, _) = xs.dim();
    if t_len == 0 || b == 0 {
        return Err(Error::EmptyInput {
            op: "unroll",
            what: "sequence with no steps or no batch rows",
        });
    }
    loss.validate(t_len, b, cell.output_width())?;
    let h0 = match h0 {
        Some(h) => tape.variable(h)?,
        None => {
            crate::init::check_alloc::<F>("unroll h0", &[(b, cell.state_width())])?;
            tape.variable(Array2::zeros((b, cell.state_width())).view())?
        }
    };
    let bound = cell.bind(tape, params)?;
    let keep = vec![Edge::Keep; t_len];
    let edges = edges.unwrap_or(&keep);
    let mut scratch = LossScratch::default();
    let mut states = Vec::with_capacity(t_len);
    let terms = StepLosses::new(*loss, 0, t_len, &mut scratch);
    let loss = unroll_segment_into(cell, tape, &bound, xs, h0, edges, &mut states, Some(terms))?
        .ok_or_else(|| invalid("unroll", "the loss has no term"))?;
    let outputs = std::mem::take(&mut scratch.heads);
    Ok(Unrolled {
        h0,
        states,
        loss,
        outputs,
    })
}
