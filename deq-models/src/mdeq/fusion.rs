//! Multiscale fusion: every branch receives every other branch, resampled.
use burn::module::Module;
use burn::nn::GroupNorm;
use burn::nn::conv::Conv2d;
use burn::tensor::Tensor;
use burn::tensor::activation::relu;

use deq_core::linearization::{Conv2dVjp, GroupNormVjp, relu_with_mask};
use rayon::prelude::*;

use super::{apply_conv, apply_group_norm, conv, conv_vjp, group_norm, group_norm_vjp};

/// Coarser to finer: conv1×1 `C_j → C_i` → GroupNorm → nearest upsampling by `factor`.
#[derive(Module, Debug)]
pub struct Upsample {
    /// 1×1, no bias.
    pub conv: Conv2d,
    /// GroupNorm over `C_i`.
    pub norm: GroupNorm,
    /// `2^(j − i)`.
    pub factor: usize,
}

/// Finer to coarser: `j − i` stride-2 conv3×3, each followed by GroupNorm, with ReLU between
/// them (not after the last); intermediate width `C_j`, last output `C_i`.
#[derive(Module, Debug)]
pub struct Downsample {
    /// The stride-2 convolutions (no bias).
    pub convs: Vec<Conv2d>,
    /// One GroupNorm after each convolution.
    pub norms: Vec<GroupNorm>,
}

/// `y_i = Σ_j T_ij(out_j)` with `T_ii` the identity.
#[derive(Module, Debug)]
pub struct Fusion {
    /// Upsampling maps in order of `(i, j)` with `j > i`, row-major.
    pub up: Vec<Upsample>,
    /// Downsampling maps in order of `(i, j)` with `j < i`, row-major.
    pub down: Vec<Downsample>,
    /// Number of branches.
    pub branches: usize,
}

impl Fusion {
    pub(crate) fn new(
        channels: &[usize],
        groups: usize,
        std: f64,
        device: &burn::tensor::Device,
    ) -> Self {
        let n = channels.len();
        let (mut up, mut down) = (Vec::new(), Vec::new());
        for i in 0..n {
            for j in 0..n {
                if j > i {
                    up.push(Upsample {
                        conv: conv([channels[j], channels[i]], 1, 1, false, std, device),
                        norm: group_norm(groups, channels[i], true, device),
                        factor: 1 << (j - i),
                    });
                } else if j < i {
                    let steps = i - j;
                    let (mut convs, mut norms) = (Vec::new(), Vec::new());
                    for k in 0..steps {
                        let out = if k + 1 == steps {
                            channels[i]
                        } else {
                            channels[j]
                        };
                        convs.push(conv([channels[j], out], 3, 2, false, std, device));
                        norms.push(group_norm(groups, out, true, device));
                    }
                    down.push(Downsample { convs, norms });
                }
            }
        }
        Self {
            up,
            down,
            branches: n,
        }
    }

    /// `outs[i]`: `[batch, C_i, H / 2^i, W / 2^i]` → the fused list, same shapes.
    pub fn forward(&self, outs: &[Tensor<4>]) -> Vec<Tensor<4>> {
        let n = self.branches;
        let (mut up, mut down) = (self.up.iter(), self.down.iter());
        (0..n)
            .map(|i| {
                let mut y = outs[i].clone();
                for j in 0..n {
                    if j > i {
                        let t = up.next().expect("one upsampling map per pair");
                        y = y + upsample_nearest(
                            apply_group_norm(&t.norm, apply_conv(&t.conv, outs[j].clone())),
                            t.factor,
                        );
                    } else if j < i {
                        let t = down.next().expect("one downsampling map per pair");
                        let mut h = outs[j].clone();
                        for (k, (c, g)) in t.convs.iter().zip(&t.norms).enumerate() {
                            h = apply_group_norm(g, apply_conv(c, h));
                            if k + 1 < t.convs.len() {
                                h = relu(h);
                            }
                        }
                        y = y + h;
                    }
                }
                y
            })
            .collect()
    }
}

