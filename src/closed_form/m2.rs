//! M2, the ReLU RNN with a last-step sigmoid classifier (FORMULAS.md §M2, seed 002).

use super::{
    bce_logit, check, initial_state, output, require_activation, row_sum, sigmoid, states,
    ClosedForm, Dims, RnnGrads, Weights,
};
use crate::error::{invalid, Result};
use crate::params::Params;
use crate::rnn::{Activation, Rnn, Sequence, SequenceLoss, Targets};
use crate::scalar::Scalar;
use ndarray::{Array1, Array2, ArrayView1, ArrayView3, Axis, Slice};

/// Row `r` of step `t` of `xs`: the input `x_t` of one sequence.
fn step_row<'a, F>(xs: ArrayView3<'a, F>, t: usize, r: usize) -> ArrayView1<'a, F> {
    xs.index_axis_move(Axis(0), t).index_axis_move(Axis(0), r)
}

/// Checks that `rnn` and `loss` are M2's: ReLU, one output, [`Targets::LastBinary`].
fn binary_targets<'a, F: Scalar>(
    op: &'static str,
    rnn: &Rnn,
    loss: &SequenceLoss<'a, F>,
) -> Result<ArrayView1<'a, F>> {
    require_activation(op, rnn, Activation::Relu)?;
    if rnn.config.output != 1 {
        return Err(invalid(
            op,
            format!("M2 has one output, the RNN has {}", rnn.config.output),
        ));
    }
    match loss.targets {
        Targets::LastBinary(y) => Ok(y),
        _ => Err(invalid(op, "M2 needs Targets::LastBinary")),
    }
}

/// Checks that `rnn` and the sequence are M2's (as [`binary_targets`]) and of matching
/// sizes; gives the sizes, the weights and the targets.
fn prepare<'p, 's, F: Scalar>(
    op: &'static str,
    params: &'p Params<F>,
    rnn: &Rnn,
    seq: &Sequence<'s, F>,
) -> Result<(Dims, Weights<'p, F>, ArrayView1<'s, F>)> {
    let (xs, h0, loss) = (seq.inputs(), seq.initial_state(), seq.loss());
    let y_gt = binary_targets(op, rnn, loss)?;
    let (dims, w) = check(op, params, rnn, xs, h0)?;
    loss.validate(dims.t, dims.b, dims.q)?;
    Ok((dims, w, y_gt))
}

/// `I_n ⊗ vᵀ`: the n × (n·m) block-diagonal matrix with the row `vᵀ` in row i, columns
/// `i·m .. (i+1)·m`.
fn kron_identity_row<F: Scalar>(n: usize, v: ArrayView1<'_, F>) -> Array2<F> {
    let m = v.len();
    let mut k = Array2::zeros((n, n * m));
    for i in 0..n {
        k.row_mut(i)
            .slice_axis_mut(Axis(0), Slice::from(i * m..(i + 1) * m))
            .assign(&v);
    }
    k
}

/// `diag(1[h > 0])`, the ReLU derivative of the notes (0 at exactly 0).
fn relu_diag<F: Scalar>(h: &Array1<F>) -> Array2<F> {
    Array2::from_diag(&h.mapv(|x| if x > F::zero() { F::one() } else { F::zero() }))
}

/// `acc += x`, entry by entry.
fn add_to<F: Scalar>(acc: &mut Array2<F>, x: &Array2<F>) {
    acc.zip_mut_with(x, |a, &b| *a = *a + b);
}

/// M2 as the notes write it, in their column orientation: `W = W_hhᵀ`, `U = W_xhᵀ`,
/// `V = W_hqᵀ`, `b = b_hᵀ`, `d = b_q`, with the inputs and the targets.
struct Notes<'a, F> {
    /// W, n×n.
    w: Array2<F>,
    /// U, n×d.
    u: Array2<F>,
    /// V, 1×n.
    v: Array2<F>,
    /// b, n (zeros without a hidden bias).
    b: Array1<F>,
    /// d (0 without an output bias).
    d: F,
    /// The inputs, (T, B, d).
    xs: ArrayView3<'a, F>,
    /// The target of each sequence.
    y_gt: ArrayView1<'a, F>,
    /// 1/B, for the batch mean.
    inv_b: F,
}

