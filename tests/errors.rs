//! Every `timetape::Error` variant, reached through the public API: the variant and its
//! fields are checked with `matches!`, the Display message must name the operation (and
//! both shapes where shapes are involved), and a failed op must leave the tape as it was
//! (no node recorded).

use ndarray::{array, Array2};
use timetape::gradcheck::{gradcheck, GradcheckOptions};
use timetape::{Error, Params, Reduction, Tape, Var};

/// The variant's name; exhaustive, so a new variant does not compile until it is
/// listed here (and, by the same token, given tests below).
fn variant(e: &Error) -> &'static str {
    match e {
        Error::ShapeMismatch { .. } => "ShapeMismatch",
        Error::ForeignVar { .. } => "ForeignVar",
        Error::StaleVar { .. } => "StaleVar",
        Error::ForeignParam { .. } => "ForeignParam",
        Error::NoGradient { .. } => "NoGradient",
        Error::LabelOutOfRange { .. } => "LabelOutOfRange",
        Error::NonScalarLoss { .. } => "NonScalarLoss",
        Error::EmptyInput { .. } => "EmptyInput",
        Error::InvalidArgument { .. } => "InvalidArgument",
        Error::NonFinite { .. } => "NonFinite",
        Error::Io { .. } => "Io",
        Error::BadFile { .. } => "BadFile",
    }
}

/// The error of `r` (panics on Ok), after checking that its message contains every
/// needle.
#[track_caller]
fn err<T: std::fmt::Debug>(r: timetape::Result<T>, needles: &[&str]) -> Error {
    let e = r.expect_err("expected an error");
    let msg = e.to_string();
    for n in needles {
        assert!(
            msg.contains(n),
            "{} message {msg:?} does not contain {n:?}",
            variant(&e)
        );
    }
    e
}

/// Runs `f` on the tape and checks that it recorded no node.
#[track_caller]
fn no_node<T>(tape: &mut Tape<f64>, f: impl FnOnce(&mut Tape<f64>) -> T) -> T {
    let before = tape.len();
    let out = f(tape);
    assert_eq!(tape.len(), before, "a failed op recorded a node");
    out
}

fn zeros(r: usize, c: usize) -> Array2<f64> {
    Array2::zeros((r, c))
}

// ---------------------------------------------------------------------------------------
// ShapeMismatch

#[test]
fn matmul_into_with_unequal_inner_dimensions_or_a_wrong_destination_is_a_shape_mismatch() {
    use timetape::kernels::{matmul_into, Write};
    let (a, b) = (zeros(2, 3), zeros(4, 5));
    let mut c = Array2::from_elem((2, 5), 7.0);
    let e = err(
        matmul_into(a.view(), b.view(), c.view_mut(), Write::Set),
        &["matmul_into", "(2, 3)", "(4, 5)"],
    );
    assert!(matches!(
        e,
        Error::ShapeMismatch {
            op: "matmul_into",
            lhs: (2, 3),
            rhs: (4, 5)
        }
    ));
    let b = zeros(3, 5);
    let mut wrong = Array2::from_elem((5, 2), 7.0);
    let e = err(
        matmul_into(a.view(), b.view(), wrong.view_mut(), Write::Add),
        &["matmul_into", "(2, 5)", "(5, 2)"],
    );
    assert!(matches!(
        e,
        Error::ShapeMismatch {
            lhs: (2, 5),
            rhs: (5, 2),
            ..
        }
    ));
    assert!(wrong.iter().all(|&x| x == 7.0), "a failed product wrote");
    matmul_into(a.view(), b.view(), c.view_mut(), Write::Set).unwrap();
    assert!(c.iter().all(|&x| x == 0.0));
}

