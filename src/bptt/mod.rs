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
//! [`checkpointed`] gives exact full-BPTT gradients with O(√T) tape memory, and
//! [`enumerate`] the exact expectation and variance of the randomized estimator.

mod checkpoint;
pub mod enumerate;
mod stream;
mod xi;

pub use checkpoint::checkpointed;
pub use stream::{StepTarget, Stream};
pub use xi::{sample_xi, Pi, XiSampler};

use crate::error::{invalid, Error, Result};
use crate::ops::Reduction;
use crate::params::{Grads, Params};
use crate::rnn::{
    step_weight, unroll_segment_into, Edge, LossScratch, Recurrent, SequenceLoss, StepLosses,
    Targets,
};
use crate::scalar::Scalar;
use crate::tape::{Tape, Var};
use ndarray::{Array2, ArrayView2, ArrayView3, Axis, Slice};

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
    /// use timetape::rnn::{models, SequenceLoss};
    /// use timetape::Params;
    ///
    /// let mut params = Params::<f64>::new();
    /// let cell = models::m3(&mut params, 2, 3, 2, 0)?;
    /// let xs = Array3::from_shape_fn((10, 1, 2), |(t, _, d)| (t + d) as f64 * 0.1);
    /// let labels = Array2::from_shape_fn((10, 1), |(t, _)| t % 2);
    /// let loss = SequenceLoss::classes(labels.view());
    /// // T = 10, k1 = 4, k2 = 6: updates at 4, 8, 10; windows 1..=4, 3..=8, 7..=10.
    /// let r = run(&cell, &params, xs.view(), None, &loss, &Truncation::Tbptt { k1: 4, k2: 6 },
    ///             RunOptions::default())?;
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
}

impl Truncation {
    /// Checks the parameters for a sequence of `t_len` steps.
    ///
    /// Errors: [`Error::InvalidArgument`] for k = 0, k1 = 0, k2 < k1, a constant π
    /// outside (0, 1], a pattern with a non-finite entry; [`Error::ShapeMismatch`] for a
    /// pattern whose length is not `t_len`.
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

    /// The ξ_1..ξ_T of a cut-based strategy (`None` for TBPTT with k2 ≠ k1).
    pub fn xi(&self, t_len: usize) -> Result<Option<Vec<f64>>> {
        self.validate(Some(t_len))?;
        Ok(match self {
            Truncation::Full => Some(crate::init::try_collect("Truncation::xi", t_len, |_| 1.0)?),
            Truncation::Fixed { k } => Some(fixed_pattern(t_len, *k)?),
            Truncation::Tbptt { k1, k2 } if k1 == k2 => Some(fixed_pattern(t_len, *k1)?),
            Truncation::Tbptt { .. } => None,
            Truncation::Randomized { pi, seed } => Some(sample_xi(pi, t_len, *seed)?),
            Truncation::Pattern(xi) => Some(xi.clone()),
        })
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
    /// Fixed and Randomized with a loss at every step; for TBPTT the sum of its window
    /// lengths, ≈ T k2/k1). Segments that hold no loss term (a last-step loss) run no
    /// backward pass and are not counted.
    pub backward_steps: usize,
    /// Forward steps computed (T, or more when windows are recomputed: TBPTT,
    /// checkpointing).
    pub forward_steps: usize,
    /// Segments (tapes) backpropagated.
    pub segments: usize,
    /// The ξ_1..ξ_T used, for cut-based strategies (to replay a sampled run).
    pub xi: Option<Vec<f64>>,
    /// ‖∂L/∂h_t‖ for t = 1..T, if asked for in [`RunOptions`].
    pub dh_norms: Option<Vec<F>>,
    /// The most nodes the tape held at once.
    pub peak_tape_nodes: usize,
    /// The most bytes the tape held at once (values, adjoints and recycled buffers; with
    /// [`run_with`], buffers kept from earlier runs of the same [`Workspace`] count too).
    pub peak_tape_bytes: usize,
    /// The last state h_T (to carry into the next sequence).
    pub h_final: Array2<F>,
}

/// Buffers reused from one run to the next: the tape (with its free list of matrices)
/// and the scratch vectors of the unroll. A training loop that passes the same
/// `Workspace` to [`run_with`] reaches a steady state in which the tape allocates no
/// matrix.
///
/// ```
/// use ndarray::{Array2, Array3};
/// use timetape::bptt::{run_with, RunOptions, Truncation, Workspace};
/// use timetape::rnn::{models, SequenceLoss};
/// use timetape::Params;
///
/// let mut params = Params::<f32>::new();
/// let cell = models::m3(&mut params, 2, 8, 3, 0)?;
/// let xs = Array3::<f32>::zeros((30, 4, 2));
/// let labels = Array2::<usize>::zeros((30, 4));
/// let loss = SequenceLoss::classes(labels.view());
/// let mut ws = Workspace::new();
/// for _ in 0..3 {
///     let r = run_with(&mut ws, &cell, &params, xs.view(), None, &loss, &Truncation::Full, RunOptions::default())?;
///     assert_eq!(r.backward_steps, 30);
/// }
/// # Ok::<(), timetape::Error>(())
/// ```
#[derive(Debug, Default)]
pub struct Workspace<F: Scalar> {
    tape: Tape<F>,
    states: Vec<Var>,
    scratch: LossScratch<F>,
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
}

/// The machinery shared by every strategy: one tape, reused segment after segment.
pub(crate) struct Engine<'a, F: Scalar, C: Recurrent<F>> {
    pub(crate) cell: &'a C,
    pub(crate) params: &'a Params<F>,
    pub(crate) tape: Tape<F>,
    pub(crate) grads: Grads<F>,
    pub(crate) states: Vec<Var>,
    pub(crate) h_in: Option<Var>,
    scratch: LossScratch<F>,
    pub(crate) loss: F,
    pub(crate) backward_steps: usize,
    pub(crate) forward_steps: usize,
    pub(crate) segments: usize,
    pub(crate) dh_norms: Option<Vec<F>>,
}

