//! Checkpointed full BPTT (Chen et al. 2016): exact gradients in O(√T) tape memory,
//! [`Memory::Checkpointed`](super::Memory::Checkpointed).
//!
//! A forward sweep keeps the state at every `stride`-th step (⌈T/stride⌉ states) and
//! nothing else; then, from the last stride to the first, each is recomputed on the tape
//! and backpropagated, seeded with its own loss and with ∂L/∂h at its end, which the
//! stride after it passed back ([`crate::Tape::backward_with`]). Forward steps: 2T;
//! tape: one stride; `stride = None` takes ⌈√T⌉, which minimizes stored states plus
//! tape length. The [`Report`](super::Report) has `xi = None`, counts in `segments` the
//! strides backpropagated, and gives `dh_norms` in step order.
//!
//! ```
//! use ndarray::{Array2, Array3};
//! use timetape::bptt::{run, Memory, Run, Truncation};
//! use timetape::rnn::{models, SequenceLoss, Sequence, Sizes};
//! use timetape::Params;
//!
//! let mut params = Params::<f64>::new();
//! let cell = models::m3(&mut params, Sizes::new(2, 3, 2), 0)?;
//! let xs = Array3::from_shape_fn((200, 1, 2), |(t, _, d)| ((t * (d + 1)) as f64).cos());
//! let labels = Array2::from_shape_fn((200, 1), |(t, _)| t % 2);
//! let seq = Sequence::new(xs.view(), SequenceLoss::classes(labels.view()));
//! let full = run(&cell, &params, &seq, &Run::new(Truncation::Full))?;
//! let how = Run::new(Truncation::Full).memory(Memory::Checkpointed { stride: None });
//! let ckpt = run(&cell, &params, &seq, &how)?;
//! assert!(ckpt.grads.max_rel_diff(&full.grads) < 1e-12);
//! assert_eq!(ckpt.forward_steps, 400); // 2T
//! // strides of ⌈√200⌉ = 15 steps on the tape instead of 200
//! assert!(ckpt.peak_tape_nodes < full.peak_tape_nodes / 4);
//! # Ok::<(), timetape::Error>(())
//! ```

use super::revolve::{self, Action};
use super::segment::{Engine, Pass, Problem, Segment};
use super::Edge;
use crate::error::{invalid, Result};
use crate::rnn::Recurrent;
use crate::scalar::Scalar;
use ndarray::{Array2, ArrayView2};
use std::collections::BTreeMap;
use std::ops::Range;

/// Checkpointed full BPTT on `engine` (see the module docs); gives h_T.
pub(crate) fn run_checkpointed<F: Scalar, C: Recurrent<F>>(
    engine: &mut Engine<'_, F, C>,
    problem: &Problem<'_, F>,
    stride: Option<usize>,
) -> Result<Array2<F>> {
    let t_len = problem.len();
    let stride = stride.unwrap_or_else(|| (t_len as f64).sqrt().ceil() as usize);
    if stride == 0 {
        return Err(invalid("Memory::Checkpointed", "stride must be ≥ 1"));
    }
    let segments: Vec<Range<usize>> = (0..t_len)
        .step_by(stride)
        .map(|s| s..(s + stride).min(t_len))
        .collect();
    let (saved, h_final) = forward_sweep(engine, problem, &segments)?;
    engine.stored_states = saved.len();
    backward_sweep(engine, problem, &segments, &saved)?;
    Ok(h_final)
}

/// The forward sweep: the loss of every segment, and the state at each segment start
/// (kept), then h_T.
fn forward_sweep<F: Scalar, C: Recurrent<F>>(
    engine: &mut Engine<'_, F, C>,
    problem: &Problem<'_, F>,
    segments: &[Range<usize>],
) -> Result<(Vec<Array2<F>>, Array2<F>)> {
    let mut edges: Vec<Edge<F>> = Vec::new();
    let mut saved: Vec<Array2<F>> = Vec::with_capacity(segments.len());
    let mut h = problem.h0.clone();
    for r in segments {
        saved.push(h.clone());
        edges.clear();
        edges.resize(r.len(), Edge::Keep);
        let seg = problem.segment(r.clone(), &edges, r.start);
        engine
            .segment(h.view(), &seg, Pass::Forward)
            .map_err(|err| err.at_step_offset(r.start))?;
        h.assign(&engine.state(r.len() - 1)?);
    }
    Ok((saved, h))
}

