//! The tape in f32: one test per op family. Each graph is built twice from the same
//! inputs — once in f32, once in f64 (the f32 inputs cast exactly to f64) — and the f32
//! gradients (and loss) are compared with the f64 ones, which `ops_gradcheck.rs`
//! validates against finite differences.
//!
//! Tolerance: `max |g32 − g64| / max |g64| ≤ 1e-4` per gradient, and the same for the
//! loss. f32 has unit roundoff u = 2⁻²⁴ ≈ 6e-8. Every gradient entry here is a sum of at
//! most K = 6 terms (the inner dimensions of the matrix products and the class counts
//! are ≤ 6; the reductions spread a single adjoint and sum nothing), each term a product
//! of at most ~8 rounded factors along its path (≤ 8 ops deep), and the f32 `tanh` is a
//! rational approximation within a few ulp (≤ 5 ulp ≈ 6e-7 absolute, see
//! `src/scalar.rs`), the f32 `exp`/`ln` within 1 ulp. Standard error analysis bounds
//! the error of such a sum by (K + depth + a few)·u·Σ|terms| ≈ 20 u ≈ 1.2e-6 of Σ|terms|,
//! and with these random inputs Σ|terms| is within a small factor (≲ 10) of the largest
//! entry, so the expected relative error is ≲ 1e-5 (measured: ≤ 1.1e-6 in every family).
//! 1e-4 leaves a 10× margin over the bound while any f32-specific defect (a wrong
//! kernel, a lost conversion, an op silently computed in the wrong precision) is caught:
//! those give errors of order 1e-3 and more.

mod common;

use common::max_rel_diff;
use ndarray::Array2;
use timetape::{Params, Reduction, Result, Scalar, Tape, Var};

const TOL: f64 = 1e-4;

/// A small deterministic generator (xorshift64*).
struct Gen(u64);

impl Gen {
    fn uniform(&mut self, lo: f64, hi: f64) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let x = self.0.wrapping_mul(0x2545_f491_4f6c_dd1d);
        lo + (hi - lo) * ((x >> 11) as f64 / (1u64 << 53) as f64)
    }

    /// Entries uniform in [lo, hi), rounded to f32 so that both precisions see the very
    /// same inputs.
    fn mat(&mut self, shape: (usize, usize), lo: f64, hi: f64) -> Array2<f64> {
        Array2::from_shape_simple_fn(shape, || self.uniform(lo, hi) as f32 as f64)
    }
}

/// A graph generic over the element type: `params` are registered parameters, `consts`
/// constants, both built from the same f64 (f32-representable) data in both runs.
trait Graph {
    fn build<F: Scalar>(&self, tape: &mut Tape<F>, params: &[Var], consts: &[Var]) -> Result<Var>;
}

/// Loss and gradients of every parameter, converted to f64.
fn run<F: Scalar, G: Graph>(
    graph: &G,
    params: &[Array2<f64>],
    consts: &[Array2<f64>],
) -> (f64, Vec<Array2<f64>>) {
    let cast = |a: &Array2<f64>| a.mapv(F::of);
    let mut store = Params::<F>::new();
    let ids: Vec<_> = params
        .iter()
        .enumerate()
        .map(|(i, p)| store.add(format!("p{i}"), cast(p)).unwrap())
        .collect();
    let mut tape = Tape::<F>::new();
    let pv: Vec<Var> = ids
        .iter()
        .map(|&id| tape.param(&store, id).unwrap())
        .collect();
    let cv: Vec<Var> = consts
        .iter()
        .map(|c| tape.constant(cast(c)).unwrap())
        .collect();
    let loss = graph.build(&mut tape, &pv, &cv).unwrap();
    let grads = tape.backward(loss).unwrap();
    let gs = ids
        .iter()
        .map(|&id| {
            grads
                .get(id)
                .unwrap_or_else(|_| panic!("no gradient for parameter {}", id.index()))
                .mapv(Scalar::as_f64)
        })
        .collect();
    (tape.scalar(loss).unwrap().as_f64(), gs)
}

