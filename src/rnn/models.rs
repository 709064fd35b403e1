//! The four models of the notes (FORMULAS.md, M1–M4) as [`Rnn`] configurations.
//!
//! | model | cell | loss |
//! |---|---|---|
//! | M1 | linear (`φ = id`), no biases | per step, `L = (1/T) Σ_t l(o_t, y_t)`: [`PerStep::mean_over_time`] with softmax cross-entropy ([`Targets::Classes`]) or squared error ([`Targets::Values`]) |
//! | M2 | ReLU with bias `b`, output bias `d`, Q = 1 | last step: `σ(o_T)` with binary cross-entropy, [`Targets::LastBinary`] |
//! | M3 | tanh with both biases | softmax cross-entropy at every step, `L = Σ_t α_t L_t` ([`PerStep::weighted`]) |
//! | M4 | any φ ([`Activation`]), both biases | any of the above (`g` = softmax or identity) |
//!
//! Naming: the notes' `W_hx, W_hh, W_qh` (M1), `U, W, V, b, d` (M2), `U, W, V, b_a, b_y`
//! (M3) and `W_x, W_h, W_y, b_h, b_y` (M4) are the transposes of, respectively, the
//! parameters `W_xh, W_hh, W_hq` and the biases `b_h, b_q` of [`Rnn`].
//!
//! Every constructor adds the model's parameters to a [`Params`] store under the names
//! `W_xh`, `W_hh`, `b_h`, `W_hq`, `b_q` (weights uniform in `±1/√H` from `seed`, biases
//! zero) and returns the [`Rnn`], which any [`bptt`](crate::bptt) strategy can run and
//! whose gradient [`closed_form`](crate::closed_form) computes by hand.
//!
//! [`PerStep::mean_over_time`]: super::PerStep::mean_over_time
//! [`PerStep::weighted`]: super::PerStep::weighted
//! [`Targets::Classes`]: super::Targets::Classes
//! [`Targets::Values`]: super::Targets::Values
//! [`Targets::LastBinary`]: super::Targets::LastBinary

use super::{Activation, Biases, Rnn, RnnConfig, Sizes};
use crate::error::Result;
use crate::params::Params;
use crate::scalar::Scalar;

/// M1, the linear RNN without biases: `h_t = x_t W_xh + h_{t−1} W_hh`, `o_t = h_t W_hq`
/// (the notes' `h_t = W_hx x_t + W_hh h_{t−1}`, `o_t = W_qh h_t`, transposed), with
/// `input` = D, `hidden` = H, `output` = Q. The notes' loss `L = (1/T) Σ_t l(o_t, y_t)`
/// is a per-step [`SequenceLoss`](super::SequenceLoss) with
/// [`mean_over_time`](super::PerStep::mean_over_time).
///
/// ```
/// use ndarray::Array3;
/// use timetape::bptt::{run, RunOptions, Truncation};
/// use timetape::rnn::{models, SequenceLoss, Sequence, Sizes};
/// use timetape::Params;
/// use timetape::bptt::{Run};
///
/// let mut params = Params::<f64>::new();
/// let cell = models::m1(&mut params, Sizes::new(2, 3, 2), 0)?; // D = 2, H = 3, Q = 2
/// assert!(cell.b_h.is_none() && cell.b_q.is_none());
/// assert_eq!(params.len(), 3); // W_xh, W_hh, W_hq
/// let xs = Array3::from_shape_fn((4, 1, 2), |(t, _, d)| (t + d) as f64 * 0.1);
/// let ys = Array3::<f64>::zeros((4, 1, 2));
/// // L = (1/T) Σ_t ‖o_t − y_t‖²
/// let loss = SequenceLoss::values(ys.view()).mean_over_time();
/// let r = run(&cell, &params, &Sequence::new(xs.view(), loss), &Run::new(Truncation::Full))?;
/// assert!(r.loss > 0.0);
/// # Ok::<(), timetape::Error>(())
/// ```
///
/// Errors: [`Error::InvalidArgument`](crate::Error::InvalidArgument) for a zero size, or
/// if `params` already holds a parameter of the same name (the names carry no prefix:
/// use [`Rnn::new`] with [`RnnConfig::prefix`] for several models in one store).
pub fn m1<F: Scalar>(params: &mut Params<F>, sizes: Sizes, seed: u64) -> Result<Rnn> {
    let c = RnnConfig::new(sizes.input, sizes.hidden, sizes.output)
        .activation(Activation::Identity)
        .biases(Biases {
            hidden: false,
            output: false,
        });
    Rnn::new(params, c, seed)
}

