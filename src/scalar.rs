//! The floating-point types the tape runs on: `f32` and `f64`.

use ndarray::{LinalgScalar, ScalarOperand};
use num_traits::Float;
use std::fmt::{Debug, Display};
use std::iter::Sum;

/// A floating-point element type of the tape (`f32` or `f64`).
///
/// Beyond [`num_traits::Float`] and what ndarray's matrix products need, it carries
/// conversion to and from `f64` (exact to `f64`, rounded from it; used by
/// [`gradcheck`](crate::gradcheck), the closed forms and the estimators) and the `tanh`
/// kernel, so that `f32` can use a vectorizable `tanh` while `f64` keeps the exact one.
///
/// ```
/// use timetape::Scalar;
///
/// assert_eq!(<f32 as Scalar>::of(0.1), 0.1f32); // rounded to nearest
/// assert_eq!(0.1f32.as_f64(), 0.10000000149011612); // exact
/// assert_eq!(<f64 as Scalar>::tanh_kernel(0.5), 0.5f64.tanh());
/// ```
///
/// It is implemented for `f32` and `f64` only (sealed): the tape's matrix products go
/// through a kernel chosen per type.
pub trait Scalar:
    Float
    + LinalgScalar
    + ScalarOperand
    + Debug
    + Display
    + Default
    + Sum
    + Send
    + Sync
    + 'static
    + sealed::Kernel
{
    /// Converts from `f64` (rounding to nearest for `f32`).
    fn of(x: f64) -> Self;
    /// Converts to `f64` (exact).
    fn as_f64(self) -> f64;
    /// The hyperbolic tangent used by the tape's `tanh` op. For `f64` this is the exact
    /// `f64::tanh`; for `f32` it is the rational approximation used by Eigen and XLA
    /// (`generic_fast_tanh_float`), accurate to a few ulp and vectorizable.
    fn tanh_kernel(self) -> Self;
    /// The logistic sigmoid used by the tape's `sigmoid` op and the fused gates. For
    /// `f64`, `1 / (1 + e^{−x})` computed stably for both signs of x; for `f32`,
    /// `½ + ½ tanh(x/2)` on [`Scalar::tanh_kernel`] (as XLA expands the logistic), with
    /// an absolute error of a few 1e-8 and no call to `exp`.
    fn sigmoid_kernel(self) -> Self;
}

/// The per-type matrix-product kernel behind [`crate::kernels`], in a module users cannot
/// name, so that no other type implements [`Scalar`].
pub(crate) mod sealed {
    use ndarray::{ArrayView2, ArrayViewMut2};

    /// `c ← α a b + β c` by faer's kernel (the `gemm` crate's, with run-time CPU
    /// dispatch); `false`, leaving `c` untouched, when an operand has no slice layout
    /// faer takes or β is neither 0 nor 1.
    pub trait Kernel: Sized {
        fn faer_gemm(
            alpha: Self,
            a: &ArrayView2<'_, Self>,
            b: &ArrayView2<'_, Self>,
            beta: Self,
            c: &mut ArrayViewMut2<'_, Self>,
        ) -> bool;
    }

    /// Both float types take faer's kernel (through `crate::kernels::faer_gemm`).
    macro_rules! faer_kernel {
        ($($t:ty),*) => {$(
            impl Kernel for $t {
                #[inline]
                fn faer_gemm(
                    alpha: $t,
                    a: &ArrayView2<'_, $t>,
                    b: &ArrayView2<'_, $t>,
                    beta: $t,
                    c: &mut ArrayViewMut2<'_, $t>,
                ) -> bool {
                    crate::kernels::faer_gemm(alpha, a, b, beta, c)
                }
            }
        )*};
    }
    faer_kernel!(f32, f64);
}

impl Scalar for f64 {
    #[inline]
    fn of(x: f64) -> Self {
        x
    }
    #[inline]
    fn as_f64(self) -> f64 {
        self
    }
    #[inline]
    fn tanh_kernel(self) -> Self {
        self.tanh()
    }
    #[inline]
    fn sigmoid_kernel(self) -> Self {
        if self >= 0.0 {
            1.0 / (1.0 + (-self).exp())
        } else {
            let e = self.exp();
            e / (1.0 + e)
        }
    }
}

