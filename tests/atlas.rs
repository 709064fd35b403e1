//! The atlas of estimators (`bptt::atlas`): exact expectations by enumeration against
//! RTRL and the closed forms, and against 10^5 seeded runs.
//!
//! The model is the notes' M3 (tanh RNN, softmax cross-entropy at every step with step
//! weights α_t) with n = 3 hidden units, D = Q = 2, B = 1, T = 5: UORO then has
//! 2^{n·T} = 32768 sign vectors and KF-RTRL 2^T = 32 sign patterns, few enough to
//! enumerate.
//!
//! Tolerances. Exact expectations against RTRL / `Full` / the closed forms: 1e-12
//! relative to the largest entry of the reference (per parameter). The expectation is a
//! pairwise sum of ≤ 2^15 probability-weighted estimates, so its rounding grows with
//! log₂ 2^15 = 15 levels of additions: an error of at most about 15 · ε · E|ĝ| per
//! entry. E|ĝ| ≤ √(Var + mean²) is below 10² times the gradient's scale here (checked
//! below), which bounds the rounding near 15 · 100 · 1.1e-16 ≈ 2e-13. Monte Carlo: every entry of the
//! sample mean of N = 10^5 runs within 4 standard errors √(Var/N) of the exact mean,
//! with Var the exact (enumerated) variance, not a sample one; deterministic methods
//! (variance 0) must agree to rounding (1e-12 of the scale).

mod common;

use common::assert_grads_close;
use common::cases::{Case, Model, Shape};
use timetape::bptt::atlas::{self, Atlas, Method, Mode, Survey};
use timetape::bptt::online::{self, Estimator, Kronecker, Noise};
use timetape::bptt::{Pi, WindowLengths};
use timetape::{closed_form, Error, Grads, Params};

/// M3 with n = 3 hidden units, B = 1, D = Q = 2, T = 5; non-zero biases, W_hh in ±0.6.
fn small_case(t: usize, seed: u64) -> Case {
    Case::sized(Model::M3, Shape::new(t, 1, 2, 2), 3, 0.6, seed)
}

fn every_method(case: &Case) -> Vec<Method> {
    vec![
        Method::Full,
        Method::Fixed { k: 2 },
        Method::Tbptt { k1: 2, k2: 3 },
        Method::Randomized(Pi::Constant(0.6)),
        Method::Windows(short_windows()),
        Method::Rtrl,
        Method::Uoro,
        Method::KfRtrl(Kronecker::of(&case.cell)),
    ]
}

/// Windows of 1, 2 or 3 steps (probabilities ½, ¼, ¼): short enough to cut often at
/// T = 5.
fn short_windows() -> WindowLengths {
    WindowLengths::from_pmf(vec![0.5, 0.25, 0.25]).unwrap()
}

fn exact(case: &Case, methods: &[Method]) -> Atlas<f64> {
    let seq = case.seq();
    atlas::survey(
        &case.cell,
        &case.params,
        &seq,
        &Survey::new(methods, Mode::Exact),
    )
    .unwrap()
}

/// Every entry of a gradient, flattened in parameter order.
fn entries(params: &Params<f64>, g: &Grads<f64>) -> Vec<f64> {
    params
        .ids()
        .flat_map(|id| g.get(id).unwrap().iter().copied().collect::<Vec<_>>())
        .collect()
}

#[test]
fn uoro_and_kf_rtrl_are_unbiased_by_exact_enumeration() {
    for seed in [1, 2] {
        let case = small_case(5, seed);
        let a = exact(&case, &every_method(&case)[5..]);
        let [rtrl, uoro, kf] = [&a.entries[0], &a.entries[1], &a.entries[2]];
        assert_eq!((rtrl.draws, uoro.draws, kf.draws), (1, 1 << 15, 1 << 5));
        let p = &case.params;
        assert_grads_close(p, &rtrl.mean, &a.full, 1e-12, "RTRL = Full");
        // The rounding bound of the module docs: E|ĝ| ≤ √(E ĝ²) = √(Var + mean²) per
        // entry stays below 10² times the gradient's scale.
        let scale = common::finite_scale(entries(p, &a.full), "full gradient");
        let rms: Vec<f64> = entries(p, &uoro.variance)
            .iter()
            .zip(entries(p, &uoro.mean))
            .map(|(v, m)| (v + m * m).sqrt())
            .collect();
        assert!(common::max_abs(rms) <= 100.0 * scale);
        assert_grads_close(p, &uoro.mean, &rtrl.mean, 1e-12, "E[UORO] = RTRL");
        assert_grads_close(p, &kf.mean, &rtrl.mean, 1e-12, "E[KF-RTRL] = RTRL");
        // KF-RTRL's Kronecker factors carry much less noise than UORO's rank one.
        println!(
            "seed {seed}: tr Cov UORO {:e}, KF-RTRL {:e}",
            uoro.trace_cov, kf.trace_cov
        );
        assert!(kf.trace_cov.is_finite() && uoro.trace_cov.is_finite());
        assert!(kf.trace_cov > 0.0 && kf.trace_cov < uoro.trace_cov);
        assert_eq!(rtrl.trace_cov, 0.0);
    }
}

