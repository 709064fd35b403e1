//! Per-sequence ξ, cuts and resets (`Truncation::PerRow`, `Sequence::with_resets`): a
//! batch of independent sequences, each truncated, cut or restarted on its own.
//!
//! Tolerances: "bit for bit" is `==` (the shared edge is taken wherever the rows agree);
//! a row run alone against the batch: 1e-14 relative (the same operations on each row;
//! only the sums over the batch rows in the parameter gradients differ in order, a few
//! ulp); the enumerated mean against `Full` and the enumerated variance against the
//! per-row closed form: 1e-12 relative (sums of 4096 probability-weighted estimates of
//! O(1), and of path products up to 0.5^{−6} = 64).

mod common;

use common::cases::{Case, Model, Shape};
use common::{assert_grads_close, grads_max_rel_diff, max_abs, max_abs_diff};
use ndarray::{Array2, Array3, Axis, Slice};
use timetape::bptt::enumerate::patterns;
use timetape::bptt::online::{self, Estimator};
use timetape::bptt::{run, Memory, Parallel, Pi, Run, StepTarget, Stream, Truncation};
use timetape::rnn::{Sequence, SequenceLoss};
use timetape::{Error, Grads};

/// M3 (tanh RNN, weighted softmax cross-entropy) with B rows over T steps.
fn case(t: usize, b: usize, seed: u64) -> Case {
    Case::sized(Model::M3, Shape::new(t, b, 2, 3), 3, 0.7, seed).with_h0(seed + 1)
}

#[test]
fn the_same_truncation_on_every_row_reproduces_the_shared_run_bit_for_bit() {
    let c = case(12, 3, 1);
    let seq = c.seq();
    let pattern: Vec<f64> = (0..12).map(|t| [1.0, 2.0, 0.0, 1.5][t % 4]).collect();
    for tr in [
        Truncation::Full,
        Truncation::Fixed { k: 5 },
        Truncation::Randomized {
            pi: Pi::Constant(0.7),
            seed: 3,
        },
        Truncation::Pattern(pattern),
    ] {
        let rows = Truncation::PerRow(vec![tr.clone(); 3]);
        for memory in [Memory::Tape, Memory::Revolve { states: 3 }] {
            let shared = run(
                &c.cell,
                &c.params,
                &seq,
                &Run::new(tr.clone()).memory(memory),
            )
            .unwrap();
            let per_row = run(
                &c.cell,
                &c.params,
                &seq,
                &Run::new(rows.clone()).memory(memory),
            )
            .unwrap();
            assert_eq!(per_row.grads, shared.grads, "{tr:?} {memory:?}");
            assert_eq!(per_row.loss.to_bits(), shared.loss.to_bits());
            assert_eq!(per_row.h_final, shared.h_final);
            assert_eq!(per_row.segments, shared.segments);
            let table = per_row.xi_rows.unwrap();
            let xi = shared.xi.unwrap_or_else(|| tr.xi(12).unwrap().unwrap());
            assert!(table.axis_iter(Axis(1)).all(|col| col.to_vec() == xi));
        }
    }
}

/// Row r of `c`'s batch, alone (as a part of the batch: its loss still divides by B).
fn row_grads(c: &Case, r: usize, tr: Truncation) -> Grads<f64> {
    let seq = c.seq();
    run(
        &c.cell,
        &c.params,
        &seq.rows(r..r + 1).unwrap(),
        &Run::new(tr),
    )
    .unwrap()
    .grads
}

#[test]
fn a_per_row_pattern_equals_each_row_alone_summed() {
    let c = case(10, 3, 2);
    let patterns = [
        vec![1.0, 2.0, 0.0, 1.0, 1.5, 1.0, 0.0, 3.0, 1.0, 1.0],
        vec![1.0; 10],
        vec![0.0, 1.0, 1.0, 0.0, 0.0, 2.5, 1.0, 1.0, 0.0, 1.0],
    ];
    let rows: Vec<Truncation> = patterns.iter().cloned().map(Truncation::Pattern).collect();
    let batch = run(
        &c.cell,
        &c.params,
        &c.seq(),
        &Run::new(Truncation::PerRow(rows.clone())),
    )
    .unwrap();
    let mut sum = Grads::zeros_like(&c.params);
    for (r, tr) in rows.into_iter().enumerate() {
        sum.add_assign(&row_grads(&c, r, tr)).unwrap();
    }
    let d = grads_max_rel_diff(&c.params, &batch.grads, &sum);
    assert!(d <= 1e-14, "per-row batch vs rows alone: {d:e}");
}

