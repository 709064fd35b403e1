//! Diagnostics of vanishing and exploding gradients: the series ‖∂L/∂h_t‖ and the
//! spectral radius and largest singular value of W_hh (eq (9) of the notes: in a
//! linear RNN, δ_t carries powers (W_hhᵀ)^{j−t}).

use crate::error::{invalid, Error, Result};
use crate::scalar::Scalar;
use crate::tape::{Tape, Var};
use ndarray::{Array1, Array2, ArrayView2};

/// ‖∂L/∂h_t‖ (Frobenius norm over the batch) for each state, read off the tape after a
/// backward pass with [`Tape::adjoint`]; 0 for a state the loss does not reach or whose
/// adjoint was released ([`Tape::set_release_adjoints`]). In a linear RNN this is the
/// norm of eq (9), `δ_t = Σ_{j≥t} (W_hhᵀ)^{j−t} W_qhᵀ ∂L/∂o_j` (notes' columns): the
/// term of lag j − t shrinks or grows geometrically with the spectral radius of `W_hh`,
/// so with a loss at the last step only ‖δ_t‖ does so in T − t. For a run of
/// [`bptt::run`](crate::bptt::run), ask for
/// [`RunOptions::dh_norms`](crate::bptt::RunOptions::dh_norms) instead.
///
/// ```
/// use ndarray::{Array2, Array3};
/// use timetape::diagnostics::dh_norms;
/// use timetape::rnn::{models, SequenceLoss, Sequence, Sizes};
/// use timetape::{Params, Tape};
/// use timetape::bptt;
///
/// let mut params = Params::<f64>::new();
/// let cell = models::m3(&mut params, Sizes::new(1, 4, 2), 3)?;
/// let xs = Array3::from_elem((6, 1, 1), 1.0);
/// let labels = Array2::from_elem((6, 1), 0usize);
/// let mut tape = Tape::new();
/// let run = bptt::unroll(&cell, &mut tape, &params, &Sequence::new(xs.view(), SequenceLoss::classes(labels.view())))?;
/// tape.backward(run.loss)?;
/// let norms = dh_norms(&tape, &run.states)?;
/// assert_eq!(norms.len(), 6);
/// # Ok::<(), timetape::Error>(())
/// ```
///
/// Errors: [`Error::ForeignVar`] or [`Error::StaleVar`] for a state not on `tape` (or
/// from before its last clear).
pub fn dh_norms<F: Scalar>(tape: &Tape<F>, states: &[Var]) -> Result<Vec<F>> {
    states
        .iter()
        .map(|&s| {
            Ok(tape.adjoint(s)?.map_or(F::zero(), |a| {
                a.iter().fold(F::zero(), |m, &x| m + x * x).sqrt()
            }))
        })
        .collect()
}

fn check_square<F: Scalar>(op: &'static str, w: &ArrayView2<'_, F>, iters: usize) -> Result<()> {
    if w.is_empty() {
        return Err(Error::EmptyInput {
            op,
            what: "empty matrix",
        });
    }
    if w.nrows() != w.ncols() {
        return Err(Error::ShapeMismatch {
            op,
            lhs: w.dim(),
            rhs: (w.ncols(), w.nrows()),
        });
    }
    if iters == 0 {
        return Err(invalid(op, "iters must be ≥ 1"));
    }
    Ok(())
}

/// The unit vector the power iterations start from.
fn start_vector(n: usize) -> Array1<f64> {
    // A fixed vector with no special alignment to common structured matrices.
    let mut v = Array1::from_shape_fn(n, |i| 1.0 + 0.37 * ((i as f64) * 1.618).sin());
    v /= v.dot(&v).sqrt();
    v
}

