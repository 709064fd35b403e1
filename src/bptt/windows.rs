//! Variable-length windows, as AWD-LSTM trains (Merity, Keskar & Socher 2018,
//! "Regularizing and Optimizing LSTM Language Models"): the distribution of the window
//! lengths ([`WindowLengths`], AWD's own from [`Awd`] or any pmf), and the lengths of the
//! windows of a ξ pattern ([`segment_lengths`]).
//!
//! [`Truncation::Windows`](super::Truncation::Windows) cuts the sequence into consecutive
//! windows of independent lengths drawn from the pmf and detaches h at every window
//! start: ξ_t = 0 at the first step of every window after the first, 1 elsewhere. There
//! is no 1/π rescaling, so the gradient is **biased**: a loss reaches the parameters'
//! use i steps back only if no window starts in between, with a probability below 1
//! that nothing corrects for. [`WindowLengths::unbiased_pi`] gives the same windows,
//! reweighted by 1/π, as a [`Truncation::Randomized`](super::Truncation::Randomized):
//! unbiased.
//!
//! Windows are drawn as a hazard: after m steps in the current window, the next step
//! starts a new window with probability `P(L = m)/P(L ≥ m)`, i.e. the window survives
//! with `π(m) = P(L ≥ m + 1)/P(L ≥ m)` ([`WindowLengths::pi`]), one uniform draw per step
//! from the same ChaCha8 stream as `Randomized`.

use super::xi::Pi;
use crate::error::{invalid, Result};
use std::fmt;
use std::ops::RangeInclusive;
use std::sync::Arc;

/// The longest window a [`WindowLengths`] built by [`WindowLengths::awd`] may have
/// (2²² steps): AWD's parameters whose support would reach further are an error.
pub const MAX_WINDOW: usize = 1 << 22;

/// The upper tail mass dropped from AWD's pmf: the support ends at the first length
/// past which the lengths have a total probability below this.
const TAIL: f64 = 1e-300;

/// How far from the mean the cut-off of AWD's support can be at most, in σ:
/// `P(Z ≥ 38) ≈ 2.9·10⁻³¹⁶ < 1e-300` for a standard normal Z.
const TAIL_SIGMAS: f64 = 38.0;

/// AWD-LSTM's window lengths. Each window picks the mean `base` with probability
/// `p_base`, else `base / 2` (a real number: 35 for 70, 17.5 for 35), draws X from a
/// normal of that mean and standard deviation `sigma`, and has the length
/// `max(min, int(X))`, `int` truncating toward zero as numpy's `int` does. So the length
/// is `min` iff X < min + 1, and ℓ > min iff ℓ ≤ X < ℓ + 1. AWD-LSTM also scales the
/// learning rate of each window's update by its length over `base`
/// ([`WindowLengths::lr_scale`]).
///
/// [`Awd::default`] gives AWD-LSTM's values: `base` 70, `p_base` 0.95, `sigma` 5, `min` 5.
///
/// ```
/// use timetape::bptt::{Awd, WindowLengths};
///
/// let awd = WindowLengths::awd(Awd::default())?;
/// let short = WindowLengths::awd(Awd { base: 35, ..Awd::default() })?;
/// // E[int X] = mean − ½ (to far below rounding for σ = 5), and the clamp at 5 adds
/// // 7e-11 for `base` 70 (P(X < 6) is 3e-9 for the mean 35), 6.7e-4 for `base` 35.
/// assert!((awd.mean() - 67.75).abs() < 1e-9); // 0.95·69.5 + 0.05·34.5
/// assert!((short.mean() - 33.625).abs() < 1e-3); // 0.95·34.5 + 0.05·17
/// assert_eq!(awd.lr_scale(35), 0.5);
/// # Ok::<(), timetape::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Awd {
    /// The base length (AWD-LSTM's `bptt`, 70), ≥ 1; also the reference length of
    /// [`WindowLengths::lr_scale`].
    pub base: usize,
    /// The probability that a window's mean is `base` (0.95), in [0, 1]; else it is
    /// `base / 2`.
    pub p_base: f64,
    /// The standard deviation of the normal draw (5), finite and > 0.
    pub sigma: f64,
    /// The shortest window (5), ≥ 1: every draw below `min + 1` gives `min`.
    pub min: usize,
}

