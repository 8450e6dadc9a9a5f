//! `deq-train train`: settings from a TOML file and options, progress display, Ctrl-C handling.
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use clap::Args;
use deq_train::data::DatasetKind;
use deq_train::train::{
    RunEvent, RunOptions, TrainConfig, list_checkpoints, read_metrics, read_state,
};
use indicatif::{ProgressBar, ProgressStyle};

/// Options of `train`. Each setting overrides the `--config` file (or, with `--resume`, the
/// settings saved in the checkpoint); see `config.toml` in a run folder for the full list.
#[derive(Args, Debug, Default)]
pub struct TrainArgs {
    /// TOML file of settings (the keys of a run's `config.toml`).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Run folder (default: a new `runs/train-NNN`).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Continue the run in --out from its newest checkpoint.
    #[arg(long)]
    pub resume: bool,
    /// Replace a run already in --out.
    #[arg(long)]
    pub force: bool,
    /// Stop with a checkpoint after this many steps in total (as if interrupted).
    #[arg(long)]
    pub stop_after: Option<usize>,
    /// No progress bar (one line per epoch).
    #[arg(long)]
    pub quiet: bool,
    /// `fashion-mnist`, `mnist` or `cifar10`.
    #[arg(long)]
    pub dataset: Option<DatasetKind>,
    /// Data folder (IDX, CIFAR-10 binary) or archive (CIFAR-10 JPEG `.tar.gz`).
    #[arg(long, visible_alias = "data")]
    pub data_dir: Option<PathBuf>,
    /// Present grey 28×28 images as 3×32×32 (to train `tiny` or `large` on Fashion-MNIST).
    #[arg(long)]
    pub rgb32: bool,
    /// Model preset: `small`, `tiny` or `large`.
    #[arg(long)]
    pub model: Option<String>,
    /// Backward mode: `shine`, `shine:fallback=1.8`, `shine:refine=5`, `implicit`,
    /// `implicit:max_iter=30,tol=1e-6`, `jfb`, `jfb:refine=2`, `phantom:k=5,tau=0.5`, `unrolled`.
    #[arg(long)]
    pub backward: Option<String>,
    /// Forward solver: `broyden`, `anderson`, `fixed-point`.
    #[arg(long)]
    pub solver: Option<String>,
    /// Memory of the Broyden / Anderson solver.
    #[arg(long)]
    pub solver_memory: Option<usize>,
    /// How Broyden stores its steps: `full` or `half` (`f16`, half the bytes).
    #[arg(long)]
    pub solver_steps: Option<deq_core::StepPrecision>,
    /// Forward iteration budget in training.
    #[arg(long)]
    pub forward_iters: Option<usize>,
    /// Forward iteration budget in evaluation.
    #[arg(long)]
    pub eval_iters: Option<usize>,
    /// Relative-residual tolerance of the forward solve.
    #[arg(long)]
    pub tol: Option<f64>,
    /// Unrolled pretraining steps.
    #[arg(long)]
    pub pretrain_steps: Option<usize>,
    /// Epochs.
    #[arg(long)]
    pub epochs: Option<usize>,
    /// Training batch size.
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Evaluation batch size.
    #[arg(long)]
    pub eval_batch_size: Option<usize>,
    /// Peak learning rate (Adam, cosine decay stepped every iteration).
    #[arg(long)]
    pub lr: Option<f64>,
    /// Adam weight decay.
    #[arg(long)]
    pub weight_decay: Option<f64>,
    /// Gradient clipping by global norm (0: off).
    #[arg(long)]
    pub grad_clip: Option<f64>,
    /// Random crop and flip: `true` or `false` (default: on for CIFAR-10 only).
    #[arg(long)]
    pub augment: Option<bool>,
    /// Use only N training images (a fixed random sample).
    #[arg(long)]
    pub train_limit: Option<usize>,
    /// Use only N test images (a fixed random sample).
    #[arg(long)]
    pub test_limit: Option<usize>,
    /// Random seed.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Backend: `flex` (CPU), `wgpu`, `cuda` (as compiled in).
    #[arg(long)]
    pub backend: Option<String>,
    /// Also checkpoint every N steps.
    #[arg(long)]
    pub checkpoint_every: Option<usize>,
    /// Data-parallel training on N devices of the backend (GPUs 0..N; on the CPU the one device
    /// N times), through Burn's multi-device gradients.
    #[arg(long)]
    pub devices: Option<usize>,
    /// Data-loading threads (> 0 changes how batches are composed and is not reproducible
    /// step for step; exact --resume needs 0, the default).
    #[arg(long)]
    pub workers: Option<usize>,
}

