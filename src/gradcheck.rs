//! Central finite differences in f64, for any loss built on a fresh tape.
//!
//! Use it on your own cells: write the loss as a closure from [`Params`] to a 1×1
//! [`Var`], and compare the tape's gradient with
//! `(L(θ + h e_i) − L(θ − h e_i)) / 2h` entry by entry. The loss must be a smooth
//! function of the parameters near θ (a ReLU kink within h of an entry spoils the
//! difference, not the tape).
//!
//! ```
//! use ndarray::array;
//! use timetape::gradcheck::{gradcheck, GradcheckOptions};
//! use timetape::Params;
//!
//! let mut params = Params::<f64>::new();
//! let w = params.add("w", array![[0.3, -0.2], [0.1, 0.5]])?;
//! let report = gradcheck(&params, GradcheckOptions::default(), |tape, p| {
//!     let x = tape.constant(array![[1.0, 2.0]])?;
//!     let wv = tape.param(p, w)?;
//!     let y = tape.matmul(x, wv)?;
//!     let y = tape.tanh(y)?;
//!     tape.sum(y)
//! })?;
//! assert!(report.max_rel_err() < 1e-8, "{report}");
//! # Ok::<(), timetape::Error>(())
//! ```

use crate::error::{invalid, Error, Result};
use crate::params::{Grads, ParamId, Params};
use crate::tape::{Tape, Var};
use std::fmt;

/// Settings of [`gradcheck`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GradcheckOptions {
    /// Relative step: entry θ is moved by `h = eps · max(1, |θ|)` each way.
    pub eps: f64,
}

impl Default for GradcheckOptions {
    /// `eps = 1e-5`: the truncation error of the central difference is O(h²) ≈ 1e-10
    /// times the third derivative, the rounding error ≈ 1e-16 |L| / h ≈ 1e-11 |L|.
    fn default() -> Self {
        GradcheckOptions { eps: 1e-5 }
    }
}

/// The comparison for one parameter, over all its entries.
#[derive(Debug, Clone, PartialEq)]
pub struct ParamCheck {
    /// The parameter.
    pub id: ParamId,
    /// Its name in the store.
    pub name: String,
    /// Largest `|tape − finite difference|` over its entries (the tape's entry is 0 if
    /// the loss does not reach the parameter).
    pub max_abs_err: f64,
    /// `max_abs_err` divided by the largest finite-difference entry in magnitude (or by
    /// 1e-12 if all are smaller): an error relative to the gradient's scale, so that
    /// entries near zero are not judged by their own tiny size.
    pub max_rel_err: f64,
    /// Largest magnitude among the finite-difference entries.
    pub scale: f64,
}

/// What [`gradcheck`] found, per parameter.
#[derive(Debug, Clone, PartialEq)]
pub struct GradcheckReport {
    /// One entry per parameter of the store, in order.
    pub params: Vec<ParamCheck>,
}

impl GradcheckReport {
    /// The largest relative error over all parameters (NaN if any is NaN).
    pub fn max_rel_err(&self) -> f64 {
        self.params.iter().map(|p| p.max_rel_err).fold(0.0, nan_max)
    }

    /// The largest absolute error over all parameters (NaN if any is NaN).
    pub fn max_abs_err(&self) -> f64 {
        self.params.iter().map(|p| p.max_abs_err).fold(0.0, nan_max)
    }

    /// True if every relative error is at most `tol` (false if any is NaN or infinite).
    pub fn passes(&self, tol: f64) -> bool {
        let worst = self.max_rel_err();
        worst.is_finite() && worst <= tol
    }
}

/// The larger of two values, NaN if either is NaN (`f64::max` would skip it).
fn nan_max(a: f64, b: f64) -> f64 {
    if a.is_nan() || b.is_nan() {
        f64::NAN
    } else {
        a.max(b)
    }
}

impl fmt::Display for GradcheckReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for p in &self.params {
            writeln!(
                f,
                "{:>12}: max abs err {:.3e}, max rel err {:.3e} (scale {:.3e})",
                p.name, p.max_abs_err, p.max_rel_err, p.scale
            )?;
        }
        Ok(())
    }
}

