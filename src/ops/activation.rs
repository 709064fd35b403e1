//! Elementwise unary ops as (f, f′) pairs, the derivative written from the saved output
//! `y` where it can be.
//!
//! | op | forward `y = f(x)` | backward `x̄ += ȳ · f′` |
//! |---|---|---|
//! | `neg` | `−x` | `−ȳ` |
//! | `scale(c)` | `c x` | `c ȳ` |
//! | `tanh` | `tanh x` | `ȳ (1 − y²)` |
//! | `relu` | `max(x, 0)` | `ȳ · 1[y > 0]` (0 at x = 0, the notes' `1[h > 0]`) |
//! | `sigmoid` | `1 / (1 + e^{−x})` | `ȳ y (1 − y)` |
//! | `exp` | `e^x` | `ȳ y` |
//! | `log` | `ln x` | `ȳ / x` |

use super::{put1, put2, put3, Ctx, Op};
use crate::error::{invalid, Result};
use crate::scalar::Scalar;
use crate::tape::{Tape, Var};
use ndarray::ArrayView2;

/// The elementwise unary ops, as recorded on the tape. They are applied with the
/// [`Tape`] methods of the same names ([`Tape::neg`], [`Tape::scale`], [`Tape::tanh`],
/// [`Tape::relu`], [`Tape::sigmoid`], [`Tape::exp`], [`Tape::log`]), whose docs give
/// each backward rule.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Unary<F> {
    /// `−x`
    Neg,
    /// `c x`
    Scale(F),
    /// `tanh x` ([`Scalar::tanh_kernel`]: exact for f64, Eigen's rational form for f32)
    Tanh,
    /// `max(x, 0)`
    Relu,
    /// the logistic sigmoid `σ(x) = 1 / (1 + e^{−x})`, computed stably for both signs of x
    Sigmoid,
    /// `e^x`
    Exp,
    /// `ln x` (x > 0)
    Log,
}

/// An activation φ applied by the fused [`Tape::affine`] op (and the vanilla RNN,
/// `h_t = φ(x_t W_xh + h_{t−1} W_hh + b_h)`). Its derivative is computed from the output
/// `y = φ(a)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// `φ(a) = a` (the linear RNN of M1), derivative 1.
    Identity,
    /// `φ(a) = tanh a` (M3), derivative `1 − y²`; [`Scalar::tanh_kernel`] forward.
    Tanh,
    /// `φ(a) = max(a, 0)` (M2), derivative `1[a > 0]`.
    Relu,
    /// `φ(a) = σ(a)`, derivative `y (1 − y)`.
    Sigmoid,
}

impl Activation {
    /// `φ(x)`.
    #[inline]
    pub(crate) fn apply<F: Scalar>(self, x: F) -> F {
        match self {
            Activation::Identity => x,
            Activation::Tanh => x.tanh_kernel(),
            Activation::Relu => relu(x),
            Activation::Sigmoid => sigmoid(x),
        }
    }

    /// `φ′` written from the output `y = φ(x)`: 1, 1 − y², 1[y > 0], y (1 − y).
    #[inline]
    pub(crate) fn derivative_at_output<F: Scalar>(self, y: F) -> F {
        match self {
            Activation::Identity => F::one(),
            Activation::Tanh => F::one() - y * y,
            Activation::Relu => {
                if y > F::zero() {
                    F::one()
                } else {
                    F::zero()
                }
            }
            Activation::Sigmoid => y * (F::one() - y),
        }
    }
}

/// `max(x, 0)` that keeps a NaN (IEEE `max(NaN, 0)` is 0, which would hide it).
#[inline]
pub(crate) fn relu<F: Scalar>(x: F) -> F {
    if x < F::zero() {
        F::zero()
    } else {
        x
    }
}

/// Stable logistic sigmoid.
#[inline]
pub(crate) fn sigmoid<F: Scalar>(x: F) -> F {
    if x >= F::zero() {
        F::one() / (F::one() + (-x).exp())
    } else {
        let e = x.exp();
        e / (F::one() + e)
    }
}

impl<F: Scalar> Unary<F> {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Unary::Neg => "neg",
            Unary::Scale(_) => "scale",
            Unary::Tanh => "tanh",
            Unary::Relu => "relu",
            Unary::Sigmoid => "sigmoid",
            Unary::Exp => "exp",
            Unary::Log => "log",
        }
    }
}

