//! The tape's cost on a whole BPTT: the full-BPTT gradient of a tanh RNN with softmax
//! cross-entropy at every step, f32, one thread, by the tape (`bptt::Workspace::run`,
//! buffers reused across calls) against the hand-written closed form
//! (`closed_form::M3Workspace::with_tanh(Scalar::tanh_kernel)`, written as a
//! performance-minded person writes BPTT by hand: ndarray's products, and the tape's f32
//! tanh kernel so that both do the same arithmetic; the oracle the tests use computes
//! tanh exactly).
//!
//! Prints one line per size, the ratio tape / closed form last on the line, then the
//! machine's plain matrix-product speed and the peak memory of both at S4. Each timing
//! is the minimum over repeated runs (the least disturbed by other load). Takes about
//! 30 seconds.
//!
//! `cargo run --release --example bench_overhead` (or `… -- S1 S3` for some sizes only).

use ndarray::linalg::general_mat_mul;
use ndarray::{Array2, Array3};
use std::time::Instant;
use timetape::bptt::Run;
use timetape::bptt::{Truncation, Workspace};
use timetape::closed_form::M3Workspace;
use timetape::rnn::{models, Sequence, SequenceLoss, Sizes};
use timetape::Params;

struct Size {
    name: &'static str,
    b: usize,
    d: usize,
    h: usize,
    t: usize,
}

const SIZES: [Size; 4] = [
    Size {
        name: "S1",
        b: 1,
        d: 32,
        h: 64,
        t: 100,
    },
    Size {
        name: "S2",
        b: 32,
        d: 64,
        h: 256,
        t: 100,
    },
    Size {
        name: "S3",
        b: 64,
        d: 128,
        h: 512,
        t: 50,
    },
    Size {
        name: "S4",
        b: 32,
        d: 64,
        h: 256,
        t: 1000,
    },
];

/// Minimum wall time of `f` over `reps` runs after one warm-up, in seconds.
fn time_min(reps: usize, mut f: impl FnMut()) -> f64 {
    f();
    (0..reps)
        .map(|_| {
            let s = Instant::now();
            f();
            s.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min)
}

fn main() -> Result<(), timetape::Error> {
    let only: Vec<String> = std::env::args().skip(1).collect();
    let mut peak = None;
    for s in SIZES
        .iter()
        .filter(|s| only.is_empty() || only.iter().any(|o| o == s.name))
    {
        let q = s.d;
        let mut params = Params::<f32>::new();
        let cell = models::m3(&mut params, Sizes::new(s.d, s.h, q), 1)?;
        let xs = Array3::from_shape_fn((s.t, s.b, s.d), |(t, b, k)| {
            ((t * 31 + b * 7 + k) as f32 * 0.01).sin()
        });
        let labels = Array2::from_shape_fn((s.t, s.b), |(t, b)| (t * 13 + b * 5) % q);
        let loss = SequenceLoss::classes(labels.view());
        // FLOPs of forward + backward: 2·T·B·(2DH + 3H² + 3HQ).
        let flops = 2.0 * (s.t * s.b) as f64 * (2 * s.d * s.h + 3 * s.h * s.h + 3 * s.h * q) as f64;
        let reps = if flops > 5e9 {
            3
        } else if flops > 5e8 {
            6
        } else {
            30
        };

        let mut reference = M3Workspace::with_tanh(timetape::Scalar::tanh_kernel);
        let t_ref = time_min(reps, || {
            reference
                .run(&params, &cell, &Sequence::new(xs.view(), loss))
                .expect("reference");
        });
        let mut ws = Workspace::new();
        let mut tape_bytes = 0;
        let t_tape = time_min(reps, || {
            let r = ws
                .run(
                    &cell,
                    &params,
                    &Sequence::new(xs.view(), loss),
                    &Run::new(Truncation::Full),
                )
                .expect("tape");
            tape_bytes = r.peak_tape_bytes;
        });
        println!(
            "{} B={:<3} D=Q={:<4} H={:<4} T={:<5} closed form {:>8.2} ms ({:>5.1} GFLOP/s)  tape {:>8.2} ms  ratio {:.2}",
            s.name,
            s.b,
            s.d,
            s.h,
            s.t,
            1e3 * t_ref,
            flops / t_ref / 1e9,
            1e3 * t_tape,
            t_tape / t_ref
        );
        if s.name == "S4" {
            peak = Some((reference.bytes(), tape_bytes));
        }
    }
    // The machine's plain matrix-product speed, f32, one thread.
    let n = 512;
    let a = Array2::<f32>::from_elem((n, n), 0.5);
    let b = Array2::<f32>::from_elem((n, n), 0.25);
    let mut c = Array2::<f32>::zeros((n, n));
    let t = time_min(10, || general_mat_mul(1.0, &a, &b, 0.0, &mut c));
    println!(
        "plain matrix product {n}×{n}×{n}: {:.1} GFLOP/s",
        2.0 * (n * n * n) as f64 / t / 1e9
    );
    if let Some((r, t)) = peak {
        println!(
            "peak memory at S4: closed form {:.1} MiB, tape {:.1} MiB, ratio {:.2}",
            r as f64 / 1048576.0,
            t as f64 / 1048576.0,
            t as f64 / r as f64
        );
    }
    Ok(())
}
