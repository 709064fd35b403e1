//! Backpropagation through time: full, truncated by `detach`, TBPTT(k1, k2), and the
//! randomized, unbiased truncation of Tallec & Ollivier (2017), all run segment by
//! segment so that the tape holds one segment at a time.
//!
//! Every strategy except TBPTT with k2 ≠ k1 is a pattern of ξ_t on the edges
//! `h_{t−1} → step t` (FORMULAS.md, "The scalar chain and the three strategies"):
//!
//! | strategy | ξ_t | edge into step t |
//! |---|---|---|
//! | [`Truncation::Full`] | 1 | kept |
//! | [`Truncation::Fixed`] `{ k }` | 0 at block starts (t ≡ 1 mod k), else 1 | `detach` / kept |
//! | [`Truncation::Randomized`] `{ pi, seed }` | 0 w.p. 1 − π_t, else 1/π_t | `detach` / `scale_grad(·, 1/π_t)` |
//! | [`Truncation::Windows`] `{ lengths, seed }` | 0 at window starts (iid lengths), else 1 | `detach` / kept |
//! | [`Truncation::Pattern`] | given | `detach` if 0, else `scale_grad(·, ξ_t)` |
//!
//! A ξ_t = 0 cuts the sequence: the runner finishes the segment before the cut (its
//! backward pass, adding into the [`Grads`]), clears the tape and starts the next
//! segment from the detached state. Memory follows the segment length, not T.
//!
//! [`Truncation::Tbptt`] `{ k1, k2 }` (Williams & Peng 1990): every k1 steps, the losses
//! of those k1 steps are backpropagated k2 ≥ k1 steps into the past; each update
//! recomputes its window of k2 steps from the stored state at its start.
//!
//! [`Truncation::Windows`] is AWD-LSTM's variable-length truncation ([`WindowLengths`],
//! [`Awd`]): biased, since a kept edge is not reweighted; [`WindowLengths::unbiased_pi`]
//! gives the same windows as an unbiased `Randomized`.
//!
//! [`Truncation::PerRow`] gives each batch row (an independent sequence) its own
//! truncation: ξ_t becomes a vector over the rows ([`Tape::scale_grad_rows`] on the
//! edge where they differ), and [`Sequence::with_resets`] restarts single rows at their
//! episode boundaries; every runner honours both.
//!
//! [`Truncation::Adaptive`] is TBPTT whose window is chosen at every update from the
//! measured decay of ‖∂L/∂h‖, as the shortest whose estimated relative bias is within a
//! tolerance ([`Adaptive`]).
//!
//! [`Memory::Revolve`] keeps at most s states by binomial checkpointing ([`revolve`]),
//! within the segments of any cut-based truncation;
//! [`Memory::Checkpointed`] gives exact full-BPTT gradients with O(√T) tape memory, and
//! [`enumerate`] the exact expectation and variance of the randomized and windowed
//! estimators.
//!
//! A sequence ([`Sequence`]) and how it is run ([`Run`]: truncation, memory policy,
//! options) are values, taken alike by [`run`], [`Workspace::run`] and [`Stream`].
//! Recording a segment (the unroll with its edges, the loss terms, the output head on
//! chunks of steps) is done in one place, `bptt::segment`; [`unroll`] records a whole
//! sequence on a tape of the caller's.

mod adaptive;
pub mod atlas;
mod checkpoint;
pub mod enumerate;
pub mod online;
mod parallel;
pub mod revolve;
mod segment;
mod stream;
mod unroll;
mod windows;
mod xi;

pub use adaptive::{Adaptive, AdaptiveUpdate, MAX_ADAPTIVE_WINDOW};
#[cfg(feature = "mpi")]
pub(crate) use parallel::tree_sum_scalars;
pub use parallel::{
    shard_rows, tree_sum, AllReduce, Local, Parallel, ParallelStream, STREAM_BLOCK,
};
pub use segment::Edge;
pub use stream::{StepTarget, Stream};
pub use unroll::{unroll, Unroll, Unrolled};
pub use windows::{segment_lengths, Awd, WindowLengths, MAX_WINDOW};
pub use xi::{sample_xi, Pi, XiSampler};
pub(crate) use xi::{Law, XiPosition, XiTable};

use crate::error::{invalid, Error, Result};
use crate::params::{Grads, Params};
use crate::rnn::{Recurrent, Sequence};
use crate::scalar::Scalar;
use crate::tape::Tape;
use ndarray::Array2;
use segment::{Engine, Pass, Problem, Recording};

