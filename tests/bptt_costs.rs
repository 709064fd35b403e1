//! What the strategies cost, and the bookkeeping of sampled runs (LITERATURE.md §1.2
//! "Segment view", §1.3, §8 item 8):
//!
//! * total backward steps are T for `Full`, `Fixed` and `Randomized` (each step is in
//!   exactly one segment);
//! * under a constant π the segments are geometric: mean length 1/(1 − π), variance
//!   π/(1 − π)², number of segments 1 + Binomial(T − 1, 1 − π) (ξ_1 never cuts: the
//!   first segment always starts at step 1);
//! * under a hazard π(m), P(L ≥ m) = Π_{k=1}^{m−1} π(k);
//! * `report.xi` replays the run bitwise; the same seed gives bit-identical gradients,
//!   different seeds different ξ.

use ndarray::Array3;
use rand::Rng;
use timetape::bptt::Run;
use timetape::bptt::{self, Pi, Report, Truncation};
use timetape::rnn::{models, Rnn, Sequence, SequenceLoss, Sizes};
use timetape::{init, Params};

/// A tiny linear RNN (M1: D = 1, H = 2, Q = 1, B = 1) with a squared error at every step:
/// cheap enough for T = 100 000.
struct Tiny {
    params: Params<f64>,
    cell: Rnn,
    xs: Array3<f64>,
    ys: Array3<f64>,
}

fn tiny(t: usize) -> Tiny {
    let mut params = Params::<f64>::new();
    let cell = models::m1(&mut params, Sizes::new(1, 2, 1), 9).unwrap();
    let mut rng = init::rng(99);
    *params.get_mut(cell.w_hh).unwrap() = init::uniform((2, 2), 0.4, &mut rng).unwrap();
    let xs = Array3::from_shape_simple_fn((t, 1, 1), || rng.random_range(-1.0..1.0));
    let ys = Array3::from_shape_simple_fn((t, 1, 1), || rng.random_range(-1.0..1.0));
    Tiny {
        params,
        cell,
        xs,
        ys,
    }
}

impl Tiny {
    fn run(&self, tr: &Truncation) -> Report<f64> {
        bptt::run(
            &self.cell,
            &self.params,
            &Sequence::new(self.xs.view(), SequenceLoss::values(self.ys.view())),
            &Run::new(tr.clone()),
        )
        .unwrap()
    }
}

/// Segment lengths of a ξ pattern: a new segment at every t ≥ 2 with ξ_t = 0.
fn segment_lengths(xi: &[f64]) -> Vec<usize> {
    let mut out = vec![0];
    for (t, &x) in xi.iter().enumerate() {
        if x == 0.0 && t > 0 {
            out.push(0);
        }
        *out.last_mut().unwrap() += 1;
    }
    out
}

#[test]
fn total_backward_steps_equal_t_for_cut_based_strategies() {
    let t = 1000;
    let m = tiny(t);
    let strategies = [
        Truncation::Full,
        Truncation::Fixed { k: 1 },
        Truncation::Fixed { k: 7 },
        Truncation::Fixed { k: 1000 },
        Truncation::Tbptt { k1: 10, k2: 10 },
        Truncation::Randomized {
            pi: Pi::Constant(0.5),
            seed: 1,
        },
        Truncation::Randomized {
            pi: Pi::Constant(0.95),
            seed: 2,
        },
        Truncation::Randomized {
            pi: Pi::schedule(|t| if t % 2 == 0 { 0.2 } else { 0.9 }),
            seed: 3,
        },
        Truncation::Randomized {
            pi: Pi::hazard(|m| if m < 3 { 0.95 } else { 0.6 }),
            seed: 4,
        },
    ];
    for tr in strategies {
        let r = m.run(&tr);
        assert_eq!(r.backward_steps, t, "{tr:?}");
        assert_eq!(r.forward_steps, t, "{tr:?}");
        let expected_segments = match &tr {
            Truncation::Full => 1,
            Truncation::Fixed { k } | Truncation::Tbptt { k1: k, .. } => t.div_ceil(*k),
            _ => segment_lengths(r.xi.as_ref().unwrap()).len(),
        };
        assert_eq!(r.segments, expected_segments, "{tr:?}");
    }
}

