//! The exact expectation and variance of the randomized and windowed estimators, by
//! enumerating all 2^T patterns of ξ with their probabilities.
//!
//! The estimate is multi-affine in (ξ_1, …, ξ_T): written as
//! `Ĝ(ξ) = Σ_{i ≤ t} a_{i,t} Π_{j=i+1..t} ξ_j`, with `a_{i,t}` the contribution of the
//! loss at step t through the parameters' use at step i under full BPTT, each ξ_j appears
//! at most once in a product. With `E[ξ_t | ξ_<t] = 1` the tower rule gives
//! `E[Ĝ] = Ĝ(1, …, 1)`, the full gradient, exactly (Tallec & Ollivier 2017). This module
//! computes the probability-weighted sum over all patterns, so that unbiasedness is a
//! test with a 1e-10 tolerance rather than a statistical one. It costs one BPTT run per
//! pattern: up to 2^T runs.
//!
//! The windows of [`Truncation::Windows`] are patterns of 0 and 1 ([`window_patterns`]):
//! with ξ_t ∈ {0, 1}, `E[ξ_t | ξ_<t] = π_t < 1` wherever a cut is possible, and the
//! expectation ([`windows_moments`]) is not the full gradient. Any list of patterns with
//! their probabilities goes through [`pattern_moments`].

use super::xi::next_m;
use super::{run, Pi, Run, Truncation, WindowLengths};
use crate::error::{invalid, Result};
use crate::params::{Grads, Params};
use crate::rnn::{Recurrent, Sequence};
use crate::scalar::Scalar;
use ndarray::Zip;

/// The largest T that [`patterns`], [`window_patterns`] and the moments accept (2^16
/// patterns).
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
    enumerate_with(t_len, |t, m| {
        let p = pi.at(t, m)?;
        Ok((p, 1.0 / p))
    })
}

/// Every window pattern of [`Truncation::Windows`] `{ lengths, .. }` over T steps with
/// non-zero probability, with that probability: ξ_t = 1 (the window goes on) with
/// probability π(m) ([`WindowLengths::pi`], m the steps of the current window), else 0
/// (a new window starts). ξ_1 = 1 always; the probabilities sum to 1, and a pattern's
/// probability is `Π P(L = ℓ_w)` over its complete windows times `P(L ≥ ℓ_last)` for the
/// last one, cut short by T.
///
/// ```
/// use timetape::bptt::{enumerate::window_patterns, WindowLengths};
/// let lengths = WindowLengths::from_pmf(vec![0.5, 0.5])?; // windows of 1 or 2 steps
/// let all = window_patterns(&lengths, 3)?;
/// // ξ_1 = 1; after a window of 2 the next step must cut
/// assert_eq!(all.len(), 3);
/// assert!(all.contains(&(vec![1.0, 0.0, 0.0], 0.25))); // windows 1, 1, 1 (last cut short)
/// assert!(all.contains(&(vec![1.0, 1.0, 0.0], 0.5))); // windows 2, 1
/// assert!(all.contains(&(vec![1.0, 0.0, 1.0], 0.25))); // windows 1, 2
/// # Ok::<(), timetape::Error>(())
/// ```
///
/// Errors: [`Error::InvalidArgument`](crate::Error::InvalidArgument) for T >
/// [`MAX_ENUMERATION_STEPS`].
pub fn window_patterns(lengths: &WindowLengths, t_len: usize) -> Result<Vec<(Vec<f64>, f64)>> {
    enumerate_with(t_len, |_, m| Ok((lengths.pi(m), 1.0)))
}

/// Every pattern of T steps with non-zero probability, with that probability, where
/// `law(t, m)` gives for step t (1-based), m steps into the current segment, the
/// probability p that the edge survives and the ξ it then has (0 otherwise).
fn enumerate_with(
    t_len: usize,
    law: impl Fn(usize, usize) -> Result<(f64, f64)>,
) -> Result<Vec<(Vec<f64>, f64)>> {
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
            let (p, kept) = law(t + 1, m)?;
            let (x, q) = match mask >> t & 1 == 1 {
                true => (kept, p),
                false => (0.0, 1.0 - p),
            };
            if q == 0.0 {
                continue 'patterns;
            }
            prob *= q;
            xi.push(x);
            m = next_m(m, x);
        }
        out.push((xi, prob));
    }
    Ok(out)
}

