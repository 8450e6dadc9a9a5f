//! The DEQ layer.
use burn::config::Config;
use burn::tensor::Tensor;

use crate::backward::op::adjoint_identity;
use crate::backward::{AdjointPlan, BackwardMode, BackwardReport, adjoint_map};
use crate::error::DeqError;
use crate::function::{DeqFunction, Injection};
use crate::solver::{BatchMap, SolveStatus, SolverConfig, SolverKind, SolverStats, where_rows};

/// Configuration of a [`Deq`] layer: the forward solver and the backward mode.
#[derive(Config, Debug, PartialEq)]
pub struct DeqConfig {
    /// Forward solver (its `max_iter` / `eval_max_iter` are the training / evaluation budgets).
    pub solver: SolverConfig,
    /// How gradients are computed.
    #[config(default = "BackwardMode::Shine { fallback: None, refine: 0 }")]
    pub backward: BackwardMode,
}

impl DeqConfig {
    /// A Broyden (memory 30) forward with 30 iterations to relative residual 1e-3 and the
    /// given backward mode.
    pub fn broyden(backward: BackwardMode) -> Self {
        Self::new(SolverConfig::new(SolverKind::broyden(30))).with_backward(backward)
    }

    /// Validates the configuration and builds the layer.
    pub fn init(&self) -> Result<Deq, DeqError> {
        self.solver.validate()?;
        self.backward.validate(&self.solver.kind)?;
        Ok(Deq {
            config: self.clone(),
        })
    }
}

/// A deep equilibrium layer: returns `z*` with `z* = f(z*, x)`.
///
/// In training mode (any parameter of `f` or tensor of `x` has autodiff enabled) the output is
/// one tracked application `f(z*, x)` followed by a gradient-replacing identity, so that one
/// ordinary `loss.backward()` gives the gradients of the chosen [`BackwardMode`] for the
/// parameters of `f`, everything upstream of `x`, and everything downstream. In evaluation
/// mode the output is `z*` itself and nothing is tracked.
#[derive(Debug, Clone)]
pub struct Deq {
    config: DeqConfig,
}

/// Output of [`Deq::forward`].
#[derive(Debug, Clone)]
pub struct DeqOutput {
    /// The equilibrium state, `[batch, dim]`.
    pub z: Tensor<2>,
    /// Per-sample statistics of the forward solve.
    pub stats: SolverStats,
    /// Statistics of the backward pass, available after `loss.backward()`.
    pub backward: BackwardReport,
}

impl Deq {
    /// The configuration.
    pub fn config(&self) -> &DeqConfig {
        &self.config
    }

    /// Finds the fixed point of `f(·, x)` starting from `z0` (`[batch, dim]`).
    ///
    /// Errors: `f(z0, x)` has another shape than `z0`, or `f` fails on its first evaluation.
    /// Samples that diverge or produce non-finite values are reported in the statistics and
    /// returned at their lowest-residual finite iterate (`z0` if none).
    pub fn forward<F: DeqFunction>(
        &self,
        f: &F,
        x: &F::Input,
        z0: Tensor<2>,
    ) -> Result<DeqOutput, DeqError> {
        let training = f.is_autodiff() || x.is_autodiff();
        let solver = &self.config.solver;
        let max_iter = solver.budget(training);
        let report = BackwardReport::default();

        if training && self.config.backward == BackwardMode::Unrolled {
            let mut map = |z: Tensor<2>| f.forward(z, x);
            let result = solver.solve(&mut map, z0.detach(), max_iter)?;
            return Ok(DeqOutput {
                z: result.z,
                stats: result.stats,
                backward: report,
            });
        }

        let f_plain = f.without_autodiff();
        let x_plain = x.without_autodiff();
        let z0 = z0.detach().without_autodiff();
        let result = {
            let mut map = RowsOf {
                f: &f_plain,
                x: &x_plain,
            };
            solver.solve(&mut map, z0, max_iter)?
        };
        if !training {
            return Ok(DeqOutput {
                z: result.z,
                stats: result.stats,
                backward: report,
            });
        }

        let z_star = result.z;
        let status: Vec<SolveStatus> = result.stats.samples.iter().map(|s| s.status).collect();
        let z = match self.config.backward {
            BackwardMode::Phantom { k, tau } => {
                let mut z = z_star.clone();
                for _ in 0..k {
                    z = if tau == 1.0 {
                        f.forward(z, x)
                    } else {
                        z.clone() * (1.0 - tau) + f.forward(z, x) * tau
                    };
                }
                z
            }
            _ => {
                let tracked = f.forward(z_star.clone(), x);
                let plan = AdjointPlan {
                    f: f_plain,
                    x: x_plain,
                    z_star: z_star.clone(),
                    // Only SHINE reads the forward's inverse: the other modes drop it here
                    // rather than hold its `[batch, memory, dim]` factors until the backward.
                    inverse: result
                        .inverse
                        .filter(|_| matches!(self.config.backward, BackwardMode::Shine { .. })),
                    forward_status: status.clone(),
                    mode: self.config.backward.clone(),
                    report: report.clone(),
                };
                adjoint_identity(tracked, adjoint_map(plan))
            }
        };
        // A sample whose solve went non-finite keeps its finite iterate and gets no gradient.
        let bad: Vec<bool> = status
            .iter()
            .map(|s| *s == SolveStatus::NonFinite)
            .collect();
        let z = where_rows(z, &bad, z_star);
        Ok(DeqOutput {
            z,
            stats: result.stats,
            backward: report,
        })
    }
}

/// `f(·, x)` as the solver's map, with [`DeqFunction::forward_rows`] for parts of the batch.
struct RowsOf<'a, F: DeqFunction> {
    f: &'a F,
    x: &'a F::Input,
}

impl<F: DeqFunction> BatchMap for RowsOf<'_, F> {
    fn eval(&mut self, z: Tensor<2>) -> Tensor<2> {
        self.f.forward(z, self.x)
    }

    fn eval_rows(&mut self, z: Tensor<2>, rows: &[usize]) -> Option<Tensor<2>> {
        self.f.forward_rows(z, self.x, rows)
    }
}
