//! The M2 setting of the notes (seed 002, the homework): a ReLU RNN read at the last
//! step by a sigmoid classifier, `y = σ(V h_l + d)`, trained with SGD at batch size 1.
//!
//! The data set is made here: "reviews" of 4 to 12 words over a 10-word vocabulary (two
//! positive words, two negative words, six neutral ones), one-hot encoded; the label is 1
//! if the positive words outnumber the negative ones. The RNN has to count, which a
//! last-step classifier can only do through the recurrence. Prints the loss and accuracy
//! per epoch on a training set and a held-out set. Runs in about a second.
//!
//! `cargo run --release --example homework`

use ndarray::{Array1, Array3};
use rand::Rng;
use timetape::bptt::Run;
use timetape::bptt::{run, Truncation};
use timetape::optim::{clip_global_norm, Sgd};
use timetape::rnn::{models, Sequence, SequenceLoss};
use timetape::Params;

const VOCAB: usize = 10;
const WORDS: [&str; VOCAB] = [
    "good", "great", "bad", "awful", "the", "film", "was", "plot", "and", "very",
];

fn make_set(n: usize, rng: &mut impl Rng) -> Vec<(Vec<usize>, f64)> {
    (0..n)
        .map(|_| loop {
            let len = rng.random_range(4..=12);
            let words: Vec<usize> = (0..len).map(|_| rng.random_range(0..VOCAB)).collect();
            let pos = words.iter().filter(|&&w| w < 2).count();
            let neg = words.iter().filter(|&&w| (2..4).contains(&w)).count();
            if pos != neg {
                break (words, if pos > neg { 1.0 } else { 0.0 });
            }
        })
        .collect()
}

fn one_hot(words: &[usize]) -> Array3<f64> {
    Array3::from_shape_fn((words.len(), 1, VOCAB), |(t, _, k)| {
        if words[t] == k {
            1.0
        } else {
            0.0
        }
    })
}

fn main() -> Result<(), timetape::Error> {
    let mut rng = timetape::init::rng(2);
    let train = make_set(400, &mut rng);
    let test = make_set(200, &mut rng);
    println!(
        "example: \"{}\" -> {}",
        train[0]
            .0
            .iter()
            .map(|&w| WORDS[w])
            .collect::<Vec<_>>()
            .join(" "),
        train[0].1
    );

    let mut params = Params::<f64>::new();
    let cell = models::m2(&mut params, VOCAB, 16, 5)?;
    let mut sgd = Sgd::new(0.05)?;
    let evaluate =
        |params: &Params<f64>, set: &[(Vec<usize>, f64)]| -> Result<(f64, f64), timetape::Error> {
            let (mut loss, mut correct) = (0.0, 0);
            for (words, y) in set {
                let xs = one_hot(words);
                let yv = Array1::from_elem(1, *y);
                let l = SequenceLoss::last_binary(yv.view());
                let r = run(
                    &cell,
                    params,
                    &Sequence::new(xs.view(), l),
                    &Run::new(Truncation::Full),
                )?;
                loss += r.loss;
                // p > 1/2 exactly when the BCE loss is below ln 2.
                let predicted = if r.loss < std::f64::consts::LN_2 {
                    *y
                } else {
                    1.0 - *y
                };
                correct += usize::from(predicted == *y);
            }
            Ok((loss / set.len() as f64, correct as f64 / set.len() as f64))
        };
    println!(
        "{:>5} {:>10} {:>9} {:>9}",
        "epoch", "train loss", "train acc", "test acc"
    );
    for epoch in 0..=15 {
        if epoch > 0 {
            for (words, y) in &train {
                let xs = one_hot(words);
                let yv = Array1::from_elem(1, *y);
                let l = SequenceLoss::last_binary(yv.view());
                let mut r = run(
                    &cell,
                    &params,
                    &Sequence::new(xs.view(), l),
                    &Run::new(Truncation::Full),
                )?;
                clip_global_norm(&mut r.grads, 1.0)?;
                sgd.step(&mut params, &r.grads)?;
            }
        }
        if epoch % 3 == 0 {
            let (tl, ta) = evaluate(&params, &train)?;
            let (_, va) = evaluate(&params, &test)?;
            println!("{epoch:>5} {tl:>10.4} {ta:>9.3} {va:>9.3}");
        }
    }
    Ok(())
}
