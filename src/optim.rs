//! Optimizers and gradient clipping.
//!
//! An optimizer keeps its state (velocities, moments) per parameter, tied to that
//! parameter: use one optimizer per [`Params`] store. Stepping it on another store, or
//! after a parameter changed shape, is an error, never a panic or a silent reuse of
//! another parameter's moments. A step updates the parameters that have an entry in the
//! [`Grads`] and leaves the others (and their state) unchanged.
//!
//! ```
//! use ndarray::array;
//! use timetape::optim::{clip_global_norm, Sgd};
//! use timetape::{Params, Tape};
//!
//! let mut params = Params::<f64>::new();
//! let w = params.add("w", array![[3.0, 4.0]])?;
//! let mut sgd = Sgd::new(0.1)?;
//! let mut tape = Tape::new();
//! let wv = tape.param(&params, w)?;
//! let sq = tape.mul(wv, wv)?;
//! let loss = tape.sum(sq)?;               // ‖w‖², gradient 2w = [6, 8], norm 10
//! let mut grads = tape.backward(loss)?;
//! let norm = clip_global_norm(&mut grads, 1.0)?;
//! assert_eq!(norm, 10.0);
//! sgd.step(&mut params, &grads)?;         // w − 0.1 · [0.6, 0.8]
//! assert!((params.get(w)?[[0, 0]] - 2.94).abs() < 1e-12);
//! # Ok::<(), timetape::Error>(())
//! ```

use crate::error::{invalid, Error, Result};
use crate::params::{Grads, ParamId, Params};
use crate::scalar::Scalar;
use ndarray::{Array2, Zip};

/// Scales `grads` so that its global norm is at most `theta`, and returns the norm it
/// had before. The convention of D2L and Pascanu et al. (2013):
/// `g ← min(1, θ/‖g‖) g` with `‖g‖ = sqrt(Σ_p Σ g²)` over all parameters, scaled only if
/// `‖g‖ > θ`, with no ε (PyTorch's `clip_grad_norm_` divides by `‖g‖ + 1e-6`, which
/// differs from this in the sixth digit near the threshold).
///
/// The norm is computed with scaling ([`Grads::global_norm`]): a finite gradient whose
/// `Σ g²` overflows (an exploding RNN) is clipped, not refused.
///
/// Errors: [`Error::InvalidArgument`] if `theta` is not positive and finite;
/// [`Error::NonFinite`] if an entry of the gradient is NaN or infinite, or its norm
/// exceeds the largest finite value (then `grads` is left unchanged).
pub fn clip_global_norm<F: Scalar>(grads: &mut Grads<F>, theta: F) -> Result<F> {
    if !(theta > F::zero() && theta.is_finite()) {
        return Err(invalid(
            "clip_global_norm",
            "theta must be positive and finite",
        ));
    }
    grads.check_finite("clip_global_norm")?;
    let norm = grads.global_norm();
    if !norm.is_finite() {
        return Err(Error::NonFinite {
            op: "clip_global_norm",
            what: "the norm of the gradient exceeds the largest finite value".into(),
        });
    }
    if norm > theta {
        // θ/‖g‖ can be subnormal in f32 (θ = 1e-8, ‖g‖ = 3e35), with few significant
        // bits: form it and the products in f64.
        let c = theta.as_f64() / norm.as_f64();
        for (_, g) in grads.iter_mut() {
            g.mapv_inplace(|x| F::of(x.as_f64() * c));
        }
    }
    Ok(norm)
}

fn check_lr<F: Scalar>(op: &'static str, lr: F) -> Result<()> {
    if lr > F::zero() && lr.is_finite() {
        Ok(())
    } else {
        Err(invalid(op, "the learning rate must be positive and finite"))
    }
}

/// An optimizer's state, one slot per position in the store, each tagged with the key
/// of the parameter it belongs to.
#[derive(Debug, Clone)]
struct State<S> {
    slots: Vec<Option<(u64, S)>>,
}

