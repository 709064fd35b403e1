//! Recording a segment on the tape, in one place: the unroll of a cell over k steps with
//! an [`Edge`] on every `h_{t−1} → step t`, each step's loss term right after its step
//! (the output head run on chunks of steps), the loss local to the segment's steps, and
//! the [`Engine`] that runs segments one after another on one tape, carrying the state
//! (and, for checkpointing, ∂L/∂h) from one to the next. Every strategy of [`super`] is a
//! loop over [`Engine::segment`].

use super::{Report, RunOptions, Workspace};
use crate::error::{invalid, Error, Result};
use crate::ops::Reduction;
use crate::ops::RowsOf;
use crate::params::{Grads, Params};
use crate::rnn::{Recurrent, Sequence, SequenceLoss, Targets};
use crate::scalar::Scalar;
use crate::tape::{Tape, Var};
use ndarray::{Array2, ArrayView2, ArrayView3, Axis, Slice};
use std::ops::Range;

/// What happens on the edge `h_{t−1} → step t`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Edge<F> {
    /// Gradient flows unchanged (ξ_t = 1).
    Keep,
    /// Gradient stops (ξ_t = 0): [`Tape::detach`].
    Detach,
    /// Gradient is multiplied by the factor (ξ_t = 1/π_t): [`Tape::scale_grad`].
    Scale(F),
}

impl<F: Scalar> Edge<F> {
    /// The edge that realizes a value ξ of the estimator: 0 detaches, 1 keeps, anything
    /// else scales.
    pub fn from_xi(xi: F) -> Self {
        if xi == F::zero() {
            Edge::Detach
        } else if xi == F::one() {
            Edge::Keep
        } else {
            Edge::Scale(xi)
        }
    }
}

/// The steps of one segment and what to record with them.
pub(crate) struct Segment<'s, F> {
    /// The k inputs, (k, B, D); (k, B, 0) for tokens.
    pub(crate) xs: ArrayView3<'s, F>,
    /// The k steps' token ids (k, B), for a sequence of tokens.
    pub(crate) tokens: Option<ArrayView2<'s, usize>>,
    /// The edge into each of the k steps.
    pub(crate) edges: &'s [Edge<F>],
    /// The loss terms to record: those of the local steps `from..`, with the loss local
    /// to them (`None`: no loss term).
    pub(crate) loss: Option<(usize, SequenceLoss<'s, F>)>,
    /// Per-row ξ of the k steps (k·B, step after step): a step whose rows differ gets
    /// [`Tape::scale_grad_rows`] on its edge instead of `edges[t]`.
    pub(crate) row_xi: Option<&'s [F]>,
    /// Per-row resets of the k steps, and the initial state the reset rows return to.
    pub(crate) resets: Option<(ArrayView2<'s, bool>, ArrayView2<'s, F>)>,
}

impl<'s, F: Scalar> Segment<'s, F> {
    /// The k steps of `xs` (and `tokens`) with `edges`, and no loss, per-row ξ or reset.
    pub(crate) fn plain(
        xs: ArrayView3<'s, F>,
        tokens: Option<ArrayView2<'s, usize>>,
        edges: &'s [Edge<F>],
    ) -> Self {
        Segment {
            xs,
            tokens,
            edges,
            loss: None,
            row_xi: None,
            resets: None,
        }
    }
}

