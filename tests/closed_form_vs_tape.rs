//! The closed forms of the notes (`timetape::closed_form`, ndarray only) against the tape
//! (`rnn::unroll*` + `Tape::backward`), and against each other.
//!
//! Tolerance: `TOL = 1e-10`, relative, per parameter and per `∂L/∂h_t` as
//! `max |a − b| / max |b|` (`Grads::max_rel_diff`). Both sides evaluate exact formulas in
//! f64 (no finite differences, no approximation; `tanh` is `f64::tanh` on both sides);
//! they differ only in the order of summation (whole-sequence vs per-step matrix
//! products, the batch mean applied before or after the sum, powers vs recursion). Each
//! rounding is ≤ 2⁻⁵³ ≈ 1.1e-16 relative; over T ≤ 30 steps of products with matrices of
//! norm < 1 (the weights below keep the RNN contractive) and sums of ≤ 30·4 terms, the
//! error grows by at most a few hundred ulp of the largest term, ~1e-13. 1e-10 leaves
//! three orders of magnitude for cancellation in a sum, and is still seven orders below
//! any real mistake (a missing path, a transposed matrix, a wrong 1/B or 1/T is ≥ 1e-3).
//!
//! Floor: an entry far below the largest of its group (all parameter gradients of a
//! run; all its ∂L/∂h_t and ∂L/∂h_0) comes out of cancellation between terms of about
//! the group's size, or out of rounding errors made on those and carried back through
//! contractive steps, so its error is a few u·G (G the group's largest entry), not a few
//! u of itself. Running 20000 cases found two such: a W_hh gradient 3·10⁶ times below
//! W_hq's (H = 1, Q = 2, the two W_hq entries within 5e-5 of each other, so e_t W_hqᵀ
//! cancels) that agreed to 3.4e-10 of itself, i.e. 1.1 u·G; and a ∂L/∂h_1 of 3e-21 at
//! the start of 24 contractive ReLU steps, to 2.1e-10 of itself (both replayed from
//! `proptest-regressions/closed_form_vs_tape.txt`). So each quantity is compared at TOL
//! relative to `max(max |b|, FLOOR · G)` (`common::max_rel_diff_floored`): unchanged for
//! quantities above 1e-4 of G, and within 1e-14 · G ≈ 90 u·G below that.

mod common;

use common::{finite_scale, max_rel_diff as rel, max_rel_diff_floored};
use ndarray::{Array1, Array2, Array3, Axis};
use proptest::prelude::*;
use rand::Rng;
use timetape::bptt;
use timetape::bptt::Edge;
use timetape::closed_form::{self, ClosedForm, M3Workspace};
use timetape::rnn::{models, Activation, Biases, Rnn, RnnConfig, Sequence, SequenceLoss};
use timetape::{init, Error, Grads, Params, Tape};

const TOL: f64 = 1e-10;
/// Scale floor relative to the largest entry of a group (see the module comment).
const FLOOR: f64 = 1e-4;
/// Cases per property (see `common::proptest_config`; `PROPTEST_CASES` overrides): the
/// file runs in ~0.8 s in release (~30 s unoptimized) on 2 cores; 100000 pass.
const CASES: u32 = 1024;

/// A random problem: sizes, weights, inputs, targets, all from one seed.
struct Problem {
    params: Params<f64>,
    cell: Rnn,
    xs: Array3<f64>,
    h0: Option<Array2<f64>>,
    classes: Array2<usize>,
    values: Array3<f64>,
    last_class: Array1<usize>,
    last_binary: Array1<f64>,
    last_values: Array2<f64>,
    alphas: Vec<f64>,
}

#[derive(Debug, Clone, Copy)]
struct Sizes {
    t: usize,
    b: usize,
    d: usize,
    h: usize,
    q: usize,
}

fn sizes() -> impl Strategy<Value = (Sizes, u64)> {
    (
        1usize..=30,
        1usize..=4,
        1usize..=6,
        1usize..=8,
        1usize..=4,
        any::<u64>(),
    )
        .prop_map(|(t, b, d, h, q, seed)| (Sizes { t, b, d, h, q }, seed))
}