impl<F: Scalar> Notes<'_, F> {
    /// `h_0 … h_l` of sequence `r` as columns, from `h_init`:
    /// `h_t = ReLU(b + W h_{t−1} + U x_t)`.
    fn states(&self, r: usize, h_init: Array1<F>) -> Vec<Array1<F>> {
        let l = self.xs.dim().0;
        let mut hs: Vec<Array1<F>> = Vec::with_capacity(l + 1);
        hs.push(h_init);
        for t in 1..=l {
            let x_t = step_row(self.xs, t - 1, r);
            let a = &self.b + &self.w.dot(&hs[t - 1]) + &self.u.dot(&x_t);
            hs.push(a.mapv(|v| v.max(F::zero())));
        }
        hs
    }
}

/// The sums of [`m2()`] over the sequences of the batch, in the notes' row forms.
struct KronSums<F> {
    /// The sizes of the problem.
    dims: Dims,
    /// `Σ_b L_b` (not yet reduced over the batch).
    loss: F,
    /// The batch factor `s_B` (1/B for a mean, 1 for a sum).
    inv_b: F,
    /// `∂L/∂W` as a row of length n² (W row-major).
    g_w: Array2<F>,
    /// `∂L/∂U` as a row of length n·d (U row-major).
    g_u: Array2<F>,
    /// `∂L/∂b`, 1×n.
    g_b: Array2<F>,
    /// `∂L/∂V`, 1×n.
    g_v: Array2<F>,
    /// `∂L/∂d`.
    g_d: F,
    /// `∂L/∂h_t` for t = 1..l, each B×n (row r for sequence r).
    dh: Vec<Array2<F>>,
    /// `∂L/∂h_0`, B×n.
    dh0: Array2<F>,
}

impl<F: Scalar> KronSums<F> {
    /// Zero sums for problems of sizes `dims`.
    fn zeros(dims: Dims, inv_b: F) -> Self {
        let Dims { t, b, d, h: n, .. } = dims;
        KronSums {
            dims,
            loss: F::zero(),
            inv_b,
            g_w: Array2::zeros((1, n * n)),
            g_u: Array2::zeros((1, n * d)),
            g_b: Array2::zeros((1, n)),
            g_v: Array2::zeros((1, n)),
            g_d: F::zero(),
            dh: vec![Array2::zeros((b, n)); t],
            dh0: Array2::zeros((b, n)),
        }
    }

    /// Adds the terms of sequence `r` (batch row r), whose initial state is `h_init`.
    fn add_sequence(&mut self, notes: &Notes<'_, F>, r: usize, h_init: Array1<F>) {
        let (l, n) = (self.dims.t, self.dims.h);
        let hs = notes.states(r, h_init);
        let z = notes.v.row(0).dot(&hs[l]) + notes.d;
        let y_pred = sigmoid(z);
        self.loss = self.loss + bce_logit(z, notes.y_gt[r]);
        // (y_pred − y_gt), times 1/B for the batch mean.
        let coef = (y_pred - notes.y_gt[r]) * notes.inv_b;
        self.g_d = self.g_d + coef;
        add_to(
            &mut self.g_v,
            &hs[l].view().insert_axis(Axis(0)).mapv(|h| coef * h),
        );
        let coef_v = notes.v.mapv(|v| coef * v); // (y_pred − y_gt) V, 1×n

        // ∂L/∂h_t = (y_pred − y_gt) V · M_t with M_t = D_l W ⋯ D_{t+1} W.
        let mut m = Array2::<F>::eye(n);
        for t in (0..=l).rev() {
            let dh_t = coef_v.dot(&m); // 1×n
            if t == 0 {
                self.dh0.row_mut(r).assign(&dh_t.row(0));
                break;
            }
            self.dh[t - 1].row_mut(r).assign(&dh_t.row(0));
            let d_t = relu_diag(&hs[t]);
            let dh_d = dh_t.dot(&d_t); // ∂L/∂h_t D_t, 1×n
            add_to(
                &mut self.g_w,
                &dh_d.dot(&kron_identity_row(n, hs[t - 1].view())),
            );
            let x_t = step_row(notes.xs, t - 1, r);
            add_to(&mut self.g_u, &dh_d.dot(&kron_identity_row(n, x_t)));
            add_to(&mut self.g_b, &dh_d);
            m = m.dot(&d_t.dot(&notes.w));
        }
    }

