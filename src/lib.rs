//! # timetape
//!
//! Backpropagation through time on a small, fast tape.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod error;
pub mod gradcheck;
pub mod ops;
pub mod params;
pub mod scalar;
pub mod tape;

pub use error::{Error, Result};
pub use ops::{Axis, Binary, Reduction, Unary};
pub use params::{Grads, ParamId, Params};
pub use scalar::Scalar;
pub use tape::{Tape, TapeStats, Var};
pub mod bptt;
pub mod init;
pub mod rnn;
pub mod diagnostics;
pub mod optim;
