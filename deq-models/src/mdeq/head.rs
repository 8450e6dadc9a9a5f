//! The classification head.
use burn::module::Module;
use burn::nn::conv::Conv2d;
use burn::nn::{Linear, LinearConfig};
use burn::tensor::Tensor;
use burn::tensor::activation::relu;

use super::{MdeqConfig, apply_conv, conv};
use crate::norm::{BatchNorm2d, BatchNorm2dConfig};

/// Bottleneck `C → 4H` (expansion 4): conv1×1 → BN → ReLU → conv3×3 → BN → ReLU → conv1×1 →
/// BN, plus a conv1×1 + BN shortcut, then ReLU. The inner BatchNorms are non-affine.
/// `[batch, C, h, w] → [batch, 4H, h, w]`.
#[derive(Module, Debug)]
pub struct Bottleneck {
    /// `C → H`.
    pub conv1: Conv2d,
    /// Non-affine.
    pub norm1: BatchNorm2d,
    /// `H → H`, 3×3.
    pub conv2: Conv2d,
    /// Non-affine.
    pub norm2: BatchNorm2d,
    /// `H → 4H`.
    pub conv3: Conv2d,
    /// Non-affine.
    pub norm3: BatchNorm2d,
    /// Shortcut `C → 4H`.
    pub shortcut: Conv2d,
    /// Affine.
    pub shortcut_norm: BatchNorm2d,
}

/// conv3×3 stride 2 (with bias) → BN → ReLU between consecutive head branches.
#[derive(Module, Debug)]
pub struct HeadDownsample {
    /// `4H_i → 4H_{i+1}`.
    pub conv: Conv2d,
    /// Affine.
    pub norm: BatchNorm2d,
}

/// Branch states → logits `[batch, classes]`: `y = incre_0(z_0)`, then
/// `y = incre_i(z_i) + down_{i−1}(y)` from fine to coarse, conv1×1 → BN → ReLU, global
/// average pooling, linear.
#[derive(Module, Debug)]
pub struct Head {
    /// One bottleneck per branch.
    pub incre: Vec<Bottleneck>,
    /// One downsampling step between consecutive branches.
    pub down: Vec<HeadDownsample>,
    /// `4H_last → final_channels`, 1×1 with bias.
    pub final_conv: Conv2d,
    /// Affine.
    pub final_norm: BatchNorm2d,
    /// `final_channels → classes`.
    pub classifier: Linear,
}

impl Head {
    pub(crate) fn new(config: &MdeqConfig, device: &burn::tensor::Device) -> Self {
        let std = config.init_std;
        let bn = |c| BatchNorm2dConfig::new(c).init(device);
        let plain = |c| BatchNorm2dConfig::new(c).with_affine(false).init(device);
        let incre = config
            .channels
            .iter()
            .zip(&config.head_channels)
            .map(|(&c, &h)| Bottleneck {
                conv1: conv([c, h], 1, 1, false, std, device),
                norm1: plain(h),
                conv2: conv([h, h], 3, 1, false, std, device),
                norm2: plain(h),
                conv3: conv([h, 4 * h], 1, 1, false, std, device),
                norm3: plain(4 * h),
                shortcut: conv([c, 4 * h], 1, 1, false, std, device),
                shortcut_norm: bn(4 * h),
            })
            .collect();
        let down = config
            .head_channels
            .windows(2)
            .map(|w| HeadDownsample {
                conv: conv([4 * w[0], 4 * w[1]], 3, 2, true, std, device),
                norm: bn(4 * w[1]),
            })
            .collect();
        let last = 4 * config.head_channels[config.head_channels.len() - 1];
        Self {
            incre,
            down,
            final_conv: conv([last, config.final_channels], 1, 1, true, std, device),
            final_norm: bn(config.final_channels),
            classifier: LinearConfig::new(config.final_channels, config.classes).init(device),
        }
    }

    /// `branches[i]`: `[batch, C_i, H_i, W_i]` → logits `[batch, classes]`.
    pub fn forward(&self, branches: Vec<Tensor<4>>) -> Tensor<2> {
        let mut y: Option<Tensor<4>> = None;
        for (i, (z, block)) in branches.into_iter().zip(&self.incre).enumerate() {
            let incre = block.forward(z);
            y = Some(match y {
                None => incre,
                Some(prev) => {
                    let d = &self.down[i - 1];
                    incre + relu(d.norm.forward(apply_conv(&d.conv, prev)))
                }
            });
        }
        let y = y.expect("at least one branch");
        let y = relu(self.final_norm.forward(apply_conv(&self.final_conv, y)));
        let [batch, channels, _, _] = y.dims();
        let pooled = y.mean_dim(3).mean_dim(2).reshape([batch, channels]);
        self.classifier.forward(pooled)
    }
}

impl Bottleneck {
    /// `[batch, C, h, w] → [batch, 4H, h, w]`.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let h = relu(self.norm1.forward(apply_conv(&self.conv1, x.clone())));
        let h = relu(self.norm2.forward(apply_conv(&self.conv2, h)));
        let h = self.norm3.forward(apply_conv(&self.conv3, h));
        relu(h + self.shortcut_norm.forward(apply_conv(&self.shortcut, x)))
    }
}
