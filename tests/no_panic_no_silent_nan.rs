//! Misuse through the public API gets an `Error`, never a panic, an abort, a silent NaN
//! or a wrong answer (issue 9, findings 7–13 and 15). One test per finding, named after
//! the property it checks; each failed before its fix (a panic, an `Ok` with a wrong or
//! non-finite value, or a wrong message).

mod common;

use ndarray::{array, Array2, Array3};
use timetape::bptt::{self, run, Pi, RunOptions, Truncation};
use timetape::bptt::{Memory, Run};
use timetape::diagnostics::{largest_singular_value, spectral_radius};
use timetape::optim::{clip_global_norm, Adam, Sgd};
use timetape::rnn::{models, Activation, Gru, Lstm, Rnn, RnnConfig, Sequence, SequenceLoss, Sizes};
use timetape::{closed_form, init, Error, Grads, ParamId, Params, Reduction, Tape};

fn store(v: Array2<f64>) -> (Params<f64>, ParamId) {
    let mut p = Params::new();
    let id = p.add("w", v).unwrap();
    (p, id)
}

fn grad(params: &Params<f64>, id: ParamId, g: Array2<f64>) -> Grads<f64> {
    let mut grads = Grads::new(params);
    grads.accumulate(id, g.view()).unwrap();
    grads
}

// ---- 7: optimizer state belongs to its store and parameter ----------------------------

#[test]
fn adam_on_another_store_is_an_error() {
    let (mut a, wa) = store(array![[1.0, 2.0]]);
    let (mut b, wb) = store(array![[1.0, 2.0]]);
    let mut adam = Adam::new(0.1).unwrap();
    {
        let g = grad(&a, wa, array![[0.5, 0.5]]);
        adam.step(&mut a, &g)
    }
    .unwrap();
    // Same shapes: before, store A's moments were silently used for store B.
    let before = b.get(wb).unwrap().clone();
    let e = {
        let g = grad(&b, wb, array![[0.5, 0.5]]);
        adam.step(&mut b, &g)
    }
    .unwrap_err();
    assert!(
        matches!(&e, Error::InvalidArgument { op: "Adam::step", msg } if msg.contains("another store")),
        "{e:?}"
    );
    assert_eq!(b.get(wb).unwrap(), &before, "nothing updated");
    // Other shapes: before, an `equal_dim` assertion panicked in optim.rs.
    let (mut c, wc) = store(array![[1.0, 2.0, 3.0]]);
    assert!({
        let g = grad(&c, wc, array![[0.1, 0.1, 0.1]]);
        adam.step(&mut c, &g)
    }
    .is_err());
}

#[test]
fn sgd_with_momentum_on_another_store_is_an_error() {
    let (mut a, wa) = store(array![[1.0]]);
    let (mut b, wb) = store(array![[1.0, 2.0]]);
    let mut sgd = Sgd::new(0.1).unwrap().with_momentum(0.9).unwrap();
    {
        let g = grad(&a, wa, array![[1.0]]);
        sgd.step(&mut a, &g)
    }
    .unwrap();
    let e = {
        let g = grad(&b, wb, array![[1.0, 1.0]]);
        sgd.step(&mut b, &g)
    }
    .unwrap_err();
    assert!(
        matches!(
            e,
            Error::InvalidArgument {
                op: "Sgd::step",
                ..
            }
        ),
        "{e:?}"
    );
    // The optimizer still works on its own store.
    {
        let g = grad(&a, wa, array![[1.0]]);
        sgd.step(&mut a, &g)
    }
    .unwrap();
}

#[test]
fn optimizer_after_a_parameter_changed_shape_is_an_error() {
    let (mut p, w) = store(array![[1.0, 2.0]]);
    let mut adam = Adam::new(0.1).unwrap();
    {
        let g = grad(&p, w, array![[0.5, 0.5]]);
        adam.step(&mut p, &g)
    }
    .unwrap();
    *p.get_mut(w).unwrap() = array![[1.0, 2.0, 3.0]];
    let e = {
        let g = grad(&p, w, array![[0.5, 0.5, 0.5]]);
        adam.step(&mut p, &g)
    }
    .unwrap_err();
    assert!(
        matches!(
            e,
            Error::ShapeMismatch {
                op: "Adam::step",
                lhs: (1, 2),
                rhs: (1, 3)
            }
        ),
        "{e:?}"
    );
}

