//! Every op's tape gradient against central finite differences (f64), on random shapes
//! (every dimension in 1..=6) and random values.
//!
//! How a case is built: the op's inputs are registered parameters; a non-scalar output
//! Y is reduced to a scalar by a fixed random readout, `L = Σ R ⊙ Y` with R drawn per
//! case, so that every output entry gets its own adjoint (a plain `sum` would give every
//! entry the adjoint 1 and hide, e.g., a transposed or permuted backward rule). Scalar
//! outputs (reductions, losses) are multiplied by a random 1×1 R, so a rule that ignores
//! its incoming adjoint ḡ is caught as well.
//!
//! Every property also draws `accumulate`: if set, each input `a` additionally feeds a
//! term `Σ P ⊙ a` recorded *after* the op. Backward visits nodes in reverse creation
//! order, so that term writes `a`'s adjoint buffer first and the op's rule must *add* to
//! it; if not set, the op's rule is the first to touch the buffer and must *write* it.
//! Both branches of the fresh/accumulate convention of `src/ops` are thus exercised.
//!
//! Tolerance: `report.max_rel_err() ≤ 1e-6`, where the relative error of a parameter is
//! `max |tape − fd| / max |fd|` (see `src/gradcheck.rs`). With eps = 1e-5 the step is
//! h = 1e-5 for |θ| ≤ 1 (h ≤ 3e-5 for the inputs used here); the central difference
//! then has truncation error h²/6 · |f'''| ≲ 2e-11 |f'''| and rounding error
//! ≈ u |L| / h ≈ 1e-11 |L| (u = 1.1e-16). With the inputs bounded as below (|x| ≤ 3,
//! log inputs ≥ 0.1, relu inputs ≥ 0.1 away from the kink) both are below ~1e-8 of the
//! gradient's scale (measured: ≤ 5e-9 over 2000 cases per property), so 1e-6 leaves a
//! margin of 100 while any wrong rule (a missing factor, a wrong sign, a broadcast summed
//! over the wrong axis, a lost accumulation) gives an error of order 1.
//!
//! Every property also checks the op's forward value against a direct ndarray
//! computation (entrywise, to 1e-12 of max(1, |value|): a few ulp of the f64 results).

mod common;

use ndarray::Array2;
use proptest::prelude::*;
use std::ops::Range;
use timetape::gradcheck::{gradcheck, GradcheckOptions};
use timetape::ops::RowsOf;
use timetape::{Activation, Error, Params, Reduction, Result, Tape, Var};

/// Relative tolerance of the finite-difference comparison (see the module comment).
const TOL: f64 = 1e-6;
/// Tolerance of the forward-value checks, relative to max(1, |value|).
const FWD_TOL: f64 = 1e-12;
/// Cases per property (see `common::proptest_config`; `PROPTEST_CASES` overrides): the
/// file runs in ~0.5 s in release (~10 s unoptimized) on 2 cores; 100000 pass.
const CASES: u32 = 1024;

type TestResult = std::result::Result<(), TestCaseError>;

// ---------------------------------------------------------------------------------------
// strategies

/// Ordinary entries.
fn val() -> Range<f64> {
    -2.0..2.0
}

/// Entries of a readout R.
fn rd() -> Range<f64> {
    -1.0..1.0
}

/// Entries with |x| ≥ 0.1 (relu inputs: the finite difference must not straddle the kink).
fn away_from_zero() -> impl Strategy<Value = f64> + Clone {
    (0.1f64..2.0, any::<bool>()).prop_map(|(m, neg)| if neg { -m } else { m })
}

/// A rows×cols matrix with entries from `values`.
fn mat(
    rows: usize,
    cols: usize,
    values: impl Strategy<Value = f64>,
) -> impl Strategy<Value = Array2<f64>> {
    proptest::collection::vec(values, rows * cols)
        .prop_map(move |v| Array2::from_shape_vec((rows, cols), v).unwrap())
}

fn dim() -> std::ops::RangeInclusive<usize> {
    1..=6
}

fn reduction() -> impl Strategy<Value = Reduction> {
    prop_oneof![Just(Reduction::Mean), Just(Reduction::Sum)]
}

/// Which operand of a binary op is a 1×n row broadcast over the other's rows.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Bcast {
    Neither,
    Lhs,
    Rhs,
}

