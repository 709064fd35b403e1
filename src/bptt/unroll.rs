//! A whole sequence unrolled on a tape of the caller's, for inspection and for models
//! that need the graph itself (gradcheck of a cell, reading every ∂L/∂h_t). The runners
//! of [`super`] record the same segments, one at a time.

use super::segment::{Recording, Segment};
use super::Edge;
use crate::error::{invalid, Error, Result};
use crate::params::Params;
use crate::rnn::{Recurrent, Sequence};
use crate::scalar::Scalar;
use crate::tape::{Tape, Var};
use ndarray::Array2;
use std::ops::Range;

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
    pub outputs: Vec<(Range<usize>, Var)>,
}

impl Unrolled {
    /// The output node holding step `t` (0-based) and the first row of `o_t` in it
    /// (`None` for a step without a loss term).
    pub fn output(&self, t: usize, batch: usize) -> Option<(Var, Range<usize>)> {
        self.outputs
            .iter()
            .find(|(steps, _)| steps.contains(&t))
            .map(|(steps, o)| {
                let first = (t - steps.start) * batch;
                (*o, first..first + batch)
            })
    }
}

/// How to unroll a cell on a tape: every edge kept (full BPTT) unless
/// [`Unroll::edges`] says otherwise.
///
/// ```
/// use ndarray::{Array2, Array3};
/// use timetape::bptt::{Edge, Unroll};
/// use timetape::rnn::{models, SequenceLoss, Sequence, Sizes};
/// use timetape::{Params, Tape};
///
/// let mut params = Params::<f64>::new();
/// let cell = models::m3(&mut params, Sizes::new(3, 4, 2), 0)?;
/// let xs = Array3::from_elem((5, 1, 3), 0.5);
/// let labels = Array2::from_elem((5, 1), 1usize);
/// let seq = Sequence::new(xs.view(), SequenceLoss::classes(labels.view()));
/// // Cut the edge into step 3 (0-based 2): the gradient of Fixed-like truncation.
/// let edges = [Edge::Keep, Edge::Keep, Edge::Detach, Edge::Keep, Edge::Keep];
/// let mut tape = Tape::new();
/// let run = Unroll::new(&cell, &params).edges(&edges).record(&mut tape, &seq)?;
/// let grads = tape.backward(run.loss)?;
/// assert_eq!(grads.iter().count(), 5);
/// # Ok::<(), timetape::Error>(())
/// ```
#[derive(Debug)]
pub struct Unroll<'a, F: Scalar, C> {
    cell: &'a C,
    params: &'a Params<F>,
    edges: Option<&'a [Edge<F>]>,
}

impl<F: Scalar, C> Clone for Unroll<'_, F, C> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<F: Scalar, C> Copy for Unroll<'_, F, C> {}

impl<'a, F: Scalar, C: Recurrent<F>> Unroll<'a, F, C> {
    /// Unrolls `cell` with the parameters of `params`, every edge kept.
    pub fn new(cell: &'a C, params: &'a Params<F>) -> Self {
        Unroll {
            cell,
            params,
            edges: None,
        }
    }

    /// The same with an explicit edge into every step (T edges).
    pub fn edges(mut self, edges: &'a [Edge<F>]) -> Self {
        self.edges = Some(edges);
        self
    }

    /// Records the whole sequence on `tape` (which is not cleared first) and builds its
    /// loss.
    ///
    /// Errors: [`Error::EmptyInput`] for an empty sequence; [`Error::ShapeMismatch`] for
    /// targets, weights, `h0` or edges that do not fit it;
    /// [`Error::LabelOutOfRange`]; [`Error::InvalidArgument`] for a loss without a term.
    pub fn record(&self, tape: &mut Tape<F>, seq: &Sequence<'_, F>) -> Result<Unrolled> {
        let cell = self.cell;
        let (t_len, b, _) = seq.inputs().dim();
        if t_len == 0 || b == 0 {
            return Err(Error::EmptyInput {
                op: "unroll",
                what: "sequence with no steps or no batch rows",
            });
        }
        seq.loss().validate(t_len, b, cell.output_width())?;
        let h0_value = match seq.h0 {
            Some(h) => h.to_owned(),
            None => {
                crate::init::check_alloc::<F>("unroll h0", &[(b, cell.state_width())])?;
                Array2::zeros((b, cell.state_width()))
            }
        };
        let h0 = tape.variable(h0_value.view())?;
        if let Some(m) = seq.resets {
            if m.dim() != (t_len, b) {
                return Err(crate::error::Error::ShapeMismatch {
                    op: "Sequence::with_resets",
                    lhs: (t_len, b),
                    rhs: m.dim(),
                });
            }
        }
        let bound = cell.bind(tape, self.params)?;
        let keep = vec![Edge::Keep; if self.edges.is_some() { 0 } else { t_len }];
        let mut seg = Segment::plain(
            seq.xs.reborrow(),
            seq.tokens.map(|ids| ids.reborrow()),
            self.edges.unwrap_or(&keep),
        );
        seg.loss = Some((0, seq.loss.reborrow()));
        seg.resets = seq.resets.map(|m| (m.reborrow(), h0_value.view()));
        let mut recording = Recording::default();
        let loss = recording
            .record(cell, &bound, tape, h0, &seg)?
            .ok_or_else(|| invalid("unroll", "the loss has no term"))?;
        Ok(Unrolled {
            h0,
            outputs: recording.take_heads(),
            states: std::mem::take(&mut recording.states),
            loss,
        })
    }
}

/// Unrolls `cell` over the whole sequence on `tape` with every edge kept (full BPTT):
/// [`Unroll::new`]`(cell, params).record(tape, seq)`.
///
/// ```
/// use ndarray::{Array2, Array3};
/// use timetape::bptt::{unroll};
/// use timetape::rnn::{models, SequenceLoss, Sequence, Sizes};
/// use timetape::{Params, Tape};
///
/// let mut params = Params::<f64>::new();
/// let cell = models::m3(&mut params, Sizes::new(3, 4, 2), 0)?; // D = 3, H = 4, Q = 2, seed 0
/// let xs = Array3::from_elem((5, 1, 3), 0.5);      // T = 5, B = 1
/// let labels = Array2::from_elem((5, 1), 1usize);
/// let seq = Sequence::new(xs.view(), SequenceLoss::classes(labels.view()));
/// let mut tape = Tape::new();
/// let run = unroll(&cell, &mut tape, &params, &seq)?;
/// let grads = tape.backward(run.loss)?;
/// assert_eq!(grads.iter().count(), 5); // W_xh, W_hh, b_h, W_hq, b_q
/// # Ok::<(), timetape::Error>(())
/// ```
///
/// Errors: as [`Unroll::record`].
pub fn unroll<F: Scalar, C: Recurrent<F>>(
    cell: &C,
    tape: &mut Tape<F>,
    params: &Params<F>,
    seq: &Sequence<'_, F>,
) -> Result<Unrolled> {
    Unroll::new(cell, params).record(tape, seq)
}
