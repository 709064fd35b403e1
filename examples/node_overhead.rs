//! The tape's cost per node in instructions (load-independent), for `valgrind --tool=callgrind`.
//!
//! Builds the chain of `benches/tape.rs` (`per_node`): 1×1 f64 values, one parameter,
//! one constant and 1000 links `x ← tanh(x·w + w)`, 3002 nodes in all, N times on one
//! reused tape, and after each build runs the backward pass (or not, with `forward`).
//! The instruction count of a run is fixed cost + N × per-chain cost; run it for two
//! values of N and
//!
//! ```text
//! instructions per node = (Ir(N2) − Ir(N1)) / (N2 − N1) / 3002
//! ```
//!
//! which cancels start-up, the first (allocating) build, and the exit. For example:
//!
//! ```sh
//! cargo build --release --example node_overhead
//! valgrind --tool=callgrind --callgrind-out-file=/dev/null target/release/examples/node_overhead 100
//! valgrind --tool=callgrind --callgrind-out-file=/dev/null target/release/examples/node_overhead 300
//! # read "Collected : <Ir>" (or "refs:") from each; likewise with `… 100 forward`.
//! ```
//!
//! Without valgrind it prints the wall time per node as well (noisy on a loaded machine).
//!
//! `cargo run --release --example node_overhead -- [N] [forward|forward_backward]`
//! (defaults: N = 1000, forward_backward).

use std::hint::black_box;
use std::time::Instant;
use timetape::{Params, Tape, Var};

/// Links of the chain (3 nodes each), as in `benches/tape.rs`.
const CHAIN: usize = 1000;
/// Nodes recorded per build: 1 param + 1 constant + 3 per link.
const NODES: usize = 2 + 3 * CHAIN;

fn build(tape: &mut Tape<f64>, params: &Params<f64>, w: timetape::ParamId) -> Var {
    tape.clear();
    let wv = tape.param(params, w).expect("param");
    let mut x = tape.constant(ndarray::arr2(&[[0.1]])).expect("constant");
    for _ in 0..CHAIN {
        let y = tape.mul(x, wv).expect("mul");
        let y = tape.add(y, wv).expect("add");
        x = tape.tanh(y).expect("tanh");
    }
    x
}

fn main() -> Result<(), timetape::Error> {
    let mut args = std::env::args().skip(1);
    let n: usize = match args.next() {
        Some(a) => a.parse().map_err(|_| timetape::Error::InvalidArgument {
            op: "node_overhead",
            msg: format!("N must be a count, got {a:?}"),
        })?,
        None => 1000,
    };
    let backward = match args.next().as_deref() {
        None | Some("forward_backward") => true,
        Some("forward") => false,
        Some(other) => {
            return Err(timetape::Error::InvalidArgument {
                op: "node_overhead",
                msg: format!("mode must be forward or forward_backward, got {other:?}"),
            })
        }
    };
    let mut params = Params::<f64>::new();
    let w = params.add("w", ndarray::arr2(&[[0.5]]))?;
    let mut tape = Tape::<f64>::new();
    let start = Instant::now();
    let mut check = 0.0;
    for _ in 0..n {
        let x = build(&mut tape, &params, w);
        if backward {
            let grads = tape.backward(x)?;
            check += grads.get(w).map_or(0.0, |g| g[[0, 0]]);
        } else {
            check += tape.value(x)?[[0, 0]];
        }
        black_box(check);
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{} × {NODES} nodes ({}): {:.1} ns per node (wall clock), check {check:.6}",
        n,
        if backward {
            "forward_backward"
        } else {
            "forward"
        },
        1e9 * secs / (n * NODES).max(1) as f64
    );
    Ok(())
}