/// How far gradients travel back in time.
#[derive(Debug, Clone)]
pub enum Truncation {
    /// BPTT over the whole sequence (one segment).
    Full,
    /// The notes' regular truncation: blocks of k steps, h detached at each block start.
    Fixed {
        /// Block length, k ≥ 1.
        k: usize,
    },
    /// TBPTT(k1, k2): every k1 steps, backpropagate the last k1 losses k2 ≥ k1 steps.
    ///
    /// The windows, exactly (steps 1-based, `u_0 = 0`): updates happen at
    /// `u_j = min(j·k1, T)` for `j = 1, …, ⌈T/k1⌉`; update j injects the losses of steps
    /// `u_{j−1} + 1 ..= u_j` and backpropagates them through the steps
    ///
    /// ```text
    /// max(0, u_{j−1} − (k2 − k1)) + 1  ..=  u_j
    /// ```
    ///
    /// so a full window holds k2 steps and every loss travels back between k2 − k1 + 1
    /// and k2 steps. **The last partial window** (when k1 does not divide T) is treated
    /// its own way: it reaches k2 − k1 steps before the previous update, as every window
    /// does, and so holds `T − u_{J−1} + k2 − k1 < k2` steps, not the k2 steps
    /// `T − k2 + 1 ..= T` that a literal reading of Williams & Peng would give. This is
    /// what makes `Tbptt { k1: k, k2: k }` equal `Fixed { k }` for every T (the last
    /// block of `Fixed` is short too), and it costs `Full` nothing: with k2 ≥ ⌈T/k1⌉·k1,
    /// every window starts at step 1.
    ///
    /// ```
    /// use ndarray::{Array2, Array3};
    /// use timetape::bptt::{run, RunOptions, Truncation};
    /// use timetape::rnn::{models, SequenceLoss, Sequence, Sizes};
    /// use timetape::Params;
    /// use timetape::bptt::{Run};
    ///
    /// let mut params = Params::<f64>::new();
    /// let cell = models::m3(&mut params, Sizes::new(2, 3, 2), 0)?;
    /// let xs = Array3::from_shape_fn((10, 1, 2), |(t, _, d)| (t + d) as f64 * 0.1);
    /// let labels = Array2::from_shape_fn((10, 1), |(t, _)| t % 2);
    /// let loss = SequenceLoss::classes(labels.view());
    /// // T = 10, k1 = 4, k2 = 6: updates at 4, 8, 10; windows 1..=4, 3..=8, 7..=10.
    /// let r = run(&cell, &params, &Sequence::new(xs.view(), loss), &Run::new(Truncation::Tbptt { k1: 4, k2: 6 }))?;
    /// assert_eq!(r.backward_steps, 4 + 6 + 4);
    /// # Ok::<(), timetape::Error>(())
    /// ```
    Tbptt {
        /// Steps between updates, k1 ≥ 1.
        k1: usize,
        /// Steps backpropagated, k2 ≥ k1.
        k2: usize,
    },
    /// The randomized, unbiased truncation: ξ_t = 0 with probability 1 − π_t, else 1/π_t.
    Randomized {
        /// The survival probabilities π_t ∈ (0, 1].
        pi: Pi,
        /// Seed of the ξ draws: the same seed gives bit-identical gradients.
        seed: u64,
    },
    /// An explicit ξ_1..ξ_T (any reals; 0 cuts). Replays a sampled run, or builds any
    /// of the other cut-based strategies by hand.
    Pattern(Vec<f64>),
    /// Variable-length windows, as AWD-LSTM trains: consecutive windows of independent
    /// lengths drawn from `lengths`, h detached at every window start. ξ_t = 0 at the
    /// first step of every window after the first, 1 elsewhere: no 1/π rescaling, so the
    /// gradient is **biased** (a loss sees the parameters' use i steps back only when
    /// no window starts in between, and nothing makes up for the times it does not).
    /// `Randomized { pi: lengths.unbiased_pi(), seed }` cuts the same windows and
    /// reweights them: unbiased.
    ///
    /// Drawn as a hazard ([`XiSampler::windows`]): after m steps of the current window,
    /// the next step starts a new one with probability `P(L = m)/P(L ≥ m)`, one uniform
    /// draw per step from the seeded ChaCha8 stream of `Randomized`. The windows are
    /// those of [`Truncation::xi`] and [`Report::xi`]; [`segment_lengths`] lists their
    /// lengths, and [`WindowLengths::lr_scale`] gives AWD-LSTM's learning-rate scale.
    ///
    /// ```
    /// use ndarray::{Array2, Array3};
    /// use timetape::bptt::{run, segment_lengths, Awd, Run, Truncation, WindowLengths};
    /// use timetape::rnn::{models, Sequence, SequenceLoss, Sizes};
    /// use timetape::Params;
    ///
    /// let mut params = Params::<f64>::new();
    /// let cell = models::m3(&mut params, Sizes::new(2, 4, 3), 0)?;
    /// let xs = Array3::from_shape_fn((300, 1, 2), |(t, _, d)| ((t + d) as f64).sin());
    /// let labels = Array2::from_shape_fn((300, 1), |(t, _)| t % 3);
    /// let seq = Sequence::new(xs.view(), SequenceLoss::classes(labels.view()));
    /// let lengths = WindowLengths::awd(Awd::default())?;
    /// let windows = Truncation::Windows { lengths: lengths.clone(), seed: 1 };
    /// let r = run(&cell, &params, &seq, &Run::new(windows))?;
    /// let xi = r.xi.expect("the windows used");
    /// let lens = segment_lengths(&xi);
    /// assert_eq!(lens.iter().sum::<usize>(), 300);
    /// assert_eq!(lens.len(), r.segments);
    /// // all but the last (cut short by T) are AWD lengths
    /// assert!(lens[..lens.len() - 1].iter().all(|&l| lengths.pmf(l) > 0.0));
    /// let lr: Vec<f64> = lens.iter().map(|&l| 0.1 * lengths.lr_scale(l)).collect();
    /// # let _ = lr;
    /// # Ok::<(), timetape::Error>(())
    /// ```
    Windows {
        /// The distribution of the window lengths.
        lengths: WindowLengths,
        /// Seed of the draws: the same seed gives the same windows.
        seed: u64,
    },
    /// Adaptive truncation (after Aicher, Foti & Fox 2019): TBPTT whose window is chosen
    /// at every update, from the decay of ‖∂L/∂h‖ it has just measured, as the shortest
    /// whose estimated relative bias is within δ (see [`Adaptive`]). [`Report::adaptive`]
    /// lists every update's window, fitted decay and bound. Not streamed.
    ///
    /// ```
    /// use ndarray::{Array2, Array3};
    /// use timetape::bptt::{run, Adaptive, Run, Truncation};
    /// use timetape::rnn::{models, SequenceLoss, Sequence, Sizes};
    /// use timetape::Params;
    ///
    /// let mut params = Params::<f64>::new();
    /// let cell = models::m3(&mut params, Sizes::new(2, 4, 3), 0)?;
    /// let xs = Array3::from_shape_fn((100, 1, 2), |(t, _, d)| ((t + d) as f64).sin());
    /// let labels = Array2::from_shape_fn((100, 1), |(t, _)| t % 3);
    /// let seq = Sequence::new(xs.view(), SequenceLoss::classes(labels.view()));
    /// let how = Truncation::Adaptive(Adaptive::new(10, 0.05, 40));
    /// let r = run(&cell, &params, &seq, &Run::new(how))?;
    /// assert_eq!(r.adaptive.len(), 10); // an update every 10 steps
    /// for u in &r.adaptive {
    ///     assert!(u.next_window > 10 && u.next_window <= 40);
    ///     println!("after step {}: decay {:.3}, next window {} (bound {:.1e})",
    ///              u.step, u.decay, u.next_window, u.bound);
    /// }
    /// # Ok::<(), timetape::Error>(())
    /// ```
    Adaptive(Adaptive),
    /// One cut-based truncation per batch row, for a batch of independent sequences:
    /// ξ_t becomes a vector over the rows (each row's ξ drawn or given by its own
    /// truncation), so that each sequence is cut, kept or reweighted on its own. A step
    /// whose rows differ gets [`Tape::scale_grad_rows`] on its edge (a row with ξ = 0 is
    /// cut, the others go on); a step where they agree gets the shared edge, so that the
    /// same truncation on every row gives the shared run bit for bit. The segments end
    /// where every row is cut. [`Report::xi_rows`] gives the (T, B) table.
    /// Rows may be `Full`, `Fixed`, `Tbptt` with k1 = k2, `Randomized`, `Windows` or
    /// `Pattern`; [`Truncation::randomized_rows`] builds independent randomized rows.
    ///
    /// ```
    /// use ndarray::{Array2, Array3};
    /// use timetape::bptt::{run, Pi, Run, Truncation};
    /// use timetape::rnn::{models, SequenceLoss, Sequence, Sizes};
    /// use timetape::Params;
    ///
    /// let mut params = Params::<f64>::new();
    /// let cell = models::m3(&mut params, Sizes::new(2, 3, 2), 0)?;
    /// let xs = Array3::from_shape_fn((20, 4, 2), |(t, b, d)| ((t + 3 * b + d) as f64).sin());
    /// let labels = Array2::from_shape_fn((20, 4), |(t, b)| (t + b) % 2);
    /// let seq = Sequence::new(xs.view(), SequenceLoss::classes(labels.view()));
    /// let how = Truncation::randomized_rows(Pi::Constant(0.8), 7, 4);
    /// let r = run(&cell, &params, &seq, &Run::new(how))?;
    /// let xi = r.xi_rows.expect("the table of ξ");
    /// assert_eq!(xi.dim(), (20, 4));
    /// # Ok::<(), timetape::Error>(())
    /// ```
    PerRow(Vec<Truncation>),
}

