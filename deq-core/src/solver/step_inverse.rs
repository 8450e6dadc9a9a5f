//! The per-sample limited-memory Broyden inverse in product form, stored as its steps.
use burn::tensor::Tensor;

use super::StepPrecision;
use super::map::{row_index, row_runs};
use super::tracker::where_rows;
use crate::backward::op::{
    FactorPlan, PlanFactor, SamplePlan, factor_product, gather_slot, half_steps_run_here,
    push_step, residual_factor_product, scatter_slot, zeros,
};

/// Per-sample inverse-Jacobian estimate `B ≈ J_g⁻¹` of limited-memory ("good") Broyden (see
/// `shine-math.md`) in product form, stored as the solver's steps: Kelley's representation
/// ("Iterative Methods for Linear and Nonlinear Equations", SIAM 1995, chapter 7).
///
/// With the full step `Δzₖ = −Bₖ gₖ`, the update `Bₖ₊₁ = Bₖ + uₖ vₖᵀ` (`vₖ = Bₖᵀ Δzₖ`,
/// `uₖ = (Δzₖ − Bₖ Δgₖ) / (vₖᵀ Δgₖ)`) is `Bₖ₊₁ = (I + uₖ Δzₖᵀ) Bₖ`, and `uₖ = Δzₖ₊₁ / ‖Δzₖ‖²`:
/// the next step. So `B = F_{k−1} ⋯ F₀ B₀` with `Fⱼ = I + sⱼ₊₁ sⱼᵀ / ‖sⱼ‖²`, where the `sⱼ` are
/// the steps (stored negated, `bⱼ = −Δzⱼ = Bⱼ gⱼ`, which leaves each factor unchanged), and
/// `B₀ = −I` (or the transpose of another inverse, for SHINE's refine). A product `B x` reads
/// each step once (`k + 1` vectors, against `2k` for `−I + U Vᵀ`), and `Bᵀ y` is the same
/// factors in the reverse order, transposed.
///
/// The steps live in a ring of `memory + 1` slots per sample, `[batch, memory + 1, dim]`. Each
/// sample has its own write position and fill level (from the per-slot push stamps), so samples
/// that stopped early keep their matrix while others go on. A factor exists between two steps
/// with consecutive stamps when the later one came from a written update (a skipped update, a
/// restart or the first step starts a new chain). Overwriting the oldest step drops the oldest
/// factor: the matrix becomes the product of the factors left, the limited-memory
/// approximation of this form.
///
/// With [`StepPrecision::Half`] the ring is `f16` and each slot has a unit, a power of two:
/// the step is the stored row times it (see `solver::step_kernel`). The units are folded into
/// the factors' scales, so the products read the rows as they are.
#[derive(Clone, Debug)]
pub struct StepInverse {
    steps: Tensor<3>,
    /// Per (sample, slot): the step is the stored row times this (1 unless the ring is `f16`).
    unit: Vec<f32>,
    /// Per (sample, slot): the sample's push count when the slot was written (0: empty).
    stamp: Vec<u64>,
    /// Per (sample, slot): the step came from a written secant update of the step before it.
    secant: Vec<bool>,
    /// Per (sample, slot): `‖b‖²` of the step, once known (NaN before).
    norm: Vec<f64>,
    /// Per sample: number of steps pushed so far (restarts add one, so chains never join).
    pushes: Vec<u64>,
    /// Per sample: push count of the matrix marked best ([`StepInverse::mark_best`]).
    best: Vec<u64>,
    /// Steps of best matrices that later pushes or restarts overwrote, to be put back by
    /// [`StepInverse::into_best`].
    evicted: Vec<Evicted>,
    /// `B₀ = baseᵀ` when set; `B₀ = −I` otherwise.
    base: Option<Box<StepInverse>>,
}

/// One slot column saved before being overwritten: the rows of the samples whose best matrix
/// still contains the step in it, with the slot's bookkeeping.
#[derive(Clone, Debug)]
struct Evicted {
    slot: usize,
    /// Per sample: its saved step is still needed (cleared when it marks a new best).
    rows: Vec<bool>,
    /// Per sample: the slot's stamp, secant flag, norm and unit when saved.
    meta: Vec<(u64, bool, f64, f32)>,
    /// The samples saved, in order: row `k` of `data` belongs to `saved[k]`.
    saved: Vec<usize>,
    /// `[saved.len(), dim]`: only the saved samples' rows.
    data: Tensor<2>,
}

impl Evicted {
    fn save(inverse: &StepInverse, slot: usize, rows: Vec<bool>) -> Self {
        let (batch, slots) = (inverse.pushes.len(), inverse.slots());
        let saved: Vec<usize> = (0..batch).filter(|&b| rows[b]).collect();
        Self {
            slot,
            meta: (0..batch)
                .map(|b| {
                    let k = b * slots + slot;
                    let unit = inverse.unit[k];
                    (inverse.stamp[k], inverse.secant[k], inverse.norm[k], unit)
                })
                .collect(),
            data: gather_slot(&inverse.steps, slot, &saved)
                .unwrap_or_else(|| copy_rows(&inverse.steps, slot, &rows)),
            saved,
            rows,
        }
    }

    /// Keeps only the rows still needed once they are half of those stored or fewer (a copy
    /// of those rows; amortised, every row is copied at most as often as the count halves).
    fn compact(&mut self) {
        let needed: Vec<usize> = (0..self.saved.len())
            .filter(|&k| self.rows[self.saved[k]])
            .collect();
        if 2 * needed.len() > self.saved.len() {
            return;
        }
        self.data = take_rows(self.data.clone(), &needed);
        self.saved = needed.iter().map(|&k| self.saved[k]).collect();
    }

    /// The rows still needed: `(sample, row of data)` pairs.
    fn pairs(&self) -> Vec<(usize, usize)> {
        (self.saved.iter().enumerate())
            .filter(|&(_, &b)| self.rows[b])
            .map(|(k, &b)| (b, k))
            .collect()
    }

