//! Regular truncation: the gradient with `h` detached at given steps (FORMULAS.md, "The
//! scalar chain and the three strategies", eq (5) with the inner sum restricted).

use super::m3::general;
use super::ClosedForm;
use crate::error::{invalid, Result};
use crate::params::Params;
use crate::rnn::{Rnn, Sequence};
use crate::scalar::Scalar;

/// The block starts of fixed truncation with blocks of `k` steps over `t_len` steps:
/// `cuts[t] = (t mod k == 0)` for 0-based t, i.e. steps 1, k+1, 2k+1, … in the notes'
/// 1-based count (t ≡ 1 mod k). `cuts[0]` is always true: `h_0` is detached as well.
///
/// ```
/// use timetape::closed_form::block_starts;
/// assert_eq!(block_starts(5, 2)?, vec![true, false, true, false, true]);
/// # Ok::<(), timetape::Error>(())
/// ```
///
/// Errors: [`Error::InvalidArgument`](crate::Error::InvalidArgument) for k = 0, or a
/// length that cannot be allocated.
pub fn block_starts(t_len: usize, k: usize) -> Result<Vec<bool>> {
    if k == 0 {
        return Err(invalid("closed_form::block_starts", "k must be ≥ 1"));
    }
    crate::init::try_collect("closed_form::block_starts", t_len, |t| t % k == 0)
}

/// The gradient of an [`Rnn`] (any activation, biases and targets, as
/// [`m4`](super::m4())) with the hidden state detached on the edges marked in `cuts`:
/// `cuts[t]` (0-based t) true means the edge `h_t → step t + 1` (the notes'
/// `h_{t−1} → step t` in 1-based steps) carries no gradient.
///
/// This is eq (5) with the inner sum restricted to the current block,
///
/// ```text
/// (5)  ∂h_t/∂w_h = b_t + Σ_{i=s(t)..t−1} (Π_{j=i+1..t} c_j) b_i
/// ```
///
/// where `s(t)` is the first step of t's block (the last cut at or before t). In the
/// reverse recursion of M4 this means: `r_{t+1}` does not flow into `δ_t` across a cut,
///
/// ```text
/// δ_t = e_t W_hqᵀ + [edge into step t+1 kept] r_{t+1} W_hhᵀ,   r_t = φ′(a_t) ⊙ δ_t
/// ```
///
/// while the parameter sums (`∂L/∂W_hh = Σ_t h_{t−1}ᵀ r_t` and the others) still run over
/// every step: the value of a detached `h_{t−1}` is still used at step t. The `dh` of the
/// result are the truncated adjoints (what flows within the block), exactly the tape's
/// adjoints of the states before the detach; `dh0` is zero if `cuts[0]`. With no cut
/// this is the full gradient, [`m4`](super::m4()).
///
/// Errors: [`Error::ShapeMismatch`](crate::Error::ShapeMismatch) if `cuts.len() != T`;
/// otherwise as [`m4`](super::m4()).
pub fn truncated<F: Scalar>(
    params: &Params<F>,
    rnn: &Rnn,
    seq: &Sequence<'_, F>,
    cuts: &[bool],
) -> Result<ClosedForm<F>> {
    general("closed_form::truncated", params, rnn, seq, Some(cuts))
}

/// [`truncated()`] with blocks of `k` steps: cuts at [`block_starts`]`(T, k)` (the
/// notes' regular truncation, [`Truncation::Fixed`](crate::bptt::Truncation::Fixed)
/// `{ k }`). Within a block starting at step s, eq (5) runs over `i = s .. t` only.
///
/// ```
/// use ndarray::{Array2, Array3};
/// use timetape::bptt::{run, RunOptions, Truncation};
/// use timetape::rnn::{models, SequenceLoss, Sequence, Sizes};
/// use timetape::{closed_form, Params};
/// use timetape::bptt::{Run};
///
/// let mut params = Params::<f64>::new();
/// let cell = models::m3(&mut params, Sizes::new(2, 3, 2), 0)?;
/// let xs = Array3::from_shape_fn((7, 1, 2), |(t, _, d)| ((3 * t + d) as f64).sin());
/// let labels = Array2::from_shape_fn((7, 1), |(t, _)| t % 2);
/// let loss = SequenceLoss::classes(labels.view());
///
/// let cf = closed_form::truncated_fixed(&params, &cell, &Sequence::new(xs.view(), loss), 3)?;
/// let tape = run(&cell, &params, &Sequence::new(xs.view(), loss), &Run::new(Truncation::Fixed { k: 3 }))?;
/// assert!(cf.grads.max_rel_diff(&tape.grads) < 1e-12);
/// // the truncated gradient is not the full one
/// let full = closed_form::m4(&params, &cell, &Sequence::new(xs.view(), loss))?;
/// assert!(cf.grads.max_rel_diff(&full.grads) > 1e-3);
/// # Ok::<(), timetape::Error>(())
/// ```
///
/// Errors: [`Error::InvalidArgument`](crate::Error::InvalidArgument) for k = 0;
/// otherwise as [`truncated()`].
pub fn truncated_fixed<F: Scalar>(
    params: &Params<F>,
    rnn: &Rnn,
    seq: &Sequence<'_, F>,
    k: usize,
) -> Result<ClosedForm<F>> {
    let cuts = block_starts(seq.inputs().dim().0, k)?;
    truncated(params, rnn, seq, &cuts)
}
