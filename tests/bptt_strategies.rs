//! The deterministic strategies of `bptt::run` against independent constructions on one
//! tape (`rnn::unroll_with_edges` + `Tape::backward`), for the notes' models M1, M2, M3.
//!
//! * `Full` == one tape with every edge kept;
//! * `Fixed { k }` == one tape with `Edge::Detach` on the edge into every block start;
//! * `Tbptt { k, k }` == `Fixed { k }`;
//! * `Tbptt { k1, k2 }` == Σ over updates u of one-tape gradients of the losses of steps
//!   (u − k1, u] with the edge into step u − k2 (0-based) detached (LITERATURE.md §3.3),
//!   and `backward_steps` == the summed window lengths;
//! * `Randomized` with π ≡ 1 == `Full`, bitwise;
//! * the estimate is affine in each ξ_t (`Pattern`), LITERATURE.md §8 item 1.
//!
//! Tolerance `TOL = 1e-12`, relative, per parameter as `max |a − b| / max |b|`
//! (`Grads::max_rel_diff`). Both sides compute the same exact expression in f64 and
//! differ only in the order of summation: the runner sums per segment and accumulates
//! segment gradients, the one-tape reference sums once. Every rounding is ≤ 2⁻⁵³ ≈ 1.1e-16
//! relative; with T ≤ 21 steps, B = 2, H = 4 and contractive weights, the reordering
//! moves a result by at most a few tens of ulp of its largest term (~1e-14). A real
//! mistake (a missing or extra path, a loss counted twice, a detach one step off) changes
//! the gradient by ≥ 1e-3 relative; each test also checks that the truncation it tests
//! really differs from `Full`, so that the comparison is not vacuous.

mod common;

use common::cases::{Case, Model, MODELS};
use common::{finite_scale, max_abs_diff};
use timetape::bptt::{self, Pi, Report, Truncation, Workspace};
use timetape::bptt::{Edge, Run};
use timetape::rnn::SequenceLoss;
use timetape::{Grads, Tape};

const TOL: f64 = 1e-12;

/// The runs of this file on the shared fixture (`Case::new`: B = 2, D = 3, H = 4, Q = 3,
/// Q = 1 for M2, `W_hh` uniform in ±0.45 = ±0.9/√H, spectral radius ≈ 0.5: contractive,
/// no overflow or saturation).
impl Case {
    fn run(&self, truncation: &Truncation) -> Report<f64> {
        bptt::run(
            &self.cell,
            &self.params,
            &self.seq(),
            &Run::new(truncation.clone()),
        )
        .unwrap_or_else(|e| panic!("{:?} {truncation:?}: {e}", self.model))
    }

    /// The gradient of `loss` from one tape over the whole sequence.
    fn one_tape<'a>(
        &'a self,
        loss: &SequenceLoss<'a, f64>,
        edges: Option<&[Edge<f64>]>,
    ) -> Grads<f64> {
        let mut tape = Tape::new();
        let unroll = bptt::Unroll::new(&self.cell, &self.params);
        let unroll = edges.map_or(unroll, |e| unroll.edges(e));
        let u = unroll.record(&mut tape, &self.seq_with(*loss)).unwrap();
        tape.backward(u.loss).unwrap()
    }
}

fn assert_close(got: &Grads<f64>, want: &Grads<f64>, tol: f64, what: &str) {
    assert!(want.global_norm() > 0.0, "{what}: reference gradient is 0");
    let d = got.max_rel_diff(want);
    assert!(d <= tol, "{what}: max rel diff {d:e} > {tol:e}");
}

/// `Grads::max_rel_diff` is `+∞` on a non-finite entry (or a missing gradient): that
/// fails here too, rather than passing as "different".
fn assert_differs(a: &Grads<f64>, b: &Grads<f64>, what: &str) {
    let d = a.max_rel_diff(b);
    assert!(
        d.is_finite() && d > 1e-6,
        "{what}: expected a different gradient, diff {d:e}"
    );
}

