//! A seeded fuzz test of the public API (issue 9): random graphs on the tape and random
//! calls to the RNN cells, the BPTT runners, the optimizers, `gradcheck`, the ξ samplers
//! and the diagnostics, through `timetape::*` only, with valid and invalid inputs mixed
//! (mismatched and empty shapes; huge, tiny, NaN and infinite values; stale `Var`s and
//! `Var`s of another tape; `ParamId`s of another store or of a cloned-and-diverged one;
//! absurd sizes; junk truncation parameters; a custom cell that breaks its contract).
//!
//! Every call into the crate runs under `catch_unwind`, and the test asserts
//!
//! (a) that no call panics, and
//! (b) that no `Ok` result breaks the crate's policy on non-finite values:
//!   - inputs (`Tape::constant`, `constant_view`, `variable`), parameters (`Params::add`,
//!     `Params::set`, and at every `Tape::param`), backward seeds and targets: a NaN or
//!     an infinity is `Error::NonFinite`;
//!   - `Tape::backward*`: an `Ok` has a finite loss (or seeded values) and finite
//!     gradients (for the `_into` forms: the gradients it adds into, if they were finite);
//!   - with `Tape::set_check_finite(true)`, every `Ok(Var)` has a finite value;
//!   - `bptt::run`, `Workspace::run` (any memory policy), `Stream::finish`: an `Ok(Report)` has a
//!     finite `loss`, `grads`, `dh_norms` and `h_final`;
//!   - `gradcheck`: an `Ok(report)` has finite errors;
//!   - `optim::clip_global_norm`: an `Ok` norm is finite (and the clipped norm is at most
//!     θ); `Sgd::step` / `Adam::step`: after an `Ok` the parameters that were finite are
//!     finite; after an `Err` nothing changed;
//!   - `diagnostics::spectral_radius` / `largest_singular_value`: an `Ok` is finite;
//!   - and a few documented invariants next to them (a failed op records no node, a
//!     constructor refuses exactly the arguments its docs refuse, absurd sizes fail fast).
//!
//! Things that look wrong but that no documented rule covers are printed as
//! observations, and do not fail the test.
//!
//! Families (one per episode, weighted): random graphs on the tape (f64, f32); parameter
//! stores and optimizers; `gradcheck`; diagnostics; ξ patterns, samplers and
//! enumeration; absurd sizes; RNN cells (M1–M4, `Rnn`, `Gru`, `Lstm`, and a custom cell
//! that breaks the `Recurrent` contract) with unrolls, every `Truncation`, `run`,
//! `run_with`, `checkpointed`, `Stream`, `randomized_moments` and the closed forms.
//! Sizes stay small (≤ 6, T ≤ 20) except for the deliberately absurd ones, which must
//! fail fast. Sizes that overflow `isize` bytes are tried in-process; sizes that fit but
//! cannot be granted (2^40 entries), whose failure in the allocator aborts the process,
//! are tried in child processes by `absurd_allocations_fail_fast` (Linux).
//!
//! # Running and replaying
//!
//! Each episode has its own seed (`TIMETAPE_FUZZ_BASE` + its index, base 0 by default)
//! and runs one family of calls from a ChaCha8 generator seeded with it
//! ([`timetape::init::rng`]): nothing depends on the clock except when the loop stops.
//! The loop stops after `TIMETAPE_FUZZ_EPISODES` episodes (default 400 000: about 14 s
//! and 13 million calls in release mode on the 2-core development machine) or after
//! `TIMETAPE_FUZZ_SECS` seconds (default 40, for slow CI machines and debug builds),
//! whichever comes first, and prints the number of episodes and calls and the outcomes
//! per op. A failure names its episode seed and the index of the call in that episode;
//! replay it alone, printing every call, with
//!
//! ```text
//! TIMETAPE_FUZZ_SEED=<seed> TIMETAPE_FUZZ_VERBOSE=1 \
//!     cargo test --release --test fuzz_public_api fuzz_public_api -- --nocapture
//! ```

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::ops::Range;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Once;
use std::time::{Duration, Instant};

use ndarray::{Array1, Array2, Array3, ArrayView2};
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use timetape::bptt::{
    self, enumerate, Pi, Report, RunOptions, StepTarget, Stream, Truncation, Workspace, XiSampler,
};
use timetape::bptt::{Edge, Memory, Run};
use timetape::gradcheck::{gradcheck, GradcheckOptions, GradcheckReport};
use timetape::ops::RowsOf;
use timetape::optim::{clip_global_norm, Adam, Sgd};
use timetape::rnn::{
    models, Biases, Gru, Lstm, Projection, Recurrent, Rnn, RnnBound, RnnConfig, Sequence,
    SequenceLoss, Sizes, Stack,
};

use timetape::{
    closed_form, diagnostics, init, Activation, Along, Error, Grads, ParamId, Params, Reduction,
    Scalar, Tape, Var,
};

// =======================================================================================
// The harness: calls under catch_unwind, findings, the seeded generator.
// =======================================================================================

thread_local! {
    /// Set while a call into the crate runs: its panic is recorded, not printed.
    static IN_CALL: Cell<bool> = const { Cell::new(false) };
    static LAST_PANIC: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// A panic hook that records the message and location of a panic inside a fuzzed call
/// (it is reported as a finding, once per kind) and leaves every other panic to the
/// default hook.
fn install_panic_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if IN_CALL.with(Cell::get) {
                let payload = info.payload();
                let msg = payload
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| payload.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "(non-string payload)".into());
                let at = info
                    .location()
                    .map_or_else(String::new, |l| format!(" at {}:{}", l.file(), l.line()));
                LAST_PANIC.with(|p| *p.borrow_mut() = Some(format!("{msg}{at}")));
            } else {
                default(info);
            }
        }));
    });
}

/// A panic or a broken rule, with what is needed to replay it.
#[derive(Debug, Clone)]
struct Finding {
    seed: u64,
    call: u64,
    family: &'static str,
    op: &'static str,
    /// "panic", or the rule that was broken.
    what: &'static str,
    detail: String,
}

/// One episode's state: its generator, its call counter, what it found.
struct Fuzz {
    rng: ChaCha8Rng,
    seed: u64,
    family: &'static str,
    calls: u64,
    verbose: bool,
    findings: Vec<Finding>,
    observations: Vec<Finding>,
    /// Per op: calls that returned `Ok`, `Err`, or panicked.
    tally: BTreeMap<&'static str, [u64; 3]>,
}

impl Fuzz {
    fn new(seed: u64, verbose: bool) -> Self {
        Fuzz {
            rng: init::rng(seed),
            seed,
            family: "",
            calls: 0,
            verbose,
            findings: Vec::new(),
            observations: Vec::new(),
            tally: BTreeMap::new(),
        }
    }

    /// Runs one call into the crate under `catch_unwind`; a panic becomes a finding and
    /// gives `None`.
    fn call<T>(&mut self, op: &'static str, f: impl FnOnce() -> T) -> Option<T> {
        self.calls += 1;
        if self.verbose {
            println!("  call {}: {op}", self.calls);
        }
        IN_CALL.with(|c| c.set(true));
        let out = catch_unwind(AssertUnwindSafe(f));
        IN_CALL.with(|c| c.set(false));
        match out {
            Ok(v) => Some(v),
            Err(_) => {
                let msg = LAST_PANIC.with(|p| p.borrow_mut().take());
                self.fail(op, "panic", msg.unwrap_or_default());
                None
            }
        }
    }

    /// [`Fuzz::call`] for a call that returns a `Result`, counting its outcomes.
    fn try_call<T>(
        &mut self,
        op: &'static str,
        f: impl FnOnce() -> timetape::Result<T>,
    ) -> Option<timetape::Result<T>> {
        let out = self.call(op, f);
        let n = self.tally.entry(op).or_default();
        match &out {
            Some(Ok(_)) => n[0] += 1,
            Some(Err(_)) => n[1] += 1,
            None => n[2] += 1,
        }
        out
    }

    /// [`Fuzz::try_call`], and a finding if it took more than a second (absurd sizes must
    /// fail fast, before allocating).
    fn call_fast<T>(
        &mut self,
        op: &'static str,
        f: impl FnOnce() -> timetape::Result<T>,
    ) -> Option<timetape::Result<T>> {
        let start = Instant::now();
        let out = self.try_call(op, f);
        let took = start.elapsed();
        self.ensure(took < Duration::from_secs(1), op, "slow to refuse", || {
            format!("took {took:?}")
        });
        out
    }

    fn finding(&self, op: &'static str, what: &'static str, detail: String) -> Finding {
        Finding {
            seed: self.seed,
            call: self.calls,
            family: self.family,
            op,
            what,
            detail,
        }
    }

    fn fail(&mut self, op: &'static str, what: &'static str, detail: String) {
        let detail = detail.replace('\n', "");
        if self.verbose {
            println!("  FINDING at call {}: {op}: {what}: {detail}", self.calls);
        }
        let f = self.finding(op, what, detail);
        self.findings.push(f);
    }

    /// A finding unless `ok` (the detail is formatted only on failure).
    fn ensure(
        &mut self,
        ok: bool,
        op: &'static str,
        what: &'static str,
        detail: impl FnOnce() -> String,
    ) {
        if !ok {
            self.fail(op, what, detail());
        }
    }

    /// Prints a line about the episode when replaying verbosely.
    fn note(&self, msg: impl FnOnce() -> String) {
        if self.verbose {
            println!("  {}", msg());
        }
    }

    /// Something odd that no documented rule covers: printed, not failed.
    fn observe(&mut self, op: &'static str, what: &'static str, detail: String) {
        if self.verbose {
            println!(
                "  observation at call {}: {op}: {what}: {detail}",
                self.calls
            );
        }
        let f = self.finding(op, what, detail);
        self.observations.push(f);
    }

    // --- random arguments -------------------------------------------------------------

    fn chance(&mut self, p: f64) -> bool {
        self.rng.random_bool(p)
    }

    fn below(&mut self, n: usize) -> usize {
        self.rng.random_range(0..n.max(1))
    }

    fn pick<T: Copy>(&mut self, xs: &[T]) -> T {
        xs[self.below(xs.len())]
    }

    /// A size: mostly 1..=4, sometimes 0 (empty) or 5..=6.
    fn dim(&mut self) -> usize {
        match self.below(100) {
            0..=3 => 0,
            4..=91 => 1 + self.below(4),
            _ => 5 + self.below(2),
        }
    }

    /// A positive size, 1..=4.
    fn pos(&mut self) -> usize {
        1 + self.below(4)
    }

    fn shape(&mut self) -> (usize, usize) {
        (self.dim(), self.dim())
    }

    fn special(&mut self) -> f64 {
        self.pick(&SPECIALS)
    }

    /// A scalar argument: mostly uniform in `[lo, hi]`, else a special value.
    fn factor(&mut self, lo: f64, hi: f64) -> f64 {
        if self.chance(0.75) {
            self.rng.random_range(lo..=hi)
        } else {
            self.special()
        }
    }

    fn entry(&mut self, kind: usize) -> f64 {
        let sign = if self.chance(0.5) { 1.0 } else { -1.0 };
        match kind {
            0 => self.rng.random_range(-2.0..2.0),
            // large: overflows f32 ops (and f32 itself above 3.4e38)
            1 => sign * 10f64.powf(self.rng.random_range(3.0..40.0)),
            // huge: near f64::MAX (infinite in f32)
            2 => sign * 10f64.powf(self.rng.random_range(100.0..308.25)),
            // tiny and subnormal
            3 => sign * 10f64.powf(self.rng.random_range(-323.0..-30.0)),
            4 => 0.0,
            _ => self.special(),
        }
    }

    /// A matrix of the given shape: mostly entries in ±2, sometimes large, huge, tiny,
    /// zero or special ones, and one NaN or infinity in 4% of them.
    fn matrix<F: Scalar>(&mut self, shape: (usize, usize)) -> Array2<F> {
        let kind = match self.below(100) {
            0..=79 => 0,
            80..=85 => 1,
            86..=89 => 2,
            90..=92 => 3,
            93..=95 => 4,
            _ => 5,
        };
        let n = shape.0 * shape.1;
        let mut v: Vec<F> = (0..n).map(|_| F::of(self.entry(kind))).collect();
        if n > 0 && self.chance(0.04) {
            let i = self.below(n);
            v[i] = F::of(self.pick(&[f64::NAN, f64::INFINITY, f64::NEG_INFINITY]));
        }
        Array2::from_shape_vec(shape, v).expect("a vector of the shape's size")
    }

    /// A matrix with entries uniform in ±1.
    fn clean<F: Scalar>(&mut self, shape: (usize, usize)) -> Array2<F> {
        Array2::from_shape_simple_fn(shape, || F::of(self.rng.random_range(-1.0..1.0)))
    }

    /// Mostly a clean matrix, sometimes any.
    fn mostly_clean<F: Scalar>(&mut self, shape: (usize, usize)) -> Array2<F> {
        if self.chance(0.85) {
            self.clean(shape)
        } else {
            self.matrix(shape)
        }
    }

    fn array3<F: Scalar>(&mut self, (t, b, d): (usize, usize, usize)) -> Array3<F> {
        let m = self.matrix::<F>((t, b * d));
        m.into_shape_with_order((t, b, d))
            .expect("a matrix of t × (b·d) entries")
    }

    fn reduction(&mut self) -> Reduction {
        if self.chance(0.5) {
            Reduction::Mean
        } else {
            Reduction::Sum
        }
    }

    fn activation(&mut self) -> Activation {
        self.pick(&[
            Activation::Identity,
            Activation::Tanh,
            Activation::Relu,
            Activation::Sigmoid,
        ])
    }

    /// A range near `0..extent`: mostly inside, sometimes empty, reversed or outside.
    fn range(&mut self, extent: usize) -> Range<usize> {
        let start = self.below(extent + 1);
        let end = match self.below(10) {
            0 => start,
            1 => start.saturating_sub(1),
            2 => extent + 1 + self.below(2),
            3 => usize::MAX,
            _ => start + 1 + self.below(extent.saturating_sub(start).max(1)),
        };
        start..end
    }
}

