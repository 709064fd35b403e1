//! Online (forward-mode) gradient estimators: real-time recurrent learning (RTRL), UORO
//! (Tallec & Ollivier 2017) and KF-RTRL (Mujika, Meier & Steger 2018).
//!
//! These carry the influence matrix `M_t = ∂h_t/∂θ` (or an unbiased, low-rank stand-in for
//! it) forward in time instead of backpropagating: the notes' forward recursion
//! (FORMULAS.md, eq (3), with the ξ_t of randomized truncation)
//!
//! ```text
//! M_t = J^θ_t + ξ_t J^h_t M_{t−1},   M_0 = 0,   J^θ_t = ∂f_t/∂θ,   J^h_t = ∂f_t/∂h_{t−1},
//! ĝ = Σ_t ( ∂L_t/∂θ|_{step t} + ξ_t (∂L_t/∂h_t J^h_t) M_{t−1} ).
//! ```
//!
//! The gradient of step t's loss is its one-step backward pass (through step t's own
//! use of θ, and the head) plus the part through earlier steps, `∂L_t/∂h_{t−1} · M_{t−1}`,
//! so that every estimator below plugs an estimate of `M_{t−1}` into the same sum.
//!
//! | estimator | `M_t` carried as | floats carried (B = 1, n = S) | unbiased |
//! |---|---|---|---|
//! | [`Estimator::Rtrl`] | `M_t` exactly (with the ξ of a [`Truncation`]) | n·P | exact (ξ ≡ 1), or as the ξ's truncation |
//! | [`Estimator::Uoro`] | `s̃_t θ̃_tᵀ`, rank one | n + P | yes |
//! | [`Estimator::KfRtrl`] | `u_t ⊗ A_t` (vanilla RNN) | n² + (D + n + 1) | yes |
//!
//! With ξ ≡ 1, RTRL gives the gradient of [`Truncation::Full`]; with a pattern of ξ it
//! gives that of [`Truncation::Pattern`]: the forward and the reverse forms of the
//! estimator agree (`tests/online_estimators.rs` checks both to 1e-12).
//!
//! **How the Jacobians are obtained.** Each step is recorded on a tape of its own (the
//! cell's step and its loss term, with `h_{t−1}` a variable) and differentiated by
//! vector–Jacobian products ([`Tape::backward_with`](crate::Tape::backward_with)): one
//! for the loss, and one per entry of the B×S state for the rows of `J^h_t` and `J^θ_t`.
//! So any cell of the crate works, and the Jacobians are the tape's own; the price is
//! B·S + 1 one-step backward passes per step, which is what RTRL costs anyway but more
//! than a production UORO or KF-RTRL would spend (they need one forward-mode product),
//! and while it linearizes a step it holds that step's Jacobians, B·S × (B·S + P)
//! floats: the carried estimate is the papers' (B·S + P floats for UORO, the "carried
//! floats" of [`super::atlas`]), the workspace of a step is RTRL's. Memory does not
//! grow with T: one step's tape, its Jacobians and the carried estimate.
//!
//! **Noise.** UORO draws a Rademacher vector ν_t ∈ {±1}^{B·S} per step; KF-RTRL one
//! sign per batch row and step (the paper's two signs c₁, c₂ enter `u_t ⊗ A_t` only
//! through their product). [`Noise::Seeded`] draws them from ChaCha8; [`Noise::Signs`]
//! gives them explicitly, so that the exact expectation can be computed by enumerating
//! every pattern ([`super::atlas`]).
//!
//! **Scalings.** UORO's `ρ₀ = √((‖θ̃‖ + ε)/(‖J^h s̃‖ + ε))` and
//! `ρ₁ = √((‖ν^T J^θ‖ + ε)/(‖ν‖ + ε))`, KF-RTRL's `p₁ = √((‖J^h A‖ + ε)/(‖u‖ + ε))` and
//! `p₂ = √((‖D‖ + ε)/(‖ĥ‖ + ε))`, ε = 1e-7, balance the norms of the two factors of
//! each noise term, which minimizes the variance the step adds (the papers' choice, with
//! the ε of their code). Unbiasedness holds for any positive scalings that do not depend
//! on the current step's noise (ρ₀, p₁, p₂) or are even in it (ρ₁).

use super::segment::{Edge, Engine, Problem};
use super::{Report, RunOptions, Truncation, XiSampler, XiTable};
use crate::error::{invalid, Error, Result};
use crate::ops::Activation;
use crate::params::{Grads, ParamId, Params};
use crate::rnn::{Recurrent, Rnn, Sequence};
use crate::scalar::Scalar;
use ndarray::{Array1, Array2, ArrayView1, ArrayView2, ArrayViewMut1, Axis, Slice};
use rand::Rng;
use rand_chacha::ChaCha8Rng;

/// An online gradient estimator (see the [module docs](self)).
#[derive(Debug, Clone)]
pub enum Estimator {
    /// Real-time recurrent learning: the influence matrix carried exactly, with the ξ_t
    /// of a cut-based truncation on its recursion ([`Truncation::Full`]: ξ ≡ 1, the exact
    /// gradient; [`Truncation::Pattern`], `Fixed`, `Randomized`, …: the same estimate as
    /// the reverse-mode run of that truncation). TBPTT with k2 ≠ k1 has no ξ and is
    /// refused.
    Rtrl(Truncation),
    /// UORO: a rank-one `s̃_t θ̃_tᵀ` whose expectation is `M_t`.
    Uoro(Noise),
    /// KF-RTRL, for the vanilla [`Rnn`]: `u_t ⊗ A_t` whose expectation is the influence
    /// of `[W_xh; W_hh; b_h]`.
    KfRtrl {
        /// The RNN's recurrent parameters and activation ([`Kronecker::of`]).
        factors: Kronecker,
        /// Where the signs come from.
        noise: Noise,
    },
}

