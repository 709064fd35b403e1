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
//! `lstm_step` adds the step's product and bias, `a = u[rows] + h_{t−1} W_h + b`, inside
//! the node: backward, `ū[rows] += ā`, `b̄ += Σ_rows ā`, `W̄_h += h_{t−1}ᵀ ā` and
//! `h̄_{t−1} = ā W_hᵀ` besides the rule above.
//!
//! GRU, input part `u = [u_r u_z u_n]` and state part `s = [s_r s_z s_n]` (B×3H each,
//! `s = h_{t−1} W_h + b_h`), state `h_{t−1}` (B×H):
//!
//! | forward | backward |
//! |---|---|
//! | `r, z = σ(u_r + s_r), σ(u_z + s_z)` | `n̄ = h̄′ (1 − z)`, `z̄ = h̄′ (h − n)`, `h̄ += h̄′ z` |
//! | `n = tanh(u_n + r s_n)` | `ā_n = n̄ (1 − n²)`, `ā_r = ā_n s_n r (1 − r)`, `ā_z = z̄ z (1 − z)` |
//! | `h′ = n + z (h − n)` | `ū = [ā_r ā_z ā_n]`, `s̄ = [ā_r ā_z ā_n r]` |

use super::linalg::{check_rows, product_into, Factor};
use super::{rows_into, Ctx, Op};
use crate::error::{invalid, Error, Result};
use crate::kernels::{Start, Write};
use crate::ops::RowsOf;
use crate::scalar::Scalar;
use crate::tape::{Tape, Var};
use ndarray::{Array2, ArrayView2, Axis, Slice};
use std::borrow::Cow;

