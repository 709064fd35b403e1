//! Rows of a table picked by integer ids: an embedding lookup, so that character and word
//! models need no one-hot matrices.
//!
//! | op | forward | backward |
//! |---|---|---|
//! | `gather_rows(E, ids)` | `y_r = E[ids_r, :]` | `Ē[ids_r, :] += ȳ_r` for every r (scatter-add: a repeated id sums its rows) |

use super::{Ctx, Op};
use crate::error::{Error, Result};
use crate::scalar::Scalar;
use crate::tape::{Tape, Var};
use ndarray::ArrayView2;

impl<F: Scalar> Tape<F> {
    /// The rows `ids` of `table` (V×E), stacked: an n×E matrix whose row r is
    /// `table[ids[r], :]` — an embedding lookup. Its backward pass scatter-adds: the
    /// adjoint of row `ids[r]` of the table receives row r of the output's adjoint, so a
    /// repeated id receives the sum of its rows.
    ///
    /// ```
    /// use ndarray::array;
    /// use timetape::{Params, Tape};
    ///
    /// let mut params = Params::<f64>::new();
    /// let e = params.add("E", array![[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])?;
    /// let mut tape = Tape::new();
    /// let table = tape.param(&params, e)?;
    /// let y = tape.gather_rows(table, &[2, 0, 2])?;
    /// assert_eq!(tape.value(y)?, array![[5.0, 6.0], [1.0, 2.0], [5.0, 6.0]]);
    /// let loss = tape.sum(y)?;
    /// let grads = tape.backward(loss)?;
    /// // id 2 appears twice, id 1 never
    /// assert_eq!(grads.get(e).unwrap(), array![[1.0, 1.0], [0.0, 0.0], [2.0, 2.0]]);
    /// # Ok::<(), timetape::Error>(())
    /// ```
    ///
    /// Errors: [`Error::EmptyInput`] for no ids; [`Error::LabelOutOfRange`] for an id ≥ V
    /// (the number of rows of the table); [`Error::ForeignVar`] or [`Error::StaleVar`]
    /// for a `Var` that is not a live `Var` of this tape.
    pub fn gather_rows(&mut self, table: Var, ids: &[usize]) -> Result<Var> {
        let op = "gather_rows";
        let it = self.idx(op, table)?;
        if ids.is_empty() {
            return Err(Error::EmptyInput { op, what: "no ids" });
        }
        let (rows, cols) = self.values[it].dim();
        if let Some(&label) = ids.iter().find(|&&i| i >= rows) {
            return Err(Error::LabelOutOfRange {
                op,
                label,
                classes: rows,
            });
        }
        let mut out = self.pool.take((ids.len(), cols));
        let src = &self.values[it];
        for (mut row, &id) in out.rows_mut().into_iter().zip(ids) {
            row.assign(&src.row(id));
        }
        let start = self.side.labels.len();
        self.side.labels.extend_from_slice(ids);
        let ng = self.needs_grad[it];
        self.push(
            Op::GatherRows {
                table: it,
                ids: start,
            },
            out,
            ng,
        )
    }
}

/// `Ē[ids_r, :] += ȳ_r`: the first contribution zero-fills the table's adjoint (rows no
/// id picks receive nothing), then every output row is added to its id's row.
pub(crate) fn gather_rows_vjp<F: Scalar>(
    cx: &mut Ctx<'_, F>,
    g: ArrayView2<'_, F>,
    table: usize,
    ids: &[usize],
) {
    if let Some((acc, fresh)) = cx.slot(table) {
        if fresh {
            acc.fill(F::zero());
        }
        for (gr, &id) in g.rows().into_iter().zip(ids) {
            let mut dst = acc.row_mut(id);
            dst.zip_mut_with(&gr, |a, &b| *a = *a + b);
        }
    }
}