impl TrainArgs {
    /// Applies the options given on the command line over `config`.
    fn apply(&self, config: &mut TrainConfig) {
        macro_rules! set {
            ($($field:ident),*) => {$(
                if let Some(value) = &self.$field {
                    config.$field = value.clone();
                }
            )*};
        }
        set!(
            dataset,
            model,
            backward,
            solver,
            solver_memory,
            solver_steps,
            forward_iters,
            eval_iters,
            tol,
            pretrain_steps,
            epochs,
            batch_size,
            eval_batch_size,
            lr,
            weight_decay,
            grad_clip,
            train_limit,
            test_limit,
            seed,
            backend,
            checkpoint_every,
            devices,
            workers
        );
        if self.data_dir.is_some() {
            config.data_dir = self.data_dir.clone();
        }
        if self.augment.is_some() {
            config.augment = self.augment;
        }
        if self.rgb32 {
            config.rgb32 = true;
        }
    }
}

/// `runs/train-NNN` with the first number not taken.
fn fresh_run_folder() -> PathBuf {
    (1..)
        .map(|i| Path::new("runs").join(format!("train-{i:03}")))
        .find(|p| !p.exists())
        .expect("some folder name is free")
}

/// Runs `train`.
pub fn train(args: &TrainArgs) -> anyhow::Result<()> {
    if args.resume && args.out.is_none() {
        anyhow::bail!("--resume needs --out RUN_FOLDER (the run to continue)");
    }
    let out = args.out.clone().unwrap_or_else(fresh_run_folder);
    let mut config = if args.resume {
        match list_checkpoints(&out)?.pop() {
            Some(newest) => read_state(&newest)?.config,
            // Stopped before its first checkpoint: start again with the run's settings.
            None if out.join("config.toml").is_file() => {
                TrainConfig::from_toml_file(&out.join("config.toml"))?
            }
            None => anyhow::bail!(
                "--resume: no checkpoint in {}",
                out.join("checkpoints").display()
            ),
        }
    } else if let Some(path) = &args.config {
        TrainConfig::from_toml_file(path)?
    } else {
        TrainConfig::default()
    };
    args.apply(&mut config);
    config.validate()?;

    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        let _ = ctrlc::set_handler(move || {
            if stop.swap(true, Ordering::SeqCst) {
                std::process::exit(130);
            }
            eprintln!(
                "\ninterrupted: stopping after this step with a checkpoint (Ctrl-C again to quit now)"
            );
        });
    }
    let options = RunOptions {
        out: out.clone(),
        resume: args.resume,
        force: args.force,
        stop,
        stop_after: args.stop_after,
    };
    println!(
        "{} {} MDEQ `{}` on {} with backward `{}` ({} epochs, batch {}, backend {}) → {}",
        if args.resume { "resuming" } else { "training" },
        if config.mdeq.is_some() {
            "custom"
        } else {
            "preset"
        },
        config.model,
        config.data_dir.as_ref().map_or_else(
            || format!("{} (bundled subset)", config.dataset),
            |d| format!("{} at {}", config.dataset, d.display())
        ),
        config.backward,
        config.epochs,
        config.batch_size,
        config.backend,
        out.display()
    );
    let bar = ProgressBar::new(0);
    if args.quiet {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    bar.set_style(
        ProgressStyle::with_template(
            "epoch {prefix} [{bar:30}] {pos}/{len} {elapsed_precise} (ETA {eta}) {msg}",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    // `ProgressBar::println` prints nothing while the bar is hidden (--quiet, or stderr is not
    // a terminal, e.g. in a log file).
    let say = |bar: &ProgressBar, line: String| {
        if bar.is_hidden() {
            println!("{line}");
        } else {
            bar.println(line);
        }
    };
    let (mut loss_avg, mut acc_avg) = (f64::NAN, f64::NAN);
    let mut epoch_shown = usize::MAX;
    let mut batches_per_epoch = 0;
    let summary = deq_train::train::train(&config, &options, &mut |event| match event {
        RunEvent::Start {
            train_images,
            test_images,
            parameters,
            batches_per_epoch: per_epoch,
            start_step,
            ..
        } => {
            batches_per_epoch = per_epoch;
            say(
                &bar,
                format!(
                    "{train_images} training / {test_images} test images, {parameters} trainable parameters, {per_epoch} steps per epoch{}",
                    if start_step > 0 {
                        format!(", continuing after step {start_step}")
                    } else {
                        String::new()
                    }
                ),
            );
        }
        RunEvent::Step(s) => {
            if s.epoch != epoch_shown {
                epoch_shown = s.epoch;
                bar.reset();
                bar.set_length(batches_per_epoch as u64);
                bar.set_position(((s.step - 1) % batches_per_epoch.max(1)) as u64);
                bar.set_prefix(format!("{}/{}", s.epoch + 1, config.epochs));
                (loss_avg, acc_avg) = (s.loss, s.accuracy);
            }
            if s.skipped {
                say(
                    &bar,
                    format!(
                        "step {}: loss {} or its gradient is not finite; step skipped, parameters unchanged",
                        s.step, s.loss
                    ),
                );
            } else if s.loss.is_finite() {
                loss_avg = 0.95 * loss_avg + 0.05 * s.loss;
                acc_avg = 0.95 * acc_avg + 0.05 * s.accuracy;
            }
            let solver = if s.phase == "deq" {
                format!("fwd it {:.1}  bwd {:.0} ms", s.forward_iters, s.backward_ms)
            } else {
                format!("pretraining  bwd {:.0} ms", s.backward_ms)
            };
            bar.set_message(format!(
                "loss {loss_avg:.3}  acc {:.1}%  {solver}",
                100.0 * acc_avg
            ));
            bar.inc(1);
        }
        RunEvent::Evaluating { .. } => bar.set_message("evaluating on the test split…"),
        RunEvent::Epoch(e) => {
            say(
                &bar,
                format!(
                    "epoch {:>3}  step {:>6}  train loss {:.4} acc {:5.2}%  test loss {:.4} acc {:5.2}%  test fwd it {:.1} (converged {:.0}%)  median bwd {:.1} ms  {:.0} s",
                    e.epoch + 1,
                    e.step,
                    e.train_loss,
                    100.0 * e.train_accuracy,
                    e.test_loss,
                    100.0 * e.test_accuracy,
                    e.test_forward_iters,
                    100.0 * e.test_converged,
                    e.median_backward_ms,
                    e.elapsed_s
                ) + &if e.failures.diverged_samples + e.failures.skipped_steps > 0 {
                    let f = &e.failures;
                    format!(
                        "  ({} samples diverged, {} SHINE fallbacks, {} steps skipped)",
                        f.diverged_samples, f.fallbacks, f.skipped_steps
                    )
                } else {
                    String::new()
                },
            );
        }
        RunEvent::Checkpoint(dir) => {
            if args.quiet {
                return;
            }
            bar.set_message(format!("checkpoint {}", dir.display()));
        }
    })?;
    bar.finish_and_clear();
    std::thread::sleep(Duration::from_millis(10));
    let metrics = read_metrics(&out.join("metrics.jsonl"))?;
    let figure = out.join("training.png");
    crate::plot::plot_training(
        &metrics,
        &format!(
            "MDEQ {} on {}, backward {}",
            config.model, config.dataset, config.backward
        ),
        &figure,
    )?;
    if summary.completed {
        // Runs that end inside the unrolled pretraining have no backward of the DEQ to time.
        let backward = match summary.median_backward_ms {
            Some(ms) if ms.is_finite() => format!("median backward {ms:.1} ms per step"),
            _ => "no equilibrium step (all pretraining), so no backward time".to_string(),
        };
        let accuracy = match summary.test_accuracy {
            Some(a) => format!("test accuracy {:.2}%", 100.0 * a),
            None => "no test accuracy".to_string(),
        };
        println!(
            "done: {accuracy} after {} steps, {:.0} s of training; {backward}",
            summary.steps, summary.train_s,
        );
    } else {
        println!(
            "stopped after step {} with a checkpoint; continue with `deq-train train --out {} --resume`",
            summary.steps,
            out.display()
        );
    }
    println!(
        "wrote {}: config.toml, metrics.jsonl, checkpoints/, training.png{}",
        out.display(),
        if summary.completed {
            ", summary.json"
        } else {
            ""
        }
    );
    Ok(())
}
