//! Per-sample bookkeeping shared by every solver: residuals, stopping, lowest-residual iterate,
//! status and trace.
use burn::tensor::{Bool, Tensor, TensorData};

use super::stats::{SampleStats, SolveStatus, SolverStats};
use super::{StopMode, StopRule};

/// Guards the relative residual against division by zero.
const REL_EPS: f64 = 1e-12;

/// What one observation found, per sample (only samples that were active before it).
pub(crate) struct Observation {
    /// The iterate is the sample's new lowest-residual one.
    pub improved: Vec<bool>,
    /// The sample produced a non-finite residual at this iterate.
    pub non_finite: Vec<bool>,
}

pub(crate) struct Tracker {
    rule: StopRule,
    active: Vec<bool>,
    samples: Vec<SampleStats>,
    best_res: Vec<f64>,
    min_abs: Vec<f64>,
    best_z: Tensor<2>,
    best_fz: Tensor<2>,
    evaluations: usize,
}

impl Tracker {
    pub fn new(z0: &Tensor<2>, rule: StopRule) -> Self {
        let batch = z0.dims()[0];
        let sample = SampleStats {
            status: SolveStatus::MaxIterations,
            iterations: 0,
            best_iteration: 0,
            abs_residual: f64::INFINITY,
            rel_residual: f64::INFINITY,
            trace: Vec::new(),
        };
        Self {
            rule,
            active: vec![true; batch],
            samples: vec![sample; batch],
            best_res: vec![f64::INFINITY; batch],
            min_abs: vec![f64::INFINITY; batch],
            best_z: z0.clone(),
            best_fz: z0.clone(),
            evaluations: 0,
        }
    }

    pub fn any_active(&self) -> bool {
        self.active.iter().any(|&a| a)
    }

    pub fn active(&self) -> &[bool] {
        &self.active
    }

    /// Per sample: true for samples that no longer move.
    pub fn frozen(&self) -> Vec<bool> {
        self.active.iter().map(|a| !a).collect()
    }

    /// Records the initial point `z` and its image `fz` (iteration 0).
    pub fn start(&mut self, z: &mut Tensor<2>, fz: &mut Tensor<2>) {
        let obs = self.observe(0, z, fz);
        self.recover(z, fz, &obs.non_finite);
    }

    /// Moves the active samples to `step` (frozen ones stay where they are), evaluates `map`
    /// there and records the result as iteration `iter`. `z` and `fz` are updated in place.
    pub fn advance(
        &mut self,
        iter: usize,
        map: &mut dyn FnMut(Tensor<2>) -> Tensor<2>,
        step: Tensor<2>,
        z: &mut Tensor<2>,
        fz: &mut Tensor<2>,
    ) -> Observation {
        *z = where_rows(step, &self.frozen(), z.clone());
        *fz = map(z.clone());
        let obs = self.observe(iter, z, fz);
        self.recover(z, fz, &obs.non_finite);
        obs
    }

    /// Moves samples that just went non-finite back to their best iterate so that no NaN is
    /// carried on (a frozen sample's row never changes again).
    fn recover(&self, z: &mut Tensor<2>, fz: &mut Tensor<2>, non_finite: &[bool]) {
        if non_finite.iter().any(|&n| n) {
            *z = where_rows(z.clone(), non_finite, self.best_z.clone());
            *fz = where_rows(fz.clone(), non_finite, self.best_z.clone());
        }
    }

