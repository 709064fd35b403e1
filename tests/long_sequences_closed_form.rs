//! Full BPTT over long sequences of thin batches against the closed forms of the notes
//! (`timetape::closed_form`, ndarray only), through the two code paths of the tape that
//! shorter tests never reach:
//!
//! - the gathered weight gradients of thin products (left operand below 8 rows, here
//!   `h_{t−1} W_hh` with B < 8): the contributions `h_{t−1}ᵀ r_t` are staged and added
//!   as one product every 256 rows (`GATHER_FLUSH_ROWS` in `src/ops/mod.rs`), then once
//!   more for the rest when the reverse sweep reaches `W_hh`. B = 1, T = 600 flushes at
//!   256 and 512 rows and adds a partial batch of 88; B = 3, T = 298 flushes every 86
//!   steps (258 rows) three times and adds a partial 40 steps (120 rows);
//! - the output head on chunks of ⌈32/B⌉ steps (`HEAD_CHUNK_ROWS` in `src/rnn/mod.rs`):
//!   B = 1 runs 18 chunks of 32 steps and a partial one of 24; B = 3 (which does not
//!   divide 32) chunks of 11 steps (33 rows) and a last chunk of one step, 3 rows, so
//!   that the head's own weight gradient is gathered there too; B = 12 (8 rows or more:
//!   nothing gathered) chunks of 3 steps (36 rows) and a last one of one step.
//!
//! Each is run through `bptt::run` with `Truncation::Full` (one segment, released
//! adjoints) and through `rnn::unroll` + `Tape::backward` (every ∂L/∂h_t kept and
//! compared too). The recurrent matrix is orthogonal times ρ ≈ 1, so that gradient paths
//! longer than 35 steps carry a visible part of the gradient (asserted: cutting them
//! changes W_hh's gradient by far more than the tolerance); under contractive weights
//! a path's contribution decays geometrically with its length, and a lost long path
//! could hide below the tolerance.
//!
//! Tolerance `TOL = 1e-10`, relative per parameter and per ∂L/∂h_t (max |a − b| over the
//! largest |b|, `common::max_rel_diff`). Both sides evaluate the same exact formulas in
//! f64 (the closed forms with ndarray's products and `f64::tanh`, the tape with its own
//! kernels) and differ only in summation order. Every step adds a rounding of relative
//! size u ≈ 1.1e-16 per operation to a sum of ≤ D + H + 1 = 12 terms; with an
//! orthogonal W_hh (‖W_hh‖ = ρ ≤ 1) and tanh′ ≤ 1 the recursion does not amplify them, so
//! over T ≤ 600 steps they accumulate to at most T · 12 · u ≈ 1e-12 of the largest term,
//! and the parameter sums over T·B ≤ 1200 rows add as much again. 1e-10 leaves two
//! orders of magnitude for cancellation (seen: ≤ 2e-15) and is far below what a lost
//! or doubled staged batch would cost: each batch's contribution is computed from the
//! closed form and asserted above 1e4 · TOL of W_hh's gradient (seen: ≥ 0.18).

mod common;

use common::cases::{Case, Model, Shape};
use common::{
    assert_close, assert_grads_close, finite_scale, grads_max_rel_diff, max_abs, max_rel_diff,
};
use ndarray::Array2;
use timetape::bptt::Run;
use timetape::bptt::{self, Truncation};
use timetape::closed_form::{self, ClosedForm};
use timetape::rnn::SequenceLoss;
use timetape::Tape;

const TOL: f64 = 1e-10;
/// Truncation length of the sensitivity check (the usual k of `Fixed { k: 35 }`).
const K: usize = 35;
const D: usize = 3;
const H: usize = 8;
const Q: usize = 3;

/// A tanh RNN (M3) over T steps of B rows with `W_hh = ρ O`, O orthogonal: the shared
/// fixture (`Case::sized`: biases in ±0.3; inputs in ±1, labels and per-step weights
/// α_t from `Data`; a seeded non-zero h_0, `Case::with_h0`) whose contractive `W_hh`
/// (±0.45) is replaced.
fn case(t: usize, b: usize, rho: f64, seed: u64) -> Case {
    let mut c = Case::sized(Model::M3, Shape::new(t, b, D, Q), H, 0.45, seed).with_h0(seed);
    let w_hh = common::orthogonal(H, seed + 100) * rho;
    c.params.set(c.cell.w_hh, w_hh.view()).unwrap();
    c
}

/// The closed form of M3 for `loss` (`closed_form::m3`), or with the edges marked in
/// `cuts` detached (`closed_form::truncated`, FORMULAS.md eq (5) restricted), from the
/// case's h_0.
fn closed_form_of<'a>(
    c: &'a Case,
    loss: &SequenceLoss<'a, f64>,
    cuts: Option<&[bool]>,
) -> ClosedForm<f64> {
    let seq = c.seq_with(*loss);
    match cuts {
        None => closed_form::m3(&c.params, &c.cell, &seq),
        Some(cuts) => closed_form::truncated(&c.params, &c.cell, &seq, cuts),
    }
    .unwrap()
}

