//! Parameters live outside the tape: a store of named arrays, and their gradients.

use crate::error::{invalid, Error, Result};
use crate::scalar::Scalar;
use ndarray::{Array2, ArrayView2, Zip};
use std::sync::atomic::{AtomicU64, Ordering};

/// Every parameter ever added gets a key of its own (64 bits: never reused).
static NEXT_KEY: AtomicU64 = AtomicU64::new(1);

/// A handle to one parameter of a [`Params`] store.
///
/// It carries the position of the parameter and a key that no other parameter of any
/// store has, so using it with another store is an [`Error::ForeignParam`], not a
/// silent mix-up. A clone of a store keeps the keys of the parameters it copied (their
/// ids work on both), and a parameter added to one of the two afterwards gets a key of
/// its own: an id from one diverged copy never resolves in the other.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ParamId {
    pub(crate) index: usize,
    pub(crate) key: u64,
}

impl ParamId {
    /// Position of the parameter in its store (0, 1, … in order of [`Params::add`]).
    pub fn index(self) -> usize {
        self.index
    }
}

/// A store of named parameter matrices.
///
/// Parameters are registered on a tape at every forward pass with
/// [`Tape::param`](crate::Tape::param); their gradients come back as [`Grads`] keyed by
/// [`ParamId`]. Every parameter has its own identity: a `ParamId` of one store is
/// rejected by another, and a clone keeps the identities of the parameters it copied (so
/// their ids work on the clone) but not of those added later to either copy.
///
/// ```
/// use ndarray::array;
/// use timetape::Params;
///
/// let mut params = Params::<f64>::new();
/// let w = params.add("W_hh", array![[0.5, 0.0], [0.0, 0.5]])?;
/// assert_eq!(params.id("W_hh"), Some(w));
/// assert_eq!(params.name(w)?, "W_hh");
/// assert_eq!(params.get(w)?.dim(), (2, 2));
/// # Ok::<(), timetape::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct Params<F> {
    keys: Vec<u64>,
    names: Vec<String>,
    values: Vec<Array2<F>>,
    /// A stamp per value, new (from the same global counter as the keys) whenever the
    /// value may change: at `add`, `set` and `get_mut`. Equal (key, version) pairs mean
    /// equal values, in this store or a clone of it: a tape reuses its copy of a
    /// parameter while the pair stays the same (see `Tape::param`).
    versions: Vec<u64>,
}

impl<F: Scalar> Default for Params<F> {
    fn default() -> Self {
        Self::new()
    }
}

impl<F: Scalar> Params<F> {
    /// An empty store.
    pub fn new() -> Self {
        Params {
            keys: Vec::new(),
            names: Vec::new(),
            values: Vec::new(),
            versions: Vec::new(),
        }
    }

    /// Adds a parameter under a unique, non-empty name and returns its id.
    ///
    /// ```
    /// use ndarray::{array, Array2};
    /// use timetape::{Error, Params};
    ///
    /// let mut params = Params::<f64>::new();
    /// params.add("b", array![[0.0, 0.0]])?;
    /// assert!(matches!(params.add("b", array![[1.0]]), Err(Error::InvalidArgument { .. })));
    /// assert!(matches!(params.add("", array![[1.0]]), Err(Error::EmptyInput { .. })));
    /// assert!(matches!(params.add("w", Array2::zeros((0, 3))), Err(Error::EmptyInput { .. })));
    /// assert!(matches!(params.add("w", array![[f64::NAN]]), Err(Error::NonFinite { .. })));
    /// # Ok::<(), Error>(())
    /// ```
    ///
    /// Errors: [`Error::InvalidArgument`] for a duplicate name, [`Error::EmptyInput`] for
    /// an empty name or a matrix with no elements, [`Error::NonFinite`] for a NaN or
    /// infinite entry.
    pub fn add(&mut self, name: impl Into<String>, value: Array2<F>) -> Result<ParamId> {
        let name = name.into();
        if name.is_empty() {
            return Err(Error::EmptyInput {
                op: "Params::add",
                what: "name",
            });
        }
        if self.names.contains(&name) {
            return Err(invalid("Params::add", format!("duplicate name {name:?}")));
        }
        if value.is_empty() {
            return Err(Error::EmptyInput {
                op: "Params::add",
                what: "matrix with no elements",
            });
        }
        if let Some(at) = first_non_finite(value.iter()) {
            return Err(Error::NonFinite {
                op: "Params::add",
                what: format!("entry {at} of {name:?}"),
            });
        }
        let key = NEXT_KEY.fetch_add(1, Ordering::Relaxed);
        self.keys.push(key);
        self.names.push(name);
        self.values.push(value);
        self.versions.push(NEXT_KEY.fetch_add(1, Ordering::Relaxed));
        Ok(ParamId {
            index: self.values.len() - 1,
            key,
        })
    }

