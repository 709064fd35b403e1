//! The matrix product used by the tape's rules ([`matmul_into`] offers it to users).
//!
//! Three paths, chosen per product by shape and layout:
//! - faer's `matmul` (the `gemm` crate's kernels and, for small products, `nano-gemm`'s)
//!   for every product whose right factor is stored by rows, β ∈ {0, 1}: they read the
//!   operands in place instead of packing them, which for the products of one time step
//!   (a B×H state times an H×GH weight) saves a copy of the weight per step;
//! - a right factor stored by columns (a transposed weight, `δ Wᵀ` in a backward rule,
//!   before the rule has its row-major copy: see `ops::Transposes`) goes to
//!   `matrixmultiply` (`general_mat_mul`), which packs it into tiles, or for a row vector
//!   to a dot-product loop here;
//! - what faer does not take (β outside {0, 1}) goes to plain vectorizable loops here
//!   for a row vector or an outer product, and to `matrixmultiply` otherwise.
//!
//! Measured per shape on the AVX-512 machine of the benchmarks (`examples/bench_overhead`
//! times the whole jobs): faer is 1.1–1.4× faster than `matrixmultiply` on the per-step
//! and merged products of the standard jobs, except with a right factor stored by
//! columns, where it is 1.2–1.5× slower. Both dispatch on the processor at run time.
//! The closed forms (`crate::closed_form`) keep ndarray's own products, so that the
//! oracle and the tape share no kernel.

use crate::error::{Error, Result};
use crate::scalar::Scalar;
use ndarray::linalg::general_mat_mul;
use ndarray::{ArrayView2, ArrayViewMut2};

/// How [`matmul_into`] writes the product into its destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Write {
    /// `c = a b` (the old contents of `c` are not read).
    Set,
    /// `c += a b`.
    Add,
}

/// The matrix product `a b` by the kernel of the tape's rules, written into `c`: for
/// hand-written references and benchmarks that should run the same products as the
/// tape.
///
/// ```
/// use timetape::kernels::{matmul_into, Write};
/// use timetape::ndarray::{array, Array2};
///
/// let a = array![[1.0, 2.0], [3.0, 4.0]];
/// let mut c = Array2::from_elem((2, 2), 1.0);
/// matmul_into(a.view(), a.t(), c.view_mut(), Write::Add)?; // c += a aᵀ
/// assert_eq!(c, array![[6.0, 12.0], [12.0, 26.0]]);
/// # Ok::<(), timetape::Error>(())
/// ```
///
/// Errors: [`Error::ShapeMismatch`] (op `matmul_into`) if the inner dimensions differ or
/// `c` is not m×n.
pub fn matmul_into<F: Scalar>(
    a: ArrayView2<'_, F>,
    b: ArrayView2<'_, F>,
    mut c: ArrayViewMut2<'_, F>,
    write: Write,
) -> Result<()> {
    let op = "matmul_into";
    let ((m, k), (k2, n)) = (a.dim(), b.dim());
    if k != k2 {
        return Err(Error::ShapeMismatch {
            op,
            lhs: (m, k),
            rhs: (k2, n),
        });
    }
    if c.dim() != (m, n) {
        return Err(Error::ShapeMismatch {
            op,
            lhs: (m, n),
            rhs: c.dim(),
        });
    }
    let beta = match write {
        Write::Set => F::zero(),
        Write::Add => F::one(),
    };
    gemm(F::one(), &a, &b, beta, &mut c);
    Ok(())
}

/// `c ← α a b + β c` (with β = 0, `c` is overwritten without being read).
/// Shapes must agree (the callers check them).
pub(crate) fn gemm<F: Scalar>(
    alpha: F,
    a: &ArrayView2<'_, F>,
    b: &ArrayView2<'_, F>,
    beta: F,
    c: &mut ArrayViewMut2<'_, F>,
) {
    let done = (b.strides()[1] == 1 && b.ncols() > 1 && F::faer_gemm(alpha, a, b, beta, c))
        || row_times_rows(alpha, a, b, beta, c)
        || row_times_columns(alpha, a, b, beta, c)
        || outer(alpha, a, b, beta, c);
    if !done {
        general_mat_mul(alpha, a, b, beta, c);
    }
}

