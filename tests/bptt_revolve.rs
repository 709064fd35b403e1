//! Binomial checkpointing (`bptt::revolve`, `Memory::Revolve`): the schedule is optimal
//! (its forward steps equal a brute-force minimum over every recursive schedule, and the
//! closed form `T + r·T − C(s + r, s + 1)`), never keeps more than s states, and the
//! runner's gradient is `Full`'s.
//!
//! Gradients are compared to 1e-12 relative per parameter: the reversal records every
//! step once, in the same order of operations as `Full` within a step, and adds the
//! steps' parameter gradients one step at a time instead of one segment at a time, so
//! the two differ by the rounding of a different summation order over ≤ 40 steps of O(1)
//! terms (≲ 1e-15 relative).

mod common;

use common::assert_grads_close;
use common::cases::{Case, Data, Model, Shape, MODELS};
use std::collections::BTreeSet;
use timetape::bptt::revolve::{optimal_forward_steps, schedule, Action};
use timetape::bptt::{run, Memory, Pi, Run, RunOptions, Truncation};
use timetape::rnn::{Gru, Lstm, Recurrent, Sequence, Sizes, Stack};
use timetape::{Error, Params};

/// Replays a schedule as a runner would, checking that every action is possible:
/// gives (forward steps, most stored states at once).
fn replay(t: usize, s: usize) -> (usize, usize) {
    let mut stored = BTreeSet::new();
    let mut current: Option<usize> = Some(0);
    let mut next_reverse = t;
    let (mut forward, mut peak) = (0, 0);
    for a in schedule(t, s).unwrap() {
        let at_hand = |i: usize, stored: &BTreeSet<usize>, cur: Option<usize>| {
            stored.contains(&i) || cur == Some(i)
        };
        match a {
            Action::Store { at } => {
                assert!(at_hand(at, &stored, current), "store of {at}: not at hand");
                stored.insert(at);
            }
            Action::Free { at } => assert!(stored.remove(&at), "free of {at}: not stored"),
            Action::Advance { from, to } => {
                assert!(
                    at_hand(from, &stored, current) && to > from,
                    "advance {from}→{to}"
                );
                forward += to - from;
                current = Some(to);
            }
            Action::Reverse { step } => {
                assert_eq!(
                    step + 1,
                    next_reverse,
                    "steps reversed last first, once each"
                );
                assert!(
                    at_hand(step, &stored, current),
                    "reverse of {step}: no state"
                );
                next_reverse = step;
                forward += 1;
                current = None;
            }
        }
        peak = peak.max(stored.len());
    }
    assert_eq!(next_reverse, 0, "every step reversed");
    assert!(stored.is_empty(), "every state freed");
    (forward, peak)
}

/// Fewest advanced (untaped) steps of any recursive schedule, by brute force:
/// `cost[s][n] = min_k k + cost[s − 1][n − k] + cost[s][k]`, `cost[1][n] = n(n − 1)/2`.
fn brute_force(n_max: usize, s_max: usize) -> Vec<Vec<usize>> {
    let mut cost = vec![vec![0usize; n_max + 1]; s_max + 1];
    for (n, c) in cost[1].iter_mut().enumerate() {
        *c = n * n.saturating_sub(1) / 2;
    }
    for s in 2..=s_max {
        for n in 2..=n_max {
            cost[s][n] = (1..n)
                .map(|k| k + cost[s - 1][n - k] + cost[s][k])
                .min()
                .unwrap();
        }
    }
    cost
}

