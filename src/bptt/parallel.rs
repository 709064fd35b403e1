//! Data-parallel BPTT on the cores of one machine: the batch rows split across worker
//! threads, each with its own [`Workspace`] (tape and buffers, reused from one call to
//! the next), the parts' losses and gradients summed in a fixed order.

use super::{Report, Run, StepTarget, Stream, Workspace};
use crate::error::{invalid, Error, Result};
use crate::params::{Grads, Params};
use crate::rnn::{Recurrent, Sequence};
use crate::scalar::Scalar;
use ndarray::{concatenate, Array2, ArrayView2, Axis};
use std::ops::Range;

/// The batch rows of shard `j` of `n` over a batch of `b` rows: contiguous ranges whose
/// sizes differ by at most one, the larger first.
///
/// ```
/// use timetape::bptt::shard_rows;
/// assert_eq!(shard_rows(10, 3, 0), 0..4);
/// assert_eq!(shard_rows(10, 3, 1), 4..7);
/// assert_eq!(shard_rows(10, 3, 2), 7..10);
/// ```
pub fn shard_rows(b: usize, n: usize, j: usize) -> Range<usize> {
    let n = n.max(1);
    let (base, extra) = (b / n, b % n);
    let start = j * base + j.min(extra);
    let len = base + usize::from(j < extra);
    start.min(b)..(start + len).min(b)
}

/// Sums `parts` by a fixed binary tree (halves, recursively: `((p0 + p1) + (p2 + p3))`
/// for four), so that a given number of parts always adds in the same order, whoever
/// computed them (threads or processes).
///
/// Errors: [`Error::EmptyInput`] for no part; [`Error::ForeignParam`] for parts of
/// different stores.
pub fn tree_sum<F: Scalar>(mut parts: Vec<Grads<F>>) -> Result<Grads<F>> {
    fn go<F: Scalar>(parts: &mut [Grads<F>]) -> Result<()> {
        if parts.len() > 1 {
            let mid = parts.len().div_ceil(2);
            let (left, right) = parts.split_at_mut(mid);
            go(left)?;
            go(right)?;
            let (l, r) = (&mut left[0], &right[0]);
            l.add_assign(r)?;
        }
        Ok(())
    }
    if parts.is_empty() {
        return Err(Error::EmptyInput {
            op: "tree_sum",
            what: "no part",
        });
    }
    go(&mut parts)?;
    Ok(parts.swap_remove(0))
}

/// The same tree over scalars (the parts' losses).
pub(crate) fn tree_sum_scalars<F: Scalar>(xs: &[F]) -> F {
    match xs.len() {
        0 => F::zero(),
        1 => xs[0],
        n => {
            let mid = n.div_ceil(2);
            tree_sum_scalars(&xs[..mid]) + tree_sum_scalars(&xs[mid..])
        }
    }
}

/// The reduction of a data-parallel update, so that one training loop runs on threads
/// or on processes: each worker runs its rows of the batch, then `all_reduce` replaces
/// its loss and gradients by the sums over all workers, added by [`tree_sum`] in worker
/// order (the order [`Parallel`] adds its threads' parts in). Clip the global norm
/// after the reduction, never before: clipping each part is another gradient.
///
/// ```
/// use ndarray::{Array2, Array3};
/// use timetape::bptt::{shard_rows, AllReduce, Local, Run, Truncation, Workspace};
/// use timetape::optim::{clip_global_norm, Sgd};
/// use timetape::rnn::{models, Rnn, Sequence, SequenceLoss, Sizes};
/// use timetape::Params;
///
/// /// One update on this worker's rows of the batch: the same code runs with `Local`
/// /// and with an MPI communicator (`timetape::mpi::MpiReduce`, feature `mpi`).
/// fn update(
///     reduce: &mut impl AllReduce<f64>,
///     (cell, params): (&Rnn, &mut Params<f64>),
///     seq: &Sequence<'_, f64>,
///     sgd: &mut Sgd<f64>,
/// ) -> timetape::Result<f64> {
///     let (me, workers) = reduce.place();
///     let part = seq.rows(shard_rows(seq.batch(), workers, me))?;
///     let how = Run::new(Truncation::Fixed { k: 3 });
///     let mut report = Workspace::new().run(cell, params, &part, &how)?;
///     reduce.all_reduce(&mut report.loss, &mut report.grads)?;
///     clip_global_norm(&mut report.grads, 1.0)?; // after the reduction
///     sgd.step(params, &report.grads)?;
///     Ok(report.loss)
/// }
///
/// let mut params = Params::<f64>::new();
/// let cell = models::m3(&mut params, Sizes::new(2, 4, 3), 0)?;
/// let xs = Array3::from_shape_fn((6, 8, 2), |(t, b, d)| ((t + b + d) as f64).sin());
/// let labels = Array2::from_shape_fn((6, 8), |(t, b)| (t + b) % 3);
/// let seq = Sequence::new(xs.view(), SequenceLoss::classes(labels.view()));
/// let mut sgd = Sgd::new(0.1)?;
/// let loss = update(&mut Local, (&cell, &mut params), &seq, &mut sgd)?;
/// assert!(loss.is_finite());
/// # Ok::<(), timetape::Error>(())
/// ```
pub trait AllReduce<F: Scalar> {
    /// This worker's index and the number of workers: its rows of a batch of B are
    /// [`shard_rows`]`(B, workers, index)`.
    fn place(&self) -> (usize, usize);

