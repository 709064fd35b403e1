//! M3, the tanh RNN with a softmax output at every step (FORMULAS.md §M3, seed 004), as
//! the hand-written speed reference; and M4, the general form (FORMULAS.md §M4, seed 003).

use super::{
    check, exact_tanh, initial_state, output, output_adjoints, require_activation, row_sum,
    softmax_xent_row, states, ClosedForm, Dims, RnnGrads, Weights,
};
use crate::error::{invalid, Error, Result};
use crate::params::{Grads, ParamId, Params};
use crate::rnn::{Activation, Rnn, Sequence, Targets};
use crate::scalar::Scalar;
use ndarray::linalg::general_mat_mul;
use ndarray::{Array2, ArrayView2, ArrayView3, ArrayViewMut2, Axis, Slice, Zip};
use std::ops::Range;

/// Rows `span` of `a` (ndarray's `s!` macro cannot be used under `forbid(unsafe_code)`).
fn rows<F>(a: &Array2<F>, span: Range<usize>) -> ArrayView2<'_, F> {
    a.slice_axis(Axis(0), Slice::from(span))
}

/// Rows `span` of `a`, mutably.
fn rows_mut<F>(a: &mut Array2<F>, span: Range<usize>) -> ArrayViewMut2<'_, F> {
    a.slice_axis_mut(Axis(0), Slice::from(span))
}

/// The parameter ids of the RNN a workspace last ran.
#[derive(Debug, Clone, Copy)]
struct Ids {
    w_xh: ParamId,
    w_hh: ParamId,
    b_h: Option<ParamId>,
    w_hq: ParamId,
    b_q: Option<ParamId>,
}

/// Reusable buffers for M3's closed-form gradient, the hand-written BPTT the benchmarks
/// compare the tape with.
///
/// [`M3Workspace::run`] computes the loss
/// `L = Σ_t α_t (1/B) Σ_b CE(softmax(o_{t,b}), label_{t,b})` of a tanh [`Rnn`] and its
/// gradient (FORMULAS.md §M3, batch-major):
///
/// ```text
/// forward:   A = X W_xh + b_h                       one (T·B)×D · D×H product for all steps
///            h_t = tanh(A_t + h_{t−1} W_hh)         per step: one B×H · H×H product (β = 1)
///            O = H W_hq + b_q                        one (T·B)×H · H×Q product
///            E = α_t (1/B) (softmax(O) − onehot)     in place
/// backward:  ∂L/∂W_hq = Hᵀ E,   ∂L/∂b_q = Σ_rows E   one product
///            Δ = E W_hqᵀ                             one product for all steps
///            δ_t = Δ_t + r_{t+1} W_hhᵀ,  r_t = (1 − h_t ⊙ h_t) ⊙ δ_t     per step
///            ∂L/∂W_xh = Xᵀ R,  ∂L/∂W_hh = H_prevᵀ R,  ∂L/∂b_h = Σ_rows R   one product each
///            ∂L/∂h_0 = r_1 W_hhᵀ
/// ```
///
/// (the notes' `e_t = α_t (y_t − onehot(label_t))`, `δ_t = Vᵀ e_t + Wᵀ r_{t+1}`,
/// `r_t = (1 − S_t ⊙ S_t) ⊙ δ_t`, `∂L/∂U = Σ_t r_t x_tᵀ`, `∂L/∂W = Σ_t r_t S_{t−1}ᵀ`,
/// `∂L/∂V = Σ_t e_t S_tᵀ`, transposed). As an oracle it shares no numerical code with the
/// tape: every product is ndarray's own (`general_mat_mul`, not the tape's kernels) and
/// `tanh` is the exact one, evaluated in f64 and rounded to `F` (for `f32` not the
/// tape's rational approximation, so the two differ by a few f32 ulp per step). All buffers are kept between calls and reallocated only when a size
/// changes: a run on a standard-layout `xs` of unchanged sizes allocates no array of its
/// own (a non-contiguous `xs` is copied once per run; the matrix-product kernel,
/// matrixmultiply, still allocates its packing buffers inside each product, as it does
/// for the tape).
///
/// ```
/// use ndarray::{Array2, Array3};
/// use timetape::closed_form::M3Workspace;
/// use timetape::rnn::{models, Sequence, SequenceLoss, Sizes};
/// use timetape::{Grads, Params};
///
/// let mut params = Params::<f64>::new();
/// let cell = models::m3(&mut params, Sizes::new(3, 4, 2), 0)?;
/// let xs = Array3::from_elem((3, 1, 3), 0.5);
/// let labels = Array2::from_elem((3, 1), 1usize);
/// let mut ws = M3Workspace::new();
/// let mut grads = Grads::new(&params);
/// // The note's L = 0.1 L_1 + 0.1 L_2 + 0.8 L_3.
/// let alphas = [0.1, 0.1, 0.8];
/// let seq = Sequence::new(xs.view(), SequenceLoss::classes(labels.view()).weighted(&alphas));
/// let loss = ws.run(&params, &cell, &seq)?;
/// ws.grads_into(&mut grads)?;
/// assert!(loss > 0.0);
/// assert_eq!(grads.iter().count(), 5);
/// # Ok::<(), timetape::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct M3Workspace<F> {
    /// The tanh of the forward pass: exact ([`M3Workspace::new`]) or a benchmark's
    /// choice ([`M3Workspace::with_tanh`]).
    tanh: fn(F) -> F,
    /// The coefficients c_t of the last run (kept to avoid an allocation per run).
    coef: Vec<F>,
    ids: Option<Ids>,
    dims: Dims,
    loss: F,
    /// h_0, h_1 … h_T stacked: (T+1)·B × H. Rows B.. first hold `X W_xh + b_h`.
    hs: Array2<F>,
    /// Logits, then `E = ∂L/∂O`: (T·B) × Q.
    e: Array2<F>,
    /// `δ_t = ∂L/∂h_t` stacked: (T·B) × H.
    delta: Array2<F>,
    /// `r_t = (1 − h_t²) ⊙ δ_t` stacked: (T·B) × H.
    r: Array2<F>,
    dh0: Array2<F>,
    g_xh: Array2<F>,
    g_hh: Array2<F>,
    g_bh: Array2<F>,
    g_hq: Array2<F>,
    g_bq: Array2<F>,
}

