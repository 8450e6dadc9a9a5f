//! Limited-memory ("good") Broyden on the root problem `g(z) = F(z) − z = 0`.
use burn::tensor::{Tensor, TensorData};

use super::StopRule;
use super::low_rank::LowRankInverse;
use super::map::BatchMap;
use super::tracker::{Tracker, where_rows};

/// A denominator `vᵀΔg` smaller than this (relative to `‖Δz‖²`, its value for `B = J_g⁻¹`)
/// skips the update.
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
/// Per iteration: two low-rank products (`B g⁺` and `v = Bᵀ Δz`, both with the current `B`),
/// four batched dot products, and one read back to the host (residual norms and the dots
/// together). The full step `Δz = −B g` gives `Δz − B Δg = −B g⁺`, so `u = −B g⁺ / (vᵀ Δg)`
/// and `B⁺ g⁺ = B g⁺ · (−vᵀ g / vᵀ Δg)`: two per-sample scalings of `B g⁺`. The scalars need
/// no product with `v`: `vᵀ g = Δzᵀ B g = −‖Δz‖²` and `vᵀ g⁺ = Δz · (B g⁺)`. An update whose
/// denominator is below `1e-12 ‖Δz‖²` in magnitude is skipped. `Δz` itself is never formed:
/// the step is `z − B g`, the product and the dots take `B g` with the sign folded into the
/// scalars, and the pair is stored as `(−u, −v)` (the same product `u vᵀ`).
///
/// Limited memory can make the iteration cycle or stall, and a poor secant update can send it
/// away from the root: a sample that has not improved for [`RESTART_PATIENCE`] iterations, or
/// whose residual has grown [`RESTART_GROWTH`]-fold over its lowest, restarts from its
/// lowest-residual iterate with `B = −I` (its other samples are unaffected).
///
/// Returns the tracker and, per sample, the inverse that was current at the sample's
/// lowest-residual iterate (the one SHINE must use; see [`LowRankInverse::into_best`]).
pub(crate) fn broyden(
    map: &mut dyn BatchMap,
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
    let g0 = tracker.start(&mut z, &mut fz);
    let mut bg = inverse.apply(g0);
    let mut last_restart = vec![0usize; batch];
    for iter in 1..=max_iter {
        if !tracker.any_active() {
            break;
        }
        let moving: Vec<bool> = tracker.active().to_vec();
        // z⁺ = z + Δz with Δz = −B g (frozen samples stay where they are: the tracker masks
        // their step). Δz itself is never formed: `bg = −Δz` stands in for it below.
        let residual = tracker.step(map, z.clone() - bg.clone(), &mut z, &mut fz);
        // B g⁺ and Bᵀ (B g) = −v (vᵀ = Δzᵀ B), both with the current B, and the dot products
        // (B g)·(B g⁺) and (B g)·(B g). The rows of samples that just went non-finite are NaN;
        // they stay in their own rows and are never written.
        let (bg_new, minus_v, dots) = inverse.apply_pair(residual.g.clone(), bg.clone());
        let obs = tracker.record(iter, &mut z, &mut fz, &residual, &[dots]);
        // Δz·(B g⁺) = −(B g)·(B g⁺); ‖Δz‖² = ‖B g‖².
        let (minus_v_g_new, dz_dz) = (&obs.extra[0], &obs.extra[1]);

        // Secant update for the samples that moved: per sample, u = s_u · B g⁺ and
        // B⁺ g⁺ = s_bg · B g⁺. The pair is stored as (−u, −v), which has the same product.
        let (mut minus_s_u, mut s_bg) = (vec![0.0; batch], vec![1.0; batch]);
        let mut write = vec![false; batch];
        for b in 0..batch {
            // vᵀ Δg = vᵀ g⁺ − vᵀ g = Δz·(B g⁺) + ‖Δz‖².
            let denom = dz_dz[b] - minus_v_g_new[b];
            write[b] = moving[b]
                && !obs.non_finite[b]
                && denom.is_finite()
                && dz_dz[b].is_finite()
                && denom.abs() > DENOM_EPS * dz_dz[b];
            if write[b] {
                minus_s_u[b] = 1.0 / denom;
                s_bg[b] = dz_dz[b] / denom;
            }
        }
        bg = bg_new;
        if write.iter().any(|&w| w) {
            let options = (bg.device(), bg.dtype());
            let column = |values: Vec<f64>| {
                Tensor::<2>::from_data(TensorData::new(values, [batch, 1]), (&options.0, options.1))
            };
            let minus_u = bg.clone() * column(minus_s_u);
            bg = bg * column(s_bg);
            inverse.push_as_best(minus_u, minus_v, &write, &obs.improved);
        } else {
            inverse.mark_best(&obs.improved);
        }

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
            let g = fz.clone() - z.clone();
            bg = where_rows(bg, &restart, g.neg());
        }
    }
    (tracker, inverse.into_best())
}
