//! Adaptive truncation (after Aicher, Foti & Fox 2019, "Adaptively truncating
//! backpropagation through time to control gradient bias"): TBPTT whose window K is
//! chosen at every update from the measured decay of ‖∂L/∂h‖ over the window it has
//! just backpropagated.
//!
//! Every k1 steps an update injects the losses of those steps and backpropagates them K
//! steps (as [`Truncation::Tbptt`](super::Truncation::Tbptt) `{ k1, k2: K }`), and
//! measures, over that window:
//!
//! - `n_k = ‖∂L_u/∂h_{u−k}‖`, the adjoint of the update's losses at lag k (lag 0 is the
//!   update's last step, lag K the state the window starts from). Beyond the injected
//!   losses (lags k ≥ k1) the adjoint is only propagated, and the update fits its
//!   geometric decay, `ln n_k ≈ c + k ln β` by least squares over `k = k1 ..= K`.
//! - `c_k`, the gradient the update's losses send through the parameters' use at lag k
//!   (step u − k), each from a one-step vector–Jacobian product seeded with the
//!   adjoint the window gave that step: the window's gradient is `g_K = g_head +
//!   Σ_{k<K} c_k`, so truncating at any K′ ≤ K changes it by exactly `Σ_{K′≤k<K} c_k`.
//!
//! Only the lags beyond the window are unknown. Assuming the contributions there stay
//! within the largest ratio `G = max_k ‖c_k‖/n_k` seen in the window and the adjoint goes
//! on decaying at β, they add at most `R(K′) = G n_K β^{max(K′−K, 0)}/(1 − β)` from lag
//! max(K′, K) on, and the relative bias of truncating at K′ is bounded by
//!
//! ```text
//! B(K′) = (‖Σ_{K′≤k<K} c_k‖ + R(K′)) / (‖g_K‖ − R(0)),
//! ```
//!
//! (∞ when the denominator is not positive or β ≥ 1): within the window the bias is
//! measured, not modelled. The next window is the least K′ in `k1 + 1 ..= k_max` with
//! `B(K′) ≤ δ`, or `k_max` (one lag beyond k1 is kept so that the decay can always be
//! measured). The measurement costs one one-step backward pass per step of the window:
//! an update costs about twice a TBPTT window. `tests/bptt_adaptive.rs` counts how often
//! B holds against the exactly computed bias.

use super::segment::{Edge, Engine, Problem, Segment};
use crate::error::{invalid, Result};
use crate::params::Grads;
use crate::rnn::Recurrent;
use crate::scalar::Scalar;
use ndarray::Array2;
use std::collections::VecDeque;

/// The longest window [`Adaptive`] accepts (2^24 steps; each update keeps that many
/// states).
pub const MAX_ADAPTIVE_WINDOW: usize = 1 << 24;

/// The parameters of [`Truncation::Adaptive`](super::Truncation::Adaptive).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Adaptive {
    /// Steps between updates (≥ 1).
    pub k1: usize,
    /// The tolerated relative bias δ > 0.
    pub delta: f64,
    /// The longest window (≥ k1 + 1).
    pub k_max: usize,
    /// The first update's window (`k_max` if `None`), k1 + 1 ..= k_max.
    pub k_first: Option<usize>,
}

impl Adaptive {
    /// Updates every `k1` steps, windows up to `k_max`, tolerance `delta`; the first
    /// window is `k_max`.
    pub fn new(k1: usize, delta: f64, k_max: usize) -> Self {
        Adaptive {
            k1,
            delta,
            k_max,
            k_first: None,
        }
    }

    /// Checks the parameters.
    ///
    /// Errors: [`crate::Error::InvalidArgument`] for k1 = 0, k_max ≤ k1, a δ that is not
    /// positive and finite, or a first window outside `k1 + 1 ..= k_max`.
    pub fn validate(&self) -> Result<()> {
        let op = "Truncation::Adaptive";
        if self.k1 == 0 {
            return Err(invalid(op, "k1 must be ≥ 1"));
        }
        if self.k_max <= self.k1 {
            return Err(invalid(
                op,
                format!("k_max = {} must exceed k1 = {}", self.k_max, self.k1),
            ));
        }
        if self.k_max > MAX_ADAPTIVE_WINDOW {
            return Err(invalid(
                op,
                format!("k_max = {} exceeds {MAX_ADAPTIVE_WINDOW}", self.k_max),
            ));
        }
        if !(self.delta > 0.0 && self.delta.is_finite()) {
            return Err(invalid(
                op,
                format!("δ = {} must be positive and finite", self.delta),
            ));
        }
        match self.k_first {
            Some(k) if k <= self.k1 || k > self.k_max => Err(invalid(
                op,
                format!("the first window {k} is outside k1 + 1 ..= k_max"),
            )),
            _ => Ok(()),
        }
    }

    /// The first window.
    fn first(&self) -> usize {
        self.k_first.unwrap_or(self.k_max)
    }
}

