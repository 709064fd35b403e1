//! A tape keeps its copy of a parameter across `Tape::clear` and takes it back when the
//! same, unchanged parameter is registered again (segments of a truncated run register
//! every weight anew). These tests check that the copy is only ever reused for the value
//! it was made from: a value changed through `Params::set`, `Params::get_mut` or an
//! optimizer step is copied (and checked) again, also in a clone of the store.

use ndarray::{array, Array2};
use timetape::{Error, Params, Tape};

/// `sum(x W)` for a 1×2 `x`: its gradient with respect to W is `xᵀ 1`, and its value
/// reads every entry of W.
fn value_and_grad(
    tape: &mut Tape<f64>,
    params: &Params<f64>,
    w: timetape::ParamId,
) -> timetape::Result<(f64, Array2<f64>)> {
    tape.clear();
    let wv = tape.param(params, w)?;
    let x = tape.constant(array![[1.0, 3.0]])?;
    let y = tape.matmul(x, wv)?;
    let s = tape.sum(y)?;
    let grads = tape.backward(s)?;
    Ok((tape.value(s)?[[0, 0]], grads.get(w)?.clone()))
}

#[test]
fn a_parameter_registered_again_after_a_clear_has_its_current_value() -> timetape::Result<()> {
    let mut params = Params::<f64>::new();
    let w = params.add("W", array![[1.0, 2.0], [3.0, 4.0]])?;
    let mut tape = Tape::new();
    // Unchanged: the kept copy, the same value and gradient.
    assert_eq!(
        value_and_grad(&mut tape, &params, w)?.0,
        1.0 + 2.0 + 9.0 + 12.0
    );
    assert_eq!(value_and_grad(&mut tape, &params, w)?.0, 24.0);
    // Changed through `set`: the new value.
    params.set(w, array![[0.0, 0.0], [0.0, 1.0]].view())?;
    assert_eq!(value_and_grad(&mut tape, &params, w)?.0, 3.0);
    // Changed through `get_mut`: the new value.
    params.get_mut(w)?[[0, 0]] = 10.0;
    assert_eq!(value_and_grad(&mut tape, &params, w)?.0, 13.0);
    // A clone changed on its own: each store's own value, on one tape, in turn.
    let mut other = params.clone();
    other.get_mut(w)?[[1, 1]] = 100.0;
    assert_eq!(value_and_grad(&mut tape, &other, w)?.0, 10.0 + 300.0);
    assert_eq!(value_and_grad(&mut tape, &params, w)?.0, 13.0);
    assert_eq!(value_and_grad(&mut tape, &other, w)?.0, 310.0);
    // An optimizer step: the stepped value.
    let (_, g) = value_and_grad(&mut tape, &params, w)?;
    assert_eq!(g, array![[1.0, 1.0], [3.0, 3.0]]);
    let mut grads = timetape::Grads::zeros_like(&params);
    grads.accumulate(w, g.view())?;
    let mut sgd = timetape::optim::Sgd::new(0.5)?;
    sgd.step(&mut params, &grads)?;
    let stepped = array![[10.0 - 0.5, -0.5], [-1.5, 1.0 - 1.5]];
    let want: f64 = stepped
        .dot(&array![[1.0], [1.0]])
        .column(0)
        .dot(&array![1.0, 3.0]);
    assert_eq!(value_and_grad(&mut tape, &params, w)?.0, want);
    Ok(())
}

#[test]
fn a_non_finite_entry_written_after_a_registration_is_still_reported() -> timetape::Result<()> {
    let mut params = Params::<f64>::new();
    let w = params.add("W", array![[1.0, 2.0], [3.0, 4.0]])?;
    let mut tape = Tape::new();
    value_and_grad(&mut tape, &params, w)?;
    params.get_mut(w)?[[1, 0]] = f64::NAN;
    let e = value_and_grad(&mut tape, &params, w).unwrap_err();
    assert!(
        matches!(&e, Error::NonFinite { op: "param", what } if what.contains("\"W\"")),
        "{e}"
    );
    Ok(())
}

/// A parameter registered after a clear sits in the buffer of its kept copy, changed or
/// not (a changed value is copied into it), so that a training loop (clear, register,
/// backward, optimizer step) holds one copy of each weight and the tape's bytes stay
/// flat from the second step on. (That an unchanged copy is taken back without copying
/// is checked inside the crate, in `tape::tests`.)
#[test]
fn a_training_loop_holds_one_copy_of_each_weight() -> timetape::Result<()> {
    let mut params = Params::<f64>::new();
    let w = params.add("W", Array2::from_elem((64, 64), 0.01))?;
    let mut tape = Tape::new();
    let first = tape.param(&params, w)?;
    let ptr = tape.value(first)?.as_ptr();
    tape.clear();
    let again = tape.param(&params, w)?;
    assert_eq!(
        tape.value(again)?.as_ptr(),
        ptr,
        "the kept buffer is reused"
    );
    let mut sgd = timetape::optim::Sgd::new(0.1)?;
    let mut bytes = Vec::new();
    for _ in 0..5 {
        tape.clear();
        let wv = tape.param(&params, w)?;
        let x = tape.constant(Array2::from_elem((1, 64), 1.0))?;
        let y = tape.matmul(x, wv)?;
        let s = tape.sum(y)?;
        let grads = tape.backward(s)?;
        sgd.step(&mut params, &grads)?;
        bytes.push(tape.stats().bytes);
    }
    assert!(bytes[1..].iter().all(|&b| b == bytes[1]), "{bytes:?}");
    Ok(())
}
