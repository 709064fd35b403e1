//! Checks timetape against PyTorch on your own model:
//!
//! ```text
//! cargo run --release --example torch_parity -- MODEL.safetensors CASE.json
//! ```
//!
//! MODEL.safetensors is the state dict (`safetensors.torch.save_file(model.state_dict(),
//! path)`, float64 or float32) of `embedding` (optional `nn.Embedding`) → `rnn`
//! (`nn.RNN` tanh/relu, `nn.GRU`, `nn.LSTM`, unidirectional) → `head` (`nn.Linear`);
//! CASE.json is
//! `{"cell": "rnn_tanh" | "rnn_relu" | "gru" | "lstm", "num_layers": L, "hidden": H,
//! "inputs": T×B×D floats or "tokens": T×B ids, "labels": T×B, "loss": L,
//! "grads": {"rnn.weight_ih_l0": [[…]], …}}` with PyTorch's loss (softmax cross-entropy
//! at every step, mean over batch and time, h_0 = 0) and `param.grad` of every
//! parameter. `scripts/torch_fixtures.py` writes such pairs.
//!
//! Prints the loss and each gradient's relative error (largest absolute difference over
//! the largest PyTorch entry) and exits non-zero if any exceeds 1e-9 (float64) or 1e-4
//! (float32).

mod case;

use case::Case;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [model, case] = args.as_slice() else {
        eprintln!("usage: torch_parity MODEL.safetensors CASE.json");
        return ExitCode::from(2);
    };
    let checked = std::fs::read(model)
        .map_err(|e| format!("cannot read {model}: {e}"))
        .and_then(|bytes| {
            let json =
                std::fs::read_to_string(case).map_err(|e| format!("cannot read {case}: {e}"))?;
            Case::parse(&json)?.check(&bytes)
        });
    let outcome = match checked {
        Ok(o) => o,
        Err(e) => {
            eprintln!("torch_parity: {e}");
            return ExitCode::from(2);
        }
    };
    let tol = outcome.tolerance();
    let (ours, theirs) = outcome.loss;
    println!(
        "loss: timetape {ours:.17e}  PyTorch {theirs:.17e}  relative error {:.2e}",
        outcome.loss_error()
    );
    for (key, e) in &outcome.grads {
        let mark = if *e <= tol { "ok" } else { "FAIL" };
        println!("{key:<28} max relative error {e:.2e}  {mark}");
    }
    if outcome.passes() {
        println!("parity within {tol:e}");
        ExitCode::SUCCESS
    } else {
        println!("parity NOT within {tol:e}");
        ExitCode::FAILURE
    }
}