/// The entries of `m` in row-major order: borrowed for a contiguous matrix (every value
/// and buffer of the tape), copied otherwise.
fn flat<F: Scalar>(m: ArrayView2<'_, F>) -> Cow<'_, [F]> {
    match m.to_slice() {
        Some(s) => Cow::Borrowed(s),
        None => Cow::Owned(m.iter().copied().collect()),
    }
}

/// `o_j = v(j)` if fresh, else `o_j += v(j)`, for every j: the branch outside the loop,
/// so that each loop vectorizes.
#[inline(always)]
fn emit<F: Scalar>(o: &mut [F], fresh: bool, v: impl Fn(usize) -> F) {
    if fresh {
        o.iter_mut().enumerate().for_each(|(j, o)| *o = v(j));
    } else {
        o.iter_mut().enumerate().for_each(|(j, o)| *o = *o + v(j));
    }
}

/// The `K` consecutive blocks of width `n` at the start of `row` (its gate blocks).
#[inline(always)]
fn blocks<F, const K: usize>(row: &[F], n: usize) -> [&[F]; K] {
    std::array::from_fn(|k| &row[k * n..(k + 1) * n])
}

/// [`blocks`], mutable.
#[inline(always)]
fn blocks_mut<F, const K: usize>(row: &mut [F], n: usize) -> [&mut [F]; K] {
    let mut rest = row;
    std::array::from_fn(|_| {
        let (head, tail) = std::mem::take(&mut rest).split_at_mut(n);
        rest = tail;
        head
    })
}

/// Runs `rule(row, out_row, fresh)` on each row of the adjoint of parent `p` (width
/// `w`), if it needs one; a non-contiguous buffer is reported, not skipped.
#[inline(always)]
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
            crate::simd::vectorized(
                #[inline(always)]
                || {
                    for (r, row) in o.chunks_mut(w.max(1)).enumerate() {
                        rule(r, row, fresh);
                    }
                },
            );
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
        lstm_rows(o, gs, (&av, &sv), n);
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

    /// One LSTM step with its product in one node: the gate pre-activations
    /// `a = u[rows] + h_{t−1} W_h + b` (the step's rows of the input projection of a
    /// segment, as in [`Tape::affine_rows`], plus one product by `W_h`, H×4H, with
    /// `h_{t−1}` read from the state `[h_{t−1} c_{t−1}]`, plus a 1×4H bias `b` if given),
    /// then the gates and the state update of [`Tape::lstm_cell`]. The same values and
    /// gradients as `lstm_cell(affine_rows(h_{t−1}, W_h, u[rows]) + b, state)`, in one
    /// node where that records three or four (with the slice of `h_{t−1}`). No backward
    /// rule reads `a`, so it lives in a scratch buffer: the tape keeps 7H numbers a row
    /// and step (the state and the saved gates) where the separate nodes keep 12H. The
    /// bias is added to the step's rows while they are in cache, so a projection need
    /// not carry it over all the steps.
    ///
    /// Backward, with `ā` as in [`Tape::lstm_cell`]: `ū[rows] += ā`, `b̄ += Σ_rows ā`,
    /// `W̄_h += h_{t−1}ᵀ ā`, and `[ā W_hᵀ, c̄_t f]` for the state. When the steps of a
    /// segment reach `ū` from its last rows up (the recurrent runners), `ā` is written
    /// straight into `ū`'s rows, and `W̄_h` gets one product over all the steps,
    /// `H_{prev}ᵀ Ū`, instead of one per step (as oneDNN merges it); in f32 that changes
    /// the order of the sum, not its terms.
    ///
    /// ```
    /// use ndarray::array;
    /// use timetape::ops::RowsOf;
    /// use timetape::Tape;
    ///
    /// let mut tape = Tape::<f64>::new();
    /// let u = tape.variable(array![[0.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]].view())?;
    /// let w_h = tape.variable(array![[1.0, -1.0, 0.0, 2.0]].view())?; // H = 1
    /// let b = tape.variable(array![[0.0, 0.0, 0.0, 0.0]].view())?;
    /// let s = tape.variable(array![[0.0, 1.0]].view())?; // h = 0, c = 1
    /// let next = tape.lstm_step(RowsOf(u, 0..1), w_h, Some(b), s)?;
    /// // h = 0: a = u[0] + b = 0, so i = f = o = ½, g = 0: c = ½, h = ½ tanh ½
    /// let v = tape.value(next)?;
    /// assert!((v[[0, 1]] - 0.5).abs() < 1e-15);
    /// assert!((v[[0, 0]] - 0.5 * 0.5f64.tanh()).abs() < 1e-15);
    /// # Ok::<(), timetape::Error>(())
    /// ```
    ///
    /// Errors: [`Error::ShapeMismatch`] unless the state is B×2H, `W_h` H×4H, the rows
    /// of `u` B×4H and `b` 1×4H; [`Error::InvalidArgument`] for rows outside `u`;
    /// [`Error::ForeignVar`] or [`Error::StaleVar`] for a `Var` that is not a live `Var`
    /// of this tape.
    pub fn lstm_step(&mut self, u: RowsOf, w_h: Var, b: Option<Var>, state: Var) -> Result<Var> {
        let op = "lstm_step";
        let RowsOf(u, rows) = u;
        let (iu, iw, is) = (self.idx(op, u)?, self.idx(op, w_h)?, self.idx(op, state)?);
        let ib = b.map(|b| self.idx(op, b)).transpose()?;
        let (su, sw, (b, ws)) = (
            self.values[iu].dim(),
            self.values[iw].dim(),
            self.values[is].dim(),
        );
        check_rows(op, &rows, su.0)?;
        let n = ws / 2;
        if ws % 2 != 0 || sw != (n, 4 * n) {
            return Err(Error::ShapeMismatch {
                op,
                lhs: (b, ws),
                rhs: sw,
            });
        }
        if (rows.len(), su.1) != (b, 4 * n) {
            return Err(Error::ShapeMismatch {
                op,
                lhs: (b, 4 * n),
                rhs: (rows.len(), su.1),
            });
        }
        if let Some(sb) = ib.map(|ib| self.values[ib].dim()) {
            if sb != (1, 4 * n) {
                let (lhs, rhs) = ((1, 4 * n), sb);
                return Err(Error::ShapeMismatch { op, lhs, rhs });
            }
        }
        // h_{t−1} (copied out of the state, for the product) and a, in scratch buffers.
        let (mut h, mut a) = (self.pool.take((b, n)), self.pool.take((b, 4 * n)));
        let u_start = rows.start;
        {
            let Tape {
                values,
                panels,
                pool,
                panel_scratch,
                ..
            } = self;
            let sv = values[is].view();
            rows_into(
                h.view_mut(),
                sv.slice_axis(Axis(1), Slice::from(..n)),
                Write::Set,
            );
            let ur = values[iu].slice_axis(Axis(0), Slice::from(rows));
            let f = Factor {
                panels,
                pool,
                scratch: panel_scratch,
            };
            product_into(
                f,
                h.view(),
                (iw, values[iw].view()),
                Start::From(ur),
                &mut a,
            );
            if let Some(ib) = ib {
                rows_into(a.view_mut(), values[ib].view(), Write::Add);
            }
        }
        let (mut out, mut gates) = (self.pool.take((b, ws)), self.pool.take((b, 5 * n)));
        let (av, sv) = (flat(a.view()), flat(self.values[is].view()));
        let non_contiguous = || invalid(op, "non-contiguous buffer");
        let o = out.as_slice_mut().ok_or_else(non_contiguous)?;
        let gs = gates.as_slice_mut().ok_or_else(non_contiguous)?;
        lstm_rows(o, gs, (&av, &sv), n);
        drop((av, sv));
        self.pool.give(h);
        self.pool.give(a);
        let saved = self.side.saved.len();
        self.side.saved.push(gates);
        let ng = self.needs_grad[iu]
            || self.needs_grad[iw]
            || self.needs_grad[is]
            || ib.is_some_and(|ib| self.needs_grad[ib]);
        let node = Op::LstmStep {
            u: (iu, u_start),
            w: iw,
            b: ib,
            state: is,
            saved,
        };
        self.push(node, out, ng)
    }

    /// One GRU step fused into one node: from the input part `u` (B×3H, `x_t W_x + b_x`,
    /// gates `r z n`; given as the step's rows of a taller matrix, the input projection of
    /// a whole segment, as in [`Tape::affine_rows`]: `RowsOf(u, 0..B)` for a B×3H `u`),
    /// the state part `s` (B×3H, `h_{t−1} W_h + b_h`) and the state
    /// `h_{t−1}` (B×H), the new state `h_t` (B×H): `r, z = σ(u_r + s_r), σ(u_z + s_z)`,
    /// `n = tanh(u_n + r s_n)`, `h_t = n + z (h_{t−1} − n)`. Backward:
    /// `ā_n = h̄′ (1 − z)(1 − n²)`, `ā_r = ā_n s_n r (1 − r)`, `ā_z = h̄′ (h − n) z (1 − z)`;
    /// `ū = [ā_r ā_z ā_n]`, `s̄ = [ā_r ā_z ā_n r]`, `h̄ += h̄′ z`. The gates are saved for
    /// the backward pass.
    ///
    /// Errors: [`Error::ShapeMismatch`] unless the rows of `u` and `s` are B×3H and `h`
    /// B×H; [`Error::InvalidArgument`] for rows outside `u`;
    /// [`Error::ForeignVar`] or [`Error::StaleVar`] for a `Var` that is not a live `Var`
    /// of this tape.
    pub fn gru_cell(&mut self, u: RowsOf, s: Var, h: Var) -> Result<Var> {
        let op = "gru_cell";
        let RowsOf(u, rows) = u;
        let (iu, is, ih) = (self.idx(op, u)?, self.idx(op, s)?, self.idx(op, h)?);
        let (su, ss) = (self.values[iu].dim(), self.values[is].dim());
        let (b, n) = self.values[ih].dim();
        check_rows(op, &rows, su.0)?;
        let su = (rows.len(), su.1);
        if su != ss || su != (b, 3 * n) {
            return Err(Error::ShapeMismatch {
                op,
                lhs: su,
                rhs: (b, n),
            });
        }
        let (mut out, mut gates) = (self.pool.take((b, n)), self.pool.take((b, 3 * n)));
        let u_start = rows.start;
        let ur = self.values[iu].slice_axis(Axis(0), Slice::from(rows));
        let (uv, sv) = (flat(ur), flat(self.values[is].view()));
        let hv = flat(self.values[ih].view());
        let non_contiguous = || invalid(op, "non-contiguous buffer");
        let o = out.as_slice_mut().ok_or_else(non_contiguous)?;
        let gs = gates.as_slice_mut().ok_or_else(non_contiguous)?;
        gru_rows(o, gs, (&uv, &sv, &hv), n);
        let saved = self.side.saved.len();
        self.side.saved.push(gates);
        let ng = self.needs_grad[iu] || self.needs_grad[is] || self.needs_grad[ih];
        let node = Op::GruCell {
            u: (iu, u_start),
            s: is,
            h: ih,
            saved,
        };
        self.push(node, out, ng)
    }
}

