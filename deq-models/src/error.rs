//! Errors of model construction and input checking.
use thiserror::Error;

/// A configuration or an input that a model cannot work with.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum ModelError {
    /// A configuration field has an unusable value.
    #[error("invalid model config: `{field}` = {value}: {reason}")]
    Config {
        /// The field, e.g. `channels`.
        field: &'static str,
        /// The value given.
        value: String,
        /// What is required of it.
        reason: String,
    },
    /// The input tensor does not fit the configuration.
    #[error("invalid input: {what} is {found}, expected {expected}")]
    Input {
        /// Which property, e.g. `channel count`.
        what: &'static str,
        /// What the configuration requires.
        expected: String,
        /// What the input has.
        found: String,
    },
    /// The equilibrium layer failed.
    #[error(transparent)]
    Deq(#[from] deq_core::DeqError),
}
