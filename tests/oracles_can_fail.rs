//! The oracles users check their own cells with must fail when they should (issue 9,
//! findings 1 and 2): a NaN or infinite gradient never passes a comparison, and
//! `gradcheck` rejects a gradient distorted by 1%, a non-finite gradient, a non-finite
//! loss and a wrong user-defined cell.
//!
//! Tolerance of the checks that must pass: 1e-6 relative (central differences with
//! eps = 1e-5 on O(1) values are accurate to ~1e-9, see `gradcheck`'s docs). The
//! failures below are of order 1e-2 or larger (or non-finite), four orders above it.

use ndarray::{array, Array2, Array3, ArrayView2};
use timetape::bptt;

use timetape::gradcheck::{gradcheck, GradcheckOptions};
use timetape::rnn::{Recurrent, Sequence, SequenceLoss};
use timetape::{Error, Grads, ParamId, Params, Result, Tape, Var};

const FD_TOL: f64 = 1e-6;

fn one_param(v: Array2<f64>) -> (Params<f64>, ParamId) {
    let mut params = Params::new();
    let w = params.add("w", v).unwrap();
    (params, w)
}

fn grads_of(params: &Params<f64>, id: ParamId, g: Array2<f64>) -> Grads<f64> {
    let mut grads = Grads::new(params);
    grads.accumulate(id, g.view()).unwrap();
    grads
}

#[test]
fn nan_gradient_fails_max_rel_diff_on_either_side() {
    let (params, w) = one_param(array![[1.0, 2.0]]);
    let good = grads_of(&params, w, array![[1.0, 2.0]]);
    for bad in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
        let nan = grads_of(&params, w, array![[bad, 2.0]]);
        for d in [nan.max_rel_diff(&good), good.max_rel_diff(&nan)] {
            // `d <= tol` must be false for every tolerance, however loose.
            assert!(d.is_nan() || d > 1e300, "{bad} compared as {d}");
        }
    }
    // A NaN in the reference's scale (the old code took max |b| with f64::max, which
    // skips NaN, and then divided a finite difference by a finite scale).
    let scale_nan = grads_of(&params, w, array![[f64::NAN, 0.0]]);
    let d = good.max_rel_diff(&scale_nan);
    assert!(d.is_nan() || d > 1e300, "{d}");
    assert_eq!(good.max_rel_diff(&good), 0.0);
}

/// loss = Σ tanh(x W), with the gradient flowing into W through `scale_grad(·, c)`:
/// the tape's gradient is c times the true one, while the loss (what finite differences
/// see) is unchanged.
fn scaled_loss(c: f64, w: ParamId) -> impl FnMut(&mut Tape<f64>, &Params<f64>) -> Result<Var> {
    move |tape, p| {
        let x = tape.constant(array![[0.4, -0.7], [1.1, 0.2]])?;
        let wv = tape.param(p, w)?;
        let wv = tape.scale_grad(wv, c)?;
        let y = tape.matmul(x, wv)?;
        let y = tape.tanh(y)?;
        tape.sum(y)
    }
}

#[test]
fn correct_gradient_passes_gradcheck() {
    let (params, w) = one_param(array![[0.3, -0.2], [0.1, 0.5]]);
    let report = gradcheck(&params, GradcheckOptions::default(), scaled_loss(1.0, w)).unwrap();
    assert!(report.passes(FD_TOL), "{report}");
}

#[test]
fn one_percent_distorted_gradient_fails_gradcheck() {
    let (params, w) = one_param(array![[0.3, -0.2], [0.1, 0.5]]);
    let report = gradcheck(&params, GradcheckOptions::default(), scaled_loss(1.01, w)).unwrap();
    // The relative error is the distortion itself, 1e-2 (up to the ~1e-9 of the
    // difference quotient).
    let err = report.max_rel_err();
    assert!((err - 0.01).abs() < 1e-6, "{report}");
    assert!(!report.passes(FD_TOL), "{report}");
}

/// Σ (a − b) where a and b are two copies of w, each with `scale_grad(·, 1e300)` twice:
/// the value is 0 and finite, the gradient reaching w is ∞ from a and −∞ from b, so NaN.
#[test]
fn nan_gradient_fails_gradcheck() {
    let (params, w) = one_param(array![[0.5]]);
    let r = gradcheck(&params, GradcheckOptions::default(), |tape, p| {
        let wv = tape.param(p, w)?;
        let huge = |tape: &mut Tape<f64>| -> Result<Var> {
            let a = tape.scale_grad(wv, 1e300)?;
            tape.scale_grad(a, 1e300)
        };
        let a = huge(tape)?;
        let b = huge(tape)?;
        let d = tape.sub(a, b)?;
        tape.sum(d)
    });
    let e = r.expect_err("a NaN gradient must not pass");
    assert!(
        matches!(e, Error::NonFinite { op: "backward", .. }),
        "{e:?}"
    );
}

