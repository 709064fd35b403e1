//! M2, the ReLU RNN with a last-step sigmoid classifier (FORMULAS.md §M2, seed 002).

use super::{bce_logit, check, initial_state, require_activation, row_sum, sigmoid, ClosedForm};
use crate::error::{invalid, Result};
use crate::params::{Grads, Params};
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
    let (xs, h0, loss) = (seq.inputs(), seq.initial_state(), seq.loss());
    let op = "closed_form::m2";
    let y_gt = binary_targets(op, rnn, loss)?;
    let (dims, w) = check(op, params, rnn, xs, h0)?;
    loss.validate(dims.t, dims.b, dims.q)?;
    let (l, batch, d_in, n) = (dims.t, dims.b, dims.d, dims.h);
    let inv_b = F::one() / F::of(batch as f64);
    // The notes' matrices (column orientation).
    let w_n = w.w_hh.t().to_owned(); // W, n×n
    let u_n = w.w_xh.t().to_owned(); // U, n×d
    let v_n = w.w_hq.t().to_owned(); // V, 1×n
    let b_n: Array1<F> = w.b_h.map_or(Array1::zeros(n), |b| b.row(0).to_owned());
    let d_n = w.b_q.map_or(F::zero(), |d| d[[0, 0]]);
    let h_init = initial_state(h0, dims);

    let mut loss_total = F::zero();
    let mut g_w = Array2::<F>::zeros((1, n * n));
    let mut g_u = Array2::<F>::zeros((1, n * d_in));
    let mut g_b = Array2::<F>::zeros((1, n));
    let mut g_v = Array2::<F>::zeros((1, n));
    let mut g_d = F::zero();
    let mut dh: Vec<Array2<F>> = vec![Array2::zeros((batch, n)); l];
    let mut dh0 = Array2::<F>::zeros((batch, n));

    for r in 0..batch {
        // Forward: h_0 … h_l as columns.
        let mut hs: Vec<Array1<F>> = Vec::with_capacity(l + 1);
        hs.push(h_init.row(r).to_owned());
        for t in 1..=l {
            let x_t = step_row(xs, t - 1, r);
            let a = &b_n + &w_n.dot(&hs[t - 1]) + &u_n.dot(&x_t);
            hs.push(a.mapv(|v| v.max(F::zero())));
        }
        let z = v_n.row(0).dot(&hs[l]) + d_n;
        let y_pred = sigmoid(z);
        loss_total = loss_total + bce_logit(z, y_gt[r]);
        // (y_pred − y_gt), times 1/B for the batch mean.
        let coef = (y_pred - y_gt[r]) * inv_b;
        g_d = g_d + coef;
        g_v = g_v + &(hs[l].view().insert_axis(Axis(0)).mapv(|h| coef * h));
        let coef_v = v_n.mapv(|v| coef * v); // (y_pred − y_gt) V, 1×n

        // ∂L/∂h_t = (y_pred − y_gt) V · M_t with M_t = D_l W ⋯ D_{t+1} W.
        let mut m = Array2::<F>::eye(n);
        for t in (0..=l).rev() {
            let dh_t = coef_v.dot(&m); // 1×n
            if t == 0 {
                dh0.row_mut(r).assign(&dh_t.row(0));
                break;
            }
            dh[t - 1].row_mut(r).assign(&dh_t.row(0));
            let d_t = relu_diag(&hs[t]);
            let dh_d = dh_t.dot(&d_t); // ∂L/∂h_t D_t, 1×n
            g_w = g_w + dh_d.dot(&kron_identity_row(n, hs[t - 1].view()));
            g_u = g_u + dh_d.dot(&kron_identity_row(n, step_row(xs, t - 1, r)));
            g_b = g_b + &dh_d;
            m = m.dot(&d_t.dot(&w_n));
        }
    }
    loss_total = loss_total * inv_b;

    // Row-major reshapes to the notes' W (n×n) and U (n×d), then to the crate's layout.
    let to_matrix = |row: Array2<F>, cols: usize| -> Result<Array2<F>> {
        row.into_shape_with_order((n, cols))
            .map_err(|e| invalid(op, e.to_string()))
    };
    let g_w_hh = to_matrix(g_w, n)?.reversed_axes();
    let g_w_xh = to_matrix(g_u, d_in)?.reversed_axes();
    let g_w_hq = g_v.reversed_axes();

    let mut grads = Grads::new(params);
    grads.accumulate(rnn.w_xh, g_w_xh.view())?;
    grads.accumulate(rnn.w_hh, g_w_hh.view())?;
    if let Some(id) = rnn.b_h {
        grads.accumulate(id, g_b.view())?;
    }
    grads.accumulate(rnn.w_hq, g_w_hq.view())?;
    if let Some(id) = rnn.b_q {
        grads.accumulate(id, Array2::from_elem((1, 1), g_d).view())?;
    }
    ClosedForm {
        loss: loss_total,
        grads,
        dh,
        dh0,
    }
    .checked("closed_form::m2")
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
    let (xs, h0, loss) = (seq.inputs(), seq.initial_state(), seq.loss());
    let op = "closed_form::m2_outer";
    let y_gt = binary_targets(op, rnn, loss)?;
    let (dims, w) = check(op, params, rnn, xs, h0)?;
    loss.validate(dims.t, dims.b, dims.q)?;
    let (l, batch) = (dims.t, dims.b);
    let inv_b = F::one() / F::of(batch as f64);
    let mut hs: Vec<Array2<F>> = Vec::with_capacity(l + 1);
    hs.push(initial_state(h0, dims));
    for x_t in xs.axis_iter(Axis(0)) {
        let mut a = x_t.dot(w.w_xh) + hs[hs.len() - 1].dot(w.w_hh);
        if let Some(b) = w.b_h {
            a = a + b;
        }
        hs.push(a.mapv(|v| v.max(F::zero())));
    }
    let mut z = hs[l].dot(w.w_hq);
    if let Some(d) = w.b_q {
        z = z + d;
    }
    let mut loss_total = F::zero();
    let mut e = Array2::<F>::zeros((batch, 1));
    for r in 0..batch {
        loss_total = loss_total + bce_logit(z[[r, 0]], y_gt[r]);
        e[[r, 0]] = (sigmoid(z[[r, 0]]) - y_gt[r]) * inv_b;
    }
    loss_total = loss_total * inv_b;

    let mut g_xh = Array2::<F>::zeros(w.w_xh.raw_dim());
    let mut g_hh = Array2::<F>::zeros(w.w_hh.raw_dim());
    let mut g_b = Array2::<F>::zeros((1, dims.h));
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
        g_hh = g_hh + hs[t - 1].t().dot(&r_t);
        g_xh = g_xh + xs.index_axis(Axis(0), t - 1).t().dot(&r_t);
        g_b = g_b + row_sum(&r_t);
        delta = r_t.dot(&w.w_hh.t());
    }
    dh.reverse();
    let mut grads = Grads::new(params);
    grads.accumulate(rnn.w_xh, g_xh.view())?;
    grads.accumulate(rnn.w_hh, g_hh.view())?;
    if let Some(id) = rnn.b_h {
        grads.accumulate(id, g_b.view())?;
    }
    grads.accumulate(rnn.w_hq, hs[l].t().dot(&e).view())?;
    if let Some(id) = rnn.b_q {
        grads.accumulate(id, row_sum(&e).view())?;
    }
    ClosedForm {
        loss: loss_total,
        grads,
        dh,
        dh0: delta,
    }
    .checked("closed_form::m2_outer")
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
