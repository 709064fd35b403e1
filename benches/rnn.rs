//! BPTT on a whole recurrent network: the tape against the hand-written closed form, the
//! streamed `Fixed { k: 32 }` truncation over long sequences, and the randomized
//! truncation beside `Fixed { k: 32 }`.
//!
//! Model: the tanh RNN M3 (`rnn::models::m3`), softmax cross-entropy at every step
//! summed over time (α_t = 1), f32, one thread (ndarray's matrixmultiply backend is
//! single-threaded unless its `threading` feature is enabled; no rayon).
//!
//! | size | B | D = Q | H | T |
//! |---|---|---|---|---|
//! | S1 | 1 | 32 | 64 | 100 |
//! | S2 | 32 | 64 | 256 | 100 |
//! | S3 | 64 | 128 | 512 | 50 |
//! | S4 | 32 | 64 | 256 | 1000 |
//!
//! Groups:
//!
//! - `full_bptt/{S1..S4}/{tape,closed_form}`: the full-BPTT gradient by the tape
//!   (`bptt::Workspace::run`, one `Workspace` reused across iterations, `Truncation::Full`)
//!   against `closed_form::M3Workspace::run` (one workspace reused), followed by
//!   `grads_into` a reused `Grads` so that both sides deliver their gradient in a
//!   `Grads`. The throughput is the FLOP count of the matrix products,
//!   `2·T·B·(2DH + 3H² + 3HQ)` (forward `X W_xh`, `h W_hh`, `H W_hq`: 2(DH + H² + HQ) per
//!   row and step; backward `Hᵀ E`, `E W_hqᵀ`, `r W_hhᵀ`, `Xᵀ R`, `H_prevᵀ R`:
//!   2(DH + 2H² + 2HQ)), given as `Throughput::Elements`: criterion's `elem/s` is FLOP/s.
//!   Before timing, the two gradients are checked against each other.
//! - `stream_fixed32/{1e3,1e4}`: `bptt::Stream` with `Fixed { k: 32 }` at S2's widths
//!   (B = 32, D = Q = 64, H = 256), T steps pushed one by one then `finish`; throughput
//!   `Elements(T)`: criterion's `elem/s` is steps/s. T = 1e5 (≈ 100× the time of
//!   T = 1e3) is measured once, outside criterion's loop, and printed as
//!   `stream_fixed32/1e5 (one run)`. For every T the report's `peak_tape_bytes` and
//!   `peak_tape_nodes` are printed: they do not grow with T.
//! - `randomized/S2/{randomized,fixed32}`: `bptt::Workspace::run` (reused `Workspace`) at S2 with
//!   `Randomized { pi: Pi::Constant(1 − 1/32), seed }` (mean segment 32 steps; the seed
//!   changes every iteration, so the time is averaged over ξ patterns) and with
//!   `Fixed { k: 32 }`; throughput `Elements(T)` (steps/s).
//!
//! Fairness: inputs, labels and weights are built once; both sides of `full_bptt` reuse
//! their buffers, and every result is passed to `black_box`. What remains is in the
//! APIs: `Workspace::run` returns an owned `Report` (a zeroed `Grads` of the parameters' size
//! and `h_final`, about 0.1 % of the work at S2) and `Stream::new` starts from a fresh
//! tape (its first segment allocates, the others recycle).
//!
//! Run: `cargo bench --bench rnn` (about 3–4 minutes; `cargo bench --bench rnn -- FILTER`
//! runs some benchmarks only, and skips the T = 1e5 run unless `stream_fixed32/1e5`
//! contains FILTER).

use criterion::{BenchmarkId, Criterion, SamplingMode, Throughput};
use ndarray::{Array2, Array3, ArrayView2, Axis};
use std::hint::black_box;
use std::time::{Duration, Instant};
use timetape::bptt::Run;
use timetape::bptt::{Pi, StepTarget, Stream, Truncation, Workspace};
use timetape::closed_form::M3Workspace;
use timetape::rnn::{models, Rnn, Sequence, SequenceLoss, Sizes};
use timetape::{Grads, Params};

#[derive(Clone, Copy)]
struct Size {
    name: &'static str,
    b: usize,
    d: usize,
    h: usize,
    t: usize,
}

impl Size {
    /// Q = D.
    fn q(&self) -> usize {
        self.d
    }

    /// FLOPs of the matrix products of one forward + backward pass.
    fn flops(&self) -> u64 {
        let (b, d, h, q, t) = (self.b, self.d, self.h, self.q(), self.t);
        (2 * t * b * (2 * d * h + 3 * h * h + 3 * h * q)) as u64
    }
}

const S1: Size = Size {
    name: "S1",
    b: 1,
    d: 32,
    h: 64,
    t: 100,
};
const S2: Size = Size {
    name: "S2",
    b: 32,
    d: 64,
    h: 256,
    t: 100,
};
const S3: Size = Size {
    name: "S3",
    b: 64,
    d: 128,
    h: 512,
    t: 50,
};
const S4: Size = Size {
    name: "S4",
    b: 32,
    d: 64,
    h: 256,
    t: 1000,
};