impl<F: Scalar> Default for M3Workspace<F> {
    fn default() -> Self {
        Self::new()
    }
}

/// Reallocates `buf` as zeros of `shape` unless it has that shape already.
fn ensure<F: Scalar>(buf: &mut Array2<F>, shape: (usize, usize)) {
    if buf.dim() != shape {
        *buf = Array2::zeros(shape);
    }
}

impl<F: Scalar> M3Workspace<F> {
    /// An empty workspace; buffers are allocated by the first run. It is an oracle:
    /// ndarray's products and the exact tanh, nothing shared with the tape.
    pub fn new() -> Self {
        let e = || Array2::zeros((0, 0));
        M3Workspace {
            tanh: exact_tanh,
            coef: Vec::new(),
            ids: None,
            dims: Dims {
                t: 0,
                b: 0,
                d: 0,
                h: 0,
                q: 0,
            },
            loss: F::zero(),
            hs: e(),
            e: e(),
            delta: e(),
            r: e(),
            dh0: e(),
            g_xh: e(),
            g_hh: e(),
            g_bh: e(),
            g_hq: e(),
            g_bq: e(),
        }
    }

    /// A workspace whose forward pass uses the given `tanh` instead of the exact one:
    /// for benchmarks that time the tape against a hand-written BPTT doing the same
    /// arithmetic (for `f32`, pass the tape's own kernel, the `Scalar` trait's). With
    /// any other `tanh` than the exact one it is **not an oracle**; tests compare with
    /// [`M3Workspace::new`].
    pub fn with_tanh(tanh: fn(F) -> F) -> Self {
        M3Workspace {
            tanh,
            ..Self::new()
        }
    }