impl Truncation {
    /// Checks the parameters for a sequence of `t_len` steps.
    ///
    /// Errors: [`Error::InvalidArgument`] for k = 0, k1 = 0, k2 < k1, a constant π
    /// outside (0, 1], a pattern with a non-finite entry; [`Error::ShapeMismatch`] for a
    /// pattern whose length is not `t_len`. (`Windows` is always valid: its
    /// [`WindowLengths`] was checked when it was built.)
    pub fn validate(&self, t_len: Option<usize>) -> Result<()> {
        let op = "Truncation";
        match self {
            Truncation::Full => Ok(()),
            Truncation::Fixed { k } if *k == 0 => Err(invalid(op, "Fixed needs k ≥ 1")),
            Truncation::Fixed { .. } => Ok(()),
            Truncation::Tbptt { k1, .. } if *k1 == 0 => Err(invalid(op, "Tbptt needs k1 ≥ 1")),
            Truncation::Tbptt { k1, k2 } if k2 < k1 => Err(invalid(
                op,
                format!("Tbptt needs k2 ≥ k1, got k1 = {k1}, k2 = {k2}"),
            )),
            Truncation::Tbptt { .. } => Ok(()),
            Truncation::Randomized { pi, .. } => match pi {
                Pi::Constant(p) => xi::check_pi(*p),
                _ => Ok(()),
            },
            // A `WindowLengths` is checked when it is built.
            Truncation::Windows { .. } => Ok(()),
            Truncation::Adaptive(how) => how.validate(),
            Truncation::PerRow(rows) => {
                if rows.is_empty() {
                    return Err(invalid(op, "PerRow needs a truncation per batch row"));
                }
                for row in rows {
                    let cut_based = match row {
                        Truncation::Tbptt { k1, k2 } => k1 == k2,
                        Truncation::Adaptive(_) | Truncation::PerRow(_) => false,
                        _ => true,
                    };
                    if !cut_based {
                        return Err(invalid(
                            op,
                            "PerRow takes cut-based truncations (not TBPTT with k2 ≠ k1, \
                             Adaptive or PerRow)",
                        ));
                    }
                    row.validate(t_len)?;
                }
                Ok(())
            }
            Truncation::Pattern(xi) => {
                if let Some(t) = t_len {
                    if xi.len() != t {
                        return Err(Error::ShapeMismatch {
                            op: "Truncation::Pattern",
                            lhs: (t, 1),
                            rhs: (xi.len(), 1),
                        });
                    }
                }
                if xi.iter().any(|x| !x.is_finite()) {
                    return Err(invalid(op, "non-finite ξ in pattern"));
                }
                Ok(())
            }
        }
    }