/// The model and a sequence of `s.t` steps (the inputs and labels of `bench_overhead`).
struct Problem {
    params: Params<f32>,
    cell: Rnn,
    xs: Array3<f32>,
    labels: Array2<usize>,
}

fn problem(s: Size) -> Problem {
    let q = s.q();
    let mut params = Params::<f32>::new();
    let cell = models::m3(&mut params, Sizes::new(s.d, s.h, q), 1).expect("m3");
    let xs = Array3::from_shape_fn((s.t, s.b, s.d), |(t, b, k)| {
        ((t * 31 + b * 7 + k) as f32 * 0.01).sin()
    });
    let labels = Array2::from_shape_fn((s.t, s.b), |(t, b)| (t * 13 + b * 5) % q);
    Problem {
        params,
        cell,
        xs,
        labels,
    }
}

fn mib(bytes: usize) -> f64 {
    bytes as f64 / 1048576.0
}

fn full_bptt(c: &mut Criterion) {
    let mut g = c.benchmark_group("full_bptt");
    for s in [S1, S2, S3, S4] {
        let p = problem(s);
        let loss = SequenceLoss::classes(p.labels.view());
        let mut ws = Workspace::new();
        let mut reference = M3Workspace::with_tanh(timetape::Scalar::tanh_kernel);
        let mut ref_grads = Grads::zeros_like(&p.params);

        // Same loss, same gradient: check once before timing.
        let r = ws
            .run(
                &p.cell,
                &p.params,
                &Sequence::new(p.xs.view(), loss),
                &Run::new(Truncation::Full),
            )
            .expect("tape");
        let ref_loss = reference
            .run(&p.params, &p.cell, &Sequence::new(p.xs.view(), loss))
            .expect("closed form");
        reference.grads_into(&mut ref_grads).expect("grads");
        let loss_diff = ((r.loss - ref_loss) / ref_loss).abs();
        let grad_diff = r.grads.max_rel_diff(&ref_grads);
        println!(
            "full_bptt/{}: B={} D=Q={} H={} T={}: {:.3} GFLOP per pass; tape vs closed form: \
             loss rel. diff {loss_diff:.1e}, gradient max rel. diff {grad_diff:.1e}",
            s.name,
            s.b,
            s.d,
            s.h,
            s.t,
            s.flops() as f64 / 1e9
        );
        assert!(
            loss_diff < 1e-4 && grad_diff < 1e-2,
            "the tape and the closed form disagree"
        );

        g.throughput(Throughput::Elements(s.flops()));
        if s.flops() > 1_000_000_000 {
            // ≥ 0.03 s per pass on this machine: equal-size samples, few of them.
            g.sampling_mode(SamplingMode::Flat)
                .sample_size(10)
                .warm_up_time(Duration::from_secs(2))
                .measurement_time(Duration::from_secs(6));
        } else {
            g.sampling_mode(SamplingMode::Auto)
                .sample_size(50)
                .warm_up_time(Duration::from_secs(2))
                .measurement_time(Duration::from_secs(4));
        }
        g.bench_function(BenchmarkId::new(s.name, "tape"), |b| {
            b.iter(|| {
                let r = ws
                    .run(
                        &p.cell,
                        &p.params,
                        &Sequence::new(black_box(p.xs.view()), loss),
                        &Run::new(Truncation::Full),
                    )
                    .expect("tape");
                black_box(r)
            })
        });
        g.bench_function(BenchmarkId::new(s.name, "closed_form"), |b| {
            b.iter(|| {
                let l = reference
                    .run(
                        &p.params,
                        &p.cell,
                        &Sequence::new(black_box(p.xs.view()), loss),
                    )
                    .expect("closed form");
                reference.grads_into(&mut ref_grads).expect("grads");
                black_box(&ref_grads);
                black_box(l)
            })
        });
        if s.name == "S4" {
            println!(
                "full_bptt/S4 memory: tape peak {:.1} MiB ({} nodes), closed form {:.1} MiB",
                mib(r.peak_tape_bytes),
                r.peak_tape_nodes,
                mib(reference.bytes())
            );
        }
    }
    g.finish();
}

/// What one streamed run reports.
struct StreamRun {
    loss: f32,
    steps: usize,
    peak_bytes: usize,
    peak_nodes: usize,
}

/// A cycle of `PERIOD` steps of inputs and labels at S2's widths, fed again and again.
const PERIOD: usize = 1000;

/// Pushes `t_len` steps into a `Fixed { k: 32 }` stream and finishes it.
fn stream_fixed32_run(p: &Problem, t_len: usize) -> StreamRun {
    let mut stream = Stream::new(
        &p.cell,
        &p.params,
        S2.b,
        &Run::new(Truncation::Fixed { k: 32 }),
    )
    .expect("stream");
    for t in 0..t_len {
        let i = t % PERIOD;
        let x: ArrayView2<'_, f32> = p.xs.index_axis(Axis(0), i);
        let y = p.labels.row(i);
        stream
            .push(
                x,
                StepTarget::Classes(y.as_slice().expect("contiguous labels")),
                1.0,
            )
            .expect("push");
    }
    let r = stream.finish().expect("finish");
    StreamRun {
        loss: black_box(r.loss),
        steps: r.backward_steps,
        peak_bytes: r.peak_tape_bytes,
        peak_nodes: r.peak_tape_nodes,
    }
}