    /// The saved rows spread back to `[batch, dim]` (rows of unsaved samples hold another
    /// sample's values; only the rows in `self.rows` are meant to be read).
    fn spread(&self, batch: usize) -> Tensor<2> {
        let mut index = vec![0; batch];
        for (k, &b) in self.saved.iter().enumerate() {
            index[b] = k;
        }
        take_rows(self.data.clone(), &index)
    }
}

impl StepInverse {
    /// `B = −I` for every sample, with room for `memory` factors (`memory + 1` steps); dtype
    /// and device follow `like` (`[batch, dim]`).
    pub fn identity(like: &Tensor<2>, memory: usize) -> Self {
        Self::identity_with(like, memory, StepPrecision::Full)
    }

    /// [`identity`](Self::identity) with the steps stored at `precision` (`Half` only where
    /// the host kernels run: see [`StepPrecision::Half`]).
    pub fn identity_with(like: &Tensor<2>, memory: usize, precision: StepPrecision) -> Self {
        let [batch, dim] = like.dims();
        let dtype = match precision {
            StepPrecision::Half if half_steps_run_here(like) => burn::tensor::DType::F16,
            _ => like.dtype(),
        };
        Self::empty([batch, memory + 1, dim], &like.device(), dtype)
    }

    /// `B = −I` over an empty ring of the given shape (`[batch, slots, dim]`) and dtype.
    fn empty(shape: [usize; 3], device: &burn::tensor::Device, dtype: burn::tensor::DType) -> Self {
        let [batch, slots, _] = shape;
        Self {
            steps: zeros(shape, device, dtype),
            unit: vec![1.0; batch * slots],
            stamp: vec![0; batch * slots],
            secant: vec![false; batch * slots],
            norm: vec![f64::NAN; batch * slots],
            pushes: vec![0; batch],
            best: vec![0; batch],
            evicted: Vec::new(),
            base: None,
        }
    }

    /// `B = Aᵀ` for every sample, with room for `memory` factors on top: the start of a solve
    /// of the transposed problem (SHINE's refine starts the adjoint solve from the forward
    /// matrices, transposed). The new steps are stored like `inverse`'s.
    pub fn over_transposed(inverse: StepInverse, memory: usize) -> Self {
        let [batch, _, dim] = inverse.steps.dims();
        let (device, dtype) = (inverse.steps.device(), inverse.steps.dtype());
        Self {
            base: Some(Box::new(inverse)),
            ..Self::empty([batch, memory + 1, dim], &device, dtype)
        }
    }

    /// How the steps are stored: [`StepPrecision::Half`] when the ring is `f16`.
    pub fn precision(&self) -> StepPrecision {
        match self.steps.dtype() {
            burn::tensor::DType::F16 => StepPrecision::Half,
            _ => StepPrecision::Full,
        }
    }

    /// Number of factors each sample can hold.
    pub fn memory(&self) -> usize {
        self.slots() - 1
    }

    fn slots(&self) -> usize {
        self.steps.dims()[1]
    }

    /// Number of factors currently in `sample`'s matrix (those of `B₀` not counted).
    pub fn rank(&self, sample: usize) -> usize {
        self.chain(sample).len()
    }

    /// Number of steps pushed so far for `sample` (overwritten ones included; a restart counts
    /// one more).
    pub fn push_count(&self, sample: usize) -> u64 {
        self.pushes[sample]
    }

    /// `sample`'s live slots, oldest step first.
    fn order(&self, sample: usize) -> Vec<usize> {
        let slots = self.slots();
        let stamps = &self.stamp[sample * slots..(sample + 1) * slots];
        let mut live = Vec::with_capacity(slots);
        live.extend((0..slots).filter(|&j| stamps[j] > 0));
        live.sort_unstable_by_key(|&j| stamps[j]);
        live
    }

    /// `sample`'s factors `I + bⱼ₊₁ bⱼᵀ / ‖bⱼ‖²`, oldest first (the order of `B x`).
    fn chain(&self, sample: usize) -> Vec<PlanFactor> {
        let slots = self.slots();
        let at = |j: usize| sample * slots + j;
        let order = self.order(sample);
        let mut factors = Vec::with_capacity(order.len().saturating_sub(1));
        for p in order.windows(2) {
            let (older, newer) = (at(p[0]), at(p[1]));
            if self.stamp[newer] == self.stamp[older] + 1 && self.secant[newer] {
                let units = self.unit[older] as f64 * self.unit[newer] as f64;
                factors.push(PlanFactor {
                    dot: p[0],
                    axpy: p[1],
                    scale: units / self.norm[older],
                });
            }
        }
        factors
    }

    /// The slot of `sample`'s newest step, if any.
    fn newest(&self, sample: usize) -> Option<usize> {
        let slots = self.slots();
        let stamps = &self.stamp[sample * slots..(sample + 1) * slots];
        (0..slots)
            .filter(|&j| stamps[j] > 0)
            .max_by_key(|&j| stamps[j])
    }

    /// The plan of the factors' product: `B x` (`transposed` false, the product without `B₀`)
    /// or `Bᵀ y` (the reversed product of the transposed factors), with `−I` folded in as the
    /// sign when there is no base.
    fn plan(&self, transposed: bool, newest: bool) -> FactorPlan {
        let samples = (0..self.pushes.len())
            .map(|b| {
                let mut factors = self.chain(b);
                if transposed {
                    factors.reverse();
                    for f in &mut factors {
                        std::mem::swap(&mut f.dot, &mut f.axpy);
                    }
                }
                let newest = if newest { self.newest(b) } else { None };
                SamplePlan {
                    factors,
                    newest,
                    newest_scale: newest.map_or(1.0, |j| self.unit[b * self.slots() + j] as f64),
                }
            })
            .collect();
        FactorPlan {
            negate: self.base.is_none(),
            samples,
        }
    }

    /// `B x` per sample. `x`: `[batch, dim]`.
    pub fn apply(&self, x: Tensor<2>) -> Tensor<2> {
        self.apply_with_dots(x).0
    }

    /// `B x` per sample (`x`: `[batch, dim]`) and, per sample, `y · (B x)` and `y · y` for its
    /// newest step `y` (`[batch, 2]`; zeros for a sample without steps): the products and the
    /// dot products of one Broyden iteration, one read of each step (see
    /// [`crate::backward::op::factor_product`]).
    pub fn apply_with_dots(&self, x: Tensor<2>) -> (Tensor<2>, Tensor<2>) {
        let x = match &self.base {
            Some(base) => base.apply_transposed(x),
            None => x,
        };
        factor_product(self.steps.clone(), x, self.plan(false, true))
    }

