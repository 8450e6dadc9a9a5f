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
