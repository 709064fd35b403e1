//! The notes' vanilla RNN cell.

use super::{step_by_projection, Projection, Recurrent};
pub use crate::ops::Activation;

use crate::error::Result;
use crate::init;
use crate::ops::RowsOf;
use crate::params::{ParamId, Params};
use crate::scalar::Scalar;
use crate::tape::{Tape, Var};

/// Which biases an [`Rnn`] has, by name (see [`RnnConfig::biases`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Biases {
    /// The hidden update's bias `b_h`.
    pub hidden: bool,
    /// The output head's bias `b_q`.
    pub output: bool,
}

/// Sizes and options of an [`Rnn`].
#[derive(Debug, Clone, PartialEq)]
pub struct RnnConfig {
    /// Input width D.
    pub input: usize,
    /// Hidden width H.
    pub hidden: usize,
    /// Output width Q.
    pub output: usize,
    /// The activation φ.
    pub activation: Activation,
    /// Whether the hidden update has a bias `b_h`.
    pub hidden_bias: bool,
    /// Whether the output head has a bias `b_q`.
    pub output_bias: bool,
    /// Prefix of the parameter names (to keep several models in one store).
    pub prefix: String,
}

impl RnnConfig {
    /// A tanh RNN with both biases and no name prefix.
    pub fn new(input: usize, hidden: usize, output: usize) -> Self {
        RnnConfig {
            input,
            hidden,
            output,
            activation: Activation::Tanh,
            hidden_bias: true,
            output_bias: true,
            prefix: String::new(),
        }
    }

    /// The same configuration with another activation.
    pub fn activation(mut self, activation: Activation) -> Self {
        self.activation = activation;
        self
    }

    /// The same configuration with its parameter names prefixed by `prefix` (`{prefix}W_xh`,
    /// …), so that several RNNs share one store.
    pub fn named(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// The same configuration with or without each bias.
    ///
    /// ```
    /// use timetape::rnn::{Biases, RnnConfig};
    /// let c = RnnConfig::new(2, 3, 1).biases(Biases { hidden: true, output: false });
    /// assert!(c.hidden_bias && !c.output_bias);
    /// ```
    pub fn biases(mut self, biases: Biases) -> Self {
        self.hidden_bias = biases.hidden;
        self.output_bias = biases.output;
        self
    }
}

/// The vanilla RNN of the notes, batch-major:
///
/// ```text
/// h_t = φ(x_t W_xh + h_{t−1} W_hh + b_h),    o_t = h_t W_hq + b_q
/// ```
///
/// with `W_xh` D×H, `W_hh` H×H, `b_h` 1×H, `W_hq` H×Q, `b_q` 1×Q, stored in a
/// [`Params`] store under the names `W_xh`, `W_hh`, `b_h`, `W_hq`, `b_q` (after the
/// configured prefix). The notes write column vectors (`W_hx x_t`); `W_xh` here is the
/// transpose of their `W_hx`, and likewise for the others.
#[derive(Debug, Clone, PartialEq)]
pub struct Rnn {
    /// The configuration it was built with.
    pub config: RnnConfig,
    /// Input weights, D×H.
    pub w_xh: ParamId,
    /// Recurrent weights, H×H.
    pub w_hh: ParamId,
    /// Hidden bias, 1×H.
    pub b_h: Option<ParamId>,
    /// Output weights, H×Q.
    pub w_hq: ParamId,
    /// Output bias, 1×Q.
    pub b_q: Option<ParamId>,
}

/// The parameters of an [`Rnn`] registered on one tape.
#[derive(Debug, Clone, Copy)]
pub struct RnnBound {
    /// `W_xh` on the tape.
    pub w_xh: Var,
    /// `W_hh` on the tape.
    pub w_hh: Var,
    /// `b_h` on the tape.
    pub b_h: Option<Var>,
    /// `W_hq` on the tape.
    pub w_hq: Var,
    /// `b_q` on the tape.
    pub b_q: Option<Var>,
}

impl Rnn {
    /// Adds the parameters of a new RNN to `params`, initialized uniformly in
    /// `±1/√H` (biases zero) from `seed`.
    ///
    /// Errors: [`crate::Error::InvalidArgument`] for a zero size, sizes whose parameters
    /// overflow or cannot be allocated, or a name clash in the store.
    pub fn new<F: Scalar>(params: &mut Params<F>, config: RnnConfig, seed: u64) -> Result<Rnn> {
        super::Sizes::new(config.input, config.hidden, config.output).check("Rnn::new")?;
        let (d, h, q) = (config.input, config.hidden, config.output);
        init::check_alloc::<F>("Rnn::new", &[(d, h), (h, h), (1, h), (h, q), (1, q)])?;
        let mut rng = init::rng(seed);
        let s = 1.0 / (h as f64).sqrt();
        let p = config.prefix.clone();
        let w_xh = params.add(format!("{p}W_xh"), init::uniform((d, h), s, &mut rng)?)?;
        let w_hh = params.add(format!("{p}W_hh"), init::uniform((h, h), s, &mut rng)?)?;
        let b_h = if config.hidden_bias {
            Some(params.add(format!("{p}b_h"), ndarray::Array2::zeros((1, h)))?)
        } else {
            None
        };
        let w_hq = params.add(format!("{p}W_hq"), init::uniform((h, q), s, &mut rng)?)?;
        let b_q = if config.output_bias {
            Some(params.add(format!("{p}b_q"), ndarray::Array2::zeros((1, q)))?)
        } else {
            None
        };
        Ok(Rnn {
            config,
            w_xh,
            w_hh,
            b_h,
            w_hq,
            b_q,
        })
    }
}

impl<F: Scalar> Recurrent<F> for Rnn {
    type Bound = RnnBound;

