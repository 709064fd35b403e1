//! The crate's error type.

use thiserror::Error;

/// Everything a user of timetape can get wrong, reported instead of a panic,
/// a silent NaN or a wrong answer.
///
/// Every message names the operation and, where shapes are involved, both shapes.
/// Non-finite values follow one policy (crate docs, "Non-finite values"): an `Ok`
/// result is finite, and [`Error::NonFinite`] says where a NaN or ±∞ was found.
/// Shapes are `(rows, cols)`; a length n (of labels, weights, a ξ pattern) is written
/// `(n, 1)`. `Error` is `Clone + PartialEq`, so a test can match on it.
///
/// ```
/// use ndarray::Array2;
/// use timetape::{Error, Tape};
///
/// let mut tape = Tape::<f64>::new();
/// let a = tape.constant(Array2::zeros((2, 3)))?;
/// let b = tape.constant(Array2::zeros((2, 3)))?;
/// // (2×3)·(2×3) is not a matrix product.
/// let err = tape.matmul(a, b).unwrap_err();
/// assert!(matches!(err, Error::ShapeMismatch { op: "matmul", .. }));
/// assert_eq!(err.to_string(), "shape mismatch in matmul: (2, 3) and (2, 3)");
/// # Ok::<(), Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Error)]
pub enum Error {
    /// Two shapes that do not fit the operation: two operands, or an argument and the
    /// shape it must have.
    #[error("shape mismatch in {op}: {lhs:?} and {rhs:?}")]
    ShapeMismatch {
        /// The operation that was asked for.
        op: &'static str,
        /// Shape of the first operand, or the shape that was expected.
        lhs: (usize, usize),
        /// Shape of the second operand, or the shape that was given.
        rhs: (usize, usize),
    },
    /// A [`Var`](crate::Var) that was created by another tape.
    #[error("{op}: the Var belongs to another tape")]
    ForeignVar {
        /// The operation that was asked for.
        op: &'static str,
    },
    /// A [`Var`](crate::Var) created before the tape was last cleared.
    #[error("{op}: the Var is stale (created before the tape was cleared)")]
    StaleVar {
        /// The operation that was asked for.
        op: &'static str,
    },
    /// A [`ParamId`](crate::ParamId) that does not belong to the [`Params`](crate::Params)
    /// store (or the [`Grads`](crate::Grads)) it was used with.
    #[error("{op}: the ParamId does not belong to this parameter store")]
    ForeignParam {
        /// The operation that was asked for.
        op: &'static str,
    },
    /// A parameter with no gradient in a [`Grads`](crate::Grads): the loss of the
    /// backward pass does not reach it, or it was not registered on the tape.
    #[error("{op}: no gradient for this parameter (the loss does not reach it)")]
    NoGradient {
        /// The operation that was asked for.
        op: &'static str,
    },
    /// A class label that is not below the number of classes.
    #[error("{op}: label {label} out of range for {classes} classes")]
    LabelOutOfRange {
        /// The operation that was asked for.
        op: &'static str,
        /// The offending label.
        label: usize,
        /// Number of classes (columns of the logits).
        classes: usize,
    },
    /// A value used as a loss that is not 1×1: given to
    /// [`Tape::backward`](crate::Tape::backward) or read with
    /// [`Tape::scalar`](crate::Tape::scalar).
    #[error("{op}: the loss must be 1×1, got {shape:?}")]
    NonScalarLoss {
        /// The operation that was asked for (`backward`, `scalar`).
        op: &'static str,
        /// Shape of the value given as the loss.
        shape: (usize, usize),
    },
    /// An empty input: a sequence with no steps or no batch rows, a matrix with no
    /// elements, no seeds, no parts to concatenate, an empty parameter name.
    #[error("{op}: empty input ({what})")]
    EmptyInput {
        /// The operation that was asked for.
        op: &'static str,
        /// What was empty.
        what: &'static str,
    },
    /// A NaN or infinite value where a finite one is required: an input, a parameter
    /// (registered on a tape, or loaded with [`Params::set`](crate::Params::set)), the
    /// value a backward pass starts from, a gradient, a loss; or, with
    /// [`Tape::set_check_finite`](crate::Tape::set_check_finite), the first op whose
    /// output is not finite (an overflow). See the crate docs, "Non-finite values".
    #[error("{op}: non-finite value ({what})")]
    NonFinite {
        /// The operation that found (or, when checking every op, produced) the value.
        op: &'static str,
        /// Where it is: which input, parameter, node or step.
        what: String,
    },
    /// An argument outside its allowed range (π outside (0, 1], k = 0, k2 < k1, a
    /// non-finite scale, weight or ξ, a duplicate name, a log of a non-positive
    /// value, a model that does not fit a closed form, ...).
    #[error("{op}: invalid argument: {msg}")]
    InvalidArgument {
        /// The operation that was asked for.
        op: &'static str,
        /// What is wrong with it.
        msg: String,
    },
    /// Reading or writing a file failed (the operating system's reason).
    #[error("{op}: cannot {what}")]
    Io {
        /// The operation that was asked for.
        op: &'static str,
        /// What could not be done, with the path and the system's message.
        what: String,
    },
    /// A file (a checkpoint, a PyTorch `state_dict`) whose content is not what the
    /// operation expects: a missing or unexpected key, a wrong shape or dtype, a
    /// truncated or corrupted file (a checksum that does not match). Nothing is
    /// loaded when this is returned.
    #[error("{op}: {key}: {what}")]
    BadFile {
        /// The operation that was asked for.
        op: &'static str,
        /// The key (tensor or metadata entry) concerned, or `file` for the file as a
        /// whole.
        key: String,
        /// What is wrong with it.
        what: String,
    },
}

impl Error {
    /// A [`Error::NonFinite`] raised at local step `t` (0-based) of an unroll, with its
    /// step named (1-based, as in the notes); other errors unchanged.
    pub(crate) fn at_step(self, t: usize) -> Self {
        match self {
            Error::NonFinite { op, what } => Error::NonFinite {
                op,
                what: format!("{what}, at step {}", t + 1),
            },
            e => e,
        }
    }

    /// Shifts a step named by [`Error::at_step`] in a segment that starts `offset`
    /// steps into the sequence, so that the message names the step of the sequence.
    pub(crate) fn at_step_offset(self, offset: usize) -> Self {
        match self {
            Error::NonFinite { op, what } if offset > 0 => {
                let shifted = what
                    .rsplit_once(", at step ")
                    .and_then(|(head, t)| Some((head, t.parse::<usize>().ok()?)))
                    .map(|(head, t)| format!("{head}, at step {}", t + offset));
                Error::NonFinite {
                    op,
                    what: shifted.unwrap_or(what),
                }
            }
            e => e,
        }
    }
}

/// `Result` with [`Error`](enum@Error).
pub type Result<T> = std::result::Result<T, Error>;

pub(crate) fn bad_file(op: &'static str, key: impl Into<String>, what: impl Into<String>) -> Error {
    Error::BadFile {
        op,
        key: key.into(),
        what: what.into(),
    }
}

pub(crate) fn invalid(op: &'static str, msg: impl Into<String>) -> Error {
    Error::InvalidArgument {
        op,
        msg: msg.into(),
    }
}