    /// The ξ_1..ξ_T of a cut-based strategy shared by the rows (`None` for TBPTT with
    /// k2 ≠ k1, adaptive truncation and per-row ξ).
    pub fn xi(&self, t_len: usize) -> Result<Option<Vec<f64>>> {
        self.validate(Some(t_len))?;
        Ok(match self {
            Truncation::Full => Some(crate::init::try_collect("Truncation::xi", t_len, |_| 1.0)?),
            Truncation::Fixed { k } => Some(fixed_pattern(t_len, *k)?),
            Truncation::Tbptt { k1, k2 } if k1 == k2 => Some(fixed_pattern(t_len, *k1)?),
            Truncation::Tbptt { .. } | Truncation::Adaptive(_) | Truncation::PerRow(_) => None,
            Truncation::Randomized { pi, seed } => Some(sample_xi(pi, t_len, *seed)?),
            Truncation::Windows { lengths, seed } => {
                Some(xi::draw(XiSampler::windows(lengths.clone(), *seed), t_len)?)
            }
            Truncation::Pattern(xi) => Some(xi.clone()),
        })
    }

    /// Independent randomized truncation for each of `batch` rows: row r is
    /// `Randomized { pi, seed: seed + r }` (wrapping).
    pub fn randomized_rows(pi: Pi, seed: u64, batch: usize) -> Truncation {
        Truncation::PerRow(
            (0..batch as u64)
                .map(|r| Truncation::Randomized {
                    pi: pi.clone(),
                    seed: seed.wrapping_add(r),
                })
                .collect(),
        )
    }

    /// The truncation of the batch rows `rows`: the same, or for [`Truncation::PerRow`]
    /// those rows' truncations (how a batch split across workers keeps each row's ξ).
    ///
    /// Errors: [`Error::InvalidArgument`] for rows outside a `PerRow`'s rows.
    pub fn rows(&self, rows: std::ops::Range<usize>) -> Result<Truncation> {
        match self {
            Truncation::PerRow(all) => all
                .get(rows.clone())
                .map(|r| Truncation::PerRow(r.to_vec()))
                .ok_or_else(|| {
                    invalid(
                        "Truncation::rows",
                        format!("rows {rows:?} of {}", all.len()),
                    )
                }),
            other => Ok(other.clone()),
        }
    }

    /// The ξ of a cut-based run of `t_len` steps and `batch` rows.
    pub(crate) fn xi_table(&self, t_len: usize, batch: usize) -> Result<Option<xi::XiTable>> {
        let Truncation::PerRow(rows) = self else {
            return Ok(self.xi(t_len)?.map(xi::XiTable::Shared));
        };
        self.validate(Some(t_len))?;
        if rows.len() != batch {
            return Err(Error::ShapeMismatch {
                op: "Truncation::PerRow",
                lhs: (batch, 1),
                rhs: (rows.len(), 1),
            });
        }
        let mut table = Array2::zeros((t_len, batch));
        for (r, row) in rows.iter().enumerate() {
            let xi = row
                .xi(t_len)?
                .ok_or_else(|| invalid("Truncation::PerRow", "a row without ξ"))?;
            table.column_mut(r).assign(&ndarray::Array1::from(xi));
        }
        Ok(Some(xi::XiTable::Rows(table)))
    }