/// B = 2, T = 6, each row `Randomized` with its own π: the 2^6 × 2^6 joint patterns with
/// their probabilities give E = `Full` and the variance of FORMULAS.md summed over the
/// rows (independent rows: no covariance between them).
#[test]
fn enumerating_joint_patterns_gives_full_and_the_per_row_variance() {
    let c = Case::sized(Model::M3, Shape::new(6, 2, 2, 2), 2, 0.9, 29);
    let seq = c.seq();
    let pis = [[0.5; 6], [0.3, 0.8, 0.5, 0.6, 0.4, 0.7]];
    let rows: Vec<Vec<(Vec<f64>, f64)>> = pis
        .iter()
        .map(|p| {
            let p = *p;
            patterns(&Pi::schedule(move |t| p[t - 1]), 6).unwrap()
        })
        .collect();
    let mut estimates = Vec::new();
    for (xa, pa) in &rows[0] {
        for (xb, pb) in &rows[1] {
            let tr = Truncation::PerRow(vec![
                Truncation::Pattern(xa.clone()),
                Truncation::Pattern(xb.clone()),
            ]);
            let g = run(&c.cell, &c.params, &seq, &Run::new(tr)).unwrap().grads;
            estimates.push((g, pa * pb));
        }
    }
    assert_eq!(estimates.len(), 4096);
    let mut mean = Grads::zeros_like(&c.params);
    for (g, p) in &estimates {
        let mut w = g.clone();
        w.scale(*p);
        mean.add_assign(&w).unwrap();
    }
    let full = run(&c.cell, &c.params, &seq, &Run::new(Truncation::Full))
        .unwrap()
        .grads;
    assert_grads_close(
        &c.params,
        &mean,
        &full,
        1e-12,
        "E over joint patterns vs Full",
    );
    // Variance entry by entry, Σ p (g − E)², against Σ_r Σ a^r a^r (Π_{j∈∩} 1/π_j − 1).
    let ids: Vec<_> = c.params.ids().collect();
    let g2 = max_abs(
        ids.iter()
            .flat_map(|&id| full.get(id).unwrap().iter().copied()),
    )
    .powi(2);
    let a = [c.path_contributions(Some(0)), c.path_contributions(Some(1))];
    for id in ids {
        let m = mean.get(id).unwrap();
        let n = m.len();
        let mut enumerated = vec![0.0; n];
        for (g, p) in &estimates {
            for (k, (x, y)) in g.get(id).unwrap().iter().zip(m.iter()).enumerate() {
                enumerated[k] += p * (x - y) * (x - y);
            }
        }
        let mut closed = vec![0.0; n];
        for (r, ar) in a.iter().enumerate() {
            let pr = pis[r];
            let pairs: Vec<(usize, usize, &Grads<f64>)> = ar
                .iter()
                .enumerate()
                .flat_map(|(t, row)| row.iter().enumerate().map(move |(i, g)| (i, t, g)))
                .collect();
            for &(i, t, g) in &pairs {
                for &(i2, t2, g2) in &pairs {
                    let (lo, hi) = (i.max(i2), t.min(t2));
                    let prod: f64 = (lo + 1..=hi).map(|j| 1.0 / pr[j]).product();
                    let f = if lo < hi { prod - 1.0 } else { 0.0 };
                    for (k, (x, y)) in g
                        .get(id)
                        .unwrap()
                        .iter()
                        .zip(g2.get(id).unwrap().iter())
                        .enumerate()
                    {
                        closed[k] += x * y * f;
                    }
                }
            }
        }
        // Entries the ξ do not reach (the output head) have closed-form variance exactly
        // 0: their enumerated variance must be at rounding level, ≤ 1e-24 max|G|².
        let scale = max_abs(closed.iter().copied());
        let d = max_abs_diff(enumerated.iter().copied(), closed.iter().copied());
        let name = c.params.name(id).unwrap();
        assert!(
            d <= 1e-12 * scale + 1e-24 * g2,
            "{name}: variance off by {d:e} (scale {scale:e})"
        );
    }
}