    /// Replaces this worker's `loss` and `grads` by the sums over all workers.
    ///
    /// Errors: [`Error::ForeignParam`] if the workers' gradients do not match;
    /// a transport's own errors.
    fn all_reduce(&mut self, loss: &mut F, grads: &mut Grads<F>) -> Result<()>;
}

/// One process, whose threads (if any, [`Parallel`]) have already summed their parts:
/// worker 0 of 1, nothing to add.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Local;

impl<F: Scalar> AllReduce<F> for Local {
    fn place(&self) -> (usize, usize) {
        (0, 1)
    }

    fn all_reduce(&mut self, _: &mut F, _: &mut Grads<F>) -> Result<()> {
        Ok(())
    }
}

/// Runs BPTT with the batch split across worker threads: shard j of N takes the rows
/// [`shard_rows`]`(B, N, j)` ([`Sequence::rows`], whose losses add up to the whole
/// batch's), each worker its own [`Workspace`], kept for the next call. The losses and
/// gradients are summed by [`tree_sum`] in shard order, so a given N gives bit-identical
/// results run after run, and results within rounding of one worker
/// (every truncation: the ξ of `Randomized` and `Windows` are drawn once from its seed
/// and shared by all rows, as with one worker).
///
/// ```
/// use ndarray::{Array2, Array3};
/// use timetape::bptt::{run, Parallel, Run, Truncation};
/// use timetape::rnn::{models, Sequence, SequenceLoss, Sizes};
/// use timetape::Params;
///
/// let mut params = Params::<f64>::new();
/// let cell = models::m3(&mut params, Sizes::new(2, 4, 3), 0)?;
/// let xs = Array3::from_shape_fn((12, 8, 2), |(t, b, d)| ((t + b + d) as f64).sin());
/// let labels = Array2::from_shape_fn((12, 8), |(t, b)| (t + b) % 3);
/// let seq = Sequence::new(xs.view(), SequenceLoss::classes(labels.view()));
/// let how = Run::new(Truncation::Fixed { k: 4 });
/// let mut workers = Parallel::new(2)?;
/// let two = workers.run(&cell, &params, &seq, &how)?;
/// let one = run(&cell, &params, &seq, &how)?;
/// assert!((two.loss - one.loss).abs() < 1e-12 * one.loss);
/// assert!(two.grads.max_rel_diff(&one.grads) < 1e-12);
/// # Ok::<(), timetape::Error>(())
/// ```
#[derive(Debug)]
pub struct Parallel<F: Scalar> {
    workers: Vec<Workspace<F>>,
}

impl<F: Scalar> Parallel<F> {
    /// `threads` workers (≥ 1).
    ///
    /// Errors: [`Error::InvalidArgument`] for 0 threads.
    pub fn new(threads: usize) -> Result<Self> {
        if threads == 0 {
            return Err(invalid("Parallel::new", "at least one thread"));
        }
        Ok(Parallel {
            workers: (0..threads).map(|_| Workspace::new()).collect(),
        })
    }