#[test]
fn optimizer_step_that_would_overflow_is_an_error_and_changes_nothing() {
    let (mut p, w) = store(array![[1e300, 1.0]]);
    let g = grad(&p, w, array![[-1e300, 1.0]]);
    let mut sgd = Sgd::new(1e10).unwrap();
    let e = sgd.step(&mut p, &g).unwrap_err();
    assert!(
        matches!(
            e,
            Error::NonFinite {
                op: "Sgd::step",
                ..
            }
        ),
        "{e:?}"
    );
    assert_eq!(p.get(w).unwrap(), &array![[1e300, 1.0]]);
    // Adam's second moment (1 − β₂)·g·g overflows in f32 for |g| = 1e22: refused, not a v = ∞
    // that would freeze the parameter forever.
    let mut p32 = Params::<f32>::new();
    let w32 = p32.add("w", array![[1.0f32]]).unwrap();
    let mut g32 = Grads::new(&p32);
    g32.accumulate(w32, array![[1e22f32]].view()).unwrap();
    let mut adam = Adam::new(0.1f32).unwrap();
    let e = adam.step(&mut p32, &g32).unwrap_err();
    assert!(
        matches!(
            e,
            Error::NonFinite {
                op: "Adam::step",
                ..
            }
        ),
        "{e:?}"
    );
    assert_eq!(p32.get(w32).unwrap()[[0, 0]], 1.0);
}

// ---- 8: invalid losses are refused at every public entry -------------------------------

// A last-step target with step weights (before, an index panic in bptt and closed_form)
// can no longer be built: `LastStep` has no `weighted` (a compile-fail doctest on
// `timetape::rnn::LastStep` shows it).

// ---- 9: absurd sizes fail before allocating --------------------------------------------

#[test]
fn absurd_sizes_are_errors_not_panics_or_aborts() {
    let mut params = Params::<f64>::new();
    assert!(models::m3(&mut params, Sizes::new(2, usize::MAX, 2), 0).is_err());
    assert!(Gru::new(&mut params, Sizes::new(2, usize::MAX / 3 + 1, 2), 0).is_err());
    assert!(Lstm::new(&mut params, Sizes::new(2, usize::MAX / 4 + 1, 2), 0).is_err());
    // 2^40 hidden units: H×H is 2^80 entries (overflow), D×3H is 2^41·3 entries
    // (48 TiB: refused by the reservation probe before anything is allocated).
    let h = 1usize << 40;
    assert!(models::m3(&mut params, Sizes::new(2, h, 2), 0).is_err());
    assert!(Gru::new(&mut params, Sizes::new(2, h, 2), 0).is_err());
    assert!(Lstm::new(&mut params, Sizes::new(2, h, 2), 0).is_err());
    let config = RnnConfig::new(1 << 40, 1, 1);
    assert!(Rnn::new(&mut params, config, 0).is_err());
    assert!(init::uniform::<f32>((usize::MAX, 2), 1.0, &mut init::rng(0)).is_err());
    // Nothing was added by the failed constructors.
    assert!(params.is_empty());
}

// ---- 10: silent wrong answers -----------------------------------------------------------

#[test]
fn param_id_of_a_diverged_clone_is_foreign() {
    let mut a = Params::<f64>::new();
    let shared = a.add("shared", array![[1.0]]).unwrap();
    let mut b = a.clone();
    let only_a = a.add("only_a", array![[2.0]]).unwrap();
    let only_b = b.add("only_b", array![[3.0]]).unwrap();
    // Ids from before the clone work on both copies.
    assert_eq!(b.get(shared).unwrap()[[0, 0]], 1.0);
    // Before: `only_a` resolved to "only_b" in b (same store identity, same index).
    assert!(matches!(b.get(only_a), Err(Error::ForeignParam { .. })));
    assert!(matches!(a.get(only_b), Err(Error::ForeignParam { .. })));
    let mut tape = Tape::new();
    assert!(matches!(
        tape.param(&b, only_a),
        Err(Error::ForeignParam { .. })
    ));
    let mut g = Grads::new(&b);
    g.accumulate(only_b, array![[1.0]].view()).unwrap();
    assert!(matches!(g.get(only_a), Err(Error::ForeignParam { .. })));
    assert!(matches!(
        g.accumulate(only_a, array![[1.0]].view()),
        Err(Error::ForeignParam { .. })
    ));
}

