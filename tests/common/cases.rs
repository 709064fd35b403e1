//! Shared fixtures: seeded inputs and targets of every kind ([`Data`]), and the notes'
//! models M1–M3 with contractive weights ([`Case`]), so that test files do not each
//! build their own.

use ndarray::{Array1, Array2, Array3};
use rand::Rng;
use timetape::rnn::{models, Rnn, Sequence, SequenceLoss, Sizes};
use timetape::{init, Params};

/// The shape of a problem: T steps, B rows, D inputs, Q outputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    /// Steps T.
    pub t: usize,
    /// Batch rows B.
    pub b: usize,
    /// Input width D.
    pub d: usize,
    /// Output width Q (classes, or the width of real targets).
    pub q: usize,
}

impl Shape {
    /// T steps of B rows, D inputs and Q outputs.
    pub fn new(t: usize, b: usize, d: usize, q: usize) -> Shape {
        Shape { t, b, d, q }
    }
}

/// Inputs and targets of every kind for one [`Shape`], from one seed: inputs in ±1,
/// labels below Q, real targets in ±1, binary targets in {0, 1} and (0, 1), step
/// weights in [0.2, 1.2).
pub struct Data {
    /// Inputs (T, B, D).
    pub xs: Array3<f64>,
    /// A class per step (T, B).
    pub labels: Array2<usize>,
    /// A real target per step (T, B, Q).
    pub values: Array3<f64>,
    /// A class per sequence (B).
    pub last_class: Array1<usize>,
    /// A binary target per sequence (B), for a cell with one output.
    pub last_binary: Array1<f64>,
    /// A real target per sequence (B, Q).
    pub last_values: Array2<f64>,
    /// Step weights α_t (T).
    pub alphas: Vec<f64>,
}

impl Data {
    /// Seeded data of shape `s`.
    pub fn new(s: Shape, seed: u64) -> Data {
        let mut rng = init::rng(seed ^ 0xda7a);
        let xs = Array3::from_shape_simple_fn((s.t, s.b, s.d), || rng.random_range(-1.0..1.0));
        let labels = Array2::from_shape_simple_fn((s.t, s.b), || rng.random_range(0..s.q));
        let values = Array3::from_shape_simple_fn((s.t, s.b, s.q), || rng.random_range(-1.0..1.0));
        let last_class = Array1::from_shape_simple_fn(s.b, || rng.random_range(0..s.q));
        let last_binary = Array1::from_shape_fn(s.b, |r| match r % 3 {
            0 => 1.0,
            1 => 0.0,
            _ => 0.3,
        });
        let last_values = Array2::from_shape_simple_fn((s.b, s.q), || rng.random_range(-1.0..1.0));
        let alphas = (0..s.t).map(|_| rng.random_range(0.2..1.2)).collect();
        Data {
            xs,
            labels,
            values,
            last_class,
            last_binary,
            last_values,
            alphas,
        }
    }

    /// Softmax cross-entropy at every step, weighted by α_t.
    pub fn classes(&self) -> SequenceLoss<'_, f64> {
        SequenceLoss::classes(self.labels.view())
            .weighted(&self.alphas)
            .into()
    }

    /// The inputs with `loss`, from h_0 = 0.
    pub fn seq<'a>(&'a self, loss: SequenceLoss<'a, f64>) -> Sequence<'a, f64> {
        Sequence::new(self.xs.view(), loss)
    }
}

/// One of the notes' vanilla models.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Model {
    /// Linear RNN, no biases, softmax cross-entropy at every step, mean over time (M1).
    M1,
    /// ReLU RNN, sigmoid + binary cross-entropy at the last step (M2, Q = 1).
    M2,
    /// tanh RNN, softmax cross-entropy at every step with weights α_t (M3).
    M3,
}

/// The three models.
pub const MODELS: [Model; 3] = [Model::M1, Model::M2, Model::M3];

/// A model of the notes with contractive weights and its data: B = 2, D = 3, H = 4,
/// Q = 3 (Q = 1 for M2). `W_hh` uniform in ±0.45 (spectral radius ≈ 0.5: no overflow
/// or saturation), biases in ±0.3 (plus 0.2 on M2's b_h so that most ReLUs are active).
/// Other sizes and `W_hh` scales: [`Case::sized`]; a non-zero h_0: [`Case::with_h0`].
pub struct Case {
    /// Which model.
    pub model: Model,
    /// Its parameters.
    pub params: Params<f64>,
    /// The cell.
    pub cell: Rnn,
    /// Inputs and targets.
    pub data: Data,
    /// The initial state h_0 (B, H), or `None` for h_0 = 0 ([`Case::with_h0`]).
    pub h0: Option<Array2<f64>>,
}

impl Case {
    /// The model over `t` steps, weights and data from `seed`.
    pub fn new(model: Model, t: usize, seed: u64) -> Case {
        Case::sized(model, Shape::new(t, 2, 3, 3), 4, 0.45, seed)
    }

