//! Matrix product and transpose.
//!
//! | op | forward | backward |
//! |---|---|---|
//! | `matmul(A, B)` | `C = A B` | `Ā += C̄ Bᵀ`, `B̄ += Aᵀ C̄` |
//! | `transpose(A)` | `C = Aᵀ` | `Ā += C̄ᵀ` |
//!
//! The matmul rule is two `general_mat_mul` calls into the adjoint buffers with `.t()`
//! views (β = 0 on the first contribution, 1 after): no temporaries.

use super::{put1, Ctx, Op};
use crate::error::{Error, Result};
use crate::scalar::Scalar;
use crate::tape::{Tape, Var};
use ndarray::linalg::general_mat_mul;
use ndarray::ArrayView2;

fn beta<F: Scalar>(fresh: bool) -> F {
    if fresh {
        F::zero()
    } else {
        F::one()
    }
}

impl<F: Scalar> Tape<F> {
    /// Matrix product `a b` of an m×k and a k×n matrix.
    ///
    /// Errors: [`Error::ShapeMismatch`] if the inner dimensions differ.
    pub fn matmul(&mut self, a: Var, b: Var) -> Result<Var> {
        let (ia, ib) = (self.idx("matmul", a)?, self.idx("matmul", b)?);
        let ((m, k), (k2, n)) = (self.values[ia].dim(), self.values[ib].dim());
        if k != k2 {
            return Err(Error::ShapeMismatch {
                op: "matmul",
                lhs: (m, k),
                rhs: (k2, n),
            });
        }
        let mut out = self.pool.take((m, n));
        general_mat_mul(
            F::one(),
            &self.values[ia],
            &self.values[ib],
            F::zero(),
            &mut out,
        );
        let ng = self.needs_grad[ia] || self.needs_grad[ib];
        Ok(self.push(Op::MatMul(ia as u32, ib as u32), out, ng))
    }

    /// Transpose `aᵀ` (a copy).
    pub fn transpose(&mut self, a: Var) -> Result<Var> {
        let ia = self.idx("transpose", a)?;
        let (m, n) = self.values[ia].dim();
        let mut out = self.pool.take((n, m));
        out.assign(&self.values[ia].t());
        let ng = self.needs_grad[ia];
        Ok(self.push(Op::Transpose(ia as u32), out, ng))
    }
}

pub(crate) fn matmul_vjp<F: Scalar>(cx: &mut Ctx<'_, F>, g: ArrayView2<'_, F>, a: u32, b: u32) {
    let values = cx.values;
    let (va, vb) = (&values[a as usize], &values[b as usize]);
    if let Some((acc, fresh)) = cx.slot(a) {
        general_mat_mul(F::one(), &g, &vb.t(), beta(fresh), acc);
    }
    if let Some((acc, fresh)) = cx.slot(b) {
        general_mat_mul(F::one(), &va.t(), &g, beta(fresh), acc);
    }
}

pub(crate) fn transpose_vjp<F: Scalar>(cx: &mut Ctx<'_, F>, g: ArrayView2<'_, F>, a: u32) {
    if let Some((acc, fresh)) = cx.slot(a) {
        put1(acc, fresh, g.t(), |g| g);
    }
}
