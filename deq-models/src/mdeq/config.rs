//! The MDEQ configuration and its presets.
use burn::config::Config;

use crate::error::ModelError;

/// Architecture of a multiscale deep equilibrium classifier (see the module docs of
/// [`crate::mdeq`]). Serialisable; [`MdeqConfig::tiny`], [`MdeqConfig::large`] and
/// [`MdeqConfig::small`] are the presets.
#[derive(Config, Debug, PartialEq)]
pub struct MdeqConfig {
    /// Input channels (3 for CIFAR, 1 for grey images).
    pub input_channels: usize,
    /// Channels per branch, finest resolution first. Branch `i` has resolution `H / 2^i`.
    pub channels: Vec<usize>,
    /// Bottleneck widths of the head per branch (the head outputs `4 ×` these).
    pub head_channels: Vec<usize>,
    /// Channels of the head's final 1×1 convolution.
    pub final_channels: usize,
    /// Number of classes.
    pub classes: usize,
    /// GroupNorm groups inside f (the post-fusion norm uses half as many).
    #[config(default = 8)]
    pub groups: usize,
    /// Inner width factor of the residual blocks.
    #[config(default = 5)]
    pub expansion: usize,
    /// Variational dropout probability in the residual blocks.
    #[config(default = 0.25)]
    pub dropout: f64,
    /// Stride-2 convolutions in the stem (0 for CIFAR, 2 for ImageNet).
    #[config(default = 0)]
    pub downsample_times: usize,
    /// The reference adds a 1×1 conv + BatchNorm + ReLU between the stem and the injection
    /// when the stem downsamples or there are more than two branches; `None` follows that
    /// rule.
    #[config(default = "None")]
    pub injection_transform: Option<bool>,
    /// Applications of f from zero in unrolled pretraining (NUM_LAYERS).
    #[config(default = 10)]
    pub pretrain_layers: usize,
    /// Standard deviation of the normal initialisation of every convolution.
    #[config(default = 0.01)]
    pub init_std: f64,
    /// Batch norm after the stem's two convolutions (the reference has it). Without it the
    /// model has no batch statistics at all (with `injection_transform` off), so a batch split
    /// over devices gives exactly the whole batch's gradient.
    #[config(default = true)]
    pub stem_norm: bool,
}

impl MdeqConfig {
    /// MDEQ-small for CIFAR-10 ("TINY": 2 branches [24, 24], head [8, 16], final 200,
    /// dropout 0.25): 158,890 trainable parameters.
    pub fn tiny() -> Self {
        Self::new(3, vec![24, 24], vec![8, 16], 200, 10)
    }

    /// MDEQ-large for CIFAR-10 (4 branches [32, 64, 128, 256], head [14, 28, 56, 112],
    /// final 1680, dropout 0.3): 11,097,438 trainable parameters.
    pub fn large() -> Self {
        Self::new(3, vec![32, 64, 128, 256], vec![14, 28, 56, 112], 1680, 10).with_dropout(0.3)
    }

    /// A small MDEQ for 28×28 grey images (Fashion-MNIST, MNIST): one stride-2 stem conv
    /// (state at 14×14 and 7×7), 2 branches [8, 16], head [4, 8], final 64, 4 groups,
    /// dropout 0.1. 41,242 trainable parameters; one SHINE training step of batch 32 with 22
    /// Broyden iterations takes about 0.3 s on one CPU core (see `docs/RESULTS.md`).
    pub fn small() -> Self {
        Self::new(1, vec![8, 16], vec![4, 8], 64, 10)
            .with_groups(4)
            .with_dropout(0.1)
            .with_downsample_times(1)
    }

    /// A preset by name: `tiny`, `large` or `small`.
    pub fn preset(name: &str) -> Result<Self, ModelError> {
        match name {
            "tiny" => Ok(Self::tiny()),
            "large" => Ok(Self::large()),
            "small" => Ok(Self::small()),
            other => Err(ModelError::Config {
                field: "config",
                value: other.to_string(),
                reason: "unknown preset (expected tiny, large or small)".into(),
            }),
        }
    }

    /// Number of branches.
    pub fn branches(&self) -> usize {
        self.channels.len()
    }