impl Default for Awd {
    /// AWD-LSTM's values: `base` 70, `p_base` 0.95, `sigma` 5, `min` 5.
    fn default() -> Self {
        Awd {
            base: 70,
            p_base: 0.95,
            sigma: 5.0,
            min: 5,
        }
    }
}

impl Awd {
    /// Checks the parameters (see the fields).
    fn check(&self) -> Result<()> {
        let op = "WindowLengths::awd";
        if self.base == 0 {
            return Err(invalid(op, "base must be ≥ 1"));
        }
        if self.min == 0 {
            return Err(invalid(op, "min must be ≥ 1"));
        }
        if !(0.0..=1.0).contains(&self.p_base) {
            return Err(invalid(
                op,
                format!("p_base = {} is outside [0, 1]", self.p_base),
            ));
        }
        if !(self.sigma > 0.0 && self.sigma.is_finite()) {
            return Err(invalid(
                op,
                format!("sigma = {} must be finite and > 0", self.sigma),
            ));
        }
        if self.min > MAX_WINDOW {
            return Err(invalid(
                op,
                format!("min = {} exceeds MAX_WINDOW = {MAX_WINDOW}", self.min),
            ));
        }
        Ok(())
    }

    /// The two normal components: (weight, mean).
    fn components(&self) -> [(f64, f64); 2] {
        let base = self.base as f64;
        [(self.p_base, base), (1.0 - self.p_base, base / 2.0)]
    }

    /// P(X ≥ x) of the mixture.
    fn above(&self, x: f64) -> f64 {
        let c = self.components();
        c.iter().map(|&(w, mu)| w * above(x, mu, self.sigma)).sum()
    }

    /// The longest length kept: the first ℓ ≥ min with P(X ≥ ℓ + 1) < [`TAIL`] (X ≥ ℓ + 1
    /// is exactly L > ℓ), by bisection on this decreasing tail.
    fn longest(&self) -> Result<usize> {
        let reach = self.base as f64 + TAIL_SIGMAS * self.sigma + 1.0;
        let mut hi = if reach < MAX_WINDOW as f64 {
            (reach.ceil() as usize).max(self.min)
        } else {
            MAX_WINDOW
        };
        if self.above(hi as f64 + 1.0) >= TAIL {
            return Err(invalid(
                "WindowLengths::awd",
                format!("windows longer than MAX_WINDOW = {MAX_WINDOW} steps are too likely"),
            ));
        }
        let mut lo = self.min;
        // Invariant: the answer is in [lo, hi].
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if self.above(mid as f64 + 1.0) < TAIL {
                hi = mid;
            } else {
                lo = mid + 1;
            }
        }
        Ok(lo)
    }

    /// P(L = ℓ) for ℓ = 1..=longest (index ℓ − 1), unnormalized: the mass past the
    /// longest length (below [`TAIL`]) is dropped.
    fn pmf(&self) -> Result<Vec<f64>> {
        self.check()?;
        let end = self.longest()?;
        let c = self.components();
        let sigma = self.sigma;
        let min = self.min as f64;
        crate::init::try_collect("WindowLengths::awd", end, |i| {
            let len = (i + 1) as f64;
            if len < min {
                0.0
            } else if len == min {
                c.iter()
                    .map(|&(w, mu)| w * below(min + 1.0, mu, sigma))
                    .sum()
            } else {
                c.iter().map(|&(w, mu)| w * between(len, mu, sigma)).sum()
            }
        })
    }
}

