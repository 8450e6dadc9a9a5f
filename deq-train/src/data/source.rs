//! Which dataset, and where its files are.
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{
    DataError, FASHION_MNIST_CLASSES, ImageSet, cifar_files, idx_files, read_cifar_batches,
    read_idx_pair, read_image_folders,
};

/// The datasets `deq-train` reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DatasetKind {
    /// Fashion-MNIST as IDX files (the bundled subset by default).
    FashionMnist,
    /// MNIST as IDX files.
    Mnist,
    /// CIFAR-10: binary batch files, or a folder / archive of class-named image folders.
    #[serde(rename = "cifar10")]
    Cifar10,
}

impl std::fmt::Display for DatasetKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::FashionMnist => "fashion-mnist",
            Self::Mnist => "mnist",
            Self::Cifar10 => "cifar10",
        })
    }
}

impl std::str::FromStr for DatasetKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "fashion-mnist" => Ok(Self::FashionMnist),
            "mnist" => Ok(Self::Mnist),
            "cifar10" | "cifar-10" => Ok(Self::Cifar10),
            other => Err(format!(
                "unknown dataset `{other}` (expected fashion-mnist, mnist or cifar10)"
            )),
        }
    }
}

/// A dataset's training and test splits.
#[derive(Debug, Clone)]
pub struct Splits {
    /// Training images.
    pub train: ImageSet,
    /// Test images.
    pub test: ImageSet,
}

/// The folder of the bundled Fashion-MNIST subset (10,000 training and 2,000 test images).
pub fn bundled_fashion_mnist() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("assets")
        .join("fashion-mnist")
}

/// Loads both splits of `kind` from `path`: a folder of IDX files for (Fashion-)MNIST (the
/// bundled Fashion-MNIST subset when `path` is `None`); for CIFAR-10 a folder of binary
/// batches, or a folder or `.tar.gz` archive of `train|test/<class>/*.jpg`.
pub fn load_splits(kind: DatasetKind, path: Option<&Path>) -> Result<Splits, DataError> {
    let bundled = bundled_fashion_mnist();
    let path = match (kind, path) {
        (_, Some(p)) => p.to_path_buf(),
        (DatasetKind::FashionMnist, None) => bundled,
        (other, None) => {
            return Err(DataError::Missing {
                path: PathBuf::from("<none given>"),
                what: format!("data location for {other} (pass --data-dir PATH)"),
            });
        }
    };
    if !path.exists() {
        return Err(DataError::Missing {
            path,
            what: format!("{kind} data folder"),
        });
    }
    match kind {
        DatasetKind::FashionMnist | DatasetKind::Mnist => {
            let digits: Vec<String> = (0..10).map(|d| d.to_string()).collect();
            let classes: Vec<&str> = match kind {
                DatasetKind::FashionMnist => FASHION_MNIST_CLASSES.to_vec(),
                _ => digits.iter().map(String::as_str).collect(),
            };
            let read = |split: &str| -> Result<ImageSet, DataError> {
                let (images, labels) = idx_files(&path, split)?;
                read_idx_pair(&images, &labels, &classes)
            };
            Ok(Splits {
                train: read("train")?,
                test: read("t10k")?,
            })
        }
        DatasetKind::Cifar10 => {
            if path.is_dir()
                && let Some(train) = cifar_files(&path, true)?
            {
                let test = cifar_files(&path, false)?.unwrap_or_default();
                return Ok(Splits {
                    train: read_cifar_batches(&train)?,
                    test: read_cifar_batches(&test)?,
                });
            }
            let splits = read_image_folders(&path)?;
            Ok(Splits {
                train: splits.train,
                test: splits.test,
            })
        }
    }
}
