//! Data-parallel BPTT on threads against one thread, on the standard tanh-RNN jobs
//! S2–S4 of `bench_overhead` (f32, softmax cross-entropy at every step, mean over batch
//! and time, full BPTT, the peers' data): the batch rows split across `bptt::Parallel`
//! workers. Prints each job's minimum time with 1 and 2 threads (and more if given),
//! their ratio, and the machine's load average before and after.
//!
//! `cargo run --release --example bench_threads` (or `… -- S2 S4` for some jobs only).

#[path = "peers/mod.rs"]
mod peers;

use std::time::Instant;
use timetape::bptt::{Parallel, Run, Truncation};
use timetape::rnn::{models, Sequence, SequenceLoss, Sizes};
use timetape::{Params, Result};

fn time_min(reps: usize, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    f()?;
    let mut best = f64::INFINITY;
    for _ in 0..reps {
        let s = Instant::now();
        f()?;
        best = best.min(s.elapsed().as_secs_f64());
    }
    Ok(best)
}

fn load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

fn main() -> Result<()> {
    let only: Vec<String> = std::env::args().skip(1).collect();
    println!("load average before: {}", load());
    for s in peers::RNN_SIZES.iter().filter(|s| s.name != "S1") {
        if !only.is_empty() && !only.iter().any(|o| o == s.name) {
            continue;
        }
        let mut params = Params::<f32>::new();
        let cell = models::m3(&mut params, Sizes::new(s.d, s.h, s.d), 1)?;
        let (xs, labels) = s.data();
        let seq = Sequence::new(
            xs.view(),
            SequenceLoss::classes(labels.view()).mean_over_time(),
        );
        let how = Run::new(Truncation::Full);
        let reps = if s.t > 500 { 6 } else { 30 };
        let mut times = Vec::new();
        for threads in [1, 2] {
            let mut workers = Parallel::new(threads)?;
            let t = time_min(reps, || workers.run(&cell, &params, &seq, &how).map(|_| ()))?;
            times.push(t);
        }
        println!(
            "tanh {} B={:<3} H={:<4} T={:<5} 1 thread {:>8.2} ms  2 threads {:>8.2} ms  speed-up {:.2}",
            s.name,
            s.b,
            s.h,
            s.t,
            1e3 * times[0],
            1e3 * times[1],
            times[0] / times[1]
        );
    }
    println!("load average after: {}", load());
    Ok(())
}