/// The random signs of UORO and KF-RTRL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Noise {
    /// Drawn from a ChaCha8 stream with this seed (the same seed, the same estimate).
    Seeded(u64),
    /// Given explicitly, each +1 or −1, consumed step after step: B·S per step for
    /// UORO (row-major over the B×S state), B per step for KF-RTRL (one per batch row).
    Signs(Vec<i8>),
}

/// What KF-RTRL needs to know of a vanilla [`Rnn`]: its recurrent parameters, whose
/// influence factors as `∂h_t/∂W̃ = ĥ_t ⊗ D_t` with `W̃ = [W_xh; W_hh; b_h]`,
/// `ĥ_t = [x_t, h_{t−1}, 1]` and `D_t = diag φ′(a_t)`, and its activation φ.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Kronecker {
    w_xh: ParamId,
    w_hh: ParamId,
    b_h: Option<ParamId>,
    activation: Activation,
}

impl Kronecker {
    /// The factors of `rnn` (use the estimator with this same cell).
    pub fn of(rnn: &Rnn) -> Self {
        Kronecker {
            w_xh: rnn.w_xh,
            w_hh: rnn.w_hh,
            b_h: rnn.b_h,
            activation: rnn.config.activation,
        }
    }
}

/// The ε of the scalings of UORO and KF-RTRL (module docs).
const EPS: f64 = 1e-7;

/// Runs `seq` with an online estimator, one step at a time: the loss, the gradient
/// estimate and what it cost, as a [`Report`] (`backward_steps` and `segments` count one
/// per step, each step's own tape; `xi` is the ξ of [`Estimator::Rtrl`] for a
/// `Randomized` or `Pattern` truncation).
///
/// ```
/// use ndarray::{Array2, Array3};
/// use timetape::bptt::online::{self, Estimator};
/// use timetape::bptt::{run, Run, Truncation};
/// use timetape::rnn::{models, SequenceLoss, Sequence, Sizes};
/// use timetape::Params;
///
/// let mut params = Params::<f64>::new();
/// let cell = models::m3(&mut params, Sizes::new(2, 3, 2), 0)?;
/// let xs = Array3::from_shape_fn((6, 1, 2), |(t, _, d)| ((t + 2 * d) as f64).sin());
/// let labels = Array2::from_shape_fn((6, 1), |(t, _)| t % 2);
/// let seq = Sequence::new(xs.view(), SequenceLoss::classes(labels.view()));
///
/// let rtrl = online::run(&cell, &params, &seq, &Estimator::Rtrl(Truncation::Full))?;
/// let bptt = run(&cell, &params, &seq, &Run::new(Truncation::Full))?;
/// assert!(rtrl.grads.max_rel_diff(&bptt.grads) < 1e-12); // forward = reverse
/// # Ok::<(), timetape::Error>(())
/// ```
///
/// Errors: as [`super::run`]; [`Error::InvalidArgument`] for TBPTT with k2 ≠ k1, signs
/// other than ±1, KF-RTRL on token inputs or with factors whose parameters do not fit
/// the cell; [`Error::ShapeMismatch`] for a number of signs that does not fit T and the
/// state.
pub fn run<F: Scalar, C: Recurrent<F>>(
    cell: &C,
    params: &Params<F>,
    seq: &Sequence<'_, F>,
    estimator: &Estimator,
) -> Result<Report<F>> {
    let problem = Problem::new(cell, seq)?;
    let layout = Layout::of(params);
    let dims = Dims::of(cell, &problem);
    let mut carried = Carried::new(estimator, dims, params, &layout)?;
    let mut engine = Engine::new(cell, params, RunOptions::default());
    let mut through = Array1::zeros(layout.len);
    let mut direct = Array1::zeros(layout.len);
    let h = sweep(&mut engine, &problem, &layout, |t, lin| {
        direct.scaled_add(F::one(), &lin.direct);
        carried.absorb(t, lin, &mut through)
    })?;
    layout.add_into(direct.view(), &mut engine.grads)?;
    layout.add_into(through.view(), &mut engine.grads)?;
    engine.grads.check_finite("online::run")?;
    engine.xi_rows = carried.xi_rows();
    engine.report(carried.xi(), h)
}

/// Linearizes the steps of `problem` one after another from its h_0, handing each to
/// `each` (with its 0-based index); returns h_T.
fn sweep<F: Scalar, C: Recurrent<F>>(
    engine: &mut Engine<'_, F, C>,
    problem: &Problem<'_, F>,
    layout: &Layout,
    mut each: impl FnMut(usize, &StepLinearization<F>) -> Result<()>,
) -> Result<Array2<F>> {
    let mut step = Linearizer::new(layout, engine.params, problem.h0.dim());
    let mut h = problem.h0.clone();
    for t in 0..problem.len() {
        step.linearize(engine, problem, t, h.view())
            .map_err(|e| e.at_step_offset(t))?;
        each(t, &step.lin)?;
        h.assign(&step.lin.h);
    }
    Ok(h)
}

/// The sizes an estimator's carried state depends on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Dims {
    /// Steps T.
    /// Steps T (`None` for a stream, whose length is not known).
    pub(crate) t_len: Option<usize>,
    /// Batch rows B, state width S, input width D.
    pub(crate) b: usize,
    pub(crate) s: usize,
    pub(crate) d: usize,
    /// Whether the inputs are tokens.
    pub(crate) tokens: bool,
    /// Whether some rows are reset inside the sequence.
    pub(crate) resets: bool,
}

