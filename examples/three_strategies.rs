//! The book's comparison (D2L §8.7, seed 001 of the notes): a character-level language
//! model trained with full BPTT, regular truncation (`Fixed { k: 35 }`) and randomized
//! truncation (`Randomized`, π chosen so that the mean segment is 35 steps too).
//!
//! The model is a two-layer GRU over embedded characters: each symbol id selects a row
//! of a 17×16 embedding table, layer 1 (a GRU of 48 units) reads it, layer 2 (48 units)
//! reads layer 1's state, and layer 2's head gives the logits of the next symbol
//! (`Embedded<Stack<Gru>>`, token inputs through `Sequence::tokens`, no one-hot).
//!
//! The text comes from a documented synthetic source whose entropy rate is known exactly,
//! so perplexity has a floor to compare with. The source writes "sentences": each starts
//! with one of 4 topic symbols (`A`–`D`, uniform), then letters from a topic-specific
//! first-order Markov chain over 12 letters until it emits `.` (probability 1/50 after
//! each letter, so sentences average 50 letters). Remembering the topic, seen up to a few
//! hundred steps back, is what separates a good model from a bigram model. The observed
//! text is a Markov chain on (topic, last symbol), a function of the past, so its entropy
//! rate is `Σ_s μ(s) H(next | s)` with μ the stationary distribution; the floor is
//! `exp` of that.
//!
//! Each update trains on a fresh batch of 32 sequences of 200 characters (state reset per
//! sequence, Adam at 0.01, gradient norm clipped at 1); there are 20 epochs of 20 updates,
//! each followed by the held-out perplexity (32 streams of 1 000 characters, one forward
//! pass with `bptt::unroll`, state carried through each stream). A final table gives, per
//! strategy, the last perplexity, the floor, the backward steps per update, the peak tape
//! nodes (mean and max over the updates: the memory the truncation saves) and the seconds
//! taken. Writes `three_strategies.svg` (perplexity against epoch, with the floor). Runs
//! in about 45 seconds in release on 2 cores.
//!
//! `cargo run --release --example three_strategies`

use ndarray::Array2;
use plotters::prelude::*;
use rand::Rng;
use std::time::Instant;
use timetape::bptt::{self, Pi, Run, Truncation};
use timetape::optim::{clip_global_norm, Adam};
use timetape::rnn::{Embedded, Embedding, Gru, Sequence, SequenceLoss, Sizes, Stack};
use timetape::{Params, Tape};

const TOPICS: usize = 4;
const LETTERS: usize = 12;
const DOT: usize = TOPICS + LETTERS; // symbol index of '.'
const VOCAB: usize = DOT + 1;
const P_END: f64 = 1.0 / 50.0;
const SEQ: usize = 200;
const BATCH: usize = 32;
const EMB: usize = 16;
const HIDDEN: usize = 48;
const EPOCHS: usize = 20;
const UPDATES: usize = 20;
const EVAL_LEN: usize = 1000;

/// The source: per topic, a letter-to-letter transition matrix with a few likely
/// successors; row `LETTERS` is the distribution of the first letter.
struct Source {
    trans: Vec<Array2<f64>>, // TOPICS × (LETTERS + 1) × (LETTERS + 1): letters then '.'
}

impl Source {
    fn new(seed: u64) -> Self {
        let mut rng = timetape::init::rng(seed);
        let trans = (0..TOPICS)
            .map(|_| {
                let mut m = Array2::<f64>::zeros((LETTERS + 1, LETTERS + 1));
                for r in 0..=LETTERS {
                    let w: Vec<f64> = (0..LETTERS).map(|_| rng.random::<f64>().powi(4)).collect();
                    let s: f64 = w.iter().sum();
                    let end = if r == LETTERS { 0.0 } else { P_END };
                    for (c, wc) in w.iter().enumerate() {
                        m[[r, c]] = (1.0 - end) * wc / s;
                    }
                    m[[r, LETTERS]] = end;
                }
                m
            })
            .collect();
        Source { trans }
    }

