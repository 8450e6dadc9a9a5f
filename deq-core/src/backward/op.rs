//! Custom backend ops: the ONE place in the project that touches Burn's backend internals
//! (the autodiff graph and backend primitives). The ops: the gradient-replacing identity that
//! carries every backward mode (and, in a value-replacing form, the fused [`group_norm`]),
//! [`conv2d_same`], a convolution with cheaper gradients (computed on flex by the direct loop of
//! `direct_conv`), the fused [`batch_norm_train`] (its backward a host loop on flex),
//! [`factor_product`], the Broyden solver's product with its inverse estimate and the dot
//! products of its update (also of an iterate's residual, [`residual_factor_product`]),
//! [`push_step`], the solver's step with the write of its vector, and [`residual`], an
//! iterate's residual with its norms (all fused on flex), and `copy_row_pairs`, the row copies
//! of the solvers' per-sample bookkeeping on flex.
//!
//! The gradient-replacing identity:
//! Forward, [`adjoint_identity`] returns its input unchanged. Backward, it hands the incoming
//! gradient `g` (shape `[batch, dim]`) to an [`AdjointMap`] and passes the map's result
//! on to the input's node instead of `g`. Inserted after one tracked application of `f` at the
//! fixed point, this turns ordinary backpropagation into the implicit-function gradient: the
//! map returns the adjoint vector `w`, and autodiff then computes `wᵀ ∂f/∂θ` for every
//! parameter upstream.
use std::sync::{Arc, Mutex};

use burn::backend::autodiff::{
    Autodiff,
    checkpoint::{base::Checkpointer, strategy::CheckpointStrategy},
    grads::Gradients,
    ops::{Backward, Ops, OpsKind},
};
use burn::backend::{
    Backend, Dispatch, DispatchKindConversion, backend_extension, tensor::FloatTensor,
};
use burn::tensor::ops::ConvOptions;
use burn::tensor::{DispatchTensor, Shape, Tensor};

use super::kernel_gradient::{kernel_gradient, shifted_products_pay};
use crate::linearization::{affine, normalize, normalized_backward};

type AdjointFn = Box<dyn FnOnce(Tensor<2>) -> Tensor<2> + Send>;

/// The backward rule of [`adjoint_identity`]: maps the incoming gradient `∇L` to the vector
/// passed upstream. It runs at most once (a graph is consumed by one backward).
#[derive(Clone)]
pub struct AdjointMap(Arc<Mutex<Option<AdjointFn>>>);

impl AdjointMap {
    /// Wraps a function of the incoming gradient, `[batch, dim] -> [batch, dim]`. It receives
    /// and must return tensors without autodiff.
    pub fn new(map: impl FnOnce(Tensor<2>) -> Tensor<2> + Send + 'static) -> Self {
        Self(Arc::new(Mutex::new(Some(Box::new(map)))))
    }

    fn apply(&self, grad: Tensor<2>) -> Tensor<2> {
        let map = self
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take();
        match map {
            Some(map) => map(grad),
            // A second backward through the same node cannot happen with Burn's consuming
            // backward; pass the gradient through rather than inventing one.
            None => grad,
        }
    }
}

impl std::fmt::Debug for AdjointMap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdjointMap")
    }
}

/// Backend extension carrying the project's custom ops: the gradient-replacing identity in its
/// value-replacing form, the fused BatchNorm, [`conv2d_same`], [`factor_product`] and
/// [`residual`].
#[backend_extension(
    Autodiff,
    Flex: cfg(feature = "flex"),
    NdArray: cfg(feature = "ndarray"),
    Cube: cfg(any(feature = "wgpu", feature = "cuda")),
)]
pub trait DeqOps: Backend {
    /// Returns `value` (same shape as `z`); backward, the gradient `g` becomes `map(g)` for `z`.
    /// With `value = z` this is the gradient-replacing identity (see the module docs).
    #[allow(unused_variables)]
    fn replace_value(
        z: FloatTensor<Self>,
        value: FloatTensor<Self>,
        map: AdjointMap,
    ) -> FloatTensor<Self> {
        value
    }

    /// Returns `value`, BatchNorm's output `x̂ γ + β` (`x̂ = normalized`, per-channel
    /// `inv_std`, shape `[1, C, 1, 1]`); backward, the gradients of `x`, `gamma` and `beta`;
    /// see [`batch_norm_train`].
    #[allow(unused_variables)]
    fn batch_norm_fused(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        value: FloatTensor<Self>,
        normalized: FloatTensor<Self>,
        inv_std: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        value
    }

    /// Stride-1 convolution without bias, `padding` on every side; see [`conv2d_same`].
    /// `routes`: how its backward computes the two gradients.
    #[allow(unused_variables)]
    fn conv2d_same(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        padding: usize,
        routes: ConvRoutes,
    ) -> FloatTensor<Self> {
        Self::conv2d(x, weight, None, same_options(padding))
    }

    /// The kernel gradient (`[out, in, k, k]`) of [`conv2d_same`] with `padding = k / 2`, from
    /// its input `x` (`[batch, in, H, W]`) and output gradient `grad` (`[batch, out, H, W]`).
    /// `None`, the default, where the routes of [`ConvRoutes`] run instead; flex overrides it.
    #[allow(unused_variables)]
    fn conv2d_same_kernel_gradient(
        x: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        kernel: usize,
    ) -> Option<FloatTensor<Self>> {
        None
    }

    /// BatchNorm's backward fused on the host: from the output gradient `grad` and `x̂ =
    /// normalized` (`[batch, C, H, W]`), `inv_std` (`[1, C, 1, 1]`) and `gamma` (`[C]`), the
    /// input gradient (when `input` is true) and the per-channel sums `Σ g` and `Σ g x̂` (`[C]`
    /// each, the gradients of `β` and `γ`). `None`, the default, where the tensor operations
    /// of [`batch_norm_train`]'s backward run instead; flex overrides it.
    #[allow(unused_variables, clippy::type_complexity)]
    fn batch_norm_backward(
        grad: FloatTensor<Self>,
        normalized: FloatTensor<Self>,
        inv_std: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        input: bool,
    ) -> Option<(
        Option<FloatTensor<Self>>,
        FloatTensor<Self>,
        FloatTensor<Self>,
    )> {
        None
    }

    /// `(w, dots)` for the product of a Broyden inverse in product form with `x`
    /// (`[batch, dim]`), its factors' vectors being rows of `steps` (`[batch, slots, dim]`):
    /// see [`factor_product`]. `None`, the default, where [`factor_product`] runs tensor
    /// operations instead; flex overrides it with one fused host loop per sample.
    #[allow(unused_variables)]
    fn factor_product(
        steps: FloatTensor<Self>,
        x: FloatTensor<Self>,
        plan: FactorPlan,
    ) -> Option<(FloatTensor<Self>, FloatTensor<Self>)> {
        None
    }

    /// `(w, values)` for the product of a Broyden inverse in product form with the residual
    /// `fz − z` of fixed-point iterates (`[batch, dim]` each), with per sample `‖fz − z‖²`,
    /// `‖fz‖²` and the two dot products of [`factor_product`] (`values`: `[batch, 4]`): see
    /// [`residual_factor_product`]. `None`, the default, where the residual and the product run
    /// one after the other; flex overrides it with one fused host loop per sample.
    #[allow(unused_variables)]
    fn residual_factor_product(
        steps: FloatTensor<Self>,
        z: FloatTensor<Self>,
        fz: FloatTensor<Self>,
        plan: FactorPlan,
    ) -> Option<(FloatTensor<Self>, FloatTensor<Self>)> {
        None
    }

