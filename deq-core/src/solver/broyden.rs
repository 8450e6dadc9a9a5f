//! Limited-memory ("good") Broyden on the root problem `g(z) = F(z) − z = 0`.
use burn::tensor::Tensor;

use super::StopRule;
use super::low_rank::LowRankInverse;
use super::tracker::{Tracker, where_rows, zero_rows};

/// A denominator `vᵀΔg` smaller than this (relative to `‖v‖‖Δg‖`) skips the update.
const DENOM_EPS: f64 = 1e-12;
/// A sample whose residual has not improved for this many iterations (since its best iterate or
/// its last restart) restarts: back to its best iterate with `B = −I`.
const RESTART_PATIENCE: usize = 12;
/// A sample whose residual exceeds this many times its lowest restarts the same way (long
/// before the tracker's divergence factor would stop it).
const RESTART_GROWTH: f64 = 1e2;

/// Broyden's method with the inverse estimate `B ≈ J_g⁻¹` (conventions of `shine-math.md`):
/// step `z⁺ = z − B g(z)`; update `vᵀ = Δzᵀ B`, `u = (Δz − B Δg) / (vᵀ Δg)`, `B⁺ = B + u vᵀ`,
/// which keeps the secant identity `B⁺ Δg = Δz`.
///
/// Two low-rank products per iteration: `B g⁺` (which also gives `B Δg = B g⁺ − B g`) and
/// `Bᵀ Δz`; the next step's `B⁺ g⁺ = B g⁺ + u (v · g⁺)` then costs O(batch · dim).
///
/// Limited memory can make the iteration cycle or stall, and a poor secant update can send it
/// away from the root: a sample that has not improved for [`RESTART_PATIENCE`] iterations, or
/// whose residual has grown [`RESTART_GROWTH`]-fold over its lowest, restarts from its
/// lowest-residual iterate with `B = −I` (its other samples are unaffected).
///
/// Returns the tracker and, per sample, the inverse that was current at the sample's
/// lowest-residual iterate (the one SHINE must use; see [`LowRankInverse::into_best`]).
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
    inverse.mark_best(&vec![true; batch]);

    let (mut z, mut fz) = (z0, fz0);
    tracker.start(&mut z, &mut fz);
    let mut g = fz.clone() - z.clone();
    let mut bg = inverse.apply(g.clone());
    let mut last_restart = vec![0usize; batch];
    for iter in 1..=max_iter {
        if !tracker.any_active() {
            break;
        }
        let moving: Vec<bool> = tracker.active().to_vec();
        let frozen = tracker.frozen();
        // Δz = −B g; frozen samples do not move (mask, not multiply: 0·NaN is NaN).
        let dz = zero_rows(bg.clone().neg(), &frozen);
        let obs = tracker.advance(iter, map, z.clone() + dz.clone(), &mut z, &mut fz);
        let g_new = fz.clone() - z.clone();

        // Secant update for the samples that moved.
        let bg_new = inverse.apply(g_new.clone());
        let b_dg = zero_rows(bg_new.clone() - bg, &frozen);
        let dg = zero_rows(g_new.clone() - g, &frozen);
        let v = inverse.apply_transposed(dz.clone()); // vᵀ = Δzᵀ B
        let denom = (v.clone() * dg.clone()).sum_dim(1);
        let scale = ((v.clone() * v.clone()).sum_dim(1) * (dg.clone() * dg).sum_dim(1)).sqrt();
        let host: Vec<f64> = Tensor::cat(vec![denom.clone(), scale], 1)
            .into_data()
            .iter::<f64>()
            .collect();
        let write: Vec<bool> = (0..batch)
            .map(|b| {
                let (d, s) = (host[2 * b], host[2 * b + 1]);
                moving[b]
                    && !obs.non_finite[b]
                    && d.is_finite()
                    && s.is_finite()
                    && d.abs() > DENOM_EPS * s
            })
            .collect();
        bg = bg_new;
        if write.iter().any(|&w| w) {
            let skip: Vec<bool> = write.iter().map(|w| !w).collect();
            // Samples without an update get denominator 1 so that no inf/NaN is formed.
            let safe = where_rows(denom, &skip, dz.ones_like().narrow(1, 0, 1));
            let u = zero_rows((dz - b_dg) / safe, &skip);
            // B⁺ g⁺ = B g⁺ + u (v · g⁺) for the next step.
            bg = bg + u.clone() * (v.clone() * g_new.clone()).sum_dim(1);
            inverse.push_as_best(u, v, &write, &obs.improved);
        } else {
            inverse.mark_best(&obs.improved);
        }
        g = g_new;

        let restart: Vec<bool> = (0..batch)
            .map(|b| {
                if !tracker.active()[b] {
                    return false;
                }
                let (best, grew) = tracker.progress(b, RESTART_GROWTH);
                grew || iter - best.max(last_restart[b]) >= RESTART_PATIENCE
            })
            .collect();
        if restart.iter().any(|&r| r) {
            for (b, &r) in restart.iter().enumerate() {
                if r {
                    last_restart[b] = iter;
                }
            }
            inverse.reset(&restart);
            tracker.return_to_best(&restart, &mut z, &mut fz);
            g = fz.clone() - z.clone();
            bg = where_rows(bg, &restart, g.clone().neg());
        }
    }
    (tracker, inverse.into_best())
}
