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
/// Returns the tracker and, per sample, the inverse that was current at the sample's
/// lowest-residual iterate (the one SHINE must use).
pub(crate) fn broyden(
    map: &mut dyn FnMut(Tensor<2>) -> Tensor<2>,
    z0: Tensor<2>,
    fz0: Tensor<2>,
    rule: StopRule,
    max_iter: usize,
    init: LowRankInverse,
) -> (Tracker, LowRankInverse) {
    let mut tracker = Tracker::new(&z0, rule);
    let mut inverse = init;
    let mut best_inverse = inverse.clone();
    let (mut z, mut fz) = (z0, fz0);
    tracker.start(&mut z, &mut fz);
    let mut g = fz.clone() - z.clone();
    for iter in 1..=max_iter {
        if !tracker.any_active() {
            break;
        }
        let moving: Vec<bool> = tracker.active().to_vec();
        let frozen = tracker.frozen_mask(&z);
        let zeros = z.zeros_like();
        // Δz = −B g; frozen samples do not move (mask, not multiply: 0·NaN is NaN).
        let dz = inverse.apply(g.clone()).neg().mask_where(frozen.clone(), zeros.clone());
        let obs = tracker.advance(iter, map, z.clone() + dz.clone(), &mut z, &mut fz);
        let g_new = fz.clone() - z.clone();

        // Secant update for the samples that moved.
        let dg = (g_new.clone() - g).mask_where(frozen, zeros);
        let v = inverse.apply_transposed(dz.clone()); // vᵀ = Δzᵀ B
        let b_dg = inverse.apply(dg.clone());
        let denom = (v.clone() * dg.clone()).sum_dim(1);
        let scale = (v.clone().powi_scalar(2).sum_dim(1) * dg.powi_scalar(2).sum_dim(1)).sqrt();
        let host: Vec<f64> = Tensor::cat(vec![denom.clone(), scale], 1).into_data().iter::<f64>().collect();
        let write: Vec<bool> = (0..moving.len())
            .map(|b| {
                let (d, s) = (host[2 * b], host[2 * b + 1]);
                moving[b] && !obs.non_finite[b] && d.is_finite() && s.is_finite() && d.abs() > DENOM_EPS * s
            })
            .collect();
        if write.iter().any(|&w| w) {
            // Samples without an update get denominator 1 so that no inf/NaN is formed.
            let safe = denom.mask_where(row_mask(&write, &dz).narrow(1, 0, 1).bool_not(), dz.ones_like().narrow(1, 0, 1));
            let u = (dz - b_dg) / safe;
            inverse.push(u, v, &write);
        }
        best_inverse.take_where(&inverse, &obs.improved);
        g = g_new;
    }
    (tracker, best_inverse)
}
