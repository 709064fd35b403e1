//! Checkpointed full BPTT (Chen et al. 2016): exact gradients in O(√T) tape memory.

use super::{Engine, Problem, Report, RunOptions};
use crate::error::{invalid, Result};
use crate::params::Params;
use crate::rnn::{Edge, Recurrent, SequenceLoss};
use crate::scalar::Scalar;
use ndarray::{Array2, ArrayView2, ArrayView3};

/// Exact full-BPTT gradients with a tape of at most `stride` steps: the same gradient
/// as [`run`](super::run) with [`Truncation::Full`](super::Truncation::Full), up to
/// rounding, in less memory.
///
/// A forward pass keeps the state at every `stride`-th step (⌈T/stride⌉ states) and
/// nothing else; then, from the last segment to the first, each segment is recomputed
/// on the tape and backpropagated, seeded with its own loss and with ∂L/∂h at its end,
/// which the segment after it passed back ([`crate::Tape::backward_with`]). Forward
/// steps: 2T; tape: one segment; `stride = None` takes ⌈√T⌉, which minimizes
/// stored states plus tape length. The [`Report`] has `xi = None`, counts in
/// `segments` the segments backpropagated, and gives `dh_norms` in step order.
///
/// ```
/// use ndarray::{Array2, Array3};
/// use timetape::bptt::{checkpointed, run, RunOptions, Truncation};
/// use timetape::rnn::{models, SequenceLoss};
/// use timetape::Params;
///
/// let mut params = Params::<f64>::new();
/// let cell = models::m3(&mut params, 2, 3, 2, 0)?;
/// let xs = Array3::from_shape_fn((200, 1, 2), |(t, _, d)| ((t * (d + 1)) as f64).cos());
/// let labels = Array2::from_shape_fn((200, 1), |(t, _)| t % 2);
/// let loss = SequenceLoss::classes(labels.view());
/// let full = run(&cell, &params, xs.view(), None, &loss, &Truncation::Full, RunOptions::default())?;
/// let ckpt = checkpointed(&cell, &params, xs.view(), None, &loss, None, RunOptions::default())?;
/// assert!(ckpt.grads.max_rel_diff(&full.grads) < 1e-12);
/// assert_eq!(ckpt.forward_steps, 400); // 2T
/// // segments of ⌈√200⌉ = 15 steps on the tape instead of 200
/// assert!(ckpt.peak_tape_nodes < full.peak_tape_nodes / 4);
/// # Ok::<(), timetape::Error>(())
/// ```
///
/// Errors: [`Error::InvalidArgument`](crate::Error::InvalidArgument) for `stride =
/// Some(0)`; otherwise as [`run`](super::run):
/// [`Error::EmptyInput`](crate::Error::EmptyInput) for an empty sequence,
/// [`Error::ShapeMismatch`](crate::Error::ShapeMismatch) for targets, weights or `h0`
/// that do not fit it, [`Error::LabelOutOfRange`](crate::Error::LabelOutOfRange).
pub fn checkpointed<F: Scalar, C: Recurrent<F>>(
    cell: &C,
    params: &Params<F>,
    xs: ArrayView3<'_, F>,
    h0: Option<ArrayView2<'_, F>>,
    loss: &SequenceLoss<'_, F>,
    stride: Option<usize>,
    opts: RunOptions,
) -> Result<Report<F>> {
    let problem = Problem::new(cell, xs, h0, loss)?;
    let t_len = problem.len();
    let stride = stride.unwrap_or_else(|| (t_len as f64).sqrt().ceil() as usize);
    if stride == 0 {
        return Err(invalid("checkpointed", "stride must be ≥ 1"));
    }
    let mut engine = Engine::new(cell, params, opts);
    let starts: Vec<usize> = (0..t_len).step_by(stride).collect();
    let mut edges: Vec<Edge<F>> = Vec::new();
    // Forward: keep the state at each segment start, count the loss.
    let mut saved: Vec<Array2<F>> = Vec::with_capacity(starts.len());
    let mut h = problem.h0.clone();
    for &s in &starts {
        let e = (s + stride).min(t_len);
        saved.push(h.clone());
        edges.clear();
        edges.resize(e - s, Edge::Keep);
        let l = problem.local_loss(s, e);
        engine.segment(
            problem.steps(s, e),
            h.view(),
            &edges,
            0,
            l.as_ref(),
            None,
            false,
            true,
        )?;
        h.assign(&engine.state(e - s - 1)?);
    }
    let h_final = h;
    // Backward: last segment first, passing ∂L/∂h back.
    let mut carry: Option<Array2<F>> = None;
    let mut norms_rev: Vec<Vec<F>> = Vec::new();
    for (j, &s) in starts.iter().enumerate().rev() {
        let e = (s + stride).min(t_len);
        edges.clear();
        edges.resize(e - s, Edge::Keep);
        let l = problem.local_loss(s, e);
        engine.segment(
            problem.steps(s, e),
            saved[j].view(),
            &edges,
            0,
            l.as_ref(),
            carry.as_ref().map(|c| c.view()),
            true,
            false,
        )?;
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
        let dh = engine.tape.adjoint(h_in)?;
        carry = Some(match dh {
            Some(a) => a.to_owned(),
            None => Array2::zeros(saved[j].dim()),
        });
    }
    if let Some(v) = engine.dh_norms.as_mut() {
        v.clear();
        v.extend(norms_rev.into_iter().rev().flatten());
    }
    engine.report(None, h_final)
}
