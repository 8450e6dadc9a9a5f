//! The IDX format of MNIST and Fashion-MNIST (raw or gzip-compressed).
use std::io::Read;
use std::path::{Path, PathBuf};

use super::{DataError, ImageSet};

/// Magic number of an IDX file of unsigned bytes with three dimensions (images).
pub const IDX_IMAGES_MAGIC: u32 = 0x0000_0803;
/// Magic number of an IDX file of unsigned bytes with one dimension (labels).
pub const IDX_LABELS_MAGIC: u32 = 0x0000_0801;

/// Fashion-MNIST's class names, in label order.
pub const FASHION_MNIST_CLASSES: [&str; 10] = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
];

/// The contents of file `path` (`raw`), decompressed when they start with the gzip magic bytes.
fn decode_maybe_gz(path: &Path, raw: Vec<u8>) -> Result<Vec<u8>, DataError> {
    if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::with_capacity(raw.len() * 4);
        flate2::read::MultiGzDecoder::new(&raw[..])
            .read_to_end(&mut out)
            .map_err(|e| DataError::format(path, format!("corrupt gzip stream: {e}")))?;
        Ok(out)
    } else {
        Ok(raw)
    }
}

/// Parses an IDX file of unsigned bytes: returns its dimensions and payload. Checks the magic
/// number, the rank and that the payload has exactly the size the header announces.
fn parse(
    path: &Path,
    bytes: &[u8],
    magic: u32,
    what: &str,
) -> Result<(Vec<usize>, Vec<u8>), DataError> {
    let rank = (magic & 0xff) as usize;
    let header = 4 + 4 * rank;
    if bytes.len() >= 4 {
        let found = u32::from_be_bytes(bytes[..4].try_into().expect("4 bytes"));
        if found != magic {
            return Err(DataError::format(
                path,
                format!("wrong magic number {found:#010x} (expected {magic:#010x}, IDX {what})"),
            ));
        }
    }
    if bytes.len() < header {
        return Err(DataError::format(
            path,
            format!(
                "truncated: {} bytes, shorter than the {header}-byte IDX header",
                bytes.len()
            ),
        ));
    }
    let dims: Vec<usize> = (0..rank)
        .map(|d| {
            u32::from_be_bytes(bytes[4 + 4 * d..8 + 4 * d].try_into().expect("4 bytes")) as usize
        })
        .collect();
    let Some(expected) = dims.iter().try_fold(1usize, |n, &d| n.checked_mul(d)) else {
        return Err(DataError::format(
            path,
            format!("the header's dimensions {dims:?} describe more bytes than can be addressed"),
        ));
    };
    let payload = &bytes[header..];
    if payload.len() < expected {
        return Err(DataError::format(
            path,
            format!(
                "truncated: the header announces {dims:?} = {expected} bytes of data, the file holds {}",
                payload.len()
            ),
        ));
    }
    if payload.len() > expected {
        return Err(DataError::format(
            path,
            format!(
                "{} unexpected bytes after the {expected} bytes of data the header announces ({dims:?})",
                payload.len() - expected
            ),
        ));
    }
    Ok((dims, payload.to_vec()))
}

/// Reads a pair of IDX files (`[n, rows, cols]` images and `[n]` labels) as a one-channel
/// image set with the given class names.
pub fn read_idx_pair(
    images: &Path,
    labels: &Path,
    classes: &[&str],
) -> Result<ImageSet, DataError> {
    let image_bytes = std::fs::read(images).map_err(|e| DataError::io(images, e))?;
    let label_bytes = std::fs::read(labels).map_err(|e| DataError::io(labels, e))?;
    parse_idx_pair((images, image_bytes), (labels, label_bytes), classes)
}

/// [`read_idx_pair`] on file contents already in memory (raw or gzip-compressed); the paths
/// only name the files in errors.
pub fn parse_idx_pair(
    (images, image_bytes): (&Path, Vec<u8>),
    (labels, label_bytes): (&Path, Vec<u8>),
    classes: &[&str],
) -> Result<ImageSet, DataError> {
    let (dims, pixels) = parse(
        images,
        &decode_maybe_gz(images, image_bytes)?,
        IDX_IMAGES_MAGIC,
        "images",
    )?;
    let (label_dims, label_bytes) = parse(
        labels,
        &decode_maybe_gz(labels, label_bytes)?,
        IDX_LABELS_MAGIC,
        "labels",
    )?;
    if dims[0] != label_dims[0] {
        return Err(DataError::CountMismatch {
            images_path: images.to_path_buf(),
            labels_path: labels.to_path_buf(),
            images: dims[0],
            labels: label_dims[0],
        });
    }
    // Checked here so that the error names the label file.
    super::error::check_labels(labels, &label_bytes, classes.len())?;
    ImageSet::new(
        images,
        [1, dims[1], dims[2]],
        pixels,
        label_bytes,
        classes.iter().map(|c| c.to_string()).collect(),
    )
}

/// The image and label files of `split` (`train` or `t10k`) in `dir`, compressed (`.gz`) or
/// not, with the standard names (`train-images-idx3-ubyte[.gz]`, …).
pub fn idx_files(dir: &Path, split: &str) -> Result<(PathBuf, PathBuf), DataError> {
    let find = |stem: String| -> Result<PathBuf, DataError> {
        let gz = dir.join(format!("{stem}.gz"));
        let raw = dir.join(&stem);
        if gz.is_file() {
            Ok(gz)
        } else if raw.is_file() {
            Ok(raw)
        } else {
            Err(DataError::Missing {
                path: dir.join(format!("{stem}[.gz]")),
                what: format!("IDX file of the {split} split"),
            })
        }
    };
    Ok((
        find(format!("{split}-images-idx3-ubyte"))?,
        find(format!("{split}-labels-idx1-ubyte"))?,
    ))
}
