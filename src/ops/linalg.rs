//! Matrix product and transpose.
//!
//! | op | forward | backward |
//! |---|---|---|
//! | `matmul(A, B)` | `C = A B` | `Ā += C̄ Bᵀ`, `B̄ += Aᵀ C̄` |
//! | `transpose(A)` | `C = Aᵀ` | `Ā += C̄ᵀ` |
//!
//! The matmul rule is two matrix products (`kernels::gemm`: `general_mat_mul`, or a plain
//! loop for a row vector or an outer product) into the adjoint buffers with `.t()`
//! views (β = 0 on the first contribution, 1 after): no temporaries.

use super::{put1, rows_into, Ctx, Op};
use crate::error::{Error, Result};
use crate::kernels::{gemm_onto, gemm_panels, Start, Write, PANEL_COLS};
use crate::scalar::Scalar;
use crate::tape::{Tape, Var};
use ndarray::{Array2, ArrayView2, Axis, Slice};

/// Rows `range` of the matrix `var`, as the addend of [`Tape::affine_rows`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowsOf(pub Var, pub std::ops::Range<usize>);

/// [`Error::InvalidArgument`] naming `op` unless `rows` is a range of a matrix of
/// `nrows` rows (the rows of a [`RowsOf`]).
pub(crate) fn check_rows(
    op: &'static str,
    rows: &std::ops::Range<usize>,
    nrows: usize,
) -> Result<()> {
    if rows.end > nrows || rows.start > rows.end {
        let what = format!("rows {rows:?} outside a matrix of {nrows} rows");
        return Err(crate::error::invalid(op, what));
    }
    Ok(())
}

impl<F: Scalar> Tape<F> {
    /// Matrix product `a b` of an m×k and a k×n matrix.
    ///
    /// Errors: [`Error::ShapeMismatch`] if the inner dimensions differ.
    pub fn matmul(&mut self, a: Var, b: Var) -> Result<Var> {
        let (ia, ib, (m, n)) = self.factors("matmul", a, b)?;
        let mut out = self.pool.take((m, n));
        self.product(ia, ib, None, &mut out);
        let ng = self.needs_grad[ia] || self.needs_grad[ib];
        self.push(Op::MatMul(ia, ib), out, ng)
    }

    /// The nodes of the factors of a product `a b`, an m×k and a k×n matrix, and (m, n).
    fn factors(&self, op: &'static str, a: Var, b: Var) -> Result<(usize, usize, (usize, usize))> {
        let (ia, ib) = (self.idx(op, a)?, self.idx(op, b)?);
        let ((m, k), (k2, n)) = (self.values[ia].dim(), self.values[ib].dim());
        if k != k2 {
            return Err(Error::ShapeMismatch {
                op,
                lhs: (m, k),
                rhs: (k2, n),
            });
        }
        Ok((ia, ib, (m, n)))
    }

    /// `out = c + a b` for nodes `a`, `b` and the addend `c` of an affine map (none for
    /// a plain product): [`product_into`].
    fn product(&mut self, a: usize, b: usize, c: Option<(usize, Addend)>, out: &mut Array2<F>) {
        let m = out.nrows();
        let src = c.map(|(ic, mode)| {
            let vc = self.values[ic].view();
            match mode {
                Addend::Full | Addend::Row => vc,
                Addend::Rows(s) => vc.slice_axis_move(Axis(0), Slice::from(s..s + m)),
            }
        });
        let start = src.map_or(Start::Zero, Start::From);
        let (va, vb) = (self.values[a].view(), self.values[b].view());
        let f = Factor {
            panels: &mut self.panels,
            pool: &mut self.pool,
            scratch: &mut self.panel_scratch,
        };
        product_into(f, va, (b, vb), start, out);
    }

    /// Transpose `aᵀ` (a copy).
    pub fn transpose(&mut self, a: Var) -> Result<Var> {
        let ia = self.idx("transpose", a)?;
        let (m, n) = self.values[ia].dim();
        let mut out = self.pool.take((n, m));
        out.assign(&self.values[ia].t());
        let ng = self.needs_grad[ia];
        self.push(Op::Transpose(ia), out, ng)
    }
}

/// The tape's parts a forward product writes besides its output (see [`product_into`]).
pub(crate) struct Factor<'t, F> {
    pub(crate) panels: &'t mut super::PanelCopies<F>,
    pub(crate) pool: &'t mut crate::tape::Pool<F>,
    pub(crate) scratch: &'t mut Vec<F>,
}

