//! Unbiasedness and variance of the randomized truncation (LITERATURE.md §1.2, §8 items
//! 3 and 6; FORMULAS.md "Validation cases").
//!
//! * exactly, by enumerating all 2^T patterns (`bptt::enumerate`): E[Ĝ] = `Full` for a
//!   constant π, a schedule π_t and a hazard π(m), on M1, M2, M3;
//! * by sampling: the mean of 2000 seeded estimates at T = 50 lies within 4 standard
//!   errors of `Full`, entry by entry;
//! * the enumerated variance equals the closed form
//!   Σ a_{i,t} a_{i',t'} (Π_{j ∈ (i,t] ∩ (i',t']} π_j⁻¹ − 1), with the path contributions
//!   a_{i,t} measured independently with single-cut patterns.

mod common;

use common::cases::{Case, Model, Shape};
use common::finite_scale;
use timetape::bptt::Run;
use timetape::bptt::{self, enumerate, Pi, Truncation};
use timetape::{Grads, ParamId};

/// The estimates and moments of this file on the shared fixture (`Case::sized`: sizes
/// (B, D, H, Q) and the scale of `W_hh` per test; biases in ±0.3, +0.2 on M2's b_h so
/// that its ReLUs are mostly active; inputs in ±1; α_t ∈ [0.2, 1.2) on M3, 1 on M1).
impl Case {
    fn run_with(&self, w: &[f64], truncation: &Truncation) -> Grads<f64> {
        bptt::run(
            &self.cell,
            &self.params,
            &self.seq_with(self.loss_with(w)),
            &Run::new(truncation.clone()),
        )
        .unwrap()
        .grads
    }

    fn run(&self, truncation: &Truncation) -> Grads<f64> {
        self.run_with(&self.weights(), truncation)
    }

    fn moments(&self, pi: &Pi) -> enumerate::Moments<f64> {
        enumerate::randomized_moments(&self.cell, &self.params, &self.seq(), pi).unwrap()
    }
}

/// Every entry of every parameter, as (id, flat index).
fn entries(g: &Grads<f64>) -> Vec<(ParamId, usize)> {
    g.iter()
        .flat_map(|(id, a)| (0..a.len()).map(move |i| (id, i)))
        .collect()
}

fn entry(g: &Grads<f64>, (id, i): (ParamId, usize)) -> f64 {
    g.get(id).unwrap().iter().nth(i).copied().unwrap()
}

fn pis() -> Vec<(&'static str, Pi)> {
    vec![
        ("constant 0.3", Pi::Constant(0.3)),
        ("constant 0.5", Pi::Constant(0.5)),
        ("constant 0.9", Pi::Constant(0.9)),
        (
            "schedule",
            Pi::schedule(|t| [0.35, 0.8, 0.5, 0.95, 0.3, 0.6, 0.75, 0.45][(t - 1) % 8]),
        ),
        // Low survival right after a cut, high in long segments, 1 at m = 0 (t = 1).
        (
            "hazard",
            Pi::hazard(|m| match m {
                0 => 1.0,
                1 => 0.4,
                2 => 0.6,
                _ => 0.85,
            }),
        ),
    ]
}

/// E[Ĝ] by enumeration equals `Full`, to 1e-10 relative per parameter
/// (`Grads::max_rel_diff`). The enumerated mean is Σ_ξ P(ξ) Ĝ(ξ) over 2^T = 128 or 256
/// patterns; the terms carry weights up to π^{−T} = 0.3^{−8} ≈ 6·10⁴ that cancel to the
/// O(1) full gradient, so the rounding of each Ĝ (~1e-16 of its largest path term) is
/// amplified by at most ~10⁴·(number of patterns) in the worst case and in practice much
/// less (observed ≲ 1e-14). A biased estimator is off by O(1): the same enumeration with
/// the compensation 1/π removed (ξ ∈ {0, 1}) is checked to miss `Full` by > 1e-3.
#[test]
fn enumerated_expectation_equals_full() {
    for (model, t) in [(Model::M1, 7), (Model::M2, 7), (Model::M3, 8)] {
        let c = Case::sized(model, Shape::new(t, 2, 2, 3), 3, 0.9 / 3f64.sqrt(), 3);
        let full = c.run(&Truncation::Full);
        for (name, pi) in pis() {
            let m = c.moments(&pi);
            let d = m.mean.max_rel_diff(&full);
            assert!(d <= 1e-10, "{model:?} T={t} π {name}: E[Ĝ] vs Full {d:e}");
            // Every pattern has a non-zero probability except those cutting where π = 1.
            let expected = if name == "hazard" {
                1 << (t - 1)
            } else {
                1 << t
            };
            assert_eq!(m.patterns, expected, "{model:?} π {name}");
            // Not vacuous: the estimator is random (some entry has variance > 0) ...
            let vmax = finite_scale(
                m.variance.iter().flat_map(|(_, v)| v.iter()).copied(),
                "variance",
            );
            assert!(vmax > 1e-8, "{model:?} π {name}: no variance");
        }
        // ... and without the 1/π compensation its mean is biased.
        let pi = Pi::Constant(0.5);
        let mut biased = Grads::zeros_like(&c.params);
        for (xi, p) in enumerate::patterns(&pi, t).unwrap() {
            let cut: Vec<f64> = xi
                .iter()
                .map(|&x| if x == 0.0 { 0.0 } else { 1.0 })
                .collect();
            let mut g = c.run(&Truncation::Pattern(cut));
            g.scale(p);
            biased.add_assign(&g).unwrap();
        }
        // (`Grads::max_rel_diff` is +∞ on a non-finite entry: not "biased".)
        let d = biased.max_rel_diff(&full);
        assert!(
            d.is_finite() && d > 1e-3,
            "{model:?}: uncompensated mean is not biased ({d:e})"
        );
    }
}

