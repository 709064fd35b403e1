//! The exact expectation and variance of the randomized estimator, by enumerating all
//! 2^T patterns of ξ with their probabilities.
//!
//! The estimate is multi-affine in (ξ_1, …, ξ_T) and E[ξ_t | ξ_<t] = 1, so the
//! probability-weighted sum over patterns equals the full gradient exactly (LITERATURE.md
//! §1.2); this module computes that sum, so that unbiasedness is a test with a 1e-10
//! tolerance rather than a statistical one.

use super::xi::next_m;
use super::{run, Pi, RunOptions, Truncation};
use crate::error::{invalid, Result};
use crate::params::{Grads, Params};
use crate::rnn::{Recurrent, SequenceLoss};
use crate::scalar::Scalar;
use ndarray::{ArrayView2, ArrayView3, Axis, Zip};

/// The largest T [`randomized_moments`] accepts (2^16 runs).
pub const MAX_ENUMERATION_STEPS: usize = 16;

/// Every pattern of ξ with non-zero probability, with that probability
/// `Π_t P(ξ_t | ξ_<t)`.
///
/// ```
/// use timetape::bptt::{enumerate::patterns, Pi};
/// let all = patterns(&Pi::Constant(0.5), 3)?;
/// assert_eq!(all.len(), 8);
/// assert!((all.iter().map(|(_, p)| p).sum::<f64>() - 1.0).abs() < 1e-15);
/// # Ok::<(), timetape::Error>(())
/// ```
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

/// Exact moments of the randomized estimator.
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

/// E and Var of `Randomized { pi }` by enumeration of all patterns (T ≤ 16).
pub fn randomized_moments<'a, F: Scalar, C: Recurrent<F>>(
    cell: &C,
    params: &Params<F>,
    xs: ArrayView3<'a, F>,
    h0: Option<ArrayView2<'_, F>>,
    loss: &SequenceLoss<'a, F>,
    pi: &Pi,
) -> Result<Moments<F>> {
    let t_len = xs.len_of(Axis(0));
    let all = patterns(pi, t_len)?;
    let mut estimates = Vec::with_capacity(all.len());
    let mut mean = Grads::zeros_like(params);
    for (xi, p) in &all {
        let r = run(
            cell,
            params,
            xs,
            h0,
            loss,
            &Truncation::Pattern(xi.clone()),
            RunOptions::default(),
        )?;
        let g = r.grads;
        let pf = F::of(*p);
        for (id, a) in g.iter() {
            if let Some(m) = mean.get_mut(id) {
                Zip::from(m).and(a).for_each(|m, &a| *m = *m + pf * a);
            }
        }
        estimates.push((g, pf));
    }
    let mut variance = Grads::zeros_like(params);
    for (g, pf) in &estimates {
        for (id, a) in g.iter() {
            if let (Some(v), Some(m)) = (variance.get_mut(id), mean.get(id)) {
                Zip::from(v)
                    .and(a)
                    .and(m)
                    .for_each(|v, &a, &m| *v = *v + *pf * (a - m) * (a - m));
            }
        }
    }
    Ok(Moments {
        mean,
        variance,
        patterns: all.len(),
    })
}