/// Exact moments of an estimator over its patterns, as computed by
/// [`pattern_moments`] (and [`randomized_moments`], [`windows_moments`]). `mean` and
/// `variance` have an entry for every parameter of the store.
#[derive(Debug, Clone)]
pub struct Moments<F> {
    /// E\[Ĝ\], entry by entry.
    pub mean: Grads<F>,
    /// Var\[Ĝ\], entry by entry (computed as Σ p (Ĝ − E Ĝ)², not by a difference of
    /// second moments).
    pub variance: Grads<F>,
    /// The number of patterns (for [`randomized_moments`] and [`windows_moments`], those
    /// of non-zero probability).
    pub patterns: usize,
}

/// E\[Ĝ\] and Var\[Ĝ\] of the gradient estimate of
/// [`Truncation::Randomized`] `{ pi, .. }` on this sequence, by enumeration:
/// [`pattern_moments`] over [`patterns`] (T ≤ [`MAX_ENUMERATION_STEPS`]), one [`run`]
/// with [`Truncation::Pattern`] for each pattern, weighted by its probability. The mean
/// equals the gradient of [`Truncation::Full`] up to rounding, for any [`Pi`].
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
    pattern_moments(cell, params, seq, &patterns(pi, seq.len())?)
}

/// E\[Ĝ\] and Var\[Ĝ\] of the gradient estimate of [`Truncation::Windows`]
/// `{ lengths, .. }` on this sequence, by enumeration: [`pattern_moments`] over
/// [`window_patterns`] (T ≤ [`MAX_ENUMERATION_STEPS`]). The mean is **not** the
/// gradient of [`Truncation::Full`] once a window can end within T steps: that is the
/// bias of the windows, exactly.
///
/// ```
/// use ndarray::{Array2, Array3};
/// use timetape::bptt::enumerate::{randomized_moments, windows_moments};
/// use timetape::bptt::{run, Run, Truncation, WindowLengths};
/// use timetape::rnn::{models, SequenceLoss, Sequence, Sizes};
/// use timetape::Params;
///
/// let mut params = Params::<f64>::new();
/// let cell = models::m3(&mut params, Sizes::new(2, 3, 2), 0)?;
/// let xs = Array3::from_shape_fn((6, 1, 2), |(t, _, d)| ((t + 2 * d) as f64).sin());
/// let labels = Array2::from_shape_fn((6, 1), |(t, _)| t % 2);
/// let seq = Sequence::new(xs.view(), SequenceLoss::classes(labels.view()));
/// let full = run(&cell, &params, &seq, &Run::new(Truncation::Full))?;
///
/// let lengths = WindowLengths::from_pmf(vec![0.0, 0.5, 0.5])?; // 2 or 3 steps
/// let windows = windows_moments(&cell, &params, &seq, &lengths)?;
/// assert!(windows.mean.max_rel_diff(&full.grads) > 1e-3); // biased
/// let reweighted = randomized_moments(&cell, &params, &seq, &lengths.unbiased_pi())?;
/// assert!(reweighted.mean.max_rel_diff(&full.grads) < 1e-12); // unbiased
/// # Ok::<(), timetape::Error>(())
/// ```
///
/// Errors: as [`window_patterns`] and [`run`];
/// [`Error::NonFinite`](crate::Error::NonFinite) if the mean or the variance overflows.
pub fn windows_moments<F: Scalar, C: Recurrent<F>>(
    cell: &C,
    params: &Params<F>,
    seq: &Sequence<'_, F>,
    lengths: &WindowLengths,
) -> Result<Moments<F>> {
    pattern_moments(cell, params, seq, &window_patterns(lengths, seq.len())?)
}

