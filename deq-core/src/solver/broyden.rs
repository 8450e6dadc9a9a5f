//! Limited-memory ("good") Broyden on the root problem `g(z) = F(z) − z = 0`.
use burn::tensor::Tensor;

use super::StopRule;
use super::low_rank::LowRankInverse;
use super::tracker::{Tracker, row_mask};

/// A denominator `vᵀΔg` smaller than this (relative to `‖v‖‖Δg‖`) skips the update.
const DENOM_EPS: f64 = 1e-12;

/// Broyden's method with the inverse estimate `B ≈ J_g⁻¹` (conventions of `shine-math.md`):
/// step `z⁺ = z − B g(z)`; update `vᵀ = Δzᵀ B`, `u = (Δz − B Δg) / (vᵀ Δg)`, `B⁺ = B + u vᵀ`,
/// which keeps the secant identity `B⁺ Δg = Δz`.
///
/// Two low-rank products per iteration: `B g⁺` (which also gives `B Δg = B g⁺ − B g`) and
/// `Bᵀ Δz`; the next step's `B⁺ g⁺ = B g⁺ + u (v · g⁺)` then costs O(batch · dim).
///
/// Returns the tracker and, per sample, the inverse that was current at the sample's
/// lowest-residual iterate (the one SHINE must use). It is recovered at the end by dropping the
/// pairs pushed after that iterate; a copy is taken only if the ring buffer is about to
/// overwrite a pair that the best matrix still contains.
pub(crate) fn broyden(
    map: &mut dyn FnMut(Tensor<2>) -> Tensor<2>,
    z0: Tensor<2>,
    fz0: Tensor<2>,
    rule: StopRule,
    max_iter: usize,
    init: LowRankInverse,
) -> (Tracker, LowRankInverse) {
    let batch = z0.dims()[0];
    let mut tracker = Tracker::new(&z0, rule);
    let mut inverse = init;
    // Per sample: push count of the matrix at the best iterate, and a copy of it when the ring
    // buffer would otherwise lose one of its pairs.
    let mut best_pushes: Vec<u64> = (0..batch).map(|b| inverse.push_count(b)).collect();
    let mut saved: Option<LowRankInverse> = None;
    let mut is_saved = vec![false; batch];

    let (mut z, mut fz) = (z0, fz0);
    tracker.start(&mut z, &mut fz);
    let mut g = fz.clone() - z.clone();
    let mut bg = inverse.apply(g.clone());
    for iter in 1..=max_iter {
        if !tracker.any_active() {
            break;
        }
        let moving: Vec<bool> = tracker.active().to_vec();
        let frozen = tracker.frozen_mask(&z);
        let zeros = z.zeros_like();
        // Δz = −B g; frozen samples do not move (mask, not multiply: 0·NaN is NaN).
        let dz = bg.clone().neg().mask_where(frozen.clone(), zeros.clone());
        let obs = tracker.advance(iter, map, z.clone() + dz.clone(), &mut z, &mut fz);
        let g_new = fz.clone() - z.clone();

        // Secant update for the samples that moved.
        let bg_new = inverse.apply(g_new.clone());
        let b_dg = (bg_new.clone() - bg).mask_where(frozen.clone(), zeros.clone());
        let dg = (g_new.clone() - g).mask_where(frozen, zeros.clone());
        let v = inverse.apply_transposed(dz.clone()); // vᵀ = Δzᵀ B
        let denom = (v.clone() * dg.clone()).sum_dim(1);
        let scale = (v.clone().powi_scalar(2).sum_dim(1) * dg.powi_scalar(2).sum_dim(1)).sqrt();
        let host: Vec<f64> = Tensor::cat(vec![denom.clone(), scale], 1).into_data().iter::<f64>().collect();
        let write: Vec<bool> = (0..batch)
            .map(|b| {
                let (d, s) = (host[2 * b], host[2 * b + 1]);
                moving[b] && !obs.non_finite[b] && d.is_finite() && s.is_finite() && d.abs() > DENOM_EPS * s
            })
            .collect();
        bg = bg_new;
        if write.iter().any(|&w| w) {
            let skip = row_mask(&write, &dz).bool_not();
            // Samples without an update get denominator 1 so that no inf/NaN is formed.
            let safe = denom.mask_where(skip.clone().narrow(1, 0, 1), dz.ones_like().narrow(1, 0, 1));
            let u = ((dz - b_dg) / safe).mask_where(skip, zeros);
            // Keep the best matrix of samples whose ring buffer is about to lose one of its pairs.
            let evicting: Vec<bool> = (0..batch)
                .map(|b| write[b] && !obs.improved[b] && !is_saved[b] && inverse.next_push_evicts(b, best_pushes[b]))
                .collect();
            if evicting.iter().any(|&e| e) {
                let copy = saved.get_or_insert_with(|| inverse.clone());
                copy.take_where(&inverse, &evicting);
                for b in 0..batch {
                    is_saved[b] |= evicting[b];
                }
            }
            // B⁺ g⁺ = B g⁺ + u (v · g⁺) for the next step.
            bg = bg + u.clone() * (v.clone() * g_new.clone()).sum_dim(1);
            inverse.push(u, v, &write);
        }
        for b in 0..batch {
            if obs.improved[b] {
                best_pushes[b] = inverse.push_count(b);
                is_saved[b] = false;
            }
        }
        g = g_new;
    }
    if let Some(saved) = saved {
        inverse.take_where(&saved, &is_saved);
    }
    inverse.truncate_to(&best_pushes);
    (tracker, inverse)
}
