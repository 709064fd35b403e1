//! Binomial checkpointing ("Revolve", Griewank 1992; Griewank & Walther 2000; for BPTT,
//! Gruslys et al. 2016): the exact full-BPTT gradient with at most s stored states and
//! the fewest forward steps any schedule with s states can take.
//!
//! With s states (the initial state h_0 counts as one) and T steps, the repetition number
//! r is the least r with `C(s + r, s) ≥ T`, and the optimal schedule computes
//!
//! ```text
//! T + r·T − C(s + r, s + 1)
//! ```
//!
//! forward steps: each step recorded on the tape once (T), and r·T − C(s + r, s + 1)
//! steps advanced without a tape to reach the states it needs. [`schedule`] gives the
//! actions; [`Memory::Revolve`](super::Memory::Revolve) runs them, so that a test can
//! replay the schedule and count.
//!
//! ```
//! use timetape::bptt::revolve::{optimal_forward_steps, schedule, Action};
//!
//! assert_eq!(optimal_forward_steps(1000, 10)?, 4636);
//! let actions = schedule(1000, 10)?;
//! let advanced: usize = actions
//!     .iter()
//!     .map(|a| match a {
//!         Action::Advance { from, to } => to - from,
//!         _ => 0,
//!     })
//!     .sum();
//! assert_eq!(advanced + 1000, 4636);
//! # Ok::<(), timetape::Error>(())
//! ```

use crate::error::{invalid, Result};

/// One action of a checkpointing schedule over steps `0..T` (step t maps the state
/// after t steps, "state t", to state t + 1; state 0 is h_0).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Compute states `from + 1 ..= to` without a tape, starting from state `from`
    /// (stored, or the state the previous action ended on).
    Advance {
        /// The state to start from.
        from: usize,
        /// The state reached.
        to: usize,
    },
    /// Keep state `at` among the stored states.
    Store {
        /// The state kept.
        at: usize,
    },
    /// Record step `step` on the tape from state `step` (stored, or the state the
    /// previous action ended on), with its loss, and backpropagate it, seeded with
    /// ∂L/∂h at its end (carried back by the previous reversal): gives ∂L/∂h at state
    /// `step`.
    Reverse {
        /// The step recorded and backpropagated.
        step: usize,
    },
    /// Drop stored state `at`.
    Free {
        /// The state dropped.
        at: usize,
    },
}

/// `C(n, k)`, saturating at `u128::MAX`.
fn binom(n: u64, k: u64) -> u128 {
    if k > n {
        return 0;
    }
    let k = k.min(n - k);
    let mut c: u128 = 1;
    for i in 0..k {
        // c · (n − i) / (i + 1) stays an integer at every step.
        c = match c.checked_mul((n - i) as u128) {
            Some(x) => x / (i as u128 + 1),
            None => return u128::MAX,
        };
    }
    c
}

/// The repetition number: the least r with `C(s + r, s) ≥ t_len`.
fn repetitions(t_len: usize, s: usize) -> u64 {
    let mut r = 0u64;
    while binom(s as u64 + r, s as u64) < t_len as u128 {
        r += 1;
    }
    r
}

fn check(t_len: usize, s: usize) -> Result<()> {
    if s == 0 {
        return Err(invalid(
            "revolve",
            "at least one stored state (h_0) is needed",
        ));
    }
    if t_len == 0 {
        return Err(invalid("revolve", "a schedule needs at least one step"));
    }
    Ok(())
}

/// The forward steps of the optimal schedule with `s` stored states over `t_len` steps:
/// `T + r·T − C(s + r, s + 1)` (module docs).
///
/// Errors: [`crate::Error::InvalidArgument`] for s = 0 or T = 0.
pub fn optimal_forward_steps(t_len: usize, s: usize) -> Result<usize> {
    check(t_len, s)?;
    // More states than steps change nothing (and keep the arithmetic in range).
    let s = s.min(t_len);
    let r = repetitions(t_len, s);
    let advanced = r as u128 * t_len as u128 - binom(s as u64 + r, s as u64 + 1);
    usize::try_from(advanced + t_len as u128)
        .map_err(|_| invalid("revolve", "the number of forward steps overflows"))
}

/// The binomial schedule with at most `s` stored states (h_0 included) over `t_len`
/// steps: it starts by storing state 0, ends having reversed step 0, reverses every step
/// once (last first) and never holds more than `s` states. Its forward steps (advanced
/// plus reversed) are [`optimal_forward_steps`].
///
/// Errors: [`crate::Error::InvalidArgument`] for s = 0 or T = 0.
pub fn schedule(t_len: usize, s: usize) -> Result<Vec<Action>> {
    check(t_len, s)?;
    let mut out = vec![Action::Store { at: 0 }];
    reverse(0, t_len, s.min(t_len), &mut out);
    out.push(Action::Free { at: 0 });
    Ok(out)
}

/// Reverses steps `a..b` with `s` stored states, state a being one of them.
fn reverse(a: usize, b: usize, s: usize, out: &mut Vec<Action>) {
    let n = b - a;
    if n == 1 {
        out.push(Action::Reverse { step: a });
        return;
    }
    if s == 1 {
        for j in (a + 1..b).rev() {
            out.push(Action::Advance { from: a, to: j });
            out.push(Action::Reverse { step: j });
        }
        out.push(Action::Reverse { step: a });
        return;
    }
    let k = split(n, s);
    out.push(Action::Advance { from: a, to: a + k });
    out.push(Action::Store { at: a + k });
    reverse(a + k, b, s - 1, out);
    out.push(Action::Free { at: a + k });
    reverse(a, a + k, s, out);
}

/// Where to store the next state, k steps past the stored one, for n ≥ 2 steps and
/// s ≥ 2 states: the left part (k steps, s states, one repetition fewer) and the right
/// part (n − k steps, s − 1 states) must each reach their own optimum at repetition
/// numbers r − 1 and r, which holds for any k in
/// `[max(C(s+r−2, s), n − C(s+r−1, s−1)), min(C(s+r−1, s), n − C(s+r−2, s−1))]`
/// (the optimum is `max_r (r·n − C(s + r, s + 1))`, attained at those r). The least
/// such k.
fn split(n: usize, s: usize) -> usize {
    let r = repetitions(n, s);
    let (s64, n128) = (s as u64, n as u128);
    let c = |top: u64, k: u64| binom(top, k);
    let lower = c(s64 + r - 2, s64).max(n128.saturating_sub(c(s64 + r - 1, s64 - 1)));
    lower.max(1).min(n128 - 1) as usize
}
