//! Influence balancing (Tallec & Ollivier; FORMULAS.md "Validation cases", LITERATURE.md
//! §6.4): a linear state s ∈ ℝⁿ, one scalar parameter θ,
//!
//! ```text
//! s_t = A s_{t−1} + θ σ,   A = ½ I + ½ J (J: ones on the superdiagonal),
//! σ = (+1 ×p, −1 ×(n−p)),  loss ½ (s_t⁽¹⁾ − 1)² per step (or at the last step only).
//! ```
//!
//! θ pushes unit 1 up at short lags and down at long lags, so short truncations get the
//! sign of ∂L/∂θ wrong. The cell (`tests/common/balance.rs`) is written as a user would,
//! through the public `Recurrent` trait, batch-major: `s_t = s_{t−1} Aᵀ + θσ`, output
//! `o_t = s_t e₁`.
//!
//! Expected values are exact binary fractions for n = 5 (compared to 1e-12 absolute:
//! every number in the computation is a dyadic rational with ≤ 60 significant bits, and
//! the magnitudes stay below 100, so the only error is the rounding of a few sums of
//! such numbers, ≲ 1e-13) and, for n = 23, recomputed here by the direct recursion
//! S_K = Σ_{m<K} (A^m σ)₁ on plain `Vec<f64>` (an independent construction, compared to
//! 1e-10 relative: two f64 evaluations of the same sums in different orders over ≤ 300
//! steps).

mod common;

use common::balance::Balance;
use common::max_abs_diff;
use ndarray::{Array2, Array3};
use timetape::bptt::Run;
use timetape::bptt::{self, enumerate, Pi, Report, Truncation};
use timetape::rnn::{Sequence, SequenceLoss};
use timetape::Params;

/// A problem instance: the cell at θ, T steps from s_0 = s*(θ), targets 1: per-step
/// squared errors with weights ½, or one squared error at the last step
/// (`SequenceLoss::last_values`). The crate's squared error has no ½ of its own: the
/// last-step loss is `(s_T⁽¹⁾ − 1)²`, twice the notes' `½ (s_T⁽¹⁾ − 1)²`, so its
/// gradients are halved (`notes_factor`) before they are compared with the notes.
struct Instance {
    params: Params<f64>,
    cell: Balance,
    xs: Array3<f64>,
    ys: Array3<f64>,
    last_y: Array2<f64>,
    weights: Vec<f64>,
    last_only: bool,
    notes_factor: f64,
    s0: Array2<f64>,
}

impl Instance {
    fn new(n: usize, p: usize, theta: f64, t: usize, last_only: bool) -> Instance {
        let mut params = Params::new();
        let cell = Balance::new(&mut params, n, p, theta);
        let s0 = cell.fixed_point(theta);
        Instance {
            params,
            cell,
            xs: Array3::ones((t, 1, 1)),
            ys: Array3::ones((t, 1, 1)),
            last_y: Array2::ones((1, 1)),
            weights: vec![0.5; t],
            last_only,
            notes_factor: if last_only { 0.5 } else { 1.0 },
            s0,
        }
    }

    fn loss(&self) -> SequenceLoss<'_, f64> {
        if self.last_only {
            SequenceLoss::last_values(self.last_y.view()).into()
        } else {
            SequenceLoss::values(self.ys.view())
                .weighted(&self.weights)
                .into()
        }
    }

    fn report(&self, tr: &Truncation) -> Report<f64> {
        bptt::run(
            &self.cell,
            &self.params,
            &Sequence::new(self.xs.view(), self.loss()).with_h0(self.s0.view()),
            &Run::new(tr.clone()),
        )
        .unwrap()
    }

    /// ∂L/∂θ under the truncation; checks on the way that the state never leaves s*.
    fn grad(&self, tr: &Truncation) -> f64 {
        let r = self.report(tr);
        let drift = max_abs_diff(r.h_final.iter().copied(), self.s0.iter().copied());
        assert!(drift <= 1e-12, "s_T left the fixed point by {drift:e}");
        self.notes_factor * r.grads.get(self.cell.theta).unwrap()[[0, 0]]
    }

    fn expected_randomized(&self, pi: &Pi) -> f64 {
        let m = enumerate::randomized_moments(
            &self.cell,
            &self.params,
            &Sequence::new(self.xs.view(), self.loss()).with_h0(self.s0.view()),
            pi,
        )
        .unwrap();
        self.notes_factor * m.mean.get(self.cell.theta).unwrap()[[0, 0]]
    }
}

