//! The GRU and LSTM forward passes against their equations written out on plain ndarray
//! (the rustdoc of `rnn::Gru` and `rnn::Lstm`), over T = 5 steps of a batch of B = 3
//! from a non-zero initial state: every state h_t (and c_t for the LSTM), every output
//! o_t and the loss. Finite differences (`cells_and_diagnostics.rs`) check the gradient
//! of whatever the forward pass computes, so they cannot see a forward pass that
//! computes the wrong function (swapped gates); a single step from a zero state cannot
//! see `h_{t−1} W_h` or `f ⊙ c_{t−1}`. The oracles read the parameters through the
//! public `Params` store and the cells' `ParamId` fields and never touch the tape.
//!
//! Tolerance `TOL = 1e-12`, relative to the largest entry of each compared matrix
//! (`common::max_rel_diff`). Both sides evaluate the same expressions in f64
//! (`f64::tanh` on both: the tape's f64 tanh kernel is the exact one); they differ only
//! in the summation order of the D + H + 2 ≤ 9-term sums of each pre-activation and in
//! the form of the logistic function (the tape splits on the sign of its argument),
//! i.e. a few ulp (≈ 1e-15 relative) per step. The recurrence carries earlier errors
//! with a gain of about 1 or less (weights of size ≤ 1/√H = 0.5, gates in (0, 1)), so
//! after 5 steps they stay ≲ 1e-14 of the largest entry; 1e-12 leaves two orders of
//! margin. A wrong gate or a missing term moves the states by 1e-2 or more (asserted
//! below for each such variant of the equations: ten orders above the tolerance).

mod common;

use common::{max_abs, max_rel_diff};
use ndarray::{Array2, Array3, ArrayView2, Axis, Slice};
use timetape::bptt;

use timetape::rnn::{self, Gru, Lstm, Sequence, SequenceLoss, Sizes};
use timetape::{init, ParamId, Params, Tape};

const TOL: f64 = 1e-12;
/// A variant of the equations (a swapped gate, a dropped term) must miss the tape by
/// more than this, relative: ten orders of magnitude above `TOL`.
const WRONG: f64 = 1e-2;
const T: usize = 5;
const B: usize = 3;
const D: usize = 3;
const H: usize = 4;
const Q: usize = 3;
const ALPHAS: [f64; T] = [0.4, 1.0, 0.7, 1.3, 0.9];

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

/// Columns `k·H .. (k+1)·H` of a matrix whose gates are stored side by side.
fn gate(a: &Array2<f64>, k: usize) -> Array2<f64> {
    a.slice_axis(Axis(1), Slice::from(k * H..(k + 1) * H))
        .to_owned()
}

fn value(params: &Params<f64>, id: ParamId) -> Array2<f64> {
    params.get(id).unwrap().clone()
}

fn inputs() -> Array3<f64> {
    Array3::from_shape_fn((T, B, D), |(t, b, d)| {
        ((t * 7 + b * 3 + d) as f64 * 0.61).sin() * 1.2
    })
}

fn labels() -> Array2<usize> {
    Array2::from_shape_fn((T, B), |(t, b)| (t + 2 * b) % Q)
}

/// What the oracle computes: the states h_1..h_T (for the LSTM `[h_t c_t]`), the outputs
/// o_1..o_T (each B×Q) and the loss `Σ_t α_t (1/B) Σ_b (logsumexp(o_{t,b}) − o_{t,b,y})`.
struct Forward {
    states: Vec<Array2<f64>>,
    outputs: Vec<Array2<f64>>,
    loss: f64,
}

/// Outputs `h_t W_hq + b_q` and the weighted softmax cross-entropy, from the states'
/// first H columns.
fn head(states: Vec<Array2<f64>>, w_hq: &Array2<f64>, b_q: &Array2<f64>) -> Forward {
    let labels = labels();
    let mut loss = 0.0;
    let outputs: Vec<Array2<f64>> = states
        .iter()
        .map(|s| s.slice_axis(Axis(1), Slice::from(0..H)).dot(w_hq) + b_q)
        .collect();
    for (t, o) in outputs.iter().enumerate() {
        for (b, row) in o.rows().into_iter().enumerate() {
            let m = row.iter().copied().fold(f64::NEG_INFINITY, common::nan_max);
            let lse = m + row.iter().map(|&z| (z - m).exp()).sum::<f64>().ln();
            loss += ALPHAS[t] / B as f64 * (lse - row[labels[[t, b]]]);
        }
    }
    Forward {
        states,
        outputs,
        loss,
    }
}