    /// Symbol indices: topics 0..4, letters 4..16, '.' 16.
    fn generate(&self, len: usize, rng: &mut impl Rng) -> Vec<usize> {
        let mut out = Vec::with_capacity(len);
        // Start at a random point of a sentence: run the chain for a while first.
        let (mut topic, mut last) = (0, LETTERS);
        let mut started = false;
        let mut burn = rng.random_range(0..100);
        while out.len() < len {
            let sym = if !started || last == usize::MAX {
                topic = rng.random_range(0..TOPICS);
                last = LETTERS;
                started = true;
                topic
            } else {
                let row = self.trans[topic].row(last);
                let u: f64 = rng.random();
                let mut acc = 0.0;
                let mut next = LETTERS;
                for (c, &p) in row.iter().enumerate() {
                    acc += p;
                    if u < acc {
                        next = c;
                        break;
                    }
                }
                if next == LETTERS {
                    last = usize::MAX; // a topic symbol comes next
                    DOT
                } else {
                    last = next;
                    TOPICS + next
                }
            };
            if burn > 0 {
                burn -= 1;
            } else {
                out.push(sym);
            }
        }
        out
    }

    /// The exact entropy rate in nats per symbol, and the bigram entropy.
    fn entropy_rate(&self) -> (f64, f64) {
        // States: (topic, last) with last ∈ letters, "start" (= LETTERS), or '.' (= LETTERS + 1).
        let per = LETTERS + 2;
        let n = TOPICS * per;
        let mut next = vec![Vec::<(usize, f64)>::new(); n];
        let mut h = vec![0.0; n];
        for k in 0..TOPICS {
            for last in 0..=LETTERS {
                let row = self.trans[k].row(last);
                for (c, &p) in row.iter().enumerate() {
                    if p > 0.0 {
                        let to = if c == LETTERS {
                            k * per + LETTERS + 1
                        } else {
                            k * per + c
                        };
                        next[k * per + last].push((to, p));
                        h[k * per + last] -= p * p.ln();
                    }
                }
            }
            // After '.', a uniform topic symbol.
            for k2 in 0..TOPICS {
                next[k * per + LETTERS + 1].push((k2 * per + LETTERS, 1.0 / TOPICS as f64));
            }
            h[k * per + LETTERS + 1] = (TOPICS as f64).ln();
        }
        let mut mu = vec![1.0 / n as f64; n];
        for _ in 0..20_000 {
            let mut nu = vec![0.0; n];
            for (s, edges) in next.iter().enumerate() {
                for &(to, p) in edges {
                    nu[to] += mu[s] * p;
                }
            }
            // Average with the previous iterate: the chain may be periodic.
            for (m, v) in mu.iter_mut().zip(nu) {
                *m = 0.5 * (*m + v);
            }
        }
        let rate = mu.iter().zip(&h).map(|(m, h)| m * h).sum();
        (rate, self.bigram_entropy(&mu, &next))
    }

    /// The entropy of the next symbol given only the last one (a model without memory
    /// of the topic): `H(next | last)` under the stationary distribution, in nats.
    fn bigram_entropy(&self, mu: &[f64], next: &[Vec<(usize, f64)>]) -> f64 {
        let per = LETTERS + 2;
        // Joint P(last symbol, next state) summed over topics; the observed last symbol
        // of state (k, c) is the letter c, the topic symbol k ("start"), or '.'.
        let observed = |s: usize| -> usize {
            let (k, c) = (s / per, s % per);
            match c {
                c if c < LETTERS => TOPICS + c,
                c if c == LETTERS => k,
                _ => DOT,
            }
        };
        let mut joint = vec![vec![0.0; VOCAB]; VOCAB];
        for (s, edges) in next.iter().enumerate() {
            for &(to, p) in edges {
                joint[observed(s)][observed(to)] += mu[s] * p;
            }
        }
        let mut h = 0.0;
        for row in &joint {
            let z: f64 = row.iter().sum();
            for &p in row {
                if p > 0.0 {
                    h -= p * (p / z).ln();
                }
            }
        }
        h
    }
}

/// Token ids s_t (the inputs) and labels s_{t+1}, both (len, BATCH), for BATCH
/// sequences of len + 1 symbols.
fn batch(source: &Source, len: usize, rng: &mut impl Rng) -> (Array2<usize>, Array2<usize>) {
    let seqs: Vec<Vec<usize>> = (0..BATCH).map(|_| source.generate(len + 1, rng)).collect();
    let ids = Array2::from_shape_fn((len, BATCH), |(t, b)| seqs[b][t]);
    let next = Array2::from_shape_fn((len, BATCH), |(t, b)| seqs[b][t + 1]);
    (ids, next)
}

