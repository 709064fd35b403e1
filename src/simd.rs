//! Elementwise loops compiled for the processor they run on.
//!
//! The crate is built for the baseline of its target (SSE2 on x86-64), where a loop over
//! `f32` vectorizes four lanes wide. [`vectorized`] runs a closure inside a function
//! compiled for the widest instruction set `pulp` finds at run time (AVX-512 with the
//! `avx512` feature, else AVX2 and FMA), so that the loops inlined into it vectorize 16
//! or 8 lanes wide. The arithmetic is the same: Rust does not contract `a * b + c`
//! into a fused multiply-add, so the results are bit-identical on every path.

use pulp::{Simd, WithSimd};

/// Runs `f` compiled for the instruction set of this processor. Only what is inlined
/// into `f` (its loops, `#[inline]` helpers) gains; calls it makes stay as they are.
#[inline(always)]
pub(crate) fn vectorized<R>(f: impl FnOnce() -> R) -> R {
    struct Job<G>(G);
    impl<R, G: FnOnce() -> R> WithSimd for Job<G> {
        type Output = R;
        #[inline(always)]
        fn with_simd<S: Simd>(self, _: S) -> R {
            (self.0)()
        }
    }
    pulp::Arch::new().dispatch(Job(f))
}