fn print_peak(name: &str, r: &StreamRun) {
    println!(
        "{name}: peak tape {:.2} MiB ({} bytes, {} nodes) over {} steps",
        mib(r.peak_bytes),
        r.peak_bytes,
        r.peak_nodes,
        r.steps
    );
}

/// Whether a benchmark run outside criterion should run: under `cargo bench` (not
/// `cargo test --benches`), without `--list`, and unless a filter excludes `id` (a
/// plain substring test, where criterion uses a regular expression).
fn one_shot_enabled(id: &str) -> bool {
    // Criterion options that take a value.
    const WITH_VALUE: [&str; 15] = [
        "--color",
        "-c",
        "--save-baseline",
        "-s",
        "--baseline",
        "-b",
        "--load-baseline",
        "--profile-time",
        "--sample-size",
        "--warm-up-time",
        "--measurement-time",
        "--nresamples",
        "--noise-threshold",
        "--confidence-level",
        "--significance-level",
    ];
    let args: Vec<String> = std::env::args().skip(1).collect();
    if !args.iter().any(|a| a == "--bench") || args.iter().any(|a| a == "--list") {
        return false;
    }
    let mut filters = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if WITH_VALUE.contains(&a.as_str()) {
            it.next();
        } else if !a.starts_with('-') {
            filters.push(a.as_str());
        }
    }
    filters.is_empty() || filters.iter().any(|f| id.contains(f))
}

fn stream_fixed32(c: &mut Criterion) {
    let p = problem(Size {
        name: "S2 widths",
        t: PERIOD,
        ..S2
    });
    let mut g = c.benchmark_group("stream_fixed32");
    g.sampling_mode(SamplingMode::Flat)
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1));
    for (name, t_len, secs) in [("1e3", 1_000usize, 5u64), ("1e4", 10_000, 32)] {
        g.throughput(Throughput::Elements(t_len as u64))
            .measurement_time(Duration::from_secs(secs));
        let mut last = None;
        g.bench_function(name, |b| {
            b.iter(|| {
                let r = stream_fixed32_run(&p, t_len);
                let loss = r.loss;
                last = Some(r);
                black_box(loss)
            })
        });
        if let Some(r) = &last {
            print_peak(&format!("stream_fixed32/{name}"), r);
        }
    }
    g.finish();

    let id = "stream_fixed32/1e5";
    if one_shot_enabled(id) {
        let t_len = 100_000;
        let start = Instant::now();
        let r = stream_fixed32_run(&p, t_len);
        let secs = start.elapsed().as_secs_f64();
        println!(
            "{id} (one run, outside criterion): {secs:.2} s, {:.0} steps/s, {:.2} ms/step, \
             {:.2} GFLOP/s",
            t_len as f64 / secs,
            1e3 * secs / t_len as f64,
            (Size { t: t_len, ..S2 }).flops() as f64 / secs / 1e9
        );
        print_peak(id, &r);
    }
}

fn randomized(c: &mut Criterion) {
    let s = S2;
    let p = problem(s);
    let loss = SequenceLoss::classes(p.labels.view());
    let pi = 1.0 - 1.0 / 32.0;
    let mut ws = Workspace::new();
    let mut g = c.benchmark_group("randomized");
    g.throughput(Throughput::Elements(s.t as u64))
        .sample_size(30)
        .warm_up_time(Duration::from_secs(2))
        .measurement_time(Duration::from_secs(6));
    let mut seed = 0u64;
    let mut segments = (0usize, 0usize);
    g.bench_function(BenchmarkId::new(s.name, "randomized"), |b| {
        b.iter(|| {
            seed += 1;
            let trunc = Truncation::Randomized {
                pi: Pi::Constant(pi),
                seed,
            };
            let r = ws
                .run(
                    &p.cell,
                    &p.params,
                    &Sequence::new(black_box(p.xs.view()), loss),
                    &Run::new(trunc.clone()),
                )
                .expect("randomized");
            segments.0 += r.segments;
            segments.1 += 1;
            black_box(r)
        })
    });
    g.bench_function(BenchmarkId::new(s.name, "fixed32"), |b| {
        b.iter(|| {
            let r = ws
                .run(
                    &p.cell,
                    &p.params,
                    &Sequence::new(black_box(p.xs.view()), loss),
                    &Run::new(Truncation::Fixed { k: 32 }),
                )
                .expect("fixed");
            black_box(r)
        })
    });
    g.finish();
    if segments.1 > 0 {
        println!(
            "randomized/S2: π = {pi}, {:.2} segments per run of T = {} on average over {} \
             runs (Fixed {{ k: 32 }}: {})",
            segments.0 as f64 / segments.1 as f64,
            s.t,
            segments.1,
            s.t.div_ceil(32)
        );
    }
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    full_bptt(&mut c);
    stream_fixed32(&mut c);
    randomized(&mut c);
    c.final_summary();
}