/// The model: a VOCAB×EMB embedding table in front of two stacked GRUs of HIDDEN
/// units; the top layer's head gives the VOCAB logits (the bottom layer's head, of
/// width 1, is unused).
fn model(params: &mut Params<f32>) -> Result<Embedded<Stack<Gru>>, timetape::Error> {
    let table = Embedding::new(params, "emb", (VOCAB, EMB), 3)?;
    let lower = Gru::named(params, "l0.", Sizes::new(EMB, HIDDEN, 1), 4)?;
    let upper = Gru::named(params, "l1.", Sizes::new(HIDDEN, HIDDEN, VOCAB), 5)?;
    Ok(Embedded::new(table, Stack::new(vec![lower, upper])?))
}

/// What training one strategy gave.
struct Outcome {
    name: &'static str,
    /// Held-out perplexity after each epoch.
    curve: Vec<f64>,
    /// Backward steps per update, averaged over the updates.
    backward_steps: f64,
    /// The most nodes the tape held at once in an update, averaged over the updates.
    mean_peak_nodes: f64,
    /// The most nodes the tape held at once, over all updates.
    peak_tape_nodes: usize,
    /// Training and evaluation time.
    seconds: f64,
}

/// The held-out token streams and their next symbols, (EVAL_LEN, BATCH) each.
struct HeldOut {
    ids: Array2<usize>,
    next: Array2<usize>,
}

impl HeldOut {
    /// Perplexity of `model` on the held-out streams: exp of the mean cross-entropy per
    /// symbol, from one forward pass (no backward) over each whole stream, state carried.
    fn perplexity(
        &self,
        model: &Embedded<Stack<Gru>>,
        params: &Params<f32>,
        tape: &mut Tape<f32>,
    ) -> Result<f64, timetape::Error> {
        let loss = SequenceLoss::classes(self.next.view()).mean_over_time();
        tape.clear();
        let unrolled = bptt::unroll(
            model,
            tape,
            params,
            &Sequence::tokens(self.ids.view(), loss),
        )?;
        Ok(f64::from(tape.scalar(unrolled.loss)?).exp())
    }
}

