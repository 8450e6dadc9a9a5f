//! Bi-level optimisation (hyperparameter optimisation) with SHINE.
//!
//! Inner problem `x*(λ) = argminₓ h(x, λ)` with `h = Σ log(1 + exp(−yᵢ aᵢᵀx)) + ½ e^λ ‖x‖²`
//! (sums, λ the log of the regularisation strength, no intercept); outer loss `g(x*(λ))` on a
//! validation set. The hypergradient is `∇_λ = −e^λ x*ᵀ H⁻¹ ∇ₓg` with `H = ∇²ₓₓh`; the
//! methods differ in how `q ≈ H⁻¹ ∇ₓg` is obtained ([`HypergradMethod`]): SHINE reuses the
//! inverse-Hessian estimate of the L-BFGS inner solve. Plain Rust on the CPU: sparse data,
//! no autodiff.
mod cg;
mod data;
mod error;
mod hypergrad;
mod lbfgs;
mod logistic;
mod outer;
mod sparse;
mod text;

pub use cg::{CgResult, conjugate_gradient};
pub use data::{breast_cancer, split_indices, split_multinomial, split_problem, synthetic_sparse};
pub use error::BilevelError;
pub use hypergrad::{BilevelProblem, HypergradMethod, Hypergradient};
pub use lbfgs::{LbfgsConfig, LbfgsMemory, LbfgsResult, lbfgs};
pub use logistic::{DataLoss, LogisticLoss, MultinomialLoss, Ridge, RidgeLogistic};
pub use outer::{OuterConfig, OuterMethod, OuterStep, grid_search, optimize_lambda, random_search};
pub use sparse::{CsrMatrix, MAX_LIBSVM_COLUMNS, binary_labels, read_libsvm};
pub use text::{FORTUNES_POSITIVE, fortunes_dataset};
