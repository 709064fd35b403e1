//! Variable-length windows (`Truncation::Windows`, AWD-LSTM's truncation) and their
//! distribution (`WindowLengths`): the pmf against an independent integration of the
//! normal density, the sampler against the pmf, the cuts against `Randomized` with the
//! same hazard, the exact expectation by enumeration (biased; the reweighted windows
//! unbiased), and the size and sign of the bias on the influence-balancing instance of
//! Tallec & Ollivier (n = 23, p = 10), computed exactly by a renewal oracle on plain
//! `Vec<f64>` and checked against seeded runs on the tape.
//!
//! Every comparison is written `assert!(d <= tol)`, which fails on a NaN `d`.

mod common;

use common::balance::Balance;
use common::cases::{Case, Model};
use common::{assert_close, assert_differs, grads_max_rel_diff, max_abs_diff, nan_max};
use ndarray::{Array2, Array3, Axis};
use timetape::bptt::atlas::{self, Method};
use timetape::bptt::enumerate::{
    pattern_moments, randomized_moments, window_patterns, windows_moments,
};
use timetape::bptt::{
    self, segment_lengths, Awd, Report, Run, StepTarget, Stream, Truncation, WindowLengths,
    Workspace, XiSampler,
};
use timetape::checkpoint::{Checkpoint, Loaded};
use timetape::rnn::{Sequence, SequenceLoss};
use timetape::{Error, Params};

/// AWD-LSTM's window lengths with another base (70 is AWD's own).
fn awd(base: usize) -> WindowLengths {
    WindowLengths::awd(Awd {
        base,
        ..Awd::default()
    })
    .unwrap()
}

/// A small pmf whose windows end within a few steps: lengths 1 to 4.
fn short_windows() -> WindowLengths {
    WindowLengths::from_pmf(vec![0.1, 0.2, 0.3, 0.4]).unwrap()
}

// ---------------------------------------------------------------------------------------
// The distribution

/// `∫_a^b` of the N(mu, sigma²) density by the composite Simpson rule with `per_unit`
/// intervals per unit of length (an even number in all): independent of the library's
/// `erfc`.
fn normal_mass(a: f64, b: f64, mu: f64, sigma: f64, per_unit: usize) -> f64 {
    let n = (((b - a) * per_unit as f64).ceil() as usize).max(2);
    let n = n + n % 2;
    let h = (b - a) / n as f64;
    let density = |x: f64| {
        let z = (x - mu) / sigma;
        (-0.5 * z * z).exp() / (sigma * (2.0 * std::f64::consts::PI).sqrt())
    };
    let inner: f64 = (1..n)
        .map(|k| (if k % 2 == 1 { 4.0 } else { 2.0 }) * density(a + k as f64 * h))
        .sum();
    (density(a) + inner + density(b)) * h / 3.0
}

/// P(L = ℓ) of AWD's lengths by integrating the two normal densities: `[ℓ, ℓ + 1)` for
/// ℓ > min, `(mean − 40σ, min + 1)` for ℓ = min (the mass below mean − 40σ is below
/// 1e-300).
fn awd_pmf_by_simpson(a: &Awd, len: usize) -> f64 {
    let base = a.base as f64;
    let components = [(a.p_base, base), (1.0 - a.p_base, base / 2.0)];
    let (lo_of, hi) = match len {
        l if l < a.min => return 0.0,
        l if l == a.min => (None, a.min as f64 + 1.0),
        l => (Some(l as f64), l as f64 + 1.0),
    };
    components
        .iter()
        .map(|&(w, mu)| {
            let lo = lo_of.unwrap_or(mu - 40.0 * a.sigma);
            w * normal_mass(lo, hi, mu, a.sigma, 512)
        })
        .sum()
}

/// The AWD pmf sums to 1 (1e-12), and every value matches the Simpson integration of
/// the normal density to 1e-14 absolute (observed 1.4e-16). Simpson with h = 1/512 on
/// σ = 5: the error bound h⁴/180 · max|f⁗| · (b − a) is ~3e-17 per unit of length, so
/// ≲ 6e-15 over the longest integral (200 units, for P(L = min)); its 10⁵ terms round
/// to ~1e-14 relative of a value ≤ 6e-4. A wrong bucket edge (e.g. `[ℓ − 1, ℓ)` for
/// `int`) moves a value by up to 4e-3.
#[test]
fn awd_pmf_sums_to_one_and_matches_the_integrated_density() {
    for base in [70, 35] {
        let a = Awd {
            base,
            ..Awd::default()
        };
        let w = WindowLengths::awd(a).unwrap();
        let total: f64 = w.probabilities().iter().sum();
        assert!((total - 1.0).abs() <= 1e-12, "base {base}: sum {total}");
        assert_eq!(*w.support().start(), 5);
        // The support ends 37σ past the base (the tail past it is below 1e-300).
        assert_eq!(*w.support().end(), base + 185, "base {base}");
        let mut worst = 0.0f64;
        for len in 1..=w.support().end() + 3 {
            let want = awd_pmf_by_simpson(&a, len);
            let d = (w.pmf(len) - want).abs();
            assert!(
                d <= 1e-14,
                "base {base}: P(L = {len}) = {} vs {want}",
                w.pmf(len)
            );
            worst = worst.max(d);
        }
        println!("base {base}: largest |pmf − Simpson| = {worst:e}");
        // A value by hand from a table of Φ: P(L = 70) = 0.95 (Φ(0.2) − Φ(0)) plus
        // 0.05 P(70 ≤ N(35, 25) < 71) ≈ 5e-14, within the 1e-12 tolerance.
        let p70 = 0.95 * (0.579_259_709_439_103 - 0.5);
        if base == 70 {
            assert!(
                (w.pmf(70) - p70).abs() <= 1e-12,
                "P(L = 70) = {}",
                w.pmf(70)
            );
        }
    }
}

