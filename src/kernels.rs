//! The matrix product used by the tape's rules ([`matmul_into`] offers it to users).
//!
//! Three paths, chosen per product by shape and layout:
//! - faer's `matmul` (the `gemm` crate's kernels and, for small products, `nano-gemm`'s)
//!   for every product whose right factor is stored by rows, β ∈ {0, 1}: they read the
//!   operands in place instead of packing them, which for the products of one time step
//!   (a B×H state times an H×GH weight) saves a copy of the weight per step;
//! - a right factor stored by columns (a transposed weight, `δ Wᵀ` in a backward rule,
//!   before the rule has its copy: see `ops::PanelCopies`) goes to
//!   `matrixmultiply` (`general_mat_mul`), which packs it into tiles, or for a row vector
//!   to a dot-product loop here;
//! - what faer does not take (β outside {0, 1}) goes to plain vectorizable loops here
//!   for a row vector or an outer product, and to `matrixmultiply` otherwise.
//!
//! A right factor that a tape multiplies by again and again (a recurrent weight in the
//! forward products, its transpose in the backward rules) is copied at its third use in
//! a segment into column [`Panels`] (in the forward products only a factor of more than
//! [`PANEL_COLS`] columns) and multiplied panel by panel ([`matmul_panels_into`]), which
//! faer reads faster once the factor outgrows the core's cache.
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
    check_product("matmul_into", a.dim(), b.dim(), c.dim())?;
    let beta = match write {
        Write::Set => F::zero(),
        Write::Add => F::one(),
    };
    gemm(F::one(), &a, &b, beta, &mut c);
    Ok(())
}

/// The shapes of a product `c = a b`: inner dimensions equal, `c` m×n.
fn check_product(
    op: &'static str,
    (m, k): (usize, usize),
    (k2, n): (usize, usize),
    c: (usize, usize),
) -> Result<()> {
    if k != k2 {
        return Err(Error::ShapeMismatch {
            op,
            lhs: (m, k),
            rhs: (k2, n),
        });
    }
    if c != (m, n) {
        return Err(Error::ShapeMismatch {
            op,
            lhs: (m, n),
            rhs: c,
        });
    }
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

/// Width of the column panels of [`Panels`]: 128.
pub const PANEL_COLS: usize = 128;

/// A k×n right factor stored as contiguous k×w column panels (w = [`PANEL_COLS`], the
/// last one narrower), as the tape stores the right factor it multiplies by at every
/// step (a recurrent weight, and its transpose in the backward rules); multiply by it
/// with [`matmul_panels_into`].
///
/// faer reads a right factor stored by rows in place. One k×n matrix read a column
/// block at a time strides n entries from row to row, which the processor's prefetcher
/// follows poorly once the factor no longer fits in the core's cache (a 512×2048 f32
/// weight is 4 MiB); a k×128 panel is read front to back. Measured on the per-step
/// shapes of the standard jobs (one core, AVX-512, f32, including the copy of each
/// panel's product into place): 1.1–1.3× faster than the product on the whole factor,
/// e.g. 64×512·512×2048 97 → 123 GFLOP/s and 32×256·256×1024 118 → 141 GFLOP/s.
///
/// ```
/// use timetape::kernels::{matmul_panels_into, Panels, Write};
/// use timetape::ndarray::Array2;
///
/// let w = Array2::from_shape_fn((3, 300), |(i, j)| (i + j % 7) as f64);
/// let panels = Panels::new(w.view()); // three panels: 128, 128 and 44 columns
/// let h = Array2::from_elem((2, 3), 0.5);
/// let mut c = Array2::zeros((2, 300));
/// matmul_panels_into(h.view(), &panels, c.view_mut(), Write::Set)?;
/// assert_eq!(c, h.dot(&w));
/// # Ok::<(), timetape::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct Panels<F> {
    /// The panels one after the other (a buffer of k·n entries; its shape is not read).
    buf: ndarray::Array2<F>,
    rows: usize,
    cols: usize,
}

impl<F: Scalar> Panels<F> {
    /// The panels of `b` (a copy).
    pub fn new(b: ArrayView2<'_, F>) -> Self {
        let buf = ndarray::Array2::from_elem((1, b.len()), F::zero());
        Self::of(b, buf)
    }

    /// The shape (k, n) of the factor.
    pub fn dim(&self) -> (usize, usize) {
        (self.rows, self.cols)
    }