    /// [`apply_with_dots`](Self::apply_with_dots) of the residual `fz − z` of fixed-point
    /// iterates (`[batch, dim]` each), with that residual's squared norms: `(B (fz − z),
    /// squares, dots)`, `squares` per sample `‖fz − z‖²` and `‖fz‖²` (`[batch, 2]`). Without a
    /// base matrix the residual is taken in the product's first pass on flex (see
    /// [`crate::backward::op::residual_factor_product`]).
    pub fn apply_to_residual(
        &self,
        z: &Tensor<2>,
        fz: &Tensor<2>,
    ) -> (Tensor<2>, Tensor<2>, Tensor<2>) {
        match &self.base {
            None => residual_factor_product(self.steps.clone(), z, fz, self.plan(false, true)),
            Some(_) => {
                let (g, squares) = crate::backward::op::residual(z.clone(), fz.clone());
                let (w, dots) = self.apply_with_dots(g);
                (w, squares, dots)
            }
        }
    }

    /// `Bᵀ x` per sample: what SHINE needs. `x`: `[batch, dim]`.
    pub fn apply_transposed(&self, x: Tensor<2>) -> Tensor<2> {
        let (w, _) = factor_product(self.steps.clone(), x, self.plan(true, false));
        match &self.base {
            Some(base) => base.apply(w),
            None => w,
        }
    }

    /// `B₀ x`, the product with the matrix a restart returns to.
    pub fn apply_initial(&self, x: Tensor<2>) -> Tensor<2> {
        match &self.base {
            Some(base) => base.apply_transposed(x),
            None => x.neg(),
        }
    }

    /// Appends the step `b` (`[batch, dim]`, the negated step `B g`) for the samples where
    /// `rows` is true, overwriting that sample's oldest step when its ring is full; `secant`
    /// (per sample) says it came from a written secant update of the step before it. Then
    /// [`mark_best`](Self::mark_best) for the samples where `now_best` is true (cheaper than the
    /// two calls: the steps those samples' previous best matrix loses are not saved).
    ///
    /// Cost O(batch · dim) per distinct write position (samples that started together share
    /// one): the ring is updated in place where the backend allows it.
    pub fn push_as_best(
        &mut self,
        b: Tensor<2>,
        rows: &[bool],
        secant: &[bool],
        now_best: &[bool],
    ) {
        if self.precision() == StepPrecision::Half {
            // The scaled `f16` rows are written by the step's own loop (its iterates dropped).
            let scale = vec![1.0; rows.len()];
            let zero = Tensor::zeros(b.dims(), (&b.device(), b.dtype()));
            self.push_step(b, &scale, &zero, rows, secant, now_best);
            return;
        }
        let next = self.prepare_push(rows, secant, now_best);
        let steps = self.take_steps();
        self.steps = write_slots(steps, &next, &b);
        let units = vec![1.0; next.len()];
        self.finish_push(&next, &units, secant, now_best);
    }

    /// One Broyden step with its push: [`push_as_best`](Self::push_as_best) of the steps
    /// `scale[s] · w_s` (`w`: `[batch, dim]`), and the next iterates, `z_s − scale[s] · w_s` for
    /// the samples pushed and `z_s` for the others (`z`: `[batch, dim]`).
    ///
    /// `w` is handed over: on flex the ring and the next iterates are written in one pass, the
    /// latter in `w`'s buffer (see [`crate::backward::op::push_step`]).
    pub fn push_step(
        &mut self,
        w: Tensor<2>,
        scale: &[f64],
        z: &Tensor<2>,
        rows: &[bool],
        secant: &[bool],
        now_best: &[bool],
    ) -> Tensor<2> {
        let next = self.prepare_push(rows, secant, now_best);
        let steps = self.take_steps();
        let (steps, z_next, units) = push_step(steps, w, z, scale, &next);
        self.steps = steps;
        self.finish_push(&next, &units, secant, now_best);
        z_next
    }

    /// Before a push: per sample, the slot it writes (its oldest, or the next free one) when
    /// `rows` is true, with the steps that a best matrix still needs saved first.
    fn prepare_push(
        &mut self,
        rows: &[bool],
        secant: &[bool],
        now_best: &[bool],
    ) -> Vec<Option<usize>> {
        let (batch, slots) = (self.pushes.len(), self.slots());
        assert!(
            rows.len() == batch && secant.len() == batch && now_best.len() == batch,
            "one flag per sample"
        );
        let next: Vec<Option<usize>> = (0..batch)
            .map(|s| rows[s].then(|| self.newest(s).map_or(0, |j| (j + 1) % slots)))
            .collect();
        for slot in distinct_slots(&next) {
            let keep: Vec<bool> = (0..batch)
                .map(|s| next[s] == Some(slot) && !now_best[s] && self.needed_by_best(s, slot))
                .collect();
            if keep.iter().any(|&k| k) {
                self.evicted.push(Evicted::save(self, slot, keep));
            }
        }
        next
    }

    /// After a push into the slots `next` (the rows written with `units`): the samples' push
    /// counts and the slots' stamps, units, secant flags and (unknown) norms, then
    /// [`mark_best`](Self::mark_best).
    fn finish_push(
        &mut self,
        next: &[Option<usize>],
        units: &[f32],
        secant: &[bool],
        now_best: &[bool],
    ) {
        let slots = self.slots();
        for (s, slot) in next.iter().enumerate() {
            if let Some(j) = *slot {
                self.pushes[s] += 1;
                let k = s * slots + j;
                self.stamp[k] = self.pushes[s];
                self.unit[k] = units[s];
                self.secant[k] = secant[s];
                self.norm[k] = f64::NAN;
            }
        }
        self.mark_best(now_best);
    }