    /// The closed form named `op`: the loss times `s_B`, and the rows `∂L/∂W`, `∂L/∂U`
    /// reshaped row-major to the notes' W (n×n) and U (n×d), then transposed to the
    /// crate's layout, as gradients of `rnn`'s parameters in `params`.
    fn finish(self, op: &'static str, params: &Params<F>, rnn: &Rnn) -> Result<ClosedForm<F>> {
        let Dims { d, h: n, .. } = self.dims;
        let to_matrix = |row: Array2<F>, cols: usize| -> Result<Array2<F>> {
            row.into_shape_with_order((n, cols))
                .map_err(|e| invalid(op, e.to_string()))
        };
        let grads = RnnGrads {
            w_hh: to_matrix(self.g_w, n)?.reversed_axes(),
            w_xh: to_matrix(self.g_u, d)?.reversed_axes(),
            b_h: self.g_b,
            w_hq: self.g_v.reversed_axes(),
            b_q: Array2::from_elem((1, 1), self.g_d),
        };
        ClosedForm {
            loss: self.loss * self.inv_b,
            grads: grads.into_grads(params, rnn)?,
            dh: self.dh,
            dh0: self.dh0,
        }
        .checked(op)
    }
}

/// M2 as written in the notes, one sequence (batch row) at a time, in the notes' column
/// orientation.
///
/// The model (FORMULAS.md §M2), with the notes' `W = W_hhᵀ`, `U = W_xhᵀ`, `V = W_hqᵀ`
/// (a row 1×n), `b = b_hᵀ`, `d = b_q`:
///
/// ```text
/// h_t = ReLU(b + W h_{t−1} + U x_t),  t = 1..l,     y_pred = σ(V h_l + d),
/// L   = −(y_gt ln y_pred + (1 − y_gt) ln(1 − y_pred))
/// ```
///
/// averaged over the B sequences of the batch (`L = (1/B) Σ_b L_b`, as
/// [`Targets::LastBinary`]; the loss is evaluated in the stable logit form
/// `max(z, 0) − z y + ln(1 + e^{−|z|})`). For each sequence, with `D_i = diag(1[h_i > 0])`
/// (the ReLU derivative at exactly 0 is 0):
///
/// ```text
/// ∂L/∂d   = y_pred − y_gt,          ∂L/∂V = (y_pred − y_gt) h_lᵀ
/// ∂L/∂h_t = (y_pred − y_gt) V · D_l W · D_{l−1} W ⋯ D_{t+1} W     (a row; ∂L/∂h_l = (y_pred − y_gt) V)
/// ∂L/∂W   = Σ_{t=1..l} ∂L/∂h_t D_t (I_n ⊗ h_{t−1}ᵀ)              (a row of length n², W row-major)
/// ∂L/∂U   = Σ_{t=1..l} ∂L/∂h_t D_t (I_n ⊗ x_tᵀ)                  (a row of length n·d, U row-major)
/// ∂L/∂b   = Σ_{t=1..l} ∂L/∂h_t D_t
/// ```
///
/// each times 1/B. The product `D_l W ⋯ D_{t+1} W` is formed as an explicit n×n matrix
/// (grown on its right, `M_{t−1} = M_t · D_t W`, from `M_l = I`), and the Kronecker
/// matrices `I_n ⊗ h_{t−1}ᵀ` (n × n²) are built literally; the row `∂L/∂W` is reshaped
/// row-major to n×n and transposed to the crate's `W_hh` (likewise `∂L/∂U` to `W_xh`).
/// The input width d may differ from n. `∂L/∂h_0 = (y_pred − y_gt) V M_0`.
///
/// Biases are optional (the notes' M2 has both); `h0` is the initial state (zeros if
/// `None`, as in the notes).
///
/// ```
/// use ndarray::{array, Array3};
/// use timetape::rnn::{models, SequenceLoss, Targets, Sequence};
/// use timetape::{closed_form, Params, Reduction, Tape};
/// use timetape::bptt;
///
/// let mut params = Params::<f64>::new();
/// let cell = models::m2(&mut params, 2, 3, 0)?; // d = 2 inputs, n = 3
/// params.get_mut(cell.b_h.unwrap())?.fill(0.2); // keep some units active
/// let xs = Array3::from_shape_fn((4, 2, 2), |(t, b, d)| ((t + 2 * b + d) as f64).sin());
/// let y_gt = array![1.0, 0.0];
/// let loss = SequenceLoss::last_binary(y_gt.view());
/// let kron = closed_form::m2(&params, &cell, &Sequence::new(xs.view(), loss))?;
/// let outer = closed_form::m2_outer(&params, &cell, &Sequence::new(xs.view(), loss))?;
/// assert!(kron.grads.max_rel_diff(&outer.grads) < 1e-12);
///
/// let mut tape = Tape::new();
/// let run = bptt::unroll(&cell, &mut tape, &params, &Sequence::new(xs.view(), loss))?;
/// let grads = tape.backward(run.loss)?;
/// assert!(kron.grads.max_rel_diff(&grads) < 1e-12);
/// assert!((kron.loss - tape.scalar(run.loss)?).abs() < 1e-14);
/// # Ok::<(), timetape::Error>(())
/// ```
///
/// Errors: [`Error::InvalidArgument`](crate::Error::InvalidArgument) unless the RNN is
/// ReLU with one output and the targets are [`Targets::LastBinary`] in [0, 1];
/// [`Error::EmptyInput`](crate::Error::EmptyInput),
/// [`Error::ShapeMismatch`](crate::Error::ShapeMismatch) for bad shapes;
/// [`Error::ForeignParam`](crate::Error::ForeignParam) if the RNN's parameters are not
/// in `params`.
pub fn m2<F: Scalar>(
    params: &Params<F>,
    rnn: &Rnn,
    seq: &Sequence<'_, F>,
) -> Result<ClosedForm<F>> {
    let op = "closed_form::m2";
    let (dims, w, y_gt) = prepare(op, params, rnn, seq)?;
    let notes = Notes {
        w: w.w_hh.t().to_owned(),
        u: w.w_xh.t().to_owned(),
        v: w.w_hq.t().to_owned(),
        b: w.b_h.map_or(Array1::zeros(dims.h), |b| b.row(0).to_owned()),
        d: w.b_q.map_or(F::zero(), |d| d[[0, 0]]),
        xs: seq.inputs(),
        y_gt,
        inv_b: seq.loss().batch_factor(dims.b),
    };
    let h_init = initial_state(seq.initial_state(), dims);
    let mut sums = KronSums::zeros(dims, notes.inv_b);
    for r in 0..dims.b {
        sums.add_sequence(&notes, r, h_init.row(r).to_owned());
    }
    sums.finish(op, params, rnn)
}