/// (a, b, R, accumulate) for a binary op, in any of the three broadcast modes.
fn binary_case() -> impl Strategy<Value = (Array2<f64>, Array2<f64>, Array2<f64>, bool)> {
    (
        dim(),
        dim(),
        prop_oneof![Just(Bcast::Neither), Just(Bcast::Lhs), Just(Bcast::Rhs)],
        any::<bool>(),
    )
        .prop_flat_map(|(b, n, mode, acc)| {
            let ra = if mode == Bcast::Lhs { 1 } else { b };
            let rb = if mode == Bcast::Rhs { 1 } else { b };
            (
                mat(ra, n, val()),
                mat(rb, n, val()),
                mat(b, n, rd()),
                Just(acc),
            )
        })
}

/// (x, R, accumulate) for a shape-preserving unary op.
fn unary_case(
    values: impl Strategy<Value = f64> + Clone,
) -> impl Strategy<Value = (Array2<f64>, Array2<f64>, bool)> {
    (dim(), dim(), any::<bool>())
        .prop_flat_map(move |(b, n, acc)| (mat(b, n, values.clone()), mat(b, n, rd()), Just(acc)))
}

/// (x, 1×1 R, accumulate) for an op with a scalar output.
fn scalar_case() -> impl Strategy<Value = (Array2<f64>, Array2<f64>, bool)> {
    (dim(), dim(), any::<bool>())
        .prop_flat_map(|(b, n, acc)| (mat(b, n, val()), mat(1, 1, rd()), Just(acc)))
}

/// A non-empty range inside 0..n.
fn sub_range(n: usize) -> impl Strategy<Value = Range<usize>> {
    (0..n).prop_flat_map(move |s| (s + 1..=n).prop_map(move |e| s..e))
}

// ---------------------------------------------------------------------------------------
// helpers

/// The largest |pre-activation| a saturating activation (tanh, sigmoid) is given.
/// Beyond it the derivative is tiny (tanh′(3) ≈ 0.01; at |x| = 10 it is 8e-9) while the
/// finite difference keeps its rounding error u·|L|/h ≈ 1e-11·|L|, so the relative
/// error of the check would measure the finite difference's noise, not the rule: at
/// 1024 cases, tanh of a pre-activation of 8.4 (gradient scale 4.8e-8, finite-difference
/// error 5.8e-13) failed at 1.2e-5 (replayed from `proptest-regressions/ops_gradcheck.txt`).
/// The unary tanh case is drawn from ±3 for the same reason.
const SATURATION: f64 = 3.0;

/// The factor that brings the largest |pre-activation| down to [`SATURATION`] for a
/// saturating activation (1 otherwise, or if it is already there).
fn desaturate(act: Activation, pre: &Array2<f64>) -> f64 {
    let m = common::max_abs(pre.iter().copied());
    match act {
        Activation::Tanh | Activation::Sigmoid if m > SATURATION => SATURATION / m,
        _ => 1.0,
    }
}

/// A fixed, nowhere-zero pattern for the extra accumulation terms.
fn pattern(shape: (usize, usize)) -> Array2<f64> {
    Array2::from_shape_fn(shape, |(i, j)| 0.25 + 0.125 * ((3 * i + 5 * j) % 7) as f64)
}

/// `Σ R ⊙ y`; R must have y's shape exactly (no silent broadcast).
fn readout(tape: &mut Tape<f64>, y: Var, r: &Array2<f64>) -> Result<Var> {
    let shape = tape.shape(y)?;
    if shape != r.dim() {
        return Err(Error::ShapeMismatch {
            op: "readout",
            lhs: shape,
            rhs: r.dim(),
        });
    }
    let rv = tape.constant(r.clone())?;
    let weighted = tape.mul(y, rv)?;
    tape.sum(weighted)
}

/// The loss of a case: the readout of `y`, plus (if `accumulate`) `Σ P ⊙ a` for each
/// input, recorded after the op so that the op's backward rule accumulates.
fn finish(
    tape: &mut Tape<f64>,
    y: Var,
    r: &Array2<f64>,
    inputs: &[Var],
    accumulate: bool,
) -> Result<Var> {
    let mut loss = readout(tape, y, r)?;
    if accumulate {
        for &a in inputs {
            let p = pattern(tape.shape(a)?);
            let extra = readout(tape, a, &p)?;
            loss = tape.add(loss, extra)?;
        }
    }
    Ok(loss)
}