    /// Runs M3 forward and backward on the sequence and returns the loss
    /// `L = Σ_t c_t · (1/B) Σ_b CE(o_{t,b}, y_{t,b})` (`c_t = α_t`, or `α_t / T` for a
    /// mean over time). The targets must be [`Targets::Classes`]. The gradients are then
    /// read with [`M3Workspace::grads_into`] or [`M3Workspace::grads`], the adjoints with
    /// [`M3Workspace::dh`] and [`M3Workspace::dh0`].
    ///
    /// Errors: [`Error::InvalidArgument`] if the RNN is not tanh or the targets are not
    /// classes; [`SequenceLoss::validate`]'s errors for the loss; [`Error::EmptyInput`]
    /// for T = 0 or B = 0; [`Error::ShapeMismatch`] for inputs, `h0` or parameters of the
    /// wrong size; [`Error::ForeignParam`] if the RNN's parameters are not in `params`;
    /// [`Error::NonFinite`] if the loss or a gradient overflows. After an error the
    /// gradients cannot be read until the next successful run.
    ///
    /// [`SequenceLoss::validate`]: crate::rnn::SequenceLoss::validate
    pub fn run(&mut self, params: &Params<F>, rnn: &Rnn, seq: &Sequence<'_, F>) -> Result<F> {
        let op = "M3Workspace::run";
        self.ids = None;
        let loss = seq.loss();
        let Targets::Classes(labels) = loss.targets else {
            return Err(invalid(op, "M3 needs Targets::Classes"));
        };
        let (t, b, _) = seq.inputs().dim();
        loss.validate(t, b, rnn.config.output)?;
        let mut coef = std::mem::take(&mut self.coef);
        coef.clear();
        // run_raw divides by B; a sum over the batch undoes that here.
        let batch = F::of(b as f64) * loss.batch_factor(b);
        coef.extend(loss.step_coefficients(t).into_iter().map(|c| c * batch));
        let out = self.run_raw(params, rnn, seq, labels, &coef);
        self.coef = coef;
        out
    }

    /// The run with the labels and the coefficients c_t at hand.
    fn run_raw(
        &mut self,
        params: &Params<F>,
        rnn: &Rnn,
        seq: &Sequence<'_, F>,
        labels: ArrayView2<'_, usize>,
        alphas: &[F],
    ) -> Result<F> {
        let (xs, h0) = (seq.inputs(), seq.initial_state());
        let op = "M3Workspace::run";
        self.ids = None;
        require_activation(op, rnn, Activation::Tanh)?;
        let (dims, w) = check(op, params, rnn, xs, h0)?;
        check_targets(op, labels, alphas, dims)?;
        self.resize(dims);
        let x = xs
            .to_shape((dims.t * dims.b, dims.d))
            .map_err(|e| invalid(op, e.to_string()))?;
        self.forward(x.view(), &w, h0);
        self.loss = self.softmax_outputs(&w, labels, alphas);
        self.backward(x.view(), &w);
        self.finish(rnn)
    }

    /// Sizes the buffers for `dims`, reallocating only those whose shape changes.
    fn resize(&mut self, dims: Dims) {
        let Dims { t, b, d, h, q } = dims;
        let tb = t * b;
        ensure(&mut self.hs, ((t + 1) * b, h));
        ensure(&mut self.e, (tb, q));
        ensure(&mut self.delta, (tb, h));
        ensure(&mut self.r, (tb, h));
        ensure(&mut self.dh0, (b, h));
        ensure(&mut self.g_xh, (d, h));
        ensure(&mut self.g_hh, (h, h));
        ensure(&mut self.g_bh, (1, h));
        ensure(&mut self.g_hq, (h, q));
        ensure(&mut self.g_bq, (1, q));
        self.dims = dims;
    }

    /// The forward sweep over the inputs `x` ((T·B) × D): `h_0`, then
    /// `A = X W_xh + b_h` for all steps, then `h_t = tanh(A_t + h_{t−1} W_hh)` step by step.
    fn forward(&mut self, x: ArrayView2<'_, F>, w: &Weights<'_, F>, h0: Option<ArrayView2<'_, F>>) {
        let Dims { t, b, .. } = self.dims;
        let (one, zero) = (F::one(), F::zero());
        match h0 {
            Some(h0) => rows_mut(&mut self.hs, 0..b).assign(&h0),
            None => rows_mut(&mut self.hs, 0..b).fill(zero),
        }
        {
            // A = X W_xh + b_h for all steps, in the rows of h_1 … h_T.
            let mut a = rows_mut(&mut self.hs, b..(t + 1) * b);
            general_mat_mul(one, &x, w.w_xh, zero, &mut a);
            if let Some(bh) = w.b_h {
                add_row(&mut a, bh);
            }
        }
        for step in 0..t {
            // h_t = tanh(A_t + h_{t−1} W_hh)
            let (prev, mut rest) = self.hs.view_mut().split_at(Axis(0), (step + 1) * b);
            let h_prev = prev.slice_axis(Axis(0), Slice::from(step * b..));
            let mut cur = rest.slice_axis_mut(Axis(0), Slice::from(..b));
            general_mat_mul(one, &h_prev, w.w_hh, one, &mut cur);
            cur.mapv_inplace(self.tanh);
        }
    }