/// The backward sweep: each segment recomputed from its saved start, last segment
/// first, passing ∂L/∂h at its start back to the one before.
fn backward_sweep<F: Scalar, C: Recurrent<F>>(
    engine: &mut Engine<'_, F, C>,
    problem: &Problem<'_, F>,
    segments: &[Range<usize>],
    saved: &[Array2<F>],
) -> Result<()> {
    let mut edges: Vec<Edge<F>> = Vec::new();
    let mut carry: Option<Array2<F>> = None;
    let mut norms_rev: Vec<Vec<F>> = Vec::new();
    for (r, h_start) in segments.iter().zip(saved).rev() {
        edges.clear();
        edges.resize(r.len(), Edge::Keep);
        let seg = problem.segment(r.clone(), &edges, r.start);
        let end_seed = carry.as_ref().map(|c| c.view());
        engine
            .segment(h_start.view(), &seg, Pass::Recompute { end_seed })
            .map_err(|err| err.at_step_offset(r.start))?;
        if engine.dh_norms.is_some() {
            let before = engine.dh_norms.as_ref().map_or(0, |v| v.len());
            engine.record_dh_norms(0)?;
            if let Some(v) = engine.dh_norms.as_mut() {
                norms_rev.push(v.split_off(before));
            }
        }
        let h_in = engine
            .h_in
            .ok_or_else(|| invalid("checkpointed", "no segment"))?;
        carry = Some(match engine.tape.adjoint(h_in)? {
            Some(a) => a.to_owned(),
            None => Array2::zeros(h_start.dim()),
        });
    }
    if let Some(v) = engine.dh_norms.as_mut() {
        v.clear();
        v.extend(norms_rev.into_iter().rev().flatten());
    }
    Ok(())
}

/// Binomial checkpointing ([`revolve::schedule`]) on `engine` over the steps `steps` of
/// one segment, from the state `h` at its start, with `edges[j]` on the edge into its
/// j-th step: the actions run one step at a time on the tape, the segment's gradient is
/// added to the engine's; gives the state at its end.
pub(crate) fn run_revolve<F: Scalar, C: Recurrent<F>>(
    engine: &mut Engine<'_, F, C>,
    problem: &Problem<'_, F>,
    (steps, edges, row_xi): (Range<usize>, &[Edge<F>], Option<&[F]>),
    h: ArrayView2<'_, F>,
    states: usize,
) -> Result<Array2<F>> {
    let n = steps.len();
    let actions = revolve::schedule(n, states)?;
    let mut run = Revolve {
        start: steps.start,
        edges,
        row_xi,
        stored: BTreeMap::new(),
        current: (0, h.to_owned()),
        carry: None,
        h_end: None,
        norms_rev: Vec::new(),
    };
    if problem.local_loss(steps.start, steps.end).is_none() {
        // No loss term in the segment (a last-step loss further on): nothing to
        // backpropagate, only its last state to compute.
        run.act(engine, problem, Action::Advance { from: 0, to: n })
            .map_err(|e| e.at_step_offset(steps.start))?;
        return Ok(run.current.1);
    }
    for action in actions {
        run.act(engine, problem, action)
            .map_err(|e| e.at_step_offset(steps.start + action_step(action)))?;
        engine.stored_states = engine.stored_states.max(run.stored.len());
    }
    if let Some(v) = engine.dh_norms.as_mut() {
        v.extend(run.norms_rev.into_iter().rev());
    }
    run.h_end.ok_or_else(|| {
        invalid(
            "Memory::Revolve",
            "the schedule never reversed the last step",
        )
    })
}