/// S_1 … S_kmax by the direct recursion: S_K = Σ_{m<K} (A^m σ)₁. Index 0 is S_0 = 0.
fn sensitivities(n: usize, p: usize, kmax: usize) -> Vec<f64> {
    let mut v: Vec<f64> = (0..n).map(|i| if i < p { 1.0 } else { -1.0 }).collect();
    let mut out = vec![0.0];
    let mut s = 0.0;
    for _ in 0..kmax {
        s += v[0];
        out.push(s);
        v = (0..n)
            .map(|i| 0.5 * v[i] + if i + 1 < n { 0.5 * v[i + 1] } else { 0.0 })
            .collect();
    }
    out
}

/// ∂L/∂θ at the fixed point for the losses of `steps` (1-based), where step t's loss is
/// backpropagated over `depth(t)` steps: (s*⁽¹⁾ − 1) Σ_t S_{depth(t)}.
fn reference(n: usize, p: usize, theta: f64, steps: impl Iterator<Item = (usize, usize)>) -> f64 {
    let s = sensitivities(n, p, 400);
    let err = 2.0 * theta * (2.0 * p as f64 - n as f64) - 1.0;
    err * steps.map(|(_, d)| s[d]).sum::<f64>()
}

/// Depth of step t's backpropagation under `Fixed { k }`: steps since its block start.
fn fixed_depth(t: usize, k: usize) -> usize {
    (t - 1) % k + 1
}

const EXACT: f64 = 1e-12;

#[test]
fn small_instance_exact_fractions_loss_at_every_step() {
    let inst = Instance::new(5, 1, 0.0, 10, false);
    let full = inst.grad(&Truncation::Full);
    assert!((full - 16.49609375).abs() <= EXACT, "Full {full}");
    for (k, want) in [
        (1, -10.0),
        (2, -10.0),
        (3, -8.5),
        (4, -6.5),
        (5, -2.25),
        (8, 5.4453125),
    ] {
        let g = inst.grad(&Truncation::Fixed { k });
        assert!((g - want).abs() <= EXACT, "Fixed{{{k}}}: {g}, notes {want}");
        // TBPTT(k, k) is the same truncation.
        let g2 = inst.grad(&Truncation::Tbptt { k1: k, k2: k });
        assert!((g2 - want).abs() <= EXACT, "Tbptt{{{k},{k}}}: {g2}");
    }
    // The loss itself: ½ (0 − 1)² per step.
    let r = inst.report(&Truncation::Full);
    assert!((r.loss - 5.0).abs() <= EXACT, "loss {}", r.loss);
}

#[test]
fn small_instance_exact_fractions_loss_at_last_step() {
    let inst = Instance::new(5, 1, 0.0, 10, true);
    let full = inst.grad(&Truncation::Full);
    assert!((full - 4.7734375).abs() <= EXACT, "Full {full}");
    for k in 1..=4 {
        let g = inst.grad(&Truncation::Fixed { k });
        assert!((g + 1.0).abs() <= EXACT, "Fixed{{{k}}}: {g}, notes −1");
    }
    for pi in [0.3, 0.6, 0.9] {
        let e = inst.expected_randomized(&Pi::Constant(pi));
        assert!((e - 4.7734375).abs() <= 1e-10, "E[Randomized π={pi}] = {e}");
    }
}

/// E[Randomized] over all 2^10 patterns equals `Full` = +16.49609375, for every π
/// (1e-10: a probability-weighted sum of 1024 estimates with weights up to
/// 0.3^{−9} ≈ 5·10⁴ that cancel; observed error ~1e-13).
#[test]
fn small_instance_randomized_expectation_is_full() {
    let inst = Instance::new(5, 1, 0.0, 10, false);
    for pi in [0.3, 0.6, 0.9] {
        let e = inst.expected_randomized(&Pi::Constant(pi));
        assert!(
            (e - 16.49609375).abs() <= 1e-10,
            "E[Randomized π={pi}] = {e}"
        );
    }
}