    /// `O = H W_hq + b_q`, then `E = α_t/B (softmax(O) − onehot)` in place; gives the loss.
    fn softmax_outputs(
        &mut self,
        w: &Weights<'_, F>,
        labels: ArrayView2<'_, usize>,
        alphas: &[F],
    ) -> F {
        let Dims { t, b, .. } = self.dims;
        let one = F::one();
        let hs = rows(&self.hs, b..(t + 1) * b);
        general_mat_mul(one, &hs, w.w_hq, F::zero(), &mut self.e);
        if let Some(bq) = w.b_q {
            add_row(&mut self.e.view_mut(), bq);
        }
        let inv_b = one / F::of(b as f64);
        let mut loss = F::zero();
        for (row, z) in self.e.axis_iter_mut(Axis(0)).enumerate() {
            let (step, r) = (row / b, row % b);
            let c = alphas[step] * inv_b;
            loss = loss + c * softmax_xent_row(z, labels[[step, r]], c);
        }
        loss
    }

    /// The backward sweep: `∂L/∂W_hq = Hᵀ E`, `∂L/∂b_q = Σ_rows E`, the adjoints of the
    /// states, then `∂L/∂h_0 = r_1 W_hhᵀ`, `∂L/∂W_xh = Xᵀ R`, `∂L/∂W_hh = H_prevᵀ R`,
    /// `∂L/∂b_h = Σ_rows R`.
    fn backward(&mut self, x: ArrayView2<'_, F>, w: &Weights<'_, F>) {
        let Dims { t, b, .. } = self.dims;
        let (one, zero) = (F::one(), F::zero());
        let hs = rows(&self.hs, b..(t + 1) * b);
        general_mat_mul(one, &hs.t(), &self.e, zero, &mut self.g_hq);
        column_sums(&self.e, &mut self.g_bq);
        self.state_adjoints(w);
        general_mat_mul(one, &rows(&self.r, 0..b), &w.w_hh.t(), zero, &mut self.dh0);
        general_mat_mul(one, &x.t(), &self.r, zero, &mut self.g_xh);
        let h_prev = rows(&self.hs, 0..t * b);
        general_mat_mul(one, &h_prev.t(), &self.r, zero, &mut self.g_hh);
        column_sums(&self.r, &mut self.g_bh);
    }

    /// `Δ = E W_hqᵀ` for all steps, then from t = T down `δ_t += r_{t+1} W_hhᵀ` and
    /// `r_t = (1 − h_t²) ⊙ δ_t`.
    fn state_adjoints(&mut self, w: &Weights<'_, F>) {
        let Dims { t, b, .. } = self.dims;
        let one = F::one();
        general_mat_mul(one, &self.e, &w.w_hq.t(), F::zero(), &mut self.delta);
        for step in (0..t).rev() {
            let span = step * b..(step + 1) * b;
            if step + 1 < t {
                let r_next = rows(&self.r, (step + 1) * b..(step + 2) * b);
                let mut dl = rows_mut(&mut self.delta, span.clone());
                general_mat_mul(one, &r_next, &w.w_hh.t(), one, &mut dl);
            }
            Zip::from(rows_mut(&mut self.r, span.clone()))
                .and(rows(&self.delta, span.clone()))
                .and(rows(&self.hs, span.start + b..span.end + b))
                .for_each(|r, &dl, &h| *r = (one - h * h) * dl);
        }
    }

    /// The policy on non-finite values (crate docs): an overflow is an error, and the
    /// gradients of this run are not readable. Otherwise the gradients become readable
    /// for the parameters of `rnn`, and the loss is returned.
    fn finish(&mut self, rnn: &Rnn) -> Result<F> {
        let grads = [&self.g_xh, &self.g_hh, &self.g_bh, &self.g_hq, &self.g_bq];
        let finite = grads
            .iter()
            .all(|g| crate::params::first_non_finite(g.iter()).is_none());
        if !(self.loss.is_finite() && finite) {
            self.ids = None;
            return Err(Error::NonFinite {
                op: "M3Workspace::run",
                what: "the loss or a gradient: an overflow".into(),
            });
        }
        self.ids = Some(Ids {
            w_xh: rnn.w_xh,
            w_hh: rnn.w_hh,
            b_h: rnn.b_h,
            w_hq: rnn.w_hq,
            b_q: rnn.b_q,
        });
        Ok(self.loss)
    }

    /// The loss of the last successful run.
    pub fn loss(&self) -> F {
        self.loss
    }