    /// Number of workers.
    pub fn threads(&self) -> usize {
        self.workers.len()
    }

    /// [`run`](super::run) on the batch split across the workers (fewer shards than
    /// workers if the batch has fewer rows). The report's loss and gradients are the
    /// sums over shards, its step and segment counts those of one shard (all shards run
    /// the same steps), its peak tape figures the sums over the workers, `h_final` the
    /// shards' final states stacked in row order and `dh_norms` the norms over all rows.
    ///
    /// Errors: as [`run`](super::run) (the first failing shard's, in shard order);
    /// [`Error::InvalidArgument`](crate::Error::InvalidArgument) for
    /// [`Truncation::Adaptive`](super::Truncation::Adaptive), whose windows depend on
    /// the whole batch.
    pub fn run<C: Recurrent<F> + Sync>(
        &mut self,
        cell: &C,
        params: &crate::params::Params<F>,
        seq: &Sequence<'_, F>,
        how: &Run,
    ) -> Result<Report<F>> {
        if matches!(how.truncation, super::Truncation::Adaptive(_)) {
            // Each worker would measure its own rows' decay and choose its own windows.
            return Err(crate::error::invalid(
                "Parallel::run",
                "adaptive truncation chooses its windows from the whole batch; run it on one thread",
            ));
        }
        let b = seq.batch();
        check_rows(&how.truncation, b)?;
        let n = self.workers.len().min(b.max(1));
        let shards = (0..n)
            .map(|j| {
                let rows = shard_rows(b, n, j);
                let how = Run {
                    truncation: how.truncation.rows(rows.clone())?,
                    ..how.clone()
                };
                Ok((seq.rows(rows)?, how))
            })
            .collect::<Result<Vec<_>>>()?;
        let reports = on_threads(&mut self.workers[..n], "Parallel::run", |j, ws| {
            ws.run(cell, params, &shards[j].0, &shards[j].1)
        })?;
        combine(reports)
    }

    /// A [`Stream`] whose batch rows are split across as many worker threads as this
    /// pool has (fewer if the batch has fewer rows): each worker streams its rows
    /// ([`shard_rows`]) as its own [`Stream`], so memory follows the segment as with one
    /// stream. Steps are handed to the workers in blocks of [`STREAM_BLOCK`]; the
    /// report of [`ParallelStream::finish`] sums the workers' as [`Parallel::run`] does.
    ///
    /// Errors: as [`Stream::new`].
    pub fn stream<'a, C: Recurrent<F> + Sync>(
        &self,
        cell: &'a C,
        params: &'a Params<F>,
        batch: usize,
        how: &Run,
    ) -> Result<ParallelStream<'a, F, C>> {
        check_rows(&how.truncation, batch)?;
        let n = self.workers.len().min(batch.max(1));
        let streams = (0..n)
            .map(|j| {
                let rows = shard_rows(batch, n, j);
                let how = Run {
                    truncation: how.truncation.rows(rows.clone())?,
                    ..how.clone()
                };
                Ok(Stream::new(cell, params, rows.len(), &how)?.part_of(batch))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(ParallelStream {
            streams,
            batch,
            pending: Vec::new(),
            resets: None,
        })
    }
}

/// Steps a [`ParallelStream`] buffers before handing them to its workers: the threads
/// start once per block, not once per step, and the buffer stays bounded whatever T.
pub const STREAM_BLOCK: usize = 64;

/// One buffered step of a [`ParallelStream`].
struct Step<F> {
    input: Input<F>,
    target: Target<F>,
    alpha: F,
    /// Rows reset before this step ([`ParallelStream::reset_rows`]), if any.
    resets: Option<Vec<bool>>,
}

/// The owned copy of a step's input.
enum Input<F> {
    Values(Array2<F>),
    Tokens(Vec<usize>),
}

/// The owned copy of a [`StepTarget`].
enum Target<F> {
    None,
    Classes(Vec<usize>),
    Values(Array2<F>),
}

