//! Errors returned by the library.
use thiserror::Error;

/// Everything that can go wrong in a DEQ forward or backward set-up.
///
/// Numerical failures of a solve (divergence, non-finite values) are *not* errors: they are
/// reported per sample in [`SolverStats`](crate::SolverStats), so that one bad sample does not
/// fail the batch.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum DeqError {
    /// A configuration field has a value that cannot work.
    #[error("invalid setting `{field}` = {value}: {reason}")]
    InvalidConfig {
        /// The field, e.g. `solver.tol`.
        field: &'static str,
        /// The value given.
        value: String,
        /// What is required of it.
        reason: &'static str,
    },
    /// Two tensors that must agree in shape do not.
    #[error("shape mismatch: {what} has shape {found:?}, expected {expected:?}")]
    ShapeMismatch {
        /// Which tensor is wrong, e.g. `f(z0) output`.
        what: &'static str,
        /// The shape that was required.
        expected: Vec<usize>,
        /// The shape found.
        found: Vec<usize>,
    },
    /// The user's function `f` panicked on its first evaluation (typically a shape error inside
    /// Burn); the message is Burn's.
    #[error(
        "the DEQ function f failed on its first evaluation at z0 with shape {z0_shape:?}: {message}"
    )]
    FunctionFailed {
        /// Shape of the state `f` was called with.
        z0_shape: Vec<usize>,
        /// The panic message.
        message: String,
    },
    /// The backward mode needs something the forward solve does not provide.
    #[error("backward mode {mode} cannot be used with forward solver {solver}: {reason}")]
    IncompatibleModes {
        /// The backward mode.
        mode: String,
        /// The forward solver.
        solver: String,
        /// Why not.
        reason: &'static str,
    },
}

pub(crate) fn check_positive(field: &'static str, value: f64) -> Result<(), DeqError> {
    if value.is_finite() && value > 0.0 {
        Ok(())
    } else {
        Err(DeqError::InvalidConfig {
            field,
            value: value.to_string(),
            reason: "must be a finite number > 0",
        })
    }
}

pub(crate) fn check_nonzero(field: &'static str, value: usize) -> Result<(), DeqError> {
    if value > 0 {
        Ok(())
    } else {
        Err(DeqError::InvalidConfig {
            field,
            value: value.to_string(),
            reason: "must be at least 1",
        })
    }
}

pub(crate) fn check_unit_interval(field: &'static str, value: f64) -> Result<(), DeqError> {
    if value.is_finite() && value > 0.0 && value <= 1.0 {
        Ok(())
    } else {
        Err(DeqError::InvalidConfig {
            field,
            value: value.to_string(),
            reason: "must lie in (0, 1]",
        })
    }
}
