//! Long short-term memory.

use super::{step_by_projection, Projection, Recurrent, Sizes};
use crate::error::Result;
use crate::init;
use crate::ops::RowsOf;
use crate::params::{ParamId, Params};
use crate::scalar::Scalar;
use crate::tape::{Tape, Var};
use ndarray::Array2;

/// An LSTM cell (Hochreiter & Schmidhuber 1997, with a forget gate), batch-major:
///
/// ```text
/// [a_i a_f a_g a_o] = x_t W_x + h_{t−1} W_h + b          (each B×H)
/// i_t = σ(a_i),  f_t = σ(a_f),  g_t = tanh(a_g),  o_t = σ(a_o)
/// c_t = f_t ⊙ c_{t−1} + i_t ⊙ g_t
/// h_t = o_t ⊙ tanh(c_t)
/// y_t = h_t W_hq + b_q
/// ```
///
/// The state the BPTT strategies carry is `[h_t c_t]` (B×2H), so that one edge per step
/// carries both: [`Recurrent::state_width`] is 2H, an initial state is `[h_0 c_0]`, and
/// the states of an unroll (and their ∂L/∂ adjoints) hold both halves. The output reads
/// `h_t` only. Parameters: `lstm.W_x` (D×4H), `lstm.W_h` (H×4H), `lstm.b` (1×4H; the
/// forget-gate quarter starts at 1), `lstm.W_hq` (H×Q), `lstm.b_q` (1×Q) ([`Lstm::new`]),
/// or the same under a prefix of your own ([`Lstm::named`]), so that several cells share
/// one store.
#[derive(Debug, Clone, PartialEq)]
pub struct Lstm {
    input: usize,
    hidden: usize,
    output: usize,
    /// `[W_xi W_xf W_xg W_xo]`, D×4H.
    pub w_x: ParamId,
    /// `[W_hi W_hf W_hg W_ho]`, H×4H.
    pub w_h: ParamId,
    /// Gate biases, 1×4H.
    pub b: ParamId,
    /// Output weights, H×Q.
    pub w_hq: ParamId,
    /// Output bias, 1×Q.
    pub b_q: ParamId,
}

/// The parameters of an [`Lstm`] registered on one tape ([`Recurrent::bind`]).
#[derive(Debug, Clone, Copy)]
pub struct LstmBound {
    w_x: Var,
    w_h: Var,
    b: Var,
    w_hq: Var,
    b_q: Var,
}

impl Lstm {
    /// Adds an LSTM with `input` = D, `hidden` = H and `output` = Q to `params`: weights
    /// uniform in `±1/√H` from `seed`, gate biases 0 except the forget gate's at 1,
    /// `b_q` zero.
    ///
    /// ```
    /// use ndarray::{Array2, Array3};
    /// use timetape::gradcheck::{gradcheck, GradcheckOptions};
    /// use timetape::rnn::{Lstm, Recurrent, SequenceLoss, Sequence, Sizes};
    /// use timetape::Params;
    /// use timetape::bptt;
    ///
    /// let mut params = Params::<f64>::new();
    /// let cell = Lstm::new(&mut params, Sizes::new(2, 2, 2), 0)?; // D = 2, H = 2, Q = 2
    /// assert_eq!(Recurrent::<f64>::state_width(&cell), 4); // [h c]
    /// let xs = Array3::from_shape_fn((3, 1, 2), |(t, _, d)| 0.5 * (t as f64) - 0.3 * (d as f64));
    /// let labels = Array2::from_shape_fn((3, 1), |(t, _)| t % 2);
    /// let loss = SequenceLoss::classes(labels.view());
    /// let report = gradcheck(&params, GradcheckOptions::default(), |tape, p| {
    ///     Ok(bptt::unroll(&cell, tape, p, &Sequence::new(xs.view(), loss))?.loss)
    /// })?;
    /// assert!(report.max_rel_err() < 1e-7, "{report}");
    /// # Ok::<(), timetape::Error>(())
    /// ```
    ///
    /// Errors: [`Error::InvalidArgument`](crate::Error::InvalidArgument) for a zero size,
    /// or if `params` already holds a parameter named `lstm.W_x` (or another of the names).
    pub fn new<F: Scalar>(params: &mut Params<F>, sizes: Sizes, seed: u64) -> Result<Lstm> {
        Self::named(params, "lstm.", sizes, seed)
    }

