//! The online estimators of `bptt::online` against the reverse-mode runner: RTRL carries
//! the influence matrix forward (`M_t = J^θ_t + ξ_t J^h_t M_{t−1}`) and must give the
//! gradient of `Full` (ξ ≡ 1) and of `Pattern(ξ)` (any ξ): the forward and reverse forms
//! of the same sum. Compared to 1e-12 relative per parameter (the largest entry of the
//! reverse gradient as the scale): the two sum the same O(1) products in f64 in another
//! order over ≤ 8 steps, which leaves differences of a few 1e-16 relative; 1e-12 leaves
//! room for the cancellations of a longer sum without hiding a wrong term (a missing or
//! doubled term changes the result at order 1e-2 or more here).

mod common;

use common::assert_grads_close;
use common::cases::{Case, Data, Model, Shape, MODELS};
use ndarray::Array3;
use timetape::bptt::online::{self, Estimator, Noise};
use timetape::bptt::{run, Pi, Run, Truncation};
use timetape::rnn::{Gru, Lstm, Recurrent, Sequence, Sizes, Stack};
use timetape::{Error, Params};

/// Exact agreement of RTRL with the reverse run of the same truncation.
fn rtrl_matches_reverse<C: Recurrent<f64>>(
    cell: &C,
    params: &Params<f64>,
    seq: &Sequence<'_, f64>,
    tr: Truncation,
    what: &str,
) {
    let fwd = online::run(cell, params, seq, &Estimator::Rtrl(tr.clone())).unwrap();
    let rev = run(cell, params, seq, &Run::new(tr)).unwrap();
    assert_grads_close(params, &fwd.grads, &rev.grads, 1e-12, what);
    assert!(
        (fwd.loss - rev.loss).abs() <= 1e-12 * rev.loss.abs(),
        "{what}: loss"
    );
    assert_eq!(fwd.h_final, rev.h_final, "{what}: h_T");
    assert_eq!(fwd.xi, rev.xi, "{what}: ξ reported");
}

#[test]
fn rtrl_equals_full_bptt_on_the_notes_models() {
    for model in MODELS {
        for case in [Case::new(model, 8, 3), Case::new(model, 6, 4).with_h0(9)] {
            let what = format!("{model:?}");
            rtrl_matches_reverse(
                &case.cell,
                &case.params,
                &case.seq(),
                Truncation::Full,
                &what,
            );
        }
    }
}

#[test]
fn rtrl_equals_full_bptt_on_gru_lstm_and_a_stack() {
    let shape = Shape::new(7, 2, 3, 3);
    let data = Data::new(shape, 11);
    let seq = data.seq(data.classes());
    let mut params = Params::<f64>::new();
    let gru = Gru::new(&mut params, Sizes::new(3, 4, 3), 1).unwrap();
    rtrl_matches_reverse(&gru, &params, &seq, Truncation::Full, "GRU");
    let mut params = Params::<f64>::new();
    let lstm = Lstm::new(&mut params, Sizes::new(3, 3, 3), 2).unwrap();
    rtrl_matches_reverse(&lstm, &params, &seq, Truncation::Full, "LSTM");
    let mut params = Params::<f64>::new();
    let stack = Stack::new(vec![
        Gru::named(&mut params, "l0.", Sizes::new(3, 3, 3), 3).unwrap(),
        Gru::named(&mut params, "l1.", Sizes::new(3, 2, 3), 4).unwrap(),
    ])
    .unwrap();
    rtrl_matches_reverse(&stack, &params, &seq, Truncation::Full, "stack of GRUs");
}

