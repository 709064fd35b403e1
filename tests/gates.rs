//! The fused gated-cell ops (`Tape::lstm_cell`, `Tape::lstm_step`, `Tape::gru_cell`):
//! against central finite
//! differences (1e-6: f64 central differences with eps = 1e-5, truncation error ~1e-10,
//! rounding ~1e-11 relative on O(1) values), and against the same step written with the
//! tape's elementwise ops (the same functions composed node by node: equal up to the
//! order of a few roundings, 1e-14 relative).

mod common;

use common::assert_close;
use ndarray::Array2;
use timetape::gradcheck::{gradcheck, GradcheckOptions};
use timetape::ops::RowsOf;
use timetape::{init, Error, Params, Tape, Var};

const FD: f64 = 1e-6;
const SAME: f64 = 1e-14;
/// Batch rows and hidden width.
const B: usize = 3;
const H: usize = 4;

/// `Σ w ⊙ y` with fixed weights `w`: every entry of `y` reaches the loss differently.
fn weighted_sum(tape: &mut Tape<f64>, y: Var, seed: u64) -> timetape::Result<Var> {
    let shape = tape.shape(y)?;
    let w = init::uniform(shape, 1.0, &mut init::rng(seed))?;
    let wv = tape.constant(w)?;
    let p = tape.mul(y, wv)?;
    tape.sum(p)
}

fn store(shapes: &[(&str, (usize, usize))]) -> Params<f64> {
    let mut params = Params::new();
    for (k, (name, shape)) in shapes.iter().enumerate() {
        let v = init::uniform(*shape, 1.5, &mut init::rng(k as u64 + 1)).unwrap();
        params.add(*name, v).unwrap();
    }
    params
}

/// The LSTM step node by node: slices, activations, products, sums, a concat.
fn lstm_unfused(tape: &mut Tape<f64>, a: Var, state: Var) -> timetape::Result<Var> {
    lstm_unfused_h(tape, a, state, H)
}

/// The GRU step node by node.
fn gru_unfused(tape: &mut Tape<f64>, u: Var, s: Var, h: Var) -> timetape::Result<Var> {
    let part = |tape: &mut Tape<f64>, m: Var, k: usize| tape.slice_cols(m, k * H..(k + 1) * H);
    let (ur, uz, un) = (part(tape, u, 0)?, part(tape, u, 1)?, part(tape, u, 2)?);
    let (sr, sz, sn) = (part(tape, s, 0)?, part(tape, s, 1)?, part(tape, s, 2)?);
    let r = tape.add(ur, sr)?;
    let r = tape.sigmoid(r)?;
    let z = tape.add(uz, sz)?;
    let z = tape.sigmoid(z)?;
    let rs = tape.mul(r, sn)?;
    let n = tape.add(un, rs)?;
    let n = tape.tanh(n)?;
    let d = tape.sub(h, n)?;
    let zd = tape.mul(z, d)?;
    tape.add(n, zd)
}

#[test]
fn lstm_cell_matches_finite_differences_and_the_unfused_step() {
    let params = store(&[("a", (B, 4 * H)), ("state", (B, 2 * H))]);
    let ids: Vec<_> = params.ids().collect();
    let fused = |tape: &mut Tape<f64>, p: &Params<f64>| {
        let (a, s) = (tape.param(p, ids[0])?, tape.param(p, ids[1])?);
        let y = tape.lstm_cell(a, s)?;
        weighted_sum(tape, y, 9)
    };
    let report = gradcheck(&params, GradcheckOptions::default(), fused).unwrap();
    assert!(report.passes(FD), "{report}");
    let unfused = |tape: &mut Tape<f64>, p: &Params<f64>| {
        let (a, s) = (tape.param(p, ids[0])?, tape.param(p, ids[1])?);
        let y = lstm_unfused(tape, a, s)?;
        weighted_sum(tape, y, 9)
    };
    compare(&params, fused, unfused);
}

#[test]
fn gru_cell_matches_finite_differences_and_the_unfused_step() {
    let params = store(&[("u", (B, 3 * H)), ("s", (B, 3 * H)), ("h", (B, H))]);
    let ids: Vec<_> = params.ids().collect();
    let fused = |tape: &mut Tape<f64>, p: &Params<f64>| {
        let (u, s, h) = (
            tape.param(p, ids[0])?,
            tape.param(p, ids[1])?,
            tape.param(p, ids[2])?,
        );
        let y = tape.gru_cell(RowsOf(u, 0..B), s, h)?;
        weighted_sum(tape, y, 9)
    };
    let report = gradcheck(&params, GradcheckOptions::default(), fused).unwrap();
    assert!(report.passes(FD), "{report}");
    let unfused = |tape: &mut Tape<f64>, p: &Params<f64>| {
        let (u, s, h) = (
            tape.param(p, ids[0])?,
            tape.param(p, ids[1])?,
            tape.param(p, ids[2])?,
        );
        let y = gru_unfused(tape, u, s, h)?;
        weighted_sum(tape, y, 9)
    };
    compare(&params, fused, unfused);
}