    /// `(steps, next, units)` for one Broyden step with the write of its vector: see
    /// [`push_step`] (`scale`: one per sample). `None`, the default, where [`push_step`] runs
    /// tensor operations instead; flex overrides it with one fused host loop per sample.
    #[allow(unused_variables, clippy::type_complexity)]
    fn push_step(
        steps: FloatTensor<Self>,
        w: FloatTensor<Self>,
        z: FloatTensor<Self>,
        scale: Vec<f32>,
        slots: Vec<Option<usize>>,
    ) -> Option<(FloatTensor<Self>, FloatTensor<Self>, Vec<f32>)> {
        None
    }

    /// `to` with row `from_row` of `from` copied over row `to_row` for each `(to_row,
    /// from_row)` in `pairs`, a row being `dim` consecutive values of the tensor's (row-major)
    /// contents; same dtype. The host row copies of `op::copy_rows`, `op::gather_slot` and
    /// `op::scatter_slot`. `None`, the default, where the callers' tensor operations run
    /// instead; flex overrides it with one loop on the host.
    #[allow(unused_variables)]
    fn copy_row_pairs(
        to: FloatTensor<Self>,
        from: FloatTensor<Self>,
        dim: usize,
        pairs: Vec<(usize, usize)>,
    ) -> Option<FloatTensor<Self>> {
        None
    }

    /// The residual `g = fz − z` of a fixed-point iterate (`z`, `fz`: `[batch, dim]`) and, per
    /// sample, `‖g‖²` and `‖fz‖²` (`[batch, 2]`); see [`residual`]. This body is a
    /// subtraction and two batched dot products; flex overrides it with one fused host loop.
    fn residual(
        z: FloatTensor<Self>,
        fz: FloatTensor<Self>,
        shape: [usize; 2],
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        batched_residual::<Self>(z, fz, shape)
    }
}

/// [`DeqOps::residual`] as a subtraction and two batched dot products on any backend.
fn batched_residual<B: Backend>(
    z: FloatTensor<B>,
    fz: FloatTensor<B>,
    shape: [usize; 2],
) -> (FloatTensor<B>, FloatTensor<B>) {
    let g = B::float_sub(fz.clone(), z);
    let squares = B::float_cat(
        vec![
            row_dot::<B>(g.clone(), g.clone(), shape),
            row_dot::<B>(fz.clone(), fz, shape),
        ],
        1,
    );
    (g, squares)
}

/// Per row, `aᵢ · bᵢ` (`[batch, dim]` each → `[batch, 1]`), as a batched matrix product.
fn row_dot<B: Backend>(
    a: FloatTensor<B>,
    b: FloatTensor<B>,
    [batch, dim]: [usize; 2],
) -> FloatTensor<B> {
    let a = B::float_reshape(a, Shape::new([batch, 1, dim]));
    let b = B::float_reshape(b, Shape::new([batch, dim, 1]));
    B::float_reshape(B::float_matmul(a, b), Shape::new([batch, 1]))
}

/// A product with a Broyden inverse in product form, per sample (see [`factor_product`]).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FactorPlan {
    /// Start from `−x` instead of `x`.
    pub negate: bool,
    /// One plan per sample.
    pub samples: Vec<SamplePlan>,
}

/// One sample's factors, in the order they apply, and its newest step.
#[derive(Clone, Debug, PartialEq)]
pub struct SamplePlan {
    /// The factors `I + scale · a dᵀ`, the first applied first.
    pub factors: Vec<PlanFactor>,
    /// The slot of the step whose dot products with `w` and itself are wanted.
    pub newest: Option<usize>,
    /// That step is its row times this (a power of two for half-precision steps, which are
    /// stored scaled; 1 otherwise).
    pub newest_scale: f64,
}

impl Default for SamplePlan {
    /// No factors, no newest step.
    fn default() -> Self {
        Self {
            factors: Vec::new(),
            newest: None,
            newest_scale: 1.0,
        }
    }
}

/// One factor `I + scale · a dᵀ` of a [`SamplePlan`]: `a` and `d` are rows of the sample's steps.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PlanFactor {
    /// The slot of `d`, the vector of the dot product.
    pub dot: usize,
    /// The slot of `a`, the vector added.
    pub axpy: usize,
    /// The factor's scale.
    pub scale: f64,
}

#[cfg(feature = "flex")]
use burn::backend::Flex;
#[cfg(feature = "flex")]
use half::f16;

#[cfg(feature = "flex")]
impl DeqOps for Flex {
    /// The direct loop of `backward::direct_conv` for `f32` tensors; anything else takes
    /// Burn's convolution.
    fn conv2d_same(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        padding: usize,
        _routes: ConvRoutes,
    ) -> FloatTensor<Self> {
        use super::direct_conv::{ConvShape, conv2d_same};
        use burn::tensor::{DType, TensorData};
        let (dims, kernel_dims) = (
            x.layout().shape().to_vec(),
            weight.layout().shape().to_vec(),
        );
        let fits = x.dtype() == DType::F32
            && weight.dtype() == DType::F32
            && dims.len() == 4
            && kernel_dims.len() == 4
            && kernel_dims[1] == dims[1]
            && kernel_dims[2] == 2 * padding + 1
            && kernel_dims[3] == 2 * padding + 1;
        if !fits {
            return <Self as burn::backend::ops::ModuleOps<Self>>::conv2d(
                x,
                weight,
                None,
                same_options(padding),
            );
        }
        let shape = ConvShape {
            batch: dims[0],
            channels_in: dims[1],
            channels_out: kernel_dims[0],
            height: dims[2],
            width: dims[3],
            kernel: kernel_dims[2],
        };
        let (x, weight) = (x.to_contiguous(), weight.to_contiguous());
        let mut out = vec![0f32; shape.batch * shape.channels_out * shape.height * shape.width];
        conv2d_same(
            x.as_slice::<f32>().expect("contiguous"),
            weight.as_slice::<f32>().expect("contiguous"),
            shape,
            &mut out,
        );
        FloatTensor::<Self>::from_data(TensorData::new(
            out,
            [shape.batch, shape.channels_out, shape.height, shape.width],
        ))
    }

    /// The outer-product loop of `backward::direct_kernel_gradient`, for `f32` tensors and
    /// kernels larger than 1×1.
    fn conv2d_same_kernel_gradient(
        x: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        kernel: usize,
    ) -> Option<FloatTensor<Self>> {
        use super::direct_conv::ConvShape;
        use super::direct_kernel_gradient::kernel_gradient;
        use burn::tensor::{DType, TensorData};
        let (dims, grad_dims) = (x.layout().shape().to_vec(), grad.layout().shape().to_vec());
        // 1×1 kernels keep the batched matrix products of `kernel_gradient.rs`: with one tap
        // per channel, the loop's transposed copies cost more than they save (up to 2.4× slower
        // on the MDEQ heads' 1×1 convolutions, `docs/RESULTS.md`).
        let fits = x.dtype() == DType::F32
            && grad.dtype() == DType::F32
            && kernel % 2 == 1
            && kernel > 1
            && dims.len() == 4
            && grad_dims.len() == 4
            && (grad_dims[0], grad_dims[2], grad_dims[3]) == (dims[0], dims[2], dims[3]);
        if !fits {
            return None;
        }
        let shape = ConvShape {
            batch: dims[0],
            channels_in: dims[1],
            channels_out: grad_dims[1],
            height: dims[2],
            width: dims[3],
            kernel,
        };
        let (x, grad) = (x.to_contiguous(), grad.to_contiguous());
        let mut out = vec![0f32; shape.channels_out * shape.channels_in * kernel * kernel];
        kernel_gradient(
            x.as_slice::<f32>().expect("contiguous"),
            grad.as_slice::<f32>().expect("contiguous"),
            shape,
            &mut out,
        );
        Some(FloatTensor::<Self>::from_data(TensorData::new(
            out,
            [shape.channels_out, shape.channels_in, kernel, kernel],
        )))
    }