/// Trains a fresh model with `truncation` for EPOCHS × UPDATES updates on fresh batches
/// of `source`, printing the held-out perplexity after each epoch.
fn train(
    source: &Source,
    (name, truncation): &(&'static str, Truncation),
    held_out: &HeldOut,
) -> Result<Outcome, timetape::Error> {
    let start = Instant::now();
    let mut params = Params::<f32>::new();
    let model = model(&mut params)?;
    let mut adam = Adam::new(0.01f32)?;
    let mut rng = timetape::init::rng(1);
    let mut eval_tape = Tape::new();
    let (mut curve, mut steps, mut peaks, mut peak) = (Vec::new(), 0, 0, 0);
    for epoch in 1..=EPOCHS {
        for u in 0..UPDATES {
            let (ids, next) = batch(source, SEQ, &mut rng);
            let loss = SequenceLoss::classes(next.view()).mean_over_time();
            // A fresh ξ draw for every update of the randomized strategy.
            let t = match truncation {
                Truncation::Randomized { pi, .. } => Truncation::Randomized {
                    pi: pi.clone(),
                    seed: (epoch * UPDATES + u) as u64,
                },
                t => t.clone(),
            };
            let seq = Sequence::tokens(ids.view(), loss);
            let mut r = bptt::run(&model, &params, &seq, &Run::new(t))?;
            steps += r.backward_steps;
            peaks += r.peak_tape_nodes;
            peak = peak.max(r.peak_tape_nodes);
            clip_global_norm(&mut r.grads, 1.0)?;
            adam.step(&mut params, &r.grads)?;
        }
        let ppl = held_out.perplexity(&model, &params, &mut eval_tape)?;
        println!(
            "{name:>22} epoch {epoch:>2}: held-out perplexity {ppl:.3}  ({:.1} s)",
            start.elapsed().as_secs_f64()
        );
        curve.push(ppl);
    }
    Ok(Outcome {
        name,
        curve,
        backward_steps: steps as f64 / (EPOCHS * UPDATES) as f64,
        mean_peak_nodes: peaks as f64 / (EPOCHS * UPDATES) as f64,
        peak_tape_nodes: peak,
        seconds: start.elapsed().as_secs_f64(),
    })
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let source = Source::new(2024);
    let (rate, bigram) = source.entropy_rate();
    let floor = rate.exp();
    println!(
        "synthetic source: {VOCAB} symbols; perplexity floor exp(H) = {floor:.3}; \
         best model without memory of the topic (bigram) = {:.3}; uniform guess = {VOCAB}",
        bigram.exp()
    );
    println!(
        "model: embedding {VOCAB}×{EMB}, two GRU layers of {HIDDEN} units, head {HIDDEN}→{VOCAB} \
         (f32); {EPOCHS} epochs of {UPDATES} updates on {BATCH}×{SEQ} characters"
    );
    let mut eval_rng = timetape::init::rng(7);
    let (ids, next) = batch(&source, EVAL_LEN, &mut eval_rng);
    let held_out = HeldOut { ids, next };
    let pi = 1.0 - 1.0 / 35.0;
    let strategies = [
        ("Full", Truncation::Full),
        ("Fixed{k=35}", Truncation::Fixed { k: 35 }),
        (
            "Randomized{pi=34/35}",
            Truncation::Randomized {
                pi: Pi::Constant(pi),
                seed: 0,
            },
        ),
    ];
    let mut outcomes = Vec::new();
    for strategy in &strategies {
        outcomes.push(train(&source, strategy, &held_out)?);
    }
    print_table(&outcomes, floor, bigram.exp());
    let path = "three_strategies.svg";
    plot(path, &outcomes, floor)?;
    println!("wrote {path}");
    Ok(())
}

/// The final table: one row per strategy, then the bigram baseline.
fn print_table(outcomes: &[Outcome], floor: f64, bigram: f64) {
    println!(
        "\n{:>22} {:>10} {:>6} {:>8} {:>13} {:>20} {:>7}",
        "strategy", "perplexity", "floor", "> floor", "bwd steps/upd", "peak tape nodes", "seconds"
    );
    println!(
        "{:>22} {:>10} {:>6} {:>8} {:>13} {:>20}",
        "", "", "", "", "", "mean / max"
    );
    for o in outcomes {
        let last = o.curve.last().copied().unwrap_or(f64::NAN);
        let peaks = format!("{:.0} / {}", o.mean_peak_nodes, o.peak_tape_nodes);
        println!(
            "{:>22} {last:>10.3} {floor:>6.3} {:>7.1}% {:>13.1} {peaks:>20} {:>7.1}",
            o.name,
            100.0 * (last / floor - 1.0),
            o.backward_steps,
            o.seconds
        );
    }
    println!("{:>22} {bigram:>10.3}", "bigram (no memory)");
}

/// Perplexity against epoch for every strategy, with the floor.
fn plot(path: &str, outcomes: &[Outcome], floor: f64) -> Result<(), Box<dyn std::error::Error>> {
    let root = SVGBackend::new(path, (800, 500)).into_drawing_area();
    root.fill(&WHITE)?;
    let top = outcomes
        .iter()
        .flat_map(|o| o.curve.iter().copied())
        .fold(floor, f64::max);
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "Held-out perplexity of a two-layer char-GRU by BPTT strategy",
            ("sans-serif", 20),
        )
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(1f64..EPOCHS as f64, (floor * 0.95)..(top * 1.05))?;
    chart
        .configure_mesh()
        .x_desc("epoch")
        .y_desc("perplexity")
        .draw()?;
    for (o, color) in outcomes.iter().zip([BLUE, RED, GREEN]) {
        chart
            .draw_series(LineSeries::new(
                o.curve
                    .iter()
                    .enumerate()
                    .map(|(i, &p)| ((i + 1) as f64, p)),
                color.stroke_width(2),
            ))?
            .label(o.name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
    }
    chart
        .draw_series(LineSeries::new(
            [(1.0, floor), (EPOCHS as f64, floor)],
            BLACK.stroke_width(1),
        ))?
        .label("floor exp(H)")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLACK));
    chart
        .configure_series_labels()
        .border_style(BLACK)
        .background_style(WHITE)
        .draw()?;
    root.present()?;
    Ok(())
}