/// Scalars at the edges: zeros, ±1, tiny, subnormal, f32 and f64 limits, NaN, ±∞,
/// values next to 1, overflow points of `exp`.
const SPECIALS: [f64; 28] = [
    0.0,
    -0.0,
    1.0,
    -1.0,
    0.5,
    2.0,
    1e-8,
    1e-300,
    5e-324,
    f64::MIN_POSITIVE,
    1e30,
    3.0e38,
    3.5e38,
    1e300,
    f64::MAX,
    -f64::MAX,
    f64::NAN,
    f64::INFINITY,
    f64::NEG_INFINITY,
    0.9,
    0.999,
    1.0 - 1e-16,
    1.0 + 1e-15,
    800.0,
    -800.0,
    89.0,
    100.0,
    -1e-300,
];

/// Widths whose matrices cannot exist whatever the other width (≥ 1): their size in
/// bytes overflows `isize` (so the outcome does not depend on the OS's overcommit
/// policy).
const ABSURD: [usize; 5] = [
    usize::MAX,
    usize::MAX / 3 + 1,
    usize::MAX / 4 + 1,
    1 << 61,
    isize::MAX as usize,
];

/// Hidden widths that overflow when squared (H×H, H×3H, H×4H): the brief's 2^40 and
/// friends.
const ABSURD_HIDDEN: [usize; 4] = [1 << 40, 1 << 32, 3_037_000_500, usize::MAX / 3 + 1];

/// Lengths whose vectors cannot exist (more than `isize::MAX` bytes even for `bool`).
const ABSURD_LEN: [usize; 3] = [usize::MAX, isize::MAX as usize + 1, usize::MAX / 2 + 7];

/// A value in scientific notation, for messages.
fn sci<F: Scalar>(x: F) -> String {
    format!("{:e}", x.as_f64())
}

fn fin<F: Scalar>(x: F) -> bool {
    x.as_f64().is_finite()
}

fn all_finite<F: Scalar>(a: ArrayView2<'_, F>) -> bool {
    a.iter().all(|&x| fin(x))
}

fn grads_finite<F: Scalar>(g: &Grads<F>) -> bool {
    g.iter().all(|(_, a)| all_finite(a.view()))
}

/// The largest |entry|, NaN if an entry is NaN (a plain `f64::max` fold would skip it).
fn max_abs<F: Scalar>(a: ArrayView2<'_, F>) -> f64 {
    a.iter().map(|x| x.as_f64().abs()).fold(0.0f64, |m, x| {
        if m.is_nan() || x.is_nan() {
            f64::NAN
        } else {
            m.max(x)
        }
    })
}

/// Bitwise equality of two gradients (NaN equals NaN).
fn same_grads<F: Scalar>(a: &Grads<F>, b: &Grads<F>) -> bool {
    let bits = |g: &Grads<F>| -> Vec<(ParamId, Vec<u64>)> {
        g.iter()
            .map(|(id, a)| (id, a.iter().map(|x| x.as_f64().to_bits()).collect()))
            .collect()
    };
    bits(a) == bits(b)
}

/// Every parameter's value, bit for bit (to check that a failed call changed nothing).
fn snapshot<F: Scalar>(p: &Params<F>) -> Vec<(usize, usize, Vec<u64>)> {
    p.ids()
        .filter_map(|id| p.get(id).ok())
        .map(|a| {
            let (r, c) = a.dim();
            (r, c, a.iter().map(|x| x.as_f64().to_bits()).collect())
        })
        .collect()
}

fn is_non_finite_error(e: &Error) -> bool {
    matches!(e, Error::NonFinite { .. })
}

// =======================================================================================
// Parameter stores: a main one, an unrelated one, and a clone of the main one that has
// diverged from it.
// =======================================================================================

struct Stores<F> {
    main: Params<F>,
    other: Params<F>,
    twin: Params<F>,
    /// Ids of `main` (those added before the clone also resolve in `twin`).
    ids: Vec<ParamId>,
    /// Ids of `other`, and of parameters added to `twin` after the clone.
    foreign: Vec<ParamId>,
    next_name: usize,
}

impl<F: Scalar> Stores<F> {
    fn new(fz: &mut Fuzz) -> Self {
        let mut st = Stores {
            main: Params::new(),
            other: Params::new(),
            twin: Params::new(),
            ids: Vec::new(),
            foreign: Vec::new(),
            next_name: 0,
        };
        for _ in 0..1 + fz.below(4) {
            if let Some(id) = add_param(fz, &mut st.main, &mut st.next_name) {
                st.ids.push(id);
            }
        }
        for _ in 0..1 + fz.below(2) {
            if let Some(id) = add_param(fz, &mut st.other, &mut st.next_name) {
                st.foreign.push(id);
            }
        }
        st.rediverge(fz);
        st
    }

    /// Clones `main` into `twin`, then adds a parameter to each: the new one of `twin`
    /// is foreign to `main`, and the new one of `main` foreign to `twin`.
    fn rediverge(&mut self, fz: &mut Fuzz) {
        if let Some(t) = fz.call("Params::clone", || self.main.clone()) {
            self.twin = t;
        }
        if let Some(id) = add_param(fz, &mut self.twin, &mut self.next_name) {
            self.foreign.push(id);
        }
        if fz.chance(0.5) {
            if let Some(id) = add_param(fz, &mut self.main, &mut self.next_name) {
                self.ids.push(id);
            }
        }
    }

    /// Mostly an id of `main`, sometimes a foreign one.
    fn any_id(&self, fz: &mut Fuzz) -> Option<ParamId> {
        let foreign = fz.chance(0.15) || self.ids.is_empty();
        let list = if foreign { &self.foreign } else { &self.ids };
        if list.is_empty() {
            return None;
        }
        Some(list[fz.below(list.len())])
    }
}

/// `Params::add` with a random name (mostly fresh, sometimes empty or a duplicate) and a
/// random value; checks the policy on parameters.
fn add_param<F: Scalar>(
    fz: &mut Fuzz,
    params: &mut Params<F>,
    next_name: &mut usize,
) -> Option<ParamId> {
    let fresh = format!("p{next_name}");
    *next_name += 1;
    let name = match fz.below(20) {
        0 => String::new(),
        1 if *next_name > 1 => format!("p{}", fz.below(*next_name - 1)),
        _ => fresh,
    };
    let shape = fz.shape();
    let value = fz.matrix::<F>(shape);
    let (finite, empty) = (all_finite(value.view()), value.is_empty());
    let name_ok = !name.is_empty() && params.id(&name).is_none();
    let out = fz.try_call("Params::add", || params.add(name, value))?;
    match out {
        Ok(id) => {
            fz.ensure(
                finite && !empty && name_ok,
                "Params::add",
                "accepted a bad parameter",
                || format!("finite {finite}, empty {empty}, name ok {name_ok}"),
            );
            Some(id)
        }
        Err(e) => {
            if name_ok && !empty && !finite {
                fz.ensure(
                    is_non_finite_error(&e),
                    "Params::add",
                    "non-finite parameter not reported as Error::NonFinite",
                    || e.to_string(),
                );
            }
            None
        }
    }
}

/// One change to a store: a write through the unchecked `get_mut` (a NaN, a scale, a new
/// shape), a checked `set`, an `add`, or a read.
fn mutate_params<F: Scalar>(
    fz: &mut Fuzz,
    params: &mut Params<F>,
    ids: &mut Vec<ParamId>,
    foreign: &[ParamId],
    next_name: &mut usize,
) {
    let pool: Vec<ParamId> = ids.iter().chain(foreign).copied().collect();
    if pool.is_empty() || fz.chance(0.1) {
        if let Some(id) = add_param(fz, params, next_name) {
            ids.push(id);
        }
        return;
    }
    let id = pool[fz.below(pool.len())];
    match fz.below(10) {
        0 | 1 => {
            // A NaN or an infinity written where nothing checks it.
            let (at, bad) = (
                fz.below(64),
                F::of(fz.pick(&[f64::NAN, f64::INFINITY, f64::NEG_INFINITY])),
            );
            fz.try_call("Params::get_mut", || {
                params.get_mut(id).map(|p| {
                    let n = p.len();
                    if let Some(x) = p.iter_mut().nth(at % n.max(1)) {
                        *x = bad;
                    }
                })
            });
        }
        2 | 3 => {
            let c = F::of(fz.pick(&[2.0, 10.0, 1e3, 1e10, 1e30, 1e100, 1e300, -1.0, 0.0]));
            fz.try_call("Params::get_mut", || {
                params.get_mut(id).map(|p| p.mapv_inplace(|x| x * c))
            });
        }
        4 => {
            // Another shape, often an empty one (which `add` and `set` would refuse).
            let shape = match fz.below(6) {
                0 => (0, fz.pos()),
                1 => (fz.pos(), 0),
                _ => fz.shape(),
            };
            let value = fz.mostly_clean::<F>(shape);
            fz.try_call("Params::get_mut", || params.get_mut(id).map(|p| *p = value));
        }
        5..=8 => {
            let current = params.get(id).ok().map(|p| p.dim());
            let shape = match current {
                Some(s) if fz.chance(0.75) => s,
                _ => fz.shape(),
            };
            let value = fz.matrix::<F>(shape);
            let finite = all_finite(value.view());
            let before = snapshot(params);
            let Some(out) = fz.try_call("Params::set", || params.set(id, value.view())) else {
                return;
            };
            match out {
                Ok(()) => {
                    fz.ensure(
                        finite && current == Some(shape),
                        "Params::set",
                        "accepted a bad value",
                        || format!("finite {finite}, shape {shape:?} for {current:?}"),
                    );
                }
                Err(e) => {
                    if current == Some(shape) && !finite {
                        fz.ensure(
                            is_non_finite_error(&e),
                            "Params::set",
                            "non-finite value not reported as Error::NonFinite",
                            || e.to_string(),
                        );
                    }
                    let unchanged = snapshot(params) == before;
                    fz.ensure(
                        unchanged,
                        "Params::set",
                        "a failed set changed the store",
                        || e.to_string(),
                    );
                }
            }
        }
        _ => {
            fz.call("Params reads", || {
                let _ = params.name(id);
                let _ = params.id("p0");
                let _ = (params.len(), params.is_empty(), params.num_scalars());
                params.ids().count()
            });
        }
    }
}

// =======================================================================================
// Family: random graphs on the tape.
// =======================================================================================

struct Graph<F: Scalar> {
    tape: Tape<F>,
    /// Another tape: its `Var`s are foreign to `tape`.
    other: Tape<F>,
    /// Live `Var`s of `tape` with their shapes.
    live: Vec<(Var, (usize, usize))>,
    /// `Var`s of `tape` from before a clear.
    stale: Vec<Var>,
    foreign: Vec<Var>,
    check_finite: bool,
    /// A gradient accumulator for `backward_into`.
    acc: Grads<F>,
}

fn tape_family<F: Scalar>(fz: &mut Fuzz) {
    let mut st = Stores::<F>::new(fz);
    let mut g = Graph {
        tape: Tape::new(),
        other: Tape::new(),
        live: Vec::new(),
        stale: Vec::new(),
        foreign: Vec::new(),
        check_finite: fz.chance(0.3),
        acc: Grads::default(),
    };
    g.tape.set_check_finite(g.check_finite);
    g.tape.set_release_adjoints(fz.chance(0.3));
    for _ in 0..2 {
        let s = (fz.pos(), fz.pos());
        let v = fz.clean::<F>(s);
        if let Some(Ok(v)) = fz.try_call("constant", || g.other.constant(v)) {
            g.foreign.push(v);
        }
    }
    for _ in 0..fz.below(4) {
        param_leaf(fz, &st, &mut g);
    }
    for _ in 0..10 + fz.below(60) {
        tape_step(fz, &mut st, &mut g);
    }
}

/// Records the outcome of an op: an `Ok` joins the live `Var`s (and is finite if the
/// tape checks); an `Err` must have recorded no node.
fn record<F: Scalar>(
    fz: &mut Fuzz,
    g: &mut Graph<F>,
    op: &'static str,
    before: usize,
    out: Option<timetape::Result<Var>>,
) -> Option<Var> {
    match out? {
        Ok(v) => {
            let value = fz.try_call("Tape::value", || {
                g.tape.value(v).map(|a| (a.dim(), all_finite(a)))
            });
            match value {
                Some(Ok((shape, finite))) => {
                    fz.ensure(
                        finite || !g.check_finite,
                        op,
                        "non-finite Ok(Var) with check_finite on",
                        || format!("shape {shape:?}"),
                    );
                    g.live.push((v, shape));
                }
                Some(Err(e)) => fz.fail(op, "its own new Var is refused", e.to_string()),
                None => {}
            }
            Some(v)
        }
        Err(_) => {
            let after = g.tape.len();
            fz.ensure(after == before, op, "a failed op recorded a node", || {
                format!("{before} → {after} nodes")
            });
            None
        }
    }
}

/// Runs one op that returns a `Var` and records it.
fn apply<F: Scalar>(
    fz: &mut Fuzz,
    g: &mut Graph<F>,
    op: &'static str,
    f: impl FnOnce(&mut Tape<F>) -> timetape::Result<Var>,
) -> Option<Var> {
    let before = g.tape.len();
    let out = fz.try_call(op, || f(&mut g.tape));
    record(fz, g, op, before, out)
}

/// A new leaf holding `value`: `constant`, `constant_view` or `variable`; a non-finite
/// input must be refused with `Error::NonFinite`.
fn leaf<F: Scalar>(fz: &mut Fuzz, g: &mut Graph<F>, value: Array2<F>) -> Option<Var> {
    let (finite, empty) = (all_finite(value.view()), value.is_empty());
    let before = g.tape.len();
    let (op, out) = match fz.below(3) {
        0 => (
            "constant",
            fz.try_call("constant", || g.tape.constant(value)),
        ),
        1 => (
            "constant_view",
            fz.try_call("constant_view", || g.tape.constant_view(value.view())),
        ),
        _ => (
            "variable",
            fz.try_call("variable", || g.tape.variable(value.view())),
        ),
    };
    match &out {
        Some(Ok(_)) => fz.ensure(finite && !empty, op, "accepted a bad input", || {
            format!("finite {finite}, empty {empty}")
        }),
        Some(Err(e)) if !finite && !empty => fz.ensure(
            is_non_finite_error(e),
            op,
            "non-finite input not reported as Error::NonFinite",
            || e.to_string(),
        ),
        _ => {}
    }
    record(fz, g, op, before, out)
}