/// `out = start + a b` for a left factor `a` and node `b` of value `vb`, reading `b`
/// from its column panels once it has them (a right factor of more than [`PANEL_COLS`]
/// columns used again and again: see `ops::PanelCopies`), which also writes an addend
/// panel by panel, just before the panel's product is added onto it.
pub(crate) fn product_into<F: Scalar>(
    f: Factor<'_, F>,
    a: ArrayView2<'_, F>,
    (b, vb): (usize, ArrayView2<'_, F>),
    start: Start<'_, F>,
    out: &mut Array2<F>,
) {
    let panels = (vb.ncols() > PANEL_COLS)
        .then(|| f.panels.note_use(b, vb, f.pool))
        .flatten();
    match panels {
        Some(p) => gemm_panels(&a, p, start, &mut out.view_mut(), f.scratch),
        None => gemm_onto(&a, &vb, start, &mut out.view_mut()),
    }
}

pub(crate) fn matmul_vjp<F: Scalar>(cx: &mut Ctx<'_, F>, g: ArrayView2<'_, F>, a: usize, b: usize) {
    cx.add_r_bt(a, g, b);
    cx.add_at_b(b, cx.values[a].view(), g);
}

pub(crate) fn transpose_vjp<F: Scalar>(cx: &mut Ctx<'_, F>, g: ArrayView2<'_, F>, a: usize) {
    if let Some((acc, fresh)) = cx.slot(a) {
        put1(acc, fresh, g.t(), |g| g);
    }
}

/// How the addend `c` of [`Tape::affine`] enters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Addend {
    /// Same shape as `a b`.
    Full,
    /// A 1×n row broadcast over the rows of `a b` (a bias).
    Row,
    /// Rows `start .. start + m` of a taller matrix (one step of a segment's projection).
    Rows(usize),
}

impl<F: Scalar> Tape<F> {
    /// The fused affine op `y = φ(a b + c)`: one matrix product accumulated onto the
    /// addend, then the activation in place. `c` may have the shape of `a b` or be a 1×n
    /// row broadcast over its rows (a bias); `None` means no addend.
    ///
    /// | forward | backward, with `r = ȳ ⊙ φ′(y)` |
    /// |---|---|
    /// | `y = φ(a b + c)` | `ā += r bᵀ`, `b̄ += aᵀ r`, `c̄ += r` (column sums for a row) |
    ///
    /// It records one node where `matmul`, `add` and an activation would record three,
    /// and keeps one buffer where they would keep three.
    ///
    /// ```
    /// use ndarray::array;
    /// use timetape::{Activation, Tape};
    ///
    /// let mut tape = Tape::<f64>::new();
    /// let x = tape.constant(array![[1.0, 2.0]])?;
    /// let w = tape.constant(array![[1.0], [-1.0]])?;
    /// let b = tape.constant(array![[0.5]])?;
    /// let y = tape.affine(x, w, Some(b), Activation::Relu)?; // max(1 − 2 + 0.5, 0)
    /// assert_eq!(tape.value(y)?[[0, 0]], 0.0);
    /// # Ok::<(), timetape::Error>(())
    /// ```
    ///
    /// Errors: [`Error::ShapeMismatch`] if `a b` is not defined or `c` fits neither way.
    pub fn affine(
        &mut self,
        a: Var,
        b: Var,
        c: Option<Var>,
        act: super::Activation,
    ) -> Result<Var> {
        let addend = match c {
            None => None,
            Some(c) => {
                let ic = self.idx("affine", c)?;
                let (ia, ib) = (self.idx("affine", a)?, self.idx("affine", b)?);
                let shape = (self.values[ia].nrows(), self.values[ib].ncols());
                let sc = self.values[ic].dim();
                let mode = if sc == shape {
                    Addend::Full
                } else if sc == (1, shape.1) {
                    Addend::Row
                } else {
                    return Err(Error::ShapeMismatch {
                        op: "affine",
                        lhs: shape,
                        rhs: sc,
                    });
                };
                Some((ic, mode))
            }
        };
        self.affine_impl(a, b, addend, act)
    }