/// What [`Engine::segment`] does with a recorded segment.
pub(crate) enum Pass<'s, F> {
    /// Count its loss; no backward pass (checkpointing's forward sweep).
    Forward,
    /// Count its loss and backpropagate it (every strategy's segments, TBPTT's windows).
    Backward,
    /// Backpropagate its loss, and `end_seed` (∂L/∂h at its last state) if given,
    /// without counting the loss again (checkpointing's backward sweep).
    Recompute { end_seed: Option<ArrayView2<'s, F>> },
    /// Count its loss and backpropagate it with `end_seed` (binomial checkpointing,
    /// which records every step once, last first).
    Reverse { end_seed: Option<ArrayView2<'s, F>> },
}

/// A segment's recording, reused from segment to segment: the states `h_1 … h_k` and
/// the scratch of the loss terms.
#[derive(Debug, Default)]
pub(crate) struct Recording<F> {
    pub(crate) states: Vec<Var>,
    scratch: LossScratch<F>,
    /// The token ids of the segment, step after step.
    ids: Vec<usize>,
}

impl<F: Scalar> Recording<F> {
    /// Unrolls `cell` over the k steps of `seg` from `h_in`, applying `seg.edges[t]` to
    /// the edge into step t, and records each step's loss term right after the step: the
    /// output head and the loss of step t sit next to step t on the tape, so the reverse
    /// sweep meets them just before it needs ∂L/∂h_t, and with released adjoints
    /// ([`Tape::set_release_adjoints`]) only a few B×S adjoints are alive at a time.
    /// The input projection of all k steps is one matrix product
    /// ([`Recurrent::project_inputs`]). Returns the segment's loss (`None` if it holds
    /// no term).
    pub(crate) fn record<C: Recurrent<F>>(
        &mut self,
        cell: &C,
        bound: &C::Bound,
        tape: &mut Tape<F>,
        h_in: Var,
        seg: &Segment<'_, F>,
    ) -> Result<Option<Var>> {
        let (k, b) = check_segment(cell, tape, h_in, seg)?;
        let xv = self.inputs(cell, bound, tape, seg)?;
        let projection = cell.projection();
        let u = match projection {
            Some(p) => p.project_inputs(tape, bound, xv)?,
            None => xv,
        };
        let Recording {
            states, scratch, ..
        } = self;
        states.clear();
        let mut loss = seg
            .loss
            .map(|(from, l)| StepLosses::new(l, from, k, scratch));
        let mut h = h_in;
        for (t, edge) in seg.edges.iter().enumerate() {
            let h_prev = edge_into(tape, seg, (t, b), *edge, h).map_err(|e| e.at_step(t))?;
            let rows = t * b..(t + 1) * b;
            h = match projection {
                Some(p) => p.step_projected(tape, bound, RowsOf(u, rows), h_prev),
                None => tape
                    .slice_rows(u, rows)
                    .and_then(|x| cell.step(tape, bound, x, h_prev)),
            }
            .map_err(|e| e.at_step(t))?;
            // A cell's contract: h_t has h_{t−1}'s shape (else the carried state breaks).
            let (got, want) = (tape.shape(h)?, tape.shape(h_prev)?);
            if got != want {
                return Err(Error::ShapeMismatch {
                    op: "Recurrent::step (the new state)",
                    lhs: want,
                    rhs: got,
                });
            }
            states.push(h);
            if let Some(loss) = loss.as_mut() {
                loss.step(cell, tape, bound, t, h)
                    .map_err(|e| e.at_step(t))?;
            }
        }
        match loss {
            Some(loss) => loss.total(tape),
            None => Ok(None),
        }
    }

    /// The segment's inputs on the tape, `(k·B) × D` stacked step after step: the real
    /// inputs as a constant, or the cell's embedding of the token ids.
    fn inputs<C: Recurrent<F>>(
        &mut self,
        cell: &C,
        bound: &C::Bound,
        tape: &mut Tape<F>,
        seg: &Segment<'_, F>,
    ) -> Result<Var> {
        let (k, b, d) = seg.xs.dim();
        if let Some(ids) = seg.tokens {
            self.ids.clear();
            self.ids.extend(ids.iter().copied());
            return cell.embed(tape, bound, &self.ids);
        }
        let flat = seg
            .xs
            .to_shape((k * b, d))
            .map_err(|e| invalid("unroll", e.to_string()))?;
        tape.constant_view(flat.view())
    }

    /// The output nodes of the last recording, each with the steps it covers.
    pub(crate) fn take_heads(&mut self) -> Vec<(Range<usize>, Var)> {
        std::mem::take(&mut self.scratch.heads)
    }
}

/// The edge into local step t of a segment (B rows): the row resets of that step, then
/// its per-row ξ if its rows differ, else the shared `edge`.
fn edge_into<F: Scalar>(
    tape: &mut Tape<F>,
    seg: &Segment<'_, F>,
    (t, b): (usize, usize),
    edge: Edge<F>,
    h: Var,
) -> Result<Var> {
    let h = match seg.resets {
        Some((mask, h0)) if mask.row(t).iter().any(|&r| r) => reset_rows(tape, h, mask.row(t), h0)?,
        _ => h,
    };
    if let Some(xi) = seg.row_xi.map(|xi| &xi[t * b..(t + 1) * b]) {
        if xi.iter().any(|&x| x != xi[0]) {
            return tape.scale_grad_rows(h, xi);
        }
    }
    match edge {
        Edge::Keep => Ok(h),
        Edge::Detach => tape.detach(h),
        Edge::Scale(c) => tape.scale_grad(h, c),
    }
}

/// `h ⊙ keep + h_0 ⊙ reset`, row by row (keep = 1 − reset): the reset rows take their
/// initial state and pass no gradient back; the others are unchanged, bit for bit
/// (`x·1 + 0 = x`).
fn reset_rows<F: Scalar>(
    tape: &mut Tape<F>,
    h: Var,
    reset: ndarray::ArrayView1<'_, bool>,
    h0: ArrayView2<'_, F>,
) -> Result<Var> {
    let keep = Array2::from_shape_fn(
        h0.raw_dim(),
        |(r, _)| {
            if reset[r] {
                F::zero()
            } else {
                F::one()
            }
        },
    );
    let start = Array2::from_shape_fn(
        h0.raw_dim(),
        |(r, c)| {
            if reset[r] {
                h0[[r, c]]
            } else {
                F::zero()
            }
        },
    );
    let keep = tape.constant(keep)?;
    let start = tape.constant(start)?;
    let kept = tape.mul(h, keep)?;
    tape.add(kept, start)
}

/// Checks a segment against the cell and its incoming state; returns (k, B).
fn check_segment<F: Scalar, C: Recurrent<F>>(
    cell: &C,
    tape: &Tape<F>,
    h_in: Var,
    seg: &Segment<'_, F>,
) -> Result<(usize, usize)> {
    let op = "unroll";
    let (k, b, d) = seg.xs.dim();
    if k == 0 || b == 0 {
        return Err(Error::EmptyInput {
            op,
            what: "sequence with no steps or no batch rows",
        });
    }
    let mismatch = |lhs, rhs| Error::ShapeMismatch { op, lhs, rhs };
    if seg.tokens.is_none() && d != cell.input_width() {
        return Err(mismatch((b, cell.input_width()), (b, d)));
    }
    if seg.edges.len() != k {
        return Err(mismatch((k, b), (seg.edges.len(), 1)));
    }
    let hs = tape.shape(h_in)?;
    if hs != (b, cell.state_width()) {
        return Err(mismatch((b, cell.state_width()), hs));
    }
    Ok((k, b))
}

/// The machinery shared by every strategy: one tape, reused segment after segment.
pub(crate) struct Engine<'a, F: Scalar, C: Recurrent<F>> {
    pub(crate) cell: &'a C,
    pub(crate) params: &'a Params<F>,
    pub(crate) tape: Tape<F>,
    pub(crate) grads: Grads<F>,
    /// The states of the last segment, and the scratch of its loss terms.
    pub(crate) recording: Recording<F>,
    pub(crate) h_in: Option<Var>,
    pub(crate) loss: F,
    pub(crate) backward_steps: usize,
    pub(crate) forward_steps: usize,
    pub(crate) segments: usize,
    pub(crate) dh_norms: Option<Vec<F>>,
    /// The most states a checkpointing policy kept at once.
    pub(crate) stored_states: usize,
    /// Keep the adjoints of the states after a backward pass (adaptive truncation reads
    /// them), as `dh_norms` does.
    pub(crate) retain_states: bool,
    /// The updates of adaptive truncation.
    pub(crate) adaptive: Vec<super::AdaptiveUpdate>,
    /// The per-row ξ of the run.
    pub(crate) xi_rows: Option<Array2<f64>>,
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
            recording,
        } = ws;
        tape.clear();
        tape.reset_peak();
        // Only ∂L/∂h at the segment start (a leaf) and, for the ‖∂L/∂h_t‖ report, the
        // states are read after a backward pass: release every other adjoint.
        tape.set_release_adjoints(true);
        tape.set_check_finite(opts.check_finite);
        tape.set_flush_subnormals(opts.flush_subnormals);
        Engine {
            cell,
            params,
            tape,
            grads: Grads::zeros_like(params),
            recording,
            h_in: None,
            loss: F::zero(),
            backward_steps: 0,
            forward_steps: 0,
            segments: 0,
            dh_norms: opts.dh_norms.then(Vec::new),
            stored_states: 0,
            retain_states: false,
            adaptive: Vec::new(),
            xi_rows: None,
        }
    }

    /// Records `seg` on a cleared tape from the state `h` (a variable, so that ∂/∂h can
    /// be read after a backward pass): the unroll and its loss terms, counted as forward
    /// steps. Returns the segment's loss (`None` if it holds no term); the states are in
    /// `self.recording.states`.
    pub(crate) fn record(
        &mut self,
        h: ArrayView2<'_, F>,
        seg: &Segment<'_, F>,
    ) -> Result<Option<Var>> {
        self.tape.clear();
        let h_in = self.tape.variable(h)?;
        self.h_in = Some(h_in);
        let bound = self.cell.bind(&mut self.tape, self.params)?;
        let l = self
            .recording
            .record(self.cell, &bound, &mut self.tape, h_in, seg)?;
        self.forward_steps += seg.xs.len_of(Axis(0));
        Ok(l)
    }

    /// Records `seg` on a cleared tape from the state `h`, and runs what `pass` asks for.
    pub(crate) fn segment(
        &mut self,
        h: ArrayView2<'_, F>,
        seg: &Segment<'_, F>,
        pass: Pass<'_, F>,
    ) -> Result<()> {
        let k = seg.xs.len_of(Axis(0));
        let l = self.record(h, seg)?;
        let states = &self.recording.states;
        if self.dh_norms.is_some() || self.retain_states {
            for &s in states {
                self.tape.retain_grad(s)?;
            }
        }
        let (count_loss, end_seed) = match pass {
            Pass::Forward | Pass::Backward => (true, None),
            Pass::Recompute { end_seed } => (false, end_seed),
            Pass::Reverse { end_seed } => (true, end_seed),
        };
        if let (Some(l), true) = (l, count_loss) {
            self.loss = self.loss + self.tape.scalar(l)?;
        }
        if matches!(pass, Pass::Forward) {
            return Ok(());
        }
        let one = ndarray::arr2(&[[F::one()]]);
        let mut seeds: Vec<(Var, ArrayView2<'_, F>)> = Vec::with_capacity(2);
        if let Some(l) = l {
            seeds.push((l, one.view()));
        }
        if let Some(s) = &end_seed {
            seeds.push((states[k - 1], s.view()));
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
        for &s in &self.recording.states[from..] {
            let n = self.tape.adjoint(s)?.map_or(F::zero(), |a| {
                a.iter().fold(F::zero(), |m, &x| m + x * x).sqrt()
            });
            norms.push(n);
        }
        Ok(())
    }

    pub(crate) fn state(&self, i: usize) -> Result<ArrayView2<'_, F>> {
        self.tape.value(self.recording.states[i])
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
        // The gradient was checked by every backward pass that added into it.
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
            stored_states: self.stored_states,
            adaptive: self.adaptive,
            xi_rows: self.xi_rows,
            h_final,
        };
        let ws = Workspace {
            tape: self.tape,
            recording: self.recording,
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
pub(crate) struct Problem<'a, F> {
    pub(crate) xs: ArrayView3<'a, F>,
    pub(crate) tokens: Option<ArrayView2<'a, usize>>,
    pub(crate) loss: SequenceLoss<'a, F>,
    /// c_t = α_t (× 1/T for a mean over time), for per-step losses.
    pub(crate) coef: Vec<F>,
    pub(crate) h0: Array2<F>,
    /// Per-row resets (T, B), checked.
    pub(crate) resets: Option<ArrayView2<'a, bool>>,
}

impl<'a, F: Scalar> Problem<'a, F> {
    pub(crate) fn new<C: Recurrent<F>>(cell: &C, seq: &Sequence<'a, F>) -> Result<Self> {
        let (xs, loss) = (seq.xs, &seq.loss);
        let (t_len, b, _) = xs.dim();
        if t_len == 0 || b == 0 {
            return Err(Error::EmptyInput {
                op: "bptt",
                what: "sequence with no steps or no batch rows",
            });
        }
        loss.validate(t_len, b, cell.output_width())?;
        let h0 = match seq.h0 {
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
        let coef = loss.step_coefficients(t_len);
        if let Some(m) = seq.resets {
            if m.dim() != (t_len, b) {
                return Err(Error::ShapeMismatch {
                    op: "Sequence::with_resets",
                    lhs: (t_len, b),
                    rhs: m.dim(),
                });
            }
        }
        Ok(Problem {
            xs,
            tokens: seq.tokens,
            loss: *loss,
            coef,
            h0,
            resets: seq.resets,
        })
    }

    pub(crate) fn len(&self) -> usize {
        self.xs.len_of(Axis(0))
    }

    pub(crate) fn steps(&self, from: usize, to: usize) -> ArrayView3<'_, F> {
        self.xs.slice_axis(Axis(0), Slice::from(from..to))
    }

    /// The segment of the steps `steps` with `edges` on them, holding the loss terms of
    /// the steps `loss_from..steps.end` (the loss local to them).
    pub(crate) fn segment<'s>(
        &'s self,
        steps: Range<usize>,
        edges: &'s [Edge<F>],
        loss_from: usize,
    ) -> Segment<'s, F> {
        let (a, u) = (steps.start, steps.end);
        Segment {
            xs: self.steps(a, u),
            tokens: self.token_steps(a, u),
            edges,
            loss: self.local_loss(loss_from, u).map(|l| (loss_from - a, l)),
            row_xi: None,
            resets: self.resets_of(a, u),
        }
    }

    /// The resets of steps `from..to` with the initial state, if the sequence has any.
    pub(crate) fn resets_of(
        &self,
        from: usize,
        to: usize,
    ) -> Option<(ArrayView2<'_, bool>, ArrayView2<'_, F>)> {
        self.resets.map(|m| {
            (
                m.reborrow().slice_axis_move(Axis(0), Slice::from(from..to)),
                self.h0.view(),
            )
        })
    }

    /// The token ids of steps `from..to`, for a sequence of tokens.
    pub(crate) fn token_steps(&self, from: usize, to: usize) -> Option<ArrayView2<'_, usize>> {
        self.tokens.map(|mut ids| {
            ids.slice_axis_inplace(Axis(0), Slice::from(from..to));
            ids.reborrow()
        })
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
            Targets::LastValues(y) if to == self.len() => Targets::LastValues(y.reborrow()),
            Targets::LastClass(_) | Targets::LastBinary(_) | Targets::LastValues(_) => return None,
        };
        Some(SequenceLoss {
            targets,
            step_weights: Some(&self.coef[from..to]),
            time: Reduction::Sum,
            batch: self.loss.batch,
            batch_of: self.loss.batch_of,
        })
    }
}

