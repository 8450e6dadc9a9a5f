//! Backward modes: how the adjoint `w ≈ (I − J_f)⁻ᵀ ∇L` is obtained.
mod adjoint;
#[cfg(feature = "flex")]
pub(crate) mod batch_norm_kernel;
#[cfg(feature = "flex")]
pub(crate) mod direct_conv;
#[cfg(feature = "flex")]
pub(crate) mod direct_kernel_gradient;
mod kernel_gradient;
#[cfg(feature = "flex")]
pub(crate) mod lanes;
pub mod op;
mod spec;

pub use spec::ParseModeError;

use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use crate::error::{DeqError, check_nonzero, check_positive, check_unit_interval};
use crate::solver::{SolverKind, SolverRole, SolverStats};

pub(crate) use adjoint::{AdjointPlan, adjoint_map};

/// The one enum of backward modes (conventions of `shine-math.md`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum BackwardMode {
    /// Full implicit differentiation: solve `w = J_fᵀ w + ∇L` with `solver` (one
    /// vector-Jacobian product of `f` per iteration) to relative residual `tol`.
    Implicit {
        /// Adjoint solver.
        solver: SolverKind,
        /// Iteration budget of the adjoint solve.
        max_iter: usize,
        /// Relative-residual tolerance of the adjoint solve.
        tol: f64,
    },
    /// SHINE: `w = −Bᵀ ∇L` with `B` the forward Broyden inverse estimate (transposed, as the
    /// theory says; the reference code applies `B`). Needs a Broyden forward solver.
    ///
    /// Samples whose forward solve diverged or went non-finite use `w = ∇L`.
    Shine {
        /// Per-sample fallback to `w = ∇L` when `‖w‖ > τ ‖∇L‖` (reference τ = 1.8).
        fallback: Option<f64>,
        /// Adjoint-Broyden iterations warm-started at the SHINE estimate, with the forward
        /// inverse transposed as initial inverse (`k + 1` products with `J_fᵀ`).
        refine: usize,
    },
    /// Jacobian-free backward: `w = ∇L`, optionally refined by `refine` adjoint-Broyden
    /// iterations from there (initial inverse `−I`).
    JacobianFree {
        /// Number of refinement iterations (0: pure JFB).
        refine: usize,
    },
    /// Backpropagation through `k` damped steps `z ← (1 − τ) z + τ f(z, x)` from `z*`.
    Phantom {
        /// Number of steps (≥ 1).
        k: usize,
        /// Damping τ in (0, 1].
        tau: f64,
    },
    /// Backpropagation through every iteration of the forward solver (memory grows with the
    /// iterations).
    Unrolled,
}

impl BackwardMode {
    /// SHINE without fallback or refinement.
    pub fn shine() -> Self {
        Self::Shine {
            fallback: None,
            refine: 0,
        }
    }

    /// Implicit with Broyden (memory 30), 30 iterations, relative tolerance 1e-6.
    pub fn implicit() -> Self {
        Self::Implicit {
            solver: SolverKind::broyden(30),
            max_iter: 30,
            tol: 1e-6,
        }
    }

    /// Jacobian-free.
    pub fn jacobian_free() -> Self {
        Self::JacobianFree { refine: 0 }
    }

    /// Short name, e.g. `shine`, `implicit`.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Implicit { .. } => "implicit",
            Self::Shine { .. } => "shine",
            Self::JacobianFree { .. } => "jfb",
            Self::Phantom { .. } => "phantom",
            Self::Unrolled => "unrolled",
        }
    }

    /// Checks every field against the forward solver; the error names the offending one.
    pub fn validate(&self, forward: &SolverKind) -> Result<(), DeqError> {
        match self {
            Self::Implicit {
                solver,
                max_iter,
                tol,
            } => {
                solver.validate(SolverRole::Adjoint)?;
                check_nonzero("backward.max_iter", *max_iter)?;
                check_positive("backward.tol", *tol)
            }
            Self::Shine { fallback, .. } => {
                if let Some(tau) = fallback {
                    check_positive("backward.fallback", *tau)?;
                }
                if !matches!(forward, SolverKind::Broyden { .. }) {
                    return Err(DeqError::IncompatibleModes {
                        mode: "shine".into(),
                        solver: forward.name().into(),
                        reason: "SHINE reuses the forward Broyden inverse; use a Broyden forward solver",
                    });
                }
                Ok(())
            }
            Self::JacobianFree { .. } | Self::Unrolled => Ok(()),
            Self::Phantom { k, tau } => {
                check_nonzero("backward.k", *k)?;
                check_unit_interval("backward.tau", *tau)
            }
        }
    }
}

/// What the backward pass did, per batch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BackwardStats {
    /// The mode's short name.
    pub mode: String,
    /// Statistics of the adjoint solve (implicit, refine), if one ran.
    pub adjoint: Option<SolverStats>,
    /// Per sample: whether the SHINE estimate was replaced by `∇L`.
    pub fallback: Vec<bool>,
    /// Vector-Jacobian products of `f` computed.
    pub vjp_evaluations: usize,
}

impl BackwardStats {
    /// Number of samples that fell back to `∇L`.
    pub fn fallback_count(&self) -> usize {
        self.fallback.iter().filter(|&&f| f).count()
    }
}

/// A handle to the statistics of a backward pass that has not run yet: they appear once
/// `loss.backward()` has gone through the layer.
#[derive(Debug, Clone, Default)]
pub struct BackwardReport(pub(crate) Arc<Mutex<Option<BackwardStats>>>);

impl BackwardReport {
    /// The statistics, if the backward pass has run (and the mode has an adjoint step).
    pub fn get(&self) -> Option<BackwardStats> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub(crate) fn set(&self, stats: BackwardStats) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = Some(stats);
    }
}