/// P(X < x) for X ~ N(mu, sigma²).
fn below(x: f64, mu: f64, sigma: f64) -> f64 {
    0.5 * libm::erfc((mu - x) / (sigma * std::f64::consts::SQRT_2))
}

/// P(X ≥ x) for X ~ N(mu, sigma²).
fn above(x: f64, mu: f64, sigma: f64) -> f64 {
    0.5 * libm::erfc((x - mu) / (sigma * std::f64::consts::SQRT_2))
}

/// P(lo ≤ X < lo + 1) for X ~ N(mu, sigma²), as the difference of the two values of the
/// tail on lo's side of the mean (no cancellation of two values near 1).
fn between(lo: f64, mu: f64, sigma: f64) -> f64 {
    if lo + 0.5 >= mu {
        above(lo, mu, sigma) - above(lo + 1.0, mu, sigma)
    } else {
        below(lo + 1.0, mu, sigma) - below(lo, mu, sigma)
    }
}

/// A distribution of window lengths ℓ ≥ 1: the pmf `P(L = ℓ)`, the survival
/// `P(L ≥ m)`, the mean, the hazard, and the learning-rate scale of a window.
///
/// Built from AWD-LSTM's parameters ([`WindowLengths::awd`]) or from any pmf
/// ([`WindowLengths::from_pmf`]); used by
/// [`Truncation::Windows`](super::Truncation::Windows). Cloning is cheap (the tables
/// are shared).
///
/// ```
/// use timetape::bptt::WindowLengths;
///
/// // Windows of 1 to 4 steps.
/// let w = WindowLengths::from_pmf(vec![0.1, 0.2, 0.3, 0.4])?;
/// assert_eq!(w.pmf(3), 0.3);
/// assert!((w.survival(3) - 0.7).abs() < 1e-15); // P(L ≥ 3)
/// assert!((w.mean() - 3.0).abs() < 1e-15);
/// assert!((w.hazard(3) - 0.3 / 0.7).abs() < 1e-15); // cut after 3 steps
/// assert!((w.pi(3) - 0.4 / 0.7).abs() < 1e-15); // or survive
/// assert_eq!(w.pi(4), 0.0); // no window is longer than 4
/// assert_eq!(w.support(), 1..=4);
/// # Ok::<(), timetape::Error>(())
/// ```
#[derive(Clone)]
pub struct WindowLengths {
    inner: Arc<Tables>,
}

/// The tables of a [`WindowLengths`].
#[derive(Clone)]
struct Tables {
    /// P(L = ℓ) at index ℓ − 1, ℓ = 1..=longest (the last entry > 0).
    pmf: Vec<f64>,
    /// P(L ≥ m) at index m − 1, m = 1..=longest (the first entry 1).
    survival: Vec<f64>,
    /// E[L].
    mean: f64,
    /// The length whose learning-rate scale is 1.
    reference: f64,
}

impl fmt::Debug for WindowLengths {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WindowLengths")
            .field("support", &self.support())
            .field("mean", &self.mean())
            .field("reference", &self.reference())
            .finish()
    }
}

