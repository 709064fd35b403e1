//! The atlas: every gradient estimator's bias, variance and cost on one model and one
//! sequence, computed exactly where the randomness can be enumerated and by seeded Monte
//! Carlo (with standard errors) where it cannot.
//!
//! Each [`Method`] is an estimator with its randomness left open: `Randomized { π }`
//! without its seed, UORO and KF-RTRL without their signs. [`Mode::Exact`] enumerates
//! every outcome with its probability (2^T ξ patterns, 2^{B·S·T} UORO sign vectors,
//! 2^{B·T} KF-RTRL signs; at most 2^16 of them) and takes probability-weighted sums;
//! [`Mode::MonteCarlo`] runs the method with seeds `seed, seed + 1, …` and reports sample
//! moments and their standard errors. For every method the atlas gives
//!
//! - the expectation `E[ĝ]` and the bias `E[ĝ] − g` against the full gradient g (of
//!   [`Truncation::Full`]), with `‖E[ĝ] − g‖ / ‖g‖`;
//! - the variance of every entry and its sum, the trace of the covariance `tr Cov[ĝ]`;
//! - the expected backward steps and peak tape bytes of a run, and the floats the
//!   estimator carries from step to step besides h_t.
//!
//! Reverse-mode methods are run by [`super::run`] (one run per outcome); online methods
//! are replayed on the steps' Jacobians, recorded once (the same arithmetic as
//! [`online::run`], without recording the tape again for every sign pattern).
//!
//! ```
//! use ndarray::{Array2, Array3};
//! use timetape::bptt::atlas::{self, Method, Mode};
//! use timetape::bptt::Pi;
//! use timetape::rnn::{models, SequenceLoss, Sequence, Sizes};
//! use timetape::Params;
//!
//! let mut params = Params::<f64>::new();
//! let cell = models::m3(&mut params, Sizes::new(2, 2, 2), 0)?;
//! let xs = Array3::from_shape_fn((4, 1, 2), |(t, _, d)| ((t + 2 * d) as f64).sin());
//! let labels = Array2::from_shape_fn((4, 1), |(t, _)| t % 2);
//! let seq = Sequence::new(xs.view(), SequenceLoss::classes(labels.view()));
//! let methods = [Method::Fixed { k: 2 }, Method::Randomized(Pi::Constant(0.5)), Method::Uoro];
//! let a = atlas::survey(&cell, &params, &seq, &atlas::Survey::new(&methods, Mode::Exact))?;
//! assert!(a.entries[0].relative_bias > 1e-3);   // Fixed is biased,
//! assert!(a.entries[1].relative_bias < 1e-12);  // Randomized is not,
//! assert!(a.entries[2].relative_bias < 1e-12);  // nor is UORO (2^8 sign vectors),
//! assert!(a.entries[2].trace_cov > a.entries[1].trace_cov); // which pays in variance.
//! println!("{a}");
//! # Ok::<(), timetape::Error>(())
//! ```

use super::online::{self, Estimator, Kronecker, Layout, Noise, Trace};
use super::{enumerate, run, Pi, Run, Truncation, WindowLengths};
use crate::error::{invalid, Result};
use crate::params::{Grads, Params};
use crate::rnn::{Recurrent, Sequence};
use crate::scalar::Scalar;
use ndarray::{Array1, Array2, ArrayView1, ArrayView2, Axis};
use std::fmt;

/// The most outcomes [`Mode::Exact`] enumerates for one method (2^16).
pub const MAX_OUTCOMES: usize = 1 << 16;

/// A gradient estimator with its randomness left open.
#[derive(Debug, Clone)]
pub enum Method {
    /// Full BPTT (exact).
    Full,
    /// `Truncation::Fixed { k }`.
    Fixed {
        /// Block length.
        k: usize,
    },
    /// `Truncation::Tbptt { k1, k2 }`.
    Tbptt {
        /// Steps between updates.
        k1: usize,
        /// Steps backpropagated.
        k2: usize,
    },
    /// `Truncation::Randomized { pi, seed }`, over its ξ.
    Randomized(Pi),
    /// `Truncation::Windows { lengths, seed }` (AWD-LSTM's windows), over its windows.
    Windows(WindowLengths),
    /// RTRL (exact, forward mode).
    Rtrl,
    /// UORO, over its sign vectors.
    Uoro,
    /// KF-RTRL of a vanilla RNN, over its signs.
    KfRtrl(Kronecker),
}