    fn input_width(&self) -> usize {
        self.config.input
    }

    fn state_width(&self) -> usize {
        self.config.hidden
    }

    fn output_width(&self) -> usize {
        self.config.output
    }

    fn bind(&self, tape: &mut Tape<F>, params: &Params<F>) -> Result<RnnBound> {
        Ok(RnnBound {
            w_xh: tape.param(params, self.w_xh)?,
            w_hh: tape.param(params, self.w_hh)?,
            b_h: self.b_h.map(|b| tape.param(params, b)).transpose()?,
            w_hq: tape.param(params, self.w_hq)?,
            b_q: self.b_q.map(|b| tape.param(params, b)).transpose()?,
        })
    }

    /// `φ(x_t W_xh + h_{t−1} W_hh + b_h)`.
    fn step(&self, tape: &mut Tape<F>, bound: &RnnBound, x: Var, h: Var) -> Result<Var> {
        step_by_projection(self, tape, bound, x, h)
    }

    fn projection(&self) -> Option<&dyn Projection<F, RnnBound>> {
        Some(self)
    }

    /// `H W_hq + b_q` (one [`Tape::affine`]).
    fn output(&self, tape: &mut Tape<F>, bound: &RnnBound, hs: Var) -> Result<Var> {
        tape.affine(hs, bound.w_hq, bound.b_q, Activation::Identity)
    }
}

impl<F: Scalar> Projection<F, RnnBound> for Rnn {
    /// `X W_xh + b_h` for all steps at once (one [`Tape::affine`]).
    fn project_inputs(&self, tape: &mut Tape<F>, bound: &RnnBound, xs: Var) -> Result<Var> {
        tape.affine(xs, bound.w_xh, bound.b_h, Activation::Identity)
    }

    /// `φ(h_{t−1} W_hh + u_t)`, reading `u_t` from its rows of the projection (one
    /// [`Tape::affine_rows`]).
    fn step_projected(
        &self,
        tape: &mut Tape<F>,
        bound: &RnnBound,
        u: RowsOf,
        h_prev: Var,
    ) -> Result<Var> {
        tape.affine_rows(h_prev, bound.w_hh, u, self.config.activation)
    }
}