impl<F: Scalar> Tape<F> {
    fn unary(&mut self, kind: Unary<F>, a: Var) -> Result<Var> {
        let ia = self.idx(kind.name(), a)?;
        match kind {
            Unary::Log if self.values[ia].iter().any(|&x| x <= F::zero()) => {
                return Err(invalid("log", "log of a non-positive value"));
            }
            Unary::Scale(c) if !c.is_finite() => {
                return Err(invalid("scale", "non-finite factor"));
            }
            _ => {}
        }
        let mut out = self.pool.take(self.values[ia].dim());
        let x = self.values[ia].view();
        let o = &mut out;
        match kind {
            Unary::Neg => put1(o, true, x, |x| -x),
            Unary::Scale(c) => put1(o, true, x, |x| c * x),
            Unary::Tanh => put1(o, true, x, |x| x.tanh_kernel()),
            Unary::Relu => put1(o, true, x, relu),
            Unary::Sigmoid => put1(o, true, x, sigmoid),
            Unary::Exp => put1(o, true, x, |x| x.exp()),
            Unary::Log => put1(o, true, x, |x| x.ln()),
        }
        let ng = self.needs_grad[ia];
        self.push(Op::Unary(kind, ia), out, ng)
    }

    /// `−a`, elementwise.
    ///
    /// Errors: [`crate::Error::ForeignVar`] or [`crate::Error::StaleVar`] if `a` is not a
    /// live `Var` of this tape.
    pub fn neg(&mut self, a: Var) -> Result<Var> {
        self.unary(Unary::Neg, a)
    }

    /// `c a` for a constant `c`; backward `ā += c ȳ`.
    ///
    /// Errors: [`crate::Error::InvalidArgument`] if `c` is not finite;
    /// [`crate::Error::ForeignVar`] or [`crate::Error::StaleVar`] if `a` is not a live
    /// `Var` of this tape.
    pub fn scale(&mut self, a: Var, c: F) -> Result<Var> {
        self.unary(Unary::Scale(c), a)
    }

    /// `tanh a`, elementwise ([`Scalar::tanh_kernel`]: exact for f64, Eigen's rational
    /// approximation for f32); backward `ā += ȳ (1 − y²)`.
    ///
    /// Errors: [`crate::Error::ForeignVar`] or [`crate::Error::StaleVar`] if `a` is not a
    /// live `Var` of this tape.
    pub fn tanh(&mut self, a: Var) -> Result<Var> {
        self.unary(Unary::Tanh, a)
    }

    /// `max(a, 0)`, elementwise; backward `ā += ȳ · 1[y > 0]` (the derivative at 0 is
    /// taken as 0, the notes' `1[h > 0]`).
    ///
    /// Errors: [`crate::Error::ForeignVar`] or [`crate::Error::StaleVar`] if `a` is not a
    /// live `Var` of this tape.
    pub fn relu(&mut self, a: Var) -> Result<Var> {
        self.unary(Unary::Relu, a)
    }

    /// The logistic sigmoid `σ(a) = 1 / (1 + e^{−a})`, elementwise, computed without
    /// overflow for both signs; backward `ā += ȳ y (1 − y)`.
    ///
    /// Errors: [`crate::Error::ForeignVar`] or [`crate::Error::StaleVar`] if `a` is not a
    /// live `Var` of this tape.
    pub fn sigmoid(&mut self, a: Var) -> Result<Var> {
        self.unary(Unary::Sigmoid, a)
    }

    /// `e^a`, elementwise; backward `ā += ȳ y`. Not checked for overflow: an entry above
    /// ln(F::MAX) (≈ 709.8 for f64, ≈ 88.7 for f32) gives +∞.
    ///
    /// Errors: [`crate::Error::ForeignVar`] or [`crate::Error::StaleVar`] if `a` is not a
    /// live `Var` of this tape.
    pub fn exp(&mut self, a: Var) -> Result<Var> {
        self.unary(Unary::Exp, a)
    }

    /// `ln a`, elementwise; backward `ā += ȳ / a`.
    ///
    /// Errors: [`crate::Error::InvalidArgument`] if an entry is ≤ 0 (instead of a NaN or
    /// −∞ on the tape); [`crate::Error::ForeignVar`] or [`crate::Error::StaleVar`] if `a`
    /// is not a live `Var` of this tape.
    pub fn log(&mut self, a: Var) -> Result<Var> {
        self.unary(Unary::Log, a)
    }
}

pub(crate) fn unary_vjp<F: Scalar>(
    cx: &mut Ctx<'_, F>,
    g: ArrayView2<'_, F>,
    y: ArrayView2<'_, F>,
    kind: Unary<F>,
    a: usize,
) {
    let values = cx.values;
    let Some((acc, fresh)) = cx.slot(a) else {
        return;
    };
    let one = F::one();
    match kind {
        Unary::Neg => put1(acc, fresh, g, |g| -g),
        Unary::Scale(c) => put1(acc, fresh, g, |g| c * g),
        Unary::Tanh => put2(acc, fresh, g, y, |g, y| g * (one - y * y)),
        Unary::Relu => put2(
            acc,
            fresh,
            g,
            y,
            |g, y| {
                if y > F::zero() {
                    g
                } else {
                    F::zero()
                }
            },
        ),
        Unary::Sigmoid => put2(acc, fresh, g, y, |g, y| g * y * (one - y)),
        Unary::Exp => put2(acc, fresh, g, y, |g, y| g * y),
        Unary::Log => {
            let x = values[a].view();
            put3(acc, fresh, g, y, x, |g, _y, x| g / x)
        }
    }
}