/// The GRU step reads its rows of a taller input part in place: on rows B..2B of a 3B×3H
/// matrix it gives the loss and gradients (rows outside the step get zero) of the
/// unfused step on those rows sliced out.
#[test]
fn gru_cell_on_rows_of_a_taller_input_part_matches_the_unfused_step_on_the_slice() {
    let params = store(&[("u", (3 * B, 3 * H)), ("s", (B, 3 * H)), ("h", (B, H))]);
    let ids: Vec<_> = params.ids().collect();
    let fused = |tape: &mut Tape<f64>, p: &Params<f64>| {
        let (u, s, h) = (
            tape.param(p, ids[0])?,
            tape.param(p, ids[1])?,
            tape.param(p, ids[2])?,
        );
        let y = tape.gru_cell(RowsOf(u, B..2 * B), s, h)?;
        weighted_sum(tape, y, 9)
    };
    let unfused = |tape: &mut Tape<f64>, p: &Params<f64>| {
        let (u, s, h) = (
            tape.param(p, ids[0])?,
            tape.param(p, ids[1])?,
            tape.param(p, ids[2])?,
        );
        let u = tape.slice_rows(u, B..2 * B)?;
        let y = gru_unfused(tape, u, s, h)?;
        weighted_sum(tape, y, 9)
    };
    compare(&params, fused, unfused);
}

/// How [`lstm_steps`] runs: steps over row blocks of `u` (one per step, in that order)
/// and other uses of `u` and `W_h` recorded between two steps.
struct Steps {
    blocks: Vec<usize>,
    /// After which step `u` and `W_h` are used by another op too (never: `usize::MAX`).
    other_use_after: usize,
}

/// `T` LSTM steps from the state `s0` over row blocks of `u` with the recurrent weight
/// `w` and the bias `b`, each step's state weighted into the loss: fused (`lstm_step`)
/// or node by node (slice, product, sums, the unfused step).
fn lstm_steps(
    tape: &mut Tape<f64>,
    (u, w, bias, s0): (Var, Var, Var, Var),
    (b, h): (usize, usize),
    how: &Steps,
    fused: bool,
) -> timetape::Result<Var> {
    let mut state = s0;
    let mut loss = tape.constant(Array2::zeros((1, 1)))?;
    for (t, &k) in how.blocks.iter().enumerate() {
        let rows = k * b..(k + 1) * b;
        state = if fused {
            tape.lstm_step(RowsOf(u, rows), w, Some(bias), state)?
        } else {
            let h_prev = tape.slice_cols(state, 0..h)?;
            let hw = tape.matmul(h_prev, w)?;
            let ut = tape.slice_rows(u, rows)?;
            let a = tape.add(hw, ut)?;
            let ones = tape.constant(Array2::ones((b, 1)))?;
            let bias_rows = tape.matmul(ones, bias)?;
            let a = tape.add(a, bias_rows)?;
            lstm_unfused_h(tape, a, state, h)?
        };
        let term = weighted_sum(tape, state, 20 + t as u64)?;
        loss = tape.add(loss, term)?;
        if t == how.other_use_after {
            for m in [u, w, bias] {
                let extra = weighted_sum(tape, m, 40)?;
                loss = tape.add(loss, extra)?;
            }
        }
    }
    Ok(loss)
}

/// [`lstm_unfused`] for a hidden width `h`.
fn lstm_unfused_h(tape: &mut Tape<f64>, a: Var, state: Var, h: usize) -> timetape::Result<Var> {
    let c_prev = tape.slice_cols(state, h..2 * h)?;
    let gate = |tape: &mut Tape<f64>, k: usize| tape.slice_cols(a, k * h..(k + 1) * h);
    let (i, f, g, o) = (
        gate(tape, 0)?,
        gate(tape, 1)?,
        gate(tape, 2)?,
        gate(tape, 3)?,
    );
    let (i, f, g, o) = (
        tape.sigmoid(i)?,
        tape.sigmoid(f)?,
        tape.tanh(g)?,
        tape.sigmoid(o)?,
    );
    let fc = tape.mul(f, c_prev)?;
    let ig = tape.mul(i, g)?;
    let c = tape.add(fc, ig)?;
    let tc = tape.tanh(c)?;
    let hn = tape.mul(o, tc)?;
    tape.concat_cols(&[hn, c])
}

