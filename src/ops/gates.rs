//! Fused gated-cell updates: the gate activations and the state update of one LSTM or
//! GRU step as one node, with one backward rule (no slice, concat or elementwise nodes
//! in between). The activated gates are saved in forward for the backward rule.
//!
//! LSTM, pre-activations `a = [a_i a_f a_g a_o]` (B×4H), state `[h c]` (B×2H):
//!
//! | forward | backward (`c̄_t = c̄ + h̄ o (1 − tanh² c)`) |
//! |---|---|
//! | `i, f, o = σ(a_i), σ(a_f), σ(a_o)`, `g = tanh a_g` | `ā_i = c̄_t g i (1 − i)`, `ā_f = c̄_t c_{t−1} f (1 − f)` |
//! | `c = f c_{t−1} + i g` | `ā_g = c̄_t i (1 − g²)`, `ā_o = h̄ tanh(c) o (1 − o)` |
//! | `h = o tanh c`, output `[h c]` | `c̄_{t−1} = c̄_t f` (the state's `h` part gets nothing: `h_{t−1}` enters through `a`) |
//!
//! GRU, input part `u = [u_r u_z u_n]` and state part `s = [s_r s_z s_n]` (B×3H each,
//! `s = h_{t−1} W_h + b_h`), state `h_{t−1}` (B×H):
//!
//! | forward | backward |
//! |---|---|
//! | `r, z = σ(u_r + s_r), σ(u_z + s_z)` | `n̄ = h̄′ (1 − z)`, `z̄ = h̄′ (h − n)`, `h̄ += h̄′ z` |
//! | `n = tanh(u_n + r s_n)` | `ā_n = n̄ (1 − n²)`, `ā_r = ā_n s_n r (1 − r)`, `ā_z = z̄ z (1 − z)` |
//! | `h′ = n + z (h − n)` | `ū = [ā_r ā_z ā_n]`, `s̄ = [ā_r ā_z ā_n r]` |

use super::{Ctx, Op};
use crate::error::{invalid, Error, Result};
use crate::scalar::Scalar;
use crate::tape::{Tape, Var};
use ndarray::{Array2, ArrayView2};
use std::borrow::Cow;

