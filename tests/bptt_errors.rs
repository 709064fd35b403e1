//! Bad input to the `bptt` module is an `Err` with the right `timetape::Error` variant,
//! never a panic (a panic fails these tests too), for `run`, `Stream`, `checkpointed`
//! and `enumerate`.

mod common;

use common::cases::{Data, Shape};
use ndarray::{Array1, Array2, Array3};
use timetape::bptt::{self, enumerate, Pi, StepTarget, Stream, Truncation};
use timetape::bptt::{Memory, Run};
use timetape::rnn::{models, Rnn, Sequence, SequenceLoss, Sizes};
use timetape::{Error, Params};

struct Setup {
    params: Params<f64>,
    cell: Rnn,
    data: Data,
}

/// M3 with D = 2, H = 3, Q = 2 (the weights of `models::m3`); T = 6, B = 1, inputs and
/// labels from the shared `Data`.
fn setup() -> Setup {
    let mut params = Params::<f64>::new();
    let cell = models::m3(&mut params, Sizes::new(2, 3, 2), 0).unwrap();
    let data = Data::new(Shape::new(6, 1, 2, 2), 0);
    Setup { params, cell, data }
}

fn run_err(s: &Setup, tr: Truncation) -> Error {
    let loss = SequenceLoss::classes(s.data.labels.view());
    match bptt::run(
        &s.cell,
        &s.params,
        &Sequence::new(s.data.xs.view(), loss),
        &Run::new(tr.clone()),
    ) {
        Ok(_) => panic!("{tr:?} was accepted"),
        Err(e) => e,
    }
}

fn is_invalid(e: &Error) -> bool {
    matches!(e, Error::InvalidArgument { .. })
}

#[test]
fn bad_truncation_parameters() {
    let s = setup();
    let bad = [
        Truncation::Fixed { k: 0 },
        Truncation::Tbptt { k1: 0, k2: 3 },
        Truncation::Tbptt { k1: 0, k2: 0 },
        Truncation::Tbptt { k1: 3, k2: 2 },
        Truncation::Randomized {
            pi: Pi::Constant(0.0),
            seed: 0,
        },
        Truncation::Randomized {
            pi: Pi::Constant(1.5),
            seed: 0,
        },
        Truncation::Randomized {
            pi: Pi::Constant(-0.2),
            seed: 0,
        },
        Truncation::Randomized {
            pi: Pi::Constant(f64::NAN),
            seed: 0,
        },
        Truncation::Randomized {
            pi: Pi::Constant(f64::INFINITY),
            seed: 0,
        },
        // A schedule that is fine except at step 4.
        Truncation::Randomized {
            pi: Pi::schedule(|t| if t == 4 { 0.0 } else { 0.5 }),
            seed: 0,
        },
        Truncation::Randomized {
            pi: Pi::schedule(|_| f64::NAN),
            seed: 0,
        },
        // A hazard that exceeds 1 once a segment has 2 steps.
        Truncation::Randomized {
            pi: Pi::hazard(|m| if m >= 2 { 1.01 } else { 0.99 }),
            seed: 0,
        },
        Truncation::Pattern(vec![1.0, 0.0, f64::NAN, 1.0, 1.0, 1.0]),
        Truncation::Pattern(vec![1.0, f64::INFINITY, 1.0, 1.0, 1.0, 1.0]),
    ];
    for tr in bad {
        let e = run_err(&s, tr.clone());
        assert!(is_invalid(&e), "{tr:?}: {e:?}");
        // The same truncation is refused by checkpoint-free streaming too (where the
        // error can only show once the offending step is pushed).
        let mut st = match Stream::new(&s.cell, &s.params, 1, &Run::new(tr.clone())) {
            Ok(st) => st,
            Err(e) => {
                assert!(is_invalid(&e), "Stream::new {tr:?}: {e:?}");
                continue;
            }
        };
        let mut failed = false;
        for t in 0..6 {
            let x = Array2::from_elem((1, 2), 0.1 * t as f64);
            if let Err(e) = st.push(x.view(), StepTarget::Classes(&[t % 2]), 1.0) {
                assert!(is_invalid(&e), "Stream::push {tr:?}: {e:?}");
                failed = true;
                break;
            }
        }
        assert!(failed, "Stream accepted {tr:?}");
    }
}

