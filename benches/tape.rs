//! The tape's own cost.
//!
//! - `per_node/*`: a chain of 1×1 ops (where the arithmetic is nil), forward and
//!   forward + backward; divide the time by the node count for ns per node.
//! - `matmul_chain/*`: eight 256×256 matrix products on the tape against the same
//!   products done directly with `general_mat_mul` into preallocated buffers; forward,
//!   and forward + backward against the hand-written backward.
//!
//! Run: `cargo bench --bench tape`.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ndarray::linalg::general_mat_mul;
use ndarray::Array2;
use std::hint::black_box;
use timetape::{Params, Tape};

const CHAIN: usize = 1000;

fn per_node(c: &mut Criterion) {
    let mut params = Params::<f64>::new();
    let w = params.add("w", ndarray::arr2(&[[0.5]])).unwrap();
    let mut tape = Tape::<f64>::new();
    let mut g = c.benchmark_group("per_node");
    // Nodes recorded per iteration: 1 param + 1 constant + 3 per link.
    let nodes = 2 + 3 * CHAIN;
    g.throughput(Throughput::Elements(nodes as u64));
    let build = |tape: &mut Tape<f64>| {
        tape.clear();
        let wv = tape.param(&params, w).unwrap();
        let mut x = tape.constant(ndarray::arr2(&[[0.1]])).unwrap();
        for _ in 0..CHAIN {
            let y = tape.mul(x, wv).unwrap();
            let y = tape.add(y, wv).unwrap();
            x = tape.tanh(y).unwrap();
        }
        x
    };
    g.bench_function("forward", |b| {
        b.iter(|| black_box(build(&mut tape)));
    });
    g.bench_function("forward_backward", |b| {
        b.iter(|| {
            let x = build(&mut tape);
            black_box(tape.backward(x).unwrap());
        });
    });
    g.finish();
}

fn matmul_chain(c: &mut Criterion) {
    const N: usize = 256;
    const L: usize = 8;
    let mut rng = timetape::init::rng(1);
    let scale = 1.0 / (N as f64).sqrt();
    let x0: Array2<f32> = timetape::init::uniform((N, N), 1.0, &mut rng).unwrap();
    let ws: Vec<Array2<f32>> = (0..L)
        .map(|_| timetape::init::uniform((N, N), scale, &mut rng).unwrap())
        .collect();
    let mut params = Params::<f32>::new();
    let ids: Vec<_> = ws
        .iter()
        .enumerate()
        .map(|(i, w)| params.add(format!("w{i}"), w.clone()).unwrap())
        .collect();

    let mut g = c.benchmark_group("matmul_chain");
    g.sample_size(30);
    // Direct: preallocated activations, x_{i+1} = x_i W_i.
    let mut acts: Vec<Array2<f32>> = (0..=L).map(|_| Array2::zeros((N, N))).collect();
    acts[0].assign(&x0);
    g.bench_function(BenchmarkId::new("forward", "ndarray"), |b| {
        b.iter(|| {
            for i in 0..L {
                let (lo, hi) = acts.split_at_mut(i + 1);
                general_mat_mul(1.0, &lo[i], &ws[i], 0.0, &mut hi[0]);
            }
            black_box(acts[L][[0, 0]])
        })
    });
    let mut tape = Tape::<f32>::new();
    g.bench_function(BenchmarkId::new("forward", "tape"), |b| {
        b.iter(|| {
            tape.clear();
            let mut x = tape.constant_view(x0.view()).unwrap();
            for &id in &ids {
                let w = tape.param(&params, id).unwrap();
                x = tape.matmul(x, w).unwrap();
            }
            black_box(tape.value(x).unwrap()[[0, 0]])
        })
    });
    // Forward + backward with seed ones on the last product.
    let ones = Array2::<f32>::ones((N, N));
    let mut dx: Vec<Array2<f32>> = (0..=L).map(|_| Array2::zeros((N, N))).collect();
    let mut dws: Vec<Array2<f32>> = (0..L).map(|_| Array2::zeros((N, N))).collect();
    g.bench_function(BenchmarkId::new("forward_backward", "ndarray"), |b| {
        b.iter(|| {
            for i in 0..L {
                let (lo, hi) = acts.split_at_mut(i + 1);
                general_mat_mul(1.0, &lo[i], &ws[i], 0.0, &mut hi[0]);
            }
            dx[L].assign(&ones);
            for i in (0..L).rev() {
                general_mat_mul(1.0, &acts[i].t(), &dx[i + 1], 0.0, &mut dws[i]);
                let (lo, hi) = dx.split_at_mut(i + 1);
                general_mat_mul(1.0, &hi[0], &ws[i].t(), 0.0, &mut lo[i]);
            }
            black_box(dws[0][[0, 0]])
        })
    });
    let mut grads = timetape::Grads::zeros_like(&params);
    g.bench_function(BenchmarkId::new("forward_backward", "tape"), |b| {
        b.iter(|| {
            tape.clear();
            let mut x = tape.variable(x0.view()).unwrap();
            for &id in &ids {
                let w = tape.param(&params, id).unwrap();
                x = tape.matmul(x, w).unwrap();
            }
            grads.zero();
            tape.backward_with_into(&[(x, ones.view())], &mut grads)
                .unwrap();
            black_box(grads.get(ids[0]).unwrap()[[0, 0]])
        })
    });
    g.finish();
}

criterion_group!(benches, per_node, matmul_chain);
criterion_main!(benches);