/// Builds an RNN with `config` and random weights that keep it stable: `W_hh` uniform in
/// ±0.9/√H (spectral radius ≈ 0.9/√3 ≈ 0.52), `W_xh` in ±1/√D, `W_hq` in ±1/√H, biases in
/// ±0.3, inputs in ±1: pre-activations stay O(1), so tanh and sigmoid do not saturate.
fn problem(config: RnnConfig, s: Sizes, seed: u64, with_h0: bool) -> Problem {
    let mut params = Params::<f64>::new();
    let cell = Rnn::new(&mut params, config, seed).unwrap();
    let mut rng = init::rng(seed ^ 0x5eed);
    let (d, h, q) = (cell.config.input, cell.config.hidden, cell.config.output);
    *params.get_mut(cell.w_xh).unwrap() =
        init::uniform((d, h), 1.0 / (d as f64).sqrt(), &mut rng).unwrap();
    *params.get_mut(cell.w_hh).unwrap() =
        init::uniform((h, h), 0.9 / (h as f64).sqrt(), &mut rng).unwrap();
    *params.get_mut(cell.w_hq).unwrap() =
        init::uniform((h, q), 1.0 / (h as f64).sqrt(), &mut rng).unwrap();
    if let Some(id) = cell.b_h {
        *params.get_mut(id).unwrap() = init::uniform((1, h), 0.3, &mut rng).unwrap();
    }
    if let Some(id) = cell.b_q {
        *params.get_mut(id).unwrap() = init::uniform((1, q), 0.3, &mut rng).unwrap();
    }
    let xs = Array3::from_shape_simple_fn((s.t, s.b, d), || rng.random_range(-1.0..1.0));
    let h0 =
        with_h0.then(|| Array2::from_shape_simple_fn((s.b, h), || rng.random_range(-0.5..0.5)));
    let classes = Array2::from_shape_simple_fn((s.t, s.b), || rng.random_range(0..q));
    let values = Array3::from_shape_simple_fn((s.t, s.b, q), || rng.random_range(-1.0..1.0));
    let last_class = Array1::from_shape_simple_fn(s.b, || rng.random_range(0..q));
    // Binary targets: mostly 0/1 labels, sometimes soft targets in (0, 1).
    let last_binary = Array1::from_shape_simple_fn(s.b, || match rng.random_range(0..3) {
        0 => 0.0,
        1 => 1.0,
        _ => rng.random::<f64>(),
    });
    let alphas = (0..s.t).map(|_| rng.random_range(0.0..1.0)).collect();
    let last_values = Array2::from_shape_simple_fn((s.b, q), || rng.random_range(-1.0..1.0));
    Problem {
        params,
        cell,
        xs,
        h0,
        classes,
        values,
        last_class,
        last_binary,
        last_values,
        alphas,
    }
}

/// The tape's answer in the shape of a `ClosedForm`: loss, grads, `∂L/∂h_t` read as
/// `tape.adjoint(run.states[t])` (zeros where the loss does not reach), `∂L/∂h_0`.
fn tape_run(
    p: &Problem,
    loss: &SequenceLoss<'_, f64>,
    edges: Option<&[Edge<f64>]>,
) -> ClosedForm<f64> {
    let mut tape = Tape::new();
    let h0 = p.h0.as_ref().map(|h| h.view());
    let unroll = bptt::Unroll::new(&p.cell, &p.params);
    let unroll = edges.map_or(unroll, |e| unroll.edges(e));
    let run = unroll
        .record(&mut tape, &Sequence::new(p.xs.view(), *loss).with_h0(h0))
        .unwrap();
    let grads = tape.backward(run.loss).unwrap();
    let (b, h) = (p.xs.dim().1, p.cell.config.hidden);
    let adj = |v| {
        tape.adjoint(v)
            .unwrap()
            .map_or_else(|| Array2::zeros((b, h)), |a| a.to_owned())
    };
    ClosedForm {
        loss: tape.scalar(run.loss).unwrap(),
        grads,
        dh: run.states.iter().map(|&s| adj(s)).collect(),
        dh0: adj(run.h0),
    }
}

/// Asserts that two results agree to `TOL`: loss, every parameter, every `∂L/∂h_t`, `∂L/∂h_0`.
fn agree(got: &ClosedForm<f64>, want: &ClosedForm<f64>, what: &str) -> Result<(), TestCaseError> {
    let dl = (got.loss - want.loss).abs() / want.loss.abs().max(f64::MIN_POSITIVE);
    prop_assert!(
        dl <= TOL,
        "{what}: loss {} vs {} (rel {dl:e})",
        got.loss,
        want.loss
    );
    // Every parameter of `want` must have a gradient on both sides (a missing one is a
    // missing path); the floor is FLOOR times the largest entry of all of them.
    let ids: Vec<_> = want.grads.iter().map(|(id, _)| id).collect();
    prop_assert_eq!(got.grads.iter().count(), ids.len(), "{}: gradients", what);
    let g_max = finite_scale(want.grads.iter().flat_map(|(_, g)| g.iter().copied()), what);
    for &id in &ids {
        let (a, b) = (got.grads.get(id), want.grads.get(id).unwrap());
        prop_assert!(a.is_ok(), "{}: no gradient for {:?}", what, id);
        let d = max_rel_diff_floored(a.unwrap().view(), b.view(), FLOOR * g_max);
        prop_assert!(
            d <= TOL,
            "{what}: grads rel diff {d:e} on {id:?}\n{:?}\nvs\n{:?}",
            got.grads,
            want.grads
        );
    }
    prop_assert_eq!(got.dh.len(), want.dh.len(), "{}: number of dh", what);
    let dh_max = finite_scale(
        want.dh
            .iter()
            .chain([&want.dh0])
            .flat_map(|a| a.iter().copied()),
        what,
    );
    let rel_dh =
        |a: &Array2<f64>, b: &Array2<f64>| max_rel_diff_floored(a.view(), b.view(), FLOOR * dh_max);
    for (t, (a, b)) in got.dh.iter().zip(&want.dh).enumerate() {
        let d = rel_dh(a, b);
        prop_assert!(
            d <= TOL,
            "{what}: dL/dh_{} rel diff {d:e}\n{a}\nvs\n{b}",
            t + 1
        );
    }
    let d0 = rel_dh(&got.dh0, &want.dh0);
    prop_assert!(
        d0 <= TOL,
        "{what}: dL/dh_0 rel diff {d0:e}\n{}\nvs\n{}",
        got.dh0,
        want.dh0
    );
    Ok(())
}

