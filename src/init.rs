//! Seeded parameter initialization.

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
/// let a = uniform::<f64>((2, 2), 1.0, &mut rng(42));
/// let b = uniform::<f64>((2, 2), 1.0, &mut rng(42));
/// assert_eq!(a, b);
/// ```
pub fn rng(seed: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(seed)
}

/// A matrix of the given `(rows, cols)` with independent entries uniform in
/// `[−scale, scale)`, drawn in f64 row by row and converted with [`Scalar::of`]. It
/// does not check its arguments: a negative `scale` flips the interval.
///
/// ```
/// let w = timetape::init::uniform::<f64>((3, 4), 0.5, &mut timetape::init::rng(7));
/// assert!(w.iter().all(|x| x.abs() <= 0.5));
/// ```
pub fn uniform<F: Scalar>(shape: (usize, usize), scale: f64, rng: &mut impl Rng) -> Array2<F> {
    Array2::from_shape_simple_fn(shape, || F::of(scale * (2.0 * rng.random::<f64>() - 1.0)))
}
