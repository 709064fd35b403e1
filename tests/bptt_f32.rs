//! f32 smoke tests: every strategy runs in f32, gives finite results, and agrees with the
//! same computation in f64 (same weights, inputs and ξ).
//!
//! Tolerance `TOL = 1e-4`, relative per parameter (`max |g32 − g64| / max |g64|`). The
//! f32 unit roundoff is 2⁻²⁴ ≈ 6e-8 and the f32 `tanh` kernel is within a few ulp; each
//! gradient entry is a sum over ≤ T = 20 steps of products through ≤ 20 contractive
//! Jacobians (‖W_hh‖ ≲ 0.5), with ~10 roundings per step on each path, so the relative
//! error is ≲ 20·10·6e-8 ≈ 1.2e-5 for the largest entries (observed: 1e-7 to 9e-7). 1e-4 leaves
//! a margin for cancellation while any real difference between the f32 and f64 paths (a
//! different ξ, a missed cut, a buffer of the wrong type reused) is O(1).

mod common;

use common::cases::{Case, Model};
use common::max_rel_diff;
use ndarray::{Array3, Axis};
use timetape::bptt::{self, enumerate, Pi, Report, StepTarget, Stream, Truncation};
use timetape::bptt::{Memory, Run};
use timetape::rnn::{models, Rnn, Sequence, SequenceLoss, Sizes};
use timetape::{Grads, Params, Scalar};

const TOL: f64 = 1e-4;

/// The same model in f64 and in f32.
struct Pair {
    /// The f64 side: the shared M3 case with its weights, inputs and α_t rounded to f32.
    c: Case,
    p32: Params<f32>,
    cell32: Rnn,
    xs32: Array3<f32>,
    alphas32: Vec<f32>,
}

/// M3 from the shared fixture (`Case::new`: B = 2, D = 3, H = 4, Q = 3, `W_hh` in
/// ±0.45); the f32 model holds the f64 values rounded to f32, and the f64 case is then
/// reset to exactly those values, so both evaluate the same function.
fn pair(t: usize) -> Pair {
    let mut c = Case::new(Model::M3, t, 4);
    let cfg = &c.cell.config;
    let mut p32 = Params::<f32>::new();
    let cell32 = models::m3(&mut p32, Sizes::new(cfg.input, cfg.hidden, cfg.output), 4).unwrap();
    assert_eq!(cell32.config, c.cell.config);
    for (i32_, i64_) in p32
        .ids()
        .collect::<Vec<_>>()
        .into_iter()
        .zip(c.params.ids().collect::<Vec<_>>())
    {
        let v = c.params.get(i64_).unwrap().mapv(|x| x as f32);
        c.params.set(i64_, v.mapv(f64::from).view()).unwrap();
        p32.set(i32_, v.view()).unwrap();
    }
    let xs32 = c.data.xs.mapv(|x| x as f32);
    c.data.xs = xs32.mapv(f64::from);
    let alphas32: Vec<f32> = c.data.alphas.iter().map(|&a| a as f32).collect();
    c.data.alphas = alphas32.iter().map(|&a| f64::from(a)).collect();
    Pair {
        c,
        p32,
        cell32,
        xs32,
        alphas32,
    }
}

/// Per-parameter relative difference between f32 and f64 gradients (parameters matched
/// by position: the two stores issue different ids), `+∞` on a non-finite entry on
/// either side (`common::max_rel_diff`).
fn rel_diff(g32: &Grads<f32>, p32: &Params<f32>, g64: &Grads<f64>, p64: &Params<f64>) -> f64 {
    let mut worst = 0.0f64;
    for (i32_, i64_) in p32.ids().zip(p64.ids()) {
        let a = g32.get(i32_).expect("f32 gradient").mapv(Scalar::as_f64);
        let b = g64.get(i64_).expect("f64 gradient");
        assert!(b.iter().any(|&x| x != 0.0), "an all-zero f64 gradient");
        // Each term is finite or +∞, never NaN: the running maximum cannot skip one.
        worst = worst.max(max_rel_diff(a.view(), b.view()));
    }
    worst
}

impl Pair {
    fn run64(&self, tr: &Truncation) -> Report<f64> {
        let c = &self.c;
        bptt::run(&c.cell, &c.params, &c.seq(), &Run::new(tr.clone())).unwrap()
    }

