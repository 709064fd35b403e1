//! Elementwise binary ops, with a 1×n row broadcast over the rows of the other operand
//! (a bias added to a batch).
//!
//! | op | forward | ∂/∂a | ∂/∂b |
//! |---|---|---|---|
//! | `add` | `a + b` | `ḡ` | `ḡ` |
//! | `sub` | `a − b` | `ḡ` | `−ḡ` |
//! | `mul` | `a ⊙ b` | `ḡ ⊙ b` | `ḡ ⊙ a` |
//!
//! An operand that was broadcast receives the column sums of its contribution.

use super::{Ctx, Op};
use crate::error::{Error, Result};
use crate::scalar::Scalar;
use crate::tape::{Tape, Var};
use ndarray::{ArrayView2, Zip};

/// The elementwise binary ops, as recorded on the tape; they are applied with
/// [`Tape::add`], [`Tape::sub`] and [`Tape::mul`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Binary {
    /// `a + b`
    Add,
    /// `a − b`
    Sub,
    /// `a ⊙ b` (Hadamard product)
    Mul,
}

impl Binary {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Binary::Add => "add",
            Binary::Sub => "sub",
            Binary::Mul => "mul",
        }
    }
}

impl<F: Scalar> Tape<F> {
    fn binary(&mut self, kind: Binary, a: Var, b: Var) -> Result<Var> {
        let op = kind.name();
        let (ia, ib) = (self.idx(op, a)?, self.idx(op, b)?);
        let (sa, sb) = (self.values[ia].dim(), self.values[ib].dim());
        let fits = sa.1 == sb.1 && (sa.0 == sb.0 || sa.0 == 1 || sb.0 == 1);
        if !fits {
            return Err(Error::ShapeMismatch {
                op,
                lhs: sa,
                rhs: sb,
            });
        }
        let shape = (sa.0.max(sb.0), sa.1);
        let mut out = self.pool.take(shape);
        let (va, vb) = (self.values[ia].view(), self.values[ib].view());
        if sa == sb {
            let o = &mut out;
            match kind {
                Binary::Add => super::put2(o, true, va, vb, |x, y| x + y),
                Binary::Sub => super::put2(o, true, va, vb, |x, y| x - y),
                Binary::Mul => super::put2(o, true, va, vb, |x, y| x * y),
            }
        } else {
            let (Some(va), Some(vb)) = (va.broadcast(shape), vb.broadcast(shape)) else {
                return Err(Error::ShapeMismatch {
                    op,
                    lhs: sa,
                    rhs: sb,
                });
            };
            let z = Zip::from(&mut out).and(&va).and(&vb);
            match kind {
                Binary::Add => z.for_each(|o, &x, &y| *o = x + y),
                Binary::Sub => z.for_each(|o, &x, &y| *o = x - y),
                Binary::Mul => z.for_each(|o, &x, &y| *o = x * y),
            }
        }
        let ng = self.needs_grad[ia] || self.needs_grad[ib];
        self.push(Op::Binary(kind, ia, ib), out, ng)
    }

    /// `a + b`, elementwise; either operand may be a 1×n row broadcast over the other's
    /// rows (a bias added to a batch). Backward: `ā += ȳ`, `b̄ += ȳ`, a broadcast operand
    /// receiving the column sums `Σ_rows ȳ`.
    ///
    /// ```
    /// use ndarray::array;
    /// use timetape::Tape;
    ///
    /// let mut tape = Tape::<f64>::new();
    /// let x = tape.constant(array![[1.0, 2.0], [3.0, 4.0]])?;
    /// let b = tape.variable(array![[10.0, 20.0]].view())?;
    /// let y = tape.add(x, b)?;
    /// assert_eq!(tape.value(y)?, array![[11.0, 22.0], [13.0, 24.0]]);
    /// let loss = tape.sum(y)?;
    /// tape.backward(loss)?;
    /// assert_eq!(tape.adjoint(b)?.unwrap(), array![[2.0, 2.0]]); // summed over the rows
    /// # Ok::<(), timetape::Error>(())
    /// ```
    ///
    /// Errors: [`Error::ShapeMismatch`] unless the shapes are equal or one is a 1×n row
    /// and the other B×n; [`Error::ForeignVar`] or [`Error::StaleVar`] for a `Var` that
    /// is not a live `Var` of this tape.
    pub fn add(&mut self, a: Var, b: Var) -> Result<Var> {
        self.binary(Binary::Add, a, b)
    }

    /// `a − b`, elementwise, with row broadcasting as in [`Tape::add`]. Backward:
    /// `ā += ȳ`, `b̄ −= ȳ`.
    ///
    /// Errors: as [`Tape::add`].
    pub fn sub(&mut self, a: Var, b: Var) -> Result<Var> {
        self.binary(Binary::Sub, a, b)
    }

    /// `a ⊙ b` (Hadamard product), elementwise, with row broadcasting as in [`Tape::add`].
    /// Backward: `ā += ȳ ⊙ b`, `b̄ += ȳ ⊙ a`.
    ///
    /// Errors: as [`Tape::add`].
    pub fn mul(&mut self, a: Var, b: Var) -> Result<Var> {
        self.binary(Binary::Mul, a, b)
    }
}

/// Adds `sign · ḡ ⊙ other` (other broadcast to ḡ's shape, or 1) into parent `p`,
/// summing over rows if `p` was broadcast.
fn contribute<F: Scalar>(
    cx: &mut Ctx<'_, F>,
    g: ArrayView2<'_, F>,
    p: usize,
    other: Option<usize>,
    sign: F,
) {
    let values = cx.values;
    let Some((acc, fresh)) = cx.slot(p) else {
        return;
    };
    // The other operand at ḡ's shape: itself, or its row broadcast over ḡ's rows.
    let other = other.map(|o| {
        let v = &values[o];
        if v.dim() == g.dim() {
            v.view()
        } else {
            v.broadcast(g.dim()).expect("checked at record time")
        }
    });
    if acc.dim() == g.dim() {
        match other {
            Some(o) => super::put2(acc, fresh, g, o, |g, o| sign * g * o),
            None => super::put1(acc, fresh, g, |g| sign * g),
        }
    } else {
        // p is a 1×n row broadcast over g's rows: add the column sums.
        if fresh {
            acc.fill(F::zero());
        }
        let mut row = acc.row_mut(0);
        for r in 0..g.nrows() {
            match &other {
                Some(o) => Zip::from(&mut row)
                    .and(g.row(r))
                    .and(o.row(r))
                    .for_each(|a, &g, &o| *a = *a + sign * g * o),
                None => Zip::from(&mut row)
                    .and(g.row(r))
                    .for_each(|a, &g| *a = *a + sign * g),
            }
        }
    }
}

pub(crate) fn binary_vjp<F: Scalar>(
    cx: &mut Ctx<'_, F>,
    g: ArrayView2<'_, F>,
    kind: Binary,
    a: usize,
    b: usize,
) {
    let one = F::one();
    match kind {
        Binary::Add => {
            contribute(cx, g, a, None, one);
            contribute(cx, g, b, None, one);
        }
        Binary::Sub => {
            contribute(cx, g, a, None, one);
            contribute(cx, g, b, None, -one);
        }
        Binary::Mul => {
            contribute(cx, g, a, Some(b), one);
            contribute(cx, g, b, Some(a), one);
        }
    }
}
