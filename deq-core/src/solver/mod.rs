//! Root solvers for `z = F(z)` on batched, flattened states `[batch, dim]`.
//!
//! All three solvers share the per-sample machinery: stopping on the absolute or relative
//! residual, freezing samples that stopped while the others go on, returning each sample's
//! lowest-residual iterate, and a typed [`SolveStatus`]. They run on whatever tensors they are
//! given: the DEQ layer hands them tensors without autodiff, so no graph is built during a
//! solve (the `Unrolled` backward mode is the one deliberate exception).
mod anderson;
mod best;
mod broyden;
mod fixed_point;
mod map;
mod precision;
#[cfg(feature = "flex")]
pub(crate) mod product_kernel;
#[cfg(feature = "flex")]
pub(crate) mod residual_kernel;
mod stats;
mod step_inverse;
#[cfg(feature = "flex")]
pub(crate) mod step_kernel;
mod tracker;
pub(crate) use step_inverse::write_slots;
pub(crate) use tracker::{row_dot, row_norms, where_rows};

use burn::config::Config;
use burn::tensor::Tensor;
use serde::{Deserialize, Serialize};

pub use map::{BatchMap, row_index};
pub use precision::StepPrecision;
pub use stats::{SampleStats, SolveStatus, SolverStats};
pub use step_inverse::StepInverse;

use crate::error::{DeqError, check_nonzero, check_positive, check_unit_interval};

/// Which residual the stopping rule looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum StopMode {
    /// `‖F(z) − z‖ ≤ tol`.
    Absolute,
    /// `‖F(z) − z‖ / (‖F(z)‖ + ε) ≤ tol`.
    Relative,
}

/// The algorithm and its own settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum SolverKind {
    /// `z ← (1 − damping) z + damping F(z)`; `damping` in (0, 1].
    FixedPoint {
        /// Step fraction τ; 1 is the plain iteration.
        damping: f64,
    },
    /// Anderson acceleration.
    Anderson {
        /// Number of past iterates combined (m ≥ 1).
        memory: usize,
        /// Ridge added to the normalised Gram matrix (λ ≥ 0).
        ridge: f64,
        /// Mixing β in (0, 1].
        mixing: f64,
    },
    /// Limited-memory Broyden with `B` per sample in product form over its last steps
    /// ([`StepInverse`]).
    Broyden {
        /// Number of rank-one factors kept per sample (m ≥ 1; `m + 1` steps stored).
        memory: usize,
        /// How the steps are stored ([`StepPrecision::Full`] when absent from a file).
        #[serde(default)]
        steps: StepPrecision,
    },
}

impl SolverKind {
    /// Broyden with the given memory.
    pub fn broyden(memory: usize) -> Self {
        Self::Broyden {
            memory,
            steps: StepPrecision::Full,
        }
    }

    /// Broyden with the given memory and its steps stored at `steps`.
    pub fn broyden_with(memory: usize, steps: StepPrecision) -> Self {
        Self::Broyden { memory, steps }
    }

    /// Anderson with the given memory, ridge 1e-4 and mixing 1.
    pub fn anderson(memory: usize) -> Self {
        Self::Anderson {
            memory,
            ridge: 1e-4,
            mixing: 1.0,
        }
    }

    /// Plain fixed-point iteration.
    pub fn fixed_point() -> Self {
        Self::FixedPoint { damping: 1.0 }
    }

    /// Short name, e.g. `broyden`.
    pub fn name(&self) -> &'static str {
        match self {
            Self::FixedPoint { .. } => "fixed_point",
            Self::Anderson { .. } => "anderson",
            Self::Broyden { .. } => "broyden",
        }
    }

    /// Checks the algorithm's own settings; errors name the field as configured for `role`.
    pub(crate) fn validate(&self, role: SolverRole) -> Result<(), DeqError> {
        match *self {
            Self::FixedPoint { damping } => check_unit_interval(
                role.field("solver.damping", "backward.solver.damping"),
                damping,
            ),
            Self::Anderson {
                memory,
                ridge,
                mixing,
            } => {
                check_nonzero(
                    role.field("solver.memory", "backward.solver.memory"),
                    memory,
                )?;
                if !(ridge.is_finite() && ridge >= 0.0) {
                    return Err(DeqError::InvalidConfig {
                        field: role.field("solver.ridge", "backward.solver.ridge"),
                        value: ridge.to_string(),
                        reason: "must be a finite number ≥ 0",
                    });
                }
                check_unit_interval(
                    role.field("solver.mixing", "backward.solver.mixing"),
                    mixing,
                )
            }
            Self::Broyden { memory, .. } => check_nonzero(
                role.field("solver.memory", "backward.solver.memory"),
                memory,
            ),
        }
    }
}

/// Which solve a [`SolverKind`] configures: the forward one (`solver.*` fields) or the implicit
/// backward's adjoint solve (`backward.solver.*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SolverRole {
    Forward,
    Adjoint,
}

impl SolverRole {
    fn field(self, forward: &'static str, adjoint: &'static str) -> &'static str {
        match self {
            Self::Forward => forward,
            Self::Adjoint => adjoint,
        }
    }
}

/// The stopping rule of one solve.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StopRule {
    /// Residual kind.
    pub mode: StopMode,
    /// Tolerance (> 0).
    pub tol: f64,
    /// A sample whose absolute residual exceeds `divergence_factor ×` its lowest absolute
    /// residual is stopped as [`SolveStatus::Diverged`] (the relative residual stays bounded
    /// when the iterates blow up, so it cannot detect divergence).
    pub divergence_factor: f64,
}

