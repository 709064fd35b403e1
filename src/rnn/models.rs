//! The four models of the notes (FORMULAS.md, M1–M4) as [`Rnn`] configurations.
//!
//! | model | cell | loss |
//! |---|---|---|
//! | M1 | linear (`φ = id`), no biases | per step, `L = (1/T) Σ_t l(o_t, y_t)`: [`SequenceLoss::mean_over_time`] with softmax cross-entropy ([`Targets::Classes`]) or squared error ([`Targets::Values`]) |
//! | M2 | ReLU with bias `b`, output bias `d`, Q = 1 | last step: `σ(o_T)` with binary cross-entropy, [`Targets::LastBinary`] |
//! | M3 | tanh with both biases | softmax cross-entropy at every step, `L = Σ_t α_t L_t` ([`SequenceLoss::weighted`]) |
//! | M4 | any φ ([`Activation`]), both biases | any of the above (`g` = softmax or identity) |
//!
//! Naming: the notes' `W_hx, W_hh, W_qh` (M1), `U, W, V, b, d` (M2), `U, W, V, b_a, b_y`
//! (M3) and `W_x, W_h, W_y, b_h, b_y` (M4) are the transposes of, respectively, the
//! parameters `W_xh, W_hh, W_hq` and the biases `b_h, b_q` of [`Rnn`].
//!
//! [`SequenceLoss::mean_over_time`]: super::SequenceLoss::mean_over_time
//! [`SequenceLoss::weighted`]: super::SequenceLoss::weighted
//! [`Targets::Classes`]: super::Targets::Classes
//! [`Targets::Values`]: super::Targets::Values
//! [`Targets::LastBinary`]: super::Targets::LastBinary

use super::{Activation, Rnn, RnnConfig};
use crate::error::Result;
use crate::params::Params;
use crate::scalar::Scalar;

/// M1: `h_t = x_t W_xh + h_{t−1} W_hh`, `o_t = h_t W_hq` (no biases).
pub fn m1<F: Scalar>(
    params: &mut Params<F>,
    input: usize,
    hidden: usize,
    output: usize,
    seed: u64,
) -> Result<Rnn> {
    let c = RnnConfig::new(input, hidden, output)
        .activation(Activation::Identity)
        .biases(false, false);
    Rnn::new(params, c, seed)
}

/// M2: `h_t = ReLU(x_t W_xh + h_{t−1} W_hh + b_h)`, `y = σ(h_T W_hq + b_q)` with one output.
pub fn m2<F: Scalar>(
    params: &mut Params<F>,
    input: usize,
    hidden: usize,
    seed: u64,
) -> Result<Rnn> {
    let c = RnnConfig::new(input, hidden, 1).activation(Activation::Relu);
    Rnn::new(params, c, seed)
}

/// M3: `S_t = tanh(x_t W_xh + S_{t−1} W_hh + b_h)`, logits `S_t W_hq + b_q`.
pub fn m3<F: Scalar>(
    params: &mut Params<F>,
    input: usize,
    hidden: usize,
    output: usize,
    seed: u64,
) -> Result<Rnn> {
    Rnn::new(params, RnnConfig::new(input, hidden, output), seed)
}

/// M4: `h_t = f(x_t W_xh + h_{t−1} W_hh + b_h)` with any `f`, output `h_t W_hq + b_q`.
pub fn m4<F: Scalar>(
    params: &mut Params<F>,
    input: usize,
    hidden: usize,
    output: usize,
    f: Activation,
    seed: u64,
) -> Result<Rnn> {
    Rnn::new(
        params,
        RnnConfig::new(input, hidden, output).activation(f),
        seed,
    )
}