/// A [`Stream`] over batch rows split across threads ([`Parallel::stream`]).
pub struct ParallelStream<'a, F: Scalar, C: Recurrent<F>> {
    streams: Vec<Stream<'a, F, C>>,
    batch: usize,
    pending: Vec<Step<F>>,
    /// Rows to reset before the next step.
    resets: Option<Vec<bool>>,
}

impl<F: Scalar, C: Recurrent<F> + Sync> ParallelStream<'_, F, C> {
    /// Feeds step t, as [`Stream::push`]: `x` is B×D, the target is for all B rows.
    ///
    /// Errors: [`Error::ShapeMismatch`] for an input or target without B rows, at once;
    /// the other errors of [`Stream::push`] are found by the workers and returned by the
    /// push that hands them the block (or by [`ParallelStream::finish`]).
    pub fn push(
        &mut self,
        x: ArrayView2<'_, F>,
        target: StepTarget<'_, F>,
        alpha: F,
    ) -> Result<()> {
        self.buffer(Input::Values(x.to_owned()), target, alpha)
    }

    /// Feeds step t of a sequence of tokens (B ids), as [`Stream::push_tokens`].
    ///
    /// Errors: as [`ParallelStream::push`].
    pub fn push_tokens(
        &mut self,
        ids: &[usize],
        target: StepTarget<'_, F>,
        alpha: F,
    ) -> Result<()> {
        self.buffer(Input::Tokens(ids.to_vec()), target, alpha)
    }

    /// Resets the rows marked in `rows` (B flags) before the next step, as
    /// [`Stream::reset_rows`].
    ///
    /// Errors: [`Error::ShapeMismatch`] unless there are B flags.
    pub fn reset_rows(&mut self, rows: &[bool]) -> Result<()> {
        let batch = self.batch;
        let pending = self.resets.get_or_insert_with(|| vec![false; batch]);
        super::stream::mark_resets("ParallelStream::reset_rows", pending, rows)
    }

    /// Buffers a step (its rows checked), handing out a full block.
    fn buffer(&mut self, input: Input<F>, target: StepTarget<'_, F>, alpha: F) -> Result<()> {
        let op = "ParallelStream::push";
        let rows = |r: usize, what: (usize, usize)| {
            if r == self.batch {
                Ok(())
            } else {
                Err(Error::ShapeMismatch {
                    op,
                    lhs: (self.batch, what.1),
                    rhs: what,
                })
            }
        };
        match &input {
            Input::Values(x) => rows(x.nrows(), x.dim())?,
            Input::Tokens(ids) => rows(ids.len(), (ids.len(), 1))?,
        }
        let target = match target {
            StepTarget::None => Target::None,
            StepTarget::Classes(l) => {
                rows(l.len(), (l.len(), 1))?;
                Target::Classes(l.to_vec())
            }
            StepTarget::Values(y) => {
                rows(y.nrows(), y.dim())?;
                Target::Values(y.to_owned())
            }
        };
        self.pending.push(Step {
            input,
            target,
            alpha,
            resets: self.resets.take(),
        });
        if self.pending.len() >= STREAM_BLOCK {
            self.hand_out()?;
        }
        Ok(())
    }

    /// Hands the buffered steps to the workers, each its rows, in parallel.
    fn hand_out(&mut self) -> Result<()> {
        let (n, b) = (self.streams.len(), self.batch);
        let pending = std::mem::take(&mut self.pending);
        on_threads(&mut self.streams, "ParallelStream::push", |j, stream| {
            feed(stream, &pending, shard_rows(b, n, j))
        })?;
        Ok(())
    }

    /// Steps fed so far.
    pub fn steps(&self) -> usize {
        self.streams.first().map_or(0, |s| s.steps()) + self.pending.len()
    }

    /// Hands out the last steps, finishes every worker's stream and sums their reports
    /// as [`Parallel::run`] does.
    ///
    /// Errors: as [`Stream::finish`], and the workers' errors.
    pub fn finish(mut self) -> Result<Report<F>> {
        self.hand_out()?;
        let reports = self
            .streams
            .into_iter()
            .map(Stream::finish)
            .collect::<Result<Vec<_>>>()?;
        combine(reports)
    }
}