/// How the moments are computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// By enumerating every outcome with its probability (at most [`MAX_OUTCOMES`]).
    Exact,
    /// By `runs` seeded runs, seeds `seed, seed + 1, …` (a deterministic method runs once).
    MonteCarlo {
        /// Runs per random method (≥ 2).
        runs: usize,
        /// The first seed.
        seed: u64,
    },
}

/// What to survey: the methods and how.
#[derive(Debug, Clone)]
pub struct Survey<'m> {
    /// The methods, one row each.
    pub methods: &'m [Method],
    /// Exact or Monte Carlo.
    pub mode: Mode,
}

impl<'m> Survey<'m> {
    /// A survey of `methods` in `mode`.
    pub fn new(methods: &'m [Method], mode: Mode) -> Self {
        Survey { methods, mode }
    }
}

/// One method's row of the atlas.
#[derive(Debug, Clone)]
pub struct Entry<F> {
    /// The method's name.
    pub method: String,
    /// `E[ĝ]`.
    pub mean: Grads<F>,
    /// `E[ĝ] − g`, g the full gradient.
    pub bias: Grads<F>,
    /// `‖E[ĝ] − g‖ / ‖g‖` (Euclidean norms over every entry).
    pub relative_bias: f64,
    /// `Var[ĝ]`, entry by entry (Monte Carlo: the sample variance, divided by runs − 1).
    pub variance: Grads<F>,
    /// `tr Cov[ĝ]`: the sum of the variances.
    pub trace_cov: f64,
    /// Expected backward steps of a run (online methods: one per step, each on its own
    /// one-step tape).
    pub backward_steps: f64,
    /// Expected peak bytes of a run's tape.
    pub peak_tape_bytes: f64,
    /// Floats carried from step to step besides the state h_t: B·S·P for RTRL,
    /// B·S + P for UORO, B·(S² + D + S + 1) for KF-RTRL, none for reverse mode (whose
    /// memory is the tape).
    pub carried_floats: usize,
    /// Outcomes enumerated, or runs.
    pub draws: usize,
    /// Monte Carlo only: the standard errors of the mean (entry by entry,
    /// `√(variance / runs)`), of the backward steps and of the peak tape bytes.
    pub standard_errors: Option<StandardErrors<F>>,
}

/// Standard errors of a Monte Carlo row.
#[derive(Debug, Clone)]
pub struct StandardErrors<F> {
    /// Of `E[ĝ]`, entry by entry.
    pub mean: Grads<F>,
    /// Of the expected backward steps.
    pub backward_steps: f64,
    /// Of the expected peak tape bytes.
    pub peak_tape_bytes: f64,
}

/// The atlas of a survey: the full gradient and one [`Entry`] per method, in order.
/// Its `Display` is a Markdown table.
#[derive(Debug, Clone)]
pub struct Atlas<F> {
    /// The full gradient g.
    pub full: Grads<F>,
    /// One row per method.
    pub entries: Vec<Entry<F>>,
    /// Exact or Monte Carlo.
    pub mode: Mode,
}

