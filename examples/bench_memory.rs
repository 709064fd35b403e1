//! Peak memory and recompute cost of every memory policy, on the tanh RNN of the standard
//! job S4 (B = 32, D = Q = 64, H = 256, T = 1000, f32, softmax cross-entropy at every
//! step): the tape holding the whole sequence, √T checkpointing, binomial checkpointing
//! (Revolve) with 10 and 50 states, and `Randomized { π = 0.99 }` with and without a
//! budget of 10 states. For each: the peak bytes of the tape, the bytes of the states
//! kept, the forward steps (T = no recompute), and the wall time of one run (minimum of
//! three, one thread).
//!
//! `cargo run --release --example bench_memory`

use ndarray::{Array2, Array3};
use std::time::Instant;
use timetape::bptt::{Memory, Pi, Run, Truncation, Workspace};
use timetape::rnn::{models, Sequence, SequenceLoss, Sizes};
use timetape::Params;

fn main() -> Result<(), timetape::Error> {
    let (t, b, d, h) = (1000, 32, 64, 256);
    let mut params = Params::<f32>::new();
    let cell = models::m3(&mut params, Sizes::new(d, h, d), 0)?;
    let xs = Array3::from_shape_fn((t, b, d), |(s, r, c)| {
        ((s * 7 + r * 3 + c) as f32 * 0.01).sin()
    });
    let labels = Array2::from_shape_fn((t, b), |(s, r)| (s + r) % d);
    let loss = SequenceLoss::classes(labels.view()).mean_over_time();
    let seq = Sequence::new(xs.view(), loss);
    let state_bytes = b * h * std::mem::size_of::<f32>();
    let randomized = Truncation::Randomized {
        pi: Pi::Constant(0.99),
        seed: 1,
    };
    let policies = [
        ("Full, whole tape", Run::new(Truncation::Full)),
        (
            "Full, √T checkpoints",
            Run::new(Truncation::Full).memory(Memory::Checkpointed { stride: None }),
        ),
        (
            "Full, Revolve s = 50",
            Run::new(Truncation::Full).memory(Memory::Revolve { states: 50 }),
        ),
        (
            "Full, Revolve s = 10",
            Run::new(Truncation::Full).memory(Memory::Revolve { states: 10 }),
        ),
        ("Randomized π = 0.99", Run::new(randomized.clone())),
        (
            "Randomized π = 0.99, Revolve s = 10",
            Run::new(randomized).memory(Memory::Revolve { states: 10 }),
        ),
    ];
    println!("tanh RNN, B = {b}, H = {h}, T = {t}, f32; a state is {state_bytes} bytes\n");
    println!("| policy | peak tape (MiB) | states kept (MiB) | forward steps | time (ms) |");
    println!("|---|---|---|---|---|");
    for (name, how) in policies {
        let mut best = f64::INFINITY;
        let mut report = None;
        for _ in 0..3 {
            // A fresh workspace each run: its peak counts only this run's buffers.
            let mut ws = Workspace::new();
            let start = Instant::now();
            let r = ws.run(&cell, &params, &seq, &how)?;
            best = best.min(start.elapsed().as_secs_f64() * 1e3);
            report = Some(r);
        }
        let r = report.expect("three runs");
        let mib = |x: usize| x as f64 / (1 << 20) as f64;
        println!(
            "| {name} | {:.1} | {:.2} | {} | {best:.0} |",
            mib(r.peak_tape_bytes),
            mib(r.stored_states * state_bytes),
            r.forward_steps
        );
    }
    Ok(())
}