#[test]
fn matmul_panels_into_with_unequal_inner_dimensions_or_a_wrong_destination_is_a_shape_mismatch() {
    use timetape::kernels::{matmul_panels_into, Panels, Write};
    let a = zeros(2, 3);
    let b = Panels::new(zeros(4, 300).view());
    let mut c = Array2::from_elem((2, 300), 7.0);
    let e = err(
        matmul_panels_into(a.view(), &b, c.view_mut(), Write::Set),
        &["matmul_panels_into", "(2, 3)", "(4, 300)"],
    );
    assert!(matches!(
        e,
        Error::ShapeMismatch {
            op: "matmul_panels_into",
            lhs: (2, 3),
            rhs: (4, 300)
        }
    ));
    let b = Panels::new(zeros(3, 300).view());
    let mut wrong = Array2::from_elem((2, 299), 7.0);
    let e = err(
        matmul_panels_into(a.view(), &b, wrong.view_mut(), Write::Add),
        &["matmul_panels_into", "(2, 300)", "(2, 299)"],
    );
    assert!(matches!(
        e,
        Error::ShapeMismatch {
            lhs: (2, 300),
            rhs: (2, 299),
            ..
        }
    ));
    assert!(wrong.iter().all(|&x| x == 7.0), "a failed product wrote");
    matmul_panels_into(a.view(), &b, c.view_mut(), Write::Set).unwrap();
    assert!(c.iter().all(|&x| x == 0.0));
}

#[test]
fn matmul_with_unequal_inner_dimensions_is_a_shape_mismatch() {
    let mut tape = Tape::<f64>::new();
    let a = tape.constant(zeros(2, 3)).unwrap();
    let b = tape.constant(zeros(4, 5)).unwrap();
    let e = no_node(&mut tape, |t| {
        err(t.matmul(a, b), &["matmul", "(2, 3)", "(4, 5)"])
    });
    assert!(matches!(
        e,
        Error::ShapeMismatch {
            op: "matmul",
            lhs: (2, 3),
            rhs: (4, 5)
        }
    ));
    // (2×3)·(2×3) as well
    let e = err(tape.matmul(a, a), &["matmul", "(2, 3)"]);
    assert!(matches!(e, Error::ShapeMismatch { op: "matmul", .. }));
}

#[test]
fn elementwise_ops_on_unbroadcastable_shapes_are_shape_mismatches() {
    let mut tape = Tape::<f64>::new();
    let a = tape.constant(zeros(2, 3)).unwrap();
    let b = tape.constant(zeros(2, 4)).unwrap();
    let c = tape.constant(zeros(3, 3)).unwrap(); // neither equal rows nor a 1×n row
    let row = tape.constant(zeros(1, 4)).unwrap();
    type Op = fn(&mut Tape<f64>, Var, Var) -> timetape::Result<Var>;
    for (name, op) in [
        ("add", Tape::add as Op),
        ("sub", Tape::sub),
        ("mul", Tape::mul),
    ] {
        for (x, y, sx, sy) in [
            (a, b, "(2, 3)", "(2, 4)"),
            (a, c, "(2, 3)", "(3, 3)"),
            (row, a, "(1, 4)", "(2, 3)"),
        ] {
            let e = no_node(&mut tape, |t| err(op(t, x, y), &[name, sx, sy]));
            assert!(
                matches!(e, Error::ShapeMismatch { op, .. } if op == name),
                "{e:?}"
            );
        }
    }
}

#[test]
fn concat_of_parts_that_do_not_line_up_is_a_shape_mismatch() {
    let mut tape = Tape::<f64>::new();
    let a = tape.constant(zeros(2, 3)).unwrap();
    let b = tape.constant(zeros(3, 3)).unwrap();
    let e = no_node(&mut tape, |t| {
        err(t.concat_cols(&[a, a, b]), &["concat", "(2, 3)", "(3, 3)"])
    });
    assert!(matches!(
        e,
        Error::ShapeMismatch {
            op: "concat",
            lhs: (2, 3),
            rhs: (3, 3)
        }
    ));
    let c = tape.constant(zeros(2, 4)).unwrap();
    let e = no_node(&mut tape, |t| {
        err(t.concat_rows(&[a, c]), &["concat", "(2, 3)", "(2, 4)"])
    });
    assert!(matches!(e, Error::ShapeMismatch { op: "concat", .. }));
    // the tape still concatenates correctly after the failures
    let ok = tape.concat_rows(&[a, b]).unwrap();
    assert_eq!(tape.shape(ok).unwrap(), (5, 3));
}