/// Computes the atlas of `survey` on this model and sequence.
///
/// Errors: as [`run`] and [`online::run`]; [`crate::Error::InvalidArgument`] for an
/// exact survey of a method with more than [`MAX_OUTCOMES`] outcomes (or more than
/// [`enumerate::MAX_ENUMERATION_STEPS`] steps for `Randomized`), fewer than 2 Monte
/// Carlo runs, or a full gradient that is zero (no relative bias).
pub fn survey<F: Scalar, C: Recurrent<F>>(
    cell: &C,
    params: &Params<F>,
    seq: &Sequence<'_, F>,
    survey: &Survey<'_>,
) -> Result<Atlas<F>> {
    if let Mode::MonteCarlo { runs, .. } = survey.mode {
        if runs < 2 {
            return Err(invalid("atlas", "Monte Carlo needs at least 2 runs"));
        }
    }
    let ctx = Context::new(cell, params, seq, survey.methods)?;
    let full = ctx.outcome(&Draw::Reverse(Truncation::Full))?.g;
    if full.iter().all(|&x| x == 0.0) {
        return Err(invalid(
            "atlas",
            "the full gradient is zero: there is no relative bias to measure",
        ));
    }
    let mut entries = Vec::with_capacity(survey.methods.len());
    for method in survey.methods {
        let moments = match survey.mode {
            Mode::Exact => ctx.exact(method)?,
            Mode::MonteCarlo { runs, seed } => ctx.monte_carlo(method, runs, seed)?,
        };
        entries.push(ctx.entry(method, moments, &full)?);
    }
    Ok(Atlas {
        full: ctx.grads(full.view())?,
        entries,
        mode: survey.mode,
    })
}

/// The exact expectation `E[ĝ]` of a method on this sequence, for any T: for
/// `Randomized` (any [`Pi`]) and `Windows` by a forward recursion over the age of the current segment
/// (below), for deterministic methods by one run. Where [`Mode::Exact`] enumerates 2^T
/// patterns, this costs O(T²) products of the steps' Jacobians, so it reaches the long
/// sequences on which truncation's bias shows.
///
/// With `a_t` the number of steps of the current segment up to step t and
/// `Z_t = J^θ_t + ξ_t J^h_t Z_{t−1}` the estimator's influence matrix (the forward form of
/// the reverse-mode estimate, [`online`]), it carries `W_t[a] = E[Z_t 1{a_t = a}]` and
/// `q_t[a] = P(a_t = a)`: step t + 1 survives with probability `π = π_{t+1}(m = a)`,
/// moving `π (q J^θ + ξ J^h W[a])` to age a + 1 and adding `π ξ ∂L/∂h_t·J^h W[a]` to
/// the gradient; it is cut with probability 1 − π, moving `(1 − π) q J^θ` to age 1.
///
/// ```
/// use ndarray::{Array2, Array3};
/// use timetape::bptt::atlas::{self, Method};
/// use timetape::bptt::{run, Pi, Run, Truncation};
/// use timetape::rnn::{models, SequenceLoss, Sequence, Sizes};
/// use timetape::Params;
///
/// let mut params = Params::<f64>::new();
/// let cell = models::m3(&mut params, Sizes::new(2, 3, 2), 0)?;
/// let xs = Array3::from_shape_fn((60, 1, 2), |(t, _, d)| ((t + 2 * d) as f64).sin());
/// let labels = Array2::from_shape_fn((60, 1), |(t, _)| t % 2);
/// let seq = Sequence::new(xs.view(), SequenceLoss::classes(labels.view()));
/// // 2^60 patterns, and yet the exact mean: unbiased.
/// let mean = atlas::expectation(&cell, &params, &seq, &Method::Randomized(Pi::Constant(0.7)))?;
/// let full = run(&cell, &params, &seq, &Run::new(Truncation::Full))?;
/// assert!(mean.max_rel_diff(&full.grads) < 1e-12);
/// # Ok::<(), timetape::Error>(())
/// ```
///
/// Errors: as [`run`]; [`crate::Error::InvalidArgument`] for UORO and KF-RTRL (whose
/// exact expectation is computed by enumeration, [`Mode::Exact`]) or a π outside
/// (0, 1].
pub fn expectation<F: Scalar, C: Recurrent<F>>(
    cell: &C,
    params: &Params<F>,
    seq: &Sequence<'_, F>,
    method: &Method,
) -> Result<Grads<F>> {
    let survival: Box<Survival> = match method {
        Method::Randomized(pi) => {
            let pi = pi.clone();
            Box::new(move |t, m| pi.at(t, m).map(|p| (p, 1.0 / p)))
        }
        Method::Windows(w) => {
            let w = w.clone();
            Box::new(move |_, m| Ok((w.pi(m), 1.0)))
        }
        Method::Uoro | Method::KfRtrl(_) => {
            return Err(invalid(
                "atlas::expectation",
                "UORO and KF-RTRL: enumerate their signs with Mode::Exact",
            ))
        }
        _ => {
            let ctx = Context::new(cell, params, seq, &[])?;
            let g = ctx.outcome(&method.draw(0))?.g;
            return ctx.grads(g.view());
        }
    };
    let trace = Trace::new(cell, params, seq)?;
    let mean = age_recursion(&trace, &survival)?;
    let mut grads = Grads::zeros_like(params);
    trace.layout.add_into(mean.view(), &mut grads)?;
    grads.check_finite("atlas::expectation")?;
    Ok(grads)
}