    /// The model with the sizes of `s` (`s.q` outputs, but one for M2: its data then
    /// has Q = 1) and `h` hidden units, `W_hh` uniform in ±`w_hh`, biases as in
    /// [`Case::new`], weights and data from `seed`. `Case::new` is
    /// `Case::sized(model, Shape::new(t, 2, 3, 3), 4, 0.45, seed)`.
    pub fn sized(model: Model, s: Shape, h: usize, w_hh: f64, seed: u64) -> Case {
        let Shape { t, b, d, q } = s;
        let mut params = Params::<f64>::new();
        let cell = match model {
            Model::M1 => models::m1(&mut params, Sizes::new(d, h, q), seed),
            Model::M2 => models::m2(&mut params, d, h, seed),
            Model::M3 => models::m3(&mut params, Sizes::new(d, h, q), seed),
        }
        .unwrap();
        let q = cell.config.output;
        let mut rng = init::rng(seed ^ 0xb977);
        let w_hh = init::uniform((h, h), w_hh, &mut rng).unwrap();
        params.set(cell.w_hh, w_hh.view()).unwrap();
        if let Some(id) = cell.b_h {
            let shift = if model == Model::M2 { 0.2 } else { 0.0 };
            let b_h = init::uniform((1, h), 0.3, &mut rng).unwrap() + shift;
            params.set(id, b_h.view()).unwrap();
        }
        if let Some(id) = cell.b_q {
            let b_q = init::uniform((1, q), 0.3, &mut rng).unwrap();
            params.set(id, b_q.view()).unwrap();
        }
        let data = Data::new(Shape { t, b, d, q }, seed);
        Case {
            model,
            params,
            cell,
            data,
            h0: None,
        }
    }

    /// The same case started from a seeded h_0 uniform in ±0.5 ([`initial_state`]).
    pub fn with_h0(mut self, seed: u64) -> Case {
        let b = self.data.xs.dim().1;
        self.h0 = Some(initial_state(b, self.cell.config.hidden, seed));
        self
    }

    /// Steps T.
    pub fn t(&self) -> usize {
        self.data.xs.dim().0
    }

    /// The step weights of the model's loss: α_t for M3, 1 for M1 (and for M2, whose
    /// last-step loss takes none).
    pub fn weights(&self) -> Vec<f64> {
        match self.model {
            Model::M3 => self.data.alphas.clone(),
            Model::M1 | Model::M2 => vec![1.0; self.t()],
        }
    }

    /// The model's loss with the step weights `w` in place of [`Case::weights`] (M2's
    /// last-step loss ignores them): M1 classes weighted by `w` and averaged over time,
    /// M3 classes weighted by `w`.
    pub fn loss_with<'a>(&'a self, w: &'a [f64]) -> SequenceLoss<'a, f64> {
        let d = &self.data;
        match self.model {
            Model::M1 => SequenceLoss::classes(d.labels.view())
                .weighted(w)
                .mean_over_time()
                .into(),
            Model::M2 => SequenceLoss::last_binary(d.last_binary.view()).into(),
            Model::M3 => SequenceLoss::classes(d.labels.view()).weighted(w).into(),
        }
    }

    /// The model's loss: M1 classes averaged over time, M2 the last-step binary target,
    /// M3 classes weighted by α_t.
    pub fn loss(&self) -> SequenceLoss<'_, f64> {
        let d = &self.data;
        match self.model {
            Model::M1 => SequenceLoss::classes(d.labels.view())
                .mean_over_time()
                .into(),
            Model::M2 => SequenceLoss::last_binary(d.last_binary.view()).into(),
            Model::M3 => d.classes(),
        }
    }

    /// The inputs with the model's loss, from h_0 = 0 (or the case's h_0,
    /// [`Case::with_h0`]).
    pub fn seq(&self) -> Sequence<'_, f64> {
        self.seq_with(self.loss())
    }

    /// The inputs with `loss`, from the case's h_0 (0 unless [`Case::with_h0`]).
    pub fn seq_with<'a>(&'a self, loss: SequenceLoss<'a, f64>) -> Sequence<'a, f64> {
        self.data
            .seq(loss)
            .with_h0(self.h0.as_ref().map(|h| h.view()))
    }
}

/// A seeded initial state h_0 of B rows and H units, uniform in ±0.5 (a state a tanh or
/// ReLU cell could reach, far from 0).
pub fn initial_state(b: usize, h: usize, seed: u64) -> Array2<f64> {
    init::uniform((b, h), 0.5, &mut init::rng(seed ^ 0x4830)).unwrap()
}

impl Case {
    /// The path contributions a_{i,t} (0-based i ≤ t) of the loss at step t through the
    /// parameters' use at step i, of batch row `row` alone (all rows for `None`),
    /// measured on the tape: with only the loss of step t and a single cut at step j
    /// (ξ_j = 0, all other ξ = 1) the estimate is C(j) = Σ_{i ≥ j} a_{i,t} (the detached
    /// h_{j−1} still feeds step j). C(0) is the full gradient of that loss and
    /// C(t + 1) := 0, so a_{i,t} = C(i) − C(i + 1). Returns a[t][i].
    pub fn path_contributions(&self, row: Option<usize>) -> Vec<Vec<timetape::Grads<f64>>> {
        use timetape::bptt::{run, Run, Truncation};
        let t_len = self.t();
        let weights = self.weights();
        let mut a = Vec::with_capacity(t_len);
        for t in 0..t_len {
            let w: Vec<f64> = (0..t_len)
                .map(|s| if s == t { weights[s] } else { 0.0 })
                .collect();
            let cut = |j: usize| {
                let mut xi = vec![1.0; t_len];
                xi[j] = 0.0;
                let seq = self.seq_with(self.loss_with(&w));
                let seq = match row {
                    Some(r) => seq.rows(r..r + 1).unwrap(),
                    None => seq,
                };
                run(
                    &self.cell,
                    &self.params,
                    &seq,
                    &Run::new(Truncation::Pattern(xi)),
                )
                .unwrap()
                .grads
            };
            let cs: Vec<timetape::Grads<f64>> = (0..=t).map(cut).collect();
            let differences = (0..=t)
                .map(|i| {
                    let mut d = cs[i].clone();
                    if i < t {
                        let mut next = cs[i + 1].clone();
                        next.scale(-1.0);
                        d.add_assign(&next).unwrap();
                    }
                    d
                })
                .collect();
            a.push(differences);
        }
        a
    }
}