#[test]
fn softmax_cross_entropy_with_the_wrong_number_of_labels_or_weights_is_a_shape_mismatch() {
    let mut tape = Tape::<f64>::new();
    let z = tape.constant(zeros(3, 4)).unwrap();
    let op = "softmax_cross_entropy";
    let e = no_node(&mut tape, |t| {
        err(
            t.softmax_cross_entropy(z, &[0, 1], None, Reduction::Mean),
            &[op, "(3, 4)", "(2, 1)"],
        )
    });
    assert!(matches!(
        e,
        Error::ShapeMismatch {
            op: "softmax_cross_entropy",
            lhs: (3, 4),
            rhs: (2, 1)
        }
    ));
    let e = no_node(&mut tape, |t| {
        err(
            t.softmax_cross_entropy(z, &[0, 1, 2], Some(&[1.0; 4]), Reduction::Sum),
            &[op, "(3, 4)", "(4, 1)"],
        )
    });
    assert!(matches!(e, Error::ShapeMismatch { rhs: (4, 1), .. }));
}

#[test]
fn squared_error_with_the_wrong_weights_or_shapes_is_a_shape_mismatch() {
    let mut tape = Tape::<f64>::new();
    let p = tape.constant(zeros(3, 2)).unwrap();
    let t = tape.constant(zeros(3, 2)).unwrap();
    let u = tape.constant(zeros(2, 3)).unwrap();
    let e = no_node(&mut tape, |tp| {
        err(
            tp.squared_error(p, t, Some(&[1.0, 2.0]), Reduction::Mean),
            &["squared_error", "(3, 2)", "(2, 1)"],
        )
    });
    assert!(matches!(
        e,
        Error::ShapeMismatch {
            op: "squared_error",
            lhs: (3, 2),
            rhs: (2, 1)
        }
    ));
    let e = no_node(&mut tape, |tp| {
        err(tp.mse(p, u), &["squared_error", "(3, 2)", "(2, 3)"])
    });
    assert!(matches!(
        e,
        Error::ShapeMismatch {
            op: "squared_error",
            ..
        }
    ));
    let e = no_node(&mut tape, |tp| {
        err(
            tp.bce_with_logits(p, u, Reduction::Sum),
            &["bce_with_logits", "(3, 2)", "(2, 3)"],
        )
    });
    assert!(matches!(
        e,
        Error::ShapeMismatch {
            op: "bce_with_logits",
            ..
        }
    ));
}

#[test]
fn backward_with_a_seed_of_the_wrong_shape_is_a_shape_mismatch() {
    let mut tape = Tape::<f64>::new();
    let h = tape.variable(zeros(2, 3).view()).unwrap();
    let y = tape.tanh(h).unwrap();
    let e = err(
        tape.backward_with(&[(y, zeros(3, 2))]),
        &["backward_with", "(2, 3)", "(3, 2)"],
    );
    assert!(matches!(
        e,
        Error::ShapeMismatch {
            op: "backward_with",
            lhs: (2, 3),
            rhs: (3, 2)
        }
    ));
}

// ---------------------------------------------------------------------------------------
// ForeignVar, StaleVar