/// Runs gradcheck and asserts the relative error bound.
fn assert_gradcheck(
    params: &Params<f64>,
    loss: impl FnMut(&mut Tape<f64>, &Params<f64>) -> Result<Var>,
) -> TestResult {
    let report = gradcheck(params, GradcheckOptions::default(), loss)
        .map_err(|e| TestCaseError::fail(format!("gradcheck returned an error: {e}")))?;
    prop_assert_eq!(report.params.len(), params.len());
    prop_assert!(
        report.max_rel_err() <= TOL,
        "max rel err {:.3e} > {:e}\n{}",
        report.max_rel_err(),
        TOL,
        report
    );
    Ok(())
}

/// The value of the node `build` returns, on a fresh tape.
fn forward(build: impl FnOnce(&mut Tape<f64>) -> Result<Var>) -> Array2<f64> {
    let mut tape = Tape::new();
    let v = build(&mut tape).expect("forward pass failed");
    tape.value(v).unwrap().to_owned()
}

/// Asserts `got ≈ want` entrywise to FWD_TOL · max(1, |want|).
fn assert_close(got: &Array2<f64>, want: &Array2<f64>) -> TestResult {
    prop_assert_eq!(got.dim(), want.dim());
    for (g, w) in got.iter().zip(want.iter()) {
        prop_assert!(
            (g - w).abs() <= FWD_TOL * w.abs().max(1.0),
            "forward value {g} differs from {w}\n got {got}\nwant {want}"
        );
    }
    Ok(())
}

fn scalar(x: f64) -> Array2<f64> {
    Array2::from_elem((1, 1), x)
}

type BinOp = fn(&mut Tape<f64>, Var, Var) -> Result<Var>;

fn check_binary(
    op: BinOp,
    reference: fn(f64, f64) -> f64,
    a: &Array2<f64>,
    b: &Array2<f64>,
    r: &Array2<f64>,
    acc: bool,
) -> TestResult {
    let mut params = Params::new();
    let ia = params.add("a", a.clone()).unwrap();
    let ib = params.add("b", b.clone()).unwrap();
    assert_gradcheck(&params, |tape, p| {
        let av = tape.param(p, ia)?;
        let bv = tape.param(p, ib)?;
        let y = op(tape, av, bv)?;
        finish(tape, y, r, &[av, bv], acc)
    })?;
    let got = forward(|t| {
        let (av, bv) = (t.constant(a.clone())?, t.constant(b.clone())?);
        op(t, av, bv)
    });
    // A 1×n operand is row-broadcast: row i of it is row 0.
    let want = Array2::from_shape_fn(r.dim(), |(i, j)| {
        reference(a[[i.min(a.nrows() - 1), j]], b[[i.min(b.nrows() - 1), j]])
    });
    assert_close(&got, &want)
}

fn check_unary(
    op: impl Fn(&mut Tape<f64>, Var) -> Result<Var>,
    reference: impl Fn(f64) -> f64,
    x: &Array2<f64>,
    r: &Array2<f64>,
    acc: bool,
) -> TestResult {
    let mut params = Params::new();
    let ix = params.add("x", x.clone()).unwrap();
    assert_gradcheck(&params, |tape, p| {
        let xv = tape.param(p, ix)?;
        let y = op(tape, xv)?;
        finish(tape, y, r, &[xv], acc)
    })?;
    let got = forward(|t| {
        let xv = t.constant(x.clone())?;
        op(t, xv)
    });
    assert_close(&got, &x.mapv(reference))
}