/// The edges of `Fixed { k }`: detached into every block start (0-based t ≡ 0 mod k).
fn block_edges(t_len: usize, k: usize) -> Vec<Edge<f64>> {
    (0..t_len)
        .map(|t| if t % k == 0 { Edge::Detach } else { Edge::Keep })
        .collect()
}

#[test]
fn full_equals_one_tape_unroll_for_m1_m2_m3() {
    for model in MODELS {
        for (t, seed) in [(1, 1), (2, 2), (13, 3)] {
            let c = Case::new(model, t, seed);
            let r = c.run(&Truncation::Full);
            let want = c.one_tape(&c.loss(), None);
            assert_close(&r.grads, &want, TOL, &format!("{model:?} T={t} Full"));
            assert_eq!((r.segments, r.backward_steps, r.forward_steps), (1, t, t));
            // The loss is the same forward computation, summed in the same order.
            let mut tape = Tape::new();
            let u = bptt::unroll(&c.cell, &mut tape, &c.params, &c.seq()).unwrap();
            let l = tape.scalar(u.loss).unwrap();
            assert!((r.loss - l).abs() <= 1e-14 * l.abs(), "{model:?} loss");
        }
    }
}

#[test]
fn fixed_equals_one_tape_with_detach_at_block_starts() {
    let t = 13;
    for model in MODELS {
        let c = Case::new(model, t, 7);
        let full = c.run(&Truncation::Full);
        for k in [1, 2, 3, 4, 7, 12, 13, 20] {
            let r = c.run(&Truncation::Fixed { k });
            let edges = block_edges(t, k);
            let want = c.one_tape(&c.loss(), Some(&edges));
            assert_close(&r.grads, &want, TOL, &format!("{model:?} Fixed{{{k}}}"));
            // A last-step loss (M2) leaves every block but the last without a loss term:
            // those run no backward pass.
            let (segments, steps) = if model == Model::M2 {
                (1, t - (t - 1) / k * k)
            } else {
                (t.div_ceil(k), t)
            };
            assert_eq!(r.segments, segments, "{model:?} k={k} segments");
            assert_eq!(r.backward_steps, steps, "{model:?} k={k} backward steps");
            if k < t {
                assert_differs(&r.grads, &full.grads, &format!("{model:?} Fixed{{{k}}}"));
            } else {
                // One block: the truncation is the full gradient.
                assert_close(&r.grads, &full.grads, TOL, &format!("{model:?} k={k}"));
            }
        }
    }
}

#[test]
fn tbptt_k_k_equals_fixed_k() {
    let t = 13;
    for model in MODELS {
        let c = Case::new(model, t, 11);
        for k in [1, 2, 3, 5, 13, 20] {
            let a = c.run(&Truncation::Tbptt { k1: k, k2: k });
            let b = c.run(&Truncation::Fixed { k });
            // Same cuts, same segments: 1e-14 (it is in fact the same code path today).
            let d = a.grads.max_rel_diff(&b.grads);
            assert!(d <= 1e-14, "{model:?} k={k}: {d:e}");
            assert_eq!(a.backward_steps, b.backward_steps);
            assert_eq!(a.segments, b.segments);
        }
    }
}