impl<'a, F: Scalar, C: Recurrent<F>> Engine<'a, F, C> {
    pub(crate) fn new(cell: &'a C, params: &'a Params<F>, opts: RunOptions) -> Self {
        Self::with_workspace(Workspace::new(), cell, params, opts)
    }

    pub(crate) fn with_workspace(
        ws: Workspace<F>,
        cell: &'a C,
        params: &'a Params<F>,
        opts: RunOptions,
    ) -> Self {
        let Workspace {
            mut tape,
            states,
            scratch,
        } = ws;
        tape.clear();
        tape.reset_peak();
        // Only ∂L/∂h at the segment start (a leaf) and, for the ‖∂L/∂h_t‖ report, the
        // states are read after a backward pass: release every other adjoint.
        tape.set_release_adjoints(true);
        tape.set_check_finite(opts.check_finite);
        Engine {
            cell,
            params,
            tape,
            grads: Grads::zeros_like(params),
            states,
            h_in: None,
            scratch,
            loss: F::zero(),
            backward_steps: 0,
            forward_steps: 0,
            segments: 0,
            dh_norms: opts.dh_norms.then(Vec::new),
        }
    }

    /// Records the steps `xs` from state `h` with the given edges, the loss terms of
    /// steps `loss_from..` (`loss` is local to those steps), and, if `backward`, runs the
    /// backward pass seeded with 1 on the loss and `end_seed` on the last state.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn segment(
        &mut self,
        xs: ArrayView3<'_, F>,
        h: ArrayView2<'_, F>,
        edges: &[Edge<F>],
        loss_from: usize,
        loss: Option<&SequenceLoss<'_, F>>,
        end_seed: Option<ArrayView2<'_, F>>,
        backward: bool,
        count_loss: bool,
    ) -> Result<()> {
        self.tape.clear();
        let h_in = self.tape.variable(h)?;
        self.h_in = Some(h_in);
        let bound = self.cell.bind(&mut self.tape, self.params)?;
        let k = xs.len_of(Axis(0));
        let terms = loss.map(|l| StepLosses::new(*l, loss_from, k, &mut self.scratch));
        let l = unroll_segment_into(
            self.cell,
            &mut self.tape,
            &bound,
            xs,
            h_in,
            edges,
            &mut self.states,
            terms,
        )?;
        if self.dh_norms.is_some() {
            for &s in &self.states {
                self.tape.retain_grad(s)?;
            }
        }
        self.forward_steps += k;
        if let (Some(l), true) = (l, count_loss) {
            self.loss = self.loss + self.tape.scalar(l)?;
        }
        if !backward {
            return Ok(());
        }
        let one = ndarray::arr2(&[[F::one()]]);
        let mut seeds: Vec<(Var, ArrayView2<'_, F>)> = Vec::with_capacity(2);
        if let Some(l) = l {
            seeds.push((l, one.view()));
        }
        if let Some(s) = &end_seed {
            seeds.push((self.states[k - 1], s.view()));
        }
        if !seeds.is_empty() {
            self.tape.backward_with_into(&seeds, &mut self.grads)?;
            self.backward_steps += k;
            self.segments += 1;
        }
        Ok(())
    }

    /// Appends ‖∂L/∂h_t‖ for the states `from..` of the last segment.
    pub(crate) fn record_dh_norms(&mut self, from: usize) -> Result<()> {
        let Some(norms) = self.dh_norms.as_mut() else {
            return Ok(());
        };
        for &s in &self.states[from..] {
            let n = self.tape.adjoint(s)?.map_or(F::zero(), |a| {
                a.iter().fold(F::zero(), |m, &x| m + x * x).sqrt()
            });
            norms.push(n);
        }
        Ok(())
    }

    pub(crate) fn state(&self, i: usize) -> Result<ArrayView2<'_, F>> {
        self.tape.value(self.states[i])
    }

    /// The policy on non-finite values (crate docs): a report handed out as `Ok` has a
    /// finite loss, gradient, ‖∂L/∂h_t‖ and final state.
    pub(crate) fn check_finite(&self, h_final: &Array2<F>) -> Result<()> {
        let op = "bptt";
        if !self.loss.is_finite() {
            return Err(Error::NonFinite {
                op,
                what: "the loss: an overflow in the forward pass \
                       (RunOptions::check_finite finds the op and the step)"
                    .into(),
            });
        }
        self.grads.check_finite(op)?;
        let norms = self.dh_norms.iter().flatten();
        if let Some(t) = crate::params::first_non_finite(norms) {
            return Err(Error::NonFinite {
                op,
                what: format!("‖∂L/∂h_t‖ at step {}", t + 1),
            });
        }
        if let Some(at) = crate::params::first_non_finite(h_final.iter()) {
            return Err(Error::NonFinite {
                op,
                what: format!("entry {at} of the final state h_T"),
            });
        }
        Ok(())
    }

    /// The report, and the workspace back for the next run.
    pub(crate) fn finish(
        self,
        xi: Option<Vec<f64>>,
        h_final: Array2<F>,
    ) -> (Report<F>, Workspace<F>) {
        let stats = self.tape.stats();
        let report = Report {
            loss: self.loss,
            grads: self.grads,
            backward_steps: self.backward_steps,
            forward_steps: self.forward_steps,
            segments: self.segments,
            xi,
            dh_norms: self.dh_norms,
            peak_tape_nodes: stats.peak_nodes,
            peak_tape_bytes: stats.peak_bytes,
            h_final,
        };
        let ws = Workspace {
            tape: self.tape,
            states: self.states,
            scratch: self.scratch,
        };
        (report, ws)
    }

    /// The report, checked by [`Engine::check_finite`].
    pub(crate) fn report(self, xi: Option<Vec<f64>>, h_final: Array2<F>) -> Result<Report<F>> {
        self.check_finite(&h_final)?;
        Ok(self.finish(xi, h_final).0)
    }
}