/// `max |a − b| / max |b|`, `+∞` on a non-finite entry on either side
/// (`common::max_rel_diff`).
fn rel_err(a: &Array2<f64>, b: &Array2<f64>) -> f64 {
    assert_eq!(a.dim(), b.dim());
    assert!(
        b.iter().any(|&x| x != 0.0),
        "a reference gradient is all zeros: the test checks nothing"
    );
    max_rel_diff(a.view(), b.view())
}

/// Runs the graph in both precisions and compares; returns the worst relative error.
fn compare<G: Graph>(graph: &G, params: &[Array2<f64>], consts: &[Array2<f64>]) -> f64 {
    let (l32, g32) = run::<f32, G>(graph, params, consts);
    let (l64, g64) = run::<f64, G>(graph, params, consts);
    let mut worst = (l32 - l64).abs() / l64.abs().max(1e-30);
    assert!(worst <= TOL, "loss: f32 {l32} vs f64 {l64}");
    for (i, (a, b)) in g32.iter().zip(&g64).enumerate() {
        let e = rel_err(a, b);
        assert!(
            e <= TOL,
            "parameter {i}: relative error {e:e} > {TOL:e}\nf32 {a}\nf64 {b}"
        );
        worst = worst.max(e);
    }
    worst
}

/// `Σ R ⊙ y`.
fn readout<F: Scalar>(tape: &mut Tape<F>, y: Var, r: Var) -> Result<Var> {
    let p = tape.mul(y, r)?;
    tape.sum(p)
}

fn fs<F: Scalar>(xs: &[f64]) -> Vec<F> {
    xs.iter().map(|&x| F::of(x)).collect()
}

// ---------------------------------------------------------------------------------------

struct Linalg;

impl Graph for Linalg {
    fn build<F: Scalar>(&self, tape: &mut Tape<F>, p: &[Var], c: &[Var]) -> Result<Var> {
        // Σ R1 ⊙ (A B) + Σ R3 ⊙ (Aᵀ C)
        let ab = tape.matmul(p[0], p[1])?; // 5×6 · 6×4
        let l1 = readout(tape, ab, c[0])?;
        let at = tape.transpose(p[0])?; // 6×5
        let atc = tape.matmul(at, c[1])?; // 6×5 · 5×3
        let l2 = readout(tape, atc, c[2])?;
        tape.add(l1, l2)
    }
}

#[test]
fn f32_linalg_gradients_match_f64() {
    let mut g = Gen(1);
    let params = [g.mat((5, 6), -1.0, 1.0), g.mat((6, 4), -1.0, 1.0)];
    let consts = [
        g.mat((5, 4), -1.0, 1.0),
        g.mat((5, 3), -1.0, 1.0),
        g.mat((6, 3), -1.0, 1.0),
    ];
    compare(&Linalg, &params, &consts);
}

struct Elementwise;

impl Graph for Elementwise {
    fn build<F: Scalar>(&self, tape: &mut Tape<F>, p: &[Var], c: &[Var]) -> Result<Var> {
        // a (4×5), row (1×5): (a + row) ⊙ (row − a) − 0.75 a, negated, read out
        let s = tape.add(p[0], p[1])?;
        let d = tape.sub(p[1], p[0])?;
        let m = tape.mul(s, d)?;
        let k = tape.scale(p[0], F::of(0.75))?;
        let y = tape.sub(m, k)?;
        let y = tape.neg(y)?;
        let y = tape.mul(y, p[1])?; // broadcast on the right
        readout(tape, y, c[0])
    }
}

#[test]
fn f32_elementwise_gradients_match_f64() {
    let mut g = Gen(2);
    let params = [g.mat((4, 5), -1.5, 1.5), g.mat((1, 5), -1.5, 1.5)];
    let consts = [g.mat((4, 5), -1.0, 1.0)];
    compare(&Elementwise, &params, &consts);
}

struct Activations;

