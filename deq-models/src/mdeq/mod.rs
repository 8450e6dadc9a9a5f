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

/// `conv.forward(x)`: the same value and gradients, through [`deq_core::conv2d_same`] (its
/// cheaper gradients) when the convolution is stride 1, undilated, ungrouped and "same"-padded.
pub(crate) fn apply_conv(conv: &Conv2d, x: Tensor<4>) -> Tensor<4> {
    let [_, _, kernel_h, kernel_w] = conv.weight.dims();
    let p = kernel_h / 2;
    let same = kernel_h == kernel_w
        && kernel_h % 2 == 1
        && conv.stride == [1, 1]
        && conv.dilation == [1, 1]
        && conv.groups == 1
        && conv.padding == PaddingConfig2d::Explicit(p, p, p, p);
    if !same {
        return conv.forward(x);
    }
    let y = deq_core::conv2d_same(x, conv.weight.val());
    match &conv.bias {
        Some(bias) => {
            let channels = bias.dims()[0];
            y + bias.val().reshape([1, channels, 1, 1])
        }
        None => y,
    }
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
    Some((apply_conv(conv, x), vjp))
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Distribution;

    fn values(t: Tensor<4>) -> Vec<f32> {
        t.into_data().iter::<f32>().collect()
    }

    fn rel_err(a: &[f32], b: &[f32]) -> f32 {
        let diff = a.iter().zip(b).map(|(x, y)| (x - y).powi(2)).sum::<f32>();
        (diff / b.iter().map(|y| y * y).sum::<f32>()).sqrt()
    }

    /// `apply_conv` has the value and the gradients (input, kernel, bias) of `Conv2d::forward`:
    /// 1×1 and 3×3 kernels with and without bias through `conv2d_same` (images wide enough for
    /// its shifted-product kernel gradient), and a stride-2 convolution through Burn's.
    #[test]
    fn apply_conv_matches_the_module() {
        let device = deq_core::device::cpu().autodiff();
        for (cin, cout, kernel, stride, bias) in [
            (5, 3, 1, 1, true),
            (3, 6, 3, 1, false),
            (4, 4, 3, 1, true),
            (4, 6, 3, 2, true),
        ] {
            let conv = conv([cin, cout], kernel, stride, bias, 0.5, &device);
            let x = Tensor::<4>::random([2, cin, 9, 20], Distribution::Normal(0.0, 1.0), &device);
            let out = Tensor::<4>::random(
                conv.forward(x.clone()).dims(),
                Distribution::Normal(0.0, 1.0),
                &device,
            );
            let run = |ours: bool| {
                let x = x.clone().detach().require_grad();
                let y = if ours {
                    apply_conv(&conv, x.clone())
                } else {
                    conv.forward(x.clone())
                };
                let value = values(y.clone());
                let grads = (y * out.clone()).sum().backward();
                let bias = conv.bias.as_ref().map(|b| {
                    b.grad(&grads)
                        .unwrap()
                        .into_data()
                        .iter::<f32>()
                        .collect::<Vec<f32>>()
                });
                (
                    value,
                    values(x.grad(&grads).unwrap()),
                    values(conv.weight.grad(&grads).unwrap()),
                    bias,
                )
            };
            let (v0, x0, w0, b0) = run(false);
            let (v1, x1, w1, b1) = run(true);
            let case = format!("{cin}->{cout}, k {kernel}, stride {stride}, bias {bias}");
            assert!(rel_err(&v1, &v0) < 1e-5, "{case}: value");
            assert!(rel_err(&x1, &x0) < 1e-5, "{case}: input gradient");
            assert!(rel_err(&w1, &w0) < 1e-5, "{case}: kernel gradient");
            assert_eq!(b1.is_some(), bias, "{case}");
            if let (Some(b1), Some(b0)) = (b1, b0) {
                assert!(rel_err(&b1, &b0) < 1e-5, "{case}: bias gradient");
            }
        }
    }
}