/// A sequence and its loss, checked, with the per-step coefficients precomputed.
pub(crate) struct Problem<'a, 'l, F> {
    pub(crate) xs: ArrayView3<'a, F>,
    pub(crate) loss: SequenceLoss<'l, F>,
    /// c_t = α_t (× 1/T for a mean over time), for per-step losses.
    pub(crate) coef: Vec<F>,
    pub(crate) h0: Array2<F>,
}

impl<'a, 'l, F: Scalar> Problem<'a, 'l, F> {
    pub(crate) fn new<C: Recurrent<F>>(
        cell: &C,
        xs: ArrayView3<'a, F>,
        h0: Option<ArrayView2<'_, F>>,
        loss: &SequenceLoss<'l, F>,
    ) -> Result<Self> {
        let (t_len, b, _) = xs.dim();
        if t_len == 0 || b == 0 {
            return Err(Error::EmptyInput {
                op: "bptt",
                what: "sequence with no steps or no batch rows",
            });
        }
        loss.validate(t_len, b, cell.output_width())?;
        let h0 = match h0 {
            Some(h) => {
                if h.dim() != (b, cell.state_width()) {
                    return Err(Error::ShapeMismatch {
                        op: "bptt h0",
                        lhs: (b, cell.state_width()),
                        rhs: h.dim(),
                    });
                }
                h.to_owned()
            }
            None => {
                crate::init::check_alloc::<F>("bptt h0", &[(b, cell.state_width())])?;
                Array2::zeros((b, cell.state_width()))
            }
        };
        let time = match loss.time {
            Reduction::Sum => F::one(),
            Reduction::Mean => F::one() / F::of(t_len as f64),
        };
        let coef = (0..t_len).map(|t| step_weight(loss, t) * time).collect();
        Ok(Problem {
            xs,
            loss: *loss,
            coef,
            h0,
        })
    }