/// TBPTT(k1, k2) rebuilt from the crate's definition (LITERATURE.md §3.3, with the last
/// update made consistent with `Fixed`): updates at u = k1, 2k1, …, and T; update u
/// injects the losses of steps (u′, u] (1-based, u′ the previous update) and
/// backpropagates through the window starting k2 − k1 steps before u′, i.e. the edge
/// into 0-based step max(0, u′ − (k2 − k1)) is detached. For every update but a partial
/// last one this is max(0, u − k2), the window [u − k2, u) of §3.3. Each update is its own
/// tape over the whole sequence, with the step weights set to 0 outside the update's
/// losses. Returns the gradient and the summed window lengths.
fn tbptt_reference(c: &Case, k1: usize, k2: usize) -> (Grads<f64>, usize) {
    let t_len = c.t();
    let mut total = Grads::zeros_like(&c.params);
    let mut steps = 0;
    let weights = c.weights();
    let mut u_prev = 0;
    while u_prev < t_len {
        let u = (u_prev + k1).min(t_len);
        let start = u_prev.saturating_sub(k2 - k1);
        let mut edges = vec![Edge::Keep; t_len];
        edges[start] = Edge::Detach;
        if c.model != Model::M2 || u == t_len {
            steps += u - start;
        }
        let g = if c.model == Model::M2 {
            // The only loss term sits at step T: it belongs to the last update.
            (u == t_len).then(|| c.one_tape(&c.loss(), Some(&edges)))
        } else {
            let w: Vec<f64> = (0..t_len)
                .map(|s| {
                    if s >= u_prev && s < u {
                        weights[s]
                    } else {
                        0.0
                    }
                })
                .collect();
            Some(c.one_tape(&c.loss_with(&w), Some(&edges)))
        };
        if let Some(g) = g {
            total.add_assign(&g).unwrap();
        }
        u_prev = u;
    }
    (total, steps)
}

/// The pairs cover k1 = 1 (sliding window), k1 < k2, k1 = k2 (dividing T or not), k2 ≥ T
/// and k1 > T.
#[test]
fn tbptt_equals_sum_of_detached_windows_per_update() {
    let pairs = [
        (1, 1),
        (1, 2),
        (1, 5),
        (2, 3),
        (2, 5),
        (3, 3),
        (3, 4),
        (3, 7),
        (4, 4),
        (4, 9),
        (5, 12),
        (6, 6),
        (6, 13),
        (12, 12),
        (13, 13),
        (5, 30),
        (20, 25),
    ];
    for (t, model) in [12, 13].into_iter().flat_map(|t| MODELS.map(|m| (t, m))) {
        let c = Case::new(model, t, 5 + t as u64);
        let full = c.run(&Truncation::Full);
        for (k1, k2) in pairs {
            let r = c.run(&Truncation::Tbptt { k1, k2 });
            let (want, steps) = tbptt_reference(&c, k1, k2);
            let what = format!("{model:?} Tbptt{{{k1}, {k2}}}");
            assert_close(&r.grads, &want, TOL, &what);
            // M2's windows before the last hold no loss term and run no backward pass.
            assert_eq!(r.backward_steps, steps, "{what}: backward steps");
            let segments = if model == Model::M2 {
                1
            } else {
                t.div_ceil(k1)
            };
            assert_eq!(r.segments, segments, "{what}: segments");
            // The loss is the full forward loss whatever the truncation.
            assert!(
                (r.loss - full.loss).abs() <= 1e-13 * full.loss.abs(),
                "{what}"
            );
            // Windows that all reach step 1 give the full gradient: every loss is injected
            // exactly once and backpropagated to the start. The last window starts
            // k2 − k1 steps before the previous update, i.e. k2 steps before the nominal
            // update time ⌈T/k1⌉·k1, so that takes k2 ≥ ⌈T/k1⌉·k1. Shorter ones truncate.
            if k2 >= t.div_ceil(k1) * k1 {
                assert_close(&r.grads, &full.grads, TOL, &what);
            } else {
                assert_differs(&r.grads, &full.grads, &what);
            }
        }
    }
}

#[test]
fn tbptt_backward_steps_formula_on_longer_sequence() {
    // Window lengths by hand for T = 100, k1 = 7, k2 = 20: updates u = 7, 14, …, 98, 100.
    // Windows [u − 20, u) clipped at 0: 7, 14, then 20 for u = 21, …, 98 (12 updates);
    // the last, partial update (u′ = 98) reaches k2 − k1 = 13 steps before u′: [85, 100),
    // 15 steps. 7 + 14 + 12·20 + 15 = 276.
    let c = Case::new(Model::M3, 100, 9);
    let r = c.run(&Truncation::Tbptt { k1: 7, k2: 20 });
    assert_eq!(r.backward_steps, 276);
    assert_eq!(r.segments, 15);
    // Each window is recomputed from its stored start state.
    assert_eq!(r.forward_steps, 276);
}

