//! The CIFAR-10 binary format (`data_batch_1.bin` … `data_batch_5.bin`, `test_batch.bin`).
use std::path::{Path, PathBuf};

use super::{DataError, ImageSet};

/// CIFAR-10's class names, in label order.
pub const CIFAR10_CLASSES: [&str; 10] = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
];

/// Bytes per record: one label byte, then 3 × 32 × 32 pixels (red, green, blue planes).
pub const CIFAR_RECORD: usize = 1 + 3 * 32 * 32;

/// Reads CIFAR-10 binary batch files into one 3×32×32 image set. A file whose length is not a
/// whole number of records, or a label ≥ 10, is an error naming the file.
pub fn read_cifar_batches(files: &[PathBuf]) -> Result<ImageSet, DataError> {
    let contents = files
        .iter()
        .map(|path| {
            std::fs::read(path)
                .map(|bytes| (path.clone(), bytes))
                .map_err(|e| DataError::io(path, e))
        })
        .collect::<Result<Vec<_>, _>>()?;
    parse_cifar_batches(&contents)
}

/// [`read_cifar_batches`] on file contents already in memory; the paths only name the files
/// in errors.
pub fn parse_cifar_batches(files: &[(PathBuf, Vec<u8>)]) -> Result<ImageSet, DataError> {
    let mut pixels = Vec::new();
    let mut labels = Vec::new();
    for (path, bytes) in files {
        if bytes.is_empty() || bytes.len() % CIFAR_RECORD != 0 {
            return Err(DataError::format(
                path,
                format!(
                    "truncated or not a CIFAR-10 batch: {} bytes is not a positive multiple of the {CIFAR_RECORD}-byte record (1 label byte + 3072 pixels)",
                    bytes.len()
                ),
            ));
        }
        let file_labels: Vec<u8> = bytes.chunks_exact(CIFAR_RECORD).map(|r| r[0]).collect();
        // Checked per file, so that the error names the file and the record within it.
        super::error::check_labels(path, &file_labels, CIFAR10_CLASSES.len())?;
        labels.extend(file_labels);
        for record in bytes.chunks_exact(CIFAR_RECORD) {
            pixels.extend_from_slice(&record[1..]);
        }
    }
    let origin = files
        .first()
        .map(|(path, _)| path.as_path())
        .unwrap_or(Path::new("<no files>"));
    ImageSet::new(
        origin,
        [3, 32, 32],
        pixels,
        labels,
        CIFAR10_CLASSES.iter().map(|c| c.to_string()).collect(),
    )
}

/// The batch files of a split in `dir` (or in its `cifar-10-batches-bin` subfolder): the five
/// `data_batch_*.bin` for `train`, `test_batch.bin` for `test`; `None` if `dir` holds no
/// CIFAR-10 binary files at all.
pub fn cifar_files(dir: &Path, train: bool) -> Result<Option<Vec<PathBuf>>, DataError> {
    let base = [dir.to_path_buf(), dir.join("cifar-10-batches-bin")]
        .into_iter()
        .find(|d| d.join("test_batch.bin").is_file() || d.join("data_batch_1.bin").is_file());
    let Some(base) = base else {
        return Ok(None);
    };
    let names: Vec<String> = if train {
        (1..=5).map(|i| format!("data_batch_{i}.bin")).collect()
    } else {
        vec!["test_batch.bin".into()]
    };
    names
        .into_iter()
        .map(|name| {
            let path = base.join(&name);
            if path.is_file() {
                Ok(path)
            } else {
                Err(DataError::Missing {
                    path,
                    what: "CIFAR-10 batch file".into(),
                })
            }
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}