#[test]
fn the_schedule_takes_the_fewest_forward_steps_and_keeps_at_most_s_states() {
    let cost = brute_force(150, 9);
    for (s, cost_s) in cost.iter().enumerate().skip(1) {
        for (n, &c) in cost_s.iter().enumerate().skip(1) {
            let (forward, peak) = replay(n, s);
            assert!(peak <= s, "T = {n}, s = {s}: {peak} states");
            assert_eq!(forward, n + c, "T = {n}, s = {s}");
            assert_eq!(
                forward,
                optimal_forward_steps(n, s).unwrap(),
                "T = {n}, s = {s}"
            );
        }
    }
    for (t, s, want) in [(1000, 10, 4636), (1000, 50, 2948), (100_000, 20, 634_220)] {
        let (forward, peak) = replay(t, s);
        assert_eq!(forward, want, "T = {t}, s = {s}");
        assert_eq!(optimal_forward_steps(t, s).unwrap(), want);
        assert!(peak <= s);
    }
}

/// `Memory::Revolve` against `Full`: gradient, loss, h_T, ‖∂L/∂h_t‖, and the costs.
fn revolve_equals_full<C: Recurrent<f64>>(
    cell: &C,
    params: &Params<f64>,
    seq: &Sequence<'_, f64>,
    what: &str,
) {
    let opts = RunOptions {
        dh_norms: true,
        ..Default::default()
    };
    let full = run(cell, params, seq, &Run::new(Truncation::Full).options(opts)).unwrap();
    let one_step = run(cell, params, seq, &Run::new(Truncation::Fixed { k: 1 })).unwrap();
    let t = seq.len();
    for s in [1, 2, 3, t / 2, t, t + 3] {
        let how = Run::new(Truncation::Full)
            .memory(Memory::Revolve { states: s.max(1) })
            .options(opts);
        let r = run(cell, params, seq, &how).unwrap();
        let what = format!("{what}, s = {s}");
        assert_grads_close(params, &r.grads, &full.grads, 1e-12, &what);
        assert!(
            (r.loss - full.loss).abs() <= 1e-12 * full.loss.abs(),
            "{what}: loss"
        );
        assert_eq!(r.h_final, full.h_final, "{what}: h_T");
        let (a, b) = (r.dh_norms.unwrap(), full.dh_norms.clone().unwrap());
        assert!(
            common::max_abs_diff(a, b) <= 1e-12 * common::max_abs(full.dh_norms.clone().unwrap())
        );
        assert_eq!(
            r.forward_steps,
            optimal_forward_steps(t, s.max(1)).unwrap(),
            "{what}"
        );
        assert!(
            r.stored_states <= s.max(1) && r.stored_states >= 1,
            "{what}"
        );
        assert_eq!((r.backward_steps, r.segments), (t, t), "{what}");
        // One step on the tape at a time: no more nodes than `Fixed { k: 1 }` records
        // (which adds a detach node on the first edge).
        assert!(
            r.peak_tape_nodes <= one_step.peak_tape_nodes,
            "{what}: tape"
        );
    }
}

#[test]
fn revolve_equals_full_on_the_notes_models_gru_lstm_and_a_stack() {
    for model in MODELS {
        let case = Case::new(model, 24, 2).with_h0(5);
        revolve_equals_full(&case.cell, &case.params, &case.seq(), &format!("{model:?}"));
    }
    let data = Data::new(Shape::new(20, 2, 3, 3), 4);
    let seq = data.seq(data.classes());
    let mut params = Params::<f64>::new();
    let gru = Gru::new(&mut params, Sizes::new(3, 4, 3), 1).unwrap();
    revolve_equals_full(&gru, &params, &seq, "GRU");
    let mut params = Params::<f64>::new();
    let lstm = Lstm::new(&mut params, Sizes::new(3, 4, 3), 2).unwrap();
    revolve_equals_full(&lstm, &params, &seq, "LSTM");
    let mut params = Params::<f64>::new();
    let stack = Stack::new(vec![
        Lstm::named(&mut params, "l0.", Sizes::new(3, 3, 3), 3).unwrap(),
        Lstm::named(&mut params, "l1.", Sizes::new(3, 2, 3), 4).unwrap(),
    ])
    .unwrap();
    revolve_equals_full(&stack, &params, &seq, "stack of LSTMs");
}

