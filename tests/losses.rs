//! The loss builders under every runner: a sum over the batch is B times the mean, to
//! the last bit (B = 2: every term and adjoint is scaled by a power of two, which is
//! exact, and the rest of the arithmetic is the same), a last-step real
//! target equals the closed form of the notes (M4 with cuts) under `Full`, `Fixed` and
//! `Pattern` to 1e-12, and the stream's sum over the batch equals the batch runner's.
//!
//! The closed forms themselves are checked against the tape for every target kind and
//! reduction in `closed_form_vs_tape.rs`.

mod common;

use common::assert_grads_close;
use common::cases::{Case, Model, MODELS};
use ndarray::Axis;
use timetape::bptt::{self, Memory, Pi, Run, StepTarget, Stream, Truncation};
use timetape::closed_form;
use timetape::rnn::{Sequence, SequenceLoss};

/// The same arithmetic scaled by a power of two (B = 2): exact.
const SCALED: f64 = 0.0;
/// Different summation orders of the same exact gradient (f64).
const EXACT: f64 = 1e-12;

fn truncations() -> Vec<Truncation> {
    vec![
        Truncation::Full,
        Truncation::Fixed { k: 3 },
        Truncation::Tbptt { k1: 3, k2: 5 },
        Truncation::Randomized {
            pi: Pi::Constant(0.7),
            seed: 5,
        },
    ]
}

#[test]
fn sum_over_batch_is_b_times_the_mean_under_every_truncation() {
    for model in MODELS {
        let c = Case::new(model, 12, 3);
        let d = &c.data;
        let (mean, sum): (SequenceLoss<f64>, SequenceLoss<f64>) = match model {
            Model::M2 => (
                SequenceLoss::last_binary(d.last_binary.view()).into(),
                SequenceLoss::last_binary(d.last_binary.view())
                    .sum_over_batch()
                    .into(),
            ),
            _ => (
                SequenceLoss::classes(d.labels.view())
                    .weighted(&d.alphas)
                    .into(),
                SequenceLoss::classes(d.labels.view())
                    .weighted(&d.alphas)
                    .sum_over_batch()
                    .into(),
            ),
        };
        let rows = d.xs.len_of(Axis(1));
        assert!(
            rows.is_power_of_two(),
            "exactness needs a power-of-two batch"
        );
        let b = rows as f64;
        for tr in truncations() {
            for memory in [Memory::Tape, Memory::Checkpointed { stride: Some(4) }] {
                if memory != Memory::Tape && !matches!(tr, Truncation::Full) {
                    continue;
                }
                let how = Run::new(tr.clone()).memory(memory);
                let m = bptt::run(&c.cell, &c.params, &d.seq(mean), &how).unwrap();
                let s = bptt::run(&c.cell, &c.params, &d.seq(sum), &how).unwrap();
                let what = format!("{model:?} {tr:?} {memory:?}");
                assert!(
                    (s.loss - b * m.loss).abs() <= SCALED * s.loss.abs(),
                    "{what}"
                );
                let mut scaled = m.grads.clone();
                scaled.scale(b);
                assert_grads_close(&c.params, &s.grads, &scaled, SCALED, &what);
            }
        }
    }
}

#[test]
fn last_step_values_match_the_closed_form_under_every_truncation() {
    let c = Case::new(Model::M3, 10, 8);
    let d = &c.data;
    for sum in [false, true] {
        let loss = SequenceLoss::last_values(d.last_values.view());
        let loss: SequenceLoss<f64> = if sum {
            loss.sum_over_batch().into()
        } else {
            loss.into()
        };
        let seq = Sequence::new(d.xs.view(), loss);
        let pattern = vec![1.0, 1.0, 0.0, 1.0, 1.0, 1.0, 0.0, 0.0, 1.0, 1.0];
        for (tr, cuts) in [
            (Truncation::Full, vec![false; 10]),
            (
                Truncation::Fixed { k: 3 },
                closed_form::block_starts(10, 3).unwrap(),
            ),
            (
                Truncation::Pattern(pattern.clone()),
                pattern.iter().map(|&x| x == 0.0).collect(),
            ),
        ] {
            let r = bptt::run(&c.cell, &c.params, &seq, &Run::new(tr.clone())).unwrap();
            let cf = closed_form::truncated(&c.params, &c.cell, &seq, &cuts).unwrap();
            let what = format!("{tr:?}, sum over batch {sum}");
            assert!((r.loss - cf.loss).abs() <= EXACT * cf.loss.abs(), "{what}");
            assert_grads_close(&c.params, &r.grads, &cf.grads, EXACT, &what);
        }
    }
}

#[test]
fn stream_sum_over_batch_equals_the_batch_runner() {
    let c = Case::new(Model::M3, 15, 2);
    let d = &c.data;
    let loss = SequenceLoss::classes(d.labels.view())
        .weighted(&d.alphas)
        .sum_over_batch();
    for tr in [Truncation::Full, Truncation::Fixed { k: 4 }] {
        let how = Run::new(tr.clone());
        let batch = bptt::run(&c.cell, &c.params, &d.seq(loss.into()), &how).unwrap();
        let b = d.xs.len_of(Axis(1));
        let mut s = Stream::new(&c.cell, &c.params, b, &how)
            .unwrap()
            .sum_over_batch();
        for t in 0..c.t() {
            let labels = d.labels.row(t).to_vec();
            let x = d.xs.index_axis(Axis(0), t);
            s.push(x, StepTarget::Classes(&labels), d.alphas[t])
                .unwrap();
        }
        let streamed = s.finish().unwrap();
        let what = format!("{tr:?}");
        assert!(
            (streamed.loss - batch.loss).abs() <= EXACT * batch.loss.abs(),
            "{what}"
        );
        assert_grads_close(&c.params, &streamed.grads, &batch.grads, EXACT, &what);
    }
}