/// `Tape::param` of an id of any store with any store.
fn param_leaf<F: Scalar>(fz: &mut Fuzz, st: &Stores<F>, g: &mut Graph<F>) -> Option<Var> {
    let id = st.any_id(fz)?;
    let store = match fz.below(10) {
        0 => &st.other,
        1 => &st.twin,
        _ => &st.main,
    };
    let finite = fz.try_call("Params::get", || {
        store.get(id).map(|p| all_finite(p.view()))
    });
    let before = g.tape.len();
    let out = fz.try_call("param", || g.tape.param(store, id));
    match (&out, finite) {
        (Some(Ok(_)), Some(Ok(false))) => {
            fz.fail("param", "registered a non-finite parameter", String::new())
        }
        (Some(Err(e)), Some(Ok(false))) => fz.ensure(
            is_non_finite_error(e),
            "param",
            "non-finite parameter not reported as Error::NonFinite",
            || e.to_string(),
        ),
        _ => {}
    }
    record(fz, g, "param", before, out)
}

/// Mostly a live `Var`, sometimes a stale or a foreign one.
fn any_var<F: Scalar>(fz: &mut Fuzz, g: &Graph<F>) -> Option<Var> {
    let r = fz.below(100);
    if r < 4 && !g.stale.is_empty() {
        return Some(g.stale[fz.below(g.stale.len())]);
    }
    if r < 8 && !g.foreign.is_empty() {
        return Some(g.foreign[fz.below(g.foreign.len())]);
    }
    if g.live.is_empty() {
        return None;
    }
    Some(g.live[fz.below(g.live.len())].0)
}

fn shape_of<F: Scalar>(g: &Graph<F>, v: Var) -> Option<(usize, usize)> {
    g.live.iter().find(|(w, _)| *w == v).map(|(_, s)| *s)
}

/// A live `Var` of this shape (one on the tape, or a new leaf): the operand that makes
/// an op valid.
fn fit<F: Scalar>(fz: &mut Fuzz, g: &mut Graph<F>, shape: (usize, usize)) -> Option<Var> {
    let matching: Vec<Var> = g
        .live
        .iter()
        .filter(|(_, s)| *s == shape)
        .map(|(v, _)| *v)
        .collect();
    if !matching.is_empty() && fz.chance(0.7) {
        return Some(matching[fz.below(matching.len())]);
    }
    let value = fz.mostly_clean(shape);
    leaf(fz, g, value)
}

/// The second operand of an op: mostly one that fits, sometimes any.
fn operand<F: Scalar>(fz: &mut Fuzz, g: &mut Graph<F>, shape: (usize, usize)) -> Option<Var> {
    if fz.chance(0.7) {
        fit(fz, g, shape)
    } else {
        any_var(fz, g)
    }
}

/// Per-row weights: mostly one per row in [0, 2], sometimes of the wrong length or with
/// special values.
fn row_weights<F: Scalar>(fz: &mut Fuzz, rows: usize) -> Option<Vec<F>> {
    if fz.chance(0.5) {
        return None;
    }
    let n = if fz.chance(0.9) {
        rows
    } else {
        fz.pick(&[0, rows + 1, rows.saturating_sub(1)])
    };
    let special = fz.chance(0.1);
    Some(
        (0..n)
            .map(|_| {
                F::of(if special {
                    fz.special()
                } else {
                    fz.rng.random_range(0.0..2.0)
                })
            })
            .collect(),
    )
}

/// Checks an `Ok` of a backward pass: finite gradients, finite starting values.
fn check_backward<F: Scalar>(
    fz: &mut Fuzz,
    g: &Graph<F>,
    op: &'static str,
    grads: &Grads<F>,
    from: &[Var],
) {
    let bad = grads
        .iter()
        .find(|(_, a)| !all_finite(a.view()))
        .map(|(id, _)| id.index());
    fz.ensure(bad.is_none(), op, "Ok with a non-finite gradient", || {
        format!("parameter {bad:?}")
    });
    for &v in from {
        let finite = fz.try_call("Tape::value", || g.tape.value(v).map(|a| all_finite(a)));
        fz.ensure(
            !matches!(finite, Some(Ok(false))),
            op,
            "Ok from a non-finite starting value",
            String::new,
        );
    }
}

fn tape_step<F: Scalar>(fz: &mut Fuzz, st: &mut Stores<F>, g: &mut Graph<F>) {
    let Some(a) = any_var(fz, g) else {
        let s = fz.shape();
        let v = fz.matrix(s);
        leaf(fz, g, v);
        return;
    };
    // The shape of a stale or foreign `Var` is not known here: guess.
    let sa = shape_of(g, a).unwrap_or((1, 1));
    match fz.below(100) {
        0..=5 => {
            let s = fz.shape();
            let v = fz.matrix(s);
            leaf(fz, g, v);
        }
        6..=9 => {
            param_leaf(fz, st, g);
        }
        10..=14 => {
            let n = fz.dim();
            if let Some(b) = operand(fz, g, (sa.1, n)) {
                apply(fz, g, "matmul", |t| t.matmul(a, b));
            }
        }
        15..=18 => {
            let (n, act) = (fz.dim(), fz.activation());
            let Some(b) = operand(fz, g, (sa.1, n)) else {
                return;
            };
            let c = match fz.below(4) {
                0 => None,
                1 => fit(fz, g, (sa.0, n)),
                2 => fit(fz, g, (1, n)),
                _ => any_var(fz, g),
            };
            apply(fz, g, "affine", |t| t.affine(a, b, c, act));
        }
        19..=20 => {
            let (n, act, extra) = (fz.dim(), fz.activation(), fz.below(3));
            let Some(b) = operand(fz, g, (sa.1, n)) else {
                return;
            };
            let Some(c) = operand(fz, g, (sa.0 + extra, n)) else {
                return;
            };
            let rows = if fz.chance(0.7) {
                let s = fz.below(extra + 1);
                s..s + sa.0
            } else {
                fz.range(sa.0 + extra)
            };
            apply(fz, g, "affine_rows", |t| {
                t.affine_rows(a, b, RowsOf(c, rows.clone()), act)
            });
        }
        21..=26 => {
            let b = match fz.below(3) {
                0 => fit(fz, g, sa),
                1 => fit(fz, g, (1, sa.1)),
                _ => any_var(fz, g),
            };
            let Some(b) = b else { return };
            let (x, y) = if fz.chance(0.5) { (a, b) } else { (b, a) };
            match fz.below(3) {
                0 => apply(fz, g, "add", |t| t.add(x, y)),
                1 => apply(fz, g, "sub", |t| t.sub(x, y)),
                _ => apply(fz, g, "mul", |t| t.mul(x, y)),
            };
        }
        27..=34 => {
            let c = F::of(fz.factor(-3.0, 3.0));
            match fz.below(7) {
                0 => apply(fz, g, "neg", |t| t.neg(a)),
                1 => apply(fz, g, "scale", |t| t.scale(a, c)),
                2 => apply(fz, g, "tanh", |t| t.tanh(a)),
                3 => apply(fz, g, "relu", |t| t.relu(a)),
                4 => apply(fz, g, "sigmoid", |t| t.sigmoid(a)),
                5 => apply(fz, g, "exp", |t| t.exp(a)),
                _ => apply(fz, g, "log", |t| t.log(a)),
            };
        }
        35..=39 => {
            if fz.chance(0.5) {
                apply(fz, g, "sum", |t| t.sum(a));
            } else {
                apply(fz, g, "mean", |t| t.mean(a));
            }
        }
        40..=42 => {
            let axis = if fz.chance(0.5) {
                Along::Rows
            } else {
                Along::Cols
            };
            let mut parts = Vec::new();
            for _ in 0..fz.below(5) {
                let extent = fz.pos();
                let want = match axis {
                    Along::Rows => (extent, sa.1),
                    Along::Cols => (sa.0, extent),
                };
                let part = if fz.chance(0.3) {
                    Some(a)
                } else {
                    operand(fz, g, want)
                };
                parts.extend(part);
            }
            match fz.below(3) {
                0 => apply(fz, g, "concat", |t| t.concat(&parts, axis)),
                1 => apply(fz, g, "concat_rows", |t| t.concat_rows(&parts)),
                _ => apply(fz, g, "concat_cols", |t| t.concat_cols(&parts)),
            };
        }
        43..=45 => {
            let rows = fz.chance(0.5);
            let r = fz.range(if rows { sa.0 } else { sa.1 });
            let axis = if rows { Along::Rows } else { Along::Cols };
            match fz.below(2) {
                0 => apply(fz, g, "slice", |t| t.slice(a, axis, r)),
                _ if rows => apply(fz, g, "slice_rows", |t| t.slice_rows(a, r)),
                _ => apply(fz, g, "slice_cols", |t| t.slice_cols(a, r)),
            };
        }
        46 => {
            apply(fz, g, "transpose", |t| t.transpose(a));
        }
        47..=50 => {
            let n = if fz.chance(0.9) {
                sa.0
            } else {
                sa.0 + 1 - 2 * fz.below(2).min(sa.0)
            };
            let labels: Vec<usize> = (0..n)
                .map(|_| {
                    if fz.chance(0.97) {
                        fz.below(sa.1)
                    } else {
                        sa.1 + fz.below(2)
                    }
                })
                .collect();
            let w = row_weights::<F>(fz, sa.0);
            let red = fz.reduction();
            apply(fz, g, "softmax_cross_entropy", |t| {
                t.softmax_cross_entropy(a, &labels, w.as_deref(), red)
            });
        }
        51..=52 => {
            let targets = if fz.chance(0.8) {
                let value =
                    Array2::from_shape_simple_fn(sa, || F::of(fz.rng.random_range(0.0..=1.0)));
                leaf(fz, g, value)
            } else {
                operand(fz, g, sa)
            };
            let Some(tv) = targets else { return };
            let red = fz.reduction();
            apply(fz, g, "bce_with_logits", |t| t.bce_with_logits(a, tv, red));
        }
        53..=55 => {
            let Some(tv) = operand(fz, g, sa) else { return };
            if fz.chance(0.3) {
                apply(fz, g, "mse", |t| t.mse(a, tv));
            } else {
                let w = row_weights::<F>(fz, sa.0);
                let red = fz.reduction();
                apply(fz, g, "squared_error", |t| {
                    t.squared_error(a, tv, w.as_deref(), red)
                });
            }
        }
        56..=58 => {
            let c = F::of(fz.factor(-4.0, 4.0));
            if fz.chance(0.5) {
                apply(fz, g, "detach", |t| t.detach(a));
            } else {
                apply(fz, g, "scale_grad", |t| t.scale_grad(a, c));
            }
        }
        59..=66 => {
            let scalars: Vec<Var> = g
                .live
                .iter()
                .filter(|(_, s)| *s == (1, 1))
                .map(|(v, _)| *v)
                .collect();
            let loss = if !scalars.is_empty() && fz.chance(0.8) {
                scalars[fz.below(scalars.len())]
            } else {
                a
            };
            if let Some(Ok(grads)) = fz.try_call("backward", || g.tape.backward(loss)) {
                check_backward(fz, g, "backward", &grads, &[loss]);
                fz.call("Grads reads", || {
                    (
                        grads.global_norm(),
                        grads.check_finite("fuzz"),
                        grads.iter().count(),
                    )
                });
            }
        }
        67..=70 => {
            let mut seeds: Vec<(Var, Array2<F>)> = Vec::new();
            for _ in 0..fz.below(4) {
                let Some(v) = any_var(fz, g) else { break };
                let s = match shape_of(g, v) {
                    Some(s) if fz.chance(0.85) => s,
                    _ => fz.shape(),
                };
                let seed = fz.mostly_clean(s);
                seeds.push((v, seed));
            }
            let from: Vec<Var> = seeds.iter().map(|(v, _)| *v).collect();
            let seeds_finite = seeds.iter().all(|(_, s)| all_finite(s.view()));
            if let Some(Ok(grads)) = fz.try_call("backward_with", || g.tape.backward_with(&seeds)) {
                fz.ensure(
                    seeds_finite,
                    "backward_with",
                    "Ok with a non-finite seed",
                    String::new,
                );
                check_backward(fz, g, "backward_with", &grads, &from);
            }
        }
        71..=74 => {
            // Into an accumulator that keeps what earlier passes added.
            if fz.chance(0.1) {
                g.acc = match fz.below(3) {
                    0 => Grads::new(&st.main),
                    1 => Grads::zeros_like(&st.other),
                    _ => Grads::default(),
                };
            }
            let mut loss = a;
            if fz.chance(0.15) {
                // A loss whose gradient is near the largest finite value, through one or
                // two registrations of a parameter: the sum of the two registrations'
                // gradients overflows, and so does a second pass into the accumulator.
                let c = F::of(fz.pick(&[1.5e308, 3e38, 1e300]));
                let twice = fz.chance(0.5);
                let Some(id) = st.any_id(fz) else { return };
                let main = &st.main;
                let p1 = apply(fz, g, "param", |t| t.param(main, id));
                let p2 = apply(fz, g, "param", |t| t.param(main, id));
                let (Some(p1), Some(p2)) = (p1, p2) else {
                    return;
                };
                let s1 = apply(fz, g, "scale", |t| t.scale(p1, c));
                let s2 = apply(fz, g, "scale", |t| t.scale(p2, c));
                let (Some(s1), Some(s2)) = (s1, s2) else {
                    return;
                };
                let term = if twice {
                    apply(fz, g, "add", |t| t.add(s1, s2))
                } else {
                    Some(s1)
                };
                let Some(l) = term.and_then(|y| apply(fz, g, "sum", |t| t.sum(y))) else {
                    return;
                };
                loss = l;
                if twice {
                    if let Some(Ok(grads)) = fz.try_call("backward", || g.tape.backward(l)) {
                        check_backward(fz, g, "backward", &grads, &[l]);
                    }
                } else {
                    fz.try_call("backward_into", || g.tape.backward_into(l, &mut g.acc));
                }
            }
            let was_finite = grads_finite(&g.acc);
            let (op, out) = if fz.chance(0.6) {
                let out = fz.try_call("backward_into", || g.tape.backward_into(loss, &mut g.acc));
                ("backward_into", out)
            } else {
                let s = match shape_of(g, loss) {
                    Some(s) if fz.chance(0.85) => s,
                    _ => fz.shape(),
                };
                let seed = fz.mostly_clean::<F>(s);
                let out = fz.try_call("backward_with_into", || {
                    g.tape
                        .backward_with_into(&[(loss, seed.view())], &mut g.acc)
                });
                ("backward_with_into", out)
            };
            if let Some(Ok(())) = out {
                let now = grads_finite(&g.acc);
                fz.ensure(
                    now || !was_finite,
                    op,
                    "Ok, but the gradients it added into are no longer finite",
                    || {
                        let worst = g.acc.iter().map(|(_, x)| max_abs(x.view())).fold(
                            0.0,
                            |m: f64, x: f64| {
                                if m.is_nan() || x.is_nan() {
                                    f64::NAN
                                } else {
                                    m.max(x)
                                }
                            },
                        );
                        format!("largest |entry| now {worst:e}")
                    },
                );
                check_backward(fz, g, op, &Grads::default(), &[loss]);
            }
        }
        75..=77 => {
            let (retain, which) = (fz.chance(0.3), fz.below(4));
            fz.try_call("Tape reads", || {
                if retain {
                    let _ = g.tape.retain_grad(a);
                }
                match which {
                    0 => g.tape.adjoint(a).map(|o| o.map(|x| x.len())).map(|_| ()),
                    1 => g.tape.scalar(a).map(|_| ()),
                    2 => g.tape.shape(a).map(|_| ()),
                    _ => g.tape.value(a).map(|_| ()),
                }
            });
        }
        78..=79 => {
            // A clear makes every `Var` stale.
            match fz.below(4) {
                0 => {
                    fz.call("Tape::free_buffers", || g.tape.free_buffers());
                }
                1 => {
                    fz.call("Tape::stats", || {
                        g.tape.reset_peak();
                        (g.tape.stats(), g.tape.is_empty())
                    });
                }
                _ => {
                    fz.call("Tape::clear", || g.tape.clear());
                    let old: Vec<Var> = g.live.drain(..).map(|(v, _)| v).collect();
                    g.stale.extend(old);
                    if g.stale.len() > 32 {
                        g.stale.drain(..g.stale.len() - 32);
                    }
                }
            }
        }
        80..=81 => {
            if fz.chance(0.5) {
                g.check_finite = !g.check_finite;
                let on = g.check_finite;
                fz.call("Tape::set_check_finite", || g.tape.set_check_finite(on));
            } else {
                let on = fz.chance(0.5);
                fz.call("Tape::set_release_adjoints", || {
                    g.tape.set_release_adjoints(on)
                });
            }
        }
        82..=87 => {
            let Stores {
                main,
                twin,
                ids,
                foreign,
                next_name,
                ..
            } = st;
            if fz.chance(0.8) {
                mutate_params(fz, main, ids, foreign, next_name);
            } else {
                let mut twin_ids: Vec<ParamId> = twin.ids().collect();
                mutate_params(fz, twin, &mut twin_ids, ids, next_name);
            }
            if fz.chance(0.1) {
                st.rediverge(fz);
            }
        }
        88..=93 => grads_ops(fz, st, g),
        _ => {
            let states: Vec<Var> = (0..fz.below(4)).filter_map(|_| any_var(fz, g)).collect();
            fz.try_call("diagnostics::dh_norms", || {
                diagnostics::dh_norms(&g.tape, &states)
            });
        }
    }
}