impl<S> Default for State<S> {
    fn default() -> Self {
        State { slots: Vec::new() }
    }
}

impl<S> State<S> {
    /// The state of `id` (created by `init` on first use).
    fn of(&mut self, id: ParamId, init: impl FnOnce() -> S) -> &mut S {
        if self.slots.len() <= id.index {
            self.slots.resize_with(id.index + 1, || None);
        }
        let slot = self.slots[id.index].get_or_insert_with(|| (id.key, init()));
        &mut slot.1
    }

    /// The state of `id`, if it has one (checked to be `id`'s by [`State::check`]).
    fn get(&self, id: ParamId) -> Option<&S> {
        match self.slots.get(id.index) {
            Some(Some((key, st))) if *key == id.key => Some(st),
            _ => None,
        }
    }

    /// Every state held, with the id of its parameter (for [`crate::checkpoint`]).
    fn entries(&self) -> impl Iterator<Item = (ParamId, &S)> + '_ {
        self.slots.iter().enumerate().filter_map(|(index, s)| {
            s.as_ref()
                .map(|(key, st)| (ParamId { index, key: *key }, st))
        })
    }

    /// Sets the state of `id` (for [`crate::checkpoint`]).
    fn insert(&mut self, id: ParamId, st: S) {
        if self.slots.len() <= id.index {
            self.slots.resize_with(id.index + 1, || None);
        }
        self.slots[id.index] = Some((id.key, st));
    }

    /// Checks that the state held for `id`, if any, is `id`'s, and of `id`'s shape.
    fn check(
        &self,
        op: &'static str,
        id: ParamId,
        shape: (usize, usize),
        dim: impl Fn(&S) -> (usize, usize),
    ) -> Result<()> {
        match self.slots.get(id.index).and_then(|s| s.as_ref()) {
            Some((key, _)) if *key != id.key => Err(invalid(
                op,
                format!(
                    "the optimizer's state at position {} belongs to a parameter of another \
                     store: use one optimizer per store",
                    id.index
                ),
            )),
            Some((_, st)) if dim(st) != shape => Err(Error::ShapeMismatch {
                op,
                lhs: dim(st),
                rhs: shape,
            }),
            _ => Ok(()),
        }
    }
}

/// Checks every gradient against its parameter and the optimizer's state before a step
/// changes anything: the id is of `params`, the shapes agree, the state is the
/// parameter's own, the gradient is finite.
fn check_all<F: Scalar, S>(
    op: &'static str,
    params: &Params<F>,
    grads: &Grads<F>,
    state: &State<S>,
    dim: impl Fn(&S) -> (usize, usize),
) -> Result<()> {
    for (id, g) in grads.iter() {
        let p = params.get(id).map_err(|_| Error::ForeignParam { op })?;
        if p.dim() != g.dim() {
            return Err(Error::ShapeMismatch {
                op,
                lhs: p.dim(),
                rhs: g.dim(),
            });
        }
        state.check(op, id, p.dim(), &dim)?;
    }
    grads.check_finite(op)
}

/// Stochastic gradient descent, optionally with (heavy-ball) momentum:
/// `v ← μ v + g`, `θ ← θ − η v` (with μ = 0, `θ ← θ − η g`), as PyTorch's `SGD` without
/// dampening. The velocity `v` of a parameter starts at 0 at its first gradient.
///
/// ```
/// use ndarray::array;
/// use timetape::optim::Sgd;
/// use timetape::{Grads, Params};
///
/// let mut params = Params::<f64>::new();
/// let w = params.add("w", array![[1.0]])?;
/// let mut grads = Grads::new(&params);
/// grads.accumulate(w, array![[1.0]].view())?; // a constant gradient g = 1
/// let mut sgd = Sgd::new(0.1)?.with_momentum(0.9)?;
/// sgd.step(&mut params, &grads)?; // v = 1,             w = 1 − 0.1 · 1
/// sgd.step(&mut params, &grads)?; // v = 0.9 · 1 + 1,   w = 0.9 − 0.1 · 1.9
/// assert!((params.get(w)?[[0, 0]] - 0.71).abs() < 1e-12);
/// # Ok::<(), timetape::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct Sgd<F> {
    lr: F,
    momentum: F,
    velocity: State<Array2<F>>,
}