    pub(crate) fn check(&self, op: &'static str, id: ParamId) -> Result<usize> {
        if self.keys.get(id.index) != Some(&id.key) {
            return Err(Error::ForeignParam { op });
        }
        Ok(id.index)
    }

    fn id_at(&self, index: usize) -> ParamId {
        ParamId {
            index,
            key: self.keys[index],
        }
    }

    /// The value of a parameter.
    ///
    /// Errors: [`Error::ForeignParam`] if `id` is not from this store.
    pub fn get(&self, id: ParamId) -> Result<&Array2<F>> {
        let i = self.check("Params::get", id)?;
        Ok(&self.values[i])
    }

    /// The value of a parameter, mutably (an optimizer of your own, a perturbation in a
    /// finite difference). Nothing is checked here; a non-finite entry written through it
    /// is reported as an [`Error::NonFinite`] naming the parameter when the parameter is
    /// next registered on a tape ([`Tape::param`](crate::Tape::param)). To load values,
    /// use the checked [`Params::set`]. Every call counts as a change, even one that
    /// only reads: the next `Tape::param` of the parameter copies and checks its value
    /// again instead of reusing the tape's copy.
    ///
    /// Errors: [`Error::ForeignParam`] if `id` is not from this store.
    pub fn get_mut(&mut self, id: ParamId) -> Result<&mut Array2<F>> {
        let i = self.check("Params::get_mut", id)?;
        self.versions[i] = NEXT_KEY.fetch_add(1, Ordering::Relaxed);
        Ok(&mut self.values[i])
    }

    /// Replaces the value of a parameter, checked: same shape, every entry finite.
    /// Nothing is changed on error.
    ///
    /// ```
    /// use ndarray::array;
    /// use timetape::{Error, Params};
    ///
    /// let mut params = Params::<f64>::new();
    /// let w = params.add("w", array![[0.0, 0.0]])?;
    /// params.set(w, array![[1.0, 2.0]].view())?;
    /// assert_eq!(params.get(w)?, array![[1.0, 2.0]]);
    /// assert!(matches!(params.set(w, array![[1.0]].view()), Err(Error::ShapeMismatch { .. })));
    /// assert!(matches!(params.set(w, array![[1.0, f64::NAN]].view()), Err(Error::NonFinite { .. })));
    /// assert_eq!(params.get(w)?, array![[1.0, 2.0]]);
    /// # Ok::<(), Error>(())
    /// ```
    ///
    /// Errors: [`Error::ForeignParam`] if `id` is not from this store;
    /// [`Error::ShapeMismatch`] for another shape; [`Error::NonFinite`] for a NaN or
    /// infinite entry.
    pub fn set(&mut self, id: ParamId, value: ArrayView2<'_, F>) -> Result<()> {
        let op = "Params::set";
        let i = self.check(op, id)?;
        if value.dim() != self.values[i].dim() {
            return Err(Error::ShapeMismatch {
                op,
                lhs: self.values[i].dim(),
                rhs: value.dim(),
            });
        }
        if let Some(at) = first_non_finite(value.iter()) {
            return Err(Error::NonFinite {
                op,
                what: format!("entry {at} of {:?}", self.names[i]),
            });
        }
        self.values[i].assign(&value);
        self.versions[i] = NEXT_KEY.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// The version stamp of the value of parameter `i` (an index checked by the caller).
    pub(crate) fn version(&self, i: usize) -> u64 {
        self.versions[i]
    }

    /// Checks that a parameter is not empty and every entry is finite (done by
    /// [`Tape::param`](crate::Tape::param) whenever it copies a value: at a parameter's
    /// first registration on a tape and after every change of its value).
    pub(crate) fn check_finite(&self, op: &'static str, id: ParamId) -> Result<usize> {
        let i = self.check(op, id)?;
        if self.values[i].is_empty() {
            return Err(Error::EmptyInput {
                op,
                what: "parameter with no elements (written through Params::get_mut)",
            });
        }
        if let Some(at) = first_non_finite(self.values[i].iter()) {
            return Err(Error::NonFinite {
                op,
                what: format!("entry {at} of parameter {:?}", self.names[i]),
            });
        }
        Ok(i)
    }

    /// The name a parameter was added under.
    ///
    /// Errors: [`Error::ForeignParam`] if `id` is not from this store.
    pub fn name(&self, id: ParamId) -> Result<&str> {
        let i = self.check("Params::name", id)?;
        Ok(&self.names[i])
    }

    /// Looks a parameter up by name (`None` if there is none of that name).
    pub fn id(&self, name: &str) -> Option<ParamId> {
        self.names
            .iter()
            .position(|n| n == name)
            .map(|i| self.id_at(i))
    }

    /// All parameter ids, in order of addition.
    pub fn ids(&self) -> impl Iterator<Item = ParamId> + '_ {
        (0..self.values.len()).map(move |i| self.id_at(i))
    }

