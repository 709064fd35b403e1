//! Reductions to a 1×1 value.
//!
//! | op | forward | backward |
//! |---|---|---|
//! | `sum(a)` | `Σ a_ij` | `ā_ij += ȳ` |
//! | `mean(a)` | `(1/n) Σ a_ij` | `ā_ij += ȳ / n` |

use super::{put1, Ctx, Op};
use crate::error::Result;
use crate::scalar::Scalar;
use crate::tape::{Tape, Var};
use ndarray::ArrayView2;

impl<F: Scalar> Tape<F> {
    fn reduce(&mut self, op: &'static str, a: Var, mean: bool) -> Result<Var> {
        let ia = self.idx(op, a)?;
        let n = self.values[ia].len();
        let c = if mean {
            F::one() / F::of(n as f64)
        } else {
            F::one()
        };
        let s = self.values[ia].iter().fold(F::zero(), |s, &x| s + x) * c;
        let mut out = self.pool.take((1, 1));
        out[[0, 0]] = s;
        let ng = self.needs_grad[ia];
        self.push(Op::Sum(ia, c), out, ng)
    }

    /// The sum of all entries `Σ_ij a_ij`, as a 1×1 value; backward `ā_ij += ȳ`.
    ///
    /// Errors: [`crate::Error::ForeignVar`] or [`crate::Error::StaleVar`] if `a` is not a
    /// live `Var` of this tape.
    pub fn sum(&mut self, a: Var) -> Result<Var> {
        self.reduce("sum", a, false)
    }

    /// The mean of all entries `(1/n) Σ_ij a_ij` (n = rows × cols), as a 1×1 value;
    /// backward `ā_ij += ȳ / n`.
    ///
    /// Errors: [`crate::Error::ForeignVar`] or [`crate::Error::StaleVar`] if `a` is not a
    /// live `Var` of this tape.
    pub fn mean(&mut self, a: Var) -> Result<Var> {
        self.reduce("mean", a, true)
    }
}

pub(crate) fn sum_vjp<F: Scalar>(cx: &mut Ctx<'_, F>, g: ArrayView2<'_, F>, a: usize, c: F) {
    let gc = g[[0, 0]] * c;
    let values = cx.values;
    if let Some((acc, fresh)) = cx.slot(a) {
        put1(acc, fresh, values[a].view(), |_| gc);
    }
}
