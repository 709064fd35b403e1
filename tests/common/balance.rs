//! The influence-balancing cell of Tallec & Ollivier (FORMULAS.md, "Validation cases"),
//! written as a user would, through the public `Recurrent` trait, batch-major:
//! `s_t = s_{t−1} Aᵀ + θσ`, output `o_t = s_t e₁`, with `A = ½ I + ½ J` (J: ones on the
//! superdiagonal) and `σ = (+1 ×p, −1 ×(n−p))`. Shared by `bptt_influence_balancing.rs`
//! and `bptt_windows.rs`.

use ndarray::Array2;
use timetape::rnn::Recurrent;
use timetape::{ParamId, Params, Result, Tape, Var};

/// The influence-balancing cell. Input: a (k·B)×1 column of ones per segment.
pub struct Balance {
    /// The number of units n.
    pub n: usize,
    /// The scalar parameter θ.
    pub theta: ParamId,
    /// σ as a 1×n row.
    pub sigma: Array2<f64>,
    /// Aᵀ (n×n): the row form of s ↦ A s.
    pub a_t: Array2<f64>,
    /// e₁ (n×1): reads the first unit.
    pub e1: Array2<f64>,
}

/// The cell's values on a tape.
#[derive(Clone, Copy)]
pub struct Bound {
    theta: Var,
    sigma: Var,
    a_t: Var,
    e1: Var,
}

impl Balance {
    /// The cell with n units, p of them fed +θ, θ registered in `params` as "theta".
    pub fn new(params: &mut Params<f64>, n: usize, p: usize, theta: f64) -> Balance {
        let theta = params
            .add("theta", Array2::from_elem((1, 1), theta))
            .unwrap();
        let sigma = Array2::from_shape_fn((1, n), |(_, i)| if i < p { 1.0 } else { -1.0 });
        // (A s)_i = ½ s_i + ½ s_{i+1}: A_ii = ½, A_{i,i+1} = ½; Aᵀ_{ii} = ½, Aᵀ_{i+1,i} = ½.
        let a_t = Array2::from_shape_fn(
            (n, n),
            |(r, c)| if r == c || r == c + 1 { 0.5 } else { 0.0 },
        );
        let e1 = Array2::from_shape_fn((n, 1), |(r, _)| if r == 0 { 1.0 } else { 0.0 });
        Balance {
            n,
            theta,
            sigma,
            a_t,
            e1,
        }
    }

    /// The stationary state for θ: s*_i = s*_{i+1} + 2θσ_i, s*_{n+1} = 0 (a 1×n row).
    pub fn fixed_point(&self, theta: f64) -> Array2<f64> {
        let mut s = Array2::zeros((1, self.n));
        let mut next = 0.0;
        for i in (0..self.n).rev() {
            next += 2.0 * theta * self.sigma[[0, i]];
            s[[0, i]] = next;
        }
        s
    }
}

impl Recurrent<f64> for Balance {
    type Bound = Bound;

    fn input_width(&self) -> usize {
        1
    }

    fn state_width(&self) -> usize {
        self.n
    }

    fn output_width(&self) -> usize {
        1
    }

    fn bind(&self, tape: &mut Tape<f64>, params: &Params<f64>) -> Result<Bound> {
        Ok(Bound {
            theta: tape.param(params, self.theta)?,
            sigma: tape.constant(self.sigma.clone())?,
            a_t: tape.constant(self.a_t.clone())?,
            e1: tape.constant(self.e1.clone())?,
        })
    }

    /// `s_t = s_{t−1} Aᵀ + x_t θσ` (the input is 1 at every step).
    fn step(&self, tape: &mut Tape<f64>, b: &Bound, x: Var, h: Var) -> Result<Var> {
        let ts = tape.matmul(b.theta, b.sigma)?;
        let u = tape.matmul(x, ts)?;
        let r = tape.matmul(h, b.a_t)?;
        tape.add(r, u)
    }

    fn output(&self, tape: &mut Tape<f64>, b: &Bound, hs: Var) -> Result<Var> {
        tape.matmul(hs, b.e1)
    }
}