/// One run over T = 100 000 steps per π. The number of cuts N = S − 1 (S segments) is
/// Binomial(T − 1, 1 − π) (ξ_2 … ξ_T; ξ_1 never cuts); checked within 4 σ. The mean
/// backward steps per segment T/S is the mean of the S segment lengths, i.i.d. geometric
/// with mean 1/(1 − π) and standard deviation √π/(1 − π), except the last one, cut short
/// by the end of the sequence (it shifts the mean by at most its expected length / S =
/// 1/((1 − π) S)); checked within 4 standard errors plus that shift. The sample variance
/// of the complete segments is checked against π/(1 − π)² within 4 standard errors of a
/// sample variance, σ²·√((γ₂ + 2)/n), with the geometric excess kurtosis
/// γ₂ = 6 + (1 − π)²/π. (Fixed seeds: deterministic; each bound fails with probability
/// ~6e-5 for a correct sampler, while a sampler with the wrong π, or cutting on ξ_1, or
/// counting segments wrongly, misses by many σ: e.g. π = 0.5 vs 0.49 moves the mean
/// length by 2%, 1.6 of these tolerances.)
#[test]
fn segment_lengths_are_geometric_under_constant_pi() {
    let t = 100_000;
    let m = tiny(t);
    for (pi, seed) in [(0.5, 11), (0.9, 12)] {
        let r = m.run(&Truncation::Randomized {
            pi: Pi::Constant(pi),
            seed,
        });
        let tf = t as f64;
        assert_eq!(r.backward_steps, t);
        let s = r.segments as f64;
        // Number of cuts.
        let n_cuts = s - 1.0;
        let (mean_cuts, sd_cuts) = (
            (tf - 1.0) * (1.0 - pi),
            ((tf - 1.0) * pi * (1.0 - pi)).sqrt(),
        );
        assert!(
            (n_cuts - mean_cuts).abs() <= 4.0 * sd_cuts,
            "π = {pi}: {n_cuts} cuts, expected {mean_cuts} ± {sd_cuts}"
        );
        // Mean backward steps per segment.
        let mean_len = r.backward_steps as f64 / s;
        let mu = 1.0 / (1.0 - pi);
        let sd = pi.sqrt() / (1.0 - pi);
        let tol = 4.0 * sd / s.sqrt() + mu / s;
        assert!(
            (mean_len - mu).abs() <= tol,
            "π = {pi}: mean segment {mean_len}, expected {mu} ± {tol}"
        );
        // The segments seen in ξ are the segments run.
        let xi = r.xi.as_ref().unwrap();
        assert!(
            xi.iter().all(|&x| x == 0.0 || x == 1.0 / pi),
            "π = {pi}: ξ values"
        );
        let lens = segment_lengths(xi);
        assert_eq!(lens.len(), r.segments);
        assert_eq!(lens.iter().sum::<usize>(), t);
        // Variance of the complete segments (all but the last).
        let done = &lens[..lens.len() - 1];
        let n = done.len() as f64;
        let mean = done.iter().map(|&l| l as f64).sum::<f64>() / n;
        let var = done.iter().map(|&l| (l as f64 - mean).powi(2)).sum::<f64>() / (n - 1.0);
        let sigma2 = pi / (1.0 - pi).powi(2);
        let kurt = 6.0 + (1.0 - pi).powi(2) / pi;
        let tol = 4.0 * sigma2 * ((kurt + 2.0) / n).sqrt();
        assert!(
            (var - sigma2).abs() <= tol,
            "π = {pi}: segment variance {var}, expected {sigma2} ± {tol}"
        );
    }
}