#[test]
fn a_var_from_another_tape_is_a_foreign_var() {
    let mut other = Tape::<f64>::new();
    let x = other.constant(zeros(2, 2)).unwrap();
    let mut tape = Tape::<f64>::new();
    let a = tape.constant(zeros(2, 2)).unwrap();
    // same index on both tapes: only the tape id tells them apart
    assert_eq!(x.index(), a.index());
    let cases: Vec<(&str, timetape::Result<Var>)> = vec![
        ("matmul", no_node(&mut tape, |t| t.matmul(a, x))),
        ("add", no_node(&mut tape, |t| t.add(x, a))),
        ("tanh", no_node(&mut tape, |t| t.tanh(x))),
        ("concat", no_node(&mut tape, |t| t.concat_cols(&[a, x]))),
        ("concat", no_node(&mut tape, |t| t.concat_cols(&[x, a]))),
        ("slice", no_node(&mut tape, |t| t.slice_rows(x, 0..1))),
        ("detach", no_node(&mut tape, |t| t.detach(x))),
    ];
    for (op, r) in cases {
        let e = err(r, &[op, "another tape"]);
        assert!(matches!(e, Error::ForeignVar { op: o } if o == op), "{e:?}");
    }
    let e = err(tape.value(x), &["value"]);
    assert!(matches!(e, Error::ForeignVar { op: "value" }));
    let e = err(tape.backward(x), &["backward"]);
    assert!(matches!(e, Error::ForeignVar { op: "backward" }));
    let e = err(tape.adjoint(x), &["adjoint"]);
    assert!(matches!(e, Error::ForeignVar { op: "adjoint" }));
}

#[test]
fn a_var_from_before_clear_is_a_stale_var() {
    let mut tape = Tape::<f64>::new();
    let old0 = tape.constant(zeros(2, 2)).unwrap();
    let old1 = tape.tanh(old0).unwrap();
    tape.clear();
    // after the clear, index 0 exists again (old0's index) but index 1 does not
    let fresh = tape.constant(zeros(2, 2)).unwrap();
    assert_eq!(fresh.index(), old0.index());
    for old in [old0, old1] {
        let e = no_node(&mut tape, |t| err(t.add(fresh, old), &["add", "stale"]));
        assert!(matches!(e, Error::StaleVar { op: "add" }), "{e:?}");
        let e = no_node(&mut tape, |t| {
            err(t.concat_rows(&[old, fresh]), &["concat", "stale"])
        });
        assert!(matches!(e, Error::StaleVar { op: "concat" }), "{e:?}");
        let e = err(tape.value(old), &["value", "stale"]);
        assert!(matches!(e, Error::StaleVar { op: "value" }));
        let e = err(
            tape.backward_with(&[(old, zeros(2, 2))]),
            &["backward_with"],
        );
        assert!(matches!(
            e,
            Error::StaleVar {
                op: "backward_with"
            }
        ));
    }
    assert_eq!(tape.value(fresh).unwrap(), zeros(2, 2));
}

// ---------------------------------------------------------------------------------------
// ForeignParam

#[test]
fn a_param_id_from_another_store_is_a_foreign_param() {
    let mut mine = Params::<f64>::new();
    let mut theirs = Params::<f64>::new();
    let _ = mine.add("w", zeros(2, 2)).unwrap();
    let id = theirs.add("w", zeros(2, 2)).unwrap();
    // same index in both stores: only the store id tells them apart
    assert_eq!(id.index(), 0);
    let mut tape = Tape::<f64>::new();
    let e = no_node(&mut tape, |t| {
        err(t.param(&mine, id), &["param", "ParamId"])
    });
    assert!(matches!(e, Error::ForeignParam { op: "param" }));
    let e = err(mine.get(id), &["Params::get"]);
    assert!(matches!(e, Error::ForeignParam { op: "Params::get" }));
    let e = err(mine.get_mut(id), &["Params::get_mut"]);
    assert!(matches!(
        e,
        Error::ForeignParam {
            op: "Params::get_mut"
        }
    ));
    let e = err(mine.name(id), &["Params::name"]);
    assert!(matches!(e, Error::ForeignParam { op: "Params::name" }));
    assert!(theirs.get(id).is_ok());
}

// ---------------------------------------------------------------------------------------
// LabelOutOfRange, NonScalarLoss