    pub(crate) fn len(&self) -> usize {
        self.xs.len_of(Axis(0))
    }

    pub(crate) fn steps(&self, from: usize, to: usize) -> ArrayView3<'a, F> {
        let mut v = self.xs;
        v.slice_axis_inplace(Axis(0), Slice::from(from..to));
        v
    }

    /// The loss of steps `from..to`, local to them (`None` if they hold no term).
    pub(crate) fn local_loss(&self, from: usize, to: usize) -> Option<SequenceLoss<'_, F>> {
        let rows = Slice::from(from..to);
        let targets = match self.loss.targets {
            Targets::Classes(mut l) => {
                l.slice_axis_inplace(Axis(0), rows);
                Targets::Classes(l.reborrow())
            }
            Targets::Values(mut v) => {
                v.slice_axis_inplace(Axis(0), rows);
                Targets::Values(v.reborrow())
            }
            Targets::LastClass(l) if to == self.len() => Targets::LastClass(l.reborrow()),
            Targets::LastBinary(y) if to == self.len() => Targets::LastBinary(y.reborrow()),
            Targets::LastClass(_) | Targets::LastBinary(_) => return None,
        };
        Some(SequenceLoss {
            targets,
            step_weights: Some(&self.coef[from..to]),
            time: Reduction::Sum,
        })
    }
}

/// Runs BPTT with the given truncation over the sequence `xs` (T, B, D) from `h0`
/// (zeros if `None`), segment by segment, and reports the loss, the gradient estimate
/// and what it cost.
///
/// ```
/// use ndarray::{Array2, Array3};
/// use timetape::bptt::{run, Pi, RunOptions, Truncation};
/// use timetape::rnn::{models, SequenceLoss};
/// use timetape::Params;
///
/// let mut params = Params::<f64>::new();
/// let cell = models::m3(&mut params, 2, 4, 3, 0)?;
/// let xs = Array3::from_shape_fn((20, 1, 2), |(t, _, d)| ((t + d) as f64).sin());
/// let labels = Array2::from_shape_fn((20, 1), |(t, _)| t % 3);
/// let loss = SequenceLoss::classes(labels.view());
/// let full = run(&cell, &params, xs.view(), None, &loss, &Truncation::Full, RunOptions::default())?;
/// let fixed = run(&cell, &params, xs.view(), None, &loss, &Truncation::Fixed { k: 5 }, RunOptions::default())?;
/// let rand = run(&cell, &params, xs.view(), None, &loss,
///                &Truncation::Randomized { pi: Pi::Constant(0.8), seed: 1 }, RunOptions::default())?;
/// // truncation changes gradients, not the loss (summed per segment: rounding differs)
/// assert!((full.loss - fixed.loss).abs() < 1e-12 * full.loss);
/// assert_eq!((full.backward_steps, fixed.backward_steps, rand.backward_steps), (20, 20, 20));
/// assert_eq!(fixed.segments, 4);
/// # Ok::<(), timetape::Error>(())
/// ```
///
/// Errors: [`Error::EmptyInput`] for an empty sequence; [`Error::ShapeMismatch`] for
/// targets, weights, `h0` or a pattern that do not fit the sequence;
/// [`Error::LabelOutOfRange`]; [`Error::InvalidArgument`] for a bad truncation.
pub fn run<F: Scalar, C: Recurrent<F>>(
    cell: &C,
    params: &Params<F>,
    xs: ArrayView3<'_, F>,
    h0: Option<ArrayView2<'_, F>>,
    loss: &SequenceLoss<'_, F>,
    truncation: &Truncation,
    opts: RunOptions,
) -> Result<Report<F>> {
    run_with(
        &mut Workspace::new(),
        cell,
        params,
        xs,
        h0,
        loss,
        truncation,
        opts,
    )
}

