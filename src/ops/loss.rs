//! Fused, numerically stable losses, each returning a 1×1 value.
//!
//! | op | forward (per row r / entry) | backward |
//! |---|---|---|
//! | `softmax_cross_entropy(z, y, w)` | `w_r (logsumexp(z_r) − z_{r,y_r})` | `z̄_r += ḡ s w_r (softmax(z_r) − onehot(y_r))` |
//! | `bce_with_logits(z, t)` | `max(z,0) − z t + ln(1 + e^{−\|z\|})` | `z̄ += ḡ s (σ(z) − t)`, `t̄ += −ḡ s z` |
//! | `squared_error(p, t, w)` | `w_r (p − t)²` | `p̄ += 2 ḡ s w_r (p − t)`, `t̄ −= the same` |
//!
//! `s` is the reduction factor: 1 for [`Reduction::Sum`]; for [`Reduction::Mean`], 1/B
//! for the cross-entropy (per row) and 1/(number of entries) for the others.

use super::{put2, put3, Ctx, Op, Side};
use crate::error::{invalid, Error, Result};
use crate::ops::activation::sigmoid;
use crate::scalar::Scalar;
use crate::tape::{Tape, Var};
use ndarray::{Array2, ArrayView2, Zip};

/// How a loss reduces over rows (or entries).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Reduction {
    /// The mean: divide the sum by the number of rows (cross-entropy) or entries
    /// (binary cross-entropy, squared error). Per-row weights do not change the divisor.
    #[default]
    Mean,
    /// The plain sum.
    Sum,
}

/// A recorded [`Tape::softmax_cross_entropy`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct XentOp<F> {
    /// The logits node.
    logits: usize,
    /// Start of this op's labels in the tape's side lists.
    labels: usize,
    /// Start of this op's weights in the side lists, if it has any.
    weights: Option<usize>,
    /// Index of the saved softmax probabilities.
    saved: usize,
    /// 1/B for a mean, 1 for a sum.
    scale: F,
}

/// A recorded [`Tape::bce_with_logits`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct BceOp<F> {
    /// The logits node.
    logits: usize,
    /// The targets node.
    targets: usize,
    /// 1/(number of entries) for a mean, 1 for a sum.
    scale: F,
}

/// A recorded [`Tape::squared_error`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct SquaredErrorOp<F> {
    /// The prediction node.
    pred: usize,
    /// The target node.
    target: usize,
    /// Start of this op's weights in the side lists, if it has any.
    weights: Option<usize>,
    /// 1/(number of entries) for a mean, 1 for a sum.
    scale: F,
}

/// Errors unless `weights`, if given, has one finite entry per row of a `shape` operand.
fn check_row_weights<F: Scalar>(
    op: &'static str,
    weights: Option<&[F]>,
    shape: (usize, usize),
) -> Result<()> {
    if let Some(w) = weights {
        if w.len() != shape.0 {
            return Err(Error::ShapeMismatch {
                op,
                lhs: shape,
                rhs: (w.len(), 1),
            });
        }
        if w.iter().any(|x| !x.is_finite()) {
            return Err(invalid(op, "non-finite weight"));
        }
    }
    Ok(())
}

/// Writes the softmax of every row of the logits `z` into `probs` (same shape) and gives
/// `Σ_r w_r (logsumexp(z_r) − z_{r,y_r})`, with the row maximum subtracted.
fn softmax_rows<F: Scalar>(
    z: &Array2<F>,
    labels: &[usize],
    weights: Option<&[F]>,
    probs: &mut Array2<F>,
) -> F {
    let mut total = F::zero();
    for (r, &label) in labels.iter().enumerate() {
        let zr = z.row(r);
        let m = zr.iter().fold(F::neg_infinity(), |m, &x| m.max(x));
        let mut pr = probs.row_mut(r);
        Zip::from(&mut pr)
            .and(&zr)
            .for_each(|p, &x| *p = (x - m).exp());
        let s = pr.iter().fold(F::zero(), |s, &x| s + x);
        let inv = F::one() / s;
        pr.mapv_inplace(|p| p * inv);
        let w = weights.map_or(F::one(), |w| w[r]);
        // ln Σ exp(z − m) − (z_y − m): both terms are O(ln C + spread of z), so
        // nothing of the size of m is added and then cancelled (f32 at logits ~1e4).
        total = total + w * (s.ln() - (zr[label] - m));
    }
    total
}