/// Estimates the spectral radius ρ(W) = max |λ| of a square W by power iteration in
/// f64: the geometric mean of the growth factors `‖W v_k‖ / ‖v_k‖` over the last half of
/// `iters` iterations (Gelfand's formula, ρ = lim ‖W^k‖^{1/k}), which also converges
/// when the dominant eigenvalues are a complex pair. Convergence is slow when another
/// eigenvalue has nearly the same modulus; 0 if the iterate vanishes (a nilpotent W).
/// W is rescaled by its largest entry first, so that no finite W overflows.
///
/// ```
/// use ndarray::array;
/// let w = array![[0.0, -0.9], [0.9, 0.0]]; // a rotation scaled by 0.9
/// let rho = timetape::diagnostics::spectral_radius(w.view(), 100)?;
/// assert!((rho - 0.9).abs() < 1e-12);
/// # Ok::<(), timetape::Error>(())
/// ```
///
/// Errors: [`Error::EmptyInput`] for an empty W; [`Error::ShapeMismatch`] for a W that
/// is not square; [`Error::InvalidArgument`] for `iters = 0`; [`Error::NonFinite`]
/// for a NaN or infinite entry, or an estimate that overflows f64.
pub fn spectral_radius<F: Scalar>(w: ArrayView2<'_, F>, iters: usize) -> Result<f64> {
    let (w, c) = rescaled("spectral_radius", &w, iters)?;
    if c == 0.0 {
        return Ok(0.0);
    }
    let mut v = start_vector(w.nrows());
    let half = iters / 2;
    let mut log_growth = 0.0;
    for i in 0..iters {
        let u = w.dot(&v);
        let n = u.dot(&u).sqrt();
        if n == 0.0 {
            return Ok(0.0);
        }
        if i >= half {
            log_growth += n.ln();
        }
        v = u / n;
    }
    finite_result(
        "spectral_radius",
        c * (log_growth / (iters - half) as f64).exp(),
    )
}

/// The estimate, or [`Error::NonFinite`] if it exceeds the largest f64 (W's entries near
/// f64::MAX: ρ and σ₁ can be up to n times the largest entry).
fn finite_result(op: &'static str, x: f64) -> Result<f64> {
    if x.is_finite() {
        Ok(x)
    } else {
        Err(Error::NonFinite {
            op,
            what: "the estimate overflows f64".into(),
        })
    }
}

/// Estimates the largest singular value σ₁(W) = ‖W‖₂ of a square W by power iteration
/// on WᵀW, in f64 (`iters` products with WᵀW; the error shrinks like (σ₂/σ₁)^{2·iters}).
/// σ₁ ≥ ρ(W): it bounds the growth of ∂L/∂h over one step of a linear RNN. 0 if the
/// iterate vanishes. W is rescaled by its largest entry first, as in
/// [`spectral_radius`].
///
/// ```
/// use ndarray::array;
/// let w = array![[3.0, 0.0], [0.0, 0.5]];
/// let s = timetape::diagnostics::largest_singular_value(w.view(), 50)?;
/// assert!((s - 3.0).abs() < 1e-12);
/// # Ok::<(), timetape::Error>(())
/// ```
///
/// Errors: as [`spectral_radius`] (a rectangular W is rejected too).
pub fn largest_singular_value<F: Scalar>(w: ArrayView2<'_, F>, iters: usize) -> Result<f64> {
    let (w, c) = rescaled("largest_singular_value", &w, iters)?;
    if c == 0.0 {
        return Ok(0.0);
    }
    let mut v = start_vector(w.ncols());
    let mut sigma = 0.0;
    for _ in 0..iters {
        let u = w.t().dot(&w.dot(&v));
        let n = u.dot(&u).sqrt();
        if n == 0.0 {
            return Ok(0.0);
        }
        sigma = n.sqrt();
        v = u / n;
    }
    finite_result("largest_singular_value", c * sigma)
}

/// W / c in f64 with c = max |w_ij|, and c: the power iterations run on entries of
/// magnitude at most 1, so that neither `W v` nor `WᵀW v` overflows (or underflows) for
/// any finite W; ρ and σ₁ scale with c.
fn rescaled<F: Scalar>(
    op: &'static str,
    w: &ArrayView2<'_, F>,
    iters: usize,
) -> Result<(Array2<f64>, f64)> {
    check_square(op, w, iters)?;
    if let Some(at) = crate::params::first_non_finite(w.iter()) {
        return Err(Error::NonFinite {
            op,
            what: format!("entry {at} of W"),
        });
    }
    let c = w.iter().fold(0.0f64, |m, x| m.max(x.as_f64().abs()));
    let scaled = if c == 0.0 {
        w.mapv(|x| x.as_f64())
    } else {
        w.mapv(|x| x.as_f64() / c)
    };
    Ok((scaled, c))
}
