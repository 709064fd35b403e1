//! Layers of cells, each reading the state of the one below.

use super::{Projection, Recurrent};
use crate::error::{Error, Result};
use crate::ops::RowsOf;
use crate::params::Params;
use crate::scalar::Scalar;
use crate::tape::{Tape, Var};
use std::ops::Range;

/// A stack of cells: layer 1 reads the inputs `x_t`, layer l + 1 reads layer l's new
/// state (its [`Recurrent::next_input`]: `h` for an LSTM), and the output head is the
/// top layer's. The carried state is the layers' states side by side,
/// `[h_t^(1) … h_t^(L)]`, so every truncation, streaming and checkpointing apply to the
/// stack as to one cell (a cut on the edge `h_{t−1} → step t` cuts it in every layer).
///
/// The layers are cells of one type, each with its own parameter names
/// ([`super::Gru::named`], …); the lower layers' output heads are not used (their
/// parameters get a zero gradient). The layer widths are checked when the stack is
/// bound to a tape (every run): layer l + 1's input width must be layer l's
/// [`Recurrent::next_input_width`].
///
/// ```
/// use ndarray::{Array2, Array3};
/// use timetape::bptt::{self, Run, Truncation};
/// use timetape::rnn::{Gru, Recurrent, Sequence, SequenceLoss, Sizes, Stack};
/// use timetape::Params;
///
/// let mut params = Params::<f64>::new();
/// let lower = Gru::named(&mut params, "l0.", Sizes::new(3, 8, 1), 0)?;
/// let upper = Gru::named(&mut params, "l1.", Sizes::new(8, 8, 4), 1)?;
/// let stack = Stack::new(vec![lower, upper])?;
/// assert_eq!(Recurrent::<f64>::state_width(&stack), 16);
/// let xs = Array3::from_elem((6, 2, 3), 0.1);
/// let labels = Array2::from_elem((6, 2), 3usize);
/// let seq = Sequence::new(xs.view(), SequenceLoss::classes(labels.view()));
/// let report = bptt::run(&stack, &params, &seq, &Run::new(Truncation::Fixed { k: 3 }))?;
/// assert_eq!(report.backward_steps, 6);
/// # Ok::<(), timetape::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Stack<C> {
    layers: Vec<C>,
}

impl<C> Stack<C> {
    /// The stack of `layers`, bottom first.
    ///
    /// Errors: [`Error::EmptyInput`] for no layer.
    pub fn new(layers: Vec<C>) -> Result<Self> {
        if layers.is_empty() {
            return Err(Error::EmptyInput {
                op: "Stack::new",
                what: "no layer",
            });
        }
        Ok(Stack { layers })
    }

    /// The layers, bottom first.
    pub fn layers(&self) -> &[C] {
        &self.layers
    }
}

/// How the bottom layer reads its inputs at one step.
#[derive(Clone)]
enum Bottom {
    /// The step's inputs `x_t` (B×D).
    Inputs(Var),
    /// The step's rows of the segment's projected inputs.
    Projected(RowsOf),
}

impl<C> Stack<C> {
    /// The top layer and the columns of its state.
    fn top<F: Scalar>(&self) -> (&C, Range<usize>)
    where
        C: Recurrent<F>,
    {
        let widths = self.layers.iter().map(|l| l.state_width());
        let total: usize = widths.sum();
        let top = &self.layers[self.layers.len() - 1];
        (top, total - top.state_width()..total)
    }

    /// One step of every layer from the state `h` (the layers' states side by side).
    fn step_layers<F: Scalar>(
        &self,
        tape: &mut Tape<F>,
        bound: &[C::Bound],
        bottom: Bottom,
        h: Var,
    ) -> Result<Var>
    where
        C: Recurrent<F>,
    {
        let single = self.layers.len() == 1;
        let mut parts = Vec::with_capacity(self.layers.len());
        let mut input = None;
        let mut at = 0;
        layer_bound(bound, self.layers.len() - 1)?;
        for (l, (layer, b)) in self.layers.iter().zip(bound).enumerate() {
            let s = layer.state_width();
            let h_l = if single {
                h
            } else {
                tape.slice_cols(h, at..at + s)?
            };
            at += s;
            let new = match (l, input, &bottom) {
                (0, _, Bottom::Projected(u)) => match layer.projection() {
                    Some(p) => p.step_projected(tape, b, u.clone(), h_l)?,
                    None => return Err(no_projection()),
                },
                (0, _, Bottom::Inputs(x)) => layer.step(tape, b, *x, h_l)?,
                (_, Some(x), _) => layer.step(tape, b, x, h_l)?,
                (_, None, _) => return Err(no_projection()),
            };
            input = Some(layer.next_input(tape, new)?);
            parts.push(new);
        }
        match parts.as_slice() {
            [one] => Ok(*one),
            many => tape.concat_cols(many),
        }
    }
}