/// How a loss is weighted and reduced (per-step options apply to per-step targets only).
#[derive(Debug, Clone, Copy, Default)]
struct LossOpts {
    weighted: bool,
    mean_over_time: bool,
    sum_over_batch: bool,
}

/// The loss of problem `p` for a target kind: 0 classes, 1 values, 2 last class,
/// 3 last binary (needs Q = 1), 4 last values.
fn loss_of(p: &Problem, kind: u8, o: LossOpts) -> SequenceLoss<'_, f64> {
    let last = match kind {
        0 | 1 => {
            let mut loss = match kind {
                0 => SequenceLoss::classes(p.classes.view()),
                _ => SequenceLoss::values(p.values.view()),
            };
            if o.weighted {
                loss = loss.weighted(&p.alphas);
            }
            if o.mean_over_time {
                loss = loss.mean_over_time();
            }
            if o.sum_over_batch {
                loss = loss.sum_over_batch();
            }
            return loss.into();
        }
        2 => SequenceLoss::last_class(p.last_class.view()),
        3 => SequenceLoss::last_binary(p.last_binary.view()),
        _ => SequenceLoss::last_values(p.last_values.view()),
    };
    if o.sum_over_batch {
        last.sum_over_batch().into()
    } else {
        last.into()
    }
}

/// The options from the bits of `bits`: weighted (1), mean over time (2), sum over the
/// batch (4).
fn opts(bits: u8) -> LossOpts {
    LossOpts {
        weighted: bits & 1 != 0,
        mean_over_time: bits & 2 != 0,
        sum_over_batch: bits & 4 != 0,
    }
}

fn m1_config(s: Sizes) -> RnnConfig {
    RnnConfig::new(s.d, s.h, s.q)
        .activation(Activation::Identity)
        .biases(Biases {
            hidden: false,
            output: false,
        })
}