/// The LSTM forward of every row: gates `[i f g o tanh c]` into `gs`, `[h c]` into `o`,
/// from the rows of `a` and of the state `[h_{t−1} c_{t−1}]` (B×4H, B×2H, flat).
fn lstm_rows<F: Scalar>(o: &mut [F], gs: &mut [F], (av, sv): (&[F], &[F]), n: usize) {
    let (w, ws) = (4 * n, 2 * n);
    let rows = o.chunks_mut(ws.max(1)).zip(gs.chunks_mut((5 * n).max(1)));
    crate::simd::vectorized(
        #[inline(always)]
        || {
            for (r, (or, gr)) in rows.enumerate() {
                let [ai, af, ag, ao] = blocks::<_, 4>(&av[r * w..(r + 1) * w], n);
                let [_, c_prev] = blocks::<_, 2>(&sv[r * ws..(r + 1) * ws], n);
                let [i, f, g, og, tc] = blocks_mut::<_, 5>(gr, n);
                let [h, c] = blocks_mut::<_, 2>(or, n);
                // One pass per gate block: each loop is branch-free and vectorizes.
                i.iter_mut()
                    .zip(ai)
                    .for_each(|(o, &a)| *o = a.sigmoid_kernel());
                f.iter_mut()
                    .zip(af)
                    .for_each(|(o, &a)| *o = a.sigmoid_kernel());
                g.iter_mut()
                    .zip(ag)
                    .for_each(|(o, &a)| *o = a.tanh_kernel());
                og.iter_mut()
                    .zip(ao)
                    .for_each(|(o, &a)| *o = a.sigmoid_kernel());
                for (j, c) in c.iter_mut().enumerate() {
                    *c = f[j] * c_prev[j] + i[j] * g[j];
                }
                tc.iter_mut()
                    .zip(&*c)
                    .for_each(|(o, &c)| *o = c.tanh_kernel());
                for (j, h) in h.iter_mut().enumerate() {
                    *h = og[j] * tc[j];
                }
            }
        },
    );
}

