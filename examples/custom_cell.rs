//! A recurrent cell that is not in the crate, written with the public API only, checked
//! against finite differences and run under every BPTT strategy.
//!
//! The cell is a leaky-integrator RNN,
//!
//! ```text
//! h_t = (1 − λ) h_{t−1} + λ tanh(x_t W_x + h_{t−1} W_h + b),   o_t = h_t W_o + b_o,
//! ```
//!
//! with a fixed leak λ = 0.3. Implementing [`Recurrent`] (widths, `bind`, `step`,
//! `output`) is all it takes for every runner of [`timetape::bptt`] to unroll it: full,
//! fixed-block, TBPTT(k1, k2), randomized and explicit-pattern truncation, checkpointed
//! memory, and the streaming runner.
//!
//! The example then checks, and exits with a non-zero status if any check fails:
//!
//! 1. the tape's gradient against central finite differences ([`gradcheck`]);
//! 2. exact relations between strategies: checkpointing gives the `Full` gradient, the
//!    streaming runner gives the batch runner's, `Fixed { k: 3 }` is the ξ pattern with
//!    cuts at steps 0, 3, 6, and a randomized run replays as the ξ pattern it reports;
//! 3. the unbiasedness of randomized truncation: its exact expectation, enumerated over
//!    all 2^T patterns of ξ, is the `Full` gradient.
//!
//! Runs in well under a second.
//!
//! `cargo run --release --example custom_cell`

use ndarray::{Array2, Array3, Axis};
use std::time::Instant;
use timetape::bptt::enumerate::randomized_moments;
use timetape::bptt::{self, Memory, Pi, Report, Run, StepTarget, Stream, Truncation};
use timetape::gradcheck::{gradcheck, GradcheckOptions};
use timetape::rnn::{Recurrent, Sequence, SequenceLoss, Sizes};
use timetape::{Activation, ParamId, Params, Tape, Var};

// ---------------------------------------------------------------------------------------
// The cell
// ---------------------------------------------------------------------------------------

/// A leaky-integrator RNN: the new state is a convex mix of the old one and a tanh
/// proposal, `h_t = (1 − λ) h_{t−1} + λ tanh(x_t W_x + h_{t−1} W_h + b)`, read out by a
/// linear head `o_t = h_t W_o + b_o` (logits for a softmax cross-entropy here).
///
/// The cell holds only the [`ParamId`]s of its weights: the values live in a
/// [`Params`] store, so that optimizers, gradient checks and the BPTT runners all see
/// the same parameters. λ is a fixed constant, not a parameter.
struct Leaky {
    sizes: Sizes,
    /// The leak λ ∈ (0, 1]: λ = 1 is a plain tanh RNN, small λ a slow integrator.
    lambda: f64,
    w_x: ParamId,
    w_h: ParamId,
    b: ParamId,
    w_o: ParamId,
    b_o: ParamId,
}

/// The cell's parameters registered on one tape ([`Recurrent::Bound`]): what
/// [`Recurrent::bind`] returns and every `step` and `output` of the segment receives.
struct LeakyBound {
    w_x: Var,
    w_h: Var,
    b: Var,
    w_o: Var,
    b_o: Var,
}

impl Leaky {
    /// Registers the cell's parameters in `params` under names of its own
    /// (`leaky.W_x`, `leaky.W_h`, `leaky.b`, `leaky.W_o`, `leaky.b_o`), drawn uniform in
    /// ±1/√fan-in from a seeded generator.
    fn new(
        params: &mut Params<f64>,
        sizes: Sizes,
        lambda: f64,
        seed: u64,
    ) -> timetape::Result<Self> {
        let Sizes {
            input: d,
            hidden: h,
            output: q,
        } = sizes;
        let mut rng = timetape::init::rng(seed);
        let (sx, sh) = (1.0 / (d as f64).sqrt(), 1.0 / (h as f64).sqrt());
        let mut draw = |shape, scale| timetape::init::uniform::<f64>(shape, scale, &mut rng);
        Ok(Leaky {
            sizes,
            lambda,
            w_x: params.add("leaky.W_x", draw((d, h), sx)?)?,
            w_h: params.add("leaky.W_h", draw((h, h), sh)?)?,
            b: params.add("leaky.b", draw((1, h), sh)?)?,
            w_o: params.add("leaky.W_o", draw((h, q), sh)?)?,
            b_o: params.add("leaky.b_o", draw((1, q), sh)?)?,
        })
    }
}