fn sigmoid_ref(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

// ---------------------------------------------------------------------------------------
// properties

proptest! {
    #![proptest_config(common::proptest_config(
        CASES,
        concat!(env!("CARGO_MANIFEST_DIR"), "/proptest-regressions/ops_gradcheck.txt"),
    ))]

    // ----- linalg

    #[test]
    fn matmul_gradient_matches_finite_differences(
        (a, b, r, acc) in (dim(), dim(), dim(), any::<bool>()).prop_flat_map(|(m, k, n, acc)| {
            (mat(m, k, val()), mat(k, n, val()), mat(m, n, rd()), Just(acc))
        })
    ) {
        let mut params = Params::new();
        let ia = params.add("a", a.clone()).unwrap();
        let ib = params.add("b", b.clone()).unwrap();
        assert_gradcheck(&params, |tape, p| {
            let av = tape.param(p, ia)?;
            let bv = tape.param(p, ib)?;
            let y = tape.matmul(av, bv)?;
            finish(tape, y, &r, &[av, bv], acc)
        })?;
        let got = forward(|t| {
            let (av, bv) = (t.constant(a.clone())?, t.constant(b.clone())?);
            t.matmul(av, bv)
        });
        assert_close(&got, &a.dot(&b))?;
    }

    #[test]
    fn affine_gradient_matches_finite_differences(
        (a, b, c, mode, act, r, acc) in (dim(), dim(), dim(), 0usize..3, 0usize..4, any::<bool>())
            .prop_flat_map(|(m, k, n, mode, act, acc)| {
                // mode 0: no addend, 1: full m×n addend, 2: a 1×n bias row.
                let rows = if mode == 2 { 1 } else { m };
                (mat(m, k, val()), mat(k, n, val()), mat(rows, n, val()), Just(mode), Just(act),
                 mat(m, n, rd()), Just(acc))
            })
    ) {
        let act = [Activation::Identity, Activation::Tanh, Activation::Sigmoid, Activation::Relu][act];
        let mut pre = a.dot(&b);
        if mode > 0 {
            pre = &pre + &c;
        }
        // Scaling a and c scales the pre-activation: |a b + c| ≤ SATURATION for tanh, σ.
        let s = desaturate(act, &pre);
        let (a, c, pre) = (a * s, c * s, pre * s);
        // Keep relu away from its kink: the difference must not straddle 0.
        prop_assume!(act != Activation::Relu || pre.iter().all(|x| x.abs() > 1e-3));
        let mut params = Params::new();
        let ia = params.add("a", a.clone()).unwrap();
        let ib = params.add("b", b.clone()).unwrap();
        let ic = params.add("c", c.clone()).unwrap();
        assert_gradcheck(&params, |tape, p| {
            let av = tape.param(p, ia)?;
            let bv = tape.param(p, ib)?;
            let cv = tape.param(p, ic)?;
            let y = tape.affine(av, bv, (mode > 0).then_some(cv), act)?;
            finish(tape, y, &r, &[av, bv, cv], acc)
        })?;
        let got = forward(|t| {
            let (av, bv, cv) = (t.constant(a.clone())?, t.constant(b.clone())?, t.constant(c.clone())?);
            t.affine(av, bv, (mode > 0).then_some(cv), act)
        });
        let want = pre.mapv(|x| match act {
            Activation::Identity => x,
            Activation::Tanh => x.tanh(),
            Activation::Sigmoid => 1.0 / (1.0 + (-x).exp()),
            Activation::Relu => x.max(0.0),
        });
        assert_close(&got, &want)?;
    }

    #[test]
    fn affine_rows_gradient_matches_finite_differences(
        (a, b, c, start, act, r, acc) in (dim(), dim(), dim(), 0usize..4, 0usize..3, any::<bool>())
            .prop_flat_map(|(m, k, n, extra, act, acc)| {
                (mat(m, k, val()), mat(k, n, val()), mat(m + extra, n, val()), 0..=extra, Just(act),
                 mat(m, n, rd()), Just(acc))
            })
    ) {
        let act = [Activation::Identity, Activation::Tanh, Activation::Sigmoid][act];
        let m = a.nrows();
        // Scaling a and c scales the pre-activation: |a b + c| ≤ SATURATION for tanh, σ.
        let rows = |c: &Array2<f64>| c.slice_axis(ndarray::Axis(0), ndarray::Slice::from(start..start + m)).to_owned();
        let s = desaturate(act, &(a.dot(&b) + rows(&c)));
        let (a, c) = (a * s, c * s);
        let mut params = Params::new();
        let ia = params.add("a", a.clone()).unwrap();
        let ib = params.add("b", b.clone()).unwrap();
        let ic = params.add("c", c.clone()).unwrap();
        assert_gradcheck(&params, |tape, p| {
            let av = tape.param(p, ia)?;
            let bv = tape.param(p, ib)?;
            let cv = tape.param(p, ic)?;
            let y = tape.affine_rows(av, bv, RowsOf(cv, start..start + m), act)?;
            finish(tape, y, &r, &[av, bv, cv], acc)
        })?;
        let got = forward(|t| {
            let (av, bv, cv) = (t.constant(a.clone())?, t.constant(b.clone())?, t.constant(c.clone())?);
            t.affine_rows(av, bv, RowsOf(cv, start..start + m), act)
        });
        let pre = a.dot(&b) + rows(&c);
        let want = pre.mapv(|x| match act {
            Activation::Tanh => x.tanh(),
            Activation::Sigmoid => 1.0 / (1.0 + (-x).exp()),
            _ => x,
        });
        assert_close(&got, &want)?;
    }

    #[test]
    fn transpose_gradient_matches_finite_differences(
        (x, r, acc) in (dim(), dim(), any::<bool>()).prop_flat_map(|(m, n, acc)| {
            (mat(m, n, val()), mat(n, m, rd()), Just(acc))
        })
    ) {
        let mut params = Params::new();
        let ix = params.add("x", x.clone()).unwrap();
        assert_gradcheck(&params, |tape, p| {
            let xv = tape.param(p, ix)?;
            let y = tape.transpose(xv)?;
            finish(tape, y, &r, &[xv], acc)
        })?;
        let got = forward(|t| {
            let xv = t.constant(x.clone())?;
            t.transpose(xv)
        });
        assert_close(&got, &x.t().to_owned())?;
    }

    // ----- elementwise binary, with the row broadcast on either side

    #[test]
    fn add_gradient_matches_finite_differences((a, b, r, acc) in binary_case()) {
        check_binary(Tape::add, |x, y| x + y, &a, &b, &r, acc)?;
    }

    #[test]
    fn sub_gradient_matches_finite_differences((a, b, r, acc) in binary_case()) {
        check_binary(Tape::sub, |x, y| x - y, &a, &b, &r, acc)?;
    }

    #[test]
    fn mul_gradient_matches_finite_differences((a, b, r, acc) in binary_case()) {
        check_binary(Tape::mul, |x, y| x * y, &a, &b, &r, acc)?;
    }

    #[test]
    fn binary_ops_with_one_var_on_both_sides_match_finite_differences(
        (x, r, acc) in unary_case(val()),
        which in 0usize..3,
    ) {
        // x + x, x − x, x ⊙ x: both contributions land in the same adjoint buffer.
        let ops: [BinOp; 3] = [Tape::add, Tape::sub, Tape::mul];
        let refs: [fn(f64) -> f64; 3] = [|x| x + x, |x| x - x, |x| x * x];
        check_unary(|t, v| ops[which](t, v, v), refs[which], &x, &r, acc)?;
    }

    // ----- elementwise unary

    #[test]
    fn neg_gradient_matches_finite_differences((x, r, acc) in unary_case(val())) {
        check_unary(|t, v| t.neg(v), |x| -x, &x, &r, acc)?;
    }

    #[test]
    fn scale_gradient_matches_finite_differences(
        (x, r, acc) in unary_case(val()),
        c in -3.0f64..3.0,
    ) {
        check_unary(|t, v| t.scale(v, c), |x| c * x, &x, &r, acc)?;
    }

    #[test]
    fn tanh_gradient_matches_finite_differences((x, r, acc) in unary_case(-3.0f64..3.0)) {
        check_unary(|t, v| t.tanh(v), f64::tanh, &x, &r, acc)?;
    }

    #[test]
    fn relu_gradient_matches_finite_differences((x, r, acc) in unary_case(away_from_zero())) {
        check_unary(|t, v| t.relu(v), |x| x.max(0.0), &x, &r, acc)?;
    }

    #[test]
    fn sigmoid_gradient_matches_finite_differences((x, r, acc) in unary_case(-4.0f64..4.0)) {
        check_unary(|t, v| t.sigmoid(v), sigmoid_ref, &x, &r, acc)?;
    }

    #[test]
    fn exp_gradient_matches_finite_differences((x, r, acc) in unary_case(-2.0f64..2.0)) {
        check_unary(|t, v| t.exp(v), f64::exp, &x, &r, acc)?;
    }

    #[test]
    fn log_gradient_matches_finite_differences((x, r, acc) in unary_case(0.1f64..3.0)) {
        check_unary(|t, v| t.log(v), f64::ln, &x, &r, acc)?;
    }

    // ----- reductions

    #[test]
    fn sum_gradient_matches_finite_differences((x, r, acc) in scalar_case()) {
        let mut params = Params::new();
        let ix = params.add("x", x.clone()).unwrap();
        assert_gradcheck(&params, |tape, p| {
            let xv = tape.param(p, ix)?;
            let y = tape.sum(xv)?;
            finish(tape, y, &r, &[xv], acc)
        })?;
        let got = forward(|t| {
            let xv = t.constant(x.clone())?;
            t.sum(xv)
        });
        assert_close(&got, &scalar(x.sum()))?;
    }

    #[test]
    fn mean_gradient_matches_finite_differences((x, r, acc) in scalar_case()) {
        let mut params = Params::new();
        let ix = params.add("x", x.clone()).unwrap();
        assert_gradcheck(&params, |tape, p| {
            let xv = tape.param(p, ix)?;
            let y = tape.mean(xv)?;
            finish(tape, y, &r, &[xv], acc)
        })?;
        let got = forward(|t| {
            let xv = t.constant(x.clone())?;
            t.mean(xv)
        });
        assert_close(&got, &scalar(x.sum() / x.len() as f64))?;
    }

    // ----- concatenation and slicing

    #[test]
    fn concat_cols_gradient_matches_finite_differences(
        (parts, r, repeat, acc) in (dim(), proptest::collection::vec(dim(), 1..=3), any::<bool>(), any::<bool>())
            .prop_flat_map(|(b, widths, repeat, acc)| {
                let total: usize = widths.iter().sum::<usize>() + if repeat { widths[0] } else { 0 };
                let parts: Vec<_> = widths.iter().map(|&w| mat(b, w, val())).collect();
                (parts, mat(b, total, rd()), Just(repeat), Just(acc))
            })
    ) {
        check_concat(timetape::Along::Cols, &parts, &r, repeat, acc)?;
    }

    #[test]
    fn concat_rows_gradient_matches_finite_differences(
        (parts, r, repeat, acc) in (dim(), proptest::collection::vec(dim(), 1..=3), any::<bool>(), any::<bool>())
            .prop_flat_map(|(n, heights, repeat, acc)| {
                let total: usize = heights.iter().sum::<usize>() + if repeat { heights[0] } else { 0 };
                let parts: Vec<_> = heights.iter().map(|&h| mat(h, n, val())).collect();
                (parts, mat(total, n, rd()), Just(repeat), Just(acc))
            })
    ) {
        check_concat(timetape::Along::Rows, &parts, &r, repeat, acc)?;
    }

    #[test]
    fn slice_cols_gradient_matches_finite_differences(
        (x, r1, r2, acc) in (dim(), dim(), any::<bool>()).prop_flat_map(|(b, n, acc)| {
            (mat(b, n, val()), slice_case(b, n, false), slice_case(b, n, false), Just(acc))
        })
    ) {
        check_slice(timetape::Along::Cols, &x, &r1, &r2, acc)?;
    }

    #[test]
    fn slice_rows_gradient_matches_finite_differences(
        (x, r1, r2, acc) in (dim(), dim(), any::<bool>()).prop_flat_map(|(b, n, acc)| {
            (mat(b, n, val()), slice_case(b, n, true), slice_case(b, n, true), Just(acc))
        })
    ) {
        check_slice(timetape::Along::Rows, &x, &r1, &r2, acc)?;
    }

    // ----- losses

    #[test]
    fn softmax_cross_entropy_gradient_matches_finite_differences(
        (z, labels, weights, red, r, acc) in (dim(), dim(), any::<bool>()).prop_flat_map(|(b, c, acc)| {
            (
                mat(b, c, -3.0f64..3.0),
                proptest::collection::vec(0..c, b),
                proptest::option::of(proptest::collection::vec(0.1f64..2.0, b)),
                reduction(),
                mat(1, 1, rd()),
                Just(acc),
            )
        })
    ) {
        let mut params = Params::new();
        let iz = params.add("z", z.clone()).unwrap();
        let w = weights.as_deref();
        assert_gradcheck(&params, |tape, p| {
            let zv = tape.param(p, iz)?;
            let y = tape.softmax_cross_entropy(zv, &labels, w, red)?;
            finish(tape, y, &r, &[zv], acc)
        })?;
        let got = forward(|t| {
            let zv = t.constant(z.clone())?;
            t.softmax_cross_entropy(zv, &labels, w, red)
        });
        let mut total = 0.0;
        for (i, row) in z.rows().into_iter().enumerate() {
            let lse = row.iter().map(|x| x.exp()).sum::<f64>().ln();
            total += w.map_or(1.0, |w| w[i]) * (lse - row[labels[i]]);
        }
        let n = if red == Reduction::Mean { z.nrows() as f64 } else { 1.0 };
        assert_close(&got, &scalar(total / n))?;
    }

    #[test]
    fn bce_with_logits_gradient_matches_finite_differences(
        (z, t, red, r, acc) in (dim(), dim(), any::<bool>()).prop_flat_map(|(b, n, acc)| {
            // targets stay inside [0, 1] under the ±1e-5 perturbation of gradcheck
            (mat(b, n, -3.0f64..3.0), mat(b, n, 0.05f64..0.95), reduction(), mat(1, 1, rd()), Just(acc))
        })
    ) {
        let mut params = Params::new();
        let iz = params.add("z", z.clone()).unwrap();
        let it = params.add("t", t.clone()).unwrap();
        assert_gradcheck(&params, |tape, p| {
            let zv = tape.param(p, iz)?;
            let tv = tape.param(p, it)?;
            let y = tape.bce_with_logits(zv, tv, red)?;
            finish(tape, y, &r, &[zv, tv], acc)
        })?;
        let got = forward(|tp| {
            let (zv, tv) = (tp.constant(z.clone())?, tp.constant(t.clone())?);
            tp.bce_with_logits(zv, tv, red)
        });
        // −t ln σ(z) − (1 − t) ln(1 − σ(z)), written directly
        let total: f64 = z
            .iter()
            .zip(t.iter())
            .map(|(&z, &t)| -t * sigmoid_ref(z).ln() - (1.0 - t) * (1.0 - sigmoid_ref(z)).ln())
            .sum();
        let n = if red == Reduction::Mean { z.len() as f64 } else { 1.0 };
        assert_close(&got, &scalar(total / n))?;
    }

    #[test]
    fn squared_error_gradient_matches_finite_differences(
        (pr, tg, weights, red, r, acc) in (dim(), dim(), any::<bool>()).prop_flat_map(|(b, n, acc)| {
            (
                mat(b, n, val()),
                mat(b, n, val()),
                proptest::option::of(proptest::collection::vec(0.1f64..2.0, b)),
                reduction(),
                mat(1, 1, rd()),
                Just(acc),
            )
        })
    ) {
        let mut params = Params::new();
        let ip = params.add("pred", pr.clone()).unwrap();
        let it = params.add("target", tg.clone()).unwrap();
        let w = weights.as_deref();
        assert_gradcheck(&params, |tape, p| {
            let pv = tape.param(p, ip)?;
            let tv = tape.param(p, it)?;
            let y = tape.squared_error(pv, tv, w, red)?;
            finish(tape, y, &r, &[pv, tv], acc)
        })?;
        let got = forward(|t| {
            let (pv, tv) = (t.constant(pr.clone())?, t.constant(tg.clone())?);
            t.squared_error(pv, tv, w, red)
        });
        let mut total = 0.0;
        for i in 0..pr.nrows() {
            let s: f64 = (0..pr.ncols()).map(|j| (pr[[i, j]] - tg[[i, j]]).powi(2)).sum();
            total += w.map_or(1.0, |w| w[i]) * s;
        }
        let n = if red == Reduction::Mean { pr.len() as f64 } else { 1.0 };
        assert_close(&got, &scalar(total / n))?;
    }

    // ----- gradient control

    #[test]
    fn scale_grad_gradient_matches_finite_differences(
        (x, r, acc) in unary_case(val()),
        c in -3.0f64..3.0,
    ) {
        // scale_grad(x, c) has value x and derivative c·I, which no finite difference of
        // its value can see. So check it inside z = scale_grad(x, c) + (c − 1)·detach(x):
        // the value of z is c·x, whose true derivative is c·I, and on the tape the first
        // term carries c·ḡ while the detached one carries nothing. The tape agrees with
        // the finite difference iff scale_grad multiplies the adjoint by exactly c (and
        // passes its value through unchanged, and detach blocks the gradient).
        check_unary(
            |t, v| {
                let sg = t.scale_grad(v, c)?;
                let d = t.detach(v)?;
                let d = t.scale(d, c - 1.0)?;
                t.add(sg, d)
            },
            |x| c * x,
            &x,
            &r,
            acc,
        )?;
        let got = forward(|t| {
            let xv = t.constant(x.clone())?;
            t.scale_grad(xv, c)
        });
        prop_assert_eq!(got, x);
    }
}