    /// The panels of `b`, written into `buf` (k·n entries stored as one slice, arbitrary
    /// contents; a buffer of another size is replaced).
    pub(crate) fn of(b: ArrayView2<'_, F>, mut buf: ndarray::Array2<F>) -> Self {
        let (rows, cols) = b.dim();
        if buf.len() != rows * cols || buf.as_slice().is_none() {
            buf = ndarray::Array2::from_elem((1, rows * cols), F::zero());
        }
        let mut panels = Panels { buf, rows, cols };
        for j in 0..panels.count() {
            let (c0, w) = panels.columns(j);
            let src = b.slice_axis(ndarray::Axis(1), ndarray::Slice::from(c0..c0 + w));
            let dst = panels
                .buf
                .as_slice_mut()
                .and_then(|d| d.get_mut(rows * c0..rows * (c0 + w)));
            match dst {
                Some(dst) => dst.iter_mut().zip(src.iter()).for_each(|(d, &s)| *d = s),
                None => unreachable!("the buffer holds k·n entries in one slice"),
            }
        }
        panels
    }

    /// Number of panels.
    fn count(&self) -> usize {
        self.cols.div_ceil(PANEL_COLS)
    }

    /// First column and width of panel `j`.
    fn columns(&self, j: usize) -> (usize, usize) {
        let c0 = j * PANEL_COLS;
        (c0, PANEL_COLS.min(self.cols - c0))
    }

    /// Panel `j` (of [`Panels::count`]) as a k×w matrix stored by rows.
    fn panel(&self, j: usize) -> ArrayView2<'_, F> {
        let (k, (c0, w)) = (self.rows, self.columns(j));
        let s = self
            .buf
            .as_slice()
            .and_then(|s| s.get(k * c0..k * (c0 + w)));
        match s.map(|s| ArrayView2::from_shape((k, w), s)) {
            Some(Ok(v)) => v,
            _ => unreachable!("panel j of the k·n entries is k×w"),
        }
    }

    /// Entries held.
    pub(crate) fn len(&self) -> usize {
        self.buf.len()
    }

    /// The buffer, to return it to a pool.
    pub(crate) fn into_buffer(self) -> ndarray::Array2<F> {
        self.buf
    }
}

/// The matrix product `a b` with `b` given by its [`Panels`], written into `c`: the
/// product the tape runs by a weight it multiplies by at every step (see [`Panels`]).
///
/// Errors: [`Error::ShapeMismatch`] (op `matmul_panels_into`) if the inner dimensions
/// differ or `c` is not m×n.
pub fn matmul_panels_into<F: Scalar>(
    a: ArrayView2<'_, F>,
    b: &Panels<F>,
    mut c: ArrayViewMut2<'_, F>,
    write: Write,
) -> Result<()> {
    check_product("matmul_panels_into", a.dim(), b.dim(), c.dim())?;
    let start = match write {
        Write::Set => Start::Zero,
        Write::Add => Start::Kept,
    };
    gemm_panels(&a, b, start, &mut c, &mut Vec::new());
    Ok(())
}

/// What a product by panels writes onto.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Start<'a, F> {
    /// `c = a b`.
    Zero,
    /// `c += a b`.
    Kept,
    /// `c = s + a b`, for an `s` of the shape of `c` or one row broadcast over its rows
    /// (the addend of an affine map, copied into place panel by panel, each panel's
    /// product then added onto it while both are in cache).
    From(ArrayView2<'a, F>),
}

/// `c = start + a b` with `b` given by its [`Panels`]: one product per panel, into
/// `scratch` (grown as needed) and then written into the panel's columns of `c`; a row
/// vector `a` or a single panel write into `c` directly. Shapes must agree (the callers
/// check them).
pub(crate) fn gemm_panels<F: Scalar>(
    a: &ArrayView2<'_, F>,
    b: &Panels<F>,
    start: Start<'_, F>,
    c: &mut ArrayViewMut2<'_, F>,
    scratch: &mut Vec<F>,
) {
    let m = a.nrows();
    for j in 0..b.count() {
        let (panel, (c0, w)) = (b.panel(j), b.columns(j));
        let cols = ndarray::Slice::from(c0..c0 + w);
        let mut part = c.slice_axis_mut(ndarray::Axis(1), cols);
        // The addend's columns are copied into place first; the panel's product is then
        // added onto them.
        let start = match start {
            Start::From(s) => {
                rows_into(
                    part.view_mut(),
                    s.slice_axis_move(ndarray::Axis(1), cols),
                    Write::Set,
                );
                Start::Kept
            }
            other => other,
        };
        if m == 1 || w == b.cols {
            gemm_onto(a, &panel, start, &mut part);
            continue;
        }
        if scratch.len() < m * w {
            scratch.resize(m * w, F::zero());
        }
        let mut s = match ArrayViewMut2::from_shape((m, w), &mut scratch[..m * w]) {
            Ok(s) => s,
            Err(_) => unreachable!("m·w entries are an m×w matrix"),
        };
        gemm(F::one(), a, &panel, F::zero(), &mut s);
        let write = match start {
            Start::Zero => Write::Set,
            _ => Write::Add,
        };
        rows_into(part, s.view(), write);
    }
}

