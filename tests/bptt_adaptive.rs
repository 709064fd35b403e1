//! Adaptive truncation (`Truncation::Adaptive`, after Aicher, Foti & Fox 2019): the decay
//! it estimates, its bound against the exactly computed bias, and its choice on the
//! influence-balancing instance of FORMULAS.md.

mod common;

use common::balance::Balance;
use common::cases::{Case, Data, Model, Shape};
use ndarray::Array2;
use timetape::bptt::{run, Adaptive, AdaptiveUpdate, Run, Truncation};
use timetape::rnn::{Gru, Recurrent, Sequence, SequenceLoss, Sizes};
use timetape::{init, Error, Params};

/// On M1 (linear) with W_hh = ρQ, Q orthogonal, the adjoint beyond an update's losses is
/// multiplied by W_hhᵀ at every step, whose norm is exactly ρ times the last: every
/// update's fitted decay is ρ. Compared to 1e-9: the least-squares slope of ≤ 30 exactly
/// collinear log-norms, each rounded to ~1e-16, is off by ≲ 1e-14.
#[test]
fn the_estimated_decay_of_a_scaled_orthogonal_linear_rnn_is_rho() {
    for (rho, seed) in [(0.9, 1), (0.6, 2), (0.97, 3)] {
        let case = Case::sized(Model::M1, Shape::new(120, 2, 3, 3), 5, 0.0, seed);
        let mut params = case.params.clone();
        let q = common::orthogonal(5, seed);
        params.set(case.cell.w_hh, (q * rho).view()).unwrap();
        let how = Adaptive::new(7, 0.05, 30);
        let r = run(
            &case.cell,
            &params,
            &case.seq(),
            &Run::new(Truncation::Adaptive(how)),
        )
        .unwrap();
        assert_eq!(r.adaptive.len(), 120usize.div_ceil(7));
        for u in &r.adaptive {
            if u.window > u.losses + 1 {
                assert!(
                    (u.decay - rho).abs() <= 1e-9,
                    "ρ = {rho}: decay {} at step {}",
                    u.decay,
                    u.step
                );
            }
        }
    }
}

/// The exact relative bias of truncating a window's losses at K lags: the gradient of the
/// losses of the last `k1` steps of a T-step sequence, with h detached at step T − K + 1
/// (`Pattern`), against the same losses' full gradient.
fn exact_relative_bias<C: Recurrent<f64>>(
    cell: &C,
    params: &Params<f64>,
    xs: &ndarray::Array3<f64>,
    labels: &Array2<usize>,
    (k1, k): (usize, usize),
) -> f64 {
    let t = xs.dim().0;
    let alphas: Vec<f64> = (0..t)
        .map(|s| if s + k1 >= t { 1.0 } else { 0.0 })
        .collect();
    let loss = SequenceLoss::classes(labels.view()).weighted(&alphas);
    let seq = Sequence::new(xs.view(), loss);
    let full = run(cell, params, &seq, &Run::new(Truncation::Full)).unwrap();
    let mut xi = vec![1.0; t];
    xi[t - k] = 0.0;
    let cut = run(cell, params, &seq, &Run::new(Truncation::Pattern(xi))).unwrap();
    let mut d = cut.grads.clone();
    let mut neg = full.grads.clone();
    neg.scale(-1.0);
    d.add_assign(&neg).unwrap();
    let r = d.global_norm() / full.grads.global_norm();
    assert!(r.is_finite());
    r
}

/// The update of an adaptive run at step `u`.
fn update_at<C: Recurrent<f64>>(
    cell: &C,
    params: &Params<f64>,
    seq: &Sequence<'_, f64>,
    how: Adaptive,
    u: usize,
) -> AdaptiveUpdate {
    let r = run(cell, params, seq, &Run::new(Truncation::Adaptive(how))).unwrap();
    r.adaptive.into_iter().find(|x| x.step == u).unwrap()
}

/// The update at step `t` of an adaptive run on `data`, and the exact relative bias of
/// truncating its losses at the window it chooses (or its own, if shorter).
fn measured_and_exact<C: Recurrent<f64>>(
    cell: &C,
    params: &Params<f64>,
    data: &Data,
    (how, t): (Adaptive, usize),
) -> (AdaptiveUpdate, f64) {
    let seq = Sequence::new(data.xs.view(), SequenceLoss::classes(data.labels.view()));
    let u = update_at(cell, params, &seq, how, t);
    let k = u.window.min(u.next_window);
    let bias = exact_relative_bias(cell, params, &data.xs, &data.labels, (how.k1, k));
    (u, bias)
}