/// The mean of AWD's lengths against its derivation: for X ~ N(μ, σ²),
/// `E[max(min, int X)] = E[⌊X⌋] + Σ_{j ≥ 1} P(X < min + 1 − j)` (int and ⌊·⌋ differ only
/// below 0, where both are clamped), and `E[⌊X⌋] = μ − ½` up to `e^{−2π²σ²}` (≈ 1e-214
/// for σ = 5: the fractional part of X is uniform to that accuracy, by Poisson
/// summation). The clamp term is integrated by Simpson. Tolerance 1e-12 relative: the
/// mean sums ~250 terms of the pmf, each within ~1e-16 relative.
#[test]
fn awd_mean_matches_its_derived_value() {
    for (base, clamp_at_least) in [(70, 1e-11), (35, 1e-4)] {
        let a = Awd {
            base,
            ..Awd::default()
        };
        let w = WindowLengths::awd(a).unwrap();
        let mut derived = 0.0;
        let mut clamp = 0.0;
        for (weight, mu) in [(a.p_base, base as f64), (1.0 - a.p_base, base as f64 / 2.0)] {
            let c: f64 = (1..=50)
                .map(|j| {
                    let x = (a.min + 1) as f64 - j as f64;
                    normal_mass(mu - 40.0 * a.sigma, x, mu, a.sigma, 256)
                })
                .sum();
            derived += weight * (mu - 0.5 + c);
            clamp += weight * c;
        }
        let d = (w.mean() - derived).abs();
        println!(
            "base {base}: mean {} (derived {derived}, clamp {clamp:e})",
            w.mean()
        );
        assert!(
            d <= 1e-12 * derived,
            "base {base}: {} vs {derived}",
            w.mean()
        );
        // Not vacuous: the clamp term is seen.
        assert!(clamp >= clamp_at_least, "base {base}: clamp {clamp:e}");
    }
}

/// π, the hazard and the survival are one distribution: π(m) = 1 − hazard(m) (1e-15),
/// `P(L ≥ m + 1) = Π_{k ≤ m} π(k)` (1e-12, a product of ≤ 260 factors), `P(L ≥ m) −
/// P(L ≥ m + 1) = P(L = m)`, and the ends of the support: π(0) = 1, π = 0 and hazard 1
/// at the longest length.
#[test]
fn hazard_survival_and_pi_agree() {
    for w in [awd(70), awd(35), short_windows()] {
        let end = *w.support().end();
        let mut product = 1.0;
        assert_eq!((w.pi(0), w.hazard(0), w.survival(1)), (1.0, 0.0, 1.0));
        for m in 1..=end + 2 {
            let (pi, hz) = (w.pi(m), w.hazard(m));
            assert!((pi + hz - 1.0).abs() <= 1e-15, "m = {m}: π {pi} + h {hz}");
            product *= pi;
            assert!(
                (product - w.survival(m + 1)).abs() <= 1e-12,
                "m = {m}: Π π = {product}, P(L ≥ m + 1) = {}",
                w.survival(m + 1)
            );
            let d = w.survival(m) - w.survival(m + 1) - w.pmf(m);
            assert!(d.abs() <= 1e-15, "m = {m}: {d:e}");
        }
        assert_eq!((w.pi(end), w.hazard(end)), (0.0, 1.0));
    }
}

/// Sampling: over N = 200 000 seeded windows (one stream of draws, every complete
/// window), the frequency of each of the 20 most likely lengths lies within 4 standard
/// errors `√(p(1 − p)/N)` of the pmf, and no window falls outside the support. (20
/// lengths at 4 SE: a correct sampler fails with probability ~1e-3 for a random seed;
/// the seed is fixed.) The same for the four lengths of a small pmf.
#[test]
fn sampled_window_lengths_follow_the_pmf() {
    for (w, seed) in [(awd(70), 11), (awd(35), 12), (short_windows(), 13)] {
        let n = 200_000;
        let end = *w.support().end();
        let mut counts = vec![0usize; end + 2];
        let mut s = XiSampler::windows(w.clone(), seed);
        let (mut len, mut done) = (0usize, 0usize);
        s.next_xi().unwrap(); // step 1 starts the first window
        len += 1;
        while done < n {
            if s.next_xi().unwrap() == 0.0 {
                counts[len.min(end + 1)] += 1;
                done += 1;
                len = 0;
            }
            len += 1;
        }
        assert_eq!(counts[end + 1], 0, "a window longer than the support");
        let mut lengths: Vec<usize> = w.support().collect();
        lengths.sort_by(|&a, &b| w.pmf(b).total_cmp(&w.pmf(a)));
        for &l in lengths.iter().take(20) {
            let p = w.pmf(l);
            let freq = counts[l] as f64 / n as f64;
            let se = (p * (1.0 - p) / n as f64).sqrt();
            assert!(
                (freq - p).abs() <= 4.0 * se,
                "{w:?}: length {l}: frequency {freq} vs P {p} (SE {se:e})"
            );
        }
        let below: usize = counts[..*w.support().start()].iter().sum();
        assert_eq!(below, 0, "a window shorter than the support");
    }
}