#[test]
fn fixed_pattern_with_k_zero_is_an_error() {
    assert!(matches!(
        bptt::fixed_pattern(4, 0),
        Err(Error::InvalidArgument { .. })
    ));
    assert_eq!(bptt::fixed_pattern(4, 1).unwrap(), vec![0.0; 4]);
}

/// W = c·ones(n×n) has ρ = σ₁ = n·c. Before, c = 1e200 (ρ) and 1e100 (σ₁, through WᵀW)
/// overflowed in the power iteration and returned 0. Relative tolerance 1e-12: the
/// rescaled iteration is exact on ones (the start vector converges in one product).
#[test]
fn spectral_radius_and_largest_singular_value_of_huge_matrices_are_right() {
    let n = 4;
    for c in [1e-200, 1.0, 1e100, 1e200, 1e300] {
        let w = Array2::from_elem((n, n), c);
        let rho = spectral_radius(w.view(), 50).unwrap();
        let sigma = largest_singular_value(w.view(), 50).unwrap();
        let want = n as f64 * c;
        assert!(((rho - want) / want).abs() < 1e-12, "ρ({c}) = {rho}");
        assert!(((sigma - want) / want).abs() < 1e-12, "σ({c}) = {sigma}");
    }
    let nan = array![[1.0, f64::NAN], [0.0, 1.0]];
    assert!(matches!(
        spectral_radius(nan.view(), 10),
        Err(Error::NonFinite { .. })
    ));
}

#[test]
fn adam_with_infinite_eps_is_an_error() {
    for eps in [f64::INFINITY, f64::NAN, 0.0, -1.0] {
        let r = Adam::new(0.1).unwrap().with_betas(0.9, 0.999, eps);
        assert!(matches!(r, Err(Error::InvalidArgument { .. })), "ε = {eps}");
    }
}

// ---- 11: clipping an exploding gradient -------------------------------------------------

#[test]
fn clip_global_norm_clips_finite_gradients_whose_squares_overflow() {
    // f32: 3e19² + 4e19² = 2.5e39 > f32::MAX; the norm 5e19 is finite.
    let mut p32 = Params::<f32>::new();
    let w32 = p32.add("w", array![[0.0f32, 0.0]]).unwrap();
    let mut g32 = Grads::new(&p32);
    g32.accumulate(w32, array![[3e19f32, 4e19]].view()).unwrap();
    let norm = clip_global_norm(&mut g32, 1.0).unwrap();
    assert!((norm / 5e19 - 1.0).abs() < 1e-6, "{norm}");
    let clipped = g32.get(w32).unwrap();
    assert!((clipped[[0, 0]] - 0.6).abs() < 1e-6 && (clipped[[0, 1]] - 0.8).abs() < 1e-6);
    // f64: 3e160² overflows likewise.
    let (p, w) = store(array![[0.0, 0.0]]);
    let mut g = grad(&p, w, array![[3e160, 4e160]]);
    let norm = clip_global_norm(&mut g, 2.0).unwrap();
    assert!((norm / 5e160 - 1.0).abs() < 1e-15, "{norm}");
    assert!((g.global_norm() - 2.0).abs() < 1e-15);
    // A gradient that is really not finite is still refused, and left unchanged.
    let mut bad = grad(&p, w, array![[f64::INFINITY, 1.0]]);
    assert!(matches!(
        clip_global_norm(&mut bad, 1.0),
        Err(Error::NonFinite { .. })
    ));
    assert_eq!(bad.get(w).unwrap()[[0, 1]], 1.0);
}

// ---- 12: one policy on non-finite values ------------------------------------------------