/// π_t and the ξ of a surviving edge, given t (1-based) and the steps m the segment
/// already has before step t.
type Survival = dyn Fn(usize, usize) -> Result<(f64, f64)>;

/// The recursion of [`expectation`] over the trace; `survival(t, m)` gives π_t (for a
/// segment of m steps before step t, 1-based t) and the ξ of a surviving edge.
fn age_recursion<F: Scalar>(trace: &Trace<F>, survival: &Survival) -> Result<Array1<F>> {
    let steps = &trace.steps;
    let mut g = trace.direct.clone();
    let Some(first) = steps.first() else {
        return Ok(g);
    };
    // ages[a − 1] = (q_t[a], W_t[a]).
    let mut ages: Vec<(F, Array2<F>)> = vec![(F::one(), first.jtheta.clone())];
    for (i, lin) in steps.iter().enumerate().skip(1) {
        let mut next: Vec<(F, Array2<F>)> = Vec::with_capacity(ages.len() + 1);
        let mut cut_q = F::zero();
        next.push((F::zero(), Array2::zeros(first.jtheta.raw_dim())));
        for (a, (q, w)) in ages.iter().enumerate() {
            if *q == F::zero() {
                next.push((F::zero(), Array2::zeros(w.raw_dim())));
                continue;
            }
            let (p, xi) = survival(i + 1, a + 1)?;
            let (p, xi) = (F::of(p), F::of(xi));
            g.scaled_add(p * xi, &lin.back.dot(w));
            let mut moved = lin.jh.dot(w);
            moved.mapv_inplace(|v| v * p * xi);
            moved.scaled_add(p * *q, &lin.jtheta);
            next.push((p * *q, moved));
            cut_q = cut_q + (F::one() - p) * *q;
        }
        next[0].0 = cut_q;
        next[0].1.scaled_add(cut_q, &lin.jtheta);
        ages = next;
    }
    Ok(g)
}

impl Method {
    /// The method's name in the table.
    pub fn name(&self) -> String {
        match self {
            Method::Full => "Full".into(),
            Method::Fixed { k } => format!("Fixed {{ k: {k} }}"),
            Method::Tbptt { k1, k2 } => format!("Tbptt {{ k1: {k1}, k2: {k2} }}"),
            Method::Randomized(Pi::Constant(p)) => format!("Randomized {{ π: {p} }}"),
            Method::Randomized(Pi::Schedule(_)) => "Randomized (π schedule)".into(),
            Method::Randomized(Pi::Hazard(_)) => "Randomized (π hazard)".into(),
            Method::Windows(w) => format!("Windows (mean {:.1})", w.mean()),
            Method::Rtrl => "RTRL".into(),
            Method::Uoro => "UORO".into(),
            Method::KfRtrl(_) => "KF-RTRL".into(),
        }
    }

    /// Every outcome with its probability.
    fn outcomes(&self, t_len: usize, b: usize, s: usize) -> Result<Vec<(Draw, f64)>> {
        let signs = |per_step: usize, make: &dyn Fn(Noise) -> Estimator| {
            sign_patterns(per_step * t_len).map(|all| {
                let p = 1.0 / all.len() as f64;
                all.into_iter()
                    .map(|v| (Draw::Online(make(Noise::Signs(v))), p))
                    .collect()
            })
        };
        match self {
            Method::Randomized(pi) => Ok(enumerate::patterns(pi, t_len)?
                .into_iter()
                .map(|(xi, p)| (Draw::Reverse(Truncation::Pattern(xi)), p))
                .collect()),
            Method::Windows(w) => Ok(enumerate::window_patterns(w, t_len)?
                .into_iter()
                .map(|(xi, p)| (Draw::Reverse(Truncation::Pattern(xi)), p))
                .collect()),
            Method::Uoro => signs(b * s, &Estimator::Uoro),
            Method::KfRtrl(k) => signs(b, &|noise| Estimator::KfRtrl { factors: *k, noise }),
            _ => Ok(vec![(self.draw(0), 1.0)]),
        }
    }

