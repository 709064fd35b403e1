//! The exact expectation and variance of the randomized estimator, by enumerating all
//! 2^T patterns of ξ with their probabilities.
//!
//! The estimate is multi-affine in (ξ_1, …, ξ_T): written as
//! `Ĝ(ξ) = Σ_{i ≤ t} a_{i,t} Π_{j=i+1..t} ξ_j`, with `a_{i,t}` the contribution of the
//! loss at step t through the parameters' use at step i under full BPTT, each ξ_j appears
//! at most once in a product. With `E[ξ_t | ξ_<t] = 1` the tower rule gives
//! `E[Ĝ] = Ĝ(1, …, 1)`, the full gradient, exactly (Tallec & Ollivier 2017). This module
//! computes the probability-weighted sum over all patterns, so that unbiasedness is a
//! test with a 1e-10 tolerance rather than a statistical one. It costs one BPTT run per
//! pattern: up to 2^T runs.

use super::xi::next_m;
use super::{run, Pi, Run, Truncation};
use crate::error::{invalid, Result};
use crate::params::{Grads, Params};
use crate::rnn::{Recurrent, Sequence};
use crate::scalar::Scalar;
use ndarray::Zip;

/// The largest T that [`patterns`] and [`randomized_moments`] accept (2^16 patterns).
pub const MAX_ENUMERATION_STEPS: usize = 16;

/// Every pattern ξ_1..ξ_T with non-zero probability, with that probability
/// `Π_t P(ξ_t | ξ_<t)` (`π_t` for ξ_t = 1/π_t, `1 − π_t` for ξ_t = 0, π_t evaluated
/// along the pattern, so a [`Pi::Hazard`] is handled). Steps with π_t = 1 never cut, so
/// there are `2^T` patterns only if every π_t < 1. The probabilities sum to 1.
///
/// ```
/// use timetape::bptt::{enumerate::patterns, Pi};
/// let all = patterns(&Pi::Constant(0.5), 3)?;
/// assert_eq!(all.len(), 8);
/// assert!((all.iter().map(|(_, p)| p).sum::<f64>() - 1.0).abs() < 1e-15);
/// # Ok::<(), timetape::Error>(())
/// ```
///
/// Errors: [`Error::InvalidArgument`](crate::Error::InvalidArgument) for T >
/// [`MAX_ENUMERATION_STEPS`] or a π_t outside (0, 1].
pub fn patterns(pi: &Pi, t_len: usize) -> Result<Vec<(Vec<f64>, f64)>> {
    if t_len > MAX_ENUMERATION_STEPS {
        return Err(invalid(
            "enumerate",
            format!("T = {t_len} exceeds {MAX_ENUMERATION_STEPS} steps"),
        ));
    }
    let mut out = Vec::new();
    'patterns: for mask in 0u64..(1u64 << t_len) {
        let mut xi = Vec::with_capacity(t_len);
        let mut prob = 1.0;
        let mut m = 0;
        for t in 0..t_len {
            let p = pi.at(t + 1, m)?;
            let survives = mask >> t & 1 == 1;
            let x = if survives {
                prob *= p;
                1.0 / p
            } else {
                if p == 1.0 {
                    continue 'patterns;
                }
                prob *= 1.0 - p;
                0.0
            };
            xi.push(x);
            m = next_m(m, x);
        }
        out.push((xi, prob));
    }
    Ok(out)
}

/// Exact moments of the randomized estimator, as computed by [`randomized_moments`].
/// `mean` and `variance` have an entry for every parameter of the store.
#[derive(Debug, Clone)]
pub struct Moments<F> {
    /// E\[Ĝ\], entry by entry.
    pub mean: Grads<F>,
    /// Var\[Ĝ\], entry by entry (computed as Σ p (Ĝ − E Ĝ)², not by a difference of
    /// second moments).
    pub variance: Grads<F>,
    /// Patterns with non-zero probability.
    pub patterns: usize,
}

/// E\[Ĝ\] and Var\[Ĝ\] of the gradient estimate of
/// [`Truncation::Randomized`] `{ pi, .. }` on this sequence, by enumeration: one
/// [`run`] with [`Truncation::Pattern`] for each pattern of [`patterns`] (T ≤
/// [`MAX_ENUMERATION_STEPS`]), weighted by its probability. The mean equals the
/// gradient of [`Truncation::Full`] up to rounding, for any [`Pi`].
///
/// ```
/// use ndarray::{Array2, Array3};
/// use timetape::bptt::enumerate::randomized_moments;
/// use timetape::bptt::{run, Pi, Run, Truncation};
/// use timetape::rnn::{models, SequenceLoss, Sequence, Sizes};
/// use timetape::Params;
///
/// let mut params = Params::<f64>::new();
/// let cell = models::m3(&mut params, Sizes::new(2, 3, 2), 0)?;
/// let xs = Array3::from_shape_fn((5, 1, 2), |(t, _, d)| ((t + 2 * d) as f64).sin());
/// let labels = Array2::from_shape_fn((5, 1), |(t, _)| t % 2);
/// let seq = Sequence::new(xs.view(), SequenceLoss::classes(labels.view()));
///
/// let m = randomized_moments(&cell, &params, &seq, &Pi::Constant(0.5))?;
/// let full = run(&cell, &params, &seq, &Run::new(Truncation::Full))?;
/// assert_eq!(m.patterns, 32);
/// assert!(m.mean.max_rel_diff(&full.grads) < 1e-12); // unbiased
/// assert!(m.variance.get(cell.w_hh).unwrap().iter().all(|&v| v > 0.0));
/// # Ok::<(), timetape::Error>(())
/// ```
///
/// Errors: as [`patterns`] and [`run`]; [`Error::NonFinite`](crate::Error::NonFinite) if
/// the mean or the variance overflows.
pub fn randomized_moments<F: Scalar, C: Recurrent<F>>(
    cell: &C,
    params: &Params<F>,
    seq: &Sequence<'_, F>,
    pi: &Pi,
) -> Result<Moments<F>> {
    let t_len = seq.len();
    let all = patterns(pi, t_len)?;
    let mut estimates = Vec::with_capacity(all.len());
    let mut mean = Grads::zeros_like(params);
    for (xi, p) in &all {
        let how = Run::new(Truncation::Pattern(xi.clone()));
        let r = run(cell, params, seq, &how)?;
        let g = r.grads;
        let pf = F::of(*p);
        for (id, a) in g.iter() {
            if let Ok(m) = mean.get_mut(id) {
                Zip::from(m).and(a).for_each(|m, &a| *m = *m + pf * a);
            }
        }
        estimates.push((g, pf));
    }
    let mut variance = Grads::zeros_like(params);
    for (g, pf) in &estimates {
        for (id, a) in g.iter() {
            if let (Ok(v), Ok(m)) = (variance.get_mut(id), mean.get(id)) {
                Zip::from(v)
                    .and(a)
                    .and(m)
                    .for_each(|v, &a, &m| *v = *v + *pf * (a - m) * (a - m));
            }
        }
    }
    // Every estimate is finite (run checks it); their mean or variance can still overflow.
    mean.check_finite("randomized_moments (mean)")?;
    variance.check_finite("randomized_moments (variance)")?;
    Ok(Moments {
        mean,
        variance,
        patterns: all.len(),
    })
}
