//! The tape's cost on the standard jobs: full BPTT (forward + backward, every gradient)
//! with softmax cross-entropy at every step, mean over time and batch, f32, one thread,
//! on the data and weights the peer benchmarks draw (PyTorch and JAX get the same loss:
//! compare the printed `loss` with theirs).
//!
//! For each job it prints the tape's time (`bptt::Workspace::run`, buffers reused) and
//! two references:
//! - **skeleton**: the same matrix products and nothing else (no activation, no loss,
//!   no copy), by the tape's kernel and in the tape's layouts
//!   (`timetape::kernels::matmul_into`, and `matmul_panels_into` for the recurrent
//!   weight and its transpose): the limit of any implementation on this kernel;
//! - **closed form** (tanh RNN only): BPTT written by hand
//!   (`closed_form::M3Workspace::with_tanh(Scalar::tanh_kernel)`: ndarray's products and
//!   the tape's f32 tanh kernel, so that both do the same arithmetic).
//!
//! Jobs: the tanh RNN at S1–S4, GRU and LSTM at G1–G3 (the dimensions of S1–S3). Each
//! timing is the minimum over repeated runs (the least disturbed by other load), as many
//! as the peer benchmarks take (3 warm-ups, then 2 s worth, at least 21). Then the
//! machine's plain matrix-product speed and the peak memory at S4.
//!
//! `cargo run --release --example bench_overhead` (or `… -- S1 G2` for some jobs only).

#[path = "peers/mod.rs"]
mod peers;

use ndarray::linalg::general_mat_mul;
use ndarray::{s, Array2, ArrayView2, ArrayViewMut2};
use peers::{Size, GATED_SIZES, RNN_SIZES};
use std::time::Instant;
use timetape::bptt::{Run, Truncation, Workspace};
use timetape::closed_form::M3Workspace;
use timetape::kernels::{matmul_into, matmul_panels_into, Panels, Write};
use timetape::rnn::{models, Gru, Lstm, Recurrent, Sequence, SequenceLoss, Sizes};
use timetape::{ParamId, Params, Result};

/// Minimum wall time of `f` in seconds, with the peer benchmarks' policy
/// (`peers/common.py`): three warm-up runs, then 2 s worth of runs, at least 21 and at
/// most 2001, so that both sides take the minimum of as many runs.
fn time_min(mut f: impl FnMut()) -> f64 {
    let mut once = || {
        let s = Instant::now();
        f();
        s.elapsed().as_secs_f64()
    };
    let first = (0..3).map(|_| once()).last().unwrap_or(0.0);
    let reps = if first > 0.0 {
        (2.0 / first).clamp(21.0, 2001.0) as usize
    } else {
        21
    };
    (0..reps).map(|_| once()).fold(f64::INFINITY, f64::min)
}

/// `c = a b` or `c += a b` by the tape's kernel (the shapes fit by construction).
fn mm(a: ArrayView2<'_, f32>, b: ArrayView2<'_, f32>, c: ArrayViewMut2<'_, f32>, w: Write) {
    matmul_into(a, b, c, w).expect("the skeleton's shapes fit");
}

/// `c += a b` by the panels of `b` (the shapes fit by construction).
fn mm_panels(a: ArrayView2<'_, f32>, b: &Panels<f32>, c: ArrayViewMut2<'_, f32>) {
    matmul_panels_into(a, b, c, Write::Add).expect("the skeleton's shapes fit");
}

/// The matrix products of full BPTT for a cell with `g` gate blocks and nothing else:
/// forward `A = X W_x` (all steps), `A_t += h_{t−1} W_h`, `O = H W_hq`; backward
/// `∂W_hq = Hᵀ ∂O`, `∂H = ∂O W_hqᵀ`, `∂h_{t−1} += ∂A_t W_hᵀ`, `∂W_h += h_{t−1}ᵀ ∂A_t`
/// (per step from 8 rows on, as the tape; merged over steps below, and for the LSTM at
/// every size, as the tape's `lstm_step`) and `∂W_x = Xᵀ ∂A`.
/// `W_h` and `W_hᵀ` are read from column panels, as the tape reads a weight it
/// multiplies by at every step. The states H stay constant: only the products' shapes
/// and layouts matter.
struct Skeleton {
    /// Gate blocks: 1 (tanh RNN), 3 (GRU) or 4 (LSTM).
    g: usize,
    x: Array2<f32>,
    w_x: Array2<f32>,
    w_h: Panels<f32>,
    w_h_t: Panels<f32>,
    w_hq: Array2<f32>,
    a: Array2<f32>,
    hs: Array2<f32>,
    o: Array2<f32>,
    dh: Array2<f32>,
    grads: [Array2<f32>; 3],
}

