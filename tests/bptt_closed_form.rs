//! The `bptt` runner against the closed forms of the notes (the tape is never consulted
//! by the oracle): `Full` equals M1's recursion, M2 and M3; `Fixed { k }` and
//! `Tbptt { k, k }` equal the truncated closed form with h detached at block starts.
//!
//! Tolerance 1e-10 relative (max |a − b| over the largest |b|, per parameter): both sides
//! are exact formulas in f64 that differ only in summation order, over T ≤ 23 steps.

mod common;

use common::cases::{Data, Shape};
use ndarray::Array3;
use timetape::bptt;
use timetape::bptt::Run;
use timetape::bptt::{run, Truncation};
use timetape::closed_form;
use timetape::rnn::{self, models, Sequence, SequenceLoss, Sizes};
use timetape::{Params, Tape};

const TOL: f64 = 1e-10;

fn full(
    cell: &rnn::Rnn,
    params: &Params<f64>,
    x: &Array3<f64>,
    loss: &SequenceLoss<'_, f64>,
    tr: &Truncation,
) -> timetape::Grads<f64> {
    run(
        cell,
        params,
        &Sequence::new(x.view(), *loss),
        &Run::new(tr.clone()),
    )
    .unwrap()
    .grads
}

#[test]
fn full_equals_the_closed_forms_of_m1_m2_m3() {
    let (t, b) = (23, 3);
    // Inputs and targets of every model, from the shared fixtures.
    let data = Data::new(Shape::new(t, b, 4, 3), 1);
    let (x1, labels) = (&data.xs, &data.labels);
    // M1 with softmax cross-entropy, mean over time.
    let mut p1 = Params::new();
    let m1 = models::m1(&mut p1, Sizes::new(4, 5, 3), 1).unwrap();
    let l1 = SequenceLoss::classes(labels.view()).mean_over_time();
    let cf = closed_form::m1_recursion(&p1, &m1, &Sequence::new(x1.view(), l1)).unwrap();
    let d = full(&m1, &p1, x1, &l1.into(), &Truncation::Full).max_rel_diff(&cf.grads);
    assert!(d <= TOL, "M1: {d:e}");
    // M2: ReLU, last-step sigmoid classifier.
    let mut p2 = Params::new();
    let m2 = models::m2(&mut p2, 4, 5, 2).unwrap();
    p2.get_mut(m2.b_h.unwrap()).unwrap().fill(0.2);
    let l2 = SequenceLoss::last_binary(data.last_binary.view()).into();
    let cf = closed_form::m2(&p2, &m2, &Sequence::new(x1.view(), l2)).unwrap();
    let d = full(&m2, &p2, x1, &l2, &Truncation::Full).max_rel_diff(&cf.grads);
    assert!(d <= TOL, "M2: {d:e}");
    // M3: tanh, softmax at every step, weights α_t.
    let mut p3 = Params::new();
    let m3 = models::m3(&mut p3, Sizes::new(4, 5, 3), 3).unwrap();
    let l3 = SequenceLoss::classes(labels.view()).weighted(&data.alphas);
    let cf = closed_form::m3(&p3, &m3, &Sequence::new(x1.view(), l3)).unwrap();
    let d = full(&m3, &p3, x1, &l3.into(), &Truncation::Full).max_rel_diff(&cf.grads);
    assert!(d <= TOL, "M3: {d:e}");
}

#[test]
fn fixed_and_tbptt_k_k_equal_the_truncated_closed_form() {
    let (t, b) = (23, 2);
    let mut params = Params::new();
    let cell = models::m3(&mut params, Sizes::new(3, 4, 3), 7).unwrap();
    let data = Data::new(Shape::new(t, b, 3, 3), 7);
    let (x, labels) = (&data.xs, &data.labels);
    let loss = SequenceLoss::classes(labels.view());
    let whole = closed_form::m3(&params, &cell, &Sequence::new(x.view(), loss)).unwrap();
    for k in [1, 2, 3, 5, 8, 23] {
        let cf = closed_form::truncated_fixed(&params, &cell, &Sequence::new(x.view(), loss), k)
            .unwrap();
        for tr in [Truncation::Fixed { k }, Truncation::Tbptt { k1: k, k2: k }] {
            let d = full(&cell, &params, x, &loss.into(), &tr).max_rel_diff(&cf.grads);
            assert!(d <= TOL, "{tr:?}: {d:e}");
        }
        if k < t {
            // Not vacuous: truncation changes the gradient (`max_rel_diff` is +∞ on a
            // non-finite entry, which is not a change).
            let d = cf.grads.max_rel_diff(&whole.grads);
            assert!(d.is_finite() && d > 1e-3, "k = {k}: {d:e}");
        }
    }
}

/// `rnn::unroll` gives every o_t: the rows of its output nodes equal `h_t W_hq + b_q`
/// computed from the states with ndarray.
#[test]
fn unroll_outputs_are_the_heads_of_every_state() {
    let (t, b) = (40, 2); // with B = 2, heads run on chunks of 16 steps
    let mut params = Params::new();
    let cell = models::m3(&mut params, Sizes::new(3, 4, 3), 9).unwrap();
    params.get_mut(cell.b_q.unwrap()).unwrap().fill(0.25);
    let data = Data::new(Shape::new(t, b, 3, 3), 9);
    let (x, labels) = (&data.xs, &data.labels);
    let mut tape = Tape::new();
    let run = bptt::unroll(
        &cell,
        &mut tape,
        &params,
        &Sequence::new(x.view(), SequenceLoss::classes(labels.view())),
    )
    .unwrap();
    let covered: usize = run.outputs.iter().map(|(r, _)| r.len()).sum();
    assert_eq!(covered, t);
    for (range, o) in &run.outputs {
        let o = tape.value(*o).unwrap().to_owned();
        for (j, step) in range.clone().enumerate() {
            let h = tape.value(run.states[step]).unwrap().to_owned();
            let want =
                h.dot(params.get(cell.w_hq).unwrap()) + params.get(cell.b_q.unwrap()).unwrap();
            for r in 0..b {
                for c in 0..3 {
                    assert!((o[[j * b + r, c]] - want[[r, c]]).abs() < 1e-14);
                }
            }
        }
    }
}