proptest! {
    #![proptest_config(common::proptest_config(
        CASES,
        concat!(env!("CARGO_MANIFEST_DIR"), "/proptest-regressions/closed_form_vs_tape.txt"),
    ))]

    /// M1 (linear, no bias) with softmax CE and with squared error, mean over time:
    /// the tape equals the recursion (6)–(8), and the recursion equals the power sum (9).
    #[test]
    fn m1_recursion_matches_tape_and_power_sum(
        (s, seed) in sizes(), weighted in any::<bool>(), with_h0 in any::<bool>(),
    ) {
        // Q ≥ 2: with one class the softmax CE is constant and its gradient 0.
        let s = Sizes { q: s.q.max(2), ..s };
        let p = problem(m1_config(s), s, seed, with_h0);
        let h0 = p.h0.as_ref().map(|h| h.view());
        for kind in [0u8, 1] {
            let loss = loss_of(&p, kind, LossOpts { weighted, mean_over_time: true, ..LossOpts::default() });
            let rec = closed_form::m1_recursion(&p.params, &p.cell, &Sequence::new(p.xs.view(), loss).with_h0(h0)).unwrap();
            let pow = closed_form::m1_power_sum(&p.params, &p.cell, &Sequence::new(p.xs.view(), loss).with_h0(h0)).unwrap();
            let tape = tape_run(&p, &loss, None);
            prop_assert!(rec.grads.global_norm() > 0.0);
            agree(&rec, &tape, &format!("M1 kind {kind}: recursion vs tape"))?;
            agree(&pow, &rec, &format!("M1 kind {kind}: power sum vs recursion"))?;
        }
    }

    /// M2 (ReLU, last-step sigmoid + BCE): the notes' explicit products with the Kronecker
    /// form of ∂L/∂W, and the outer-product form, both equal the tape and each other.
    #[test]
    fn m2_kronecker_and_outer_forms_match_tape(
        (s, seed) in sizes(), biases in any::<(bool, bool)>(), with_h0 in any::<bool>(),
        sum_over_batch in any::<bool>(),
    ) {
        let s = Sizes { q: 1, ..s };
        let config = RnnConfig::new(s.d, s.h, 1)
            .activation(Activation::Relu)
            .biases(Biases { hidden: biases.0, output: biases.1 });
        let p = problem(config, s, seed, with_h0);
        let h0 = p.h0.as_ref().map(|h| h.view());
        let loss = loss_of(&p, 3, LossOpts { sum_over_batch, ..LossOpts::default() });
        let kron = closed_form::m2(&p.params, &p.cell, &Sequence::new(p.xs.view(), loss).with_h0(h0)).unwrap();
        let outer = closed_form::m2_outer(&p.params, &p.cell, &Sequence::new(p.xs.view(), loss).with_h0(h0)).unwrap();
        let tape = tape_run(&p, &loss, None);
        agree(&kron, &tape, "M2 Kronecker vs tape")?;
        agree(&outer, &tape, "M2 outer vs tape")?;
        agree(&kron, &outer, "M2 Kronecker vs outer")?;
    }

    /// M3 (tanh, softmax CE at every step) with uniform weights, random α_t, and a mean
    /// over time: the speed-reference workspace equals the tape.
    #[test]
    fn m3_matches_tape_with_uniform_and_random_step_weights(
        (s, seed) in sizes(), with_h0 in any::<bool>(), mean in any::<bool>(),
        sum_over_batch in any::<bool>(),
    ) {
        let s = Sizes { q: s.q.max(2), ..s };
        let p = problem(RnnConfig::new(s.d, s.h, s.q), s, seed, with_h0);
        let h0 = p.h0.as_ref().map(|h| h.view());
        for weighted in [false, true] {
            let loss = loss_of(&p, 0, LossOpts { weighted, mean_over_time: mean, sum_over_batch });
            let cf = closed_form::m3(&p.params, &p.cell, &Sequence::new(p.xs.view(), loss).with_h0(h0)).unwrap();
            let tape = tape_run(&p, &loss, None);
            prop_assert!(cf.grads.global_norm() > 0.0);
            agree(&cf, &tape, &format!("M3 weighted {weighted} mean {mean}"))?;
        }
    }

    /// M3 at T = 3 with the note's L = 0.1 L_1 + 0.1 L_2 + 0.8 L_3.
    #[test]
    fn m3_with_the_notes_step_weights_matches_tape((s, seed) in sizes()) {
        let s = Sizes { t: 3, q: s.q.max(2), ..s };
        let p = problem(RnnConfig::new(s.d, s.h, s.q), s, seed, false);
        let alphas = [0.1, 0.1, 0.8];
        let loss = SequenceLoss::classes(p.classes.view()).weighted(&alphas);
        let cf = closed_form::m3(&p.params, &p.cell, &Sequence::new(p.xs.view(), loss)).unwrap();
        agree(&cf, &tape_run(&p, &loss.into(), None), "M3 α = (0.1, 0.1, 0.8)")?;
        // The same through the workspace API.
        let mut ws = M3Workspace::new();
        let l = ws.run(&p.params, &p.cell, &Sequence::new(p.xs.view(), loss)).unwrap();
        prop_assert_eq!(l, cf.loss);
        prop_assert_eq!(ws.grads(&p.params).unwrap(), cf.grads);
    }

    /// M3 at T = 3: ∂L/∂S_1 is the sum of its three paths to the loss (seed 004), each
    /// computed here separately: directly via L_1; via S_2 → L_2; via S_2 → S_3 → L_3.
    /// And ∂L/∂S_2 is the sum of its two.
    #[test]
    fn m3_ds1_is_the_sum_of_its_three_paths(
        (s, seed) in sizes(), weighted in any::<bool>(),
    ) {
        let s = Sizes { t: 3, q: s.q.max(2), ..s };
        let p = problem(RnnConfig::new(s.d, s.h, s.q), s, seed, false);
        let alphas = [0.1, 0.1, 0.8];
        let mut loss = SequenceLoss::classes(p.classes.view());
        if weighted {
            loss = loss.weighted(&alphas);
        }
        let cf = closed_form::m3(&p.params, &p.cell, &Sequence::new(p.xs.view(), loss)).unwrap();
        let tape = tape_run(&p, &loss.into(), None);

        // Forward, independently: S_t = tanh(x_t W_xh + S_{t−1} W_hh + b_h).
        let g = |id| p.params.get(id).unwrap().clone();
        let (w_xh, w_hh, w_hq) = (g(p.cell.w_xh), g(p.cell.w_hh), g(p.cell.w_hq));
        let (b_h, b_q) = (g(p.cell.b_h.unwrap()), g(p.cell.b_q.unwrap()));
        let mut st = vec![Array2::<f64>::zeros((s.b, s.h))];
        for x in p.xs.axis_iter(Axis(0)) {
            let a = x.dot(&w_xh) + st.last().unwrap().dot(&w_hh) + &b_h;
            st.push(a.mapv(f64::tanh));
        }
        // e_t = α_t / B (softmax(o_t) − onehot), and u_t = e_t W_hqᵀ (= ∂L_t/∂S_t, weighted).
        let u: Vec<Array2<f64>> = (1..=3)
            .map(|t| {
                let mut e = st[t].dot(&w_hq) + &b_q;
                let c = if weighted { alphas[t - 1] } else { 1.0 } / s.b as f64;
                for (r, mut row) in e.axis_iter_mut(Axis(0)).enumerate() {
                    let m = row.fold(f64::NEG_INFINITY, |m, &x| m.max(x));
                    row.mapv_inplace(|x| (x - m).exp());
                    let z = row.sum();
                    row.mapv_inplace(|x| c * x / z);
                    row[p.classes[[t - 1, r]]] -= c;
                }
                e.dot(&w_hq.t())
            })
            .collect();
        let back = |v: &Array2<f64>, t: usize| (v * &st[t].mapv(|y| 1.0 - y * y)).dot(&w_hh.t());
        let path1 = u[0].clone();
        let path2 = back(&u[1], 2);
        let path3 = back(&back(&u[2], 3), 2);
        let ds1 = &path1 + &path2 + &path3;
        let ds2 = &u[1] + &back(&u[2], 3);
        for (name, a) in [("closed form", &cf), ("tape", &tape)] {
            let d1 = rel(a.dh[0].view(), ds1.view());
            prop_assert!(d1 <= TOL, "{name}: dL/dS_1 vs three paths, rel {d1:e}");
            let d2 = rel(a.dh[1].view(), ds2.view());
            prop_assert!(d2 <= TOL, "{name}: dL/dS_2 vs two paths, rel {d2:e}");
        }
        // Every path carries gradient: leaving one out would be seen.
        for (i, path) in [&path1, &path2, &path3].into_iter().enumerate() {
            prop_assert!(path.iter().any(|&x| x != 0.0), "path {} is zero", i + 1);
        }
    }

    /// Regular truncation: the closed form with the reverse recursion stopped at the block
    /// starts equals the tape with `Edge::Detach` there, for k = 1, 2, 3, 5, T.
    #[test]
    fn truncated_matches_tape_with_detach_at_block_starts(
        (s, seed) in sizes(), act in 0usize..4, kind in 0u8..5, with_h0 in any::<bool>(),
        sum_over_batch in any::<bool>(),
    ) {
        let activation = [Activation::Tanh, Activation::Relu, Activation::Sigmoid, Activation::Identity][act];
        let s = if kind == 3 { Sizes { q: 1, ..s } } else { s };
        let p = problem(RnnConfig::new(s.d, s.h, s.q).activation(activation), s, seed, with_h0);
        let h0 = p.h0.as_ref().map(|h| h.view());
        let loss = loss_of(&p, kind, LossOpts { weighted: kind < 2, sum_over_batch, ..LossOpts::default() });
        for k in [1, 2, 3, 5, s.t] {
            let cuts = closed_form::block_starts(s.t, k).unwrap();
            let edges: Vec<Edge<f64>> = cuts
                .iter()
                .map(|&c| if c { Edge::Detach } else { Edge::Keep })
                .collect();
            let cf = closed_form::truncated_fixed(&p.params, &p.cell, &Sequence::new(p.xs.view(), loss).with_h0(h0), k).unwrap();
            let by_cuts = closed_form::truncated(&p.params, &p.cell, &Sequence::new(p.xs.view(), loss).with_h0(h0), &cuts).unwrap();
            prop_assert_eq!(&cf, &by_cuts);
            agree(&cf, &tape_run(&p, &loss, Some(&edges)), &format!("truncated k = {k}, {activation:?}, kind {kind}"))?;
            prop_assert!(cf.dh0.iter().all(|&x| x == 0.0), "h_0 is detached at a block start");
        }
        // One block (k = T) only cuts h_0, which is not a parameter: the full gradient.
        let one_block = closed_form::truncated_fixed(&p.params, &p.cell, &Sequence::new(p.xs.view(), loss).with_h0(h0), s.t).unwrap();
        let full = closed_form::m4(&p.params, &p.cell, &Sequence::new(p.xs.view(), loss).with_h0(h0)).unwrap();
        prop_assert!(one_block.grads.max_rel_diff(&full.grads) <= TOL);
    }

    /// M4 (any activation, optional biases, any targets, given or zero h_0, any weights and
    /// reductions over time and batch) equals the tape.
    #[test]
    fn m4_matches_tape_for_every_activation_and_target(
        (s, seed) in sizes(), act in 0usize..4, kind in 0u8..5,
        biases in any::<(bool, bool)>(), with_h0 in any::<bool>(), bits in 0u8..8,
    ) {
        let activation = [Activation::Relu, Activation::Sigmoid, Activation::Identity, Activation::Tanh][act];
        let s = if kind == 3 { Sizes { q: 1, ..s } } else { s };
        let config = RnnConfig::new(s.d, s.h, s.q).activation(activation).biases(Biases { hidden: biases.0, output: biases.1 });
        let p = problem(config, s, seed, with_h0);
        let h0 = p.h0.as_ref().map(|h| h.view());
        let loss = loss_of(&p, kind, opts(bits));
        let cf = closed_form::m4(&p.params, &p.cell, &Sequence::new(p.xs.view(), loss).with_h0(h0)).unwrap();
        agree(&cf, &tape_run(&p, &loss, None), &format!("M4 {activation:?} kind {kind}"))?;
    }
}