    /// Records `‖b‖²` of the newest step for the samples where `rows` is true (`norms`: one per
    /// sample): the factor that starts at that step needs it.
    pub fn set_newest_norms(&mut self, norms: &[f64], rows: &[bool]) {
        let slots = self.slots();
        for s in (0..self.pushes.len()).filter(|&s| rows[s]) {
            if let Some(j) = self.newest(s) {
                self.norm[s * slots + j] = norms[s];
            }
        }
    }

    /// The step in `slot` of `sample` belongs to its best matrix.
    fn needed_by_best(&self, sample: usize, slot: usize) -> bool {
        let stamp = self.stamp[sample * self.slots() + slot];
        stamp > 0 && stamp <= self.best[sample]
    }

    /// Sets `B = B₀` for the samples where `rows` is true (their steps are forgotten), keeping
    /// the matrix they last marked best restorable by [`into_best`](Self::into_best).
    pub fn reset(&mut self, rows: &[bool]) {
        let (batch, slots) = (self.pushes.len(), self.slots());
        assert_eq!(rows.len(), batch, "one reset flag per sample");
        for slot in 0..slots {
            let keep: Vec<bool> = (0..batch)
                .map(|s| rows[s] && self.needed_by_best(s, slot))
                .collect();
            if keep.iter().any(|&k| k) {
                self.evicted.push(Evicted::save(self, slot, keep));
            }
        }
        for s in (0..batch).filter(|&s| rows[s]) {
            self.stamp[s * slots..(s + 1) * slots].fill(0);
            self.pushes[s] += 1;
        }
    }

    /// Marks, for the samples where `samples` is true, the current matrix as the best one:
    /// [`StepInverse::into_best`] will return it for them.
    ///
    /// Saved steps that no best matrix needs any more are dropped: a saved column goes when
    /// none of its rows is needed, and it is copied down to the rows still needed once they
    /// are half of it or fewer.
    pub fn mark_best(&mut self, samples: &[bool]) {
        if !samples.iter().any(|&m| m) {
            return;
        }
        for (s, &mark) in samples.iter().enumerate() {
            if mark {
                self.best[s] = self.pushes[s];
                for e in &mut self.evicted {
                    e.rows[s] = false;
                }
            }
        }
        self.evicted.retain(|e| e.rows.iter().any(|&r| r));
        for e in &mut self.evicted {
            e.compact();
        }
    }

    /// Per sample, the matrix as it was when last marked best: the steps pushed since are
    /// forgotten and the steps they overwrote are put back (O(batch · dim) per affected slot).
    pub fn into_best(mut self) -> Self {
        let (batch, slots) = (self.pushes.len(), self.slots());
        for s in 0..batch {
            for j in 0..slots {
                if self.stamp[s * slots + j] > self.best[s] {
                    self.stamp[s * slots + j] = 0;
                }
            }
            self.pushes[s] = self.best[s];
        }
        // Between two marks a (sample, slot) is saved at most once: once overwritten, the slot
        // holds a step newer than the best matrix, which is never saved. So no entries collide.
        for e in std::mem::take(&mut self.evicted) {
            let pairs = e.pairs();
            if !scatter_slot(&mut self.steps, e.slot, &e.data, &pairs) {
                let steps = self.take_steps();
                self.steps = write_column(steps, e.slot, &e.rows, &e.spread(batch));
            }
            for s in (0..batch).filter(|&s| e.rows[s]) {
                let k = s * slots + e.slot;
                (self.stamp[k], self.secant[k], self.norm[k], self.unit[k]) = e.meta[s];
            }
        }
        self
    }

    /// Moves the ring out (to update it in place where the backend allows it).
    fn take_steps(&mut self) -> Tensor<3> {
        let empty = Tensor::empty([0, 0, 0], (&self.steps.device(), self.steps.dtype()));
        std::mem::replace(&mut self.steps, empty)
    }

    /// Detaches the steps from any autodiff graph (they are plain tensors after a normal solve).
    pub fn without_autodiff(self) -> Self {
        Self {
            steps: self.steps.detach().without_autodiff(),
            evicted: self
                .evicted
                .into_iter()
                .map(|e| Evicted {
                    data: e.data.detach().without_autodiff(),
                    ..e
                })
                .collect(),
            base: self.base.map(|b| Box::new(b.without_autodiff())),
            ..self
        }
    }

    /// The dense matrix `B` of one sample, row-major `dim × dim` (for tests and diagnostics;
    /// O(dim²) memory, O(rank · dim²) time).
    pub fn dense(&self, sample: usize) -> Vec<f64> {
        let [_, _, dim] = self.steps.dims();
        let mut m = match &self.base {
            Some(base) => {
                let b = base.dense(sample);
                (0..dim * dim)
                    .map(|k| b[(k % dim) * dim + k / dim])
                    .collect()
            }
            None => {
                let mut m = vec![0.0; dim * dim];
                for i in 0..dim {
                    m[i * dim + i] = -1.0;
                }
                m
            }
        };
        let rows: Vec<f64> = self
            .steps
            .clone()
            .narrow(0, sample, 1)
            .into_data()
            .iter::<f64>()
            .collect();
        let slots = self.slots();
        let unit = |j: usize| self.unit[sample * slots + j] as f64;
        let row = |j: usize| {
            rows[j * dim..(j + 1) * dim]
                .iter()
                .map(move |v| v * unit(j))
        };
        let row = |j: usize| row(j).collect::<Vec<f64>>();
        for f in self.chain(sample) {
            // (I + κ a dᵀ) M = M + κ a (dᵀ M), κ with the rows' units folded in.
            let (a, d) = (row(f.axpy), row(f.dot));
            let scale = f.scale / (unit(f.axpy) * unit(f.dot));
            let t: Vec<f64> = (0..dim)
                .map(|c| (0..dim).map(|r| d[r] * m[r * dim + c]).sum())
                .collect();
            for r in 0..dim {
                for c in 0..dim {
                    m[r * dim + c] += scale * a[r] * t[c];
                }
            }
        }
        m
    }
}

/// The slots named in `slots` (one per sample, or none), each once, in increasing order.
fn distinct_slots(slots: &[Option<usize>]) -> Vec<usize> {
    let mut distinct: Vec<usize> = slots.iter().flatten().copied().collect();
    distinct.sort_unstable();
    distinct.dedup();
    distinct
}