/// A linear RNN (M1) with W_hh = 10·I over 400 steps: h_t grows like 10^t and overflows.
fn exploding() -> (Params<f64>, Rnn, Array3<f64>, Array2<usize>) {
    let mut params = Params::<f64>::new();
    let cell = models::m1(&mut params, Sizes::new(1, 2, 2), 0).unwrap();
    params
        .set(cell.w_hh, (Array2::eye(2) * 10.0).view())
        .unwrap();
    let xs = Array3::from_elem((400, 1, 1), 1.0);
    let labels = Array2::zeros((400, 1));
    (params, cell, xs, labels)
}

#[test]
fn exploding_rnn_is_a_non_finite_error_under_every_truncation() {
    let (params, cell, xs, labels) = exploding();
    let loss = SequenceLoss::classes(labels.view());
    // Before: Full returned Ok with a NaN loss and NaN/∞ gradients, Fixed { 32 } an error.
    for tr in [
        Truncation::Full,
        Truncation::Fixed { k: 32 },
        Truncation::Tbptt { k1: 10, k2: 20 },
        Truncation::Randomized {
            pi: Pi::Constant(0.9),
            seed: 3,
        },
    ] {
        let r = run(
            &cell,
            &params,
            &Sequence::new(xs.view(), loss),
            &Run::new(tr.clone()),
        );
        assert!(matches!(r, Err(Error::NonFinite { .. })), "{tr:?}: {r:?}");
    }
    let r = bptt::run(
        &cell,
        &params,
        &Sequence::new(xs.view(), loss),
        &Run::new(Truncation::Full).memory(Memory::Checkpointed { stride: None }),
    );
    assert!(matches!(r, Err(Error::NonFinite { .. })), "{r:?}");
}

/// The closed forms follow the same policy: an overflow is an error, not an `Ok` with NaN.
#[test]
fn exploding_rnn_is_a_non_finite_error_in_the_closed_forms() {
    let (params, cell, xs, labels) = exploding();
    let loss = SequenceLoss::classes(labels.view());
    let r = closed_form::m1_recursion(&params, &cell, &Sequence::new(xs.view(), loss));
    assert!(matches!(r, Err(Error::NonFinite { .. })), "{r:?}");
    let r = closed_form::m4(&params, &cell, &Sequence::new(xs.view(), loss));
    assert!(matches!(r, Err(Error::NonFinite { .. })), "{r:?}");
}

/// With `check_finite`, the error names the op and the step where the overflow arose:
/// h_t ≈ 10^t·c passes f64::MAX ≈ 1.8e308 a little after step 300.
#[test]
fn check_finite_names_the_op_and_step_where_an_overflow_arose() {
    let (params, cell, xs, labels) = exploding();
    let loss = SequenceLoss::classes(labels.view());
    let opts = RunOptions {
        check_finite: true,
        ..Default::default()
    };
    for tr in [Truncation::Full, Truncation::Fixed { k: 32 }] {
        let e = run(
            &cell,
            &params,
            &Sequence::new(xs.view(), loss),
            &Run::new(tr.clone()).options(opts),
        )
        .unwrap_err();
        let Error::NonFinite { op, what } = e else {
            panic!("{tr:?}: {e:?}");
        };
        assert_eq!(op, "affine", "{tr:?}: the step's fused affine op overflows");
        let step: usize = what.rsplit("at step ").next().unwrap().parse().unwrap();
        assert!((300..=320).contains(&step), "{tr:?}: {what}");
    }
}

#[test]
fn nan_in_relu_weights_is_an_error_not_a_zero_gradient() {
    let mut params = Params::<f64>::new();
    let cell = models::m4(&mut params, Sizes::new(2, 3, 2), Activation::Relu, 1).unwrap();
    params.get_mut(cell.w_hh).unwrap()[[0, 1]] = f64::NAN;
    let xs = Array3::from_elem((4, 1, 2), 0.5);
    let labels = Array2::zeros((4, 1));
    let loss = SequenceLoss::classes(labels.view());
    // Before: relu(NaN) = max(NaN, 0) = 0 hid it: a finite loss and zero gradient.
    let e = run(
        &cell,
        &params,
        &Sequence::new(xs.view(), loss),
        &Run::new(Truncation::Full),
    )
    .unwrap_err();
    match e {
        Error::NonFinite { op: "param", what } => assert!(what.contains("W_hh"), "{what}"),
        e => panic!("{e:?}"),
    }
}

