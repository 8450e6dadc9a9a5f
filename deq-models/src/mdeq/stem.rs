//! The stem: image to injection.
use burn::module::Module;
use burn::nn::conv::Conv2d;
use burn::tensor::Tensor;
use burn::tensor::activation::relu;

use super::{MdeqConfig, apply_conv, conv};
use crate::norm::{BatchNorm2d, BatchNorm2dConfig};

/// conv1×1 → BatchNorm → ReLU on the stem output (the reference's `stage0`).
#[derive(Module, Debug)]
pub struct InjectionTransform {
    /// `C0 → C0`, no bias.
    pub conv: Conv2d,
    /// Affine batch norm.
    pub norm: BatchNorm2d,
}

/// `[batch, in, H, W] → [batch, C0, H / 2^d, W / 2^d]` with `d = downsample_times`.
#[derive(Module, Debug)]
pub struct Stem {
    /// conv3×3 `in → C0` (stride 2 if the stem downsamples).
    pub conv1: Conv2d,
    /// Affine batch norm (unless `stem_norm` is off).
    pub norm1: Option<BatchNorm2d>,
    /// conv3×3 `C0 → C0` (stride 2 if the stem downsamples twice).
    pub conv2: Conv2d,
    /// Affine batch norm (unless `stem_norm` is off).
    pub norm2: Option<BatchNorm2d>,
    /// Optional extra transform before injection.
    pub injection: Option<InjectionTransform>,
}

impl Stem {
    pub(crate) fn new(config: &MdeqConfig, device: &burn::tensor::Device) -> Self {
        let c0 = config.channels[0];
        let std = config.init_std;
        let s1 = if config.downsample_times >= 1 { 2 } else { 1 };
        let s2 = if config.downsample_times >= 2 { 2 } else { 1 };
        let bn = |c| BatchNorm2dConfig::new(c).init(device);
        Self {
            conv1: conv([config.input_channels, c0], 3, s1, false, std, device),
            norm1: config.stem_norm.then(|| bn(c0)),
            conv2: conv([c0, c0], 3, s2, false, std, device),
            norm2: config.stem_norm.then(|| bn(c0)),
            injection: config
                .uses_injection_transform()
                .then(|| InjectionTransform {
                    conv: conv([c0, c0], 1, 1, false, std, device),
                    norm: bn(c0),
                }),
        }
    }

    /// `x`: `[batch, in, H, W]` → `[batch, C0, H / 2^d, W / 2^d]`.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let norm = |n: &Option<BatchNorm2d>, x: Tensor<4>| match n {
            Some(n) => n.forward(x),
            None => x,
        };
        let x = relu(norm(&self.norm1, apply_conv(&self.conv1, x)));
        let x = relu(norm(&self.norm2, apply_conv(&self.conv2, x)));
        match &self.injection {
            Some(t) => relu(t.norm.forward(apply_conv(&t.conv, x))),
            None => x,
        }
    }
}