impl Dims {
    pub(crate) fn of<F: Scalar, C: Recurrent<F>>(cell: &C, problem: &Problem<'_, F>) -> Self {
        let (b, s) = problem.h0.dim();
        Dims {
            t_len: Some(problem.len()),
            b,
            s,
            d: cell.input_width(),
            tokens: problem.tokens.is_some(),
            resets: problem.resets.is_some(),
        }
    }
}

/// Every step of a sequence linearized once, so that the online estimators can be
/// replayed on it for many noise patterns without recording a tape again (the
/// enumerations and Monte Carlo runs of [`super::atlas`]). Memory grows with T.
#[derive(Debug, Clone)]
pub(crate) struct Trace<F> {
    pub(crate) layout: Layout,
    pub(crate) dims: Dims,
    pub(crate) steps: Vec<StepLinearization<F>>,
    /// Σ_t of the steps' direct gradients.
    pub(crate) direct: Array1<F>,
    /// What the linearizing run cost (its grads are not used).
    pub(crate) report: Report<F>,
}

impl<F: Scalar> Trace<F> {
    pub(crate) fn new<C: Recurrent<F>>(
        cell: &C,
        params: &Params<F>,
        seq: &Sequence<'_, F>,
    ) -> Result<Self> {
        let problem = Problem::new(cell, seq)?;
        let layout = Layout::of(params);
        let dims = Dims::of(cell, &problem);
        let mut engine = Engine::new(cell, params, RunOptions::default());
        // Every step's Jacobians, T·n × (n + P).
        let n = dims.b.saturating_mul(dims.s);
        let rows = problem.len().saturating_mul(n);
        crate::init::check_alloc::<F>("online (trace)", &[(rows, n.saturating_add(layout.len))])?;
        let mut steps = Vec::with_capacity(problem.len());
        let mut direct = Array1::zeros(layout.len);
        let h = sweep(&mut engine, &problem, &layout, |_, lin| {
            direct.scaled_add(F::one(), &lin.direct);
            steps.push(lin.clone());
            Ok(())
        })?;
        let report = engine.report(None, h)?;
        Ok(Trace {
            layout,
            dims,
            steps,
            direct,
            report,
        })
    }

    /// The estimate of `estimator` on the traced sequence, as [`run`] would give it.
    pub(crate) fn replay(&self, estimator: &Estimator, params: &Params<F>) -> Result<Grads<F>> {
        let mut carried = Carried::new(estimator, self.dims, params, &self.layout)?;
        let mut g = self.direct.clone();
        let mut through = Array1::zeros(self.layout.len);
        for (t, lin) in self.steps.iter().enumerate() {
            carried.absorb(t, lin, &mut through)?;
        }
        g.scaled_add(F::one(), &through);
        let mut grads = Grads::zeros_like(params);
        self.layout.add_into(g.view(), &mut grads)?;
        grads.check_finite("online (replay)")?;
        Ok(grads)
    }

    /// Floats an estimator carries from step to step (besides h_t).
    pub(crate) fn carried_floats(&self, estimator: &Estimator) -> usize {
        let Dims { b, s, d, .. } = self.dims;
        match estimator {
            Estimator::Rtrl(_) => b * s * self.layout.len,
            Estimator::Uoro(_) => b * s + self.layout.len,
            Estimator::KfRtrl { .. } => b * (s * s + d + s + 1),
        }
    }
}

/// Online learning with a forward-mode estimator: steps fed one at a time, a gradient
/// estimate after each (of that step's loss, through every earlier step the estimator
/// carries), memory independent of the number of steps. Between steps the parameters may
/// change (update them with each estimate, as UORO and RTRL are meant to be used); the
/// carried influence then mixes Jacobians taken at earlier parameters, the usual online
/// approximation. With the parameters held fixed, the estimates of T steps add up to
/// [`run`]'s gradient for the same estimator (same seed, same signs).
///
/// ```
/// use ndarray::Array2;
/// use timetape::bptt::online::{Estimator, Noise, OnlineStream};
/// use timetape::bptt::StepTarget;
/// use timetape::optim::Sgd;
/// use timetape::rnn::{models, Sizes};
/// use timetape::Params;
///
/// let mut params = Params::<f64>::new();
/// let cell = models::m3(&mut params, Sizes::new(2, 4, 2), 0)?;
/// let mut sgd = Sgd::new(0.05)?;
/// let mut online = OnlineStream::new(&cell, &params, 1, &Estimator::Uoro(Noise::Seeded(1)))?;
/// for t in 0..200 {
///     let x = Array2::from_elem((1, 2), (t as f64 * 0.3).sin());
///     let step = online.push(&params, x.view(), StepTarget::Classes(&[t % 2]))?;
///     sgd.step(&mut params, &step.grads)?; // learn at every step
/// }
/// # Ok::<(), timetape::Error>(())
/// ```
pub struct OnlineStream<'c, F: Scalar, C: Recurrent<F>> {
    cell: &'c C,
    layout: Layout,
    dims: Dims,
    carried: Carried<F>,
    workspace: super::Workspace<F>,
    h: Array2<F>,
    t: usize,
}

/// One step of an [`OnlineStream`].
#[derive(Debug, Clone)]
pub struct StepEstimate<F> {
    /// The step's loss.
    pub loss: F,
    /// The estimate of the gradient of the step's loss.
    pub grads: Grads<F>,
    /// The state after the step.
    pub h: Array2<F>,
}