/// Compares the tape's gradient of `loss` with central finite differences, for every
/// entry of every parameter in `params`.
///
/// `loss` is called once with `params` on a new tape (its gradient is the tape's
/// answer), then twice per entry on the cleared tape with a copy of the parameters
/// whose entry θ is moved to `θ ± h`, `h = eps · max(1, |θ|)`; it must return a 1×1
/// `Var`. That is `2 · params.num_scalars() + 1` calls: keep the check small.
///
/// The [`GradcheckReport`] gives, per parameter, the largest absolute error and that
/// error relative to the largest finite-difference entry. See the module docs for an
/// example.
///
/// Every comparison fails on a non-finite value: a NaN or infinite loss at θ or at a
/// perturbed point, or a non-finite gradient on the tape, is an error (the backward pass
/// reports the latter); an error that is NaN makes [`GradcheckReport::max_rel_err`] NaN,
/// so `report.max_rel_err() < tol` is false and [`GradcheckReport::passes`] too.
///
/// Errors: whatever `loss` returns; [`crate::Error::NonScalarLoss`] if the loss is not
/// 1×1; [`crate::Error::InvalidArgument`] if `eps` is not positive and finite;
/// [`crate::Error::NonFinite`] if the loss at θ or at a perturbed point, the tape's
/// gradient, or an error (a difference quotient that overflows) is not finite.
pub fn gradcheck<L>(
    params: &Params<f64>,
    opts: GradcheckOptions,
    mut loss: L,
) -> Result<GradcheckReport>
where
    L: FnMut(&mut Tape<f64>, &Params<f64>) -> Result<Var>,
{
    if !(opts.eps > 0.0 && opts.eps.is_finite()) {
        return Err(invalid("gradcheck", "eps must be positive and finite"));
    }
    let mut tape = Tape::new();
    let l = loss(&mut tape, params)?;
    finite_loss(tape.scalar(l)?, "the loss at θ")?;
    let grads = tape.backward(l)?;
    let mut probe = Probe {
        params,
        work: params.clone(),
        tape,
        loss,
        eps: opts.eps,
    };
    let checks = params
        .ids()
        .map(|id| probe.check(id, &grads))
        .collect::<Result<Vec<_>>>()?;
    Ok(GradcheckReport { params: checks })
}

/// The loss `x`, or [`Error::NonFinite`] naming `what` if it is NaN or infinite.
fn finite_loss(x: f64, what: &str) -> Result<f64> {
    if x.is_finite() {
        Ok(x)
    } else {
        Err(Error::NonFinite {
            op: "gradcheck",
            what: what.into(),
        })
    }
}

/// The finite-difference side of [`gradcheck`]: the loss, the tape it is recorded on, and
/// a working copy of the parameters whose entries are moved one at a time.
struct Probe<'p, L> {
    /// The parameters at θ.
    params: &'p Params<f64>,
    /// A copy of them in which one entry at a time is moved to `θ ± h`.
    work: Params<f64>,
    /// The tape the loss is recorded on, cleared before each evaluation.
    tape: Tape<f64>,
    /// The loss closure.
    loss: L,
    /// The relative step of [`GradcheckOptions`].
    eps: f64,
}

impl<L> Probe<'_, L>
where
    L: FnMut(&mut Tape<f64>, &Params<f64>) -> Result<Var>,
{
    /// The loss at the working copy, recorded on the cleared tape.
    fn eval(&mut self) -> Result<f64> {
        self.tape.clear();
        let v = (self.loss)(&mut self.tape, &self.work)?;
        finite_loss(
            self.tape.scalar(v)?,
            "the loss at a perturbed point θ ± h e_i",
        )
    }

    /// The central difference `(L(θ + h e_i) − L(θ − h e_i)) / 2h` for entry `at` of
    /// `id`, which is put back to θ afterwards.
    fn difference(&mut self, id: ParamId, at: [usize; 2]) -> Result<f64> {
        let theta = self.params.get(id)?[at];
        let h = self.eps * theta.abs().max(1.0);
        self.work.get_mut(id)?[at] = theta + h;
        let up = self.eval()?;
        self.work.get_mut(id)?[at] = theta - h;
        let down = self.eval()?;
        self.work.get_mut(id)?[at] = theta;
        Ok((up - down) / (2.0 * h))
    }

    /// The comparison of the tape's gradient `grads` with the finite differences over
    /// every entry of parameter `id`.
    fn check(&mut self, id: ParamId, grads: &Grads<f64>) -> Result<ParamCheck> {
        let shape = self.params.get(id)?.dim();
        let mut max_abs: f64 = 0.0;
        let mut scale: f64 = 0.0;
        for r in 0..shape.0 {
            for c in 0..shape.1 {
                let fd = self.difference(id, [r, c])?;
                let an = grads.get(id).map_or(0.0, |g| g[[r, c]]);
                max_abs = nan_max(max_abs, (an - fd).abs());
                scale = nan_max(scale, fd.abs());
            }
        }
        let check = ParamCheck {
            id,
            name: self.params.name(id)?.to_string(),
            max_abs_err: max_abs,
            max_rel_err: max_abs / scale.max(1e-12),
            scale,
        };
        // Finite losses can still give an infinite difference quotient (an eps so small
        // that (up − down) / 2h overflows) or an infinite error: never an Ok.
        if !(check.max_abs_err.is_finite() && check.max_rel_err.is_finite()) {
            return Err(Error::NonFinite {
                op: "gradcheck",
                what: format!(
                    "the error for {:?} (a difference quotient overflowed: eps = {} too small \
                     for this loss?)",
                    check.name, self.eps
                ),
            });
        }
        Ok(check)
    }
}