/// (rows or cols range, matching readout) of a slice of a b×n matrix.
fn slice_case(
    b: usize,
    n: usize,
    rows: bool,
) -> impl Strategy<Value = (Range<usize>, Array2<f64>)> {
    sub_range(if rows { b } else { n }).prop_flat_map(move |range| {
        let len = range.end - range.start;
        let shape = if rows { (len, n) } else { (b, len) };
        (Just(range), mat(shape.0, shape.1, rd()))
    })
}

/// Concatenation of the parts (each a parameter; the first one repeated at the end if
/// `repeat`, so that its adjoint receives two blocks).
fn check_concat(
    axis: timetape::Along,
    parts: &[Array2<f64>],
    r: &Array2<f64>,
    repeat: bool,
    acc: bool,
) -> TestResult {
    let mut params = Params::new();
    let ids: Vec<_> = parts
        .iter()
        .enumerate()
        .map(|(i, a)| params.add(format!("part{i}"), a.clone()).unwrap())
        .collect();
    assert_gradcheck(&params, |tape, p| {
        let mut vars = ids
            .iter()
            .map(|&id| tape.param(p, id))
            .collect::<Result<Vec<_>>>()?;
        let inputs = vars.clone();
        if repeat {
            vars.push(vars[0]);
        }
        let y = match axis {
            timetape::Along::Cols => tape.concat_cols(&vars)?,
            timetape::Along::Rows => tape.concat_rows(&vars)?,
        };
        finish(tape, y, r, &inputs, acc)
    })?;
    let got = forward(|t| {
        let mut vars = parts
            .iter()
            .map(|a| t.constant(a.clone()))
            .collect::<Result<Vec<_>>>()?;
        if repeat {
            vars.push(vars[0]);
        }
        t.concat(&vars, axis)
    });
    let mut views: Vec<_> = parts.iter().map(|a| a.view()).collect();
    if repeat {
        views.push(parts[0].view());
    }
    let nd_axis = match axis {
        timetape::Along::Cols => ndarray::Axis(1),
        timetape::Along::Rows => ndarray::Axis(0),
    };
    assert_close(&got, &ndarray::concatenate(nd_axis, &views).unwrap())
}

