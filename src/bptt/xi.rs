//! Sampling the ξ_t of randomized truncation.
//!
//! `P(ξ_t = 1/π_t) = π_t`, `P(ξ_t = 0) = 1 − π_t`, so `E[ξ_t] = 1`; ξ_t = 0 cuts the edge
//! `h_{t−1} → step t`, and a surviving edge scales the gradient by `1/π_t`.

use super::windows::WindowLengths;
use crate::error::{invalid, Result};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::fmt;
use std::sync::Arc;

/// The survival probability π_t ∈ (0, 1] of the edge `h_{t−1} → step t`.
///
/// The estimate stays unbiased whatever π_t is, as long as it depends only on the past
/// (on t and ξ_1..ξ_{t−1}, so that `E[ξ_t | ξ_{<t}] = 1`; Tallec & Ollivier 2017): a
/// constant, a function of t, or a function of the number of steps since the last cut (a
/// hazard). A value outside (0, 1] is an
/// [`Error::InvalidArgument`](crate::Error::InvalidArgument) when it is drawn (a constant
/// is also checked up front by [`Truncation::validate`](super::Truncation::validate)).
#[derive(Clone)]
pub enum Pi {
    /// The same π at every step. Segment lengths are then geometric,
    /// `P(L = m) = π^{m−1} (1 − π)`, with mean 1/(1 − π) (the last segment is cut short
    /// by the end of the sequence).
    Constant(f64),
    /// π_t as a function of the step t (1-based).
    Schedule(Arc<dyn Fn(usize) -> f64 + Send + Sync>),
    /// π_t as a function of m, the number of steps the current segment already has
    /// before step t: `m = t − s`, with s the first step of the segment (the last step
    /// with ξ_s = 0, or 1). So m = 0 only at t = 1, and m = 1 at the step right after a
    /// cut. The segment length then has `P(L ≥ m + 1) = Π_{k=1..m} π(k)`.
    Hazard(Arc<dyn Fn(usize) -> f64 + Send + Sync>),
}

impl fmt::Debug for Pi {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Pi::Constant(p) => write!(f, "Pi::Constant({p})"),
            Pi::Schedule(_) => write!(f, "Pi::Schedule(..)"),
            Pi::Hazard(_) => write!(f, "Pi::Hazard(..)"),
        }
    }
}

impl Pi {
    /// A schedule π_t = f(t), t 1-based.
    ///
    /// ```
    /// use timetape::bptt::{sample_xi, Pi};
    ///
    /// // no cut in the first 9 steps, then π = 0.9
    /// let pi = Pi::schedule(|t| if t < 10 { 1.0 } else { 0.9 });
    /// let xi = sample_xi(&pi, 30, 1)?;
    /// assert!(xi[..9].iter().all(|&x| x == 1.0));
    /// # Ok::<(), timetape::Error>(())
    /// ```
    pub fn schedule(f: impl Fn(usize) -> f64 + Send + Sync + 'static) -> Self {
        Pi::Schedule(Arc::new(f))
    }

    /// A hazard π_t = f(m), m the steps the current segment already has (see
    /// [`Pi::Hazard`]): segment lengths follow any distribution you like,
    /// `P(L ≥ m + 1) = Π_{k=1..m} f(k)`.
    ///
    /// ```
    /// use timetape::bptt::{sample_xi, Pi};
    ///
    /// // Segments of at least 5 steps, then a cut with probability 0.2 at every step.
    /// let pi = Pi::hazard(|m| if m < 5 { 1.0 } else { 0.8 });
    /// let xi = sample_xi(&pi, 200, 3)?;
    /// assert!(xi.iter().all(|&x| x == 0.0 || x == 1.0 || x == 1.25));
    /// let cuts: Vec<usize> = (0..200).filter(|&t| xi[t] == 0.0).collect();
    /// assert!(!cuts.is_empty() && cuts[0] >= 5);
    /// assert!(cuts.windows(2).all(|w| w[1] - w[0] >= 5));
    /// assert_eq!(pi.at(17, 2)?, 1.0); // t is ignored, m = 2
    /// # Ok::<(), timetape::Error>(())
    /// ```
    pub fn hazard(f: impl Fn(usize) -> f64 + Send + Sync + 'static) -> Self {
        Pi::Hazard(Arc::new(f))
    }

    /// π_t for step `t` (1-based) with `m` steps already in the current segment; the
    /// variant ignores what it does not use.
    ///
    /// Errors: [`Error::InvalidArgument`](crate::Error::InvalidArgument) if the value is
    /// outside (0, 1] (or NaN).
    pub fn at(&self, t: usize, m: usize) -> Result<f64> {
        let p = match self {
            Pi::Constant(p) => *p,
            Pi::Schedule(f) => f(t),
            Pi::Hazard(f) => f(m),
        };
        check_pi(p)?;
        Ok(p)
    }
}

