//! A dependency L steps long: a bit is shown at step 1, then L steps of noise follow, and
//! the loss at the last step asks for the bit back. `Fixed { k < L }` never carries the
//! last step's error back to step 1, so it cannot learn the task (it stays at chance,
//! 50 %); `Full` and the unbiased `Randomized` can.
//!
//! A tanh RNN (H = 16) with Adam, batches of 32 sequences, the same seed and data for
//! every strategy. Prints the held-out accuracy per strategy every 100 updates. Runs in
//! about a second in release.
//!
//! `cargo run --release --example long_dependency`

use ndarray::{Array1, Array3};
use rand::Rng;
use std::time::Instant;
use timetape::bptt::Run;
use timetape::bptt::{run, Pi, Truncation};
use timetape::optim::{clip_global_norm, Adam};
use timetape::rnn::{models, Sequence, SequenceLoss, Sizes};
use timetape::Params;

const L: usize = 20; // steps between the bit and the question
const T: usize = L + 1;
const B: usize = 32;

/// Inputs (T, B, 4): channels 0/1 one-hot bit at t = 0, channels 2/3 noise in ±1
/// afterwards (strong enough to wash the bit out of untrained dynamics).
fn batch(rng: &mut impl Rng) -> (Array3<f32>, Array1<usize>) {
    let bits = Array1::from_shape_fn(B, |_| rng.random_range(0..2usize));
    let xs = Array3::from_shape_fn((T, B, 4), |(t, b, c)| match (t, c) {
        (0, c) if c < 2 => f32::from(u8::from(bits[b] == c)),
        (0, _) => 0.0,
        (_, c) if c >= 2 => rng.random_range(-1.0..1.0),
        _ => 0.0,
    });
    (xs, bits)
}

fn accuracy(
    cell: &timetape::rnn::Rnn,
    params: &Params<f32>,
    rng: &mut impl Rng,
) -> Result<f64, timetape::Error> {
    let mut correct = 0;
    let mut total = 0;
    for _ in 0..8 {
        let (xs, bits) = batch(rng);
        let mut tape = timetape::Tape::new();
        let loss = SequenceLoss::last_class(bits.view());
        let run = timetape::bptt::unroll(cell, &mut tape, params, &Sequence::new(xs.view(), loss))?;
        let (o, _) = run
            .output(T - 1, B)
            .expect("a last-step loss has the last output");
        let o = tape.value(o)?;
        for b in 0..B {
            let guess = usize::from(o[[b, 1]] > o[[b, 0]]);
            correct += usize::from(guess == bits[b]);
            total += 1;
        }
    }
    Ok(correct as f64 / total as f64)
}

fn main() -> Result<(), timetape::Error> {
    let strategies = [
        ("Full", Truncation::Full),
        // Blocks start at steps 0, k, 2k, …: the loss at step 20 reaches back to step 18
        // (k = 3) or 14 (k = 7), never to the bit at step 0.
        ("Fixed{k=3}", Truncation::Fixed { k: 3 }),
        ("Fixed{k=7}", Truncation::Fixed { k: 7 }),
        (
            "Randomized{pi=0.9}",
            Truncation::Randomized {
                pi: Pi::Constant(0.9),
                seed: 0,
            },
        ),
    ];
    println!("task: recall a bit after L = {L} noisy steps; chance = 0.5");
    let mut finals = Vec::new();
    for (name, truncation) in strategies {
        let start = Instant::now();
        let mut params = Params::<f32>::new();
        let cell = models::m3(&mut params, Sizes::new(4, 16, 2), 11)?;
        let mut adam = Adam::new(0.01f32)?;
        let mut data_rng = timetape::init::rng(1);
        let mut test_rng = timetape::init::rng(99);
        let mut line = format!("{name:>20}:");
        for step in 1..=600 {
            let (xs, bits) = batch(&mut data_rng);
            let loss = SequenceLoss::last_class(bits.view());
            let truncation = match &truncation {
                Truncation::Randomized { pi, .. } => Truncation::Randomized {
                    pi: pi.clone(),
                    seed: step,
                },
                t => t.clone(),
            };
            let mut r = run(
                &cell,
                &params,
                &Sequence::new(xs.view(), loss),
                &Run::new(truncation.clone()),
            )?;
            clip_global_norm(&mut r.grads, 1.0)?;
            adam.step(&mut params, &r.grads)?;
            if step % 100 == 0 {
                let acc = accuracy(&cell, &params, &mut test_rng)?;
                line += &format!(" {acc:.2}");
            }
        }
        let acc = accuracy(&cell, &params, &mut test_rng)?;
        println!("{line}   ({:.1} s)", start.elapsed().as_secs_f64());
        finals.push((name, acc));
    }
    println!("\nfinal held-out accuracy");
    for (name, acc) in finals {
        println!("{name:>20}: {acc:.3}");
    }
    Ok(())
}
