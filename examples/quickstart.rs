//! timetape's main job: the gradient of a small tanh RNN (M3 of the notes: softmax
//! output and cross-entropy at every step) by every BPTT strategy, against the
//! hand-derived closed form.
//!
//! Prints the loss, each strategy's relative distance from the closed-form (full)
//! gradient, its backward steps and its time, then the same in f64 to show that `Full`
//! and checkpointing agree with the closed form to rounding. Runs in well under a second.
//!
//! `cargo run --release --example quickstart`

use ndarray::{Array2, Array3};
use std::time::Instant;
use timetape::bptt::{run, Pi, Truncation};
use timetape::bptt::{Memory, Run};
use timetape::closed_form;
use timetape::rnn::{models, Sequence, SequenceLoss, Sizes};
use timetape::{Params, Scalar};

fn table<F: Scalar>(label: &str) -> Result<(), timetape::Error> {
    // D = 8 inputs, H = 32 hidden units, Q = 8 classes, T = 100 steps, batch B = 4.
    let (d, h, q, t_len, b) = (8, 32, 8, 100, 4);
    let mut params = Params::<F>::new();
    let cell = models::m3(&mut params, Sizes::new(d, h, q), 42)?;
    // A recurrent matrix with some memory: scale W_hh up a little.
    params.get_mut(cell.w_hh)?.mapv_inplace(|w| w * F::of(2.0));
    let xs = Array3::from_shape_fn((t_len, b, d), |(t, r, k)| {
        F::of(((t * 7 + r * 3 + k) as f64 * 0.37).sin())
    });
    let labels = Array2::from_shape_fn((t_len, b), |(t, r)| (t * 5 + r * 3 + t / 7) % q);
    let loss = SequenceLoss::classes(labels.view()).mean_over_time();

    let start = Instant::now();
    let reference = closed_form::m3(&params, &cell, &Sequence::new(xs.view(), loss))?;
    let t_ref = start.elapsed();

    println!(
        "{label}: M3 with D = {d}, H = {h}, Q = {q}, T = {t_len}, B = {b}; loss L = {:.6}",
        reference.loss.as_f64()
    );
    println!(
        "{:>24} {:>12} {:>16} {:>15} {:>10}",
        "strategy", "loss", "rel. distance", "backward steps", "time"
    );
    println!(
        "{:>24} {:>12.6} {:>16} {:>15} {:>8.2?}",
        "closed form (notes)",
        reference.loss.as_f64(),
        "0 (reference)",
        t_len,
        t_ref
    );
    let strategies = [
        ("Full", Truncation::Full),
        ("Fixed { k: 10 }", Truncation::Fixed { k: 10 }),
        (
            "Tbptt { k1: 5, k2: 20 }",
            Truncation::Tbptt { k1: 5, k2: 20 },
        ),
        (
            "Randomized { π: 0.9 }",
            Truncation::Randomized {
                pi: Pi::Constant(0.9),
                seed: 7,
            },
        ),
    ];
    for (name, truncation) in &strategies {
        let start = Instant::now();
        let r = run(
            &cell,
            &params,
            &Sequence::new(xs.view(), loss),
            &Run::new(truncation.clone()),
        )?;
        let elapsed = start.elapsed();
        println!(
            "{name:>24} {:>12.6} {:>16.3e} {:>15} {elapsed:>8.2?}",
            r.loss.as_f64(),
            r.grads.max_rel_diff(&reference.grads),
            r.backward_steps
        );
    }
    let start = Instant::now();
    let r = run(
        &cell,
        &params,
        &Sequence::new(xs.view(), loss),
        &Run::new(Truncation::Full).memory(Memory::Checkpointed { stride: None }),
    )?;
    let elapsed = start.elapsed();
    println!(
        "{:>24} {:>12.6} {:>16.3e} {:>15} {elapsed:>8.2?}",
        "checkpointed (√T)",
        r.loss.as_f64(),
        r.grads.max_rel_diff(&reference.grads),
        r.backward_steps
    );
    // The randomized estimate is unbiased: average many seeds.
    let n = 200;
    let mut mean = timetape::Grads::zeros_like(&params);
    let start = Instant::now();
    for seed in 0..n {
        let t = Truncation::Randomized {
            pi: Pi::Constant(0.9),
            seed,
        };
        let r = run(
            &cell,
            &params,
            &Sequence::new(xs.view(), loss),
            &Run::new(t.clone()),
        )?;
        mean.add_assign(&r.grads)?;
    }
    mean.scale(F::one() / F::of(n as f64));
    println!(
        "{:>24} {:>12} {:>16.3e} {:>15} {:>8.2?}",
        format!("mean of {n} Randomized"),
        "",
        mean.max_rel_diff(&reference.grads),
        n as usize * t_len,
        start.elapsed()
    );
    println!();
    Ok(())
}

fn main() -> Result<(), timetape::Error> {
    println!("relative distance = max over parameters of ‖G − G_closed‖∞ / ‖G_closed‖∞\n");
    table::<f32>("f32")?;
    table::<f64>("f64")?;
    Ok(())
}
