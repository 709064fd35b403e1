//! The two gradient-control ops that truncation is built from.
//!
//! | op | forward | backward |
//! |---|---|---|
//! | `detach(a)` | `a` | nothing reaches `a`; the node's own adjoint is kept (∂L/∂h at a cut) |
//! | `scale_grad(a, c)` | `a` | `ā += c ȳ` |
//! | `scale_grad_rows(a, c)` | `a` | `ā_r += c_r ȳ_r`, row by row |
//!
//! With ξ_t drawn per step, the edge from h_{t−1} into step t is `detach(h_{t−1})` when
//! ξ_t = 0 and `scale_grad(h_{t−1}, 1/π_t)` otherwise: the randomized truncation of the
//! notes. With a ξ_t per batch row (independent sequences in one batch), the edge is
//! `scale_grad_rows(h_{t−1}, ξ_t)`: a row whose ξ is 0 is cut, the others go on.

use super::{put1, Ctx, Op};
use crate::error::Error;
use crate::error::{invalid, Result};
use crate::scalar::Scalar;
use crate::tape::{Tape, Var};
use ndarray::ArrayView2;

impl<F: Scalar> Tape<F> {
    /// The value of `a` (a copy), through which no gradient flows back to `a`. The
    /// adjoint of the new node itself is computed and can be read with [`Tape::adjoint`]
    /// (it is ∂L/∂h at a cut, kept even when adjoints are released). This is the edge
    /// `h_{t−1} → step t` where ξ_t = 0 in truncated BPTT.
    ///
    /// ```
    /// use ndarray::array;
    /// use timetape::{Params, Tape};
    ///
    /// let mut params = Params::<f64>::new();
    /// let w = params.add("w", array![[2.0]])?;
    /// let mut tape = Tape::new();
    /// let wv = tape.param(&params, w)?;
    /// let d = tape.detach(wv)?;
    /// let y = tape.mul(d, wv)?; // only the second factor carries gradient
    /// let grads = tape.backward(y)?;
    /// assert_eq!(grads.get(w).unwrap()[[0, 0]], 2.0);
    /// assert_eq!(tape.adjoint(d)?.unwrap()[[0, 0]], 2.0);
    /// # Ok::<(), timetape::Error>(())
    /// ```
    ///
    /// Errors: [`crate::Error::ForeignVar`] or [`crate::Error::StaleVar`] if `a` is not a
    /// live `Var` of this tape.
    pub fn detach(&mut self, a: Var) -> Result<Var> {
        let ia = self.idx("detach", a)?;
        let mut out = self.pool.take(self.values[ia].dim());
        out.assign(&self.values[ia]);
        self.push(Op::Detach, out, true)
    }

    /// Identity forward (a copy of `a`); backward multiplies the gradient by `c`:
    /// `ā += c ȳ`. This is the edge `h_{t−1} → step t` where ξ_t = 1/π_t in randomized
    /// truncation.
    ///
    /// ```
    /// use ndarray::array;
    /// use timetape::Tape;
    ///
    /// let mut tape = Tape::<f64>::new();
    /// let h = tape.variable(array![[1.0, 2.0]].view())?;
    /// let s = tape.scale_grad(h, 4.0)?;
    /// assert_eq!(tape.value(s)?, array![[1.0, 2.0]]);
    /// let loss = tape.sum(s)?;
    /// tape.backward(loss)?;
    /// assert_eq!(tape.adjoint(h)?.unwrap(), array![[4.0, 4.0]]);
    /// # Ok::<(), timetape::Error>(())
    /// ```
    ///
    /// Errors: [`crate::Error::InvalidArgument`] if `c` is not finite;
    /// [`crate::Error::ForeignVar`] or [`crate::Error::StaleVar`] if `a` is not a live
    /// `Var` of this tape.
    pub fn scale_grad(&mut self, a: Var, c: F) -> Result<Var> {
        let ia = self.idx("scale_grad", a)?;
        if !c.is_finite() {
            return Err(invalid("scale_grad", "non-finite factor"));
        }
        let mut out = self.pool.take(self.values[ia].dim());
        out.assign(&self.values[ia]);
        let ng = self.needs_grad[ia];
        self.push(Op::ScaleGrad(ia, c), out, ng)
    }
}