impl WindowLengths {
    /// AWD-LSTM's window lengths ([`Awd`]), with the reference length `base` for
    /// [`WindowLengths::lr_scale`].
    ///
    /// The pmf is exact, from the normal CDF (through `erfc`, each difference of two
    /// CDF values taken on the side of the tail so that nothing cancels), except for
    /// one cut-off: the support ends at the first length ℓ_max past which the lengths
    /// have a total probability below 1e-300 (the mass dropped), and the pmf is divided
    /// by its sum. ℓ_max is at most 38σ past `base` (`P(Z ≥ 38) < 1e-300`): 255 for
    /// AWD's defaults.
    ///
    /// ```
    /// use timetape::bptt::{Awd, WindowLengths};
    ///
    /// let awd = WindowLengths::awd(Awd::default())?;
    /// assert_eq!(awd.support(), 5..=255);
    /// let total: f64 = awd.probabilities().iter().sum();
    /// assert!((total - 1.0).abs() < 1e-12);
    /// // The mode: the length 69 (69 ≤ X < 70), P ≈ 0.95 · 0.0793.
    /// assert!((awd.pmf(69) - 0.0753).abs() < 1e-4);
    /// assert!(WindowLengths::awd(Awd { sigma: 0.0, ..Awd::default() }).is_err());
    /// # Ok::<(), timetape::Error>(())
    /// ```
    ///
    /// Errors: [`Error::InvalidArgument`](crate::Error::InvalidArgument) for `base` or
    /// `min` of 0, `p_base` outside [0, 1] (or NaN), `sigma` not finite or ≤ 0, or a
    /// support that would reach past [`MAX_WINDOW`].
    pub fn awd(awd: Awd) -> Result<Self> {
        let pmf = awd.pmf()?;
        let total: f64 = pmf.iter().sum();
        Ok(Self::from_tables(pmf, total, Some(awd.base as f64)))
    }

    /// A distribution given by its pmf: `pmf[ℓ − 1] = P(L = ℓ)` for ℓ = 1, 2, …,
    /// `pmf.len()`. The values must be finite and ≥ 0 and sum to 1 within 1e-12; they
    /// are divided by their sum. The reference length of [`WindowLengths::lr_scale`] is
    /// the mean, so that a window's scale is 1 on average (change it with
    /// [`WindowLengths::with_reference`]).
    ///
    /// ```
    /// use timetape::bptt::WindowLengths;
    ///
    /// let w = WindowLengths::from_pmf(vec![0.0, 0.5, 0.0, 0.5])?; // 2 or 4 steps
    /// assert_eq!((w.mean(), w.lr_scale(2), w.lr_scale(4)), (3.0, 2.0 / 3.0, 4.0 / 3.0));
    /// assert!(WindowLengths::from_pmf(vec![0.5, 0.6]).is_err()); // sums to 1.1
    /// # Ok::<(), timetape::Error>(())
    /// ```
    ///
    /// Errors: [`Error::InvalidArgument`](crate::Error::InvalidArgument) for an empty
    /// pmf, a negative or non-finite value (naming its length), or a sum that is not
    /// within 1e-12 of 1.
    pub fn from_pmf(pmf: Vec<f64>) -> Result<Self> {
        let op = "WindowLengths::from_pmf";
        if pmf.is_empty() {
            return Err(invalid(op, "empty pmf: no window length has a probability"));
        }
        if let Some(i) = pmf.iter().position(|p| !(p.is_finite() && *p >= 0.0)) {
            return Err(invalid(
                op,
                format!("P(L = {}) = {} is not a probability", i + 1, pmf[i]),
            ));
        }
        // Finite non-negative values: the sum is not NaN (it may be +∞).
        let total: f64 = pmf.iter().sum();
        if (total - 1.0).abs() > 1e-12 {
            return Err(invalid(
                op,
                format!("the pmf sums to {total}, not to 1 within 1e-12"),
            ));
        }
        Ok(Self::from_tables(pmf, total, None))
    }

    /// The distribution of a checked pmf of sum `total` > 0: normalized, trailing zeros
    /// dropped, survival and mean tabulated; the reference length is `reference` or the
    /// mean.
    fn from_tables(mut pmf: Vec<f64>, total: f64, reference: Option<f64>) -> Self {
        pmf.iter_mut().for_each(|p| *p /= total);
        while pmf.last() == Some(&0.0) {
            pmf.pop();
        }
        // Suffix sums, divided by the first so that P(L ≥ 1) = 1 exactly: both steps are
        // monotone in floating point, so P(L ≥ m + 1) ≤ P(L ≥ m) and π(m) ≤ 1.
        let mut survival = vec![0.0; pmf.len()];
        let mut tail = 0.0;
        for (s, p) in survival.iter_mut().zip(&pmf).rev() {
            tail += p;
            *s = tail;
        }
        survival.iter_mut().for_each(|s| *s /= tail);
        let mean = pmf
            .iter()
            .enumerate()
            .map(|(i, p)| (i + 1) as f64 * p)
            .sum();
        WindowLengths {
            inner: Arc::new(Tables {
                pmf,
                survival,
                mean,
                reference: reference.unwrap_or(mean),
            }),
        }
    }

