//! `Tape::set_flush_subnormals` / `RunOptions::flush_subnormals`: a subnormal adjoint is
//! set to zero before it propagates, and nothing else changes.

use ndarray::array;
use timetape::{Params, Tape};

/// `x → a = 1·x → b = 1e-20·a → c = 1e-20·b → Σ c`: the adjoint of `a` is 1e-40, below
/// f32's smallest normal number (1.2e-38), so `x̄` is 1e-40 without the flush and 0
/// with it; the adjoint of `b` (1e-20) is normal and passes unchanged either way.
#[test]
fn flush_zeroes_subnormal_adjoints_and_keeps_normal_ones() {
    let mut params = Params::<f32>::new();
    let x = params.add("x", array![[1.0f32, 2.0]]).unwrap();
    for flush in [false, true] {
        let mut tape = Tape::new();
        tape.set_flush_subnormals(flush);
        let xv = tape.param(&params, x).unwrap();
        let a = tape.scale(xv, 1.0).unwrap();
        let b = tape.scale(a, 1e-20).unwrap();
        let c = tape.scale(b, 1e-20).unwrap();
        let l = tape.sum(c).unwrap();
        let grads = tape.backward(l).unwrap();
        let g = grads.get(x).unwrap();
        let expected = if flush { 0.0 } else { 1e-40f32 };
        assert!(g.iter().all(|&v| v == expected), "flush {flush}: {g}");
        assert!(expected == 0.0 || expected < f32::MIN_POSITIVE);
    }
}