    fn entries(&self) -> Result<[(Option<ParamId>, &Array2<F>); 5]> {
        let ids = self.ids.ok_or_else(|| {
            invalid(
                "M3Workspace::grads",
                "no successful run to read gradients from",
            )
        })?;
        Ok([
            (Some(ids.w_xh), &self.g_xh),
            (Some(ids.w_hh), &self.g_hh),
            (ids.b_h, &self.g_bh),
            (Some(ids.w_hq), &self.g_hq),
            (ids.b_q, &self.g_bq),
        ])
    }

    /// Writes (overwrites, not adds) the gradients of the last run into `grads`,
    /// reusing its allocations: one entry per parameter of the RNN.
    ///
    /// Errors: [`Error::InvalidArgument`] before a successful run;
    /// [`Error::ForeignParam`] if `grads` belongs to another store;
    /// [`Error::ShapeMismatch`] if an existing entry has another shape.
    pub fn grads_into(&self, grads: &mut Grads<F>) -> Result<()> {
        for (id, g) in self.entries()? {
            let Some(id) = id else { continue };
            match grads.get_mut(id) {
                Ok(dst) if dst.dim() == g.dim() => dst.assign(g),
                Ok(dst) => {
                    return Err(Error::ShapeMismatch {
                        op: "M3Workspace::grads_into",
                        lhs: dst.dim(),
                        rhs: g.dim(),
                    })
                }
                Err(_) => grads.accumulate(id, g.view())?,
            }
        }
        Ok(())
    }

    /// The gradients of the last run as a new [`Grads`] for `params`.
    ///
    /// Errors: as [`M3Workspace::grads_into`].
    pub fn grads(&self, params: &Params<F>) -> Result<Grads<F>> {
        let mut grads = Grads::new(params);
        self.grads_into(&mut grads)?;
        Ok(grads)
    }

    /// `∂L/∂h_t` (the total derivative δ_t) of the last successful run for t = 1..T,
    /// stacked step after step: (T·B) × H, rows `(t−1)·B .. t·B` for step t. Empty
    /// before the first run.
    pub fn dh(&self) -> ArrayView2<'_, F> {
        self.delta.view()
    }

    /// `∂L/∂h_0 = r_1 W_hhᵀ` of the last successful run, B×H.
    pub fn dh0(&self) -> ArrayView2<'_, F> {
        self.dh0.view()
    }

    /// The states `h_1 … h_T` of the last successful run stacked step after step:
    /// (T·B) × H.
    pub fn states(&self) -> ArrayView2<'_, F> {
        rows(&self.hs, self.dims.b..self.hs.nrows())
    }

    /// Bytes of matrix data the workspace holds (activations, adjoints and gradients):
    /// `((3T + 2)·B·H + T·B·Q)` entries plus those of the gradients, times
    /// `size_of::<F>()`.
    pub fn bytes(&self) -> usize {
        let n: usize = [
            &self.hs,
            &self.e,
            &self.delta,
            &self.r,
            &self.dh0,
            &self.g_xh,
            &self.g_hh,
            &self.g_bh,
            &self.g_hq,
            &self.g_bq,
        ]
        .iter()
        .map(|a| a.len())
        .sum();
        n * std::mem::size_of::<F>()
    }
}

/// Errors unless `labels` is T×B with every label below Q, and `alphas` holds T finite
/// step weights.
fn check_targets<F: Scalar>(
    op: &'static str,
    labels: ArrayView2<'_, usize>,
    alphas: &[F],
    dims: Dims,
) -> Result<()> {
    let Dims { t, b, q, .. } = dims;
    if labels.dim() != (t, b) {
        return Err(Error::ShapeMismatch {
            op,
            lhs: (t, b),
            rhs: labels.dim(),
        });
    }
    if let Some(&label) = labels.iter().find(|&&l| l >= q) {
        return Err(Error::LabelOutOfRange {
            op,
            label,
            classes: q,
        });
    }
    if alphas.len() != t {
        return Err(Error::ShapeMismatch {
            op,
            lhs: (t, 1),
            rhs: (alphas.len(), 1),
        });
    }
    if alphas.iter().any(|a| !a.is_finite()) {
        return Err(invalid(op, "non-finite step weight"));
    }
    Ok(())
}

/// `out (1×n) = Σ_rows a` without allocating.
fn column_sums<F: Scalar>(a: &Array2<F>, out: &mut Array2<F>) {
    out.fill(F::zero());
    let mut o = out.row_mut(0);
    for row in a.rows() {
        Zip::from(&mut o).and(&row).for_each(|o, &x| *o = *o + x);
    }
}

