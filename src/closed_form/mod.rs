//! The notes' hand-derived BPTT gradients (FORMULAS.md, M1–M4 and eq. (5) truncated),
//! written on ndarray alone.
//!
//! This module never records anything on a [`Tape`](crate::Tape) and never calls the
//! tape's ops, its kernels or an unroll: it reads the [`Rnn`] struct
//! for its [`ParamId`](crate::ParamId)s and sizes, the values in a [`Params`] store, and
//! takes a [`SequenceLoss`] as a plain description of the loss. It is the independent
//! oracle the tape is tested against; [`M3Workspace`], given the tape's tanh by a
//! benchmark ([`M3Workspace::with_tanh`]), is also the hand-written speed reference the
//! benchmarks compare the tape with.
//!
//! # Conventions
//!
//! Batch-major, exactly as [`Rnn`] on the tape: inputs `xs` are `(T, B, D)`, states are
//! B×H with one row per sequence,
//!
//! ```text
//! h_t = φ(x_t W_xh + h_{t−1} W_hh + b_h),    o_t = h_t W_hq + b_q,    h_0 = 0 or given,
//! ```
//!
//! and the loss is the one of [`SequenceLoss`]: with per-step targets
//! `L = Σ_t c_t · s_B Σ_b l(o_{t,b}, y_{t,b})`, `c_t = α_t` (1 without weights) for a
//! sum over time and `α_t / T` for a mean, `s_B = 1/B` for a mean over the batch and 1
//! for a sum, `l` the softmax cross-entropy with an integer label or the squared error
//! `‖o − y‖²` (no ½); with last-step targets `L = s_B Σ_b l(o_{T,b}, y_b)`, `l` the
//! softmax cross-entropy ([`Targets::LastClass`]), the binary cross-entropy of `σ(o_T)`
//! ([`Targets::LastBinary`], Q = 1) or the squared error ([`Targets::LastValues`]).
//!
//! The notes write column vectors; their matrices are the transposes of the crate's:
//!
//! | notes | crate |
//! |---|---|
//! | `W_hx` (M1), `U` (M2, M3), `W_x` (M4) | `W_xhᵀ` |
//! | `W_hh` (M1), `W` (M2, M3), `W_h` (M4) | `W_hhᵀ` |
//! | `W_qh` (M1), `V` (M2, M3), `W_y` (M4) | `W_hqᵀ` |
//! | `b` (M2), `b_a` (M3), `b_h` (M4) | `b_hᵀ` |
//! | `d` (M2), `b_y` (M3, M4) | `b_qᵀ` |
//!
//! so that a column equation `δ_t = W_hhᵀ δ_{t+1} + …` of the notes reads, one row per
//! sequence, `δ_t = δ_{t+1} W_hhᵀ + …` here (with the crate's `W_hh`).
//!
//! # What is returned
//!
//! Every function returns a [`ClosedForm`]: the loss, the parameter gradients (an entry
//! for every parameter the model has), and the adjoints `∂L/∂h_t` (total derivatives,
//! t = 1..T) and `∂L/∂h_0`, which the tape gives as
//! [`Tape::adjoint`](crate::Tape::adjoint) of the unrolled states.
//!
//! | function | model | evaluation |
//! |---|---|---|
//! | [`m1_recursion`] | M1, eqs (6)–(8) | reverse recursion |
//! | [`m1_power_sum`] | M1, eq (9) | explicit powers of `W_hh`, O(T²) |
//! | [`m2()`] | M2 | per sequence, explicit products `D_l W ⋯ D_{t+1} W` and the Kronecker form of `∂L/∂W` |
//! | [`m2_outer`] | M2 | batched recursion and outer products `Σ_t g_t h_{t−1}ᵀ` |
//! | [`m3()`], [`M3Workspace`] | M3 | the speed reference: whole-sequence matrix products |
//! | [`m4()`] | M4, any φ and targets | reverse recursion |
//! | [`truncated()`], [`truncated_fixed`] | M4 with `h` detached at cuts, eq (5) restricted | reverse recursion stopped at the cuts |
//!
//! ```
//! use ndarray::{Array2, Array3};
//! use timetape::closed_form;
//! use timetape::rnn::{models, SequenceLoss, Sequence, Sizes};
//! use timetape::{Params, Tape};
//! use timetape::bptt;
//!
//! let mut params = Params::<f64>::new();
//! let cell = models::m3(&mut params, Sizes::new(3, 4, 2), 0)?;
//! let xs = Array3::from_shape_fn((5, 2, 3), |(t, b, d)| 0.1 * (t + b + d) as f64 - 0.3);
//! let labels = Array2::from_shape_fn((5, 2), |(t, b)| (t + b) % 2);
//! let loss = SequenceLoss::classes(labels.view());
//!
//! let cf = closed_form::m3(&params, &cell, &Sequence::new(xs.view(), loss))?;
//!
//! let mut tape = Tape::new();
//! let run = bptt::unroll(&cell, &mut tape, &params, &Sequence::new(xs.view(), loss))?;
//! let grads = tape.backward(run.loss)?;
//! assert!(cf.grads.max_rel_diff(&grads) < 1e-12);
//! assert!((cf.loss - tape.scalar(run.loss)?).abs() < 1e-12);
//! # Ok::<(), timetape::Error>(())
//! ```

