//! Batch normalisation with or without learned affine parameters.
use burn::config::Config;
use burn::module::{Module, RunningState};
use burn::nn::{BatchNorm, BatchNormConfig};
use burn::tensor::{Device, Tensor};

/// Configuration of a [`BatchNorm2d`].
#[derive(Config, Debug, PartialEq)]
pub struct BatchNorm2dConfig {
    /// Channels.
    pub channels: usize,
    /// Learn a scale and shift (`false`: fixed at 1 and 0).
    #[config(default = true)]
    pub affine: bool,
    /// Running-statistics momentum (the reference uses 0.1).
    #[config(default = 0.1)]
    pub momentum: f64,
}

/// Batch normalisation on `[batch, channels, H, W]`.
///
/// Burn's `BatchNorm` always has `gamma` and `beta`; the non-affine variant keeps them at 1
/// and 0 without gradients, under the field name `frozen_affine`, which
/// [`trainable_params`](crate::trainable_params) skips.
#[derive(Module, Debug)]
pub struct BatchNorm2d {
    /// Affine batch norm (learned scale and shift).
    pub norm: Option<BatchNorm>,
    /// Non-affine batch norm (scale 1, shift 0, never trained).
    pub frozen_affine: Option<BatchNorm>,
}

impl BatchNorm2dConfig {
    /// The module.
    pub fn init(&self, device: &Device) -> BatchNorm2d {
        let norm = BatchNormConfig::new(self.channels)
            .with_momentum(self.momentum)
            .init(device);
        if self.affine {
            BatchNorm2d {
                norm: Some(norm),
                frozen_affine: None,
            }
        } else {
            let norm = BatchNorm {
                gamma: norm.gamma.set_require_grad(false),
                beta: norm.beta.set_require_grad(false),
                ..norm
            };
            BatchNorm2d {
                norm: None,
                frozen_affine: Some(norm),
            }
        }
    }
}

impl BatchNorm2d {
    /// Normalises `x` (`[batch, channels, H, W]`): batch statistics in training, running
    /// statistics in evaluation.
    ///
    /// Training (the rule of Burn's `BatchNorm`: an autodiff device and the layer's training
    /// flag on) goes through [`deq_core::batch_norm_train`], one autodiff node with a fused
    /// backward, and updates the running statistics as Burn's `BatchNorm` does.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let norm = match (&self.norm, &self.frozen_affine) {
            (Some(norm), _) | (None, Some(norm)) => norm,
            (None, None) => return x,
        };
        let device = x.device();
        if !(device.is_autodiff() && norm.training.is_enabled()) {
            return norm.forward(x);
        }
        let (output, mean, variance) =
            deq_core::batch_norm_train(x, norm.gamma.val(), norm.beta.val(), norm.epsilon);
        let momentum = norm.momentum;
        let update = |state: &RunningState<Tensor<1>>, batch: Tensor<1>| {
            let running = state.value_sync().to_device(&device);
            let running = running
                .mul_scalar(1.0 - momentum)
                .add(batch.to_device(&device).mul_scalar(momentum));
            state.update(running.detach());
        };
        update(&norm.running_mean, mean);
        update(&norm.running_var, variance);
        output
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Distribution;

    fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
        t.into_data().iter::<f32>().collect()
    }

    fn rel_err(a: &[f32], b: &[f32]) -> f32 {
        let diff = a.iter().zip(b).map(|(x, y)| (x - y).powi(2)).sum::<f32>();
        (diff / b.iter().map(|y| y * y).sum::<f32>()).sqrt()
    }

    fn inner(layer: &BatchNorm2d) -> &BatchNorm {
        match (&layer.norm, &layer.frozen_affine) {
            (Some(norm), _) | (None, Some(norm)) => norm,
            (None, None) => unreachable!("the config builds one"),
        }
    }

    /// In training, the fused path has the output, the gradients (input, scale, shift) and the
    /// running statistics of Burn's `BatchNorm`, affine or not, over two steps; evaluation is
    /// Burn's with the running statistics.
    #[test]
    fn training_matches_burns_batch_norm() {
        let device = deq_core::device::cpu().autodiff();
        for affine in [true, false] {
            let config = BatchNorm2dConfig::new(5).with_affine(affine);
            let (ours, theirs) = (config.init(&device), config.init(&device));
            let x = Tensor::<4>::random([4, 5, 3, 6], Distribution::Normal(1.0, 2.0), &device);
            let weight = Tensor::<4>::random([4, 5, 3, 6], Distribution::Normal(0.0, 1.0), &device);
            for step in 1..=2 {
                let run = |fused: bool| {
                    let x = (x.clone() * step as f64).detach().require_grad();
                    let y = if fused {
                        ours.forward(x.clone())
                    } else {
                        inner(&theirs).forward(x.clone())
                    };
                    let value = values(y.clone());
                    let grads = (y * weight.clone()).sum().backward();
                    let norm = inner(if fused { &ours } else { &theirs });
                    let params = [&norm.gamma, &norm.beta].map(|p| p.grad(&grads).map(values));
                    (value, values(x.grad(&grads).unwrap()), params)
                };
                let (v1, x1, [g1, b1]) = run(true);
                let (v0, x0, [g0, b0]) = run(false);
                let case = format!("affine {affine}, step {step}");
                assert!(rel_err(&v1, &v0) < 1e-5, "{case}: value");
                assert!(rel_err(&x1, &x0) < 1e-4, "{case}: input gradient");
                assert_eq!(g1.is_some(), affine, "{case}: scale gradient present");
                assert_eq!(g0.is_some(), affine, "{case}");
                if let (Some(g1), Some(g0), Some(b1), Some(b0)) = (g1, g0, b1, b0) {
                    assert!(rel_err(&g1, &g0) < 1e-5, "{case}: scale gradient");
                    assert!(rel_err(&b1, &b0) < 1e-5, "{case}: shift gradient");
                }
                let (a, b) = (inner(&ours), inner(&theirs));
                for (ours, theirs) in [
                    (&a.running_mean, &b.running_mean),
                    (&a.running_var, &b.running_var),
                ] {
                    let (ours, theirs) = (values(ours.value_sync()), values(theirs.value_sync()));
                    assert!(ours.iter().any(|v| v.abs() > 1e-2), "{case}: updated");
                    assert!(rel_err(&ours, &theirs) < 1e-6, "{case}: running statistics");
                }
            }
            let plain = x.clone().without_autodiff();
            let eval = |layer: &BatchNorm2d| values(layer.valid().forward(plain.clone()));
            assert!(
                rel_err(&eval(&ours), &eval(&theirs)) < 1e-5,
                "affine {affine}: evaluation"
            );
        }
    }
}