/// Feeds `steps` to one worker's stream, its `rows` of each.
fn feed<F: Scalar, C: Recurrent<F>>(
    stream: &mut Stream<'_, F, C>,
    steps: &[Step<F>],
    rows: Range<usize>,
) -> Result<()> {
    let slice = ndarray::Slice::from(rows.clone());
    for step in steps {
        let target = match &step.target {
            Target::None => StepTarget::None,
            Target::Classes(l) => StepTarget::Classes(&l[rows.clone()]),
            Target::Values(y) => StepTarget::Values(y.slice_axis(Axis(0), slice)),
        };
        if let Some(resets) = &step.resets {
            stream.reset_rows(&resets[rows.clone()])?;
        }
        match &step.input {
            Input::Values(x) => stream.push(x.slice_axis(Axis(0), slice), target, step.alpha)?,
            Input::Tokens(ids) => stream.push_tokens(&ids[rows.clone()], target, step.alpha)?,
        }
    }
    Ok(())
}

/// `job(j, worker j)` for every worker at once, worker 0 on the calling thread (one
/// thread fewer to start) and the others on scoped threads; the results in worker
/// order, or the first error in worker order.
fn on_threads<W: Send, R: Send>(
    workers: &mut [W],
    op: &'static str,
    job: impl Fn(usize, &mut W) -> Result<R> + Sync,
) -> Result<Vec<R>> {
    let Some((first, rest)) = workers.split_first_mut() else {
        return Ok(Vec::new());
    };
    let job = &job;
    let results: Vec<Result<R>> = std::thread::scope(|scope| {
        let handles: Vec<_> = rest
            .iter_mut()
            .enumerate()
            .map(|(j, w)| scope.spawn(move || job(j + 1, w)))
            .collect();
        let mine = job(0, first);
        std::iter::once(mine)
            .chain(handles.into_iter().map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(invalid(op, "a worker thread panicked")))
            }))
            .collect()
    });
    results.into_iter().collect()
}

/// One report from the shards' reports (in shard order).
fn combine<F: Scalar>(reports: Vec<Report<F>>) -> Result<Report<F>> {
    let losses: Vec<F> = reports.iter().map(|r| r.loss).collect();
    let finals: Vec<_> = reports.iter().map(|r| r.h_final.view()).collect();
    let h_final = concatenate(Axis(0), &finals).unwrap_or_else(|_| Array2::zeros((0, 0)));
    let dh_norms = reports[0].dh_norms.as_ref().map(|first| {
        (0..first.len())
            .map(|t| {
                let sq: Vec<F> = reports
                    .iter()
                    .map(|r| r.dh_norms.as_ref().map_or(F::zero(), |v| v[t] * v[t]))
                    .collect();
                tree_sum_scalars(&sq).sqrt()
            })
            .collect()
    });
    let peak_tape_nodes = reports.iter().map(|r| r.peak_tape_nodes).sum();
    let peak_tape_bytes = reports.iter().map(|r| r.peak_tape_bytes).sum();
    let stored_states = reports.iter().map(|r| r.stored_states).sum();
    let tables: Vec<_> = reports
        .iter()
        .filter_map(|r| r.xi_rows.as_ref().map(|x| x.view()))
        .collect();
    let xi_rows = (tables.len() == reports.len())
        .then(|| concatenate(Axis(1), &tables).ok())
        .flatten();
    let mut reports = reports;
    let grads = tree_sum(
        reports
            .iter_mut()
            .map(|r| std::mem::take(&mut r.grads))
            .collect(),
    )?;
    let first = reports.swap_remove(0);
    Ok(Report {
        loss: tree_sum_scalars(&losses),
        grads,
        h_final,
        dh_norms,
        peak_tape_nodes,
        peak_tape_bytes,
        stored_states,
        xi_rows,
        ..first
    })
}

/// A [`Truncation::PerRow`](super::Truncation::PerRow) must have one truncation per
/// batch row before it is split across workers (a shard would drop the extra ones).
fn check_rows(truncation: &super::Truncation, batch: usize) -> Result<()> {
    match truncation {
        super::Truncation::PerRow(rows) if rows.len() != batch => Err(Error::ShapeMismatch {
            op: "Parallel (Truncation::PerRow)",
            lhs: (batch, 1),
            rhs: (rows.len(), 1),
        }),
        _ => Ok(()),
    }
}
