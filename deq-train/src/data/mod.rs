//! Image datasets: readers for IDX (MNIST, Fashion-MNIST), CIFAR-10 binary batches and
//! class-named image folders or archives (the CIFAR-10 JPEG archive), an in-memory
//! [`ImageSet`], and the Burn `Dataset` / `Batcher` that feed training.
mod batcher;
mod cifar_bin;
mod error;
mod idx;
mod image_folder;
mod image_set;
mod source;

pub use batcher::{Augment, ImageBatch, ImageBatcher, ImageDataset, ImageItem, mix};
pub use cifar_bin::{
    CIFAR_RECORD, CIFAR10_CLASSES, cifar_files, parse_cifar_batches, read_cifar_batches,
};
pub use error::DataError;
pub use idx::{
    FASHION_MNIST_CLASSES, IDX_IMAGES_MAGIC, IDX_LABELS_MAGIC, idx_files, parse_idx_pair,
    read_idx_pair,
};
pub use image_folder::{FolderSplits, read_image_folders};
pub use image_set::ImageSet;
pub use source::{DatasetKind, Splits, bundled_fashion_mnist, load_splits};
