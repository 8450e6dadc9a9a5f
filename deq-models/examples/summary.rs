//! Prints an MDEQ's module tree, its trainable parameters per part, and the statistics of a
//! forward Broyden solve on one random batch.
//!
//! ```text
//! cargo run --release -p deq-models --example summary -- --config tiny
//! ```
use burn::tensor::{Distribution, Tensor};
use clap::Parser;
use deq_core::{BackwardMode, DeqConfig, SolverConfig, SolverKind};
use deq_models::{MdeqConfig, MdeqMode, trainable_params};

/// Summary of an MDEQ configuration.
#[derive(Parser)]
struct Args {
    /// Preset: tiny, large or small.
    #[arg(long, default_value = "tiny")]
    config: String,
    /// Batch size of the random input.
    #[arg(long, default_value_t = 4)]
    batch: usize,
    /// Forward Broyden iterations.
    #[arg(long, default_value_t = 30)]
    iterations: usize,
    /// Do not print the module tree.
    #[arg(long)]
    no_tree: bool,
    /// Solve in training mode (batch statistics in the batch norms, dropout on) instead of
    /// evaluation mode.
    #[arg(long)]
    train_mode: bool,
    /// Seed of the weights and the batch.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let config = MdeqConfig::preset(&args.config)?;
    let cpu = deq_core::device::cpu();
    // Training mode is the autodiff device: batch norms use batch statistics, dropout is on.
    let device = if args.train_mode { cpu.autodiff() } else { cpu };
    device.seed(args.seed);
    let model = config.init(&device)?;
    if !args.no_tree {
        println!("{model}");
    }
    println!(
        "config `{}`: {} branches {:?}, head {:?}, final {}",
        args.config,
        config.branches(),
        config.channels,
        config.head_channels,
        config.final_channels
    );
    println!(
        "trainable parameters: stem {}, f {}, head {}, total {}",
        trainable_params(&model.stem),
        trainable_params(&model.core),
        trainable_params(&model.head),
        trainable_params(&model)
    );

    let size = if config.input_channels == 1 { 28 } else { 32 };
    let x = Tensor::<4>::random(
        [args.batch, config.input_channels, size, size],
        Distribution::Normal(0.0, 1.0),
        &device,
    );
    let deq = DeqConfig::new(
        SolverConfig::new(SolverKind::broyden(args.iterations)).with_max_iter(args.iterations),
    )
    .with_backward(BackwardMode::shine())
    .init()?;
    let started = std::time::Instant::now();
    let out = model.forward(x, MdeqMode::Equilibrium(&deq))?;
    let seconds = started.elapsed().as_secs_f64();
    let stats = out.deq.expect("equilibrium mode").stats;
    println!(
        "forward Broyden solve, batch {} of {}×{}×{} random N(0, 1) input ({seconds:.2} s, {} mode):",
        args.batch,
        config.input_channels,
        size,
        size,
        if args.train_mode {
            "training"
        } else {
            "evaluation"
        }
    );
    for (i, s) in stats.samples.iter().enumerate() {
        println!(
            "  sample {i}: {:?} after {} iterations, relative residual {:.3e} (best at iteration {})",
            s.status, s.iterations, s.rel_residual, s.best_iteration
        );
    }
    Ok(())
}