#[test]
fn randomized_is_unbiased_and_fixed_bias_is_the_truncated_closed_form() {
    let case = small_case(5, 3);
    let methods = [
        Method::Randomized(Pi::Constant(0.3)),
        Method::Randomized(Pi::hazard(|m| if m < 2 { 0.9 } else { 0.4 })),
        Method::Fixed { k: 1 },
        Method::Fixed { k: 2 },
        Method::Fixed { k: 3 },
    ];
    let a = exact(&case, &methods);
    for e in &a.entries[..2] {
        assert!(
            e.relative_bias <= 1e-12,
            "{}: bias {:e}",
            e.method,
            e.relative_bias
        );
        assert!(e.trace_cov > 0.0, "{}", e.method);
    }
    let seq = case.seq();
    let full = closed_form::m4(&case.params, &case.cell, &seq)
        .unwrap()
        .grads;
    let scale = common::finite_scale(entries(&case.params, &full), "full gradient");
    for (e, k) in a.entries[2..].iter().zip([1, 2, 3]) {
        let cut = closed_form::truncated_fixed(&case.params, &case.cell, &seq, k).unwrap();
        let want: Vec<f64> = entries(&case.params, &cut.grads)
            .iter()
            .zip(entries(&case.params, &full))
            .map(|(c, f)| c - f)
            .collect();
        let d = common::max_abs_diff(entries(&case.params, &e.bias), want.iter().copied());
        assert!(d <= 1e-12 * scale, "Fixed {{ k: {k} }}: bias off by {d:e}");
        assert!(
            common::max_abs(want) > 1e-3 * scale,
            "k = {k}: the bias is not small"
        );
        assert_eq!(e.trace_cov, 0.0);
    }
}

/// The age recursion of `atlas::expectation` against the enumeration of every pattern
/// (T = 5), and, at T = 60 where there are 2^60 patterns, against `Full` (unbiased).
#[test]
fn expectation_by_the_age_recursion_equals_enumeration() {
    let case = small_case(5, 6);
    let hazard = Pi::hazard(|m| if m < 2 { 0.9 } else { 0.4 });
    let schedule = Pi::schedule(|t| 0.3 + 0.1 * t as f64);
    let methods = [
        Method::Randomized(Pi::Constant(0.5)),
        Method::Randomized(hazard),
        Method::Randomized(schedule),
        Method::Windows(short_windows()),
        Method::Fixed { k: 2 },
    ];
    let a = exact(&case, &methods);
    let seq = case.seq();
    for (m, e) in methods.iter().zip(&a.entries) {
        let mean = atlas::expectation(&case.cell, &case.params, &seq, m).unwrap();
        assert_grads_close(&case.params, &mean, &e.mean, 1e-12, &m.name());
    }
    let long = small_case(60, 7);
    let seq = long.seq();
    let full = timetape::bptt::run(
        &long.cell,
        &long.params,
        &seq,
        &timetape::bptt::Run::new(timetape::bptt::Truncation::Full),
    )
    .unwrap();
    for pi in [
        Pi::Constant(0.2),
        Pi::hazard(|m| 1.0 / (1.0 + 0.1 * m as f64)),
    ] {
        let mean =
            atlas::expectation(&long.cell, &long.params, &seq, &Method::Randomized(pi)).unwrap();
        assert_grads_close(
            &long.params,
            &mean,
            &full.grads,
            1e-12,
            "E[Randomized] at T = 60",
        );
    }
    let err = atlas::expectation(&long.cell, &long.params, &seq, &Method::Uoro).unwrap_err();
    assert!(matches!(err, Error::InvalidArgument { .. }), "{err}");
}