/// The same instance at θ ≠ 0 from s_0 = s*(θ) ≠ 0 (the state stays there): the tape
/// against the recursion (s*⁽¹⁾ − 1) Σ_t S_{depth(t)}.
#[test]
fn small_instance_away_from_zero_matches_the_recursion() {
    for theta in [0.5, -0.75] {
        let inst = Instance::new(5, 1, theta, 10, false);
        let full = inst.grad(&Truncation::Full);
        let want = reference(5, 1, theta, (1..=10).map(|t| (t, t)));
        assert!(
            (full - want).abs() <= EXACT * want.abs().max(1.0),
            "θ={theta}: {full} vs {want}"
        );
        for k in [1, 3, 4, 7] {
            let g = inst.grad(&Truncation::Fixed { k });
            let want = reference(5, 1, theta, (1..=10).map(|t| (t, fixed_depth(t, k))));
            assert!(
                (g - want).abs() <= EXACT * want.abs().max(1.0),
                "θ={theta} k={k}: {g} vs {want}"
            );
        }
    }
}

/// The paper's instance n = 23, p = 10 (optimum θ* = −1/6), at θ = 0 and at θ = 0.5,
/// each from its fixed point s*(θ), T = 300, a loss at every step: `Full` has the right
/// sign (positive: gradient descent moves θ down toward −1/6), `Fixed { k }` for
/// k = 1..10 the wrong one, and every value matches the recursion.
#[test]
fn paper_instance_short_truncation_has_the_wrong_sign() {
    let t = 300;
    for theta in [0.0, 0.5] {
        let inst = Instance::new(23, 10, theta, t, false);
        let full = inst.grad(&Truncation::Full);
        let want = reference(23, 10, theta, (1..=t).map(|s| (s, s)));
        assert!(
            (full - want).abs() <= 1e-10 * want.abs(),
            "θ={theta}: Full {full} vs {want}"
        );
        assert!(full > 0.0, "θ={theta}: Full {full} has the wrong sign");
        for k in 1..=10 {
            let g = inst.grad(&Truncation::Fixed { k });
            let want = reference(23, 10, theta, (1..=t).map(|s| (s, fixed_depth(s, k))));
            assert!(
                (g - want).abs() <= 1e-10 * want.abs(),
                "θ={theta} k={k}: {g} vs {want}"
            );
            assert!(
                g < 0.0,
                "θ={theta} Fixed{{{k}}}: {g} should have the wrong sign"
            );
        }
    }
    // At θ = 0, Full over 300 steps is −(s*⁽¹⁾ − 1)·Σ_{t ≤ 300} S_t = +1142.0 (to 1e-9).
    let full = Instance::new(23, 10, 0.0, t, false).grad(&Truncation::Full);
    assert!((full - 1142.0).abs() <= 1e-9, "{full}");
}