/// Everything a cell must provide. Cells know nothing of truncation: before calling
/// `step` for step t, the runner puts the edge `h_{t−1} → step t` in place (kept,
/// `detach`ed for ξ_t = 0, or `scale_grad`-ed by ξ_t), so `step` must reach the past only
/// through its argument `h` (never through state kept in the cell).
///
/// The built-in cells ([`timetape::rnn::Rnn`], `Gru`, `Lstm`) also implement the
/// optional [`timetape::rnn::Projection`] trait, offered through
/// [`Recurrent::projection`]: a speed-up that computes the state-independent input
/// projection `x_t W_x + b` of a whole segment in one matrix product instead of one per
/// step. It changes nothing in the gradients, and a cell without it (this one) works
/// under every runner.
impl Recurrent<f64> for Leaky {
    type Bound = LeakyBound;

    fn input_width(&self) -> usize {
        self.sizes.input
    }

    fn state_width(&self) -> usize {
        self.sizes.hidden
    }

    fn output_width(&self) -> usize {
        self.sizes.output
    }

    /// Called once per segment (every tape starts empty): a `Var` for each parameter.
    fn bind(&self, tape: &mut Tape<f64>, params: &Params<f64>) -> timetape::Result<LeakyBound> {
        Ok(LeakyBound {
            w_x: tape.param(params, self.w_x)?,
            w_h: tape.param(params, self.w_h)?,
            b: tape.param(params, self.b)?,
            w_o: tape.param(params, self.w_o)?,
            b_o: tape.param(params, self.b_o)?,
        })
    }

    /// `x` is B×D, `h` is B×H; returns `h_t`, B×H.
    fn step(&self, tape: &mut Tape<f64>, p: &LeakyBound, x: Var, h: Var) -> timetape::Result<Var> {
        // The fused affine op y = φ(a b + c) records one node instead of three; a 1×H
        // addend (the bias) is broadcast over the B rows.
        let input = tape.affine(x, p.w_x, Some(p.b), Activation::Identity)?; // x W_x + b
        let proposal = tape.affine(h, p.w_h, Some(input), Activation::Tanh)?; // tanh(h W_h + ·)
        let kept = tape.scale(h, 1.0 - self.lambda)?;
        let mixed = tape.scale(proposal, self.lambda)?;
        tape.add(kept, mixed)
    }

    /// The head on the states of several steps stacked by rows (n×H to n×Q): one matrix
    /// product for a whole chunk of steps.
    fn output(&self, tape: &mut Tape<f64>, p: &LeakyBound, hs: Var) -> timetape::Result<Var> {
        tape.affine(hs, p.w_o, Some(p.b_o), Activation::Identity)
    }
}

// ---------------------------------------------------------------------------------------
// Checks
// ---------------------------------------------------------------------------------------

/// Tolerance for two computations of the same f64 quantity whose operations differ only
/// in order (segments summed in another order, a recomputed forward pass): a handful of
/// roundings of 1.1e-16 each, relative to the gradient's largest entry, on a problem of
/// 8 steps and 5 units. 1e-12 leaves three orders of magnitude of margin and still
/// catches any real difference (a wrongly kept or cut edge changes the gradient by tens
/// of percent here, see the "vs Full" column).
const SAME_ARITHMETIC: f64 = 1e-12;

/// Tolerance for the enumerated expectation of the randomized estimator against `Full`.
/// It is a probability-weighted sum of 2^8 = 256 estimates, some of them scaled by up to
/// (1/π)^7 ≈ 36 (seven surviving 1/π-scaled edges in a row): their rounding errors, each
/// ~1e-16 of an estimate up to 36 times the gradient, add to at most ~256 · 36 · 1e-16 ≈
/// 1e-12 relative (and are much smaller in practice, the weights summing to 1). 1e-10 is
/// safe, and 10⁹ times smaller than the distance of one randomized draw, or of any
/// truncated strategy, from `Full` (0.4 to 0.7 in the table).
const ENUMERATION: f64 = 1e-10;

/// Tolerance of the finite-difference check. With the default eps = 1e-5 (h = 1e-5 at
/// |θ| ≤ 1), the f64 central difference has a truncation error ~h²/6 · |L'''| ≈ 1e-11
/// and a rounding error ~1.1e-16 · |L| / h ≈ 1e-11 |L|: with |L| ≈ 10 and gradient
/// entries of order 0.1 here, at most ~1e-9 relative (the report shows 1e-10 to 1e-9).
/// A wrong derivative (a missing factor λ, a transposed matrix) gives errors of order 1.
/// 1e-6 is three orders of magnitude above the first and six below the second.
const GRADCHECK: f64 = 1e-6;

/// The outcome of the checks: each is printed as it is made, the failures kept.
#[derive(Default)]
struct Checks {
    failures: Vec<String>,
}

impl Checks {
    /// Records `what` as passed if `err <= tol` (false for NaN: never a pass).
    fn at_most(&mut self, what: &str, err: f64, tol: f64) {
        let ok = err <= tol;
        let verdict = if ok { "ok  " } else { "FAIL" };
        println!("  {verdict} {what:<58} {err:>10.3e} <= {tol:.0e}");
        if !ok {
            self.failures
                .push(format!("{what}: {err:e} exceeds the tolerance {tol:e}"));
        }
    }