    /// Number of parameters (matrices).
    pub fn len(&self) -> usize {
        self.values.len()
    }

    /// True if no parameter was added.
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// Total number of scalar entries over all parameters.
    pub fn num_scalars(&self) -> usize {
        self.values.iter().map(|v| v.len()).sum()
    }
}

/// Gradients keyed by [`ParamId`], as returned by
/// [`Tape::backward`](crate::Tape::backward).
///
/// A parameter that the loss does not reach has no entry ([`Grads::get`] gives `None`).
/// A `Grads` can be reused across steps ([`Grads::zero`] keeps its allocations) and
/// accumulated into ([`Tape::backward_into`](crate::Tape::backward_into)). Each entry
/// remembers the parameter it belongs to: an id of another parameter at the same
/// position is rejected.
///
/// ```
/// use ndarray::array;
/// use timetape::{Params, Tape};
///
/// let mut params = Params::<f64>::new();
/// let w = params.add("w", array![[3.0]])?;
/// let mut tape = Tape::new();
/// let wv = tape.param(&params, w)?;
/// let y = tape.mul(wv, wv)?; // w²
/// let grads = tape.backward(y)?;
/// assert_eq!(grads.get(w).unwrap()[[0, 0]], 6.0);
/// # Ok::<(), timetape::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Grads<F> {
    /// Per position: the key of the parameter and its gradient.
    slots: Vec<Option<(u64, Array2<F>)>>,
}

impl<F: Scalar> Default for Grads<F> {
    fn default() -> Self {
        Grads { slots: Vec::new() }
    }
}

impl<F: Scalar> Grads<F> {
    /// Gradients for the parameters of `params` with no entry yet (every
    /// [`Grads::get`] is `None` until [`Grads::accumulate`]).
    pub fn new(params: &Params<F>) -> Self {
        Grads {
            slots: vec![None; params.len()],
        }
    }

    /// Gradients with a zero entry of the right shape for every parameter of `params`.
    pub fn zeros_like(params: &Params<F>) -> Self {
        Grads {
            slots: params
                .keys
                .iter()
                .zip(&params.values)
                .map(|(&k, v)| Some((k, Array2::zeros(v.raw_dim()))))
                .collect(),
        }
    }

    /// The gradient of one parameter.
    ///
    /// Errors, as [`Params::get`] answers a foreign id: [`Error::ForeignParam`] for an
    /// id of another store (whenever this `Grads` holds an entry at its position);
    /// [`Error::NoGradient`] if the parameter has no entry (for the gradients of a
    /// backward pass: the loss does not reach it). The runners of
    /// [`bptt`](crate::bptt) give an entry, zero if need be, to every parameter.
    pub fn get(&self, id: ParamId) -> Result<&Array2<F>> {
        match self.slots.get(id.index) {
            Some(Some((k, a))) if *k == id.key => Ok(a),
            Some(Some(_)) => Err(Error::ForeignParam { op: "Grads::get" }),
            _ => Err(Error::NoGradient { op: "Grads::get" }),
        }
    }

    /// Mutable access to one parameter's gradient (errors as for [`Grads::get`]).
    pub fn get_mut(&mut self, id: ParamId) -> Result<&mut Array2<F>> {
        match self.slots.get_mut(id.index) {
            Some(Some((k, a))) if *k == id.key => Ok(a),
            Some(Some(_)) => Err(Error::ForeignParam {
                op: "Grads::get_mut",
            }),
            _ => Err(Error::NoGradient {
                op: "Grads::get_mut",
            }),
        }
    }

