//! The atlas of gradient estimators: bias, variance and cost of every estimator the crate
//! has, on one model and one sequence, computed exactly by enumerating their randomness
//! (T = 5) and by seeded Monte Carlo with standard errors (T = 40).
//!
//! Models: the notes' tanh RNN (M3: softmax cross-entropy at every step, step weights
//! α_t) and a GRU, both with n = 3 hidden units, D = Q = 2, B = 1. Prints a Markdown
//! table per model and writes `atlas.svg`: relative bias against relative spread
//! (√tr Cov / ‖g‖) for the exact tanh-RNN atlas, each method's memory (expected peak
//! tape bytes plus the bytes its carried estimate takes) as the area of its disc.
//!
//! ```sh
//! cargo run --release --example atlas
//! ```

use ndarray::{Array2, Array3};
use plotters::prelude::*;
use rand::Rng;
use timetape::bptt::atlas::{self, Atlas, Method, Mode, Survey};
use timetape::bptt::online::Kronecker;
use timetape::bptt::Pi;
use timetape::rnn::{models, Gru, Recurrent, Sequence, SequenceLoss, Sizes};
use timetape::{init, Params};

/// Seeded inputs in ±1 and labels of 2 classes, T steps of one row.
fn data(t: usize, seed: u64) -> (Array3<f64>, Array2<usize>) {
    let mut rng = init::rng(seed);
    let xs = Array3::from_shape_simple_fn((t, 1, 2), || rng.random_range(-1.0..1.0));
    let labels = Array2::from_shape_simple_fn((t, 1), || rng.random_range(0..2));
    (xs, labels)
}

/// The notes' M3 with n = 3, W_hh uniform in ±0.6 and b_h in ±0.3.
fn tanh_rnn(params: &mut Params<f64>) -> Result<timetape::rnn::Rnn, timetape::Error> {
    let cell = models::m3(params, Sizes::new(2, 3, 2), 0)?;
    let mut rng = init::rng(1);
    params.set(cell.w_hh, init::uniform((3, 3), 0.6, &mut rng)?.view())?;
    if let Some(b) = cell.b_h {
        params.set(b, init::uniform((1, 3), 0.3, &mut rng)?.view())?;
    }
    Ok(cell)
}

fn reverse_methods() -> Vec<Method> {
    vec![
        Method::Full,
        Method::Fixed { k: 1 },
        Method::Fixed { k: 2 },
        Method::Tbptt { k1: 1, k2: 2 },
        Method::Randomized(Pi::Constant(0.5)),
        Method::Randomized(Pi::Constant(0.8)),
    ]
}

fn survey<C: Recurrent<f64>>(
    cell: &C,
    params: &Params<f64>,
    t: usize,
    methods: &[Method],
    mode: Mode,
) -> Result<Atlas<f64>, timetape::Error> {
    let (xs, labels) = data(t, 7);
    let seq = Sequence::new(xs.view(), SequenceLoss::classes(labels.view()));
    atlas::survey(cell, params, &seq, &Survey::new(methods, mode))
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut params = Params::<f64>::new();
    let rnn = tanh_rnn(&mut params)?;
    let mut methods = reverse_methods();
    methods.extend([
        Method::Rtrl,
        Method::Uoro,
        Method::KfRtrl(Kronecker::of(&rnn)),
    ]);

    let exact = survey(&rnn, &params, 5, &methods, Mode::Exact)?;
    println!("## tanh RNN (M3), n = 3, T = 5, exact\n\n{exact}");

    let mut gru_params = Params::<f64>::new();
    let gru = Gru::new(&mut gru_params, Sizes::new(2, 3, 2), 3)?;
    let mut gru_methods = reverse_methods();
    gru_methods.extend([Method::Rtrl, Method::Uoro]);
    let gru_exact = survey(&gru, &gru_params, 5, &gru_methods, Mode::Exact)?;
    println!("## GRU, n = 3, T = 5, exact\n\n{gru_exact}");

    let runs = 10_000;
    let mode = Mode::MonteCarlo { runs, seed: 1 };
    let mc = survey(&rnn, &params, 40, &methods, mode)?;
    println!("## tanh RNN (M3), n = 3, T = 40, Monte Carlo ({runs} runs per random method)\n");
    print_with_errors(&mc);

    let path = "atlas.svg";
    plot(path, &exact)?;
    println!("\nwrote {path}");
    Ok(())
}