impl<'c, F: Scalar, C: Recurrent<F>> OnlineStream<'c, F, C> {
    /// A stream of batches of `batch` rows from h_0 = 0, estimating with `estimator`
    /// over the parameters of `params` (the same store, same shapes, at every step).
    ///
    /// Errors: as [`run`] for the estimator (its ξ drawn step by step; given signs
    /// consumed step by step); [`Error::EmptyInput`] for `batch = 0`.
    pub fn new(
        cell: &'c C,
        params: &Params<F>,
        batch: usize,
        estimator: &Estimator,
    ) -> Result<Self> {
        if batch == 0 {
            return Err(Error::EmptyInput {
                op: "OnlineStream::new",
                what: "batch of 0 rows",
            });
        }
        let layout = Layout::of(params);
        let dims = Dims {
            t_len: None,
            b: batch,
            s: cell.state_width(),
            d: cell.input_width(),
            tokens: false,
            resets: false,
        };
        crate::init::check_alloc::<F>("OnlineStream::new", &[(batch, cell.state_width())])?;
        Ok(OnlineStream {
            cell,
            carried: Carried::new(estimator, dims, params, &layout)?,
            layout,
            dims,
            workspace: super::Workspace::new(),
            h: Array2::zeros((batch, cell.state_width())),
            t: 0,
        })
    }

    /// Feeds one step, its input `x` (B×D) and target, with the parameters as they are
    /// now; gives the step's loss, its gradient estimate and the new state.
    ///
    /// Errors: [`Error::ShapeMismatch`] for an input or target without B rows;
    /// [`Error::InvalidArgument`] for parameters other than those the stream started
    /// with, or given signs that ran out; as [`run`] otherwise. After an error from the
    /// estimator (signs that ran out, a non-finite value) the stream may be part way
    /// through the step: do not keep using it.
    pub fn push(
        &mut self,
        params: &Params<F>,
        x: ArrayView2<'_, F>,
        target: super::StepTarget<'_, F>,
    ) -> Result<StepEstimate<F>> {
        if Layout::of(params).blocks != self.layout.blocks {
            return Err(invalid(
                "OnlineStream::push",
                "the parameters are not those the stream started with",
            ));
        }
        let xs = x.insert_axis(Axis(0));
        let zero = [F::zero()];
        let (labels, values): (Array2<usize>, ndarray::Array3<F>);
        let loss: crate::rnn::SequenceLoss<'_, F> = match target {
            super::StepTarget::Classes(l) => {
                labels = Array2::from_shape_fn((1, l.len()), |(_, r)| l[r]);
                crate::rnn::SequenceLoss::classes(labels.view()).into()
            }
            super::StepTarget::Values(y) => {
                values = y.to_owned().insert_axis(Axis(0));
                crate::rnn::SequenceLoss::values(values.view()).into()
            }
            super::StepTarget::None => {
                labels = Array2::zeros((1, self.dims.b));
                crate::rnn::SequenceLoss::classes(labels.view())
                    .weighted(&zero)
                    .into()
            }
        };
        let seq = Sequence::new(xs, loss).with_h0(self.h.view());
        let problem = Problem::new(self.cell, &seq)?;
        let ws = std::mem::take(&mut self.workspace);
        let mut engine = Engine::with_workspace(ws, self.cell, params, RunOptions::default());
        let mut step = Linearizer::new(&self.layout, params, problem.h0.dim());
        let result = step.linearize(&mut engine, &problem, 0, self.h.view());
        let mut g = step.lin.direct.clone();
        let absorbed = result.and_then(|()| self.carried.absorb(self.t, &step.lin, &mut g));
        let loss = engine.loss;
        self.workspace = engine.finish(None, Array2::zeros((0, 0))).1;
        absorbed.map_err(|e| e.at_step_offset(self.t))?;
        let mut grads = Grads::zeros_like(params);
        self.layout.add_into(g.view(), &mut grads)?;
        grads.check_finite("OnlineStream::push")?;
        self.h.assign(&step.lin.h);
        self.t += 1;
        Ok(StepEstimate {
            loss,
            grads,
            h: self.h.clone(),
        })
    }
}

/// Where each parameter sits in the flat vector θ (the store's order, each parameter
/// row-major).
#[derive(Debug, Clone)]
pub(crate) struct Layout {
    blocks: Vec<(ParamId, usize, (usize, usize))>,
    pub(crate) len: usize,
}

impl Layout {
    pub(crate) fn of<F: Scalar>(params: &Params<F>) -> Self {
        let mut blocks = Vec::with_capacity(params.len());
        let mut len = 0;
        for id in params.ids() {
            let dim = params.get(id).map_or((0, 0), |p| p.dim());
            blocks.push((id, len, dim));
            len += dim.0 * dim.1;
        }
        Layout { blocks, len }
    }

    /// Offset and shape of a parameter.
    fn block(&self, id: ParamId) -> Result<(usize, (usize, usize))> {
        self.blocks
            .iter()
            .find(|(b, ..)| *b == id)
            .map(|&(_, at, dim)| (at, dim))
            .ok_or(Error::ForeignParam {
                op: "online (parameter layout)",
            })
    }

    /// Writes `grads` flat into `out` (absent entries as zeros).
    pub(crate) fn flatten_into<F: Scalar>(&self, grads: &Grads<F>, mut out: ArrayViewMut1<'_, F>) {
        out.fill(F::zero());
        for &(id, at, (r, c)) in &self.blocks {
            if let Ok(g) = grads.get(id) {
                for (o, &x) in out
                    .slice_axis_mut(Axis(0), Slice::from(at..at + r * c))
                    .iter_mut()
                    .zip(g.iter())
                {
                    *o = x;
                }
            }
        }
    }

