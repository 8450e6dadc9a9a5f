//! The residual block of f, one per branch.
use burn::module::Module;
use burn::nn::GroupNorm;
use burn::tensor::activation::relu;
use burn::tensor::{Device, Int, Tensor};
use deq_core::{detach_module, module_is_autodiff};

use deq_core::linearization::{Conv2dVjp, GroupNormVjp, relu_with_mask};

use super::{apply_group_norm, group_norm, group_norm_vjp};
use crate::norm::{
    VariationalDropout, VariationalDropoutConfig, WeightNormConv2d, WeightNormConv2dConfig,
};

/// `h = ReLU(GN(conv(z)))`, `h = dropout(conv(h)) + injection`, `h = GN(h) + z`,
/// `out = GN(ReLU(h))`; convs 3×3 weight-normalised, `C → e·C → C`. Shapes
/// `[batch, C, H, W] → [batch, C, H, W]`.
#[derive(Module, Debug)]
pub struct ResidualBlock {
    /// `C → e·C`.
    pub conv1: WeightNormConv2d,
    /// GroupNorm over `e·C`.
    pub norm1: GroupNorm,
    /// `e·C → C`.
    pub conv2: WeightNormConv2d,
    /// Variational dropout after `conv2`.
    pub dropout: VariationalDropout,
    /// GroupNorm before the residual.
    pub norm2: GroupNorm,
    /// GroupNorm after the final ReLU.
    pub norm3: GroupNorm,
}

/// A [`ResidualBlock`] with its weights normalised and its dropout mask drawn for one
/// forward pass.
#[derive(Clone, Debug)]
pub struct PreparedBlock {
    w1: Tensor<4>,
    w2: Tensor<4>,
    norm1: GroupNorm,
    norm2: GroupNorm,
    norm3: GroupNorm,
    mask: Option<Tensor<4>>,
}

impl ResidualBlock {
    pub(crate) fn new(
        channels: usize,
        expansion: usize,
        groups: usize,
        dropout: f64,
        std: f64,
        device: &Device,
    ) -> Self {
        let inner = expansion * channels;
        Self {
            conv1: WeightNormConv2dConfig::new([channels, inner], 3)
                .with_init_std(std)
                .init(device),
            norm1: group_norm(groups, inner, true, device),
            conv2: WeightNormConv2dConfig::new([inner, channels], 3)
                .with_init_std(std)
                .init(device),
            dropout: VariationalDropoutConfig::new(dropout).init(),
            norm2: group_norm(groups, channels, true, device),
            norm3: group_norm(groups, channels, true, device),
        }
    }

    /// Normalises the weights and draws the dropout mask (`[batch, C, 1, 1]`; none in
    /// evaluation, i.e. when `device` has no autodiff).
    pub fn prepare(&self, batch: usize, device: &Device) -> PreparedBlock {
        let channels = self.conv2.v.dims()[0];
        PreparedBlock {
            w1: self.conv1.weight(),
            w2: self.conv2.weight(),
            norm1: self.norm1.clone(),
            norm2: self.norm2.clone(),
            norm3: self.norm3.clone(),
            mask: self.dropout.sample_mask(batch, channels, device),
        }
    }
}

impl PreparedBlock {
    /// `z`: `[batch, C, H, W]`; `injection` of the same shape (branch 0) or none.
    pub fn forward(&self, z: Tensor<4>, injection: Option<&Tensor<4>>) -> Tensor<4> {
        let h = relu(apply_group_norm(
            &self.norm1,
            crate::norm::conv_same(z.clone(), self.w1.clone()),
        ));
        let mut h = crate::norm::conv_same(h, self.w2.clone());
        if let Some(mask) = &self.mask {
            h = h * mask.clone();
        }
        if let Some(x) = injection {
            h = h + x.clone();
        }
        let h = apply_group_norm(&self.norm2, h) + z;
        apply_group_norm(&self.norm3, relu(h))
    }

    /// [`forward`](Self::forward) and its reverse pass at this `z` (the input gradient only;
    /// tensors without autodiff).
    pub(crate) fn linearize(
        &self,
        z: Tensor<4>,
        injection: Option<&Tensor<4>>,
    ) -> (Tensor<4>, BlockVjp) {
        let [_, _, height, width] = z.dims();
        let same = |weight: &Tensor<4>| {
            let padding = weight.dims()[2] / 2;
            Conv2dVjp::new(weight.clone(), [1, 1], [padding; 2], [height, width])
        };
        let h = crate::norm::conv_same(z.clone(), self.w1.clone());
        let (h, norm1) = group_norm_vjp(&self.norm1, h);
        let (h, relu1) = relu_with_mask(h);
        let mut h = crate::norm::conv_same(h, self.w2.clone());
        if let Some(mask) = &self.mask {
            h = h * mask.clone();
        }
        if let Some(x) = injection {
            h = h + x.clone();
        }
        let (h, norm2) = group_norm_vjp(&self.norm2, h);
        let (h, relu2) = relu_with_mask(h + z);
        let (out, norm3) = group_norm_vjp(&self.norm3, h);
        let vjp = BlockVjp {
            conv1: same(&self.w1),
            norm1,
            relu1,
            conv2: same(&self.w2),
            mask: self.mask.clone(),
            norm2,
            relu2,
            norm3,
        };
        (out, vjp)
    }

    pub(crate) fn without_autodiff(&self) -> Self {
        Self {
            w1: self.w1.clone().detach().without_autodiff(),
            w2: self.w2.clone().detach().without_autodiff(),
            norm1: detach_module(&self.norm1),
            norm2: detach_module(&self.norm2),
            norm3: detach_module(&self.norm3),
            mask: self.mask.clone(),
        }
    }

    /// The same block for the samples `index` of the batch only (their dropout masks).
    pub(crate) fn rows(&self, index: &Tensor<1, Int>) -> Self {
        Self {
            mask: self
                .mask
                .as_ref()
                .map(|m| m.clone().select(0, index.clone())),
            ..self.clone()
        }
    }

    pub(crate) fn is_autodiff(&self) -> bool {
        self.w1.is_autodiff() || self.w2.is_autodiff() || module_is_autodiff(&self.norm1)
    }

    /// The dropout mask of this pass, if any (for tests and diagnostics).
    pub fn mask(&self) -> Option<&Tensor<4>> {
        self.mask.as_ref()
    }
}

/// The reverse pass of [`PreparedBlock::forward`] at one input: `∂out ↦ ∂z`
/// (`[batch, C, H, W]` both).
#[derive(Clone, Debug)]
pub(crate) struct BlockVjp {
    conv1: Conv2dVjp,
    norm1: GroupNormVjp,
    relu1: Tensor<4>,
    conv2: Conv2dVjp,
    mask: Option<Tensor<4>>,
    norm2: GroupNormVjp,
    relu2: Tensor<4>,
    norm3: GroupNormVjp,
}

impl BlockVjp {
    pub(crate) fn backward(&self, grad: Tensor<4>) -> Tensor<4> {
        // Through the last GroupNorm and ReLU to the residual sum `GN2(·) + z`.
        let residual = self.norm3.backward(grad) * self.relu2.clone();
        let mut h = self.norm2.backward(residual.clone());
        if let Some(mask) = &self.mask {
            h = h * mask.clone();
        }
        let h = self.conv2.backward(h) * self.relu1.clone();
        self.conv1.backward(self.norm1.backward(h)) + residual
    }
}