/// M2 by the outer-product form, batched: the same model and result as [`m2()`].
///
/// With the column `g_t = D_t (∂L/∂h_t)ᵀ` of the notes, `∂L/∂W = Σ_t g_t h_{t−1}ᵀ`,
/// `∂L/∂U = Σ_t g_t x_tᵀ`, `∂L/∂b = Σ_t g_t` (FORMULAS.md §M2). One row per sequence,
/// with `r_t` the B×H matrix whose rows are the `g_tᵀ` and `e = (σ(o_T) − y)/B`:
///
/// ```text
/// δ_T = e W_hqᵀ,   r_t = 1[h_t > 0] ⊙ δ_t,   δ_{t−1} = r_t W_hhᵀ
/// ∂L/∂W_hh = Σ_t h_{t−1}ᵀ r_t,   ∂L/∂W_xh = Σ_t x_tᵀ r_t,   ∂L/∂b_h = Σ_t Σ_rows r_t
/// ∂L/∂W_hq = h_Tᵀ e,   ∂L/∂b_q = Σ_rows e
/// ```
///
/// Errors: as [`m2()`].
pub fn m2_outer<F: Scalar>(
    params: &Params<F>,
    rnn: &Rnn,
    seq: &Sequence<'_, F>,
) -> Result<ClosedForm<F>> {
    let op = "closed_form::m2_outer";
    let (dims, w, y_gt) = prepare(op, params, rnn, seq)?;
    let xs = seq.inputs();
    let (l, batch) = (dims.t, dims.b);
    let inv_b = seq.loss().batch_factor(batch);
    let h_init = initial_state(seq.initial_state(), dims);
    let hs = states(&w, xs, h_init, Activation::Relu);
    let z = output(&w, &hs[l]);
    let mut loss_total = F::zero();
    let mut e = Array2::<F>::zeros((batch, 1));
    for r in 0..batch {
        loss_total = loss_total + bce_logit(z[[r, 0]], y_gt[r]);
        e[[r, 0]] = (sigmoid(z[[r, 0]]) - y_gt[r]) * inv_b;
    }
    loss_total = loss_total * inv_b;

    let mut g = RnnGrads::zeros(dims);
    let mut dh: Vec<Array2<F>> = Vec::with_capacity(l);
    let mut delta = e.dot(&w.w_hq.t());
    for t in (1..=l).rev() {
        dh.push(delta.clone());
        let mut r_t = delta;
        ndarray::Zip::from(&mut r_t).and(&hs[t]).for_each(|r, &h| {
            if h <= F::zero() {
                *r = F::zero();
            }
        });
        g.w_hh = g.w_hh + hs[t - 1].t().dot(&r_t);
        g.w_xh = g.w_xh + xs.index_axis(Axis(0), t - 1).t().dot(&r_t);
        g.b_h = g.b_h + row_sum(&r_t);
        delta = r_t.dot(&w.w_hh.t());
    }
    dh.reverse();
    g.w_hq = hs[l].t().dot(&e);
    g.b_q = row_sum(&e);
    ClosedForm {
        loss: loss_total,
        grads: g.into_grads(params, rnn)?,
        dh,
        dh0: delta,
    }
    .checked(op)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rnn::models;
    use ndarray::{Array1, Array3};

    #[test]
    fn kronecker_and_outer_product_forms_agree() {
        let mut params = Params::<f64>::new();
        let cell = models::m2(&mut params, 3, 4, 11).unwrap();
        let bh = params.get_mut(cell.b_h.unwrap()).unwrap();
        bh.assign(&ndarray::array![[0.3, 0.2, 0.25, 0.1]]);
        let xs = Array3::from_shape_fn((6, 2, 3), |(t, b, d)| {
            ((t * 7 + b * 3 + d) as f64 * 0.37).sin()
        });
        let y = Array1::from(vec![1.0, 0.0]);
        let loss = SequenceLoss::last_binary(y.view());
        let a = m2(&params, &cell, &Sequence::new(xs.view(), loss)).unwrap();
        let b = m2_outer(&params, &cell, &Sequence::new(xs.view(), loss)).unwrap();
        // Same exact formulas, different summation orders: a few ulp.
        assert!(a.grads.max_rel_diff(&b.grads) < 1e-13);
        assert!((a.loss - b.loss).abs() < 1e-14);
        assert!(a.grads.global_norm() > 0.0);
    }
}
