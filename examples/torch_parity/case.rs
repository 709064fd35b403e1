//! A parity case: a PyTorch state dict and the JSON of inputs, labels, loss and
//! gradients that PyTorch computed for it (`scripts/torch_fixtures.py` writes both),
//! checked against timetape's full BPTT on the imported model. Shared by
//! `examples/torch_parity` and `tests/torch_parity.rs`.

use ndarray::{Array2, Array3};
use serde_json::Value;
use std::collections::BTreeMap;
use timetape::bptt::{self, Run, Truncation};
use timetape::rnn::{Gru, Lstm, Recurrent, Rnn, Sequence, SequenceLoss};
use timetape::torch::{self, Precision, TorchCell, TorchModel, TorchOptions};
use timetape::{Activation, Params, Scalar};

/// What CASE.json holds.
pub struct Case {
    /// `rnn_tanh`, `rnn_relu`, `gru` or `lstm`.
    pub cell: String,
    pub num_layers: usize,
    pub hidden: usize,
    /// T×B×D inputs, or T×B token ids.
    pub inputs: Option<Array3<f64>>,
    pub tokens: Option<Array2<usize>>,
    /// T×B class labels.
    pub labels: Array2<usize>,
    /// PyTorch's loss and gradients (keyed by state-dict name).
    pub loss: f64,
    pub grads: BTreeMap<String, Array2<f64>>,
}

/// The comparison: timetape's loss beside PyTorch's, and per gradient the largest
/// absolute difference over the largest PyTorch entry (infinite for a non-finite one).
pub struct Outcome {
    pub precision: Precision,
    pub loss: (f64, f64),
    pub grads: Vec<(String, f64)>,
}

impl Outcome {
    /// The tolerance of the issue: 1e-9 relative in float64, 1e-4 in float32.
    pub fn tolerance(&self) -> f64 {
        match self.precision {
            Precision::F64 => 1e-9,
            Precision::F32 => 1e-4,
        }
    }

    /// The relative error of the loss.
    pub fn loss_error(&self) -> f64 {
        rel(&[self.loss.0], &[self.loss.1])
    }

    /// Every error within the tolerance (and every gradient of PyTorch compared).
    pub fn passes(&self) -> bool {
        let tol = self.tolerance();
        self.loss_error() <= tol && self.grads.iter().all(|(_, e)| *e <= tol)
    }
}

/// max |a − b| / max |b|; infinite if anything is not finite or the sizes differ.
pub fn rel(a: &[f64], b: &[f64]) -> f64 {
    if a.len() != b.len() || a.iter().chain(b).any(|x| !x.is_finite()) {
        return f64::INFINITY;
    }
    let scale = b
        .iter()
        .fold(0.0f64, |m, x| m.max(x.abs()))
        .max(f64::MIN_POSITIVE);
    let diff = a
        .iter()
        .zip(b)
        .fold(0.0f64, |m, (x, y)| m.max((x - y).abs()));
    diff / scale
}

fn err(what: impl std::fmt::Display) -> String {
    what.to_string()
}

/// A JSON array of arrays of numbers as a matrix (a flat array as one row).
fn matrix(v: &Value) -> Result<Array2<f64>, String> {
    let rows: Vec<Vec<f64>> = match v {
        Value::Array(items) if items.iter().all(Value::is_number) => {
            vec![items.iter().filter_map(Value::as_f64).collect()]
        }
        Value::Array(items) => items
            .iter()
            .map(|r| {
                r.as_array()
                    .ok_or("a row is not an array")?
                    .iter()
                    .map(|x| x.as_f64().ok_or("not a number"))
                    .collect::<Result<Vec<f64>, _>>()
            })
            .collect::<Result<_, _>>()?,
        _ => return Err("not an array".into()),
    };
    let (r, c) = (rows.len(), rows.first().map_or(0, Vec::len));
    Array2::from_shape_vec((r, c), rows.concat()).map_err(err)
}

fn ids(v: &Value) -> Result<Array2<usize>, String> {
    let m = matrix(v)?;
    if m.iter().any(|&x| x < 0.0 || x.fract() != 0.0) {
        return Err("ids must be non-negative integers".into());
    }
    Ok(m.mapv(|x| x as usize))
}