/// Steps in the current segment after a step with this ξ (a cut starts a new one).
pub(crate) fn next_m(m: usize, xi: f64) -> usize {
    if xi == 0.0 {
        1
    } else {
        m + 1
    }
}

pub(crate) fn check_pi(p: f64) -> Result<()> {
    if !(p > 0.0 && p <= 1.0) {
        return Err(invalid("Randomized", format!("pi = {p} is outside (0, 1]")));
    }
    if !(1.0 / p).is_finite() {
        return Err(invalid(
            "Randomized",
            format!("pi = {p:e} is so small that ξ = 1/π overflows"),
        ));
    }
    Ok(())
}

/// Draws ξ_1, ξ_2, … one at a time: ξ_t = 1/π_t with probability π_t, else 0, from a
/// seeded ChaCha8 stream (one uniform draw per step). This is what
/// [`Truncation::Randomized`](super::Truncation::Randomized) and
/// [`Stream`](super::Stream) use; [`sample_xi`] collects T draws. A sampler of windows
/// ([`XiSampler::windows`]) draws the 0/1 of
/// [`Truncation::Windows`](super::Truncation::Windows) from the same stream.
///
/// ```
/// use timetape::bptt::{Pi, XiSampler};
///
/// let mut s = XiSampler::new(Pi::Constant(0.25), 7);
/// let xi: Vec<f64> = (0..1000).map(|_| s.next_xi()).collect::<Result<_, _>>()?;
/// assert!(xi.iter().all(|&x| x == 0.0 || x == 4.0));
/// let mean = xi.iter().sum::<f64>() / 1000.0; // E[ξ] = 1
/// assert!((mean - 1.0).abs() < 0.2);
/// # Ok::<(), timetape::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct XiSampler {
    law: Law,
    rng: ChaCha8Rng,
    t: usize,
    m: usize,
}

/// What an [`XiSampler`] draws: the ξ of randomized truncation, or the 0/1 of windows.
#[derive(Debug, Clone)]
pub(crate) enum Law {
    /// ξ_t = 1/π_t with probability π_t, else 0.
    Randomized(Pi),
    /// ξ_t = 1 with probability π(m) of the window lengths, else 0.
    Windows(WindowLengths),
}

impl XiSampler {
    /// A sampler at t = 1, seeded with `seed` (ChaCha8: the same seed gives the same ξ on
    /// every platform).
    pub fn new(pi: Pi, seed: u64) -> Self {
        Self::with_law(Law::Randomized(pi), seed)
    }

    /// A sampler of the windows of
    /// [`Truncation::Windows`](super::Truncation::Windows) `{ lengths, seed }`: ξ_t = 1
    /// with probability π(m) ([`WindowLengths::pi`], m the steps of the current window
    /// before step t), else 0 (a new window starts at step t). The same ChaCha8 stream
    /// and one uniform draw per step as [`XiSampler::new`]: with the same seed, its cuts
    /// are those of `XiSampler::new(lengths.unbiased_pi(), seed)` wherever π(m) > 0.
    ///
    /// ```
    /// use timetape::bptt::{segment_lengths, WindowLengths, XiSampler};
    ///
    /// let lengths = WindowLengths::from_pmf(vec![0.0, 0.0, 1.0])?; // always 3 steps
    /// let mut s = XiSampler::windows(lengths, 7);
    /// let xi: Vec<f64> = (0..8).map(|_| s.next_xi()).collect::<Result<_, _>>()?;
    /// assert_eq!(xi, [1.0, 1.0, 1.0, 0.0, 1.0, 1.0, 0.0, 1.0]);
    /// assert_eq!(segment_lengths(&xi), [3, 3, 2]);
    /// # Ok::<(), timetape::Error>(())
    /// ```
    pub fn windows(lengths: WindowLengths, seed: u64) -> Self {
        Self::with_law(Law::Windows(lengths), seed)
    }

    fn with_law(law: Law, seed: u64) -> Self {
        XiSampler {
            law,
            rng: crate::init::rng(seed),
            t: 0,
            m: 0,
        }
    }

    /// Whether this sampler draws windows ([`XiSampler::windows`]).
    pub(crate) fn draws_windows(&self) -> bool {
        matches!(self.law, Law::Windows(_))
    }

    /// Where the sampler is (for [`crate::checkpoint`]).
    pub(crate) fn position(&self) -> XiPosition {
        XiPosition {
            seed: self.rng.get_seed(),
            stream: self.rng.get_stream(),
            word_pos: self.rng.get_word_pos(),
            t: self.t,
            m: self.m,
        }
    }