// ---------------------------------------------------------------------------------------
// The windows as a truncation

/// For the same seed, `Windows` cuts exactly where `Randomized` with the windows' hazard
/// (`unbiased_pi`) cuts, as long as that hazard is in (0, 1]: over the whole sequence
/// for AWD's lengths (whose end, 37σ past the mean, is never reached), and up to the
/// first window that reaches the end of a short support (where the windows must cut and
/// `unbiased_pi` survives with ½). Where `Randomized` keeps an edge its ξ is 1/π(m).
#[test]
fn windows_cut_where_randomized_with_the_same_hazard_cuts() {
    for base in [70, 35] {
        let w = awd(base);
        for seed in 0..10 {
            let t = 3000;
            let win = Truncation::Windows {
                lengths: w.clone(),
                seed,
            };
            let ran = Truncation::Randomized {
                pi: w.unbiased_pi(),
                seed,
            };
            let (xw, xr) = (win.xi(t).unwrap().unwrap(), ran.xi(t).unwrap().unwrap());
            assert!(xw.iter().all(|&x| x == 0.0 || x == 1.0));
            let zw: Vec<usize> = (0..t).filter(|&i| xw[i] == 0.0).collect();
            let zr: Vec<usize> = (0..t).filter(|&i| xr[i] == 0.0).collect();
            assert_eq!(zw, zr, "base {base}, seed {seed}");
            assert!(zw.len() >= t / (2 * base), "too few cuts: {}", zw.len());
        }
    }
    // Lengths 1..4: compare step by step while π(m) > 0.
    let w = short_windows();
    let mut compared_cuts = 0;
    for seed in 0..200 {
        let mut sw = XiSampler::windows(w.clone(), seed);
        let mut sr = XiSampler::new(w.unbiased_pi(), seed);
        let mut m = 0;
        loop {
            let (xw, xr) = (sw.next_xi().unwrap(), sr.next_xi().unwrap());
            if w.pi(m) == 0.0 {
                assert_eq!(xw, 0.0, "seed {seed}: the window must end at m = {m}");
                break;
            }
            assert_eq!(xw == 0.0, xr == 0.0, "seed {seed}, m = {m}");
            if xr != 0.0 {
                assert_eq!(xr, 1.0 / w.pi(m));
            } else {
                compared_cuts += 1;
            }
            m = if xw == 0.0 { 1 } else { m + 1 };
        }
    }
    assert!(compared_cuts > 100, "{compared_cuts} cuts compared");
}

/// A point mass at k gives the blocks of `Fixed { k }`: the same gradient (1e-12
/// relative: the same segments, the only difference is ξ_1, which cuts nothing), and
/// the ξ of `Fixed` but for ξ_1 = 1.
#[test]
fn windows_of_one_length_are_fixed_blocks() {
    let c = Case::new(Model::M3, 23, 4);
    for k in [1, 3, 5, 30] {
        let mut pmf = vec![0.0; k];
        pmf[k - 1] = 1.0;
        let win = Truncation::Windows {
            lengths: WindowLengths::from_pmf(pmf).unwrap(),
            seed: 9,
        };
        let r = bptt::run(&c.cell, &c.params, &c.seq(), &Run::new(win)).unwrap();
        let fixed = bptt::run(
            &c.cell,
            &c.params,
            &c.seq(),
            &Run::new(Truncation::Fixed { k }),
        )
        .unwrap();
        let d = grads_max_rel_diff(&c.params, &r.grads, &fixed.grads);
        assert!(d <= 1e-12, "k = {k}: {d:e}");
        let mut want = bptt::fixed_pattern(23, k).unwrap();
        want[0] = 1.0;
        assert_eq!(r.xi.unwrap(), want, "k = {k}");
        assert_eq!(r.segments, 23usize.div_ceil(k));
    }
}

/// `run`, `Workspace::run` and a `Stream` fed the same steps agree on `Windows`: the
/// same ξ (that of `Truncation::xi`), gradients within 1e-12 relative (the same segments,
/// summed in another order), the same segment count; `segment_lengths` of the ξ are
/// AWD lengths (but the last, cut short by T) and add up to T.
#[test]
fn run_workspace_and_stream_agree_on_windows() {
    let t = 400;
    let c = Case::new(Model::M3, t, 8);
    let how = Run::new(Truncation::Windows {
        lengths: awd(35),
        seed: 21,
    });
    let r = bptt::run(&c.cell, &c.params, &c.seq(), &how).unwrap();
    let xi = r.xi.clone().expect("Windows reports its ξ");
    assert_eq!(Some(xi.clone()), how.truncation.xi(t).unwrap());
    let lens = segment_lengths(&xi);
    assert_eq!(lens.iter().sum::<usize>(), t);
    assert_eq!(lens.len(), r.segments);
    assert!(lens.len() >= 8, "{lens:?}");
    let w = awd(35);
    assert!(lens[..lens.len() - 1].iter().all(|&l| w.pmf(l) > 0.0));
    assert!(lens
        .iter()
        .all(|&l| (w.lr_scale(l) - l as f64 / 35.0).abs() <= 1e-15));

    let mut ws = Workspace::new();
    for _ in 0..2 {
        let again = ws.run(&c.cell, &c.params, &c.seq(), &how).unwrap();
        assert_eq!(again.xi, r.xi);
        assert!(grads_max_rel_diff(&c.params, &again.grads, &r.grads) <= 1e-12);
    }
    let s = stream(&c, &how, None, 0..t).finish().unwrap();
    assert_eq!(s.xi, r.xi);
    assert_eq!(s.segments, r.segments);
    let d = grads_max_rel_diff(&c.params, &s.grads, &r.grads);
    assert!(d <= 1e-12, "stream vs run: {d:e}");
    // Not vacuous: the windows change the gradient.
    let full = bptt::run(&c.cell, &c.params, &c.seq(), &Run::new(Truncation::Full)).unwrap();
    let d = grads_max_rel_diff(&c.params, &r.grads, &full.grads);
    assert!(d.is_finite() && d > 1e-6, "Windows vs Full: {d:e}");
}