/// The fused step's program and the node-by-node one on `params` (`u`, `W_h`, `b`,
/// `s0`).
fn lstm_step_programs<'a>(
    params: &Params<f64>,
    (b, h): (usize, usize),
    how: &'a Steps,
) -> [impl Fn(&mut Tape<f64>, &Params<f64>) -> timetape::Result<Var> + 'a; 2] {
    let ids: Vec<_> = params.ids().collect();
    [true, false].map(move |fused| {
        let ids = ids.clone();
        move |tape: &mut Tape<f64>, p: &Params<f64>| {
            let vars = (
                tape.param(p, ids[0])?,
                tape.param(p, ids[1])?,
                tape.param(p, ids[2])?,
                tape.param(p, ids[3])?,
            );
            lstm_steps(tape, vars, (b, h), how, fused)
        }
    })
}

/// `lstm_step` over the steps of a segment (its input part read in place, its bias added
/// in the step, its pre-activations never kept, ā written into ū's rows and `W̄_h` summed
/// in one product over the steps) against finite differences and against the same steps
/// node by node.
#[test]
fn lstm_steps_match_finite_differences_and_the_unfused_steps() {
    let params = store(&[
        ("u", (4 * B, 4 * H)),
        ("w_h", (H, 4 * H)),
        ("b", (1, 4 * H)),
        ("s0", (B, 2 * H)),
    ]);
    let how = Steps {
        blocks: vec![0, 1, 2, 3],
        other_use_after: usize::MAX,
    };
    let [fused, unfused] = lstm_step_programs(&params, (B, H), &how);
    let report = gradcheck(&params, GradcheckOptions::default(), &fused).unwrap();
    assert!(report.passes(FD), "{report}");
    compare(&params, fused, unfused);
}

/// Every order in which the steps can reach `u`'s adjoint gives the gradients of the
/// node-by-node steps: the usual one (the last rows first, each block ending where the
/// one before began: written in place, `W̄_h` deferred), blocks that leave `u`'s last
/// rows out, blocks out of order, a repeated block, and other uses of `u`, `W_h` and `b`
/// recorded between two steps (their contributions arrive while the steps' rows are
/// being written). With H = 40 the products go through the column panels (4H > 128).
#[test]
fn lstm_steps_in_any_order_and_with_other_uses_match_the_unfused_steps() {
    for (b, h) in [(B, H), (5, 40)] {
        let params = store(&[
            ("u", (5 * b, 4 * h)),
            ("w_h", (h, 4 * h)),
            ("b", (1, 4 * h)),
            ("s0", (b, 2 * h)),
        ]);
        let cases = [
            (vec![0, 1, 2, 3, 4], usize::MAX),
            (vec![0, 1, 2, 3, 4], 2),
            (vec![0, 1, 2, 3, 4], 0),
            (vec![0, 1, 2], usize::MAX),
            (vec![1, 0, 3, 4, 2], 3),
            (vec![3, 4, 4, 2], usize::MAX),
        ];
        for (blocks, other_use_after) in cases {
            let how = Steps {
                blocks,
                other_use_after,
            };
            let [fused, unfused] = lstm_step_programs(&params, (b, h), &how);
            compare(&params, fused, unfused);
        }
    }
}

/// A loss built on a tape from the parameters.
type Program<'a> = &'a dyn Fn(&mut Tape<f64>, &Params<f64>) -> timetape::Result<Var>;

/// The loss and every gradient of two programs agree to [`SAME`].
fn compare(
    params: &Params<f64>,
    a: impl Fn(&mut Tape<f64>, &Params<f64>) -> timetape::Result<Var>,
    b: impl Fn(&mut Tape<f64>, &Params<f64>) -> timetape::Result<Var>,
) {
    let run = |f: Program<'_>| {
        let mut tape = Tape::new();
        let l = f(&mut tape, params).unwrap();
        (tape.scalar(l).unwrap(), tape.backward(l).unwrap())
    };
    let ((la, ga), (lb, gb)) = (run(&a), run(&b));
    assert!((la - lb).abs() <= SAME * lb.abs(), "{la} vs {lb}");
    for id in params.ids() {
        let name = params.name(id).unwrap();
        assert_close(
            ga.get(id).unwrap().view(),
            gb.get(id).unwrap().view(),
            SAME,
            name,
        );
    }
}

