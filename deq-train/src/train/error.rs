//! Errors of training, evaluation and checkpoints.
use std::path::PathBuf;

use crate::data::DataError;

/// What stops a run. Every variant names the setting, file or folder at fault.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// A setting has an invalid value.
    #[error("invalid setting `{field}` = {value}: {reason}")]
    Config {
        /// The setting, as written in the TOML file (and, with `-` for `_`, on the command line).
        field: &'static str,
        /// The value given.
        value: String,
        /// Why it is rejected.
        reason: String,
    },
    /// A configuration file could not be parsed.
    #[error("{}: {problem}", path.display())]
    ConfigFile {
        /// The file.
        path: PathBuf,
        /// The parser's message.
        problem: String,
    },
    /// The data could not be read.
    #[error(transparent)]
    Data(#[from] DataError),
    /// The model rejected its configuration or input.
    #[error(transparent)]
    Model(#[from] deq_models::ModelError),
    /// The DEQ layer rejected its settings.
    #[error(transparent)]
    Deq(#[from] deq_core::DeqError),
    /// A checkpoint could not be written or read, or does not fit the run.
    #[error("checkpoint {}: {problem}", path.display())]
    Checkpoint {
        /// The checkpoint folder or file.
        path: PathBuf,
        /// What is wrong.
        problem: String,
    },
    /// The output folder already holds a run.
    #[error(
        "output folder {} already holds a run ({found}); pass --resume to continue it or --force to start over",
        path.display()
    )]
    OutputExists {
        /// The folder.
        path: PathBuf,
        /// What was found there.
        found: String,
    },
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The requested backend was not compiled in or has no device.
    #[error("{0}")]
    Backend(String),
    /// The loss or the gradient was NaN or infinite on too many consecutive steps.
    #[error(
        "the loss or gradient was not finite on {count} consecutive steps (the last at step {step}, loss {value}); each was skipped, the run stops here: lower --lr or check the data"
    )]
    NonFiniteLoss {
        /// Global step of the last one.
        step: usize,
        /// Consecutive skipped steps (`max_skipped_steps`).
        count: usize,
        /// The last loss.
        value: f64,
    },
}

impl TrainError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }

    /// A batch of `set` that the data loader could not produce.
    pub(crate) fn loading(set: &crate::data::ImageSet, error: impl std::fmt::Display) -> Self {
        Self::Data(DataError::format(set.origin(), error.to_string()))
    }

    pub(crate) fn config(
        field: &'static str,
        value: impl ToString,
        reason: impl Into<String>,
    ) -> Self {
        Self::Config {
            field,
            value: value.to_string(),
            reason: reason.into(),
        }
    }
}