    /// The same distribution with another reference length for
    /// [`WindowLengths::lr_scale`] (a window of this length has scale 1).
    ///
    /// Errors: [`Error::InvalidArgument`](crate::Error::InvalidArgument) unless
    /// `reference` is finite and > 0.
    pub fn with_reference(mut self, reference: f64) -> Result<Self> {
        if !(reference > 0.0 && reference.is_finite()) {
            return Err(invalid(
                "WindowLengths::with_reference",
                format!("reference = {reference} must be finite and > 0"),
            ));
        }
        Arc::make_mut(&mut self.inner).reference = reference;
        Ok(self)
    }

    /// `P(L = len)` (0 outside the support).
    pub fn pmf(&self, len: usize) -> f64 {
        match len {
            0 => 0.0,
            _ => self.inner.pmf.get(len - 1).copied().unwrap_or(0.0),
        }
    }

    /// `P(L = ℓ)` for ℓ = 1..=ℓ_max, at index ℓ − 1 (ℓ_max the longest length with a
    /// non-zero probability; the values sum to 1 up to rounding).
    pub fn probabilities(&self) -> &[f64] {
        &self.inner.pmf
    }

    /// The shortest and longest lengths of non-zero probability.
    pub fn support(&self) -> RangeInclusive<usize> {
        let first = self.inner.pmf.iter().position(|&p| p > 0.0).unwrap_or(0);
        first + 1..=self.inner.pmf.len()
    }

    /// The survival `P(L ≥ m)`: 1 for m ≤ 1, 0 past the support.
    pub fn survival(&self, m: usize) -> f64 {
        match m {
            0 => 1.0,
            _ => self.inner.survival.get(m - 1).copied().unwrap_or(0.0),
        }
    }

    /// The mean length E\[L\] = Σ ℓ P(L = ℓ).
    pub fn mean(&self) -> f64 {
        self.inner.mean
    }

    /// The hazard `P(L = m)/P(L ≥ m)`: the probability that a window that has m steps
    /// ends there, so that the next step starts a new one. 0 for m = 0 (the first step
    /// of a sequence starts the first window), 1 at the end of the support and past it.
    pub fn hazard(&self, m: usize) -> f64 {
        match m {
            0 => 0.0,
            _ if self.survival(m + 1) > 0.0 => (self.pmf(m) / self.survival(m)).min(1.0),
            _ => 1.0,
        }
    }

    /// The survival probability of the edge into the next step after m steps of the
    /// current window, `π(m) = P(L ≥ m + 1)/P(L ≥ m)` (1 − [`WindowLengths::hazard`]):
    /// 1 for m = 0, 0 at the end of the support and past it. This is what
    /// [`Truncation::Windows`](super::Truncation::Windows) draws each step with.
    pub fn pi(&self, m: usize) -> f64 {
        let s = self.survival(m);
        match m {
            0 => 1.0,
            _ if s > 0.0 => self.survival(m + 1) / s,
            _ => 0.0,
        }
    }

    /// The reference length of [`WindowLengths::lr_scale`]: `base` for
    /// [`WindowLengths::awd`], the mean for [`WindowLengths::from_pmf`], or the value
    /// given to [`WindowLengths::with_reference`].
    pub fn reference(&self) -> f64 {
        self.inner.reference
    }