/// The workspace reuses its buffers across calls of different sizes and gives the same
/// result as a fresh run; `grads_into` overwrites instead of adding.
#[test]
fn m3_workspace_reuse_gives_the_same_result_as_a_fresh_run() {
    let a = problem(
        RnnConfig::new(3, 5, 4),
        Sizes {
            t: 7,
            b: 2,
            d: 3,
            h: 5,
            q: 4,
        },
        1,
        true,
    );
    let b = problem(
        RnnConfig::new(2, 3, 2),
        Sizes {
            t: 4,
            b: 3,
            d: 2,
            h: 3,
            q: 2,
        },
        2,
        false,
    );
    let mut ws = M3Workspace::new();
    let mut grads_a = Grads::new(&a.params);
    for p in [&a, &b, &a, &a] {
        let h0 = p.h0.as_ref().map(|h| h.view());
        let loss = SequenceLoss::classes(p.classes.view()).weighted(&p.alphas);
        let fresh = closed_form::m3(
            &p.params,
            &p.cell,
            &Sequence::new(p.xs.view(), loss).with_h0(h0),
        )
        .unwrap();
        let l = ws
            .run(
                &p.params,
                &p.cell,
                &Sequence::new(p.xs.view(), loss).with_h0(h0),
            )
            .unwrap();
        assert_eq!(l, fresh.loss);
        assert_eq!(ws.loss(), fresh.loss);
        assert_eq!(ws.grads(&p.params).unwrap(), fresh.grads);
        assert_eq!(ws.dh0(), fresh.dh0.view());
        let b_rows = p.xs.dim().1;
        for (t, dh) in fresh.dh.iter().enumerate() {
            let rows = ws
                .dh()
                .slice_axis(Axis(0), ndarray::Slice::from(t * b_rows..(t + 1) * b_rows))
                .to_owned();
            assert_eq!(&rows, dh);
        }
        assert_eq!(ws.states().nrows(), p.xs.dim().0 * b_rows);
        if std::ptr::eq(p, &a) {
            ws.grads_into(&mut grads_a).unwrap();
            assert_eq!(
                grads_a, fresh.grads,
                "grads_into overwrites, it does not add"
            );
        }
    }
}