#[test]
fn a_label_not_below_the_number_of_classes_is_out_of_range() {
    let mut tape = Tape::<f64>::new();
    let z = tape.constant(zeros(3, 4)).unwrap();
    let e = no_node(&mut tape, |t| {
        err(
            t.softmax_cross_entropy(z, &[0, 4, 1], None, Reduction::Mean),
            &["softmax_cross_entropy", "label 4", "4 classes"],
        )
    });
    assert!(matches!(
        e,
        Error::LabelOutOfRange {
            op: "softmax_cross_entropy",
            label: 4,
            classes: 4
        }
    ));
    // the largest valid label is fine
    assert!(tape
        .softmax_cross_entropy(z, &[3, 3, 3], None, Reduction::Mean)
        .is_ok());
}

#[test]
fn backward_from_a_non_scalar_is_a_non_scalar_loss() {
    let mut tape = Tape::<f64>::new();
    let h = tape.variable(zeros(2, 3).view()).unwrap();
    let y = tape.tanh(h).unwrap();
    let e = err(tape.backward(y), &["backward", "1×1", "(2, 3)"]);
    assert!(matches!(
        e,
        Error::NonScalarLoss {
            op: "backward",
            shape: (2, 3)
        }
    ));
    let mut grads = timetape::Grads::new(&Params::<f64>::new());
    let e = err(tape.backward_into(y, &mut grads), &["backward", "(2, 3)"]);
    assert!(matches!(
        e,
        Error::NonScalarLoss {
            op: "backward",
            shape: (2, 3)
        }
    ));
    let e = err(tape.scalar(y), &["scalar", "(2, 3)"]);
    assert!(matches!(
        e,
        Error::NonScalarLoss {
            op: "scalar",
            shape: (2, 3)
        }
    ));
    // nothing was propagated
    assert!(tape.adjoint(h).unwrap().is_none());
}

// ---------------------------------------------------------------------------------------
// EmptyInput

#[test]
fn empty_inputs_are_rejected() {
    let mut tape = Tape::<f64>::new();
    for shape in [(0, 3), (3, 0), (0, 0)] {
        let e = no_node(&mut tape, |t| {
            err(t.constant(Array2::zeros(shape)), &["constant", "empty"])
        });
        assert!(matches!(e, Error::EmptyInput { op: "constant", .. }));
        let e = no_node(&mut tape, |t| {
            err(
                t.constant_view(Array2::zeros(shape).view()),
                &["constant_view", "empty"],
            )
        });
        assert!(matches!(
            e,
            Error::EmptyInput {
                op: "constant_view",
                ..
            }
        ));
        let e = no_node(&mut tape, |t| {
            err(t.variable(Array2::zeros(shape).view()), &["variable"])
        });
        assert!(matches!(e, Error::EmptyInput { op: "variable", .. }));
    }
    let e = no_node(&mut tape, |t| {
        err(t.concat_cols(&[]), &["concat", "no parts"])
    });
    assert!(matches!(
        e,
        Error::EmptyInput {
            op: "concat",
            what: "no parts"
        }
    ));
    let e = err(tape.backward_with(&[]), &["backward_with", "no seeds"]);
    assert!(matches!(
        e,
        Error::EmptyInput {
            op: "backward_with",
            what: "no seeds"
        }
    ));

    let mut params = Params::<f64>::new();
    let e = err(params.add("w", zeros(0, 2)), &["Params::add", "empty"]);
    assert!(matches!(
        e,
        Error::EmptyInput {
            op: "Params::add",
            ..
        }
    ));
    let e = err(params.add("", zeros(1, 2)), &["Params::add", "name"]);
    assert!(matches!(
        e,
        Error::EmptyInput {
            op: "Params::add",
            what: "name"
        }
    ));
    assert!(params.is_empty(), "a failed add must not add");
}

// ---------------------------------------------------------------------------------------
// InvalidArgument

