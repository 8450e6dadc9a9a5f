//! The input gradient of GroupNorm at a saved point.
use burn::tensor::Tensor;

/// The input gradient of GroupNorm (`burn::nn::GroupNorm`'s value, as [`crate::group_norm`]) at
/// one input, for any number of output gradients. Keeps the normalised input, the inverse
/// standard deviations and the scale.
#[derive(Clone, Debug)]
pub struct GroupNormVjp {
    /// `x̂`: `[batch, groups, members]`.
    normalized: Tensor<3>,
    /// `1/σ`: `[batch, groups, 1]`.
    inv_std: Tensor<3>,
    /// `γ` as `[1, C, 1, 1]`, if affine.
    gamma: Option<Tensor<4>>,
    dims: [usize; 4],
}

impl GroupNormVjp {
    /// GroupNorm of `x` (`[batch, C, H, W]`, `C` divisible by `groups`) with optional scale
    /// `gamma` and shift `beta` (`[C]`), and what its input gradient needs. Panics like
    /// [`crate::group_norm`] on a bad group count.
    pub fn forward(
        x: Tensor<4>,
        groups: usize,
        gamma: Option<Tensor<1>>,
        beta: Option<Tensor<1>>,
        epsilon: f64,
    ) -> (Tensor<4>, Self) {
        let dims = x.dims();
        let (normalized, inv_std) = normalize(x, groups, epsilon);
        let y = affine(normalized.clone().reshape(dims), gamma.clone(), beta);
        (
            y,
            Self {
                normalized,
                inv_std,
                gamma: gamma.map(|gamma| gamma.reshape([1, dims[1], 1, 1])),
                dims,
            },
        )
    }

    /// `∂L/∂x` from `grad = ∂L/∂y` (both `[batch, C, H, W]`).
    pub fn backward(&self, grad: Tensor<4>) -> Tensor<4> {
        let grad = match &self.gamma {
            Some(gamma) => grad * gamma.clone(),
            None => grad,
        };
        let [batch, groups, members] = self.normalized.dims();
        normalized_backward(
            grad.reshape([batch, groups, members]),
            &self.normalized,
            &self.inv_std,
        )
        .reshape(self.dims)
    }
}

/// `(x̂, 1/σ)`: `x` normalised per sample and group (`[batch, groups, members]`) and the
/// inverse standard deviations (`[batch, groups, 1]`); biased variance, `epsilon` inside the
/// square root. Panics when the channels cannot be split into `groups`.
pub(crate) fn normalize(x: Tensor<4>, groups: usize, epsilon: f64) -> (Tensor<3>, Tensor<3>) {
    let [batch, channels, height, width] = x.dims();
    assert!(
        groups > 0 && channels % groups == 0,
        "group_norm: {channels} channels cannot be split into {groups} groups"
    );
    let x = x.reshape([batch, groups, channels / groups * height * width]);
    let centered = x.clone() - x.mean_dim(2);
    let inv_std = (centered.clone().square().mean_dim(2) + epsilon)
        .sqrt()
        .recip();
    (centered * inv_std.clone(), inv_std)
}

/// GroupNorm's affine part: `x` (`[batch, C, H, W]`) scaled by `gamma` and shifted by `beta`
/// (`[C]` each), per channel.
pub(crate) fn affine(x: Tensor<4>, gamma: Option<Tensor<1>>, beta: Option<Tensor<1>>) -> Tensor<4> {
    let shape = [1, x.dims()[1], 1, 1];
    let scaled = match gamma {
        Some(gamma) => x * gamma.reshape(shape),
        None => x,
    };
    match beta {
        Some(beta) => scaled + beta.reshape(shape),
        None => scaled,
    }
}

/// The closed-form gradient of `x ↦ x̂` per sample and group:
/// `∂x = σ⁻¹ (g − mean(g) − x̂ · mean(g x̂))`; `grad` and `normalized` `[batch, groups, members]`,
/// `inv_std` `[batch, groups, 1]`.
pub(crate) fn normalized_backward(
    grad: Tensor<3>,
    normalized: &Tensor<3>,
    inv_std: &Tensor<3>,
) -> Tensor<3> {
    let mean_grad = grad.clone().mean_dim(2);
    let mean_dot = (grad.clone() * normalized.clone()).mean_dim(2);
    (grad - mean_grad - normalized.clone() * mean_dot) * inv_std.clone()
}