    /// The two passes of `backward::batch_norm_kernel`, for `f32` tensors.
    fn batch_norm_backward(
        grad: FloatTensor<Self>,
        normalized: FloatTensor<Self>,
        inv_std: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        input: bool,
    ) -> Option<(
        Option<FloatTensor<Self>>,
        FloatTensor<Self>,
        FloatTensor<Self>,
    )> {
        use super::batch_norm_kernel::{NormShape, batch_norm_backward};
        use burn::tensor::{DType, TensorData};
        let dims = grad.layout().shape().to_vec();
        let f32s = [&grad, &normalized, &inv_std, &gamma]
            .iter()
            .all(|t| t.dtype() == DType::F32);
        if !f32s || dims.len() != 4 {
            return None;
        }
        let shape = NormShape {
            batch: dims[0],
            channels: dims[1],
            pixels: dims[2] * dims[3],
        };
        let [grad, normalized, inv_std, gamma] =
            [grad, normalized, inv_std, gamma].map(|t| t.to_contiguous());
        let slice = |t: &FloatTensor<Self>| t.as_slice::<f32>().expect("contiguous").to_vec();
        let scale: Vec<f32> = slice(&gamma)
            .iter()
            .zip(slice(&inv_std))
            .map(|(g, s)| g * s)
            .collect();
        let mut grad_x = input.then(|| vec![0f32; grad.layout().num_elements()]);
        let sums = batch_norm_backward(
            grad.as_slice::<f32>().expect("contiguous"),
            normalized.as_slice::<f32>().expect("contiguous"),
            &scale,
            shape,
            grad_x.as_deref_mut(),
        );
        let channel = |values: Vec<f32>| {
            FloatTensor::<Self>::from_data(TensorData::new(values, [shape.channels]))
        };
        Some((
            grad_x.map(|values| FloatTensor::<Self>::from_data(TensorData::new(values, dims))),
            channel(sums.iter().map(|s| s.0 as f32).collect()),
            channel(sums.iter().map(|s| s.1 as f32).collect()),
        ))
    }

    /// The fused per-sample loop of `solver::product_kernel` on the tensors' own memory, for
    /// `f32` (the steps `f32` or `f16`): in place in `x`'s buffer when `x` is contiguous and
    /// not shared (otherwise in a copy), reading the steps where they are (a copy first if
    /// their slots are not rows of one buffer).
    fn factor_product(
        steps: FloatTensor<Self>,
        x: FloatTensor<Self>,
        plan: FactorPlan,
    ) -> Option<(FloatTensor<Self>, FloatTensor<Self>)> {
        use crate::solver::product_kernel::Input;
        use burn::tensor::{DType, TensorData};
        if !host_steps(steps.dtype()) || x.dtype() != DType::F32 {
            return None;
        }
        let steps = FlexSteps::of(steps);
        let (batch, dim) = (steps.batch, steps.dim);
        let mut w = writable(x);
        let mut dots = vec![0f32; 2 * batch];
        let out = &mut w.storage_mut::<f32>()[..batch * dim];
        steps.product(Input::InPlace, out, &plan, &mut dots);
        let dots = FloatTensor::<Self>::from_data(TensorData::new(dots, [batch, 2]));
        Some((w, dots))
    }

    /// The fused per-sample loop of `solver::product_kernel` with the residual taken in its
    /// first sweep, for `f32` (the steps `f32` or `f16`): `z` and `fz` are read where they are
    /// (copies first if they are not contiguous), the product is written to a new buffer.
    fn residual_factor_product(
        steps: FloatTensor<Self>,
        z: FloatTensor<Self>,
        fz: FloatTensor<Self>,
        plan: FactorPlan,
    ) -> Option<(FloatTensor<Self>, FloatTensor<Self>)> {
        use crate::solver::product_kernel::Input;
        use burn::tensor::{DType, TensorData};
        if !host_steps(steps.dtype()) || [&z, &fz].iter().any(|t| t.dtype() != DType::F32) {
            return None;
        }
        let steps = FlexSteps::of(steps);
        let (batch, dim) = (steps.batch, steps.dim);
        let (z, fz) = (z.to_contiguous(), fz.to_contiguous());
        let mut w = vec![0f32; batch * dim];
        let mut values = vec![0f32; 4 * batch];
        let input = Input::Residual {
            z: z.as_slice::<f32>().expect("contiguous"),
            fz: fz.as_slice::<f32>().expect("contiguous"),
        };
        steps.product(input, &mut w, &plan, &mut values);
        let tensor = |values: Vec<f32>, width: usize| {
            FloatTensor::<Self>::from_data(TensorData::new(values, [batch, width]))
        };
        Some((tensor(w, dim), tensor(values, 4)))
    }

    /// The fused loop of `solver::step_kernel` for `f32` (the ring `f32` or `f16`): the ring
    /// and `w` are written in place when they are contiguous and not shared (otherwise copies
    /// are), `z` is read where it is.
    fn push_step(
        steps: FloatTensor<Self>,
        w: FloatTensor<Self>,
        z: FloatTensor<Self>,
        scale: Vec<f32>,
        slots: Vec<Option<usize>>,
    ) -> Option<(FloatTensor<Self>, FloatTensor<Self>, Vec<f32>)> {
        use crate::solver::step_kernel::push_step;
        use burn::tensor::DType;
        if !host_steps(steps.dtype()) || [&w, &z].iter().any(|t| t.dtype() != DType::F32) {
            return None;
        }
        let (mut steps, mut w, z) = (writable(steps), writable(w), z.to_contiguous());
        let [batch, capacity, dim] = [0, 1, 2].map(|k| steps.layout().shape()[k]);
        let n = batch * capacity * dim;
        let z = z.as_slice::<f32>().expect("contiguous");
        let out = &mut w.storage_mut::<f32>()[..batch * dim];
        let units = match steps.dtype() {
            DType::F16 => push_step(
                &mut steps.storage_mut::<f16>()[..n],
                &slots,
                &scale,
                z,
                out,
                dim,
            ),
            _ => push_step(
                &mut steps.storage_mut::<f32>()[..n],
                &slots,
                &scale,
                z,
                out,
                dim,
            ),
        };
        Some((steps, w, units))
    }

    /// Row copies into `to`'s buffer when it is contiguous and not shared (otherwise into a
    /// copy of it), reading `from` where it is (a contiguous copy first if it is not), for
    /// `f32`, `f64` and `f16`.
    fn copy_row_pairs(
        to: FloatTensor<Self>,
        from: FloatTensor<Self>,
        dim: usize,
        pairs: Vec<(usize, usize)>,
    ) -> Option<FloatTensor<Self>> {
        use burn::tensor::DType;
        fn copy<E: Copy>(to: &mut [E], from: &[E], dim: usize, pairs: &[(usize, usize)]) {
            for &(t, f) in pairs {
                to[t * dim..][..dim].copy_from_slice(&from[f * dim..][..dim]);
            }
        }
        let dtype = to.dtype();
        if from.dtype() != dtype || !matches!(dtype, DType::F32 | DType::F64 | DType::F16) {
            return None;
        }
        let (mut to, from) = (writable(to), from.to_contiguous());
        let n = to.layout().num_elements();
        match dtype {
            DType::F32 => copy(
                &mut to.storage_mut::<f32>()[..n],
                from.as_slice::<f32>().expect("contiguous"),
                dim,
                &pairs,
            ),
            DType::F16 => copy(
                &mut to.storage_mut::<f16>()[..n],
                from.as_slice::<f16>().expect("contiguous"),
                dim,
                &pairs,
            ),
            _ => copy(
                &mut to.storage_mut::<f64>()[..n],
                from.as_slice::<f64>().expect("contiguous"),
                dim,
                &pairs,
            ),
        }
        Some(to)
    }