#[test]
fn randomized_with_pi_one_is_full_bitwise() {
    for model in MODELS {
        let c = Case::new(model, 13, 4);
        let full = c.run(&Truncation::Full);
        let pis = [
            Pi::Constant(1.0),
            Pi::schedule(|_| 1.0),
            Pi::hazard(|_| 1.0),
        ];
        for pi in pis {
            for seed in [0, 1, 12345] {
                let r = c.run(&Truncation::Randomized {
                    pi: pi.clone(),
                    seed,
                });
                assert_eq!(r.xi.as_deref(), Some(&vec![1.0; 13][..]));
                assert!(r.grads == full.grads, "{model:?} {pi:?}: not bitwise Full");
                assert_eq!(r.loss.to_bits(), full.loss.to_bits());
                assert_eq!(r.segments, 1);
            }
        }
    }
}

#[test]
fn pattern_of_ones_is_full_and_fixed_pattern_is_fixed_bitwise() {
    for model in MODELS {
        let c = Case::new(model, 10, 6);
        let full = c.run(&Truncation::Full);
        let ones = c.run(&Truncation::Pattern(vec![1.0; 10]));
        assert!(ones.grads == full.grads, "{model:?}");
        for k in [1, 3, 4] {
            let fixed = c.run(&Truncation::Fixed { k });
            let pat = c.run(&Truncation::Pattern(bptt::fixed_pattern(10, k).unwrap()));
            assert!(pat.grads == fixed.grads, "{model:?} k={k}");
        }
    }
}

/// Ĝ(ξ) is multi-affine (each ξ_t appears at most once in every monomial, LITERATURE.md
/// §1.2): G(ξ + h e_t) − 2 G(ξ) + G(ξ − h e_t) = 0 for every t, whether ξ_t is a cut
/// (0: the perturbation turns a detach into a scale and changes the segments) or not.
///
/// Tolerance 1e-12 relative to the largest |entry| of the three gradients, per parameter:
/// each is a sum of ≤ T² = 144 path terms of products of ≤ 12 factors |ξ| ≤ 2.6, and the
/// three are evaluated with different segmentations, so they differ from the exact
/// multi-affine value by a few hundred ulp of the largest term (≲ 1e-13 of |G|); a
/// quadratic term, which is what a bug (ξ applied twice, or to the wrong edge and
/// compounded) would create, is of order h² = 0.25 relative.
#[test]
fn estimate_is_affine_in_each_xi() {
    let xi = vec![1.7, 0.0, 1.3, 2.1, 0.0, 0.6, 1.9, 1.25, 0.0, 0.8, 1.4, 0.0];
    let t_len = xi.len();
    let h = 0.5;
    for model in MODELS {
        let c = Case::new(model, t_len, 21);
        let g0 = c.run(&Truncation::Pattern(xi.clone())).grads;
        let mut nonzero_first_difference = 0;
        for t in 0..t_len {
            let mut plus = xi.clone();
            plus[t] += h;
            let mut minus = xi.clone();
            minus[t] -= h;
            let gp = c.run(&Truncation::Pattern(plus)).grads;
            let gm = c.run(&Truncation::Pattern(minus)).grads;
            for (id, a0) in g0.iter() {
                let (ap, am) = (gp.get(id).unwrap(), gm.get(id).unwrap());
                let what = format!("{model:?} t={t} {id:?}");
                let scale =
                    finite_scale(a0.iter().chain(ap.iter()).chain(am.iter()).copied(), &what);
                // G(ξ + h e_t) + G(ξ − h e_t) against 2 G(ξ); +∞ on a non-finite entry.
                let worst = max_abs_diff(
                    ap.iter().zip(am.iter()).map(|(p, m)| p + m),
                    a0.iter().map(|z| 2.0 * z),
                );
                let first = max_abs_diff(ap.iter().copied(), am.iter().copied());
                assert!(
                    worst <= 1e-12 * scale,
                    "{what}: second difference {worst:e}, scale {scale:e}"
                );
                if first > 1e-6 * scale {
                    nonzero_first_difference += 1;
                }
            }
        }
        // Not vacuous: perturbing ξ_t (t ≥ 2) does move the estimate.
        assert!(nonzero_first_difference > 0, "{model:?}");
    }
}