/// `a += bias` on every row (bias 1×n).
fn add_row<F: Scalar>(a: &mut ArrayViewMut2<'_, F>, bias: &Array2<F>) {
    let bias = bias.row(0);
    for mut row in a.rows_mut() {
        Zip::from(&mut row).and(&bias).for_each(|x, &c| *x = *x + c);
    }
}

/// M3, the tanh RNN with softmax cross-entropy at every step and step weights α_t
/// (FORMULAS.md §M3), through [`M3Workspace`].
///
/// ```text
/// S_t = tanh(U x_t + W S_{t−1} + b_a),   y_t = softmax(V S_t + b_y),   L = Σ_t α_t L_t
/// e_t = α_t (y_t − onehot(label_t))
/// ∂L/∂V = Σ_t e_t S_tᵀ,   ∂L/∂b_y = Σ_t e_t
/// δ_T = Vᵀ e_T,   δ_t = Vᵀ e_t + Wᵀ r_{t+1},   r_t = (1 − S_t ⊙ S_t) ⊙ δ_t
/// ∂L/∂U = Σ_t r_t x_tᵀ,   ∂L/∂W = Σ_t r_t S_{t−1}ᵀ,   ∂L/∂b_a = Σ_t r_t
/// ```
///
/// in the notes' columns; batch-major here (see [`M3Workspace`]), with `α_t` the
/// coefficients `c_t` of the [`SequenceLoss`] (α_t or α_t / T) and each step's
/// cross-entropy averaged over the batch. The note's `L = 0.1 L_1 + 0.1 L_2 + 0.8 L_3`
/// is `SequenceLoss::classes(labels).weighted(&[0.1, 0.1, 0.8])`. Biases are optional.
///
/// ```
/// use ndarray::{Array2, Array3};
/// use timetape::rnn::{models, SequenceLoss, Sequence, Sizes};
/// use timetape::{closed_form, Params};
///
/// let mut params = Params::<f64>::new();
/// let cell = models::m3(&mut params, Sizes::new(2, 3, 2), 0)?;
/// let xs = Array3::from_shape_fn((3, 1, 2), |(t, _, d)| (t as f64) * 0.5 - (d as f64));
/// let labels = Array2::from_shape_fn((3, 1), |(t, _)| t % 2);
/// let weights = [0.1, 0.1, 0.8];
/// let loss = SequenceLoss::classes(labels.view()).weighted(&weights);
/// let cf = closed_form::m3(&params, &cell, &Sequence::new(xs.view(), loss))?;
/// let general = closed_form::m4(&params, &cell, &Sequence::new(xs.view(), loss))?;
/// assert!(cf.grads.max_rel_diff(&general.grads) < 1e-12);
/// assert_eq!(cf.dh.len(), 3);
/// # Ok::<(), timetape::Error>(())
/// ```
///
/// Errors: [`Error::InvalidArgument`] unless the RNN is tanh and the targets are
/// [`Targets::Classes`]; otherwise as [`M3Workspace::run`] (with
/// [`SequenceLoss::validate`]'s errors for the loss).
///
/// [`SequenceLoss`]: crate::rnn::SequenceLoss
/// [`SequenceLoss::validate`]: crate::rnn::SequenceLoss::validate
pub fn m3<F: Scalar>(
    params: &Params<F>,
    rnn: &Rnn,
    seq: &Sequence<'_, F>,
) -> Result<ClosedForm<F>> {
    let (t, b, _) = seq.inputs().dim();
    let mut ws = M3Workspace::new();
    let value = ws.run(params, rnn, seq)?;
    let dh = (0..t)
        .map(|k| rows(&ws.delta, k * b..(k + 1) * b).to_owned())
        .collect();
    ClosedForm {
        loss: value,
        grads: ws.grads(params)?,
        dh,
        dh0: ws.dh0.clone(),
    }
    .checked("closed_form::m3")
}

/// `φ′(a)` written from `h = φ(a)`: 1, `1 − h²`, `1[h > 0]` (0 at 0), `h (1 − h)`.
fn derivative<F: Scalar>(phi: Activation, h: F) -> F {
    match phi {
        Activation::Identity => F::one(),
        Activation::Tanh => F::one() - h * h,
        Activation::Relu => {
            if h > F::zero() {
                F::one()
            } else {
                F::zero()
            }
        }
        Activation::Sigmoid => h * (F::one() - h),
    }
}