    /// A sampler of `law` at a position read by [`XiSampler::position`]: it continues
    /// with the draws the saved one would have made.
    pub(crate) fn at_position(law: Law, pos: &XiPosition) -> Self {
        let mut rng = ChaCha8Rng::from_seed(pos.seed);
        rng.set_stream(pos.stream);
        rng.set_word_pos(pos.word_pos);
        XiSampler {
            law,
            rng,
            t: pos.t,
            m: pos.m,
        }
    }

    /// The next ξ_t (t counts the calls, from 1): 1/π_t or 0, or for windows 1 or 0.
    ///
    /// Errors: [`Error::InvalidArgument`](crate::Error::InvalidArgument) if π_t is
    /// outside (0, 1] (never for windows); t has moved on.
    pub fn next_xi(&mut self) -> Result<f64> {
        self.t += 1;
        let (p, kept) = match &self.law {
            Law::Randomized(pi) => {
                let p = pi.at(self.t, self.m)?;
                (p, 1.0 / p)
            }
            Law::Windows(lengths) => (lengths.pi(self.m), 1.0),
        };
        let u: f64 = self.rng.random();
        let xi = if u < p { kept } else { 0.0 };
        self.m = next_m(self.m, xi);
        Ok(xi)
    }
}

/// The position of an [`XiSampler`]: its ChaCha8 seed, stream and word position, the
/// step count t and the length m of the current segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct XiPosition {
    pub(crate) seed: [u8; 32],
    pub(crate) stream: u64,
    pub(crate) word_pos: u128,
    pub(crate) t: usize,
    pub(crate) m: usize,
}

/// ξ_1..ξ_T drawn with `pi` from `seed`: the first `t_len` draws of
/// [`XiSampler::new`]`(pi, seed)`, the ξ that
/// [`Truncation::Randomized`](super::Truncation::Randomized) `{ pi, seed }` uses.
///
/// ```
/// use timetape::bptt::{sample_xi, Pi};
/// let xi = sample_xi(&Pi::Constant(0.5), 8, 1)?;
/// assert!(xi.iter().all(|&x| x == 0.0 || x == 2.0));
/// assert_eq!(xi, sample_xi(&Pi::Constant(0.5), 8, 1)?); // seeded
/// # Ok::<(), timetape::Error>(())
/// ```
///
/// Errors: [`Error::InvalidArgument`](crate::Error::InvalidArgument) if some π_t is
/// outside (0, 1].
pub fn sample_xi(pi: &Pi, t_len: usize, seed: u64) -> Result<Vec<f64>> {
    draw(XiSampler::new(pi.clone(), seed), t_len)
}

/// The first `t_len` draws of `sampler`.
pub(crate) fn draw(mut sampler: XiSampler, t_len: usize) -> Result<Vec<f64>> {
    let mut xi = crate::init::try_collect("sample_xi", t_len, |_| 0.0)?;
    for x in &mut xi {
        *x = sampler.next_xi()?;
    }
    Ok(xi)
}

/// The ξ of a run: one per step, shared by the batch rows, or one per step and row
/// ([`Truncation::PerRow`](super::Truncation::PerRow)).
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum XiTable {
    Shared(Vec<f64>),
    /// (T, B).
    Rows(ndarray::Array2<f64>),
}

impl XiTable {
    /// Whether every row is cut at step t (ξ = 0): a segment boundary.
    pub(crate) fn is_cut(&self, t: usize) -> bool {
        match self {
            XiTable::Shared(xi) => xi[t] == 0.0,
            XiTable::Rows(xi) => xi.row(t).iter().all(|&x| x == 0.0),
        }
    }

    /// The ξ of step t if all rows share it.
    pub(crate) fn shared(&self, t: usize) -> Option<f64> {
        match self {
            XiTable::Shared(xi) => Some(xi[t]),
            XiTable::Rows(xi) => {
                let row = xi.row(t);
                row.iter().all(|&x| x == row[0]).then_some(row[0])
            }
        }
    }

    /// The ξ of step t for each of `batch` rows, appended to `out`.
    pub(crate) fn extend_rows<F: crate::scalar::Scalar>(
        &self,
        t: usize,
        batch: usize,
        out: &mut Vec<F>,
    ) {
        match self {
            XiTable::Shared(xi) => out.extend(std::iter::repeat_n(F::of(xi[t]), batch)),
            XiTable::Rows(xi) => out.extend(xi.row(t).iter().map(|&x| F::of(x))),
        }
    }
}