    /// The outcome of seed `seed`.
    fn draw(&self, seed: u64) -> Draw {
        match self {
            Method::Full => Draw::Reverse(Truncation::Full),
            Method::Fixed { k } => Draw::Reverse(Truncation::Fixed { k: *k }),
            Method::Tbptt { k1, k2 } => Draw::Reverse(Truncation::Tbptt { k1: *k1, k2: *k2 }),
            Method::Randomized(pi) => Draw::Reverse(Truncation::Randomized {
                pi: pi.clone(),
                seed,
            }),
            Method::Windows(w) => Draw::Reverse(Truncation::Windows {
                lengths: w.clone(),
                seed,
            }),
            Method::Rtrl => Draw::Online(Estimator::Rtrl(Truncation::Full)),
            Method::Uoro => Draw::Online(Estimator::Uoro(Noise::Seeded(seed))),
            Method::KfRtrl(k) => Draw::Online(Estimator::KfRtrl {
                factors: *k,
                noise: Noise::Seeded(seed),
            }),
        }
    }

    fn is_random(&self) -> bool {
        matches!(
            self,
            Method::Randomized(_) | Method::Windows(_) | Method::Uoro | Method::KfRtrl(_)
        )
    }

    fn is_online(&self) -> bool {
        matches!(self, Method::Rtrl | Method::Uoro | Method::KfRtrl(_))
    }
}

/// Every ±1 vector of length n (n ≤ 16).
fn sign_patterns(n: usize) -> Result<Vec<Vec<i8>>> {
    if n >= usize::BITS as usize || 1usize << n > MAX_OUTCOMES {
        return Err(invalid(
            "atlas",
            format!("2^{n} sign patterns exceed {MAX_OUTCOMES}: use Mode::MonteCarlo"),
        ));
    }
    Ok((0u32..1 << n)
        .map(|mask| {
            (0..n)
                .map(|i| if mask >> i & 1 == 1 { 1 } else { -1 })
                .collect()
        })
        .collect())
}

/// One outcome of a method: a reverse-mode run or an online estimator.
#[derive(Debug, Clone)]
enum Draw {
    Reverse(Truncation),
    Online(Estimator),
}

/// What one outcome gave: the estimate (flat, f64) and its cost.
struct Outcome {
    g: Array1<f64>,
    backward_steps: f64,
    peak_tape_bytes: f64,
}

/// Probability-weighted (or sample) moments of a method's outcomes.
struct Moments {
    mean: Array1<f64>,
    variance: Array1<f64>,
    backward_steps: (f64, f64),
    peak_tape_bytes: (f64, f64),
    draws: usize,
    /// Monte Carlo runs (for the standard errors), `None` when exact.
    runs: Option<usize>,
}

/// The model, the sequence and, for online methods, its trace.
struct Context<'c, 's, F: Scalar, C> {
    cell: &'c C,
    params: &'c Params<F>,
    seq: &'c Sequence<'s, F>,
    layout: Layout,
    trace: Option<Trace<F>>,
}

impl<'c, 's, F: Scalar, C: Recurrent<F>> Context<'c, 's, F, C> {
    fn new(
        cell: &'c C,
        params: &'c Params<F>,
        seq: &'c Sequence<'s, F>,
        methods: &[Method],
    ) -> Result<Self> {
        let trace = if methods.iter().any(Method::is_online) {
            Some(Trace::new(cell, params, seq)?)
        } else {
            None
        };
        Ok(Context {
            cell,
            params,
            seq,
            layout: Layout::of(params),
            trace,
        })
    }

