//! M1, the linear RNN without biases (FORMULAS.md §M1, eqs (6)–(9)).

use super::{
    check, initial_state, output, output_adjoints, require_activation, states, ClosedForm, Dims,
    RnnGrads, Weights,
};
use crate::error::{invalid, Result};
use crate::params::Params;
use crate::rnn::{Activation, Rnn, Sequence};
use crate::scalar::Scalar;
use ndarray::{Array2, ArrayView3, Axis};

/// The forward pass of M1 and the output adjoints, shared by both evaluations of δ_t.
struct Forward<'p, 's, F> {
    dims: Dims,
    /// The weights, borrowed from the store.
    w: Weights<'p, F>,
    /// The inputs x_1 … x_T.
    xs: ArrayView3<'s, F>,
    loss: F,
    /// h_0 … h_T, each B×H.
    hs: Vec<Array2<F>>,
    /// `∂L/∂o_t` for t = 1..T, each B×Q (eq (6)).
    e: Vec<Array2<F>>,
}

/// Checks that `rnn` and the loss of `seq` are M1's, then runs the forward pass
/// `h_t = x_t W_xh + h_{t−1} W_hh`, `o_t = h_t W_hq`.
fn forward<'p, 's, F: Scalar>(
    op: &'static str,
    params: &'p Params<F>,
    rnn: &Rnn,
    seq: &Sequence<'s, F>,
) -> Result<Forward<'p, 's, F>> {
    let (xs, h0, loss) = (seq.inputs(), seq.initial_state(), seq.loss());
    require_activation(op, rnn, Activation::Identity)?;
    if rnn.b_h.is_some() || rnn.b_q.is_some() {
        return Err(invalid(op, "M1 has no biases; the RNN has one"));
    }
    if loss.is_last_step() {
        return Err(invalid(
            op,
            "M1 has a loss at every step (Targets::Classes or Targets::Values)",
        ));
    }
    let (dims, w) = check(op, params, rnn, xs, h0)?;
    loss.validate(dims.t, dims.b, dims.q)?;
    let hs = states(&w, xs, initial_state(h0, dims), Activation::Identity);
    let outs: Vec<Array2<F>> = hs[1..].iter().map(|h| output(&w, h)).collect();
    let (loss, e) = output_adjoints(loss, &outs);
    Ok(Forward {
        dims,
        w,
        xs,
        loss,
        hs,
        e,
    })
}

/// The parameter gradients from the δ_t (FORMULAS.md §M1, after eq (9)), batch-major:
/// `∂L/∂W_hq = Σ_t h_tᵀ ∂L/∂o_t`, `∂L/∂W_xh = Σ_t x_tᵀ δ_t`, `∂L/∂W_hh = Σ_t h_{t−1}ᵀ δ_t`
/// (the transposes of the notes' `Σ_t ∂L/∂o_t h_tᵀ`, `Σ_t δ_t x_tᵀ`, `Σ_t δ_t h_{t−1}ᵀ`).
fn finish<F: Scalar>(
    params: &Params<F>,
    rnn: &Rnn,
    fw: Forward<'_, '_, F>,
    dh: Vec<Array2<F>>,
) -> Result<ClosedForm<F>> {
    let mut g = RnnGrads::zeros(fw.dims);
    for (t, x_t) in fw.xs.axis_iter(Axis(0)).enumerate() {
        g.w_hq = g.w_hq + fw.hs[t + 1].t().dot(&fw.e[t]);
        g.w_xh = g.w_xh + x_t.t().dot(&dh[t]);
        g.w_hh = g.w_hh + fw.hs[t].t().dot(&dh[t]);
    }
    // h_1 = x_1 W_xh + h_0 W_hh, so ∂L/∂h_0 = δ_1 W_hhᵀ.
    let dh0 = dh[0].dot(&fw.w.w_hh.t());
    ClosedForm {
        loss: fw.loss,
        grads: g.into_grads(params, rnn)?,
        dh,
        dh0,
    }
    .checked("closed_form::m1")
}