/// The GRU forward of every row: gates `[r z n]` into `gs`, `h′` into `o`, from the rows
/// of `u`, `s` and `h` (B×3H, B×3H, B×H, flat).
fn gru_rows<F: Scalar>(o: &mut [F], gs: &mut [F], (uv, sv, hv): (&[F], &[F], &[F]), n: usize) {
    let w = 3 * n;
    let rows = o.chunks_mut(n.max(1)).zip(gs.chunks_mut(w.max(1)));
    crate::simd::vectorized(
        #[inline(always)]
        || {
            for (r, (h_new, gr)) in rows.enumerate() {
                let [ur, uz, un] = blocks::<_, 3>(&uv[r * w..(r + 1) * w], n);
                let [sr, sz, sn] = blocks::<_, 3>(&sv[r * w..(r + 1) * w], n);
                let h = &hv[r * n..(r + 1) * n];
                let [rg, z, c] = blocks_mut::<_, 3>(gr, n);
                // One pass per gate block: each loop is branch-free and vectorizes.
                for (j, o) in rg.iter_mut().enumerate() {
                    *o = (ur[j] + sr[j]).sigmoid_kernel();
                }
                for (j, o) in z.iter_mut().enumerate() {
                    *o = (uz[j] + sz[j]).sigmoid_kernel();
                }
                for (j, o) in c.iter_mut().enumerate() {
                    *o = (un[j] + rg[j] * sn[j]).tanh_kernel();
                }
                for (j, o) in h_new.iter_mut().enumerate() {
                    *o = c[j] + z[j] * (h[j] - c[j]);
                }
            }
        },
    );
}