#[test]
fn the_runner_takes_the_optimal_forward_steps_at_t_1000() {
    let case = Case::sized(Model::M3, Shape::new(1000, 1, 2, 2), 2, 0.5, 9);
    let seq = case.seq();
    let full = run(&case.cell, &case.params, &seq, &Run::new(Truncation::Full)).unwrap();
    for (s, want) in [(10, 4636), (50, 2948)] {
        let how = Run::new(Truncation::Full).memory(Memory::Revolve { states: s });
        let r = run(&case.cell, &case.params, &seq, &how).unwrap();
        assert_eq!(r.forward_steps, want);
        assert!(r.stored_states <= s);
        assert_grads_close(&case.params, &r.grads, &full.grads, 1e-12, "T = 1000");
    }
}

#[test]
fn budgets_that_cannot_work_are_refused() {
    let case = Case::new(Model::M3, 6, 1);
    let seq = case.seq();
    let zero = Run::new(Truncation::Full).memory(Memory::Revolve { states: 0 });
    let err = run(&case.cell, &case.params, &seq, &zero).unwrap_err();
    assert!(matches!(err, Error::InvalidArgument { .. }), "{err}");
    let tbptt = Run::new(Truncation::Tbptt { k1: 2, k2: 3 }).memory(Memory::Revolve { states: 3 });
    let err = run(&case.cell, &case.params, &seq, &tbptt).unwrap_err();
    assert!(matches!(err, Error::InvalidArgument { .. }), "{err}");
    let err = Memory::revolve_within::<f64>(100, 4, 4).unwrap_err();
    assert!(matches!(err, Error::InvalidArgument { .. }), "{err}");
    assert_eq!(
        Memory::revolve_within::<f64>(1000, 4, 4).unwrap(),
        Memory::Revolve { states: 7 }
    );
    assert!(schedule(0, 3).is_err() && schedule(5, 0).is_err());
    assert!(optimal_forward_steps(0, 3).is_err());
}

#[test]
fn a_budget_inside_segments_keeps_every_cut_based_estimate() {
    let case = Case::new(Model::M3, 40, 3).with_h0(2);
    let seq = case.seq();
    let truncations = [
        Truncation::Randomized {
            pi: Pi::Constant(0.9),
            seed: 1,
        },
        Truncation::Randomized {
            pi: Pi::Constant(0.97),
            seed: 2,
        },
        Truncation::Fixed { k: 7 },
        Truncation::Pattern((0..40).map(|t| [1.0, 1.5, 0.0, 2.0, 1.0][t % 5]).collect()),
    ];
    for tr in truncations {
        let what = format!("{tr:?}");
        let tape = run(&case.cell, &case.params, &seq, &Run::new(tr.clone())).unwrap();
        for s in [1, 3, 6] {
            let how = Run::new(tr.clone()).memory(Memory::Revolve { states: s });
            let r = run(&case.cell, &case.params, &seq, &how).unwrap();
            assert_grads_close(&case.params, &r.grads, &tape.grads, 1e-12, &what);
            assert_eq!(r.xi, tape.xi, "{what}: the same ξ");
            assert_eq!(r.h_final, tape.h_final, "{what}: h_T");
            assert!(r.stored_states <= s, "{what}");
        }
    }
}