/// M1 by the reverse recursion, FORMULAS.md eqs (6)–(8).
///
/// The model (FORMULAS.md §M1): `h_t = x_t W_xh + h_{t−1} W_hh`, `o_t = h_t W_hq`
/// (identity φ, no biases; the notes' `W_hx, W_hh, W_qh` are the transposes of `W_xh,
/// W_hh, W_hq`), with a loss at every step ([`Targets::Classes`] or [`Targets::Values`],
/// any time reduction and step weights; the notes' `L = (1/T) Σ_t l(o_t, y_t)` is
/// [`PerStep::mean_over_time`](crate::rnn::PerStep::mean_over_time)). With one row per sequence:
///
/// ```text
/// (6)  ∂L/∂o_t  = c_t (1/B) ∂l(o_t, y_t)/∂o_t,   ∂L/∂W_hq = Σ_t h_tᵀ ∂L/∂o_t
/// (7)  δ_T      = ∂L/∂o_T W_hqᵀ
/// (8)  δ_t      = δ_{t+1} W_hhᵀ + ∂L/∂o_t W_hqᵀ                       (t < T)
///      ∂L/∂W_xh = Σ_t x_tᵀ δ_t,   ∂L/∂W_hh = Σ_t h_{t−1}ᵀ δ_t,   ∂L/∂h_0 = δ_1 W_hhᵀ
/// ```
///
/// (The notes' `∂L/∂W_hh ∈ R^{h×d}` of seed 001 is an erratum: it is H×H.)
/// `h0` is the initial state (zeros if `None`, as in the notes).
///
/// Errors: [`Error::InvalidArgument`](crate::Error::InvalidArgument) unless the RNN is
/// linear without biases and the loss has a term at every step;
/// [`Error::EmptyInput`](crate::Error::EmptyInput),
/// [`Error::ShapeMismatch`](crate::Error::ShapeMismatch),
/// [`Error::LabelOutOfRange`](crate::Error::LabelOutOfRange) for bad inputs (as
/// [`SequenceLoss::validate`]); [`Error::ForeignParam`](crate::Error::ForeignParam) if
/// the RNN's parameters are not in `params`.
///
/// ```
/// use ndarray::Array3;
/// use timetape::rnn::{models, SequenceLoss, Sequence, Sizes};
/// use timetape::{closed_form, Params, Tape};
/// use timetape::bptt;
///
/// let mut params = Params::<f64>::new();
/// let cell = models::m1(&mut params, Sizes::new(2, 3, 2), 0)?;
/// let xs = Array3::from_shape_fn((6, 2, 2), |(t, b, d)| ((t + 2 * b + 3 * d) as f64).sin());
/// let ys = Array3::from_shape_fn((6, 2, 2), |(t, b, d)| ((t * b + d) as f64).cos());
/// let loss = SequenceLoss::values(ys.view()).mean_over_time(); // L = (1/T) Σ_t l(o_t, y_t)
///
/// let cf = closed_form::m1_recursion(&params, &cell, &Sequence::new(xs.view(), loss))?;
/// let ps = closed_form::m1_power_sum(&params, &cell, &Sequence::new(xs.view(), loss))?;
/// assert!(cf.grads.max_rel_diff(&ps.grads) < 1e-12); // eq (8) and eq (9) agree
///
/// let mut tape = Tape::new();
/// let run = bptt::unroll(&cell, &mut tape, &params, &Sequence::new(xs.view(), loss))?;
/// let grads = tape.backward(run.loss)?;
/// assert!(cf.grads.max_rel_diff(&grads) < 1e-12);
/// // δ_1 = ∂L/∂h_1 is the tape's adjoint of the first state
/// let d1 = tape.adjoint(run.states[0])?.unwrap();
/// assert!(cf.dh[0].iter().zip(d1.iter()).all(|(a, b)| (a - b).abs() < 1e-12));
/// # Ok::<(), timetape::Error>(())
/// ```
///
/// [`Targets::Classes`]: crate::rnn::Targets::Classes
/// [`Targets::Values`]: crate::rnn::Targets::Values
/// [`SequenceLoss::mean_over_time`]: crate::rnn::PerStep::mean_over_time
/// [`SequenceLoss::validate`]: crate::rnn::SequenceLoss::validate
pub fn m1_recursion<F: Scalar>(
    params: &Params<F>,
    rnn: &Rnn,
    seq: &Sequence<'_, F>,
) -> Result<ClosedForm<F>> {
    let fw = forward("closed_form::m1_recursion", params, rnn, seq)?;
    let t_len = fw.dims.t;
    let w_qh_t = fw.w.w_hq.t();
    let w_hh_t = fw.w.w_hh.t();
    let mut dh: Vec<Array2<F>> = Vec::with_capacity(t_len);
    // (7): δ_T; then (8) backwards.
    let mut delta = fw.e[t_len - 1].dot(&w_qh_t);
    dh.push(delta.clone());
    for t in (0..t_len - 1).rev() {
        delta = delta.dot(&w_hh_t) + fw.e[t].dot(&w_qh_t);
        dh.push(delta.clone());
    }
    dh.reverse();
    finish(params, rnn, fw, dh)
}