impl Skeleton {
    fn new(s: &Size, g: usize) -> Skeleton {
        let (tb, d, h) = (s.t * s.b, s.d, s.h);
        let fill = |r, c| Array2::from_elem((r, c), 0.01f32);
        let w_h = fill(h, g * h);
        Skeleton {
            g,
            x: fill(tb, d),
            w_x: fill(d, g * h),
            w_h: Panels::new(w_h.view()),
            w_h_t: Panels::new(w_h.t()),
            w_hq: fill(h, d),
            a: fill(tb, g * h),
            hs: fill(tb, h),
            o: fill(tb, d),
            dh: fill(tb, h),
            grads: [fill(d, g * h), fill(h, g * h), fill(h, d)],
        }
    }

    fn run(&mut self, s: &Size) {
        let (b, t) = (s.b, s.t);
        let Skeleton {
            g,
            x,
            w_x,
            w_h,
            w_h_t,
            w_hq,
            a,
            hs,
            o,
            dh,
            grads,
        } = self;
        mm(x.view(), w_x.view(), a.view_mut(), Write::Set);
        for step in 1..t {
            let prev = hs.slice(s![(step - 1) * b..step * b, ..]);
            let cur = a.slice_mut(s![step * b..(step + 1) * b, ..]);
            mm_panels(prev, w_h, cur);
        }
        mm(hs.view(), w_hq.view(), o.view_mut(), Write::Set);
        mm(hs.t(), o.view(), grads[2].view_mut(), Write::Set);
        mm(o.view(), w_hq.t(), dh.view_mut(), Write::Set);
        for step in (1..t).rev() {
            let da = a.slice(s![step * b..(step + 1) * b, ..]);
            let prev = dh.slice_mut(s![(step - 1) * b..step * b, ..]);
            mm_panels(da, w_h_t, prev);
        }
        // Per step from 8 rows on, as the tape does for the GRU and the tanh RNN; merged
        // over the steps below 8 rows and for the LSTM, as the tape's `lstm_step`.
        if b >= 8 && *g != 4 {
            for step in 1..t {
                let h_prev = hs.slice(s![(step - 1) * b..step * b, ..]);
                let da = a.slice(s![step * b..(step + 1) * b, ..]);
                let w = if step == 1 { Write::Set } else { Write::Add };
                mm(h_prev.t(), da, grads[1].view_mut(), w);
            }
        } else {
            let h_prev = hs.slice(s![..(t - 1) * b, ..]);
            let da = a.slice(s![b.., ..]);
            mm(h_prev.t(), da, grads[1].view_mut(), Write::Set);
        }
        mm(x.t(), a.view(), grads[0].view_mut(), Write::Set);
    }
}

/// Sets a parameter to the peers' draw (seed, scale).
fn draw(params: &mut Params<f32>, id: ParamId, seed: u64, scale: f64) -> Result<()> {
    let shape = params.get(id)?.dim();
    params.set(id, peers::matrix(seed, shape, scale).view())
}

/// The tape's time and loss on the job `s` for `cell`.
fn tape<C: Recurrent<f32>>(cell: &C, params: &Params<f32>, s: &Size) -> Result<(f64, f32)> {
    let (xs, labels) = s.data();
    let seq = Sequence::new(
        xs.view(),
        SequenceLoss::classes(labels.view()).mean_over_time(),
    );
    let mut ws = Workspace::new();
    let how = Run::new(Truncation::Full);
    let loss = ws.run(cell, params, &seq, &how)?.loss;
    let t = time_min(|| {
        let _ = ws.run(cell, params, &seq, &how);
    });
    Ok((t, loss))
}

/// One line of the table.
fn line(job: &str, s: &Size, (t_tape, loss): (f64, f32), refs: (f64, Option<f64>)) {
    let (skeleton, closed) = refs;
    let closed = closed.map_or(String::from("        —          "), |c| {
        format!("{:>8.2} ms ({:.2})", 1e3 * c, t_tape / c)
    });
    println!(
        "{job:<5}{} B={:<3} H={:<4} T={:<5} loss {loss:<10.7} tape {:>8.2} ms  skeleton {:>8.2} ms ({:.2})  closed form {closed}",
        s.name,
        s.b,
        s.h,
        s.t,
        1e3 * t_tape,
        1e3 * skeleton,
        t_tape / skeleton,
    );
}