/// Two slices of one parameter, each with its own readout: the second slice's rule
/// accumulates into the adjoint the first one wrote (the ranges may overlap).
fn check_slice(
    axis: timetape::Along,
    x: &Array2<f64>,
    (range1, r1): &(Range<usize>, Array2<f64>),
    (range2, r2): &(Range<usize>, Array2<f64>),
    acc: bool,
) -> TestResult {
    let mut params = Params::new();
    let ix = params.add("x", x.clone()).unwrap();
    assert_gradcheck(&params, |tape, p| {
        let xv = tape.param(p, ix)?;
        let y1 = tape.slice(xv, axis, range1.clone())?;
        let y2 = tape.slice(xv, axis, range2.clone())?;
        let l2 = readout(tape, y2, r2)?;
        let l1 = finish(tape, y1, r1, &[xv], acc)?;
        tape.add(l1, l2)
    })?;
    let got = forward(|t| {
        let xv = t.constant(x.clone())?;
        match axis {
            timetape::Along::Cols => t.slice_cols(xv, range1.clone()),
            timetape::Along::Rows => t.slice_rows(xv, range1.clone()),
        }
    });
    let want = match axis {
        timetape::Along::Cols => x.slice(ndarray::s![.., range1.clone()]).to_owned(),
        timetape::Along::Rows => x.slice(ndarray::s![range1.clone(), ..]).to_owned(),
    };
    assert_close(&got, &want)
}
