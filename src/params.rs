//! Parameters live outside the tape: a store of named arrays, and their gradients.

use crate::error::{invalid, Error, Result};
use crate::scalar::Scalar;
use ndarray::{Array2, ArrayView2, Zip};
use std::sync::atomic::{AtomicU32, Ordering};

static NEXT_STORE: AtomicU32 = AtomicU32::new(1);

/// A handle to one parameter of a [`Params`] store.
///
/// It remembers which store issued it, so using it with another store is an
/// [`Error::ForeignParam`], not a silent mix-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ParamId {
    pub(crate) store: u32,
    pub(crate) index: u32,
}

impl ParamId {
    /// Position of the parameter in its store (0, 1, … in order of [`Params::add`]).
    pub fn index(self) -> usize {
        self.index as usize
    }
}

/// A store of named parameter matrices.
///
/// Parameters are registered on a tape at every forward pass with
/// [`Tape::param`](crate::Tape::param); their gradients come back as [`Grads`] keyed by
/// [`ParamId`]. Every store has its own identity: a `ParamId` of one store is rejected
/// by another, and a clone keeps the identity (so its ids work on the clone).
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
    store: u32,
    names: Vec<String>,
    values: Vec<Array2<F>>,
}

impl<F: Scalar> Default for Params<F> {
    fn default() -> Self {
        Self::new()
    }
}

impl<F: Scalar> Params<F> {
    /// An empty store, with a fresh identity.
    pub fn new() -> Self {
        Params {
            store: NEXT_STORE.fetch_add(1, Ordering::Relaxed),
            names: Vec::new(),
            values: Vec::new(),
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
    /// assert!(matches!(params.add("w", array![[f64::NAN]]), Err(Error::InvalidArgument { .. })));
    /// # Ok::<(), Error>(())
    /// ```
    ///
    /// Errors: [`Error::InvalidArgument`] for a duplicate name, [`Error::EmptyInput`] for
    /// an empty name or a matrix with no elements, [`Error::InvalidArgument`] for a
    /// non-finite entry.
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
        if value.iter().any(|x| !x.is_finite()) {
            return Err(invalid(
                "Params::add",
                format!("{name:?} has a non-finite entry"),
            ));
        }
        self.names.push(name);
        self.values.push(value);
        Ok(ParamId {
            store: self.store,
            index: (self.values.len() - 1) as u32,
        })
    }

    pub(crate) fn check(&self, op: &'static str, id: ParamId) -> Result<usize> {
        if id.store != self.store || id.index() >= self.values.len() {
            return Err(Error::ForeignParam { op });
        }
        Ok(id.index())
    }

    /// The value of a parameter.
    ///
    /// Errors: [`Error::ForeignParam`] if `id` is not from this store.
    pub fn get(&self, id: ParamId) -> Result<&Array2<F>> {
        let i = self.check("Params::get", id)?;
        Ok(&self.values[i])
    }

    /// The value of a parameter, mutably (an optimizer step, a perturbation in a finite
    /// difference). Nothing is checked afterwards: keep the shape and the entries finite.
    ///
    /// Errors: [`Error::ForeignParam`] if `id` is not from this store.
    pub fn get_mut(&mut self, id: ParamId) -> Result<&mut Array2<F>> {
        let i = self.check("Params::get_mut", id)?;
        Ok(&mut self.values[i])
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
        self.names.iter().position(|n| n == name).map(|i| ParamId {
            store: self.store,
            index: i as u32,
        })
    }

    /// All parameter ids, in order of addition.
    pub fn ids(&self) -> impl Iterator<Item = ParamId> + '_ {
        (0..self.values.len()).map(move |i| ParamId {
            store: self.store,
            index: i as u32,
        })
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
/// accumulated into ([`Tape::backward_into`](crate::Tape::backward_into)).
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
    store: u32,
    slots: Vec<Option<Array2<F>>>,
}

impl<F: Scalar> Grads<F> {
    /// Gradients for the parameters of `params` with no entry yet (every
    /// [`Grads::get`] is `None` until [`Grads::accumulate`]).
    pub fn new(params: &Params<F>) -> Self {
        Grads {
            store: params.store,
            slots: vec![None; params.len()],
        }
    }

    /// Gradients with a zero entry of the right shape for every parameter of `params`.
    pub fn zeros_like(params: &Params<F>) -> Self {
        Grads {
            store: params.store,
            slots: params
                .values
                .iter()
                .map(|v| Some(Array2::zeros(v.raw_dim())))
                .collect(),
        }
    }

