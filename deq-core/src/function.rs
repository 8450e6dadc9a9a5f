//! What a DEQ layer solves: the function `f(z, x)` and its injection `x`.
use std::marker::PhantomData;

use burn::module::{Module, ModuleMapper, Param};
use burn::tensor::Tensor;

use crate::linearization::Linearization;

/// The input `x` of `f(z, x)`: anything made of tensors that can be detached.
///
/// Implemented for `Tensor<D>`, `()`, `Vec<T>`, `Option<T>` and tuples of up to four
/// injections, so tracked parameters can also be passed this way (see [`deq_fn`]).
pub trait Injection: Clone + Send + 'static {
    /// The same values without autodiff (no graph is built from them).
    fn without_autodiff(&self) -> Self;
    /// Whether any tensor in it has autodiff enabled.
    fn is_autodiff(&self) -> bool;
}

impl<const D: usize> Injection for Tensor<D> {
    fn without_autodiff(&self) -> Self {
        self.clone().detach().without_autodiff()
    }
    fn is_autodiff(&self) -> bool {
        Tensor::is_autodiff(self)
    }
}

impl Injection for () {
    fn without_autodiff(&self) -> Self {}
    fn is_autodiff(&self) -> bool {
        false
    }
}

impl<T: Injection> Injection for Vec<T> {
    fn without_autodiff(&self) -> Self {
        self.iter().map(Injection::without_autodiff).collect()
    }
    fn is_autodiff(&self) -> bool {
        self.iter().any(Injection::is_autodiff)
    }
}

impl<T: Injection> Injection for Option<T> {
    fn without_autodiff(&self) -> Self {
        self.as_ref().map(Injection::without_autodiff)
    }
    fn is_autodiff(&self) -> bool {
        self.as_ref().is_some_and(Injection::is_autodiff)
    }
}

macro_rules! tuple_injection {
    ($($name:ident $idx:tt),+) => {
        impl<$($name: Injection),+> Injection for ($($name,)+) {
            fn without_autodiff(&self) -> Self {
                ($(self.$idx.without_autodiff(),)+)
            }
            fn is_autodiff(&self) -> bool {
                false $(|| self.$idx.is_autodiff())+
            }
        }
    };
}
tuple_injection!(A 0);
tuple_injection!(A 0, B 1);
tuple_injection!(A 0, B 1, C 2);
tuple_injection!(A 0, B 1, C 2, D 3);

/// A function `f(z, x)` on flattened states `z: [batch, dim] -> [batch, dim]`.
///
/// The layer evaluates it in three ways: on copies without autodiff during the solve and the
/// backward's vector-Jacobian products, and once tracked at the fixed point so that ordinary
/// backpropagation reaches every parameter and the injection.
///
/// Use [`deq_fn`] for a closure, [`module_fn`] for a Burn module, or implement it on your own
/// type (use [`detach_module`] in [`DeqFunction::without_autodiff`]).
pub trait DeqFunction: Send + 'static {
    /// The injection type.
    type Input: Injection;

    /// `f(z, x)`; `z`: `[batch, dim]`, returns `[batch, dim]`.
    fn forward(&self, z: Tensor<2>, x: &Self::Input) -> Tensor<2>;

    /// `f` on some samples of the batch only: `rows` are ascending indices into the batch
    /// of `x`, `z`: `[rows.len(), dim]` their states; returns `[rows.len(), dim]`, the rows
    /// `rows` of `f(z_full, x)` for any `z_full` with those rows.
    ///
    /// `None` (the default): the solvers always evaluate the whole batch. Implement it when
    /// each sample's output depends on that sample alone (no batch statistics), so that the
    /// forward solve stops paying for samples that have converged. Called on the copy from
    /// [`DeqFunction::without_autodiff`].
    fn forward_rows(&self, z: Tensor<2>, x: &Self::Input, rows: &[usize]) -> Option<Tensor<2>> {
        let _ = (z, x, rows);
        None
    }

    /// A copy whose tensors carry no autodiff. Training-mode behaviour must be kept: the copy
    /// must compute exactly the same function (same dropout masks, same normalised weights).
    fn without_autodiff(&self) -> Self
    where
        Self: Sized;

    /// Whether any parameter has autodiff enabled (training mode).
    fn is_autodiff(&self) -> bool;

    /// The product `w ↦ J_f(z, x)ᵀ w` at one point (`z`: `[batch, dim]`, without autodiff),
    /// for the many products of an adjoint solve (implicit backward, refinement).
    ///
    /// `None` (the default): each product evaluates `f` tracked from a fresh leaf and
    /// backpropagates through it. Implement it when a hand-written reverse pass can keep
    /// what it needs from one evaluation (see [`crate::linearization`]); it must give the
    /// same products. Called on the copy from [`DeqFunction::without_autodiff`].
    fn linearize(&self, z: &Tensor<2>, x: &Self::Input) -> Option<Linearization> {
        let _ = (z, x);
        None
    }
}

