//! Data-parallel training over MPI: each process (rank) runs its rows of every batch,
//! `timetape::mpi::MpiReduce` sums the gradients in one flat buffer per update (in the
//! fixed order of the thread path), the global norm is clipped after the reduction,
//! and every rank takes the same Adam step. Rank 0 saves a checkpoint at the end, then
//! replays the same training on threads (`bptt::Parallel` with as many threads as
//! there are ranks) and checks that both give the same parameters bit for bit; the
//! program exits non-zero otherwise.
//!
//! ```text
//! cargo build --release --features mpi --example train_mpi
//! mpirun -np 2 target/release/examples/train_mpi
//! ```
//!
//! Across machines, the same binary runs under `mpirun --hostfile HOSTS -np N`; every
//! rank builds the same model and data from the same seeds.

use ndarray::{Array2, Array3};
use std::process::ExitCode;
use timetape::bptt::{shard_rows, AllReduce, Local, Parallel, Pi, Run, Truncation, Workspace};
use timetape::checkpoint::Checkpoint;
use timetape::mpi::MpiReduce;
use timetape::optim::{clip_global_norm, Adam};
use timetape::rnn::{Gru, Sequence, SequenceLoss, Sizes};
use timetape::{Params, Result};

/// Steps, batch rows, inputs, hidden units, classes.
const T: usize = 40;
const B: usize = 16;
const D: usize = 3;
const H: usize = 16;
const Q: usize = 4;
const UPDATES: usize = 30;

/// The task: predict the sign pattern of a slowly rotating input, seeded.
fn data(update: usize) -> (Array3<f64>, Array2<usize>) {
    let xs = Array3::from_shape_fn((T, B, D), |(t, b, d)| {
        (0.3 * t as f64 + 0.7 * b as f64 + 1.3 * d as f64 + 0.11 * update as f64).sin()
    });
    let labels = Array2::from_shape_fn((T, B), |(t, b)| {
        let x = &xs.slice(ndarray::s![t, b, ..]);
        usize::from(x[0] > 0.0) + 2 * usize::from(x[1] > 0.0)
    });
    (xs, labels)
}

/// Trains from the same seeds: each worker its rows (`reduce.place()`), the parts
/// summed by `reduce` or, with `threads`, by the pool's threads.
fn train(
    reduce: &mut impl AllReduce<f64>,
    threads: Option<usize>,
) -> Result<(Params<f64>, Vec<f64>, Adam<f64>)> {
    let mut params = Params::<f64>::new();
    let cell = Gru::new(&mut params, Sizes::new(D, H, Q), 1)?;
    let mut adam = Adam::new(0.01)?;
    let how = Run::new(Truncation::Randomized {
        pi: Pi::Constant(0.9),
        seed: 5,
    });
    let (me, workers) = reduce.place();
    let mut ws = Workspace::new();
    let mut pool = threads.map(Parallel::new).transpose()?;
    let mut losses = Vec::new();
    for update in 0..UPDATES {
        let (xs, labels) = data(update);
        let seq = Sequence::new(
            xs.view(),
            SequenceLoss::classes(labels.view()).mean_over_time(),
        );
        let mut report = match pool.as_mut() {
            Some(pool) => pool.run(&cell, &params, &seq, &how)?,
            None => ws.run(&cell, &params, &seq.rows(shard_rows(B, workers, me))?, &how)?,
        };
        reduce.all_reduce(&mut report.loss, &mut report.grads)?;
        clip_global_norm(&mut report.grads, 1.0)?; // after the reduction
        adam.step(&mut params, &report.grads)?;
        losses.push(report.loss);
    }
    Ok((params, losses, adam))
}

fn main() -> ExitCode {
    let Some(universe) = mpi::initialize() else {
        eprintln!("train_mpi: MPI could not be initialized");
        return ExitCode::from(2);
    };
    let world = universe.world();
    let mut reduce = MpiReduce::new(&world);
    let (rank, size) = AllReduce::<f64>::place(&reduce);
    let (params, losses, adam) = match train(&mut reduce, None) {
        Ok(out) => out,
        Err(e) => {
            eprintln!("rank {rank}: {e}");
            return ExitCode::FAILURE;
        }
    };
    if rank != 0 {
        return ExitCode::SUCCESS;
    }
    println!("{size} ranks, {UPDATES} updates of B = {B} rows (T = {T}, GRU H = {H}, Randomized π = 0.9)");
    println!(
        "loss: first {:.6}, last {:.6}",
        losses[0],
        losses[UPDATES - 1]
    );
    let path = std::env::temp_dir().join("train_mpi.ckpt");
    let saved = Checkpoint::new(&params)
        .adam(&adam)
        .step(UPDATES as u64)
        .save(&path);
    match saved {
        Ok(()) => println!("rank 0 saved {}", path.display()),
        Err(e) => {
            eprintln!("checkpoint: {e}");
            return ExitCode::FAILURE;
        }
    }
    let threads = match train(&mut Local, Some(size)) {
        Ok((p, _, _)) => p,
        Err(e) => {
            eprintln!("thread path: {e}");
            return ExitCode::FAILURE;
        }
    };
    // The same names in both stores (ids belong to their store).
    let same = params.ids().all(|id| {
        let other = params.name(id).ok().and_then(|n| threads.id(n));
        other.is_some_and(|o| params.get(id).ok() == threads.get(o).ok())
    });
    println!("{size} processes and {size} threads give bit-identical parameters: {same}");
    if same && losses[UPDATES - 1] < losses[0] {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