    /// Whether a run's [`Report::xi`] holds the ξ used (the strategies that draw or
    /// are given them).
    pub(crate) fn reports_xi(&self) -> bool {
        matches!(
            self,
            Truncation::Randomized { .. } | Truncation::Windows { .. } | Truncation::Pattern(_)
        )
    }
}

/// ξ of `Fixed { k }`: 0 at steps 1, k + 1, 2k + 1, … (block starts), 1 elsewhere.
///
/// ```
/// use timetape::bptt::fixed_pattern;
/// assert_eq!(fixed_pattern(5, 2)?, vec![0.0, 1.0, 0.0, 1.0, 0.0]);
/// assert!(fixed_pattern(5, 0).is_err());
/// # Ok::<(), timetape::Error>(())
/// ```
///
/// Errors: [`Error::InvalidArgument`] for k = 0, or a length that cannot be allocated.
pub fn fixed_pattern(t_len: usize, k: usize) -> Result<Vec<f64>> {
    if k == 0 {
        return Err(invalid("fixed_pattern", "k must be ≥ 1"));
    }
    crate::init::try_collect(
        "fixed_pattern",
        t_len,
        |t| if t % k == 0 { 0.0 } else { 1.0 },
    )
}

/// Options of a run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RunOptions {
    /// Record ‖∂L/∂h_t‖ (Frobenius norm over the batch) for every step, as seen by the
    /// backward pass of the segment (or TBPTT window) that holds step t's loss.
    pub dh_norms: bool,
    /// Check the output of every op ([`Tape::set_check_finite`]): an overflow is then
    /// reported as [`Error::NonFinite`] naming the op and the step where it arose,
    /// instead of by the backward pass that meets it. Costs one pass over every value.
    pub check_finite: bool,
    /// Set subnormal adjoint entries to zero before they propagate
    /// ([`Tape::set_flush_subnormals`]): f32 runs whose adjoints vanish over a long
    /// segment avoid the slow subnormal arithmetic; the gradient changes by less than
    /// the smallest normal number in any entry it touches.
    pub flush_subnormals: bool,
}

/// What a run computed and what it cost.
#[derive(Debug, Clone)]
pub struct Report<F> {
    /// The loss (the full loss, whatever the truncation: truncation changes gradients,
    /// not the forward pass).
    pub loss: F,
    /// The gradient estimate.
    pub grads: Grads<F>,
    /// Backward steps taken: steps recorded on a tape and backpropagated (T for Full,
    /// Fixed, Randomized and Windows with a loss at every step; for TBPTT the sum of its
    /// window lengths, ≈ T k2/k1). Segments that hold no loss term (a last-step loss) run
    /// no backward pass and are not counted.
    pub backward_steps: usize,
    /// Forward steps computed (T, or more when windows are recomputed: TBPTT,
    /// checkpointing).
    pub forward_steps: usize,
    /// Segments (tapes) backpropagated.
    pub segments: usize,
    /// The ξ_1..ξ_T used by `Randomized`, `Windows` and `Pattern` (to replay a sampled
    /// run; [`segment_lengths`] gives the lengths of its windows).
    pub xi: Option<Vec<f64>>,
    /// ‖∂L/∂h_t‖ for t = 1..T, if asked for in [`RunOptions`].
    pub dh_norms: Option<Vec<F>>,
    /// The most nodes the tape held at once.
    pub peak_tape_nodes: usize,
    /// The most bytes the tape held at once (values, adjoints and recycled buffers; with
    /// [`Workspace::run`], buffers kept from earlier runs of the same [`Workspace`] count
    /// too).
    pub peak_tape_bytes: usize,
    /// The last state h_T (to carry into the next sequence).
    pub h_final: Array2<F>,
    /// The most states a checkpointing policy kept at once ([`Memory::Checkpointed`],
    /// [`Memory::Revolve`]; h_0 included), 0 for the others.
    pub stored_states: usize,
    /// Every update of [`Truncation::Adaptive`], in order (empty for the others).
    pub adaptive: Vec<AdaptiveUpdate>,
    /// The (T, B) table of per-row ξ of [`Truncation::PerRow`] (`None` for the others).
    pub xi_rows: Option<Array2<f64>>,
}

