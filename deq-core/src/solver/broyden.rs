//! Limited-memory ("good") Broyden on the root problem `g(z) = F(z) − z = 0`.
use burn::tensor::Tensor;

use super::StopRule;
use super::map::BatchMap;
use super::step_inverse::StepInverse;
use super::tracker::{Tracker, where_rows};

/// A denominator `vᵀΔg` smaller than this (relative to `‖Δz‖²`, its value for `B = J_g⁻¹`)
/// skips the update.
const DENOM_EPS: f64 = 1e-12;
/// A sample whose residual has not improved for this many iterations (since its best iterate or
/// its last restart) restarts: back to its best iterate with `B = B₀`.
const RESTART_PATIENCE: usize = 12;
/// A sample whose residual exceeds this many times its lowest restarts the same way (long
/// before the tracker's divergence factor would stop it).
const RESTART_GROWTH: f64 = 1e2;

/// Broyden's method with the inverse estimate `B ≈ J_g⁻¹` (conventions of `shine-math.md`):
/// step `z⁺ = z − B g(z)`; update `vᵀ = Δzᵀ B`, `u = (Δz − B Δg) / (vᵀ Δg)`, `B⁺ = B + u vᵀ`,
/// which keeps the secant identity `B⁺ Δg = Δz`.
///
/// `B` is kept in product form ([`StepInverse`]): with the full step, `B⁺ = (I + u Δzᵀ) B` and
/// `u` is a multiple of the next step, so the steps are all that is stored. Per iteration, besides
/// the evaluation of `F`: one product `B g⁺` (each stored step read once; on flex the residual
/// `g⁺ = F(z⁺) − z⁺` and its norms are taken in the product's first pass) with the dot products
/// `(B g)·(B g⁺)` and `‖B g‖²`, one read back to the host (residual norms and the dots
/// together), and one pass that stores the next step and forms the next iterate
/// ([`StepInverse::push_step`]). The full
/// step `Δz = −B g` gives `Δz − B Δg = −B g⁺`, so `u = −B g⁺ / (vᵀ Δg)` and
/// `B⁺ g⁺ = B g⁺ · (−vᵀ g / vᵀ Δg)`, one per-sample scaling of `B g⁺`: the next step, stored as
/// it is. The scalars need no product with `v`: `vᵀ g = Δzᵀ B g = −‖Δz‖²` and
/// `vᵀ g⁺ = Δz · (B g⁺)`. An update whose denominator is below `1e-12 ‖Δz‖²` in magnitude is
/// skipped (the step is stored without a factor). `Δz` itself is never formed: the step is
/// `z − B g`, and the dots take `B g` with the sign folded into the scalars.
///
/// Limited memory can make the iteration cycle or stall, and a poor secant update can send it
/// away from the root: a sample that has not improved for [`RESTART_PATIENCE`] iterations, or
/// whose residual has grown [`RESTART_GROWTH`]-fold over its lowest, restarts from its
/// lowest-residual iterate with `B = B₀` (its other samples are unaffected).
///
/// Returns the tracker and, per sample, the inverse that was current at the sample's
/// lowest-residual iterate (the one SHINE must use; see [`StepInverse::into_best`]).
pub(crate) fn broyden(
    map: &mut dyn BatchMap,
    z0: Tensor<2>,
    fz0: Tensor<2>,
    rule: StopRule,
    max_iter: usize,
    init: StepInverse,
) -> (Tracker, StepInverse) {
    let batch = z0.dims()[0];
    let mut tracker = Tracker::new(&z0, rule);
    let mut inverse = init;
    let (all, none) = (vec![true; batch], vec![false; batch]);

    let (mut z, mut fz) = (z0, fz0);
    // The first step, B g (= −Δz) with the initial estimate (B₀ when it holds no steps), in
    // one pass with g's norms, recorded as iteration 0 (the product is taken before non-finite
    // samples are moved back; they stop there). It starts every sample's chain of steps; `step`
    // is the next iterate z + Δz = z − B g.
    let (b_g, squares, _) = inverse.apply_to_residual(&z, &fz);
    tracker.record(0, &mut z, &mut fz, &squares, &[]);
    let mut step = inverse.push_step(b_g, &vec![1.0; batch], &z, &all, &none, &all);
    let mut last_restart = vec![0usize; batch];
    for iter in 1..=max_iter {
        if !tracker.any_active() {
            break;
        }
        let moving: Vec<bool> = tracker.active().to_vec();
        // z⁺ = z + Δz (frozen samples stay where they are: the tracker masks their step).
        tracker.step(map, step, &mut z, &mut fz);
        // B g⁺ with the current B, g⁺'s norms, and the dot products (B g)·(B g⁺) and
        // (B g)·(B g): `B g` is each moving sample's newest step. The rows of samples that just
        // went non-finite are NaN; they stay in their own rows and are never stored.
        let (bg_new, squares, dots) = inverse.apply_to_residual(&z, &fz);
        let obs = tracker.record(iter, &mut z, &mut fz, &squares, &[dots]);
        // Δz·(B g⁺) = −(B g)·(B g⁺); ‖Δz‖² = ‖B g‖².
        let (minus_v_g_new, dz_dz) = (&obs.extra[0], &obs.extra[1]);
        inverse.set_newest_norms(dz_dz, &moving);

        // Secant update for the samples that moved: B⁺ g⁺ = s_bg · B g⁺ is the next step.
        let mut s_bg = vec![1.0; batch];
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
                s_bg[b] = dz_dz[b] / denom;
            }
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
        // The samples that moved to a finite iterate and go on from it store their next step
        // and move on: z − B⁺ g⁺. A restarting sample's step would be forgotten at once.
        let pushed: Vec<bool> = (0..batch)
            .map(|b| moving[b] && !obs.non_finite[b] && !restart[b])
            .collect();
        step = inverse.push_step(bg_new, &s_bg, &z, &pushed, &write, &obs.improved);

        if restart.iter().any(|&r| r) {
            for (b, &r) in restart.iter().enumerate() {
                if r {
                    last_restart[b] = iter;
                }
            }
            inverse.reset(&restart);
            tracker.return_to_best(&restart, &mut z, &mut fz);
            let g = fz.clone() - z.clone();
            let restarted = inverse.push_step(
                inverse.apply_initial(g),
                &vec![1.0; batch],
                &z,
                &restart,
                &none,
                &none,
            );
            step = where_rows(step, &restart, restarted);
        }
    }
    (tracker, inverse.into_best())
}