impl<F: Scalar> Sgd<F> {
    /// Plain SGD with learning rate `lr` (η).
    ///
    /// Errors: [`Error::InvalidArgument`] if `lr` is not positive and finite.
    pub fn new(lr: F) -> Result<Self> {
        check_lr("Sgd::new", lr)?;
        Ok(Sgd {
            lr,
            momentum: F::zero(),
            velocity: State::default(),
        })
    }

    /// The same with momentum μ ∈ [0, 1) (0 is plain SGD).
    ///
    /// Errors: [`Error::InvalidArgument`] if μ is outside [0, 1).
    pub fn with_momentum(mut self, momentum: F) -> Result<Self> {
        if !(momentum >= F::zero() && momentum < F::one()) {
            return Err(invalid("Sgd::with_momentum", "momentum must be in [0, 1)"));
        }
        self.momentum = momentum;
        Ok(self)
    }

    /// The learning rate.
    pub fn lr(&self) -> F {
        self.lr
    }

    /// Changes the learning rate (a schedule); the velocities are kept.
    ///
    /// Errors: [`Error::InvalidArgument`] if `lr` is not positive and finite.
    pub fn set_lr(&mut self, lr: F) -> Result<()> {
        check_lr("Sgd::set_lr", lr)?;
        self.lr = lr;
        Ok(())
    }

    /// The momentum μ, and every velocity kept, with its parameter (for
    /// [`crate::checkpoint`]).
    pub(crate) fn state(&self) -> (F, impl Iterator<Item = (ParamId, &Array2<F>)> + '_) {
        (self.momentum, self.velocity.entries())
    }

    /// Sets the velocity of a parameter (for [`crate::checkpoint`], which checks it).
    pub(crate) fn set_velocity(&mut self, id: ParamId, v: Array2<F>) {
        self.velocity.insert(id, v);
    }

    /// One step on every parameter that has an entry in `grads`.
    ///
    /// Errors: [`Error::ForeignParam`] if `grads` holds an id of another store;
    /// [`Error::ShapeMismatch`] if a gradient's shape differs from its parameter's, or
    /// the velocity kept for a parameter from its shape; [`Error::InvalidArgument`] if
    /// the velocity kept at a position belongs to a parameter of another store;
    /// [`Error::NonFinite`] for a NaN or infinite gradient, or a step that would leave a
    /// parameter or its velocity non-finite (an overflow). All are checked before
    /// anything is updated: on error, nothing has changed.
    pub fn step(&mut self, params: &mut Params<F>, grads: &Grads<F>) -> Result<()> {
        let op = "Sgd::step";
        check_all(op, params, grads, &self.velocity, |v| v.dim())?;
        let (lr, mu) = (self.lr, self.momentum);
        // v ← μ v + g, θ ← θ − η v (with μ = 0 and v = 0: θ − η g, bit for bit).
        let update = |p: F, v: F, g: F| {
            let v = mu * v + g;
            (p - lr * v, v)
        };
        let finite = |(p, v): (F, F)| p.is_finite() && v.is_finite();
        check_steps(op, params, grads, |id, p, g| match self.velocity.get(id) {
            Some(v) => Zip::from(p)
                .and(v)
                .and(g)
                .all(|&p, &v, &g| finite(update(p, v, g))),
            None => Zip::from(p)
                .and(g)
                .all(|&p, &g| finite(update(p, F::zero(), g))),
        })?;
        for (id, g) in grads.iter() {
            let p = params.get_mut(id)?;
            if mu == F::zero() {
                Zip::from(p)
                    .and(g)
                    .for_each(|p, &g| *p = update(*p, F::zero(), g).0);
                continue;
            }
            let v = self.velocity.of(id, || Array2::zeros(g.raw_dim()));
            Zip::from(p).and(v).and(g).for_each(|p, v, &g| {
                (*p, *v) = update(*p, *v, g);
            });
        }
        Ok(())
    }
}