impl Graph for Activations {
    fn build<F: Scalar>(&self, tape: &mut Tape<F>, p: &[Var], c: &[Var]) -> Result<Var> {
        // x 4×6 (entries ±[0.1, 2.5]: relu away from its kink), q 4×6 positive
        let t = tape.tanh(p[0])?;
        let r = tape.relu(p[0])?;
        let s = tape.sigmoid(p[0])?;
        let e = tape.exp(p[0])?;
        let l = tape.log(p[1])?;
        let mut total = readout(tape, t, c[0])?;
        for (y, ri) in [(r, c[1]), (s, c[2]), (e, c[3]), (l, c[4])] {
            let li = readout(tape, y, ri)?;
            total = tape.add(total, li)?;
        }
        // and a chain through all of them
        let chain = tape.mul(t, s)?;
        let chain = tape.add(chain, r)?;
        let chain = tape.tanh(chain)?;
        let chain = tape.mul(chain, l)?;
        let lc = readout(tape, chain, c[0])?;
        tape.add(total, lc)
    }
}

#[test]
fn f32_activation_gradients_match_f64() {
    let mut g = Gen(3);
    let x = Array2::from_shape_simple_fn((4, 6), || {
        let m = g.uniform(0.1, 2.5);
        (if g.uniform(0.0, 1.0) < 0.5 { -m } else { m }) as f32 as f64
    });
    let params = [x, g.mat((4, 6), 0.2, 3.0)];
    let consts: Vec<_> = (0..5).map(|_| g.mat((4, 6), -1.0, 1.0)).collect();
    compare(&Activations, &params, &consts);
}

struct Reductions;

impl Graph for Reductions {
    fn build<F: Scalar>(&self, tape: &mut Tape<F>, p: &[Var], c: &[Var]) -> Result<Var> {
        // sum(x ⊙ c) · mean(x) + mean(tanh x): the reductions' adjoints are not 1
        let xc = tape.mul(p[0], c[0])?;
        let s = tape.sum(xc)?;
        let m = tape.mean(p[0])?;
        let sm = tape.mul(s, m)?;
        let t = tape.tanh(p[0])?;
        let mt = tape.mean(t)?;
        tape.add(sm, mt)
    }
}

#[test]
fn f32_reduction_gradients_match_f64() {
    let mut g = Gen(4);
    let params = [g.mat((6, 6), -1.0, 1.5)];
    let consts = [g.mat((6, 6), -1.0, 1.0)];
    compare(&Reductions, &params, &consts);
}

struct ConcatSlice;

impl Graph for ConcatSlice {
    fn build<F: Scalar>(&self, tape: &mut Tape<F>, p: &[Var], c: &[Var]) -> Result<Var> {
        // a 3×2, b 3×4 → [a b a] 3×8 → cols 1..7 → stacked with itself 6×6 → rows 2..5
        let cc = tape.concat_cols(&[p[0], p[1], p[0]])?;
        let sc = tape.slice_cols(cc, 1..7)?;
        let t = tape.tanh(sc)?;
        let cr = tape.concat_rows(&[t, sc])?;
        let sr = tape.slice_rows(cr, 2..5)?;
        readout(tape, sr, c[0])
    }
}

#[test]
fn f32_concat_and_slice_gradients_match_f64() {
    let mut g = Gen(5);
    let params = [g.mat((3, 2), -1.0, 1.0), g.mat((3, 4), -1.0, 1.0)];
    let consts = [g.mat((3, 6), -1.0, 1.0)];
    compare(&ConcatSlice, &params, &consts);
}

struct Losses(Reduction);

impl Graph for Losses {
    fn build<F: Scalar>(&self, tape: &mut Tape<F>, p: &[Var], c: &[Var]) -> Result<Var> {
        let red = self.0;
        // logits 5×4, labels, row weights (dyadic: exact in both precisions)
        let w5 = fs::<F>(&[0.5, 1.0, 1.5, 0.25, 2.0]);
        let ce = tape.softmax_cross_entropy(p[0], &[0, 3, 1, 1, 2], Some(&w5), red)?;
        let ce2 = tape.softmax_cross_entropy(p[0], &[2, 2, 0, 3, 1], None, red)?;
        // bce of logits z (5×4) against targets t (a parameter in [0.05, 0.95])
        let bce = tape.bce_with_logits(p[0], p[1], red)?;
        // squared error of tanh(z) against c, with and without weights
        let th = tape.tanh(p[0])?;
        let se = tape.squared_error(th, c[0], Some(&w5), red)?;
        let se2 = tape.squared_error(p[1], th, None, red)?;
        let mut total = ce;
        for l in [ce2, bce, se, se2] {
            total = tape.add(total, l)?;
        }
        Ok(total)
    }
}