/// How the tape's memory is spent on a segment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Memory {
    /// Keep the whole segment on the tape (the default): memory grows with the segment.
    #[default]
    Tape,
    /// Exact full-BPTT gradients with O(√T) tape memory (with [`Truncation::Full`]):
    /// a forward sweep stores the state every `stride` steps (⌈√T⌉ if `None`), then the
    /// strides are recomputed last to first and backpropagated, ∂L/∂h carried back from
    /// one to the previous. Costs 2T forward steps.
    Checkpointed {
        /// Steps between stored states (≥ 1), ⌈√T⌉ if `None`.
        stride: Option<usize>,
    },
    /// At most `states` states kept at once, h_0 included, and one step on the tape: each
    /// segment (the whole sequence under [`Truncation::Full`], each stretch between cuts
    /// under `Fixed`, `Randomized` and `Pattern`) is reversed by the binomial schedule
    /// ([`revolve`]), which takes the fewest forward steps any schedule with that many
    /// states can: `T + r·T − C(s + r, s + 1)` for a segment of T steps, r the least with
    /// `C(s + r, s) ≥ T`. The gradient is the one the segment gives on the tape (for a
    /// seed of `Randomized`, the same ξ and the same estimate), so a long segment of a π
    /// near 1 stays within the budget. [`Memory::revolve_within`] converts a byte budget
    /// into states. (TBPTT with k2 ≠ k1 is refused.)
    Revolve {
        /// States kept at once (≥ 1; 1 keeps only h_0 and recomputes from it, T²/2
        /// forward steps; T or more keeps every state, 2T − 1).
        states: usize,
    },
}

impl Memory {
    /// [`Memory::Revolve`] with as many states as `bytes` holds: states of B×S entries
    /// of F, `bytes / (B·S·size_of::<F>())` of them.
    ///
    /// ```
    /// use timetape::bptt::Memory;
    /// // 1 MiB of f32 states of a batch of 32 rows of 256 units: 32 states.
    /// let m = Memory::revolve_within::<f32>(1 << 20, 32, 256)?;
    /// assert_eq!(m, Memory::Revolve { states: 32 });
    /// # Ok::<(), timetape::Error>(())
    /// ```
    ///
    /// Errors: [`Error::InvalidArgument`] if not even one state fits.
    pub fn revolve_within<F: Scalar>(bytes: usize, batch: usize, width: usize) -> Result<Memory> {
        let per_state = batch
            .saturating_mul(width)
            .saturating_mul(std::mem::size_of::<F>());
        match bytes.checked_div(per_state) {
            Some(states) if states >= 1 => Ok(Memory::Revolve { states }),
            _ => Err(invalid(
                "Memory::revolve_within",
                format!("{bytes} bytes hold no state of {batch}×{width} entries"),
            )),
        }
    }
}

/// How a sequence is run: the truncation, how memory is spent, and options. The batch
/// runner ([`run`]), the reusable [`Workspace`] and the streaming runner ([`Stream`])
/// take the same value.
///
/// ```
/// use timetape::bptt::{Memory, Pi, Run, RunOptions, Truncation};
///
/// let full = Run::new(Truncation::Full);
/// let randomized = Run::new(Truncation::Randomized { pi: Pi::Constant(0.9), seed: 7 });
/// let checkpointed = Run::new(Truncation::Full).memory(Memory::Checkpointed { stride: None });
/// let with_norms = Run::new(Truncation::Fixed { k: 32 })
///     .options(RunOptions { dh_norms: true, ..Default::default() });
/// # let _ = (full, randomized, checkpointed, with_norms);
/// ```
#[derive(Debug, Clone)]
pub struct Run {
    /// How far gradients travel back in time.
    pub truncation: Truncation,
    /// How the tape's memory is spent.
    pub memory: Memory,
    /// What else to record or check.
    pub options: RunOptions,
}

impl Run {
    /// A run with the given truncation, the whole segment on the tape, default options.
    pub fn new(truncation: Truncation) -> Self {
        Run {
            truncation,
            memory: Memory::Tape,
            options: RunOptions::default(),
        }
    }

    /// The same run with another memory policy.
    pub fn memory(mut self, memory: Memory) -> Self {
        self.memory = memory;
        self
    }

    /// The same run with other options.
    pub fn options(mut self, options: RunOptions) -> Self {
        self.options = options;
        self
    }
}

impl From<Truncation> for Run {
    fn from(truncation: Truncation) -> Self {
        Run::new(truncation)
    }
}

/// Buffers reused from one run to the next: the tape (with its free list of matrices)
/// and the scratch vectors of the unroll. A training loop that runs through the same
/// `Workspace` reaches a steady state in which the tape allocates no matrix.
///
/// ```
/// use ndarray::{Array2, Array3};
/// use timetape::bptt::{Run, Truncation, Workspace};
/// use timetape::rnn::{models, SequenceLoss, Sequence, Sizes};
/// use timetape::Params;
///
/// let mut params = Params::<f32>::new();
/// let cell = models::m3(&mut params, Sizes::new(2, 8, 3), 0)?;
/// let xs = Array3::<f32>::zeros((30, 4, 2));
/// let labels = Array2::<usize>::zeros((30, 4));
/// let seq = Sequence::new(xs.view(), SequenceLoss::classes(labels.view()));
/// let how = Run::new(Truncation::Full);
/// let mut ws = Workspace::new();
/// for _ in 0..3 {
///     let r = ws.run(&cell, &params, &seq, &how)?;
///     assert_eq!(r.backward_steps, 30);
/// }
/// # Ok::<(), timetape::Error>(())
/// ```
#[derive(Debug, Default)]
pub struct Workspace<F: Scalar> {
    tape: Tape<F>,
    recording: Recording<F>,
}