#[test]
fn atlas_means_lie_within_four_standard_errors_of_seeded_runs() {
    let case = small_case(5, 4);
    let methods = every_method(&case);
    let ex = exact(&case, &methods);
    let seq = case.seq();
    let runs = 100_000;
    let mode = Mode::MonteCarlo { runs, seed: 17 };
    let mc = atlas::survey(&case.cell, &case.params, &seq, &Survey::new(&methods, mode)).unwrap();
    let p = &case.params;
    let scale = common::finite_scale(entries(p, &ex.full), "full gradient");
    for (e, m) in ex.entries.iter().zip(&mc.entries) {
        let random = e.trace_cov > 0.0;
        assert_eq!(m.draws, if random { runs } else { 1 }, "{}: runs", e.method);
        let mean = entries(p, &e.mean);
        let var = entries(p, &e.variance);
        let got = entries(p, &m.mean);
        for ((&x, &v), &y) in mean.iter().zip(&var).zip(&got) {
            let se = (v / runs as f64).sqrt();
            assert!(
                (x - y).abs() <= 4.0 * se + 1e-12 * scale,
                "{}: Monte Carlo mean {y} vs exact {x} (4 SE = {})",
                e.method,
                4.0 * se
            );
        }
        // The sample variance estimates the exact one (for UORO, whose fourth moments are
        // large, only loosely): within a factor 2 on the trace.
        if e.trace_cov > 0.0 {
            let r = m.trace_cov / e.trace_cov;
            assert!((0.5..2.0).contains(&r), "{}: tr Cov ratio {r}", e.method);
        }
        let steps_se = m.standard_errors.as_ref().unwrap().backward_steps;
        assert!((m.backward_steps - e.backward_steps).abs() <= 4.0 * steps_se + 1e-9);
        let bytes_se = m.standard_errors.as_ref().unwrap().peak_tape_bytes;
        assert!(
            (m.peak_tape_bytes - e.peak_tape_bytes).abs() <= 4.0 * bytes_se + 1e-9,
            "{}: peak bytes {} vs {}",
            e.method,
            m.peak_tape_bytes,
            e.peak_tape_bytes
        );
    }
    println!("exact:\n{ex}\nMonte Carlo:\n{mc}");
}

#[test]
fn monte_carlo_replays_are_the_streaming_runs() {
    let case = small_case(5, 5);
    let seq = case.seq();
    let kron = Kronecker::of(&case.cell);
    for (method, make) in [
        (
            Method::Uoro,
            Box::new(|s| Estimator::Uoro(Noise::Seeded(s))) as Box<dyn Fn(u64) -> Estimator>,
        ),
        (
            Method::KfRtrl(kron),
            Box::new(move |s| Estimator::KfRtrl {
                factors: kron,
                noise: Noise::Seeded(s),
            }),
        ),
    ] {
        let mode = Mode::MonteCarlo { runs: 2, seed: 40 };
        let methods = [method];
        let a =
            atlas::survey(&case.cell, &case.params, &seq, &Survey::new(&methods, mode)).unwrap();
        let r0 = online::run(&case.cell, &case.params, &seq, &make(40)).unwrap();
        let r1 = online::run(&case.cell, &case.params, &seq, &make(41)).unwrap();
        let mut avg = r0.grads.clone();
        avg.add_assign(&r1.grads).unwrap();
        avg.scale(0.5);
        assert_grads_close(
            &case.params,
            &a.entries[0].mean,
            &avg,
            1e-12,
            &methods[0].name(),
        );
        // Two seeds, two different estimates.
        assert!(r0.grads.max_rel_diff(&r1.grads) > 1e-6);
    }
}

#[test]
fn atlas_refuses_what_it_cannot_compute() {
    let case = small_case(6, 1);
    let seq = case.seq();
    // 2^{3·6} UORO sign vectors: too many to enumerate.
    let methods = [Method::Uoro];
    let err = atlas::survey(
        &case.cell,
        &case.params,
        &seq,
        &Survey::new(&methods, Mode::Exact),
    )
    .unwrap_err();
    assert!(matches!(err, Error::InvalidArgument { .. }), "{err}");
    // A loss whose weights are all 0: the full gradient is 0, no relative bias.
    let zero = vec![0.0; case.t()];
    let flat = case.seq_with(case.loss_with(&zero));
    let err = atlas::survey(
        &case.cell,
        &case.params,
        &flat,
        &Survey::new(&[Method::Full], Mode::Exact),
    )
    .unwrap_err();
    assert!(matches!(err, Error::InvalidArgument { .. }), "{err}");
    let one = Mode::MonteCarlo { runs: 1, seed: 0 };
    let err =
        atlas::survey(&case.cell, &case.params, &seq, &Survey::new(&methods, one)).unwrap_err();
    assert!(matches!(err, Error::InvalidArgument { .. }), "{err}");
}
