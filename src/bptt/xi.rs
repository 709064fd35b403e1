//! Sampling the ξ_t of randomized truncation.

use crate::error::{invalid, Result};
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use std::fmt;
use std::sync::Arc;

/// The survival probability π_t of the edge into step t.
///
/// The estimate stays unbiased whatever π_t is, as long as it is chosen before ξ_t is
/// drawn (Tallec & Ollivier 2017): a constant, a function of t, or a function of the
/// number of steps since the last cut (a hazard).
#[derive(Clone)]
pub enum Pi {
    /// The same π at every step. Segment lengths are then geometric with mean 1/(1 − π).
    Constant(f64),
    /// π_t as a function of the step t (1-based).
    Schedule(Arc<dyn Fn(usize) -> f64 + Send + Sync>),
    /// π_t as a function of m, the number of steps in the current segment before step
    /// t (0 right after a cut, or at t = 1).
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
    pub fn schedule(f: impl Fn(usize) -> f64 + Send + Sync + 'static) -> Self {
        Pi::Schedule(Arc::new(f))
    }

    /// A hazard π_t = f(m), m the steps since the last cut.
    pub fn hazard(f: impl Fn(usize) -> f64 + Send + Sync + 'static) -> Self {
        Pi::Hazard(Arc::new(f))
    }

    /// π_t for step `t` (1-based) with `m` steps in the current segment.
    ///
    /// Errors: [`crate::Error::InvalidArgument`] if the value is outside (0, 1].
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
    if p > 0.0 && p <= 1.0 {
        Ok(())
    } else {
        Err(invalid("Randomized", format!("pi = {p} is outside (0, 1]")))
    }
}

/// Draws ξ_1, ξ_2, … one at a time: ξ_t = 1/π_t with probability π_t, else 0.
#[derive(Debug, Clone)]
pub struct XiSampler {
    pi: Pi,
    rng: ChaCha8Rng,
    t: usize,
    m: usize,
}

impl XiSampler {
    /// A sampler seeded with `seed` (ChaCha8: the same seed gives the same ξ everywhere).
    pub fn new(pi: Pi, seed: u64) -> Self {
        XiSampler {
            pi,
            rng: crate::init::rng(seed),
            t: 0,
            m: 0,
        }
    }

    /// The next ξ_t.
    pub fn next_xi(&mut self) -> Result<f64> {
        self.t += 1;
        let p = self.pi.at(self.t, self.m)?;
        let u: f64 = self.rng.random();
        let xi = if u < p { 1.0 / p } else { 0.0 };
        self.m = next_m(self.m, xi);
        Ok(xi)
    }
}

/// ξ_1..ξ_T drawn with `pi` from `seed`.
///
/// ```
/// use timetape::bptt::{sample_xi, Pi};
/// let xi = sample_xi(&Pi::Constant(0.5), 8, 1)?;
/// assert!(xi.iter().all(|&x| x == 0.0 || x == 2.0));
/// assert_eq!(xi, sample_xi(&Pi::Constant(0.5), 8, 1)?); // seeded
/// # Ok::<(), timetape::Error>(())
/// ```
pub fn sample_xi(pi: &Pi, t_len: usize, seed: u64) -> Result<Vec<f64>> {
    let mut s = XiSampler::new(pi.clone(), seed);
    (0..t_len).map(|_| s.next_xi()).collect()
}