#[test]
fn pattern_of_the_wrong_length() {
    let s = setup();
    for len in [0, 5, 7] {
        let e = run_err(&s, Truncation::Pattern(vec![1.0; len]));
        assert!(matches!(e, Error::ShapeMismatch { .. }), "len {len}: {e:?}");
    }
    // A stream cannot know T in advance; it refuses the step the pattern lacks.
    let mut st = Stream::new(
        &s.cell,
        &s.params,
        1,
        &Run::new(Truncation::Pattern(vec![1.0; 3])),
    )
    .unwrap();
    let x = Array2::zeros((1, 2));
    for _ in 0..3 {
        st.push(x.view(), StepTarget::Classes(&[0]), 1.0).unwrap();
    }
    let e = st
        .push(x.view(), StepTarget::Classes(&[0]), 1.0)
        .unwrap_err();
    assert!(is_invalid(&e), "{e:?}");
}

#[test]
fn empty_sequence() {
    let s = setup();
    let xs = Array3::<f64>::zeros((0, 1, 2));
    let labels = Array2::<usize>::zeros((0, 1));
    let loss = SequenceLoss::classes(labels.view());
    let strategies = [
        Truncation::Full,
        Truncation::Fixed { k: 2 },
        Truncation::Tbptt { k1: 2, k2: 4 },
        Truncation::Randomized {
            pi: Pi::Constant(0.5),
            seed: 0,
        },
        Truncation::Pattern(vec![]),
    ];
    for tr in strategies {
        let e = bptt::run(
            &s.cell,
            &s.params,
            &Sequence::new(xs.view(), loss),
            &Run::new(tr.clone()),
        )
        .unwrap_err();
        assert!(matches!(e, Error::EmptyInput { .. }), "{tr:?}: {e:?}");
    }
    let e = bptt::run(
        &s.cell,
        &s.params,
        &Sequence::new(xs.view(), loss),
        &Run::new(Truncation::Full).memory(Memory::Checkpointed { stride: None }),
    )
    .unwrap_err();
    assert!(matches!(e, Error::EmptyInput { .. }), "checkpointed: {e:?}");
    let e = enumerate::randomized_moments(
        &s.cell,
        &s.params,
        &Sequence::new(xs.view(), loss),
        &Pi::Constant(0.5),
    )
    .unwrap_err();
    assert!(matches!(e, Error::EmptyInput { .. }), "enumerate: {e:?}");
    // No batch rows.
    let xs = Array3::<f64>::zeros((6, 0, 2));
    let labels = Array2::<usize>::zeros((6, 0));
    let loss = SequenceLoss::classes(labels.view());
    let e = bptt::run(
        &s.cell,
        &s.params,
        &Sequence::new(xs.view(), loss),
        &Run::new(Truncation::Full),
    )
    .unwrap_err();
    assert!(matches!(e, Error::EmptyInput { .. }), "B = 0: {e:?}");
}

/// Every strategy of `run`, and `checkpointed`, refuses `loss` with an error `want`.
fn check<'a>(s: &'a Setup, loss: SequenceLoss<'a, f64>, what: &str, want: fn(&Error) -> bool) {
    for tr in [
        Truncation::Full,
        Truncation::Fixed { k: 2 },
        Truncation::Tbptt { k1: 2, k2: 3 },
    ] {
        let e = bptt::run(
            &s.cell,
            &s.params,
            &Sequence::new(s.data.xs.view(), loss),
            &Run::new(tr.clone()),
        )
        .unwrap_err();
        assert!(want(&e), "{what} {tr:?}: {e:?}");
    }
    let e = bptt::run(
        &s.cell,
        &s.params,
        &Sequence::new(s.data.xs.view(), loss),
        &Run::new(Truncation::Full).memory(Memory::Checkpointed { stride: Some(2) }),
    )
    .unwrap_err();
    assert!(want(&e), "{what} checkpointed: {e:?}");
}

