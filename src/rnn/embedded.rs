//! Token inputs: an embedding table in front of a cell.

use super::{Projection, Recurrent};
use crate::error::{invalid, Error, Result};
use crate::init;
use crate::ops::RowsOf;
use crate::params::{ParamId, Params};
use crate::scalar::Scalar;
use crate::tape::{Tape, Var};

/// An embedding table: V rows of width D, one per token id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Embedding {
    /// The table, V×D.
    pub table: ParamId,
    vocab: usize,
    dim: usize,
}

impl Embedding {
    /// Adds a `(vocab, dim)` table named `name` to `params`, uniform in ±√3 (unit
    /// variance, as PyTorch's N(0, 1) in scale) from `seed`.
    ///
    /// Errors: [`Error::InvalidArgument`] for a zero size, a table too large to
    /// allocate, or a name already in `params`; [`Error::EmptyInput`] for an empty name.
    pub fn new<F: Scalar>(
        params: &mut Params<F>,
        name: &str,
        (vocab, dim): (usize, usize),
        seed: u64,
    ) -> Result<Embedding> {
        let op = "Embedding::new";
        if vocab == 0 || dim == 0 {
            return Err(invalid(op, "sizes must be positive"));
        }
        init::check_alloc::<F>(op, &[(vocab, dim)])?;
        let table = init::uniform((vocab, dim), 3f64.sqrt(), &mut init::rng(seed))?;
        let table = params.add(name, table)?;
        Ok(Embedding { table, vocab, dim })
    }

    /// Number of token ids V.
    pub fn vocab(&self) -> usize {
        self.vocab
    }

    /// Width D of an embedded token.
    pub fn dim(&self) -> usize {
        self.dim
    }
}

/// A cell (or a [`super::Stack`]) reading token ids through an [`Embedding`]: the
/// inputs of a segment are the rows of the table the ids select ([`Tape::gather_rows`],
/// whose backward scatter-adds into the table), then the cell runs on them. Run it on a
/// [`super::Sequence::tokens`]; given real inputs (a [`super::Sequence::new`]) it runs
/// the inner cell on them unchanged.
///
/// ```
/// use ndarray::Array2;
/// use timetape::bptt::{self, Run, Truncation};
/// use timetape::rnn::{Embedded, Embedding, Gru, Sequence, SequenceLoss, Sizes};
/// use timetape::Params;
///
/// let mut params = Params::<f32>::new();
/// let table = Embedding::new(&mut params, "emb", (27, 8), 0)?; // 27 characters
/// let gru = Gru::new(&mut params, Sizes::new(8, 16, 27), 1)?;
/// let model = Embedded::new(table, gru);
/// let ids = Array2::from_shape_fn((12, 2), |(t, b)| (t + b) % 27);
/// let next = Array2::from_shape_fn((12, 2), |(t, b)| (t + b + 1) % 27);
/// let seq = Sequence::tokens(ids.view(), SequenceLoss::classes(next.view()));
/// let report = bptt::run(&model, &params, &seq, &Run::new(Truncation::Full))?;
/// assert!(report.grads.get(table.table).is_ok());
/// # Ok::<(), timetape::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Embedded<C> {
    embedding: Embedding,
    inner: C,
}

impl<C> Embedded<C> {
    /// `inner` reading the rows of `embedding` (its width must be the cell's input
    /// width: checked when bound to a tape).
    pub fn new(embedding: Embedding, inner: C) -> Self {
        Embedded { embedding, inner }
    }

    /// The table.
    pub fn embedding(&self) -> Embedding {
        self.embedding
    }

    /// The cell behind the table.
    pub fn inner(&self) -> &C {
        &self.inner
    }
}

/// The parameters of an [`Embedded`] cell registered on one tape.
#[derive(Debug, Clone)]
pub struct EmbeddedBound<B> {
    table: Var,
    inner: B,
}

impl<F: Scalar, C: Recurrent<F>> Recurrent<F> for Embedded<C> {
    type Bound = EmbeddedBound<C::Bound>;

    /// The width D of an embedded token (the inner cell's input width).
    fn input_width(&self) -> usize {
        self.inner.input_width()
    }

    fn state_width(&self) -> usize {
        self.inner.state_width()
    }

    fn output_width(&self) -> usize {
        self.inner.output_width()
    }

    fn bind(&self, tape: &mut Tape<F>, params: &Params<F>) -> Result<Self::Bound> {
        if self.embedding.dim != self.inner.input_width() {
            return Err(Error::ShapeMismatch {
                op: "Embedded (the table's width against the cell's input width)",
                lhs: (1, self.inner.input_width()),
                rhs: (1, self.embedding.dim),
            });
        }
        Ok(EmbeddedBound {
            table: tape.param(params, self.embedding.table)?,
            inner: self.inner.bind(tape, params)?,
        })
    }

    fn step(&self, tape: &mut Tape<F>, b: &Self::Bound, x: Var, h: Var) -> Result<Var> {
        self.inner.step(tape, &b.inner, x, h)
    }

    fn output(&self, tape: &mut Tape<F>, b: &Self::Bound, hs: Var) -> Result<Var> {
        self.inner.output(tape, &b.inner, hs)
    }

    fn projection(&self) -> Option<&dyn Projection<F, Self::Bound>> {
        self.inner.projection().map(|_| self as _)
    }

    fn next_input_width(&self) -> usize {
        self.inner.next_input_width()
    }

    fn next_input(&self, tape: &mut Tape<F>, h: Var) -> Result<Var> {
        self.inner.next_input(tape, h)
    }

    /// The rows of the table the ids select.
    fn embed(&self, tape: &mut Tape<F>, b: &Self::Bound, ids: &[usize]) -> Result<Var> {
        tape.gather_rows(b.table, ids)
    }
}

impl<F: Scalar, C: Recurrent<F>> Projection<F, EmbeddedBound<C::Bound>> for Embedded<C> {
    fn project_inputs(
        &self,
        tape: &mut Tape<F>,
        b: &EmbeddedBound<C::Bound>,
        xs: Var,
    ) -> Result<Var> {
        match self.inner.projection() {
            Some(p) => p.project_inputs(tape, &b.inner, xs),
            None => Err(invalid("Embedded", "the cell has no input projection")),
        }
    }

    fn step_projected(
        &self,
        tape: &mut Tape<F>,
        b: &EmbeddedBound<C::Bound>,
        u: RowsOf,
        h: Var,
    ) -> Result<Var> {
        match self.inner.projection() {
            Some(p) => p.step_projected(tape, &b.inner, u, h),
            None => Err(invalid("Embedded", "the cell has no input projection")),
        }
    }
}
