//! The cost of `Stream::push` does not grow with the number of steps already fed.
//!
//! Measured by the bytes this thread allocates (a counting global allocator with a
//! thread-local counter, so the other tests of this binary, running on other threads, do
//! not disturb it): feeding 16 000 steps must allocate about 4 times what 4 000 steps
//! allocate (linear), not 16 times (quadratic). The bound 6 leaves room for the buffers
//! that grow by doubling (amortized linear, a factor up to 2 in either direction) and for
//! the fixed per-stream allocations.

use ndarray::Array2;
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use timetape::bptt::Run;
use timetape::bptt::{Pi, StepTarget, Stream, Truncation};
use timetape::rnn::{models, Sizes};
use timetape::Params;

struct Counting;

thread_local! {
    static ALLOCATED: Cell<u64> = const { Cell::new(0) };
}

// SAFETY: every call is forwarded to `System` unchanged; the counter is a const-initialized
// thread-local `Cell` (no allocation, no re-entrancy).
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = ALLOCATED.try_with(|c| c.set(c.get() + layout.size() as u64));
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let _ = ALLOCATED.try_with(|c| c.set(c.get() + new_size as u64));
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocated() -> u64 {
    ALLOCATED.with(|c| c.get())
}

/// Bytes allocated by this thread while a tiny M1 is streamed for `t_len` steps.
fn bytes_for(t_len: usize, tr: &Truncation) -> u64 {
    let mut params = Params::<f64>::new();
    let cell = models::m1(&mut params, Sizes::new(1, 2, 1), 0).unwrap();
    let x = Array2::from_elem((1, 1), 0.5);
    let y = Array2::from_elem((1, 1), -0.5);
    // A pattern must be exactly as long as the stream.
    let tr = match tr {
        Truncation::Pattern(p) => Truncation::Pattern(vec![p[0]; t_len]),
        other => other.clone(),
    };
    let before = allocated();
    let mut s = Stream::new(&cell, &params, 1, &Run::new(tr)).unwrap();
    for _ in 0..t_len {
        s.push(x.view(), StepTarget::Values(y.view()), 1.0).unwrap();
    }
    let r = s.finish().unwrap();
    assert_eq!(r.backward_steps, t_len);
    allocated() - before
}

/// Streaming T steps must cost O(T) allocation: a regression test for a bug where
/// `Stream` built a vector of t + 1 ξ's at every push under `Fixed` (quadratic: 0.1 s for
/// T = 10 000, 1.4 s for 40 000, 21 s for 160 000, against 0.02 / 0.06 / 0.27 s for
/// `Full`).
#[test]
fn stream_push_cost_is_linear_in_t() {
    let (mut report, mut failures) = (Vec::new(), Vec::new());
    for tr in [
        Truncation::Full,
        Truncation::Fixed { k: 32 },
        Truncation::Tbptt { k1: 8, k2: 8 },
        Truncation::Randomized {
            pi: Pi::Constant(0.9),
            seed: 1,
        },
        Truncation::Pattern(vec![1.0]),
    ] {
        let name = match &tr {
            Truncation::Pattern(_) => "Pattern".to_string(),
            other => format!("{other:?}"),
        };
        let small = bytes_for(4_000, &tr);
        let large = bytes_for(16_000, &tr);
        let ratio = large as f64 / small as f64;
        report.push(format!("{name}: {small} → {large} bytes (×{ratio:.1})"));
        if ratio > 6.0 {
            failures.push(name);
        }
    }
    assert!(
        failures.is_empty(),
        "quadratic: {failures:?}\n{}",
        report.join("\n")
    );
}