/// The truncated sensitivity S_K (loss at the last step only, backpropagated K steps)
/// measured on the tape: at θ = 0, s = 0 and ∂L/∂θ = (0 − 1)·S_K, so S_K = −∂L/∂θ of
/// `Full` over T = K steps, and also of TBPTT(1, K) over T = K + 10 steps (the last
/// step's window is K steps long). Values of LITERATURE.md §6.4 / FORMULAS.md: S_K = K
/// for K ≤ 10 (exact), S_15 = 14.68, max at K = 19 with S_19 = 16.48 (tied with K = 20,
/// which the notes do not say), S_30 = 9.87,
/// S_40 = 0.566, first negative at K = 41, S_50 = −4.75, S_60 = −5.90, within 1% of −6
/// from K = 62 on, S_100 = −6.000 (the notes' decimals; compared to half a unit of their
/// last digit).
#[test]
fn paper_instance_truncated_sensitivities() {
    let kmax = 110;
    let mut s = vec![0.0];
    for k in 1..=kmax {
        let inst = Instance::new(23, 10, 0.0, k, true);
        s.push(-inst.grad(&Truncation::Full));
    }
    let rec = sensitivities(23, 10, kmax);
    for k in 1..=kmax {
        assert!(
            (s[k] - rec[k]).abs() <= 1e-12 * rec[k].abs().max(1.0),
            "S_{k}: {} vs {}",
            s[k],
            rec[k]
        );
    }
    for (k, &sk) in s.iter().enumerate().take(11).skip(1) {
        assert!((sk - k as f64).abs() <= EXACT, "S_{k} = {sk}");
    }
    for (k, want, half_ulp) in [
        (15, 14.68, 0.005),
        (19, 16.48, 0.005),
        (30, 9.87, 0.005),
        (40, 0.566, 0.0005),
        (50, -4.75, 0.005),
        (60, -5.90, 0.005),
        (100, -6.000, 0.0005),
    ] {
        assert!(
            (s[k] - want).abs() <= half_ulp,
            "S_{k} = {}, notes {want}",
            s[k]
        );
    }
    // The maximum is at K = 19 and, exactly tied, K = 20: (A^19 σ)₁ =
    // 2^{−19} (Σ_{j<10} C(19, j) − Σ_{j≥10} C(19, j)) = 0 by the symmetry of C(19, ·).
    let max = (1..=kmax).map(|k| s[k]).fold(f64::MIN, common::nan_max);
    assert!(max.is_finite(), "a non-finite S_K");
    let argmax: Vec<usize> = (1..=kmax).filter(|&k| s[k] == max).collect();
    assert_eq!(argmax, vec![19, 20], "S_19 = {}, S_20 = {}", s[19], s[20]);
    let first_negative = (1..=kmax).find(|&k| s[k] < 0.0).unwrap();
    assert_eq!(first_negative, 41);
    // "Within 1% of −6 from K = 62": every K ≥ 62 (up to 110 here), and not K = 61.
    assert!((62..=kmax).all(|k| (s[k] + 6.0).abs() <= 0.06));
    assert!((s[61] + 6.0).abs() > 0.06, "S_61 = {}", s[61]);
    // The same S_K as a truncation inside a longer sequence.
    for k in [1, 2, 5, 10, 19, 40, 41, 100] {
        let inst = Instance::new(23, 10, 0.0, k + 10, true);
        let g = -inst.grad(&Truncation::Tbptt { k1: 1, k2: k });
        assert!(
            (g - rec[k]).abs() <= 1e-12 * rec[k].abs().max(1.0),
            "TBPTT(1,{k}): {g} vs {}",
            rec[k]
        );
    }
}

/// Block truncation with a loss at every step, one block of k steps at the fixed point:
/// ∂L/∂θ = −Σ_{j ≤ k} S_j, wrong-signed (negative) up to k = 109 and first right-signed
/// at k = 110; block means (1/k) Σ_{j≤k} S_j = 5.5 (k = 10), 10.58 (35), 0.58 (100),
/// −2.71 (200) as in LITERATURE.md §6.4.
#[test]
fn paper_instance_block_truncation_sign_change_at_110() {
    let mut first_right = None;
    for k in 1..=110 {
        // Two blocks of k steps: both hold the same sums at the fixed point.
        let inst = Instance::new(23, 10, 0.0, 2 * k, false);
        let g = inst.grad(&Truncation::Fixed { k });
        if g > 0.0 && first_right.is_none() {
            first_right = Some(k);
        }
    }
    assert_eq!(first_right, Some(110));
    for (k, want) in [(10, 5.5), (35, 10.58), (100, 0.58), (200, -2.71)] {
        let inst = Instance::new(23, 10, 0.0, k, false);
        // One block = Full over k steps; ∂L/∂θ = −Σ_{j≤k} S_j.
        let mean = -inst.grad(&Truncation::Fixed { k }) / k as f64;
        assert!(
            (mean - want).abs() <= 0.005,
            "k={k}: block mean {mean}, notes {want}"
        );
    }
}

/// Randomized truncation on the paper instance is right-signed on average where every
/// short truncation fails: the mean of 400 seeded estimates (π = 0.9 > 1/4, the
/// finite-variance threshold of §6.4) at T = 300 from θ = 0.5 lies within 4 standard
/// errors of `Full` and is positive.
#[test]
fn paper_instance_randomized_mean_has_the_right_sign() {
    let inst = Instance::new(23, 10, 0.5, 300, false);
    let full = inst.grad(&Truncation::Full);
    let n = 400;
    let (mut mean, mut m2) = (0.0, 0.0);
    for seed in 0..n {
        let g = inst.grad(&Truncation::Randomized {
            pi: Pi::Constant(0.9),
            seed,
        });
        let d = g - mean;
        mean += d / (seed + 1) as f64;
        m2 += d * (g - mean);
    }
    let se = (m2 / (n - 1) as f64 / n as f64).sqrt();
    assert!(
        (mean - full).abs() <= 4.0 * se,
        "mean {mean} vs Full {full} (SE {se})"
    );
    assert!(mean > 0.0, "mean {mean}");
}
