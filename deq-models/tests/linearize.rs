//! The MDEQ's hand-written reverse pass (`DeqFunction::linearize`) against Burn's autodiff, in
//! f64 (its own test process: the CPU device is configured for f64 here).
use burn::tensor::{Device, Distribution, FloatDType, Tensor};
use deq_core::DeqFunction;
use deq_models::MdeqConfig;

/// `J_fᵀ w` through a tracked evaluation of `f` (what the layer does without a linearisation).
fn autodiff_vjp<F: DeqFunction>(f: &F, x: &F::Input, z: &Tensor<2>, w: &Tensor<2>) -> Tensor<2> {
    let leaf = z.clone().autodiff().require_grad();
    let y = f.forward(leaf.clone(), x);
    let grads = (y * w.clone().autodiff()).sum().backward();
    leaf.grad(&grads).unwrap().without_autodiff()
}

fn rel_err(a: Tensor<2>, b: Tensor<2>) -> f64 {
    let diff = (a - b.clone()).square().sum().into_scalar::<f64>().sqrt();
    diff / b.square().sum().into_scalar::<f64>().sqrt()
}

/// For the `small` and `tiny` presets and a three-branch model (upsampling by 2 and 4, a
/// two-step downsampling chain, the injection transform), in training mode (dropout masks
/// drawn) and in evaluation: the linearisation's products equal autodiff's to 1e-11.
#[test]
fn linearize_matches_autodiff() {
    let mut device = deq_core::device::cpu();
    device.configure(FloatDType::F64).expect("a fresh device");
    let three = MdeqConfig::new(3, vec![4, 8, 8], vec![4, 8, 8], 16, 10).with_groups(2);
    for (name, config, size) in [
        ("small", MdeqConfig::small(), 28),
        ("tiny", MdeqConfig::tiny(), 16),
        ("three branches", three, 16),
    ] {
        for training in [true, false] {
            let model_device: Device = if training {
                device.clone().autodiff()
            } else {
                device.clone()
            };
            let model = config.init(&model_device).unwrap();
            let x = Tensor::<4>::random(
                [3, config.input_channels, size, size],
                Distribution::Normal(0.0, 1.0),
                &model_device,
            );
            let (core, injection) = model.prepare(x).unwrap();
            assert_eq!(core.blocks()[0].mask().is_some(), training);
            let (f, injection) = (
                core.without_autodiff(),
                injection.detach().without_autodiff(),
            );
            let dim = f.state_shape().dim();
            let random = || Tensor::<2>::random([3, dim], Distribution::Normal(0.0, 1.0), &device);
            let z = random();
            let linear = f
                .linearize(&z, &injection)
                .expect("the MDEQ has a linearisation");
            for _ in 0..2 {
                let w = random();
                let exact = autodiff_vjp(&f, &injection, &z, &w);
                let err = rel_err(linear.vjp(w), exact);
                println!("{name}, training {training}: relative error {err:.2e}");
                assert!(err <= 1e-11, "{name}, training {training}: {err:e}");
            }
        }
    }
}