    /// Records the iterate `z` with image `fz = F(z)` (both `[batch, dim]`) at iteration `iter`.
    fn observe(&mut self, iter: usize, z: &Tensor<2>, fz: &Tensor<2>) -> Observation {
        self.evaluations += 1;
        let batch = self.active.len();
        let norms = row_norms(&(fz.clone() - z.clone()), fz);

        let mut improved = vec![false; batch];
        let mut non_finite = vec![false; batch];
        for b in 0..batch {
            if !self.active[b] {
                continue;
            }
            let [abs, fnorm] = norms[b];
            let rel = abs / (fnorm + REL_EPS);
            let res = match self.rule.mode {
                StopMode::Absolute => abs,
                StopMode::Relative => rel,
            };
            let s = &mut self.samples[b];
            s.iterations = iter;
            s.trace.push(res);
            if !res.is_finite() || !rel.is_finite() {
                s.status = SolveStatus::NonFinite;
                non_finite[b] = true;
                self.active[b] = false;
                continue;
            }
            if res < self.best_res[b] {
                self.best_res[b] = res;
                s.abs_residual = abs;
                s.rel_residual = rel;
                s.best_iteration = iter;
                improved[b] = true;
            }
            self.min_abs[b] = self.min_abs[b].min(abs);
            if res <= self.rule.tol {
                s.status = SolveStatus::Converged;
                self.active[b] = false;
            } else if abs > self.rule.divergence_factor * self.min_abs[b] {
                s.status = SolveStatus::Diverged;
                self.active[b] = false;
            }
        }
        self.best_z = where_rows(self.best_z.clone(), &improved, z.clone());
        self.best_fz = where_rows(self.best_fz.clone(), &improved, fz.clone());
        Observation {
            improved,
            non_finite,
        }
    }

    /// For an active sample: the iteration of its lowest residual so far, and whether its
    /// latest residual is more than `growth` times that lowest one.
    pub fn progress(&self, sample: usize, growth: f64) -> (usize, bool) {
        let s = &self.samples[sample];
        let grew = s
            .trace
            .last()
            .is_some_and(|&last| last > growth * self.best_res[sample]);
        (s.best_iteration, grew)
    }

    /// Moves the samples where `rows` is true back to their lowest-residual iterate (`z` and
    /// its image `fz`, updated in place).
    pub fn return_to_best(&self, rows: &[bool], z: &mut Tensor<2>, fz: &mut Tensor<2>) {
        *z = where_rows(z.clone(), rows, self.best_z.clone());
        *fz = where_rows(fz.clone(), rows, self.best_fz.clone());
    }

    /// Ends the solve: returns the per-sample lowest-residual iterates and the statistics.
    pub fn finish(self) -> (Tensor<2>, SolverStats) {
        let stats = SolverStats {
            samples: self.samples,
            evaluations: self.evaluations,
        };
        (self.best_z, stats)
    }
}

/// Per row, the Euclidean norms of `a` and `b` (both `[batch, dim]`), read back in one transfer.
pub(crate) fn row_norms(a: &Tensor<2>, b: &Tensor<2>) -> Vec<[f64; 2]> {
    let norm = |t: &Tensor<2>| (t.clone() * t.clone()).sum_dim(1).sqrt();
    let host: Vec<f64> = Tensor::cat(vec![norm(a), norm(b)], 1)
        .into_data()
        .iter::<f64>()
        .collect();
    host.chunks(2).map(|p| [p[0], p[1]]).collect()
}

/// `tensor` with the rows where `rows` is true taken from `value` (both `[batch, dim]`).
///
/// No work when no row (or every row) is selected; otherwise one `mask_where` with a
/// contiguous mask (a broadcast mask takes the backends' slow strided path).
pub(crate) fn where_rows(tensor: Tensor<2>, rows: &[bool], value: Tensor<2>) -> Tensor<2> {
    if !rows.iter().any(|&r| r) {
        return tensor;
    }
    if rows.iter().all(|&r| r) {
        return value;
    }
    tensor.mask_where(rows_mask(rows, &value), value)
}

/// `tensor` (`[batch, dim]`) with the rows where `rows` is true set to zero.
pub(crate) fn zero_rows(tensor: Tensor<2>, rows: &[bool]) -> Tensor<2> {
    if !rows.iter().any(|&r| r) {
        return tensor;
    }
    let mask = rows_mask(rows, &tensor);
    tensor.mask_fill(mask, 0.0)
}

/// A contiguous `[batch, dim]` mask, true on the selected rows.
fn rows_mask(rows: &[bool], like: &Tensor<2>) -> Tensor<2, Bool> {
    let [batch, dim] = like.dims();
    let mask: Vec<bool> = rows
        .iter()
        .flat_map(|&r| std::iter::repeat_n(r, dim))
        .collect();
    Tensor::<2, Bool>::from_data(TensorData::new(mask, [batch, dim]), &like.device())
}