/// A stream of the case's steps `steps`, from `sampler` if given.
fn stream<'a>(
    c: &'a Case,
    how: &Run,
    sampler: Option<XiSampler>,
    steps: std::ops::Range<usize>,
) -> Stream<'a, f64, timetape::rnn::Rnn> {
    let b = c.data.xs.len_of(Axis(1));
    let mut s = Stream::new(&c.cell, &c.params, b, how).unwrap();
    if let Some(sampler) = sampler {
        s = s.with_sampler(sampler).unwrap();
    }
    for t in steps {
        let labels = c.data.labels.row(t).to_vec();
        s.push(
            c.data.xs.index_axis(Axis(0), t),
            StepTarget::Classes(&labels),
            c.data.alphas[t],
        )
        .unwrap();
    }
    s
}

/// A stream stopped after 250 steps, its sampler saved in a checkpoint, and a new stream
/// resumed from the loaded sampler for the next 250 steps cut the windows of one
/// uninterrupted 500-step stream, step for step; a `Randomized` stream the same ξ.
#[test]
fn a_stream_resumed_from_a_checkpoint_continues_the_same_windows() {
    let c = Case::new(Model::M3, 500, 2);
    let lengths = awd(70);
    let runs = [
        Truncation::Windows {
            lengths: lengths.clone(),
            seed: 31,
        },
        Truncation::Randomized {
            pi: lengths.unbiased_pi(),
            seed: 31,
        },
    ];
    for tr in runs {
        let how = Run::new(tr.clone());
        let whole = stream(&c, &how, None, 0..500).finish().unwrap().xi.unwrap();
        let first = stream(&c, &how, None, 0..250);
        let bytes = Checkpoint::new(&c.params)
            .sampler(first.sampler().unwrap())
            .to_bytes()
            .unwrap();
        let mut xi = first.finish().unwrap().xi.unwrap();
        let loaded = Loaded::<f64>::from_bytes(&bytes).unwrap();
        let sampler = match &tr {
            Truncation::Windows { lengths, .. } => loaded.windows_sampler(lengths.clone()),
            Truncation::Randomized { pi, .. } => loaded.sampler(pi.clone()),
            _ => unreachable!(),
        }
        .unwrap();
        let second = stream(&c, &how, Some(sampler), 250..500);
        xi.extend(second.finish().unwrap().xi.unwrap());
        assert_eq!(xi, whole, "{tr:?}");
        assert!(segment_lengths(&whole).len() >= 6);
    }
}

// ---------------------------------------------------------------------------------------
// Exact enumeration

/// The window patterns of T = 10 steps (lengths 1..4): their probabilities sum to 1
/// (1e-14), each is that of its windows by the renewal argument, `Π P(L = ℓ_w)` over the
/// complete windows times `P(L ≥ ℓ_last)` (1e-15: a product of ≤ 10 factors), and
/// there is one pattern for every 0/1 sequence with ξ_1 = 1 whose windows are at most 4
/// steps long (counted by filtering all 2⁹ such sequences).
#[test]
fn window_patterns_have_renewal_probabilities() {
    let w = short_windows();
    let t = 10;
    let all = window_patterns(&w, t).unwrap();
    let total: f64 = all.iter().map(|(_, p)| p).sum();
    assert!((total - 1.0).abs() <= 1e-14, "sum {total}");
    for (xi, p) in &all {
        assert_eq!(xi[0], 1.0);
        let lens = segment_lengths(xi);
        let (last, complete) = lens.split_last().unwrap();
        let want: f64 = complete.iter().map(|&l| w.pmf(l)).product::<f64>() * w.survival(*last);
        assert!((p - want).abs() <= 1e-15, "{xi:?}: {p} vs {want}");
    }
    let possible = (0u32..1 << (t - 1))
        .filter(|mask| {
            let xi: Vec<f64> = std::iter::once(1.0)
                .chain((0..t - 1).map(|j| f64::from(mask >> j & 1)))
                .collect();
            segment_lengths(&xi).iter().all(|&l| l <= 4)
        })
        .count();
    assert_eq!(all.len(), possible);
}

