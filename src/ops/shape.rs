//! Concatenation and slicing along rows or columns (gates of GRU/LSTM cells; stacking
//! the steps of a segment so that a projection is one matrix product).
//!
//! | op | forward | backward |
//! |---|---|---|
//! | `concat_cols([a, b, …])` | `[a b …]` | each parent += its block of `ȳ` |
//! | `slice_cols(a, r)` | `a[:, r]` | `ā[:, r] += ȳ` |
//!
//! and the same along rows.

use super::{put1, Ctx, Op};
use crate::error::{Error, Result};
use crate::scalar::Scalar;
use crate::tape::{Tape, Var};
use ndarray::{ArrayView2, Axis, Slice};
use std::ops::Range;

/// The direction of a concatenation or a slice: along rows or along columns (named so
/// as not to collide with `ndarray::Axis`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Along {
    /// Along rows (stacking vertically; a batch or time dimension).
    Rows,
    /// Along columns (stacking horizontally; features, gates).
    Cols,
}

impl Along {
    fn nd(self) -> Axis {
        match self {
            Along::Rows => Axis(0),
            Along::Cols => Axis(1),
        }
    }
}

impl<F: Scalar> Tape<F> {
    /// Concatenation of `parts` along `axis` (a copy); backward: each part receives its
    /// block of `ȳ`. A part may appear more than once.
    ///
    /// ```
    /// use ndarray::array;
    /// use timetape::{Along, Tape};
    ///
    /// let mut tape = Tape::<f64>::new();
    /// let a = tape.constant(array![[1.0], [2.0]])?;
    /// let b = tape.constant(array![[3.0, 4.0], [5.0, 6.0]])?;
    /// let ab = tape.concat(&[a, b], Along::Cols)?;
    /// assert_eq!(tape.value(ab)?, array![[1.0, 3.0, 4.0], [2.0, 5.0, 6.0]]);
    /// let b1 = tape.slice(ab, Along::Cols, 2..3)?;
    /// assert_eq!(tape.value(b1)?, array![[4.0], [6.0]]);
    /// # Ok::<(), timetape::Error>(())
    /// ```
    ///
    /// Errors: [`Error::EmptyInput`] for no parts; [`Error::ShapeMismatch`] if the other
    /// dimension differs between parts; [`Error::ForeignVar`] or [`Error::StaleVar`] for
    /// a `Var` that is not a live `Var` of this tape.
    pub fn concat(&mut self, parts: &[Var], axis: Along) -> Result<Var> {
        let op = "concat";
        let Some(&first) = parts.first() else {
            return Err(Error::EmptyInput {
                op,
                what: "no parts",
            });
        };
        let s0 = self.values[self.idx(op, first)?].dim();
        let ax = axis.nd();
        let mut extent = 0;
        let mut ng = false;
        let start = self.side.lists.len();
        for &p in parts {
            let i = self.idx(op, p)?;
            let s = self.values[i].dim();
            let same_other = match axis {
                Along::Rows => s.1 == s0.1,
                Along::Cols => s.0 == s0.0,
            };
            if !same_other {
                self.side.lists.truncate(start);
                return Err(Error::ShapeMismatch {
                    op,
                    lhs: s0,
                    rhs: s,
                });
            }
            extent += self.values[i].len_of(ax);
            ng |= self.needs_grad[i];
            self.side.lists.push(i);
        }
        let shape = match axis {
            Along::Rows => (extent, s0.1),
            Along::Cols => (s0.0, extent),
        };
        let mut out = self.pool.take(shape);
        let mut at = 0;
        for &p in &self.side.lists[start..] {
            let v = &self.values[p];
            let n = v.len_of(ax);
            out.slice_axis_mut(ax, Slice::from(at..at + n)).assign(v);
            at += n;
        }
        let len = parts.len();
        self.push(Op::Concat { axis, start, len }, out, ng)
    }

    /// `[a b …]`: [`Tape::concat`] along columns (the parts side by side; all have B rows).
    ///
    /// Errors: as [`Tape::concat`].
    pub fn concat_cols(&mut self, parts: &[Var]) -> Result<Var> {
        self.concat(parts, Along::Cols)
    }

    /// [`Tape::concat`] along rows (the parts stacked; all have n columns).
    ///
    /// Errors: as [`Tape::concat`].
    pub fn concat_rows(&mut self, parts: &[Var]) -> Result<Var> {
        self.concat(parts, Along::Rows)
    }

    /// The rows or columns `range` of `a` (a copy); backward `ā[range] += ȳ` along
    /// `axis`, zero elsewhere.
    ///
    /// Errors: [`Error::InvalidArgument`] for an empty or out-of-bounds range;
    /// [`Error::ForeignVar`] or [`Error::StaleVar`] for a `Var` that is not a live `Var`
    /// of this tape.
    pub fn slice(&mut self, a: Var, axis: Along, range: Range<usize>) -> Result<Var> {
        let op = "slice";
        let ia = self.idx(op, a)?;
        let ax = axis.nd();
        let n = self.values[ia].len_of(ax);
        if range.start >= range.end || range.end > n {
            return Err(crate::error::invalid(
                op,
                format!("range {range:?} does not fit an extent of {n}"),
            ));
        }
        let src = self.values[ia].slice_axis(ax, Slice::from(range.clone()));
        let mut out = self.pool.take(src.dim());
        super::rows_into(out.view_mut(), src, crate::kernels::Write::Set);
        let ng = self.needs_grad[ia];
        self.push(
            Op::Slice {
                axis,
                parent: ia,
                start: range.start,
            },
            out,
            ng,
        )
    }

    /// Columns `range` of `a`: [`Tape::slice`] along columns.
    ///
    /// Errors: as [`Tape::slice`].
    pub fn slice_cols(&mut self, a: Var, range: Range<usize>) -> Result<Var> {
        self.slice(a, Along::Cols, range)
    }

    /// Rows `range` of `a`: [`Tape::slice`] along rows.
    ///
    /// Errors: as [`Tape::slice`].
    pub fn slice_rows(&mut self, a: Var, range: Range<usize>) -> Result<Var> {
        self.slice(a, Along::Rows, range)
    }
}

pub(crate) fn concat_vjp<F: Scalar>(
    cx: &mut Ctx<'_, F>,
    g: ArrayView2<'_, F>,
    axis: Along,
    parents: &[usize],
) {
    let ax = axis.nd();
    let mut at = 0;
    for &p in parents {
        let n = cx.values[p].len_of(ax);
        if let Some((acc, fresh)) = cx.slot(p) {
            put1(acc, fresh, g.slice_axis(ax, Slice::from(at..at + n)), |g| g);
        }
        at += n;
    }
}

pub(crate) fn slice_vjp<F: Scalar>(
    cx: &mut Ctx<'_, F>,
    g: ArrayView2<'_, F>,
    axis: Along,
    parent: usize,
    start: usize,
) {
    let ax = axis.nd();
    if let Some((acc, fresh)) = cx.slot(parent) {
        if fresh {
            acc.fill(F::zero());
        }
        let n = g.len_of(ax);
        let part = acc.slice_axis_mut(ax, Slice::from(start..start + n));
        super::rows_into(part, g, crate::kernels::Write::Add);
    }
}