impl<F: Scalar> Tape<F> {
    /// Softmax cross-entropy of B×C logits `z` against B integer labels `y`, with
    /// optional per-row weights `w` (1 if `None`), fused and stable (log-sum-exp with the
    /// row maximum subtracted):
    ///
    /// ```text
    /// L = s Σ_r w_r (logsumexp(z_r) − z_{r,y_r}),     z̄_r += ḡ s w_r (softmax(z_r) − onehot(y_r))
    /// ```
    ///
    /// with `s = 1/B` for [`Reduction::Mean`] (whatever the weights) and 1 for
    /// [`Reduction::Sum`]. The softmax is saved for the backward pass.
    ///
    /// Errors: [`Error::LabelOutOfRange`] for a label ≥ C; [`Error::ShapeMismatch`] if
    /// the number of labels or weights is not B; [`Error::InvalidArgument`] for a
    /// non-finite weight; [`Error::ForeignVar`] or [`Error::StaleVar`] for a `Var` that
    /// is not a live `Var` of this tape.
    ///
    /// ```
    /// use ndarray::array;
    /// use timetape::{Reduction, Tape};
    ///
    /// let mut tape = Tape::<f64>::new();
    /// let z = tape.constant(array![[0.0, 0.0]])?;
    /// let l = tape.softmax_cross_entropy(z, &[1], None, Reduction::Mean)?;
    /// assert!((tape.scalar(l)? - 2f64.ln()).abs() < 1e-15);
    /// # Ok::<(), timetape::Error>(())
    /// ```
    pub fn softmax_cross_entropy(
        &mut self,
        logits: Var,
        labels: &[usize],
        weights: Option<&[F]>,
        reduction: Reduction,
    ) -> Result<Var> {
        let op = "softmax_cross_entropy";
        let iz = self.idx(op, logits)?;
        let (rows, classes) = self.values[iz].dim();
        if labels.len() != rows {
            return Err(Error::ShapeMismatch {
                op,
                lhs: (rows, classes),
                rhs: (labels.len(), 1),
            });
        }
        if let Some(&label) = labels.iter().find(|&&l| l >= classes) {
            return Err(Error::LabelOutOfRange { op, label, classes });
        }
        check_row_weights(op, weights, (rows, classes))?;
        let scale = match reduction {
            Reduction::Mean => F::one() / F::of(rows as f64),
            Reduction::Sum => F::one(),
        };
        let mut probs = self.pool.take((rows, classes));
        let total = softmax_rows(&self.values[iz], labels, weights, &mut probs);
        let mut out = self.pool.take((1, 1));
        out[[0, 0]] = total * scale;
        let lab = self.side.labels.len();
        self.side.labels.extend_from_slice(labels);
        let wts = self.side.push_weights(weights);
        let saved = self.side.saved.len();
        self.side.saved.push(probs);
        let ng = self.needs_grad[iz];
        let xent = XentOp {
            logits: iz,
            labels: lab,
            weights: wts,
            saved,
            scale,
        };
        self.push(Op::SoftmaxXent(xent), out, ng)
    }

    fn pair(&self, op: &'static str, a: Var, b: Var) -> Result<(usize, usize)> {
        let (ia, ib) = (self.idx(op, a)?, self.idx(op, b)?);
        let (sa, sb) = (self.values[ia].dim(), self.values[ib].dim());
        if sa != sb {
            return Err(Error::ShapeMismatch {
                op,
                lhs: sa,
                rhs: sb,
            });
        }
        Ok((ia, ib))
    }

    fn entry_scale(&self, i: usize, reduction: Reduction) -> F {
        match reduction {
            Reduction::Mean => F::one() / F::of(self.values[i].len() as f64),
            Reduction::Sum => F::one(),
        }
    }