/// The GRU's equations, and variants of them that a correct cell must not match.
#[derive(Debug, Clone, Copy, PartialEq)]
enum GruEq {
    /// As documented (PyTorch's form):
    /// r = σ(x W_xr + b_xr + h W_hr + b_hr), z = σ(x W_xz + b_xz + h W_hz + b_hz),
    /// n = tanh(x W_xn + b_xn + r ⊙ (h W_hn + b_hn)), h′ = (1 − z) ⊙ n + z ⊙ h.
    Documented,
    /// r and z exchanged.
    SwappedResetAndUpdate,
    /// Cho et al.'s original candidate: n = tanh(x W_xn + b_xn + (r ⊙ h) W_hn + b_hn).
    ResetBeforeProduct,
    /// h′ = z ⊙ n + (1 − z) ⊙ h.
    UpdateWeightsSwapped,
}

fn gru_oracle(params: &Params<f64>, cell: &Gru, h0: &Array2<f64>, eq: GruEq) -> Forward {
    let xs = inputs();
    let (w_x, w_h) = (value(params, cell.w_x), value(params, cell.w_h));
    let (b_x, b_h) = (value(params, cell.b_x), value(params, cell.b_h));
    let w_hn = gate(&w_h, 2); // the H×H block W_hn of W_h
    let b_hn = gate(&b_h, 2);
    let mut h = h0.clone();
    let mut states = Vec::with_capacity(T);
    for x in xs.axis_iter(Axis(0)) {
        let gx = x.dot(&w_x) + &b_x;
        let gh = h.dot(&w_h) + &b_h;
        let mut r = (gate(&gx, 0) + gate(&gh, 0)).mapv(sigmoid);
        let mut z = (gate(&gx, 1) + gate(&gh, 1)).mapv(sigmoid);
        if eq == GruEq::SwappedResetAndUpdate {
            std::mem::swap(&mut r, &mut z);
        }
        let n = if eq == GruEq::ResetBeforeProduct {
            gate(&gx, 2) + (&r * &h).dot(&w_hn) + &b_hn
        } else {
            gate(&gx, 2) + &r * &gate(&gh, 2)
        }
        .mapv(f64::tanh);
        h = if eq == GruEq::UpdateWeightsSwapped {
            &z * &n + &z.mapv(|v| 1.0 - v) * &h
        } else {
            &z.mapv(|v| 1.0 - v) * &n + &z * &h
        };
        states.push(h.clone());
    }
    head(states, &value(params, cell.w_hq), &value(params, cell.b_q))
}

/// The LSTM's equations, and variants of them that a correct cell must not match.
#[derive(Debug, Clone, Copy, PartialEq)]
enum LstmEq {
    /// As documented: [a_i a_f a_g a_o] = x W_x + h W_h + b, i = σ(a_i), f = σ(a_f),
    /// g = tanh(a_g), o = σ(a_o), c′ = f ⊙ c + i ⊙ g, h′ = o ⊙ tanh(c′).
    Documented,
    /// i and f exchanged.
    SwappedInputAndForget,
    /// The candidate read from the output gate's quarter and the output gate from the
    /// candidate's.
    SwappedCandidateAndOutput,
    /// c′ = i ⊙ g: no `f ⊙ c_{t−1}` (invisible from a zero state).
    NoForgetPath,
    /// No `h_{t−1} W_h` (invisible from a zero state).
    NoRecurrentProduct,
}