impl<F: Scalar> Tape<F> {
    /// Identity forward (a copy of `a`); backward multiplies row r of the gradient by
    /// `c[r]`: `ā_r += c_r ȳ_r`. A factor 0 cuts that row's gradient (as [`Tape::detach`]
    /// does for all rows). This is the edge `h_{t−1} → step t` of a batch of independent
    /// sequences, each with its own ξ_t.
    ///
    /// ```
    /// use ndarray::array;
    /// use timetape::Tape;
    ///
    /// let mut tape = Tape::<f64>::new();
    /// let h = tape.variable(array![[1.0, 2.0], [3.0, 4.0]].view())?;
    /// let s = tape.scale_grad_rows(h, &[0.0, 2.5])?;
    /// assert_eq!(tape.value(s)?, array![[1.0, 2.0], [3.0, 4.0]]);
    /// let loss = tape.sum(s)?;
    /// tape.backward(loss)?;
    /// assert_eq!(tape.adjoint(h)?.unwrap(), array![[0.0, 0.0], [2.5, 2.5]]);
    /// # Ok::<(), timetape::Error>(())
    /// ```
    ///
    /// Errors: [`crate::Error::ShapeMismatch`] if `c` has not one factor per row of
    /// `a`; [`crate::Error::InvalidArgument`] for a non-finite factor;
    /// [`crate::Error::ForeignVar`] or [`crate::Error::StaleVar`] if `a` is not a live
    /// `Var` of this tape.
    pub fn scale_grad_rows(&mut self, a: Var, c: &[F]) -> Result<Var> {
        let op = "scale_grad_rows";
        let ia = self.idx(op, a)?;
        let dim = self.values[ia].dim();
        if c.len() != dim.0 {
            return Err(Error::ShapeMismatch {
                op,
                lhs: dim,
                rhs: (c.len(), 1),
            });
        }
        if c.iter().any(|x| !x.is_finite()) {
            return Err(invalid(op, "non-finite factor"));
        }
        let mut out = self.pool.take(dim);
        out.assign(&self.values[ia]);
        let ng = self.needs_grad[ia];
        let at = self.side.push_weights(Some(c)).unwrap_or(0);
        self.push(Op::ScaleGradRows { a: ia, at }, out, ng)
    }
}

/// `ā_r += c_r ȳ_r` with the factors `c`.
pub(crate) fn scale_grad_rows_vjp<F: Scalar>(
    cx: &mut Ctx<'_, F>,
    g: ArrayView2<'_, F>,
    a: usize,
    c: &[F],
) {
    if let Some((acc, fresh)) = cx.slot(a) {
        for ((mut acc, g), &c) in acc.rows_mut().into_iter().zip(g.rows()).zip(c) {
            match (fresh, acc.as_slice_mut(), g.as_slice()) {
                (true, Some(o), Some(g)) => o.iter_mut().zip(g).for_each(|(o, &g)| *o = c * g),
                (false, Some(o), Some(g)) => {
                    o.iter_mut().zip(g).for_each(|(o, &g)| *o = *o + c * g)
                }
                (true, ..) => acc.zip_mut_with(&g, |o, &g| *o = c * g),
                (false, ..) => acc.zip_mut_with(&g, |o, &g| *o = *o + c * g),
            }
        }
    }
}

pub(crate) fn scale_grad_vjp<F: Scalar>(cx: &mut Ctx<'_, F>, g: ArrayView2<'_, F>, a: usize, c: F) {
    if let Some((acc, fresh)) = cx.slot(a) {
        put1(acc, fresh, g, |g| c * g);
    }
}
