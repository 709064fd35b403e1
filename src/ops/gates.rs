//! Fused gated-cell updates: the gate activations and the state update of one LSTM or
//! GRU step as one node, with one backward rule (no slice, concat or elementwise nodes
//! in between). The gates are recomputed from the saved pre-activations in backward.
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

use super::activation::sigmoid;
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

/// The gates of entry `j` of an LSTM row of pre-activations `a` (4H): (i, f, g, o).
#[inline]
fn lstm_gates<F: Scalar>(a: &[F], j: usize, n: usize) -> (F, F, F, F) {
    (
        sigmoid(a[j]),
        sigmoid(a[n + j]),
        a[2 * n + j].tanh_kernel(),
        sigmoid(a[3 * n + j]),
    )
}

/// The gates of entry `j` of a GRU row, from its input and state parts (3H each):
/// (r, z, n).
#[inline]
fn gru_gates<F: Scalar>(u: &[F], s: &[F], j: usize, n: usize) -> (F, F, F) {
    let r = sigmoid(u[j] + s[j]);
    let z = sigmoid(u[n + j] + s[n + j]);
    let c = (u[2 * n + j] + r * s[2 * n + j]).tanh_kernel();
    (r, z, c)
}

/// `acc = v` if fresh, else `acc += v`, entry by entry.
fn put_all<F: Scalar>(acc: &mut Array2<F>, fresh: bool, v: impl Iterator<Item = F>) {
    for (a, v) in acc.iter_mut().zip(v) {
        *a = if fresh { v } else { *a + v };
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
    /// (`h_{t−1}` reaches the step through `a`). The gates are recomputed from `a` in
    /// backward rather than stored.
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
        let mut out = self.pool.take((b, ws));
        let (av, sv) = (flat(self.values[ia].view()), flat(self.values[is].view()));
        let o = out
            .as_slice_mut()
            .ok_or_else(|| invalid(op, "non-contiguous buffer"))?;
        for r in 0..b {
            let (ar, sr) = (&av[r * w..(r + 1) * w], &sv[r * ws..(r + 1) * ws]);
            let or = &mut o[r * ws..(r + 1) * ws];
            for j in 0..n {
                let (i, f, g, og) = lstm_gates(ar, j, n);
                let c = f * sr[n + j] + i * g;
                or[j] = og * c.tanh_kernel();
                or[n + j] = c;
            }
        }
        let ng = self.needs_grad[ia] || self.needs_grad[is];
        self.push(Op::LstmCell { a: ia, state: is }, out, ng)
    }

    /// One GRU step fused into one node: from the input part `u` (B×3H, `x_t W_x + b_x`,
    /// gates `r z n`), the state part `s` (B×3H, `h_{t−1} W_h + b_h`) and the state
    /// `h_{t−1}` (B×H), the new state `h_t` (B×H): `r, z = σ(u_r + s_r), σ(u_z + s_z)`,
    /// `n = tanh(u_n + r s_n)`, `h_t = n + z (h_{t−1} − n)`. Backward:
    /// `ā_n = h̄′ (1 − z)(1 − n²)`, `ā_r = ā_n s_n r (1 − r)`, `ā_z = h̄′ (h − n) z (1 − z)`;
    /// `ū = [ā_r ā_z ā_n]`, `s̄ = [ā_r ā_z ā_n r]`, `h̄ += h̄′ z`.
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
        let mut out = self.pool.take((b, n));
        let (uv, sv) = (flat(self.values[iu].view()), flat(self.values[is].view()));
        let hv = flat(self.values[ih].view());
        let o = out
            .as_slice_mut()
            .ok_or_else(|| invalid(op, "non-contiguous buffer"))?;
        for r in 0..b {
            let (ur, sr) = (
                &uv[r * 3 * n..(r + 1) * 3 * n],
                &sv[r * 3 * n..(r + 1) * 3 * n],
            );
            for j in 0..n {
                let (_, z, c) = gru_gates(ur, sr, j, n);
                o[r * n + j] = c + z * (hv[r * n + j] - c);
            }
        }
        let ng = self.needs_grad[iu] || self.needs_grad[is] || self.needs_grad[ih];
        self.push(
            Op::GruCell {
                u: iu,
                s: is,
                h: ih,
            },
            out,
            ng,
        )
    }
}

