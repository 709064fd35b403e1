//! PyTorch interchange (issue 12): the committed fixtures of `scripts/torch_fixtures.py`
//! (PyTorch 2.15, float64: `nn.RNN` tanh and relu, `nn.GRU`, `nn.LSTM`, 1 and 2 layers,
//! with and without an `nn.Embedding`; one float32 LSTM) give timetape's loss and every
//! gradient within 1e-9 relative (float64; 1e-4 float32) of PyTorch's; export then
//! import is bit-identical; exporting a PyTorch file gives back its tensors (the summed
//! biases as documented); bad files are errors naming the key, with nothing loaded.
//!
//! The tolerance 1e-9 is the issue's: both sides compute the same sums of a few dozen
//! float64 terms in different orders, so agreement to ~1e-15 is expected (measured
//! ≤ 5e-16) and 1e-9 leaves room for a platform's other rounding, not for a wrong term
//! (which moves a gradient by its own size).

#[path = "../examples/torch_parity/case.rs"]
mod case;

use case::Case;
use ndarray::Array2;
use safetensors::tensor::TensorView;
use safetensors::Dtype;
use timetape::rnn::{Gru, Lstm, Rnn};
use timetape::torch::{self, Precision, Spec, TorchCell, TorchModel, TorchOptions};
use timetape::{Error, Params, Scalar};

const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/torch");

fn fixture(name: &str) -> (Vec<u8>, Case) {
    let bytes = std::fs::read(format!("{DIR}/{name}.safetensors")).expect("fixture");
    let json = std::fs::read_to_string(format!("{DIR}/{name}.json")).expect("fixture");
    (bytes, Case::parse(&json).expect("CASE.json"))
}

fn names() -> Vec<String> {
    let mut out = Vec::new();
    for cell in ["rnn_tanh", "rnn_relu", "gru", "lstm"] {
        for layers in [1, 2] {
            for emb in ["", "_emb"] {
                out.push(format!("{cell}_l{layers}{emb}"));
            }
        }
    }
    out
}