/// A NaN that arises inside the tape (∞ − ∞) is not turned into 0 by a ReLU (IEEE
/// `max(NaN, 0) = 0` would hide it), so the loss and the backward pass see it.
#[test]
fn relu_keeps_a_nan_that_arose_on_the_tape() {
    let mut tape = Tape::<f64>::new();
    let x = tape.constant(array![[1e308, -1.0, 2.0]]).unwrap();
    let inf = tape.scale(x, 10.0).unwrap();
    let nan = tape.sub(inf, inf).unwrap();
    let y = tape.relu(nan).unwrap();
    let v = tape.value(y).unwrap().to_owned();
    assert!(v[[0, 0]].is_nan(), "{v}");
    assert_eq!((v[[0, 1]], v[[0, 2]]), (0.0, 0.0));
    let l = tape.sum(y).unwrap();
    assert!(matches!(tape.backward(l), Err(Error::NonFinite { .. })));
}

#[test]
fn params_set_refuses_wrong_shapes_and_non_finite_values() {
    let (mut p, w) = store(array![[1.0, 2.0]]);
    assert!(matches!(
        p.set(w, array![[1.0], [2.0]].view()),
        Err(Error::ShapeMismatch {
            op: "Params::set",
            lhs: (1, 2),
            rhs: (2, 1)
        })
    ));
    for bad in [f64::NAN, f64::INFINITY] {
        assert!(matches!(
            p.set(w, array![[1.0, bad]].view()),
            Err(Error::NonFinite {
                op: "Params::set",
                ..
            })
        ));
    }
    assert_eq!(p.get(w).unwrap(), &array![[1.0, 2.0]]);
    p.set(w, array![[3.0, 4.0]].view()).unwrap();
    assert_eq!(p.get(w).unwrap(), &array![[3.0, 4.0]]);
}

// ---- 13: f32 cross-entropy at large logits -----------------------------------------------

/// `ln Σ exp(z − m) − (z_y − m)` in f32 against the same formula in f64 on the same f32
/// logits. Tolerance 1e-5 relative: about four f32 roundings (ε = 1.2e-7 each) on a value
/// of order 1, with 20× headroom. The old `m + ln s − z_y` loses the ulp of m: 2⁻¹⁰ at
/// m = 1e4 (9e-4 relative here), 2⁻⁴ at m = 1e6 (2.4e-2).
#[test]
fn f32_softmax_cross_entropy_is_accurate_at_large_logits() {
    for m in [1e4f32, 1e6, 3e7] {
        let z = array![[m, m - 1.0, m - 2.5]];
        let label = 1;
        let exact = {
            let z64 = z.mapv(f64::from);
            let top = z64.iter().cloned().fold(f64::MIN, common::nan_max);
            let s: f64 = z64.iter().map(|&x| (x - top).exp()).sum();
            s.ln() - (z64[[0, label]] - top)
        };
        let mut tape = Tape::<f32>::new();
        let zv = tape.constant(z).unwrap();
        let l = tape
            .softmax_cross_entropy(zv, &[label], None, Reduction::Mean)
            .unwrap();
        let got = f64::from(tape.scalar(l).unwrap());
        assert!(
            ((got - exact) / exact).abs() < 1e-5,
            "m = {m}: {got} vs {exact}"
        );
    }
}

// ---- 15: messages that name the right shapes ---------------------------------------------

#[test]
fn unroll_width_error_names_the_expected_and_given_inputs() {
    let mut params = Params::<f64>::new();
    let cell = models::m3(&mut params, Sizes::new(2, 7, 3), 0).unwrap();
    let xs = Array3::<f64>::zeros((4, 5, 6)); // D = 6, the cell takes 2
    let labels = Array2::<usize>::zeros((4, 5));
    let seq = Sequence::new(xs.view(), SequenceLoss::classes(labels.view()));
    let mut tape = Tape::new();
    let err = bptt::unroll(&cell, &mut tape, &params, &seq).unwrap_err();
    // Before: `(5, 6) and (2, 7)`, the second being (D, H), not an input shape.
    assert_eq!(
        err,
        Error::ShapeMismatch {
            op: "unroll",
            lhs: (5, 2),
            rhs: (5, 6)
        }
    );
}