    /// Whether the stem output goes through the extra 1×1 conv + BN + ReLU.
    pub fn uses_injection_transform(&self) -> bool {
        self.injection_transform
            .unwrap_or(self.downsample_times > 0 || self.branches() > 2)
    }

    /// The factor by which the input's height and width must be divisible.
    pub fn size_divisor(&self) -> usize {
        size_divisor(self.downsample_times, self.branches())
    }

    /// Checks that images of `[channels, height, width]` fit the model: the configured channel
    /// count, and height and width positive multiples of [`MdeqConfig::size_divisor`].
    pub fn check_image_shape(&self, shape: [usize; 3]) -> Result<(), ModelError> {
        check_image_shape(self.input_channels, self.size_divisor(), shape)
    }

    /// Checks every field; the error names the offending one.
    pub fn validate(&self) -> Result<(), ModelError> {
        let fail = |field: &'static str, value: String, reason: String| {
            Err(ModelError::Config {
                field,
                value,
                reason,
            })
        };
        if self.input_channels == 0 {
            return fail("input_channels", "0".into(), "must be at least 1".into());
        }
        if self.channels.is_empty() {
            return fail("channels", "[]".into(), "needs at least one branch".into());
        }
        if self.head_channels.len() != self.channels.len() {
            return fail(
                "head_channels",
                format!("{:?}", self.head_channels),
                format!(
                    "needs one entry per branch ({} branches: {:?})",
                    self.channels.len(),
                    self.channels
                ),
            );
        }
        if let Some(c) = self
            .channels
            .iter()
            .chain(&self.head_channels)
            .find(|&&c| c == 0)
        {
            return fail(
                "channels",
                c.to_string(),
                "every channel count must be at least 1".into(),
            );
        }
        for (field, value) in [
            ("final_channels", self.final_channels),
            ("classes", self.classes),
            ("expansion", self.expansion),
        ] {
            if value == 0 {
                return fail(field, "0".into(), "must be at least 1".into());
            }
        }
        if self.groups < 2 || self.groups % 2 != 0 {
            return fail(
                "groups",
                self.groups.to_string(),
                "must be even and ≥ 2 (the post-fusion norm uses groups / 2)".into(),
            );
        }
        for &c in &self.channels {
            if c % self.groups != 0 {
                return fail(
                    "groups",
                    self.groups.to_string(),
                    format!(
                        "must divide every branch's channel count ({c} in {:?})",
                        self.channels
                    ),
                );
            }
        }
        if !(self.dropout.is_finite() && (0.0..1.0).contains(&self.dropout)) {
            return fail(
                "dropout",
                self.dropout.to_string(),
                "must lie in [0, 1)".into(),
            );
        }
        if !(self.init_std.is_finite() && self.init_std > 0.0) {
            return fail(
                "init_std",
                self.init_std.to_string(),
                "must be a finite number > 0".into(),
            );
        }
        if self.branches() + self.downsample_times > 16 {
            return fail(
                "channels",
                format!("{:?}", self.channels),
                "too many resolutions".into(),
            );
        }
        Ok(())
    }
}

/// See [`MdeqConfig::check_image_shape`]; shared with [`crate::Mdeq::check_input`].
pub(crate) fn check_image_shape(
    input_channels: usize,
    divisor: usize,
    [c, h, w]: [usize; 3],
) -> Result<(), ModelError> {
    if c != input_channels {
        return Err(ModelError::Input {
            what: "channel count",
            expected: input_channels.to_string(),
            found: format!("{c} (image shape {c}×{h}×{w})"),
        });
    }
    if h == 0 || w == 0 || h % divisor != 0 || w % divisor != 0 {
        return Err(ModelError::Input {
            what: "spatial size",
            expected: format!("height and width positive multiples of {divisor}"),
            found: format!("{h}×{w}"),
        });
    }
    Ok(())
}

/// `2^(downsample_times + branches − 1)`: the stem halves the input `downsample_times` times and
/// each further branch halves it once more.
pub(crate) fn size_divisor(downsample_times: usize, branches: usize) -> usize {
    1 << (downsample_times + branches.saturating_sub(1))
}
