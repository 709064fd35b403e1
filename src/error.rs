//! The crate's error type.

use thiserror::Error;

/// Everything a user of timetape can get wrong, reported instead of a panic,
/// a silent NaN or a wrong answer.
///
/// Every message names the operation and, where shapes are involved, both shapes.
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
    /// Two operands whose shapes do not fit the operation.
    #[error("shape mismatch in {op}: {lhs:?} and {rhs:?}")]
    ShapeMismatch {
        /// The operation that was asked for.
        op: &'static str,
        /// Shape of the first operand (rows, cols).
        lhs: (usize, usize),
        /// Shape of the second operand (rows, cols).
        rhs: (usize, usize),
    },
    /// A `Var` that was created by another tape.
    #[error("{op}: the Var belongs to another tape")]
    ForeignVar {
        /// The operation that was asked for.
        op: &'static str,
    },
    /// A `Var` created before the tape was last cleared.
    #[error("{op}: the Var is stale (created before the tape was cleared)")]
    StaleVar {
        /// The operation that was asked for.
        op: &'static str,
    },
    /// A `ParamId` that does not belong to the `Params` store it was used with.
    #[error("{op}: the ParamId does not belong to this parameter store")]
    ForeignParam {
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
    /// `backward` was called on a value that is not 1×1.
    #[error("backward: the loss must be 1×1, got {shape:?}")]
    NonScalarLoss {
        /// Shape of the value given as the loss.
        shape: (usize, usize),
    },
    /// An empty input: an empty sequence, a matrix with no rows or columns, no seeds.
    #[error("{op}: empty input ({what})")]
    EmptyInput {
        /// The operation that was asked for.
        op: &'static str,
        /// What was empty.
        what: &'static str,
    },
    /// An argument outside its allowed range (π outside (0, 1], k = 0, k2 < k1, a
    /// non-finite scale, a duplicate name, a log of a non-positive value, ...).
    #[error("{op}: invalid argument: {msg}")]
    InvalidArgument {
        /// The operation that was asked for.
        op: &'static str,
        /// What is wrong with it.
        msg: String,
    },
}

/// `Result` with [`Error`](enum@Error).
pub type Result<T> = std::result::Result<T, Error>;

pub(crate) fn invalid(op: &'static str, msg: impl Into<String>) -> Error {
    Error::InvalidArgument {
        op,
        msg: msg.into(),
    }
}