    /// The entries present, in parameter order.
    ///
    /// ```
    /// use ndarray::array;
    /// use timetape::{Grads, Params};
    ///
    /// let mut params = Params::<f64>::new();
    /// let a = params.add("a", array![[1.0]])?;
    /// let b = params.add("b", array![[2.0]])?;
    /// let mut grads = Grads::new(&params);
    /// grads.accumulate(b, array![[0.5]].view())?;
    /// grads.accumulate(b, array![[0.25]].view())?;
    /// let entries: Vec<_> = grads.iter().map(|(id, g)| (id, g[[0, 0]])).collect();
    /// assert_eq!(entries, vec![(b, 0.75)]);
    /// assert!(grads.get(a).is_err());
    /// # Ok::<(), timetape::Error>(())
    /// ```
    pub fn iter(&self) -> impl Iterator<Item = (ParamId, &Array2<F>)> + '_ {
        self.slots
            .iter()
            .enumerate()
            .filter_map(|(index, s)| s.as_ref().map(|(key, a)| (ParamId { index, key: *key }, a)))
    }

    /// Mutable iteration over the entries present.
    pub fn iter_mut(&mut self) -> impl Iterator<Item = (ParamId, &mut Array2<F>)> + '_ {
        self.slots
            .iter_mut()
            .enumerate()
            .filter_map(|(index, s)| s.as_mut().map(|(key, a)| (ParamId { index, key: *key }, a)))
    }

    /// Sets every entry present to zero, keeping the allocations.
    pub fn zero(&mut self) {
        for (_, a) in self.slots.iter_mut().flatten() {
            a.fill(F::zero());
        }
    }

    /// Adds `g` into the entry of `id`, creating it on first use.
    ///
    /// Errors: [`Error::ForeignParam`] if the position of `id` holds an entry of another
    /// parameter; [`Error::ShapeMismatch`] if the entry exists with another shape.
    pub fn accumulate(&mut self, id: ParamId, g: ArrayView2<'_, F>) -> Result<()> {
        let op = "Grads::accumulate";
        if self.slots.len() <= id.index {
            self.slots.resize(id.index + 1, None);
        }
        match &mut self.slots[id.index] {
            Some((key, _)) if *key != id.key => Err(Error::ForeignParam { op }),
            Some((_, a)) => {
                if a.dim() != g.dim() {
                    return Err(Error::ShapeMismatch {
                        op,
                        lhs: a.dim(),
                        rhs: g.dim(),
                    });
                }
                Zip::from(a).and(&g).for_each(|a, &g| *a = *a + g);
                Ok(())
            }
            slot @ None => {
                *slot = Some((id.key, g.to_owned()));
                Ok(())
            }
        }
    }

    /// Adds every entry of `other` into `self`.
    ///
    /// Errors: as [`Grads::accumulate`]; the entries before the failing one are added.
    pub fn add_assign(&mut self, other: &Grads<F>) -> Result<()> {
        for (id, g) in other.iter() {
            self.accumulate(id, g.view())?;
        }
        Ok(())
    }

    /// Multiplies every entry by `c`.
    pub fn scale(&mut self, c: F) {
        for (_, a) in self.slots.iter_mut().flatten() {
            a.mapv_inplace(|x| x * c);
        }
    }

    /// The global Euclidean norm over all entries, `sqrt(Σ_p Σ g²)`, computed with
    /// scaling (`m · sqrt(Σ (g/m)²)`, m the largest magnitude), so that it is finite
    /// whenever it is representable, even when `Σ g²` itself would overflow. NaN if an
    /// entry is NaN, +∞ if an entry is infinite.
    ///
    /// ```
    /// use ndarray::array;
    /// use timetape::{Grads, Params};
    ///
    /// let mut params = Params::<f32>::new();
    /// let w = params.add("w", array![[0.0, 0.0]])?;
    /// let mut g = Grads::new(&params);
    /// g.accumulate(w, array![[3e19, 4e19]].view())?; // Σ g² = 2.5e39 overflows f32
    /// assert!((g.global_norm() / 5e19 - 1.0).abs() < 1e-6);
    /// # Ok::<(), timetape::Error>(())
    /// ```
    pub fn global_norm(&self) -> F {
        scaled_norm(self.slots.iter().flatten().flat_map(|(_, a)| a.iter()))
    }

    /// The largest relative difference from `other` (the reference) over all parameters,
    /// matched by position in the store. Each is measured as `‖a − b‖_max / ‖b‖_max`, or
    /// as `‖a − b‖_max` if `b` is all zeros. A parameter present in only one of the two
    /// counts as 1, or 0 if the entry present is all zeros; entries of different shapes
    /// count as `f64::INFINITY`. A NaN or infinite entry on either side makes the result
    /// `f64::INFINITY` (or NaN): a comparison with a non-finite gradient never passes a
    /// tolerance.
    ///
    /// ```
    /// use ndarray::array;
    /// use timetape::{Grads, Params};
    ///
    /// let mut params = Params::<f64>::new();
    /// let w = params.add("w", array![[1.0, 1.0]])?;
    /// let mut a = Grads::new(&params);
    /// a.accumulate(w, array![[1.0, 2.0]].view())?;
    /// let mut b = Grads::new(&params);
    /// b.accumulate(w, array![[1.0, 2.5]].view())?;
    /// assert_eq!(a.max_rel_diff(&b), 0.2); // 0.5 / 2.5
    /// let mut nan = Grads::new(&params);
    /// nan.accumulate(w, array![[f64::NAN, 2.5]].view())?;
    /// assert!(!(nan.max_rel_diff(&b) < 1e-3));
    /// # Ok::<(), timetape::Error>(())
    /// ```
    pub fn max_rel_diff(&self, other: &Grads<F>) -> f64 {
        let n = self.slots.len().max(other.slots.len());
        let mut worst = 0.0f64;
        for i in 0..n {
            let a = self.slots.get(i).and_then(|s| s.as_ref()).map(|(_, a)| a);
            let b = other.slots.get(i).and_then(|s| s.as_ref()).map(|(_, b)| b);
            let non_finite = a
                .into_iter()
                .chain(b)
                .any(|x| x.iter().any(|v| !v.is_finite()));
            if non_finite {
                return f64::INFINITY;
            }
            let d = match (a, b) {
                (Some(a), Some(b)) if a.dim() == b.dim() => {
                    let scale = b.iter().fold(0.0f64, |m, x| m.max(x.as_f64().abs()));
                    let diff = a
                        .iter()
                        .zip(b.iter())
                        .fold(0.0f64, |m, (x, y)| m.max((x.as_f64() - y.as_f64()).abs()));
                    if scale == 0.0 {
                        diff
                    } else {
                        diff / scale
                    }
                }
                (Some(_), Some(_)) => f64::INFINITY,
                (Some(x), None) | (None, Some(x)) => {
                    if x.iter().all(|v| *v == F::zero()) {
                        0.0
                    } else {
                        1.0
                    }
                }
                (None, None) => 0.0,
            };
            worst = worst.max(d);
        }
        worst
    }

    /// Checks that every entry is finite.
    ///
    /// Errors: [`Error::NonFinite`] naming `op` and the position of the first parameter
    /// with a NaN or infinite entry.
    pub fn check_finite(&self, op: &'static str) -> Result<()> {
        for (id, g) in self.iter() {
            if let Some(at) = first_non_finite(g.iter()) {
                return Err(Error::NonFinite {
                    op,
                    what: format!("gradient of parameter {}, entry {at}", id.index),
                });
            }
        }
        Ok(())
    }
}

/// Position (in iteration order) of the first NaN or infinite value.
pub(crate) fn first_non_finite<'a, F: Scalar>(
    mut values: impl Iterator<Item = &'a F>,
) -> Option<usize> {
    values.position(|x| !x.is_finite())
}

/// `sqrt(Σ x²)` without overflow or underflow of the squares: `m · sqrt(Σ (x/m)²)` with
/// m the largest magnitude. NaN if a value is NaN, +∞ if one is infinite.
pub(crate) fn scaled_norm<'a, F: Scalar>(values: impl Iterator<Item = &'a F> + Clone) -> F {
    let mut m = F::zero();
    for &x in values.clone() {
        let a = x.abs();
        if a.is_nan() {
            return F::nan();
        }
        if a > m {
            m = a;
        }
    }
    if m == F::zero() || m.is_infinite() {
        return m;
    }
    let s = values.fold(F::zero(), |s, &x| {
        let r = x / m;
        s + r * r
    });
    m * s.sqrt()
}