/// Configuration of a forward (or adjoint) solve.
#[derive(Config, Debug, PartialEq)]
pub struct SolverConfig {
    /// The algorithm.
    pub kind: SolverKind,
    /// Iteration budget in training (tracked) mode.
    #[config(default = 30)]
    pub max_iter: usize,
    /// Iteration budget in evaluation mode; `None` uses `max_iter`.
    #[config(default = "None")]
    pub eval_max_iter: Option<usize>,
    /// Stopping tolerance.
    #[config(default = 1e-3)]
    pub tol: f64,
    /// Which residual the tolerance applies to.
    #[config(default = "StopMode::Relative")]
    pub stop: StopMode,
    /// Divergence detection threshold (see [`StopRule`]).
    #[config(default = 1e6)]
    pub divergence_factor: f64,
}

/// The result of a solve.
#[derive(Debug, Clone)]
pub struct SolveResult {
    /// Per-sample lowest-residual iterate, `[batch, dim]`.
    pub z: Tensor<2>,
    /// Per-sample statistics.
    pub stats: SolverStats,
    /// For Broyden: per sample, the inverse estimate current at the returned iterate.
    pub inverse: Option<StepInverse>,
}

impl SolverConfig {
    /// Checks every field; the error names the offending one.
    pub fn validate(&self) -> Result<(), DeqError> {
        self.kind.validate(SolverRole::Forward)?;
        check_nonzero("solver.max_iter", self.max_iter)?;
        if let Some(eval) = self.eval_max_iter {
            check_nonzero("solver.eval_max_iter", eval)?;
        }
        check_positive("solver.tol", self.tol)?;
        check_positive("solver.divergence_factor", self.divergence_factor)?;
        if self.divergence_factor <= 1.0 {
            return Err(DeqError::InvalidConfig {
                field: "solver.divergence_factor",
                value: self.divergence_factor.to_string(),
                reason: "must be > 1",
            });
        }
        Ok(())
    }

    /// The budget for training (`true`) or evaluation (`false`).
    pub fn budget(&self, training: bool) -> usize {
        if training {
            self.max_iter
        } else {
            self.eval_max_iter.unwrap_or(self.max_iter)
        }
    }

    /// The stopping rule.
    pub fn rule(&self) -> StopRule {
        StopRule {
            mode: self.stop,
            tol: self.tol,
            divergence_factor: self.divergence_factor,
        }
    }

    /// Solves `z = map(z)` from `z0` (`[batch, dim]`) with at most `max_iter` iterations after
    /// the initial evaluation.
    ///
    /// Errors: an invalid configuration, or `map` returning a tensor of another shape than
    /// `z0` (or panicking) on its first evaluation. Numerical failures are not errors: they are
    /// reported per sample in the statistics.
    pub fn solve(
        &self,
        map: &mut dyn BatchMap,
        z0: Tensor<2>,
        max_iter: usize,
    ) -> Result<SolveResult, DeqError> {
        self.validate()?;
        let fz0 = first_evaluation(map, &z0)?;
        let rule = self.rule();
        Ok(match self.kind {
            SolverKind::FixedPoint { damping } => {
                let (z, stats) =
                    fixed_point::fixed_point(map, z0, fz0, rule, max_iter, damping).finish();
                SolveResult {
                    z,
                    stats,
                    inverse: None,
                }
            }
            SolverKind::Anderson {
                memory,
                ridge,
                mixing,
            } => {
                let tracker =
                    anderson::anderson(map, z0, fz0, rule, max_iter, memory, ridge, mixing);
                let (z, stats) = tracker.finish();
                SolveResult {
                    z,
                    stats,
                    inverse: None,
                }
            }
            SolverKind::Broyden { memory, steps } => {
                // At most `max_iter` factors are made: a larger ring would only hold zeros.
                let init = StepInverse::identity_with(&z0, memory.min(max_iter), steps);
                let (tracker, inverse) = broyden::broyden(map, z0, fz0, rule, max_iter, init);
                let (z, stats) = tracker.finish();
                SolveResult {
                    z,
                    stats,
                    inverse: Some(inverse),
                }
            }
        })
    }
}

/// Broyden from `z0` with a given initial inverse estimate (e.g. SHINE's refine, which starts
/// the adjoint solve from the forward matrices, transposed). `map`'s first evaluation is checked
/// like in [`SolverConfig::solve`].
pub fn broyden_from(
    map: &mut dyn BatchMap,
    z0: Tensor<2>,
    rule: StopRule,
    max_iter: usize,
    init: StepInverse,
) -> Result<SolveResult, DeqError> {
    let fz0 = first_evaluation(map, &z0)?;
    let (tracker, inverse) = broyden::broyden(map, z0, fz0, rule, max_iter, init);
    let (z, stats) = tracker.finish();
    Ok(SolveResult {
        z,
        stats,
        inverse: Some(inverse),
    })
}

/// Evaluates `map(z0)`, turning a shape mismatch or a panic inside `map` into an error.
fn first_evaluation(map: &mut dyn BatchMap, z0: &Tensor<2>) -> Result<Tensor<2>, DeqError> {
    let shape = z0.dims().to_vec();
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| map.eval(z0.clone())));
    match result {
        Ok(fz0) if fz0.dims().to_vec() == shape => Ok(fz0),
        Ok(fz0) => Err(DeqError::ShapeMismatch {
            what: "f(z0) output",
            expected: shape,
            found: fz0.dims().to_vec(),
        }),
        Err(panic) => {
            let message = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "unknown panic".to_string());
            Err(DeqError::FunctionFailed {
                z0_shape: shape,
                message,
            })
        }
    }
}
