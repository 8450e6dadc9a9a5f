//! Variational (locked) dropout for equilibrium models.
use burn::config::Config;
use burn::module::Flag;
use burn::module::{Module, Param};
use burn::tensor::{Device, Distribution, Tensor};

/// Configuration of a [`VariationalDropout`].
#[derive(Config, Debug, PartialEq)]
pub struct VariationalDropoutConfig {
    /// Drop probability in [0, 1).
    pub prob: f64,
}

/// Dropout whose mask, of shape `[batch, channels, 1, 1]`, is drawn once per forward pass and
/// reused at every solver iteration (a fixed point of a function that changes at each call
/// would not exist). Kept entries are scaled by `1 / (1 − p)`. No mask in evaluation mode
/// (tensors without autodiff, or the training flag cleared by `Module::valid`/`freeze`).
#[derive(Module, Debug)]
pub struct VariationalDropout {
    /// Drop probability.
    pub prob: f64,
    /// Whether to behave as during training.
    pub training: Param<Flag>,
}

impl VariationalDropoutConfig {
    /// The module.
    pub fn init(&self) -> VariationalDropout {
        VariationalDropout {
            prob: self.prob,
            training: Param::from_bool(true),
        }
    }
}

impl VariationalDropout {
    /// A mask `[batch, channels, 1, 1]` with entries 0 or `1 / (1 − p)`, without autodiff,
    /// or `None` in evaluation mode (`device` without autodiff, or the flag cleared) or for
    /// `p = 0`.
    pub fn sample_mask(&self, batch: usize, channels: usize, device: &Device) -> Option<Tensor<4>> {
        if !self.training.is_enabled() || !device.is_autodiff() || self.prob == 0.0 {
            return None;
        }
        let keep = 1.0 - self.prob;
        let mask = Tensor::<4>::random(
            [batch, channels, 1, 1],
            Distribution::Bernoulli(keep),
            &device.clone().inner(),
        );
        Some(mask / keep)
    }
}