/// Most row runs [`write_column`] writes one by one; more go through one masked column.
const MAX_RUNS: usize = 4;

/// `buf` (`[batch, capacity, dim]`) with row `b` of `value` (`[batch, dim]`) written to slot
/// `slots[b]` of sample `b` where one is named: one [`write_column`] per distinct slot.
pub(crate) fn write_slots(buf: Tensor<3>, slots: &[Option<usize>], value: &Tensor<2>) -> Tensor<3> {
    distinct_slots(slots).into_iter().fold(buf, |buf, slot| {
        let selected: Vec<bool> = slots.iter().map(|&j| j == Some(slot)).collect();
        write_column(buf, slot, &selected, value)
    })
}

/// `buf` (`[batch, capacity, dim]`) with the rows of column `slot` where `rows` is true taken
/// from `value` (`[batch, dim]`), in place where the backend allows it.
///
/// The selected rows are written run by run (a run: consecutive selected rows) when there are
/// at most [`MAX_RUNS`] runs: the column is never read. Otherwise the old column is read
/// (a strided view, copied) and merged with `value` under a row mask.
fn write_column(buf: Tensor<3>, slot: usize, rows: &[bool], value: &Tensor<2>) -> Tensor<3> {
    let [batch, _, dim] = buf.dims();
    let runs = row_runs(rows);
    if runs.len() <= MAX_RUNS {
        return runs.into_iter().fold(buf, |buf, (start, end)| {
            buf.slice_assign(
                [start..end, slot..slot + 1, 0..dim],
                value
                    .clone()
                    .narrow(0, start, end - start)
                    .reshape([end - start, 1, dim]),
            )
        });
    }
    // A new tensor from the old column, so that `buf` is uniquely owned again when it is written.
    let column = where_rows(
        buf.clone().narrow(1, slot, 1).reshape([batch, dim]),
        rows,
        value.clone(),
    );
    buf.slice_assign(
        [0..batch, slot..slot + 1, 0..dim],
        column.reshape([batch, 1, dim]),
    )
}

/// The selected rows of slot column `slot` of `buf` (`[batch, capacity, dim]`), in order, as a
/// fresh `[k, dim]` tensor. Only those rows are read, run by run (a `select` on the strided
/// slot column would first copy all of it), and the result never shares `buf`'s memory, so
/// `buf` stays uniquely owned for its in-place writes.
fn copy_rows(buf: &Tensor<3>, slot: usize, rows: &[bool]) -> Tensor<2> {
    let dim = buf.dims()[2];
    let run = |(start, end): (usize, usize)| {
        buf.clone()
            .slice([start..end, slot..slot + 1, 0..dim])
            .reshape([end - start, dim])
    };
    let runs = row_runs(rows);
    match runs.as_slice() {
        // One run may be a view of `buf` (a single row is contiguous): select it into a copy.
        [(start, end)] => take_rows(run((*start, *end)), &(0..end - start).collect::<Vec<_>>()),
        _ => Tensor::cat(runs.into_iter().map(run).collect(), 0),
    }
}

