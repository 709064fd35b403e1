//! Stacks of cells and token inputs under every runner.
//!
//! For two-layer stacks of tanh RNNs, GRUs and LSTMs:
//! - `Full` against central finite differences (1e-6: f64 central differences with
//!   eps = 1e-5 have truncation error ~1e-10 and rounding ~1e-11 relative, on gradients
//!   of order 0.1–1);
//! - `Fixed { k }` equal to `Pattern` with the same ξ, checkpointed equal to `Full`,
//!   streamed equal to the batch runner, and the exact expectation of `Randomized` over
//!   every ξ pattern equal to `Full` (each the same gradient by a different route or
//!   order of summation: 1e-12 relative; the expectation sums 2^(T−1) = 32 weighted
//!   estimates with weights up to 1/π² ≈ 2.8: 1e-10).
//!
//! For token inputs (`Embedded<Stack<Gru>>` on `Sequence::tokens`): the same run as the
//! stack on the embedded rows given as real inputs (to the last bit: bit-identical
//! inputs, same arithmetic), the table's gradient exact for repeated ids (equal to the per-occurrence
//! gradients summed by id), and finite differences through the table.

mod common;

use common::cases::{Data, Shape};
use common::{assert_grads_close, grads_max_rel_diff};
use ndarray::{Array2, Array3, Axis};
use timetape::bptt::{self, enumerate, Memory, Pi, Run, StepTarget, Stream, Truncation};
use timetape::gradcheck::{gradcheck, GradcheckOptions};
use timetape::rnn::{
    Embedded, Embedding, Gru, Lstm, Recurrent, Rnn, RnnConfig, Sequence, SequenceLoss, Sizes, Stack,
};
use timetape::{Error, Params};

const FD: f64 = 1e-6;
const SAME: f64 = 1e-12;
const EXPECTATION: f64 = 1e-10;
/// Steps, batch rows, input, hidden and output widths.
const T: usize = 6;
const B: usize = 2;
const D: usize = 3;
const H: usize = 4;
const Q: usize = 3;

/// The shared inputs, labels and step weights of T steps of B rows.
fn data() -> Data {
    Data::new(Shape::new(T, B, D, Q), 17)
}

fn rnn_stack(params: &mut Params<f64>) -> Stack<Rnn> {
    let l0 = Rnn::new(params, RnnConfig::new(D, H, 1).named("l0."), 1).unwrap();
    let l1 = Rnn::new(params, RnnConfig::new(H, H, Q).named("l1."), 2).unwrap();
    Stack::new(vec![l0, l1]).unwrap()
}

fn gru_stack(params: &mut Params<f64>, input: usize) -> Stack<Gru> {
    let l0 = Gru::named(params, "l0.", Sizes::new(input, H, 1), 3).unwrap();
    let l1 = Gru::named(params, "l1.", Sizes::new(H, H, Q), 4).unwrap();
    Stack::new(vec![l0, l1]).unwrap()
}

fn lstm_stack(params: &mut Params<f64>) -> Stack<Lstm> {
    let l0 = Lstm::named(params, "l0.", Sizes::new(D, H, 1), 5).unwrap();
    let l1 = Lstm::named(params, "l1.", Sizes::new(H, H, Q), 6).unwrap();
    Stack::new(vec![l0, l1]).unwrap()
}

/// ξ of `Fixed { k }`: 0 on the edges into steps 0, k, 2k, … (0-based), 1 elsewhere.
fn fixed_xi(k: usize) -> Vec<f64> {
    (0..T).map(|t| if t % k == 0 { 0.0 } else { 1.0 }).collect()
}

/// Every exactness check of the module docs on one stack.
fn check_stack<C: Recurrent<f64>>(stack: &C, params: &Params<f64>, what: &str) {
    let d = data();
    let loss = SequenceLoss::classes(d.labels.view()).weighted(&d.alphas);
    let seq = Sequence::new(d.xs.view(), loss);
    let run = |how: Run| bptt::run(stack, params, &seq, &how).unwrap();

    let report = gradcheck(params, GradcheckOptions::default(), |tape, p| {
        Ok(bptt::unroll(stack, tape, p, &seq)?.loss)
    })
    .unwrap();
    assert!(report.passes(FD), "{what}: finite differences\n{report}");

    let full = run(Run::new(Truncation::Full));
    assert!(full.grads.global_norm() > 0.0, "{what}: zero gradient");
    let fixed = run(Run::new(Truncation::Fixed { k: 3 }));
    let pattern = run(Run::new(Truncation::Pattern(fixed_xi(3))));
    assert_grads_close(params, &fixed.grads, &pattern.grads, SAME, what);
    let d_fixed = grads_max_rel_diff(params, &fixed.grads, &full.grads);
    assert!(
        d_fixed > 1e-3,
        "{what}: Fixed{{3}} equals Full ({d_fixed:e})"
    );

    let memory = Memory::Checkpointed { stride: Some(2) };
    let checkpointed = run(Run::new(Truncation::Full).memory(memory));
    assert_grads_close(params, &checkpointed.grads, &full.grads, SAME, what);
    assert!((checkpointed.loss - full.loss).abs() <= SAME * full.loss.abs());

    for tr in [Truncation::Full, Truncation::Fixed { k: 3 }] {
        let batch = run(Run::new(tr.clone()));
        let mut s = Stream::new(stack, params, B, &Run::new(tr.clone())).unwrap();
        for t in 0..T {
            let labels = d.labels.row(t).to_vec();
            let x = d.xs.index_axis(Axis(0), t);
            s.push(x, StepTarget::Classes(&labels), d.alphas[t])
                .unwrap();
        }
        let streamed = s.finish().unwrap();
        assert_grads_close(params, &streamed.grads, &batch.grads, SAME, what);
    }

    let pi = Pi::Constant(0.6);
    let m = enumerate::randomized_moments(stack, params, &seq, &pi).unwrap();
    assert_grads_close(params, &m.mean, &full.grads, EXPECTATION, what);
}