/// A row vector `a` times a `b` stored by rows: `c = β c + α Σ_p a_p b_p`, an axpy over
/// the rows of `b`. `false` (nothing written) for other shapes or layouts.
fn row_times_rows<F: Scalar>(
    alpha: F,
    a: &ArrayView2<'_, F>,
    b: &ArrayView2<'_, F>,
    beta: F,
    c: &mut ArrayViewMut2<'_, F>,
) -> bool {
    if a.nrows() != 1 || b.strides()[1] != 1 {
        return false;
    }
    let mut row = c.row_mut(0);
    let Some(cs) = row.as_slice_mut() else {
        return false;
    };
    scale(cs, beta);
    for (p, brow) in b.rows().into_iter().enumerate() {
        match brow.as_slice() {
            Some(bs) => axpy(cs, alpha * a[[0, p]], bs),
            None => unreachable!("rows of b are contiguous"),
        }
    }
    true
}

/// A row vector `a` (contiguous) times a `b` stored by columns (a transposed matrix):
/// one dot product per entry. `false` (nothing written) for other shapes or layouts.
fn row_times_columns<F: Scalar>(
    alpha: F,
    a: &ArrayView2<'_, F>,
    b: &ArrayView2<'_, F>,
    beta: F,
    c: &mut ArrayViewMut2<'_, F>,
) -> bool {
    if a.nrows() != 1 || b.strides()[0] != 1 {
        return false;
    }
    let arow = a.row(0);
    let Some(xs) = arow.as_slice() else {
        return false;
    };
    for j in 0..b.ncols() {
        let col = b.column(j);
        let d = match col.as_slice() {
            Some(ys) => dot(xs, ys),
            None => unreachable!("columns of b are contiguous"),
        };
        let cj = &mut c[[0, j]];
        *cj = if beta == F::zero() {
            alpha * d
        } else {
            beta * *cj + alpha * d
        };
    }
    true
}

/// An outer product (`a` one column, `b` one contiguous row): row i of `c` is
/// `β c_i + α a_i0 b`. `false` (nothing written) for other shapes or layouts.
fn outer<F: Scalar>(
    alpha: F,
    a: &ArrayView2<'_, F>,
    b: &ArrayView2<'_, F>,
    beta: F,
    c: &mut ArrayViewMut2<'_, F>,
) -> bool {
    if a.ncols() != 1 || b.strides()[1] != 1 || c.strides()[1] != 1 {
        return false;
    }
    let brow = b.row(0);
    let Some(bs) = brow.as_slice() else {
        return false;
    };
    for (i, mut crow) in c.rows_mut().into_iter().enumerate() {
        match crow.as_slice_mut() {
            Some(cs) => {
                scale(cs, beta);
                axpy(cs, alpha * a[[i, 0]], bs);
            }
            None => unreachable!("rows of c are contiguous"),
        }
    }
    true
}

/// A faer view of `v` if its elements form one slice in row- or column-major order.
fn faer_view<'a, T>(v: &ArrayView2<'a, T>) -> Option<faer::MatRef<'a, T>> {
    let (m, n) = v.dim();
    if let Some(s) = v.to_slice() {
        return Some(faer::MatRef::from_row_major_slice(s, m, n));
    }
    let t = (*v).reversed_axes();
    t.to_slice()
        .map(|s| faer::MatRef::from_column_major_slice(s, m, n))
}