/// The `Grads` API on the accumulator: unchecked accumulation (any value), sums,
/// scaling, norms, comparisons.
fn grads_ops<F: Scalar>(fz: &mut Fuzz, st: &Stores<F>, g: &mut Graph<F>) {
    let Some(id) = st.any_id(fz) else { return };
    let shape = match st.main.get(id) {
        Ok(p) if fz.chance(0.8) => p.dim(),
        _ => fz.shape(),
    };
    let value = fz.matrix::<F>(shape);
    let c = F::of(fz.factor(-2.0, 2.0));
    let which = fz.below(6);
    let other = g.acc.clone();
    fz.try_call("Grads ops", || {
        let acc = &mut g.acc;
        match which {
            0 => acc.accumulate(id, value.view()),
            1 => acc.add_assign(&other),
            2 => {
                acc.scale(c);
                Ok(())
            }
            3 => {
                let _ = (acc.global_norm(), acc.max_rel_diff(&other));
                acc.check_finite("fuzz")
            }
            4 => {
                let _ = acc.get(id).map(|a| a.len());
                if let Ok(a) = acc.get_mut(id) {
                    a.fill(c);
                }
                for (_, a) in acc.iter_mut() {
                    a.mapv_inplace(|x| x * c);
                }
                Ok(())
            }
            _ => {
                acc.zero();
                Ok(())
            }
        }
    });
}

// =======================================================================================
// Family: parameters and optimizers.
// =======================================================================================

fn optim_family<F: Scalar>(fz: &mut Fuzz) {
    let mut st = Stores::<F>::new(fz);
    if fz.chance(0.3) {
        // Large parameters, so that a large step can overflow them.
        let c = F::of(fz.pick(&[1e10, 1e30, 1e100, 1e300]));
        for id in st.ids.clone() {
            fz.try_call("Params::get_mut", || {
                st.main.get_mut(id).map(|p| p.mapv_inplace(|x| x * c))
            });
        }
    }
    let lr = F::of(fz.factor(1e-3, 2.0));
    let mut sgd = make_sgd(fz, lr);
    let mut adam = make_adam(fz, lr);
    for _ in 0..1 + fz.below(10) {
        let mut grads = make_grads(fz, &st);
        if fz.chance(0.4) {
            clip(fz, &mut grads);
        }
        let which = fz.below(10);
        let target = match fz.below(20) {
            0 => &mut st.other,
            1 => &mut st.twin,
            _ => &mut st.main,
        };
        match which {
            0..=3 => {
                if let Some((opt, desc)) = sgd.as_mut() {
                    let desc = desc.clone();
                    step(fz, "Sgd::step", &desc, target, &grads, |p, g| {
                        opt.step(p, g)
                    });
                }
            }
            4..=7 => {
                if let Some((opt, desc)) = adam.as_mut() {
                    let desc = desc.clone();
                    step(fz, "Adam::step", &desc, target, &grads, |p, g| {
                        opt.step(p, g)
                    });
                }
            }
            8 => {
                let lr = F::of(fz.factor(1e-3, 2.0));
                let valid = lr.as_f64() > 0.0 && fin(lr);
                if let Some((opt, desc)) = sgd.as_mut() {
                    let out = fz.try_call("Sgd::set_lr", || opt.set_lr(lr));
                    check_arg(fz, "Sgd::set_lr", valid, &out, || format!("lr {}", sci(lr)));
                    if valid {
                        *desc = format!("{desc}, then lr {}", sci(lr));
                    }
                }
                if let Some((opt, desc)) = adam.as_mut() {
                    let out = fz.try_call("Adam::set_lr", || opt.set_lr(lr));
                    check_arg(fz, "Adam::set_lr", valid, &out, || {
                        format!("lr {}", sci(lr))
                    });
                    if valid {
                        *desc = format!("{desc}, then lr {}", sci(lr));
                    }
                }
                fz.call("lr", || {
                    (
                        sgd.as_ref().map(|s| s.0.lr()),
                        adam.as_ref().map(|a| a.0.lr()),
                    )
                });
            }
            _ => {
                let Stores {
                    main,
                    ids,
                    foreign,
                    next_name,
                    ..
                } = &mut st;
                mutate_params(fz, main, ids, foreign, next_name);
            }
        }
    }
}

/// A constructor or setter must accept exactly the arguments its docs accept.
fn check_arg<T>(
    fz: &mut Fuzz,
    op: &'static str,
    valid: bool,
    out: &Option<timetape::Result<T>>,
    args: impl FnOnce() -> String,
) {
    if let Some(out) = out {
        let what = if valid {
            "refused a valid argument"
        } else {
            "accepted an invalid argument"
        };
        fz.ensure(out.is_ok() == valid, op, what, args);
    }
}

fn make_sgd<F: Scalar>(fz: &mut Fuzz, lr: F) -> Option<(Sgd<F>, String)> {
    let out = fz.try_call("Sgd::new", || Sgd::new(lr));
    let valid = lr.as_f64() > 0.0 && fin(lr);
    check_arg(fz, "Sgd::new", valid, &out, || format!("lr {}", sci(lr)));
    let mut sgd = out?.ok()?;
    let mut desc = format!("Sgd lr {}", sci(lr));
    if fz.chance(0.5) {
        let mu = F::of(fz.factor(0.0, 0.99));
        let valid = mu.as_f64() >= 0.0 && mu.as_f64() < 1.0;
        let copy = sgd.clone();
        let out = fz.try_call("Sgd::with_momentum", || copy.with_momentum(mu));
        check_arg(fz, "Sgd::with_momentum", valid, &out, || {
            format!("momentum {}", sci(mu))
        });
        if let Some(Ok(s)) = out {
            sgd = s;
            desc = format!("{desc} momentum {}", sci(mu));
        }
    }
    Some((sgd, desc))
}

fn make_adam<F: Scalar>(fz: &mut Fuzz, lr: F) -> Option<(Adam<F>, String)> {
    let out = fz.try_call("Adam::new", || Adam::new(lr));
    let valid = lr.as_f64() > 0.0 && fin(lr);
    check_arg(fz, "Adam::new", valid, &out, || format!("lr {}", sci(lr)));
    let mut adam = out?.ok()?;
    let mut desc = format!("Adam lr {}", sci(lr));
    if fz.chance(0.6) {
        let b1 = F::of(fz.factor(0.0, 0.99));
        let b2 = F::of(fz.factor(0.0, 0.9999));
        let eps = F::of(fz.factor(1e-12, 1e-3));
        let unit = |b: F| b.as_f64() >= 0.0 && b.as_f64() < 1.0;
        let valid = unit(b1) && unit(b2) && eps.as_f64() > 0.0 && fin(eps);
        let copy = adam.clone();
        let out = fz.try_call("Adam::with_betas", || copy.with_betas(b1, b2, eps));
        check_arg(fz, "Adam::with_betas", valid, &out, || {
            format!("β₁ {}, β₂ {}, ε {}", sci(b1), sci(b2), sci(eps))
        });
        if let Some(Ok(a)) = out {
            adam = a;
            desc = format!("{desc} β₁ {} β₂ {} ε {}", sci(b1), sci(b2), sci(eps));
        }
    }
    Some((adam, desc))
}

/// Gradients for a step: of the right shapes (mostly large finite values), of another
/// store, of the wrong shape, with a NaN, or empty.
fn make_grads<F: Scalar>(fz: &mut Fuzz, st: &Stores<F>) -> Grads<F> {
    match fz.below(10) {
        0 => Grads::zeros_like(&st.main),
        1 => Grads::default(),
        2 => {
            let mut g = Grads::new(&st.other);
            if let Some(id) = st.any_id(fz) {
                let s = fz.shape();
                let v = fz.matrix::<F>(s);
                fz.try_call("Grads::accumulate", || g.accumulate(id, v.view()));
            }
            g
        }
        _ => {
            let mut g = Grads::new(&st.main);
            for id in st.ids.clone() {
                let Ok(p) = st.main.get(id) else { continue };
                let s = if fz.chance(0.95) { p.dim() } else { fz.shape() };
                let v = if fz.chance(0.3) {
                    // large finite gradients, all of one sign
                    let e = fz.rng.random_range(1.0..308.0);
                    Array2::from_elem(s, F::of(10f64.powf(e)))
                } else {
                    fz.matrix::<F>(s)
                };
                fz.try_call("Grads::accumulate", || g.accumulate(id, v.view()));
            }
            g
        }
    }
}

/// `clip_global_norm`: an `Ok` norm is finite and the clipped norm at most θ; an `Err`
/// leaves the gradient unchanged.
fn clip<F: Scalar>(fz: &mut Fuzz, grads: &mut Grads<F>) {
    let theta = F::of(fz.factor(1e-3, 10.0));
    let valid = theta.as_f64() > 0.0 && fin(theta);
    let before = grads.clone();
    let Some(out) = fz.try_call("clip_global_norm", || clip_global_norm(grads, theta)) else {
        return;
    };
    let op = "clip_global_norm";
    match out {
        Ok(norm) => {
            fz.ensure(valid, op, "accepted an invalid θ", || {
                format!("θ {}", sci(theta))
            });
            fz.ensure(fin(norm), op, "Ok with a non-finite norm", || {
                format!("norm {}", sci(norm))
            });
            fz.ensure(
                grads_finite(grads),
                op,
                "Ok with a non-finite gradient",
                || format!("θ {}", sci(theta)),
            );
            let after = fz.call("Grads::global_norm", || grads.global_norm());
            if let Some(after) = after {
                // (below 1e-30 the scaled entries are subnormal in f32: no relative bound)
                let bound = theta.as_f64() * (1.0 + 1e-4);
                fz.ensure(
                    after.as_f64() <= bound || theta.as_f64() < 1e-30,
                    op,
                    "clipped norm above θ",
                    || {
                        format!(
                            "θ {}, norm before {}, after {}",
                            sci(theta),
                            sci(norm),
                            sci(after)
                        )
                    },
                );
            }
        }
        Err(e) => {
            fz.ensure(
                same_grads(grads, &before),
                op,
                "a failed clip changed the gradient",
                || e.to_string(),
            );
        }
    }
}

/// One optimizer step: after an `Ok`, every parameter that was finite is finite; after
/// an `Err`, nothing changed.
fn step<F: Scalar>(
    fz: &mut Fuzz,
    op: &'static str,
    desc: &str,
    params: &mut Params<F>,
    grads: &Grads<F>,
    f: impl FnOnce(&mut Params<F>, &Grads<F>) -> timetape::Result<()>,
) {
    let before: Vec<(ParamId, Array2<F>)> = params
        .ids()
        .filter_map(|id| params.get(id).ok().map(|p| (id, p.clone())))
        .collect();
    let snap = snapshot(params);
    let Some(out) = fz.try_call(op, || f(params, grads)) else {
        return;
    };
    match out {
        Ok(()) => {
            for (id, old) in &before {
                let Ok(now) = params.get(*id) else { continue };
                if all_finite(old.view()) && !all_finite(now.view()) {
                    let g = grads.get(*id).map(|g| g.mapv(|x| x.as_f64()));
                    fz.fail(
                        op,
                        "Ok, but a finite parameter became non-finite",
                        format!(
                            "{desc}; parameter {}: θ = {:e} and g = {:e} gave θ = {:e}",
                            id.index(),
                            old.mapv(|x| x.as_f64()),
                            g.unwrap_or_default(),
                            now.mapv(|x| x.as_f64()),
                        ),
                    );
                } else if !all_finite(now.view()) {
                    fz.observe(
                        op,
                        "Ok on a parameter that was already non-finite (written through get_mut)",
                        desc.to_string(),
                    );
                }
            }
        }
        Err(e) => {
            fz.ensure(
                snapshot(params) == snap,
                op,
                "a failed step changed a parameter",
                || e.to_string(),
            );
        }
    }
}