mod m1;
mod m2;
mod m3;
mod truncated;

pub use self::m1::{m1_power_sum, m1_recursion};
pub use self::m2::{m2, m2_outer};
pub use self::m3::{m3, m4, M3Workspace};
pub use self::truncated::{block_starts, truncated, truncated_fixed};

use crate::error::{Error, Result};
use crate::params::{Grads, Params};
use crate::rnn::{Activation, Rnn, SequenceLoss, Targets};
use crate::scalar::Scalar;
use ndarray::{Array2, ArrayView1, ArrayView2, ArrayView3, Axis};

/// The result of a closed-form gradient.
#[derive(Debug, Clone, PartialEq)]
pub struct ClosedForm<F> {
    /// The loss L.
    pub loss: F,
    /// `∂L/∂θ` for every parameter of the model (built with [`Grads::new`]).
    pub grads: Grads<F>,
    /// `∂L/∂h_t` for t = 1..T (`dh[t − 1]`), each B×H: the total derivative, through
    /// the output at step t and through every later step (for [`truncated()`]: only
    /// through the later steps of the same block).
    pub dh: Vec<Array2<F>>,
    /// `∂L/∂h_0`, B×H (zeros if the edge `h_0 → step 1` is cut).
    pub dh0: Array2<F>,
}

impl<F: Scalar> ClosedForm<F> {
    /// The policy on non-finite values (crate docs): a closed form handed out as `Ok` is
    /// finite; an overflow is an [`Error::NonFinite`](crate::Error::NonFinite) naming `op`.
    pub(crate) fn checked(self, op: &'static str) -> Result<Self> {
        let bad = |what: String| Error::NonFinite { op, what };
        if !self.loss.is_finite() {
            return Err(bad("the loss".into()));
        }
        self.grads.check_finite(op)?;
        let finite = |a: &Array2<F>| crate::params::first_non_finite(a.iter()).is_none();
        if !finite(&self.dh0) {
            return Err(bad("∂L/∂h_0".into()));
        }
        if let Some(t) = self.dh.iter().position(|a| !finite(a)) {
            return Err(bad(format!("∂L/∂h_t at step {}", t + 1)));
        }
        Ok(self)
    }
}

/// The gradients of an RNN's five parameters in the crate's layout, as a closed form sums
/// them; the entry of a bias the RNN does not have is dropped.
#[derive(Debug, Clone)]
pub(crate) struct RnnGrads<F> {
    /// `∂L/∂W_xh`, D×H.
    pub w_xh: Array2<F>,
    /// `∂L/∂W_hh`, H×H.
    pub w_hh: Array2<F>,
    /// `∂L/∂b_h`, 1×H.
    pub b_h: Array2<F>,
    /// `∂L/∂W_hq`, H×Q.
    pub w_hq: Array2<F>,
    /// `∂L/∂b_q`, 1×Q.
    pub b_q: Array2<F>,
}