/// The Monte Carlo table, with the relative bias a mean of N runs shows from noise
/// alone, `√(tr Cov / N) / ‖g‖` (E‖mean − E ĝ‖² = tr Cov / N), and the standard error of
/// the peak tape.
fn print_with_errors(a: &Atlas<f64>) {
    println!("| method | ‖bias‖/‖g‖ | noise floor √(tr Cov/N)/‖g‖ | tr Cov | peak tape (bytes) ± SE | carried floats |");
    println!("|---|---|---|---|---|---|");
    let norm = a.full.global_norm();
    for e in &a.entries {
        let floor = (e.trace_cov / e.draws as f64).sqrt() / norm;
        let bytes_se = e
            .standard_errors
            .as_ref()
            .map_or(0.0, |s| s.peak_tape_bytes);
        println!(
            "| {} | {:.2e} | {:.1e} | {:.3e} | {:.0} ± {:.0} | {} |",
            e.method,
            e.relative_bias,
            floor,
            e.trace_cov,
            e.peak_tape_bytes,
            bytes_se,
            e.carried_floats
        );
    }
}

/// Relative bias against relative standard deviation (linear scales: the unbiased
/// methods sit on the vertical axis, the deterministic ones on the horizontal one), each
/// method a disc whose area grows with its memory.
fn plot(path: &str, a: &Atlas<f64>) -> Result<(), Box<dyn std::error::Error>> {
    let norm = a.full.global_norm();
    let xy = |e: &atlas::Entry<f64>| (e.relative_bias, e.trace_cov.sqrt() / norm);
    let root = SVGBackend::new(path, (900, 600)).into_drawing_area();
    root.fill(&WHITE)?;
    let top_x = a.entries.iter().map(|e| xy(e).0).fold(0.0, f64::max);
    let top_y = a.entries.iter().map(|e| xy(e).1).fold(0.0, f64::max);
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "Gradient estimators: bias, spread and memory (tanh RNN, n = 3, T = 5, exact)",
            ("sans-serif", 18),
        )
        .margin(20)
        .x_label_area_size(45)
        .y_label_area_size(60)
        .build_cartesian_2d(-0.02 * top_x..top_x * 1.35, -0.03 * top_y..top_y * 1.25)?;
    chart
        .configure_mesh()
        .x_desc("relative bias ‖E[ĝ] − g‖ / ‖g‖")
        .y_desc("relative spread √tr Cov[ĝ] / ‖g‖")
        .draw()?;
    let colors = [BLUE, RED, GREEN, MAGENTA, CYAN, BLACK];
    for (i, e) in a.entries.iter().enumerate() {
        let memory = e.peak_tape_bytes + 8.0 * e.carried_floats as f64;
        let radius = (4.0 + memory.sqrt() / 3.0) as i32;
        let color = colors[i % colors.len()];
        let label = format!("{} ({:.0} B)", e.method, memory);
        // Labels above their disc, stacked where discs (nearly) coincide.
        let (x, y) = xy(e);
        let near = a.entries[..i]
            .iter()
            .filter(|o| (xy(o).0 - x).abs() < 0.2 * top_x && (xy(o).1 - y).abs() < 0.04 * top_y)
            .count() as i32;
        let dy = -radius - 10 - 15 * near;
        chart.draw_series([EmptyElement::at(xy(e))
            + Circle::new((0, 0), radius, color.mix(0.35).filled())
            + Text::new(label, (4, dy), ("sans-serif", 13))])?;
    }
    root.present()?;
    Ok(())
}