/// f32 runs through the same code; against the f32 tape to f32 accuracy (1e-4 relative
/// per parameter). The closed form's tanh is the exact one rounded to f32, the tape's is
/// Eigen's rational approximation (`Scalar::tanh_kernel`, within 6e-7 absolute): their
/// states differ by a few ulp (ε = 6e-8). Each gradient entry then differs by a few ulp
/// of its terms, magnified by cancellation; the worst is b_q, a sum over 36 rows of
/// terms α_t/B (softmax − onehot) of size up to 1/36 that cancel to ~5e-4 (a factor
/// ~50): a few ε × 50 ≈ 1e-5 relative (seen: 1.9e-5, the same with either tanh, as the
/// summation order dominates). A missing path or a wrong 1/B or 1/T is ≥ 1e-2.
#[test]
fn m3_in_f32_matches_the_f32_tape() {
    let mut params = Params::<f32>::new();
    let cell = models::m3(&mut params, timetape::rnn::Sizes::new(4, 6, 3), 5).unwrap();
    let xs = Array3::from_shape_fn((12, 3, 4), |(t, b, d)| {
        ((t * 13 + b * 5 + d) as f32 * 0.41).sin()
    });
    let labels = Array2::from_shape_fn((12, 3), |(t, b)| (t * 7 + b) % 3);
    let loss = SequenceLoss::classes(labels.view()).mean_over_time();
    let cf = closed_form::m3(&params, &cell, &Sequence::new(xs.view(), loss)).unwrap();
    let mut tape = Tape::new();
    let run = bptt::unroll(&cell, &mut tape, &params, &Sequence::new(xs.view(), loss)).unwrap();
    let grads = tape.backward(run.loss).unwrap();
    let d = cf.grads.max_rel_diff(&grads);
    assert!(d < 1e-4, "f32 rel diff {d:e}");
    assert!((cf.loss - tape.scalar(run.loss).unwrap()).abs() < 1e-5 * cf.loss.abs());
}