#[test]
fn every_fixture_matches_pytorch_loss_and_gradients_to_1e_9() {
    for name in names() {
        let (bytes, case) = fixture(&name);
        let outcome = case.check(&bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(outcome.precision, Precision::F64, "{name}");
        // Every parameter of the PyTorch model was compared (weights and biases of every
        // layer, the head, the embedding).
        let expected = 2 + 4 * case.num_layers + usize::from(case.tokens.is_some());
        assert_eq!(outcome.grads.len(), expected, "{name}");
        assert!(
            outcome.loss_error() <= 1e-9,
            "{name}: loss {:?}",
            outcome.loss
        );
        for (key, e) in &outcome.grads {
            assert!(*e <= 1e-9, "{name}: {key} relative error {e}");
        }
        assert!(outcome.passes(), "{name}");
    }
}

#[test]
fn a_float32_state_dict_matches_pytorch_to_1e_4() {
    let (bytes, case) = fixture("lstm_l2_f32");
    let outcome = case.check(&bytes).unwrap();
    assert_eq!(outcome.precision, Precision::F32);
    assert!(
        outcome.passes(),
        "loss {:?}, grads {:?}",
        outcome.loss,
        outcome.grads
    );
}

/// The oracle of these tests can fail: a gradient off by one part in 1e-6 (a wrong
/// term would be far more) is reported as failing.
#[test]
fn the_parity_check_fails_on_a_perturbed_gradient() {
    let (bytes, mut case) = fixture("gru_l1");
    if let Some(g) = case.grads.get_mut("rnn.weight_hh_l0") {
        g[[0, 0]] += 1e-6 * g.iter().fold(0.0f64, |m, x| m.max(x.abs()));
    }
    let outcome = case.check(&bytes).unwrap();
    assert!(!outcome.passes());
    let (_, e) = outcome
        .grads
        .iter()
        .find(|(k, _)| k == "rnn.weight_hh_l0")
        .unwrap();
    assert!(*e > 1e-9 && *e < 1e-5, "{e}");
    let mut nan = case;
    if let Some(g) = nan.grads.get_mut("head.bias") {
        g[[0, 0]] = f64::NAN;
    }
    assert!(!nan.check(&bytes).unwrap().passes(), "a NaN passed");
}

fn round_trip<F: Scalar, C: TorchCell>(spec: &Spec, options: &TorchOptions) {
    let mut params = Params::<F>::new();
    let model = TorchModel::<C>::new(&mut params, spec, options, 11).unwrap();
    let bytes = torch::save_state_dict(&model, &params).unwrap();
    let mut back = Params::<F>::new();
    let again: TorchModel<C> = torch::load_state_dict(&bytes, &mut back, options).unwrap();
    assert_eq!(again.stack().layers().len(), spec.layers);
    assert_eq!(again.embedding().is_some(), spec.vocab.is_some());
    // Every exported tensor comes back to the last bit; the lower layers' unused heads
    // are not exported and keep their initial values.
    assert_eq!(
        torch::state_dict(&again, &back).unwrap(),
        torch::state_dict(&model, &params).unwrap(),
        "{spec:?}"
    );
    assert_eq!(torch::save_state_dict(&again, &back).unwrap(), bytes);
}

#[test]
fn export_then_import_is_bit_identical() {
    for layers in [1, 2] {
        for vocab in [None, Some(9)] {
            let spec = Spec {
                input: 3,
                hidden: 5,
                output: 4,
                layers,
                vocab,
            };
            let relu = TorchOptions {
                activation: timetape::Activation::Relu,
                ..TorchOptions::default()
            };
            round_trip::<f64, Rnn>(&spec, &TorchOptions::default());
            round_trip::<f64, Rnn>(&spec, &relu);
            round_trip::<f64, Gru>(&spec, &TorchOptions::default());
            round_trip::<f64, Lstm>(&spec, &TorchOptions::default());
            round_trip::<f32, Lstm>(&spec, &TorchOptions::default());
        }
    }
}

/// Exporting what was imported from PyTorch writes PyTorch's own keys, shapes and
/// dtype: the tensors of the file, except that a summed bias (nn.RNN, nn.LSTM) comes
/// back as `bias_ih` = b_ih + b_hh and `bias_hh` = 0, which PyTorch evaluates the same.
#[test]
fn exporting_an_imported_state_dict_gives_back_pytorchs_tensors() {
    for name in ["gru_l2_emb", "lstm_l2", "rnn_tanh_l1_emb"] {
        let (bytes, _) = fixture(name);
        let mut params = Params::<f64>::new();
        let original = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let exported_bytes = if name.starts_with("gru") {
            let m: TorchModel<Gru> =
                torch::load_state_dict(&bytes, &mut params, &TorchOptions::default()).unwrap();
            torch::save_state_dict(&m, &params).unwrap()
        } else if name.starts_with("lstm") {
            let m: TorchModel<Lstm> =
                torch::load_state_dict(&bytes, &mut params, &TorchOptions::default()).unwrap();
            torch::save_state_dict(&m, &params).unwrap()
        } else {
            let m: TorchModel<Rnn> =
                torch::load_state_dict(&bytes, &mut params, &TorchOptions::default()).unwrap();
            torch::save_state_dict(&m, &params).unwrap()
        };
        let exported = safetensors::SafeTensors::deserialize(&exported_bytes).unwrap();
        let mut keys = original.names();
        keys.sort();
        let mut got = exported.names();
        got.sort();
        assert_eq!(got, keys, "{name}");
        for key in keys {
            let (a, b) = (original.tensor(key).unwrap(), exported.tensor(key).unwrap());
            assert_eq!(
                (a.dtype(), a.shape()),
                (b.dtype(), b.shape()),
                "{name} {key}"
            );
            let summed = !name.starts_with("gru") && key.contains(".bias_");
            if !summed {
                assert_eq!(a.data(), b.data(), "{name} {key}");
                continue;
            }
            let f = |d: &[u8]| -> Vec<f64> {
                d.chunks_exact(8)
                    .map(|c| f64::from_le_bytes(c.try_into().unwrap()))
                    .collect()
            };
            let pair = key
                .replace("bias_ih", "bias_xx")
                .replace("bias_hh", "bias_ih");
            let pair = pair.replace("bias_xx", "bias_hh");
            let other = f(original.tensor(&pair).unwrap().data());
            if key.contains("bias_ih") {
                let want: Vec<f64> = f(a.data()).iter().zip(&other).map(|(x, y)| x + y).collect();
                assert_eq!(f(b.data()), want, "{name} {key}");
            } else {
                assert!(f(b.data()).iter().all(|&x| x == 0.0), "{name} {key}");
            }
        }
    }
}

/// A safetensors file of the given tensors (f64 unless a dtype is given).
fn file(tensors: &[(&str, Vec<usize>, Dtype)]) -> Vec<u8> {
    let data: Vec<(String, Vec<usize>, Dtype, Vec<u8>)> = tensors
        .iter()
        .map(|(k, shape, dtype)| {
            let n: usize = shape.iter().product();
            let width = match dtype {
                Dtype::F16 => 2,
                Dtype::F32 => 4,
                _ => 8,
            };
            (k.to_string(), shape.clone(), *dtype, vec![0u8; n * width])
        })
        .collect();
    let views = data
        .iter()
        .map(|(k, s, d, b)| (k.clone(), TensorView::new(*d, s.clone(), b).unwrap()));
    safetensors::tensor::serialize(views, None).unwrap()
}

/// A valid one-layer nn.GRU state dict (D = 2, H = 3, Q = 2) with `change` applied.
fn gru_file(change: impl Fn(&mut Vec<(&'static str, Vec<usize>, Dtype)>)) -> Vec<u8> {
    let mut t = vec![
        ("rnn.weight_ih_l0", vec![9, 2], Dtype::F64),
        ("rnn.weight_hh_l0", vec![9, 3], Dtype::F64),
        ("rnn.bias_ih_l0", vec![9], Dtype::F64),
        ("rnn.bias_hh_l0", vec![9], Dtype::F64),
        ("head.weight", vec![2, 3], Dtype::F64),
        ("head.bias", vec![2], Dtype::F64),
    ];
    change(&mut t);
    file(&t)
}

#[track_caller]
fn bad(bytes: &[u8], key: &str) {
    let mut params = Params::<f64>::new();
    params.add("mine", Array2::zeros((1, 1))).unwrap();
    let r: timetape::Result<TorchModel<Gru>> =
        torch::load_state_dict(bytes, &mut params, &TorchOptions::default());
    match r {
        Err(Error::BadFile { op, key: k, .. }) => {
            assert_eq!(op, "torch::load_state_dict");
            assert_eq!(k, key);
        }
        other => panic!("expected BadFile for {key}, got {other:?}"),
    }
    assert_eq!(params.len(), 1, "a failed load added parameters");
}

#[test]
fn bad_state_dicts_are_errors_naming_the_key_and_load_nothing() {
    // The valid file loads.
    let mut params = Params::<f64>::new();
    let ok: TorchModel<Gru> =
        torch::load_state_dict(&gru_file(|_| ()), &mut params, &TorchOptions::default()).unwrap();
    assert_eq!(ok.stack().layers().len(), 1);
    // A missing key, a wrong shape, an unsupported dtype, the other float type, a key
    // of a bidirectional layer.
    bad(
        &gru_file(|t| t.retain(|e| e.0 != "rnn.bias_hh_l0")),
        "rnn.bias_hh_l0",
    );
    bad(&gru_file(|t| t[4].1 = vec![2, 4]), "head.weight");
    bad(&gru_file(|t| t[5].2 = Dtype::F16), "head.bias");
    bad(&gru_file(|t| t[2].2 = Dtype::F32), "rnn.bias_ih_l0");
    bad(
        &gru_file(|t| t.push(("rnn.weight_ih_l0_reverse", vec![9, 2], Dtype::F64))),
        "rnn.weight_ih_l0_reverse",
    );
    // An LSTM's file read as a GRU: the recurrent weight has 4H rows, not 3H.
    bad(
        &gru_file(|t| {
            t[0].1 = vec![12, 2];
            t[1].1 = vec![12, 3];
        }),
        "rnn.weight_hh_l0",
    );
    // A NaN in a weight.
    let valid = gru_file(|_| ());
    let mut nan = valid.clone();
    let n = nan.len();
    nan[n - 8..].copy_from_slice(&f64::NAN.to_le_bytes());
    let last = safetensors::SafeTensors::deserialize(&valid).unwrap();
    let mut offsets: Vec<(usize, String)> = last
        .tensors()
        .into_iter()
        .map(|(k, v)| {
            (
                v.data().as_ptr() as usize - valid.as_ptr() as usize + v.data().len(),
                k,
            )
        })
        .collect();
    offsets.sort();
    bad(&nan, &offsets.last().unwrap().1);
    // Not a safetensors file at all, and every truncation of a valid one.
    bad(b"not a state dict", "file");
    for cut in [0, 1, 7, 8, 20, valid.len() / 2, valid.len() - 1] {
        let mut params = Params::<f64>::new();
        let r: timetape::Result<TorchModel<Gru>> =
            torch::load_state_dict(&valid[..cut], &mut params, &TorchOptions::default());
        assert!(
            matches!(r, Err(Error::BadFile { .. })),
            "cut at {cut}: {r:?}"
        );
        assert!(params.is_empty());
    }
    // A store that already has the names.
    let mut params = Params::<f64>::new();
    let _: TorchModel<Gru> =
        torch::load_state_dict(&valid, &mut params, &TorchOptions::default()).unwrap();
    let n = params.len();
    let again: timetape::Result<TorchModel<Gru>> =
        torch::load_state_dict(&valid, &mut params, &TorchOptions::default());
    assert!(
        matches!(again, Err(Error::InvalidArgument { .. })),
        "{again:?}"
    );
    assert_eq!(params.len(), n);
    // A missing file.
    let missing: timetape::Result<TorchModel<Gru>> = torch::load_state_dict_file(
        "/nonexistent/model.safetensors",
        &mut Params::<f64>::new(),
        &TorchOptions::default(),
    );
    assert!(matches!(missing, Err(Error::Io { .. })), "{missing:?}");
}
