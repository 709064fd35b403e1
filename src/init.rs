//! Seeded parameter initialization.

use crate::error::{invalid, Result};
use crate::scalar::Scalar;
use ndarray::Array2;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// A seeded, portable random generator (ChaCha8): the same seed gives the same numbers
/// on every platform. The cells' constructors and the ξ sampler of randomized
/// truncation draw from it.
///
/// ```
/// use timetape::init::{rng, uniform};
///
/// let a = uniform::<f64>((2, 2), 1.0, &mut rng(42))?;
/// let b = uniform::<f64>((2, 2), 1.0, &mut rng(42))?;
/// assert_eq!(a, b);
/// # Ok::<(), timetape::Error>(())
/// ```
pub fn rng(seed: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(seed)
}

/// A matrix of the given `(rows, cols)` with independent entries uniform in
/// `[−scale, scale)`, drawn in f64 row by row and converted with [`Scalar::of`].
///
/// ```
/// let w = timetape::init::uniform::<f64>((3, 4), 0.5, &mut timetape::init::rng(7))?;
/// assert!(w.iter().all(|x| x.abs() <= 0.5));
/// assert!(timetape::init::uniform::<f64>((usize::MAX, 2), 0.5, &mut timetape::init::rng(7)).is_err());
/// # Ok::<(), timetape::Error>(())
/// ```
///
/// Errors: [`Error::InvalidArgument`](crate::Error::InvalidArgument) for a `scale` that
/// is negative or not finite, or a shape whose size overflows or cannot be allocated.
pub fn uniform<F: Scalar>(
    shape: (usize, usize),
    scale: f64,
    rng: &mut impl Rng,
) -> Result<Array2<F>> {
    if !(scale >= 0.0 && scale.is_finite()) {
        return Err(invalid(
            "init::uniform",
            "scale must be non-negative and finite",
        ));
    }
    check_alloc::<F>("init::uniform", &[shape])?;
    Ok(Array2::from_shape_simple_fn(shape, || {
        F::of(scale * (2.0 * rng.random::<f64>() - 1.0))
    }))
}

/// A random n×n orthogonal matrix: Gram–Schmidt on the columns of [`uniform`]`((n, n),
/// 1, rng)`, in f64, converted with [`Scalar::of`]. Every singular value is 1, so a
/// recurrent weight started here neither shrinks nor grows the state (the usual start
/// for long dependencies).
///
/// ```
/// let q = timetape::init::orthogonal::<f64>(8, &mut timetape::init::rng(3))?;
/// let qtq = q.t().dot(&q);
/// for ((i, j), x) in qtq.indexed_iter() {
///     let want = if i == j { 1.0 } else { 0.0 };
///     assert!((x - want).abs() < 1e-12);
/// }
/// assert!(timetape::init::orthogonal::<f64>(0, &mut timetape::init::rng(3)).is_err());
/// # Ok::<(), timetape::Error>(())
/// ```
///
/// Errors: [`Error::EmptyInput`](crate::Error::EmptyInput) for n = 0;
/// [`Error::InvalidArgument`](crate::Error::InvalidArgument) for a size that cannot be
/// allocated, or (with probability zero) a draw whose columns are linearly dependent.
pub fn orthogonal<F: Scalar>(n: usize, rng: &mut impl Rng) -> Result<Array2<F>> {
    let op = "init::orthogonal";
    if n == 0 {
        return Err(crate::Error::EmptyInput {
            op,
            what: "a 0×0 matrix",
        });
    }
    let a = uniform::<f64>((n, n), 1.0, rng)?;
    let mut q = Array2::<f64>::zeros((n, n));
    for j in 0..n {
        let mut v = a.column(j).to_owned();
        for i in 0..j {
            let qi = q.column(i);
            v = &v - &(qi.dot(&v) * &qi);
        }
        let norm = v.dot(&v).sqrt();
        if !(norm > 0.0 && norm.is_finite()) {
            return Err(invalid(op, format!("column {j} of the draw is dependent")));
        }
        q.column_mut(j).assign(&(v / norm));
    }
    Ok(q.mapv(F::of))
}

/// Checks, before anything is allocated, that matrices of these shapes fit in memory
/// together: no element or byte count overflows, and the operating system grants the
/// total (reserved and released at once, never touched). A cell asked for an absurd size
/// gets an error instead of a panic in the allocator or an aborted process.
pub(crate) fn check_alloc<F>(op: &'static str, shapes: &[(usize, usize)]) -> Result<()> {
    let mut total: usize = 0;
    for &(r, c) in shapes {
        let bytes = r
            .checked_mul(c)
            .and_then(|n| n.checked_mul(std::mem::size_of::<F>()))
            .filter(|&b| b <= isize::MAX as usize)
            .and_then(|b| total.checked_add(b))
            .filter(|&b| b <= isize::MAX as usize)
            .ok_or_else(|| invalid(op, format!("a {r}×{c} matrix: its size overflows")))?;
        total = bytes;
    }
    let mut probe: Vec<u8> = Vec::new();
    probe.try_reserve_exact(total).map_err(|_| {
        invalid(
            op,
            format!("cannot allocate {total} bytes for matrices of shapes {shapes:?}"),
        )
    })?;
    Ok(())
}

/// `n · k` for a width such as 3H (GRU) or 4H (LSTM), or an error naming `op`.
pub(crate) fn times(op: &'static str, n: usize, k: usize) -> Result<usize> {
    n.checked_mul(k)
        .ok_or_else(|| invalid(op, format!("size {k}·{n} overflows")))
}

/// The `n` values `f(0), …, f(n − 1)` in a `Vec`, or an error naming `op` if room for
/// `n` values cannot be had (checked before anything is allocated: no capacity-overflow
/// panic, no aborted process).
pub(crate) fn try_collect<T>(
    op: &'static str,
    n: usize,
    f: impl FnMut(usize) -> T,
) -> Result<Vec<T>> {
    let mut v = Vec::new();
    v.try_reserve_exact(n).map_err(|_| {
        invalid(
            op,
            format!(
                "cannot allocate {n} values of {} bytes",
                std::mem::size_of::<T>()
            ),
        )
    })?;
    v.extend((0..n).map(f));
    Ok(v)
}