#[test]
fn rtrl_with_a_pattern_of_xi_equals_the_reverse_pattern() {
    let patterns = [
        vec![1.0, 2.0, 0.0, 1.25, 4.0, 0.0, 0.0, 1.0],
        vec![0.5, 0.0, 3.0, 3.0, 1.0, -1.5, 2.0, 0.0],
    ];
    for model in MODELS {
        let case = Case::new(model, 8, 5).with_h0(1);
        for xi in &patterns {
            let what = format!("{model:?} with ξ = {xi:?}");
            let tr = Truncation::Pattern(xi.clone());
            rtrl_matches_reverse(&case.cell, &case.params, &case.seq(), tr, &what);
        }
    }
    let case = Case::new(Model::M3, 8, 6);
    let randomized = Truncation::Randomized {
        pi: Pi::Constant(0.6),
        seed: 4,
    };
    rtrl_matches_reverse(
        &case.cell,
        &case.params,
        &case.seq(),
        randomized,
        "Randomized",
    );
    let fixed = Truncation::Fixed { k: 3 };
    rtrl_matches_reverse(
        &case.cell,
        &case.params,
        &case.seq(),
        fixed,
        "Fixed { k: 3 }",
    );
}

#[test]
fn rtrl_on_lstm_with_a_pattern_equals_the_reverse_pattern() {
    let data = Data::new(Shape::new(6, 1, 2, 3), 12);
    let seq = data.seq(data.classes());
    let mut params = Params::<f64>::new();
    let lstm = Lstm::new(&mut params, Sizes::new(2, 3, 3), 7).unwrap();
    let xi = vec![1.0, 1.5, 0.0, 2.0, 1.0, 3.0];
    rtrl_matches_reverse(
        &lstm,
        &params,
        &seq,
        Truncation::Pattern(xi),
        "LSTM pattern",
    );
}

#[test]
fn estimators_refuse_what_they_cannot_run() {
    let case = Case::new(Model::M3, 4, 1);
    let seq = case.seq();
    let tbptt = Estimator::Rtrl(Truncation::Tbptt { k1: 2, k2: 3 });
    let err = online::run(&case.cell, &case.params, &seq, &tbptt).unwrap_err();
    assert!(matches!(err, Error::InvalidArgument { .. }), "{err}");
    // B = 2, S = 4: UORO needs 8 signs a step, 32 in all.
    let short = Estimator::Uoro(Noise::Signs(vec![1; 31]));
    let err = online::run(&case.cell, &case.params, &seq, &short).unwrap_err();
    assert!(matches!(err, Error::ShapeMismatch { .. }), "{err}");
    let zero = Estimator::Uoro(Noise::Signs(vec![0; 32]));
    let err = online::run(&case.cell, &case.params, &seq, &zero).unwrap_err();
    assert!(matches!(err, Error::InvalidArgument { .. }), "{err}");
    // KF-RTRL's factors must fit the cell they run with.
    let mut other = Params::<f64>::new();
    let wide = timetape::rnn::models::m3(&mut other, Sizes::new(3, 5, 3), 0).unwrap();
    let kf = Estimator::KfRtrl {
        factors: online::Kronecker::of(&wide),
        noise: Noise::Seeded(1),
    };
    let err = online::run(&case.cell, &case.params, &seq, &kf).unwrap_err();
    assert!(
        matches!(
            err,
            Error::ShapeMismatch { .. } | Error::ForeignParam { .. }
        ),
        "{err}"
    );
    // The factors of another RNN of the same shapes in the same store.
    let mut params = case.params.clone();
    let twin = timetape::rnn::Rnn::new(
        &mut params,
        timetape::rnn::RnnConfig::new(3, 4, 3).named("twin."),
        9,
    )
    .unwrap();
    let kf = Estimator::KfRtrl {
        factors: online::Kronecker::of(&twin),
        noise: Noise::Seeded(1),
    };
    let err = online::run(&case.cell, &params, &seq, &kf).unwrap_err();
    assert!(matches!(err, Error::InvalidArgument { .. }), "{err}");
    let empty = Array3::<f64>::zeros((0, 2, 3));
    let labels = ndarray::Array2::<usize>::zeros((0, 2));
    let seq = Sequence::new(
        empty.view(),
        timetape::rnn::SequenceLoss::classes(labels.view()),
    );
    let rtrl = Estimator::Rtrl(Truncation::Full);
    let err = online::run(&case.cell, &case.params, &seq, &rtrl).unwrap_err();
    assert!(matches!(err, Error::EmptyInput { .. }), "{err}");
}