// =======================================================================================
// Family: gradcheck.
// =======================================================================================

/// The losses gradcheck is given: smooth ones, overflowing ones, invalid ones, and ones
/// that break the closure's contract.
#[derive(Debug, Clone, Copy)]
enum Program {
    TanhSum,
    Scaled,
    ExpScaled,
    LogSum,
    Mse,
    CrossEntropy,
    Identity,
    Foreign,
    Stale,
    Fails,
    Product,
    SquareScaled,
}

const PROGRAMS: [Program; 12] = [
    Program::TanhSum,
    Program::Scaled,
    Program::ExpScaled,
    Program::LogSum,
    Program::Mse,
    Program::CrossEntropy,
    Program::Identity,
    Program::Foreign,
    Program::Stale,
    Program::Fails,
    Program::Product,
    Program::SquareScaled,
];

fn gradcheck_family(fz: &mut Fuzz) {
    let mut params = Params::<f64>::new();
    let mut ids = Vec::new();
    for i in 0..fz.below(3) {
        let s = (1 + fz.below(2), 1 + fz.below(2));
        let v = fz.mostly_clean::<f64>(s);
        if let Some(Ok(id)) = fz.try_call("Params::add", || params.add(format!("w{i}"), v)) {
            ids.push(id);
        }
    }
    let eps = if fz.chance(0.5) {
        fz.pick(&[1e-5, 1e-3, 1e-7, 0.1])
    } else {
        fz.special()
    };
    let prog = fz.pick(&PROGRAMS);
    let c = fz.pick(&[
        1.0, -2.0, 1e10, 1e100, 1e200, 1e300, 1.7e308, -1.5e308, 1e-300, 700.0,
    ]);
    let target = fz.matrix::<f64>((2, 2));
    let label = fz.below(3);
    let red = fz.reduction();
    let check_finite = fz.chance(0.2);
    let mut foreign_tape = Tape::<f64>::new();
    let foreign = fz
        .call("constant", || foreign_tape.constant(Array2::ones((1, 1))))
        .and_then(Result::ok);
    let loss = move |tape: &mut Tape<f64>, p: &Params<f64>| -> timetape::Result<Var> {
        tape.set_check_finite(check_finite);
        let ws: Vec<Var> = ids
            .iter()
            .map(|&id| tape.param(p, id))
            .collect::<timetape::Result<_>>()?;
        let w0 = match ws.first() {
            Some(&w) => w,
            None => tape.constant(Array2::from_elem((1, 1), 0.5))?,
        };
        let v = match prog {
            Program::TanhSum => {
                let y = tape.tanh(w0)?;
                tape.sum(y)?
            }
            Program::Scaled => {
                let y = tape.scale(w0, c)?;
                tape.sum(y)?
            }
            Program::ExpScaled => {
                let y = tape.scale(w0, c)?;
                let y = tape.exp(y)?;
                tape.sum(y)?
            }
            Program::LogSum => {
                let y = tape.log(w0)?;
                tape.sum(y)?
            }
            Program::Mse => {
                let (r, k) = tape.shape(w0)?;
                let t = tape.constant(Array2::from_shape_fn((r, k), |(i, j)| {
                    target[[i % 2, j % 2]]
                }))?;
                tape.mse(w0, t)?
            }
            Program::CrossEntropy => {
                let (r, _) = tape.shape(w0)?;
                tape.softmax_cross_entropy(w0, &vec![label; r], None, red)?
            }
            Program::Identity => w0,
            Program::Foreign => foreign.unwrap_or(w0),
            Program::Stale => {
                tape.clear();
                w0
            }
            Program::Fails => {
                return Err(Error::InvalidArgument {
                    op: "fuzz loss",
                    msg: "the closure failed".into(),
                })
            }
            Program::Product => {
                let mut acc = tape.sum(w0)?;
                for &w in &ws[1.min(ws.len())..] {
                    let s = tape.sum(w)?;
                    acc = tape.mul(acc, s)?;
                }
                acc
            }
            Program::SquareScaled => {
                let y = tape.mul(w0, w0)?;
                let y = tape.scale(y, c)?;
                tape.sum(y)?
            }
        };
        Ok(v)
    };
    let opts = GradcheckOptions { eps };
    let Some(out) = fz.try_call("gradcheck", || gradcheck(&params, opts, loss)) else {
        return;
    };
    if let Ok(report) = out {
        check_gradcheck(fz, &report, eps, prog, c);
    }
}

fn check_gradcheck(fz: &mut Fuzz, report: &GradcheckReport, eps: f64, prog: Program, c: f64) {
    let op = "gradcheck";
    fz.ensure(
        eps > 0.0 && eps.is_finite(),
        op,
        "accepted an invalid eps",
        || format!("eps {eps:e}"),
    );
    for p in &report.params {
        let finite = p.max_abs_err.is_finite() && p.max_rel_err.is_finite() && p.scale.is_finite();
        fz.ensure(finite, op, "Ok(report) with a non-finite error", || {
            format!(
                "eps {eps:e}, loss {prog:?} (c = {c:e}), {}: max abs err {:e}, max rel err {:e}, \
                 scale {:e}",
                p.name, p.max_abs_err, p.max_rel_err, p.scale
            )
        });
    }
    fz.call("GradcheckReport", || {
        (
            report.max_rel_err(),
            report.max_abs_err(),
            report.passes(1e-6),
            report.to_string().len(),
        )
    });
}

// =======================================================================================
// Family: diagnostics.
// =======================================================================================