/// The step an action starts at (to place an error).
fn action_step(action: Action) -> usize {
    match action {
        Action::Advance { from, .. } => from,
        Action::Reverse { step } => step,
        Action::Store { .. } | Action::Free { .. } => 0,
    }
}

/// The state of a binomial-checkpointing run between actions (steps local to the
/// segment).
struct Revolve<'e, F> {
    /// The segment's first step, and the edges into its steps.
    start: usize,
    edges: &'e [Edge<F>],
    /// The segment's per-row ξ (k·B), if its rows have their own.
    row_xi: Option<&'e [F]>,
    /// The stored states, by step.
    stored: BTreeMap<usize, Array2<F>>,
    /// The state the last action ended on, and its step.
    current: (usize, Array2<F>),
    /// ∂L/∂h at the start of the last step reversed.
    carry: Option<Array2<F>>,
    /// The state at the segment's end.
    h_end: Option<Array2<F>>,
    /// ‖∂L/∂h_t‖ from the last step back.
    norms_rev: Vec<F>,
}

impl<F: Scalar> Revolve<'_, F> {
    fn state(&self, at: usize) -> Result<ArrayView2<'_, F>> {
        match self.stored.get(&at) {
            Some(h) => Ok(h.view()),
            None if self.current.0 == at => Ok(self.current.1.view()),
            None => Err(invalid(
                "Memory::Revolve",
                format!("state {at} is not at hand"),
            )),
        }
    }

    fn act<C: Recurrent<F>>(
        &mut self,
        engine: &mut Engine<'_, F, C>,
        problem: &Problem<'_, F>,
        action: Action,
    ) -> Result<()> {
        match action {
            Action::Store { at } => {
                let h = self.state(at)?.to_owned();
                self.stored.insert(at, h);
            }
            Action::Free { at } => {
                self.stored.remove(&at);
            }
            Action::Advance { from, to } => {
                let mut h = self.state(from)?.to_owned();
                for j in from..to {
                    let t = self.start + j;
                    let mut seg = Segment::plain(
                        problem.steps(t, t + 1),
                        problem.token_steps(t, t + 1),
                        &[Edge::Keep],
                    );
                    seg.resets = problem.resets_of(t, t + 1);
                    engine.segment(h.view(), &seg, Pass::Forward)?;
                    h.assign(&engine.state(0)?);
                }
                self.current = (to, h);
            }
            Action::Reverse { step } => self.reverse(engine, problem, step)?,
        }
        Ok(())
    }

    /// Records step `step` with its loss and backpropagates it with the carried ∂L/∂h.
    fn reverse<C: Recurrent<F>>(
        &mut self,
        engine: &mut Engine<'_, F, C>,
        problem: &Problem<'_, F>,
        step: usize,
    ) -> Result<()> {
        let h = self.state(step)?.to_owned();
        let t = self.start + step;
        let edges = [self.edges[step]];
        let mut seg = problem.segment(t..t + 1, &edges, t);
        let b = h.nrows();
        seg.row_xi = self.row_xi.map(|xi| &xi[step * b..(step + 1) * b]);
        let end_seed = self.carry.as_ref().map(|c| c.view());
        engine.segment(h.view(), &seg, Pass::Reverse { end_seed })?;
        if self.h_end.is_none() {
            self.h_end = Some(engine.state(0)?.to_owned());
        }
        if engine.dh_norms.is_some() {
            let before = engine.dh_norms.as_ref().map_or(0, |v| v.len());
            engine.record_dh_norms(0)?;
            if let Some(v) = engine.dh_norms.as_mut() {
                self.norms_rev.extend(v.drain(before..));
            }
        }
        let h_in = engine
            .h_in
            .ok_or_else(|| invalid("Memory::Revolve", "no step"))?;
        self.carry = Some(match engine.tape.adjoint(h_in)? {
            Some(a) => a.to_owned(),
            None => Array2::zeros(h.dim()),
        });
        self.current = (usize::MAX, Array2::zeros((0, 0)));
        Ok(())
    }
}