/// Under a hazard, P(L ≥ m) = Π_{k=1}^{m−1} π(k) (m = steps already in the segment), so
/// E[L] = Σ_{m ≥ 1} P(L ≥ m) and E[L²] = Σ_{m ≥ 1} (2m − 1) P(L ≥ m). The mean of the
/// complete segments of one T = 100 000 run is checked within 4 standard errors
/// (√(Var L / n) ≈ 0.027 here: E[L] = 5.541, Var L = 12.99, n ≈ 18 000). An off-by-one
/// in m (π(m − 1) or π(m + 1) used at m) gives E[L] = 4.88 or 4.78, ~25 standard errors
/// away.
#[test]
fn segment_lengths_follow_the_hazard() {
    let hazard = |m: usize| match m {
        0 => 0.7,
        1 => 0.95,
        2 => 0.9,
        3 => 0.8,
        _ => 0.75,
    };
    let t = 100_000;
    let m = tiny(t);
    let r = m.run(&Truncation::Randomized {
        pi: Pi::hazard(hazard),
        seed: 21,
    });
    let (mut e1, mut e2, mut surv) = (0.0, 0.0, 1.0);
    for k in 1..2000usize {
        e1 += surv;
        e2 += (2 * k - 1) as f64 * surv;
        surv *= hazard(k);
    }
    let var = e2 - e1 * e1;
    let lens = segment_lengths(r.xi.as_ref().unwrap());
    assert_eq!(lens.len(), r.segments);
    let done = &lens[..lens.len() - 1];
    let n = done.len() as f64;
    let mean = done.iter().map(|&l| l as f64).sum::<f64>() / n;
    let tol = 4.0 * (var / n).sqrt();
    assert!(
        (mean - e1).abs() <= tol,
        "mean segment {mean}, expected {e1} ± {tol}"
    );
}

#[test]
fn report_xi_replays_the_run_bitwise() {
    let m = tiny(300);
    let pis = [
        Pi::Constant(0.3),
        Pi::Constant(0.8),
        Pi::schedule(|t| 0.5 + 0.4 * ((t as f64) * 0.37).sin().abs()),
        Pi::hazard(|k| 1.0 / (1.0 + 0.1 * k as f64)),
    ];
    for pi in pis {
        for seed in [0, 1, 2, 1_000_003] {
            let tr = Truncation::Randomized {
                pi: pi.clone(),
                seed,
            };
            let r = m.run(&tr);
            let xi = r.xi.clone().expect("Randomized reports its ξ");
            assert_eq!(xi.len(), 300);
            assert_eq!(xi, bptt::sample_xi(&pi, 300, seed).unwrap(), "{pi:?}");
            let replay = m.run(&Truncation::Pattern(xi.clone()));
            assert!(
                replay.grads == r.grads,
                "{pi:?} seed {seed}: replay differs"
            );
            assert_eq!(replay.loss.to_bits(), r.loss.to_bits());
            assert_eq!(replay.segments, r.segments);
            assert_eq!(replay.xi.as_ref(), Some(&xi));
            // Same seed: bit-identical.
            let again = m.run(&tr);
            assert!(
                again.grads == r.grads && again.xi == r.xi,
                "{pi:?} seed {seed}"
            );
        }
    }
}

#[test]
fn different_seeds_give_different_xi() {
    let m = tiny(60);
    let pi = Pi::Constant(0.5);
    let runs: Vec<Report<f64>> = (0..20)
        .map(|seed| {
            m.run(&Truncation::Randomized {
                pi: pi.clone(),
                seed,
            })
        })
        .collect();
    // Two independent ξ_2..ξ_60 at π = 1/2 coincide with probability 2⁻⁵⁹.
    for i in 0..runs.len() {
        for j in 0..i {
            assert_ne!(runs[i].xi, runs[j].xi, "seeds {i} and {j}");
            assert!(runs[i].grads != runs[j].grads, "seeds {i} and {j}");
        }
    }
}
