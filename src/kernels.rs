//! The matrix product used by the tape's rules and by the hand-written reference.
//!
//! `general_mat_mul` (matrixmultiply) packs its operands into tiles, which pays off for
//! large products but costs more than the arithmetic for the thin ones of a recurrent
//! network with a batch of one: a row vector times a matrix (`h W`, `δ Wᵀ`) or an outer
//! product (`hᵀ r`, a gradient contribution of one step). Those go through plain
//! vectorizable loops here; everything else through `general_mat_mul`.

use crate::scalar::Scalar;
use ndarray::linalg::general_mat_mul;
use ndarray::{ArrayView2, ArrayViewMut2};

/// `c ← α a b + β c` (with β = 0, `c` is overwritten without being read).
/// Shapes must agree (the callers check them).
pub(crate) fn gemm<F: Scalar>(
    alpha: F,
    a: &ArrayView2<'_, F>,
    b: &ArrayView2<'_, F>,
    beta: F,
    c: &mut ArrayViewMut2<'_, F>,
) {
    let (m, k) = a.dim();
    let n = b.ncols();
    if m == 1 && b.strides()[1] == 1 && c.strides()[1] == 1 {
        // c = β c + α Σ_p a_p b_p: axpy over the contiguous rows of b.
        let mut row = c.row_mut(0);
        let Some(cs) = row.as_slice_mut() else {
            return general_mat_mul(alpha, a, b, beta, c);
        };
        scale(cs, beta);
        for (p, brow) in b.rows().into_iter().enumerate() {
            match brow.as_slice() {
                Some(bs) => axpy(cs, alpha * a[[0, p]], bs),
                None => unreachable!("rows of b are contiguous"),
            }
        }
    } else if m == 1 && b.strides()[0] == 1 && a.strides()[1] == 1 {
        // b's columns are contiguous (a transposed matrix): one dot product per entry.
        let arow = a.row(0);
        let Some(xs) = arow.as_slice() else {
            return general_mat_mul(alpha, a, b, beta, c);
        };
        for j in 0..n {
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
    } else if k == 1 && b.strides()[1] == 1 && c.strides()[1] == 1 {
        // An outer product: row i of c is β c_i + α a_i0 · b's only row.
        let brow = b.row(0);
        let Some(bs) = brow.as_slice() else {
            return general_mat_mul(alpha, a, b, beta, c);
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
    } else {
        general_mat_mul(alpha, a, b, beta, c);
    }
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

    /// Every branch (row vector with contiguous or transposed b, outer product, general)
    /// against ndarray's `dot`, for β = 0 (over garbage), 1 and 0.5. The inputs are small
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
        ];
        for &(m, k, n) in &cases {
            for transpose_b in [false, true] {
                let a = filled((m, k), 1);
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
                    gemm(2.0, &a.view(), &b, beta, &mut c.view_mut());
                    let want = if beta == 0.0 {
                        a.dot(&b) * 2.0
                    } else {
                        a.dot(&b) * 2.0 + &c0 * beta
                    };
                    assert_eq!(
                        c, want,
                        "m={m} k={k} n={n} transposed={transpose_b} beta={beta}"
                    );
                }
            }
        }
    }
}