/// What one update of [`Truncation::Adaptive`](super::Truncation::Adaptive) measured
/// and chose (module docs).
#[derive(Debug, Clone, PartialEq)]
pub struct AdaptiveUpdate {
    /// The update's last step (1-based: the update after step `step`).
    pub step: usize,
    /// The window it backpropagated (K).
    pub window: usize,
    /// The losses it injected (k1, or fewer at the end).
    pub losses: usize,
    /// `n_k = ‖∂L/∂h_{u−k}‖` for lags k = 0 ..= K (the update's own losses).
    pub norms: Vec<f64>,
    /// `‖Σ_{K′≤k<K} c_k‖` for K′ = 0 ..= K: how much truncating the window at K′
    /// changes its gradient.
    pub within: Vec<f64>,
    /// `‖g_K‖`, the norm of the window's gradient.
    pub gradient_norm: f64,
    /// `G = max_k ‖c_k‖/n_k` over the window.
    pub gain: f64,
    /// The fitted decay β per step (0 if the adjoint vanished exactly).
    pub decay: f64,
    /// The window chosen for the next update.
    pub next_window: usize,
    /// The bound B at that window.
    pub bound: f64,
}

impl AdaptiveUpdate {
    /// B(K′): the bound on the relative bias of truncating this update's losses at `k`
    /// lags (module docs).
    pub fn bound_at(&self, k: usize) -> f64 {
        let beta = self.decay;
        let big_k = self.window;
        let (Some(&n_end), true) = (self.norms.last(), beta < 1.0) else {
            return f64::INFINITY;
        };
        let beyond = |from: usize| {
            self.gain * n_end * beta.powi(from.saturating_sub(big_k).min(i32::MAX as usize) as i32)
                / (1.0 - beta)
        };
        let denominator = self.gradient_norm - beyond(0);
        let numerator = self.within.get(k).copied().unwrap_or(0.0) + beyond(k);
        if denominator > 0.0 && numerator.is_finite() {
            numerator / denominator
        } else {
            f64::INFINITY
        }
    }

    /// Chooses the next window: the least K′ in `k1 + 1 ..= k_max` with B(K′) ≤ δ.
    fn choose(&mut self, how: &Adaptive) {
        let pick = (how.k1 + 1..=how.k_max).find(|&k| self.bound_at(k) <= how.delta);
        self.next_window = pick.unwrap_or(how.k_max);
        self.bound = self.bound_at(self.next_window);
    }
}

/// β from the least-squares slope of `ln n` against the lag, over the lags before the
/// first zero (a zero adjoint stays zero: then β = 0 if fewer than two points remain).
fn fit_decay(n: &[f64]) -> f64 {
    let points: Vec<(f64, f64)> = n
        .iter()
        .take_while(|&&x| x > 0.0)
        .enumerate()
        .map(|(k, &x)| (k as f64, x.ln()))
        .collect();
    if points.len() < 2 {
        return if points.len() < n.len() {
            0.0
        } else {
            f64::INFINITY
        };
    }
    let m = points.len() as f64;
    let (sx, sy) = points
        .iter()
        .fold((0.0, 0.0), |(a, b), &(x, y)| (a + x, b + y));
    let (mx, my) = (sx / m, sy / m);
    let (sxy, sxx) = points.iter().fold((0.0, 0.0), |(a, b), &(x, y)| {
        (a + (x - mx) * (y - my), b + (x - mx) * (x - mx))
    });
    (sxy / sxx).exp()
}

/// Runs adaptive truncation on `engine`; gives h_T and the updates.
pub(crate) fn run_adaptive<F: Scalar, C: Recurrent<F>>(
    engine: &mut Engine<'_, F, C>,
    problem: &Problem<'_, F>,
    how: &Adaptive,
) -> Result<(Array2<F>, Vec<AdaptiveUpdate>)> {
    how.validate()?;
    let t_len = problem.len();
    // The last k_max + 1 states (state i: after i steps), to start any window from.
    let mut states: VecDeque<(usize, Array2<F>)> = VecDeque::from([(0, problem.h0.clone())]);
    let mut edges: Vec<Edge<F>> = Vec::new();
    let mut updates = Vec::new();
    let (mut window, mut u_prev) = (how.first(), 0);
    engine.retain_states = true;
    while u_prev < t_len {
        let u = u_prev + how.k1.min(t_len - u_prev);
        let a = u.saturating_sub(window);
        let h_a = states
            .iter()
            .find(|(i, _)| *i == a)
            .map(|(_, h)| h.clone())
            .ok_or_else(|| invalid("Truncation::Adaptive", format!("state {a} not kept")))?;
        let before = engine.grads.clone();
        super::backprop_window(engine, problem, (a, u_prev, u), h_a.view(), &mut edges)?;
        let gradient_norm = diff_norm(&engine.grads, &before);
        let window_of = read_window(engine, h_a)?;
        let newest = states.back().map_or(0, |(i, _)| *i);
        for (i, h) in window_of.inputs.iter().enumerate().skip(1) {
            if a + i > newest {
                states.push_back((a + i, h.clone()));
            }
        }
        if u > newest {
            states.push_back((u, engine.state(u - a - 1)?.to_owned()));
        }
        while states.len() > how.k_max.saturating_add(1) {
            states.pop_front();
        }
        let mut update = window_of
            .measure(engine, problem, a)
            .map_err(|e| e.at_step_offset(a))?;
        update.step = u;
        update.losses = u - u_prev;
        update.gradient_norm = gradient_norm;
        update.decay = fit_decay(&update.norms[update.losses.min(update.norms.len())..]);
        update.choose(how);
        window = update.next_window;
        updates.push(update);
        u_prev = u;
    }
    engine.retain_states = false;
    let h_final = states
        .back()
        .map(|(_, h)| h.clone())
        .unwrap_or_else(|| problem.h0.clone());
    Ok((h_final, updates))
}

