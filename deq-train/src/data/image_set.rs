//! Images and labels held in memory.
use std::sync::Arc;

use super::DataError;

/// A labelled image set in memory: `len` images of `channels × height × width` bytes (channel
/// planes, row-major, as in IDX and CIFAR binary files) and one class index per image.
/// Cloning is cheap (the buffers are shared).
#[derive(Debug, Clone)]
pub struct ImageSet {
    channels: usize,
    height: usize,
    width: usize,
    pixels: Arc<Vec<u8>>,
    labels: Arc<Vec<u8>>,
    classes: Arc<Vec<String>>,
    origin: Arc<std::path::PathBuf>,
}

impl ImageSet {
    /// Builds a set; `pixels` holds `labels.len()` images of `channels × height × width`
    /// bytes. `origin` names the data in errors.
    pub fn new(
        origin: &std::path::Path,
        [channels, height, width]: [usize; 3],
        pixels: Vec<u8>,
        labels: Vec<u8>,
        classes: Vec<String>,
    ) -> Result<Self, DataError> {
        let Some(size) = channels
            .checked_mul(height)
            .and_then(|n| n.checked_mul(width))
        else {
            return Err(DataError::format(
                origin,
                format!("image shape {channels}×{height}×{width} is too large"),
            ));
        };
        if size == 0 {
            return Err(DataError::format(
                origin,
                format!("empty image shape {channels}×{height}×{width}"),
            ));
        }
        if Some(pixels.len()) != size.checked_mul(labels.len()) {
            return Err(DataError::format(
                origin,
                format!(
                    "{} bytes of pixels for {} labels of {size}-byte images",
                    pixels.len(),
                    labels.len()
                ),
            ));
        }
        super::error::check_labels(origin, &labels, classes.len())?;
        Ok(Self {
            channels,
            height,
            width,
            pixels: Arc::new(pixels),
            labels: Arc::new(labels),
            classes: Arc::new(classes),
            origin: Arc::new(origin.to_path_buf()),
        })
    }

    /// Number of images.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether the set holds no image.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// `[channels, height, width]`.
    pub fn shape(&self) -> [usize; 3] {
        [self.channels, self.height, self.width]
    }

    /// Bytes per image.
    pub fn image_size(&self) -> usize {
        self.channels * self.height * self.width
    }

    /// The bytes of image `index` (`channels × height × width`).
    pub fn image(&self, index: usize) -> &[u8] {
        let size = self.image_size();
        &self.pixels[index * size..(index + 1) * size]
    }

    /// The class index of image `index`.
    pub fn label(&self, index: usize) -> usize {
        self.labels[index] as usize
    }

    /// All labels.
    pub fn labels(&self) -> &[u8] {
        &self.labels
    }

    /// Where the images came from (a file or folder), for messages.
    pub fn origin(&self) -> &std::path::Path {
        &self.origin
    }

    /// Class names, in label order.
    pub fn classes(&self) -> &[String] {
        &self.classes
    }

    /// `n` images drawn at random without replacement (a fixed draw: the same for every call),
    /// kept in their original order; all of them if `n ≥ len`. Folder datasets are sorted by
    /// class, so the first `n` images would not be representative.
    pub fn sample(&self, n: usize) -> Self {
        if n >= self.len() {
            return self.clone();
        }
        let mut order: Vec<usize> = (0..self.len()).collect();
        for i in 0..n {
            let j = i + (super::mix(0x5a3e_9d1c, i as u64) % (self.len() - i) as u64) as usize;
            order.swap(i, j);
        }
        let mut chosen = order[..n].to_vec();
        chosen.sort_unstable();
        let size = self.image_size();
        let mut pixels = Vec::with_capacity(n * size);
        for &i in &chosen {
            pixels.extend_from_slice(self.image(i));
        }
        Self {
            pixels: Arc::new(pixels),
            labels: Arc::new(chosen.iter().map(|&i| self.labels[i]).collect()),
            ..self.clone()
        }
    }

    /// Per-channel mean and standard deviation of the pixel values scaled to [0, 1].
    pub fn channel_stats(&self) -> (Vec<f64>, Vec<f64>) {
        let plane = self.height * self.width;
        let mut sum = vec![0.0f64; self.channels];
        let mut sq = vec![0.0f64; self.channels];
        for image in self.pixels.chunks_exact(self.image_size()) {
            for (c, values) in image.chunks_exact(plane).enumerate() {
                let (s, q) = values.iter().fold((0u64, 0u64), |(s, q), &v| {
                    (s + v as u64, q + (v as u64) * (v as u64))
                });
                sum[c] += s as f64;
                sq[c] += q as f64;
            }
        }
        let n = (self.len() * plane).max(1) as f64;
        let mean: Vec<f64> = sum.iter().map(|s| s / n / 255.0).collect();
        let std = sq
            .iter()
            .zip(&mean)
            .map(|(q, m)| (q / n / 65025.0 - m * m).max(0.0).sqrt().max(1e-6))
            .collect();
        (mean, std)
    }

    /// A three-channel `size × size` view: grey images are repeated over three channels and
    /// every image is zero-padded evenly to `size × size` (28×28 Fashion-MNIST → 3×32×32, so
    /// CIFAR-shaped models train on it).
    pub fn padded_rgb(&self, size: usize) -> Result<Self, DataError> {
        if self.channels != 1 && self.channels != 3 {
            return Err(DataError::format(
                self.origin.as_path(),
                format!(
                    "cannot make an RGB view of {}-channel images",
                    self.channels
                ),
            ));
        }
        if self.height > size || self.width > size {
            return Err(DataError::format(
                self.origin.as_path(),
                format!(
                    "images of {}×{} do not fit in {size}×{size}",
                    self.height, self.width
                ),
            ));
        }
        let (top, left) = ((size - self.height) / 2, (size - self.width) / 2);
        let plane = self.height * self.width;
        let mut pixels = vec![0u8; self.len() * 3 * size * size];
        for (i, out) in pixels.chunks_exact_mut(3 * size * size).enumerate() {
            let image = self.image(i);
            for c in 0..3 {
                let source = &image[(c % self.channels) * plane..][..plane];
                for y in 0..self.height {
                    let row = &source[y * self.width..(y + 1) * self.width];
                    let at = c * size * size + (top + y) * size + left;
                    out[at..at + self.width].copy_from_slice(row);
                }
            }
        }
        Ok(Self {
            channels: 3,
            height: size,
            width: size,
            pixels: Arc::new(pixels),
            ..self.clone()
        })
    }
}