/// On M3 (T = 10, lengths 1..4): the exact mean of `Windows` is not the full gradient
/// (it differs by more than 1e-3 relative), while `Randomized` with the same windows'
/// hazard (`unbiased_pi`) has the full gradient as its exact mean (1e-12 relative: a
/// probability-weighted sum of 2⁹ estimates whose edges are scaled by 1/π ≤ 2 (π is
/// 0.9, 0.78, 0.57, then ½), so terms up to ~2⁹ times the result cancel; observed
/// ~1e-15). `pattern_moments` of the window patterns is `windows_moments`, bit for bit.
#[test]
fn exact_windows_mean_is_biased_and_reweighted_windows_are_unbiased() {
    let c = Case::new(Model::M3, 10, 5);
    let seq = c.seq();
    let full = bptt::run(&c.cell, &c.params, &seq, &Run::new(Truncation::Full)).unwrap();
    let w = short_windows();
    let win = windows_moments(&c.cell, &c.params, &seq, &w).unwrap();
    let by_patterns =
        pattern_moments(&c.cell, &c.params, &seq, &window_patterns(&w, 10).unwrap()).unwrap();
    let ran = randomized_moments(&c.cell, &c.params, &seq, &w.unbiased_pi()).unwrap();
    // Step 1 never cuts (π = 1: it starts the first window), every later π is < 1.
    assert_eq!(ran.patterns, 1 << 9);
    for id in c.params.ids() {
        let name = c.params.name(id).unwrap();
        let f = full.grads.get(id).unwrap().view();
        assert_close(ran.mean.get(id).unwrap().view(), f, 1e-12, name);
        assert_eq!(win.mean.get(id).unwrap(), by_patterns.mean.get(id).unwrap());
    }
    let w_hh = c.cell.w_hh;
    let f = full.grads.get(w_hh).unwrap().view();
    assert_differs(
        win.mean.get(w_hh).unwrap().view(),
        f,
        1e-3,
        "E[Windows] vs Full",
    );
    let d = grads_max_rel_diff(&c.params, &win.mean, &full.grads);
    let u = grads_max_rel_diff(&c.params, &ran.mean, &full.grads);
    println!("M3, T = 10, lengths 1..4: E[Windows] vs Full {d:e}, E[reweighted] vs Full {u:e}");
}

// ---------------------------------------------------------------------------------------
// Influence balancing: the exact bias of AWD's windows

/// The influence-balancing instance on plain `Vec<f64>` (no tape): the loss factors
/// `e_t = s_t⁽¹⁾ − 1` of the loss ½ (s_t⁽¹⁾ − 1)² along `s_t = A s_{t−1} + θσ` from
/// `s_0 = s*(θ)`, and `g_k = (A^k σ)₁`. Under full BPTT the loss at step t reaches θ's
/// use at step i ≤ t through `a_{i,t} = e_t g_{t−i}`, and ∂L/∂θ = Σ_{i ≤ t} a_{i,t}.
struct Oracle {
    /// e_t at index t − 1.
    e: Vec<f64>,
    /// g_k at index k.
    g: Vec<f64>,
}

impl Oracle {
    fn new(n: usize, p: usize, theta: f64, t_len: usize) -> Oracle {
        let sigma: Vec<f64> = (0..n).map(|i| if i < p { 1.0 } else { -1.0 }).collect();
        let a = |v: &[f64]| -> Vec<f64> {
            (0..n)
                .map(|i| 0.5 * v[i] + if i + 1 < n { 0.5 * v[i + 1] } else { 0.0 })
                .collect()
        };
        // s*_i = s*_{i+1} + 2θσ_i
        let mut s = vec![0.0; n];
        let mut next = 0.0;
        for i in (0..n).rev() {
            next += 2.0 * theta * sigma[i];
            s[i] = next;
        }
        let (mut e, mut g, mut v) = (Vec::new(), Vec::new(), sigma.clone());
        for _ in 0..t_len {
            s = a(&s)
                .iter()
                .zip(&sigma)
                .map(|(x, sg)| x + theta * sg)
                .collect();
            e.push(s[0] - 1.0);
            g.push(v[0]);
            v = a(&v);
        }
        Oracle { e, g }
    }

    /// Σ_{i ≤ t} a_{i,t} q(i, t) over 1 ≤ i ≤ t ≤ T (`q` 1-based).
    fn weighted(&self, q: impl Fn(usize, usize) -> f64) -> f64 {
        let t_len = self.e.len();
        (1..=t_len)
            .map(|t| {
                let inner: f64 = (1..=t).map(|i| self.g[t - i] * q(i, t)).sum();
                self.e[t - 1] * inner
            })
            .sum()
    }

    fn full(&self) -> f64 {
        self.weighted(|_, _| 1.0)
    }

    /// E[∂L/∂θ] under windows of the pmf `pmf` (index ℓ − 1): every pair weighted by the
    /// probability that i and t lie in one window ([`same_window`]).
    fn windows(&self, pmf: &[f64]) -> f64 {
        let q = same_window(pmf, self.e.len());
        self.weighted(|i, t| q[i][t])
    }
}

/// `q[i][t]` = P(steps i ≤ t lie in one window), for windows of iid lengths from `pmf`
/// laid from step 1, by the renewal recursion: `r(1) = 1`,
/// `r(j) = Σ_{ℓ < j} r(j − ℓ) p(ℓ)` (a window starts at j), and
/// `q(i, t) = Σ_{s ≤ i} r(s) P(L ≥ t − s + 1)` (the window holding i starts at s and
/// reaches t), accumulated over i. The survival is summed here from the pmf, not taken
/// from the library.
fn same_window(pmf: &[f64], t_len: usize) -> Vec<Vec<f64>> {
    let p = |l: usize| pmf.get(l - 1).copied().unwrap_or(0.0);
    // surv[m] = P(L ≥ m) for m = 1..=T + 1, suffix sums over the whole pmf.
    let mut surv = vec![0.0; t_len + 2];
    let mut tail: f64 = pmf.iter().skip(t_len + 1).sum();
    for m in (1..=t_len + 1).rev() {
        tail += p(m);
        surv[m] = tail;
    }
    let mut r = vec![0.0; t_len + 1];
    r[1] = 1.0;
    for j in 2..=t_len {
        r[j] = (1..j).map(|l| r[j - l] * p(l)).sum();
    }
    let mut q = vec![vec![0.0; t_len + 1]; t_len + 1];
    for i in 1..=t_len {
        for t in i..=t_len {
            q[i][t] = q[i - 1][t] + r[i] * surv[t - i + 1];
        }
    }
    q
}

