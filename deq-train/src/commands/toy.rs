//! `deq-train toy`: the dense DEQ classifier on a synthetic task.
use std::time::Instant;

use anyhow::Context;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::{AdamConfig, GradientsParams};
use burn::tensor::{Distribution, Int, Tensor};
use deq_core::{BackwardMode, DeqConfig, SolverConfig, SolverKind};
use deq_models::DenseDeqConfig;

const INPUT: usize = 16;
const CLASSES: usize = 4;

/// Trains the dense DEQ on labels from a fixed random linear teacher and prints progress.
pub fn toy(
    backward: BackwardMode,
    steps: usize,
    batch: usize,
    hidden: usize,
    forward_iters: usize,
    lr: f64,
    seed: u64,
) -> anyhow::Result<()> {
    let device = deq_core::device::cpu().autodiff();
    device.seed(seed);
    let teacher = Tensor::<2>::random(
        [INPUT, CLASSES],
        Distribution::Normal(0.0, 1.0),
        &device.clone().inner(),
    );
    let mut model = DenseDeqConfig::new(INPUT, hidden, CLASSES).init(&device);
    let deq = DeqConfig::new(
        SolverConfig::new(SolverKind::broyden(forward_iters)).with_max_iter(forward_iters),
    )
    .with_backward(backward.clone())
    .init()
    .context("invalid DEQ settings")?;
    let mut optim = AdamConfig::new().init();
    let loss_fn = CrossEntropyLossConfig::new().init(&device);
    println!(
        "training the dense DEQ ({hidden} units) with backward `{backward}` for {steps} steps of batch {batch}"
    );
    let report_every = (steps / 10).max(1);
    let (mut loss_sum, mut correct, mut seen, mut backward_s, mut iters) =
        (0.0, 0usize, 0usize, 0.0, 0.0);
    for step in 1..=steps {
        let x = Tensor::<2>::random(
            [batch, INPUT],
            Distribution::Normal(0.0, 1.0),
            &device.clone().inner(),
        );
        let labels: Tensor<1, Int> = x.clone().matmul(teacher.clone()).argmax(1).reshape([batch]);
        let out = model.forward(&deq, x.autodiff())?;
        let loss = loss_fn.forward(out.logits.clone(), labels.clone().autodiff());
        let predicted: Tensor<1, Int> = out.logits.clone().inner().argmax(1).reshape([batch]);
        correct += predicted.equal(labels).int().sum().into_scalar::<i64>() as usize;
        seen += batch;
        loss_sum += loss.clone().into_scalar::<f64>();
        iters += out.deq.stats.mean_iterations();
        let started = Instant::now();
        let grads = loss.backward();
        backward_s += started.elapsed().as_secs_f64();
        let grads = GradientsParams::from_grads(grads, &model);
        model = optim.step(lr, model, grads);
        if step % report_every == 0 || step == steps {
            let n = report_every.min(step) as f64;
            println!(
                "step {step:>5}  loss {:.4}  accuracy {:5.1}%  forward iterations {:.1}  backward {:.2} ms",
                loss_sum / n,
                100.0 * correct as f64 / seen as f64,
                iters / n,
                1e3 * backward_s / n
            );
            (loss_sum, correct, seen, backward_s, iters) = (0.0, 0, 0, 0.0, 0.0);
        }
    }
    Ok(())
}