    /// Adds the flat `flat` into `grads`.
    pub(crate) fn add_into<F: Scalar>(
        &self,
        flat: ArrayView1<'_, F>,
        grads: &mut Grads<F>,
    ) -> Result<()> {
        for &(id, at, (r, c)) in &self.blocks {
            let part = flat.slice_axis(Axis(0), Slice::from(at..at + r * c));
            let part = part
                .into_shape_with_order((r, c))
                .map_err(|e| invalid("online", e.to_string()))?;
            grads.accumulate(id, part)?;
        }
        Ok(())
    }
}

/// One step, linearized around the trajectory: what every online estimator reads.
#[derive(Debug, Clone)]
pub(crate) struct StepLinearization<F> {
    /// x_t (B×D; B×0 for tokens).
    pub(crate) x: Array2<F>,
    /// h_{t−1} and h_t (B×S).
    pub(crate) h_prev: Array2<F>,
    pub(crate) h: Array2<F>,
    /// J^h_t (BS×BS): row i is ∂ vec(h_t)_i / ∂ vec(h_{t−1}).
    pub(crate) jh: Array2<F>,
    /// J^θ_t (BS×P): row i is ∂ vec(h_t)_i / ∂θ through step t alone.
    pub(crate) jtheta: Array2<F>,
    /// ∂L_t/∂h_{t−1} through step t (BS): `∂L_t/∂h_t · J^h_t`.
    pub(crate) back: Array1<F>,
    /// ∂L_t/∂θ through step t alone and the head (P).
    pub(crate) direct: Array1<F>,
}

/// Linearizes steps one after another on an [`Engine`]'s tape, reusing its buffers.
pub(crate) struct Linearizer<'l, F> {
    layout: &'l Layout,
    scratch: Grads<F>,
    seed: Array2<F>,
    pub(crate) lin: StepLinearization<F>,
}

impl<'l, F: Scalar> Linearizer<'l, F> {
    pub(crate) fn new(layout: &'l Layout, params: &Params<F>, (b, s): (usize, usize)) -> Self {
        let n = b * s;
        Linearizer {
            layout,
            scratch: Grads::zeros_like(params),
            seed: Array2::zeros((b, s)),
            lin: StepLinearization {
                x: Array2::zeros((b, 0)),
                h_prev: Array2::zeros((b, s)),
                h: Array2::zeros((b, s)),
                jh: Array2::zeros((n, n)),
                jtheta: Array2::zeros((n, layout.len)),
                back: Array1::zeros(n),
                direct: Array1::zeros(layout.len),
            },
        }
    }

    /// Records step t from `h_prev` (its loss counted into the engine's) and fills
    /// [`Linearizer::lin`] by 1 + B·S vector–Jacobian products.
    pub(crate) fn linearize<C: Recurrent<F>>(
        &mut self,
        engine: &mut Engine<'_, F, C>,
        problem: &Problem<'_, F>,
        t: usize,
        h_prev: ArrayView2<'_, F>,
    ) -> Result<()> {
        let edges = [Edge::Keep];
        let seg = problem.segment(t..t + 1, &edges, t);
        let l = engine.record(h_prev, &seg)?;
        let h_in = engine
            .h_in
            .ok_or_else(|| invalid("online", "no state recorded"))?;
        let h_t = engine.recording.states[0];
        let lin = &mut self.lin;
        lin.x = problem.steps(t, t + 1).index_axis(Axis(0), 0).to_owned();
        lin.h_prev.assign(&h_prev);
        lin.h.assign(&engine.tape.value(h_t)?);
        lin.direct.fill(F::zero());
        lin.back.fill(F::zero());
        engine.segments += 1;
        engine.backward_steps += 1;
        if let Some(l) = l {
            engine.loss = engine.loss + engine.tape.scalar(l)?;
            let one = ndarray::arr2(&[[F::one()]]);
            self.vjp(engine, l, one.view(), h_in, Row::Loss)?;
        }
        let s = h_prev.ncols();
        for i in 0..self.lin.back.len() {
            self.seed.fill(F::zero());
            self.seed[[i / s, i % s]] = F::one();
            let seed = std::mem::take(&mut self.seed);
            let r = self.vjp(engine, h_t, seed.view(), h_in, Row::State(i));
            self.seed = seed;
            r?;
        }
        Ok(())
    }

    /// One vector–Jacobian product from `at` seeded with `seed`: ∂/∂θ and ∂/∂h_{t−1}
    /// into the row `row` of the linearization.
    fn vjp<C: Recurrent<F>>(
        &mut self,
        engine: &mut Engine<'_, F, C>,
        at: crate::tape::Var,
        seed: ArrayView2<'_, F>,
        h_in: crate::tape::Var,
        row: Row,
    ) -> Result<()> {
        self.scratch.zero();
        engine
            .tape
            .backward_with_into(&[(at, seed)], &mut self.scratch)?;
        let lin = &mut self.lin;
        let (mut dtheta, mut dh) = match row {
            Row::Loss => (lin.direct.view_mut(), lin.back.view_mut()),
            Row::State(i) => (lin.jtheta.row_mut(i), lin.jh.row_mut(i)),
        };
        self.layout.flatten_into(&self.scratch, dtheta.view_mut());
        match engine.tape.adjoint(h_in)? {
            Some(a) => dh.iter_mut().zip(a.iter()).for_each(|(d, &x)| *d = x),
            None => dh.fill(F::zero()),
        }
        Ok(())
    }
}