#[track_caller]
fn assert_invalid<T: std::fmt::Debug>(r: timetape::Result<T>, op: &str, needles: &[&str]) {
    let mut all = vec![op, "invalid argument"];
    all.extend_from_slice(needles);
    let e = err(r, &all);
    assert!(
        matches!(&e, Error::InvalidArgument { op: o, .. } if *o == op),
        "{e:?}"
    );
}

#[track_caller]
fn assert_non_finite<T: std::fmt::Debug>(r: timetape::Result<T>, op: &str, needles: &[&str]) {
    let mut all = vec![op, "non-finite"];
    all.extend_from_slice(needles);
    let e = err(r, &all);
    assert!(
        matches!(&e, Error::NonFinite { op: o, .. } if *o == op),
        "{e:?}"
    );
}

#[test]
fn log_of_a_non_positive_value_is_invalid() {
    let mut tape = Tape::<f64>::new();
    for bad in [0.0, -1.0, -0.0] {
        let x = tape.constant(array![[1.0, bad]]).unwrap();
        no_node(&mut tape, |t| {
            assert_invalid(t.log(x), "log", &["non-positive"])
        });
    }
    let x = tape.constant(array![[1e-300]]).unwrap();
    assert!(tape.log(x).is_ok());
}

#[test]
fn non_finite_factors_and_weights_are_invalid_and_non_finite_inputs_are_non_finite() {
    let mut tape = Tape::<f64>::new();
    let x = tape.constant(zeros(2, 2)).unwrap();
    for bad in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
        no_node(&mut tape, |t| {
            assert_invalid(t.scale(x, bad), "scale", &["non-finite"])
        });
        no_node(&mut tape, |t| {
            assert_invalid(t.scale_grad(x, bad), "scale_grad", &["non-finite"])
        });
        no_node(&mut tape, |t| {
            assert_non_finite(t.constant(array![[1.0, bad]]), "constant", &["entry 1"])
        });
        no_node(&mut tape, |t| {
            assert_non_finite(t.constant_view(array![[bad]].view()), "constant_view", &[])
        });
        no_node(&mut tape, |t| {
            assert_non_finite(t.variable(array![[bad]].view()), "variable", &[])
        });
        no_node(&mut tape, |t| {
            assert_invalid(
                t.softmax_cross_entropy(x, &[0, 1], Some(&[1.0, bad]), Reduction::Mean),
                "softmax_cross_entropy",
                &["weight"],
            )
        });
        no_node(&mut tape, |t| {
            assert_invalid(
                t.squared_error(x, x, Some(&[bad, 1.0]), Reduction::Sum),
                "squared_error",
                &["weight"],
            )
        });
        assert_non_finite(
            tape.backward_with(&[(x, array![[0.0, bad], [0.0, 0.0]])]),
            "backward_with",
            &["seed"],
        );
        let mut params = Params::<f64>::new();
        assert_non_finite(params.add("w", array![[bad]]), "Params::add", &["\"w\""]);
        assert!(params.is_empty());
    }
}

#[test]
fn a_duplicate_parameter_name_is_invalid() {
    let mut params = Params::<f64>::new();
    let w = params.add("W_hh", zeros(2, 2)).unwrap();
    assert_invalid(
        params.add("W_hh", zeros(3, 3)),
        "Params::add",
        &["duplicate", "W_hh"],
    );
    assert_eq!(params.len(), 1);
    assert_eq!(params.get(w).unwrap().dim(), (2, 2));
}

#[test]
fn a_bce_target_outside_zero_one_is_invalid() {
    let mut tape = Tape::<f64>::new();
    let z = tape.constant(zeros(1, 2)).unwrap();
    for bad in [1.5, -0.1, 1.0 + 1e-15] {
        let t = tape.constant(array![[0.5, bad]]).unwrap();
        no_node(&mut tape, |tp| {
            assert_invalid(
                tp.bce_with_logits(z, t, Reduction::Mean),
                "bce_with_logits",
                &["[0, 1]"],
            )
        });
    }
    // the ends are valid
    let t = tape.constant(array![[0.0, 1.0]]).unwrap();
    assert!(tape.bce_with_logits(z, t, Reduction::Mean).is_ok());
}