    /// The fused loop of `solver::residual_kernel` for `f32` tensors.
    fn residual(
        z: FloatTensor<Self>,
        fz: FloatTensor<Self>,
        shape: [usize; 2],
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        use crate::solver::residual_kernel::residual;
        use burn::tensor::{DType, TensorData};
        let [batch, dim] = shape;
        if z.dtype() != DType::F32 || fz.dtype() != DType::F32 {
            return batched_residual::<Self>(z, fz, shape);
        }
        let (z, fz) = (z.to_contiguous(), fz.to_contiguous());
        let mut g = vec![0f32; batch * dim];
        let mut squares = vec![0f32; 2 * batch];
        residual(
            z.as_slice::<f32>().expect("contiguous"),
            fz.as_slice::<f32>().expect("contiguous"),
            dim,
            &mut g,
            &mut squares,
        );
        let tensor = |values: Vec<f32>, width: usize| {
            FloatTensor::<Self>::from_data(TensorData::new(values, [batch, width]))
        };
        (tensor(g, dim), tensor(squares, 2))
    }
}

/// Whether the host kernels read and write steps of this dtype: `f32`, or the half-precision
/// steps of `solver::StepPrecision::Half`.
#[cfg(feature = "flex")]
fn host_steps(dtype: burn::tensor::DType) -> bool {
    matches!(dtype, burn::tensor::DType::F32 | burn::tensor::DType::F16)
}

/// `t` itself when it is contiguous from the start of a buffer it alone holds (so that a host
/// loop can write it in place), otherwise a contiguous copy.
#[cfg(feature = "flex")]
fn writable(t: FloatTensor<Flex>) -> FloatTensor<Flex> {
    if t.is_contiguous() && t.layout().start_offset() == 0 && t.is_unique() {
        t
    } else {
        t.to_contiguous()
    }
}

/// A flex ring of steps (`[batch, slots, dim]`) whose slots are rows of one buffer (a copy
/// first when they are not), as the host kernels read it.
#[cfg(feature = "flex")]
struct FlexSteps {
    tensor: FloatTensor<Flex>,
    batch: usize,
    dim: usize,
}

#[cfg(feature = "flex")]
impl FlexSteps {
    fn of(steps: FloatTensor<Flex>) -> Self {
        let rows = |t: &FloatTensor<Flex>| {
            let (shape, strides) = (t.layout().shape(), t.layout().strides());
            strides[2] == 1 && (shape[1] < 2 || strides[1] == shape[2] as isize) && strides[0] >= 0
        };
        let tensor = if rows(&steps) {
            steps
        } else {
            steps.to_contiguous()
        };
        let [batch, dim] = [0, 2].map(|k| tensor.layout().shape()[k]);
        Self { tensor, batch, dim }
    }

    /// `solver::product_kernel::factor_product` over these steps, read in their dtype (`f32`
    /// or `f16`).
    fn product(
        &self,
        input: crate::solver::product_kernel::Input<'_>,
        w: &mut [f32],
        plan: &FactorPlan,
        values: &mut [f32],
    ) {
        use crate::solver::product_kernel::factor_product;
        match self.tensor.dtype() {
            burn::tensor::DType::F16 => {
                factor_product(self.view::<f16>(), input, w, self.dim, plan, values)
            }
            _ => factor_product(self.view::<f32>(), input, w, self.dim, plan, values),
        }
    }

    fn view<E: burn::tensor::Element + bytemuck::Pod>(
        &self,
    ) -> crate::solver::product_kernel::Steps<'_, E> {
        let layout = self.tensor.layout();
        crate::solver::product_kernel::Steps {
            data: &self.tensor.storage::<E>()[layout.start_offset()..],
            sample_stride: layout.strides()[0] as usize,
            slot_stride: self.dim,
        }
    }
}

#[cfg(feature = "ndarray")]
#[allow(deprecated)]
impl DeqOps for burn::backend::NdArray {}
#[cfg(any(feature = "wgpu", feature = "cuda"))]
impl DeqOps for burn::backend::Cube {}

#[derive(Debug)]
struct AdjointBackward;

impl<B: Backend> Backward<B, 1> for AdjointBackward
where
    DispatchTensor: DispatchKindConversion<B>,
{
    type State = AdjointMap;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [parent] = ops.parents;
        let grad = grads.consume::<B>(&ops.node);
        if let Some(parent) = parent {
            let grad = Tensor::<2>::from_primitive::<B>(grad);
            let adjoint = ops.state.apply(grad);
            grads.register::<B>(parent.id, primitive(adjoint));
        }
    }
}

impl<B: Backend + DeqOps, C: CheckpointStrategy> DeqOps for Autodiff<B, C>
where
    DispatchTensor: DispatchKindConversion<B>,
{
    fn replace_value(
        z: FloatTensor<Self>,
        value: FloatTensor<Self>,
        map: AdjointMap,
    ) -> FloatTensor<Self> {
        let (_, guard) = z.into_parts();
        let (value, _) = value.into_parts();
        match AdjointBackward
            .prepare::<C>([guard])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => prep.finish(map, value),
            OpsKind::UnTracked(prep) => prep.finish(value),
        }
    }

    fn batch_norm_fused(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        value: FloatTensor<Self>,
        normalized: FloatTensor<Self>,
        inv_std: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        let (_, x_guard) = x.into_parts();
        let (gamma, gamma_guard) = gamma.into_parts();
        let (_, beta_guard) = beta.into_parts();
        let (value, _) = value.into_parts();
        let (normalized, _) = normalized.into_parts();
        let (inv_std, _) = inv_std.into_parts();
        match BatchNormBackward
            .prepare::<C>([x_guard, gamma_guard, beta_guard])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => prep.finish((normalized, inv_std, gamma), value),
            OpsKind::UnTracked(prep) => prep.finish(value),
        }
    }

    fn conv2d_same(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        padding: usize,
        routes: ConvRoutes,
    ) -> FloatTensor<Self> {
        let (x, x_guard) = x.into_parts();
        let (weight, weight_guard) = weight.into_parts();
        let output = B::conv2d_same(x.clone(), weight.clone(), padding, routes);
        match ConvSameBackward
            .prepare::<C>([x_guard, weight_guard])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => prep.finish((x, weight, padding, routes), output),
            OpsKind::UnTracked(prep) => prep.finish(output),
        }
    }
}

/// Identity on `z` (`[batch, dim]`) whose backward replaces the gradient `g` by `map(g)`.
///
/// When `z` is not tracked by autodiff this is a plain identity and `map` is dropped unused.
pub fn adjoint_identity(z: Tensor<2>, map: AdjointMap) -> Tensor<2> {
    if !z.is_tracked() {
        return z;
    }
    Tensor::from_dispatch(<Dispatch as DeqOps>::replace_value(
        z.clone().into_dispatch(),
        z.into_dispatch(),
        map,
    ))
}