fn lstm_oracle(params: &Params<f64>, cell: &Lstm, s0: &Array2<f64>, eq: LstmEq) -> Forward {
    let xs = inputs();
    let (w_x, w_h, bias) = (
        value(params, cell.w_x),
        value(params, cell.w_h),
        value(params, cell.b),
    );
    // s_0 = [h_0 c_0]: its first and second blocks of H columns.
    let (mut h, mut c) = (gate(s0, 0), gate(s0, 1));
    let mut states = Vec::with_capacity(T);
    for x in xs.axis_iter(Axis(0)) {
        let mut a = x.dot(&w_x) + &bias;
        if eq != LstmEq::NoRecurrentProduct {
            a = a + h.dot(&w_h);
        }
        let (mut qi, mut qf, mut qg, mut qo) = (0, 1, 2, 3);
        match eq {
            LstmEq::SwappedInputAndForget => std::mem::swap(&mut qi, &mut qf),
            LstmEq::SwappedCandidateAndOutput => std::mem::swap(&mut qg, &mut qo),
            _ => {}
        }
        let i = gate(&a, qi).mapv(sigmoid);
        let f = gate(&a, qf).mapv(sigmoid);
        let g = gate(&a, qg).mapv(f64::tanh);
        let o = gate(&a, qo).mapv(sigmoid);
        c = if eq == LstmEq::NoForgetPath {
            &i * &g
        } else {
            &f * &c + &i * &g
        };
        h = &o * &c.mapv(f64::tanh);
        let mut s = Array2::zeros((B, 2 * H));
        s.slice_axis_mut(Axis(1), Slice::from(0..H)).assign(&h);
        s.slice_axis_mut(Axis(1), Slice::from(H..2 * H)).assign(&c);
        states.push(s);
    }
    head(states, &value(params, cell.w_hq), &value(params, cell.b_q))
}

/// What the tape computes through the public API: states, outputs, loss.
fn tape_forward<C: rnn::Recurrent<f64>>(
    cell: &C,
    params: &Params<f64>,
    s0: &Array2<f64>,
) -> Forward {
    let (xs, labels) = (inputs(), labels());
    let loss = SequenceLoss::classes(labels.view()).weighted(&ALPHAS);
    let mut tape = Tape::new();
    let run: bptt::Unrolled = bptt::unroll(
        cell,
        &mut tape,
        params,
        &Sequence::new(xs.view(), loss).with_h0(s0.view()),
    )
    .unwrap();
    assert_eq!(run.states.len(), T);
    let states = run
        .states
        .iter()
        .map(|&s| tape.value(s).unwrap().to_owned())
        .collect();
    let mut outputs = vec![Array2::zeros((0, 0)); T];
    for (range, o) in &run.outputs {
        let o = tape.value(*o).unwrap();
        for (j, t) in range.clone().enumerate() {
            outputs[t] = o
                .slice_axis(Axis(0), Slice::from(j * B..(j + 1) * B))
                .to_owned();
        }
    }
    Forward {
        states,
        outputs,
        loss: tape.scalar(run.loss).unwrap(),
    }
}

/// Columns `cols` of `a`.
fn cols(a: &Array2<f64>, cols: std::ops::Range<usize>) -> ArrayView2<'_, f64> {
    a.slice_axis(Axis(1), Slice::from(cols))
}

/// Asserts every state (split into `parts`: named column ranges), output and the loss
/// agree to `TOL`; returns the worst relative difference seen.
fn assert_agree(
    got: &Forward,
    want: &Forward,
    parts: &[(&str, std::ops::Range<usize>)],
    what: &str,
) -> f64 {
    let mut worst = 0.0f64;
    for t in 0..T {
        for (name, range) in parts {
            let d = max_rel_diff(
                cols(&got.states[t], range.clone()),
                cols(&want.states[t], range.clone()),
            );
            assert!(d <= TOL, "{what}: {name}_{} differs by {d:e}", t + 1);
            worst = worst.max(d);
        }
        let d = max_rel_diff(got.outputs[t].view(), want.outputs[t].view());
        assert!(d <= TOL, "{what}: o_{} differs by {d:e}", t + 1);
        worst = worst.max(d);
    }
    let d = (got.loss - want.loss).abs() / want.loss.abs();
    assert!(
        d <= TOL,
        "{what}: loss {} vs {} ({d:e})",
        got.loss,
        want.loss
    );
    worst.max(d)
}

/// The largest relative difference between two runs' states over all steps, for a
/// variant that must differ: both sides are checked finite first (a NaN is not a
/// difference).
fn state_difference(got: &Forward, want: &Forward) -> f64 {
    (0..T)
        .map(|t| {
            let (a, b) = (&got.states[t], &want.states[t]);
            assert!(max_abs(a.iter().chain(b.iter()).copied()).is_finite());
            max_rel_diff(a.view(), b.view())
        })
        .fold(0.0, common::nan_max)
}

