//! Batch normalisation with or without learned affine parameters.
use burn::config::Config;
use burn::module::Module;
use burn::nn::{BatchNorm, BatchNormConfig};
use burn::tensor::{Device, Tensor};

/// Configuration of a [`BatchNorm2d`].
#[derive(Config, Debug, PartialEq)]
pub struct BatchNorm2dConfig {
    /// Channels.
    pub channels: usize,
    /// Learn a scale and shift (`false`: fixed at 1 and 0).
    #[config(default = true)]
    pub affine: bool,
    /// Running-statistics momentum (the reference uses 0.1).
    #[config(default = 0.1)]
    pub momentum: f64,
}

/// Batch normalisation on `[batch, channels, H, W]`.
///
/// Burn's `BatchNorm` always has `gamma` and `beta`; the non-affine variant keeps them at 1
/// and 0 without gradients, under the field name `frozen_affine`, which
/// [`trainable_params`](crate::trainable_params) skips.
#[derive(Module, Debug)]
pub struct BatchNorm2d {
    /// Affine batch norm (learned scale and shift).
    pub norm: Option<BatchNorm>,
    /// Non-affine batch norm (scale 1, shift 0, never trained).
    pub frozen_affine: Option<BatchNorm>,
}

impl BatchNorm2dConfig {
    /// The module.
    pub fn init(&self, device: &Device) -> BatchNorm2d {
        let norm = BatchNormConfig::new(self.channels)
            .with_momentum(self.momentum)
            .init(device);
        if self.affine {
            BatchNorm2d {
                norm: Some(norm),
                frozen_affine: None,
            }
        } else {
            let norm = BatchNorm {
                gamma: norm.gamma.set_require_grad(false),
                beta: norm.beta.set_require_grad(false),
                ..norm
            };
            BatchNorm2d {
                norm: None,
                frozen_affine: Some(norm),
            }
        }
    }
}

impl BatchNorm2d {
    /// Normalises `x` (`[batch, channels, H, W]`): batch statistics in training, running
    /// statistics in evaluation.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        match (&self.norm, &self.frozen_affine) {
            (Some(norm), _) | (None, Some(norm)) => norm.forward(x),
            (None, None) => x,
        }
    }
}