#[test]
fn enumerated_pattern_probabilities_sum_to_one() {
    for (name, pi) in pis() {
        for t in [1, 5, 9] {
            let all = enumerate::patterns(&pi, t).unwrap();
            let total: f64 = all.iter().map(|(_, p)| p).sum();
            assert!((total - 1.0).abs() < 1e-14, "π {name} T={t}: Σ P = {total}");
            // E[ξ_t] = 1 at every t (the property unbiasedness rests on).
            for s in 0..t {
                let e: f64 = all.iter().map(|(xi, p)| p * xi[s]).sum();
                assert!(
                    (e - 1.0).abs() < 1e-13,
                    "π {name} T={t}: E[ξ_{}] = {e}",
                    s + 1
                );
            }
        }
    }
}

/// The mean of N = 2000 seeded estimates at T = 50 lies within 4 standard errors
/// (sample std / √N) of `Full`, for every entry.
///
/// Model: M3 with B = 1, D = 2, H = 3, Q = 2, `W_hh` uniform in ±0.25 (spectral radius
/// ≤ 3·0.25 = 0.75 by the row-sum bound, typically ≈ 0.4) and tanh' ≤ 1, so Jacobian
/// products decay at a rate α ≲ 0.75, and π = 0.75 ≥ α² ≈ 0.56 keeps the variance
/// finite (LITERATURE.md §1.2: bounded iff π > α²); the sample variance is then a
/// usable estimate. With 26 entries and a Gaussian mean, the chance that any entry
/// leaves ±4 SE is 26·6.3e-5 ≈ 0.2% (the seeds are fixed, so the outcome is
/// deterministic). Entries that do not depend on ξ (`W_hq`, `b_q`) have a sample std of
/// rounding size only; for them the allowance is the rounding floor 1e-12·max|Full|
/// (the estimates differ from `Full` only by summation order, ~1e-15 relative).
/// Sensitivity: the same test on the uncompensated estimator (ξ ∈ {0, 1}) must fail.
#[test]
fn sampled_mean_of_2000_estimates_is_within_4_standard_errors_of_full() {
    let (t, n) = (50, 2000);
    let c = Case::sized(Model::M3, Shape::new(t, 1, 2, 2), 3, 0.25, 17);
    let full = c.run(&Truncation::Full);
    let pi = Pi::Constant(0.75);
    let idx = entries(&full);
    // Welford's running mean and sum of squared deviations (no cancellation for the
    // entries that do not vary).
    let mut mean = vec![0.0; idx.len()];
    let mut m2 = vec![0.0; idx.len()];
    let mut sum_biased = vec![0.0; idx.len()];
    for (count, seed) in (0..n as u64).enumerate() {
        let xi = bptt::sample_xi(&pi, t, seed).unwrap();
        let g = c.run(&Truncation::Randomized {
            pi: pi.clone(),
            seed,
        });
        let cut: Vec<f64> = xi
            .iter()
            .map(|&x| if x == 0.0 { 0.0 } else { 1.0 })
            .collect();
        let gb = c.run(&Truncation::Pattern(cut));
        for (k, &e) in idx.iter().enumerate() {
            let v = entry(&g, e);
            let delta = v - mean[k];
            mean[k] += delta / (count + 1) as f64;
            m2[k] += delta * (v - mean[k]);
            sum_biased[k] += entry(&gb, e);
        }
    }
    let nf = n as f64;
    let scale = finite_scale(idx.iter().map(|&e| entry(&full, e)), "full gradient");
    let floor = 1e-12 * scale;
    let mut random_entries = 0;
    let mut biased_outside = 0;
    for (k, &e) in idx.iter().enumerate() {
        let mean = mean[k];
        let var = m2[k] / (nf - 1.0);
        let se = (var / nf).sqrt();
        let want = entry(&full, e);
        let allowed = 4.0 * se + floor;
        // A non-finite sample would make the allowance infinite: rule it out first.
        assert!(
            mean.is_finite() && se.is_finite(),
            "{e:?}: mean {mean}, SE {se}"
        );
        assert!(
            (mean - want).abs() <= allowed,
            "{e:?}: mean {mean} vs Full {want}, |diff| {:e} > 4 SE + floor = {allowed:e}",
            (mean - want).abs()
        );
        if se > 1e-6 * scale {
            random_entries += 1;
        }
        if (sum_biased[k] / nf - want).abs() > allowed {
            biased_outside += 1;
        }
    }
    assert!(
        random_entries >= 10,
        "only {random_entries} entries vary with ξ"
    );
    assert!(biased_outside > 0, "the test does not detect a missing 1/π");
}