impl Scalar for f32 {
    #[inline]
    fn of(x: f64) -> Self {
        x as f32
    }
    #[inline]
    fn as_f64(self) -> f64 {
        self as f64
    }
    #[inline]
    fn tanh_kernel(self) -> Self {
        fast_tanh_f32(self)
    }
    #[inline]
    fn sigmoid_kernel(self) -> Self {
        0.5 + 0.5 * fast_tanh_f32(0.5 * self)
    }
}

/// `tanh` for `f32` as Eigen's `generic_fast_tanh_float`: clamp to ±7.9053…, then an
/// odd degree-13 polynomial over an even degree-6 one. Branch-free apart from the clamp,
/// so it vectorizes; within a few ulp of `tanh` on all of `f32` (absolute error below
/// 6e-7 on [−12, 12] in the crate's test). NaN is returned unchanged. This is
/// [`Scalar::tanh_kernel`] for `f32`.
///
/// ```
/// use timetape::scalar::fast_tanh_f32;
///
/// assert_eq!(fast_tanh_f32(0.0), 0.0);
/// assert!((fast_tanh_f32(0.5) - 0.5f32.tanh()).abs() < 1e-6);
/// assert!((fast_tanh_f32(100.0) - 1.0).abs() < 1e-6);
/// ```
// The coefficients are Eigen's, kept digit for digit.
#[allow(clippy::excessive_precision)]
#[inline]
pub fn fast_tanh_f32(x: f32) -> f32 {
    const CLAMP: f32 = 7.905_311;
    const A1: f32 = 4.893_524_6e-3;
    const A3: f32 = 6.372_619_3e-4;
    const A5: f32 = 1.485_722_4e-5;
    const A7: f32 = 5.122_297e-8;
    const A9: f32 = -8.604_671_5e-11;
    const A11: f32 = 2.000_187_9e-13;
    const A13: f32 = -2.760_768_5e-16;
    const B0: f32 = 4.893_525_2e-3;
    const B2: f32 = 2.268_434_6e-3;
    const B4: f32 = 1.185_347_1e-4;
    const B6: f32 = 1.198_258_4e-6;
    if x.is_nan() {
        return x;
    }
    let x = x.clamp(-CLAMP, CLAMP);
    let x2 = x * x;
    let mut p = A13;
    p = p * x2 + A11;
    p = p * x2 + A9;
    p = p * x2 + A7;
    p = p * x2 + A5;
    p = p * x2 + A3;
    p = p * x2 + A1;
    p *= x;
    let mut q = B6;
    q = q * x2 + B4;
    q = q * x2 + B2;
    q = q * x2 + B0;
    p / q
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fast_tanh_f32_is_within_a_few_ulp_of_exact_tanh() {
        let mut worst = 0.0f64;
        let mut x = -12.0f32;
        while x <= 12.0 {
            let exact = (x as f64).tanh();
            let err = ((fast_tanh_f32(x) as f64) - exact).abs();
            // a few ulp of f32 near |tanh| ≤ 1: 1 ulp ≤ 1.2e-7 there
            worst = worst.max(err);
            x += 1.0e-3;
        }
        assert!(worst < 6.0e-7, "worst abs error {worst}");
        assert_eq!(fast_tanh_f32(0.0), 0.0);
        assert!(fast_tanh_f32(f32::NAN).is_nan());
    }

    #[test]
    fn f32_sigmoid_kernel_is_within_the_tanh_kernel_error_of_the_exact_sigmoid() {
        // ½ + ½ tanh(x/2): half of fast_tanh_f32's bound (6e-7, above) plus the rounding
        // of the sum (½ ulp of 1, 6e-8): 3.6e-7 absolute.
        let mut x = -40.0f32;
        while x <= 40.0 {
            let exact = 1.0 / (1.0 + (-(x as f64)).exp());
            let got = <f32 as Scalar>::sigmoid_kernel(x) as f64;
            assert!((got - exact).abs() <= 3.6e-7, "x = {x}: {got} vs {exact}");
            assert!((0.0..=1.0).contains(&got), "x = {x}: {got}");
            x += 1.0e-3;
        }
        assert!(<f32 as Scalar>::sigmoid_kernel(f32::NAN).is_nan());
        // f64 keeps the exact, stable form.
        assert_eq!(<f64 as Scalar>::sigmoid_kernel(-800.0), 0.0);
        assert_eq!(<f64 as Scalar>::sigmoid_kernel(0.0), 0.5);
    }
}
