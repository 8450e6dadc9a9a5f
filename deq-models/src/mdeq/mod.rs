//! The multiscale deep equilibrium model (MDEQ; Bai, Koltun & Kolter, 2020), as evaluated in
//! the SHINE paper.
//!
//! - **Stem** (outside the equilibrium): conv3×3 → BatchNorm → ReLU → conv3×3 → BatchNorm →
//!   ReLU, then (when the stem downsamples or there are more than two branches, as in the
//!   reference) conv1×1 → BatchNorm → ReLU. Its output is injected into branch 0 only.
//! - **f** on the branch states: per branch a residual block with weight-normalised convs
//!   (width `expansion × C`), GroupNorm and variational dropout; multiscale fusion (1×1 conv +
//!   GroupNorm + nearest upsampling from coarser branches, chains of stride-2 3×3 convs from
//!   finer ones); post-fusion ReLU → weight-normalised 1×1 conv → GroupNorm(groups / 2, no
//!   affine). Weights are normalised and dropout masks drawn once per forward pass
//!   ([`MdeqCore::prepare`]), never per solver iteration.
//! - **Head**: per branch a bottleneck (expansion 4, non-affine BatchNorm inside, 1×1 conv +
//!   BatchNorm shortcut), fine-to-coarse aggregation through stride-2 convs, 1×1 conv to
//!   `final_channels`, global average pooling, linear classifier.
//!
//! Parameter counts (trainable: affine GN/BN parameters and weight-norm gains included,
//! BatchNorm running statistics excluded): `tiny` 158,890 and `large` 11,097,438, equal to our
//! count of the reference code. The only piece not in the architecture summary of the design
//! notes is the injection transform (conv1×1 + BN, 32·32 + 2·32 = 1,088 parameters in
//! `large`), which the reference adds for more than two branches; without it `large` would
//! have 11,096,350.
mod block;
mod config;
mod core;
mod fusion;
mod head;
mod model;
mod stem;

pub use block::{PreparedBlock, ResidualBlock};
pub use config::MdeqConfig;
pub use core::{MdeqCore, PreparedCore};
pub use fusion::{Downsample, Fusion, Upsample};
pub use head::{Bottleneck, Head, HeadDownsample};
pub use model::{Mdeq, MdeqMode, MdeqOutput};
pub use stem::{InjectionTransform, Stem};

use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{GroupNorm, GroupNormConfig, Initializer, PaddingConfig2d};
use burn::tensor::{Device, Tensor};
use deq_core::linearization::{Conv2dVjp, GroupNormVjp};

/// A square convolution with "same" padding for stride 1, weights `N(0, std)`, zero bias.
pub(crate) fn conv(
    channels: [usize; 2],
    kernel: usize,
    stride: usize,
    bias: bool,
    std: f64,
    device: &Device,
) -> Conv2d {
    let p = kernel / 2;
    Conv2dConfig::new(channels, [kernel, kernel])
        .with_stride([stride, stride])
        .with_padding(PaddingConfig2d::Explicit(p, p, p, p))
        .with_bias(bias)
        .with_initializer(Initializer::Normal { mean: 0.0, std })
        .init(device)
}

/// GroupNorm with weight 1 and bias 0 (when affine).
pub(crate) fn group_norm(
    groups: usize,
    channels: usize,
    affine: bool,
    device: &Device,
) -> GroupNorm {
    GroupNormConfig::new(groups, channels)
        .with_affine(affine)
        .init(device)
}

/// `norm` applied to `x` (`[batch, C, H, W]`) through [`deq_core::group_norm`]: the same value
/// and gradients as `norm.forward(x)`, with a fused backward.
pub(crate) fn apply_group_norm(norm: &GroupNorm, x: Tensor<4>) -> Tensor<4> {
    deq_core::group_norm(
        x,
        norm.num_groups,
        norm.gamma.as_ref().map(|gamma| gamma.val()),
        norm.beta.as_ref().map(|beta| beta.val()),
        norm.epsilon,
    )
}

/// `norm` applied to `x` (`[batch, C, H, W]`) and what its input gradient needs (the value of
/// [`apply_group_norm`]).
pub(crate) fn group_norm_vjp(norm: &GroupNorm, x: Tensor<4>) -> (Tensor<4>, GroupNormVjp) {
    GroupNormVjp::forward(
        x,
        norm.num_groups,
        norm.gamma.as_ref().map(|gamma| gamma.val()),
        norm.beta.as_ref().map(|beta| beta.val()),
        norm.epsilon,
    )
}

/// `conv` applied to `x` (`[batch, C, H, W]`) and its input gradient; `None` for a grouped,
/// dilated or asymmetrically padded convolution (the MDEQ builds none).
pub(crate) fn conv_vjp(conv: &Conv2d, x: Tensor<4>) -> Option<(Tensor<4>, Conv2dVjp)> {
    let PaddingConfig2d::Explicit(top, left, bottom, right) = conv.padding else {
        return None;
    };
    if top != bottom || left != right || conv.groups != 1 || conv.dilation != [1, 1] {
        return None;
    }
    let [_, _, height, width] = x.dims();
    let vjp = Conv2dVjp::new(conv.weight.val(), conv.stride, [top, left], [height, width]);
    Some((conv.forward(x), vjp))
}