/// Which row of the linearization a vector–Jacobian product fills.
#[derive(Debug, Clone, Copy)]
enum Row {
    /// The loss's: `direct` and `back`.
    Loss,
    /// Entry i of the state's: row i of `jtheta` and `jh`.
    State(usize),
}

/// The random signs, drawn or given.
#[derive(Debug, Clone)]
pub(crate) enum Signs {
    Drawn(Box<ChaCha8Rng>),
    Given { signs: Vec<i8>, next: usize },
}

impl Signs {
    /// The signs of `noise`, `per_step` a step for `t_len` steps (their number checked
    /// if given and T known).
    fn new(noise: &Noise, per_step: usize, t_len: Option<usize>) -> Result<Self> {
        match noise {
            Noise::Seeded(seed) => Ok(Signs::Drawn(Box::new(crate::init::rng(*seed)))),
            Noise::Signs(signs) => {
                if let Some(t_len) = t_len.filter(|&t| signs.len() != per_step * t) {
                    return Err(Error::ShapeMismatch {
                        op: "online: Noise::Signs (steps × signs per step)",
                        lhs: (t_len, per_step),
                        rhs: (signs.len(), 1),
                    });
                }
                if let Some(bad) = signs.iter().find(|&&c| c != 1 && c != -1) {
                    return Err(invalid(
                        "online: Noise::Signs",
                        format!("sign {bad} is not ±1"),
                    ));
                }
                Ok(Signs::Given {
                    signs: signs.clone(),
                    next: 0,
                })
            }
        }
    }

    fn next<F: Scalar>(&mut self) -> Result<F> {
        let plus = match self {
            Signs::Drawn(rng) => rng.random::<bool>(),
            Signs::Given { signs, next } => {
                let c = signs.get(*next).copied().ok_or_else(|| {
                    invalid(
                        "online: Noise::Signs",
                        format!("only {} signs given", signs.len()),
                    )
                })?;
                *next += 1;
                c > 0
            }
        };
        Ok(if plus { F::one() } else { -F::one() })
    }
}

/// The estimate of `M_t` an estimator carries from step to step.
#[derive(Debug, Clone)]
pub(crate) enum Carried<F> {
    /// RTRL: `M_t` (BS×P) and the ξ of its truncation.
    Rtrl {
        m: Array2<F>,
        xi: XiFeed,
        keep_xi: bool,
    },
    /// UORO: `s̃_t` (BS) and `θ̃_t` (P).
    Uoro {
        s: Array1<F>,
        theta: Array1<F>,
        signs: Signs,
    },
    /// KF-RTRL: per batch row, `u_t` (m) and `A_t` (S×S).
    Kf {
        kf: KfLayout,
        u: Array2<F>,
        a: Vec<Array2<F>>,
        signs: Signs,
    },
}

/// Where KF-RTRL's `W̃ = [W_xh; W_hh; b_h]` sits in θ, and the activation.
#[derive(Debug, Clone)]
pub(crate) struct KfLayout {
    /// Offsets in θ of the blocks of W̃'s rows: `W_xh` (D rows), `W_hh` (S rows), `b_h`.
    offsets: [Option<usize>; 3],
    d: usize,
    s: usize,
    activation: Activation,
}

impl<F: Scalar> Carried<F> {
    pub(crate) fn new(
        estimator: &Estimator,
        dims: Dims,
        params: &Params<F>,
        layout: &Layout,
    ) -> Result<Self> {
        let Dims { t_len, b, s, .. } = dims;
        let n = b * s;
        // The carried estimate and a step's Jacobians J^θ (n×P) and J^h (n×n).
        crate::init::check_alloc::<F>("online", &[(n, layout.len), (n, layout.len), (n, n)])?;
        Ok(match estimator {
            Estimator::Rtrl(tr) => Carried::Rtrl {
                m: Array2::zeros((n, layout.len)),
                xi: XiFeed::new(tr, t_len, b)?,
                keep_xi: tr.reports_xi(),
            },
            Estimator::Uoro(noise) => Carried::Uoro {
                s: Array1::zeros(n),
                theta: Array1::zeros(layout.len),
                signs: Signs::new(noise, n, t_len)?,
            },
            Estimator::KfRtrl { factors, noise } => {
                if dims.tokens || dims.resets {
                    return Err(invalid(
                        "online::KfRtrl",
                        "KF-RTRL reads real inputs, without resets inside the sequence",
                    ));
                }
                let kf = KfLayout::new(factors, dims, params, layout)?;
                Carried::Kf {
                    u: Array2::zeros((b, kf.d + kf.s + 1)),
                    a: vec![Array2::zeros((s, s)); b],
                    kf,
                    signs: Signs::new(noise, b, t_len)?,
                }
            }
        })
    }

    /// The ξ to report (RTRL with a sampled or given pattern).
    pub(crate) fn xi(&self) -> Option<Vec<f64>> {
        match self {
            Carried::Rtrl {
                xi: XiFeed::Table(XiTable::Shared(xi)),
                keep_xi: true,
                ..
            } => Some(xi.clone()),
            _ => None,
        }
    }

    /// The per-row ξ to report (RTRL with [`Truncation::PerRow`]).
    pub(crate) fn xi_rows(&self) -> Option<Array2<f64>> {
        match self {
            Carried::Rtrl {
                xi: XiFeed::Table(XiTable::Rows(table)),
                ..
            } => Some(table.clone()),
            _ => None,
        }
    }

