//! Exact tests of the tape's gradient plumbing: detach, scale_grad, accumulation over
//! repeated uses, seeded reverse passes, and buffer reuse across `clear`.
//!
//! Where a result is compared bit for bit, the inputs are chosen so that the compared
//! computations are exact in f64: dyadic values (small multiples of 1/8), whose
//! products and sums are representable, or a power-of-two factor, which scales every
//! rounded result exactly (barring overflow/underflow, far away here). Any tolerance
//! used is justified where it appears.

mod common;

use common::{assert_differs, max_rel_diff};
use ndarray::{array, Array2};
use timetape::{Grads, ParamId, Params, Reduction, Result, Tape, Var};

/// A small deterministic generator (xorshift64*): tests must be reproducible.
struct Gen(u64);

impl Gen {
    fn next_f64(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let x = self.0.wrapping_mul(0x2545_f491_4f6c_dd1d);
        (x >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in [lo, hi).
    fn uniform(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.next_f64()
    }

    fn mat(&mut self, shape: (usize, usize), lo: f64, hi: f64) -> Array2<f64> {
        Array2::from_shape_simple_fn(shape, || self.uniform(lo, hi))
    }

    /// Dyadic entries: multiples of 1/8 in [−2, 2].
    fn dyadic(&mut self, shape: (usize, usize)) -> Array2<f64> {
        Array2::from_shape_simple_fn(shape, || (self.uniform(-16.0, 17.0).floor()) / 8.0)
    }
}

fn bits(a: &Array2<f64>) -> Vec<u64> {
    a.iter().map(|x| x.to_bits()).collect()
}

/// Gradient of one parameter (panics if the loss did not reach it).
fn grad(grads: &Grads<f64>, id: ParamId) -> Array2<f64> {
    grads
        .get(id)
        .expect("no gradient for a parameter the loss uses")
        .clone()
}

/// ‖a − b‖_max / ‖b‖_max, `+∞` on a non-finite entry on either side
/// (`common::max_rel_diff`).
fn rel_diff(a: &Array2<f64>, b: &Array2<f64>) -> f64 {
    assert_eq!(a.dim(), b.dim());
    max_rel_diff(a.view(), b.view())
}

// ---------------------------------------------------------------------------------------
// detach

#[test]
fn detach_blocks_the_gradient_but_keeps_its_own_adjoint() {
    let mut g = Gen(1);
    let mut params = Params::<f64>::new();
    let w = params.add("w", g.mat((3, 4), -1.0, 1.0)).unwrap();
    let r = g.mat((3, 4), -1.0, 1.0);
    let mut tape = Tape::new();
    let wv = tape.param(&params, w).unwrap();
    let d = tape.detach(wv).unwrap();
    let rv = tape.constant(r.clone()).unwrap();
    let y = tape.mul(d, rv).unwrap();
    let loss = tape.sum(y).unwrap();
    let grads = tape.backward(loss).unwrap();

    // The parameter is reached only through detach: no gradient (or an all-zero one).
    if let Ok(gw) = grads.get(w) {
        assert!(
            gw.iter().all(|&x| x == 0.0),
            "gradient leaked through detach: {gw}"
        );
    }
    assert!(tape.adjoint(wv).unwrap().is_none());
    // The detach node's own adjoint is ∂L/∂d = R exactly.
    assert_eq!(tape.adjoint(d).unwrap().unwrap(), r);
    // Its value is the value of w.
    assert_eq!(tape.value(d).unwrap(), params.get(w).unwrap());
}

#[test]
fn detach_leaves_the_other_paths_of_a_parameter_intact() {
    // y = detach(w) ⊙ w ⊙ r: only the second factor carries gradient, so ∂L/∂w = w ⊙ r,
    // not 2 w ⊙ r. Dyadic values make every product exact.
    let mut g = Gen(2);
    let mut params = Params::<f64>::new();
    let wval = g.dyadic((2, 5));
    let r = g.dyadic((2, 5));
    let w = params.add("w", wval.clone()).unwrap();
    let mut tape = Tape::new();
    let wv = tape.param(&params, w).unwrap();
    let d = tape.detach(wv).unwrap();
    let y = tape.mul(d, wv).unwrap();
    let rv = tape.constant(r.clone()).unwrap();
    let y = tape.mul(y, rv).unwrap();
    let loss = tape.sum(y).unwrap();
    let grads = tape.backward(loss).unwrap();
    assert_eq!(grad(&grads, w), &wval * &r);
    assert_eq!(tape.adjoint(d).unwrap().unwrap(), &wval * &r);
}

#[test]
fn detach_of_a_variable_gives_the_variable_no_adjoint() {
    let mut tape = Tape::<f64>::new();
    let h = tape.variable(array![[1.0, -2.0]].view()).unwrap();
    let d = tape.detach(h).unwrap();
    let y = tape.scale(d, 3.0).unwrap();
    let loss = tape.sum(y).unwrap();
    let grads = tape.backward(loss).unwrap();
    assert_eq!(grads.iter().count(), 0);
    assert!(tape.adjoint(h).unwrap().is_none());
    assert_eq!(tape.adjoint(d).unwrap().unwrap(), array![[3.0, 3.0]]);
}

// ---------------------------------------------------------------------------------------
// scale_grad

/// L = Σ R ⊙ (scale_grad(tanh(x W1), c) W2) (scale_grad left out if `c` is None).
/// Returns (loss, ∂L/∂W1, ∂L/∂W2, ∂L/∂x).
fn scale_grad_graph(c: Option<f64>) -> (f64, Array2<f64>, Array2<f64>, Array2<f64>) {
    let mut g = Gen(3);
    let mut params = Params::<f64>::new();
    let w1 = params.add("W1", g.mat((4, 5), -1.0, 1.0)).unwrap();
    let w2 = params.add("W2", g.mat((5, 3), -1.0, 1.0)).unwrap();
    let x = g.mat((6, 4), -1.0, 1.0);
    let r = g.mat((6, 3), -1.0, 1.0);
    let mut tape = Tape::new();
    let xv = tape.variable(x.view()).unwrap();
    let w1v = tape.param(&params, w1).unwrap();
    let w2v = tape.param(&params, w2).unwrap();
    let h = tape.matmul(xv, w1v).unwrap();
    let mut h = tape.tanh(h).unwrap();
    if let Some(c) = c {
        h = tape.scale_grad(h, c).unwrap();
    }
    let y = tape.matmul(h, w2v).unwrap();
    let rv = tape.constant(r).unwrap();
    let y = tape.mul(y, rv).unwrap();
    let loss = tape.sum(y).unwrap();
    let grads = tape.backward(loss).unwrap();
    let gx = tape.adjoint(xv).unwrap().unwrap().to_owned();
    (
        tape.scalar(loss).unwrap(),
        grad(&grads, w1),
        grad(&grads, w2),
        gx,
    )
}

#[test]
fn scale_grad_by_a_power_of_two_scales_the_upstream_gradient_exactly() {
    let (l1, g1, g2, gx) = scale_grad_graph(None);
    for c in [0.25, 8.0, -2.0] {
        let (lc, g1c, g2c, gxc) = scale_grad_graph(Some(c));
        // Forward: scale_grad is the identity.
        assert_eq!(lc.to_bits(), l1.to_bits());
        // Downstream of the cut nothing changes.
        assert_eq!(bits(&g2c), bits(&g2), "c = {c}");
        // Upstream every adjoint is multiplied by c. With c a power of two every rounded
        // product and sum of the backward pass scales exactly, so the gradient is c times
        // the unscaled one to the last bit.
        assert_eq!(bits(&g1c), bits(&g1.mapv(|v| c * v)), "c = {c}");
        assert_eq!(bits(&gxc), bits(&gx.mapv(|v| c * v)), "c = {c}");
    }
}

#[test]
fn scale_grad_by_a_non_power_of_two_scales_the_upstream_gradient() {
    let (_, g1, g2, gx) = scale_grad_graph(None);
    let c = 1.0 / 0.3;
    let (_, g1c, g2c, gxc) = scale_grad_graph(Some(c));
    assert_eq!(bits(&g2c), bits(&g2));
    // Now c·ḡ is rounded before it goes through tanh′ and a 6- or 5-term matrix
    // product, while the reference rounds c·(result) once: the two differ by a few
    // roundings of relative size u = 1.1e-16 per term, and the terms of these sums do
    // not cancel much, so 1e-15 of the largest entry bounds it (measured: ≈ 2e-16).
    let tol = 1e-15;
    let d1 = rel_diff(&g1c, &g1.mapv(|v| c * v));
    let dx = rel_diff(&gxc, &gx.mapv(|v| c * v));
    assert!(d1 <= tol, "W1: relative difference {d1:e}");
    assert!(dx <= tol, "x: relative difference {dx:e}");
    // and it is not the unscaled gradient
    assert_differs(g1c.view(), g1.view(), 1.0, "W1 scaled vs unscaled");
}

#[test]
fn scale_grad_by_zero_cuts_the_gradient_and_keeps_the_value() {
    let (l1, _, _, _) = scale_grad_graph(None);
    let (l0, g10, _, gx0) = scale_grad_graph(Some(0.0));
    assert_eq!(l0.to_bits(), l1.to_bits());
    assert!(g10.iter().all(|&v| v == 0.0));
    assert!(gx0.iter().all(|&v| v == 0.0));
}

// ---------------------------------------------------------------------------------------
// accumulation over repeated uses

/// The (x_j, R_j) of the uses.
type Uses = Vec<(Array2<f64>, Array2<f64>)>;

/// Inputs of the k-use graph: W and (x_j, R_j) for j < k, all dyadic so that every
/// product and sum of the gradient, in any order, is exact.
fn uses(k: usize) -> (Array2<f64>, Uses) {
    let mut g = Gen(4);
    let w = g.dyadic((3, 4));
    let xs = (0..k)
        .map(|_| (g.dyadic((2, 3)), g.dyadic((2, 4))))
        .collect();
    (w, xs)
}

/// ∂L/∂W of L = Σ_j [Σ R_j ⊙ (x_j W) + Σ (j+1)/4 · W]: use j contributes
/// x_jᵀ R_j (through matmul) + (j+1)/4 (through scale and sum). `only = Some(j)` keeps
/// use j alone; `register_each` registers the parameter anew for every use, otherwise
/// one Var is used by every term.
fn k_uses_gradient(k: usize, only: Option<usize>, register_each: bool) -> Array2<f64> {
    let (w0, xs) = uses(k);
    let mut params = Params::<f64>::new();
    let w = params.add("w", w0).unwrap();
    let mut tape = Tape::new();
    let shared = tape.param(&params, w).unwrap();
    let mut loss: Option<Var> = None;
    for (j, (x, r)) in xs.iter().enumerate() {
        if only.is_some_and(|o| o != j) {
            continue;
        }
        let wv = if register_each {
            tape.param(&params, w).unwrap()
        } else {
            shared
        };
        let xv = tape.constant(x.clone()).unwrap();
        let y = tape.matmul(xv, wv).unwrap();
        let rv = tape.constant(r.clone()).unwrap();
        let y = tape.mul(y, rv).unwrap();
        // a second, elementwise use in the same term: Σ (j+1)/4 · W
        let s = tape.scale(wv, (j + 1) as f64 / 4.0).unwrap();
        let s = tape.sum(s).unwrap();
        let term = tape.sum(y).unwrap();
        let term = tape.add(term, s).unwrap();
        loss = Some(match loss {
            None => term,
            Some(l) => tape.add(l, term).unwrap(),
        });
    }
    let grads = tape.backward(loss.unwrap()).unwrap();
    grad(&grads, w)
}

#[test]
fn a_parameter_used_k_times_accumulates_exactly_the_sum_of_its_contributions() {
    for k in 1..=5 {
        let (_, xs) = uses(k);
        // by hand: Σ_j x_jᵀ R_j + (j+1)/4
        let mut want = Array2::<f64>::zeros((3, 4));
        for (j, (x, r)) in xs.iter().enumerate() {
            want = want + x.t().dot(r) + (j + 1) as f64 / 4.0;
        }
        // the sum of the k single-use gradients, each from its own tape
        let mut sum_single = Array2::<f64>::zeros((3, 4));
        for j in 0..k {
            sum_single = sum_single + k_uses_gradient(k, Some(j), false);
        }
        let shared = k_uses_gradient(k, None, false);
        let registered = k_uses_gradient(k, None, true);
        assert_eq!(sum_single, want, "k = {k}");
        assert_eq!(shared, want, "one Var used {k} times");
        assert_eq!(registered, want, "parameter registered {k} times");
    }
}

#[test]
fn gradients_of_a_param_registered_twice_in_one_op_add_up() {
    // w ⊙ w through two registrations: 2 w.
    let mut params = Params::<f64>::new();
    let w = params.add("w", array![[1.5, -0.25, 3.0]]).unwrap();
    let mut tape = Tape::new();
    let a = tape.param(&params, w).unwrap();
    let b = tape.param(&params, w).unwrap();
    let y = tape.mul(a, b).unwrap();
    let loss = tape.sum(y).unwrap();
    let grads = tape.backward(loss).unwrap();
    assert_eq!(grad(&grads, w), array![[3.0, -0.5, 6.0]]);
    assert_eq!(grads.iter().count(), 1);
}

// ---------------------------------------------------------------------------------------
// backward_with

#[test]
fn backward_with_a_unit_seed_on_a_scalar_equals_backward() {
    let build = |tape: &mut Tape<f64>, params: &Params<f64>| -> Result<(Var, Var)> {
        let mut g = Gen(5);
        let h = tape.variable(g.mat((3, 4), -1.0, 1.0).view())?;
        let wv = tape.param(params, params.id("W").unwrap())?;
        let y = tape.matmul(h, wv)?;
        let y = tape.tanh(y)?;
        let loss = tape.softmax_cross_entropy(y, &[0, 2, 1], None, Reduction::Mean)?;
        Ok((h, loss))
    };
    let mut params = Params::<f64>::new();
    params.add("W", Gen(6).mat((4, 3), -1.0, 1.0)).unwrap();
    let mut t1 = Tape::new();
    let (h1, l1) = build(&mut t1, &params).unwrap();
    let g1 = t1.backward(l1).unwrap();
    let mut t2 = Tape::new();
    let (h2, l2) = build(&mut t2, &params).unwrap();
    let g2 = t2.backward_with(&[(l2, array![[1.0]])]).unwrap();
    assert_eq!(g1, g2);
    let (a1, a2) = (
        t1.adjoint(h1).unwrap().unwrap(),
        t2.adjoint(h2).unwrap().unwrap(),
    );
    assert_eq!(bits(&a1.to_owned()), bits(&a2.to_owned()));
    assert_eq!(g1.iter().count(), 1);
}

#[test]
fn backward_with_on_a_matrix_output_is_the_vector_jacobian_product() {
    // y = h W + b, seed S:
    //   W̄ = hᵀ S, b̄ = column sums of S, h̄ = S Wᵀ (worked out by hand below).
    let mut params = Params::<f64>::new();
    let w = params
        .add("W", array![[1.0, 0.0, 2.0], [-1.0, 1.0, 0.0]])
        .unwrap();
    let b = params.add("b", array![[0.5, 0.0, -0.5]]).unwrap();
    let mut tape = Tape::new();
    let h = tape
        .variable(array![[1.0, 2.0], [3.0, -1.0]].view())
        .unwrap();
    let wv = tape.param(&params, w).unwrap();
    let bv = tape.param(&params, b).unwrap();
    let y = tape.matmul(h, wv).unwrap();
    let y = tape.add(y, bv).unwrap();
    let s = array![[1.0, 0.0, 2.0], [0.0, -1.0, 1.0]];
    let grads = tape.backward_with(&[(y, s.clone())]).unwrap();
    // hᵀ S = [[1, 3], [2, −1]] S
    assert_eq!(grad(&grads, w), array![[1.0, -3.0, 5.0], [2.0, 1.0, 3.0]]);
    assert_eq!(grad(&grads, b), array![[1.0, -1.0, 3.0]]);
    // S Wᵀ, Wᵀ = [[1, −1], [0, 1], [2, 0]]
    assert_eq!(
        tape.adjoint(h).unwrap().unwrap(),
        array![[5.0, -1.0], [2.0, -1.0]]
    );
    assert_eq!(tape.adjoint(y).unwrap().unwrap(), s);
}

#[test]
fn backward_with_through_tanh_matches_the_hand_derived_product() {
    // y = tanh(h W), seed S: D = S ⊙ (1 − y²), W̄ = hᵀ D, h̄ = D Wᵀ.
    let mut g = Gen(7);
    let (hv, wval, s) = (
        g.mat((4, 3), -1.0, 1.0),
        g.mat((3, 5), -1.0, 1.0),
        g.mat((4, 5), -1.0, 1.0),
    );
    let mut params = Params::<f64>::new();
    let w = params.add("W", wval.clone()).unwrap();
    let mut tape = Tape::new();
    let h = tape.variable(hv.view()).unwrap();
    let wvar = tape.param(&params, w).unwrap();
    let y = tape.matmul(h, wvar).unwrap();
    let y = tape.tanh(y).unwrap();
    let grads = tape.backward_with(&[(y, s.clone())]).unwrap();
    let yv = hv.dot(&wval).mapv(f64::tanh);
    let d = &s * &yv.mapv(|y| 1.0 - y * y);
    // The same operations in the same order up to the summation order inside the 3- to
    // 5-term dot products: a few ulp, so 1e-14 relative to the largest entry.
    assert!(rel_diff(&grad(&grads, w), &hv.t().dot(&d)) <= 1e-14);
    assert!(
        rel_diff(
            &tape.adjoint(h).unwrap().unwrap().to_owned(),
            &d.dot(&wval.t())
        ) <= 1e-14
    );
}

#[test]
fn backward_with_adds_seeds_on_the_same_node_and_on_different_nodes() {
    let mut g = Gen(8);
    let (hv, wval) = (g.dyadic((2, 3)), g.dyadic((3, 4)));
    let (s1, s2, s3) = (g.dyadic((2, 4)), g.dyadic((2, 4)), g.dyadic((2, 3)));
    let mut params = Params::<f64>::new();
    let w = params.add("W", wval).unwrap();
    let run = |seeds: &dyn Fn(Var, Var) -> Vec<(Var, Array2<f64>)>| {
        let mut tape = Tape::new();
        let h = tape.variable(hv.view()).unwrap();
        let wv = tape.param(&params, w).unwrap();
        let y = tape.matmul(h, wv).unwrap();
        let z = tape.neg(h).unwrap();
        let grads = tape.backward_with(&seeds(y, z)).unwrap();
        (
            grad(&grads, w),
            tape.adjoint(h).unwrap().unwrap().to_owned(),
        )
    };
    // two seeds on y add up (dyadic: exact)
    let split = run(&|y, _| vec![(y, s1.clone()), (y, s2.clone())]);
    let joined = run(&|y, _| vec![(y, &s1 + &s2)]);
    assert_eq!(split, joined);
    // seeds on two nodes: the sum of the two separate products
    let both = run(&|y, z| vec![(y, s1.clone()), (z, s3.clone())]);
    let only_y = run(&|y, _| vec![(y, s1.clone())]);
    assert_eq!(both.0, only_y.0);
    assert_eq!(both.1, &only_y.1 - &s3);
}

// ---------------------------------------------------------------------------------------
// clear and buffer reuse

/// Everything a pass produces, as bits.
#[derive(Debug, PartialEq)]
struct Outcome {
    loss: u64,
    grads: Vec<Vec<u64>>,
    adjoints: Vec<Vec<u64>>,
}

/// One graph that uses every op, on shapes (b, n, m, c) and values from `seed`.
fn every_op(tape: &mut Tape<f64>, b: usize, n: usize, m: usize, c: usize, seed: u64) -> Outcome {
    let mut g = Gen(seed);
    let mut params = Params::<f64>::new();
    let w = params.add("W", g.mat((n, m), -1.0, 1.0)).unwrap();
    let bias = params.add("b", g.mat((1, m), -1.0, 1.0)).unwrap();
    let v = params.add("V", g.mat((2 * m - 1, c), -1.0, 1.0)).unwrap();
    let rows = 2 * b - 1;
    let labels: Vec<usize> = (0..rows).map(|i| (i * 7 + seed as usize) % c).collect();
    let weights: Vec<f64> = (0..rows).map(|_| g.uniform(0.5, 1.5)).collect();
    let se_weights: Vec<f64> = (0..m).map(|_| g.uniform(0.5, 1.5)).collect();

    let x = tape.constant(g.mat((b, n), -1.0, 1.0)).unwrap();
    let hv = tape.variable(g.mat((b, n), -1.0, 1.0).view()).unwrap();
    let wv = tape.param(&params, w).unwrap();
    let bv = tape.param(&params, bias).unwrap();
    let vv = tape.param(&params, v).unwrap();

    let a1 = tape.matmul(x, wv).unwrap();
    let a2 = tape.matmul(hv, wv).unwrap();
    let a = tape.add(a1, a2).unwrap();
    let a = tape.add(a, bv).unwrap(); // row broadcast on the right
    let h1 = tape.tanh(a).unwrap();
    let h2 = tape.relu(a).unwrap();
    let h3 = tape.sigmoid(a).unwrap();
    let g1 = tape.mul(h1, h3).unwrap();
    let g2 = tape.sub(bv, h2).unwrap(); // row broadcast on the left
    let cc = tape.concat_cols(&[g1, g2, hv]).unwrap(); // b × (2m + n)
    let sc = tape.slice_cols(cc, 1..2 * m).unwrap(); // b × (2m − 1)
    let cr = tape.concat_rows(&[sc, sc]).unwrap(); // 2b × (2m − 1)
    let sr = tape.slice_rows(cr, 1..2 * b).unwrap(); // (2b − 1) × (2m − 1)
    let half = tape.scale(sr, 0.5).unwrap();
    let ex = tape.exp(half).unwrap();
    let lg = tape.log(ex).unwrap();
    let sg = tape.scale_grad(lg, 0.75).unwrap();
    let logits = tape.matmul(sg, vv).unwrap(); // (2b − 1) × c
    let ce = tape
        .softmax_cross_entropy(logits, &labels, Some(&weights), Reduction::Mean)
        .unwrap();
    let dt = tape.detach(h1).unwrap();
    let ng = tape.neg(g1).unwrap();
    let ng = tape.mul(ng, dt).unwrap();
    // a variable, so that bce's target rule runs too
    let targets = tape.variable(g.mat((b, m), 0.0, 1.0).view()).unwrap();
    let bce = tape.bce_with_logits(ng, targets, Reduction::Sum).unwrap();
    let tr = tape.transpose(h1).unwrap(); // m × b
    let tt = tape.constant(g.mat((m, b), -1.0, 1.0)).unwrap();
    let se = tape
        .squared_error(tr, tt, Some(&se_weights), Reduction::Mean)
        .unwrap();
    let m1 = tape.mean(half).unwrap(); // (not of ex: log must be ex's only consumer)
    let s1 = tape.sum(ng).unwrap();
    let mut loss = ce;
    for t in [bce, se, m1, s1] {
        loss = tape.add(loss, t).unwrap();
    }
    let grads = tape.backward(loss).unwrap();
    Outcome {
        loss: tape.scalar(loss).unwrap().to_bits(),
        grads: [w, bias, v]
            .iter()
            .map(|&id| bits(&grad(&grads, id)))
            .collect(),
        adjoints: [hv, a, cc, sr, ex, dt, logits, targets]
            .iter()
            .map(|&n| bits(&tape.adjoint(n).unwrap().unwrap().to_owned()))
            .collect(),
    }
}

#[test]
fn clear_and_rebuild_gives_bit_identical_gradients() {
    let shapes = [
        (3, 4, 5, 3, 11),
        (2, 2, 2, 2, 12),
        (5, 1, 3, 4, 13),
        (3, 4, 5, 3, 14), // A's shapes with other values: every recycled buffer is dirty
        (1, 6, 1, 1, 15),
    ];
    let fresh: Vec<Outcome> = shapes
        .iter()
        .map(|&(b, n, m, c, s)| every_op(&mut Tape::new(), b, n, m, c, s))
        .collect();
    let mut tape = Tape::new();
    for round in 0..3 {
        for (i, &(b, n, m, c, s)) in shapes.iter().enumerate() {
            tape.clear();
            let out = every_op(&mut tape, b, n, m, c, s);
            assert_eq!(out, fresh[i], "round {round}, graph {i}");
        }
    }
    // and once more without clear in between graphs of the same tape (a second backward
    // recycles the first one's adjoints)
    tape.clear();
    let first = every_op(&mut tape, 3, 4, 5, 3, 11);
    assert_eq!(first, fresh[0]);
}

#[test]
fn a_second_backward_on_the_same_graph_gives_the_same_gradients() {
    let mut tape = Tape::<f64>::new();
    let mut params = Params::<f64>::new();
    let w = params.add("w", Gen(9).mat((3, 3), -1.0, 1.0)).unwrap();
    let wv = tape.param(&params, w).unwrap();
    let y = tape.matmul(wv, wv).unwrap();
    let y = tape.tanh(y).unwrap();
    let loss = tape.sum(y).unwrap();
    let g1 = tape.backward(loss).unwrap();
    let g2 = tape.backward(loss).unwrap();
    assert_eq!(g1, g2);
    assert_eq!(bits(&grad(&g1, w)), bits(&grad(&g2, w)));
}

#[test]
fn vars_from_before_clear_are_rejected_and_nodes_restart_at_zero() {
    let mut tape = Tape::<f64>::new();
    let a = tape.constant(array![[1.0]]).unwrap();
    let _ = tape.neg(a).unwrap();
    tape.clear();
    assert!(tape.is_empty());
    assert_eq!(tape.len(), 0);
    let b = tape.constant(array![[2.0]]).unwrap();
    assert_eq!(b.index(), 0);
    assert_eq!(a.index(), 0);
    assert!(tape.value(a).is_err());
    assert_eq!(tape.value(b).unwrap(), array![[2.0]]);
}

// ---------------------------------------------------------------------------------------
// stats

/// p (2×3 param) → tanh → sum, with a 2×3 constant added in: 5 nodes.
fn small_pass(tape: &mut Tape<f64>, params: &Params<f64>, w: ParamId) {
    let p = tape.param(params, w).unwrap();
    let c = tape.constant(Array2::from_elem((2, 3), 0.5)).unwrap();
    let y = tape.add(p, c).unwrap();
    let y = tape.tanh(y).unwrap();
    let l = tape.sum(y).unwrap();
    tape.backward(l).unwrap();
}

#[test]
fn stats_count_nodes_and_bytes_and_clear_keeps_the_allocations() {
    let mut params = Params::<f64>::new();
    let w = params.add("w", Array2::from_elem((2, 3), 0.1)).unwrap();
    let mut tape = Tape::<f64>::new();
    assert_eq!(tape.stats(), timetape::TapeStats::default());

    small_pass(&mut tape, &params, w);
    let s1 = tape.stats();
    assert_eq!(s1.nodes, 5);
    assert_eq!(s1.peak_nodes, 5);
    // values: p, c, p + c, tanh: 4 × 6 entries, sum: 1; adjoints (the constant has
    // none): p, p + c, tanh: 3 × 6, sum: 1 (the seed) — 44 f64 in all.
    assert_eq!(s1.bytes, 44 * 8);
    assert_eq!(s1.peak_bytes, s1.bytes);

    tape.clear();
    let s2 = tape.stats();
    assert_eq!(s2.nodes, 0);
    assert_eq!(s2.peak_nodes, 5, "the peak survives clear");
    assert_eq!(
        s2.bytes, s1.bytes,
        "clear keeps every buffer on the free list"
    );
    assert_eq!(s2.peak_bytes, s1.bytes);

    // Steady state: the same pass again and again takes its buffers from the free list
    // and holds no more memory than the first time.
    for step in 0..5 {
        tape.clear();
        small_pass(&mut tape, &params, w);
        let s = tape.stats();
        assert_eq!(s.nodes, 5);
        assert_eq!(s.bytes, s1.bytes, "step {step}: the tape grew");
        assert_eq!(s.peak_bytes, s1.bytes, "step {step}");
    }

    // A smaller graph: fewer nodes now, same peak, buffers still held.
    tape.clear();
    let a = tape.constant(Array2::from_elem((2, 3), 1.0)).unwrap();
    let _ = tape.sum(a).unwrap();
    let s3 = tape.stats();
    assert_eq!(s3.nodes, 2);
    assert_eq!(s3.peak_nodes, 5);
    assert_eq!(s3.bytes, s1.bytes);

    tape.reset_peak();
    let s4 = tape.stats();
    assert_eq!(s4.peak_nodes, 2);
    assert_eq!(s4.peak_bytes, s4.bytes);

    // A bigger graph raises the peaks.
    tape.clear();
    let mut v = tape.constant(Array2::from_elem((4, 4), 1.0)).unwrap();
    for _ in 0..9 {
        v = tape.tanh(v).unwrap();
    }
    let s5 = tape.stats();
    assert_eq!(s5.nodes, 10);
    assert_eq!(s5.peak_nodes, 10);
    assert!(s5.bytes > s4.bytes);
    assert!(s5.peak_bytes >= s5.bytes);
}

/// Releasing adjoints changes which adjoints can be read after a backward pass, never the
/// gradients: the same graph gives bit-identical `Grads` either way, leaves, detach nodes
/// and retained nodes keep their adjoints, other intermediates lose theirs, and the
/// tape's footprint is no larger.
#[test]
fn released_adjoints_give_identical_gradients_and_keep_only_retained_ones() {
    let mut params = Params::<f64>::new();
    let w = params
        .add("w", array![[0.5, -0.25], [0.125, 0.75]])
        .unwrap();
    let build = |tape: &mut Tape<f64>, retain: bool| {
        let h0 = tape.variable(array![[1.0, -2.0]].view()).unwrap();
        let wv = tape.param(&params, w).unwrap();
        let mut h = h0;
        let mut states = Vec::new();
        for _ in 0..6 {
            h = tape
                .affine(h, wv, None, timetape::Activation::Tanh)
                .unwrap();
            if retain {
                tape.retain_grad(h).unwrap();
            }
            states.push(h);
        }
        let d = tape.detach(h).unwrap();
        let y = tape.mul(d, h).unwrap();
        let loss = tape.sum(y).unwrap();
        (h0, d, states, loss)
    };
    let mut keep = Tape::new();
    let (_, _, kept_states, loss) = build(&mut keep, false);
    let g_keep = keep.backward(loss).unwrap();

    let mut rel = Tape::new();
    rel.set_release_adjoints(true);
    let (h0, d, states, loss) = build(&mut rel, false);
    let g_rel = rel.backward(loss).unwrap();
    assert_eq!(g_keep, g_rel);
    assert!(
        rel.adjoint(h0).unwrap().is_some(),
        "a leaf keeps its adjoint"
    );
    assert!(
        rel.adjoint(d).unwrap().is_some(),
        "a detach node keeps its adjoint"
    );
    assert!(
        rel.adjoint(states[2]).unwrap().is_none(),
        "an intermediate is released"
    );
    assert!(keep.adjoint(kept_states[2]).unwrap().is_some());
    assert!(rel.stats().bytes <= keep.stats().bytes);

    let mut ret = Tape::new();
    ret.set_release_adjoints(true);
    let (_, _, states, loss) = build(&mut ret, true);
    let g_ret = ret.backward(loss).unwrap();
    assert_eq!(g_keep, g_ret);
    for (a, b) in states.iter().zip(&kept_states) {
        assert_eq!(
            ret.adjoint(*a).unwrap().unwrap(),
            keep.adjoint(*b).unwrap().unwrap(),
            "a retained node keeps its exact adjoint"
        );
    }
}