#[test]
fn targets_that_do_not_fit() {
    let s = setup();
    fn shape(e: &Error) -> bool {
        matches!(e, Error::ShapeMismatch { .. })
    }
    fn range(e: &Error) -> bool {
        matches!(
            e,
            Error::LabelOutOfRange {
                label: 2,
                classes: 2,
                ..
            }
        )
    }
    // Labels for T = 5 and T = 7 steps, inputs for 6.
    let short = Array2::<usize>::zeros((5, 1));
    check(
        &s,
        SequenceLoss::classes(short.view()).into(),
        "T = 5 labels",
        shape,
    );
    let long = Array2::<usize>::zeros((7, 1));
    check(
        &s,
        SequenceLoss::classes(long.view()).into(),
        "T = 7 labels",
        shape,
    );
    // Labels for 2 batch rows, inputs for 1.
    let wide = Array2::<usize>::zeros((6, 2));
    check(
        &s,
        SequenceLoss::classes(wide.view()).into(),
        "B = 2 labels",
        shape,
    );
    // Label 2 with 2 classes.
    let mut bad = s.data.labels.clone();
    bad[[3, 0]] = 2;
    check(
        &s,
        SequenceLoss::classes(bad.view()).into(),
        "label 2",
        range,
    );
    // Step weights of the wrong length.
    let w = vec![1.0; 5];
    check(
        &s,
        SequenceLoss::classes(s.data.labels.view())
            .weighted(&w)
            .into(),
        "5 weights",
        shape,
    );
    // Value targets of the wrong width.
    let v = Array3::<f64>::zeros((6, 1, 3));
    check(
        &s,
        SequenceLoss::values(v.view()).into(),
        "Q = 3 values",
        shape,
    );
    // A last-step binary target on a cell with 2 outputs.
    let y = Array1::from(vec![1.0]);
    let binary = SequenceLoss::last_binary(y.view()).into();
    check(&s, binary, "LastBinary, Q = 2", is_invalid);
    // A last-step real target of the wrong width, of the wrong batch, or not finite.
    let narrow = Array2::<f64>::zeros((1, 3));
    let last = SequenceLoss::last_values(narrow.view()).into();
    check(&s, last, "LastValues, Q = 3", shape);
    let tall = Array2::<f64>::zeros((2, 2));
    let last = SequenceLoss::last_values(tall.view())
        .sum_over_batch()
        .into();
    check(&s, last, "LastValues, B = 2", shape);
    let nan = Array2::from_elem((1, 2), f64::NAN);
    let last = SequenceLoss::last_values(nan.view()).into();
    check(&s, last, "LastValues, NaN", |e| {
        matches!(
            e,
            Error::NonFinite {
                op: "SequenceLoss",
                ..
            }
        )
    });
    // An h_0 of the wrong shape.
    let h0 = Array2::<f64>::zeros((1, 4));
    let loss = SequenceLoss::classes(s.data.labels.view());
    let e = bptt::run(
        &s.cell,
        &s.params,
        &Sequence::new(s.data.xs.view(), loss).with_h0(h0.view()),
        &Run::new(Truncation::Full),
    )
    .unwrap_err();
    assert!(shape(&e), "h0: {e:?}");
}

#[test]
fn stream_errors() {
    let s = setup();
    // TBPTT with k2 ≠ k1 needs the whole sequence.
    let e = Stream::new(
        &s.cell,
        &s.params,
        1,
        &Run::new(Truncation::Tbptt { k1: 2, k2: 4 }),
    )
    .err()
    .unwrap();
    assert!(is_invalid(&e), "{e:?}");
    // Bad parameters are refused up front where they can be.
    for tr in [
        Truncation::Fixed { k: 0 },
        Truncation::Tbptt { k1: 3, k2: 2 },
        Truncation::Randomized {
            pi: Pi::Constant(0.0),
            seed: 1,
        },
    ] {
        let e = Stream::new(&s.cell, &s.params, 1, &Run::new(tr.clone()))
            .err()
            .unwrap();
        assert!(is_invalid(&e), "{tr:?}: {e:?}");
    }
    // A batch of no rows.
    let e = Stream::new(&s.cell, &s.params, 0, &Run::new(Truncation::Full))
        .err()
        .unwrap();
    assert!(matches!(e, Error::EmptyInput { .. }), "{e:?}");
    // finish with no steps.
    let st = Stream::new(&s.cell, &s.params, 1, &Run::new(Truncation::Full)).unwrap();
    let e = st.finish().err().unwrap();
    assert!(matches!(e, Error::EmptyInput { .. }), "{e:?}");
    // Bad steps.
    let mut st = Stream::new(&s.cell, &s.params, 1, &Run::new(Truncation::Fixed { k: 2 })).unwrap();
    let x = Array2::<f64>::zeros((1, 2));
    let e = st
        .push(
            Array2::<f64>::zeros((1, 3)).view(),
            StepTarget::Classes(&[0]),
            1.0,
        )
        .unwrap_err();
    assert!(
        matches!(e, Error::ShapeMismatch { .. }),
        "input width: {e:?}"
    );
    let e = st
        .push(
            Array2::<f64>::zeros((2, 2)).view(),
            StepTarget::Classes(&[0, 1]),
            1.0,
        )
        .unwrap_err();
    assert!(matches!(e, Error::ShapeMismatch { .. }), "batch: {e:?}");
    let e = st
        .push(x.view(), StepTarget::Classes(&[0, 1]), 1.0)
        .unwrap_err();
    assert!(matches!(e, Error::ShapeMismatch { .. }), "labels: {e:?}");
    let e = st
        .push(x.view(), StepTarget::Classes(&[2]), 1.0)
        .unwrap_err();
    assert!(
        matches!(e, Error::LabelOutOfRange { label: 2, .. }),
        "{e:?}"
    );
    let e = st
        .push(x.view(), StepTarget::Classes(&[0]), f64::NAN)
        .unwrap_err();
    assert!(is_invalid(&e), "α = NaN: {e:?}");
    let e = st
        .push(
            Array2::from_elem((1, 2), f64::INFINITY).view(),
            StepTarget::Classes(&[0]),
            1.0,
        )
        .unwrap_err();
    assert!(matches!(e, Error::NonFinite { .. }), "x = ∞: {e:?}");
    // None of the refused steps was taken; a good step still works.
    assert_eq!(st.steps(), 0);
    st.push(x.view(), StepTarget::Classes(&[1]), 1.0).unwrap();
    // Mixing target kinds.
    let v = Array2::<f64>::zeros((1, 2));
    let e = st
        .push(x.view(), StepTarget::Values(v.view()), 1.0)
        .unwrap_err();
    assert!(is_invalid(&e), "mixed kinds: {e:?}");
    let e = st
        .push(
            x.view(),
            StepTarget::Values(Array2::<f64>::zeros((1, 3)).view()),
            1.0,
        )
        .unwrap_err();
    assert!(
        matches!(e, Error::ShapeMismatch { .. }),
        "value width: {e:?}"
    );
    assert_eq!(st.steps(), 1);
    let r = st.finish().unwrap();
    assert_eq!(r.backward_steps, 1);
    // A wrong h_0.
    let st = Stream::new(&s.cell, &s.params, 1, &Run::new(Truncation::Full)).unwrap();
    let e = st
        .with_initial_state(Array2::<f64>::zeros((1, 2)).view())
        .err()
        .unwrap();
    assert!(matches!(e, Error::ShapeMismatch { .. }), "{e:?}");
}