impl<F: Scalar> RnnGrads<F> {
    /// Zeros of the parameter shapes of `dims`.
    pub(crate) fn zeros(dims: Dims) -> Self {
        let Dims { d, h, q, .. } = dims;
        RnnGrads {
            w_xh: Array2::zeros((d, h)),
            w_hh: Array2::zeros((h, h)),
            b_h: Array2::zeros((1, h)),
            w_hq: Array2::zeros((h, q)),
            b_q: Array2::zeros((1, q)),
        }
    }

    /// One entry per parameter of `rnn`, in a new [`Grads`] for `params`.
    pub(crate) fn into_grads(self, params: &Params<F>, rnn: &Rnn) -> Result<Grads<F>> {
        let mut grads = Grads::new(params);
        grads.accumulate(rnn.w_xh, self.w_xh.view())?;
        grads.accumulate(rnn.w_hh, self.w_hh.view())?;
        if let Some(id) = rnn.b_h {
            grads.accumulate(id, self.b_h.view())?;
        }
        grads.accumulate(rnn.w_hq, self.w_hq.view())?;
        if let Some(id) = rnn.b_q {
            grads.accumulate(id, self.b_q.view())?;
        }
        Ok(grads)
    }
}

/// Sizes of one problem: T steps, B rows, D inputs, H hidden units, Q outputs.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Dims {
    pub t: usize,
    pub b: usize,
    pub d: usize,
    pub h: usize,
    pub q: usize,
}

/// The parameter values of an [`Rnn`], borrowed from the store.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Weights<'p, F> {
    pub w_xh: &'p Array2<F>,
    pub w_hh: &'p Array2<F>,
    pub b_h: Option<&'p Array2<F>>,
    pub w_hq: &'p Array2<F>,
    pub b_q: Option<&'p Array2<F>>,
}

fn expect_shape<F>(op: &'static str, got: &Array2<F>, want: (usize, usize)) -> Result<()> {
    if got.dim() != want {
        return Err(Error::ShapeMismatch {
            op,
            lhs: want,
            rhs: got.dim(),
        });
    }
    Ok(())
}

/// Checks the sizes of the sequence, the initial state and every parameter of `rnn`
/// against its configuration, and borrows the parameter values.
pub(crate) fn check<'p, F: Scalar>(
    op: &'static str,
    params: &'p Params<F>,
    rnn: &Rnn,
    xs: ArrayView3<'_, F>,
    h0: Option<ArrayView2<'_, F>>,
) -> Result<(Dims, Weights<'p, F>)> {
    let (t, b, d) = xs.dim();
    if t == 0 || b == 0 {
        return Err(Error::EmptyInput {
            op,
            what: "sequence with no steps or no batch rows",
        });
    }
    let c = &rnn.config;
    let (h, q) = (c.hidden, c.output);
    if c.input == 0 || h == 0 || q == 0 {
        return Err(crate::error::invalid(op, "RNN sizes must be positive"));
    }
    if d != c.input {
        return Err(Error::ShapeMismatch {
            op,
            lhs: (b, d),
            rhs: (c.input, h),
        });
    }
    if let Some(h0) = h0 {
        if h0.dim() != (b, h) {
            return Err(Error::ShapeMismatch {
                op,
                lhs: (b, h),
                rhs: h0.dim(),
            });
        }
    }
    let w = Weights {
        w_xh: params.get(rnn.w_xh)?,
        w_hh: params.get(rnn.w_hh)?,
        b_h: rnn.b_h.map(|id| params.get(id)).transpose()?,
        w_hq: params.get(rnn.w_hq)?,
        b_q: rnn.b_q.map(|id| params.get(id)).transpose()?,
    };
    expect_shape(op, w.w_xh, (d, h))?;
    expect_shape(op, w.w_hh, (h, h))?;
    if let Some(bh) = w.b_h {
        expect_shape(op, bh, (1, h))?;
    }
    expect_shape(op, w.w_hq, (h, q))?;
    if let Some(bq) = w.b_q {
        expect_shape(op, bq, (1, q))?;
    }
    Ok((Dims { t, b, d, h, q }, w))
}