    /// Binary cross-entropy of `σ(z)` against targets `t ∈ [0, 1]` of the same shape,
    /// from the logits `z`, computed stably entry by entry as
    /// `max(z, 0) − z t + ln(1 + e^{−|z|})`
    /// (equal to `−(t ln σ(z) + (1 − t) ln(1 − σ(z)))`), summed, times `s`:
    /// 1/(number of entries) for [`Reduction::Mean`], 1 for [`Reduction::Sum`].
    /// Backward: `z̄ += ḡ s (σ(z) − t)`, and `t̄ += −ḡ s z` if the targets need a
    /// gradient.
    ///
    /// ```
    /// use ndarray::array;
    /// use timetape::{Reduction, Tape};
    ///
    /// let mut tape = Tape::<f64>::new();
    /// let z = tape.variable(array![[0.0, 2.0]].view())?;
    /// let t = tape.constant(array![[1.0, 0.0]])?;
    /// let l = tape.bce_with_logits(z, t, Reduction::Sum)?;
    /// // −ln σ(0) − ln(1 − σ(2)) = ln 2 + ln(1 + e²)
    /// let want = 2f64.ln() + (1.0 + 2f64.exp()).ln();
    /// assert!((tape.scalar(l)? - want).abs() < 1e-14);
    /// # Ok::<(), timetape::Error>(())
    /// ```
    ///
    /// Errors: [`Error::ShapeMismatch`] for different shapes; [`Error::InvalidArgument`]
    /// for a target outside [0, 1] (or NaN); [`Error::ForeignVar`] or [`Error::StaleVar`]
    /// for a `Var` that is not a live `Var` of this tape.
    pub fn bce_with_logits(
        &mut self,
        logits: Var,
        targets: Var,
        reduction: Reduction,
    ) -> Result<Var> {
        let op = "bce_with_logits";
        let (iz, it) = self.pair(op, logits, targets)?;
        let t = &self.values[it];
        if t.iter().any(|&x| !(x >= F::zero() && x <= F::one())) {
            return Err(invalid(op, "target outside [0, 1]"));
        }
        let z = &self.values[iz];
        let scale = self.entry_scale(iz, reduction);
        let mut total = F::zero();
        Zip::from(z).and(t).for_each(|&z, &t| {
            total = total + z.max(F::zero()) - z * t + (-z.abs()).exp().ln_1p();
        });
        let mut out = self.pool.take((1, 1));
        out[[0, 0]] = total * scale;
        let ng = self.needs_grad[iz] || self.needs_grad[it];
        let bce = BceOp {
            logits: iz,
            targets: it,
            scale,
        };
        self.push(Op::BceWithLogits(bce), out, ng)
    }

    /// Squared error `s Σ_r w_r Σ_c (p_rc − t_rc)²` (no ½) with optional per-row weights
    /// `w` (1 if `None`), `s` = 1/(number of entries) for [`Reduction::Mean`] (whatever
    /// the weights) or 1 for [`Reduction::Sum`]. Backward: `p̄ += 2 ḡ s w_r (p − t)`, and
    /// the same with a minus sign into `t` if the target needs a gradient.
    ///
    /// Errors: [`Error::ShapeMismatch`] for different shapes or a number of weights other
    /// than the number of rows; [`Error::InvalidArgument`] for a non-finite weight;
    /// [`Error::ForeignVar`] or [`Error::StaleVar`] for a `Var` that is not a live `Var`
    /// of this tape.
    pub fn squared_error(
        &mut self,
        pred: Var,
        target: Var,
        weights: Option<&[F]>,
        reduction: Reduction,
    ) -> Result<Var> {
        let op = "squared_error";
        let (ip, it) = self.pair(op, pred, target)?;
        let rows = self.values[ip].nrows();
        check_row_weights(op, weights, self.values[ip].dim())?;
        let scale = self.entry_scale(ip, reduction);
        let mut total = F::zero();
        for r in 0..rows {
            let w = weights.map_or(F::one(), |w| w[r]);
            let s = Zip::from(self.values[ip].row(r))
                .and(self.values[it].row(r))
                .fold(F::zero(), |s, &p, &t| s + (p - t) * (p - t));
            total = total + w * s;
        }
        let mut out = self.pool.take((1, 1));
        out[[0, 0]] = total * scale;
        let wts = self.side.push_weights(weights);
        let ng = self.needs_grad[ip] || self.needs_grad[it];
        let sq = SquaredErrorOp {
            pred: ip,
            target: it,
            weights: wts,
            scale,
        };
        self.push(Op::SquaredError(sq), out, ng)
    }

