//! The atlas of gradient estimators: bias, variance and cost of every estimator the crate
//! has, on one model and one sequence, computed exactly by enumerating their randomness
//! (T = 5) and by seeded Monte Carlo with standard errors (T = 40); then the exact bias
//! of AWD-LSTM's variable-length windows on the influence-balancing problem of
//! FORMULAS.md (n = 23, p = 10, T = 400), where no enumeration reaches.
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
use timetape::bptt::{run, Awd, Pi, Run, Truncation, WindowLengths};
use timetape::rnn::{models, Gru, Recurrent, Sequence, SequenceLoss, Sizes};
use timetape::{init, ParamId, Params, Tape, Var};

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

/// The reverse-mode methods, with windows of `lengths` (AWD-style, biased) and the same
/// windows reweighted (unbiased).
fn reverse_methods(lengths: &WindowLengths) -> Vec<Method> {
    vec![
        Method::Full,
        Method::Fixed { k: 1 },
        Method::Fixed { k: 2 },
        Method::Tbptt { k1: 1, k2: 2 },
        Method::Randomized(Pi::Constant(0.5)),
        Method::Randomized(Pi::Constant(0.8)),
        Method::Windows(lengths.clone()),
        Method::Randomized(lengths.unbiased_pi()),
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
    // Windows of 1, 2 or 3 steps (0.2, 0.3, 0.5) at T = 5; AWD's shape scaled to base 10 at
    // T = 40.
    let short = WindowLengths::from_pmf(vec![0.2, 0.3, 0.5])?;
    let mut methods = reverse_methods(&short);
    methods.extend([
        Method::Rtrl,
        Method::Uoro,
        Method::KfRtrl(Kronecker::of(&rnn)),
    ]);

    let exact = survey(&rnn, &params, 5, &methods, Mode::Exact)?;
    println!("## tanh RNN (M3), n = 3, T = 5, exact\n\n{exact}");

    let mut gru_params = Params::<f64>::new();
    let gru = Gru::new(&mut gru_params, Sizes::new(2, 3, 2), 3)?;
    let mut gru_methods = reverse_methods(&short);
    gru_methods.extend([Method::Rtrl, Method::Uoro]);
    let gru_exact = survey(&gru, &gru_params, 5, &gru_methods, Mode::Exact)?;
    println!("## GRU, n = 3, T = 5, exact\n\n{gru_exact}");

    let runs = 10_000;
    let mode = Mode::MonteCarlo { runs, seed: 1 };
    let awd10 = WindowLengths::awd(Awd {
        base: 10,
        sigma: 2.0,
        min: 2,
        ..Awd::default()
    })?;
    let mut methods = reverse_methods(&awd10);
    methods.extend([
        Method::Rtrl,
        Method::Uoro,
        Method::KfRtrl(Kronecker::of(&rnn)),
    ]);
    let mc = survey(&rnn, &params, 40, &methods, mode)?;
    println!("## tanh RNN (M3), n = 3, T = 40, Monte Carlo ({runs} runs per random method)\n");
    print_with_errors(&mc);

    influence_balancing()?;

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

/// The influence-balancing cell of FORMULAS.md, batch-major: `s_t = s_{t−1} Aᵀ + θσ`,
/// `A = ½(I + J)`, `σ = (+1 ×p, −1 ×(n − p))`, output the first unit.
struct Balance {
    theta: ParamId,
    sigma: Array2<f64>,
    a_t: Array2<f64>,
    e1: Array2<f64>,
}

impl Balance {
    fn new(
        params: &mut Params<f64>,
        (n, p): (usize, usize),
        theta: f64,
    ) -> Result<Self, timetape::Error> {
        Ok(Balance {
            theta: params.add("theta", Array2::from_elem((1, 1), theta))?,
            sigma: Array2::from_shape_fn((1, n), |(_, i)| if i < p { 1.0 } else { -1.0 }),
            a_t: Array2::from_shape_fn(
                (n, n),
                |(r, c)| if r == c || r == c + 1 { 0.5 } else { 0.0 },
            ),
            e1: Array2::from_shape_fn((n, 1), |(r, _)| f64::from(u8::from(r == 0))),
        })
    }

    /// The stationary state for θ: s*_i = s*_{i+1} + 2θσ_i.
    fn fixed_point(&self, theta: f64) -> Array2<f64> {
        let n = self.sigma.ncols();
        let mut s = Array2::zeros((1, n));
        let mut next = 0.0;
        for i in (0..n).rev() {
            next += 2.0 * theta * self.sigma[[0, i]];
            s[[0, i]] = next;
        }
        s
    }
}

impl Recurrent<f64> for Balance {
    type Bound = [Var; 4];
    fn input_width(&self) -> usize {
        1
    }
    fn state_width(&self) -> usize {
        self.sigma.ncols()
    }
    fn output_width(&self) -> usize {
        1
    }
    fn bind(&self, tape: &mut Tape<f64>, params: &Params<f64>) -> timetape::Result<[Var; 4]> {
        Ok([
            tape.param(params, self.theta)?,
            tape.constant(self.sigma.clone())?,
            tape.constant(self.a_t.clone())?,
            tape.constant(self.e1.clone())?,
        ])
    }
    fn step(&self, tape: &mut Tape<f64>, b: &[Var; 4], x: Var, h: Var) -> timetape::Result<Var> {
        let ts = tape.matmul(b[0], b[1])?;
        let u = tape.matmul(x, ts)?;
        let r = tape.matmul(h, b[2])?;
        tape.add(r, u)
    }
    fn output(&self, tape: &mut Tape<f64>, b: &[Var; 4], hs: Var) -> timetape::Result<Var> {
        tape.matmul(hs, b[3])
    }
}

/// The exact ∂L/∂θ of AWD's windows (base 70 and 35) and of the same windows reweighted
/// on influence balancing, started at the fixed point of θ = 0.5 (the optimum is −1/6,
/// so the right gradient is positive), loss ½ (s_t⁽¹⁾ − 1)² at every step.
fn influence_balancing() -> Result<(), timetape::Error> {
    let (theta, t) = (0.5, 400);
    let mut params = Params::<f64>::new();
    let cell = Balance::new(&mut params, (23, 10), theta)?;
    let s0 = cell.fixed_point(theta);
    let (xs, ys) = (
        Array3::<f64>::ones((t, 1, 1)),
        Array3::<f64>::ones((t, 1, 1)),
    );
    let half = vec![0.5; t];
    let seq = Sequence::new(xs.view(), SequenceLoss::values(ys.view()).weighted(&half))
        .with_h0(s0.view());
    let d = |g: &timetape::Grads<f64>| g.get(cell.theta).map(|g| g[[0, 0]]);
    let full = d(&run(&cell, &params, &seq, &Run::new(Truncation::Full))?.grads)?;
    println!("\n## AWD-LSTM's windows on influence balancing (n = 23, p = 10, θ = 0.5, T = 400), exact\n");
    println!("| method | E[∂L/∂θ] | bias / ∂L/∂θ |");
    println!("|---|---|---|");
    println!("| Full | {full:.2} | 0 |");
    for base in [70, 35] {
        let w = WindowLengths::awd(Awd {
            base,
            ..Awd::default()
        })?;
        for (name, m) in [
            (
                format!("Windows (AWD, base {base})"),
                Method::Windows(w.clone()),
            ),
            (
                format!("the same windows reweighted (base {base})"),
                Method::Randomized(w.unbiased_pi()),
            ),
        ] {
            let e = d(&atlas::expectation(&cell, &params, &seq, &m)?)?;
            println!("| {name} | {e:.2} | {:.2e} |", (e - full) / full);
        }
    }
    Ok(())
}
