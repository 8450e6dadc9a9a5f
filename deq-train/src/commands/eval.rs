//! `deq-train eval`: accuracy and solver statistics of a checkpoint.
use std::path::PathBuf;

use clap::{Args, ValueEnum};
use deq_train::data::{Augment, ImageBatcher};
use deq_train::train::{evaluate, load_model, load_run_data, read_state, resolve_checkpoint};

/// The split to evaluate.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Split {
    /// The test split.
    Test,
    /// The training split.
    Train,
}

/// Options of `eval`.
#[derive(Args, Debug)]
pub struct EvalArgs {
    /// A run folder (its newest checkpoint) or a checkpoint folder (`RUN/checkpoints/step-N`).
    pub checkpoint: PathBuf,
    /// Which split.
    #[arg(long, value_enum, default_value = "test")]
    pub split: Split,
    /// Data location, if not where the run read it.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Forward iteration budget (default: the run's evaluation budget).
    #[arg(long)]
    pub eval_iters: Option<usize>,
    /// Evaluate only N images (the fixed random sample `train` uses for its limits).
    #[arg(long)]
    pub limit: Option<usize>,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Runs `eval`.
pub fn eval(args: &EvalArgs) -> anyhow::Result<()> {
    let dir = resolve_checkpoint(&args.checkpoint)?;
    let state = read_state(&dir)?;
    let mut config = state.config.clone();
    if args.data_dir.is_some() {
        config.data_dir = args.data_dir.clone();
    }
    if let Some(iters) = args.eval_iters {
        config.eval_iters = iters;
    }
    match (args.split, args.limit) {
        (Split::Test, Some(n)) => config.test_limit = n,
        (Split::Train, Some(n)) => config.train_limit = n,
        _ => {}
    }
    config.validate()?;
    let data = load_run_data(&config)?;
    let set = match args.split {
        Split::Test => &data.test,
        Split::Train => &data.train,
    };
    let device = deq_train::backend::device(&config.backend).map_err(anyhow::Error::msg)?;
    let model = load_model(&dir, config.model_config()?.init(&device)?)?;
    let deq = config.deq_config()?.init()?;
    let batcher = ImageBatcher::new(set.shape(), &state.mean, &state.std, Augment::NONE);
    let result = evaluate(&model, &deq, set, &batcher, config.eval_batch_size, &device)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&result)?);
    } else {
        println!(
            "{} ({:?} split, {} images, step {}):\n  accuracy {:.2}%  loss {:.4}\n  forward iterations mean {:.1} max {}  converged {:.1}%  relative residual median {:.2e} max {:.2e}",
            dir.display(),
            args.split,
            result.images,
            state.step,
            100.0 * result.accuracy,
            result.loss,
            result.mean_iterations,
            result.max_iterations,
            100.0 * result.converged_fraction,
            result.median_residual,
            result.max_residual
        );
    }
    Ok(())
}