    /// Mean squared error `(1/n) Σ (p − t)²` over the n entries: [`Tape::squared_error`]
    /// with no weights and [`Reduction::Mean`].
    ///
    /// Errors: as [`Tape::squared_error`].
    pub fn mse(&mut self, pred: Var, target: Var) -> Result<Var> {
        self.squared_error(pred, target, None, Reduction::Mean)
    }
}

/// `z̄_r (=|+=) ḡ s w_r (softmax(z_r) − onehot(y_r))`, with the labels, weights and
/// saved softmax of `op` read from the side lists.
pub(crate) fn softmax_xent_vjp<F: Scalar>(
    cx: &mut Ctx<'_, F>,
    g: ArrayView2<'_, F>,
    op: XentOp<F>,
    side: &Side<F>,
) {
    let rows = cx.values[op.logits].nrows();
    let labels = &side.labels[op.labels..op.labels + rows];
    let weights = side.weights(op.weights, rows);
    let probs = side.saved[op.saved].view();
    let gs = g[[0, 0]] * op.scale;
    let Some((acc, fresh)) = cx.slot(op.logits) else {
        return;
    };
    for (r, &label) in labels.iter().enumerate() {
        let c = gs * weights.map_or(F::one(), |w| w[r]);
        let mut ar = acc.row_mut(r);
        let pr = probs.row(r);
        if fresh {
            Zip::from(&mut ar).and(&pr).for_each(|a, &p| *a = c * p);
            ar[label] = ar[label] - c;
        } else {
            Zip::from(&mut ar)
                .and(&pr)
                .for_each(|a, &p| *a = *a + c * p);
            ar[label] = ar[label] - c;
        }
    }
}

/// `z̄ (=|+=) ḡ s (σ(z) − t)`, and `t̄ (=|+=) −ḡ s z` if the targets need a gradient.
pub(crate) fn bce_vjp<F: Scalar>(cx: &mut Ctx<'_, F>, g: ArrayView2<'_, F>, op: BceOp<F>) {
    let BceOp {
        logits,
        targets,
        scale,
    } = op;
    let gs = g[[0, 0]] * scale;
    let values = cx.values;
    let (z, t) = (values[logits].view(), values[targets].view());
    if let Some((acc, fresh)) = cx.slot(logits) {
        put2(acc, fresh, z, t, |z, t| gs * (sigmoid(z) - t));
    }
    if let Some((acc, fresh)) = cx.slot(targets) {
        put3(acc, fresh, z, t, t, |z, _, _| -gs * z);
    }
}

/// `p̄ (=|+=) 2 ḡ s w_r (p − t)` and the same with a minus sign into `t`, with the
/// weights of `op` read from the side lists.
pub(crate) fn squared_error_vjp<F: Scalar>(
    cx: &mut Ctx<'_, F>,
    g: ArrayView2<'_, F>,
    op: SquaredErrorOp<F>,
    side: &Side<F>,
) {
    let SquaredErrorOp {
        pred,
        target,
        weights,
        scale,
    } = op;
    let weights = side.weights(weights, cx.values[pred].nrows());
    let two_gs = (F::one() + F::one()) * g[[0, 0]] * scale;
    let values = cx.values;
    let (p, t) = (values[pred].view(), values[target].view());
    for (who, sign) in [(pred, F::one()), (target, -F::one())] {
        let Some((acc, fresh)) = cx.slot(who) else {
            continue;
        };
        match weights {
            None => put2(acc, fresh, p, t, |p, t| sign * two_gs * (p - t)),
            Some(w) => {
                for (r, &w) in w.iter().enumerate() {
                    let c = sign * two_gs * w;
                    let z = Zip::from(acc.row_mut(r)).and(p.row(r)).and(t.row(r));
                    if fresh {
                        z.for_each(|a, &p, &t| *a = c * (p - t));
                    } else {
                        z.for_each(|a, &p, &t| *a = *a + c * (p - t));
                    }
                }
            }
        }
    }
}
