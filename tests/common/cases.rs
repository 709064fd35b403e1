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
pub struct Case {
    /// Which model.
    pub model: Model,
    /// Its parameters.
    pub params: Params<f64>,
    /// The cell.
    pub cell: Rnn,
    /// Inputs and targets.
    pub data: Data,
}

impl Case {
    /// The model over `t` steps, weights and data from `seed`.
    pub fn new(model: Model, t: usize, seed: u64) -> Case {
        let (b, d, h, q) = (2, 3, 4, 3);
        let mut params = Params::<f64>::new();
        let cell = match model {
            Model::M1 => models::m1(&mut params, Sizes::new(d, h, q), seed),
            Model::M2 => models::m2(&mut params, d, h, seed),
            Model::M3 => models::m3(&mut params, Sizes::new(d, h, q), seed),
        }
        .unwrap();
        let q = cell.config.output;
        let mut rng = init::rng(seed ^ 0xb977);
        let w_hh = init::uniform((h, h), 0.45, &mut rng).unwrap();
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
        }
    }

    /// Steps T.
    pub fn t(&self) -> usize {
        self.data.xs.dim().0
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

    /// The inputs with the model's loss, from h_0 = 0.
    pub fn seq(&self) -> Sequence<'_, f64> {
        self.data.seq(self.loss())
    }
}