/// Layer `l`'s part of a stack's bound parameters (an error for a bound that is not the
/// stack's own).
fn layer_bound<B>(bound: &[B], l: usize) -> Result<&B> {
    bound.get(l).ok_or(Error::ShapeMismatch {
        op: "Stack (bound parameters)",
        lhs: (l + 1, 1),
        rhs: (bound.len(), 1),
    })
}

/// The error for a projected step of a stack whose bottom layer has no projection (the
/// runners never ask for one: [`Recurrent::projection`] is then `None`).
fn no_projection() -> Error {
    crate::error::invalid("Stack", "the bottom layer has no input projection")
}

impl<F: Scalar, C: Recurrent<F>> Recurrent<F> for Stack<C> {
    type Bound = Vec<C::Bound>;

    fn input_width(&self) -> usize {
        self.layers[0].input_width()
    }

    /// The sum of the layers' state widths.
    fn state_width(&self) -> usize {
        self.layers.iter().map(|l| l.state_width()).sum()
    }

    /// The top layer's output width.
    fn output_width(&self) -> usize {
        self.top().0.output_width()
    }

    /// Binds every layer, after checking that each reads the width the one below gives.
    fn bind(&self, tape: &mut Tape<F>, params: &Params<F>) -> Result<Vec<C::Bound>> {
        for pair in self.layers.windows(2) {
            let (below, above) = (&pair[0], &pair[1]);
            if above.input_width() != below.next_input_width() {
                return Err(Error::ShapeMismatch {
                    op: "Stack (a layer's input width against the state of the one below)",
                    lhs: (1, below.next_input_width()),
                    rhs: (1, above.input_width()),
                });
            }
        }
        self.layers.iter().map(|l| l.bind(tape, params)).collect()
    }

    fn step(&self, tape: &mut Tape<F>, bound: &Vec<C::Bound>, x: Var, h: Var) -> Result<Var> {
        self.step_layers(tape, bound, Bottom::Inputs(x), h)
    }

    /// The top layer's head on its part of the stacked states.
    fn output(&self, tape: &mut Tape<F>, bound: &Vec<C::Bound>, hs: Var) -> Result<Var> {
        let (top, cols) = self.top();
        let b = layer_bound(bound, self.layers.len() - 1)?;
        if self.layers.len() == 1 {
            return top.output(tape, b, hs);
        }
        let h_top = tape.slice_cols(hs, cols)?;
        top.output(tape, b, h_top)
    }

    /// The bottom layer's projection, if it has one.
    fn projection(&self) -> Option<&dyn Projection<F, Vec<C::Bound>>> {
        self.layers[0].projection().map(|_| self as _)
    }

    fn next_input_width(&self) -> usize {
        self.top().0.next_input_width()
    }

    /// The bottom layer's embedding of tokens.
    fn embed(&self, tape: &mut Tape<F>, bound: &Vec<C::Bound>, ids: &[usize]) -> Result<Var> {
        self.layers[0].embed(tape, layer_bound(bound, 0)?, ids)
    }

    /// What the top layer gives of its part of the state.
    fn next_input(&self, tape: &mut Tape<F>, h: Var) -> Result<Var> {
        let (top, cols) = self.top();
        if self.layers.len() == 1 {
            return top.next_input(tape, h);
        }
        let h_top = tape.slice_cols(h, cols)?;
        top.next_input(tape, h_top)
    }
}

impl<F: Scalar, C: Recurrent<F>> Projection<F, Vec<C::Bound>> for Stack<C> {
    /// The bottom layer's projection of the inputs.
    fn project_inputs(&self, tape: &mut Tape<F>, bound: &Vec<C::Bound>, xs: Var) -> Result<Var> {
        match self.layers[0].projection() {
            Some(p) => p.project_inputs(tape, layer_bound(bound, 0)?, xs),
            None => Err(no_projection()),
        }
    }

    fn step_projected(
        &self,
        tape: &mut Tape<F>,
        bound: &Vec<C::Bound>,
        u: RowsOf,
        h: Var,
    ) -> Result<Var> {
        self.step_layers(tape, bound, Bottom::Projected(u), h)
    }
}