/// The influence-balancing problem on the tape: the cell at θ, T steps of input 1 from
/// `s_0 = s*(θ)`, loss ½ (s_t⁽¹⁾ − 1)² at every step (squared error weighted ½).
struct Problem {
    params: Params<f64>,
    cell: Balance,
    xs: Array3<f64>,
    ys: Array3<f64>,
    weights: Vec<f64>,
    s0: Array2<f64>,
}

impl Problem {
    fn new(theta: f64, t_len: usize) -> Problem {
        let mut params = Params::new();
        let cell = Balance::new(&mut params, 23, 10, theta);
        let s0 = cell.fixed_point(theta);
        Problem {
            params,
            cell,
            xs: Array3::ones((t_len, 1, 1)),
            ys: Array3::ones((t_len, 1, 1)),
            weights: vec![0.5; t_len],
            s0,
        }
    }

    fn seq(&self) -> Sequence<'_, f64> {
        let loss = SequenceLoss::values(self.ys.view()).weighted(&self.weights);
        Sequence::new(self.xs.view(), loss).with_h0(self.s0.view())
    }

    fn report(&self, tr: Truncation) -> Report<f64> {
        bptt::run(&self.cell, &self.params, &self.seq(), &Run::new(tr)).unwrap()
    }

    /// ∂L/∂θ; checks on the way that the state stays at s* (to 1e-12).
    fn grad(&self, tr: Truncation) -> f64 {
        let r = self.report(tr);
        let drift = max_abs_diff(r.h_final.iter().copied(), self.s0.iter().copied());
        assert!(drift <= 1e-12, "s_T left the fixed point by {drift:e}");
        r.grads.get(self.cell.theta).unwrap()[[0, 0]]
    }
}

/// The oracle itself, checked where the answer is known independently: with every
/// window of one length k it is `Fixed { k }` on the tape (1e-10 relative: the same
/// sums over ≤ 400 steps in two orders), with windows longer than T it is `Full`
/// (likewise), and for a short sequence (T = 12, lengths 1..4) it is the exact
/// expectation of `Windows` by enumerating its 2¹² patterns on the tape (1e-10).
#[test]
fn influence_balancing_oracle_matches_fixed_full_and_enumeration() {
    let (theta, t) = (0.5, 400);
    let oracle = Oracle::new(23, 10, theta, t);
    let tape = Problem::new(theta, t);
    let full = tape.grad(Truncation::Full);
    assert!(
        (oracle.full() - full).abs() <= 1e-10 * full.abs(),
        "Full {full} vs {}",
        oracle.full()
    );
    let mut beyond = vec![0.0; t + 1];
    beyond[t] = 1.0;
    let o = oracle.windows(&beyond);
    assert!(
        (o - full).abs() <= 1e-10 * full.abs(),
        "windows past T: {o} vs Full {full}"
    );
    for k in [1, 7, 35, 70, 110] {
        let mut point = vec![0.0; k];
        point[k - 1] = 1.0;
        let o = oracle.windows(&point);
        let g = tape.grad(Truncation::Fixed { k });
        assert!(
            (o - g).abs() <= 1e-10 * g.abs(),
            "k = {k}: oracle {o} vs Fixed {g}"
        );
    }
    let short = Problem::new(theta, 12);
    let w = short_windows();
    let exact = windows_moments(&short.cell, &short.params, &short.seq(), &w).unwrap();
    let exact = exact.mean.get(short.cell.theta).unwrap()[[0, 0]];
    let o = Oracle::new(23, 10, theta, 12).windows(w.probabilities());
    assert!(
        (o - exact).abs() <= 1e-10 * exact.abs(),
        "T = 12: oracle {o} vs enumeration {exact}"
    );
}

/// B(ℓ) = Σ_{j ≤ ℓ} S_j for ℓ = 0..=kmax (B(0) = 0), S_j = Σ_{k < j} g_k: ∂L/∂θ of one
/// window of ℓ steps at the fixed point, over the loss factor e.
fn block_sums(g: &[f64], kmax: usize) -> Vec<f64> {
    let (mut s, mut b, mut out) = (0.0, 0.0, vec![0.0]);
    for &gk in g.iter().take(kmax) {
        s += gk;
        b += s;
        out.push(b);
    }
    out
}