#[test]
fn gate_shape_errors_name_the_op() {
    let mut tape = Tape::<f64>::new();
    let a = tape.constant(Array2::zeros((2, 8))).unwrap();
    let s = tape.constant(Array2::zeros((2, 3))).unwrap();
    let e = tape.lstm_cell(a, s).unwrap_err();
    assert!(
        matches!(
            e,
            Error::ShapeMismatch {
                op: "lstm_cell",
                ..
            }
        ),
        "{e}"
    );
    let lstm_step_error = |tape: &mut Tape<f64>, u: (usize, usize), rows, (w, b), s| {
        let u = tape.constant(Array2::zeros(u)).unwrap();
        let w = tape.constant(Array2::zeros(w)).unwrap();
        let b = tape.constant(Array2::zeros(b)).unwrap();
        let s = tape.constant(Array2::zeros(s)).unwrap();
        tape.lstm_step(RowsOf(u, rows), w, Some(b), s).unwrap_err()
    };
    // W_h not H×4H; state of odd width; a step of 3 rows for a state of 2; u of the wrong
    // width; a bias of the wrong width.
    for (u, rows, w, s) in [
        ((4, 8), 0..2, ((2, 6), (1, 8)), (2, 4)),
        ((4, 8), 0..2, ((2, 8), (1, 8)), (2, 5)),
        ((4, 8), 0..3, ((2, 8), (1, 8)), (2, 4)),
        ((4, 6), 0..2, ((2, 8), (1, 8)), (2, 4)),
        ((4, 8), 0..2, ((2, 8), (1, 6)), (2, 4)),
    ] {
        let e = lstm_step_error(&mut tape, u, rows, w, s);
        assert!(
            matches!(
                e,
                Error::ShapeMismatch {
                    op: "lstm_step",
                    ..
                }
            ),
            "{e}"
        );
    }
    let e = lstm_step_error(&mut tape, (4, 8), 3..5, ((2, 8), (1, 8)), (2, 4));
    assert!(
        matches!(
            e,
            Error::InvalidArgument {
                op: "lstm_step",
                ..
            }
        ),
        "{e}"
    );
    let u = tape.constant(Array2::zeros((2, 6))).unwrap();
    let h = tape.constant(Array2::zeros((2, 3))).unwrap();
    let e = tape.gru_cell(RowsOf(u, 0..2), u, h).unwrap_err();
    assert!(
        matches!(e, Error::ShapeMismatch { op: "gru_cell", .. }),
        "{e}"
    );
    let e = tape.gru_cell(RowsOf(u, 1..3), u, h).unwrap_err();
    assert!(
        matches!(e, Error::InvalidArgument { op: "gru_cell", .. }),
        "{e}"
    );
}

/// The fused gates run their loops compiled for the widest vectors of the processor
/// (`simd::vectorized`: AVX-512 on the benchmark machine). Rust does not contract or
/// reorder float arithmetic, so the f32 values and adjoints must equal, bit for bit, the
/// same formulas written here as plain scalar loops (the test crate is built for the
/// baseline). H = 37 leaves remainders after every vector width.
#[test]
fn fused_f32_lstm_gates_are_bit_identical_to_scalar_loops() -> timetape::Result<()> {
    use timetape::Scalar;
    let (b, h) = (3, 37);
    let pattern =
        |(r, c): (usize, usize), k: usize| ((r * 31 + c * 17 + k * 7) % 97) as f32 / 8.0 - 6.0;
    let a = Array2::from_shape_fn((b, 4 * h), |rc| pattern(rc, 1));
    let state = Array2::from_shape_fn((b, 2 * h), |rc| pattern(rc, 2) / 3.0);
    let w = Array2::from_shape_fn((b, 2 * h), |rc| pattern(rc, 3) / 4.0);
    let mut tape = Tape::<f32>::new();
    let (av, sv) = (tape.variable(a.view())?, tape.variable(state.view())?);
    let next = tape.lstm_cell(av, sv)?;
    let wv = tape.constant(w.clone())?;
    let weighted = tape.mul(next, wv)?;
    let loss = tape.sum(weighted)?;
    tape.backward(loss)?;
    let (got, got_da) = (
        tape.value(next)?.to_owned(),
        tape.adjoint(av)?.map(|d| d.to_owned()),
    );
    let got_da = got_da.expect("a needs a gradient");
    let one = 1.0f32;
    for r in 0..b {
        for j in 0..h {
            let gate = |k: usize| a[[r, k * h + j]];
            let (i, f) = (gate(0).sigmoid_kernel(), gate(1).sigmoid_kernel());
            let (g, o) = (gate(2).tanh_kernel(), gate(3).sigmoid_kernel());
            let c = f * state[[r, h + j]] + i * g;
            let tc = c.tanh_kernel();
            assert_eq!(got[[r, j]].to_bits(), (o * tc).to_bits(), "h[{r},{j}]");
            assert_eq!(got[[r, h + j]].to_bits(), c.to_bits(), "c[{r},{j}]");
            let (dh, dc) = (w[[r, j]], w[[r, h + j]]);
            let dct = dc + dh * o * (one - tc * tc);
            let want = [
                dct * g * i * (one - i),
                dct * state[[r, h + j]] * f * (one - f),
                dct * i * (one - g * g),
                dh * tc * o * (one - o),
            ];
            for (k, want) in want.into_iter().enumerate() {
                assert!(want.is_finite());
                let got = got_da[[r, k * h + j]];
                assert_eq!(got.to_bits(), want.to_bits(), "ā[{r},{k}·H+{j}]");
            }
        }
    }
    Ok(())
}