/// `spectral_radius` or `largest_singular_value`.
type Estimator<F> = fn(ArrayView2<'_, F>, usize) -> timetape::Result<f64>;

fn diagnostics_family<F: Scalar>(fz: &mut Fuzz) {
    for _ in 0..1 + fz.below(6) {
        let n = fz.dim();
        let shape = if fz.chance(0.85) { (n, n) } else { fz.shape() };
        let w = if fz.chance(0.15) {
            // every entry near the largest finite value of F
            let top = if std::mem::size_of::<F>() == 4 {
                f32::MAX as f64
            } else {
                f64::MAX
            };
            Array2::from_shape_simple_fn(shape, || {
                let s = if fz.chance(0.7) { 1.0 } else { -1.0 };
                F::of(s * top * fz.rng.random_range(0.5..=1.0))
            })
        } else {
            fz.matrix::<F>(shape)
        };
        let iters = fz.pick(&[0, 1, 2, 3, 10, 50, 200]);
        let ops: [(&'static str, Estimator<F>); 2] = [
            ("spectral_radius", diagnostics::spectral_radius::<F>),
            (
                "largest_singular_value",
                diagnostics::largest_singular_value::<F>,
            ),
        ];
        for (op, f) in ops {
            if let Some(Ok(x)) = fz.try_call(op, || f(w.view(), iters)) {
                fz.ensure(
                    x.is_finite() && x >= 0.0,
                    op,
                    "Ok with a non-finite value",
                    || {
                        format!(
                            "{x} for a {shape:?} W with max |w| {:e}, iters {iters}",
                            max_abs(w.view())
                        )
                    },
                );
            }
        }
    }
}

// =======================================================================================
// Family: ξ patterns, samplers and enumeration.
// =======================================================================================

/// A probability for `Pi::Constant`: mostly valid, sometimes 0, above 1, NaN, subnormal.
fn pi_value(fz: &mut Fuzz) -> f64 {
    if fz.chance(0.6) {
        fz.rng.random_range(0.05..=1.0)
    } else {
        fz.pick(&[
            0.0,
            1.0,
            1.5,
            f64::NAN,
            -0.5,
            f64::INFINITY,
            1e-300,
            5e-324,
            1e-3,
            0.999_999,
        ])
    }
}

/// A `Pi::schedule` or `Pi::hazard` whose closure returns junk somewhere.
fn junk_pi(fz: &mut Fuzz) -> Pi {
    let (kind, p, at) = (fz.below(8), pi_value(fz), 1 + fz.below(10));
    let f = move |n: usize| -> f64 {
        let x = n as f64;
        match kind {
            0 => p,
            1 => {
                if n == at {
                    f64::NAN
                } else {
                    0.5
                }
            }
            2 => {
                if n.is_multiple_of(2) {
                    p
                } else {
                    0.7
                }
            }
            3 => 1.0 / x,
            4 => 1.0 - 1.0 / (x + 1.0),
            5 => x.sin(),
            6 => {
                if n >= at {
                    0.0
                } else {
                    1.0
                }
            }
            _ => 1.0 + 1e-16 * x,
        }
    };
    if fz.chance(0.5) {
        Pi::schedule(f)
    } else {
        Pi::hazard(f)
    }
}

fn any_pi(fz: &mut Fuzz) -> Pi {
    if fz.chance(0.5) {
        Pi::Constant(pi_value(fz))
    } else {
        junk_pi(fz)
    }
}

/// A ξ pattern: mostly of length `t`, with entries 0, 1 and others, some junk.
fn pattern(fz: &mut Fuzz, t: usize) -> Vec<f64> {
    let n = if fz.chance(0.85) {
        t
    } else {
        fz.pick(&[0, t + 1, t.saturating_sub(1)])
    };
    (0..n)
        .map(|_| {
            fz.pick(&[
                0.0,
                1.0,
                1.0,
                1.0,
                2.0,
                0.5,
                -1.0,
                1e10,
                1e300,
                1e-300,
                f64::NAN,
                f64::INFINITY,
                3.0,
            ])
        })
        .collect()
}

/// A block length: mostly 1..=t+2, sometimes 0 or huge.
fn block(fz: &mut Fuzz, t: usize) -> usize {
    match fz.below(100) {
        0..=7 => 0,
        8..=11 => fz.pick(&[usize::MAX, 1 << 40]),
        _ => 1 + fz.below(t + 2),
    }
}

fn truncation(fz: &mut Fuzz, t: usize) -> Truncation {
    match fz.below(100) {
        0..=19 => Truncation::Full,
        20..=34 => Truncation::Fixed { k: block(fz, t) },
        35..=49 => {
            let k1 = block(fz, t);
            let k2 = if fz.chance(0.25) {
                block(fz, t)
            } else {
                k1.saturating_add(fz.below(4))
            };
            Truncation::Tbptt { k1, k2 }
        }
        50..=64 => Truncation::Randomized {
            pi: Pi::Constant(pi_value(fz)),
            seed: fz.rng.random(),
        },
        65..=79 => Truncation::Randomized {
            pi: junk_pi(fz),
            seed: fz.rng.random(),
        },
        _ => Truncation::Pattern(pattern(fz, t)),
    }
}

fn xi_family(fz: &mut Fuzz) {
    for _ in 0..1 + fz.below(8) {
        let t = fz.below(21);
        match fz.below(7) {
            0 => {
                let k = block(fz, t);
                if let Some(Ok(xi)) = fz.try_call("fixed_pattern", || bptt::fixed_pattern(t, k)) {
                    fz.ensure(
                        xi.len() == t && xi.iter().all(|&x| x == 0.0 || x == 1.0),
                        "fixed_pattern",
                        "a pattern of the wrong length or values",
                        || format!("T {t}, k {k}: {xi:?}"),
                    );
                }
            }
            1 => {
                let k = block(fz, t);
                fz.try_call("closed_form::block_starts", || {
                    closed_form::block_starts(t, k)
                });
            }
            2 => {
                let (pi, seed) = (any_pi(fz), fz.rng.random());
                if let Some(Ok(xi)) = fz.try_call("sample_xi", || bptt::sample_xi(&pi, t, seed)) {
                    if xi.iter().any(|x| !x.is_finite()) {
                        fz.observe("sample_xi", "Ok with a non-finite ξ", format!("{pi:?}"));
                    }
                }
            }
            3 => {
                let (pi, seed) = (any_pi(fz), fz.rng.random());
                let mut sampler = XiSampler::new(pi.clone(), seed);
                for _ in 0..t {
                    match fz.try_call("XiSampler::next_xi", || sampler.next_xi()) {
                        Some(Ok(x)) if !x.is_finite() => {
                            fz.observe(
                                "XiSampler::next_xi",
                                "Ok with a non-finite ξ",
                                format!("{pi:?}"),
                            );
                        }
                        Some(Ok(_)) => {}
                        _ => break,
                    }
                }
            }
            4 => {
                let pi = any_pi(fz);
                let t = match fz.below(20) {
                    0 => 16,
                    1 => 17,
                    _ => fz.below(7),
                };
                if let Some(Ok(all)) =
                    fz.try_call("enumerate::patterns", || enumerate::patterns(&pi, t))
                {
                    let total: f64 = all.iter().map(|(_, p)| p).sum();
                    let finite = all.iter().all(|(xi, _)| xi.iter().all(|x| x.is_finite()));
                    if !finite {
                        let xi = all.iter().find(|(xi, _)| xi.iter().any(|x| !x.is_finite()));
                        fz.observe(
                            "enumerate::patterns",
                            "Ok with a non-finite ξ (1/π for a subnormal π)",
                            format!("{pi:?}, T {t}: {xi:?}"),
                        );
                    }
                    if (total - 1.0).abs() > 1e-9 {
                        fz.observe(
                            "enumerate::patterns",
                            "probabilities that do not sum to 1",
                            format!("{pi:?}, T {t}: Σp = {total}"),
                        );
                    }
                }
            }
            5 => {
                let tr = truncation(fz, t);
                let len = if fz.chance(0.8) { Some(t) } else { None };
                fz.try_call("Truncation::validate", || tr.validate(len));
                if let Some(Ok(Some(xi))) = fz.try_call("Truncation::xi", || tr.xi(t)) {
                    fz.ensure(
                        xi.len() == t,
                        "Truncation::xi",
                        "a pattern of the wrong length",
                        || format!("{tr:?}: {} entries for T = {t}", xi.len()),
                    );
                }
            }
            _ => {
                // Lengths that cannot be allocated: an error, not a panic or an abort.
                let n = fz.pick(&ABSURD_LEN);
                match fz.below(4) {
                    0 => {
                        let k = block(fz, 4);
                        fz.call_fast("fixed_pattern", || bptt::fixed_pattern(n, k));
                    }
                    1 => {
                        let k = 1 + fz.below(3);
                        fz.call_fast("closed_form::block_starts", || {
                            closed_form::block_starts(n, k)
                        });
                    }
                    2 => {
                        let tr = match fz.below(3) {
                            0 => Truncation::Full,
                            1 => Truncation::Fixed { k: 1 + fz.below(3) },
                            _ => Truncation::Tbptt { k1: 2, k2: 2 },
                        };
                        fz.call_fast("Truncation::xi", || tr.xi(n));
                    }
                    _ => {
                        let pi = Pi::Constant(pi_value(fz));
                        fz.call_fast("enumerate::patterns", || enumerate::patterns(&pi, n));
                    }
                }
            }
        }
    }
}

// =======================================================================================
// Family: absurd sizes.
// =======================================================================================

/// Cells and matrices of sizes that cannot be allocated: an error, quickly, before
/// anything is allocated; and the entry points that allocate from a size they are given
/// (`Stream::new`'s batch, an `Rnn` whose public `config` says an absurd width).
fn absurd_family<F: Scalar>(fz: &mut Fuzz) {
    let mut params = Params::<F>::new();
    let (d, h, q) = (fz.pos(), fz.pos(), fz.pos());
    let big = fz.pick(&ABSURD);
    let hidden = fz.pick(&ABSURD_HIDDEN);
    let seed = fz.rng.random();
    let which = fz.below(12);
    let out = match which {
        0 => fz.call_fast("models::m1", || {
            models::m1(&mut params, Sizes::new(big, h, q), seed)
        }),
        1 => fz.call_fast("models::m1", || {
            models::m1(&mut params, Sizes::new(d, hidden, q), seed)
        }),
        2 => fz.call_fast("models::m2", || models::m2(&mut params, d, hidden, seed)),
        3 => fz.call_fast("models::m3", || {
            models::m3(&mut params, Sizes::new(d, h, big), seed)
        }),
        4 => {
            let act = fz.activation();
            fz.call_fast("models::m4", || {
                models::m4(&mut params, Sizes::new(hidden, hidden, q), act, seed)
            })
        }
        5 => {
            let c = RnnConfig::new(d, hidden, q).biases(Biases {
                hidden: fz.chance(0.5),
                output: fz.chance(0.5),
            });
            fz.call_fast("Rnn::new", || Rnn::new(&mut params, c, seed))
        }
        6 => {
            let gru = match fz.below(3) {
                0 => fz.call_fast("Gru::new", || {
                    Gru::new(&mut params, Sizes::new(big, h, q), seed)
                }),
                1 => fz.call_fast("Gru::new", || {
                    Gru::new(&mut params, Sizes::new(d, hidden, q), seed)
                }),
                _ => fz.call_fast("Gru::new", || {
                    Gru::new(&mut params, Sizes::new(d, h, big), seed)
                }),
            };
            fz.ensure(
                !matches!(gru, Some(Ok(_))),
                "Gru::new",
                "accepted an absurd size",
                String::new,
            );
            return;
        }
        7 => {
            let lstm = match fz.below(3) {
                0 => fz.call_fast("Lstm::new", || {
                    Lstm::new(&mut params, Sizes::new(big, h, q), seed)
                }),
                1 => fz.call_fast("Lstm::new", || {
                    Lstm::new(&mut params, Sizes::new(d, hidden, q), seed)
                }),
                _ => fz.call_fast("Lstm::new", || {
                    Lstm::new(&mut params, Sizes::new(d, h, big), seed)
                }),
            };
            fz.ensure(
                !matches!(lstm, Some(Ok(_))),
                "Lstm::new",
                "accepted an absurd size",
                String::new,
            );
            return;
        }
        8 => {
            let shape = if fz.chance(0.5) {
                (big, 1)
            } else {
                (hidden, hidden)
            };
            let out = fz.call_fast("init::uniform", || {
                init::uniform::<F>(shape, 0.5, &mut init::rng(seed))
            });
            fz.ensure(
                !matches!(out, Some(Ok(_))),
                "init::uniform",
                "accepted an absurd size",
                String::new,
            );
            return;
        }
        _ => {
            // A valid cell, then an absurd size handed to an entry point that allocates
            // from it.
            let Some(Ok(mut cell)) = fz.try_call("models::m3", || {
                models::m3(&mut params, Sizes::new(d, h, q), 0)
            }) else {
                return;
            };
            let big = fz.pick(&ABSURD_LEN);
            let t = 1 + fz.below(3);
            let xs = Array3::<F>::zeros((t, 1, d));
            let labels = Array2::<usize>::zeros((t, 1));
            let loss = SequenceLoss::classes(labels.view());
            if which == 9 {
                let tr = truncation(fz, t);
                fz.call_fast("Stream::new", || {
                    Stream::new(&cell, &params, big, &Run::new(tr)).map(|_| ())
                });
                return;
            }
            // The fields of `Rnn` are public: a config that does not match the store.
            cell.config.hidden = big;
            if which == 10 {
                fz.call_fast("bptt::run", || {
                    bptt::run(
                        &cell,
                        &params,
                        &Sequence::new(xs.view(), loss),
                        &Run::new(Truncation::Full),
                    )
                    .map(|_| ())
                });
            } else {
                let mut tape = Tape::new();
                fz.call_fast("rnn::unroll", || {
                    bptt::unroll(&cell, &mut tape, &params, &Sequence::new(xs.view(), loss))
                        .map(|_| ())
                });
            }
            return;
        }
    };
    fz.ensure(
        !matches!(out, Some(Ok(_))),
        "cell constructor",
        "accepted an absurd size",
        || format!("variant {which}"),
    );
}

// =======================================================================================
// Family: RNN cells, unrolls, BPTT runners, streams, closed forms.
// =======================================================================================

/// A custom cell that breaks the `Recurrent` contract in one way: the trait is public,
/// so a user's own cell is user input too. It wraps an [`Rnn`].
struct Rogue {
    inner: Rnn,
    mode: RogueMode,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum RogueMode {
    /// Its last step of each segment returns a state twice as wide as `state_width`.
    WideState,
    /// Its last step of each segment returns a state one column narrower.
    NarrowState,
    /// `state_width` is one more than its steps use.
    LyingWidth,
    /// Its output head is twice as wide as `output_width`.
    WideOutput,
}

impl<F: Scalar> Recurrent<F> for Rogue {
    type Bound = RnnBound;

    fn input_width(&self) -> usize {
        Recurrent::<F>::input_width(&self.inner)
    }

    fn state_width(&self) -> usize {
        let s = Recurrent::<F>::state_width(&self.inner);
        if self.mode == RogueMode::LyingWidth {
            s + 1
        } else {
            s
        }
    }

    fn output_width(&self) -> usize {
        Recurrent::<F>::output_width(&self.inner)
    }

    fn bind(&self, tape: &mut Tape<F>, params: &Params<F>) -> timetape::Result<RnnBound> {
        self.inner.bind(tape, params)
    }

    fn step(&self, tape: &mut Tape<F>, bound: &RnnBound, x: Var, h: Var) -> timetape::Result<Var> {
        let rows = tape.shape(x)?.0;
        let u = self.project_inputs(tape, bound, x)?;
        self.step_projected(tape, bound, RowsOf(u, 0..rows), h)
    }

    fn projection(&self) -> Option<&dyn Projection<F, RnnBound>> {
        Some(self)
    }

    /// Reads the first `state_width` columns of wider states.
    fn output(&self, tape: &mut Tape<F>, bound: &RnnBound, hs: Var) -> timetape::Result<Var> {
        let s = Recurrent::<F>::state_width(&self.inner);
        let hs = if tape.shape(hs)?.1 > s {
            tape.slice_cols(hs, 0..s)?
        } else {
            hs
        };
        let o = self.inner.output(tape, bound, hs)?;
        if self.mode == RogueMode::WideOutput {
            tape.concat_cols(&[o, o])
        } else {
            Ok(o)
        }
    }
}

/// The wrapped RNN's projection (every built-in cell has one).
fn inner_projection<F: Scalar>(rnn: &Rnn) -> timetape::Result<&dyn Projection<F, RnnBound>> {
    rnn.projection().ok_or(timetape::Error::EmptyInput {
        op: "Rogue",
        what: "projection",
    })
}

impl<F: Scalar> Projection<F, RnnBound> for Rogue {
    fn project_inputs(
        &self,
        tape: &mut Tape<F>,
        bound: &RnnBound,
        xs: Var,
    ) -> timetape::Result<Var> {
        inner_projection(&self.inner)?.project_inputs(tape, bound, xs)
    }

    fn step_projected(
        &self,
        tape: &mut Tape<F>,
        bound: &RnnBound,
        u: RowsOf,
        h_prev: Var,
    ) -> timetape::Result<Var> {
        let last = u.1.end == tape.shape(u.0)?.0;
        let h = inner_projection(&self.inner)?.step_projected(tape, bound, u, h_prev)?;
        let s = Recurrent::<F>::state_width(&self.inner);
        match self.mode {
            RogueMode::WideState if last => tape.concat_cols(&[h, h]),
            RogueMode::NarrowState if last && s > 1 => tape.slice_cols(h, 0..s - 1),
            _ => Ok(h),
        }
    }
}

fn bptt_family<F: Scalar>(fz: &mut Fuzz) {
    let mut params = Params::<F>::new();
    let (d, h, q) = (fz.pos(), fz.pos(), fz.pos());
    let seed = fz.rng.random();
    if fz.chance(0.05) {
        // A second model of the same names in one store: a name clash, an error.
        fz.try_call("models::m3", || {
            models::m3(&mut params, Sizes::new(d, h, q), seed)
        });
    }
    let kind = fz.below(9);
    let rnn = match kind {
        0 => fz.try_call("models::m1", || {
            models::m1(&mut params, Sizes::new(d, h, q), seed)
        }),
        1 => fz.try_call("models::m2", || models::m2(&mut params, d, h, seed)),
        2 => fz.try_call("models::m3", || {
            models::m3(&mut params, Sizes::new(d, h, q), seed)
        }),
        3 => {
            let act = fz.activation();
            fz.try_call("models::m4", || {
                models::m4(&mut params, Sizes::new(d, h, q), act, seed)
            })
        }
        4 | 7 => {
            let mut c = RnnConfig::new(d, h, q)
                .activation(fz.activation())
                .biases(Biases {
                    hidden: fz.chance(0.5),
                    output: fz.chance(0.5),
                });
            c.prefix = fz.pick(&["", "a.", "rnn/"]).to_string();
            fz.try_call("Rnn::new", || Rnn::new(&mut params, c, seed))
        }
        5 => {
            if let Some(Ok(cell)) = fz.try_call("Gru::new", || {
                Gru::new(&mut params, Sizes::new(d, h, q), seed)
            }) {
                perturb(fz, &mut params);
                bptt_calls(fz, &cell, &mut params, None);
            }
            return;
        }
        8 => {
            // A two-layer stack, sometimes with layer widths that do not fit.
            let h_in = if fz.chance(0.9) { h } else { fz.pos() };
            let l0 = fz.try_call("Gru::named", || {
                Gru::named(&mut params, "l0.", Sizes::new(d, h, 1), seed)
            });
            let l1 = fz.try_call("Gru::named", || {
                Gru::named(&mut params, "l1.", Sizes::new(h_in, h, q), seed)
            });
            if let (Some(Ok(l0)), Some(Ok(l1))) = (l0, l1) {
                if let Some(Ok(stack)) = fz.try_call("Stack::new", || Stack::new(vec![l0, l1])) {
                    perturb(fz, &mut params);
                    bptt_calls(fz, &stack, &mut params, None);
                }
            }
            return;
        }
        _ => {
            if let Some(Ok(cell)) = fz.try_call("Lstm::new", || {
                Lstm::new(&mut params, Sizes::new(d, h, q), seed)
            }) {
                perturb(fz, &mut params);
                bptt_calls(fz, &cell, &mut params, None);
            }
            return;
        }
    };
    let Some(Ok(mut rnn)) = rnn else { return };
    perturb(fz, &mut params);
    if kind == 7 {
        let mode = fz.pick(&[
            RogueMode::WideState,
            RogueMode::NarrowState,
            RogueMode::LyingWidth,
            RogueMode::WideOutput,
        ]);
        fz.note(|| format!("a custom cell, {mode:?}, around {rnn:?}"));
        fz.family = if std::mem::size_of::<F>() == 4 {
            "rnn+bptt<f32>, custom cell"
        } else {
            "rnn+bptt<f64>, custom cell"
        };
        let cell = Rogue { inner: rnn, mode };
        bptt_calls(fz, &cell, &mut params, None);
        return;
    }
    if fz.chance(0.05) {
        // The fields of `Rnn` are public: a config or ids that do not match the store.
        match fz.below(4) {
            0 => rnn.config.hidden += 1,
            1 => rnn.config.output += 1,
            2 => rnn.config.input += 1,
            _ => std::mem::swap(&mut rnn.w_hh, &mut rnn.w_xh),
        }
    }
    fz.note(|| format!("{rnn:?}"));
    let rnn2 = rnn.clone();
    bptt_calls(fz, &rnn, &mut params, Some(&rnn2));
}

/// Changes the cell's parameters: scaled up (an exploding RNN, or an overflow), loaded
/// with `set`, a NaN or another shape written through `get_mut`.
fn perturb<F: Scalar>(fz: &mut Fuzz, params: &mut Params<F>) {
    let ids: Vec<ParamId> = params.ids().collect();
    if ids.is_empty() {
        return;
    }
    let id = ids[fz.below(ids.len())];
    match fz.below(100) {
        0..=54 => {}
        55..=79 => {
            let c = F::of(fz.pick(&[2.0, 10.0, 100.0, 1e4, 1e10, 1e30, 1e100]));
            for id in ids {
                fz.try_call("Params::get_mut", || {
                    params.get_mut(id).map(|p| p.mapv_inplace(|x| x * c))
                });
            }
        }
        80..=89 => {
            let shape = params.get(id).map(|p| p.dim()).unwrap_or((1, 1));
            let v = fz.matrix::<F>(shape);
            fz.try_call("Params::set", || params.set(id, v.view()));
        }
        90..=94 => {
            let bad = F::of(fz.pick(&[f64::NAN, f64::INFINITY]));
            fz.try_call("Params::get_mut", || {
                params.get_mut(id).map(|p| p.fill(bad))
            });
        }
        _ => {
            let shape = fz.shape();
            let v = fz.clean::<F>(shape);
            fz.try_call("Params::get_mut", || params.get_mut(id).map(|p| *p = v));
        }
    }
}

/// The targets of a sequence loss, owned: per-step classes or values, last-step class,
/// binary or real target, step weights; mostly valid for the sequence, sometimes not.
struct LossData<F> {
    kind: usize,
    labels: Array2<usize>,
    values: Array3<F>,
    last: Array1<usize>,
    binary: Array1<F>,
    last_values: Array2<F>,
    weights: Option<Vec<F>>,
    mean: bool,
    sum_over_batch: bool,
}

impl<F: Scalar> LossData<F> {
    fn new(fz: &mut Fuzz, t: usize, b: usize, q: usize) -> Self {
        let kind = if q == 1 && fz.chance(0.4) {
            3
        } else {
            fz.below(5)
        };
        let lt = if fz.chance(0.93) { t } else { t + 1 };
        let labels = Array2::from_shape_simple_fn((lt, b), || {
            if fz.chance(0.98) {
                fz.below(q)
            } else {
                q + fz.below(2)
            }
        });
        let vq = if fz.chance(0.95) { q } else { q + 1 };
        let values = fz.array3::<F>((t, b, vq));
        let lb = if fz.chance(0.95) { b } else { b + 1 };
        let last =
            Array1::from_shape_simple_fn(lb, || if fz.chance(0.98) { fz.below(q) } else { q });
        let binary = Array1::from_shape_simple_fn(lb, || {
            F::of(if fz.chance(0.95) {
                fz.rng.random_range(0.0..=1.0)
            } else {
                fz.pick(&[-0.1, 1.1, f64::NAN, f64::INFINITY])
            })
        });
        let last_values = fz.matrix::<F>((lb, vq));
        let weights = fz.chance(0.35).then(|| {
            let n = if fz.chance(0.9) { t } else { t + 1 };
            (0..n)
                .map(|_| {
                    F::of(if fz.chance(0.9) {
                        fz.rng.random_range(0.0..2.0)
                    } else {
                        fz.special()
                    })
                })
                .collect()
        });
        LossData {
            kind,
            labels,
            values,
            last,
            binary,
            weights,
            mean: fz.chance(0.3),
            sum_over_batch: fz.chance(0.3),
            last_values,
        }
    }

    fn loss(&self) -> SequenceLoss<'_, F> {
        let last = match self.kind {
            0 | 1 => {
                let mut l = match self.kind {
                    0 => SequenceLoss::classes(self.labels.view()),
                    _ => SequenceLoss::values(self.values.view()),
                };
                if let Some(w) = &self.weights {
                    l = l.weighted(w);
                }
                if self.mean {
                    l = l.mean_over_time();
                }
                if self.sum_over_batch {
                    l = l.sum_over_batch();
                }
                return l.into();
            }
            2 => SequenceLoss::last_class(self.last.view()),
            3 => SequenceLoss::last_binary(self.binary.view()),
            _ => SequenceLoss::last_values(self.last_values.view()),
        };
        if self.sum_over_batch {
            last.sum_over_batch().into()
        } else {
            last.into()
        }
    }

    /// Whether the targets the loss reads are finite.
    fn finite(&self) -> bool {
        match self.kind {
            1 => self.values.iter().all(|&x| fin(x)),
            3 => self.binary.iter().all(|&x| fin(x)),
            4 => self.last_values.iter().all(|&x| fin(x)),
            _ => true,
        }
    }
}

/// An `Ok(Report)` has a finite loss, gradient, ‖∂L/∂h_t‖ and final state, and came
/// from finite inputs.
fn check_report<F: Scalar>(fz: &mut Fuzz, op: &'static str, r: &Report<F>, inputs_finite: bool) {
    fz.ensure(fin(r.loss), op, "Ok(Report) with a non-finite loss", || {
        format!("loss {}", r.loss)
    });
    let bad = r
        .grads
        .iter()
        .find(|(_, g)| !all_finite(g.view()))
        .map(|(id, _)| id.index());
    fz.ensure(
        bad.is_none(),
        op,
        "Ok(Report) with a non-finite gradient",
        || format!("parameter {bad:?}"),
    );
    let norms_ok = r.dh_norms.iter().flatten().all(|&x| fin(x));
    fz.ensure(
        norms_ok,
        op,
        "Ok(Report) with a non-finite ‖∂L/∂h_t‖",
        String::new,
    );
    fz.ensure(
        all_finite(r.h_final.view()),
        op,
        "Ok(Report) with a non-finite h_final",
        String::new,
    );
    fz.ensure(
        inputs_finite,
        op,
        "Ok(Report) from a non-finite input",
        String::new,
    );
}

fn bptt_calls<F: Scalar, C: Recurrent<F>>(
    fz: &mut Fuzz,
    cell: &C,
    params: &mut Params<F>,
    rnn: Option<&Rnn>,
) {
    let (d, s, q) = (cell.input_width(), cell.state_width(), cell.output_width());
    let (d, s, q) = (d.min(8), s.min(8), q.min(8));
    let t = match fz.below(100) {
        0..=2 => 0,
        3..=80 => 1 + fz.below(8),
        _ => 9 + fz.below(12),
    };
    let b = if fz.chance(0.03) { 0 } else { fz.pos().min(3) };
    let dx = if fz.chance(0.95) { d } else { d + 1 };
    let xs = fz.array3::<F>((t, b, dx));
    let h0: Option<Array2<F>> = match fz.below(10) {
        0..=5 => None,
        6..=8 => Some(fz.mostly_clean((b, s))),
        _ => Some(fz.clean((b, s + 1))),
    };
    let data = LossData::<F>::new(fz, t, b, q);
    let loss = data.loss();
    let tr = truncation(fz, t);
    let opts = RunOptions {
        dh_norms: fz.chance(0.3),
        check_finite: fz.chance(0.3),
        flush_subnormals: fz.chance(0.3),
    };
    let inputs_finite = xs.iter().all(|&x| fin(x))
        && h0.as_ref().is_none_or(|h| all_finite(h.view()))
        && data.finite();
    let h0v = h0.as_ref().map(|h| h.view());
    let mut ws = Workspace::<F>::new();
    for _ in 0..1 + fz.below(3) {
        match fz.below(100) {
            0..=24 => {
                if let Some(Ok(r)) = fz.try_call("bptt::run", || {
                    bptt::run(
                        cell,
                        params,
                        &Sequence::new(xs.view(), loss).with_h0(h0v),
                        &Run::new(tr.clone()).options(opts),
                    )
                }) {
                    check_report(fz, "bptt::run", &r, inputs_finite);
                }
            }
            25..=39 => {
                if let Some(Ok(r)) = fz.try_call("bptt::run_with", || {
                    ws.run(
                        cell,
                        params,
                        &Sequence::new(xs.view(), loss).with_h0(h0v),
                        &Run::new(tr.clone()).options(opts),
                    )
                }) {
                    check_report(fz, "bptt::run_with", &r, inputs_finite);
                }
                fz.call("Workspace::tape_stats", || ws.tape_stats());
            }
            40..=49 => {
                let stride = match fz.below(6) {
                    0 => None,
                    1 => Some(0),
                    2 => Some(fz.pick(&[usize::MAX, usize::MAX - 1, 1 << 40])),
                    _ => Some(1 + fz.below(t + 2)),
                };
                if let Some(Ok(r)) = fz.try_call("bptt::checkpointed", || {
                    bptt::run(
                        cell,
                        params,
                        &Sequence::new(xs.view(), loss).with_h0(h0v),
                        &Run::new(Truncation::Full)
                            .memory(Memory::Checkpointed { stride })
                            .options(opts),
                    )
                }) {
                    check_report(fz, "bptt::checkpointed", &r, inputs_finite);
                }
            }
            50..=64 => stream(fz, cell, params, &data, t, b, dx, &tr, opts),
            65..=74 => {
                let mut tape = Tape::new();
                tape.set_check_finite(fz.chance(0.2));
                let edges = if fz.chance(0.5) {
                    None
                } else {
                    let n = if fz.chance(0.9) { t } else { t + 1 };
                    Some(
                        (0..n)
                            .map(|_| match fz.below(4) {
                                0 => Edge::Detach,
                                1 => Edge::Scale(F::of(fz.factor(-2.0, 3.0))),
                                _ => Edge::Keep,
                            })
                            .collect::<Vec<Edge<F>>>(),
                    )
                };
                let out = match &edges {
                    None => fz.try_call("rnn::unroll", || {
                        bptt::unroll(
                            cell,
                            &mut tape,
                            params,
                            &Sequence::new(xs.view(), loss).with_h0(h0v),
                        )
                    }),
                    Some(e) => fz.try_call("rnn::unroll_with_edges", || {
                        bptt::Unroll::new(cell, params)
                            .edges(e)
                            .record(&mut tape, &Sequence::new(xs.view(), loss).with_h0(h0v))
                    }),
                };
                if let Some(Ok(u)) = out {
                    fz.ensure(
                        inputs_finite,
                        "rnn::unroll_with_edges",
                        "Ok from a non-finite input",
                        String::new,
                    );
                    if let Some(Ok(grads)) = fz.try_call("backward", || tape.backward(u.loss)) {
                        let loss_ok = fz.try_call("Tape::scalar", || tape.scalar(u.loss));
                        fz.ensure(
                            grads_finite(&grads) && matches!(loss_ok, Some(Ok(l)) if fin(l)),
                            "backward",
                            "Ok with a non-finite loss or gradient (after rnn::unroll)",
                            String::new,
                        );
                        fz.try_call("diagnostics::dh_norms", || {
                            diagnostics::dh_norms(&tape, &u.states)
                        });
                    }
                }
            }
            75..=82 => {
                // One segment by hand, from a state that may be foreign or of a bad shape.
                let mut tape = Tape::new();
                let n = if fz.chance(0.9) { t } else { t + 1 };
                let edges: Vec<Edge<F>> = (0..n)
                    .map(|_| match fz.below(4) {
                        0 => Edge::Detach,
                        1 => Edge::Scale(F::of(fz.factor(-2.0, 3.0))),
                        _ => Edge::Keep,
                    })
                    .collect();
                let seq = Sequence::new(xs.view(), loss).with_h0(h0v);
                let run = fz.try_call("bptt::Unroll::record", || {
                    bptt::Unroll::new(cell, &*params)
                        .edges(&edges)
                        .record(&mut tape, &seq)
                });
                if let Some(Ok(run)) = run {
                    if let Some(Ok(grads)) = fz.try_call("backward", || tape.backward(run.loss)) {
                        fz.ensure(
                            grads_finite(&grads),
                            "backward",
                            "Ok with a non-finite gradient (after bptt::Unroll::record)",
                            String::new,
                        );
                    }
                }
            }
            83..=89 => {
                let pi = any_pi(fz);
                if t <= 4 {
                    if let Some(Ok(m)) = fz.try_call("enumerate::randomized_moments", || {
                        enumerate::randomized_moments(
                            cell,
                            params,
                            &Sequence::new(xs.view(), loss).with_h0(h0v),
                            &pi,
                        )
                    }) {
                        if !grads_finite(&m.mean) || !grads_finite(&m.variance) {
                            fz.observe(
                                "enumerate::randomized_moments",
                                "Ok with a non-finite mean or variance",
                                format!("{pi:?}"),
                            );
                        }
                    }
                }
            }
            90..=95 => {
                if let Some(rnn) = rnn {
                    closed_forms(fz, rnn, params, &xs, h0v, &data, t);
                }
            }
            _ => {
                let Some(ids) = fz.call("Params::ids", || params.ids().collect::<Vec<_>>()) else {
                    continue;
                };
                let mut ids = ids;
                let mut next = 1000;
                mutate_params(fz, params, &mut ids, &[], &mut next);
            }
        }
    }
}

/// `Stream`: steps pushed one at a time (some of the wrong shape, with a non-finite α or
/// input, or a change of target kind), then `finish`.
#[allow(clippy::too_many_arguments)]
fn stream<F: Scalar, C: Recurrent<F>>(
    fz: &mut Fuzz,
    cell: &C,
    params: &Params<F>,
    data: &LossData<F>,
    t: usize,
    b: usize,
    dx: usize,
    tr: &Truncation,
    opts: RunOptions,
) {
    let batch = if fz.chance(0.95) { b } else { b + 1 };
    let q = cell.output_width().min(8);
    let tr = tr.clone();
    let Some(Ok(mut st)) = fz.try_call("Stream::new", || {
        Stream::new(cell, params, batch, &Run::new(tr).options(opts))
    }) else {
        return;
    };
    let mut inputs_finite = true;
    if fz.chance(0.2) {
        let shape = if fz.chance(0.8) {
            (batch, cell.state_width().min(8))
        } else {
            fz.shape()
        };
        let h0 = fz.mostly_clean::<F>(shape);
        inputs_finite &= all_finite(h0.view());
        match fz.try_call("Stream::with_initial_state", || {
            st.with_initial_state(h0.view())
        }) {
            Some(Ok(s)) => st = s,
            _ => return,
        }
    }
    let steps = if fz.chance(0.9) { t } else { fz.below(6) };
    for step in 0..steps {
        let shape = if fz.chance(0.96) {
            (batch, dx)
        } else {
            fz.shape()
        };
        let x = fz.matrix::<F>(shape);
        let alpha = F::of(if fz.chance(0.95) {
            fz.rng.random_range(0.0..2.0)
        } else {
            fz.special()
        });
        let labels: Vec<usize> = if step < data.labels.nrows() && fz.chance(0.95) {
            data.labels.row(step).to_vec()
        } else {
            (0..batch + fz.below(2)).map(|_| fz.below(q + 1)).collect()
        };
        let vshape = if fz.chance(0.95) {
            (batch, q)
        } else {
            fz.shape()
        };
        let values = fz.matrix::<F>(vshape);
        let kind = if fz.chance(0.9) {
            data.kind % 2
        } else {
            fz.below(3)
        };
        let target = match kind {
            0 => StepTarget::Classes(&labels),
            1 => StepTarget::Values(values.view()),
            _ => StepTarget::None,
        };
        let pushed_finite = all_finite(x.view()) && fin(alpha);
        let values_finite = kind != 1 || all_finite(values.view());
        match fz.try_call("Stream::push", || st.push(x.view(), target, alpha)) {
            Some(Ok(())) => {
                fz.ensure(
                    pushed_finite && values_finite,
                    "Stream::push",
                    "accepted a non-finite input, α or target",
                    String::new,
                );
                inputs_finite &= pushed_finite && values_finite;
            }
            Some(Err(_)) => {
                // "do not keep using it" after some errors: mostly stop here.
                if fz.chance(0.7) {
                    break;
                }
            }
            None => return,
        }
    }
    fz.call("Stream::steps", || st.steps());
    if let Some(Ok(r)) = fz.try_call("Stream::finish", || st.finish()) {
        check_report(fz, "Stream::finish", &r, inputs_finite);
    }
}

/// The closed forms of an `Rnn` (no finiteness rule: panics only).
fn closed_forms<F: Scalar>(
    fz: &mut Fuzz,
    rnn: &Rnn,
    params: &Params<F>,
    xs: &Array3<F>,
    h0: Option<ArrayView2<'_, F>>,
    data: &LossData<F>,
    t: usize,
) {
    let loss = data.loss();
    let xs = xs.view();
    match fz.below(9) {
        0 => {
            fz.try_call("closed_form::m1_recursion", || {
                closed_form::m1_recursion(params, rnn, &Sequence::new(xs, loss).with_h0(h0))
                    .map(|_| ())
            });
        }
        1 => {
            fz.try_call("closed_form::m1_power_sum", || {
                closed_form::m1_power_sum(params, rnn, &Sequence::new(xs, loss).with_h0(h0))
                    .map(|_| ())
            });
        }
        2 => {
            fz.try_call("closed_form::m2", || {
                closed_form::m2(params, rnn, &Sequence::new(xs, loss).with_h0(h0)).map(|_| ())
            });
        }
        3 => {
            fz.try_call("closed_form::m2_outer", || {
                closed_form::m2_outer(params, rnn, &Sequence::new(xs, loss).with_h0(h0)).map(|_| ())
            });
        }
        4 => {
            fz.try_call("closed_form::m3", || {
                closed_form::m3(params, rnn, &Sequence::new(xs, loss).with_h0(h0)).map(|_| ())
            });
        }
        5 => {
            fz.try_call("closed_form::m4", || {
                closed_form::m4(params, rnn, &Sequence::new(xs, loss).with_h0(h0)).map(|_| ())
            });
        }
        6 => {
            let n = if fz.chance(0.9) { t } else { t + 1 };
            let cuts: Vec<bool> = (0..n).map(|_| fz.chance(0.3)).collect();
            fz.try_call("closed_form::truncated", || {
                closed_form::truncated(params, rnn, &Sequence::new(xs, loss).with_h0(h0), &cuts)
                    .map(|_| ())
            });
        }
        7 => {
            let k = block(fz, t);
            fz.try_call("closed_form::truncated_fixed", || {
                closed_form::truncated_fixed(params, rnn, &Sequence::new(xs, loss).with_h0(h0), k)
                    .map(|_| ())
            });
        }
        _ => {
            fz.try_call("M3Workspace::run", || {
                let mut ws = closed_form::M3Workspace::new();
                let out = ws.run(params, rnn, &Sequence::new(xs, loss).with_h0(h0));
                let _ = (ws.loss(), ws.dh().len(), ws.dh0().len(), ws.bytes());
                out.and_then(|_| ws.grads(params)).map(|_| ())
            });
        }
    }
}

// =======================================================================================
// The test.
// =======================================================================================

type Family = fn(&mut Fuzz);

/// The families with their weights.
const FAMILIES: [(&str, usize, Family); 12] = [
    ("tape<f64>", 18, tape_family::<f64>),
    ("tape<f32>", 12, tape_family::<f32>),
    ("params+optim<f64>", 8, optim_family::<f64>),
    ("params+optim<f32>", 6, optim_family::<f32>),
    ("gradcheck", 6, gradcheck_family),
    ("diagnostics<f64>", 3, diagnostics_family::<f64>),
    ("diagnostics<f32>", 2, diagnostics_family::<f32>),
    ("xi+enumerate", 5, xi_family),
    ("absurd sizes<f64>", 2, absurd_family::<f64>),
    ("absurd sizes<f32>", 2, absurd_family::<f32>),
    ("rnn+bptt<f64>", 22, bptt_family::<f64>),
    ("rnn+bptt<f32>", 14, bptt_family::<f32>),
];

/// One episode: one family, chosen and driven by `seed`.
fn episode(seed: u64, verbose: bool) -> Fuzz {
    let mut fz = Fuzz::new(seed, verbose);
    let total: usize = FAMILIES.iter().map(|f| f.1).sum();
    let mut r = fz.below(total);
    let (name, _, family) = *FAMILIES
        .iter()
        .find(|f| {
            if r < f.1 {
                true
            } else {
                r -= f.1;
                false
            }
        })
        .expect("r < the total weight");
    fz.family = name;
    if verbose {
        println!("episode seed {seed}: {name}");
    }
    // A panic here is outside any call into the crate: a bug of this test.
    if catch_unwind(AssertUnwindSafe(|| family(&mut fz))).is_err() {
        fz.fail("(harness)", "panic in the test itself", String::new());
    }
    fz
}

fn env<T: std::str::FromStr>(name: &str) -> Option<T> {
    let v = std::env::var(name).ok()?;
    match v.trim().parse() {
        Ok(x) => Some(x),
        Err(_) => panic!("{name}={v:?} does not parse"),
    }
}

#[test]
fn fuzz_public_api() {
    install_panic_hook();
    let verbose = env::<u8>("TIMETAPE_FUZZ_VERBOSE").is_some_and(|v| v != 0);
    let (base, max_episodes, budget) = match env::<u64>("TIMETAPE_FUZZ_SEED") {
        Some(seed) => (seed, 1, Duration::MAX),
        None => (
            env("TIMETAPE_FUZZ_BASE").unwrap_or(0),
            env("TIMETAPE_FUZZ_EPISODES").unwrap_or(400_000u64),
            Duration::from_secs_f64(env("TIMETAPE_FUZZ_SECS").unwrap_or(40.0)),
        ),
    };
    let start = Instant::now();
    let (mut episodes, mut calls) = (0u64, 0u64);
    let mut per_family: BTreeMap<&str, (u64, u64)> = BTreeMap::new();
    let mut findings: Vec<Finding> = Vec::new();
    let mut observations: Vec<Finding> = Vec::new();
    let mut tally: BTreeMap<&str, [u64; 3]> = BTreeMap::new();
    let mut slowest = (Duration::ZERO, 0u64, "");
    while episodes < max_episodes && start.elapsed() < budget {
        let seed = base.wrapping_add(episodes);
        let t0 = Instant::now();
        let fz = episode(seed, verbose);
        let took = t0.elapsed();
        if took > slowest.0 {
            slowest = (took, seed, fz.family);
        }
        episodes += 1;
        calls += fz.calls;
        let e = per_family.entry(fz.family).or_default();
        e.0 += 1;
        e.1 += fz.calls;
        for (op, n) in &fz.tally {
            let t = tally.entry(*op).or_default();
            for i in 0..3 {
                t[i] += n[i];
            }
        }
        findings.extend(fz.findings);
        observations.extend(fz.observations);
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "fuzz_public_api: {episodes} episodes (seeds {base}..{}), {calls} calls in {secs:.1} s \
         ({:.0} calls/s); slowest episode: seed {} ({}), {:?}",
        base.wrapping_add(episodes),
        calls as f64 / secs,
        slowest.1,
        slowest.2,
        slowest.0
    );
    for (family, (n, c)) in &per_family {
        println!("  {family:>20}: {n:>7} episodes, {c:>9} calls");
    }
    println!("outcomes per op (Ok/Err/panic):");
    let mut line = String::new();
    for (op, [ok, err, panics]) in &tally {
        let item = format!("{op} {ok}/{err}/{panics}; ");
        if line.len() + item.len() > 100 {
            println!("  {}", line.trim_end());
            line.clear();
        }
        line.push_str(&item);
    }
    println!("  {}", line.trim_end());
    summarize("observation (not a failure)", &observations);
    summarize("FINDING", &findings);
    assert!(
        findings.is_empty(),
        "{} findings (panics or broken rules) in {calls} calls: see above; replay one with \
         TIMETAPE_FUZZ_SEED=<seed> TIMETAPE_FUZZ_VERBOSE=1",
        findings.len()
    );
}

/// Prints the findings grouped by (op, rule, panic location): the count, and the first
/// occurrence with its seed and call index.
fn summarize(label: &str, list: &[Finding]) {
    let mut groups: BTreeMap<(&str, &str, String), (usize, &Finding)> = BTreeMap::new();
    for f in list {
        let key_detail = if f.what == "panic" {
            f.detail.rsplit(" at ").next().unwrap_or("").to_string()
        } else {
            String::new()
        };
        groups
            .entry((f.op, f.what, key_detail))
            .and_modify(|e| e.0 += 1)
            .or_insert((1, f));
    }
    for ((op, what, _), (n, f)) in &groups {
        println!(
            "{label}: {op}: {what} ({n}×; first: seed {}, call {}, family {}): {}",
            f.seed, f.call, f.family, f.detail
        );
    }
}

// =======================================================================================
// Absurd allocations, in a child process.
// =======================================================================================

/// Sizes whose byte count fits in `isize` but that no machine can grant (2^40 entries
/// and more): the crate must refuse them with an error before asking the allocator, whose
/// failure aborts the process. An abort cannot be caught in-process, so each case runs in
/// a child (this test binary again, with `TIMETAPE_FUZZ_CHILD=<case>`) whose address
/// space `ulimit -v` limits to 32 GiB: an attempt fails at once whatever the OS's
/// overcommit policy, and an abort shows as the child's exit status.
const CHILD_CASES: [&str; 10] = [
    "Rnn::new with input 2^40",
    "Gru::new with output 2^40",
    "Lstm::new with input 2^40",
    "init::uniform of (2^40, 1)",
    "Stream::new with batch 2^40",
    "bptt::run with Rnn.config.hidden = 2^40",
    "rnn::unroll with Rnn.config.hidden = 2^40",
    "bptt::fixed_pattern(2^40, 1)",
    "Truncation::Full.xi(2^40)",
    "closed_form::block_starts(2^43, 1)",
];

/// Runs one case of [`CHILD_CASES`] and gives its outcome.
fn child_case(case: &str) -> String {
    const N: usize = 1 << 40;
    let mut params = Params::<f64>::new();
    let xs = Array3::<f64>::zeros((2, 1, 2));
    let labels = Array2::<usize>::zeros((2, 1));
    let loss = SequenceLoss::classes(labels.view());
    let mut m3 = || models::m3(&mut params, Sizes::new(2, 3, 2), 0);
    let outcome: timetape::Result<()> = match case {
        "Rnn::new with input 2^40" => {
            Rnn::new(&mut Params::<f64>::new(), RnnConfig::new(N, 2, 2), 0).map(drop)
        }
        "Gru::new with output 2^40" => {
            Gru::new(&mut Params::<f64>::new(), Sizes::new(2, 2, N), 0).map(drop)
        }
        "Lstm::new with input 2^40" => {
            Lstm::new(&mut Params::<f64>::new(), Sizes::new(N, 2, 2), 0).map(drop)
        }
        "init::uniform of (2^40, 1)" => {
            init::uniform::<f64>((N, 1), 1.0, &mut init::rng(0)).map(drop)
        }
        "Stream::new with batch 2^40" => m3().and_then(|cell| {
            let p = Params::<f64>::new();
            Stream::new(&cell, &p, N, &Run::new(Truncation::Full)).map(drop)
        }),
        "bptt::run with Rnn.config.hidden = 2^40" => m3().and_then(|mut cell| {
            cell.config.hidden = N;
            let p = Params::<f64>::new();
            let full = Truncation::Full;
            bptt::run(
                &cell,
                &p,
                &Sequence::new(xs.view(), loss),
                &Run::new(full.clone()),
            )
            .map(drop)
        }),
        "rnn::unroll with Rnn.config.hidden = 2^40" => m3().and_then(|mut cell| {
            cell.config.hidden = N;
            let p = Params::<f64>::new();
            bptt::unroll(&cell, &mut Tape::new(), &p, &Sequence::new(xs.view(), loss)).map(drop)
        }),
        "bptt::fixed_pattern(2^40, 1)" => bptt::fixed_pattern(N, 1).map(drop),
        "Truncation::Full.xi(2^40)" => Truncation::Full.xi(N).map(drop),
        "closed_form::block_starts(2^43, 1)" => closed_form::block_starts(N << 3, 1).map(drop),
        _ => panic!("unknown case {case:?}"),
    };
    format!("{outcome:?}")
}

/// The child's side of [`absurd_allocations_fail_fast`]: does nothing unless
/// `TIMETAPE_FUZZ_CHILD` names a case.
#[test]
fn absurd_allocation_child() {
    if let Ok(case) = std::env::var("TIMETAPE_FUZZ_CHILD") {
        println!("child outcome: {}", child_case(&case));
    }
}

#[cfg(target_os = "linux")]
#[test]
fn absurd_allocations_fail_fast() {
    use std::process::{Command, Stdio};
    if std::env::var_os("TIMETAPE_FUZZ_CHILD").is_some() {
        return;
    }
    let exe = std::env::current_exe().expect("the path of this test binary");
    let script = "ulimit -v 33554432 && exec \"$0\" --exact absurd_allocation_child \
                  --nocapture --test-threads=1";
    let mut failures = Vec::new();
    for case in CHILD_CASES {
        let start = Instant::now();
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(script)
            .arg(&exe)
            .env("TIMETAPE_FUZZ_CHILD", case)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("sh runs");
        let mut timed_out = false;
        while child
            .try_wait()
            .expect("the child can be waited for")
            .is_none()
        {
            if start.elapsed() > Duration::from_secs(30) {
                let _ = child.kill();
                timed_out = true;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let out = child.wait_with_output().expect("the child's output");
        let took = start.elapsed();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        let outcome = stdout
            .lines()
            .find_map(|l| l.split_once("child outcome: ").map(|(_, o)| o));
        let why = stderr
            .lines()
            .find(|l| l.contains("memory allocation") || l.contains("panicked"))
            .unwrap_or("");
        println!(
            "absurd allocation: {case}: {} in {took:?}",
            outcome.unwrap_or("-")
        );
        match outcome {
            _ if timed_out => failures.push(format!("{case}: no answer within 30 s")),
            Some(o) if out.status.success() && o.starts_with("Err") => {
                if took > Duration::from_secs(5) {
                    failures.push(format!("{case}: slow to refuse ({took:?})"));
                }
            }
            Some(o) => failures.push(format!("{case}: returned {o}")),
            None => failures.push(format!("{case}: the child died ({}): {why}", out.status)),
        }
    }
    for f in &failures {
        println!("FINDING: {f}");
    }
    assert!(
        failures.is_empty(),
        "{} absurd sizes were not refused with an error: see above",
        failures.len()
    );
}