/// M2, the ReLU RNN with a last-step sigmoid classifier:
/// `h_t = ReLU(x_t W_xh + h_{t−1} W_hh + b_h)`, `y_pred = σ(h_T W_hq + b_q)` with one
/// output (the notes' `h_t = ReLU(b + W h_{t−1} + U x_t)`, `y_pred = σ(V h_l + d)`). The
/// input width may differ from the hidden width. Its loss is the binary cross-entropy of
/// `y_pred`, [`Targets::LastBinary`](super::Targets::LastBinary).
///
/// ```
/// use ndarray::{array, Array3};
/// use timetape::bptt::{run, RunOptions, Truncation};
/// use timetape::rnn::{models, SequenceLoss, Targets, Sequence};
/// use timetape::{Params, Reduction};
/// use timetape::bptt::{Run};
///
/// let mut params = Params::<f64>::new();
/// let cell = models::m2(&mut params, 3, 4, 0)?; // input 3, n = 4
/// let xs = Array3::from_shape_fn((5, 2, 3), |(t, b, d)| ((t + b + d) as f64).cos());
/// let y_gt = array![1.0, 0.0]; // one label per sequence (B = 2)
/// let loss = SequenceLoss::last_binary(y_gt.view());
/// let r = run(&cell, &params, &Sequence::new(xs.view(), loss), &Run::new(Truncation::Full))?;
/// assert_eq!(r.grads.get(cell.w_hq).unwrap().dim(), (4, 1));
/// # Ok::<(), timetape::Error>(())
/// ```
///
/// Errors: [`Error::InvalidArgument`](crate::Error::InvalidArgument) for a zero size, or
/// if `params` already holds a parameter of the same name (the names carry no prefix:
/// use [`Rnn::new`] with [`RnnConfig::prefix`] for several models in one store).
pub fn m2<F: Scalar>(
    params: &mut Params<F>,
    input: usize,
    hidden: usize,
    seed: u64,
) -> Result<Rnn> {
    let c = RnnConfig::new(input, hidden, 1).activation(Activation::Relu);
    Rnn::new(params, c, seed)
}

/// M3, the tanh RNN with a softmax at every step: `S_t = tanh(x_t W_xh + S_{t−1} W_hh +
/// b_h)`, logits `S_t W_hq + b_q` (the notes' `S_t = tanh(U x_t + W S_{t−1} + b_a)`,
/// `y_t = softmax(V S_t + b_y)`). Its loss is softmax cross-entropy at every step,
/// [`SequenceLoss::classes`](super::SequenceLoss::classes), optionally
/// [`weighted`](super::PerStep::weighted) by α_t.
///
/// Errors: [`Error::InvalidArgument`](crate::Error::InvalidArgument) for a zero size, or
/// if `params` already holds a parameter of the same name (the names carry no prefix:
/// use [`Rnn::new`] with [`RnnConfig::prefix`] for several models in one store).
pub fn m3<F: Scalar>(params: &mut Params<F>, sizes: Sizes, seed: u64) -> Result<Rnn> {
    let c = RnnConfig::new(sizes.input, sizes.hidden, sizes.output);
    Rnn::new(params, c, seed)
}

/// M4, the general form: `h_t = f(x_t W_xh + h_{t−1} W_hh + b_h)` with any `f`
/// ([`Activation`]), output `o_t = h_t W_hq + b_q`, any loss (`g` = softmax with
/// [`Targets::Classes`](super::Targets::Classes), identity with
/// [`Targets::Values`](super::Targets::Values)).
///
/// ```
/// use ndarray::{Array2, Array3};
/// use timetape::bptt::{run, RunOptions, Truncation};
/// use timetape::rnn::{models, Activation, SequenceLoss, Sequence, Sizes};
/// use timetape::{closed_form, Params};
/// use timetape::bptt::{Run};
///
/// let mut params = Params::<f64>::new();
/// let cell = models::m4(&mut params, Sizes::new(2, 3, 2), Activation::Sigmoid, 0)?;
/// let xs = Array3::from_shape_fn((4, 1, 2), |(t, _, d)| (t as f64) - (d as f64));
/// let labels = Array2::from_shape_fn((4, 1), |(t, _)| t % 2);
/// let loss = SequenceLoss::classes(labels.view());
/// let r = run(&cell, &params, &Sequence::new(xs.view(), loss), &Run::new(Truncation::Full))?;
/// let cf = closed_form::m4(&params, &cell, &Sequence::new(xs.view(), loss))?;
/// assert!(r.grads.max_rel_diff(&cf.grads) < 1e-12);
/// # Ok::<(), timetape::Error>(())
/// ```
///
/// Errors: [`Error::InvalidArgument`](crate::Error::InvalidArgument) for a zero size, or
/// if `params` already holds a parameter of the same name (the names carry no prefix:
/// use [`Rnn::new`] with [`RnnConfig::prefix`] for several models in one store).
pub fn m4<F: Scalar>(
    params: &mut Params<F>,
    sizes: Sizes,
    f: Activation,
    seed: u64,
) -> Result<Rnn> {
    let c = RnnConfig::new(sizes.input, sizes.hidden, sizes.output).activation(f);
    Rnn::new(params, c, seed)
}