/// Options of a stride-1 convolution with `padding` on every side.
fn same_options(padding: usize) -> ConvOptions<2> {
    ConvOptions::new([1, 1], [padding, padding], [1, 1], 1)
}

/// A gradient computed with public tensor ops, back to the backend primitive a backward
/// registers.
fn primitive<B: Backend, const D: usize>(tensor: Tensor<D>) -> FloatTensor<B>
where
    DispatchTensor: DispatchKindConversion<B>,
{
    tensor
        .try_into_primitive::<B>()
        .expect("the gradients stay on the backend of their inputs")
}

/// Sums of `t` (`[batch, C, H, W]`) over batch and pixels per channel, `[1, C, 1, 1]`, without
/// a transposed copy (the last axes first).
fn channel_sums(t: Tensor<4>) -> Tensor<4> {
    t.sum_dim(3).sum_dim(2).sum_dim(0)
}

#[derive(Debug)]
struct BatchNormBackward;

impl<B: Backend + DeqOps> Backward<B, 3> for BatchNormBackward
where
    DispatchTensor: DispatchKindConversion<B>,
{
    /// `x̂` (`[batch, C, H, W]`), `1 / σ` (`[1, C, 1, 1]`) and `γ` (`[C]`).
    type State = (FloatTensor<B>, FloatTensor<B>, FloatTensor<B>);

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_x, node_gamma, node_beta] = ops.parents;
        let grad = grads.consume::<B>(&ops.node);
        let (normalized, inv_std, gamma) = ops.state;
        if let Some((grad_x, sum_grad, sum_grad_normalized)) = B::batch_norm_backward(
            grad.clone(),
            normalized.clone(),
            inv_std.clone(),
            gamma.clone(),
            node_x.is_some(),
        ) {
            if let (Some(node), Some(grad_x)) = (node_x, grad_x) {
                grads.register::<B>(node.id, grad_x);
            }
            if let Some(node) = node_gamma {
                grads.register::<B>(node.id, sum_grad_normalized);
            }
            if let Some(node) = node_beta {
                grads.register::<B>(node.id, sum_grad);
            }
            return;
        }
        let grad = Tensor::<4>::from_primitive::<B>(grad);
        let normalized = Tensor::<4>::from_primitive::<B>(normalized);
        let [batch, channels, height, width] = grad.dims();
        let count = (batch * height * width) as f64;
        let sum_grad = channel_sums(grad.clone());
        let sum_grad_normalized = channel_sums(grad.clone() * normalized.clone());
        if let Some(node) = node_x {
            // ∂x = γ σ⁻¹ (g − mean(g) − x̂ mean(g x̂)), means over batch and pixels per channel.
            let scale = Tensor::<1>::from_primitive::<B>(gamma).reshape([1, channels, 1, 1])
                * Tensor::<4>::from_primitive::<B>(inv_std);
            let grad_x = (grad
                - sum_grad.clone() / count
                - normalized * (sum_grad_normalized.clone() / count))
                * scale;
            grads.register::<B>(node.id, primitive(grad_x));
        }
        if let Some(node) = node_gamma {
            let grad_gamma = sum_grad_normalized.reshape([channels]);
            grads.register::<B>(node.id, primitive(grad_gamma));
        }
        if let Some(node) = node_beta {
            grads.register::<B>(node.id, primitive(sum_grad.reshape([channels])));
        }
    }
}

/// How the backward of [`conv2d_same`] computes its two gradients.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvRoutes {
    /// The input gradient as a forward convolution with the flipped, transposed kernel
    /// (otherwise Burn's transposed convolution).
    pub input_by_conv: bool,
    /// The kernel gradient as `k²` shifted matrix products (otherwise Burn's, a convolution
    /// with the batch as channels and the output gradient as kernel), where the backend has no
    /// [`DeqOps::conv2d_same_kernel_gradient`] of its own.
    pub kernel_by_products: bool,
}

#[derive(Debug)]
struct ConvSameBackward;

impl<B: Backend + DeqOps> Backward<B, 2> for ConvSameBackward
where
    DispatchTensor: DispatchKindConversion<B>,
{
    /// `x`, the kernel, the padding, and the routes of the two gradients.
    type State = (FloatTensor<B>, FloatTensor<B>, usize, ConvRoutes);

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_x, node_weight] = ops.parents;
        let grad = grads.consume::<B>(&ops.node);
        let (x, weight, padding, routes) = ops.state;
        let options = same_options(padding);
        let tensor = |primitive: FloatTensor<B>| Tensor::<4>::from_primitive::<B>(primitive);
        if let Some(node) = node_x {
            let grad_x = if routes.input_by_conv {
                // The input gradient of a stride-1 "same" convolution is the convolution of the
                // output gradient with the flipped, transposed kernel, taken where it beats
                // Burn's transposed convolution (see `input_gradient_by_conv`).
                let flipped = tensor(weight.clone()).swap_dims(0, 1).flip([2, 3]);
                primitive(conv2d_same(tensor(grad.clone()), flipped))
            } else {
                B::conv2d_x_backward(x.clone(), weight.clone(), grad.clone(), options.clone())
            };
            grads.register::<B>(node.id, grad_x);
        }
        if let Some(node) = node_weight {
            let kernel = 2 * padding + 1;
            let grad_weight = if let Some(grad_weight) =
                B::conv2d_same_kernel_gradient(x.clone(), grad.clone(), kernel)
            {
                grad_weight
            } else if routes.kernel_by_products {
                primitive(kernel_gradient(tensor(x), tensor(grad), kernel))
            } else {
                B::conv2d_weight_backward(x, weight, grad, options)
            };
            grads.register::<B>(node.id, grad_weight);
        }
    }
}

/// Whether the input gradient of a stride-1 "same" convolution `[out, in, k, k]` on `device`
/// is a forward convolution with the flipped, transposed kernel rather than Burn's transposed
/// convolution: on flex, whose forward convolution is the direct loop of `direct_conv` (the
/// implicit backward on MDEQ `small` took 0.79× the time, `docs/RESULTS.md`), and elsewhere
/// when the kernel has more input than output channels (Burn's CPU transposed convolution is a
/// direct loop, about twice as slow as its forward convolution there).
pub(crate) fn input_gradient_by_conv(
    channels_in: usize,
    channels_out: usize,
    device: &burn::tensor::Device,
) -> bool {
    #[cfg(feature = "flex")]
    if *device == burn::tensor::Device::flex() {
        return true;
    }
    let _ = device;
    channels_in > channels_out
}