#[test]
fn f32_loss_gradients_match_f64() {
    let mut g = Gen(6);
    let params = [g.mat((5, 4), -3.0, 3.0), g.mat((5, 4), 0.05, 0.95)];
    let consts = [g.mat((5, 4), -1.0, 1.0)];
    for red in [Reduction::Mean, Reduction::Sum] {
        compare(&Losses(red), &params, &consts);
    }
}

struct Control;

impl Graph for Control {
    fn build<F: Scalar>(&self, tape: &mut Tape<F>, p: &[Var], c: &[Var]) -> Result<Var> {
        // h = tanh(x W); y = scale_grad(h, 0.25) ⊙ detach(h) + scale_grad(h, 3)
        let h = tape.matmul(c[0], p[0])?;
        let h = tape.tanh(h)?;
        let a = tape.scale_grad(h, F::of(0.25))?;
        let d = tape.detach(h)?;
        let y = tape.mul(a, d)?;
        let b = tape.scale_grad(h, F::of(3.0))?;
        let y = tape.add(y, b)?;
        readout(tape, y, c[1])
    }
}

#[test]
fn f32_control_gradients_match_f64() {
    let mut g = Gen(7);
    let params = [g.mat((5, 4), -1.0, 1.0)];
    let consts = [g.mat((3, 5), -1.0, 1.0), g.mat((3, 4), -1.0, 1.0)];
    compare(&Control, &params, &consts);
}

/// The fused affine op applies φ and, in backward, `ȳ ⊙ φ′(y)` in loops compiled for the
/// processor's widest vectors (AVX-512 on the benchmark machine). With an identity
/// weight and no addend the product is exact, so in f32 the values must equal
/// `tanh_kernel` of the inputs bit for bit, and the input adjoints `ȳ (1 − y²)`, as the
/// same scalar loop written here (the test crate is built for the baseline) gives them.
/// 37 columns leave remainders after every vector width.
#[test]
fn affine_tanh_in_f32_is_bit_identical_to_scalar_loops() -> Result<()> {
    let (b, n) = (3, 37);
    let x = Array2::from_shape_fn((b, n), |(r, c)| ((r * 31 + c * 17) % 97) as f32 / 8.0 - 6.0);
    let w = Array2::from_shape_fn((n, n), |(r, c)| if r == c { 1.0f32 } else { 0.0 });
    let weights = Array2::from_shape_fn((b, n), |(r, c)| ((r * 7 + c * 5) % 13) as f32 / 4.0);
    let mut tape = Tape::<f32>::new();
    let (xv, wv) = (tape.variable(x.view())?, tape.constant(w)?);
    let y = tape.affine(xv, wv, None, timetape::Activation::Tanh)?;
    let c = tape.constant(weights.clone())?;
    let weighted = tape.mul(y, c)?;
    let loss = tape.sum(weighted)?;
    tape.backward(loss)?;
    let got_y = tape.value(y)?.to_owned();
    let got_dx = tape.adjoint(xv)?.expect("x needs a gradient").to_owned();
    for ((r, col), &xi) in x.indexed_iter() {
        let want_y = xi.tanh_kernel();
        assert!(want_y.is_finite());
        assert_eq!(got_y[[r, col]].to_bits(), want_y.to_bits(), "y[{r},{col}]");
        let want_dx = weights[[r, col]] * (1.0 - want_y * want_y);
        assert_eq!(
            got_dx[[r, col]].to_bits(),
            want_dx.to_bits(),
            "x̄[{r},{col}]"
        );
    }
    Ok(())
}