impl Fusion {
    /// [`forward`](Self::forward) and its reverse pass at these `outs` (input gradients only;
    /// tensors without autodiff). `None` if a convolution is grouped, dilated or padded
    /// asymmetrically.
    pub(crate) fn linearize(&self, outs: &[Tensor<4>]) -> Option<(Vec<Tensor<4>>, FusionVjp)> {
        let n = self.branches;
        let (mut up, mut down) = (self.up.iter(), self.down.iter());
        let (mut fused, mut paths) = (Vec::with_capacity(n), Vec::new());
        for i in 0..n {
            let mut y = outs[i].clone();
            for j in 0..n {
                if j > i {
                    let t = up.next().expect("one upsampling map per pair");
                    let (h, conv) = conv_vjp(&t.conv, outs[j].clone())?;
                    let (h, norm) = group_norm_vjp(&t.norm, h);
                    y = y + upsample_nearest(h, t.factor);
                    let factor = t.factor;
                    paths.push((i, j, PathVjp::Up(Box::new(UpVjp { conv, norm, factor }))));
                } else if j < i {
                    let t = down.next().expect("one downsampling map per pair");
                    let mut h = outs[j].clone();
                    let mut steps = Vec::with_capacity(t.convs.len());
                    for (k, (c, g)) in t.convs.iter().zip(&t.norms).enumerate() {
                        let (a, conv) = conv_vjp(c, h)?;
                        let (a, norm) = group_norm_vjp(g, a);
                        let (a, relu) = if k + 1 < t.convs.len() {
                            let (a, mask) = relu_with_mask(a);
                            (a, Some(mask))
                        } else {
                            (a, None)
                        };
                        h = a;
                        steps.push(DownStepVjp { conv, norm, relu });
                    }
                    y = y + h;
                    paths.push((i, j, PathVjp::Down(steps)));
                }
            }
            fused.push(y);
        }
        Some((fused, FusionVjp { paths }))
    }
}

/// The reverse pass of [`Fusion::forward`] at one input: `∂y ↦ ∂outs` (branch shapes).
#[derive(Clone, Debug)]
pub(crate) struct FusionVjp {
    /// `(i, j, T_ij)` for every `j ≠ i`: the map from branch `j` into fused branch `i`.
    paths: Vec<(usize, usize, PathVjp)>,
}

#[derive(Clone, Debug)]
enum PathVjp {
    Up(Box<UpVjp>),
    Down(Vec<DownStepVjp>),
}

/// An upsampling path: conv1×1 → GroupNorm → nearest upsampling by `factor`.
#[derive(Clone, Debug)]
struct UpVjp {
    conv: Conv2dVjp,
    norm: GroupNormVjp,
    factor: usize,
}

/// One stride-2 step of a downsampling chain: conv → GroupNorm → ReLU (not after the last).
#[derive(Clone, Debug)]
struct DownStepVjp {
    conv: Conv2dVjp,
    norm: GroupNormVjp,
    relu: Option<Tensor<4>>,
}

impl FusionVjp {
    /// `grads[i] = ∂L/∂y_i` → `∂L/∂outs_j`. The paths run as parallel tasks.
    pub(crate) fn backward(&self, grads: Vec<Tensor<4>>) -> Vec<Tensor<4>> {
        let through: Vec<(usize, Tensor<4>)> = self
            .paths
            .par_iter()
            .map(|(i, j, path)| (*j, path.backward(grads[*i].clone())))
            .collect();
        let mut result = grads;
        for (j, grad) in through {
            result[j] = result[j].clone() + grad;
        }
        result
    }
}

impl PathVjp {
    fn backward(&self, grad: Tensor<4>) -> Tensor<4> {
        match self {
            Self::Up(up) => up
                .conv
                .backward(up.norm.backward(upsample_nearest_backward(grad, up.factor))),
            Self::Down(steps) => steps.iter().rev().fold(grad, |grad, step| {
                let grad = match &step.relu {
                    Some(mask) => grad * mask.clone(),
                    None => grad,
                };
                step.conv.backward(step.norm.backward(grad))
            }),
        }
    }
}

/// The transpose of [`upsample_nearest`]: each `factor × factor` block summed,
/// `[b, c, f·h, f·w] → [b, c, h, w]`.
pub(crate) fn upsample_nearest_backward(grad: Tensor<4>, factor: usize) -> Tensor<4> {
    if factor == 1 {
        return grad;
    }
    let [b, c, height, width] = grad.dims();
    let (h, w) = (height / factor, width / factor);
    grad.reshape([b * c, h, factor, w, factor])
        .sum_dim(4)
        .sum_dim(2)
        .reshape([b, c, h, w])
}

/// Nearest-neighbour upsampling by an integer factor: `[b, c, h, w] → [b, c, f·h, f·w]`.
pub(crate) fn upsample_nearest(x: Tensor<4>, factor: usize) -> Tensor<4> {
    if factor == 1 {
        return x;
    }
    let [b, c, h, w] = x.dims();
    x.reshape([b * c, h, 1, w, 1])
        .expand([b * c, h, factor, w, factor])
        .reshape([b, c, h * factor, w * factor])
}