#[test]
fn stacked_rnn_is_exact_under_every_runner() {
    let mut params = Params::new();
    let stack = rnn_stack(&mut params);
    check_stack(&stack, &params, "2-layer tanh RNN");
}

#[test]
fn stacked_gru_is_exact_under_every_runner() {
    let mut params = Params::new();
    let stack = gru_stack(&mut params, D);
    check_stack(&stack, &params, "2-layer GRU");
}

#[test]
fn stacked_lstm_is_exact_under_every_runner() {
    let mut params = Params::new();
    let stack = lstm_stack(&mut params);
    assert_eq!(Recurrent::<f64>::state_width(&stack), 4 * H); // [h c] per layer
    check_stack(&stack, &params, "2-layer LSTM");
}

/// Token ids with repeats (V = 4 ids over T·B = 12 positions), their next-token labels.
fn tokens() -> (Array2<usize>, Array2<usize>) {
    let ids = Array2::from_shape_fn((T, B), |(t, b)| (3 * t + b) % 4);
    let next = Array2::from_shape_fn((T, B), |(t, b)| (3 * t + b + 1) % Q);
    (ids, next)
}

#[test]
fn embedded_tokens_equal_the_stack_on_the_embedded_rows() {
    let (ids, next) = tokens();
    let mut params = Params::new();
    let table = Embedding::new(&mut params, "emb", (4, D), 7).unwrap();
    let stack = gru_stack(&mut params, D);
    let model = Embedded::new(table, stack.clone());
    let seq = Sequence::tokens(ids.view(), SequenceLoss::classes(next.view()));
    let how = Run::new(Truncation::Fixed { k: 4 });
    let by_ids = bptt::run(&model, &params, &seq, &how).unwrap();

    let rows = params.get(table.table).unwrap();
    let xs = Array3::from_shape_fn((T, B, D), |(t, b, j)| rows[[ids[[t, b]], j]]);
    let real = Sequence::new(xs.view(), SequenceLoss::classes(next.view()));
    let by_rows = bptt::run(&stack, &params, &real, &how).unwrap();
    // Bit-identical inputs (a gather copies rows) and the same operations in the same
    // order: equal to the last bit.
    assert_eq!(by_ids.loss, by_rows.loss);
    for id in params.ids().filter(|&id| id != table.table) {
        let (a, b) = (
            by_ids.grads.get(id).unwrap(),
            by_rows.grads.get(id).unwrap(),
        );
        common::assert_close(a.view(), b.view(), 0.0, params.name(id).unwrap());
    }
}

#[test]
fn embedding_gradient_is_exact_for_repeated_ids() {
    let (ids, next) = tokens();
    let loss = SequenceLoss::classes(next.view());
    let how = Run::new(Truncation::Full);
    // The model on a table of 4 rows, ids repeated.
    let mut params = Params::new();
    let table = Embedding::new(&mut params, "emb", (4, D), 7).unwrap();
    let stack = gru_stack(&mut params, D);
    let shared = Embedded::new(table, stack.clone());
    let r = bptt::run(&shared, &params, &Sequence::tokens(ids.view(), loss), &how).unwrap();
    // The same model with one row per occurrence (T·B rows, each id used once): its
    // gradient rows are the per-occurrence gradients.
    let mut own = params.clone();
    let rows = params.get(table.table).unwrap().clone();
    let per = Array2::from_shape_fn((T * B, D), |(i, j)| rows[[ids.as_slice().unwrap()[i], j]]);
    let table2 = Embedding::new(&mut own, "emb2", (T * B, D), 0).unwrap();
    own.set(table2.table, per.view()).unwrap();
    let once = Array2::from_shape_fn((T, B), |(t, b)| t * B + b);
    let single = Embedded::new(table2, stack);
    let r2 = bptt::run(&single, &own, &Sequence::tokens(once.view(), loss), &how).unwrap();
    let per_occurrence = r2.grads.get(table2.table).unwrap();
    let mut summed = Array2::<f64>::zeros((4, D));
    for (i, &id) in ids.iter().enumerate() {
        let mut row = summed.row_mut(id);
        row += &per_occurrence.row(i);
    }
    let got = r.grads.get(table.table).unwrap();
    assert!(got.iter().all(|&g| g != 0.0), "every id is used");
    // The same terms summed in another order: a few ulp.
    common::assert_close(got.view(), summed.view(), 1e-14, "table gradient");
}

