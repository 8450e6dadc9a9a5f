//! Training with a Burn module as f (f32, default device): gradients reach the injection,
//! f and the head through one `loss.backward()`; the loss falls; memory stays flat.
use burn::module::Module;
use burn::nn::{Linear, LinearConfig};
use burn::optim::{AdamConfig, GradientsParams};
use burn::tensor::{Device, Distribution, Tensor};
use deq_core::{BackwardMode, Deq, DeqConfig, SolverConfig, SolverKind, module_fn};

#[derive(Module, Debug)]
struct SmallDeq {
    injection: Linear,
    inner: Linear,
    head: Linear,
}

impl SmallDeq {
    fn new(input: usize, dim: usize, classes: usize, device: &Device) -> Self {
        let inner = LinearConfig::new(dim, dim).with_bias(false).init(device);
        // Keep f contractive at initialisation: ‖W‖ ≲ 0.5.
        let inner = Linear {
            weight: inner.weight.map(|w| (w * 0.3).detach().require_grad()),
            bias: None,
        };
        Self {
            injection: LinearConfig::new(input, dim).init(device),
            inner,
            head: LinearConfig::new(dim, classes).init(device),
        }
    }

    fn forward(&self, deq: &Deq, x: Tensor<2>) -> (Tensor<2>, deq_core::DeqOutput) {
        let injected = self.injection.forward(x);
        let f = module_fn(
            self.inner.clone(),
            |inner: &Linear, z: Tensor<2>, x: &Tensor<2>| (inner.forward(z) + x.clone()).tanh(),
        );
        let [batch, dim] = injected.dims();
        let z0 = Tensor::zeros([batch, dim], &injected.device());
        let out = deq.forward(&f, &injected, z0).expect("forward");
        (self.head.forward(out.z.clone()), out)
    }
}

fn deq(mode: BackwardMode) -> Deq {
    DeqConfig::new(
        SolverConfig::new(SolverKind::broyden(20))
            .with_max_iter(20)
            .with_tol(1e-4),
    )
    .with_backward(mode)
    .init()
    .unwrap()
}

fn all_modes() -> Vec<BackwardMode> {
    vec![
        BackwardMode::Implicit {
            solver: SolverKind::broyden(20),
            max_iter: 20,
            tol: 1e-5,
        },
        BackwardMode::Implicit {
            solver: SolverKind::anderson(5),
            max_iter: 20,
            tol: 1e-5,
        },
        BackwardMode::Implicit {
            solver: SolverKind::fixed_point(),
            max_iter: 20,
            tol: 1e-5,
        },
        BackwardMode::shine(),
        BackwardMode::Shine {
            fallback: Some(1.8),
            refine: 2,
        },
        BackwardMode::jacobian_free(),
        BackwardMode::JacobianFree { refine: 2 },
        BackwardMode::Phantom { k: 3, tau: 0.7 },
        BackwardMode::Unrolled,
    ]
}

/// A regression target produced by a fixed random teacher.
fn batch(device: &Device, step: usize) -> (Tensor<2>, Tensor<2>) {
    device.seed(1000 + step as u64);
    let x = Tensor::<2>::random([16, 8], Distribution::Normal(0.0, 1.0), device);
    let y = (x.clone().narrow(1, 0, 4) * 0.5).tanh();
    (x, y)
}

/// Every backward mode gives gradients to the injection, f and the head, and 60 Adam steps
/// reduce the loss.
#[test]
fn every_mode_trains_every_part() {
    let device = deq_core::device::cpu().autodiff();
    for mode in all_modes() {
        device.seed(3);
        let mut model = SmallDeq::new(8, 24, 4, &device);
        let deq = deq(mode.clone());
        let mut optim = AdamConfig::new().init();
        let mut losses = Vec::new();
        for step in 0..60 {
            let (x, y) = batch(&device, step % 4);
            let (pred, _) = model.forward(&deq, x);
            let loss = (pred - y).powi_scalar(2).mean();
            losses.push(loss.clone().into_scalar::<f64>());
            let grads = loss.backward();
            if step == 0 {
                for (name, g) in [
                    ("injection", model.injection.weight.val().grad(&grads)),
                    ("inner", model.inner.weight.val().grad(&grads)),
                    ("head", model.head.weight.val().grad(&grads)),
                ] {
                    let g = g.unwrap_or_else(|| panic!("{}: no gradient for {name}", mode.name()));
                    let norm = g.powi_scalar(2).sum().into_scalar::<f64>().sqrt();
                    assert!(
                        norm > 0.0 && norm.is_finite(),
                        "{}: {name} gradient norm {norm}",
                        mode.name()
                    );
                }
            }
            let grads = GradientsParams::from_grads(grads, &model);
            model = optim.step(3e-3, model, grads);
        }
        let first: f64 = losses[..4].iter().sum::<f64>() / 4.0;
        let last: f64 = losses[losses.len() - 4..].iter().sum::<f64>() / 4.0;
        println!("{:?}: loss {first:.4} -> {last:.4}", mode);
        assert!(last < 0.7 * first, "{:?}: loss {first} -> {last}", mode);
    }
}

/// Resident memory of this process in bytes.
fn rss() -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("/proc/self/statm");
    let pages: usize = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}

/// Must-show 5: no graph leak. Resident memory stays flat over 500 training steps with the
/// Implicit and with the SHINE backward (batch 32, state 256: a leaked step would keep
/// ≥ 2 MB of Broyden factors alive).
#[test]
fn memory_stays_flat_over_500_steps() {
    let device = deq_core::device::cpu().autodiff();
    for mode in [
        BackwardMode::Implicit {
            solver: SolverKind::broyden(20),
            max_iter: 20,
            tol: 1e-5,
        },
        BackwardMode::shine(),
    ] {
        device.seed(5);
        let mut model = SmallDeq::new(8, 256, 4, &device);
        let deq = deq(mode.clone());
        let mut optim = AdamConfig::new().init();
        let mut samples = Vec::new();
        for step in 0..500 {
            device.seed(step as u64);
            let x = Tensor::<2>::random([32, 8], Distribution::Normal(0.0, 1.0), &device);
            let y = (x.clone().narrow(1, 0, 4) * 0.5).tanh();
            let (pred, out) = model.forward(&deq, x);
            let loss = (pred - y).powi_scalar(2).mean();
            let grads = loss.backward();
            assert!(
                out.backward.get().is_some(),
                "the backward ran through the layer"
            );
            let grads = GradientsParams::from_grads(grads, &model);
            model = optim.step(1e-3, model, grads);
            if step % 50 == 49 {
                samples.push(rss());
            }
        }
        let mb = |b: usize| b as f64 / 1e6;
        println!(
            "{}: RSS every 50 steps (MB): {:?}",
            mode.name(),
            samples
                .iter()
                .map(|&b| (mb(b) * 10.0).round() / 10.0)
                .collect::<Vec<_>>()
        );
        // After warm-up (step 100), growth over the remaining 400 steps stays under 24 MB; a
        // leaked graph per step would add ≥ 800 MB.
        let growth = samples.last().unwrap().saturating_sub(samples[1]);
        assert!(
            mb(growth) < 24.0,
            "{}: RSS grew by {:.1} MB",
            mode.name(),
            mb(growth)
        );
    }
}