/// E\[Ĝ\] and Var\[Ĝ\] of an estimator given by its patterns: one [`run`] with
/// [`Truncation::Pattern`] for each `(ξ, p)` of `patterns`, weighted by p. The
/// probabilities must be finite, ≥ 0 and sum to 1 within 1e-9 (as those of
/// [`patterns`] and [`window_patterns`] do, up to rounding).
///
/// ```
/// use ndarray::{Array2, Array3};
/// use timetape::bptt::enumerate::pattern_moments;
/// use timetape::bptt::{run, Run, Truncation};
/// use timetape::rnn::{models, SequenceLoss, Sequence, Sizes};
/// use timetape::Params;
///
/// let mut params = Params::<f64>::new();
/// let cell = models::m3(&mut params, Sizes::new(2, 3, 2), 0)?;
/// let xs = Array3::from_shape_fn((4, 1, 2), |(t, _, d)| ((t + 2 * d) as f64).sin());
/// let labels = Array2::from_shape_fn((4, 1), |(t, _)| t % 2);
/// let seq = Sequence::new(xs.view(), SequenceLoss::classes(labels.view()));
/// // Fixed { k: 2 } or Full, with equal probability
/// let half = vec![(vec![1.0, 1.0, 0.0, 1.0], 0.5), (vec![1.0; 4], 0.5)];
/// let m = pattern_moments(&cell, &params, &seq, &half)?;
/// let fixed = run(&cell, &params, &seq, &Run::new(Truncation::Fixed { k: 2 }))?;
/// let full = run(&cell, &params, &seq, &Run::new(Truncation::Full))?;
/// let w = cell.w_hh;
/// let want = (fixed.grads.get(w)? + full.grads.get(w)?) * 0.5;
/// assert!((m.mean.get(w)? - &want).iter().all(|d| d.abs() < 1e-12));
/// assert_eq!(m.patterns, 2);
/// # Ok::<(), timetape::Error>(())
/// ```
///
/// Errors: [`Error::InvalidArgument`](crate::Error::InvalidArgument) for no patterns or
/// probabilities that are not a distribution; as [`run`] for each pattern
/// ([`Error::ShapeMismatch`](crate::Error::ShapeMismatch) for one of another length
/// than the sequence); [`Error::NonFinite`](crate::Error::NonFinite) if the mean or the
/// variance overflows.
pub fn pattern_moments<F: Scalar, C: Recurrent<F>>(
    cell: &C,
    params: &Params<F>,
    seq: &Sequence<'_, F>,
    patterns: &[(Vec<f64>, f64)],
) -> Result<Moments<F>> {
    check_probabilities(patterns)?;
    let mut estimates = Vec::with_capacity(patterns.len());
    let mut mean = Grads::zeros_like(params);
    for (xi, p) in patterns {
        let how = Run::new(Truncation::Pattern(xi.clone()));
        let g = run(cell, params, seq, &how)?.grads;
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
    mean.check_finite("pattern_moments (mean)")?;
    variance.check_finite("pattern_moments (variance)")?;
    Ok(Moments {
        mean,
        variance,
        patterns: patterns.len(),
    })
}

/// Checks that the probabilities of `patterns` are a distribution (within 1e-9).
fn check_probabilities(patterns: &[(Vec<f64>, f64)]) -> Result<()> {
    let op = "pattern_moments";
    if patterns.is_empty() {
        return Err(invalid(op, "no patterns"));
    }
    if let Some(i) = patterns
        .iter()
        .position(|(_, p)| !(p.is_finite() && *p >= 0.0))
    {
        return Err(invalid(
            op,
            format!("pattern {i} has the probability {}", patterns[i].1),
        ));
    }
    // Finite non-negative values: the sum is not NaN (it may be +∞).
    let total: f64 = patterns.iter().map(|(_, p)| p).sum();
    if (total - 1.0).abs() > 1e-9 {
        return Err(invalid(
            op,
            format!("the probabilities sum to {total}, not to 1 within 1e-9"),
        ));
    }
    Ok(())
}