fn rnn_job(s: &Size) -> Result<()> {
    let mut params = Params::<f32>::new();
    let cell = models::m3(&mut params, Sizes::new(s.d, s.h, s.d), 1)?;
    let scales = [
        (cell.w_xh, 1, s.d),
        (cell.w_hh, 2, s.h),
        (cell.w_hq, 4, s.h),
    ];
    for (id, seed, fan_in) in scales {
        draw(&mut params, id, seed, 1.0 / (fan_in as f64).sqrt())?;
    }
    if let (Some(b_h), Some(b_q)) = (cell.b_h, cell.b_q) {
        draw(&mut params, b_h, 3, 0.1)?;
        draw(&mut params, b_q, 5, 0.1)?;
    }
    let measured = tape(&cell, &params, s)?;
    let (xs, labels) = s.data();
    let seq = Sequence::new(
        xs.view(),
        SequenceLoss::classes(labels.view()).mean_over_time(),
    );
    let mut reference = M3Workspace::with_tanh(timetape::Scalar::tanh_kernel);
    let closed = time_min(|| {
        let _ = reference.run(&params, &cell, &seq);
    });
    let mut skeleton = Skeleton::new(s, 1);
    let t_skel = time_min(|| skeleton.run(s));
    line("tanh", s, measured, (t_skel, Some(closed)));
    if s.name == "S4" {
        let r = Workspace::new().run(&cell, &params, &seq, &Run::new(Truncation::Full))?;
        println!(
            "peak memory at S4: closed form {:.1} MiB, tape {:.1} MiB",
            reference.bytes() as f64 / 1048576.0,
            r.peak_tape_bytes as f64 / 1048576.0
        );
    }
    Ok(())
}

/// The gated cells.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Gated {
    Gru,
    Lstm,
}

fn gated_job(s: &Size, kind: Gated) -> Result<()> {
    let mut params = Params::<f32>::new();
    let sizes = Sizes::new(s.d, s.h, s.d);
    let (rd, rh) = (1.0 / (s.d as f64).sqrt(), 1.0 / (s.h as f64).sqrt());
    let (measured, g) = if kind == Gated::Lstm {
        let cell = Lstm::new(&mut params, sizes, 1)?;
        for (id, seed, scale) in [(cell.w_x, 1, rd), (cell.w_h, 2, rh), (cell.b, 3, 0.1)] {
            draw(&mut params, id, seed, scale)?;
        }
        draw(&mut params, cell.w_hq, 4, rh)?;
        draw(&mut params, cell.b_q, 5, 0.1)?;
        (tape(&cell, &params, s)?, 4)
    } else {
        let cell = Gru::new(&mut params, sizes, 1)?;
        for (id, seed, scale) in [(cell.w_x, 1, rd), (cell.w_h, 2, rh), (cell.b_x, 3, 0.1)] {
            draw(&mut params, id, seed, scale)?;
        }
        draw(&mut params, cell.b_h, 6, 0.1)?;
        draw(&mut params, cell.w_hq, 4, rh)?;
        draw(&mut params, cell.b_q, 5, 0.1)?;
        (tape(&cell, &params, s)?, 3)
    };
    let mut skeleton = Skeleton::new(s, g);
    let t_skel = time_min(|| skeleton.run(s));
    let name = if g == 4 { "lstm" } else { "gru" };
    line(name, s, measured, (t_skel, None));
    Ok(())
}

fn main() -> Result<()> {
    let only: Vec<String> = std::env::args().skip(1).collect();
    let wanted = |s: &Size| only.is_empty() || only.iter().any(|o| o == s.name);
    for s in RNN_SIZES.iter().filter(|s| wanted(s)) {
        rnn_job(s)?;
    }
    for s in GATED_SIZES.iter().filter(|s| wanted(s)) {
        gated_job(s, Gated::Gru)?;
        gated_job(s, Gated::Lstm)?;
    }
    // The machine's plain matrix-product speed, f32, one thread.
    let n = 512;
    let a = Array2::<f32>::from_elem((n, n), 0.5);
    let b = Array2::<f32>::from_elem((n, n), 0.25);
    let mut c = Array2::<f32>::zeros((n, n));
    let t = time_min(|| general_mat_mul(1.0, &a, &b, 0.0, &mut c));
    println!(
        "plain matrix product {n}×{n}×{n}: {:.1} GFLOP/s",
        2.0 * (n * n * n) as f64 / t / 1e9
    );
    Ok(())
}
