//! Burn `Dataset` and `Batcher` over an [`ImageSet`]: normalisation and augmentation.
use burn::data::dataloader::batcher::Batcher;
use burn::data::dataset::{Dataset, DatasetError};
use burn::tensor::{Device, Int, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use super::ImageSet;

/// One image: bytes (`channels × height × width`), its label, and the seed of its augmentation.
#[derive(Debug, Clone)]
pub struct ImageItem {
    /// Pixel bytes.
    pub pixels: Vec<u8>,
    /// Class index.
    pub label: usize,
    /// Seed of this item's random crop and flip (fixed by the epoch and the item, so a resumed
    /// run sees the same augmentations).
    pub seed: u64,
}

/// An [`ImageSet`] as a Burn dataset for one epoch: item `i` carries an augmentation seed
/// derived from `(epoch_seed, i)`.
#[derive(Debug, Clone)]
pub struct ImageDataset {
    set: ImageSet,
    epoch_seed: u64,
}

impl ImageDataset {
    /// The set, with augmentation seeds drawn from `epoch_seed`.
    pub fn new(set: ImageSet, epoch_seed: u64) -> Self {
        Self { set, epoch_seed }
    }
}

impl Dataset<ImageItem> for ImageDataset {
    fn get(&self, index: usize) -> Result<ImageItem, DatasetError> {
        Ok(ImageItem {
            pixels: self.set.image(index).to_vec(),
            label: self.set.label(index),
            seed: mix(self.epoch_seed, index as u64),
        })
    }

    fn len(&self) -> usize {
        self.set.len()
    }
}

/// SplitMix64 finaliser of `a` combined with `b`: a well-spread seed for each `(a, b)`.
pub fn mix(a: u64, b: u64) -> u64 {
    let mut z = a ^ b
        .wrapping_add(0x9e37_79b9_7f4a_7c15)
        .wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Data augmentation for training batches.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Augment {
    /// Random crop after zero padding by this many pixels on each side (0: no crop).
    pub crop_padding: usize,
    /// Random horizontal flip with probability ½.
    pub flip: bool,
}

impl Augment {
    /// No augmentation.
    pub const NONE: Self = Self {
        crop_padding: 0,
        flip: false,
    };
}

/// A batch: normalised images `[batch, channels, height, width]` and labels `[batch]`.
#[derive(Debug, Clone)]
pub struct ImageBatch {
    /// `[batch, channels, height, width]`.
    pub images: Tensor<4>,
    /// `[batch]`.
    pub labels: Tensor<1, Int>,
}

/// Turns items into an [`ImageBatch`]: scales pixels to [0, 1], normalises each channel with
/// `(x − mean) / std`, and applies the augmentation (padding is black, i.e. 0 before
/// normalisation, as in the reference CIFAR recipe).
#[derive(Debug, Clone)]
pub struct ImageBatcher {
    shape: [usize; 3],
    mean: Vec<f32>,
    std: Vec<f32>,
    augment: Augment,
}

impl ImageBatcher {
    /// A batcher for images of `shape` (`[channels, height, width]`) with per-channel `mean`
    /// and `std` (of pixel values in [0, 1]).
    pub fn new(shape: [usize; 3], mean: &[f64], std: &[f64], augment: Augment) -> Self {
        Self {
            shape,
            mean: mean.iter().map(|&m| m as f32).collect(),
            std: std.iter().map(|&s| s as f32).collect(),
            augment,
        }
    }

    /// Writes the normalised (and augmented) image `item` into `out`.
    fn fill(&self, item: &ImageItem, out: &mut [f32]) {
        let [channels, h, w] = self.shape;
        let p = self.augment.crop_padding as isize;
        let mut seed = item.seed;
        let (dy, dx) = if p > 0 {
            let span = (2 * p + 1) as u64;
            seed = mix(seed, 1);
            let dy = (seed % span) as isize - p;
            seed = mix(seed, 2);
            (dy, (seed % span) as isize - p)
        } else {
            (0, 0)
        };
        let flip = self.augment.flip && mix(seed, 3) & 1 == 1;
        for c in 0..channels {
            let plane = &item.pixels[c * h * w..(c + 1) * h * w];
            let zero = -self.mean[c] / self.std[c];
            for y in 0..h {
                for x in 0..w {
                    let sx = if flip { w - 1 - x } else { x } as isize + dx;
                    let sy = y as isize + dy;
                    let value = if sy >= 0 && sx >= 0 && (sy as usize) < h && (sx as usize) < w {
                        (plane[sy as usize * w + sx as usize] as f32 / 255.0 - self.mean[c])
                            / self.std[c]
                    } else {
                        zero
                    };
                    out[c * h * w + y * w + x] = value;
                }
            }
        }
    }
}

impl Batcher<ImageItem, ImageBatch> for ImageBatcher {
    fn batch(&self, items: Vec<ImageItem>, device: &Device) -> ImageBatch {
        let [c, h, w] = self.shape;
        let size = c * h * w;
        let mut values = vec![0f32; items.len() * size];
        for (item, out) in items.iter().zip(values.chunks_exact_mut(size)) {
            self.fill(item, out);
        }
        let labels: Vec<i64> = items.iter().map(|i| i.label as i64).collect();
        ImageBatch {
            images: Tensor::from_data(TensorData::new(values, [items.len(), c, h, w]), device),
            labels: Tensor::from_data(TensorData::new(labels, [items.len()]), device),
        }
    }
}