/// As the LSTM test above, for the GRU: values and the adjoints of `u`, `s` and `h`
/// equal the same formulas as plain scalar loops exactly (no rounding apart).
#[test]
fn fused_f32_gru_gates_equal_scalar_loops_exactly() -> timetape::Result<()> {
    use timetape::Scalar;
    let (b, h) = (3, 37);
    let pattern =
        |(r, c): (usize, usize), k: usize| ((r * 31 + c * 17 + k * 7) % 97) as f32 / 8.0 - 6.0;
    let u = Array2::from_shape_fn((b, 3 * h), |rc| pattern(rc, 1));
    let s = Array2::from_shape_fn((b, 3 * h), |rc| pattern(rc, 2) / 2.0);
    let h0 = Array2::from_shape_fn((b, h), |rc| pattern(rc, 3) / 6.0);
    let w = Array2::from_shape_fn((b, h), |rc| pattern(rc, 4) / 4.0);
    let mut tape = Tape::<f32>::new();
    let (uv, sv) = (tape.variable(u.view())?, tape.variable(s.view())?);
    let hv = tape.variable(h0.view())?;
    let next = tape.gru_cell(RowsOf(uv, 0..b), sv, hv)?;
    let wv = tape.constant(w.clone())?;
    let weighted = tape.mul(next, wv)?;
    let loss = tape.sum(weighted)?;
    tape.backward(loss)?;
    let got = tape.value(next)?.to_owned();
    let adjoint = |tape: &Tape<f32>, v: Var| -> timetape::Result<Array2<f32>> {
        Ok(tape.adjoint(v)?.expect("needs a gradient").to_owned())
    };
    let (du, ds, dh) = (
        adjoint(&tape, uv)?,
        adjoint(&tape, sv)?,
        adjoint(&tape, hv)?,
    );
    let one = 1.0f32;
    // Equal as IEEE values: bit for bit, except that ū is accumulated onto a zeroed
    // buffer, where 0 + (−0) = +0.
    let same = |got: f32, want: f32, what: &str| {
        assert!(want.is_finite(), "{what}");
        assert!(got == want, "{what}: {got} vs {want}");
    };
    for r in 0..b {
        for j in 0..h {
            let (at, hj) = (|k: usize| k * h + j, h0[[r, j]]);
            let rg = (u[[r, at(0)]] + s[[r, at(0)]]).sigmoid_kernel();
            let z = (u[[r, at(1)]] + s[[r, at(1)]]).sigmoid_kernel();
            let n = (u[[r, at(2)]] + rg * s[[r, at(2)]]).tanh_kernel();
            same(got[[r, j]], n + z * (hj - n), "h′");
            let dy = w[[r, j]];
            let dan = dy * (one - z) * (one - n * n);
            let dar = dan * s[[r, at(2)]] * rg * (one - rg);
            let daz = dy * (hj - n) * z * (one - z);
            for (k, want) in [dar, daz, dan].into_iter().enumerate() {
                same(du[[r, at(k)]], want, "ū");
            }
            for (k, want) in [dar, daz, dan * rg].into_iter().enumerate() {
                same(ds[[r, at(k)]], want, "s̄");
            }
            same(dh[[r, j]], dy * z, "h̄");
        }
    }
    Ok(())
}