/// Reusable scratch for the loss terms of a segment.
#[derive(Debug, Default)]
pub(crate) struct LossScratch<F> {
    labels: Vec<usize>,
    weights: Vec<F>,
    terms: Vec<Var>,
    pending: Vec<Var>,
    heads: Vec<(Range<usize>, Var)>,
}

/// The output head and loss of per-step targets run on chunks of consecutive steps with
/// at least this many rows in all (⌈32/B⌉ steps): one product per step for batches of 32
/// and more, one product per chunk for smaller batches, where per-step products would be
/// too thin to run fast.
pub(crate) const HEAD_CHUNK_ROWS: usize = 32;

/// The loss terms of a segment, recorded step by step during the unroll
/// ([`Recording::record`]).
#[derive(Debug)]
pub(crate) struct StepLosses<'l, 's, F> {
    loss: SequenceLoss<'l, F>,
    /// Local index of the first step whose loss this segment holds (`loss` is local to
    /// the steps from there on).
    from: usize,
    /// Steps in the segment.
    len: usize,
    scratch: &'s mut LossScratch<F>,
}

impl<'l, 's, F: Scalar> StepLosses<'l, 's, F> {
    /// The terms of `loss` (local to steps `from..len` of a segment of `len` steps);
    /// `loss` must have been validated with [`SequenceLoss::validate`].
    pub(crate) fn new(
        loss: SequenceLoss<'l, F>,
        from: usize,
        len: usize,
        scratch: &'s mut LossScratch<F>,
    ) -> Self {
        scratch.terms.clear();
        scratch.pending.clear();
        scratch.heads.clear();
        StepLosses {
            loss,
            from,
            len,
            scratch,
        }
    }