    /// Adds step t's gradient through the earlier steps, `ξ_t ∂L_t/∂h_{t−1} · M̂_{t−1}`,
    /// into `g` (flat), then carries the estimate on to `M̂_t`.
    pub(crate) fn absorb(
        &mut self,
        t: usize,
        lin: &StepLinearization<F>,
        g: &mut Array1<F>,
    ) -> Result<()> {
        match self {
            Carried::Rtrl { m, xi, .. } => {
                let (b, s) = lin.h.dim();
                let x = xi.at(t, b)?;
                rtrl_step(m, &x, s, lin, g);
            }
            Carried::Uoro { s, theta, signs } => uoro_step(s, theta, signs, lin, g)?,
            Carried::Kf { kf, u, a, signs } => kf.step(u, a, signs, lin, g)?,
        }
        Ok(())
    }
}

/// One RTRL step with ξ_t per batch row (`x`, B values): ξ scales each row's block of
/// `M_{t−1}` (its S state entries) before it meets ∂L/∂h_{t−1} and J^h; a ξ shared by
/// the rows is one scalar.
fn rtrl_step<F: Scalar>(
    m: &mut Array2<F>,
    x: &[f64],
    s: usize,
    lin: &StepLinearization<F>,
    g: &mut Array1<F>,
) {
    if x.iter().all(|&v| v == x[0]) {
        let x = F::of(x[0]);
        if x != F::zero() {
            g.scaled_add(x, &lin.back.dot(m));
            let carried = lin.jh.dot(m);
            m.assign(&lin.jtheta);
            m.scaled_add(x, &carried);
        } else {
            m.assign(&lin.jtheta);
        }
        return;
    }
    let mut scaled = m.clone();
    for (block, &v) in scaled.axis_chunks_iter_mut(Axis(0), s).zip(x) {
        let v = F::of(v);
        let mut block = block;
        block.mapv_inplace(|e| e * v);
    }
    g.scaled_add(F::one(), &lin.back.dot(&scaled));
    let carried = lin.jh.dot(&scaled);
    m.assign(&lin.jtheta);
    m.scaled_add(F::one(), &carried);
}

/// Where RTRL's ξ come from: a table drawn for the whole sequence ([`run`]), or drawn
/// step by step by each row's truncation ([`OnlineStream`]).
#[derive(Debug, Clone)]
pub(crate) enum XiFeed {
    Table(XiTable),
    Live {
        /// One truncation and sampler, shared by the rows, or one per row.
        rows: Vec<(Truncation, Option<XiSampler>)>,
    },
}

impl XiFeed {
    /// The ξ of `tr` for `b` rows: drawn for all T steps if T is known, else step by step.
    fn new(tr: &Truncation, t_len: Option<usize>, b: usize) -> Result<Self> {
        let none = || {
            invalid(
                "online::Rtrl",
                "TBPTT with k2 ≠ k1 and adaptive truncation have no ξ to carry forward",
            )
        };
        let Some(t_len) = t_len else {
            tr.validate(None)?;
            if matches!(tr, Truncation::Tbptt { k1, k2 } if k1 != k2)
                || matches!(tr, Truncation::Adaptive(_))
            {
                return Err(none());
            }
            let rows = match tr {
                Truncation::PerRow(rows) if rows.len() != b => {
                    return Err(Error::ShapeMismatch {
                        op: "online::Rtrl (Truncation::PerRow)",
                        lhs: (b, 1),
                        rhs: (rows.len(), 1),
                    })
                }
                Truncation::PerRow(rows) => rows
                    .iter()
                    .map(|r| (r.clone(), super::stream::sampler_of(r)))
                    .collect(),
                tr => vec![(tr.clone(), super::stream::sampler_of(tr))],
            };
            return Ok(XiFeed::Live { rows });
        };
        tr.xi_table(t_len, b)?.map(XiFeed::Table).ok_or_else(none)
    }

    /// ξ_t (t 0-based) for each of `b` rows.
    fn at(&mut self, t: usize, b: usize) -> Result<Vec<f64>> {
        Ok(match self {
            XiFeed::Table(XiTable::Shared(xi)) => vec![xi.get(t).copied().unwrap_or(1.0); b],
            XiFeed::Table(XiTable::Rows(table)) => table.row(t).to_vec(),
            XiFeed::Live { rows } => {
                let x = rows
                    .iter_mut()
                    .map(|(tr, sampler)| super::stream::xi_of(tr, sampler.as_mut(), t))
                    .collect::<Result<Vec<f64>>>()?;
                if x.len() == b {
                    x
                } else {
                    vec![x[0]; b]
                }
            }
        })
    }
}

/// The Euclidean (Frobenius) norm.
fn norm<'a, F: Scalar>(x: impl IntoIterator<Item = &'a F>) -> F {
    x.into_iter().fold(F::zero(), |s, &v| s + v * v).sqrt()
}

/// `√((a + ε)/(b + ε))`.
fn ratio<F: Scalar>(a: F, b: F) -> F {
    let eps = F::of(EPS);
    ((a + eps) / (b + eps)).sqrt()
}

/// One UORO step (Tallec & Ollivier 2017, Algorithm 1).
fn uoro_step<F: Scalar>(
    s: &mut Array1<F>,
    theta: &mut Array1<F>,
    signs: &mut Signs,
    lin: &StepLinearization<F>,
    g: &mut Array1<F>,
) -> Result<()> {
    g.scaled_add(lin.back.dot(s), theta);
    let nu: Array1<F> = (0..s.len())
        .map(|_| signs.next::<F>())
        .collect::<Result<_>>()?;
    let js = lin.jh.dot(s);
    let vt = lin.jtheta.t().dot(&nu);
    let rho0 = ratio(norm(theta.iter()), norm(js.iter()));
    let rho1 = ratio(norm(vt.iter()), norm(nu.iter()));
    s.assign(&js);
    s.mapv_inplace(|v| v * rho0);
    s.scaled_add(rho1, &nu);
    theta.mapv_inplace(|v| v / rho0);
    theta.scaled_add(F::one() / rho1, &vt);
    Ok(())
}

