//! f: the equilibrium function of the MDEQ.
use burn::module::Module;
use burn::nn::GroupNorm;
use burn::tensor::activation::relu;
use burn::tensor::{Device, Tensor};
use deq_core::linearization::{Conv2dVjp, GroupNormVjp, relu_with_mask};
use deq_core::{
    DeqFunction, Linearization, StateShape, detach_module, module_is_autodiff, row_index,
};
use rayon::prelude::*;

use super::block::{BlockVjp, PreparedBlock, ResidualBlock};
use super::fusion::Fusion;
use super::{MdeqConfig, apply_group_norm, group_norm, group_norm_vjp};
use crate::norm::{WeightNormConv2d, WeightNormConv2dConfig, conv_same};

/// The parameters of f: residual blocks, fusion and post-fusion layers.
#[derive(Module, Debug)]
pub struct MdeqCore {
    /// One residual block per branch.
    pub blocks: Vec<ResidualBlock>,
    /// Multiscale fusion.
    pub fusion: Fusion,
    /// Post-fusion weight-normalised 1×1 convs, one per branch.
    pub post_convs: Vec<WeightNormConv2d>,
    /// Post-fusion GroupNorm(groups / 2, no affine), one per branch.
    pub post_norms: Vec<GroupNorm>,
}

/// f for one forward pass: weights normalised, dropout masks drawn. Evaluates
/// `f(z, x)` on the flattened state `[batch, Σ C_i H_i W_i]` with the injection
/// `x = [batch, C0, H0, W0]` (branch 0 only).
#[derive(Clone, Debug)]
pub struct PreparedCore {
    blocks: Vec<PreparedBlock>,
    fusion: Fusion,
    post_weights: Vec<Tensor<4>>,
    post_norms: Vec<GroupNorm>,
    shape: StateShape,
}

impl MdeqCore {
    pub(crate) fn new(config: &MdeqConfig, device: &Device) -> Self {
        let std = config.init_std;
        Self {
            blocks: config
                .channels
                .iter()
                .map(|&c| {
                    ResidualBlock::new(
                        c,
                        config.expansion,
                        config.groups,
                        config.dropout,
                        std,
                        device,
                    )
                })
                .collect(),
            fusion: Fusion::new(&config.channels, config.groups, std, device),
            post_convs: config
                .channels
                .iter()
                .map(|&c| {
                    WeightNormConv2dConfig::new([c, c], 1)
                        .with_init_std(std)
                        .init(device)
                })
                .collect(),
            post_norms: config
                .channels
                .iter()
                .map(|&c| group_norm(config.groups / 2, c, false, device))
                .collect(),
        }
    }

    /// Freezes f for one forward pass on states of `shape` and batch `batch`: weight norms are
    /// computed once and dropout masks drawn once (training mode: `device` has autodiff).
    pub fn prepare(&self, shape: StateShape, batch: usize, device: &Device) -> PreparedCore {
        PreparedCore {
            blocks: self
                .blocks
                .iter()
                .map(|b| b.prepare(batch, device))
                .collect(),
            fusion: self.fusion.clone(),
            post_weights: self.post_convs.iter().map(|c| c.weight()).collect(),
            post_norms: self.post_norms.clone(),
            shape,
        }
    }
}

impl PreparedCore {
    /// f on branch tensors: `z[i]`: `[batch, C_i, H_i, W_i]`, `x`: `[batch, C0, H0, W0]`.
    pub fn forward_branches(&self, z: Vec<Tensor<4>>, x: &Tensor<4>) -> Vec<Tensor<4>> {
        // The branches are independent until the fusion. Without autodiff (the forward solve)
        // each branch runs as its own task, so that small per-branch tensors still keep every
        // core busy; with autodiff the graph is built in order (in parallel it was slower).
        let parallel = !z.iter().any(Tensor::is_tracked) && !x.is_tracked();
        let block = |(i, (zi, block)): (usize, (Tensor<4>, &PreparedBlock))| {
            block.forward(zi, (i == 0).then_some(x))
        };
        let outs: Vec<Tensor<4>> = if parallel {
            z.into_par_iter()
                .zip(self.blocks.par_iter())
                .enumerate()
                .map(block)
                .collect()
        } else {
            z.into_iter()
                .zip(self.blocks.iter())
                .enumerate()
                .map(block)
                .collect()
        };
        let post = |(y, (w, norm)): (Tensor<4>, (&Tensor<4>, &GroupNorm))| {
            apply_group_norm(norm, conv_same(relu(y), w.clone()))
        };
        let fused = self.fusion.forward(&outs);
        let weights = self.post_weights.iter().zip(&self.post_norms);
        if parallel {
            let weights: Vec<_> = weights.collect();
            fused.into_par_iter().zip(weights).map(post).collect()
        } else {
            fused.into_iter().zip(weights).map(post).collect()
        }
    }

