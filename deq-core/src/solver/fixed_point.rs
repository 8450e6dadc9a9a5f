//! Damped fixed-point iteration `z ← (1 − τ) z + τ F(z)`.
use burn::tensor::Tensor;

use super::StopRule;
use super::map::BatchMap;
use super::tracker::Tracker;

/// Runs at most `max_iter` damped fixed-point steps from `z0` (`[batch, dim]`).
pub(crate) fn fixed_point(
    map: &mut dyn BatchMap,
    z0: Tensor<2>,
    fz0: Tensor<2>,
    rule: StopRule,
    max_iter: usize,
    damping: f64,
) -> Tracker {
    let mut tracker = Tracker::new(&z0, rule);
    let (mut z, mut fz) = (z0, fz0);
    tracker.start(&mut z, &mut fz);
    for iter in 1..=max_iter {
        if !tracker.any_active() {
            break;
        }
        let step = if damping == 1.0 {
            fz.clone()
        } else {
            z.clone() * (1.0 - damping) + fz.clone() * damping
        };
        tracker.advance(iter, map, step, &mut z, &mut fz);
    }
    tracker
}