/// Errors unless the RNN has activation `want`.
pub(crate) fn require_activation(op: &'static str, rnn: &Rnn, want: Activation) -> Result<()> {
    if rnn.config.activation != want {
        return Err(crate::error::invalid(
            op,
            format!(
                "this closed form needs activation {want:?}, the RNN has {:?}",
                rnn.config.activation
            ),
        ));
    }
    Ok(())
}

/// The initial state: the given one, or zeros.
pub(crate) fn initial_state<F: Scalar>(h0: Option<ArrayView2<'_, F>>, dims: Dims) -> Array2<F> {
    match h0 {
        Some(h) => h.to_owned(),
        None => Array2::zeros((dims.b, dims.h)),
    }
}

/// The states `h_0 … h_T` of the forward pass `h_t = φ(x_t W_xh + h_{t−1} W_hh + b_h)`
/// from `h_0 = h_init`.
pub(crate) fn states<F: Scalar>(
    w: &Weights<'_, F>,
    xs: ArrayView3<'_, F>,
    h_init: Array2<F>,
    phi: Activation,
) -> Vec<Array2<F>> {
    let mut hs: Vec<Array2<F>> = Vec::with_capacity(xs.dim().0 + 1);
    hs.push(h_init);
    for x_t in xs.axis_iter(Axis(0)) {
        let mut a = x_t.dot(w.w_xh) + hs[hs.len() - 1].dot(w.w_hh);
        if let Some(bh) = w.b_h {
            a = a + bh;
        }
        a.mapv_inplace(|v| activate(phi, v));
        hs.push(a);
    }
    hs
}

/// The output `o = h W_hq + b_q` of a state `h`.
pub(crate) fn output<F: Scalar>(w: &Weights<'_, F>, h: &Array2<F>) -> Array2<F> {
    let o = h.dot(w.w_hq);
    match w.b_q {
        Some(bq) => o + bq,
        None => o,
    }
}

/// The exact `tanh`: `f64::tanh`, rounded to `F` (for `f32`, within half an ulp plus
/// the f64 error; never the tape's rational approximation).
pub(crate) fn exact_tanh<F: Scalar>(x: F) -> F {
    F::of(x.as_f64().tanh())
}

/// `φ(a)` of an activation.
pub(crate) fn activate<F: Scalar>(phi: Activation, a: F) -> F {
    match phi {
        Activation::Identity => a,
        Activation::Tanh => exact_tanh(a),
        Activation::Relu => a.max(F::zero()),
        Activation::Sigmoid => sigmoid(a),
    }
}

/// The stable logistic sigmoid (the same case split as the tape's).
pub(crate) fn sigmoid<F: Scalar>(x: F) -> F {
    if x >= F::zero() {
        F::one() / (F::one() + (-x).exp())
    } else {
        let e = x.exp();
        e / (F::one() + e)
    }
}

/// The binary cross-entropy of `σ(z)` against `y`, in the stable logit form
/// `max(z, 0) − z y + ln(1 + e^{−|z|})` (equal to `−(y ln σ(z) + (1 − y) ln(1 − σ(z)))`).
pub(crate) fn bce_logit<F: Scalar>(z: F, y: F) -> F {
    z.max(F::zero()) - z * y + (-z.abs()).exp().ln_1p()
}

/// Softmax cross-entropy of one row of logits against `label`: returns the loss
/// `logsumexp(z) − z_label` and overwrites `z` with `softmax(z) − onehot(label)` times
/// `scale`.
pub(crate) fn softmax_xent_row<F: Scalar>(
    mut z: ndarray::ArrayViewMut1<'_, F>,
    label: usize,
    scale: F,
) -> F {
    let m = z.iter().fold(F::neg_infinity(), |m, &x| m.max(x));
    let zy = z[label];
    z.mapv_inplace(|x| (x - m).exp());
    let s = z.iter().fold(F::zero(), |s, &x| s + x);
    let c = scale / s;
    z.mapv_inplace(|p| p * c);
    z[label] = z[label] - scale;
    s.ln() - (zy - m)
}

