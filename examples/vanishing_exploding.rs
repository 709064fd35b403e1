//! Eq (9) of the notes as a picture: in a linear RNN with W_hh = ρ·Q (Q orthogonal) and a
//! loss at the last step only, ‖∂L/∂h_t‖ = ρ^{T−t} ‖∂L/∂h_T‖: it vanishes for ρ < 1,
//! stays for ρ = 1 and explodes for ρ > 1.
//!
//! Prints the spectral radius and largest singular value of each W_hh, the measured
//! decay/growth ratio against ρ^{T−1}, and writes `vanishing_exploding.svg`
//! (log-scale ‖∂L/∂h_t‖ against t). Runs in well under a second.
//!
//! `cargo run --release --example vanishing_exploding`

use ndarray::{Array2, Array3};
use plotters::prelude::*;
use timetape::bptt;

use timetape::diagnostics::{dh_norms, largest_singular_value, spectral_radius};
use timetape::rnn::{models, Sequence, SequenceLoss, Sizes};
use timetape::{Params, Tape};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (d, h, q_out, t_len) = (4, 16, 3, 60);
    let q: Array2<f64> = timetape::init::orthogonal(h, &mut timetape::init::rng(7))?;
    let xs = Array3::from_shape_fn((t_len, 1, d), |(t, _, k)| ((t * 3 + k) as f64 * 0.7).sin());
    // Loss at the last step only: weights α = (0, …, 0, 1).
    let labels = Array2::from_elem((t_len, 1), 1usize);
    let mut alphas = vec![0.0; t_len];
    alphas[t_len - 1] = 1.0;
    let loss = SequenceLoss::classes(labels.view()).weighted(&alphas);

    let mut series = Vec::new();
    println!(
        "{:>5} {:>10} {:>10} {:>14} {:>14}",
        "rho", "spectral", "sigma_max", "|dh_1|/|dh_T|", "rho^(T-1)"
    );
    for rho in [0.9, 1.0, 1.1] {
        let mut params = Params::<f64>::new();
        let cell = models::m1(&mut params, Sizes::new(d, h, q_out), 3)?;
        params.get_mut(cell.w_hh)?.assign(&(&q * rho));
        let w_hh = params.get(cell.w_hh)?.clone();
        let radius = spectral_radius(w_hh.view(), 200)?;
        let sigma = largest_singular_value(w_hh.view(), 200)?;
        let mut tape = Tape::new();
        let run = bptt::unroll(&cell, &mut tape, &params, &Sequence::new(xs.view(), loss))?;
        tape.backward(run.loss)?;
        let norms = dh_norms(&tape, &run.states)?;
        let ratio = norms[0] / norms[t_len - 1];
        println!(
            "{rho:>5.2} {radius:>10.6} {sigma:>10.6} {ratio:>14.6e} {:>14.6e}",
            rho.powi(t_len as i32 - 1)
        );
        series.push((rho, norms));
    }

    let path = "vanishing_exploding.svg";
    let root = SVGBackend::new(path, (800, 500)).into_drawing_area();
    root.fill(&WHITE)?;
    let all: Vec<f64> = series.iter().flat_map(|(_, n)| n.iter().copied()).collect();
    let (lo, hi) = all
        .iter()
        .fold((f64::MAX, f64::MIN), |(a, b), &x| (a.min(x), b.max(x)));
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "‖∂L/∂h_t‖ in a linear RNN, W_hh = ρQ, loss at t = T",
            ("sans-serif", 20),
        )
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(1f64..t_len as f64, (lo * 0.8..hi * 1.25).log_scale())?;
    chart
        .configure_mesh()
        .x_desc("t")
        .y_desc("‖∂L/∂h_t‖")
        .draw()?;
    for ((rho, norms), color) in series.iter().zip([BLUE, BLACK, RED]) {
        chart
            .draw_series(LineSeries::new(
                norms.iter().enumerate().map(|(t, &n)| ((t + 1) as f64, n)),
                color.stroke_width(2),
            ))?
            .label(format!("ρ = {rho}"))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .border_style(BLACK)
        .background_style(WHITE)
        .draw()?;
    root.present()?;
    println!("wrote {path}");
    Ok(())
}