    /// The learning-rate scale of a window of `len` steps, `len / reference`, as
    /// AWD-LSTM scales the learning rate of each window's update (there by `len/70`).
    ///
    /// AWD-LSTM averages the loss over a window's steps, so the scale makes every step
    /// weigh the same whatever its window's length: at fixed parameters, one
    /// [`run`](super::run) with `Windows` and the loss at every step weighted `1/reference`
    /// gives the sum of those scaled updates. For updates window by window (a
    /// [`Stream`](super::Stream) or one run per window), take the lengths from
    /// [`Report::xi`](super::Report::xi) with [`segment_lengths`].
    ///
    /// ```
    /// use timetape::bptt::{Awd, WindowLengths};
    /// let awd = WindowLengths::awd(Awd::default())?;
    /// assert_eq!((awd.lr_scale(70), awd.lr_scale(63)), (1.0, 0.9));
    /// # Ok::<(), timetape::Error>(())
    /// ```
    pub fn lr_scale(&self, len: usize) -> f64 {
        len as f64 / self.inner.reference
    }

    /// The same windows, reweighted by 1/π: unbiased. A hazard [`Pi`] with the
    /// survival probabilities `π(m)` of [`WindowLengths::pi`] for
    /// [`Truncation::Randomized`](super::Truncation::Randomized): with the same seed,
    /// its cuts are those of [`Truncation::Windows`](super::Truncation::Windows) (the
    /// same π, the same uniform draws), and a surviving edge scales the gradient by
    /// 1/π(m), which makes the estimate unbiased.
    ///
    /// Except past the end of the support: after ℓ_max steps (the longest length)
    /// the windows always cut (π = 0), and an edge that is never kept cannot be
    /// reweighted, so pairs of steps more than ℓ_max apart would be missed. There, this
    /// π is ½ instead (ξ = 0 or 2), so that segments may grow longer than ℓ_max and the
    /// estimate stays unbiased. (For AWD's lengths ℓ_max is 37σ past the mean: never
    /// reached in practice.)
    ///
    /// ```
    /// use timetape::bptt::{sample_xi, Truncation, WindowLengths};
    ///
    /// let w = WindowLengths::from_pmf(vec![0.0, 0.5, 0.5])?;
    /// let pi = w.unbiased_pi();
    /// assert_eq!((pi.at(1, 1)?, pi.at(1, 2)?, pi.at(1, 3)?), (1.0, 0.5, 0.5));
    /// let xi = sample_xi(&pi, 50, 3)?;
    /// assert!(xi.iter().all(|&x| x == 0.0 || x == 1.0 || x == 2.0));
    /// # Ok::<(), timetape::Error>(())
    /// ```
    pub fn unbiased_pi(&self) -> Pi {
        let lengths = self.clone();
        Pi::hazard(move |m| match lengths.pi(m) {
            p if p > 0.0 => p,
            _ => 0.5,
        })
    }
}

/// The lengths of the windows (segments) of a ξ pattern, in order: a window starts at
/// step 1 and at every later step with ξ_t = 0. Their sum is the pattern's length. For
/// the ξ of a run, [`Report::xi`](super::Report::xi); with
/// [`WindowLengths::lr_scale`], the learning-rate scale of each window's update.
///
/// ```
/// use timetape::bptt::segment_lengths;
/// assert_eq!(segment_lengths(&[1.0, 1.0, 0.0, 1.0, 0.0, 0.0]), vec![2, 2, 1, 1]);
/// assert_eq!(segment_lengths(&[0.0, 2.0]), vec![2]); // ξ_1 cuts nothing
/// assert!(segment_lengths(&[]).is_empty());
/// ```
pub fn segment_lengths(xi: &[f64]) -> Vec<usize> {
    let mut lengths: Vec<usize> = Vec::new();
    for &x in xi {
        // The first step starts a window whatever its ξ.
        match lengths.last_mut() {
            Some(len) if x != 0.0 => *len += 1,
            _ => lengths.push(1),
        }
    }
    lengths
}