/// The loss and `e_t = ∂L/∂o_t` (each B×Q) for the outputs `outs` (o_1..o_T, each B×Q)
/// of a validated loss: per-step terms `c_t s_B l(o_t, y_t)` (`s_B` = 1/B for a mean over
/// the batch, 1 for a sum), or the last-step term
/// alone (then `e_t = 0` for t < T).
///
/// | target | `l(o, y)` | `∂l/∂o` |
/// |---|---|---|
/// | class | `logsumexp(o) − o_y` | `softmax(o) − onehot(y)` |
/// | value | `‖o − y‖²` | `2 (o − y)` |
/// | binary | `max(o, 0) − o y + ln(1 + e^{−\|o\|})` | `σ(o) − y` |
pub(crate) fn output_adjoints<F: Scalar>(
    loss: &SequenceLoss<'_, F>,
    outs: &[Array2<F>],
) -> (F, Vec<Array2<F>>) {
    let t_len = outs.len();
    let b = outs[0].nrows();
    let inv_b = loss.batch_factor(b);
    let mut total = F::zero();
    let mut es: Vec<Array2<F>> = outs.iter().map(|o| Array2::zeros(o.raw_dim())).collect();
    let coef = loss.step_coefficients(t_len);
    let last = t_len - 1;
    match loss.targets {
        Targets::Classes(labels) => {
            for (t, (o, e)) in outs.iter().zip(es.iter_mut()).enumerate() {
                total = total + class_term(o, e, labels.row(t), coef[t] * inv_b);
            }
        }
        Targets::Values(y) => {
            for (t, (o, e)) in outs.iter().zip(es.iter_mut()).enumerate() {
                let yt = y.index_axis(Axis(0), t);
                total = total + value_term(o, yt, e, coef[t] * inv_b);
            }
        }
        Targets::LastClass(labels) => {
            total = class_term(&outs[last], &mut es[last], labels, inv_b);
        }
        Targets::LastBinary(y) => {
            let (e, o) = (&mut es[last], &outs[last]);
            for r in 0..b {
                let z = o[[r, 0]];
                total = total + bce_logit(z, y[r]);
                e[[r, 0]] = (sigmoid(z) - y[r]) * inv_b;
            }
            total = total * inv_b;
        }
        Targets::LastValues(y) => {
            total = value_term(&outs[last], y, &mut es[last], inv_b);
        }
    }
    (total, es)
}

/// `w Σ_r CE(o_r, y_r)` of one step's outputs `o` (B×Q) against `labels` (B), and its
/// adjoint `e = w (softmax(o) − onehot(y))`.
fn class_term<F: Scalar>(
    o: &Array2<F>,
    e: &mut Array2<F>,
    labels: ArrayView1<'_, usize>,
    w: F,
) -> F {
    e.assign(o);
    let mut step = F::zero();
    for (r, row) in e.axis_iter_mut(Axis(0)).enumerate() {
        step = step + softmax_xent_row(row, labels[r], w);
    }
    w * step
}

/// `w Σ ‖o − y‖²` of one step's outputs `o` (B×Q) against `y` (B×Q), and its adjoint
/// `e = 2 w (o − y)`.
fn value_term<F: Scalar>(o: &Array2<F>, y: ArrayView2<'_, F>, e: &mut Array2<F>, w: F) -> F {
    let two = F::one() + F::one();
    let mut step = F::zero();
    ndarray::Zip::from(e).and(o).and(&y).for_each(|e, &o, &y| {
        let d = o - y;
        step = step + d * d;
        *e = two * w * d;
    });
    w * step
}

/// `Σ` of the rows of `a` as a 1×n matrix.
pub(crate) fn row_sum<F: Scalar>(a: &Array2<F>) -> Array2<F> {
    a.sum_axis(Axis(0)).insert_axis(Axis(0))
}