    /// Records the loss term of local step `t` with state `h` (if it has one).
    fn step<C: Recurrent<F>>(
        &mut self,
        cell: &C,
        tape: &mut Tape<F>,
        bound: &C::Bound,
        t: usize,
        h: Var,
    ) -> Result<()> {
        if t < self.from {
            return Ok(());
        }
        let j = t - self.from;
        let n = self.len - self.from;
        let b = tape.shape(h)?.0;
        let sc = &mut *self.scratch;
        let term = match self.loss.targets {
            Targets::LastClass(_) | Targets::LastBinary(_) | Targets::LastValues(_) => {
                if j + 1 != n {
                    return Ok(());
                }
                let o = cell.output(tape, bound, h)?;
                sc.heads.push((t..t + 1, o));
                last_step_term(tape, &self.loss, o, sc)?
            }
            Targets::Classes(_) | Targets::Values(_) => {
                sc.pending.push(h);
                let chunk = HEAD_CHUNK_ROWS.div_ceil(b);
                if sc.pending.len() < chunk && j + 1 < n {
                    return Ok(());
                }
                self.chunk_term(cell, tape, bound, j + 1 - self.scratch.pending.len(), b)?
            }
        };
        self.scratch.terms.push(term);
        Ok(())
    }

    /// The loss term of the pending steps `j0 ..` (local indices): one output head over
    /// their stacked states and one fused loss.
    fn chunk_term<C: Recurrent<F>>(
        &mut self,
        cell: &C,
        tape: &mut Tape<F>,
        bound: &C::Bound,
        j0: usize,
        b: usize,
    ) -> Result<Var> {
        let n = self.len - self.from;
        let sc = &mut *self.scratch;
        let count = sc.pending.len();
        let hs = match sc.pending.as_slice() {
            [one] => *one,
            many => tape.concat_rows(many)?,
        };
        sc.pending.clear();
        let o = cell.output(tape, bound, hs)?;
        let t0 = self.from + j0;
        sc.heads.push((t0..t0 + count, o));
        sc.weights.clear();
        for j in j0..j0 + count {
            let w = row_weight(&self.loss, j, n, b);
            sc.weights.extend(std::iter::repeat_n(w, b));
        }
        match self.loss.targets {
            Targets::Classes(l) => {
                sc.labels.clear();
                for j in j0..j0 + count {
                    sc.labels.extend(l.row(j).iter().copied());
                }
                tape.softmax_cross_entropy(o, &sc.labels, Some(&sc.weights), Reduction::Sum)
            }
            Targets::Values(v) => {
                let q = v.len_of(Axis(2));
                let rows = v.slice_axis(Axis(0), ndarray::Slice::from(j0..j0 + count));
                let flat = rows
                    .to_shape((count * b, q))
                    .map_err(|e| invalid("SequenceLoss", e.to_string()))?;
                let yt = tape.constant_view(flat.view())?;
                tape.squared_error(o, yt, Some(&sc.weights), Reduction::Sum)
            }
            Targets::LastClass(_) | Targets::LastBinary(_) | Targets::LastValues(_) => {
                Err(invalid("SequenceLoss", "last-step targets have no chunks"))
            }
        }
    }