/// M1 by the power sum, FORMULAS.md eq (9), evaluated literally in O(T²).
///
/// The same model and result as [`m1_recursion`], with every `δ_t` summed from scratch
/// over the later outputs. Eq (9) in the notes' columns,
/// `δ_t = Σ_{j=t..T} (W_hhᵀ)^{j−t} W_qhᵀ ∂L/∂o_j`, reads one row per sequence (with the
/// crate's `W_hh = W_hh,notesᵀ`, `W_hq = W_qhᵀ`)
///
/// ```text
/// (9)  δ_t = Σ_{j=t..T} ∂L/∂o_j W_hqᵀ (W_hhᵀ)^{j−t},     ∂L/∂h_0 = Σ_{j=1..T} ∂L/∂o_j W_hqᵀ (W_hhᵀ)^j
/// ```
///
/// with the powers `(W_hhᵀ)^k`, k = 0..T, formed by repeated multiplication. Eq (9) is
/// why gradients vanish or explode: the powers of `W_hh` decay or grow with the modulus
/// of its eigenvalues. The parameter gradients then follow as in [`m1_recursion`].
///
/// Errors: as [`m1_recursion`].
pub fn m1_power_sum<F: Scalar>(
    params: &Params<F>,
    rnn: &Rnn,
    seq: &Sequence<'_, F>,
) -> Result<ClosedForm<F>> {
    let fw = forward("closed_form::m1_power_sum", params, rnn, seq)?;
    let (w, Dims { t: t_len, b, h, .. }) = (fw.w, fw.dims);
    // powers[k] = (W_hhᵀ)^k, k = 0..=T
    let mut powers: Vec<Array2<F>> = Vec::with_capacity(t_len + 1);
    powers.push(Array2::eye(h));
    for k in 1..=t_len {
        let next = powers[k - 1].dot(&w.w_hh.t());
        powers.push(next);
    }
    // g_j = ∂L/∂o_j W_hqᵀ
    let g: Vec<Array2<F>> = fw.e.iter().map(|e| e.dot(&w.w_hq.t())).collect();
    let mut dh: Vec<Array2<F>> = Vec::with_capacity(t_len);
    for t in 0..t_len {
        let mut delta = Array2::<F>::zeros((b, h));
        for (j, g_j) in g.iter().enumerate().skip(t) {
            delta = delta + g_j.dot(&powers[j - t]);
        }
        dh.push(delta);
    }
    let mut cf = finish(params, rnn, fw, dh)?;
    // ∂L/∂h_0 by the same power sum (j − 0 = j + 1 in 0-based j)
    let mut dh0 = Array2::<F>::zeros((b, h));
    for (j, g_j) in g.iter().enumerate() {
        dh0 = dh0 + g_j.dot(&powers[j + 1]);
    }
    cf.dh0 = dh0;
    Ok(cf)
}