/// The general reverse recursion of FORMULAS.md §M4, with the edge `h_{t−1} → step t`
/// cut wherever `cuts[t − 1]` (0-based) is true.
pub(crate) fn general<F: Scalar>(
    op: &'static str,
    params: &Params<F>,
    rnn: &Rnn,
    seq: &Sequence<'_, F>,
    cuts: Option<&[bool]>,
) -> Result<ClosedForm<F>> {
    let (xs, h0, loss) = (seq.inputs(), seq.initial_state(), seq.loss());
    let (dims, w) = check(op, params, rnn, xs, h0)?;
    loss.validate(dims.t, dims.b, dims.q)?;
    if let Some(c) = cuts {
        if c.len() != dims.t {
            return Err(Error::ShapeMismatch {
                op,
                lhs: (dims.t, 1),
                rhs: (c.len(), 1),
            });
        }
    }
    let phi = rnn.config.activation;
    // Forward: a_t = x_t W_xh + h_{t−1} W_hh + b_h, h_t = φ(a_t), o_t = h_t W_hq + b_q.
    let hs = states(&w, xs, initial_state(h0, dims), phi);
    let outs: Vec<Array2<F>> = hs[1..].iter().map(|h_t| output(&w, h_t)).collect();
    let (value, e) = output_adjoints(loss, &outs);
    let recursion = Recursion {
        w,
        phi,
        cuts,
        hs,
        e,
    };
    let (grads, dh, dh0) = recursion.backward(xs, dims);
    ClosedForm {
        loss: value,
        grads: grads.into_grads(params, rnn)?,
        dh,
        dh0,
    }
    .checked(op)
}

/// The reverse recursion of [`general`], over its forward pass.
struct Recursion<'a, F> {
    /// The weights, borrowed from the store.
    w: Weights<'a, F>,
    /// The activation φ.
    phi: Activation,
    /// `cuts[t − 1]` (0-based) is true where the edge `h_{t−1} → step t` is cut.
    cuts: Option<&'a [bool]>,
    /// h_0 … h_T, each B×H.
    hs: Vec<Array2<F>>,
    /// `e_t = ∂L/∂o_t` for t = 1..T, each B×Q.
    e: Vec<Array2<F>>,
}

impl<F: Scalar> Recursion<'_, F> {
    /// Whether step `step` (0-based) is cut off from the state before it.
    fn cut(&self, step: usize) -> bool {
        self.cuts.is_some_and(|c| c[step])
    }

    /// Backward: δ_t = e_t W_hqᵀ + r_{t+1} W_hhᵀ (unless step t+1 is cut off from h_t),
    /// r_t = φ′(a_t) ⊙ δ_t, over the inputs `xs` of the forward pass. Gives the
    /// gradients, `δ_1 … δ_T` and `∂L/∂h_0`.
    fn backward(
        &self,
        xs: ArrayView3<'_, F>,
        dims: Dims,
    ) -> (RnnGrads<F>, Vec<Array2<F>>, Array2<F>) {
        let (w, hs, e) = (&self.w, &self.hs, &self.e);
        let mut g = RnnGrads::zeros(dims);
        let mut dh: Vec<Array2<F>> = Vec::with_capacity(dims.t);
        let mut r_next: Option<Array2<F>> = None;
        for step in (0..dims.t).rev() {
            // hs[step + 1] is h_t for t = step + 1; step `step + 1` (0-based) consumes it.
            let mut delta = e[step].dot(&w.w_hq.t());
            if let Some(r1) = &r_next {
                if !self.cut(step + 1) {
                    delta = delta + r1.dot(&w.w_hh.t());
                }
            }
            let mut r_t = delta.clone();
            Zip::from(&mut r_t)
                .and(&hs[step + 1])
                .for_each(|r, &h_t| *r = *r * derivative(self.phi, h_t));
            g.w_hq = g.w_hq + hs[step + 1].t().dot(&e[step]);
            g.b_q = g.b_q + row_sum(&e[step]);
            g.w_xh = g.w_xh + xs.index_axis(Axis(0), step).t().dot(&r_t);
            g.w_hh = g.w_hh + hs[step].t().dot(&r_t);
            g.b_h = g.b_h + row_sum(&r_t);
            dh.push(delta);
            r_next = Some(r_t);
        }
        dh.reverse();
        let dh0 = match r_next {
            Some(r1) if !self.cut(0) => r1.dot(&w.w_hh.t()),
            _ => Array2::zeros((dims.b, dims.h)),
        };
        (g, dh, dh0)
    }
}