/// The blocks of row `r` an LSTM step's backward rule reads: adjoints `[h̄ c̄]`, the saved
/// gates `[i f g o tanh c]`, and `c_{t−1}` from the state.
#[inline(always)]
fn lstm_row<'a, F: Scalar>(
    (gv, gs, sv): (&'a [F], &'a [F], &'a [F]),
    r: usize,
    n: usize,
) -> ([&'a [F]; 2], [&'a [F]; 5], &'a [F]) {
    let d = blocks::<_, 2>(&gv[r * 2 * n..(r + 1) * 2 * n], n);
    let gates = blocks::<_, 5>(&gs[r * 5 * n..(r + 1) * 5 * n], n);
    let [_, c_prev] = blocks::<_, 2>(&sv[r * 2 * n..(r + 1) * 2 * n], n);
    (d, gates, c_prev)
}

/// `ā` of one row (written if `fresh`, else added): `ā_i = c̄_t g i (1 − i)`,
/// `ā_f = c̄_t c_{t−1} f (1 − f)`, `ā_g = c̄_t i (1 − g²)`, `ā_o = h̄ tanh(c_t) o (1 − o)`,
/// with `c̄_t = c̄ + h̄ o (1 − tanh² c_t)`.
#[inline(always)]
fn lstm_row_adjoint<F: Scalar>(
    acc: &mut [F],
    fresh: bool,
    ([dh, dc], [i, f, g, o, tc], c_prev): ([&[F]; 2], [&[F]; 5], &[F]),
) {
    let (one, n) = (F::one(), dh.len());
    let dct = |j: usize| dc[j] + dh[j] * o[j] * (one - tc[j] * tc[j]);
    let [ai, af, ag, ao] = blocks_mut::<_, 4>(acc, n);
    emit(ai, fresh, |j| dct(j) * g[j] * i[j] * (one - i[j]));
    emit(af, fresh, |j| dct(j) * c_prev[j] * f[j] * (one - f[j]));
    emit(ag, fresh, |j| dct(j) * i[j] * (one - g[j] * g[j]));
    emit(ao, fresh, |j| dh[j] * tc[j] * o[j] * (one - o[j]));
}

