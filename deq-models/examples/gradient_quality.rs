//! Gradient quality of every backward mode on an MDEQ after a short unrolled pretraining.
//!
//! Pretrains the model for `--pretrain-steps` Adam steps in unrolled mode (10 applications of
//! f) on synthetic data (N(0, 1) images, labels from a fixed random linear teacher), reports
//! the forward Broyden convergence along the way, then compares the gradient of the whole
//! network under each backward mode with the exact implicit gradient on one batch. Finally it
//! times SHINE training steps.
//!
//! ```text
//! cargo run --release -p deq-models --example gradient_quality -- --config small --pretrain-steps 50
//! ```
use burn::module::Module;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::{AdamConfig, GradientsParams};
use burn::tensor::{Distribution, Int, Tensor};
use clap::Parser;
use deq_core::{BackwardMode, DeqConfig, DeqFunction, SolverConfig, SolverKind};
use deq_models::{Mdeq, MdeqConfig, MdeqMode};

/// Gradient quality of the backward modes on a briefly pretrained MDEQ.
#[derive(Parser)]
struct Args {
    /// Preset: tiny, large or small.
    #[arg(long, default_value = "small")]
    config: String,
    /// Unrolled pretraining steps (batch 32).
    #[arg(long, default_value_t = 50)]
    pretrain_steps: usize,
    /// Batch size of the gradient comparison.
    #[arg(long, default_value_t = 8)]
    batch: usize,
    /// Forward Broyden budget of the comparison.
    #[arg(long, default_value_t = 60)]
    forward_iters: usize,
    /// Random seed.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let config = MdeqConfig::preset(&args.config)?;
    let size = if config.input_channels == 1 { 28 } else { 32 };
    let pixels = config.input_channels * size * size;
    let device = deq_core::device::cpu().autodiff();
    let plain = device.clone().inner();
    device.seed(args.seed);
    let mut model = config.init(&device)?;
    let teacher = Tensor::<2>::random(
        [pixels, config.classes],
        Distribution::Normal(0.0, 1.0),
        &plain,
    );
    let batch = |n: usize| {
        let x = Tensor::<4>::random(
            [n, config.input_channels, size, size],
            Distribution::Normal(0.0, 1.0),
            &plain,
        );
        let labels: Tensor<1, Int> = x
            .clone()
            .reshape([n, pixels])
            .matmul(teacher.clone())
            .argmax(1)
            .reshape([n]);
        (x.autodiff(), labels.autodiff())
    };
    let loss_fn = CrossEntropyLossConfig::new().init(&device);
    let mut optim = AdamConfig::new().init();
    report_convergence(&model, &config, size, 0)?;
    for step in 1..=args.pretrain_steps {
        let (x, labels) = batch(32);
        let out = model.forward(
            x,
            MdeqMode::Unrolled {
                layers: model.pretrain_layers(),
            },
        )?;
        let grads =
            GradientsParams::from_grads(loss_fn.forward(out.logits, labels).backward(), &model);
        model = optim.step(1e-3, model, grads);
        if step % 25 == 0 || step == args.pretrain_steps {
            report_convergence(&model, &config, size, step)?;
        }
    }

    let (x, labels) = batch(args.batch);
    let modes = [
        "implicit:max_iter=60,tol=1e-8",
        "shine",
        "shine:fallback=1.8",
        "shine:refine=1",
        "shine:refine=5",
        "jfb",
        "jfb:refine=5",
        "phantom:k=5,tau=0.5",
    ];
    let mut gradients = Vec::new();
    println!(
        "gradient of the whole network, batch {}, forward Broyden {} iterations:",
        args.batch, args.forward_iters
    );
    for text in modes {
        let mode: BackwardMode = text.parse()?;
        device.seed(args.seed + 1000); // the same dropout masks for every mode
        let deq = DeqConfig::new(
            SolverConfig::new(SolverKind::broyden(args.forward_iters))
                .with_max_iter(args.forward_iters)
                .with_tol(1e-4),
        )
        .with_backward(mode)
        .init()?;
        let out = model.forward(x.clone(), MdeqMode::Equilibrium(&deq))?;
        let layer = out.deq.clone().expect("equilibrium mode");
        let grads = GradientsParams::from_grads(
            loss_fn.forward(out.logits, labels.clone()).backward(),
            &model,
        );
        let flat = deq_models::gradient_values(&model, &grads);
        let backward = layer.backward.get();
        gradients.push(flat);
        println!(
            "  {text:<32} forward max relative residual {:.1e}; fallbacks {}; adjoint residual {}",
            layer.stats.max_rel_residual(),
            backward.as_ref().map_or(0, |b| b.fallback_count()),
            backward
                .and_then(|b| b.adjoint)
                .map_or("-".to_string(), |a| format!("{:.1e}", a.max_rel_residual())),
        );
    }
    println!("cosine and norm ratio against {}:", modes[0]);
    for (text, g) in modes.iter().zip(&gradients).skip(1) {
        println!(
            "  {text:<32} cosine {:.4}  norm ratio {:.3}",
            cosine(g, &gradients[0]),
            norm(g) / norm(&gradients[0])
        );
    }

    let deq = DeqConfig::new(SolverConfig::new(SolverKind::broyden(22)).with_max_iter(22))
        .with_backward(BackwardMode::shine())
        .init()?;
    let mut times = Vec::new();
    for _ in 0..5 {
        let (x, labels) = batch(32);
        let started = std::time::Instant::now();
        let out = model.forward(x, MdeqMode::Equilibrium(&deq))?;
        let grads =
            GradientsParams::from_grads(loss_fn.forward(out.logits, labels).backward(), &model);
        model = optim.step(1e-3, model, grads);
        times.push(started.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    println!(
        "SHINE training step (batch 32, 22 Broyden iterations): median of 5 {:.3} s",
        times[2]
    );
    Ok(())
}

/// Forward Broyden solve (30 iterations, relative 1e-3) of the evaluation model on 4 inputs.
fn report_convergence(
    model: &Mdeq,
    config: &MdeqConfig,
    size: usize,
    step: usize,
) -> anyhow::Result<()> {
    let eval = model.valid();
    let device = deq_core::device::cpu();
    let x = Tensor::<4>::random(
        [4, config.input_channels, size, size],
        Distribution::Normal(0.0, 1.0),
        &device,
    );
    let (core, injection) = eval.prepare(x)?;
    let solver = SolverConfig::new(SolverKind::broyden(30))
        .with_max_iter(30)
        .with_tol(1e-3);
    let mut map = |z: Tensor<2>| core.forward(z, &injection);
    let result = solver.solve(
        &mut map,
        Tensor::zeros([4, core.state_shape().dim()], &device),
        30,
    )?;
    println!(
        "after {step:>4} pretraining steps: Broyden iterations {:?}, max relative residual {:.2e}",
        result
            .stats
            .samples
            .iter()
            .map(|s| s.iterations)
            .collect::<Vec<_>>(),
        result.stats.max_rel_residual()
    );
    Ok(())
}

fn norm(a: &[f64]) -> f64 {
    a.iter().map(|x| x * x).sum::<f64>().sqrt()
}

fn cosine(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum::<f64>() / (norm(a) * norm(b))
}