/// The closed form shares no tanh with the tape: with dyadic inputs, weights and h_0
/// (multiples of 1/8), the pre-activation `x W_xh + h_0 W_hh + b_h` of the first step is
/// exact in f32, so `h_1` must be the exact tanh of it rounded to f32, bit for bit.
/// (The tape's rational f32 tanh, which the closed form used before, is off by an ulp
/// on most of these entries.)
#[test]
fn m3_workspace_f32_first_state_is_the_exact_tanh_rounded() {
    let (b, d, h, q) = (4, 2, 8, 3);
    let dyadic = |i: usize| ((i * 37 + 11) % 17) as f32 / 8.0 - 1.0;
    let mut params = Params::<f32>::new();
    let cell = models::m3(&mut params, timetape::rnn::Sizes::new(d, h, q), 5).unwrap();
    for (k, id) in [cell.w_xh, cell.w_hh, cell.b_h.unwrap()]
        .into_iter()
        .enumerate()
    {
        let w = params.get_mut(id).unwrap();
        let cols = w.ncols();
        w.indexed_iter_mut()
            .for_each(|((i, j), v)| *v = dyadic(100 * k + i * cols + j));
    }
    let xs = Array3::from_shape_fn((1, b, d), |(_, r, c)| dyadic(300 + r * d + c));
    let h0 = Array2::from_shape_fn((b, h), |(r, c)| dyadic(400 + r * h + c) / 2.0);
    let labels = Array2::<usize>::zeros((1, b));
    let mut ws = M3Workspace::new();
    let seq = Sequence::new(xs.view(), SequenceLoss::classes(labels.view())).with_h0(h0.view());
    ws.run(&params, &cell, &seq).unwrap();
    let p = |id| params.get(id).unwrap().mapv(f64::from);
    let x = xs.index_axis(Axis(0), 0).mapv(f64::from);
    // In f64, every product and sum here is exact (≤ 11 terms, multiples of 1/128).
    let a = x.dot(&p(cell.w_xh)) + h0.mapv(f64::from).dot(&p(cell.w_hh)) + p(cell.b_h.unwrap());
    let mut off_by_the_tapes_tanh = 0;
    for ((r, c), &a) in a.indexed_iter() {
        let want = a.tanh() as f32;
        let got = ws.states()[[r, c]];
        assert_eq!(got.to_bits(), want.to_bits(), "h_1[{r}, {c}] = tanh({a})");
        if timetape::scalar::fast_tanh_f32(a as f32) != want {
            off_by_the_tapes_tanh += 1;
        }
    }
    // Not vacuous: the tape's kernel would give other bits on some entries.
    assert!(off_by_the_tapes_tanh > 0);
}