impl<F: Scalar> Workspace<F> {
    /// An empty workspace.
    pub fn new() -> Self {
        Self::default()
    }

    /// The tape's statistics after the last run.
    pub fn tape_stats(&self) -> crate::tape::TapeStats {
        self.tape.stats()
    }

    /// [`run`], reusing this workspace's buffers.
    ///
    /// Errors: as [`run`].
    pub fn run<C: Recurrent<F>>(
        &mut self,
        cell: &C,
        params: &Params<F>,
        seq: &Sequence<'_, F>,
        how: &Run,
    ) -> Result<Report<F>> {
        let problem = Problem::new(cell, seq)?;
        how.truncation.validate(Some(problem.len()))?;
        let mut engine = Engine::with_workspace(std::mem::take(self), cell, params, how.options);
        let outcome = dispatch(&mut engine, &problem, how)
            .and_then(|(h, xi)| engine.check_finite(&h).map(|()| (h, xi)));
        let keep_xi = how.truncation.reports_xi();
        match outcome {
            Ok((h_final, xi)) => {
                let (report, back) = engine.finish(xi.filter(|_| keep_xi), h_final);
                *self = back;
                Ok(report)
            }
            Err(e) => {
                *self = engine.finish(None, Array2::zeros((0, 0))).1;
                Err(e)
            }
        }
    }
}

/// Runs a sequence with the given truncation and memory policy, segment by segment, and
/// reports the loss, the gradient estimate and what it cost.
///
/// ```
/// use ndarray::{Array2, Array3};
/// use timetape::bptt::{run, Pi, Run, Truncation};
/// use timetape::rnn::{models, SequenceLoss, Sequence, Sizes};
/// use timetape::Params;
///
/// let mut params = Params::<f64>::new();
/// let cell = models::m3(&mut params, Sizes::new(2, 4, 3), 0)?;
/// let xs = Array3::from_shape_fn((20, 1, 2), |(t, _, d)| ((t + d) as f64).sin());
/// let labels = Array2::from_shape_fn((20, 1), |(t, _)| t % 3);
/// let seq = Sequence::new(xs.view(), SequenceLoss::classes(labels.view()));
/// let full = run(&cell, &params, &seq, &Run::new(Truncation::Full))?;
/// let fixed = run(&cell, &params, &seq, &Run::new(Truncation::Fixed { k: 5 }))?;
/// let randomized = Truncation::Randomized { pi: Pi::Constant(0.8), seed: 1 };
/// let rand = run(&cell, &params, &seq, &Run::new(randomized))?;
/// // truncation changes gradients, not the loss (summed per segment: rounding differs)
/// assert!((full.loss - fixed.loss).abs() < 1e-12 * full.loss);
/// assert_eq!((full.backward_steps, fixed.backward_steps, rand.backward_steps), (20, 20, 20));
/// assert_eq!(fixed.segments, 4);
/// # Ok::<(), timetape::Error>(())
/// ```
///
/// Errors: [`Error::EmptyInput`] for an empty sequence; [`Error::ShapeMismatch`] for
/// targets, weights, `h0` or a pattern that do not fit the sequence;
/// [`Error::LabelOutOfRange`]; [`Error::InvalidArgument`] for a bad truncation, a
/// checkpoint stride of 0, or checkpointing with a truncation other than `Full`;
/// [`Error::NonFinite`] for an overflow (see the crate docs).
pub fn run<F: Scalar, C: Recurrent<F>>(
    cell: &C,
    params: &Params<F>,
    seq: &Sequence<'_, F>,
    how: &Run,
) -> Result<Report<F>> {
    Workspace::new().run(cell, params, seq, how)
}

/// The final state and the ξ used, by the strategy and memory policy of `how`.
type Outcome<F> = (Array2<F>, Option<Vec<f64>>);

fn dispatch<F: Scalar, C: Recurrent<F>>(
    engine: &mut Engine<'_, F, C>,
    problem: &Problem<'_, F>,
    how: &Run,
) -> Result<Outcome<F>> {
    match (&how.truncation, how.memory) {
        (Truncation::Full, Memory::Checkpointed { stride }) => {
            checkpoint::run_checkpointed(engine, problem, stride).map(|h| (h, None))
        }
        (_, Memory::Checkpointed { .. }) => Err(invalid(
            "bptt",
            "checkpointing gives the exact gradient of Truncation::Full; other \
             truncations already keep one segment on the tape",
        )),
        (Truncation::Tbptt { k1, k2 }, Memory::Tape) if k1 != k2 => {
            run_tbptt(engine, problem, *k1, *k2).map(|h| (h, None))
        }
        (Truncation::Adaptive(how), Memory::Tape) => {
            let (h, updates) = adaptive::run_adaptive(engine, problem, how)?;
            engine.adaptive = updates;
            Ok((h, None))
        }
        (Truncation::Adaptive(_), _) => Err(invalid(
            "bptt",
            "adaptive truncation chooses its own windows; run it with Memory::Tape",
        )),
        (Truncation::Tbptt { k1, k2 }, Memory::Revolve { .. }) if k1 != k2 => Err(invalid(
            "bptt",
            "Memory::Revolve runs cut-based truncations; TBPTT with k2 ≠ k1 recomputes its \
             own windows",
        )),
        (tr, memory) => {
            let xi = tr
                .xi_table(problem.len(), problem.h0.nrows())?
                .ok_or_else(|| invalid("bptt", "no ξ pattern"))?;
            let h = run_pattern(engine, problem, &xi, memory)?;
            Ok(match xi {
                XiTable::Shared(xi) => (h, Some(xi)),
                XiTable::Rows(table) => {
                    engine.xi_rows = Some(table);
                    (h, None)
                }
            })
        }
    }
}

