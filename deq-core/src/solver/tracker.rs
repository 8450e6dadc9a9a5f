//! Per-sample bookkeeping shared by every solver: residuals, stopping, lowest-residual iterate,
//! status and trace.
use burn::tensor::{Bool, IndexingUpdateOp, Tensor, TensorData};

use super::best::BestIterates;
use super::map::{BatchMap, row_index, row_runs};
use super::stats::{SampleStats, SolveStatus, SolverStats};
use super::{StopMode, StopRule};

/// Guards the relative residual against division by zero.
const REL_EPS: f64 = 1e-12;

/// The residual `g = F(z) − z` of an iterate, with the squared norms the stopping rule reads.
pub(crate) struct Residual {
    /// `g`: `[batch, dim]`.
    pub g: Tensor<2>,
    /// Per sample `‖g‖²` and `‖F(z)‖²`: `[batch, 2]` (what [`Tracker::record`] reads).
    pub squares: Tensor<2>,
}

impl Residual {
    /// The residual of `z` with image `fz` (both `[batch, dim]`), in one pass where the backend
    /// fuses it (see [`crate::backward::op::residual`]).
    pub fn of(z: &Tensor<2>, fz: &Tensor<2>) -> Self {
        let (g, squares) = crate::backward::op::residual(z.clone(), fz.clone());
        Self { g, squares }
    }
}

/// What one observation found, per sample (only samples that were active before it).
pub(crate) struct Observation {
    /// The iterate is the sample's new lowest-residual one.
    pub improved: Vec<bool>,
    /// The sample produced a non-finite residual at this iterate.
    pub non_finite: Vec<bool>,
    /// Per sample, the values of the extra columns passed to [`Tracker::record`] (all columns of
    /// each tensor, in order), read back in the same transfer as the residual norms
    /// (`extra[column][sample]`).
    pub extra: Vec<Vec<f64>>,
}

pub(crate) struct Tracker {
    rule: StopRule,
    active: Vec<bool>,
    samples: Vec<SampleStats>,
    best_res: Vec<f64>,
    min_abs: Vec<f64>,
    best: BestIterates,
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
            best: BestIterates::new(z0, z0),
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

    /// Records the initial point `z` and its image `fz` (iteration 0). Returns the residual
    /// `g = fz − z` as evaluated (before non-finite samples are moved back).
    pub fn start(&mut self, z: &mut Tensor<2>, fz: &mut Tensor<2>) -> Tensor<2> {
        let residual = Residual::of(z, fz);
        self.record(0, z, fz, &residual.squares, &[]);
        residual.g
    }

    /// Moves the active samples to `step` (frozen ones stay where they are), evaluates `map`
    /// there and records the result as iteration `iter`. `z` and `fz` are updated in place.
    pub fn advance(
        &mut self,
        iter: usize,
        map: &mut dyn BatchMap,
        step: Tensor<2>,
        z: &mut Tensor<2>,
        fz: &mut Tensor<2>,
    ) -> Observation {
        self.step(map, step, z, fz);
        let residual = Residual::of(z, fz);
        self.record(iter, z, fz, &residual.squares, &[])
    }

    /// Moves the active samples to `step` (frozen ones stay where they are) and evaluates `map`
    /// there; `z` and `fz` are updated in place. Nothing is recorded until
    /// [`record`](Self::record).
    pub fn step(
        &mut self,
        map: &mut dyn BatchMap,
        step: Tensor<2>,
        z: &mut Tensor<2>,
        fz: &mut Tensor<2>,
    ) {
        *z = where_rows(step, &self.frozen(), z.clone());
        *fz = self.evaluate(map, z, fz);
    }