    fn run32(&self, tr: &Truncation) -> Report<f32> {
        let loss = SequenceLoss::classes(self.c.data.labels.view()).weighted(&self.alphas32);
        bptt::run(
            &self.cell32,
            &self.p32,
            &Sequence::new(self.xs32.view(), loss),
            &Run::new(tr.clone()),
        )
        .unwrap()
    }

    fn check(&self, r32: &Report<f32>, r64: &Report<f64>, what: &str) {
        let d = rel_diff(&r32.grads, &self.p32, &r64.grads, &self.c.params);
        assert!(d <= TOL, "{what}: f32 vs f64 {d:e}");
        assert!(r32.loss.is_finite(), "{what}: loss");
        let dl = (r32.loss.as_f64() - r64.loss).abs() / r64.loss.abs();
        assert!(dl <= TOL, "{what}: loss {} vs {}", r32.loss, r64.loss);
        assert_eq!(r32.backward_steps, r64.backward_steps, "{what}");
        assert_eq!(r32.segments, r64.segments, "{what}");
    }
}

#[test]
fn f32_full() {
    let p = pair(20);
    p.check(
        &p.run32(&Truncation::Full),
        &p.run64(&Truncation::Full),
        "Full",
    );
}

#[test]
fn f32_fixed() {
    let p = pair(20);
    let tr = Truncation::Fixed { k: 4 };
    p.check(&p.run32(&tr), &p.run64(&tr), "Fixed");
}

#[test]
fn f32_tbptt() {
    let p = pair(20);
    let tr = Truncation::Tbptt { k1: 3, k2: 7 };
    p.check(&p.run32(&tr), &p.run64(&tr), "Tbptt");
}

#[test]
fn f32_randomized() {
    let p = pair(20);
    let tr = Truncation::Randomized {
        pi: Pi::Constant(0.7),
        seed: 3,
    };
    let (r32, r64) = (p.run32(&tr), p.run64(&tr));
    assert_eq!(r32.xi, r64.xi, "same seed, same ξ in f32 and f64");
    p.check(&r32, &r64, "Randomized");
}

#[test]
fn f32_pattern() {
    let p = pair(20);
    let xi: Vec<f64> = (0..20).map(|t| [1.0, 1.5, 0.0, 0.8, 1.25][t % 5]).collect();
    let tr = Truncation::Pattern(xi);
    p.check(&p.run32(&tr), &p.run64(&tr), "Pattern");
}

#[test]
fn f32_checkpointed() {
    let p = pair(20);
    let l32 = SequenceLoss::classes(p.c.data.labels.view()).weighted(&p.alphas32);
    let r32 = bptt::run(
        &p.cell32,
        &p.p32,
        &Sequence::new(p.xs32.view(), l32),
        &Run::new(Truncation::Full).memory(Memory::Checkpointed { stride: None }),
    )
    .unwrap();
    let r64 = p.run64(&Truncation::Full);
    let d = rel_diff(&r32.grads, &p.p32, &r64.grads, &p.c.params);
    assert!(d <= TOL, "checkpointed f32 vs Full f64 {d:e}");
    assert_eq!(r32.forward_steps, 40);
}

#[test]
fn f32_stream() {
    let p = pair(20);
    let tr = Truncation::Fixed { k: 6 };
    let mut s = Stream::new(&p.cell32, &p.p32, 2, &Run::new(tr.clone())).unwrap();
    for t in 0..20 {
        s.push(
            p.xs32.index_axis(Axis(0), t),
            StepTarget::Classes(p.c.data.labels.row(t).to_slice().unwrap()),
            p.alphas32[t],
        )
        .unwrap();
    }
    p.check(&s.finish().unwrap(), &p.run64(&tr), "Stream");
}

/// Enumeration in f32 (T = 6): E[Ĝ] is `Full` up to f32 rounding; the probability
/// weights are applied in f32 (1e-4 as above: 64 patterns, weights ≤ 0.5^{−6} = 64).
#[test]
fn f32_enumerated_mean() {
    let p = pair(6);
    let l32 = SequenceLoss::classes(p.c.data.labels.view()).weighted(&p.alphas32);
    let m = enumerate::randomized_moments(
        &p.cell32,
        &p.p32,
        &Sequence::new(p.xs32.view(), l32),
        &Pi::Constant(0.5),
    )
    .unwrap();
    let full = p.run64(&Truncation::Full);
    let d = rel_diff(&m.mean, &p.p32, &full.grads, &p.c.params);
    assert!(d <= TOL, "E[Ĝ] f32 vs Full f64 {d:e}");
    assert_eq!(m.patterns, 64);
}