    pub(crate) fn empty_for_store(store: u32) -> Self {
        Grads {
            store,
            slots: Vec::new(),
        }
    }

    /// The gradient of one parameter, if it has an entry (for the gradients of a
    /// backward pass: if the loss reached it). `None` for an id of another store.
    pub fn get(&self, id: ParamId) -> Option<&Array2<F>> {
        if id.store != self.store {
            return None;
        }
        self.slots.get(id.index()).and_then(|s| s.as_ref())
    }

    /// Mutable access to one parameter's gradient (`None` as for [`Grads::get`]).
    pub fn get_mut(&mut self, id: ParamId) -> Option<&mut Array2<F>> {
        if id.store != self.store {
            return None;
        }
        self.slots.get_mut(id.index()).and_then(|s| s.as_mut())
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
    /// assert!(grads.get(a).is_none());
    /// # Ok::<(), timetape::Error>(())
    /// ```
    pub fn iter(&self) -> impl Iterator<Item = (ParamId, &Array2<F>)> + '_ {
        let store = self.store;
        self.slots.iter().enumerate().filter_map(move |(i, s)| {
            s.as_ref().map(|a| {
                (
                    ParamId {
                        store,
                        index: i as u32,
                    },
                    a,
                )
            })
        })
    }

    /// Mutable iteration over the entries present.
    pub fn iter_mut(&mut self) -> impl Iterator<Item = (ParamId, &mut Array2<F>)> + '_ {
        let store = self.store;
        self.slots.iter_mut().enumerate().filter_map(move |(i, s)| {
            s.as_mut().map(|a| {
                (
                    ParamId {
                        store,
                        index: i as u32,
                    },
                    a,
                )
            })
        })
    }

    /// Sets every entry present to zero, keeping the allocations.
    pub fn zero(&mut self) {
        for a in self.slots.iter_mut().flatten() {
            a.fill(F::zero());
        }
    }

    /// Adds `g` into the entry of `id`, creating it on first use.
    ///
    /// Gradients with no entry at all (as a backward pass starts them) take the store of
    /// the first id they see.
    ///
    /// Errors: [`Error::ForeignParam`] if `id` is from another store than the entries;
    /// [`Error::ShapeMismatch`] if the entry exists with another shape.
    pub fn accumulate(&mut self, id: ParamId, g: ArrayView2<'_, F>) -> Result<()> {
        if self.slots.is_empty() && self.store != id.store {
            self.store = id.store;
        }
        if id.store != self.store {
            return Err(Error::ForeignParam {
                op: "Grads::accumulate",
            });
        }
        let i = id.index();
        if self.slots.len() <= i {
            self.slots.resize(i + 1, None);
        }
        match &mut self.slots[i] {
            Some(a) => {
                if a.dim() != g.dim() {
                    return Err(Error::ShapeMismatch {
                        op: "Grads::accumulate",
                        lhs: a.dim(),
                        rhs: g.dim(),
                    });
                }
                Zip::from(a).and(&g).for_each(|a, &g| *a = *a + g);
            }
            slot @ None => *slot = Some(g.to_owned()),
        }
        Ok(())
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
        for a in self.slots.iter_mut().flatten() {
            a.mapv_inplace(|x| x * c);
        }
    }

    /// The global Euclidean norm over all entries, `sqrt(Σ_p Σ g²)`.
    pub fn global_norm(&self) -> F {
        self.slots
            .iter()
            .flatten()
            .flat_map(|a| a.iter())
            .fold(F::zero(), |s, &x| s + x * x)
            .sqrt()
    }

    /// The largest relative difference from `other` (the reference) over all parameters,
    /// matched by position in the store. Each is measured as `‖a − b‖_max / ‖b‖_max`, or
    /// as `‖a − b‖_max` if `b` is all zeros. A parameter present in only one of the two
    /// counts as 1, or 0 if the entry present is all zeros; entries of different shapes
    /// count as `f64::INFINITY`.
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
    /// # Ok::<(), timetape::Error>(())
    /// ```
    pub fn max_rel_diff(&self, other: &Grads<F>) -> f64 {
        let n = self.slots.len().max(other.slots.len());
        let mut worst = 0.0f64;
        for i in 0..n {
            let a = self.slots.get(i).and_then(|s| s.as_ref());
            let b = other.slots.get(i).and_then(|s| s.as_ref());
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
}