    /// `F(z)` after a step: on the active samples only when some have stopped, the tensors are
    /// in host memory and `map` can be evaluated on part of the batch (a frozen sample keeps its
    /// row of `fz`, the image of the same `z`); otherwise on the whole batch.
    fn evaluate(&self, map: &mut dyn BatchMap, z: &Tensor<2>, fz: &Tensor<2>) -> Tensor<2> {
        let rows: Vec<usize> = (0..self.active.len()).filter(|&b| self.active[b]).collect();
        if rows.is_empty()
            || rows.len() == self.active.len()
            || !crate::device::is_host_memory(&z.device())
        {
            return map.eval(z.clone());
        }
        let index = row_index(&rows, &z.device());
        match map.eval_rows(z.clone().select(0, index.clone()), &rows) {
            Some(f_rows) => fz
                .clone()
                .select_assign(0, index, f_rows, IndexingUpdateOp::Assign),
            None => map.eval(z.clone()),
        }
    }

    /// Records the iterate `z` with image `fz` (both `[batch, dim]`) and their residual's
    /// `squares` (see [`Residual`]) as iteration `iter`, reading them back with the `extra`
    /// per-sample columns (each `[batch, k]`) in one transfer. Samples that went non-finite are
    /// moved back to their best iterate (`z`, `fz` updated in place).
    pub fn record(
        &mut self,
        iter: usize,
        z: &mut Tensor<2>,
        fz: &mut Tensor<2>,
        squares: &Tensor<2>,
        extra: &[Tensor<2>],
    ) -> Observation {
        let obs = self.observe(iter, z, fz, squares, extra);
        self.recover(z, fz, &obs.non_finite);
        obs
    }

    /// Moves samples that just went non-finite back to their best iterate so that no NaN is
    /// carried on (a frozen sample's row never changes again).
    fn recover(&self, z: &mut Tensor<2>, fz: &mut Tensor<2>, non_finite: &[bool]) {
        if non_finite.iter().any(|&n| n) {
            self.best.restore(non_finite, z, fz);
        }
    }

