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

/// The elementwise unary ops, as recorded on the tape: an [`Activation`] (its f and f′
/// written once, in [`Activation::apply`] and [`Activation::derivative_at_output`],
/// shared with the fused [`Tape::affine`]), or one of the other four. They are applied
/// with the [`Tape`] methods of the same names ([`Tape::neg`], [`Tape::scale`],
/// [`Tape::tanh`], [`Tape::relu`], [`Tape::sigmoid`], [`Tape::activate`],
/// [`Tape::exp`], [`Tape::log`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Unary<F> {
    /// `−x`
    Neg,
    /// `c x`
    Scale(F),
    /// `φ(x)`
    Act(Activation),
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
    /// `φ(a) = σ(a)`, derivative `y (1 − y)`; [`Scalar::sigmoid_kernel`] forward.
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
            Activation::Sigmoid => x.sigmoid_kernel(),
        }
    }

    /// `x ← φ(x)` for every entry, the variant chosen once and the loop compiled for the
    /// processor's widest vectors (`simd::vectorized`).
    pub(crate) fn apply_in_place<F: Scalar>(self, xs: &mut [F]) {
        crate::simd::vectorized(
            #[inline(always)]
            || match self {
                Activation::Identity => {}
                Activation::Tanh => {
                    for x in xs.iter_mut() {
                        *x = x.tanh_kernel();
                    }
                }
                Activation::Relu => {
                    for x in xs.iter_mut() {
                        *x = relu(*x);
                    }
                }
                Activation::Sigmoid => {
                    for x in xs.iter_mut() {
                        *x = x.sigmoid_kernel();
                    }
                }
            },
        )
    }

    /// `r = g ⊙ φ′(y)` entry by entry (slices of one length), as
    /// [`Activation::apply_in_place`].
    pub(crate) fn times_derivative<F: Scalar>(self, r: &mut [F], g: &[F], y: &[F]) {
        crate::simd::vectorized(
            #[inline(always)]
            || {
                let pairs = r.iter_mut().zip(g.iter().zip(y));
                match self {
                    Activation::Identity => pairs.for_each(|(r, (&g, _))| *r = g),
                    Activation::Tanh => {
                        for (r, (&g, &y)) in pairs {
                            *r = g * (F::one() - y * y);
                        }
                    }
                    Activation::Relu | Activation::Sigmoid => {
                        for (r, (&g, &y)) in pairs {
                            *r = g * self.derivative_at_output(y);
                        }
                    }
                }
            },
        )
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
            Unary::Act(Activation::Identity) => "identity",
            Unary::Act(Activation::Tanh) => "tanh",
            Unary::Act(Activation::Relu) => "relu",
            Unary::Act(Activation::Sigmoid) => "sigmoid",
            Unary::Exp => "exp",
            Unary::Log => "log",
        }
    }
}

/// `o = φ(x)`, one branch per activation outside the loop.
fn act_forward<F: Scalar>(o: &mut ndarray::Array2<F>, x: ArrayView2<'_, F>, act: Activation) {
    match act {
        Activation::Identity => put1(o, true, x, |x| x),
        Activation::Tanh => put1(o, true, x, |x| Activation::Tanh.apply(x)),
        Activation::Relu => put1(o, true, x, |x| Activation::Relu.apply(x)),
        Activation::Sigmoid => put1(o, true, x, |x| Activation::Sigmoid.apply(x)),
    }
}

/// `acc (+)= ȳ φ′` from the output `y`, one branch per activation outside the loop.
fn act_vjp<F: Scalar>(
    acc: &mut ndarray::Array2<F>,
    fresh: bool,
    (g, y): (ArrayView2<'_, F>, ArrayView2<'_, F>),
    act: Activation,
) {
    let d = |act: Activation| move |g: F, y: F| g * act.derivative_at_output(y);
    match act {
        Activation::Identity => put1(acc, fresh, g, |g| g),
        Activation::Tanh => put2(acc, fresh, g, y, d(Activation::Tanh)),
        Activation::Relu => put2(acc, fresh, g, y, d(Activation::Relu)),
        Activation::Sigmoid => put2(acc, fresh, g, y, d(Activation::Sigmoid)),
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
            Unary::Act(act) => act_forward(o, x, act),
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
        self.unary(Unary::Act(Activation::Tanh), a)
    }

    /// `max(a, 0)`, elementwise; backward `ā += ȳ · 1[y > 0]` (the derivative at 0 is
    /// taken as 0, the notes' `1[h > 0]`).
    ///
    /// Errors: [`crate::Error::ForeignVar`] or [`crate::Error::StaleVar`] if `a` is not a
    /// live `Var` of this tape.
    pub fn relu(&mut self, a: Var) -> Result<Var> {
        self.unary(Unary::Act(Activation::Relu), a)
    }

    /// The logistic sigmoid `σ(a) = 1 / (1 + e^{−a})`, elementwise, computed without
    /// overflow for both signs; backward `ā += ȳ y (1 − y)`.
    ///
    /// Errors: [`crate::Error::ForeignVar`] or [`crate::Error::StaleVar`] if `a` is not a
    /// live `Var` of this tape.
    pub fn sigmoid(&mut self, a: Var) -> Result<Var> {
        self.unary(Unary::Act(Activation::Sigmoid), a)
    }

    /// `φ(a)`, elementwise, for an activation chosen at run time (the same f and f′ as
    /// [`Tape::tanh`], [`Tape::relu`], [`Tape::sigmoid`] and the fused [`Tape::affine`]).
    ///
    /// ```
    /// use ndarray::array;
    /// use timetape::{Activation, Tape};
    ///
    /// let mut tape = Tape::<f64>::new();
    /// let x = tape.variable(array![[-1.0, 2.0]].view())?;
    /// let y = tape.activate(x, Activation::Relu)?;
    /// assert_eq!(tape.value(y)?, array![[0.0, 2.0]]);
    /// # Ok::<(), timetape::Error>(())
    /// ```
    ///
    /// Errors: [`crate::Error::ForeignVar`] or [`crate::Error::StaleVar`] if `a` is not a
    /// live `Var` of this tape.
    pub fn activate(&mut self, a: Var, act: Activation) -> Result<Var> {
        self.unary(Unary::Act(act), a)
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
    match kind {
        Unary::Neg => put1(acc, fresh, g, |g| -g),
        Unary::Scale(c) => put1(acc, fresh, g, |g| c * g),
        Unary::Act(act) => act_vjp(acc, fresh, (g, y), act),
        Unary::Exp => put2(acc, fresh, g, y, |g, y| g * y),
        Unary::Log => {
            let x = values[a].view();
            put3(acc, fresh, g, y, x, |g, _y, x| g / x)
        }
    }
}