/// Stride-1 convolution with "same" padding (`k / 2` for a `k × k` kernel) and no bias:
/// `x` `[batch, in, H, W]`, `weight` `[out, in, k, k]` (odd `k`) → `[batch, out, H, W]`.
///
/// The value and gradients are those of `burn::tensor::module::conv2d`, by cheaper routes:
/// - on flex with `f32` tensors, the convolution is the direct loop of `direct_conv` (no im2col
///   copy; about twice as fast on the MDEQ's convolutions);
/// - on flex, and elsewhere when the kernel has more input than output channels, the input
///   gradient is a forward convolution with the flipped, transposed kernel instead of Burn's
///   transposed convolution (see `input_gradient_by_conv`);
/// - on flex with `f32` tensors and kernels larger than 1×1, the kernel gradient is the
///   register-blocked loop of `direct_kernel_gradient` (0.75× the SHINE backward time on MDEQ
///   `tiny`); otherwise on the CPU backends, when the images are wide enough, it is `k²` batched matrix products of shifted
///   views instead of Burn's convolution with the batch as channels (see `kernel_gradient.rs`).
pub fn conv2d_same(x: Tensor<4>, weight: Tensor<4>) -> Tensor<4> {
    let [channels_out, channels_in, kernel, _] = weight.dims();
    let padding = kernel / 2;
    let width = x.dims()[3];
    let routes = ConvRoutes {
        input_by_conv: input_gradient_by_conv(channels_in, channels_out, &x.device()),
        kernel_by_products: crate::device::is_host_memory(&x.device())
            && shifted_products_pay(width, kernel),
    };
    if !x.is_tracked() && !weight.is_tracked() {
        let autodiff = x.is_autodiff() || weight.is_autodiff();
        let (x, weight) = if autodiff {
            (x.autodiff(), weight.autodiff())
        } else {
            (x, weight)
        };
        return Tensor::from_dispatch(<Dispatch as DeqOps>::conv2d_same(
            x.into_dispatch(),
            weight.into_dispatch(),
            padding,
            routes,
        ));
    }
    // Both operands on the autodiff backend (one of them may be a constant).
    let (x, weight) = (x.autodiff(), weight.autodiff());
    Tensor::from_dispatch(<Dispatch as DeqOps>::conv2d_same(
        x.into_dispatch(),
        weight.into_dispatch(),
        padding,
        routes,
    ))
}

/// GroupNorm of `x` (`[batch, C, H, W]`, `C` divisible by `groups`) with optional per-channel
/// scale `gamma` and shift `beta` (`[C]`): the value of `burn::nn::GroupNorm` (biased variance,
/// `epsilon` inside the square root). Panics, like Burn's own operations, when `C` is not a
/// multiple of `groups` or `gamma`/`beta` do not have `C` entries.
///
/// Tracked, the normalisation is one node of the autodiff graph whose backward is the closed
/// form `∂x = σ⁻¹ (g − mean(g) − x̂ · mean(g x̂))` per sample and group (`g` the gradient of
/// `x̂`), instead of the backward of its nine elementwise operations one by one; the affine part
/// stays ordinary autodiff operations.
pub fn group_norm(
    x: Tensor<4>,
    groups: usize,
    gamma: Option<Tensor<1>>,
    beta: Option<Tensor<1>>,
    epsilon: f64,
) -> Tensor<4> {
    let [batch, channels, height, width] = x.dims();
    let tracked = x.is_tracked();
    let (normalized, inv_std) = normalize(x.clone().without_autodiff(), groups, epsilon);
    let normalized = if tracked {
        let size = channels * height * width;
        let saved = normalized.clone();
        let map = AdjointMap::new(move |grad: Tensor<2>| {
            let members = saved.dims()[2];
            normalized_backward(grad.reshape([batch, groups, members]), &saved, &inv_std)
                .reshape([batch, size])
        });
        let value = normalized.reshape([batch, size]).autodiff();
        let z = x.reshape([batch, size]);
        Tensor::<2>::from_dispatch(<Dispatch as DeqOps>::replace_value(
            z.into_dispatch(),
            value.into_dispatch(),
            map,
        ))
        .reshape([batch, channels, height, width])
    } else {
        let normalized = normalized.reshape([batch, channels, height, width]);
        if x.is_autodiff() {
            normalized.autodiff()
        } else {
            normalized
        }
    };
    affine(normalized, gamma, beta)
}

/// BatchNorm in training mode on `x` (`[batch, C, H, W]`) with scale `gamma` and shift `beta`
/// (`[C]`): returns the output `(x − μ) / √(σ² + ε) · γ + β` and the batch statistics `μ`, `σ²`
/// (`[C]`, biased variance, without autodiff), the values of
/// `burn::tensor::module::batch_norm_train`.
///
/// Tracked, the whole layer is one node of the autodiff graph. Its backward takes the
/// per-channel sums of `g` and `g x̂` over batch and pixels in place (Burn's transposes `g` and
/// `g x̂` to `[C, batch · H · W]` first and recomputes `x̂`), and returns the gradients of `x`,
/// `γ` and `β` together.
pub fn batch_norm_train(
    x: Tensor<4>,
    gamma: Tensor<1>,
    beta: Tensor<1>,
    epsilon: f64,
) -> (Tensor<4>, Tensor<1>, Tensor<1>) {
    let [batch, channels, height, width] = x.dims();
    let count = (batch * height * width) as f64;
    let plain = x.clone().without_autodiff();
    let mean = channel_sums(plain.clone()) / count;
    let centered = plain - mean.clone();
    let variance = channel_sums(centered.clone().square()) / count;
    let inv_std = (variance.clone() + epsilon).sqrt().recip();
    let normalized = centered * inv_std.clone();
    let (scale, shift) = (
        gamma
            .clone()
            .without_autodiff()
            .reshape([1, channels, 1, 1]),
        beta.clone().without_autodiff().reshape([1, channels, 1, 1]),
    );
    let value = normalized.clone() * scale + shift;
    let statistics = (mean.reshape([channels]), variance.reshape([channels]));
    if !(x.is_tracked() || gamma.is_tracked() || beta.is_tracked()) {
        let value = if x.is_autodiff() {
            value.autodiff()
        } else {
            value
        };
        return (value, statistics.0, statistics.1);
    }
    let (x, gamma, beta) = (x.autodiff(), gamma.autodiff(), beta.autodiff());
    let value = Tensor::<4>::from_dispatch(<Dispatch as DeqOps>::batch_norm_fused(
        x.into_dispatch(),
        gamma.into_dispatch(),
        beta.into_dispatch(),
        value.autodiff().into_dispatch(),
        normalized.autodiff().into_dispatch(),
        inv_std.autodiff().into_dispatch(),
    ));
    (value, statistics.0, statistics.1)
}

/// The product of a Broyden inverse in product form with `x` (`[batch, dim]`), per sample:
/// `w = ±x` (`−x` when `plan.negate`), then for each factor `I + κ a dᵀ` of the sample's plan in
/// turn `w ← w + κ (d · w) a`, where `a` and `d` are rows (slots) of the sample's `steps`
/// (`[batch, slots, dim]`). Returns `w` and `dots` (`[batch, 2]`): per sample `y · w` and
/// `y · y` for the step `y` in slot `newest` (zeros where the plan names none).
///
/// On flex, with `f32` steps, one fused loop per sample reads each step once from memory (see
/// `solver::product_kernel`); elsewhere, and on autodiff tensors (which keep their graph), one
/// gather, dot product and update per factor.
///
/// # Panics
/// When the plan has another number of samples than `x`, or names a slot outside `steps`.
pub fn factor_product(steps: Tensor<3>, x: Tensor<2>, plan: FactorPlan) -> (Tensor<2>, Tensor<2>) {
    check_plan(&steps, &plan);
    if on_flex_host(&steps, &x) {
        // Flex runs its fused loop for every f32 input: `x` is handed over (not shared), so
        // that the product can be written in its buffer.
        let found =
            <Dispatch as DeqOps>::factor_product(steps.into_dispatch(), x.into_dispatch(), plan);
        let (w, dots) = found.expect("flex computes factor_product for f32 tensors");
        return (Tensor::from_dispatch(w), Tensor::from_dispatch(dots));
    }
    gathered_factor_product(steps, x, &plan)
}

/// Panics unless `plan` has one sample per row of `steps` and names only its slots.
fn check_plan(steps: &Tensor<3>, plan: &FactorPlan) {
    let [batch, slots, _] = steps.dims();
    assert_eq!(
        plan.samples.len(),
        batch,
        "factor_product: one plan per sample"
    );
    let named = plan.samples.iter().flat_map(|s| {
        s.factors
            .iter()
            .flat_map(|f| [f.dot, f.axpy])
            .chain(s.newest)
    });
    assert!(
        named.into_iter().all(|slot| slot < slots),
        "factor_product: a plan names a slot outside {slots}"
    );
}