/// The closed form of M3 for the case's own loss.
fn closed_form(c: &Case) -> ClosedForm<f64> {
    closed_form_of(c, &c.loss(), None)
}

/// Checks one case both ways against the closed form and returns the worst relative
/// difference seen.
fn check(c: &Case, what: &str) -> f64 {
    let (t_len, b, _) = c.data.xs.dim();
    let cf = closed_form(c);
    // The two closed forms (whole-sequence products, M3Workspace; per-step recursion,
    // M4) agree with each other first.
    let general = closed_form::m4(&c.params, &c.cell, &c.seq()).unwrap();
    assert_grads_close(
        &c.params,
        &general.grads,
        &cf.grads,
        TOL,
        &format!("{what}: m4 vs m3"),
    );
    let mut worst = grads_max_rel_diff(&c.params, &general.grads, &cf.grads);

    // bptt::run, Full: one segment, adjoints released as the sweep goes.
    let report = bptt::run(&c.cell, &c.params, &c.seq(), &Run::new(Truncation::Full)).unwrap();
    assert_eq!(report.segments, 1, "{what}");
    assert_eq!(report.backward_steps, t_len, "{what}");
    assert_grads_close(
        &c.params,
        &report.grads,
        &cf.grads,
        TOL,
        &format!("{what}: bptt::run"),
    );
    worst = worst.max(grads_max_rel_diff(&c.params, &report.grads, &cf.grads));
    let dl = (report.loss - cf.loss).abs() / cf.loss.abs();
    assert!(
        dl <= TOL,
        "{what}: bptt::run loss {} vs {} ({dl:e})",
        report.loss,
        cf.loss
    );
    let h_t = cf_last_state(c);
    assert_close(
        report.h_final.view(),
        h_t.view(),
        TOL,
        &format!("{what}: h_T"),
    );

    // rnn::unroll + backward, with every ∂L/∂h_t.
    let mut tape = Tape::new();
    let run = bptt::unroll(&c.cell, &mut tape, &c.params, &c.seq()).unwrap();
    let grads = tape.backward(run.loss).unwrap();
    assert_grads_close(
        &c.params,
        &grads,
        &cf.grads,
        TOL,
        &format!("{what}: unroll"),
    );
    worst = worst.max(grads_max_rel_diff(&c.params, &grads, &cf.grads));
    let dl = (tape.scalar(run.loss).unwrap() - cf.loss).abs() / cf.loss.abs();
    assert!(dl <= TOL, "{what}: unroll loss ({dl:e})");
    worst = worst.max(dl);
    // The heads cover every step once, in chunks of ⌈32/B⌉ steps.
    let chunk = 32usize.div_ceil(b);
    let lens: Vec<usize> = run.outputs.iter().map(|(r, _)| r.len()).collect();
    assert_eq!(lens.iter().sum::<usize>(), t_len, "{what}: heads");
    assert!(
        lens[..lens.len() - 1].iter().all(|&l| l == chunk),
        "{what}: {lens:?}"
    );
    assert_eq!(
        lens[lens.len() - 1],
        (t_len - 1) % chunk + 1,
        "{what}: last chunk"
    );
    for (t, &s) in run.states.iter().enumerate() {
        let dh = tape
            .adjoint(s)
            .unwrap()
            .expect("adjoint of a state")
            .to_owned();
        let d = max_rel_diff(dh.view(), cf.dh[t].view());
        assert!(d <= TOL, "{what}: dL/dh_{} differs by {d:e}", t + 1);
        worst = worst.max(d);
    }
    let dh0 = tape.adjoint(run.h0).unwrap().unwrap().to_owned();
    assert_close(dh0.view(), cf.dh0.view(), TOL, &format!("{what}: dL/dh_0"));
    worst.max(max_rel_diff(dh0.view(), cf.dh0.view()))
}

/// h_0 … h_T by the recursion on ndarray (independent of the tape).
fn states(c: &Case) -> Vec<Array2<f64>> {
    let p = |id| c.params.get(id).unwrap();
    let mut hs = vec![c.h0.clone().expect("the case has an h_0")];
    for x in c.data.xs.outer_iter() {
        let h = &hs[hs.len() - 1];
        let a = x.dot(p(c.cell.w_xh)) + h.dot(p(c.cell.w_hh)) + p(c.cell.b_h.unwrap());
        hs.push(a.mapv(f64::tanh));
    }
    hs
}

fn cf_last_state(c: &Case) -> Array2<f64> {
    states(c).pop().unwrap()
}