#[test]
fn a_slice_range_out_of_bounds_or_empty_is_invalid() {
    let mut tape = Tape::<f64>::new();
    let x = tape.constant(zeros(3, 4)).unwrap();
    #[allow(clippy::reversed_empty_ranges)]
    let bad_cols = [0..5, 4..5, 2..2, 3..1];
    for r in bad_cols {
        let shown = format!("{r:?}");
        no_node(&mut tape, |t| {
            assert_invalid(t.slice_cols(x, r), "slice", &[&shown, "4"])
        });
    }
    no_node(&mut tape, |t| {
        assert_invalid(t.slice_rows(x, 1..4), "slice", &["1..4", "3"])
    });
    // the full extent is fine
    assert!(tape.slice_cols(x, 0..4).is_ok());
    assert!(tape.slice_rows(x, 2..3).is_ok());
}

#[test]
fn a_gradcheck_step_that_is_not_positive_and_finite_is_invalid() {
    let mut params = Params::<f64>::new();
    let w = params.add("w", array![[0.5]]).unwrap();
    for eps in [0.0, -1e-5, f64::NAN, f64::INFINITY] {
        let mut called = false;
        let r = gradcheck(&params, GradcheckOptions { eps }, |tape, p| {
            called = true;
            let v = tape.param(p, w)?;
            tape.sum(v)
        });
        assert_invalid(r, "gradcheck", &["eps"]);
        assert!(!called, "the loss must not be evaluated with eps = {eps}");
    }
}

#[test]
fn a_gradcheck_loss_that_is_not_finite_is_non_finite() {
    let mut params = Params::<f64>::new();
    let w = params.add("w", array![[800.0]]).unwrap();
    // e^800 overflows to +inf
    let r = gradcheck(&params, GradcheckOptions::default(), |tape, p| {
        let v = tape.param(p, w)?;
        let v = tape.exp(v)?;
        tape.sum(v)
    });
    assert_non_finite(r, "gradcheck", &["the loss at θ"]);
}

#[test]
fn gradcheck_passes_the_loss_closure_errors_through() {
    let mut params = Params::<f64>::new();
    let w = params.add("w", zeros(2, 3)).unwrap();
    let r = gradcheck(&params, GradcheckOptions::default(), |tape, p| {
        let v = tape.param(p, w)?;
        tape.matmul(v, v)
    });
    let e = err(r, &["matmul", "(2, 3)"]);
    assert!(matches!(e, Error::ShapeMismatch { op: "matmul", .. }));
}

/// `Grads::get` answers a foreign id as `Params::get` does, and a parameter the loss
/// does not reach with `NoGradient`.
#[test]
fn grads_get_names_foreign_ids_and_missing_gradients() {
    let mut a = Params::<f64>::new();
    let w = a.add("w", ndarray::array![[2.0]]).unwrap();
    let unused = a.add("unused", ndarray::array![[1.0]]).unwrap();
    let mut b = Params::<f64>::new();
    let other = b.add("other", ndarray::array![[1.0]]).unwrap();
    let mut tape = Tape::new();
    let wv = tape.param(&a, w).unwrap();
    let y = tape.mul(wv, wv).unwrap();
    let grads = tape.backward(y).unwrap();
    assert_eq!(grads.get(w).unwrap()[[0, 0]], 4.0);
    let e = err(grads.get(other), &["Grads::get", "does not belong"]);
    assert!(matches!(e, Error::ForeignParam { op: "Grads::get" }));
    assert!(matches!(
        a.get(other),
        Err(Error::ForeignParam { op: "Params::get" })
    ));
    let e = err(grads.get(unused), &["Grads::get", "no gradient"]);
    assert!(matches!(e, Error::NoGradient { op: "Grads::get" }));
}