/// **The bias of AWD's windows on influence balancing** (n = 23, p = 10, θ = 0.5, so
/// the loss factor is e = s*⁽¹⁾ − 1 = −4 at every step; T = 400 from s*(θ), a loss at
/// every step), for AWD's lengths with base 70 and with base 35.
///
/// The exact E[∂L/∂θ] of `Windows` comes from the oracle (pairs weighted by the renewal
/// probability of sharing a window). What is asserted, and why:
///
/// * A lower bound on the bias, derived without the oracle's pair weights. At the fixed
///   point a pattern's estimate is `e · Σ_w B(ℓ_w)` over its windows (the last one cut
///   short by T), with B(ℓ) > 0 for ℓ ≤ 109 and < 0 from 110 on (checked here;
///   FORMULAS.md). Let N be the number of windows drawn to cover T steps (a stopping
///   time, with Σ_{w ≤ N} ℓ_w ≥ T). Wald's identity gives `E[N] ≥ T / E[L]` and
///   `E[Σ_{w ≤ N} B(ℓ_w)] = E[N] E[B(L)]`; replacing the last window's drawn length by
///   its cut length costs at most `max_ℓ B(ℓ)` (and, if that window was drawn ≥ 110
///   long, at most `|min_ℓ B(ℓ)|`, with probability ≤ ε = T · P(L ≥ 110)). So when
///   E[B(L)] > 0,
///
///   ```text
///   E[Windows] / e  ≥  (T / E[L]) E[B(L)] − max_ℓ B(ℓ) − ε |min_ℓ B(ℓ)|  =: β,
///   ```
///
///   and if β > 0, E[Windows] has the sign of e, the opposite of `Full` = e · B(T)
///   (B(400) < 0), so `|E − Full| = |E| + |Full| ≥ |e| β + |Full|`. Asserted: β > 0,
///   the oracle's E has the opposite sign to `Full`, and its bias is at least the bound.
/// * The oracle's figures, printed.
/// * Seeded runs on the tape: the mean of N = 2000 `run`s with `Windows` (seeds
///   0..2000) lies within 4 standard errors of the oracle's E (the SE from the runs'
///   own spread, ~0.2% of E): the oracle and the sampler agree.
#[test]
fn influence_balancing_awd_windows_bias_is_exact_and_wrong_signed() {
    let (theta, t) = (0.5, 400);
    let oracle = Oracle::new(23, 10, theta, t);
    let e = oracle.e[0];
    assert!(
        oracle.e.iter().all(|&x| (x - e).abs() <= 1e-12),
        "not at the fixed point"
    );
    let b = block_sums(&oracle.g, t);
    assert!(b[1..=109].iter().all(|&x| x > 0.0) && b[110..].iter().all(|&x| x < 0.0));
    let full = oracle.full();
    assert!((full - e * b[t]).abs() <= 1e-9 * full.abs());
    let tape = Problem::new(theta, t);
    for base in [70, 35] {
        let w = awd(base);
        let exact = oracle.windows(w.probabilities());
        let bias = exact - full;
        let beta = wald_bound(&w, &b, t);
        let bound = e.abs() * beta + full.abs();
        println!(
            "base {base}: Full {full:.6}, E[Windows] {exact:.6}, bias {bias:.6} \
             ({:.4} × Full); derived |bias| ≥ {bound:.1}",
            bias / full
        );
        assert!(beta > 0.0, "base {base}: β = {beta}");
        assert!(exact * full < 0.0, "base {base}: E {exact}, Full {full}");
        assert!(
            bias.abs() >= bound,
            "base {base}: |bias| {} < {bound}",
            bias.abs()
        );
        let (mean, se) = mean_and_se(2000, |seed| {
            tape.grad(Truncation::Windows {
                lengths: w.clone(),
                seed,
            })
        });
        println!("base {base}: mean of 2000 runs {mean:.6} (SE {se:.6})");
        assert!(
            se > 0.0 && (mean - exact).abs() <= 4.0 * se,
            "base {base}: mean {mean} vs {exact} (SE {se})"
        );
    }
}

/// β of the derivation above: `(T / E[L]) E[B(L)] − max B − T P(L ≥ 110) |min B|`,
/// with B tabulated over the support (`b` reaches at least its end).
fn wald_bound(w: &WindowLengths, b: &[f64], t: usize) -> f64 {
    let end = *w.support().end();
    assert!(b.len() > end, "B must cover the support");
    assert!(b.iter().all(|x| x.is_finite()), "a non-finite B(ℓ)");
    let mean_b: f64 = w.support().map(|l| w.pmf(l) * b[l]).sum();
    assert!(mean_b > 0.0, "E[B(L)] = {mean_b}");
    // NaN-propagating folds (a NaN would make β NaN, and the β > 0 check fail).
    let max_b = b[1..=end].iter().copied().fold(f64::NEG_INFINITY, nan_max);
    let min_b = -b[1..=end]
        .iter()
        .map(|x| -x)
        .fold(f64::NEG_INFINITY, nan_max);
    let eps = t as f64 * w.survival(110);
    t as f64 / w.mean() * mean_b - max_b - eps * min_b.abs()
}

/// The mean of `f(seed)` over seeds 0..n and its standard error (Welford).
fn mean_and_se(n: u64, f: impl Fn(u64) -> f64) -> (f64, f64) {
    let (mut mean, mut m2) = (0.0, 0.0);
    for seed in 0..n {
        let g = f(seed);
        assert!(g.is_finite(), "seed {seed}: {g}");
        let d = g - mean;
        mean += d / (seed + 1) as f64;
        m2 += d * (g - mean);
    }
    (mean, (m2 / (n - 1) as f64 / n as f64).sqrt())
}

// ---------------------------------------------------------------------------------------
// Errors

/// Panics unless `r` is an `Error::InvalidArgument` of the op `op`; its message.
#[track_caller]
fn invalid_of<T: std::fmt::Debug>(r: Result<T, Error>, op: &str) -> String {
    match r {
        Err(Error::InvalidArgument { op: got, msg }) if got == op => msg,
        other => panic!("expected InvalidArgument from {op}, got {other:?}"),
    }
}