/// [`factor_product`] of the residual `fz − z` of fixed-point iterates (`[batch, dim]` each),
/// with that residual's squared norms: returns `w`, `squares` (`[batch, 2]`: per sample
/// `‖fz − z‖²` and `‖fz‖²`, as [`residual`]) and `dots` (`[batch, 2]`, as [`factor_product`]).
///
/// On flex, for `f32`, the residual is taken in the product's first sweep: `z` and `fz` are
/// read once and the residual is never stored apart from `w`. Elsewhere, [`residual`] and then
/// [`factor_product`].
///
/// # Panics
/// As [`factor_product`].
pub fn residual_factor_product(
    steps: Tensor<3>,
    z: &Tensor<2>,
    fz: &Tensor<2>,
    plan: FactorPlan,
) -> (Tensor<2>, Tensor<2>, Tensor<2>) {
    if on_flex_host(&steps, z) && on_flex_host(&steps, fz) {
        check_plan(&steps, &plan);
        let found = <Dispatch as DeqOps>::residual_factor_product(
            steps.into_dispatch(),
            z.clone().into_dispatch(),
            fz.clone().into_dispatch(),
            plan,
        );
        let (w, values) = found.expect("flex computes residual_factor_product for f32 tensors");
        let values = Tensor::<2>::from_dispatch(values);
        return (
            Tensor::from_dispatch(w),
            values.clone().narrow(1, 0, 2),
            values.narrow(1, 2, 2),
        );
    }
    let (g, squares) = residual(z.clone(), fz.clone());
    let (w, dots) = factor_product(steps, g, plan);
    (w, squares, dots)
}

/// One step of a Broyden solve with the write of its vector into the inverse's ring of steps
/// (`[batch, slots, dim]`): per sample `b` with a slot `slots[b]`, the step `scale[b] · w_b` is
/// written to that slot and the next iterate is `z_b − scale[b] · w_b`; a sample without a slot
/// keeps `z_b` (`w`, `z`: `[batch, dim]`). Returns the ring, the next iterates and per sample
/// the unit of the written row (the step is the row times it; see `solver::step_kernel`): 1
/// except for the scaled rows of an `f16` ring.
///
/// On flex, for `f32` (the ring `f32` or `f16`), one loop per sample writes both in place (the
/// ring's buffer and `w`'s, when not shared: `w` is handed over); elsewhere, a scaling, a write
/// per slot (cast to the ring's dtype) and a subtraction.
///
/// # Panics
/// When `scale` or `slots` has another length than the batch, or a slot is outside the ring.
pub fn push_step(
    steps: Tensor<3>,
    w: Tensor<2>,
    z: &Tensor<2>,
    scale: &[f64],
    slots: &[Option<usize>],
) -> (Tensor<3>, Tensor<2>, Vec<f32>) {
    use crate::solver::{where_rows, write_slots};
    use burn::tensor::TensorData;
    let [batch, capacity, _] = steps.dims();
    assert!(
        scale.len() == batch && slots.len() == batch,
        "push_step: {} scales and {} slots for batch {batch}",
        scale.len(),
        slots.len()
    );
    assert!(
        slots.iter().flatten().all(|&j| j < capacity),
        "push_step: a slot outside {capacity}"
    );
    if on_flex_host(&steps, &w) && on_flex_host(&steps, z) {
        let found = <Dispatch as DeqOps>::push_step(
            steps.into_dispatch(),
            w.into_dispatch(),
            z.clone().into_dispatch(),
            scale.iter().map(|&s| s as f32).collect(),
            slots.to_vec(),
        );
        let (steps, next, units) = found.expect("flex computes push_step for f32 tensors");
        return (
            Tensor::from_dispatch(steps),
            Tensor::from_dispatch(next),
            units,
        );
    }
    let column = Tensor::<2>::from_data(
        TensorData::new(scale.to_vec(), [batch, 1]),
        (&w.device(), w.dtype()),
    );
    let b = w * column;
    let steps = if steps.dtype() == b.dtype() {
        write_slots(steps, slots, &b)
    } else {
        let dtype = steps.dtype();
        write_slots(steps, slots, &b.clone().cast(dtype))
    };
    let moving: Vec<bool> = slots.iter().map(Option::is_some).collect();
    let next = where_rows(z.clone(), &moving, z.clone() - b);
    (steps, next, vec![1.0; batch])
}

/// Copies the rows where `rows` is true from `value` into `tensor` (both `[batch, dim]`, one
/// flag per row) in one host loop on flex (in place when `tensor` is not shared), for `f32`
/// and `f64` tensors without autodiff, and returns true. Elsewhere returns false and leaves
/// `tensor` as it was.
///
/// # Panics
/// When the shapes differ or `rows` has another length than the batch.
pub(crate) fn copy_rows(tensor: &mut Tensor<2>, rows: &[bool], value: &Tensor<2>) -> bool {
    assert!(
        tensor.dims() == value.dims() && rows.len() == value.dims()[0],
        "copy_rows: {:?} from {:?} with {} flags",
        tensor.dims(),
        value.dims(),
        rows.len()
    );
    let pairs = (0..rows.len()).filter(|&b| rows[b]).map(|b| (b, b));
    host_copy(tensor, value, value.dims()[1], pairs.collect())
}

/// Rows `samples[k]` of column `slot` of the ring `steps` (`[batch, slots, dim]`), copied into
/// a new `[samples.len(), dim]` tensor by one host loop on flex, for `f32` and `f64` tensors
/// without autodiff. `None` elsewhere.
///
/// # Panics
/// When `slot` or a sample is outside the ring.
pub(crate) fn gather_slot(steps: &Tensor<3>, slot: usize, samples: &[usize]) -> Option<Tensor<2>> {
    let [batch, slots, dim] = steps.dims();
    assert!(
        slot < slots && samples.iter().all(|&s| s < batch),
        "gather_slot: slot {slot}, samples {samples:?} of a ring {:?}",
        steps.dims()
    );
    if !host_rows(steps, steps) {
        return None;
    }
    let mut rows = zeros([samples.len(), dim], &steps.device(), steps.dtype());
    let pairs = samples
        .iter()
        .enumerate()
        .map(|(k, &s)| (k, s * slots + slot));
    host_copy(&mut rows, steps, dim, pairs.collect()).then_some(rows)
}

/// Writes row `k` of `data` (`[n, dim]`) to column `slot` of sample `s` of the ring `steps`
/// (`[batch, slots, dim]`) for each `(s, k)` in `pairs`, by one host loop on flex (in place
/// when the ring is not shared), for `f32` and `f64` tensors without autodiff, and returns
/// true. Elsewhere returns false and leaves `steps` as it was.
///
/// # Panics
/// When a pair or `slot` is outside the tensors, or their `dim` differs.
pub(crate) fn scatter_slot(
    steps: &mut Tensor<3>,
    slot: usize,
    data: &Tensor<2>,
    pairs: &[(usize, usize)],
) -> bool {
    let ([batch, slots, dim], [n, width]) = (steps.dims(), data.dims());
    assert!(
        slot < slots && width == dim && pairs.iter().all(|&(s, k)| s < batch && k < n),
        "scatter_slot: slot {slot}, pairs {pairs:?}, rows {:?} into a ring {:?}",
        data.dims(),
        steps.dims()
    );
    let pairs = pairs.iter().map(|&(s, k)| (s * slots + slot, k));
    host_copy(steps, data, dim, pairs.collect())
}

