//! Do vanishing adjoints cost time? In f32, ‖∂L/∂h_t‖ of a contractive RNN with a loss
//! at the last step only shrinks geometrically going back in time and falls below
//! f32's smallest normal number (1.2e-38) after a few hundred steps; arithmetic on
//! subnormal numbers can be much slower than on normal ones.
//!
//! Two jobs of identical arithmetic (full BPTT of a tanh RNN, B = 32, D = 64, H = 256,
//! T = 1000, f32, a class target at the last step): `W_hh` an orthogonal matrix (a
//! cyclic shift) times ρ, with ρ = 0.05 (the adjoints fall below 1e-38 within about 30 steps) and
//! ρ = 0.9 (they pass through the subnormal range over about 150 steps). Prints the
//! steps whose adjoint norm is below the normal range and the time of each job
//! (minimum of 5 runs), without and with `RunOptions::flush_subnormals`, and how far
//! the flushed gradient is from the unflushed one.
//!
//! `cargo run --release --example subnormals`

use ndarray::{Array1, Array2, Array3};
use std::time::Instant;
use timetape::bptt::{Run, RunOptions, Truncation, Workspace};
use timetape::rnn::{models, Sequence, SequenceLoss, Sizes};
use timetape::{Params, Result};

/// The cyclic shift of n coordinates: an orthogonal matrix (every singular value 1).
fn cyclic_shift(n: usize) -> Array2<f32> {
    Array2::from_shape_fn((n, n), |(i, j)| if (i + 1) % n == j { 1.0 } else { 0.0 })
}

fn main() -> Result<()> {
    let (b, d, h, t) = (32, 64, 256, 1000);
    let xs = Array3::from_shape_fn((t, b, d), |(s, r, k)| {
        ((s * 7 + r * 3 + k) as f32 * 0.37).sin()
    });
    let labels = Array1::from_shape_fn(b, |r| r % d);
    let seq = Sequence::new(xs.view(), SequenceLoss::last_class(labels.view()));
    let q = cyclic_shift(h);
    for rho in [0.05f32, 0.9] {
        let mut params = Params::<f32>::new();
        let cell = models::m3(&mut params, Sizes::new(d, h, d), 1)?;
        params.set(cell.w_hh, q.mapv(|x| rho * x).view())?;
        let mut ws = Workspace::new();
        let norms = RunOptions {
            dh_norms: true,
            ..Default::default()
        };
        let r = ws.run(
            &cell,
            &params,
            &seq,
            &Run::new(Truncation::Full).options(norms),
        )?;
        let dh = r.dh_norms.unwrap_or_default();
        let subnormal = dh.iter().filter(|&&n| n < f32::MIN_POSITIVE).count();
        let mut times = Vec::new();
        let mut grads = Vec::new();
        for flush_subnormals in [false, true] {
            let opts = RunOptions {
                flush_subnormals,
                ..Default::default()
            };
            let how = Run::new(Truncation::Full).options(opts);
            let mut best = f64::INFINITY;
            for _ in 0..6 {
                let start = Instant::now();
                grads.push(ws.run(&cell, &params, &seq, &how)?.grads);
                best = best.min(start.elapsed().as_secs_f64());
            }
            times.push(best);
        }
        let diff = grads[0].max_rel_diff(&grads[grads.len() - 1]);
        println!(
            "ρ = {rho:<4}  steps with ‖∂L/∂h_t‖ < 1.2e-38: {subnormal:>4} of {t}  time {:.1} ms, flushed {:.1} ms ({:.2}×)  flushed vs not: {diff:.1e}",
            1e3 * times[0],
            1e3 * times[1],
            times[0] / times[1]
        );
    }
    Ok(())
}