/// [`run`] with a [`Workspace`] whose buffers are reused from one call to the next.
#[allow(clippy::too_many_arguments)]
pub fn run_with<F: Scalar, C: Recurrent<F>>(
    ws: &mut Workspace<F>,
    cell: &C,
    params: &Params<F>,
    xs: ArrayView3<'_, F>,
    h0: Option<ArrayView2<'_, F>>,
    loss: &SequenceLoss<'_, F>,
    truncation: &Truncation,
    opts: RunOptions,
) -> Result<Report<F>> {
    let problem = Problem::new(cell, xs, h0, loss)?;
    let t_len = problem.len();
    truncation.validate(Some(t_len))?;
    let mut engine = Engine::with_workspace(std::mem::take(ws), cell, params, opts);
    let outcome = match *truncation {
        Truncation::Tbptt { k1, k2 } if k1 != k2 => {
            run_tbptt(&mut engine, &problem, k1, k2).map(|h| (h, None))
        }
        _ => truncation
            .xi(t_len)
            .and_then(|xi| xi.ok_or_else(|| invalid("bptt", "no ξ pattern")))
            .and_then(|xi| run_pattern(&mut engine, &problem, &xi).map(|h| (h, Some(xi)))),
    }
    .and_then(|(h, xi)| engine.check_finite(&h).map(|()| (h, xi)));
    let keep_xi = matches!(
        truncation,
        Truncation::Randomized { .. } | Truncation::Pattern(_)
    );
    match outcome {
        Ok((h_final, xi)) => {
            let (report, back) = engine.finish(xi.filter(|_| keep_xi), h_final);
            *ws = back;
            Ok(report)
        }
        Err(e) => {
            *ws = engine.finish(None, Array2::zeros((0, 0))).1;
            Err(e)
        }
    }
}

/// Runs a cut-based strategy given its ξ: one segment between consecutive zeros.
fn run_pattern<F: Scalar, C: Recurrent<F>>(
    engine: &mut Engine<'_, F, C>,
    problem: &Problem<'_, '_, F>,
    xi: &[f64],
) -> Result<Array2<F>> {
    let t_len = problem.len();
    let mut h = problem.h0.clone();
    let mut edges: Vec<Edge<F>> = Vec::new();
    let mut start = 0;
    while start < t_len {
        let end = (start + 1..t_len).find(|&t| xi[t] == 0.0).unwrap_or(t_len);
        edges.clear();
        // The first edge of a later segment leaves a fresh variable: nothing to cut.
        let first = if start == 0 {
            Edge::from_xi(F::of(xi[0]))
        } else {
            Edge::Keep
        };
        edges.push(first);
        edges.extend(xi[start + 1..end].iter().map(|&x| Edge::from_xi(F::of(x))));
        let loss = problem.local_loss(start, end);
        engine
            .segment(
                problem.steps(start, end),
                h.view(),
                &edges,
                0,
                loss.as_ref(),
                None,
                true,
                true,
            )
            .map_err(|e| e.at_step_offset(start))?;
        engine.record_dh_norms(0)?;
        h.assign(&engine.state(end - start - 1)?);
        start = end;
    }
    Ok(h)
}

/// TBPTT(k1, k2): an update after every k1 steps (and at T) injects the losses since
/// the previous update u′ and backpropagates them through the window
/// `[u′ − (k2 − k1), u)`: every loss travels back between k2 − k1 + 1 and k2 steps, and
/// with k1 = k2 the windows are the blocks of `Fixed { k }`, including a short last one.
fn run_tbptt<F: Scalar, C: Recurrent<F>>(
    engine: &mut Engine<'_, F, C>,
    problem: &Problem<'_, '_, F>,
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
        edges.clear();
        edges.resize(u - a, Edge::Keep);
        let loss = problem.local_loss(u_prev, u);
        engine
            .segment(
                problem.steps(a, u),
                h_a.view(),
                &edges,
                u_prev - a,
                loss.as_ref(),
                None,
                true,
                true,
            )
            .map_err(|e| e.at_step_offset(a))?;
        engine.record_dh_norms(u_prev - a)?;
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
