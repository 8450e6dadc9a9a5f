//! Reusable vector-Jacobian products: `w ↦ J_f(z, x)ᵀ w` at one point, for the many products
//! of an adjoint solve.
//!
//! The generic product ([`DeqFunction`](crate::DeqFunction) without a
//! [`linearize`](crate::DeqFunction::linearize)) evaluates `f` tracked from a fresh leaf and
//! walks Burn's autodiff graph back, once per product: Burn's backward consumes its graph, so
//! nothing of the forward evaluation is reused. A [`Linearization`] is built once at `z*` and
//! keeps what the reverse pass needs (normalised activations, ReLU masks, prepared kernels), so
//! each product costs the reverse pass only. The building blocks here ([`GroupNormVjp`],
//! [`Conv2dVjp`], [`relu_with_mask`]) give the input gradients of the common layers.
mod conv;
mod group_norm;

pub use conv::Conv2dVjp;
pub use group_norm::GroupNormVjp;
pub(crate) use group_norm::{affine, normalize, normalized_backward};

use burn::tensor::Tensor;
use burn::tensor::activation::relu;

type VjpFn = Box<dyn Fn(Tensor<2>) -> Tensor<2> + Send + Sync>;

/// `w ↦ J_f(z, x)ᵀ w` at one fixed `(z, x)`: `w` and the result are `[batch, dim]`, without
/// autodiff.
pub struct Linearization(VjpFn);

impl Linearization {
    /// Wraps the product `w ↦ J_f(z, x)ᵀ w` (`[batch, dim] → [batch, dim]`, tensors without
    /// autodiff).
    pub fn new(vjp: impl Fn(Tensor<2>) -> Tensor<2> + Send + Sync + 'static) -> Self {
        Self(Box::new(vjp))
    }

    /// `J_f(z, x)ᵀ w`; `w`: `[batch, dim]`.
    pub fn vjp(&self, w: Tensor<2>) -> Tensor<2> {
        (self.0)(w)
    }
}

impl std::fmt::Debug for Linearization {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Linearization")
    }
}

/// `relu(x)` and the mask of its derivative: 1 where `x > 0`, 0 elsewhere (Burn's convention at
/// 0), in `x`'s dtype. The input gradient is `grad * mask`. Any shape.
pub fn relu_with_mask<const D: usize>(x: Tensor<D>) -> (Tensor<D>, Tensor<D>) {
    let y = relu(x);
    let mask = y.clone().sign();
    (y, mask)
}
