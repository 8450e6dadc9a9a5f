//! The gradient-replacing identity: the ONE place in the project that touches Burn's backend
//! internals (the autodiff graph and backend primitives).
//!
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
use burn::tensor::{DispatchTensor, Tensor};

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

/// Backend extension carrying the gradient-replacing identity.
#[backend_extension(
    Autodiff,
    Flex: cfg(feature = "flex"),
    NdArray: cfg(feature = "ndarray"),
    Cube: cfg(any(feature = "wgpu", feature = "cuda")),
)]
pub trait AdjointOps: Backend {
    /// Identity forward; see the module docs for the backward.
    #[allow(unused_variables)]
    fn adjoint_identity(z: FloatTensor<Self>, map: AdjointMap) -> FloatTensor<Self> {
        z
    }
}

#[cfg(feature = "flex")]
impl AdjointOps for burn::backend::Flex {}
#[cfg(feature = "ndarray")]
#[allow(deprecated)]
impl AdjointOps for burn::backend::NdArray {}
#[cfg(any(feature = "wgpu", feature = "cuda"))]
impl AdjointOps for burn::backend::Cube {}

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
            let adjoint = adjoint
                .try_into_primitive::<B>()
                .expect("the adjoint map returns a tensor on the backend it was given");
            grads.register::<B>(parent.id, adjoint);
        }
    }
}

impl<B: Backend + AdjointOps, C: CheckpointStrategy> AdjointOps for Autodiff<B, C>
where
    DispatchTensor: DispatchKindConversion<B>,
{
    fn adjoint_identity(z: FloatTensor<Self>, map: AdjointMap) -> FloatTensor<Self> {
        let (primitive, guard) = z.into_parts();
        match AdjointBackward
            .prepare::<C>([guard])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => prep.finish(map, primitive),
            OpsKind::UnTracked(prep) => prep.finish(primitive),
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
    Tensor::from_dispatch(<Dispatch as AdjointOps>::adjoint_identity(
        z.into_dispatch(),
        map,
    ))
}