    /// The sum of the recorded terms.
    fn total(self, tape: &mut Tape<F>) -> Result<Option<Var>> {
        match self.scratch.terms.as_slice() {
            [] => Ok(None),
            [one] => Ok(Some(*one)),
            terms => {
                let stacked = tape.concat_rows(terms)?;
                tape.sum(stacked).map(Some)
            }
        }
    }
}

/// The coefficient `c_t s_B` of the loss terms of step `t` (0-based) of a loss over
/// `t_len` steps: `c_t = α_t` (1 without weights), divided by T for a mean over time;
/// `s_B` the batch factor.
fn row_weight<F: Scalar>(loss: &SequenceLoss<'_, F>, t: usize, t_len: usize, batch: usize) -> F {
    loss.coefficient(t, t_len) * loss.batch_factor(batch)
}

/// The loss term of a last-step target on the last output `o` (B×Q): the batch factor
/// `s_B` as a per-row weight, so that every target kind reduces the same way.
fn last_step_term<F: Scalar>(
    tape: &mut Tape<F>,
    loss: &SequenceLoss<'_, F>,
    o: Var,
    sc: &mut LossScratch<F>,
) -> Result<Var> {
    let b = tape.shape(o)?.0;
    sc.weights.clear();
    sc.weights
        .extend(std::iter::repeat_n(loss.batch_factor(b), b));
    let reshape = |e: ndarray::ShapeError| invalid("SequenceLoss", e.to_string());
    match loss.targets {
        Targets::LastClass(l) => {
            sc.labels.clear();
            sc.labels.extend(l.iter().copied());
            tape.softmax_cross_entropy(o, &sc.labels, Some(&sc.weights), Reduction::Sum)
        }
        Targets::LastBinary(y) => {
            let yv = y.to_shape((b, 1)).map_err(reshape)?;
            let yt = tape.constant_view(yv.view())?;
            tape.bce_with_logits(o, yt, loss.batch)
        }
        Targets::LastValues(y) => {
            let yt = tape.constant_view(y)?;
            tape.squared_error(o, yt, Some(&sc.weights), Reduction::Sum)
        }
        Targets::Classes(_) | Targets::Values(_) => Err(invalid(
            "SequenceLoss",
            "a per-step target has no last-step term",
        )),
    }
}
