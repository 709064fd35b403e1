//! The shared comparison helpers (`tests/common`) fail on a non-finite value on either
//! side, where the running maximum they replace (`fold(0.0, |m, x| m.max(x))`) skips it.

mod common;

use common::{
    assert_close, assert_differs, grads_max_rel_diff, max_abs, max_abs_diff, max_rel_diff,
};
use ndarray::{array, Array2};
use timetape::{Grads, Params};

fn pair() -> (Array2<f64>, Array2<f64>) {
    (
        array![[1.0, 2.0], [3.0, 4.0]],
        array![[1.0, 2.0], [3.0, 4.0]],
    )
}

/// The defect the helpers exist for: `f64::max` drops a NaN operand, so a running
/// maximum of differences reports 0 for a NaN result.
#[test]
fn running_f64_max_skips_nan_which_the_helpers_do_not() {
    assert_eq!(0.0f64.max(f64::NAN), 0.0);
    let (a, mut b) = pair();
    b[[1, 0]] = f64::NAN;
    let skipped = a
        .iter()
        .zip(b.iter())
        .fold(0.0f64, |m, (x, y)| m.max((x - y).abs()));
    assert_eq!(skipped, 0.0);
    assert_eq!(
        max_abs_diff(a.iter().copied(), b.iter().copied()),
        f64::INFINITY
    );
    assert_eq!(max_rel_diff(a.view(), b.view()), f64::INFINITY);
}

#[test]
fn max_rel_diff_is_infinite_for_nan_or_inf_on_either_side() {
    for bad in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
        for (i, j) in [(0, 0), (1, 1)] {
            let (mut a, b) = pair();
            a[[i, j]] = bad;
            assert_eq!(
                max_rel_diff(a.view(), b.view()),
                f64::INFINITY,
                "{bad} in a"
            );
            assert_eq!(
                max_rel_diff(b.view(), a.view()),
                f64::INFINITY,
                "{bad} in b"
            );
            assert_eq!(max_abs(a.iter().copied()), f64::INFINITY);
        }
    }
    // Both sides NaN at the same place is not "equal".
    let (mut a, mut b) = pair();
    a[[0, 1]] = f64::NAN;
    b[[0, 1]] = f64::NAN;
    assert_eq!(max_rel_diff(a.view(), b.view()), f64::INFINITY);
}

#[test]
fn max_rel_diff_is_relative_to_the_largest_reference_entry_and_checks_shapes() {
    let (a, mut b) = pair();
    assert_eq!(max_rel_diff(a.view(), b.view()), 0.0);
    b[[0, 0]] = 1.5; // |a − b| = 0.5, max |b| = 4
    assert_eq!(max_rel_diff(a.view(), b.view()), 0.125);
    // All-zero reference: the absolute difference.
    let z = Array2::<f64>::zeros((2, 2));
    assert_eq!(max_rel_diff(a.view(), z.view()), 4.0);
    assert_eq!(max_rel_diff(z.view(), z.view()), 0.0);
    let wide = Array2::<f64>::zeros((1, 4));
    assert_eq!(max_rel_diff(a.view(), wide.view()), f64::INFINITY);
    assert_eq!(max_abs_diff([1.0, 2.0], [1.0]), f64::INFINITY);
}

#[test]
fn assert_close_accepts_equal_finite_arrays() {
    let (a, b) = pair();
    assert_close(a.view(), b.view(), 0.0, "equal");
}

#[test]
#[should_panic(expected = "relative difference inf")]
fn assert_close_fails_on_nan_in_got() {
    let (mut a, b) = pair();
    a[[1, 1]] = f64::NAN;
    assert_close(a.view(), b.view(), 1e300, "nan in got");
}

#[test]
#[should_panic(expected = "relative difference inf")]
fn assert_close_fails_on_nan_in_want() {
    let (a, mut b) = pair();
    b[[0, 0]] = f64::NAN;
    assert_close(a.view(), b.view(), 1e300, "nan in want");
}

#[test]
#[should_panic(expected = "relative difference inf")]
fn assert_close_fails_on_infinity_in_got() {
    let (mut a, b) = pair();
    a[[0, 1]] = f64::INFINITY;
    assert_close(a.view(), b.view(), 1e300, "inf in got");
}

#[test]
#[should_panic(expected = "relative difference inf")]
fn assert_close_fails_on_infinity_in_want() {
    let (a, mut b) = pair();
    b[[1, 0]] = f64::NEG_INFINITY;
    assert_close(a.view(), b.view(), 1e300, "inf in want");
}

#[test]
#[should_panic(expected = "non-finite value")]
fn assert_differs_fails_on_nan_instead_of_counting_it_as_a_difference() {
    let (mut a, b) = pair();
    a[[0, 0]] = f64::NAN;
    assert_differs(a.view(), b.view(), 1e-3, "nan");
}

#[test]
fn grads_max_rel_diff_is_infinite_on_nan_or_a_missing_gradient() {
    let mut params = Params::<f64>::new();
    let w = params.add("w", Array2::zeros((2, 2))).unwrap();
    let v = params.add("v", Array2::zeros((1, 2))).unwrap();
    let (a, b) = pair();
    let mut g1 = Grads::new(&params);
    g1.accumulate(w, a.view()).unwrap();
    g1.accumulate(v, array![[1.0, -1.0]].view()).unwrap();
    let mut g2 = g1.clone();
    assert_eq!(grads_max_rel_diff(&params, &g1, &g2), 0.0);
    g2.get_mut(w).unwrap()[[1, 1]] = f64::NAN;
    assert_eq!(grads_max_rel_diff(&params, &g1, &g2), f64::INFINITY);
    assert_eq!(grads_max_rel_diff(&params, &g2, &g1), f64::INFINITY);
    let mut g3 = Grads::new(&params);
    g3.accumulate(w, b.view()).unwrap();
    assert_eq!(grads_max_rel_diff(&params, &g3, &g1), f64::INFINITY);
}