/// ‖a − b‖ over every entry.
fn diff_norm<F: Scalar>(a: &Grads<F>, b: &Grads<F>) -> f64 {
    a.iter()
        .map(|(id, g)| match b.get(id) {
            Ok(h) => g
                .iter()
                .zip(h.iter())
                .map(|(&x, &y)| (x - y).as_f64().powi(2))
                .sum::<f64>(),
            Err(_) => g.iter().map(|&x| x.as_f64().powi(2)).sum::<f64>(),
        })
        .sum::<f64>()
        .sqrt()
}

/// A window just backpropagated: each step's input state and the adjoint of its
/// output state, first step first.
struct Window<F> {
    inputs: Vec<Array2<F>>,
    adjoints: Vec<Array2<F>>,
    /// ‖∂L/∂h‖ at lags 0 ..= K.
    norms: Vec<f64>,
}

/// Reads the window on the engine's tape after its backward pass.
fn read_window<F: Scalar, C: Recurrent<F>>(
    engine: &Engine<'_, F, C>,
    h_a: Array2<F>,
) -> Result<Window<F>> {
    let states = &engine.recording.states;
    let mut inputs = Vec::with_capacity(states.len());
    let mut adjoints = Vec::with_capacity(states.len());
    inputs.push(h_a);
    for (i, &s) in states.iter().enumerate() {
        if i + 1 < states.len() {
            inputs.push(engine.tape.value(s)?.to_owned());
        }
        adjoints.push(match engine.tape.adjoint(s)? {
            Some(a) => a.to_owned(),
            None => Array2::zeros(engine.tape.shape(s)?),
        });
    }
    let h_in = engine
        .h_in
        .ok_or_else(|| invalid("Truncation::Adaptive", "no segment"))?;
    let start = engine.tape.adjoint(h_in)?.map_or(0.0, |a| norm(a.iter()));
    let mut norms: Vec<f64> = adjoints.iter().rev().map(|a| norm(a.iter())).collect();
    norms.push(start);
    Ok(Window {
        inputs,
        adjoints,
        norms,
    })
}

fn norm<'a, F: Scalar>(x: impl Iterator<Item = &'a F>) -> f64 {
    x.map(|v| v.as_f64() * v.as_f64()).sum::<f64>().sqrt()
}

impl<F: Scalar> Window<F> {
    /// The contributions `c_k` of the window's steps (one-step vector–Jacobian products
    /// from each step's input with the adjoint of its output), summed from the far end:
    /// `within[K′] = ‖Σ_{K′≤k<K} c_k‖`, and the gain `max_k ‖c_k‖/n_k`.
    fn measure<C: Recurrent<F>>(
        self,
        engine: &mut Engine<'_, F, C>,
        problem: &Problem<'_, F>,
        a: usize,
    ) -> Result<AdaptiveUpdate> {
        let big_k = self.inputs.len();
        let mut within = vec![0.0; big_k + 1];
        let mut running = Grads::zeros_like(engine.params);
        let mut c = Grads::zeros_like(engine.params);
        let mut gain = 0.0f64;
        for (i, (h, adj)) in self.inputs.iter().zip(&self.adjoints).enumerate() {
            let t = a + i;
            let mut seg = Segment::plain(
                problem.steps(t, t + 1),
                problem.token_steps(t, t + 1),
                &[Edge::Keep],
            );
            seg.resets = problem.resets_of(t, t + 1);
            engine.record(h.view(), &seg)?;
            let out = engine.recording.states[0];
            c.zero();
            engine
                .tape
                .backward_with_into(&[(out, adj.view())], &mut c)?;
            running.add_assign(&c)?;
            let lag = big_k - 1 - i;
            within[lag] = running.global_norm().as_f64();
            if self.norms[lag] > 0.0 {
                let ratio = c.global_norm().as_f64() / self.norms[lag];
                if !ratio.is_finite() {
                    return Err(crate::error::Error::NonFinite {
                        op: "Truncation::Adaptive",
                        what: format!("the gain ‖c_k‖/n_k at lag {lag}"),
                    });
                }
                gain = gain.max(ratio);
            }
        }
        Ok(AdaptiveUpdate {
            step: 0,
            window: big_k,
            losses: 0,
            norms: self.norms,
            within,
            gradient_norm: 0.0,
            gain,
            decay: 0.0,
            next_window: big_k,
            bound: f64::INFINITY,
        })
    }
}