/// [`DeqOps::copy_row_pairs`] into `to` (updated in place) on the host route
/// ([`host_rows`]): returns true. Elsewhere returns false and leaves `to` as it was.
#[cfg_attr(not(feature = "flex"), allow(unused_variables))]
fn host_copy<const D: usize, const E: usize>(
    to: &mut Tensor<D>,
    from: &Tensor<E>,
    dim: usize,
    pairs: Vec<(usize, usize)>,
) -> bool {
    #[cfg(feature = "flex")]
    {
        if host_rows(to, from) {
            let empty = Tensor::empty([0; D], (&to.device(), to.dtype()));
            let copied = <Dispatch as DeqOps>::copy_row_pairs(
                std::mem::replace(to, empty).into_dispatch(),
                from.clone().into_dispatch(),
                dim,
                pairs,
            )
            .expect("flex copies f32 and f64 rows");
            *to = Tensor::from_dispatch(copied);
            return true;
        }
    }
    false
}

/// Both tensors are on flex without autodiff, with one dtype, `f32` or `f64`: the route of the
/// host row copies.
fn host_rows<const D: usize, const E: usize>(a: &Tensor<D>, b: &Tensor<E>) -> bool {
    !(a.is_autodiff() || b.is_autodiff())
        && crate::device::is_flex(&a.device())
        && a.dtype() == b.dtype()
        && matches!(
            a.dtype(),
            burn::tensor::DType::F32 | burn::tensor::DType::F64 | burn::tensor::DType::F16
        )
}

/// Zeros of `dtype` on `device`. On flex, for `f32` and `f64`, built from a vector of that type:
/// flex's `zeros` fills a byte vector, which the byte buffer then copies once more to align it
/// (half the cost of a solve's ring of steps, measured on `small`).
pub(crate) fn zeros<const D: usize>(
    shape: [usize; D],
    device: &burn::tensor::Device,
    dtype: burn::tensor::DType,
) -> Tensor<D> {
    use burn::tensor::{DType, TensorData};
    let n = shape.iter().product();
    match dtype {
        DType::F32 if crate::device::is_flex(device) => {
            Tensor::from_data(TensorData::new(vec![0f32; n], shape), (device, DType::F32))
        }
        DType::F64 if crate::device::is_flex(device) => {
            Tensor::from_data(TensorData::new(vec![0f64; n], shape), (device, DType::F64))
        }
        DType::F16 if crate::device::is_flex(device) => Tensor::from_data(
            TensorData::new(vec![half::f16::ZERO; n], shape),
            (device, DType::F16),
        ),
        dtype => Tensor::zeros(shape, (device, dtype)),
    }
}

/// Both tensors are `f32` on flex without autodiff: [`DeqOps::factor_product`]'s fused route.
/// Whether a ring of half-precision steps for iterates like `like` runs on the host kernels:
/// flex, `f32`, no autodiff (see `solver::StepPrecision::Half`).
pub(crate) fn half_steps_run_here(like: &Tensor<2>) -> bool {
    let ring = Tensor::<3>::empty([0, 0, 0], (&like.device(), burn::tensor::DType::F16));
    on_flex_host(&ring, like)
}

fn on_flex_host(steps: &Tensor<3>, x: &Tensor<2>) -> bool {
    use burn::tensor::DType;
    #[cfg(feature = "flex")]
    {
        let plain = !(steps.is_autodiff() || x.is_autodiff());
        let f32s = host_steps(steps.dtype()) && x.dtype() == DType::F32;
        plain && f32s && crate::device::is_flex(&x.device())
    }
    #[cfg(not(feature = "flex"))]
    {
        let _ = (steps, x, DType::F32);
        false
    }
}

/// [`factor_product`] as tensor operations on any backend: per factor depth, the samples'
/// vectors gathered into `[batch, dim]` rows, one batched dot product and one update (the
/// samples with fewer factors keep their rows).
fn gathered_factor_product(
    steps: Tensor<3>,
    x: Tensor<2>,
    plan: &FactorPlan,
) -> (Tensor<2>, Tensor<2>) {
    use crate::solver::{row_dot, row_index, where_rows};
    use burn::tensor::TensorData;
    let [batch, slots, dim] = steps.dims();
    let (device, dtype) = (x.device(), x.dtype());
    let steps = if steps.dtype() == dtype {
        steps
    } else {
        steps.cast(dtype)
    };
    let flat = steps.reshape([batch * slots, dim]);
    let rows = |slot: &dyn Fn(&SamplePlan) -> Option<usize>| {
        let index: Vec<usize> = plan
            .samples
            .iter()
            .enumerate()
            .map(|(b, s)| b * slots + slot(s).unwrap_or(0))
            .collect();
        flat.clone().select(0, row_index(&index, &device))
    };
    let column = |values: Vec<f64>| {
        Tensor::<2>::from_data(TensorData::new(values, [batch, 1]), (&device, dtype))
    };
    let mut w = if plan.negate { x.neg() } else { x };
    let depth = plan
        .samples
        .iter()
        .map(|s| s.factors.len())
        .max()
        .unwrap_or(0);
    for i in 0..depth {
        let factor = |s: &SamplePlan| s.factors.get(i).copied();
        let present: Vec<bool> = plan.samples.iter().map(|s| factor(s).is_some()).collect();
        let d = rows(&|s| factor(s).map(|f| f.dot));
        let a = rows(&|s| factor(s).map(|f| f.axpy));
        let scale = column(
            plan.samples
                .iter()
                .map(|s| factor(s).map_or(0.0, |f| f.scale))
                .collect(),
        );
        let updated = w.clone() + a * (row_dot(&d, &w) * scale);
        w = if present.iter().all(|&p| p) {
            updated
        } else {
            where_rows(w, &present, updated)
        };
    }
    let named: Vec<bool> = plan.samples.iter().map(|s| s.newest.is_some()).collect();
    let y = rows(&|s| s.newest);
    let dots = Tensor::cat(vec![row_dot(&y, &w), row_dot(&y, &y)], 1);
    let units: Vec<f64> = plan.samples.iter().map(|s| s.newest_scale).collect();
    let dots = if units.iter().all(|&u| u == 1.0) {
        dots
    } else {
        let squared = units.iter().flat_map(|&u| [u, u * u]).collect();
        dots * Tensor::<2>::from_data(TensorData::new(squared, [batch, 2]), (&device, dtype))
    };
    let dots = if named.iter().all(|&n| n) {
        dots
    } else {
        where_rows(Tensor::zeros([batch, 2], (&device, dtype)), &named, dots)
    };
    (w, dots)
}

/// The residual `g = fz − z` of fixed-point iterates `z` and their images `fz` (`[batch, dim]`
/// each), and per sample `‖g‖²` and `‖fz‖²` (`[batch, 2]`).
///
/// On flex, for `f32`, one loop per sample reads `z` and `fz` once (see
/// `solver::residual_kernel`); elsewhere, and on autodiff tensors, a subtraction and two batched
/// dot products.
pub fn residual(z: Tensor<2>, fz: Tensor<2>) -> (Tensor<2>, Tensor<2>) {
    let shape = z.dims();
    let (z, fz) = if z.is_autodiff() || fz.is_autodiff() {
        (z.autodiff(), fz.autodiff())
    } else {
        (z, fz)
    };
    let (g, squares) = <Dispatch as DeqOps>::residual(z.into_dispatch(), fz.into_dispatch(), shape);
    (Tensor::from_dispatch(g), Tensor::from_dispatch(squares))
}
