//! # timetape
//!
//! Backpropagation through time (BPTT) on a small, fast tape, with gradients you can
//! trust: every op is checked against finite differences, every model of the notes
//! against its hand-derived closed form, and the randomized truncation estimator against
//! its exact expectation by enumeration.
//!
//! ## The engine
//!
//! A [`Tape`] is a Wengert list over 2-D `ndarray` matrices (batch-major: B×n), generic
//! over `f32` and `f64`. Parameters live outside it in [`Params`]; each forward pass
//! registers them with [`Tape::param`], and [`Tape::backward`] returns their [`Grads`].
//! A [`Var`] is a `Copy` handle; ops return [`Result`] and never panic on user input.
//!
//! ```
//! use ndarray::array;
//! use timetape::{Params, Reduction, Tape};
//!
//! let mut params = Params::<f64>::new();
//! let w = params.add("W", array![[0.5, -0.3], [0.2, 0.1]])?;
//! let mut tape = Tape::new();
//! let x = tape.constant(array![[1.0, 2.0]])?;
//! let wv = tape.param(&params, w)?;
//! let logits = tape.matmul(x, wv)?;
//! let loss = tape.softmax_cross_entropy(logits, &[1], None, Reduction::Mean)?;
//! let grads = tape.backward(loss)?;
//! println!("∂L/∂W = {}", grads.get(w).unwrap());
//! # Ok::<(), timetape::Error>(())
//! ```
//!
//! ## BPTT and its three strategies
//!
//! With `h_t = f(x_t, h_{t−1}, w)` and a loss summed over steps, the derivative of the
//! state with respect to a weight obeys (notes, eqs (3)–(5))
//!
//! ```text
//! a_t = ∂h_t/∂w = b_t + c_t a_{t−1} = b_t + Σ_{i<t} (Π_{j=i+1..t} c_j) b_i,
//! b_t = ∂f(x_t, h_{t−1}, w)/∂w,   c_t = ∂f(x_t, h_{t−1}, w)/∂h_{t−1}.
//! ```
//!
//! In a linear RNN the adjoint is a power sum, `δ_t = Σ_{j≥t} (W_hhᵀ)^{j−t} W_qhᵀ ∂L/∂o_j`
//! (eq (9)): eigenvalues of `W_hh` below 1 in modulus vanish, above 1 explode.
//!
//! 1. **Full BPTT** keeps the whole sum.
//! 2. **Regular truncation** detaches `h` at block starts: the sum runs over the block only.
//! 3. **Randomized truncation** (Tallec & Ollivier 2017) uses `z_t = b_t + ξ_t c_t z_{t−1}`
//!    with independent `ξ_t`, `P(ξ_t = 0) = 1 − π_t`, `P(ξ_t = 1/π_t) = π_t`. Since
//!    `E[ξ_t] = 1` and the estimate is affine in each ξ_t, `E[z_t] = a_t`: it is unbiased.
//!
//! On the tape, the edge `h_{t−1} → step t` is [`Tape::detach`] where ξ_t = 0 and
//! [`Tape::scale_grad`]`(·, 1/π_t)` elsewhere; every strategy is a pattern of edges, run
//! by [`bptt::run`] one segment at a time: a [`rnn::Sequence`] (inputs, initial state,
//! loss) run as a [`bptt::Run`] says (truncation, memory policy, options).
//!
//! | strategy | gradient | backward steps | tape memory |
//! |---|---|---|---|
//! | [`bptt::Truncation::Full`] | exact | T | T steps |
//! | [`bptt::Memory::Checkpointed`] (with `Full`) | exact | T (2T forward) | ≈ 2√T steps (√T states + one segment) |
//! | [`bptt::Truncation::Fixed`] `{ k }` | biased (short horizon) | T | k steps |
//! | [`bptt::Truncation::Tbptt`] `{ k1, k2 }` | biased | ≈ T k2/k1 | k2 steps |
//! | [`bptt::Truncation::Randomized`] `{ π }` | unbiased, with variance | T | one segment, mean 1/(1 − π) |
//! | [`bptt::Truncation::Windows`] `{ lengths }` (AWD-LSTM) | biased (no 1/π reweighting) | T | one window, mean E\[L\] |
//! | [`bptt::Truncation::Adaptive`] | biased, within δ (estimated bound) | ≈ T K/k1, and a one-step measurement per window step | K steps, chosen per update |
//! | [`bptt::Truncation::PerRow`] | each row as its own truncation | T | one segment (until every row is cut) |
//! | [`bptt::Memory::Revolve`] `{ states: s }` (with any cut-based truncation) | as the truncation | T (T + rT − C(s + r, s + 1) forward) | s states + one step |
//! | [`bptt::online::Estimator::Rtrl`] (forward mode) | exact (or any ξ pattern's) | none: B·S + 1 one-step VJPs a step | one step; carries B·S·P floats |
//! | [`bptt::online::Estimator::Uoro`] | unbiased, high variance | none (as RTRL) | one step; carries B·S + P floats (and holds a step's Jacobians, B·S × (B·S + P), while linearizing it) |
//! | [`bptt::online::Estimator::KfRtrl`] (vanilla RNN) | unbiased, less variance than UORO | none (as RTRL) | one step; carries B·(S² + D + S + 1) floats (and a step's Jacobians, as UORO) |
//!
//! ## Choosing an estimator
//!
//! [`bptt::atlas`] computes every estimator's bias, variance and cost on your model and
//! data, exactly where the randomness can be enumerated (every ξ pattern, every sign
//! vector) and by seeded Monte Carlo with standard errors where it cannot;
//! [`bptt::atlas::expectation`] gives the exact mean of `Randomized` at any length. On
//! the notes' tanh RNN with n = 3 hidden units, T = 5 (`cargo run --release --example
//! atlas`, exact; spread = √tr Cov / ‖g‖):
//!
//! | method | relative bias | spread | memory (bytes: peak tape + carried) |
//! |---|---|---|---|
//! | `Full` | 0 | 0 | 1192 |
//! | `Fixed { k: 1 }`, `{ k: 2 }` | 0.155, 0.181 | 0 | 592, 736 |
//! | `Tbptt { k1: 1, k2: 2 }` | 0.101 | 0 | 656 (and 9 backward steps, not 5) |
//! | `Randomized { π: 0.5 }`, `{ π: 0.8 }` | ≤ 1.5e-16 (rounding) | 0.241, 0.109 | 895, 1135 (expected) |
//! | `Windows` (lengths 1, 2, 3 w.p. 0.2, 0.3, 0.5) | 0.073 | 0.096 | 860 (expected) |
//! | the same windows reweighted (`Randomized { pi: lengths.unbiased_pi() }`) | ≤ 1.5e-16 | 0.173 | 987 (expected) |
//! | RTRL | ≤ 1.5e-16 | 0 | 1264 |
//! | UORO | ≤ 1.6e-16 | 0.401 | 872 |
//! | KF-RTRL | ≤ 1.6e-16 | 0.194 | 760 |
//!
//! (Memory is the expected peak of the tape plus what an online estimator carries from
//! step to step; the Jacobians this crate's online estimators take of each step, B·S ×
//! (B·S + P) floats, are not in it.)
//!
//! What the numbers say, and what they do not: truncation's bias does not shrink
//! steadily with k (`Fixed { k: 2 }` is further off than `k: 1` here), so a window is
//! only "long enough" once it is measured; the unbiased estimators trade the bias for a
//! spread that grows as π falls; KF-RTRL's Kronecker factors carry less than a quarter
//! of UORO's variance here in even less memory, but exist only for the vanilla RNN;
//! RTRL's carried B·S·P floats grow with the state times the number of weights, which
//! is for small models and for checking. On the GRU of the same example, UORO's spread is
//! 0.50 and `Randomized { π: 0.5 }`'s 0.30.
//!
//! Variable-length windows as AWD-LSTM draws them ([`bptt::Truncation::Windows`]) are
//! biased, and [`bptt::atlas::expectation`] measures by how much at any length: on the
//! influence-balancing problem of FORMULAS.md (n = 23, p = 10, T = 400, from the fixed
//! point of θ = 0.5) the exact `E[∂L/∂θ]` of AWD's windows is −6395 (base 70) and −16430
//! (base 35) where the gradient is +6968: the wrong sign, a bias of −1.92 and −3.36
//! times the gradient. The same windows reweighted by 1/π
//! ([`bptt::WindowLengths::unbiased_pi`]) are exact to 2e-14.
//!
//! ## Non-finite values
//!
//! One policy, everywhere: **a result handed out as `Ok` is finite**, and where that
//! cannot be promised without a cost on every op there is a documented switch that
//! names the first place a non-finite value arose. In detail:
//!
//! - What comes in is checked: a NaN or ±∞ in an input ([`Tape::constant`],
//!   [`Tape::variable`], targets), a parameter ([`Params::add`], [`Params::set`], and
//!   whenever [`Tape::param`] copies a value onto a tape: at its first registration and
//!   after every change, so that a value written through [`Params::get_mut`] is caught
//!   where it is next used), or a backward seed is an [`Error::NonFinite`].
//! - Since every leaf is finite, a non-finite value can only come from an overflow
//!   inside an op (`exp`, a product of huge values, an exploding RNN). Op results
//!   (`Ok(Var)`) are not checked by default; [`Tape::set_check_finite`] (or
//!   [`bptt::RunOptions::check_finite`]) checks every op's output and reports the op,
//!   the node and, in an unroll, the step where the first non-finite value arose.
//! - A backward pass refuses to start from a non-finite loss and refuses to return a
//!   non-finite gradient: an `Ok(Grads)` is finite. So is every [`bptt::Report`] (loss,
//!   gradients, ‖∂L/∂h_t‖, final state), every [`gradcheck`](gradcheck::gradcheck)
//!   report, and every optimizer step ([`optim`] refuses a step that would overflow a
//!   parameter or its state, before changing anything).
//! - Comparisons fail on non-finite values: [`Grads::max_rel_diff`] is +∞ if either
//!   side has one, and a NaN error never passes a gradcheck.
//!
//! ## Modules
//!
//! - [`tape`], [`ops`]: the engine and its ops (forward and backward side by side).
//! - [`params`]: parameters and gradients; [`gradcheck`]: central finite differences.
//! - [`rnn`]: cells ([`rnn::Recurrent`]: the notes' RNN (M1–M4), GRU, LSTM, or your
//!   own, which needs only `bind`, its widths, `step` and `output`), stacks of them
//!   ([`rnn::Stack`]), token inputs ([`rnn::Embedded`], [`rnn::Sequence::tokens`]), and
//!   sequence losses built from their targets ([`rnn::SequenceLoss`]).
//! - [`bptt`]: the strategies, streaming, checkpointing, exact enumeration, online
//!   estimators ([`bptt::online`]: RTRL, UORO, KF-RTRL), the atlas of every estimator's
//!   bias, variance and cost ([`bptt::atlas`]), and data-parallel runs on threads ([`bptt::Parallel`], [`bptt::AllReduce`]; over MPI
//!   with the `mpi` feature, `timetape::mpi`).
//! - [`optim`]: SGD, Adam, clipping; [`diagnostics`]: ‖∂L/∂h_t‖, spectral radius.
//! - [`checkpoint`]: save and resume a training run bit for bit (safetensors).
//! - [`torch`]: PyTorch `nn.RNN`/`nn.GRU`/`nn.LSTM` state dicts in and out.
//! - [`kernels`]: the matrix product of the tape's rules, for references and benchmarks.
//!
//! Out of scope: higher-order gradients, GPUs, f16/bf16, tensors beyond matrices.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod error;
pub mod gradcheck;
pub mod ops;
pub mod params;
pub mod scalar;
pub(crate) mod simd;
pub mod tape;

/// The `ndarray` this crate is built on, so that users need not pin its version.
pub use ndarray;

pub use error::{Error, Result};
pub use ops::{Activation, Along, Binary, Reduction};
pub use params::{Grads, ParamId, Params};
pub use scalar::Scalar;
pub use tape::{Tape, TapeStats, Var};
pub mod bptt;
pub mod checkpoint;
pub mod closed_form;
pub mod diagnostics;
pub mod init;
pub mod kernels;
#[cfg(feature = "mpi")]
pub mod mpi;
pub mod optim;
pub mod rnn;
pub mod torch;

/// The README's example, compiled and run as a doctest.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
