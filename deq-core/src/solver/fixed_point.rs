//! Damped fixed-point iteration `z ← (1 − τ) z + τ F(z)`.
use burn::tensor::Tensor;

use super::StopRule;
use super::tracker::Tracker;

/// Runs at most `max_iter` damped fixed-point steps from `z0` (`[batch, dim]`).
pub(crate) fn fixed_point(
    map: &mut dyn FnMut(Tensor<2>) -> Tensor<2>,
    z0: Tensor<2>,
    fz0: Tensor<2>,
    rule: StopRule,
    max_iter: usize,
    damping: f64,
) -> Tracker {
    let mut tracker = Tracker::new(&z0, rule);
    let mut z = z0;
    let mut fz = fz0;
    let obs = tracker.observe(0, &z, &fz);
    reset_non_finite(&mut z, &mut fz, &tracker, &obs.non_finite);
    for iter in 1..=max_iter {
        if !tracker.any_active() {
            break;
        }
        let step = if damping == 1.0 {
            fz.clone()
        } else {
            z.clone() * (1.0 - damping) + fz.clone() * damping
        };
        let frozen = tracker.frozen_mask(&z);
        let z_new = step.mask_where(frozen, z.clone());
        fz = map(z_new.clone());
        z = z_new;
        let obs = tracker.observe(iter, &z, &fz);
        reset_non_finite(&mut z, &mut fz, &tracker, &obs.non_finite);
    }
    tracker
}

/// Moves samples that just went non-finite back to their best iterate so that no NaN is carried
/// (a frozen sample's row never changes again).
pub(crate) fn reset_non_finite(z: &mut Tensor<2>, fz: &mut Tensor<2>, tracker: &Tracker, non_finite: &[bool]) {
    if non_finite.iter().any(|&n| n) {
        let mask = super::tracker::row_mask(non_finite, z);
        *z = z.clone().mask_where(mask.clone(), tracker.best().clone());
        *fz = fz.clone().mask_where(mask, tracker.best().clone());
    }
}
