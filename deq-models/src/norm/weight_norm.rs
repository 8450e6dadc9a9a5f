//! Weight-normalised 2-D convolution.
use burn::config::Config;
use burn::module::{Module, Param};
use burn::tensor::module::conv2d;
use burn::tensor::ops::ConvOptions;
use burn::tensor::{Device, Distribution, Tensor};

/// Configuration of a [`WeightNormConv2d`].
#[derive(Config, Debug, PartialEq)]
pub struct WeightNormConv2dConfig {
    /// `[in, out]` channels.
    pub channels: [usize; 2],
    /// Square kernel size.
    pub kernel: usize,
    /// Stride.
    #[config(default = 1)]
    pub stride: usize,
    /// Standard deviation of the normal initialisation of `v`.
    #[config(default = 0.01)]
    pub init_std: f64,
}

/// A convolution without bias whose weight is `w = g · v / ‖v‖`, the norm taken per output
/// channel (Salimans & Kingma). The padding keeps the spatial size for stride 1.
///
/// Compute the weight once per forward pass with [`WeightNormConv2d::weight`] and apply it
/// with [`WeightNormConv2d::apply`], so that a DEQ solve does not renormalise at every
/// iteration.
#[derive(Module, Debug)]
pub struct WeightNormConv2d {
    /// Direction, `[out, in, k, k]`.
    pub v: Param<Tensor<4>>,
    /// Gain per output channel, `[out]`.
    pub g: Param<Tensor<1>>,
    stride: usize,
    padding: usize,
}

impl WeightNormConv2dConfig {
    /// `v ~ N(0, init_std)`, `g = ‖v‖` per output channel (so the initial weight is `v`).
    pub fn init(&self, device: &Device) -> WeightNormConv2d {
        let [cin, cout] = self.channels;
        let v = Tensor::<4>::random(
            [cout, cin, self.kernel, self.kernel],
            Distribution::Normal(0.0, self.init_std),
            device,
        );
        let g = channel_norm(v.clone());
        WeightNormConv2d {
            v: Param::from_tensor(v),
            g: Param::from_tensor(g),
            stride: self.stride,
            padding: self.kernel / 2,
        }
    }
}

/// `‖v‖` per output channel: `[out, in, k, k] -> [out]`.
fn channel_norm(v: Tensor<4>) -> Tensor<1> {
    let [out, ..] = v.dims();
    (v.clone() * v)
        .flatten::<2>(1, 3)
        .sum_dim(1)
        .sqrt()
        .reshape([out])
}

impl WeightNormConv2d {
    /// The effective weight `g · v / ‖v‖`, `[out, in, k, k]`.
    pub fn weight(&self) -> Tensor<4> {
        let v = self.v.val();
        let [out, ..] = v.dims();
        let scale = (self.g.val() / channel_norm(v.clone())).reshape([out, 1, 1, 1]);
        v * scale
    }

    /// Convolves `x` (`[batch, in, H, W]`) with a weight from [`WeightNormConv2d::weight`];
    /// returns `[batch, out, H / stride, W / stride]`.
    pub fn apply(&self, x: Tensor<4>, weight: Tensor<4>) -> Tensor<4> {
        apply_conv(x, weight, self.stride, self.padding)
    }

    /// Stride and padding, for applying a detached weight elsewhere.
    pub fn geometry(&self) -> (usize, usize) {
        (self.stride, self.padding)
    }
}

/// `conv2d` without bias with square stride and padding.
pub(crate) fn apply_conv(
    x: Tensor<4>,
    weight: Tensor<4>,
    stride: usize,
    padding: usize,
) -> Tensor<4> {
    conv2d(
        x,
        weight,
        None,
        ConvOptions::new([stride, stride], [padding, padding], [1, 1], 1),
    )
}

/// Stride-1 convolution with "same" padding and no bias (for a prepared weight), with the
/// cheaper input gradient of [`deq_core::conv2d_same`].
pub(crate) fn conv_same(x: Tensor<4>, weight: Tensor<4>) -> Tensor<4> {
    deq_core::conv2d_same(x, weight)
}
