//! Multiscale fusion: every branch receives every other branch, resampled.
use burn::module::Module;
use burn::nn::GroupNorm;
use burn::nn::conv::Conv2d;
use burn::tensor::Tensor;
use burn::tensor::activation::relu;

use super::{apply_group_norm, conv, group_norm};

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
                            apply_group_norm(&t.norm, t.conv.forward(outs[j].clone())),
                            t.factor,
                        );
                    } else if j < i {
                        let t = down.next().expect("one downsampling map per pair");
                        let mut h = outs[j].clone();
                        for (k, (c, g)) in t.convs.iter().zip(&t.norms).enumerate() {
                            h = apply_group_norm(g, c.forward(h));
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