/// A fresh tensor whose entry `k` along the first axis is entry `rows[k]` of `tensor` (a
/// `[batch, ...]` tensor or a strided view of one). Always allocates (never a view of
/// `tensor`), so the source buffer stays uniquely owned.
fn take_rows<const D: usize>(tensor: Tensor<D>, rows: &[usize]) -> Tensor<D> {
    let index = row_index(rows, &tensor.device());
    tensor.select(0, index)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{DType, TensorData};

    fn t(values: Vec<f64>, shape: [usize; 2]) -> Tensor<2> {
        Tensor::from_data(
            TensorData::new(values, shape),
            (&crate::device::cpu(), DType::F32),
        )
    }

    fn host(t: Tensor<2>) -> Vec<f64> {
        t.into_data().iter::<f64>().collect()
    }

    fn rel_err(a: &[f64], b: &[f64]) -> f64 {
        let diff: f64 = a.iter().zip(b).map(|(x, y)| (x - y).powi(2)).sum();
        let norm: f64 = b.iter().map(|y| y * y).sum();
        (diff / norm.max(1e-300)).sqrt()
    }

    fn matvec(m: &[f64], x: &[f64]) -> Vec<f64> {
        let n = x.len();
        (0..n)
            .map(|r| (0..n).map(|c| m[r * n + c] * x[c]).sum())
            .collect()
    }

    fn dot(a: &[f64], b: &[f64]) -> f64 {
        a.iter().zip(b).map(|(x, y)| x * y).sum()
    }

    /// A deterministic pseudo-random vector.
    fn vector(seed: usize, n: usize) -> Vec<f64> {
        (0..n)
            .map(|i| (((seed * 7919 + i * 104729) % 1013) as f64 / 1013.0 - 0.5) * 2.0)
            .collect()
    }

    /// `(I + b₁b₀ᵀ/‖b₀‖²) ⋯ (−I)` over consecutive steps whose later one has `secant` set.
    fn product_of(steps: &[Vec<f64>], secant: &[bool], n: usize) -> Vec<f64> {
        let mut m = vec![0.0; n * n];
        for i in 0..n {
            m[i * n + i] = -1.0;
        }
        for j in 1..steps.len() {
            if !secant[j] {
                continue;
            }
            let (a, d) = (&steps[j], &steps[j - 1]);
            let scale = 1.0 / dot(d, d);
            let t: Vec<f64> = (0..n)
                .map(|c| (0..n).map(|r| d[r] * m[r * n + c]).sum())
                .collect();
            for r in 0..n {
                for c in 0..n {
                    m[r * n + c] += scale * a[r] * t[c];
                }
            }
        }
        m
    }

    /// The product form is Broyden's update: driven through the solver's sequence of products
    /// (of residuals `fz − z` with their norms, and of given vectors) and pushes with the step
    /// (`push_step`), with arbitrary residuals, it holds the matrix of the additive update
    /// `B⁺ = B + u vᵀ` (`v = Bᵀ Δz`, `u = (Δz − B Δg) / (vᵀ Δg)`), computed densely in f64, and
    /// its products, transposed products and dot products agree with that matrix. On flex `f32`
    /// (the fused kernel) and `f64` (the tensor operations).
    #[test]
    fn the_product_form_is_the_broyden_update() {
        let (batch, n, updates) = (2, 6, 5);
        let cases = [
            (DType::F32, StepPrecision::Full, 1e-4),
            (DType::F64, StepPrecision::Full, 1e-10),
            // The steps rounded to 11 significant bits: the matrix and its products within 0.2 %
            // after 5 updates; the iterates still exact.
            (DType::F32, StepPrecision::Half, 2e-3),
        ];
        for (dtype, precision, tol) in cases {
            let tensor = |rows: &[Vec<f64>]| {
                Tensor::<2>::from_data(
                    TensorData::new(rows.concat(), [batch, n]),
                    (&crate::device::cpu(), dtype),
                )
            };
            let mut dense: Vec<Vec<f64>> = (0..batch)
                .map(|_| {
                    let mut m = vec![0.0; n * n];
                    (0..n).for_each(|i| m[i * n + i] = -1.0);
                    m
                })
                .collect();
            let like = tensor(&vec![vec![0.0; n]; batch]);
            let mut inverse = StepInverse::identity_with(&like, updates, precision);
            assert_eq!(inverse.precision(), precision);
            let mut g: Vec<Vec<f64>> = (0..batch).map(|b| vector(b, n)).collect();
            let mut bg: Vec<Vec<f64>> = (0..batch).map(|b| matvec(&dense[b], &g[b])).collect();
            let all = vec![true; batch];
            inverse.push_as_best(tensor(&bg), &all, &[false; 2], &all);
            for k in 1..=updates {
                // Even updates: the product of a residual `fz − z` as the solver takes it, with
                // its norms; odd ones: the product of a given vector.
                let z: Vec<Vec<f64>> = (0..batch).map(|b| vector(50 + 10 * k + b, n)).collect();
                let g_new: Vec<Vec<f64>> = (0..batch).map(|b| vector(10 * k + b, n)).collect();
                let fz: Vec<Vec<f64>> = (0..batch)
                    .map(|b| z[b].iter().zip(&g_new[b]).map(|(z, g)| z + g).collect())
                    .collect();
                let (w, dots) = if k % 2 == 0 {
                    let (w, squares, dots) = inverse.apply_to_residual(&tensor(&z), &tensor(&fz));
                    let squares = host(squares);
                    for b in 0..batch {
                        let expected = [dot(&g_new[b], &g_new[b]), dot(&fz[b], &fz[b])];
                        for (got, expected) in squares[2 * b..2 * b + 2].iter().zip(expected) {
                            assert!(
                                (got - expected).abs() < tol * (1.0 + expected),
                                "{dtype:?} {precision:?} update {k}: squares {got} against {expected}"
                            );
                        }
                    }
                    (w, dots)
                } else {
                    inverse.apply_with_dots(tensor(&g_new))
                };
                let w_tensor = w.clone();
                let (w, dots) = (host(w), host(dots));
                let mut norms = vec![0.0; batch];
                let mut scales = vec![0.0; batch];
                for b in 0..batch {
                    let expected = matvec(&dense[b], &g_new[b]);
                    let found = &w[b * n..(b + 1) * n];
                    assert!(
                        rel_err(found, &expected) < tol,
                        "{dtype:?} {precision:?} update {k}: B g"
                    );
                    let (y_w, y_y) = (dot(&bg[b], &expected), dot(&bg[b], &bg[b]));
                    assert!((dots[2 * b] - y_w).abs() < tol * (1.0 + y_w.abs()));
                    assert!((dots[2 * b + 1] - y_y).abs() < tol * (1.0 + y_y));
                    norms[b] = y_y;
                    scales[b] = y_y / (y_y - y_w);
                    // The additive update, from its definition.
                    let dz: Vec<f64> = bg[b].iter().map(|v| -v).collect();
                    let dg: Vec<f64> = g_new[b].iter().zip(&g[b]).map(|(a, c)| a - c).collect();
                    let m = &dense[b];
                    let v: Vec<f64> = (0..n)
                        .map(|c| (0..n).map(|r| m[r * n + c] * dz[r]).sum())
                        .collect();
                    let b_dg = matvec(m, &dg);
                    let denom = dot(&v, &dg);
                    let u: Vec<f64> = dz.iter().zip(&b_dg).map(|(a, c)| (a - c) / denom).collect();
                    for r in 0..n {
                        for c in 0..n {
                            dense[b][r * n + c] += u[r] * v[c];
                        }
                    }
                }
                inverse.set_newest_norms(&norms, &all);
                let next: Vec<Vec<f64>> = (0..batch)
                    .map(|b| {
                        w[b * n..(b + 1) * n]
                            .iter()
                            .map(|v| v * scales[b])
                            .collect()
                    })
                    .collect();
                // The step and its push in one pass, as the solver runs them: the next iterate
                // is `z − next`.
                let stepped =
                    host(inverse.push_step(w_tensor, &scales, &tensor(&z), &all, &all, &all));
                for b in 0..batch {
                    let expected: Vec<f64> =
                        z[b].iter().zip(&next[b]).map(|(z, s)| z - s).collect();
                    assert!(
                        rel_err(&stepped[b * n..(b + 1) * n], &expected) < tol,
                        "{dtype:?} {precision:?} update {k}: next iterate"
                    );
                }
                g = g_new;
                bg = (0..batch).map(|b| matvec(&dense[b], &g[b])).collect();
                for b in 0..batch {
                    assert!(
                        rel_err(&next[b], &bg[b]) < tol,
                        "{dtype:?} {precision:?} update {k}: next step"
                    );
                    assert!(
                        rel_err(&inverse.dense(b), &dense[b]) < tol,
                        "{dtype:?} {precision:?} update {k}: B"
                    );
                    assert_eq!(inverse.rank(b), k);
                }
            }
            let x: Vec<Vec<f64>> = (0..batch).map(|b| vector(99 + b, n)).collect();
            let bt = host(inverse.apply_transposed(tensor(&x)));
            for b in 0..batch {
                let m = &dense[b];
                let expected: Vec<f64> = (0..n)
                    .map(|c| (0..n).map(|r| m[r * n + c] * x[b][r]).sum())
                    .collect();
                assert!(
                    rel_err(&bt[b * n..(b + 1) * n], &expected) < tol,
                    "{dtype:?} {precision:?}: Bᵀ x"
                );
            }
        }
    }

    /// Pushes `k` steps of sample-specific vectors (secant flags per step; their sizes differ
    /// by factors of 3, so that half-precision steps get different units), setting each
    /// previous step's norm first as the solver does. Returns the steps pushed per sample.
    fn push_steps(
        inverse: &mut StepInverse,
        seeds: std::ops::Range<usize>,
        rows: &[bool],
        best: &dyn Fn(usize) -> bool,
        n: usize,
    ) -> Vec<Vec<Vec<f64>>> {
        let batch = rows.len();
        let mut pushed = vec![Vec::new(); batch];
        let step = |b: usize, k: usize| -> Vec<f64> {
            let size = 3f64.powi((k % 4) as i32);
            vector(100 * b + k, n).iter().map(|v| v * size).collect()
        };
        for k in seeds {
            let steps: Vec<Vec<f64>> = (0..batch).map(|b| step(b, k)).collect();
            let norms: Vec<f64> = (0..batch)
                .map(|b| {
                    let prev = step(b, k.max(1) - 1);
                    dot(&prev, &prev)
                })
                .collect();
            inverse.set_newest_norms(&norms, rows);
            let now_best = vec![best(k); batch];
            inverse.push_as_best(
                t(steps.concat(), [batch, n]),
                rows,
                &vec![k % 4 != 3; batch],
                &now_best,
            );
            for b in 0..batch {
                if rows[b] {
                    pushed[b].push(steps[b].clone());
                }
            }
        }
        pushed
    }

    /// A full ring drops the oldest factor (the product of the factors left), a skipped update
    /// breaks the chain, and `into_best` gives back the matrix marked best, with the steps
    /// overwritten since put back, per sample.
    #[test]
    fn the_ring_keeps_the_newest_steps_and_into_best_restores_the_best() {
        let (batch, n, memory) = (2, 4, 3);
        let mut inverse = StepInverse::identity(&t(vec![0.0; batch * n], [batch, n]), memory);
        // Steps 0..9 for sample 0, 0..5 for sample 1; both mark best at step 5.
        let rows = [true, true];
        let pushed = push_steps(&mut inverse, 0..6, &rows, &|k| k == 5, n);
        let flags = |from: usize, to: usize| -> Vec<bool> {
            (from..to).map(|k| k != 0 && k % 4 != 3).collect()
        };
        let at_best: Vec<Vec<f64>> = (0..batch)
            .map(|b| product_of(&pushed[b][2..6], &flags(2, 6)[..], n))
            .collect();
        for (b, expected) in at_best.iter().enumerate() {
            assert!(
                rel_err(&inverse.dense(b), expected) < 1e-5,
                "sample {b}: last 4 steps"
            );
        }
        // Steps 2..6 hold the factors 3→4 and 4→5; step 3 skipped its update (no factor 2→3).
        assert_eq!(inverse.rank(0), 2);
        let later = push_steps(&mut inverse, 6..10, &[true, false], &|_| false, n);
        let newest = [&pushed[0][..], &later[0][..]].concat();
        assert!(
            rel_err(
                &inverse.dense(0),
                &product_of(&newest[6..10], &flags(6, 10), n)
            ) < 1e-5
        );
        assert!(
            rel_err(&inverse.dense(1), &at_best[1]) < 1e-5,
            "sample 1 untouched"
        );
        let best = inverse.clone().into_best();
        for (b, expected) in at_best.iter().enumerate() {
            assert!(
                rel_err(&best.dense(b), expected) < 1e-5,
                "sample {b}: best restored"
            );
        }
        // A restart forgets the steps; the best stays restorable.
        let mut restarted = inverse;
        restarted.reset(&[true, false]);
        assert_eq!(restarted.rank(0), 0);
        let minus_identity: Vec<f64> = (0..n * n)
            .map(|k| if k % (n + 1) == 0 { -1.0 } else { 0.0 })
            .collect();
        assert!(rel_err(&restarted.dense(0), &minus_identity) < 1e-12);
        push_steps(&mut restarted, 20..23, &[true, false], &|_| false, n);
        let best = restarted.into_best();
        for (b, expected) in at_best.iter().enumerate() {
            assert!(
                rel_err(&best.dense(b), expected) < 1e-5,
                "sample {b}: best after restart"
            );
        }
    }

    /// Two samples whose rings sit at different positions (one restarted) both overwrite
    /// steps of their best matrices: `into_best` puts each saved row back in its own sample and
    /// slot. Marking a new best drops the saved rows no best matrix needs any more.
    #[test]
    fn saved_steps_go_back_to_their_own_sample_and_are_dropped_when_not_needed() {
        // Plain, the steps are saved and put back by host row copies; under autodiff, by the
        // tensor operations (the route of other backends). Half-precision steps are saved and
        // put back with their units.
        let cases = [
            (false, StepPrecision::Full),
            (true, StepPrecision::Full),
            (false, StepPrecision::Half),
        ];
        for (autodiff, precision) in cases {
            let (batch, n, memory) = (2, 3, 2);
            let like = t(vec![0.0; batch * n], [batch, n]);
            let mut inverse = StepInverse::identity_with(&like, memory, precision);
            assert_eq!(inverse.precision(), precision);
            if autodiff {
                inverse.steps = inverse.steps.clone().autodiff();
            }
            push_steps(&mut inverse, 0..2, &[true, true], &|_| false, n);
            inverse.reset(&[false, true]);
            push_steps(&mut inverse, 4..6, &[true, true], &|k| k == 5, n);
            let at_best: Vec<Vec<f64>> = (0..batch).map(|b| inverse.dense(b)).collect();
            assert!(inverse.rank(0) > 0 && inverse.rank(1) > 0);
            // Three more steps each: both rings wrap over every slot of their best matrices.
            push_steps(&mut inverse, 8..11, &[true, true], &|_| false, n);
            assert!(
                !inverse.evicted.is_empty(),
                "the best matrices' steps were saved"
            );
            assert_eq!(inverse.steps.is_autodiff(), autodiff);
            let best = inverse.clone().into_best();
            for (b, expected) in at_best.iter().enumerate() {
                let err = rel_err(&best.dense(b), expected);
                assert!(
                    err < 1e-6,
                    "autodiff {autodiff} {precision:?}, sample {b}: {err}"
                );
            }
            // A new best for sample 0 only: its saved rows go, sample 1's stay.
            inverse.mark_best(&[true, false]);
            assert!(inverse.evicted.iter().all(|e| !e.rows[0] && e.rows[1]));
            assert!(
                inverse.evicted.iter().all(|e| e.saved == vec![1]),
                "compacted to sample 1"
            );
            inverse.mark_best(&[false, true]);
            assert!(inverse.evicted.is_empty());
        }
    }

    /// The host row copies of a ring column, on flex for f32, f64 and f16: `gather_slot` takes the
    /// named samples' rows in the order named, `scatter_slot` writes each data row to its own
    /// sample and nothing else (a shared ring is copied, not changed); under autodiff both
    /// decline.
    #[test]
    fn slot_rows_are_copied_out_and_back_by_sample() {
        let (batch, slots, dim) = (4, 3, 5);
        let device = crate::device::cpu();
        for dtype in [DType::F32, DType::F64, DType::F16] {
            let values: Vec<f64> = (0..batch * slots * dim).map(|k| k as f64).collect();
            let ring = Tensor::<3>::from_data(
                TensorData::new(values.clone(), [batch, slots, dim]),
                (&device, dtype),
            );
            let row = |b: usize, j: usize| values[(b * slots + j) * dim..][..dim].to_vec();
            let taken = gather_slot(&ring, 1, &[3, 0, 2]).expect("flex copies the rows");
            assert_eq!(
                host(taken.clone()),
                [row(3, 1), row(0, 1), row(2, 1)].concat()
            );

            let mut target = Tensor::<3>::zeros([batch, slots, dim], (&device, dtype));
            let shared = target.clone();
            assert!(scatter_slot(&mut target, 2, &taken, &[(1, 0), (3, 2)]));
            let written: Vec<f64> = target.into_data().iter::<f64>().collect();
            for b in 0..batch {
                for j in 0..slots {
                    let expected = match (b, j) {
                        (1, 2) => row(3, 1),
                        (3, 2) => row(2, 1),
                        _ => vec![0.0; dim],
                    };
                    let at = (b * slots + j) * dim;
                    assert_eq!(written[at..at + dim], expected, "{dtype:?}: ({b}, {j})");
                }
            }
            assert!(shared.into_data().iter::<f64>().all(|v| v == 0.0));

            let mut tracked = ring.clone().autodiff();
            assert!(gather_slot(&tracked, 1, &[0]).is_none());
            assert!(!scatter_slot(&mut tracked, 0, &taken, &[(0, 0)]));
        }
    }

    /// Over a base: `B = F ⋯ F Aᵀ`, and `Bᵀ` its transpose.
    #[test]
    fn over_transposed_starts_from_the_transpose() {
        let (batch, n) = (2, 5);
        let mut a = StepInverse::identity(&t(vec![0.0; batch * n], [batch, n]), 4);
        push_steps(&mut a, 0..4, &[true, true], &|_| false, n);
        let mut b = StepInverse::over_transposed(a.clone(), 2);
        assert_eq!(b.memory(), 2);
        push_steps(&mut b, 40..43, &[true, true], &|_| false, n);
        for s in 0..batch {
            let (da, db) = (a.dense(s), b.dense(s));
            assert!(a.rank(s) > 0 && b.rank(s) > 0);
            let x = vector(7 + s, n);
            let found = host(b.apply(t([x.clone(), x.clone()].concat(), [batch, n])));
            assert!(rel_err(&found[s * n..(s + 1) * n], &matvec(&db, &x)) < 1e-5);
            let found = host(b.apply_transposed(t([x.clone(), x.clone()].concat(), [batch, n])));
            let transposed: Vec<f64> = (0..n * n).map(|k| db[(k % n) * n + k / n]).collect();
            assert!(rel_err(&found[s * n..(s + 1) * n], &matvec(&transposed, &x)) < 1e-5);
            // With no factors of its own, B is Aᵀ.
            let fresh = StepInverse::over_transposed(a.clone(), 2).dense(s);
            let at: Vec<f64> = (0..n * n).map(|k| da[(k % n) * n + k / n]).collect();
            assert!(rel_err(&fresh, &at) < 1e-12);
        }
    }

    /// Both ways of writing a column (run by run, and through a row mask once there are more
    /// than `MAX_RUNS` runs) write exactly the selected rows of that column.
    #[test]
    fn write_column_writes_the_selected_rows_only() {
        let (batch, capacity, dim) = (10, 3, 4);
        let old: Vec<f64> = (0..batch * capacity * dim).map(|k| k as f64).collect();
        let value: Vec<f64> = (0..batch * dim).map(|k| -1.0 - k as f64).collect();
        let few = [
            false, true, true, false, false, false, false, true, false, false,
        ];
        let many = [
            true, false, true, false, true, false, true, false, true, false,
        ];
        assert!(row_runs(&few).len() <= MAX_RUNS && row_runs(&many).len() > MAX_RUNS);
        for rows in [few, many, [true; 10]] {
            let buf = Tensor::<3>::from_data(
                TensorData::new(old.clone(), [batch, capacity, dim]),
                (&crate::device::cpu(), DType::F32),
            );
            let slot = 1;
            let written = write_column(buf, slot, &rows, &t(value.clone(), [batch, dim]));
            let got: Vec<f64> = written.into_data().iter::<f64>().collect();
            for b in 0..batch {
                for j in 0..capacity {
                    for i in 0..dim {
                        let k = (b * capacity + j) * dim + i;
                        let expected = if j == slot && rows[b] {
                            value[b * dim + i]
                        } else {
                            old[k]
                        };
                        assert_eq!(got[k], expected, "row {b}, slot {j}, rows {rows:?}");
                    }
                }
            }
        }
    }
}
