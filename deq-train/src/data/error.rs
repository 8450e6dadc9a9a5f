//! Errors of the dataset readers.
use std::path::PathBuf;

/// What went wrong while reading a dataset. Every variant names the file (or folder).
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// The file or folder could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The file is not in the expected format.
    #[error("{}: {problem}", path.display())]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong, e.g. `wrong magic number 0x00000801 (expected 0x00000803, IDX images)`.
        problem: String,
    },
    /// An image file and its label file disagree on the number of items.
    #[error(
        "{} holds {images} images but {} holds {labels} labels",
        images_path.display(),
        labels_path.display()
    )]
    CountMismatch {
        /// The image file.
        images_path: PathBuf,
        /// The label file.
        labels_path: PathBuf,
        /// Items in the image file.
        images: usize,
        /// Items in the label file.
        labels: usize,
    },
    /// A label is not a valid class index.
    #[error("{}: label {label} of item {index} is out of range (the dataset has {classes} classes)", path.display())]
    LabelOutOfRange {
        /// The label file.
        path: PathBuf,
        /// Index of the item.
        index: usize,
        /// The label found.
        label: usize,
        /// Number of classes.
        classes: usize,
    },
    /// A file the dataset needs is not there.
    #[error("{what} not found: {}", path.display())]
    Missing {
        /// Where it was looked for.
        path: PathBuf,
        /// What was looked for.
        what: String,
    },
}

/// Checks that every label of `labels` (read from `path`) is below `classes`; the error names
/// the file, the item and the label.
pub(crate) fn check_labels(
    path: &std::path::Path,
    labels: &[u8],
    classes: usize,
) -> Result<(), DataError> {
    match labels.iter().position(|&l| l as usize >= classes) {
        Some(index) => Err(DataError::LabelOutOfRange {
            path: path.to_path_buf(),
            index,
            label: labels[index] as usize,
            classes,
        }),
        None => Ok(()),
    }
}

impl DataError {
    pub(crate) fn format(path: impl Into<PathBuf>, problem: impl Into<String>) -> Self {
        Self::Format {
            path: path.into(),
            problem: problem.into(),
        }
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }
}
