#![warn(missing_docs)]
//! # deq-core
//!
//! Deep equilibrium (DEQ) layers on Burn, with the implicit backward pass and SHINE.
//!
//! A DEQ layer returns `z*` with `z* = f(z*, x)`, found by a root solver (fixed-point,
//! Anderson, Broyden). Its gradient follows from the implicit function theorem and needs the
//! adjoint `w = (I − J_f)⁻ᵀ ∇L`. [`BackwardMode`] picks how `w` is obtained: an iterative
//! solve (`Implicit`), SHINE's reuse of the forward Broyden inverse (`w ≈ −Bᵀ ∇L`, nearly free),
//! Jacobian-free, phantom or unrolled gradients. Whatever the mode, the layer plugs into Burn's
//! autodiff as a custom op: one ordinary `loss.backward()` gives every gradient.
//!
//! ```
//! use burn::tensor::{Device, Distribution, Tensor};
//! use deq_core::{BackwardMode, DeqConfig, deq_fn};
//!
//! let device = Device::flex().autodiff();
//! let (batch, dim) = (4, 16);
//! // Parameters of f(z, x) = tanh(W z + x), passed with the injection so they get gradients.
//! let w = (Tensor::<2>::random([dim, dim], Distribution::Normal(0.0, 1.0), &device) * 0.1).require_grad();
//! let x = Tensor::<2>::random([batch, dim], Distribution::Normal(0.0, 1.0), &device).require_grad();
//! let f = deq_fn(|z: Tensor<2>, (w, x): &(Tensor<2>, Tensor<2>)| (z.matmul(w.clone()) + x.clone()).tanh());
//!
//! let deq = DeqConfig::broyden(BackwardMode::shine()).init().unwrap();
//! let out = deq.forward(&f, &(w.clone(), x.clone()), Tensor::zeros([batch, dim], &device)).unwrap();
//! assert!(out.stats.all_converged());
//!
//! let loss = out.z.powi_scalar(2).sum();
//! let grads = loss.backward();
//! let grad_w = w.grad(&grads).unwrap();
//! assert_eq!(grad_w.dims(), [dim, dim]);
//! let report = out.backward.get().unwrap();
//! assert_eq!(report.mode, "shine");
//! ```
//!
//! Conventions (see `shine-math.md` in the design notes): Broyden keeps `B ≈ J_g⁻¹` with
//! `g(z) = f(z) − z`, per sample in product form `B = F_{k−1} ⋯ F₀ (−I)` stored as the steps
//! ([`StepInverse`]); SHINE applies the *transpose* `Bᵀ`. [`solver::broyden_from`] starts a
//! solve from a given inverse (SHINE's refine: the forward's, transposed).
//!
//! [`bilevel`] holds the bi-level side of SHINE (hyperparameter optimisation): sparse binary
//! and multinomial logistic regression, L-BFGS with its inverse-Hessian memory exposed,
//! conjugate gradient, the HOAG outer loop and the SHINE / OPA hypergradients.

pub mod backward;
pub mod bilevel;
#[cfg(feature = "flex")]
mod cpu_pool;
pub mod dense;
mod deq;
pub mod device;
mod error;
mod function;
#[cfg(feature = "flex")]
mod isa;
pub mod linearization;
pub mod solver;
mod state;
pub mod toy;

pub use backward::op::{batch_norm_train, conv2d_same, group_norm};
pub use backward::{BackwardMode, BackwardReport, BackwardStats, ParseModeError};
#[cfg(feature = "flex")]
pub use cpu_pool::{CpuPoolError, join_cpu_pool};
pub use deq::{Deq, DeqConfig, DeqOutput};
pub use error::DeqError;
pub use function::{
    DeqFunction, FnDeq, Injection, ModuleDeq, deq_fn, detach_module, module_fn, module_is_autodiff,
};
pub use linearization::Linearization;
pub use solver::{
    BatchMap, SampleStats, SolveStatus, SolverConfig, SolverKind, SolverStats, StepInverse,
    StepPrecision, StopMode, row_index,
};
pub use state::StateShape;