    /// The branch shapes of the state.
    pub fn state_shape(&self) -> &StateShape {
        &self.shape
    }

    /// The prepared residual blocks (their dropout masks are visible for tests).
    pub fn blocks(&self) -> &[PreparedBlock] {
        &self.blocks
    }
}

impl DeqFunction for PreparedCore {
    type Input = Tensor<4>;

    fn forward(&self, z: Tensor<2>, x: &Tensor<4>) -> Tensor<2> {
        let branches = self
            .shape
            .unflatten(z)
            .expect("the layer keeps the state shape");
        let out = self.forward_branches(branches, x);
        self.shape
            .flatten(out)
            .expect("f keeps every branch's shape")
    }

    /// f on some samples: the injection's and the dropout masks' rows `rows`. Every part of f
    /// (convolutions, GroupNorm, ReLU, the fusion) works on each sample alone.
    fn forward_rows(&self, z: Tensor<2>, x: &Tensor<4>, rows: &[usize]) -> Option<Tensor<2>> {
        let index = row_index(rows, &x.device());
        let part = Self {
            blocks: self.blocks.iter().map(|b| b.rows(&index)).collect(),
            fusion: self.fusion.clone(),
            post_weights: self.post_weights.clone(),
            post_norms: self.post_norms.clone(),
            shape: self.shape.clone(),
        };
        Some(part.forward(z, &x.clone().select(0, index)))
    }

    fn without_autodiff(&self) -> Self {
        Self {
            blocks: self
                .blocks
                .iter()
                .map(PreparedBlock::without_autodiff)
                .collect(),
            fusion: detach_module(&self.fusion),
            post_weights: self
                .post_weights
                .iter()
                .map(|w| w.clone().detach().without_autodiff())
                .collect(),
            post_norms: self.post_norms.iter().map(detach_module).collect(),
            shape: self.shape.clone(),
        }
    }

    fn is_autodiff(&self) -> bool {
        self.blocks.iter().any(PreparedBlock::is_autodiff) || module_is_autodiff(&self.fusion)
    }

    /// f's reverse pass at `z`, by hand: one evaluation keeps the GroupNorm statistics, the
    /// ReLU masks and the prepared kernels, and every product is the reverse pass only (the
    /// branches, and the fusion's paths, as parallel tasks). The same products as autodiff
    /// (`deq-models` test `linearize_matches_autodiff`).
    fn linearize(&self, z: &Tensor<2>, x: &Tensor<4>) -> Option<Linearization> {
        let branches = self.shape.unflatten(z.clone()).ok()?;
        let (outs, blocks): (Vec<Tensor<4>>, Vec<BlockVjp>) = branches
            .into_par_iter()
            .zip(self.blocks.par_iter())
            .enumerate()
            .map(|(i, (zi, block))| block.linearize(zi, (i == 0).then_some(x)))
            .unzip();
        let (fused, fusion) = self.fusion.linearize(&outs)?;
        let post: Vec<PostVjp> = fused
            .into_par_iter()
            .zip(self.post_weights.par_iter().zip(self.post_norms.par_iter()))
            .map(|(y, (weight, norm))| PostVjp::new(y, weight, norm))
            .collect();
        let shape = self.shape.clone();
        Some(Linearization::new(move |w: Tensor<2>| {
            let grads = shape
                .unflatten(w)
                .expect("the adjoint has the state's shape");
            let grads: Vec<Tensor<4>> = grads
                .into_par_iter()
                .zip(post.par_iter())
                .map(|(grad, post)| post.backward(grad))
                .collect();
            let grads = fusion.backward(grads);
            let grads: Vec<Tensor<4>> = grads
                .into_par_iter()
                .zip(blocks.par_iter())
                .map(|(grad, block)| block.backward(grad))
                .collect();
            shape
                .flatten(grads)
                .expect("the reverse pass keeps every branch's shape")
        }))
    }
}

/// The reverse pass of a post-fusion layer `GN(conv1×1(ReLU(y)))` at one `y`.
struct PostVjp {
    relu: Tensor<4>,
    conv: Conv2dVjp,
    norm: GroupNormVjp,
}

impl PostVjp {
    fn new(y: Tensor<4>, weight: &Tensor<4>, norm: &GroupNorm) -> Self {
        let [_, _, height, width] = y.dims();
        let padding = weight.dims()[2] / 2;
        let (h, relu) = relu_with_mask(y);
        let conv = Conv2dVjp::new(weight.clone(), [1, 1], [padding; 2], [height, width]);
        let (_, norm) = group_norm_vjp(norm, crate::norm::conv_same(h, weight.clone()));
        Self { relu, conv, norm }
    }

    fn backward(&self, grad: Tensor<4>) -> Tensor<4> {
        self.conv.backward(self.norm.backward(grad)) * self.relu.clone()
    }
}