    /// `y = φ(a b + c[rows])`: [`Tape::affine`] with the addend read from the given rows
    /// of a taller matrix, without copying them out first. This is one step of a
    /// recurrent layer whose input projection was computed for a whole segment at once.
    ///
    /// ```
    /// use ndarray::array;
    /// use timetape::ops::RowsOf;
    /// use timetape::{Activation, Tape};
    ///
    /// let mut tape = Tape::<f64>::new();
    /// let h = tape.constant(array![[1.0, 2.0]])?;
    /// let w = tape.constant(array![[1.0, 0.0], [0.0, 1.0]])?;
    /// let u = tape.constant(array![[0.0, 0.0], [10.0, 20.0], [30.0, 40.0]])?;
    /// let y = tape.affine_rows(h, w, RowsOf(u, 1..2), Activation::Identity)?;
    /// assert_eq!(tape.value(y)?, array![[11.0, 22.0]]);
    /// # Ok::<(), timetape::Error>(())
    /// ```
    ///
    /// Errors: [`Error::ShapeMismatch`] if `a b` is not defined, the range does not have
    /// `a`'s number of rows, or `c` has the wrong width; [`Error::InvalidArgument`] for a
    /// range outside `c`.
    pub fn affine_rows(
        &mut self,
        a: Var,
        b: Var,
        c: RowsOf,
        act: super::Activation,
    ) -> Result<Var> {
        let op = "affine_rows";
        let RowsOf(c, rows) = c;
        let (ia, ib, ic) = (self.idx(op, a)?, self.idx(op, b)?, self.idx(op, c)?);
        let shape = (self.values[ia].nrows(), self.values[ib].ncols());
        let sc = self.values[ic].dim();
        check_rows(op, &rows, sc.0)?;
        if (rows.end - rows.start, sc.1) != shape {
            return Err(Error::ShapeMismatch {
                op,
                lhs: shape,
                rhs: (rows.end - rows.start, sc.1),
            });
        }
        self.affine_impl(a, b, Some((ic, Addend::Rows(rows.start))), act)
    }

    fn affine_impl(
        &mut self,
        a: Var,
        b: Var,
        c: Option<(usize, Addend)>,
        act: super::Activation,
    ) -> Result<Var> {
        let (ia, ib, (m, n)) = self.factors("affine", a, b)?;
        let mut out = self.pool.take((m, n));
        self.product(ia, ib, c, &mut out);
        if act != super::Activation::Identity {
            match out.as_slice_mut() {
                Some(xs) => act.apply_in_place(xs),
                None => out.mapv_inplace(|x| act.apply(x)),
            }
        }
        let ng = self.needs_grad[ia]
            || self.needs_grad[ib]
            || c.is_some_and(|(ic, _)| self.needs_grad[ic]);
        self.push(
            Op::Affine {
                a: ia,
                b: ib,
                c,
                act,
            },
            out,
            ng,
        )
    }
}

pub(crate) fn affine_vjp<F: Scalar>(
    cx: &mut Ctx<'_, F>,
    g: ArrayView2<'_, F>,
    y: ArrayView2<'_, F>,
    a: usize,
    b: usize,
    c: Option<(usize, Addend)>,
    act: super::Activation,
) {
    // r = ȳ ⊙ φ′(y), in a scratch buffer unless φ is the identity.
    let scratch = (act != super::Activation::Identity).then(|| {
        let mut r = cx.scratch(g.dim());
        match (r.as_slice_mut(), g.as_slice(), y.as_slice()) {
            (Some(rs), Some(gs), Some(ys)) => act.times_derivative(rs, gs, ys),
            _ => ndarray::Zip::from(&mut r)
                .and(&g)
                .and(&y)
                .for_each(|r, &g, &y| *r = g * act.derivative_at_output(y)),
        }
        r
    });
    match scratch {
        Some(r) => {
            affine_contributions(cx, r.view(), a, b, c);
            cx.recycle(r);
        }
        None => affine_contributions(cx, g, a, b, c),
    }
}

/// `c̄ += Σ_i r_i`, the column sums of `r`, for a 1×n row `c` broadcast over the rows of
/// `r` (a bias).
pub(crate) fn add_column_sums<F: Scalar>(cx: &mut Ctx<'_, F>, c: usize, r: ArrayView2<'_, F>) {
    if let Some((acc, fresh)) = cx.slot(c) {
        if fresh {
            acc.fill(F::zero());
        }
        for rr in r.rows() {
            rows_into(acc.view_mut(), rr.insert_axis(Axis(0)), Write::Add);
        }
    }
}