/// Paths longer than K steps matter at the tolerance, measured two ways on W_hh's
/// gradient (relative to the full one):
///
/// - for the loss at the last step alone (α = 0 elsewhere), cutting the edge into step
///   T − K removes exactly the parameter uses more than K steps before that loss: what
///   is lost is the contribution of the paths longer than K steps;
/// - for the case's own loss, `Fixed { k: K }` (h detached at every block start), the
///   truncated closed form the brief of regular truncation compares with.
///
/// Both must move it by far more than `TOL` (asserted: 1e4 · TOL), or a test at TOL
/// could not tell a lost long path from rounding. Returns the two relative changes.
fn long_paths_matter(c: &Case, what: &str) -> (f64, f64) {
    let t_len = c.data.xs.dim().0;
    let w_hh = |cf: &ClosedForm<f64>| cf.grads.get(c.cell.w_hh).unwrap().clone();
    let mut last_only = vec![0.0; t_len];
    last_only[t_len - 1] = 1.0;
    let last = SequenceLoss::classes(c.data.labels.view()).weighted(&last_only);
    let mut cuts = vec![false; t_len];
    cuts[t_len - K] = true;
    let full_last = closed_form_of(c, &last.into(), None);
    let within_k = closed_form_of(c, &last.into(), Some(&cuts));
    let d1 = max_rel_diff(w_hh(&within_k).view(), w_hh(&full_last).view());
    let blocks = closed_form::block_starts(t_len, K).unwrap();
    let d2 = max_rel_diff(
        w_hh(&closed_form_of(c, &c.loss(), Some(&blocks))).view(),
        w_hh(&closed_form_of(c, &c.loss(), None)).view(),
    );
    for d in [d1, d2] {
        assert!(
            d.is_finite() && d > 1e4 * TOL,
            "{what}: long paths change W_hh's gradient by only {d:e}"
        );
    }
    (d1, d2)
}

/// Each batch of rows the tape stages for W_hh carries a visible part of its gradient:
/// the contributions `Σ_t h_{t−1}ᵀ r_t` (`r_t = (1 − h_t²) ⊙ ∂L/∂h_t`, from the closed
/// form) of the steps in each batch, in the order of the reverse sweep (from the last
/// step: full batches of `flush` steps, then the rest), are each more than 1e4 · TOL of
/// the gradient, so a batch that was dropped or added twice could not pass; and they
/// add up to the gradient. Returns the smallest relative size.
fn staged_batches_matter(c: &Case, flush_steps: usize, what: &str) -> f64 {
    let cf = closed_form(c);
    let hs = states(c);
    let t_len = c.data.xs.dim().0;
    let want = cf.grads.get(c.cell.w_hh).unwrap();
    let scale = finite_scale(want.iter().copied(), what);
    let mut total = Array2::<f64>::zeros((H, H));
    let mut smallest = f64::INFINITY;
    let mut end = t_len;
    while end > 0 {
        let start = end.saturating_sub(flush_steps);
        let mut part = Array2::<f64>::zeros((H, H));
        for t in start..end {
            let r = &cf.dh[t] * &hs[t + 1].mapv(|h| 1.0 - h * h);
            part = part + hs[t].t().dot(&r);
        }
        let size = max_abs(part.iter().copied()) / scale;
        assert!(
            size.is_finite() && size > 1e4 * TOL,
            "{what}: steps {start}..{end} carry only {size:e}"
        );
        smallest = smallest.min(size);
        total = total + part;
        end = start;
    }
    assert_close(
        total.view(),
        want.view(),
        TOL,
        &format!("{what}: Σ batches"),
    );
    smallest
}

#[test]
fn batch_of_one_over_600_steps_matches_the_closed_form_through_every_flush() {
    let c = case(600, 1, 1.0, 1);
    let (d1, d2) = long_paths_matter(&c, "B=1 T=600");
    // Staged batches of 256 rows = 256 steps: 600 = 256 + 256 + 88.
    let batch = staged_batches_matter(&c, 256, "B=1 T=600");
    let worst = check(&c, "B=1 T=600");
    println!("B=1 T=600 ρ=1: worst {worst:e}; without paths > {K} steps: {d1:e} (last loss), {d2:e} (blocks); smallest staged batch {batch:e}");
}

#[test]
fn batch_of_three_with_a_one_step_last_head_chunk_matches_the_closed_form() {
    let c = case(298, 3, 0.999, 2);
    let (d1, d2) = long_paths_matter(&c, "B=3 T=298");
    // Staged batches of 258 rows = 86 steps: 298 = 3 · 86 + 40.
    let batch = staged_batches_matter(&c, 86, "B=3 T=298");
    let worst = check(&c, "B=3 T=298");
    println!("B=3 T=298 ρ=0.999: worst {worst:e}; without paths > {K} steps: {d1:e}, {d2:e}; smallest staged batch {batch:e}");
}

#[test]
fn batch_of_twelve_with_chunks_of_36_rows_matches_the_closed_form() {
    let c = case(100, 12, 1.0, 3);
    let (d1, d2) = long_paths_matter(&c, "B=12 T=100");
    let worst = check(&c, "B=12 T=100");
    println!("B=12 T=100 ρ=1: worst {worst:e}; without paths > {K} steps: {d1:e}, {d2:e}");
}
