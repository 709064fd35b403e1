//! Comparison helpers and fixtures shared by the integration tests.
//!
//! Every helper here fails on a value that is not finite, on either side. A running
//! maximum written as `fold(0.0, |m, x| m.max(x))` does not: `f64::max` returns the
//! other operand when one is NaN (`0.0f64.max(f64::NAN) == 0.0`), so a NaN difference
//! is skipped and a comparison of a NaN result against a finite one passes. Here a
//! non-finite entry makes a difference `+∞`, which no tolerance accepts and which
//! survives any later `f64::max` fold.
//!
//! Included with `mod common;` by the test files that use it (each test file is its
//! own crate, so an item one file does not use is dead code there).
#![allow(dead_code)]

pub mod balance;
pub mod cases;

use ndarray::ArrayView2;
use proptest::test_runner::{Config, FileFailurePersistence};
use timetape::{Grads, ParamId, Params};

/// The largest `|x|` over `values`; `+∞` if any value is not finite (or `0` for none).
///
/// A scale computed this way must be checked finite before it divides or multiplies a
/// tolerance (`d <= tol · ∞` would accept anything): use [`finite_scale`] for that.
pub fn max_abs(values: impl IntoIterator<Item = f64>) -> f64 {
    let mut m = 0.0f64;
    for x in values {
        if !x.is_finite() {
            return f64::INFINITY;
        }
        m = m.max(x.abs());
    }
    m
}

/// The largest `|x|` over `values`, panicking (with `what`) if any is not finite: a
/// scale for a tolerance such as `d <= tol · scale`.
pub fn finite_scale(values: impl IntoIterator<Item = f64>, what: &str) -> f64 {
    let s = max_abs(values);
    assert!(s.is_finite(), "{what}: non-finite value in the scale");
    s
}

/// The largest `|a_i − b_i|`; `+∞` if the lengths differ or any entry on either side is
/// not finite.
pub fn max_abs_diff(a: impl IntoIterator<Item = f64>, b: impl IntoIterator<Item = f64>) -> f64 {
    let (mut a, mut b) = (a.into_iter(), b.into_iter());
    let mut m = 0.0f64;
    loop {
        match (a.next(), b.next()) {
            (None, None) => return m,
            (Some(x), Some(y)) if x.is_finite() && y.is_finite() => m = m.max((x - y).abs()),
            _ => return f64::INFINITY,
        }
    }
}

/// `max |a − b| / max |b|` (the absolute difference `max |a − b|` if `b` is all zeros);
/// `+∞` if the shapes differ or any entry on either side is not finite.
pub fn max_rel_diff(a: ArrayView2<'_, f64>, b: ArrayView2<'_, f64>) -> f64 {
    max_rel_diff_floored(a, b, 0.0)
}

/// `max |a − b| / max(max |b|, floor)`: [`max_rel_diff`] with the scale floored, for an
/// entry that may be far smaller than the terms it is computed from (its rounding error
/// is then a few ulp of those terms, not of itself); `+∞` as [`max_rel_diff`].
pub fn max_rel_diff_floored(a: ArrayView2<'_, f64>, b: ArrayView2<'_, f64>, floor: f64) -> f64 {
    if a.dim() != b.dim() || !floor.is_finite() {
        return f64::INFINITY;
    }
    let diff = max_abs_diff(a.iter().copied(), b.iter().copied());
    let scale = max_abs(b.iter().copied()).max(floor);
    if !diff.is_finite() || !scale.is_finite() {
        return f64::INFINITY;
    }
    if scale == 0.0 {
        diff
    } else {
        diff / scale
    }
}

/// Panics unless `max_rel_diff(got, want) <= tol` (so on any non-finite entry).
#[track_caller]
pub fn assert_close(got: ArrayView2<'_, f64>, want: ArrayView2<'_, f64>, tol: f64, what: &str) {
    let d = max_rel_diff(got, want);
    assert!(
        d <= tol,
        "{what}: relative difference {d:e} > {tol:e}\n got {got}\nwant {want}"
    );
}

/// Panics unless `got` and `want` differ by more than `min` relative to `want` while
/// both are finite: the "not vacuous" side of a check.
#[track_caller]
pub fn assert_differs(got: ArrayView2<'_, f64>, want: ArrayView2<'_, f64>, min: f64, what: &str) {
    assert!(
        got.iter().chain(want.iter()).all(|x| x.is_finite()),
        "{what}: non-finite value"
    );
    let d = max_rel_diff(got, want);
    assert!(d > min, "{what}: relative difference {d:e} ≤ {min:e}");
}

/// The largest [`max_rel_diff`] over the parameters of `params` (per parameter: the
/// difference over the largest entry of `want`'s gradient); `+∞` if either side lacks a
/// gradient for one of them, or on any non-finite entry.
pub fn grads_max_rel_diff(params: &Params<f64>, got: &Grads<f64>, want: &Grads<f64>) -> f64 {
    params
        .ids()
        .map(|id: ParamId| match (got.get(id), want.get(id)) {
            (Ok(a), Ok(b)) => max_rel_diff(a.view(), b.view()),
            _ => f64::INFINITY,
        })
        .fold(0.0, nan_max)
}

/// Panics unless every parameter's gradient agrees to `tol` ([`grads_max_rel_diff`]).
#[track_caller]
pub fn assert_grads_close(
    params: &Params<f64>,
    got: &Grads<f64>,
    want: &Grads<f64>,
    tol: f64,
    what: &str,
) {
    for id in params.ids() {
        let name = params.name(id).unwrap_or("?");
        match (got.get(id), want.get(id)) {
            (Ok(a), Ok(b)) => assert_close(a.view(), b.view(), tol, &format!("{what}: {name}")),
            _ => panic!("{what}: no gradient for {name} on one side"),
        }
    }
}

/// The configuration of a file's property tests: `cases` cases per property (or
/// `PROPTEST_CASES` from the environment, for a longer run), random seeds, and every
/// failure saved to `regressions` (a path under the crate root, committed) and replayed
/// first on every later run, so that a rare failure is not seen once and lost. On a
/// failure proptest prints the file and the `cc <seed>` line it appended.
pub fn proptest_config(cases: u32, regressions: &'static str) -> Config {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(cases);
    Config {
        cases,
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(regressions))),
        ..Config::default()
    }
}

/// A random orthogonal matrix (`init::orthogonal`, seeded): spectral radius and every
/// singular value 1.
pub fn orthogonal(n: usize, seed: u64) -> ndarray::Array2<f64> {
    use timetape::init;
    init::orthogonal(n, &mut init::rng(seed)).expect("n > 0")
}

/// The larger of two values, NaN if either is NaN (`f64::max` returns the other operand,
/// so a running maximum built on it skips a NaN).
pub fn nan_max(a: f64, b: f64) -> f64 {
    if a.is_nan() || b.is_nan() {
        f64::NAN
    } else {
        a.max(b)
    }
}
