//! `Tape::gather_rows`, the embedding lookup: its forward against ndarray, its backward
//! (a scatter-add) exactly for repeated ids and against central finite differences, and
//! its errors.
//!
//! Tolerances: the forward and the scatter-add are copies and sums of the same f64
//! numbers in the same order on both sides, so they must agree exactly; the finite
//! differences (eps = 1e-5 on O(1) values, loss smooth) are accurate to ~1e-9, checked
//! at 1e-6 relative as everywhere in the suite.

mod common;

use ndarray::{array, Array2};
use proptest::prelude::*;
use timetape::gradcheck::{gradcheck, GradcheckOptions};
use timetape::{Error, Params, Tape};

const FD_TOL: f64 = 1e-6;

/// Repeated ids: the gradient of `Σ_r Σ_j c_rj y_rj` with respect to row v of the table is
/// `Σ_{r: ids_r = v} c_r`, computed here on ndarray alone; the tape must give it exactly.
#[test]
fn gather_rows_gradient_sums_the_rows_of_repeated_ids_exactly() {
    let mut params = Params::<f64>::new();
    let table = Array2::from_shape_fn((5, 3), |(i, j)| (i * 3 + j) as f64 * 0.25 - 1.0);
    let e = params.add("E", table.clone()).unwrap();
    let ids = [3, 0, 3, 3, 4, 0];
    let c = Array2::from_shape_fn((ids.len(), 3), |(r, j)| 0.5 + r as f64 - 0.75 * j as f64);

    let mut tape = Tape::new();
    let ev = tape.param(&params, e).unwrap();
    let y = tape.gather_rows(ev, &ids).unwrap();
    let cv = tape.constant(c.clone()).unwrap();
    let weighted = tape.mul(y, cv).unwrap();
    let loss = tape.sum(weighted).unwrap();
    let grads = tape.backward(loss).unwrap();

    let mut want_value = Array2::<f64>::zeros((ids.len(), 3));
    let mut want_grad = Array2::<f64>::zeros((5, 3));
    for (r, &id) in ids.iter().enumerate() {
        want_value.row_mut(r).assign(&table.row(id));
        let sum = &want_grad.row(id) + &c.row(r);
        want_grad.row_mut(id).assign(&sum);
    }
    assert_eq!(tape.value(y).unwrap(), want_value);
    assert_eq!(grads.get(e).unwrap(), want_grad);
    // Rows 1 and 2 are never picked: exactly zero.
    assert!(want_grad
        .row(1)
        .iter()
        .chain(want_grad.row(2).iter())
        .all(|&x| x == 0.0));
}

proptest! {
    #![proptest_config(common::proptest_config(256, "proptest-regressions/gather_rows.txt"))]

    /// Any table (V×E up to 6×6), any ids with repeats (up to 8), read out through a
    /// smooth nonlinearity, added to another use of the same table: the tape's gradient
    /// matches central finite differences.
    #[test]
    fn gather_rows_matches_finite_differences(
        (v, e, ids) in (1usize..=6, 1usize..=6).prop_flat_map(|(v, e)| {
            (Just(v), Just(e), proptest::collection::vec(0..v, 1..=8))
        }),
        seed in 0u64..1000,
    ) {
        let mut params = Params::<f64>::new();
        let table = timetape::init::uniform((v, e), 1.0, &mut timetape::init::rng(seed)).unwrap();
        let t = params.add("E", table).unwrap();
        let readout = Array2::from_shape_fn((ids.len(), e), |(r, j)| ((r * 7 + j) as f64).sin());
        let report = gradcheck(&params, GradcheckOptions::default(), |tape, p| {
            let tv = tape.param(p, t)?;
            let y = tape.gather_rows(tv, &ids)?;
            let y = tape.tanh(y)?;
            let c = tape.constant(readout.clone())?;
            let y = tape.mul(y, c)?;
            let s = tape.sum(y)?;
            let sq = tape.mul(tv, tv)?; // the table used a second way
            let s2 = tape.sum(sq)?;
            let both = tape.add(s, s2)?;
            Ok(both)
        }).unwrap();
        prop_assert!(report.passes(FD_TOL), "{}", report);
    }
}

#[test]
fn gather_rows_errors_name_the_op() {
    let mut tape = Tape::<f64>::new();
    let t = tape.constant(array![[1.0, 2.0], [3.0, 4.0]]).unwrap();
    let e = tape.gather_rows(t, &[0, 2]).unwrap_err();
    assert_eq!(
        e,
        Error::LabelOutOfRange {
            op: "gather_rows",
            label: 2,
            classes: 2
        }
    );
    let e = tape.gather_rows(t, &[]).unwrap_err();
    assert!(matches!(
        e,
        Error::EmptyInput {
            op: "gather_rows",
            ..
        }
    ));
    assert_eq!(tape.len(), 1, "a failed op records no node");
}
