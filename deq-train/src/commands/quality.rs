//! `deq-train quality`: gradient quality of each backward mode on a trained checkpoint.
use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use deq_train::data::{Augment, ImageBatcher};
use deq_train::fsio::write_atomic;
use deq_train::quality::{QualityConfig, gradient_quality};
use deq_train::train::{load_model, load_run_data, read_state, resolve_checkpoint};

/// Options of `quality`.
#[derive(Args, Debug)]
pub struct QualityArgs {
    /// A run folder (its newest checkpoint) or a checkpoint folder (`RUN/checkpoints/step-N`).
    pub checkpoint: PathBuf,
    /// Test batches to compare on.
    #[arg(long, default_value_t = 20)]
    pub batches: usize,
    /// Images per batch.
    #[arg(long, default_value_t = 32)]
    pub batch_size: usize,
    /// Forward Broyden budget of every mode.
    #[arg(long, default_value_t = 40)]
    pub forward_iters: usize,
    /// Forward Broyden memory of every mode (rank-one factors kept; default: the budget, so
    /// that none is dropped). SHINE reuses a matrix of at most this many factors.
    #[arg(long)]
    pub memory: Option<usize>,
    /// How Broyden stores its steps in every mode: `full`, or `half` (`f16`).
    #[arg(long, default_value = "full")]
    pub steps: deq_core::StepPrecision,
    /// Forward relative-residual tolerance.
    #[arg(long, default_value_t = 1e-5)]
    pub tol: f64,
    /// The reference gradient's backward mode.
    #[arg(long, default_value = "implicit:max_iter=100,tol=1e-8")]
    pub reference: String,
    /// Modes to compare (repeat the option; default: SHINE, with fallback, refined 1, 2, 5;
    /// JFB, refined 2; phantom).
    #[arg(long = "mode")]
    pub modes: Vec<String>,
    /// Data location, if not where the run read it.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Seed of the batch order.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Also write the report (per batch and per mode) as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// Runs `quality`.
pub fn quality(args: &QualityArgs) -> anyhow::Result<()> {
    let dir = resolve_checkpoint(&args.checkpoint)?;
    let state = read_state(&dir)?;
    let mut config = state.config.clone();
    if args.data_dir.is_some() {
        config.data_dir = args.data_dir.clone();
    }
    config.validate()?;
    let defaults = QualityConfig::default();
    let settings = QualityConfig {
        batches: args.batches,
        batch_size: args.batch_size,
        forward_iters: args.forward_iters,
        memory: args.memory,
        steps: args.steps,
        tol: args.tol,
        reference: args.reference.clone(),
        modes: if args.modes.is_empty() {
            defaults.modes
        } else {
            args.modes.clone()
        },
        seed: args.seed,
    };
    anyhow::ensure!(
        settings.batches > 0 && settings.batch_size > 0 && settings.forward_iters > 0,
        "--batches, --batch-size and --forward-iters must be at least 1"
    );
    let data = load_run_data(&config)?;
    let device = deq_train::backend::device(&config.backend)
        .map_err(anyhow::Error::msg)?
        .autodiff();
    let model = load_model(&dir, config.model_config()?.init(&device)?)?;
    let batcher = ImageBatcher::new(data.test.shape(), &state.mean, &state.std, Augment::NONE);
    println!(
        "{} (step {}): {} test batches of {}, forward Broyden {} iterations, memory {} (tol {:.0e}); reference {}",
        dir.display(),
        state.step,
        settings.batches,
        settings.batch_size,
        settings.forward_iters,
        settings.memory.unwrap_or(settings.forward_iters),
        settings.tol,
        settings.reference
    );
    let report = gradient_quality(&model, &data.test, &batcher, &device, &settings, &mut |b| {
        let cosines: Vec<String> = b.cosine.iter().map(|c| format!("{c:.3}")).collect();
        println!(
            "batch {:>3}: forward converged {}/{} (max residual {:.1e}), adjoint residual {}; cosine {}",
            b.batch,
            b.forward_converged,
            b.samples,
            b.forward_max_residual,
            b.reference_adjoint_residual
                .map_or("-".into(), |r| format!("{r:.1e}")),
            cosines.join(" ")
        );
    })?;
    println!("| backward | cosine median | mean | min | norm ratio median | fallbacks |");
    println!("|---|---|---|---|---|---|");
    for m in &report.modes {
        println!(
            "| `{}` | {:.3} | {:.3} | {:.3} | {:.3} | {} |",
            m.mode, m.cosine_median, m.cosine_mean, m.cosine_min, m.norm_ratio_median, m.fallbacks
        );
    }
    if let Some(path) = &args.json {
        write_atomic(path, &serde_json::to_vec_pretty(&report)?)
            .with_context(|| format!("writing {}", path.display()))?;
        println!("wrote {}", path.display());
    }
    Ok(())
}
