//! GRU and LSTM against central finite differences, and eq (9) of the notes in numbers.

mod common;

use ndarray::{Array1, Array2, Array3};
use timetape::bptt;

use timetape::diagnostics::{dh_norms, largest_singular_value, spectral_radius};
use timetape::gradcheck::{gradcheck, GradcheckOptions};
use timetape::rnn::{models, Gru, Lstm, Recurrent, Sequence, SequenceLoss, Sizes};
use timetape::{Params, Tape};

/// Tolerance of the finite-difference checks: relative error (max |tape − fd| over the
/// largest |fd| of the parameter) ≤ 1e-6. With eps = 1e-5 and O(1) inputs the central
/// difference is accurate to ~1e-9 here, so a wrong gate or a lost path (errors of order
/// 1) cannot pass.
const FD_TOL: f64 = 1e-6;

fn inputs(t: usize, b: usize, d: usize) -> Array3<f64> {
    Array3::from_shape_fn((t, b, d), |(t, b, d)| {
        ((t * 7 + b * 3 + d) as f64 * 0.61).sin()
    })
}

fn check_cell<C: Recurrent<f64>>(cell: &C, params: &Params<f64>, q: usize) {
    let (t, b, d) = (5, 2, cell.input_width());
    let xs = inputs(t, b, d);
    let labels = Array2::from_shape_fn((t, b), |(t, b)| (t + 2 * b) % q);
    let alphas = [0.3, 0.5, 0.7, 1.1, 1.3];
    let report = gradcheck(params, GradcheckOptions::default(), |tape, p| {
        let loss = SequenceLoss::classes(labels.view()).weighted(&alphas);
        let h0 = Array2::from_shape_fn((b, cell.state_width()), |(i, j)| 0.1 * (i + j) as f64);
        Ok(bptt::unroll(
            cell,
            tape,
            p,
            &Sequence::new(xs.view(), loss).with_h0(h0.view()),
        )?
        .loss)
    })
    .unwrap();
    assert!(report.max_rel_err() <= FD_TOL, "{report}");
    // Every parameter is reached (a disconnected gate would have a zero gradient).
    assert!(report.params.iter().all(|p| p.scale > 1e-6), "{report}");
}

#[test]
fn gru_gradient_matches_finite_differences() {
    let mut params = Params::<f64>::new();
    let cell = Gru::new(&mut params, Sizes::new(3, 4, 3), 1).unwrap();
    check_cell(&cell, &params, 3);
}

#[test]
fn lstm_gradient_matches_finite_differences() {
    let mut params = Params::<f64>::new();
    let cell = Lstm::new(&mut params, Sizes::new(3, 4, 3), 2).unwrap();
    check_cell(&cell, &params, 3);
}

/// A forward check that finite differences cannot give: the LSTM's first step from a zero
/// state against its equations written out with ndarray (catches swapped gates).
#[test]
fn lstm_forward_matches_its_equations() {
    let mut params = Params::<f64>::new();
    let cell = Lstm::new(&mut params, Sizes::new(2, 3, 2), 5).unwrap();
    let xs = inputs(1, 1, 2);
    let mut tape = Tape::new();
    let labels = Array2::<usize>::zeros((1, 1));
    let seq = Sequence::new(xs.view(), SequenceLoss::classes(labels.view()));
    let run = bptt::unroll(&cell, &mut tape, &params, &seq).unwrap();
    let got = tape.value(run.states[0]).unwrap().to_owned();
    let x = xs.index_axis(ndarray::Axis(0), 0).to_owned();
    let a = x.dot(params.get(cell.w_x).unwrap()) + params.get(cell.b).unwrap();
    let sig = |v: f64| 1.0 / (1.0 + (-v).exp());
    let n = 3;
    let (mut h, mut c) = (Array1::<f64>::zeros(n), Array1::<f64>::zeros(n));
    for j in 0..n {
        let (i, f, g, o) = (
            sig(a[[0, j]]),
            sig(a[[0, n + j]]),
            a[[0, 2 * n + j]].tanh(),
            sig(a[[0, 3 * n + j]]),
        );
        c[j] = f * 0.0 + i * g;
        h[j] = o * c[j].tanh();
    }
    for j in 0..n {
        assert!((got[[0, j]] - h[j]).abs() < 1e-15, "h");
        assert!((got[[0, n + j]] - c[j]).abs() < 1e-15, "c");
    }
}

/// Eq (9): in a linear RNN with W_hh = ρQ (Q orthogonal) and a loss at the last step
/// only, δ_t = (W_hhᵀ)^{T−t} δ_T, so ‖δ_1‖ / ‖δ_T‖ = ρ^{T−1} exactly (Q preserves
/// norms). Tolerance 1e-9 relative: T − 1 = 29 orthogonal products in f64 lose a few ulp
/// each. Also the spectral radius and largest singular value of W_hh are ρ.
#[test]
fn linear_rnn_dh_ratio_is_rho_to_the_t_minus_1() {
    let (d, h, q, t_len) = (3, 6, 2, 30);
    let xs = inputs(t_len, 2, d);
    let labels = Array2::from_elem((t_len, 2), 1usize);
    let mut alphas = vec![0.0; t_len];
    alphas[t_len - 1] = 1.0;
    let loss = SequenceLoss::classes(labels.view()).weighted(&alphas);
    let qm = common::orthogonal(h, 3);
    for rho in [0.8, 1.0, 1.25] {
        let mut params = Params::<f64>::new();
        let cell = models::m1(&mut params, Sizes::new(d, h, q), 4).unwrap();
        params.get_mut(cell.w_hh).unwrap().assign(&(&qm * rho));
        let w = params.get(cell.w_hh).unwrap().clone();
        let radius = spectral_radius(w.view(), 300).unwrap();
        let sigma = largest_singular_value(w.view(), 300).unwrap();
        assert!(
            (radius - rho).abs() <= 1e-9 * rho,
            "spectral radius {radius} vs {rho}"
        );
        assert!(
            (sigma - rho).abs() <= 1e-9 * rho,
            "largest singular value {sigma} vs {rho}"
        );
        let mut tape = Tape::new();
        let run = bptt::unroll(&cell, &mut tape, &params, &Sequence::new(xs.view(), loss)).unwrap();
        tape.backward(run.loss).unwrap();
        let norms = dh_norms(&tape, &run.states).unwrap();
        let ratio = norms[0] / norms[t_len - 1];
        let want = rho.powi(t_len as i32 - 1);
        assert!(
            (ratio - want).abs() <= 1e-9 * want,
            "ρ = {rho}: {ratio} vs {want}"
        );
    }
}