#[test]
fn streamed_tokens_equal_the_batch_runner() {
    let (ids, next) = tokens();
    let mut params = Params::new();
    let table = Embedding::new(&mut params, "emb", (4, D), 7).unwrap();
    let model = Embedded::new(table, gru_stack(&mut params, D));
    let seq = Sequence::tokens(ids.view(), SequenceLoss::classes(next.view()));
    for tr in [Truncation::Full, Truncation::Fixed { k: 4 }] {
        let how = Run::new(tr.clone());
        let batch = bptt::run(&model, &params, &seq, &how).unwrap();
        let mut s = Stream::new(&model, &params, B, &how).unwrap();
        for t in 0..T {
            let (x, y) = (ids.row(t).to_vec(), next.row(t).to_vec());
            s.push_tokens(&x, StepTarget::Classes(&y), 1.0).unwrap();
        }
        let streamed = s.finish().unwrap();
        assert_grads_close(
            &params,
            &streamed.grads,
            &batch.grads,
            SAME,
            &format!("{tr:?}"),
        );
    }
    // A stream takes tokens or real inputs, not both.
    let mut s = Stream::new(&model, &params, B, &Run::new(Truncation::Full)).unwrap();
    s.push_tokens(&[0, 1], StepTarget::None, 1.0).unwrap();
    let x = Array2::<f64>::zeros((B, D));
    let e = s.push(x.view(), StepTarget::None, 1.0).unwrap_err();
    assert!(
        matches!(
            e,
            Error::InvalidArgument {
                op: "Stream::push",
                ..
            }
        ),
        "{e}"
    );
}

#[test]
fn embedded_stack_matches_finite_differences_through_the_table() {
    let (ids, next) = tokens();
    let mut params = Params::new();
    let table = Embedding::new(&mut params, "emb", (4, D), 7).unwrap();
    let model = Embedded::new(table, gru_stack(&mut params, D));
    let seq = Sequence::tokens(ids.view(), SequenceLoss::classes(next.view()));
    let report = gradcheck(&params, GradcheckOptions::default(), |tape, p| {
        Ok(bptt::unroll(&model, tape, p, &seq)?.loss)
    })
    .unwrap();
    assert!(report.passes(FD), "{report}");
}

#[test]
fn misuse_of_stacks_and_tokens_is_an_error() {
    let d = data();
    let (ids, next) = tokens();
    let mut params = Params::<f64>::new();
    let how = Run::new(Truncation::Full);
    // No layer.
    let empty: timetape::Result<Stack<Gru>> = Stack::new(vec![]);
    assert!(matches!(
        empty,
        Err(Error::EmptyInput {
            op: "Stack::new",
            ..
        })
    ));
    // Layer 1 reads 5 columns, layer 0 gives H = 4.
    let l0 = Gru::named(&mut params, "a.", Sizes::new(D, H, 1), 0).unwrap();
    let l1 = Gru::named(&mut params, "b.", Sizes::new(H + 1, H, Q), 1).unwrap();
    let bad = Stack::new(vec![l0, l1]).unwrap();
    let seq = Sequence::new(d.xs.view(), SequenceLoss::classes(d.labels.view()));
    let e = bptt::run(&bad, &params, &seq, &how).unwrap_err();
    assert!(
        matches!(e, Error::ShapeMismatch { op, .. } if op.starts_with("Stack")),
        "{e}"
    );
    // Tokens into a cell without an embedding.
    let gru = Gru::named(&mut params, "c.", Sizes::new(D, H, Q), 2).unwrap();
    let tok = Sequence::tokens(ids.view(), SequenceLoss::classes(next.view()));
    let e = bptt::run(&gru, &params, &tok, &how).unwrap_err();
    assert!(
        matches!(
            e,
            Error::InvalidArgument {
                op: "Recurrent::embed",
                ..
            }
        ),
        "{e}"
    );
    // A table of width 2 in front of a cell reading 3.
    let narrow = Embedding::new(&mut params, "narrow", (4, 2), 3).unwrap();
    let e = bptt::run(&Embedded::new(narrow, gru.clone()), &params, &tok, &how).unwrap_err();
    assert!(
        matches!(e, Error::ShapeMismatch { op, .. } if op.starts_with("Embedded")),
        "{e}"
    );
    // An id beyond the table.
    let table = Embedding::new(&mut params, "emb", (3, D), 4).unwrap();
    let e = bptt::run(&Embedded::new(table, gru), &params, &tok, &how).unwrap_err();
    assert!(matches!(e, Error::LabelOutOfRange { label: 3, .. }), "{e}");
    // A zero-size table.
    let e = Embedding::new(&mut params, "zero", (0, D), 0).unwrap_err();
    assert!(
        matches!(
            e,
            Error::InvalidArgument {
                op: "Embedding::new",
                ..
            }
        ),
        "{e}"
    );
}