    /// Runs one outcome.
    fn outcome(&self, draw: &Draw) -> Result<Outcome> {
        let (grads, backward_steps, peak) = match (draw, &self.trace) {
            (Draw::Reverse(tr), _) => {
                let r = run(self.cell, self.params, self.seq, &Run::new(tr.clone()))?;
                (r.grads, r.backward_steps, r.peak_tape_bytes)
            }
            (Draw::Online(est), Some(trace)) => {
                let r = &trace.report;
                (
                    trace.replay(est, self.params)?,
                    r.backward_steps,
                    r.peak_tape_bytes,
                )
            }
            (Draw::Online(est), None) => {
                let r = online::run(self.cell, self.params, self.seq, est)?;
                (r.grads, r.backward_steps, r.peak_tape_bytes)
            }
        };
        Ok(Outcome {
            g: self.flat(&grads),
            backward_steps: backward_steps as f64,
            peak_tape_bytes: peak as f64,
        })
    }

    fn flat(&self, grads: &Grads<F>) -> Array1<f64> {
        let mut flat = Array1::zeros(self.layout.len);
        self.layout.flatten_into(grads, flat.view_mut());
        flat.mapv(|x: F| x.as_f64())
    }

    fn grads(&self, flat: ArrayView1<'_, f64>) -> Result<Grads<F>> {
        let mut grads = Grads::zeros_like(self.params);
        let f: Array1<F> = flat.mapv(F::of);
        self.layout.add_into(f.view(), &mut grads)?;
        Ok(grads)
    }

    fn dims(&self) -> (usize, usize, usize) {
        let (t_len, b, _) = self.seq.inputs().dim();
        (t_len, b, self.cell.state_width())
    }

    /// Exact moments: every outcome, weighted by its probability, summed pairwise.
    fn exact(&self, method: &Method) -> Result<Moments> {
        let (t_len, b, s) = self.dims();
        let all = method.outcomes(t_len, b, s)?;
        let mut gs = Array2::zeros((all.len(), 0));
        let mut w = Vec::with_capacity(all.len());
        let (mut steps, mut bytes) = (Vec::new(), Vec::new());
        for (i, (draw, p)) in all.iter().enumerate() {
            let o = self.outcome(draw)?;
            if i == 0 {
                crate::init::check_alloc::<f64>("atlas", &[(all.len(), o.g.len())])?;
                gs = Array2::zeros((all.len(), o.g.len()));
            }
            gs.row_mut(i).assign(&o.g);
            w.push(*p);
            steps.push(o.backward_steps);
            bytes.push(o.peak_tape_bytes);
        }
        let mean = weighted_sum(gs.view(), &w, None);
        let variance = weighted_sum(gs.view(), &w, Some(&mean));
        let scalar = |xs: &[f64]| xs.iter().zip(&w).map(|(x, p)| x * p).sum::<f64>();
        Ok(Moments {
            mean,
            variance,
            backward_steps: (scalar(&steps), 0.0),
            peak_tape_bytes: (scalar(&bytes), 0.0),
            draws: all.len(),
            runs: None,
        })
    }

    /// Sample moments of `runs` seeded runs (Welford's update); one run if the method
    /// is deterministic.
    fn monte_carlo(&self, method: &Method, runs: usize, seed: u64) -> Result<Moments> {
        if !method.is_random() {
            let mut m = self.exact(method)?;
            m.runs = Some(1);
            return Ok(m);
        }
        let mut acc: Option<Welford> = None;
        let (mut steps, mut bytes) = (Welford::new(1), Welford::new(1));
        for i in 0..runs {
            let o = self.outcome(&method.draw(seed.wrapping_add(i as u64)))?;
            acc.get_or_insert_with(|| Welford::new(o.g.len()))
                .add(o.g.view());
            steps.add(ndarray::arr1(&[o.backward_steps]).view());
            bytes.add(ndarray::arr1(&[o.peak_tape_bytes]).view());
        }
        let acc = acc.ok_or_else(|| invalid("atlas", "no run"))?;
        let (mean, variance) = acc.moments();
        let se = |w: &Welford| {
            let (m, v) = w.moments();
            (m[0], (v[0] / runs as f64).sqrt())
        };
        Ok(Moments {
            mean,
            variance,
            backward_steps: se(&steps),
            peak_tape_bytes: se(&bytes),
            draws: runs,
            runs: Some(runs),
        })
    }