/// Backward of [`Tape::lstm_cell`]: `ā`, and `[0 c̄_{t−1}]` for the state.
pub(crate) fn lstm_cell_vjp<F: Scalar>(
    cx: &mut Ctx<'_, F>,
    g: ArrayView2<'_, F>,
    y: ArrayView2<'_, F>,
    (a, state): (usize, usize),
) {
    let (b, n) = (y.nrows(), y.ncols() / 2);
    let one = F::one();
    let (av, sv) = (flat(cx.values[a].view()), flat(cx.values[state].view()));
    let (gv, yv) = (flat(g), flat(y));
    // Row r: ā (4H), then [0 c̄_{t−1}] (2H).
    let mut d: Array2<F> = cx.scratch((b, 6 * n));
    for r in 0..b {
        let ar = &av[r * 4 * n..(r + 1) * 4 * n];
        for j in 0..n {
            let (i, f, gg, o) = lstm_gates(ar, j, n);
            let tc = yv[r * 2 * n + n + j].tanh_kernel();
            let (dh, dc) = (gv[r * 2 * n + j], gv[r * 2 * n + n + j]);
            let dct = dc + dh * o * (one - tc * tc);
            let c_prev = sv[r * 2 * n + n + j];
            d[[r, j]] = dct * gg * i * (one - i);
            d[[r, n + j]] = dct * c_prev * f * (one - f);
            d[[r, 2 * n + j]] = dct * i * (one - gg * gg);
            d[[r, 3 * n + j]] = dh * tc * o * (one - o);
            d[[r, 4 * n + j]] = F::zero();
            d[[r, 5 * n + j]] = dct * f;
        }
    }
    if let Some((acc, fresh)) = cx.slot(a) {
        let rows = d.rows().into_iter();
        put_all(
            acc,
            fresh,
            rows.flat_map(|r| r.into_iter().take(4 * n).copied()),
        );
    }
    if let Some((acc, fresh)) = cx.slot(state) {
        let rows = d.rows().into_iter();
        put_all(
            acc,
            fresh,
            rows.flat_map(|r| r.into_iter().skip(4 * n).copied()),
        );
    }
    cx.recycle(d);
}

/// Backward of [`Tape::gru_cell`]: `ū`, `s̄`, and the direct part `h̄′ z` of `h̄`.
pub(crate) fn gru_cell_vjp<F: Scalar>(
    cx: &mut Ctx<'_, F>,
    g: ArrayView2<'_, F>,
    (u, s, h): (usize, usize, usize),
) {
    let (b, n) = g.dim();
    let one = F::one();
    let (uv, sv) = (flat(cx.values[u].view()), flat(cx.values[s].view()));
    let (hv, gv) = (flat(cx.values[h].view()), flat(g));
    // Row r: ū = [ā_r ā_z ā_n] (3H), s̄ = [ā_r ā_z ā_n r] (3H), h̄′ z (H).
    let mut d: Array2<F> = cx.scratch((b, 7 * n));
    for r in 0..b {
        let (ur, sr) = (
            &uv[r * 3 * n..(r + 1) * 3 * n],
            &sv[r * 3 * n..(r + 1) * 3 * n],
        );
        for j in 0..n {
            let (rg, z, c) = gru_gates(ur, sr, j, n);
            let dy = gv[r * n + j];
            let da_n = dy * (one - z) * (one - c * c);
            let da_r = da_n * sr[2 * n + j] * rg * (one - rg);
            let da_z = dy * (hv[r * n + j] - c) * z * (one - z);
            for (k, v) in [da_r, da_z, da_n, da_r, da_z, da_n * rg, dy * z]
                .into_iter()
                .enumerate()
            {
                d[[r, k * n + j]] = v;
            }
        }
    }
    for (parent, cols) in [(u, 0..3 * n), (s, 3 * n..6 * n), (h, 6 * n..7 * n)] {
        if let Some((acc, fresh)) = cx.slot(parent) {
            let rows = d.rows().into_iter();
            let part = rows.flat_map(|r| r.into_iter().skip(cols.start).take(cols.len()).copied());
            put_all(acc, fresh, part);
        }
    }
    cx.recycle(d);
}
