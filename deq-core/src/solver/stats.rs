//! Per-sample solver statistics.
use serde::{Deserialize, Serialize};

/// How the solve of one sample ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SolveStatus {
    /// The stopping residual reached the tolerance.
    Converged,
    /// The iteration budget ran out first (the lowest-residual iterate is returned).
    MaxIterations,
    /// The absolute residual grew past `divergence_factor ×` its lowest value; the sample was frozen at
    /// its lowest-residual iterate.
    Diverged,
    /// `f` produced NaN or ±∞ for this sample; it was frozen at its lowest-residual finite iterate
    /// (`z0` if there was none).
    NonFinite,
}

/// Statistics of one sample's solve.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SampleStats {
    /// How the solve ended.
    pub status: SolveStatus,
    /// Evaluations of the map after the initial one until this sample stopped.
    pub iterations: usize,
    /// Iteration index of the returned (lowest-residual) iterate.
    pub best_iteration: usize,
    /// `‖F(z) − z‖` at the returned iterate (∞ if no finite iterate was seen).
    pub abs_residual: f64,
    /// `‖F(z) − z‖ / (‖F(z)‖ + ε)` at the returned iterate.
    pub rel_residual: f64,
    /// The stopping residual (absolute or relative, as configured) at every iterate while the
    /// sample was active, starting with the initial point.
    pub trace: Vec<f64>,
}

/// Statistics of a batched solve: one [`SampleStats`] per sample.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SolverStats {
    /// Per-sample statistics, in batch order.
    pub samples: Vec<SampleStats>,
    /// Evaluations of the map for the whole batch, the initial one included.
    pub evaluations: usize,
}

impl SolverStats {
    /// Number of samples with the given status.
    pub fn count(&self, status: SolveStatus) -> usize {
        self.samples.iter().filter(|s| s.status == status).count()
    }

    /// Whether every sample converged.
    pub fn all_converged(&self) -> bool {
        self.count(SolveStatus::Converged) == self.samples.len()
    }

    /// Largest relative residual over the batch.
    pub fn max_rel_residual(&self) -> f64 {
        self.samples
            .iter()
            .map(|s| s.rel_residual)
            .fold(0.0, f64::max)
    }

    /// Largest absolute residual over the batch.
    pub fn max_abs_residual(&self) -> f64 {
        self.samples
            .iter()
            .map(|s| s.abs_residual)
            .fold(0.0, f64::max)
    }

    /// Mean number of iterations per sample.
    pub fn mean_iterations(&self) -> f64 {
        if self.samples.is_empty() {
            return 0.0;
        }
        self.samples
            .iter()
            .map(|s| s.iterations as f64)
            .sum::<f64>()
            / self.samples.len() as f64
    }

    /// Largest number of iterations of any sample.
    pub fn max_iterations(&self) -> usize {
        self.samples.iter().map(|s| s.iterations).max().unwrap_or(0)
    }
}