/// Slices of `c`'s data: steps `steps` of row `r`.
fn episode(
    c: &Case,
    r: usize,
    steps: std::ops::Range<usize>,
) -> (Array3<f64>, Array2<usize>, Array2<f64>) {
    let xs = c
        .data
        .xs
        .slice_axis(Axis(0), Slice::from(steps.clone()))
        .slice_axis(Axis(1), Slice::from(r..r + 1))
        .to_owned();
    let labels = c
        .data
        .labels
        .slice_axis(Axis(0), Slice::from(steps))
        .slice_axis(Axis(1), Slice::from(r..r + 1))
        .to_owned();
    let h0 =
        c.h0.as_ref()
            .unwrap()
            .slice_axis(Axis(0), Slice::from(r..r + 1))
            .to_owned();
    (xs, labels, h0)
}

/// A batch whose row 1 starts a new episode at step 4 equals row 0 over the whole
/// sequence plus row 1's two episodes run separately, each from row 1's initial state
/// (losses summed over the batch and time, so that the parts add up).
#[test]
fn a_reset_row_equals_its_episodes_run_separately() {
    let c = case(9, 2, 4);
    let resets = Array2::from_shape_fn((9, 2), |(t, b)| b == 1 && t == 4);
    let loss = SequenceLoss::classes(c.data.labels.view()).sum_over_batch();
    let seq = c
        .data
        .seq(loss.into())
        .with_h0(c.h0.as_ref().unwrap().view())
        .with_resets(resets.view());
    let whole = run(&c.cell, &c.params, &seq, &Run::new(Truncation::Full)).unwrap();
    let mut parts = Grads::zeros_like(&c.params);
    let mut loss_sum = 0.0;
    for (r, steps) in [(0, 0..9), (1, 0..4), (1, 4..9)] {
        let (xs, labels, h0) = episode(&c, r, steps);
        let l = SequenceLoss::classes(labels.view()).sum_over_batch();
        let s = Sequence::new(xs.view(), l).with_h0(h0.view());
        let p = run(&c.cell, &c.params, &s, &Run::new(Truncation::Full)).unwrap();
        parts.add_assign(&p.grads).unwrap();
        loss_sum += p.loss;
    }
    assert_grads_close(&c.params, &whole.grads, &parts, 1e-12, "resets vs episodes");
    assert!((whole.loss - loss_sum).abs() <= 1e-12 * loss_sum.abs());
}

/// Per-row ξ and resets together, under every runner: `run` on the tape, binomial
/// checkpointing, a stream (with `Stream::reset_rows`), two threads, a parallel stream,
/// and RTRL in forward mode, all give the same gradient (1e-12).
#[test]
fn per_row_xi_and_resets_agree_under_every_runner() {
    // From h_0 = 0 (a parallel stream starts from zeros), where resets return.
    let c = Case::sized(Model::M3, Shape::new(14, 4, 2, 3), 3, 0.7, 7);
    let resets = Array2::from_shape_fn((14, 4), |(t, b)| (b == 1 && t == 5) || (b == 3 && t == 9));
    let seq = c.seq().with_resets(resets.view());
    let tr = Truncation::PerRow(vec![
        Truncation::Randomized {
            pi: Pi::Constant(0.7),
            seed: 1,
        },
        Truncation::Fixed { k: 4 },
        Truncation::Full,
        Truncation::Pattern((0..14).map(|t| [1.0, 2.0, 0.0][t % 3]).collect()),
    ]);
    let how = Run::new(tr.clone());
    let tape = run(&c.cell, &c.params, &seq, &how).unwrap();
    let check =
        |g: &Grads<f64>, what: &str| assert_grads_close(&c.params, g, &tape.grads, 1e-12, what);
    let revolve = run(
        &c.cell,
        &c.params,
        &seq,
        &how.clone().memory(Memory::Revolve { states: 3 }),
    )
    .unwrap();
    check(&revolve.grads, "Revolve");
    assert_eq!(revolve.xi_rows, tape.xi_rows);
    let weights = c.weights();
    let mut stream = Stream::new(&c.cell, &c.params, 4, &how).unwrap();
    let mut par = Parallel::<f64>::new(2).unwrap();
    let mut pstream = par.stream(&c.cell, &c.params, 4, &how).unwrap();
    for (t, &alpha) in weights.iter().enumerate() {
        let r: Vec<bool> = resets.row(t).to_vec();
        stream.reset_rows(&r).unwrap();
        let x = c.data.xs.index_axis(Axis(0), t);
        let labels: Vec<usize> = c.data.labels.row(t).to_vec();
        stream.push(x, StepTarget::Classes(&labels), alpha).unwrap();
        pstream.reset_rows(&r).unwrap();
        pstream
            .push(x, StepTarget::Classes(&labels), alpha)
            .unwrap();
    }
    let ps = pstream.finish().unwrap();
    check(&ps.grads, "ParallelStream");
    assert_eq!(ps.xi_rows, tape.xi_rows);
    let s = stream.finish().unwrap();
    check(&s.grads, "Stream");
    assert_eq!(s.xi_rows, tape.xi_rows);
    let threads = par.run(&c.cell, &c.params, &seq, &how).unwrap();
    check(&threads.grads, "Parallel::run");
    assert_eq!(threads.xi_rows, tape.xi_rows);
    let forward = online::run(&c.cell, &c.params, &seq, &Estimator::Rtrl(tr)).unwrap();
    check(&forward.grads, "RTRL");
}