/// Bad input is an `Error`, never a panic.
#[test]
fn bad_input_is_an_error() {
    let s = Sizes {
        t: 4,
        b: 2,
        d: 3,
        h: 5,
        q: 3,
    };
    let m1 = problem(m1_config(s), s, 3, false);
    let tanh = problem(RnnConfig::new(s.d, s.h, s.q), s, 4, false);
    let classes = SequenceLoss::classes(m1.classes.view());
    let invalid =
        |r: Result<ClosedForm<f64>, Error>| matches!(r, Err(Error::InvalidArgument { .. }));
    let mismatch =
        |r: Result<ClosedForm<f64>, Error>| matches!(r, Err(Error::ShapeMismatch { .. }));

    // Wrong model for the closed form.
    assert!(invalid(closed_form::m1_recursion(
        &tanh.params,
        &tanh.cell,
        &Sequence::new(tanh.xs.view(), classes)
    )));
    let linear_with_bias = problem(
        RnnConfig::new(s.d, s.h, s.q).activation(Activation::Identity),
        s,
        5,
        false,
    );
    assert!(invalid(closed_form::m1_power_sum(
        &linear_with_bias.params,
        &linear_with_bias.cell,
        &Sequence::new(linear_with_bias.xs.view(), classes)
    )));
    let last = loss_of(&m1, 2, LossOpts::default());
    assert!(invalid(closed_form::m1_recursion(
        &m1.params,
        &m1.cell,
        &Sequence::new(m1.xs.view(), last)
    )));
    assert!(invalid(closed_form::m2(
        &tanh.params,
        &tanh.cell,
        &Sequence::new(tanh.xs.view(), classes)
    )));
    let relu3 = problem(
        RnnConfig::new(s.d, s.h, 3).activation(Activation::Relu),
        s,
        6,
        false,
    );
    let bin = loss_of(&relu3, 3, LossOpts::default());
    assert!(invalid(closed_form::m2_outer(
        &relu3.params,
        &relu3.cell,
        &Sequence::new(relu3.xs.view(), bin)
    )));
    assert!(invalid(closed_form::m3(
        &m1.params,
        &m1.cell,
        &Sequence::new(m1.xs.view(), classes)
    )));
    let values = SequenceLoss::values(tanh.values.view());
    assert!(invalid(closed_form::m3(
        &tanh.params,
        &tanh.cell,
        &Sequence::new(tanh.xs.view(), values)
    )));
    assert!(invalid(closed_form::m4(
        &tanh.params,
        &tanh.cell,
        &Sequence::new(tanh.xs.view(), bin)
    )));

    // Shapes, empty input, labels.
    let empty = Array3::<f64>::zeros((0, 2, 3));
    let empty_labels = Array2::<usize>::zeros((0, 2));
    let r = closed_form::m4(
        &tanh.params,
        &tanh.cell,
        &Sequence::new(empty.view(), SequenceLoss::classes(empty_labels.view())),
    );
    assert!(matches!(r, Err(Error::EmptyInput { .. })));
    let narrow = Array3::<f64>::zeros((4, 2, 2));
    assert!(mismatch(closed_form::m4(
        &tanh.params,
        &tanh.cell,
        &Sequence::new(narrow.view(), classes)
    )));
    let bad_h0 = Array2::<f64>::zeros((2, 4));
    assert!(mismatch(closed_form::m3(
        &tanh.params,
        &tanh.cell,
        &Sequence::new(tanh.xs.view(), classes).with_h0(bad_h0.view())
    )));
    let mut labels = tanh.classes.clone();
    labels[[2, 1]] = 3;
    let r = closed_form::m3(
        &tanh.params,
        &tanh.cell,
        &Sequence::new(tanh.xs.view(), SequenceLoss::classes(labels.view())),
    );
    assert!(matches!(
        r,
        Err(Error::LabelOutOfRange {
            label: 3,
            classes: 3,
            ..
        })
    ));
    let short = [1.0, 1.0];
    assert!(mismatch(closed_form::m3(
        &tanh.params,
        &tanh.cell,
        &Sequence::new(tanh.xs.view(), classes.weighted(&short))
    )));
    assert!(mismatch(closed_form::truncated(
        &tanh.params,
        &tanh.cell,
        &Sequence::new(tanh.xs.view(), classes),
        &[true, false]
    )));
    assert!(matches!(
        closed_form::block_starts(4, 0),
        Err(Error::InvalidArgument { .. })
    ));
    assert!(invalid(closed_form::truncated_fixed(
        &tanh.params,
        &tanh.cell,
        &Sequence::new(tanh.xs.view(), classes),
        0
    )));

    // A parameter of the wrong shape, and parameters of another store.
    let mut reshaped = tanh.params.clone();
    *reshaped.get_mut(tanh.cell.w_hh).unwrap() = Array2::zeros((5, 4));
    assert!(mismatch(closed_form::m4(
        &reshaped,
        &tanh.cell,
        &Sequence::new(tanh.xs.view(), classes)
    )));
    let r = closed_form::m4(
        &m1.params,
        &tanh.cell,
        &Sequence::new(tanh.xs.view(), classes),
    );
    assert!(matches!(r, Err(Error::ForeignParam { .. })));

    // The workspace: no gradients before a run; α of the wrong length.
    let mut ws = M3Workspace::<f64>::new();
    assert!(matches!(
        ws.grads(&tanh.params),
        Err(Error::InvalidArgument { .. })
    ));
    let short = [1.0];
    let seq = Sequence::new(tanh.xs.view(), classes.weighted(&short));
    let r = ws.run(&tanh.params, &tanh.cell, &seq);
    assert!(matches!(r, Err(Error::ShapeMismatch { .. })));
    let nan = [1.0, f64::NAN, 1.0, 1.0];
    let seq = Sequence::new(tanh.xs.view(), classes.weighted(&nan));
    let r = ws.run(&tanh.params, &tanh.cell, &seq);
    assert!(matches!(r, Err(Error::InvalidArgument { .. })));
}