/// Runs a cut-based strategy given its ξ: one segment between consecutive steps where
/// every row is cut, on the tape whole or, under [`Memory::Revolve`], by binomial
/// checkpointing within it. Steps whose rows share a ξ get the shared edge; the others
/// their rows' ξ.
fn run_pattern<F: Scalar, C: Recurrent<F>>(
    engine: &mut Engine<'_, F, C>,
    problem: &Problem<'_, F>,
    xi: &XiTable,
    memory: Memory,
) -> Result<Array2<F>> {
    let t_len = problem.len();
    let b = problem.h0.nrows();
    let mut h = problem.h0.clone();
    let mut edges: Vec<Edge<F>> = Vec::new();
    let mut rows: Vec<F> = Vec::new();
    let mut start = 0;
    while start < t_len {
        let end = (start + 1..t_len).find(|&t| xi.is_cut(t)).unwrap_or(t_len);
        edges.clear();
        rows.clear();
        for t in start..end {
            // The first edge of a later segment leaves a fresh variable: nothing to cut.
            edges.push(match xi.shared(t) {
                _ if t == start && start > 0 => Edge::Keep,
                Some(x) => Edge::from_xi(F::of(x)),
                None => Edge::Keep,
            });
            xi.extend_rows(t, b, &mut rows);
        }
        let row_xi = matches!(xi, XiTable::Rows(_)).then_some(rows.as_slice());
        if let Memory::Revolve { states } = memory {
            let steps = (start..end, edges.as_slice(), row_xi);
            let h_end = checkpoint::run_revolve(engine, problem, steps, h.view(), states)?;
            h.assign(&h_end);
            start = end;
            continue;
        }
        let mut seg = problem.segment(start..end, &edges, start);
        seg.row_xi = row_xi;
        engine
            .segment(h.view(), &seg, Pass::Backward)
            .map_err(|e| e.at_step_offset(start))?;
        engine.record_dh_norms(0)?;
        h.assign(&engine.state(end - start - 1)?);
        start = end;
    }
    Ok(h)
}

/// One TBPTT window: the steps `a..u` from the state `h_a`, every edge kept, with the
/// losses of the steps `u_prev..u`, backpropagated (and ‖∂L/∂h‖ of those steps noted).
pub(crate) fn backprop_window<F: Scalar, C: Recurrent<F>>(
    engine: &mut Engine<'_, F, C>,
    problem: &Problem<'_, F>,
    (a, u_prev, u): (usize, usize, usize),
    h_a: ndarray::ArrayView2<'_, F>,
    edges: &mut Vec<Edge<F>>,
) -> Result<()> {
    edges.clear();
    edges.resize(u - a, Edge::Keep);
    let seg = problem.segment(a..u, edges, u_prev);
    engine
        .segment(h_a, &seg, Pass::Backward)
        .map_err(|e| e.at_step_offset(a))?;
    engine.record_dh_norms(u_prev - a)
}

/// TBPTT(k1, k2): an update after every k1 steps (and at T) injects the losses since
/// the previous update u′ and backpropagates them through the window
/// `[u′ − (k2 − k1), u)`: every loss travels back between k2 − k1 + 1 and k2 steps, and
/// with k1 = k2 the windows are the blocks of `Fixed { k }`, including a short last one.
fn run_tbptt<F: Scalar, C: Recurrent<F>>(
    engine: &mut Engine<'_, F, C>,
    problem: &Problem<'_, F>,
    k1: usize,
    k2: usize,
) -> Result<Array2<F>> {
    let t_len = problem.len();
    let reach = k2 - k1;
    let mut h_a = problem.h0.clone();
    let mut edges: Vec<Edge<F>> = Vec::new();
    let (mut a, mut u_prev) = (0, 0);
    while u_prev < t_len {
        let u = u_prev + k1.min(t_len - u_prev);
        backprop_window(engine, problem, (a, u_prev, u), h_a.view(), &mut edges)?;
        // The next window starts `reach` steps before this update (never before a).
        let next_a = u.saturating_sub(reach).max(a);
        if u == t_len {
            h_a.assign(&engine.state(u - a - 1)?);
        } else if next_a > a {
            h_a.assign(&engine.state(next_a - a - 1)?);
        }
        a = next_a;
        u_prev = u;
    }
    Ok(h_a)
}