    /// Records the iterate `z` with image `fz = F(z)` (both `[batch, dim]`) at iteration `iter`.
    fn observe(
        &mut self,
        iter: usize,
        z: &Tensor<2>,
        fz: &Tensor<2>,
        squares: &Tensor<2>,
        extra: &[Tensor<2>],
    ) -> Observation {
        self.evaluations += 1;
        let batch = self.active.len();
        let mut columns =
            read_columns([vec![squares.clone()], extra.to_vec()].concat()).into_iter();
        let (g2, f2) = (
            columns.next().unwrap_or_default(),
            columns.next().unwrap_or_default(),
        );
        let norms: Vec<[f64; 2]> = g2
            .iter()
            .zip(&f2)
            .map(|(g2, f2)| [g2.sqrt(), f2.sqrt()])
            .collect();
        let extra: Vec<Vec<f64>> = columns.collect();

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
        self.best.update(&improved, z, fz);
        Observation {
            improved,
            non_finite,
            extra,
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
        self.best.restore(rows, z, fz);
    }

    /// Ends the solve: returns the per-sample lowest-residual iterates and the statistics.
    pub fn finish(self) -> (Tensor<2>, SolverStats) {
        let stats = SolverStats {
            samples: self.samples,
            evaluations: self.evaluations,
        };
        (self.best.into_z(), stats)
    }
}

/// Per row, the Euclidean norms of `a` and `b` (both `[batch, dim]`), read back in one transfer.
pub(crate) fn row_norms(a: &Tensor<2>, b: &Tensor<2>) -> Vec<[f64; 2]> {
    let squares = read_columns(vec![row_dot(a, a), row_dot(b, b)]);
    squares[0]
        .iter()
        .zip(&squares[1])
        .map(|(a2, b2)| [a2.sqrt(), b2.sqrt()])
        .collect()
}

/// Reads per-sample columns (tensors `[batch, k]`, all their columns in order) back to the
/// host in one transfer: `result[column][sample]`.
fn read_columns(columns: Vec<Tensor<2>>) -> Vec<Vec<f64>> {
    let width = columns.iter().map(|c| c.dims()[1]).sum::<usize>().max(1);
    let host: Vec<f64> = Tensor::cat(columns, 1).into_data().iter::<f64>().collect();
    (0..width)
        .map(|c| host.chunks(width).map(|row| row[c]).collect())
        .collect()
}

/// Per row, the dot product `aᵢ · bᵢ` (`[batch, dim]` each → `[batch, 1]`), as a batched matrix
/// product: one pass over both, no `[batch, dim]` temporary.
pub(crate) fn row_dot(a: &Tensor<2>, b: &Tensor<2>) -> Tensor<2> {
    let [batch, dim] = a.dims();
    a.clone()
        .reshape([batch, 1, dim])
        .matmul(b.clone().reshape([batch, dim, 1]))
        .reshape([batch, 1])
}

/// `tensor` with the rows where `rows` is true taken from `value` (both `[batch, dim]`).
///
/// No work when no row (or every row) is selected. On flex (without autodiff) one host loop
/// copies the selected rows into `tensor` (see [`crate::backward::op::copy_rows`]). In other
/// host memory the selected rows are copied run by run (a run: consecutive selected rows) into
/// `tensor`, in place when it is not shared: only those rows are read and written. On a GPU, one `mask_where` under a
/// `[batch, 1]` column of flags broadcast along `dim` (so that `batch` flags cross the bus,
/// not `batch · dim`, and one kernel runs however many runs there are).
pub(crate) fn where_rows(tensor: Tensor<2>, rows: &[bool], value: Tensor<2>) -> Tensor<2> {
    if !rows.iter().any(|&r| r) {
        return tensor;
    }
    if rows.iter().all(|&r| r) {
        return value;
    }
    let [batch, dim] = value.dims();
    let device = value.device();
    let mut tensor = tensor;
    if crate::backward::op::copy_rows(&mut tensor, rows, &value) {
        return tensor;
    }
    if crate::device::is_host_memory(&device) {
        return row_runs(rows)
            .into_iter()
            .fold(tensor, |tensor, (start, end)| {
                tensor.slice_assign(
                    [start..end, 0..dim],
                    value.clone().slice([start..end, 0..dim]),
                )
            });
    }
    let mask = Tensor::<2, Bool>::from_data(TensorData::new(rows.to_vec(), [batch, 1]), &device)
        .expand([batch, dim]);
    tensor.mask_where(mask, value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::DType;

    /// A sample whose image goes non-finite is moved back to its best iterate: its row of `z`
    /// to the best `z`, its row of `F(z)` to that iterate's image (the other rows untouched).
    #[test]
    fn a_non_finite_sample_returns_to_its_best_iterate_and_image() {
        let device = crate::device::cpu();
        let t =
            |v: Vec<f64>| Tensor::<2>::from_data(TensorData::new(v, [2, 2]), (&device, DType::F32));
        let host = |t: &Tensor<2>| t.clone().into_data().iter::<f64>().collect::<Vec<_>>();
        let rule = StopRule {
            mode: StopMode::Absolute,
            tol: 1e-12,
            divergence_factor: 1e6,
        };
        let (mut z, mut fz) = (t(vec![1.0, 2.0, 3.0, 4.0]), t(vec![1.5, 2.5, 3.5, 4.5]));
        let mut tracker = Tracker::new(&z, rule);
        tracker.start(&mut z, &mut fz);
        let mut map = |z: Tensor<2>| {
            let nan = t(vec![0.0, 0.0, f64::NAN, 0.0]);
            z * 0.5 + nan
        };
        let obs = tracker.advance(
            1,
            &mut map,
            t(vec![10.0, 20.0, 30.0, 40.0]),
            &mut z,
            &mut fz,
        );
        assert_eq!(obs.non_finite, vec![false, true]);
        assert_eq!(host(&z), vec![10.0, 20.0, 3.0, 4.0]);
        assert_eq!(host(&fz), vec![5.0, 10.0, 3.5, 4.5]);
    }

    /// The fused residual on flex (`f32`), and the tensor operations (`f64`, autodiff), against
    /// its definition; an autodiff residual keeps its graph.
    #[test]
    fn residual_matches_its_definition_on_every_route() {
        let (batch, dim) = (3, 45);
        let device = crate::device::cpu();
        let values = |k: usize| -> Vec<f64> {
            (0..batch * dim)
                .map(|i| ((i * 5 + k * 3) % 13) as f64 / 6.0 - 1.0)
                .collect()
        };
        let (zv, fv) = (values(1), values(2));
        for (dtype, autodiff) in [(DType::F32, false), (DType::F64, false), (DType::F32, true)] {
            let t = |values: Vec<f64>| {
                let t =
                    Tensor::<2>::from_data(TensorData::new(values, [batch, dim]), (&device, dtype));
                if autodiff { t.autodiff() } else { t }
            };
            let residual = Residual::of(&t(zv.clone()), &t(fv.clone()));
            let case = format!("{dtype:?}, autodiff {autodiff}");
            assert_eq!(residual.g.is_autodiff(), autodiff, "{case}");
            assert_eq!(residual.squares.dims(), [batch, 2], "{case}");
            let g: Vec<f64> = residual.g.into_data().iter::<f64>().collect();
            let squares: Vec<f64> = residual.squares.into_data().iter::<f64>().collect();
            for b in 0..batch {
                let (mut eg, mut ef) = (0.0, 0.0);
                for i in b * dim..(b + 1) * dim {
                    let d = fv[i] - zv[i];
                    assert!(
                        (g[i] - d).abs() < 1e-6,
                        "{case}: g[{i}] {} against {d}",
                        g[i]
                    );
                    eg += d * d;
                    ef += fv[i] * fv[i];
                }
                for (k, expected) in [eg, ef].into_iter().enumerate() {
                    let got = squares[2 * b + k];
                    assert!(
                        (got - expected).abs() < 1e-5 * expected,
                        "{case}: sample {b} square {k}: {got} against {expected}"
                    );
                }
            }
        }
    }

    /// On every host route (flex's row copies for `f32` and `f64`, the run-by-run copies of an
    /// autodiff tensor), in place and into a shared tensor: exactly the selected rows are taken,
    /// the others keep their values, and a tensor shared with another handle is not changed
    /// through it.
    #[test]
    fn where_rows_takes_exactly_the_selected_rows() {
        let (batch, dim) = (6, 5);
        let device = crate::device::cpu();
        let rows = [true, false, true, true, false, true];
        for (dtype, autodiff) in [(DType::F32, false), (DType::F64, false), (DType::F32, true)] {
            let t = |offset: f64| {
                let values: Vec<f64> = (0..batch * dim).map(|i| i as f64 + offset).collect();
                let t =
                    Tensor::<2>::from_data(TensorData::new(values, [batch, dim]), (&device, dtype));
                if autodiff { t.autodiff() } else { t }
            };
            for shared in [false, true] {
                let case = format!("{dtype:?}, autodiff {autodiff}, shared {shared}");
                let (tensor, value) = (t(0.0), t(1000.0));
                let kept = shared.then(|| tensor.clone());
                let merged: Vec<f64> = where_rows(tensor, &rows, value)
                    .into_data()
                    .iter::<f64>()
                    .collect();
                for (i, got) in merged.iter().enumerate() {
                    let expected = if rows[i / dim] {
                        i as f64 + 1000.0
                    } else {
                        i as f64
                    };
                    assert_eq!(*got, expected, "{case}: entry {i}");
                }
                if let Some(kept) = kept {
                    let kept: Vec<f64> = kept.into_data().iter::<f64>().collect();
                    assert!(
                        kept.iter().enumerate().all(|(i, v)| *v == i as f64),
                        "{case}: the shared tensor changed"
                    );
                }
            }
        }
    }
}
