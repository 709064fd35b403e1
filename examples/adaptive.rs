//! Adaptive truncation learns what a fixed window cannot: an echo L = 15 steps back.
//!
//! At every step a random bit is shown (one-hot, channels 0/1); from step L on, the loss
//! asks for the bit shown L steps before. `Fixed { k: 10 }` backpropagates at most 9
//! steps, so no gradient ever connects a target to its bit. The recurrent matrix starts
//! orthogonal, whose dynamics carry the bits for a while by themselves: the output head
//! first learns to read them (about 0.75 after 50 updates), but the truncated gradient,
//! blind to the dependency, then reshapes the dynamics and the accuracy falls to chance
//! (0.5). `Truncation::Adaptive { k1: 10, δ = 0.1, windows up to 60 }` starts from a
//! window of 11, measures a slow decay of ‖∂L/∂h‖, widens its windows past L and learns
//! the task (1.000 held out). Each training run carries the window its last update
//! chose into the next run.
//!
//! A tanh RNN (H = 32), Adam, batches of 16 sequences of 100 steps, the same seed and
//! data for both. Prints held-out accuracy and, for adaptive truncation, the windows it
//! chose, every 50 updates.
//!
//! `cargo run --release --example adaptive`

use ndarray::{Array2, Array3};
use rand::Rng;
use timetape::bptt::{run, unroll, Adaptive, Run, Truncation};
use timetape::optim::{clip_global_norm, Adam};
use timetape::rnn::{models, Rnn, Sequence, SequenceLoss, Sizes};
use timetape::{init, Params, Tape};

const L: usize = 15;
const T: usize = 100;
const B: usize = 16;
const H: usize = 32;

/// Inputs (T, B, 2): a one-hot random bit per step; labels (T, B): the bit L steps back
/// (0 before step L, where the weight is 0).
fn batch(rng: &mut impl Rng) -> (Array3<f32>, Array2<usize>) {
    let bits = Array2::from_shape_fn((T, B), |_| rng.random_range(0..2usize));
    let xs = Array3::from_shape_fn((T, B, 2), |(t, b, c)| {
        f32::from(u8::from(bits[[t, b]] == c))
    });
    let labels = Array2::from_shape_fn((T, B), |(t, b)| if t >= L { bits[[t - L, b]] } else { 0 });
    (xs, labels)
}

/// The step weights: 0 before step L, 1 after.
fn weights() -> Vec<f32> {
    (0..T).map(|t| if t >= L { 1.0 } else { 0.0 }).collect()
}

/// Held-out accuracy of the echo over steps L..T.
fn accuracy(cell: &Rnn, params: &Params<f32>, rng: &mut impl Rng) -> Result<f64, timetape::Error> {
    let (mut correct, mut total) = (0usize, 0usize);
    let w = weights();
    for _ in 0..4 {
        let (xs, labels) = batch(rng);
        let loss = SequenceLoss::classes(labels.view()).weighted(&w);
        let mut tape = Tape::new();
        let unrolled = unroll(cell, &mut tape, params, &Sequence::new(xs.view(), loss))?;
        for t in L..T {
            let Some((o, rows)) = unrolled.output(t, B) else {
                continue;
            };
            let o = tape.value(o)?;
            for (b, r) in rows.enumerate() {
                let guess = usize::from(o[[r, 1]] > o[[r, 0]]);
                correct += usize::from(guess == labels[[t, b]]);
                total += 1;
            }
        }
    }
    Ok(correct as f64 / total as f64)
}

fn main() -> Result<(), timetape::Error> {
    println!("task: echo the bit shown L = {L} steps back, at every step; chance = 0.5");
    let adaptive = Adaptive {
        k_first: Some(11),
        ..Adaptive::new(10, 0.1, 60)
    };
    for (name, first) in [
        ("Fixed { k: 10 }", Truncation::Fixed { k: 10 }),
        (
            "Adaptive { k1: 10, δ: 0.1 }",
            Truncation::Adaptive(adaptive),
        ),
    ] {
        let mut params = Params::<f32>::new();
        let cell = models::m3(&mut params, Sizes::new(2, H, 2), 3)?;
        params.set(
            cell.w_hh,
            init::orthogonal::<f32>(H, &mut init::rng(5))?.view(),
        )?;
        let mut adam = Adam::new(0.005f32)?;
        let (mut data, mut test) = (init::rng(1), init::rng(99));
        let w = weights();
        let mut truncation = first;
        println!("\n{name}");
        for step in 1..=400 {
            let (xs, labels) = batch(&mut data);
            let loss = SequenceLoss::classes(labels.view()).weighted(&w);
            let seq = Sequence::new(xs.view(), loss);
            let mut r = run(&cell, &params, &seq, &Run::new(truncation.clone()))?;
            clip_global_norm(&mut r.grads, 1.0)?;
            adam.step(&mut params, &r.grads)?;
            // Carry the window the last update chose into the next run.
            if let (Truncation::Adaptive(how), Some(last)) = (&mut truncation, r.adaptive.last()) {
                how.k_first = Some(last.next_window);
            }
            if step % 50 == 0 {
                let acc = accuracy(&cell, &params, &mut test)?;
                let windows: Vec<usize> = r.adaptive.iter().map(|u| u.window).collect();
                let shown = if windows.is_empty() {
                    String::new()
                } else {
                    format!(", windows this run {windows:?}")
                };
                println!("  update {step:>3}: held-out accuracy {acc:.3}{shown}");
            }
        }
    }
    Ok(())
}