fn gru_case() -> (Params<f64>, Gru, Array2<f64>) {
    let mut params = Params::<f64>::new();
    let cell = Gru::new(&mut params, Sizes::new(D, H, Q), 11).unwrap();
    // b_q starts at zero: give it values so that the output bias is checked too.
    let b_q = init::uniform((1, Q), 0.5, &mut init::rng(12)).unwrap();
    params.get_mut(cell.b_q).unwrap().assign(&b_q);
    let h0 = Array2::from_shape_fn((B, H), |(b, j)| 0.6 * ((b * H + j) as f64 * 1.3).cos());
    (params, cell, h0)
}

fn lstm_case() -> (Params<f64>, Lstm, Array2<f64>) {
    let mut params = Params::<f64>::new();
    let cell = Lstm::new(&mut params, Sizes::new(D, H, Q), 21).unwrap();
    // The gate biases start at 0 (1 for the forget gate) and b_q at 0: give every
    // quarter its own values so that a bias read from the wrong quarter shows.
    let bias = init::uniform((1, 4 * H), 0.5, &mut init::rng(22)).unwrap();
    params.get_mut(cell.b).unwrap().assign(&bias);
    let b_q = init::uniform((1, Q), 0.5, &mut init::rng(23)).unwrap();
    params.get_mut(cell.b_q).unwrap().assign(&b_q);
    // [h_0 c_0], both non-zero.
    let s0 = Array2::from_shape_fn((B, 2 * H), |(b, j)| {
        if j < H {
            0.6 * ((b * H + j) as f64 * 1.3).cos()
        } else {
            1.5 * ((b * H + j) as f64 * 0.7).sin()
        }
    });
    (params, cell, s0)
}

#[test]
fn gru_states_outputs_and_loss_match_its_equations_over_five_steps() {
    let (params, cell, h0) = gru_case();
    let got = tape_forward(&cell, &params, &h0);
    let want = gru_oracle(&params, &cell, &h0, GruEq::Documented);
    let worst = assert_agree(&got, &want, &[("h", 0..H)], "GRU");
    println!("GRU forward: worst relative difference {worst:e}");
}

#[test]
fn lstm_states_cells_outputs_and_loss_match_its_equations_over_five_steps() {
    let (params, cell, s0) = lstm_case();
    let got = tape_forward(&cell, &params, &s0);
    let want = lstm_oracle(&params, &cell, &s0, LstmEq::Documented);
    let worst = assert_agree(&got, &want, &[("h", 0..H), ("c", H..2 * H)], "LSTM");
    println!("LSTM forward: worst relative difference {worst:e}");
}

/// The GRU check has teeth: the tape misses each wrong form of the equations by more
/// than `WRONG` (and the documented form by at most `TOL`).
#[test]
fn gru_oracle_with_swapped_or_misplaced_gates_misses_the_tape() {
    let (params, cell, h0) = gru_case();
    let got = tape_forward(&cell, &params, &h0);
    for eq in [
        GruEq::SwappedResetAndUpdate,
        GruEq::ResetBeforeProduct,
        GruEq::UpdateWeightsSwapped,
    ] {
        let d = state_difference(&got, &gru_oracle(&params, &cell, &h0, eq));
        println!("GRU {eq:?}: {d:e}");
        assert!(d > WRONG, "{eq:?} is not told apart from the tape: {d:e}");
    }
    let d = state_difference(&got, &gru_oracle(&params, &cell, &h0, GruEq::Documented));
    assert!(d <= TOL);
}

/// The LSTM check has teeth: the tape misses each wrong form of the equations,
/// including the two a single step from a zero state cannot see (no `f ⊙ c_{t−1}`, no
/// `h_{t−1} W_h`), by more than `WRONG`.
#[test]
fn lstm_oracle_with_swapped_gates_or_dropped_terms_misses_the_tape() {
    let (params, cell, s0) = lstm_case();
    let got = tape_forward(&cell, &params, &s0);
    for eq in [
        LstmEq::SwappedInputAndForget,
        LstmEq::SwappedCandidateAndOutput,
        LstmEq::NoForgetPath,
        LstmEq::NoRecurrentProduct,
    ] {
        let d = state_difference(&got, &lstm_oracle(&params, &cell, &s0, eq));
        println!("LSTM {eq:?}: {d:e}");
        assert!(d > WRONG, "{eq:?} is not told apart from the tape: {d:e}");
    }
    let d = state_difference(&got, &lstm_oracle(&params, &cell, &s0, LstmEq::Documented));
    assert!(d <= TOL);
}