/// `Randomized { π = 0.999 }` over 10^5 steps makes segments of about 1000 steps; a
/// budget of 12 states keeps every one within it, with the uncapped run's estimate.
#[test]
fn randomized_near_one_at_t_1e5_stays_within_a_budget() {
    let case = Case::sized(Model::M3, Shape::new(100_000, 1, 2, 2), 3, 0.5, 5);
    let seq = case.seq();
    let state_bytes = 3 * std::mem::size_of::<f64>();
    let budget = 12 * state_bytes;
    let memory = Memory::revolve_within::<f64>(budget, 1, 3).unwrap();
    assert_eq!(memory, Memory::Revolve { states: 12 });
    let one_step = run(
        &case.cell,
        &case.params,
        &seq,
        &Run::new(Truncation::Fixed { k: 1 }),
    )
    .unwrap();
    for seed in [1, 2, 3] {
        let tr = Truncation::Randomized {
            pi: Pi::Constant(0.999),
            seed,
        };
        let tape = run(&case.cell, &case.params, &seq, &Run::new(tr.clone())).unwrap();
        let r = run(&case.cell, &case.params, &seq, &Run::new(tr).memory(memory)).unwrap();
        assert!(
            r.stored_states * state_bytes <= budget,
            "seed {seed}: {} states",
            r.stored_states
        );
        assert!(
            r.peak_tape_nodes <= one_step.peak_tape_nodes,
            "seed {seed}: one step on the tape"
        );
        assert!(
            tape.peak_tape_nodes > 100 * r.peak_tape_nodes,
            "seed {seed}: long segments uncapped"
        );
        assert_eq!(r.xi, tape.xi);
        assert_grads_close(
            &case.params,
            &r.grads,
            &tape.grads,
            1e-12,
            &format!("seed {seed}"),
        );
    }
}

/// A stream reverses each of its segments within the budget once the segment is
/// complete (its length is then known, so the schedule is the optimal one): the same
/// gradient as `run` with the same truncation, at most s states.
#[test]
fn a_stream_within_a_budget_gives_the_run_gradient() {
    let case = Case::new(Model::M3, 50, 6);
    let seq = case.seq();
    let weights = case.weights();
    for tr in [
        Truncation::Full,
        Truncation::Randomized {
            pi: Pi::Constant(0.9),
            seed: 4,
        },
    ] {
        let how = Run::new(tr.clone()).memory(Memory::Revolve { states: 4 });
        let want = run(&case.cell, &case.params, &seq, &Run::new(tr)).unwrap();
        let mut stream = timetape::bptt::Stream::new(&case.cell, &case.params, 2, &how).unwrap();
        for (t, &alpha) in weights.iter().enumerate() {
            let x = case.data.xs.index_axis(ndarray::Axis(0), t);
            let labels: Vec<usize> = case.data.labels.row(t).to_vec();
            stream
                .push(x, timetape::bptt::StepTarget::Classes(&labels), alpha)
                .unwrap();
        }
        let got = stream.finish().unwrap();
        assert_grads_close(
            &case.params,
            &got.grads,
            &want.grads,
            1e-12,
            "stream within a budget",
        );
        assert!(got.stored_states <= 4);
        assert_eq!(got.xi, want.xi);
    }
}

/// A segment that holds no loss term (a last-step loss, `Fixed { k: 5 }` over 20 steps)
/// is only advanced under a budget, not reversed: the backward steps are the tape's,
/// and the forward steps 15 (three segments advanced) plus the optimum for the last
/// segment of 5 steps with 2 states, 11.
#[test]
fn segments_without_a_loss_are_only_advanced() {
    let case = Case::new(Model::M2, 20, 3);
    let seq = case.seq();
    let tr = Truncation::Fixed { k: 5 };
    let tape = run(&case.cell, &case.params, &seq, &Run::new(tr.clone())).unwrap();
    let how = Run::new(tr).memory(Memory::Revolve { states: 2 });
    let r = run(&case.cell, &case.params, &seq, &how).unwrap();
    assert_grads_close(&case.params, &r.grads, &tape.grads, 1e-12, "last-step loss");
    assert_eq!(r.backward_steps, tape.backward_steps);
    assert_eq!(r.forward_steps, 15 + optimal_forward_steps(5, 2).unwrap());
    // More states than steps: the arithmetic stays in range (2T − 1).
    assert_eq!(optimal_forward_steps(2, usize::MAX).unwrap(), 3);
}