/// The three contributions of the affine rule, given `r = ȳ ⊙ φ′(y)`.
fn affine_contributions<F: Scalar>(
    cx: &mut Ctx<'_, F>,
    r: ArrayView2<'_, F>,
    a: usize,
    b: usize,
    c: Option<(usize, Addend)>,
) {
    match c {
        Some((ic, Addend::Rows(s))) => {
            if let Some((part, fresh)) = cx.rows_slot(ic, s..s + r.nrows()) {
                rows_into(part, r, if fresh { Write::Set } else { Write::Add });
            }
        }
        Some((ic, Addend::Full)) => {
            if let Some((acc, fresh)) = cx.slot(ic) {
                put1(acc, fresh, r, |r| r);
            }
        }
        Some((ic, Addend::Row)) => add_column_sums(cx, ic, r),
        None => {}
    }
    cx.add_r_bt(a, r, b);
    cx.add_at_b(b, cx.values[a].view(), r);
}

#[cfg(test)]
mod tests {
    use crate::{Params, Tape};
    use ndarray::Array2;

    fn small_ints(shape: (usize, usize), seed: usize) -> Array2<f64> {
        Array2::from_shape_fn(shape, |(i, j)| ((i * 5 + j * 3 + seed) % 7) as f64 - 3.0)
    }

    /// A weight used by six products and twelve affine maps (with a bias row, and with
    /// a step's rows of a taller addend): the first two uses in each direction read `W`
    /// (or `Wᵀ`) itself, the later ones its column panels (`PanelCopies`), for a weight
    /// of one panel and of three (the last narrower), and a batch of one row (written in
    /// place) or of nine (through the scratch). With small integers every product is
    /// exact, so each value must equal `x_t W` (+ the addend) and each x̄_t `3 · 1 Wᵀ`
    /// to the last bit, as must W̄ = 3 Σ_t x_tᵀ 1 and ū = 1.
    #[test]
    fn products_through_the_panel_copies_of_a_weight_are_exact() -> crate::Result<()> {
        let steps = 6;
        for (b, k, n) in [(4, 9, 6), (9, 37, 300), (1, 37, 300)] {
            let mut params = Params::<f64>::new();
            let w_value = small_ints((k, n), 1);
            let bias_value = small_ints((1, n), 5);
            let u_value = small_ints((steps * b, n), 6);
            let w = params.add("W", w_value.clone())?;
            let bias = params.add("b", bias_value.clone())?;
            let mut tape = Tape::new();
            let (wv, bv) = (tape.param(&params, w)?, tape.param(&params, bias)?);
            let u = tape.variable(u_value.view())?;
            let mut xs = Vec::new();
            let mut total = None;
            for t in 0..steps {
                let x_value = small_ints((b, k), t + 2);
                let x = tape.variable(x_value.view())?;
                let y = tape.matmul(x, wv)?;
                let z = tape.affine(x, wv, Some(bv), crate::Activation::Identity)?;
                let rows = super::RowsOf(u, t * b..(t + 1) * b);
                let v = tape.affine_rows(x, wv, rows, crate::Activation::Identity)?;
                let xw = x_value.dot(&w_value);
                assert_eq!(tape.value(y)?, xw);
                assert_eq!(tape.value(z)?, &xw + &bias_value);
                let u_t =
                    u_value.slice_axis(ndarray::Axis(0), ndarray::Slice::from(t * b..(t + 1) * b));
                assert_eq!(tape.value(v)?, &xw + &u_t);
                let (sy, sz, sv) = (tape.sum(y)?, tape.sum(z)?, tape.sum(v)?);
                let s = tape.add(sy, sz)?;
                let s = tape.add(s, sv)?;
                total = Some(match total {
                    None => s,
                    Some(acc) => tape.add(acc, s)?,
                });
                xs.push(x);
            }
            // The copies were made (so the later products went through them).
            let forward_copy = if n > crate::kernels::PANEL_COLS {
                k * n
            } else {
                0
            };
            assert_eq!(tape.panels.len(), forward_copy, "b={b} n={n}");
            let loss = total.expect("steps > 0");
            let grads = tape.backward(loss)?;
            assert_eq!(tape.transposes.len(), k * n, "b={b} n={n}");
            let ones = Array2::<f64>::ones((b, n));
            let want_x = ones.dot(&w_value.t()) * 3.0;
            for &x in &xs {
                assert_eq!(tape.adjoint(x)?, Some(want_x.view()), "b={b} n={n}");
            }
            let mut want_w = Array2::<f64>::zeros((k, n));
            for t in 0..steps {
                want_w = want_w + small_ints((b, k), t + 2).t().dot(&ones) * 3.0;
            }
            let want_u = Array2::<f64>::ones((steps * b, n));
            assert_eq!(tape.adjoint(u)?, Some(want_u.view()), "b={b} n={n}");
            assert_eq!(grads.get(w)?, want_w, "b={b} n={n}");
        }
        Ok(())
    }
}