/// The entries of `m` in row-major order: borrowed for a contiguous matrix (every value
/// and buffer of the tape), copied otherwise.
fn flat<F: Scalar>(m: ArrayView2<'_, F>) -> Cow<'_, [F]> {
    match m.to_slice() {
        Some(s) => Cow::Borrowed(s),
        None => Cow::Owned(m.iter().copied().collect()),
    }
}

/// `o = v` if fresh, else `o += v`.
#[inline]
fn put<F: Scalar>(o: &mut F, fresh: bool, v: F) {
    *o = if fresh { v } else { *o + v };
}

/// Runs `rule(row, out_row, fresh)` on each row of the adjoint of parent `p` (width
/// `w`), if it needs one; a non-contiguous buffer is reported, not skipped.
fn each_row<F: Scalar>(
    cx: &mut Ctx<'_, F>,
    (p, w): (usize, usize),
    mut rule: impl FnMut(usize, &mut [F], bool),
) {
    let Some((acc, fresh)) = cx.slot(p) else {
        return;
    };
    let done = match acc.as_slice_mut() {
        Some(o) => {
            o.chunks_mut(w.max(1))
                .enumerate()
                .for_each(|(r, row)| rule(r, row, fresh));
            true
        }
        None => false,
    };
    if !done {
        let e = invalid("backward (gated cell)", "non-contiguous adjoint");
        cx.failed.get_or_insert(e);
    }
}

impl<F: Scalar> Tape<F> {
    /// One LSTM step fused into one node: from the gate pre-activations `a`
    /// (B×4H, gates `i f g o` side by side, `a = x_t W_x + h_{t−1} W_h + b`) and the state
    /// `[h_{t−1} c_{t−1}]` (B×2H), the new state `[h_t c_t]` (B×2H):
    /// `i, f, o = σ(a_i), σ(a_f), σ(a_o)`, `g = tanh a_g`, `c_t = f c_{t−1} + i g`,
    /// `h_t = o tanh c_t`. Backward, with `c̄_t` the total adjoint of `c_t`
    /// (`c̄ + h̄ o (1 − tanh² c_t)`): `ā_i = c̄_t g i (1 − i)`, `ā_f = c̄_t c_{t−1} f (1 − f)`,
    /// `ā_g = c̄_t i (1 − g²)`, `ā_o = h̄ tanh(c_t) o (1 − o)`, and `[0, c̄_t f]` for the state
    /// (`h_{t−1}` reaches the step through `a`). The gates and `tanh c_t` are saved for
    /// the backward pass.
    ///
    /// ```
    /// use ndarray::array;
    /// use timetape::Tape;
    ///
    /// let mut tape = Tape::<f64>::new();
    /// let a = tape.variable(array![[0.0, 0.0, 0.0, 0.0]].view())?; // H = 1
    /// let s = tape.variable(array![[0.0, 1.0]].view())?; // h = 0, c = 1
    /// let next = tape.lstm_cell(a, s)?;
    /// // i = f = o = ½, g = 0: c = ½, h = ½ tanh ½
    /// let v = tape.value(next)?;
    /// assert!((v[[0, 1]] - 0.5).abs() < 1e-15);
    /// assert!((v[[0, 0]] - 0.5 * 0.5f64.tanh()).abs() < 1e-15);
    /// # Ok::<(), timetape::Error>(())
    /// ```
    ///
    /// Errors: [`Error::ShapeMismatch`] unless `a` is B×4H and the state B×2H;
    /// [`Error::ForeignVar`] or [`Error::StaleVar`] for a `Var` that is not a live `Var`
    /// of this tape.
    pub fn lstm_cell(&mut self, a: Var, state: Var) -> Result<Var> {
        let op = "lstm_cell";
        let (ia, is) = (self.idx(op, a)?, self.idx(op, state)?);
        let ((b, w), (bs, ws)) = (self.values[ia].dim(), self.values[is].dim());
        if b != bs || ws % 2 != 0 || w != 2 * ws {
            let (lhs, rhs) = ((b, w), (bs, ws));
            return Err(Error::ShapeMismatch { op, lhs, rhs });
        }
        let n = ws / 2;
        let (mut out, mut gates) = (self.pool.take((b, ws)), self.pool.take((b, 5 * n)));
        let (av, sv) = (flat(self.values[ia].view()), flat(self.values[is].view()));
        let non_contiguous = || invalid(op, "non-contiguous buffer");
        let o = out.as_slice_mut().ok_or_else(non_contiguous)?;
        let gs = gates.as_slice_mut().ok_or_else(non_contiguous)?;
        let rows = o.chunks_mut(ws.max(1)).zip(gs.chunks_mut((5 * n).max(1)));
        for (r, (or, gr)) in rows.enumerate() {
            let (ar, sr) = (&av[r * w..(r + 1) * w], &sv[r * ws..(r + 1) * ws]);
            for j in 0..n {
                let (i, f) = (ar[j].sigmoid_kernel(), ar[n + j].sigmoid_kernel());
                let (g, og) = (ar[2 * n + j].tanh_kernel(), ar[3 * n + j].sigmoid_kernel());
                let c = f * sr[n + j] + i * g;
                let tc = c.tanh_kernel();
                or[j] = og * tc;
                or[n + j] = c;
                for (k, v) in [i, f, g, og, tc].into_iter().enumerate() {
                    gr[k * n + j] = v;
                }
            }
        }
        let saved = self.side.saved.len();
        self.side.saved.push(gates);
        let ng = self.needs_grad[ia] || self.needs_grad[is];
        let node = Op::LstmCell {
            a: ia,
            state: is,
            saved,
        };
        self.push(node, out, ng)
    }

    /// One GRU step fused into one node: from the input part `u` (B×3H, `x_t W_x + b_x`,
    /// gates `r z n`), the state part `s` (B×3H, `h_{t−1} W_h + b_h`) and the state
    /// `h_{t−1}` (B×H), the new state `h_t` (B×H): `r, z = σ(u_r + s_r), σ(u_z + s_z)`,
    /// `n = tanh(u_n + r s_n)`, `h_t = n + z (h_{t−1} − n)`. Backward:
    /// `ā_n = h̄′ (1 − z)(1 − n²)`, `ā_r = ā_n s_n r (1 − r)`, `ā_z = h̄′ (h − n) z (1 − z)`;
    /// `ū = [ā_r ā_z ā_n]`, `s̄ = [ā_r ā_z ā_n r]`, `h̄ += h̄′ z`. The gates are saved for
    /// the backward pass.
    ///
    /// Errors: [`Error::ShapeMismatch`] unless `u` and `s` are B×3H and `h` B×H;
    /// [`Error::ForeignVar`] or [`Error::StaleVar`] for a `Var` that is not a live `Var`
    /// of this tape.
    pub fn gru_cell(&mut self, u: Var, s: Var, h: Var) -> Result<Var> {
        let op = "gru_cell";
        let (iu, is, ih) = (self.idx(op, u)?, self.idx(op, s)?, self.idx(op, h)?);
        let (su, ss) = (self.values[iu].dim(), self.values[is].dim());
        let (b, n) = self.values[ih].dim();
        if su != ss || su != (b, 3 * n) {
            return Err(Error::ShapeMismatch {
                op,
                lhs: su,
                rhs: (b, n),
            });
        }
        let (mut out, mut gates) = (self.pool.take((b, n)), self.pool.take((b, 3 * n)));
        let (uv, sv) = (flat(self.values[iu].view()), flat(self.values[is].view()));
        let hv = flat(self.values[ih].view());
        let non_contiguous = || invalid(op, "non-contiguous buffer");
        let o = out.as_slice_mut().ok_or_else(non_contiguous)?;
        let gs = gates.as_slice_mut().ok_or_else(non_contiguous)?;
        let w = 3 * n;
        for (r, (or, gr)) in o
            .chunks_mut(n.max(1))
            .zip(gs.chunks_mut(w.max(1)))
            .enumerate()
        {
            let (ur, sr, hr) = (
                &uv[r * w..(r + 1) * w],
                &sv[r * w..(r + 1) * w],
                &hv[r * n..],
            );
            for j in 0..n {
                let rg = (ur[j] + sr[j]).sigmoid_kernel();
                let z = (ur[n + j] + sr[n + j]).sigmoid_kernel();
                let c = (ur[2 * n + j] + rg * sr[2 * n + j]).tanh_kernel();
                or[j] = c + z * (hr[j] - c);
                (gr[j], gr[n + j], gr[2 * n + j]) = (rg, z, c);
            }
        }
        let saved = self.side.saved.len();
        self.side.saved.push(gates);
        let ng = self.needs_grad[iu] || self.needs_grad[is] || self.needs_grad[ih];
        let node = Op::GruCell {
            u: iu,
            s: is,
            h: ih,
            saved,
        };
        self.push(node, out, ng)
    }
}

/// Backward of [`Tape::lstm_cell`]: `ā`, and `[0 c̄_{t−1}]` for the state; `gates` the
/// saved `[i f g o tanh c]`.
pub(crate) fn lstm_cell_vjp<F: Scalar>(
    cx: &mut Ctx<'_, F>,
    g: ArrayView2<'_, F>,
    (a, state): (usize, usize),
    gates: ArrayView2<'_, F>,
) {
    let n = g.ncols() / 2;
    let one = F::one();
    let (gv, sv, gs) = (flat(g), flat(cx.values[state].view()), flat(gates));
    // c̄_t of entry (r, j).
    let dct = |r: usize, j: usize| {
        let (o, tc) = (gs[r * 5 * n + 3 * n + j], gs[r * 5 * n + 4 * n + j]);
        gv[r * 2 * n + n + j] + gv[r * 2 * n + j] * o * (one - tc * tc)
    };
    each_row(cx, (a, 4 * n), |r, acc, fresh| {
        let gr = &gs[r * 5 * n..(r + 1) * 5 * n];
        for j in 0..n {
            let (i, f, gg, o, tc) = (
                gr[j],
                gr[n + j],
                gr[2 * n + j],
                gr[3 * n + j],
                gr[4 * n + j],
            );
            let (d, dh) = (dct(r, j), gv[r * 2 * n + j]);
            let c_prev = sv[r * 2 * n + n + j];
            put(&mut acc[j], fresh, d * gg * i * (one - i));
            put(&mut acc[n + j], fresh, d * c_prev * f * (one - f));
            put(&mut acc[2 * n + j], fresh, d * i * (one - gg * gg));
            put(&mut acc[3 * n + j], fresh, dh * tc * o * (one - o));
        }
    });
    each_row(cx, (state, 2 * n), |r, acc, fresh| {
        for j in 0..n {
            put(&mut acc[j], fresh, F::zero());
            put(&mut acc[n + j], fresh, dct(r, j) * gs[r * 5 * n + n + j]);
        }
    });
}

/// Backward of [`Tape::gru_cell`]: `ū`, `s̄`, and the direct part `h̄′ z` of `h̄`;
/// `gates` the saved `[r z n]`.
pub(crate) fn gru_cell_vjp<F: Scalar>(
    cx: &mut Ctx<'_, F>,
    g: ArrayView2<'_, F>,
    (u, s, h): (usize, usize, usize),
    gates: ArrayView2<'_, F>,
) {
    let n = g.ncols();
    let one = F::one();
    let (gv, gs) = (flat(g), flat(gates));
    let (sv, hv) = (flat(cx.values[s].view()), flat(cx.values[h].view()));
    // [ā_r ā_z ā_n] of row r.
    let mut d: Array2<F> = cx.scratch((g.nrows(), 3 * n));
    if let Some(dv) = d.as_slice_mut() {
        for (r, dr) in dv.chunks_mut((3 * n).max(1)).enumerate() {
            let gr = &gs[r * 3 * n..(r + 1) * 3 * n];
            for j in 0..n {
                let (rg, z, c) = (gr[j], gr[n + j], gr[2 * n + j]);
                let dy = gv[r * n + j];
                let da_n = dy * (one - z) * (one - c * c);
                dr[j] = da_n * sv[r * 3 * n + 2 * n + j] * rg * (one - rg);
                dr[n + j] = dy * (hv[r * n + j] - c) * z * (one - z);
                dr[2 * n + j] = da_n;
            }
        }
    }
    let dv = flat(d.view());
    each_row(cx, (u, 3 * n), |r, acc, fresh| {
        for (k, o) in acc.iter_mut().enumerate() {
            put(o, fresh, dv[r * 3 * n + k]);
        }
    });
    each_row(cx, (s, 3 * n), |r, acc, fresh| {
        for (k, o) in acc.iter_mut().enumerate() {
            let v = dv[r * 3 * n + k];
            put(
                o,
                fresh,
                if k < 2 * n {
                    v
                } else {
                    v * gs[r * 3 * n + k - 2 * n]
                },
            );
        }
    });
    each_row(cx, (h, n), |r, acc, fresh| {
        for (j, o) in acc.iter_mut().enumerate() {
            put(o, fresh, gv[r * n + j] * gs[r * 3 * n + n + j]);
        }
    });
    cx.recycle(d);
}
