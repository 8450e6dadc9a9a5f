//! `deq-train plot`: figures from run folders.
use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use deq_train::train::{RunSummary, TrainConfig, read_metrics};

use crate::plot::{ModePoint, plot_modes, plot_training};

/// Options of `plot`.
#[derive(Args, Debug)]
pub struct PlotArgs {
    /// Run folders. One: its training curves. Several: test accuracy against median backward
    /// time, one point per backward mode (runs of the same mode give the error bar).
    #[arg(required = true)]
    pub runs: Vec<PathBuf>,
    /// Output PNG (default: RUN/training.png for one run, modes.png for several).
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// Runs `plot`.
pub fn plot(args: &PlotArgs) -> anyhow::Result<()> {
    if let [run] = args.runs.as_slice() {
        let metrics = read_metrics(&run.join("metrics.jsonl"))?;
        let config = TrainConfig::from_toml_file(&run.join("config.toml"))?;
        let out = args.out.clone().unwrap_or_else(|| run.join("training.png"));
        plot_training(
            &metrics,
            &format!(
                "MDEQ {} on {}, backward {}",
                config.model, config.dataset, config.backward
            ),
            &out,
        )?;
        println!("wrote {}", out.display());
        return Ok(());
    }
    let mut points = Vec::new();
    for run in &args.runs {
        let path = run.join("summary.json");
        let text = std::fs::read(&path)
            .with_context(|| format!("{}: not a finished run", path.display()))?;
        let summary: RunSummary = serde_json::from_slice(&text)
            .with_context(|| format!("{}: not a run summary", path.display()))?;
        let (Some(accuracy), Some(backward_ms)) =
            (summary.test_accuracy, summary.median_backward_ms)
        else {
            anyhow::bail!(
                "{}: the run has no test accuracy or no equilibrium steps",
                path.display()
            );
        };
        points.push(ModePoint {
            mode: summary.backward,
            backward_ms,
            accuracy,
        });
    }
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from("modes.png"));
    plot_modes(&points, "Test accuracy against backward time", &out)?;
    println!("wrote {} ({} runs)", out.display(), points.len());
    Ok(())
}