/// `c̄_{t−1} = c̄_t f` of one row (written if `fresh`, else added).
#[inline(always)]
fn lstm_row_c_prev<F: Scalar>(
    sc: &mut [F],
    fresh: bool,
    ([dh, dc], [_, f, _, o, tc], _): ([&[F]; 2], [&[F]; 5], &[F]),
) {
    let one = F::one();
    emit(sc, fresh, |j| {
        (dc[j] + dh[j] * o[j] * (one - tc[j] * tc[j])) * f[j]
    });
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
    let (gv, sv, gs) = (flat(g), flat(cx.values[state].view()), flat(gates));
    let row = |r: usize| lstm_row((&gv, &gs, &sv), r, n);
    each_row(
        cx,
        (a, 4 * n),
        #[inline(always)]
        |r, acc, fresh| lstm_row_adjoint(acc, fresh, row(r)),
    );
    each_row(
        cx,
        (state, 2 * n),
        #[inline(always)]
        |r, acc, fresh| {
            let [sh, sc] = blocks_mut::<_, 2>(acc, n);
            emit(sh, fresh, |_| F::zero());
            lstm_row_c_prev(sc, fresh, row(r));
        },
    );
}

/// Backward of [`Tape::lstm_step`]: `ā` into the step's rows of `ū`, `h_{t−1}ᵀ ā` into
/// `W̄_h`, and `[ā W_hᵀ, c̄_{t−1}]` for the state; `gates` the saved `[i f g o tanh c]`.
pub(crate) fn lstm_step_vjp<F: Scalar>(
    cx: &mut Ctx<'_, F>,
    g: ArrayView2<'_, F>,
    ((u, start), (w, bias), state): ((usize, usize), (usize, Option<usize>), usize),
    gates: ArrayView2<'_, F>,
) {
    let (b, n) = (g.nrows(), g.ncols() / 2);
    let rows = Slice::from(start..start + b);
    // ā is written straight into the step's rows of ū when they are fresh (see
    // `Ctx::rows_slot`), with no scratch and no copy; otherwise into a scratch that is
    // then added there.
    let own = u != w && u != state;
    let fresh = own && cx.rows_slot(u, start..start + b).is_some_and(|(_, f)| f);
    let (mut whole, mut scratch) = match fresh.then(|| cx.take_adjoint(u)).flatten() {
        Some(whole) => (whole, None),
        None => (Array2::zeros((0, 0)), Some(cx.scratch((b, 4 * n)))),
    };
    let fresh = scratch.is_none();
    let mut d = match scratch.as_mut() {
        Some(d) => d.view_mut(),
        None => whole.slice_axis_mut(Axis(0), rows),
    };
    let (gv, sv, gs) = (flat(g), flat(cx.values[state].view()), flat(gates));
    let row = |r: usize| lstm_row((&gv, &gs, &sv), r, n);
    if let Some(dv) = d.as_slice_mut() {
        crate::simd::vectorized(
            #[inline(always)]
            || {
                for (r, acc) in dv.chunks_mut((4 * n).max(1)).enumerate() {
                    lstm_row_adjoint(acc, true, row(r));
                }
            },
        );
    }
    let d = d.view();
    if let Some(ib) = bias {
        super::linalg::add_column_sums(cx, ib, d);
    }
    if !fresh {
        if let Some((part, fresh)) = cx.rows_slot(u, start..start + b) {
            rows_into(part, d, if fresh { Write::Set } else { Write::Add });
        }
    }
    // W̄_h += h_{t−1}ᵀ ā: deferred to one product over the segment's steps when ā is in
    // ū's rows, else one product now.
    let mut h: Array2<F> = cx.scratch((b, n));
    let h_prev = cx.values[state].slice_axis(Axis(1), Slice::from(..n));
    if !(fresh && cx.defer_at_b(w, u, start..start + b, h_prev)) && cx.needs_grad(w) {
        rows_into(h.view_mut(), h_prev, Write::Set);
        cx.add_at_b(w, h.view(), d);
    }
    if cx.needs_grad(state) {
        // h̄_{t−1} = ā W_hᵀ into the scratch, then into the state's h columns.
        cx.r_bt_into(d, w, Start::Zero, &mut h);
        let hv = flat(h.view());
        each_row(
            cx,
            (state, 2 * n),
            #[inline(always)]
            |r, acc, fresh| {
                let [sh, sc] = blocks_mut::<_, 2>(acc, n);
                let hr = &hv[r * n..(r + 1) * n];
                emit(sh, fresh, |j| hr[j]);
                lstm_row_c_prev(sc, fresh, row(r));
            },
        );
    }
    cx.recycle(h);
    match scratch {
        Some(d) => cx.recycle(d),
        None => cx.put_adjoint(u, whole),
    }
}