impl Case {
    /// Reads CASE.json.
    pub fn parse(json: &str) -> Result<Case, String> {
        let v: Value = serde_json::from_str(json).map_err(err)?;
        let field = |k: &str| v.get(k).ok_or(format!("CASE.json has no {k:?}"));
        let count = |k: &str| -> Result<usize, String> {
            field(k)?
                .as_u64()
                .map(|n| n as usize)
                .ok_or(format!("{k:?} is not a count"))
        };
        let inputs = match v.get("inputs") {
            Some(Value::Array(steps)) => {
                let steps: Vec<Array2<f64>> = steps.iter().map(matrix).collect::<Result<_, _>>()?;
                let (b, d) = steps.first().map_or((0, 0), |s| s.dim());
                let flat: Vec<f64> = steps.iter().flat_map(|s| s.iter().copied()).collect();
                Some(Array3::from_shape_vec((steps.len(), b, d), flat).map_err(err)?)
            }
            _ => None,
        };
        let tokens = v.get("tokens").map(ids).transpose()?;
        if inputs.is_none() == tokens.is_none() {
            return Err("CASE.json needs either \"inputs\" or \"tokens\"".into());
        }
        let grads = field("grads")?
            .as_object()
            .ok_or("\"grads\" is not an object")?
            .iter()
            .map(|(k, g)| Ok((k.clone(), matrix(g).map_err(|e| format!("grads.{k}: {e}"))?)))
            .collect::<Result<_, String>>()?;
        Ok(Case {
            cell: field("cell")?
                .as_str()
                .ok_or("\"cell\" is not a string")?
                .into(),
            num_layers: count("num_layers")?,
            hidden: count("hidden")?,
            inputs,
            tokens,
            labels: ids(field("labels")?)?,
            loss: field("loss")?.as_f64().ok_or("\"loss\" is not a number")?,
            grads,
        })
    }

    /// Imports the state dict `model` (float32 or float64), runs full BPTT on the case's
    /// data (softmax cross-entropy at every step, mean over batch and time, h_0 = 0) and
    /// compares with PyTorch's loss and gradients.
    pub fn check(&self, model: &[u8]) -> Result<Outcome, String> {
        let precision = torch::precision(model).map_err(err)?;
        let mut options = TorchOptions::default();
        match (self.cell.as_str(), precision) {
            ("rnn_tanh" | "rnn_relu", p) => {
                if self.cell == "rnn_relu" {
                    options.activation = Activation::Relu;
                }
                match p {
                    Precision::F64 => self.run::<f64, Rnn>(model, &options),
                    Precision::F32 => self.run::<f32, Rnn>(model, &options),
                }
            }
            ("gru", Precision::F64) => self.run::<f64, Gru>(model, &options),
            ("gru", Precision::F32) => self.run::<f32, Gru>(model, &options),
            ("lstm", Precision::F64) => self.run::<f64, Lstm>(model, &options),
            ("lstm", Precision::F32) => self.run::<f32, Lstm>(model, &options),
            (other, _) => Err(format!("unknown cell {other:?}")),
        }
    }

    fn run<F: Scalar, C: TorchCell + Recurrent<F>>(
        &self,
        bytes: &[u8],
        options: &TorchOptions,
    ) -> Result<Outcome, String> {
        let mut params = Params::<F>::new();
        let model: TorchModel<C> =
            torch::load_state_dict(bytes, &mut params, options).map_err(err)?;
        let layers = model.stack().layers().len();
        let hidden = Recurrent::<F>::next_input_width(&model.stack().layers()[0]);
        if (layers, hidden) != (self.num_layers, self.hidden) {
            return Err(format!(
                "the state dict has {layers} layers of {hidden}, CASE.json says {} of {}",
                self.num_layers, self.hidden
            ));
        }
        let labels = self.labels.view();
        let loss = || SequenceLoss::classes(labels).mean_over_time();
        let run = Run::new(Truncation::Full);
        let report = match (&self.inputs, &self.tokens, model.embedded()) {
            (Some(xs), None, None) => {
                let xs = xs.mapv(F::of);
                bptt::run(
                    model.stack(),
                    &params,
                    &Sequence::new(xs.view(), loss()),
                    &run,
                )
            }
            (None, Some(ids), Some(embedded)) => bptt::run(
                &embedded,
                &params,
                &Sequence::tokens(ids.view(), loss()),
                &run,
            ),
            _ => return Err("tokens need a model with an embedding, inputs one without".into()),
        }
        .map_err(err)?;
        let ours = torch::state_dict_grads(&model, &report.grads).map_err(err)?;
        let mut grads = Vec::new();
        for (key, theirs) in &self.grads {
            let e = match ours.iter().find(|(k, _)| k == key) {
                Some((_, g)) => {
                    let g: Vec<f64> = g.iter().map(|x| x.as_f64()).collect();
                    rel(&g, theirs.as_slice().unwrap_or(&[]))
                }
                None => f64::INFINITY,
            };
            grads.push((key.clone(), e));
        }
        Ok(Outcome {
            precision: torch::precision(bytes).map_err(err)?,
            loss: (report.loss.as_f64(), self.loss),
            grads,
        })
    }
}
