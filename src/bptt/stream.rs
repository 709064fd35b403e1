//! Streaming BPTT over sequences that arrive step by step.

use super::checkpoint;
use super::segment::{Engine, Pass, Problem, Segment};
use super::xi::XiSampler;
use super::{Edge, Memory, Report, Run, Truncation};
use crate::error::{invalid, Error, Result};
use crate::ops::Reduction;
use crate::params::Params;
use crate::rnn::{Recurrent, SequenceLoss, Targets};
use crate::scalar::Scalar;
use ndarray::{Array2, ArrayView2, ArrayView3};

/// The target of one step of a [`Stream`].
#[derive(Debug, Clone, Copy)]
pub enum StepTarget<'a, F> {
    /// No loss at this step.
    None,
    /// One class label per batch row (B labels, each < Q): softmax cross-entropy of the
    /// step's output.
    Classes(&'a [usize]),
    /// A B×Q target: squared error `‖o − y‖²` (no ½) of the step's output.
    Values(ArrayView2<'a, F>),
}

/// The input of one step: real values or token ids.
#[derive(Clone, Copy)]
enum StepInput<'x, F> {
    Values(ArrayView2<'x, F>),
    Tokens(&'x [usize]),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Unknown,
    Classes,
    Values,
}

/// BPTT over a sequence fed one step at a time, for sequences that do not fit in
/// memory. Steps are buffered until the current segment is known to be complete (the
/// next ξ is 0), then the segment is recorded, backpropagated into the gradient and
/// dropped: memory follows the segment length, not T. (With `Full`, or a pattern with
/// no zero, the one segment is the whole sequence: everything is buffered until
/// [`Stream::finish`].)
///
/// The loss is `Σ_t α_t (1/B) Σ_b l(o_{t,b}, y_{t,b})` (a sum over time; give
/// `α_t = 1/T` for a mean; [`Stream::sum_over_batch`] for a sum over the rows), `l` as
/// in [`StepTarget`]. Strategies: `Full`, `Fixed`,
/// `Tbptt { k, k }`, `Randomized`, `Windows`, `Pattern` and `PerRow` of them; TBPTT
/// with k2 ≠ k1 and `Adaptive` need the sequence at hand, see [`super::run`]. Memory:
/// the segment on the tape, or, with [`Memory::Revolve`], each segment reversed within
/// the budget once it is complete (its length then known: the optimal schedule); the
/// buffered inputs of the segment are kept either way. [`Stream::reset_rows`] restarts
/// single rows. Fed the same steps, the [`Report`](super::Report) of
/// [`Stream::finish`] has the gradient of [`super::run`] with the same truncation, up to
/// rounding.
///
/// ```
/// use ndarray::Array2;
/// use timetape::bptt::{Run, Stream, StepTarget, Truncation};
/// use timetape::rnn::{models, Sizes};
/// use timetape::Params;
///
/// let mut params = Params::<f32>::new();
/// let cell = models::m3(&mut params, Sizes::new(2, 8, 2), 0)?;
/// let mut stream = Stream::new(&cell, &params, 1, &Run::new(Truncation::Fixed { k: 32 }))?;
/// for t in 0..10_000 {
///     let x = Array2::from_elem((1, 2), (t as f32 * 0.1).sin());
///     stream.push(x.view(), StepTarget::Classes(&[t % 2]), 1.0)?;
/// }
/// let report = stream.finish()?;
/// assert_eq!(report.backward_steps, 10_000);
/// assert!(report.peak_tape_nodes < 32 * 8); // one block on the tape, whatever T
/// # Ok::<(), timetape::Error>(())
/// ```
pub struct Stream<'a, F: Scalar, C: Recurrent<F>> {
    engine: Engine<'a, F, C>,
    truncation: Truncation,
    /// The tape whole ([`Memory::Tape`]) or each segment reversed within a budget.
    memory: Memory,
    sampler: Option<XiSampler>,
    batch: usize,
    batch_reduction: Reduction,
    /// For the rows of a larger batch (a worker of a parallel stream): its size.
    batch_of: Option<usize>,
    kind: Kind,
    t: usize,
    h: Array2<F>,
    /// Whether the stream takes tokens (set by its first step).
    tokens: bool,
    // The buffered segment.
    xs: Vec<F>,
    ids: Vec<usize>,
    labels: Vec<usize>,
    values: Vec<F>,
    alphas: Vec<F>,
    xi: Vec<f64>,
    edges: Vec<Edge<F>>,
    all_xi: Option<Vec<f64>>,
    q: usize,
    /// For [`Truncation::PerRow`]: each row's sampler, the buffered per-row ξ (k·B) and
    /// all of them (T·B).
    row_samplers: Vec<Option<XiSampler>>,
    row_xi: Vec<f64>,
    all_row_xi: Vec<f64>,
    /// Rows to reset before the next step ([`Stream::reset_rows`]), the buffered resets
    /// (k·B) and the initial state reset rows return to.
    pending_resets: Vec<bool>,
    resets: Vec<bool>,
    h_start: Array2<F>,
}

impl<'a, F: Scalar, C: Recurrent<F>> Stream<'a, F, C> {
    /// A stream for batches of `batch` rows, starting from h_0 = 0, run as `how` says.
    ///
    /// Errors: [`Error::InvalidArgument`] for a bad truncation (as
    /// [`Truncation::validate`], whose pattern length is checked only at
    /// [`Stream::finish`]), TBPTT with k2 ≠ k1, adaptive truncation, or √T
    /// checkpointing (a stream keeps one segment at a time already; a
    /// [`Memory::Revolve`] budget is taken); [`Error::ShapeMismatch`] for a `PerRow`
    /// without one truncation per row; [`Error::EmptyInput`] for `batch = 0`.
    pub fn new(cell: &'a C, params: &'a Params<F>, batch: usize, how: &Run) -> Result<Self> {
        let (truncation, opts) = (how.truncation.clone(), how.options);
        check_stream(how, batch)?;
        crate::init::check_alloc::<F>("Stream::new", &[(batch, cell.state_width())])?;
        let sampler = sampler_of(&truncation);
        let row_samplers = match &truncation {
            Truncation::PerRow(rows) => rows.iter().map(sampler_of).collect(),
            _ => Vec::new(),
        };
        let all_xi = truncation.reports_xi().then(Vec::new);
        Ok(Stream {
            engine: Engine::new(cell, params, opts),
            truncation,
            memory: how.memory,
            sampler,
            batch,
            batch_reduction: Reduction::Mean,
            batch_of: None,
            kind: Kind::Unknown,
            t: 0,
            h: Array2::zeros((batch, cell.state_width())),
            tokens: false,
            xs: Vec::new(),
            ids: Vec::new(),
            labels: Vec::new(),
            values: Vec::new(),
            alphas: Vec::new(),
            xi: Vec::new(),
            edges: Vec::new(),
            all_xi,
            q: cell.output_width(),
            row_samplers,
            row_xi: Vec::new(),
            all_row_xi: Vec::new(),
            pending_resets: vec![false; batch],
            resets: Vec::new(),
            h_start: Array2::zeros((batch, cell.state_width())),
        })
    }

    /// Starts from a given state `h0` (B×S) instead of zeros. Call it before the first
    /// [`Stream::push`]: it is not checked, and later it would overwrite the state the
    /// stream has reached.
    ///
    /// Errors: [`Error::ShapeMismatch`] if `h0` is not B×S.
    pub fn with_initial_state(mut self, h0: ArrayView2<'_, F>) -> Result<Self> {
        if h0.dim() != self.h.dim() {
            return Err(Error::ShapeMismatch {
                op: "Stream::with_initial_state",
                lhs: self.h.dim(),
                rhs: h0.dim(),
            });
        }
        self.h.assign(&h0);
        self.h_start.assign(&h0);
        Ok(self)
    }

    /// The same stream with each step's loss summed (not averaged) over the batch rows:
    /// `Σ_t α_t Σ_b l(o_{t,b}, y_{t,b})`.
    pub fn sum_over_batch(mut self) -> Self {
        self.batch_reduction = Reduction::Sum;
        self
    }

    /// The ξ sampler of a `Randomized` or `Windows` stream, where it is: its next draw
    /// is the ξ of the next step pushed. Save its position with
    /// [`Checkpoint::sampler`](crate::checkpoint::Checkpoint::sampler) to resume the
    /// same draws in a later stream ([`Stream::with_sampler`]). `None` for the other
    /// strategies.
    pub fn sampler(&self) -> Option<&XiSampler> {
        self.sampler.as_ref()
    }

    /// Continues the ξ draws of another sampler: a stream resumed from a checkpoint
    /// ([`Loaded::sampler`](crate::checkpoint::Loaded::sampler) or
    /// [`Loaded::windows_sampler`](crate::checkpoint::Loaded::windows_sampler)) draws
    /// the ξ (cuts the windows) that the saved stream would have drawn next. The
    /// gradient still starts afresh at the resumed stream's first step: the saved
    /// stream's last segment was backpropagated by its [`Stream::finish`].
    ///
    /// ```
    /// use ndarray::Array2;
    /// use timetape::bptt::{Awd, Run, Stream, StepTarget, Truncation, WindowLengths};
    /// use timetape::checkpoint::{Checkpoint, Loaded};
    /// use timetape::rnn::{models, Rnn, Sizes};
    /// use timetape::Params;
    ///
    /// let mut params = Params::<f64>::new();
    /// let cell = models::m3(&mut params, Sizes::new(1, 4, 2), 0)?;
    /// let lengths = WindowLengths::awd(Awd::default())?;
    /// let how = Run::new(Truncation::Windows { lengths: lengths.clone(), seed: 5 });
    /// fn feed(s: &mut Stream<'_, f64, Rnn>, steps: usize) -> timetape::Result<()> {
    ///     for t in 0..steps {
    ///         let x = Array2::from_elem((1, 1), (t as f64).sin());
    ///         s.push(x.view(), StepTarget::Classes(&[t % 2]), 1.0)?;
    ///     }
    ///     Ok(())
    /// }
    /// let mut first = Stream::new(&cell, &params, 1, &how)?;
    /// feed(&mut first, 150)?;
    /// let bytes = Checkpoint::new(&params).sampler(first.sampler().unwrap()).to_bytes()?;
    /// let mut xi = first.finish()?.xi.unwrap();
    ///
    /// let sampler = Loaded::<f64>::from_bytes(&bytes)?.windows_sampler(lengths)?;
    /// let mut second = Stream::new(&cell, &params, 1, &how)?.with_sampler(sampler)?;
    /// feed(&mut second, 150)?;
    /// xi.extend(second.finish()?.xi.unwrap());
    /// assert_eq!(xi, how.truncation.xi(300)?.unwrap()); // the same windows
    /// # Ok::<(), timetape::Error>(())
    /// ```
    ///
    /// Errors: [`Error::InvalidArgument`] if the stream's truncation draws no ξ (not
    /// `Randomized` or `Windows`), if the sampler draws windows and the stream is
    /// `Randomized` (or the reverse), or if steps were already pushed.
    pub fn with_sampler(mut self, sampler: XiSampler) -> Result<Self> {
        let op = "Stream::with_sampler";
        let windows = match &self.truncation {
            Truncation::Randomized { .. } => false,
            Truncation::Windows { .. } => true,
            _ => return Err(invalid(op, "only Randomized and Windows streams draw ξ")),
        };
        if sampler.draws_windows() != windows {
            return Err(invalid(
                op,
                "a Windows stream needs a sampler of windows, a Randomized one a sampler of π",
            ));
        }
        if self.t > 0 {
            return Err(invalid(op, "steps were already pushed"));
        }
        self.sampler = Some(sampler);
        Ok(self)
    }

    /// This stream as the rows of a batch of `batch` rows: a mean over the batch divides
    /// by `batch` (see [`crate::rnn::SequenceLoss::rows`]).
    pub(crate) fn part_of(mut self, batch: usize) -> Self {
        self.batch_of = Some(batch);
        self
    }

    /// ξ_t shared by the rows and, for [`Truncation::PerRow`], each row's (in `rows`):
    /// then the shared value is their common one, 0 if every row is cut, and 1 (unused)
    /// if they differ.
    fn next_xi(&mut self, rows: &mut Vec<f64>) -> Result<f64> {
        let t = self.t;
        rows.clear();
        let Truncation::PerRow(trs) = &self.truncation else {
            return xi_of(&self.truncation, self.sampler.as_mut(), t);
        };
        for (tr, sampler) in trs.iter().zip(self.row_samplers.iter_mut()) {
            rows.push(xi_of(tr, sampler.as_mut(), t)?);
        }
        Ok(if rows.iter().all(|&x| x == rows[0]) {
            rows[0]
        } else {
            1.0
        })
    }

    /// Resets the state of the rows marked in `rows` (B flags) to their initial state
    /// before the next step: a new episode starts there in those rows, and no gradient
    /// crosses the boundary (as [`crate::rnn::Sequence::with_resets`]).
    ///
    /// Errors: [`Error::ShapeMismatch`] unless there are B flags.
    pub fn reset_rows(&mut self, rows: &[bool]) -> Result<()> {
        mark_resets("Stream::reset_rows", &mut self.pending_resets, rows)
    }

    /// Feeds step t: its input `x` (B×D), its target, and its loss weight α_t (ignored
    /// for [`StepTarget::None`]). If ξ_t = 0, the segment buffered so far is first
    /// backpropagated and dropped.
    ///
    /// Errors: [`Error::ShapeMismatch`] for an input or target of the wrong shape;
    /// [`Error::LabelOutOfRange`]; [`Error::NonFinite`] for a NaN or infinite input or
    /// target value; [`Error::InvalidArgument`] for a non-finite α, a target kind
    /// (classes or values) that differs from earlier steps, a
    /// pattern with fewer entries than steps, or a π_t outside (0, 1]. After an error
    /// from a step that passed the shape and value checks, the stream may be left part
    /// way through the step: do not keep using it.
    pub fn push(
        &mut self,
        x: ArrayView2<'_, F>,
        target: StepTarget<'_, F>,
        alpha: F,
    ) -> Result<()> {
        self.push_step(StepInput::Values(x), target, alpha)
    }

    /// Feeds step t of a sequence of tokens, for a cell that embeds them
    /// ([`crate::rnn::Embedded`]): one id per batch row (B ids), its target and its loss
    /// weight α_t, as [`Stream::push`]. A stream takes real inputs or tokens, not both.
    ///
    /// Errors: as [`Stream::push`]; [`Error::LabelOutOfRange`] for an id beyond the
    /// table (when the segment is recorded); [`Error::InvalidArgument`] for tokens after
    /// real inputs (or the reverse), or for a cell without an embedding.
    pub fn push_tokens(
        &mut self,
        ids: &[usize],
        target: StepTarget<'_, F>,
        alpha: F,
    ) -> Result<()> {
        self.push_step(StepInput::Tokens(ids), target, alpha)
    }

    /// [`Stream::push`] or [`Stream::push_tokens`].
    fn push_step(
        &mut self,
        input: StepInput<'_, F>,
        target: StepTarget<'_, F>,
        alpha: F,
    ) -> Result<()> {
        let kind = self.check_step(input, target, alpha)?;
        self.tokens = matches!(input, StepInput::Tokens(_));
        if self.kind == Kind::Unknown && kind != Kind::Unknown {
            // Earlier steps had no target: give them dummy entries of the new kind.
            let n = self.alphas.len();
            match kind {
                Kind::Classes => self.labels.resize(n * self.batch, 0),
                Kind::Values => self.values.resize(n * self.batch * self.q, F::zero()),
                Kind::Unknown => {}
            }
        }
        self.kind = kind;
        let mut rows = Vec::new();
        let xi = self.next_xi(&mut rows)?;
        if xi == 0.0 && !self.alphas.is_empty() {
            self.flush()?;
        }
        if let Some(all) = self.all_xi.as_mut() {
            all.push(xi);
        }
        self.xi.push(xi);
        self.row_xi.extend_from_slice(&rows);
        self.all_row_xi.extend_from_slice(&rows);
        self.resets.extend_from_slice(&self.pending_resets);
        self.pending_resets.fill(false);
        match input {
            StepInput::Values(x) => self.xs.extend(x.iter().copied()),
            StepInput::Tokens(ids) => self.ids.extend_from_slice(ids),
        }
        match (target, kind) {
            (StepTarget::Classes(l), _) => self.labels.extend_from_slice(l),
            (StepTarget::Values(v), _) => self.values.extend(v.iter().copied()),
            (StepTarget::None, Kind::Classes) => {
                self.labels.extend(std::iter::repeat_n(0, self.batch))
            }
            (StepTarget::None, Kind::Values) => self
                .values
                .extend(std::iter::repeat_n(F::zero(), self.batch * self.q)),
            (StepTarget::None, Kind::Unknown) => {}
        }
        let has_loss = !matches!(target, StepTarget::None);
        self.alphas.push(if has_loss { alpha } else { F::zero() });
        self.t += 1;
        Ok(())
    }

    /// Checks a step's input, target and weight; returns the kind of target the stream
    /// has from this step on.
    fn check_step(
        &self,
        input: StepInput<'_, F>,
        target: StepTarget<'_, F>,
        alpha: F,
    ) -> Result<Kind> {
        let op = "Stream::push";
        let (b, q) = (self.batch, self.q);
        let d = self.engine.cell.input_width();
        let mismatch = |lhs, rhs| Error::ShapeMismatch { op, lhs, rhs };
        let non_finite = |what: &str, at| Error::NonFinite {
            op,
            what: format!("entry {at} of the {what}"),
        };
        let tokens = matches!(input, StepInput::Tokens(_));
        if self.t > 0 && tokens != self.tokens {
            return Err(invalid(
                op,
                "a stream takes real inputs or tokens, not both",
            ));
        }
        match input {
            StepInput::Values(x) if x.dim() != (b, d) => return Err(mismatch((b, d), x.dim())),
            StepInput::Values(x) => {
                if let Some(at) = crate::params::first_non_finite(x.iter()) {
                    return Err(non_finite("input x_t", at));
                }
            }
            StepInput::Tokens(ids) if ids.len() != b => {
                return Err(mismatch((b, 1), (ids.len(), 1)))
            }
            StepInput::Tokens(_) => {}
        }
        if !alpha.is_finite() {
            return Err(invalid(op, "non-finite weight α_t"));
        }
        let kind = match target {
            StepTarget::None => self.kind,
            StepTarget::Classes(l) if l.len() != b => return Err(mismatch((b, 1), (l.len(), 1))),
            StepTarget::Classes(l) => match l.iter().find(|&&c| c >= q) {
                Some(&label) => {
                    return Err(Error::LabelOutOfRange {
                        op,
                        label,
                        classes: q,
                    })
                }
                None => Kind::Classes,
            },
            StepTarget::Values(v) if v.dim() != (b, q) => return Err(mismatch((b, q), v.dim())),
            StepTarget::Values(v) => match crate::params::first_non_finite(v.iter()) {
                Some(at) => return Err(non_finite("target y_t", at)),
                None => Kind::Values,
            },
        };
        if self.kind != Kind::Unknown && kind != self.kind {
            return Err(invalid(op, "targets must all be classes or all be values"));
        }
        Ok(kind)
    }

    /// Records and backpropagates the buffered segment, then empties the buffer.
    fn flush(&mut self) -> Result<()> {
        let k = self.alphas.len();
        if k == 0 {
            return Ok(());
        }
        self.fill_edges(k);
        let b = self.batch;
        let d = if self.tokens {
            0
        } else {
            self.engine.cell.input_width()
        };
        let shape = |e: ndarray::ShapeError| invalid("Stream", e.to_string());
        let xs = ArrayView3::from_shape((k, b, d), &self.xs).map_err(shape)?;
        let tokens = match self.tokens {
            true => Some(ArrayView2::from_shape((k, b), &self.ids).map_err(shape)?),
            false => None,
        };
        let targets = match self.kind {
            Kind::Unknown => None,
            Kind::Classes => Some(Targets::Classes(
                ArrayView2::from_shape((k, b), &self.labels).map_err(shape)?,
            )),
            Kind::Values => Some(Targets::Values(
                ArrayView3::from_shape((k, b, self.q), &self.values).map_err(shape)?,
            )),
        };
        let loss = targets.map(|targets| SequenceLoss {
            targets,
            step_weights: Some(&self.alphas),
            time: Reduction::Sum,
            batch: self.batch_reduction,
            batch_of: self.batch_of,
        });
        let row_xi: Vec<F> = self.row_xi.iter().map(|&x| F::of(x)).collect();
        let mut seg = Segment::plain(xs, tokens, &self.edges);
        seg.loss = loss.map(|l| (0, l));
        seg.row_xi = (!row_xi.is_empty()).then_some(row_xi.as_slice());
        if self.resets.iter().any(|&r| r) {
            let mask = ArrayView2::from_shape((k, b), &self.resets).map_err(shape)?;
            seg.resets = Some((mask, self.h_start.view()));
        }
        let start = self.t - k;
        let budget = (self.memory, self.alphas.as_slice(), self.h_start.view());
        let h = reverse(&mut self.engine, &seg, self.h.view(), budget)
            .map_err(|e| e.at_step_offset(start))?;
        self.h.assign(&h);
        self.xs.clear();
        self.ids.clear();
        self.labels.clear();
        self.values.clear();
        self.alphas.clear();
        self.xi.clear();
        self.row_xi.clear();
        self.resets.clear();
        Ok(())
    }

    /// The edges into the `k` buffered steps: ξ as drawn, except that the first edge of
    /// a later segment leaves a fresh variable (nothing to cut).
    fn fill_edges(&mut self, k: usize) {
        self.edges.clear();
        let first = match self.t == k {
            true => Edge::from_xi(F::of(self.xi[0])),
            false => Edge::Keep,
        };
        self.edges.push(first);
        let rest = self.xi[1..].iter().map(|&x| Edge::from_xi(F::of(x)));
        self.edges.extend(rest);
    }

    /// Steps fed so far.
    pub fn steps(&self) -> usize {
        self.t
    }

    /// Backpropagates the last segment and reports: the loss, the gradient and the costs
    /// of all the steps fed, `h_final` the last state, and `xi` the ξ used for
    /// `Randomized`, `Windows` and `Pattern`.
    ///
    /// Errors: [`Error::EmptyInput`] if no step was fed; [`Error::ShapeMismatch`] if a
    /// `Pattern` has more entries than the steps fed.
    pub fn finish(mut self) -> Result<Report<F>> {
        if self.t == 0 {
            return Err(Error::EmptyInput {
                op: "Stream::finish",
                what: "no steps",
            });
        }
        let rows = match &self.truncation {
            Truncation::PerRow(rows) => rows.as_slice(),
            tr => std::slice::from_ref(tr),
        };
        for tr in rows {
            if let Truncation::Pattern(p) = tr {
                if p.len() != self.t {
                    return Err(Error::ShapeMismatch {
                        op: "Stream::finish",
                        lhs: (self.t, 1),
                        rhs: (p.len(), 1),
                    });
                }
            }
        }
        self.flush()?;
        if !self.row_samplers.is_empty() {
            let table =
                Array2::from_shape_vec((self.t, self.batch), std::mem::take(&mut self.all_row_xi))
                    .map_err(|e| invalid("Stream::finish", e.to_string()))?;
            self.engine.xi_rows = Some(table);
        }
        let h = self.h.clone();
        self.engine.report(self.all_xi.take(), h)
    }
}

/// The sampler a cut-based truncation draws its ξ with, if it draws them.
pub(crate) fn sampler_of(tr: &Truncation) -> Option<XiSampler> {
    match tr {
        Truncation::Randomized { pi, seed } => Some(XiSampler::new(pi.clone(), *seed)),
        Truncation::Windows { lengths, seed } => Some(XiSampler::windows(lengths.clone(), *seed)),
        _ => None,
    }
}

/// ξ_t (t 0-based) of a cut-based truncation, drawn from `sampler` if it draws them.
pub(crate) fn xi_of(tr: &Truncation, sampler: Option<&mut XiSampler>, t: usize) -> Result<f64> {
    Ok(match tr {
        Truncation::Full => 1.0,
        Truncation::Fixed { k } | Truncation::Tbptt { k1: k, .. } => {
            if t.is_multiple_of(*k) {
                0.0
            } else {
                1.0
            }
        }
        Truncation::Randomized { .. } | Truncation::Windows { .. } => match sampler {
            Some(s) => s.next_xi()?,
            None => return Err(invalid("Stream", "no sampler")),
        },
        Truncation::Pattern(p) => *p.get(t).ok_or_else(|| {
            invalid(
                "Stream::push",
                format!("the pattern has only {} entries", p.len()),
            )
        })?,
        Truncation::Adaptive(_) | Truncation::PerRow(_) => {
            return Err(invalid("Stream", "not a cut-based truncation of one row"))
        }
    })
}

/// Checks what a stream is asked to run.
fn check_stream(how: &Run, batch: usize) -> Result<()> {
    let op = "Stream::new";
    if matches!(how.memory, Memory::Checkpointed { .. }) {
        return Err(invalid(
            op,
            "a stream keeps one segment on the tape, or reverses it within a budget \
             (Memory::Revolve); √T checkpointing is for bptt::run",
        ));
    }
    if batch == 0 {
        return Err(Error::EmptyInput {
            op,
            what: "batch of 0 rows",
        });
    }
    how.truncation.validate(None)?;
    match &how.truncation {
        Truncation::Tbptt { k1, k2 } if k1 != k2 => Err(invalid(
            op,
            "TBPTT with k2 ≠ k1 is not streamed; use bptt::run",
        )),
        Truncation::Adaptive(_) => Err(invalid(
            op,
            "adaptive truncation is not streamed; use bptt::run",
        )),
        Truncation::PerRow(rows) if rows.len() != batch => Err(Error::ShapeMismatch {
            op: "Stream::new (Truncation::PerRow)",
            lhs: (batch, 1),
            rhs: (rows.len(), 1),
        }),
        _ => Ok(()),
    }
}

/// Records and backpropagates a complete segment from `h` (on the tape whole, or by
/// the optimal schedule for its length within a [`Memory::Revolve`] budget, given the
/// step weights and the state reset rows return to); gives the state at its end.
fn reverse<F: Scalar, C: Recurrent<F>>(
    engine: &mut Engine<'_, F, C>,
    seg: &Segment<'_, F>,
    h: ArrayView2<'_, F>,
    (memory, alphas, h_start): (Memory, &[F], ArrayView2<'_, F>),
) -> Result<Array2<F>> {
    let k = seg.edges.len();
    if let (Memory::Revolve { states }, Some((_, loss))) = (memory, seg.loss) {
        let problem = Problem {
            xs: seg.xs,
            tokens: seg.tokens,
            loss,
            coef: alphas.to_vec(),
            h0: h_start.to_owned(),
            resets: seg.resets.map(|(mask, _)| mask),
        };
        return checkpoint::run_revolve(engine, &problem, (0..k, seg.edges, seg.row_xi), h, states);
    }
    engine.segment(h, seg, Pass::Backward)?;
    engine.record_dh_norms(0)?;
    Ok(engine.state(k - 1)?.to_owned())
}

/// Marks `rows` (one flag per batch row) among the rows to reset before the next step.
pub(crate) fn mark_resets(op: &'static str, pending: &mut [bool], rows: &[bool]) -> Result<()> {
    if rows.len() != pending.len() {
        return Err(Error::ShapeMismatch {
            op,
            lhs: (pending.len(), 1),
            rhs: (rows.len(), 1),
        });
    }
    for (p, &r) in pending.iter_mut().zip(rows) {
        *p = *p || r;
    }
    Ok(())
}