/// A bad pmf (empty, negative, NaN, infinite, not summing to 1 within 1e-12) and bad AWD
/// parameters (σ ≤ 0 or not finite, p_base outside [0, 1] or NaN, min = 0, base = 0, a
/// support past `MAX_WINDOW`), a bad reference length, a sampler of the wrong kind for
/// a stream, and pattern probabilities that are not a distribution: each an
/// `InvalidArgument` naming its op, never a panic.
#[test]
fn bad_window_lengths_are_invalid_argument_errors() {
    let from_pmf = "WindowLengths::from_pmf";
    for pmf in [
        vec![],
        vec![-0.1, 1.1],
        vec![f64::NAN, 1.0],
        vec![f64::INFINITY],
        vec![0.5, 0.4],
        vec![0.5, 0.5 + 1e-11],
        vec![0.0; 3],
        vec![f64::MAX, f64::MAX],
    ] {
        let msg = invalid_of(WindowLengths::from_pmf(pmf.clone()), from_pmf);
        assert!(!msg.is_empty(), "{pmf:?}");
    }
    assert!(WindowLengths::from_pmf(vec![0.5, 0.5 + 1e-13]).is_ok());
    let awd_op = "WindowLengths::awd";
    let d = Awd::default();
    for bad in [
        Awd { sigma: 0.0, ..d },
        Awd { sigma: -5.0, ..d },
        Awd {
            sigma: f64::NAN,
            ..d
        },
        Awd {
            sigma: f64::INFINITY,
            ..d
        },
        Awd { p_base: -0.01, ..d },
        Awd { p_base: 1.01, ..d },
        Awd {
            p_base: f64::NAN,
            ..d
        },
        Awd { min: 0, ..d },
        Awd { base: 0, ..d },
        Awd {
            base: usize::MAX,
            ..d
        },
        Awd { sigma: 1e300, ..d },
        Awd {
            min: usize::MAX,
            ..d
        },
    ] {
        invalid_of(WindowLengths::awd(bad), awd_op);
    }
    for ok in [
        Awd { p_base: 0.0, ..d },
        Awd { p_base: 1.0, ..d },
        Awd {
            base: 1,
            min: 1,
            ..d
        },
    ] {
        let w = WindowLengths::awd(ok).unwrap();
        let total: f64 = w.probabilities().iter().sum();
        assert!((total - 1.0).abs() <= 1e-12, "{ok:?}: {total}");
    }
    for r in [0.0, -1.0, f64::NAN, f64::INFINITY] {
        invalid_of(
            short_windows().with_reference(r),
            "WindowLengths::with_reference",
        );
    }
    assert_eq!(
        short_windows().with_reference(2.0).unwrap().lr_scale(3),
        1.5
    );

    let c = Case::new(Model::M3, 4, 1);
    let windows = Run::new(Truncation::Windows {
        lengths: short_windows(),
        seed: 1,
    });
    let fixed = Run::new(Truncation::Fixed { k: 2 });
    let pi_sampler = XiSampler::new(short_windows().unbiased_pi(), 1);
    let op = "Stream::with_sampler";
    let s = Stream::new(&c.cell, &c.params, 2, &windows).unwrap();
    invalid_of(s.with_sampler(pi_sampler.clone()).map(|_| ()), op);
    let s = Stream::new(&c.cell, &c.params, 2, &fixed).unwrap();
    invalid_of(s.with_sampler(pi_sampler).map(|_| ()), op);
    let s = stream(&c, &windows, None, 0..1);
    invalid_of(
        s.with_sampler(XiSampler::windows(short_windows(), 1))
            .map(|_| ()),
        op,
    );

    let seq = c.seq();
    for patterns in [
        vec![],
        vec![(vec![1.0; 4], 0.5)],
        vec![(vec![1.0; 4], f64::NAN), (vec![1.0; 4], 1.0)],
        vec![(vec![1.0; 4], -0.5), (vec![1.0; 4], 1.5)],
    ] {
        invalid_of(
            pattern_moments(&c.cell, &c.params, &seq, &patterns).map(|m| m.patterns),
            "pattern_moments",
        );
    }
}

/// The library's exact expectation at any length (`atlas::expectation`: a recursion over
/// the age of the current window on the tape's Jacobians) against the oracle's pair sums
/// weighted by the renewal probabilities (on plain `Vec`s, no tape): AWD's windows at
/// base 70 and 35, and the same windows reweighted (`unbiased_pi`), whose mean is `Full`.
/// Compared to 1e-9 relative: two f64 evaluations of sums over the 80 200 pairs (i, t)
/// of terms up to ~10² in different orders (≲ 1e-12 relative).
#[test]
fn the_age_recursion_gives_the_oracles_windows_mean_at_t_400() {
    let (theta, t) = (0.5, 400);
    let oracle = Oracle::new(23, 10, theta, t);
    let tape = Problem::new(theta, t);
    let seq = tape.seq();
    let grad = |g: &timetape::Grads<f64>| g.get(tape.cell.theta).unwrap()[[0, 0]];
    for base in [70, 35] {
        let w = awd(base);
        let want = oracle.windows(w.probabilities());
        let method = Method::Windows(w.clone());
        let got = grad(&atlas::expectation(&tape.cell, &tape.params, &seq, &method).unwrap());
        assert!(
            (got - want).abs() <= 1e-9 * want.abs(),
            "base {base}: {got} vs {want}"
        );
        let unbiased = Method::Randomized(w.unbiased_pi());
        let got = grad(&atlas::expectation(&tape.cell, &tape.params, &seq, &unbiased).unwrap());
        let full = oracle.full();
        assert!(
            (got - full).abs() <= 1e-9 * full.abs(),
            "base {base} reweighted: {got} vs {full}"
        );
    }
}