/// With the parameters held fixed, the per-step estimates of an `OnlineStream` add up to
/// `online::run`'s gradient for the same estimator (same seed: the same ξ and signs), and
/// its losses to the run's loss (1e-12: the same sums in another order).
#[test]
fn an_online_stream_with_fixed_parameters_adds_up_to_the_run() {
    let case = Case::new(Model::M3, 9, 8).with_h0(0);
    let case = Case { h0: None, ..case };
    let seq = case.seq();
    let weights = case.weights();
    let estimators = [
        Estimator::Rtrl(Truncation::Full),
        Estimator::Rtrl(Truncation::Randomized {
            pi: Pi::Constant(0.6),
            seed: 2,
        }),
        Estimator::Rtrl(Truncation::randomized_rows(Pi::Constant(0.5), 4, 2)),
        Estimator::Uoro(Noise::Seeded(3)),
        Estimator::KfRtrl {
            factors: online::Kronecker::of(&case.cell),
            noise: Noise::Seeded(5),
        },
    ];
    for est in estimators {
        let want = online::run(&case.cell, &case.params, &seq, &est).unwrap();
        let mut stream = online::OnlineStream::new(&case.cell, &case.params, 2, &est).unwrap();
        let mut sum = timetape::Grads::zeros_like(&case.params);
        let mut loss = 0.0;
        for (t, &alpha) in weights.iter().enumerate() {
            let x = case.data.xs.index_axis(ndarray::Axis(0), t);
            let labels: Vec<usize> = case.data.labels.row(t).to_vec();
            let mut step = stream
                .push(
                    &case.params,
                    x,
                    timetape::bptt::StepTarget::Classes(&labels),
                )
                .unwrap();
            // The stream's loss is unweighted; the run's weights step t by α_t.
            step.grads.scale(alpha);
            sum.add_assign(&step.grads).unwrap();
            loss += alpha * step.loss;
        }
        assert_grads_close(&case.params, &sum, &want.grads, 1e-12, &format!("{est:?}"));
        assert!(
            (loss - want.loss).abs() <= 1e-12 * want.loss.abs(),
            "{est:?}: loss"
        );
    }
}

#[test]
fn an_online_stream_refuses_what_it_cannot_run() {
    let case = Case::new(Model::M3, 4, 1);
    let est = Estimator::Uoro(Noise::Signs(vec![1; 8]));
    let mut stream = online::OnlineStream::new(&case.cell, &case.params, 2, &est).unwrap();
    let x = case.data.xs.index_axis(ndarray::Axis(0), 0);
    let labels: Vec<usize> = case.data.labels.row(0).to_vec();
    let target = timetape::bptt::StepTarget::Classes(&labels);
    stream.push(&case.params, x, target).unwrap();
    // Eight signs were one step's worth.
    let err = stream.push(&case.params, x, target).unwrap_err();
    assert!(matches!(err, Error::InvalidArgument { .. }), "{err}");
    let other = Case::new(Model::M1, 4, 1);
    let mut stream = online::OnlineStream::new(
        &case.cell,
        &case.params,
        2,
        &Estimator::Rtrl(Truncation::Full),
    )
    .unwrap();
    let err = stream.push(&other.params, x, target).unwrap_err();
    assert!(
        matches!(
            err,
            Error::InvalidArgument { .. } | Error::ShapeMismatch { .. }
        ),
        "{err}"
    );
    let tbptt = Estimator::Rtrl(Truncation::Tbptt { k1: 2, k2: 3 });
    assert!(online::OnlineStream::new(&case.cell, &case.params, 2, &tbptt).is_err());
    assert!(online::OnlineStream::new(&case.cell, &case.params, 0, &est).is_err());
}