    /// [`Lstm::new`] with the parameter names prefixed by `prefix` instead of `lstm.`
    /// (`{prefix}W_x`, …), so that several cells share one store.
    ///
    /// Errors: as [`Lstm::new`], a clash being with a name under `prefix`.
    pub fn named<F: Scalar>(
        params: &mut Params<F>,
        prefix: &str,
        sizes: Sizes,
        seed: u64,
    ) -> Result<Lstm> {
        let op = "Lstm::new";
        let Sizes {
            input,
            hidden,
            output,
        } = sizes.check(op)?;
        let h4 = init::times(op, hidden, 4)?;
        let shapes = [
            (input, h4),
            (hidden, h4),
            (1, h4),
            (hidden, output),
            (1, output),
        ];
        init::check_alloc::<F>(op, &shapes)?;
        let mut rng = init::rng(seed);
        let s = 1.0 / (hidden as f64).sqrt();
        let mut b = Array2::<F>::zeros((1, h4));
        b.slice_axis_mut(ndarray::Axis(1), ndarray::Slice::from(hidden..2 * hidden))
            .fill(F::one());
        let mut add = |name: &str, value| params.add(format!("{prefix}{name}"), value);
        let w_x = add("W_x", init::uniform(shapes[0], s, &mut rng)?)?;
        let w_h = add("W_h", init::uniform(shapes[1], s, &mut rng)?)?;
        let b = add("b", b)?;
        let w_hq = add("W_hq", init::uniform(shapes[3], s, &mut rng)?)?;
        let b_q = add("b_q", Array2::zeros((1, output)))?;
        Ok(Lstm {
            input,
            hidden,
            output,
            w_x,
            w_h,
            b,
            w_hq,
            b_q,
        })
    }
}

impl<F: Scalar> Recurrent<F> for Lstm {
    type Bound = LstmBound;

    fn input_width(&self) -> usize {
        self.input
    }

    /// `[h c]`: 2H.
    fn state_width(&self) -> usize {
        2 * self.hidden
    }

    fn output_width(&self) -> usize {
        self.output
    }

    fn bind(&self, tape: &mut Tape<F>, params: &Params<F>) -> Result<LstmBound> {
        Ok(LstmBound {
            w_x: tape.param(params, self.w_x)?,
            w_h: tape.param(params, self.w_h)?,
            b: tape.param(params, self.b)?,
            w_hq: tape.param(params, self.w_hq)?,
            b_q: tape.param(params, self.b_q)?,
        })
    }

    fn step(&self, tape: &mut Tape<F>, b: &LstmBound, x: Var, h: Var) -> Result<Var> {
        step_by_projection(self, tape, b, x, h)
    }

    fn projection(&self) -> Option<&dyn Projection<F, LstmBound>> {
        Some(self)
    }

    /// `h` of the state `[h c]`: H.
    fn next_input_width(&self) -> usize {
        self.hidden
    }

    /// `h` of the state `[h c]`.
    fn next_input(&self, tape: &mut Tape<F>, state: Var) -> Result<Var> {
        tape.slice_cols(state, 0..self.hidden)
    }

    fn output(&self, tape: &mut Tape<F>, b: &LstmBound, states: Var) -> Result<Var> {
        let h = tape.slice_cols(states, 0..self.hidden)?;
        tape.affine(h, b.w_hq, Some(b.b_q), crate::Activation::Identity)
    }
}

impl<F: Scalar> Projection<F, LstmBound> for Lstm {
    /// `X W_x` for every step; the bias is added in each step ([`Tape::lstm_step`]), to
    /// the step's rows while they are in cache, instead of over the whole projection.
    fn project_inputs(&self, tape: &mut Tape<F>, b: &LstmBound, xs: Var) -> Result<Var> {
        tape.matmul(xs, b.w_x)
    }

    fn step_projected(
        &self,
        tape: &mut Tape<F>,
        b: &LstmBound,
        u: RowsOf,
        state: Var,
    ) -> Result<Var> {
        // One node a step: the product onto the step's projected inputs, the gates and
        // the state update.
        tape.lstm_step(u, b.w_h, Some(b.b), state)
    }
}