/// `c ← α a b + β c` by faer (one thread), for β ∈ {0, 1} and operands that are single
/// slices (row-major `c`); `false`, leaving `c` untouched, otherwise.
pub(crate) fn faer_gemm<T: faer::traits::ComplexField + Copy + PartialEq>(
    alpha: T,
    a: &ArrayView2<'_, T>,
    b: &ArrayView2<'_, T>,
    beta: T,
    c: &mut ArrayViewMut2<'_, T>,
) -> bool {
    let accum = if beta == T::zero_impl() {
        faer::Accum::Replace
    } else if beta == T::one_impl() {
        faer::Accum::Add
    } else {
        return false;
    };
    let (Some(a), Some(b)) = (faer_view(a), faer_view(b)) else {
        return false;
    };
    let (m, n) = c.dim();
    let Some(cs) = c.as_slice_mut() else {
        return false;
    };
    let c = faer::MatMut::from_row_major_slice_mut(cs, m, n);
    faer::linalg::matmul::matmul(c, accum, a, b, alpha, faer::Par::Seq);
    true
}

/// `c ← β c` (β = 0 writes zeros without reading).
#[inline]
fn scale<F: Scalar>(c: &mut [F], beta: F) {
    if beta == F::zero() {
        c.fill(F::zero());
    } else if beta != F::one() {
        c.iter_mut().for_each(|x| *x = beta * *x);
    }
}

/// `c ← c + α x`.
#[inline]
fn axpy<F: Scalar>(c: &mut [F], alpha: F, x: &[F]) {
    for (c, &x) in c.iter_mut().zip(x) {
        *c = *c + alpha * x;
    }
}

/// `Σ x_i y_i` with eight independent partial sums, so that the loop vectorizes.
#[inline]
fn dot<F: Scalar>(x: &[F], y: &[F]) -> F {
    let mut acc = [F::zero(); 8];
    let (xc, yc) = (x.chunks_exact(8), y.chunks_exact(8));
    let (xr, yr) = (xc.remainder(), yc.remainder());
    for (xs, ys) in xc.zip(yc) {
        for ((a, &x), &y) in acc.iter_mut().zip(xs).zip(ys) {
            *a = *a + x * y;
        }
    }
    let mut s = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
    for (&x, &y) in xr.iter().zip(yr) {
        s = s + x * y;
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array2;

    fn filled(shape: (usize, usize), seed: usize) -> Array2<f64> {
        Array2::from_shape_fn(shape, |(i, j)| {
            (((i * 7 + j * 13 + seed * 3) % 11) as f64 - 5.0) / 4.0
        })
    }

    /// Every branch (row vector with contiguous or transposed b, outer product, faer for
    /// β ∈ {0, 1} and b stored by rows, matrixmultiply otherwise) against ndarray's `dot`,
    /// for β = 0 (over garbage), 1 and 0.5, and a stored by rows and by columns. The inputs are small
    /// dyadic rationals and the sums short, so the results are exact.
    #[test]
    fn gemm_matches_ndarray_dot_on_every_branch() {
        let cases = [
            (1, 5, 4),
            (1, 1, 3),
            (4, 1, 3),
            (3, 4, 2),
            (1, 6, 1),
            (5, 1, 1),
            (17, 33, 9),
            (40, 70, 50),
        ];
        for (&(m, k, n), transpose_a) in cases.iter().flat_map(|c| [(c, false), (c, true)]) {
            let a_owned = if transpose_a {
                filled((k, m), 1)
            } else {
                filled((m, k), 1)
            };
            let a = if transpose_a {
                a_owned.t()
            } else {
                a_owned.view()
            };
            for transpose_b in [false, true] {
                let b_owned = if transpose_b {
                    filled((n, k), 2)
                } else {
                    filled((k, n), 2)
                };
                let b = if transpose_b {
                    b_owned.t()
                } else {
                    b_owned.view()
                };
                for beta in [0.0, 1.0, 0.5] {
                    let c0 = if beta == 0.0 {
                        Array2::from_elem((m, n), f64::NAN)
                    } else {
                        filled((m, n), 3)
                    };
                    let mut c = c0.clone();
                    gemm(2.0, &a, &b, beta, &mut c.view_mut());
                    let want = if beta == 0.0 {
                        a.dot(&b) * 2.0
                    } else {
                        a.dot(&b) * 2.0 + &c0 * beta
                    };
                    assert_eq!(
                        c, want,
                        "m={m} k={k} n={n} aᵀ={transpose_a} bᵀ={transpose_b} beta={beta}"
                    );
                }
            }
        }
    }
}
