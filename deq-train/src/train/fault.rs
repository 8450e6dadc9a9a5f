//! Faults injected into f on chosen steps, to test that training survives solver failures.
//!
//! Written in a run's settings as a `[faults]` table:
//!
//! ```toml
//! [faults]
//! diverge_steps = [5, 6]   # f(z) + z + z⊙z on the affected samples: no fixed point
//! nan_steps = [9]          # f(z) = NaN on the affected samples
//! samples = 4              # the first 4 samples of each affected batch
//! ```
//!
//! `f(z) + z + z⊙z` has the Jacobian `I + J_f + 2 diag(z)`, spectral norm above 1, and
//! `g(z) = f(z) + z⊙z` has no root: the MDEQ's f ends in a GroupNorm without affine parameters,
//! so each group of `f(z)` sums to 0, while `z⊙z` sums to `‖z‖² > 0` unless `z = 0`, where
//! `g = f(0) ≠ 0`. The solver must report these samples as not converged.
use burn::tensor::{Bool, Tensor, TensorData};
use deq_core::DeqFunction;
use serde::{Deserialize, Serialize};

use super::TrainError;

/// Which steps get a faulty f, and on how many samples (see the module documentation).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FaultConfig {
    /// Global steps (1-based) at which f has no fixed point on the affected samples.
    pub diverge_steps: Vec<usize>,
    /// Global steps at which f returns NaN on the affected samples.
    pub nan_steps: Vec<usize>,
    /// Affected samples per batch: the first `samples` of it.
    pub samples: usize,
}

impl Default for FaultConfig {
    fn default() -> Self {
        Self {
            diverge_steps: Vec::new(),
            nan_steps: Vec::new(),
            samples: 1,
        }
    }
}

/// The fault of one step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultKind {
    /// `f(z) + z + z⊙z`: spectral norm above 1, no fixed point.
    Diverge,
    /// `f(z) = NaN`.
    Nan,
}

impl FaultConfig {
    /// Checks the table: at least one affected sample, no step listed for both faults.
    pub fn validate(&self) -> Result<(), TrainError> {
        if self.samples == 0 {
            return Err(TrainError::config(
                "faults.samples",
                0,
                "must be at least 1",
            ));
        }
        if let Some(step) = self
            .diverge_steps
            .iter()
            .find(|s| self.nan_steps.contains(s))
        {
            return Err(TrainError::config(
                "faults.nan_steps",
                step,
                "this step is also in faults.diverge_steps; give each step one fault",
            ));
        }
        if self.diverge_steps.contains(&0) || self.nan_steps.contains(&0) {
            return Err(TrainError::config("faults", 0, "steps count from 1"));
        }
        Ok(())
    }

    /// The fault injected at `step`, if any.
    pub fn at(&self, step: usize) -> Option<FaultKind> {
        if self.diverge_steps.contains(&step) {
            Some(FaultKind::Diverge)
        } else if self.nan_steps.contains(&step) {
            Some(FaultKind::Nan)
        } else {
            None
        }
    }
}

/// `f` with a fault on the first `samples` rows of the batch (the others are untouched).
pub struct Faulty<F> {
    inner: F,
    fault: Option<FaultKind>,
    samples: usize,
}

impl<F> Faulty<F> {
    /// `inner` with `fault` (none: `inner` itself) on the first `samples` samples.
    pub fn new(inner: F, fault: Option<FaultKind>, samples: usize) -> Self {
        Self {
            inner,
            fault,
            samples,
        }
    }
}

impl<F: DeqFunction> DeqFunction for Faulty<F> {
    type Input = F::Input;

    fn forward(&self, z: Tensor<2>, x: &Self::Input) -> Tensor<2> {
        let out = self.inner.forward(z.clone(), x);
        let Some(fault) = self.fault else {
            return out;
        };
        let [batch, dim] = out.dims();
        let rows: Vec<bool> = (0..batch).map(|b| b < self.samples).collect();
        let device = out.device();
        let affected = Tensor::<1, Bool>::from_data(TensorData::new(rows, [batch]), &device)
            .reshape([batch, 1])
            .expand([batch, dim]);
        match fault {
            FaultKind::Diverge => {
                let bad = out.clone() + z.clone() + z.clone() * z;
                out.mask_where(affected, bad)
            }
            FaultKind::Nan => out.mask_fill(affected, f32::NAN),
        }
    }

    fn without_autodiff(&self) -> Self {
        Self {
            inner: self.inner.without_autodiff(),
            fault: self.fault,
            samples: self.samples,
        }
    }

    fn is_autodiff(&self) -> bool {
        self.inner.is_autodiff()
    }
}