#[test]
fn checkpointed_stride_zero() {
    let s = setup();
    let loss = SequenceLoss::classes(s.data.labels.view());
    let e = bptt::run(
        &s.cell,
        &s.params,
        &Sequence::new(s.data.xs.view(), loss),
        &Run::new(Truncation::Full).memory(Memory::Checkpointed { stride: Some(0) }),
    )
    .unwrap_err();
    assert!(is_invalid(&e), "{e:?}");
}

#[test]
fn enumeration_beyond_16_steps() {
    let s = setup();
    assert_eq!(enumerate::MAX_ENUMERATION_STEPS, 16);
    let xs = Array3::<f64>::zeros((17, 1, 2));
    let labels = Array2::<usize>::zeros((17, 1));
    let loss = SequenceLoss::classes(labels.view());
    let e = enumerate::randomized_moments(
        &s.cell,
        &s.params,
        &Sequence::new(xs.view(), loss),
        &Pi::Constant(0.5),
    )
    .unwrap_err();
    assert!(is_invalid(&e), "{e:?}");
    let e = enumerate::patterns(&Pi::Constant(0.5), 17).unwrap_err();
    assert!(is_invalid(&e), "{e:?}");
    // Bad π in an enumeration.
    let e = enumerate::patterns(&Pi::Constant(0.0), 3).unwrap_err();
    assert!(is_invalid(&e), "{e:?}");
    let e = enumerate::patterns(&Pi::schedule(|t| if t == 3 { 2.0 } else { 0.5 }), 4).unwrap_err();
    assert!(is_invalid(&e), "{e:?}");
    // And a bad π when sampling directly.
    let e = bptt::sample_xi(&Pi::hazard(|_| -1.0), 3, 0).unwrap_err();
    assert!(is_invalid(&e), "{e:?}");
}

#[test]
fn truncation_validate_and_xi() {
    assert!(is_invalid(
        &Truncation::Fixed { k: 0 }.validate(None).unwrap_err()
    ));
    assert!(Truncation::Tbptt { k1: 2, k2: 4 }.xi(10).unwrap().is_none());
    assert_eq!(
        Truncation::Fixed { k: 3 }.xi(7).unwrap().unwrap(),
        vec![0.0, 1.0, 1.0, 0.0, 1.0, 1.0, 0.0]
    );
    assert_eq!(Truncation::Full.xi(3).unwrap().unwrap(), vec![1.0; 3]);
    let e = Truncation::Pattern(vec![1.0; 4]).xi(5).unwrap_err();
    assert!(matches!(e, Error::ShapeMismatch { .. }), "{e:?}");
}
