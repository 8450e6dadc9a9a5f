//! `deq-train`: the command-line front end. Subcommands: `toy` trains the dense DEQ classifier
//! of `deq-models` on synthetic data with any backward mode; `hpo` runs the bi-level
//! hyperparameter optimisation experiment (HOAG, SHINE, OPA, … on logistic regression).
mod hpo;
mod plot;

use std::time::Instant;

use anyhow::Context;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::{AdamConfig, GradientsParams};
use burn::tensor::{Device, Distribution, Int, Tensor};
use clap::{Parser, Subcommand};
use deq_core::{BackwardMode, DeqConfig, SolverConfig, SolverKind};
use deq_models::DenseDeqConfig;

#[derive(Parser)]
#[command(
    version,
    about = "Train deep equilibrium models with implicit or SHINE gradients"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Train the dense DEQ classifier on a synthetic task (labels from a fixed random teacher).
    Toy {
        /// Backward mode, e.g. `shine`, `shine:fallback=1.8`, `shine:refine=5`, `implicit`,
        /// `jfb`, `phantom:k=5,tau=0.5`, `unrolled`.
        #[arg(long, default_value = "shine")]
        backward: BackwardMode,
        /// Optimiser steps.
        #[arg(long, default_value_t = 300)]
        steps: usize,
        /// Batch size.
        #[arg(long, default_value_t = 64)]
        batch: usize,
        /// Width of the equilibrium state.
        #[arg(long, default_value_t = 64)]
        hidden: usize,
        /// Forward Broyden iteration budget.
        #[arg(long, default_value_t = 20)]
        forward_iters: usize,
        /// Adam learning rate.
        #[arg(long, default_value_t = 3e-3)]
        lr: f64,
        /// Random seed.
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
    /// Hyperparameter optimisation of an ℓ2-regularised logistic regression (SHINE's first
    /// experiment): writes trace.csv and summary.json into --out.
    Hpo {
        /// `breast-cancer`, `synthetic[:ROWSxCOLS]` (default real-sim shape 72309x20958),
        /// `fortunes[:DIR]` or `libsvm:PATH`.
        #[arg(long, default_value = "breast-cancer")]
        dataset: String,
        /// Comma-separated methods: hoag, shine, shine-refine, jfb, opa, cg<k>, grid, random.
        #[arg(
            long,
            value_delimiter = ',',
            default_value = "hoag,shine,shine-refine,jfb,opa,grid,random"
        )]
        methods: Vec<String>,
        /// Number of seeds (random 90/5/5 splits).
        #[arg(long, default_value_t = 10)]
        seeds: usize,
        /// Outer iterations (points for grid and random search).
        #[arg(long, default_value_t = 30)]
        outer_iters: usize,
        /// Output folder.
        #[arg(long, default_value = "hpo-out")]
        out: std::path::PathBuf,
    },
}

const INPUT: usize = 16;
const CLASSES: usize = 4;

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Toy {
            backward,
            steps,
            batch,
            hidden,
            forward_iters,
            lr,
            seed,
        } => {
            anyhow::ensure!(
                steps > 0 && batch > 0 && hidden > 0,
                "--steps, --batch and --hidden must be at least 1"
            );
            toy(backward, steps, batch, hidden, forward_iters, lr, seed)
        }
        Command::Hpo {
            dataset,
            methods,
            seeds,
            outer_iters,
            out,
        } => hpo::run(&hpo::HpoArgs {
            dataset,
            methods,
            seeds,
            out,
            outer_iters,
        }),
    }
}

fn toy(
    backward: BackwardMode,
    steps: usize,
    batch: usize,
    hidden: usize,
    forward_iters: usize,
    lr: f64,
    seed: u64,
) -> anyhow::Result<()> {
    let device = Device::default().autodiff();
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