    /// Records `what` as passed if the two counts are equal.
    fn equal(&mut self, what: &str, got: usize, expected: usize) {
        let ok = got == expected;
        let verdict = if ok { "ok  " } else { "FAIL" };
        println!("  {verdict} {what:<58} {got:>10} == {expected}");
        if !ok {
            self.failures
                .push(format!("{what}: got {got}, expected {expected}"));
        }
    }
}

/// `|a − b| / |b|`, +∞ if either is not finite.
fn rel_diff(a: f64, b: f64) -> f64 {
    if a.is_finite() && b.is_finite() {
        (a - b).abs() / b.abs().max(f64::MIN_POSITIVE)
    } else {
        f64::INFINITY
    }
}

/// One row of the table.
fn print_row(name: &str, r: &Report<f64>, full: &Report<f64>) {
    println!(
        "{name:>34} {:>11.6} {:>10.6} {:>11.3e} {:>9} {:>6}",
        r.loss,
        r.grads.global_norm(),
        r.grads.max_rel_diff(&full.grads),
        r.backward_steps,
        r.peak_tape_nodes
    );
}

// ---------------------------------------------------------------------------------------
// The problem
// ---------------------------------------------------------------------------------------

/// D inputs, H hidden units, Q classes, B rows per batch, T steps.
const D: usize = 3;
const H: usize = 5;
const Q: usize = 4;
const B: usize = 2;
const T: usize = 8;
/// The leak λ.
const LAMBDA: f64 = 0.3;
/// Survival probability of an edge under randomized truncation.
const PI: f64 = 0.6;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let start = Instant::now();
    let mut params = Params::<f64>::new();
    let cell = Leaky::new(&mut params, Sizes::new(D, H, Q), LAMBDA, 17)?;
    // A recurrent matrix with some memory, so that truncation visibly changes gradients.
    params.get_mut(cell.w_h)?.mapv_inplace(|w| 2.0 * w);

    // Inputs (T, B, D), a class per step and row, and step weights α_t: the loss is
    // L = Σ_t α_t (1/B) Σ_b CE(o_{t,b}, y_{t,b}).
    let xs = Array3::from_shape_fn((T, B, D), |(t, b, d)| {
        ((t * 5 + b * 3 + d) as f64 * 0.61).sin()
    });
    let labels = Array2::from_shape_fn((T, B), |(t, b)| (3 * t + b + t / 3) % Q);
    let alphas: Vec<f64> = (0..T).map(|t| 0.5 + 0.1 * t as f64).collect();
    let seq = Sequence::new(
        xs.view(),
        SequenceLoss::classes(labels.view()).weighted(&alphas),
    );
    println!(
        "Leaky-integrator RNN (λ = {LAMBDA}), D = {D}, H = {H}, Q = {Q}, B = {B}, T = {T}; \
         {} parameters in {:?}",
        params.num_scalars(),
        params
            .ids()
            .map(|id| params.name(id).map(str::to_string))
            .collect::<timetape::Result<Vec<_>>>()?
    );

    // 1. The tape against central finite differences, on the whole unrolled sequence.
    let mut checks = Checks::default();
    println!("\nGradient check (central differences, eps = 1e-5):");
    let report = gradcheck(&params, GradcheckOptions::default(), |tape, p| {
        Ok(bptt::unroll(&cell, tape, p, &seq)?.loss)
    })?;
    print!("{report}");
    checks.at_most(
        "gradcheck: max relative error",
        report.max_rel_err(),
        GRADCHECK,
    );

    // 2. Every strategy.
    let run = |how: Run| bptt::run(&cell, &params, &seq, &how);
    let full = run(Run::new(Truncation::Full))?;
    let fixed = run(Run::new(Truncation::Fixed { k: 3 }))?;
    let tbptt = run(Run::new(Truncation::Tbptt { k1: 3, k2: 5 }))?;
    let randomized = Truncation::Randomized {
        pi: Pi::Constant(PI),
        seed: 5,
    };
    let rand = run(Run::new(randomized))?;
    // ξ_t on the edge h_{t−1} → step t (ξ at step 0 is the edge from h_0): 0 cuts,
    // 1 keeps, 2 keeps and doubles the gradient (what a surviving edge with π = 0.5
    // would do).
    let xi = vec![1.0, 1.0, 0.0, 1.0, 2.0, 1.0, 0.0, 1.0];
    let pattern = run(Run::new(Truncation::Pattern(xi.clone())))?;
    let checkpointed =
        run(Run::new(Truncation::Full).memory(Memory::Checkpointed { stride: Some(3) }))?;
    let streamed = {
        let mut stream = Stream::new(&cell, &params, B, &Run::new(Truncation::Fixed { k: 3 }))?;
        for (t, &alpha) in alphas.iter().enumerate() {
            let step_labels = labels.row(t).to_vec();
            stream.push(
                xs.index_axis(Axis(0), t),
                StepTarget::Classes(&step_labels),
                alpha,
            )?;
        }
        stream.finish()?
    };

    println!(
        "\n{:>34} {:>11} {:>10} {:>11} {:>9} {:>6}",
        "strategy", "loss", "‖g‖", "vs Full", "bwd steps", "peak"
    );
    print_row("Full", &full, &full);
    print_row("Fixed { k: 3 }", &fixed, &full);
    print_row("Tbptt { k1: 3, k2: 5 }", &tbptt, &full);
    print_row(&format!("Randomized {{ π: {PI}, seed: 5 }}"), &rand, &full);
    let xi_text: Vec<String> = xi.iter().map(|x| x.to_string()).collect();
    print_row(
        &format!("Pattern(ξ = {})", xi_text.join(" ")),
        &pattern,
        &full,
    );
    print_row("Full, Checkpointed { stride: 3 }", &checkpointed, &full);
    print_row("Stream, Fixed { k: 3 }", &streamed, &full);
    println!(
        "  (vs Full: max over parameters of ‖g − g_Full‖∞ / ‖g_Full‖∞; peak: tape nodes)\n  \
         ξ drawn by Randomized: {}",
        rand.xi
            .iter()
            .flatten()
            .map(|x| format!("{x:.3}"))
            .collect::<Vec<_>>()
            .join(" ")
    );

    // 3. Exact relations.
    println!("\nExact relations (relative differences):");
    checks.at_most(
        "Checkpointed { stride: 3 } == Full (gradient)",
        checkpointed.grads.max_rel_diff(&full.grads),
        SAME_ARITHMETIC,
    );
    checks.at_most(
        "Checkpointed { stride: 3 } == Full (loss)",
        rel_diff(checkpointed.loss, full.loss),
        SAME_ARITHMETIC,
    );
    checks.at_most(
        "Stream(Fixed { k: 3 }) == run(Fixed { k: 3 }) (gradient)",
        streamed.grads.max_rel_diff(&fixed.grads),
        SAME_ARITHMETIC,
    );
    checks.at_most(
        "Stream(Fixed { k: 3 }) == run(Fixed { k: 3 }) (loss)",
        rel_diff(streamed.loss, fixed.loss),
        SAME_ARITHMETIC,
    );
    // Fixed { k: 3 } cuts the edges into steps 0, 3 and 6 (0-based; cutting the edge
    // from h_0 changes no parameter's gradient, h_0 being an input).
    let fixed_xi: Vec<f64> = (0..T).map(|t| if t % 3 == 0 { 0.0 } else { 1.0 }).collect();
    let as_pattern = run(Run::new(Truncation::Pattern(fixed_xi)))?;
    checks.at_most(
        "Fixed { k: 3 } == Pattern([0,1,1,0,1,1,0,1])",
        fixed.grads.max_rel_diff(&as_pattern.grads),
        SAME_ARITHMETIC,
    );
    // A randomized run reports the ξ it drew; replayed as a pattern, it is the same run.
    let replay = run(Run::new(Truncation::Pattern(
        rand.xi.clone().unwrap_or_default(),
    )))?;
    checks.at_most(
        "Randomized == Pattern(its reported ξ)",
        rand.grads.max_rel_diff(&replay.grads),
        SAME_ARITHMETIC,
    );
    // TBPTT(3, 5) on T = 8: updates at steps 3, 6, 8, windows 1..=3, 2..=6, 5..=8.
    checks.equal(
        "Tbptt { k1: 3, k2: 5 }: backward steps = 3 + 5 + 4",
        tbptt.backward_steps,
        3 + 5 + 4,
    );

    // 4. Unbiasedness: E[ĝ] over all 2^T patterns of ξ, each weighted by its probability.
    let moments = randomized_moments(&cell, &params, &seq, &Pi::Constant(PI))?;
    checks.equal("enumerated patterns of ξ", moments.patterns, 1 << T);
    checks.at_most(
        "E[Randomized { π: 0.6 }] (exact, enumerated) == Full",
        moments.mean.max_rel_diff(&full.grads),
        ENUMERATION,
    );
    println!(
        "  (one draw of Randomized is {:.3e} from Full; their mean over 256 patterns is exact)",
        rand.grads.max_rel_diff(&full.grads)
    );

    println!("\ntotal time {:.2?}", start.elapsed());
    if checks.failures.is_empty() {
        println!("all checks passed");
        Ok(())
    } else {
        eprintln!("{} check(s) failed:", checks.failures.len());
        for f in &checks.failures {
            eprintln!("  {f}");
        }
        Err(format!("{} check(s) failed", checks.failures.len()).into())
    }
}