/// The dry run of a step: `finite(id, θ, g)` tells whether the step would leave parameter
/// `id` (value θ, gradient g) and its state finite; the first one that would not is an
/// [`overflowing_step`] error, before anything is updated.
fn check_steps<F: Scalar>(
    op: &'static str,
    params: &Params<F>,
    grads: &Grads<F>,
    mut finite: impl FnMut(ParamId, &Array2<F>, &Array2<F>) -> bool,
) -> Result<()> {
    for (id, g) in grads.iter() {
        let p = params.get(id)?;
        if !finite(id, p, g) {
            return Err(overflowing_step(op, params, id));
        }
    }
    Ok(())
}

/// The error of a step that would leave a parameter or its state non-finite.
fn overflowing_step<F: Scalar>(op: &'static str, params: &Params<F>, id: ParamId) -> Error {
    let name = params.name(id).unwrap_or("?");
    Error::NonFinite {
        op,
        what: format!(
            "the step would make parameter {name:?} or the optimizer's state for it \
             non-finite (an overflow: lower the learning rate or clip the gradient); \
             nothing was updated"
        ),
    }
}

/// Adam (Kingma & Ba 2015) with bias correction:
/// `m ← β₁ m + (1 − β₁) g`, `v ← β₂ v + (1 − β₂) g²`,
/// `θ ← θ − η m̂ / (sqrt(v̂) + ε)`, with `m̂ = m / (1 − β₁ᵗ)`, `v̂ = v / (1 − β₂ᵗ)`.
///
/// Each parameter has its own step count `t`, the number of steps in which it had a
/// gradient (as in PyTorch): a parameter that first gets a gradient late starts at
/// t = 1. With the gradients of [`bptt::run`](crate::bptt::run), which have an entry
/// for every parameter, every t equals the number of calls to [`Adam::step`].
///
/// ```
/// use ndarray::array;
/// use timetape::optim::Adam;
/// use timetape::{Params, Tape};
///
/// // minimize (w − 3)²
/// let mut params = Params::<f64>::new();
/// let w = params.add("w", array![[0.0]])?;
/// let mut adam = Adam::new(0.1)?;
/// let mut tape = Tape::new();
/// let target = array![[3.0]];
/// for _ in 0..300 {
///     tape.clear();
///     let wv = tape.param(&params, w)?;
///     let y = tape.constant(target.clone())?;
///     let loss = tape.mse(wv, y)?;
///     let grads = tape.backward(loss)?;
///     adam.step(&mut params, &grads)?;
/// }
/// assert!((params.get(w)?[[0, 0]] - 3.0).abs() < 1e-2);
/// # Ok::<(), timetape::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct Adam<F> {
    lr: F,
    beta1: F,
    beta2: F,
    eps: F,
    /// Per parameter: its own step count t (as in PyTorch), m and v.
    moments: State<Moments<F>>,
}

/// Adam's state for one parameter: step count t, first and second moments.
type Moments<F> = (u64, Array2<F>, Array2<F>);

impl<F: Scalar> Adam<F> {
    /// Adam with learning rate `lr` (η) and the usual β₁ = 0.9, β₂ = 0.999, ε = 1e-8.
    ///
    /// Errors: [`Error::InvalidArgument`] if `lr` is not positive and finite.
    pub fn new(lr: F) -> Result<Self> {
        check_lr("Adam::new", lr)?;
        Ok(Adam {
            lr,
            beta1: F::of(0.9),
            beta2: F::of(0.999),
            eps: F::of(1e-8),
            moments: State::default(),
        })
    }

