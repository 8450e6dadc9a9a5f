//! Helpers shared by the integration tests: temporary folders, generated IDX files, seeds.
#![allow(dead_code)] // each test binary uses a part

use std::io::Write;
use std::path::PathBuf;

use deq_train::data::{IDX_IMAGES_MAGIC, IDX_LABELS_MAGIC};

/// A fresh, empty folder `deq-train-NAME-PID` in the system's temporary folder.
pub fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("deq-train-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// An IDX images file: `n` images of `rows × cols` bytes.
pub fn idx_images(n: u32, rows: u32, cols: u32) -> Vec<u8> {
    let mut bytes = IDX_IMAGES_MAGIC.to_be_bytes().to_vec();
    for d in [n, rows, cols] {
        bytes.extend(d.to_be_bytes());
    }
    bytes.extend((0..n * rows * cols).map(|i| (i * 7 % 256) as u8));
    bytes
}

/// An IDX labels file.
pub fn idx_labels(labels: &[u8]) -> Vec<u8> {
    let mut bytes = IDX_LABELS_MAGIC.to_be_bytes().to_vec();
    bytes.extend((labels.len() as u32).to_be_bytes());
    bytes.extend(labels);
    bytes
}

/// `bytes`, gzip-compressed.
pub fn gz(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(bytes).unwrap();
    encoder.finish().unwrap()
}

/// The seed in environment variable `var`, else one from the clock (to be printed, so that a
/// failure can be replayed).
pub fn seed_from_env(var: &str) -> u64 {
    std::env::var(var)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        })
}