/// ξ_1 sits on the edge from the constant h_0: it never changes the estimate.
#[test]
fn xi_one_has_no_effect() {
    for model in MODELS {
        let c = Case::new(model, 8, 2);
        let mut xi = vec![1.0, 1.5, 0.0, 2.0, 1.0, 0.0, 1.25, 1.0];
        let base = c.run(&Truncation::Pattern(xi.clone()));
        for x1 in [0.0, 3.0, -2.0] {
            xi[0] = x1;
            let r = c.run(&Truncation::Pattern(xi.clone()));
            assert!(r.grads == base.grads, "{model:?} ξ_1 = {x1}");
            assert_eq!(r.segments, base.segments, "{model:?} ξ_1 = {x1}");
        }
    }
}

/// Window sizes beyond T (up to `usize::MAX`) mean "the whole sequence": `Full`.
///
/// FAILS under `cargo test` without `--release` (overflow checks on): `run_tbptt`
/// computes the next update as `(u + k1).min(T)`, which overflows for k1 > usize::MAX − T
/// ("attempt to add with overflow" at `let next_u = (u + k1).min(t_len);` in
/// src/bptt/mod.rs). In release the sum wraps and happens to give the right windows.
/// `(u + k1).min(T)` should be `u + k1.min(T − u)` (or a saturating add).
#[test]
fn huge_window_sizes_mean_the_whole_sequence() {
    for model in MODELS {
        let c = Case::new(model, 9, 8);
        let full = c.run(&Truncation::Full);
        for tr in [
            Truncation::Fixed { k: usize::MAX },
            Truncation::Tbptt {
                k1: usize::MAX,
                k2: usize::MAX,
            },
            Truncation::Tbptt {
                k1: 4,
                k2: usize::MAX,
            },
            Truncation::Tbptt {
                k1: usize::MAX - 1,
                k2: usize::MAX,
            },
        ] {
            let r = c.run(&tr);
            assert_close(&r.grads, &full.grads, TOL, &format!("{model:?} {tr:?}"));
        }
    }
}

/// `Workspace::run` reuses one tape (and its free list of buffers, whose contents are stale)
/// from run to run: every result must be bitwise the result of a fresh `run`, whatever
/// ran before on the workspace (other models, lengths, strategies).
#[test]
fn run_with_a_reused_workspace_is_bitwise_run() {
    let mut ws = Workspace::new();
    let strategies = [
        Truncation::Full,
        Truncation::Fixed { k: 3 },
        Truncation::Tbptt { k1: 2, k2: 5 },
        Truncation::Randomized {
            pi: Pi::Constant(0.6),
            seed: 8,
        },
    ];
    for round in 0..2 {
        for (t, model) in [
            (13, Model::M3),
            (4, Model::M1),
            (21, Model::M2),
            (7, Model::M3),
        ] {
            let c = Case::new(model, t, 40 + t as u64);
            for tr in &strategies {
                let fresh = c.run(tr);
                let reused = ws
                    .run(&c.cell, &c.params, &c.seq(), &Run::new(tr.clone()))
                    .unwrap();
                let what = format!("round {round} {model:?} T={t} {tr:?}");
                assert!(reused.grads == fresh.grads, "{what}: grads");
                assert_eq!(reused.loss.to_bits(), fresh.loss.to_bits(), "{what}: loss");
                assert_eq!(
                    reused.peak_tape_nodes, fresh.peak_tape_nodes,
                    "{what}: nodes"
                );
                assert_eq!(reused.xi, fresh.xi, "{what}: xi");
            }
        }
    }
}