/// M4, the general RNN (FORMULAS.md §M4, seed 003): any activation φ ([`Activation`]),
/// both biases optional, any [`Targets`] (softmax or identity output `g`).
///
/// ```text
/// a_t = x_t W_xh + h_{t−1} W_hh + b_h,   h_t = φ(a_t),   o_t = h_t W_hq + b_q
/// e_t = ∂L/∂o_t                               (see the module docs for each target)
/// δ_t = e_t W_hqᵀ + r_{t+1} W_hhᵀ,   r_t = φ′(a_t) ⊙ δ_t       (δ_T = e_T W_hqᵀ)
/// ∂L/∂W_hh = Σ_t h_{t−1}ᵀ r_t,   ∂L/∂W_xh = Σ_t x_tᵀ r_t,   ∂L/∂b_h = Σ_t Σ_rows r_t
/// ∂L/∂W_hq = Σ_t h_tᵀ e_t,       ∂L/∂b_q = Σ_t Σ_rows e_t,  ∂L/∂h_0 = r_1 W_hhᵀ
/// ```
///
/// (the notes' `δ_t = W_yᵀ ∂L_t/∂(W_y h_t + b_y) + W_hᵀ r_{t+1}`, `∂L/∂W_h = Σ_t r_t
/// h_{t−1}ᵀ`, transposed), with `φ′` written from `h_t`: 1 (identity), `1 − h_t²` (tanh),
/// `1[h_t > 0]` (ReLU, 0 at 0), `h_t (1 − h_t)` (sigmoid).
///
/// Erratum (FORMULAS.md §M4): seed 003 §4.2 writes
/// `∂L/∂W_h = Σ_t (Π_{k=t..T} ∂h_k/∂h_{k−1}) ∂L_t/∂h_t`, which drops the local factor
/// `∂h_t/∂W_h` and runs the product the wrong way in time; the recursion above is the
/// correct one (a loss at step t reaches the parameters used at steps i ≤ t through
/// `Π_{k=i+1..t} ∂h_k/∂h_{k−1}`).
///
/// ```
/// use ndarray::{Array2, Array3};
/// use timetape::rnn::{models, Activation, SequenceLoss, Sequence, Sizes};
/// use timetape::{closed_form, Params, Tape};
/// use timetape::bptt;
///
/// let mut params = Params::<f64>::new();
/// let cell = models::m4(&mut params, Sizes::new(2, 3, 2), Activation::Relu, 0)?;
/// params.get_mut(cell.b_h.unwrap())?.fill(0.3);
/// let xs = Array3::from_shape_fn((5, 2, 2), |(t, b, d)| ((t + 3 * b + d) as f64).sin());
/// let ys = Array3::from_shape_fn((5, 2, 2), |(t, b, d)| ((t + b * d) as f64).cos());
/// let h0 = Array2::from_elem((2, 3), 0.1);
/// let loss = SequenceLoss::values(ys.view());
/// let cf = closed_form::m4(&params, &cell, &Sequence::new(xs.view(), loss).with_h0(h0.view()))?;
///
/// let mut tape = Tape::new();
/// let run = bptt::unroll(&cell, &mut tape, &params, &Sequence::new(xs.view(), loss).with_h0(h0.view()))?;
/// let grads = tape.backward(run.loss)?;
/// assert!(cf.grads.max_rel_diff(&grads) < 1e-12);
/// let dh0 = tape.adjoint(run.h0)?.unwrap();
/// assert!(cf.dh0.iter().zip(dh0.iter()).all(|(a, b)| (a - b).abs() < 1e-12));
/// # Ok::<(), timetape::Error>(())
/// ```
///
/// Errors: [`Error::EmptyInput`], [`Error::ShapeMismatch`],
/// [`Error::LabelOutOfRange`], [`Error::InvalidArgument`] for bad inputs (as
/// [`SequenceLoss::validate`], and for an RNN with a zero size);
/// [`Error::ForeignParam`] if the RNN's parameters are not in `params`.
///
/// [`SequenceLoss::validate`]: crate::rnn::SequenceLoss::validate
pub fn m4<F: Scalar>(
    params: &Params<F>,
    rnn: &Rnn,
    seq: &Sequence<'_, F>,
) -> Result<ClosedForm<F>> {
    general("closed_form::m4", params, rnn, seq, None)
}