/// Var[Ĝ] from enumeration equals the closed form of FORMULAS.md for independent ξ
/// (a constant π and a schedule), entry by entry.
///
/// Tolerance 1e-10 relative to the largest variance of the parameter. The closed form
/// uses the a_{i,t}, each a difference of two tape gradients (error ~1e-16 of the
/// gradient of one loss), in a double sum of 21² products with factors up to
/// 0.3^{−6} ≈ 1.4·10³; the variances are ≥ 1.1e-3 |G|² here (|G| the largest gradient
/// entry). Measured agreement: ≤ 2e-15 relative for every parameter, π and model;
/// 1e-10 is over four orders above that, while a wrong interval (i, t] (one step off) or a
/// π_j taken at the wrong step changes the variance by O(1) (the schedule's π_j differ
/// by up to 2.6×). Entries that do not depend on ξ (the output head) have
/// closed-form variance exactly 0 (all their paths have i = t, an empty product); their
/// enumerated variance must be at rounding level, ≤ 1e-24·max|G|².
#[test]
fn enumerated_variance_equals_closed_form() {
    let schedule = [0.5, 0.35, 0.8, 0.55, 0.9, 0.45];
    for model in [Model::M3, Model::M1] {
        let c = Case::sized(model, Shape::new(6, 1, 2, 2), 2, 0.9, 29);
        let full = c.run(&Truncation::Full);
        let a = c.path_contributions(None);
        // Σ_{i ≤ t} a_{i,t} is the full gradient: a check on the a's themselves.
        let mut sum = Grads::zeros_like(&c.params);
        for g in a.iter().flatten() {
            sum.add_assign(g).unwrap();
        }
        let d = sum.max_rel_diff(&full);
        assert!(d <= 1e-12, "{model:?}: Σ a_(i,t) vs Full {d:e}");
        let cases: Vec<(&str, Pi, Vec<f64>)> = vec![
            ("constant 0.5", Pi::Constant(0.5), vec![0.5; 6]),
            ("constant 0.3", Pi::Constant(0.3), vec![0.3; 6]),
            (
                "schedule",
                Pi::schedule(move |t| schedule[t - 1]),
                schedule.to_vec(),
            ),
        ];
        let idx = entries(&full);
        let g2 = finite_scale(idx.iter().map(|&e| entry(&full, e)), "full gradient").powi(2);
        for (name, pi, pis) in cases {
            let m = c.moments(&pi);
            // Closed form, entry by entry.
            let paths: Vec<(usize, usize)> =
                (0..6).flat_map(|t| (0..=t).map(move |i| (i, t))).collect();
            for (id, v_enum) in m.variance.iter() {
                let v_closed: Vec<f64> = (0..v_enum.len())
                    .map(|k| {
                        let mut v = 0.0;
                        for &(i, t) in &paths {
                            let x = entry(&a[t][i], (id, k));
                            for &(i2, t2) in &paths {
                                let y = entry(&a[t2][i2], (id, k));
                                // (i, t] ∩ (i2, t2] in 1-based steps = 0-based j in
                                // max(i, i2) + 1 ..= min(t, t2).
                                let prod: f64 =
                                    (i.max(i2) + 1..=t.min(t2)).map(|j| 1.0 / pis[j]).product();
                                v += x * y * (prod - 1.0);
                            }
                        }
                        v
                    })
                    .collect();
                let vmax = finite_scale(v_closed.iter().copied(), "closed-form variance");
                // A parameter the ξ do not reach (W_hq, b_q) has variance 0 in exact
                // arithmetic; both sides then hold rounding noise of order u²·g² ≈ 1e-32·g².
                for (k, (&ve, &vc)) in v_enum.iter().zip(&v_closed).enumerate() {
                    if vmax <= 1e-24 * g2 {
                        assert!(
                            ve.abs() <= 1e-24 * g2,
                            "{model:?} π {name} {id:?}[{k}]: {ve:e}"
                        );
                    } else {
                        assert!(
                            (ve - vc).abs() <= 1e-10 * vmax,
                            "{model:?} π {name} {id:?}[{k}]: enumerated {ve:e} vs closed {vc:e}"
                        );
                    }
                }
            }
            // Not vacuous: W_hh's estimate is random.
            let vw = m.variance.get(c.cell.w_hh).unwrap();
            assert!(vw.iter().any(|&v| v > 1e-6 * g2), "{model:?} π {name}");
        }
    }
}