#[test]
fn infinite_gradient_fails_gradcheck() {
    let (params, w) = one_param(array![[0.5]]);
    let r = gradcheck(&params, GradcheckOptions::default(), |tape, p| {
        let wv = tape.param(p, w)?;
        let a = tape.scale_grad(wv, 1e300)?;
        let a = tape.scale_grad(a, 1e300)?;
        tape.sum(a)
    });
    let e = r.expect_err("an infinite gradient must not pass");
    assert!(
        matches!(e, Error::NonFinite { op: "backward", .. }),
        "{e:?}"
    );
}

/// exp(710) overflows while exp(710 − h) does not: the loss at θ is +∞ and only one of
/// the perturbed losses is. The check must refuse it at θ.
#[test]
fn non_finite_loss_at_theta_fails_gradcheck() {
    let (params, w) = one_param(array![[710.0]]);
    let r = gradcheck(&params, GradcheckOptions::default(), |tape, p| {
        let wv = tape.param(p, w)?;
        let e = tape.exp(wv)?;
        tape.sum(e)
    });
    let e = r.expect_err("an infinite loss must not pass");
    match e {
        Error::NonFinite { op, what } => {
            assert_eq!(op, "gradcheck");
            assert!(what.contains("θ"), "{what}");
        }
        e => panic!("{e:?}"),
    }
}

/// A user's cell with a classic bug: it detaches the previous state inside its step
/// (`h_t = tanh(x_t W_x + detach(h_{t−1}) W_h)`), so the tape's gradient misses every
/// path through time, while the loss — what finite differences see — depends on them.
struct ForgetfulCell {
    w_x: ParamId,
    w_h: ParamId,
    w_o: ParamId,
}

impl Recurrent<f64> for ForgetfulCell {
    type Bound = (Var, Var, Var);
    fn input_width(&self) -> usize {
        2
    }
    fn state_width(&self) -> usize {
        3
    }
    fn output_width(&self) -> usize {
        2
    }
    fn bind(&self, tape: &mut Tape<f64>, params: &Params<f64>) -> Result<Self::Bound> {
        Ok((
            tape.param(params, self.w_x)?,
            tape.param(params, self.w_h)?,
            tape.param(params, self.w_o)?,
        ))
    }
    fn step(&self, tape: &mut Tape<f64>, b: &Self::Bound, x: Var, h: Var) -> Result<Var> {
        let xw = tape.matmul(x, b.0)?;
        let h_prev = tape.detach(h)?; // the bug
        let hw = tape.matmul(h_prev, b.1)?;
        let a = tape.add(xw, hw)?;
        tape.tanh(a)
    }
    fn output(&self, tape: &mut Tape<f64>, b: &Self::Bound, hs: Var) -> Result<Var> {
        tape.matmul(hs, b.2)
    }
}

fn forgetful_case() -> (Params<f64>, ForgetfulCell, Array3<f64>, Array2<usize>) {
    let mut params = Params::new();
    let w = |r, c, s: f64| Array2::from_shape_fn((r, c), |(i, j)| ((i * c + j) as f64 + s).sin());
    let cell = ForgetfulCell {
        w_x: params.add("W_x", w(2, 3, 0.3)).unwrap(),
        w_h: params.add("W_h", w(3, 3, 1.7) * 0.8).unwrap(),
        w_o: params.add("W_o", w(3, 2, 2.9)).unwrap(),
    };
    let xs = Array3::from_shape_fn((4, 2, 2), |(t, b, d)| ((t * 5 + b * 3 + d) as f64).cos());
    let labels = Array2::from_shape_fn((4, 2), |(t, b)| (t + b) % 2);
    (params, cell, xs, labels)
}

#[test]
fn wrong_user_defined_cell_fails_gradcheck() {
    let (params, cell, xs, labels) = forgetful_case();
    let loss = SequenceLoss::classes(labels.view());
    let h0: Array2<f64> = Array2::from_elem((2, 3), 0.2);
    let h0v: ArrayView2<'_, f64> = h0.view();
    let report = gradcheck(&params, GradcheckOptions::default(), |tape, p| {
        Ok(bptt::unroll(&cell, tape, p, &Sequence::new(xs.view(), loss).with_h0(h0v))?.loss)
    })
    .unwrap();
    assert!(!report.passes(FD_TOL), "{report}");
    // The error sits in W_h (every path through W_h beyond one step is lost) and is of
    // the order of the gradient itself, not of rounding.
    let w_h = report.params.iter().find(|p| p.name == "W_h").unwrap();
    assert!(w_h.max_rel_err > 1e-2, "{report}");
}