/// Backward of [`Tape::gru_cell`]: `ū`, `s̄`, and the direct part `h̄′ z` of `h̄`;
/// `gates` the saved `[r z n]`.
pub(crate) fn gru_cell_vjp<F: Scalar>(
    cx: &mut Ctx<'_, F>,
    g: ArrayView2<'_, F>,
    ((u, start), s, h): ((usize, usize), usize, usize),
    gates: ArrayView2<'_, F>,
) {
    let n = g.ncols();
    let (gv, gs) = (flat(g), flat(gates));
    let (sv, hv) = (flat(cx.values[s].view()), flat(cx.values[h].view()));
    // [ā_r ā_z ā_n] of every row.
    let mut d: Array2<F> = cx.scratch((g.nrows(), 3 * n));
    if let Some(dv) = d.as_slice_mut() {
        gru_gate_adjoints(dv, (&gv, &gs), (&sv, &hv), n);
    }
    if let Some((part, fresh)) = cx.rows_slot(u, start..start + g.nrows()) {
        super::rows_into(part, d.view(), if fresh { Write::Set } else { Write::Add });
    }
    let dv = flat(d.view());
    each_row(
        cx,
        (s, 3 * n),
        #[inline(always)]
        |r, acc, fresh| {
            let [dar, daz, dan] = blocks::<_, 3>(&dv[r * 3 * n..(r + 1) * 3 * n], n);
            let [rg, _, _] = blocks::<_, 3>(&gs[r * 3 * n..(r + 1) * 3 * n], n);
            let [sr, sz, sn] = blocks_mut::<_, 3>(acc, n);
            emit(sr, fresh, |j| dar[j]);
            emit(sz, fresh, |j| daz[j]);
            emit(sn, fresh, |j| dan[j] * rg[j]);
        },
    );
    each_row(
        cx,
        (h, n),
        #[inline(always)]
        |r, acc, fresh| {
            let (dy, z) = (
                &gv[r * n..(r + 1) * n],
                &gs[r * 3 * n + n..r * 3 * n + 2 * n],
            );
            emit(acc, fresh, |j| dy[j] * z[j]);
        },
    );
    cx.recycle(d);
}

/// `[ā_r ā_z ā_n]` of every row into `d` (B×3H, flat), from the output adjoints `gv`,
/// the saved gates `gs`, and the rows of `s` and `h`.
fn gru_gate_adjoints<F: Scalar>(
    d: &mut [F],
    (gv, gs): (&[F], &[F]),
    (sv, hv): (&[F], &[F]),
    n: usize,
) {
    let one = F::one();
    crate::simd::vectorized(
        #[inline(always)]
        || {
            for (r, dr) in d.chunks_mut((3 * n).max(1)).enumerate() {
                let [rg, z, c] = blocks::<_, 3>(&gs[r * 3 * n..(r + 1) * 3 * n], n);
                let [_, _, sn] = blocks::<_, 3>(&sv[r * 3 * n..(r + 1) * 3 * n], n);
                let (dy, hr) = (&gv[r * n..(r + 1) * n], &hv[r * n..(r + 1) * n]);
                let [dar, daz, dan] = blocks_mut::<_, 3>(dr, n);
                emit(dan, true, |j| dy[j] * (one - z[j]) * (one - c[j] * c[j]));
                emit(dar, true, |j| dan[j] * sn[j] * rg[j] * (one - rg[j]));
                emit(daz, true, |j| dy[j] * (hr[j] - c[j]) * z[j] * (one - z[j]));
            }
        },
    );
}