    /// The same with other β₁, β₂ ∈ [0, 1) and ε > 0 finite.
    ///
    /// Errors: [`Error::InvalidArgument`] for a β outside [0, 1) or an ε that is not
    /// positive and finite.
    pub fn with_betas(mut self, beta1: F, beta2: F, eps: F) -> Result<Self> {
        let unit = |b: F| b >= F::zero() && b < F::one();
        if !(unit(beta1) && unit(beta2) && eps > F::zero() && eps.is_finite()) {
            return Err(invalid(
                "Adam::with_betas",
                "need β in [0, 1) and ε positive and finite",
            ));
        }
        self.beta1 = beta1;
        self.beta2 = beta2;
        self.eps = eps;
        Ok(self)
    }

    /// The learning rate η.
    pub fn lr(&self) -> F {
        self.lr
    }

    /// Changes the learning rate (a schedule).
    ///
    /// Errors: [`Error::InvalidArgument`] if `lr` is not positive and finite.
    pub fn set_lr(&mut self, lr: F) -> Result<()> {
        check_lr("Adam::set_lr", lr)?;
        self.lr = lr;
        Ok(())
    }

    /// β₁, β₂, ε, and every parameter's (t, m, v) kept (for [`crate::checkpoint`]).
    pub(crate) fn state(&self) -> ([F; 3], impl Iterator<Item = (ParamId, &Moments<F>)> + '_) {
        ([self.beta1, self.beta2, self.eps], self.moments.entries())
    }

    /// Sets the (t, m, v) of a parameter (for [`crate::checkpoint`], which checks them).
    pub(crate) fn set_moments(&mut self, id: ParamId, moments: Moments<F>) {
        self.moments.insert(id, moments);
    }

    /// One step on every parameter that has an entry in `grads`. Each parameter keeps its
    /// own step count t for the bias correction (a parameter that first receives a
    /// gradient late starts at t = 1, as in PyTorch).
    ///
    /// Errors: as [`Sgd::step`] (with the moments in place of the velocity). All are
    /// checked before anything is updated.
    pub fn step(&mut self, params: &mut Params<F>, grads: &Grads<F>) -> Result<()> {
        let op = "Adam::step";
        check_all(op, params, grads, &self.moments, |m| m.1.dim())?;
        let (b1, b2, eps, lr) = (self.beta1, self.beta2, self.eps, self.lr);
        // The bias corrections at step count t.
        let corrections = |t: u64| {
            // β^t for t beyond i32::MAX is 0 in any float format.
            let e = i32::try_from(t).unwrap_or(i32::MAX);
            (F::one() - b1.powi(e), F::one() - b2.powi(e))
        };
        let update = |(c1, c2): (F, F), p: F, m: F, v: F, g: F| {
            let m = b1 * m + (F::one() - b1) * g;
            let v = b2 * v + (F::one() - b2) * g * g;
            // η · (m̂ / (√v̂ + ε)): the ratio first, so that a large η does not overflow
            // η·m̂ before the division brings it back.
            let p = p - lr * ((m / c1) / ((v / c2).sqrt() + eps));
            (p, m, v)
        };
        let finite = |(p, m, v): (F, F, F)| p.is_finite() && m.is_finite() && v.is_finite();
        check_steps(op, params, grads, |id, p, g| match self.moments.get(id) {
            Some((t, m, v)) => {
                let c = corrections(t + 1);
                Zip::from(p)
                    .and(m)
                    .and(v)
                    .and(g)
                    .all(|&p, &m, &v, &g| finite(update(c, p, m, v, g)))
            }
            None => {
                let c = corrections(1);
                let zero = F::zero();
                Zip::from(p)
                    .and(g)
                    .all(|&p, &g| finite(update(c, p, zero, zero, g)))
            }
        })?;
        for (id, g) in grads.iter() {
            let p = params.get_mut(id)?;
            let (t, m, v) = self.moments.of(id, || {
                (0, Array2::zeros(g.raw_dim()), Array2::zeros(g.raw_dim()))
            });
            *t += 1;
            let c = corrections(*t);
            Zip::from(p).and(m).and(v).and(g).for_each(|p, m, v, &g| {
                (*p, *m, *v) = update(c, *p, *m, *v, g);
            });
        }
        Ok(())
    }
}