/// A closure as a [`DeqFunction`]; see [`deq_fn`].
#[derive(Clone)]
pub struct FnDeq<X, F> {
    f: F,
    _input: PhantomData<fn(&X)>,
}

/// Wraps a closure `|z, x| -> f(z, x)` as a [`DeqFunction`].
///
/// The closure must not capture tracked tensors: pass everything that needs a gradient
/// through the injection (a tuple such as `(w, x)` works), so the layer can detach it.
pub fn deq_fn<X, F>(f: F) -> FnDeq<X, F>
where
    X: Injection,
    F: Fn(Tensor<2>, &X) -> Tensor<2> + Clone + Send + 'static,
{
    FnDeq {
        f,
        _input: PhantomData,
    }
}

impl<X, F> DeqFunction for FnDeq<X, F>
where
    X: Injection,
    F: Fn(Tensor<2>, &X) -> Tensor<2> + Clone + Send + 'static,
{
    type Input = X;

    fn forward(&self, z: Tensor<2>, x: &X) -> Tensor<2> {
        (self.f)(z, x)
    }

    fn without_autodiff(&self) -> Self {
        self.clone()
    }

    fn is_autodiff(&self) -> bool {
        false
    }
}

/// A Burn module and a function of it as a [`DeqFunction`]; see [`module_fn`].
#[derive(Clone)]
pub struct ModuleDeq<M, X, F> {
    module: M,
    f: F,
    _input: PhantomData<fn(&X)>,
}

/// Wraps `module` and `|module, z, x| -> f(z, x)` as a [`DeqFunction`]. The module's
/// parameters get their gradients through the layer's single tracked application.
pub fn module_fn<M, X, F>(module: M, f: F) -> ModuleDeq<M, X, F>
where
    M: Module + 'static,
    X: Injection,
    F: Fn(&M, Tensor<2>, &X) -> Tensor<2> + Clone + Send + 'static,
{
    ModuleDeq {
        module,
        f,
        _input: PhantomData,
    }
}

impl<M, X, F> DeqFunction for ModuleDeq<M, X, F>
where
    M: Module + 'static,
    X: Injection,
    F: Fn(&M, Tensor<2>, &X) -> Tensor<2> + Clone + Send + 'static,
{
    type Input = X;

    fn forward(&self, z: Tensor<2>, x: &X) -> Tensor<2> {
        (self.f)(&self.module, z, x)
    }

    fn without_autodiff(&self) -> Self {
        Self {
            module: detach_module(&self.module),
            f: self.f.clone(),
            _input: PhantomData,
        }
    }

    fn is_autodiff(&self) -> bool {
        module_is_autodiff(&self.module)
    }
}

/// A copy of `module` whose float parameters have no autodiff. Unlike `Module::valid`, training
/// flags are left as they are, so the copy computes the same function.
pub fn detach_module<M: Module>(module: &M) -> M {
    struct Detach;
    impl ModuleMapper for Detach {
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
            param.map(|t| t.detach().without_autodiff())
        }
    }
    module.clone().map(&mut Detach)
}

/// Whether any of the module's tensors lives on an autodiff device.
pub fn module_is_autodiff<M: Module>(module: &M) -> bool {
    module.devices().iter().any(|d| d.is_autodiff())
}
