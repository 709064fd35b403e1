//! Gated recurrent unit.

use super::{step_by_projection, Projection, Recurrent, Sizes};
use crate::error::Result;
use crate::init;
use crate::ops::RowsOf;
use crate::params::{ParamId, Params};
use crate::scalar::Scalar;
use crate::tape::{Tape, Var};
use ndarray::Array2;

/// A GRU cell (Cho et al. 2014, in the form PyTorch uses), batch-major:
///
/// ```text
/// r_t = σ(x_t W_xr + b_xr + h_{t−1} W_hr + b_hr)
/// z_t = σ(x_t W_xz + b_xz + h_{t−1} W_hz + b_hz)
/// n_t = tanh(x_t W_xn + b_xn + r_t ⊙ (h_{t−1} W_hn + b_hn))
/// h_t = (1 − z_t) ⊙ n_t + z_t ⊙ h_{t−1}  =  n_t + z_t ⊙ (h_{t−1} − n_t)
/// o_t = h_t W_hq + b_q
/// ```
///
/// The three gates are stored side by side: `W_x = [W_xr W_xz W_xn]` (D×3H),
/// `W_h = [W_hr W_hz W_hn]` (H×3H), biases `b_x`, `b_h` (1×3H); then `W_hq` (H×Q),
/// `b_q` (1×Q). Names: `gru.W_x`, `gru.W_h`, `gru.b_x`, `gru.b_h`, `gru.W_hq`, `gru.b_q`
/// ([`Gru::new`]), or the same under a prefix of your own ([`Gru::named`]), so that
/// several cells share one store. The state the BPTT strategies carry is `h_t`
/// (B×H); the sizes D, H, Q are read through [`Recurrent`].
#[derive(Debug, Clone, PartialEq)]
pub struct Gru {
    input: usize,
    hidden: usize,
    output: usize,
    /// `[W_xr W_xz W_xn]`, D×3H.
    pub w_x: ParamId,
    /// `[W_hr W_hz W_hn]`, H×3H.
    pub w_h: ParamId,
    /// Input-side gate biases, 1×3H.
    pub b_x: ParamId,
    /// State-side gate biases, 1×3H.
    pub b_h: ParamId,
    /// Output weights, H×Q.
    pub w_hq: ParamId,
    /// Output bias, 1×Q.
    pub b_q: ParamId,
}

/// The parameters of a [`Gru`] registered on one tape ([`Recurrent::bind`]).
#[derive(Debug, Clone, Copy)]
pub struct GruBound {
    w_x: Var,
    w_h: Var,
    b_x: Var,
    b_h: Var,
    w_hq: Var,
    b_q: Var,
}

impl Gru {
    /// Adds a GRU with `input` = D, `hidden` = H and `output` = Q to `params`: every
    /// weight and gate bias uniform in `±1/√H` (as PyTorch) from `seed`, `b_q` zero.
    ///
    /// ```
    /// use ndarray::{Array2, Array3};
    /// use timetape::gradcheck::{gradcheck, GradcheckOptions};
    /// use timetape::rnn::{Gru, SequenceLoss, Sequence, Sizes};
    /// use timetape::Params;
    /// use timetape::bptt;
    ///
    /// let mut params = Params::<f64>::new();
    /// let cell = Gru::new(&mut params, Sizes::new(2, 2, 2), 0)?; // D = 2, H = 2, Q = 2
    /// assert_eq!(params.num_scalars(), 2 * 6 + 2 * 6 + 6 + 6 + 2 * 2 + 2);
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
    /// sizes whose parameters overflow or cannot be allocated, or if `params` already
    /// holds a parameter named `gru.W_x` (or another of the names).
    pub fn new<F: Scalar>(params: &mut Params<F>, sizes: Sizes, seed: u64) -> Result<Gru> {
        Self::named(params, "gru.", sizes, seed)
    }

    /// [`Gru::new`] with the parameter names prefixed by `prefix` instead of `gru.`
    /// (`{prefix}W_x`, …), so that several cells share one store.
    ///
    /// Errors: as [`Gru::new`], a clash being with a name under `prefix`.
    pub fn named<F: Scalar>(
        params: &mut Params<F>,
        prefix: &str,
        sizes: Sizes,
        seed: u64,
    ) -> Result<Gru> {
        let op = "Gru::new";
        let Sizes {
            input,
            hidden,
            output,
        } = sizes.check(op)?;
        let h3 = init::times(op, hidden, 3)?;
        let shapes = [
            (input, h3),
            (hidden, h3),
            (1, h3),
            (1, h3),
            (hidden, output),
        ];
        init::check_alloc::<F>(op, &shapes)?;
        let mut rng = init::rng(seed);
        let s = 1.0 / (hidden as f64).sqrt();
        let mut add = |name: &str, value| params.add(format!("{prefix}{name}"), value);
        let w_x = add("W_x", init::uniform(shapes[0], s, &mut rng)?)?;
        let w_h = add("W_h", init::uniform(shapes[1], s, &mut rng)?)?;
        let b_x = add("b_x", init::uniform(shapes[2], s, &mut rng)?)?;
        let b_h = add("b_h", init::uniform(shapes[3], s, &mut rng)?)?;
        let w_hq = add("W_hq", init::uniform(shapes[4], s, &mut rng)?)?;
        let b_q = add("b_q", Array2::zeros((1, output)))?;
        Ok(Gru {
            input,
            hidden,
            output,
            w_x,
            w_h,
            b_x,
            b_h,
            w_hq,
            b_q,
        })
    }
}

impl<F: Scalar> Recurrent<F> for Gru {
    type Bound = GruBound;

    fn input_width(&self) -> usize {
        self.input
    }

    fn state_width(&self) -> usize {
        self.hidden
    }

    fn output_width(&self) -> usize {
        self.output
    }

    fn bind(&self, tape: &mut Tape<F>, params: &Params<F>) -> Result<GruBound> {
        Ok(GruBound {
            w_x: tape.param(params, self.w_x)?,
            w_h: tape.param(params, self.w_h)?,
            b_x: tape.param(params, self.b_x)?,
            b_h: tape.param(params, self.b_h)?,
            w_hq: tape.param(params, self.w_hq)?,
            b_q: tape.param(params, self.b_q)?,
        })
    }

    fn step(&self, tape: &mut Tape<F>, b: &GruBound, x: Var, h: Var) -> Result<Var> {
        step_by_projection(self, tape, b, x, h)
    }

    fn projection(&self) -> Option<&dyn Projection<F, GruBound>> {
        Some(self)
    }

    fn output(&self, tape: &mut Tape<F>, b: &GruBound, hs: Var) -> Result<Var> {
        tape.affine(hs, b.w_hq, Some(b.b_q), crate::Activation::Identity)
    }
}

impl<F: Scalar> Projection<F, GruBound> for Gru {
    fn project_inputs(&self, tape: &mut Tape<F>, b: &GruBound, xs: Var) -> Result<Var> {
        tape.affine(xs, b.w_x, Some(b.b_x), crate::Activation::Identity)
    }

    fn step_projected(&self, tape: &mut Tape<F>, b: &GruBound, u: RowsOf, h: Var) -> Result<Var> {
        // Two nodes a step: the state part (one product) and the fused gates and state
        // update, which reads the step's rows of the projected inputs in place.
        let s = tape.affine(h, b.w_h, Some(b.b_h), crate::Activation::Identity)?;
        tape.gru_cell(u, s, h)
    }
}