/// Over 100 seeded windows (50 tanh RNNs, 50 GRUs, random weights and data, T = 45,
/// updates every 5 steps, δ = 0.1, windows up to 40), the bound an update reports for
/// the window it chooses is at or above the exact relative bias of truncating that
/// update's losses there, in at least 95 of them. The exact bias: the losses of steps
/// 41..45 alone, cut at that lag (`Pattern`) against `Full`, over all 45 steps.
#[test]
fn the_bound_covers_the_exact_bias_in_at_least_95_of_100_windows() {
    let (t, k1) = (45, 5);
    let how = Adaptive {
        k_first: Some(40),
        ..Adaptive::new(k1, 0.1, 40)
    };
    let mut covered = 0;
    let mut lines = Vec::new();
    for seed in 0..100u64 {
        let data = Data::new(Shape::new(t, 2, 3, 3), seed);
        let mut params = Params::<f64>::new();
        let (u, bias) = if seed % 2 == 0 {
            let cell = timetape::rnn::models::m3(&mut params, Sizes::new(3, 6, 3), seed).unwrap();
            let w = init::uniform((6, 6), 0.5, &mut init::rng(seed)).unwrap();
            params.set(cell.w_hh, w.view()).unwrap();
            measured_and_exact(&cell, &params, &data, (how, t))
        } else {
            let cell = Gru::new(&mut params, Sizes::new(3, 6, 3), seed).unwrap();
            measured_and_exact(&cell, &params, &data, (how, t))
        };
        let k = u.window.min(u.next_window);
        let bound = u.bound_at(k);
        covered += usize::from(bound >= bias);
        lines.push(format!(
            "seed {seed}: window {} K {k} decay {:.3} bound {bound:.3e} exact {bias:.3e}",
            u.window, u.decay
        ));
    }
    println!("{}", lines.join("\n"));
    assert!(covered >= 95, "the bound held in {covered} of 100 windows");
}

/// Influence balancing, n = 23, p = 10 (FORMULAS.md): every window shorter than 41 steps
/// gives ∂L/∂θ the wrong sign, and the adjoint decays slowly (A is ½(I + J), a
/// Jordan-like block): for every δ < 1 the updates choose windows of at least 41.
#[test]
fn on_influence_balancing_every_chosen_window_is_at_least_41() {
    let mut params = Params::<f64>::new();
    let cell = Balance::new(&mut params, 23, 10, 0.5);
    let t = 600;
    let ones = ndarray::Array3::<f64>::ones((t, 1, 1));
    let targets = ndarray::Array3::<f64>::ones((t, 1, 1));
    let s0 = cell.fixed_point(0.5);
    for delta in [0.99, 0.9, 0.5, 0.1, 0.01] {
        let how = Adaptive {
            k_first: Some(100),
            ..Adaptive::new(10, delta, 300)
        };
        let weights = vec![0.5; t];
        let loss = SequenceLoss::values(targets.view()).weighted(&weights);
        let seq = Sequence::new(ones.view(), loss).with_h0(s0.view());
        let r = run(&cell, &params, &seq, &Run::new(Truncation::Adaptive(how))).unwrap();
        for u in &r.adaptive[..r.adaptive.len() - 1] {
            assert!(
                u.next_window >= 41,
                "δ = {delta}: window {} after step {}",
                u.next_window,
                u.step
            );
        }
        // Not only by falling back to k_max: the bound itself chose windows (≤ δ), and
        // those are ≥ 41 too, while every shorter one was above δ.
        let chosen: Vec<_> = r.adaptive.iter().filter(|u| u.bound <= delta).collect();
        assert!(
            chosen.len() >= 10,
            "δ = {delta}: {} windows chosen by the bound",
            chosen.len()
        );
        for u in chosen {
            assert!(u.next_window >= 41 && (11..41).all(|k| u.bound_at(k) > delta));
        }
        println!(
            "δ = {delta}: windows {:?}",
            r.adaptive.iter().map(|u| u.next_window).collect::<Vec<_>>()
        );
    }
}

#[test]
fn bad_adaptive_parameters_are_refused() {
    let case = Case::new(Model::M3, 10, 1);
    let seq = case.seq();
    for how in [
        Adaptive::new(0, 0.1, 10),
        Adaptive::new(5, 0.1, 5),
        Adaptive::new(2, 0.0, 10),
        Adaptive::new(2, f64::NAN, 10),
        Adaptive {
            k_first: Some(2),
            ..Adaptive::new(2, 0.1, 10)
        },
        Adaptive::new(2, 0.1, usize::MAX),
    ] {
        let err = run(
            &case.cell,
            &case.params,
            &seq,
            &Run::new(Truncation::Adaptive(how)),
        )
        .unwrap_err();
        assert!(
            matches!(err, Error::InvalidArgument { .. }),
            "{how:?}: {err}"
        );
    }
}