#[test]
fn per_row_inputs_that_do_not_fit_are_refused() {
    let c = case(6, 2, 1);
    let seq = c.seq();
    let three = Truncation::PerRow(vec![Truncation::Full; 3]);
    let err = run(&c.cell, &c.params, &seq, &Run::new(three.clone())).unwrap_err();
    assert!(matches!(err, Error::ShapeMismatch { .. }), "{err}");
    let err = Stream::new(&c.cell, &c.params, 2, &Run::new(three))
        .err()
        .unwrap();
    assert!(matches!(err, Error::ShapeMismatch { .. }), "{err}");
    let nested = Truncation::PerRow(vec![Truncation::Tbptt { k1: 2, k2: 3 }, Truncation::Full]);
    let err = run(&c.cell, &c.params, &seq, &Run::new(nested)).unwrap_err();
    assert!(matches!(err, Error::InvalidArgument { .. }), "{err}");
    let err = run(
        &c.cell,
        &c.params,
        &seq,
        &Run::new(Truncation::PerRow(vec![])),
    )
    .unwrap_err();
    assert!(matches!(err, Error::InvalidArgument { .. }), "{err}");
    let wrong = Array2::from_elem((5, 2), false);
    let err = run(
        &c.cell,
        &c.params,
        &seq.with_resets(wrong.view()),
        &Run::new(Truncation::Full),
    )
    .unwrap_err();
    assert!(matches!(err, Error::ShapeMismatch { .. }), "{err}");
    let mut stream = Stream::new(&c.cell, &c.params, 2, &Run::new(Truncation::Full)).unwrap();
    let err = stream.reset_rows(&[true]).unwrap_err();
    assert!(matches!(err, Error::ShapeMismatch { .. }), "{err}");
}

/// Inputs whose rows do not fit the batch are refused by the runners that split or
/// slice rows (`Sequence::rows`, `Parallel`, a stream's per-row patterns), not
/// panicked on or silently cut.
#[test]
fn rows_that_do_not_fit_are_refused_where_rows_are_split() {
    let c = case(6, 4, 3);
    let narrow = Array2::from_elem((6, 1), false);
    let seq = c.seq().with_resets(narrow.view());
    let err = seq.rows(2..4).unwrap_err();
    assert!(matches!(err, Error::ShapeMismatch { .. }), "{err}");
    let mut par = Parallel::<f64>::new(2).unwrap();
    let err = par
        .run(&c.cell, &c.params, &seq, &Run::new(Truncation::Full))
        .unwrap_err();
    assert!(matches!(err, Error::ShapeMismatch { .. }), "{err}");
    let five = Run::new(Truncation::PerRow(vec![Truncation::Full; 5]));
    let err = par.run(&c.cell, &c.params, &c.seq(), &five).unwrap_err();
    assert!(matches!(err, Error::ShapeMismatch { .. }), "{err}");
    assert!(par.stream(&c.cell, &c.params, 4, &five).is_err());
    // A stream's per-row pattern longer than the steps fed.
    let long = Truncation::PerRow(vec![Truncation::Pattern(vec![1.0; 9]); 4]);
    let mut stream = Stream::new(&c.cell, &c.params, 4, &Run::new(long)).unwrap();
    for t in 0..6 {
        let labels: Vec<usize> = c.data.labels.row(t).to_vec();
        let x = c.data.xs.index_axis(Axis(0), t);
        stream.push(x, StepTarget::Classes(&labels), 1.0).unwrap();
    }
    let err = stream.finish().unwrap_err();
    assert!(matches!(err, Error::ShapeMismatch { .. }), "{err}");
}