/// `c = start + a b` for a right factor `b` as it is stored: the addend of
/// [`Start::From`] is copied into `c` first.
pub(crate) fn gemm_onto<F: Scalar>(
    a: &ArrayView2<'_, F>,
    b: &ArrayView2<'_, F>,
    start: Start<'_, F>,
    c: &mut ArrayViewMut2<'_, F>,
) {
    let beta = match start {
        Start::Zero => F::zero(),
        Start::Kept => F::one(),
        Start::From(s) => {
            rows_into(c.view_mut(), s, Write::Set);
            F::one()
        }
    };
    gemm(F::one(), a, b, beta, c);
}

/// `dst = src` or `dst += src`, row by row over contiguous
/// rows (the tape's buffers and their row or column ranges) without ndarray's general
/// `Zip`, which costs more than the copy for the rows of one step; a 1×n `src` is
/// broadcast over the rows of `dst` (a bias).
pub(crate) fn rows_into<F: Scalar>(
    mut dst: ArrayViewMut2<'_, F>,
    src: ArrayView2<'_, F>,
    write: Write,
) {
    let broadcast = src.nrows() == 1 && dst.nrows() != 1;
    crate::simd::vectorized(
        #[inline(always)]
        || {
            for (i, mut d) in dst.rows_mut().into_iter().enumerate() {
                let s = src.row(if broadcast { 0 } else { i });
                match (d.as_slice_mut(), s.as_slice(), write) {
                    (Some(d), Some(s), Write::Set) => d.copy_from_slice(s),
                    (Some(d), Some(s), Write::Add) => {
                        for (d, &s) in d.iter_mut().zip(s) {
                            *d = *d + s;
                        }
                    }
                    (_, _, Write::Set) => d.assign(&s),
                    (_, _, Write::Add) => d.zip_mut_with(&s, |d, &s| *d = *d + s),
                }
            }
        },
    );
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
///
/// `c` must be one slice, not a column block of a wider matrix: faer 0.24's `matmul`, on
/// gemm 0.19's AVX-512 kernels, crashes (a segmentation fault through its safe API, in
/// debug and release builds) writing a 64×512·512×128 product into the first 128
/// columns of a 64×2048 row-major matrix. The products by column panels write each
/// panel's product into a scratch buffer and copy it into place for that reason
/// ([`gemm_panels`]).
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

    /// `filled` of the given shape, stored by rows or (`by_columns`) by columns: the
    /// transpose of a row-major matrix, as a `.t()` view of a weight is.
    fn stored(shape: (usize, usize), seed: usize, by_columns: bool) -> Array2<f64> {
        if by_columns {
            filled((shape.1, shape.0), seed).reversed_axes()
        } else {
            filled(shape, seed)
        }
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
            let a_owned = stored((m, k), 1, transpose_a);
            let a = a_owned.view();
            for transpose_b in [false, true] {
                let b_owned = stored((k, n), 2, transpose_b);
                let b = b_owned.view();
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

    /// The product by column panels against ndarray's `dot`: a row vector and a 9-row
    /// left factor (written directly, or through the scratch), one panel, a whole number
    /// of panels and a narrower last one, panels of `b` and of `bᵀ`, over garbage
    /// (`Zero`), onto the current value (`Kept`), and onto an addend of the full shape
    /// or a broadcast row (`From`). Small dyadic rationals and short sums:
    /// the results are exact.
    #[test]
    fn products_by_column_panels_match_ndarray_dot() {
        let k = 37;
        for (m, n) in [
            (1, 300),
            (9, 300),
            (9, 2 * PANEL_COLS),
            (9, PANEL_COLS),
            (9, 5),
        ] {
            let a = filled((m, k), 1);
            for transposed in [false, true] {
                let b_owned = stored((k, n), 2, transposed);
                let b = b_owned.view();
                let panels = Panels::of(b, Array2::from_elem((1, k * n), f64::NAN));
                assert_eq!(panels.len(), k * n);
                let mut scratch = vec![f64::NAN; 3];
                let (full, row) = (filled((m, n), 4), filled((1, n), 5));
                let starts = [
                    Start::Zero,
                    Start::Kept,
                    Start::From(full.view()),
                    Start::From(row.view()),
                ];
                for start in starts {
                    let c0 = match start {
                        Start::Kept => filled((m, n), 3),
                        _ => Array2::from_elem((m, n), f64::NAN),
                    };
                    let mut c = c0.clone();
                    gemm_panels(&a.view(), &panels, start, &mut c.view_mut(), &mut scratch);
                    let want = match start {
                        Start::Zero => a.dot(&b),
                        Start::Kept => a.dot(&b) + &c0,
                        Start::From(s) => a.dot(&b) + s,
                    };
                    assert_eq!(c, want, "m={m} n={n} bᵀ={transposed} {start:?}");
                }
            }
        }
    }
}