impl KfLayout {
    fn new<F: Scalar>(
        k: &Kronecker,
        dims: Dims,
        params: &Params<F>,
        layout: &Layout,
    ) -> Result<Self> {
        let (d, s) = (dims.d, dims.s);
        let op = "online::KfRtrl";
        let fits = |id: ParamId, want: (usize, usize)| -> Result<usize> {
            let (at, dim) = layout.block(id)?;
            if dim != want || params.get(id)?.dim() != want {
                return Err(Error::ShapeMismatch {
                    op,
                    lhs: want,
                    rhs: dim,
                });
            }
            Ok(at)
        };
        let offsets = [
            Some(fits(k.w_xh, (d, s))?),
            Some(fits(k.w_hh, (s, s))?),
            k.b_h.map(|b| fits(b, (1, s))).transpose()?,
        ];
        Ok(KfLayout {
            offsets,
            d,
            s,
            activation: k.activation,
        })
    }

    /// One KF-RTRL step (Mujika et al. 2018, Algorithm 1), batch row by batch row.
    fn step<F: Scalar>(
        &self,
        u: &mut Array2<F>,
        a: &mut [Array2<F>],
        signs: &mut Signs,
        lin: &StepLinearization<F>,
        g: &mut Array1<F>,
    ) -> Result<()> {
        let (d, s) = (self.d, self.s);
        for (r, a) in a.iter_mut().enumerate() {
            let rows = r * s..(r + 1) * s;
            let back_a = lin
                .back
                .slice_axis(Axis(0), Slice::from(rows.clone()))
                .dot(a);
            self.add_outer(u.row(r), back_a.view(), g);
            let fa = lin
                .jh
                .slice_axis(Axis(0), Slice::from(rows.clone()))
                .slice_axis(Axis(1), Slice::from(rows))
                .dot(a);
            let mut hat: Array1<F> = Array1::zeros(d + s + 1);
            hat.slice_axis_mut(Axis(0), Slice::from(..d))
                .assign(&lin.x.row(r));
            hat.slice_axis_mut(Axis(0), Slice::from(d..d + s))
                .assign(&lin.h_prev.row(r));
            hat[d + s] = if self.offsets[2].is_some() {
                F::one()
            } else {
                F::zero()
            };
            let act = self.activation;
            let dd: Array1<F> = lin.h.row(r).mapv(|y| act.derivative_at_output(y));
            self.check_factors(lin, r, &hat, &dd)?;
            let c = signs.next::<F>()?;
            let p1 = ratio(norm(fa.iter()), norm(u.row(r).iter()));
            let p2 = ratio(norm(dd.iter()), norm(hat.iter()));
            let mut ur = u.row_mut(r);
            ur.mapv_inplace(|v| v * p1);
            ur.scaled_add(c * p2, &hat);
            a.assign(&fa);
            a.mapv_inplace(|v| v / p1);
            for j in 0..s {
                a[[j, j]] = a[[j, j]] + c * dd[j] / p2;
            }
        }
        Ok(())
    }

    /// Checks that the step's J^θ on W̃ (from the tape) is `ĥ ⊗ D` for row r, as the
    /// factors of a vanilla RNN with these parameters make it: factors of another cell
    /// (or of another RNN of the same shapes) are refused instead of giving a wrong
    /// estimate. Tolerance 10⁴ ε of the largest `|ĥ_k D_j|`: each entry is one product
    /// on either side.
    fn check_factors<F: Scalar>(
        &self,
        lin: &StepLinearization<F>,
        r: usize,
        hat: &Array1<F>,
        dd: &Array1<F>,
    ) -> Result<()> {
        let (d, s) = (self.d, self.s);
        let scale = norm(hat.iter()) * norm(dd.iter());
        let tol = F::epsilon() * F::of(1e4) * scale;
        let spans = [(0, d), (d, s), (d + s, 1)];
        for (off, (from, rows)) in self.offsets.iter().zip(spans) {
            let Some(off) = off else { continue };
            for j in 0..s {
                let row = lin.jtheta.row(r * s + j);
                for k in 0..rows {
                    for jp in 0..s {
                        let want = if j == jp {
                            hat[from + k] * dd[j]
                        } else {
                            F::zero()
                        };
                        let got = row[off + k * s + jp];
                        // A NaN difference fails too.
                        let close = (got - want).abs() <= tol;
                        if !close {
                            return Err(invalid(
                                "online::KfRtrl",
                                "the cell's ∂h/∂θ is not ĥ ⊗ D for these factors: \
                                 use Kronecker::of with the RNN being run",
                            ));
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// Adds `u ⊗ v` (W̃'s rows × its columns) into the blocks of W̃ in θ.
    fn add_outer<F: Scalar>(&self, u: ArrayView1<'_, F>, v: ArrayView1<'_, F>, g: &mut Array1<F>) {
        let (d, s) = (self.d, self.s);
        let spans = [(0, d), (d, s), (d + s, 1)];
        for (off, (from, rows)) in self.offsets.iter().zip(spans) {
            let Some(off) = off else { continue };
            for k in 0..rows {
                let uk = u[from + k];
                let mut dst =
                    g.slice_axis_mut(Axis(0), Slice::from(off + k * s..off + (k + 1) * s));
                dst.scaled_add(uk, &v);
            }
        }
    }
}