    fn entry(&self, method: &Method, m: Moments, full: &Array1<f64>) -> Result<Entry<F>> {
        let bias = &m.mean - full;
        let norm = |x: &Array1<f64>| x.dot(x).sqrt();
        let standard_errors = match m.runs {
            Some(runs) => Some(StandardErrors {
                mean: self.grads(m.variance.mapv(|v| (v / runs as f64).sqrt()).view())?,
                backward_steps: m.backward_steps.1,
                peak_tape_bytes: m.peak_tape_bytes.1,
            }),
            None => None,
        };
        let carried_floats = match (method.draw(0), &self.trace) {
            (Draw::Online(est), Some(trace)) => trace.carried_floats(&est),
            _ => 0,
        };
        Ok(Entry {
            method: method.name(),
            mean: self.grads(m.mean.view())?,
            relative_bias: norm(&bias) / norm(full),
            bias: self.grads(bias.view())?,
            trace_cov: m.variance.sum(),
            variance: self.grads(m.variance.view())?,
            backward_steps: m.backward_steps.0,
            peak_tape_bytes: m.peak_tape_bytes.0,
            carried_floats,
            draws: m.draws,
            standard_errors,
        })
    }
}

/// `Σ_i w_i g_i` (no `center`) or `Σ_i w_i (g_i − center)²` over the rows of `gs`,
/// summed pairwise (rounding grows with log₂ of the number of rows, not with it).
fn weighted_sum(gs: ArrayView2<'_, f64>, w: &[f64], center: Option<&Array1<f64>>) -> Array1<f64> {
    match gs.nrows() {
        0 => Array1::zeros(gs.ncols()),
        1 => {
            let g = gs.row(0);
            match center {
                None => g.mapv(|x| x * w[0]),
                Some(c) => (&g - c).mapv(|x| w[0] * x * x),
            }
        }
        n => {
            let (top, bottom) = gs.split_at(Axis(0), n / 2);
            let (wt, wb) = w.split_at(n / 2);
            weighted_sum(top, wt, center) + weighted_sum(bottom, wb, center)
        }
    }
}

/// Running mean and sum of squared deviations (Welford).
struct Welford {
    n: usize,
    mean: Array1<f64>,
    m2: Array1<f64>,
}

impl Welford {
    fn new(len: usize) -> Self {
        Welford {
            n: 0,
            mean: Array1::zeros(len),
            m2: Array1::zeros(len),
        }
    }

    fn add(&mut self, x: ArrayView1<'_, f64>) {
        self.n += 1;
        let k = self.n as f64;
        for ((m, s), &x) in self.mean.iter_mut().zip(self.m2.iter_mut()).zip(x.iter()) {
            let d = x - *m;
            *m += d / k;
            *s += d * (x - *m);
        }
    }

    /// The mean and the sample variance (÷ (n − 1)).
    fn moments(&self) -> (Array1<f64>, Array1<f64>) {
        let d = (self.n.max(2) - 1) as f64;
        (self.mean.clone(), self.m2.mapv(|s| s / d))
    }
}

impl<F: Scalar> fmt::Display for Atlas<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let draws = match self.mode {
            Mode::MonteCarlo { .. } => "runs",
            Mode::Exact => "outcomes",
        };
        writeln!(
            f,
            "| method | ‖bias‖/‖g‖ | √tr Cov/‖g‖ | tr Cov | backward steps | peak tape (bytes) | carried floats | {draws} |",
        )?;
        writeln!(f, "|---|---|---|---|---|---|---|---|")?;
        let norm = self.full.global_norm().as_f64();
        for e in &self.entries {
            writeln!(
                f,
                "| {} | {:.3e} | {:.3} | {:.3e} | {:.1} | {:.0} | {} | {} |",
                e.method,
                e.relative_bias,
                e.trace_cov.sqrt() / norm,
                e.trace_cov,
                e.backward_steps,
                e.peak_tape_bytes,
                e.carried_floats,
                e.draws
            )?;
        }
        Ok(())
    }
}
