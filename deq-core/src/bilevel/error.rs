//! Errors of the bi-level module.
use thiserror::Error;

/// Bad data or settings for a bi-level problem.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum BilevelError {
    /// A LIBSVM line could not be read.
    #[error("LIBSVM line {line}: {reason}")]
    Libsvm {
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        reason: String,
    },
    /// The data do not fit the model.
    #[error("invalid data: {0}")]
    Data(String),
    /// A setting has an unusable value.
    #[error("invalid setting `{field}` = {value}: {reason}")]
    Setting {
        /// The setting.
        field: &'static str,
        /// Its value.
        value: String,
        /// What is required.
        reason: &'static str,
    },
}

/// A [`BilevelError::Setting`] error.
pub(crate) fn invalid(
    field: &'static str,
    value: String,
    reason: &'static str,
) -> Result<(), BilevelError> {
    Err(BilevelError::Setting {
        field,
        value,
        reason,
    })
}

/// `value ≥ 1`.
pub(crate) fn check_nonzero(field: &'static str, value: usize) -> Result<(), BilevelError> {
    if value == 0 {
        invalid(field, "0".into(), "must be at least 1")
    } else {
        Ok(())
    }
}

/// `value` finite and `> 0`.
pub(crate) fn check_positive(field: &'static str, value: f64) -> Result<(), BilevelError> {
    if value.is_finite() && value > 0.0 {
        Ok(())
    } else {
        invalid(field, value.to_string(), "must be a finite number > 0")
    }
}
