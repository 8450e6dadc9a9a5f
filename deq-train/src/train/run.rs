//! The training loop.
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use burn::data::dataloader::{DataLoader, DataLoaderBuilder};
use burn::data::dataset::transform::{PartialDataset, ShuffledDataset};
use burn::grad_clipping::GradientClippingConfig;
use burn::module::{Module, ModuleVisitor, Param};
use burn::nn::loss::{CrossEntropyLoss, CrossEntropyLossConfig};
use burn::optim::decay::WeightDecayConfig;
use burn::optim::lr_scheduler::cosine::CosineAnnealingLrSchedulerConfig;
use burn::optim::{AdamConfig, GradientsParams, ModuleOptimizer, MultiGradientsParams};
use burn::tensor::{Device, Int, Tensor};
use deq_core::{Deq, DeqOutput, SolveStatus};
use deq_models::{Mdeq, MdeqMode};
use serde::{Deserialize, Serialize};

use super::checkpoint::{
    CHECKPOINT_FORMAT, CheckpointState, EpochTotals, config_differences, list_checkpoints,
    load_model, load_optimizer, read_state, save_checkpoint,
};
use super::evaluate::{EvalResult, evaluate};
use super::fault::{FaultKind, Faulty};
use super::metrics::{
    EpochRecord, FailureCounts, MetricsLine, MetricsLog, StepRecord, read_metrics,
};
use super::{TrainConfig, TrainError};
use crate::data::{ImageBatch, ImageBatcher, ImageDataset, ImageSet, load_splits, mix};
use crate::fsio::write_atomic;
use crate::stats::median;

/// How to run: where, and whether to continue or replace an earlier run there.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// The run folder.
    pub out: PathBuf,
    /// Continue from the newest checkpoint in `out`.
    pub resume: bool,
    /// Replace an earlier run in `out`.
    pub force: bool,
    /// Set (e.g. by a Ctrl-C handler) to stop after the current step with a checkpoint.
    pub stop: Arc<AtomicBool>,
    /// Stop (with a checkpoint) once this many steps are done in total.
    pub stop_after: Option<usize>,
}

impl RunOptions {
    /// A new run in `out`.
    pub fn new(out: impl Into<PathBuf>) -> Self {
        Self {
            out: out.into(),
            resume: false,
            force: false,
            stop: Arc::new(AtomicBool::new(false)),
            stop_after: None,
        }
    }

    /// Whether the run should stop (with a checkpoint) once `step` steps are done: on request
    /// through `stop`, or at `stop_after`.
    pub fn should_stop(&self, step: usize) -> bool {
        self.stop.load(Ordering::SeqCst) || self.stop_after.is_some_and(|s| step >= s)
    }
}

/// What the loop reports as it goes (the library does not print; the CLI shows these).
#[derive(Debug)]
pub enum RunEvent<'a> {
    /// Data and model are ready.
    Start {
        /// Training images.
        train_images: usize,
        /// Test images.
        test_images: usize,
        /// Trainable parameters.
        parameters: usize,
        /// Batches per epoch.
        batches_per_epoch: usize,
        /// Step the run starts at (0 for a new run).
        start_step: usize,
        /// Epoch the run starts at.
        start_epoch: usize,
    },
    /// One optimiser step is done.
    Step(&'a StepRecord),
    /// Evaluation on the test split begins.
    Evaluating {
        /// Epoch just trained.
        epoch: usize,
    },
    /// An epoch is done and evaluated.
    Epoch(&'a EpochRecord),
    /// A checkpoint was written.
    Checkpoint(&'a Path),
}

/// Result of [`train`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunSummary {
    /// All epochs were trained (false: stopped early with a checkpoint).
    pub completed: bool,
    /// Steps done in total.
    pub steps: usize,
    /// Epochs completed.
    pub epochs: usize,
    /// Test accuracy after the last completed epoch.
    pub test_accuracy: Option<f64>,
    /// Test loss after the last completed epoch.
    pub test_loss: Option<f64>,
    /// Training time (excluding evaluation), s.
    pub train_s: f64,
    /// Median backward time over the equilibrium steps, ms.
    pub median_backward_ms: Option<f64>,
    /// Median forward time over the equilibrium steps, ms.
    pub median_forward_ms: Option<f64>,
    /// The backward mode.
    pub backward: String,
    /// Trainable parameters.
    pub parameters: usize,
    /// Skipped steps, diverged samples and SHINE fallbacks over all steps.
    #[serde(flatten)]
    pub failures: FailureCounts,
}

/// The data of a run: both splits (limited and viewed as configured) and the normalisation.
#[derive(Debug, Clone)]
pub struct RunData {
    /// Training split.
    pub train: ImageSet,
    /// Test split.
    pub test: ImageSet,
    /// Per-channel mean of the training images.
    pub mean: Vec<f64>,
    /// Per-channel standard deviation of the training images.
    pub std: Vec<f64>,
}

/// Loads the data `config` names, applies `train_limit` / `test_limit` and `rgb32`, and
/// computes the normalisation from the training images.
pub fn load_run_data(config: &TrainConfig) -> Result<RunData, TrainError> {
    let splits = load_splits(config.dataset, config.data_dir.as_deref())?;
    let limit = |set: ImageSet, n: usize| if n == 0 { set } else { set.sample(n) };
    let (mut train, mut test) = (
        limit(splits.train, config.train_limit),
        limit(splits.test, config.test_limit),
    );
    if config.rgb32 {
        train = train.padded_rgb(32)?;
        test = test.padded_rgb(32)?;
    }
    for (set, field) in [(&train, "train_limit"), (&test, "test_limit")] {
        if set.is_empty() {
            return Err(TrainError::config(
                field,
                0,
                format!("{} holds no images", set.origin().display()),
            ));
        }
    }
    let (mean, std) = train.channel_stats();
    Ok(RunData {
        train,
        test,
        mean,
        std,
    })
}

/// Checks that the model takes the data's images, with a hint when it does not.
fn check_shapes(
    config: &TrainConfig,
    model: &deq_models::MdeqConfig,
    set: &ImageSet,
) -> Result<(), TrainError> {
    model.check_image_shape(set.shape()).map_err(|e| {
        let hint = if set.shape()[0] == 1 && model.input_channels == 3 {
            " (set rgb32 = true / pass --rgb32 to train a 3-channel model on grey images)"
        } else {
            ""
        };
        let field = if config.mdeq.is_some() {
            "mdeq"
        } else {
            "model"
        };
        TrainError::config(field, config.model.clone(), format!("{e}{hint}"))
    })
}

fn prepare_out(options: &RunOptions) -> Result<(), TrainError> {
    let out = &options.out;
    if out.exists() && !options.resume {
        let marker = ["config.toml", "metrics.jsonl", "checkpoints"]
            .into_iter()
            .find(|name| out.join(name).exists());
        if let Some(found) = marker {
            if !options.force {
                return Err(TrainError::OutputExists {
                    path: out.clone(),
                    found: found.to_string(),
                });
            }
            for name in [
                "checkpoints",
                "config.toml",
                "metrics.jsonl",
                "summary.json",
            ] {
                let path = out.join(name);
                let removed = if path.is_dir() {
                    std::fs::remove_dir_all(&path)
                } else if path.exists() {
                    std::fs::remove_file(&path)
                } else {
                    Ok(())
                };
                removed.map_err(|e| TrainError::io(&path, e))?;
            }
        }
    }
    std::fs::create_dir_all(out).map_err(|e| TrainError::io(out, e))
}

/// The state of checkpoint `dir`, checked against `config`: not complete, same settings.
fn resume_state(
    config: &TrainConfig,
    dir: PathBuf,
) -> Result<(PathBuf, CheckpointState), TrainError> {
    let state = read_state(&dir)?;
    if state.epoch >= config.epochs {
        return Err(TrainError::Checkpoint {
            path: dir,
            problem: format!(
                "the run is already complete ({} epochs, {} steps); nothing to resume (raise --epochs only in a new run: the learning-rate schedule depends on it)",
                state.epoch, state.step
            ),
        });
    }
    let differences = config_differences(&state.config, config);
    if !differences.is_empty() {
        return Err(TrainError::Checkpoint {
            path: dir,
            problem: format!(
                "was written by a run with other settings: {}",
                differences.join("; ")
            ),
        });
    }
    Ok((dir, state))
}

/// Removes checkpoint folders left half-written by an interrupted run (their temporary names
/// start with `.partial-`; the finished checkpoints were never touched by them).
fn remove_partial_checkpoints(out: &Path) -> Result<(), TrainError> {
    let parent = out.join("checkpoints");
    let Ok(entries) = std::fs::read_dir(&parent) else {
        return Ok(());
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if entry.file_name().to_string_lossy().starts_with(".partial-") {
            std::fs::remove_dir_all(&path).map_err(|e| TrainError::io(&path, e))?;
        }
    }
    Ok(())
}

/// Builds the optimiser `config` describes.
pub fn optimizer(config: &TrainConfig) -> ModuleOptimizer {
    let mut adam = AdamConfig::new();
    if config.weight_decay > 0.0 {
        adam = adam.with_weight_decay(Some(WeightDecayConfig::new(config.weight_decay as f32)));
    }
    if config.grad_clip > 0.0 {
        adam = adam.with_grad_clipping(Some(GradientClippingConfig::Norm(config.grad_clip as f32)));
    }
    adam.init()
}

/// Trains as `config` says, in `options.out`: writes `config.toml`, `metrics.jsonl`,
/// checkpoints (every epoch, every `checkpoint_every` steps, and when stopped) and
/// `summary.json`. With `options.resume` it continues from the newest checkpoint and, on the
/// CPU, ends with exactly the parameters of an uninterrupted run.
pub fn train(
    config: &TrainConfig,
    options: &RunOptions,
    observe: &mut dyn FnMut(RunEvent<'_>),
) -> Result<RunSummary, TrainError> {
    config.validate()?;
    let out = &options.out;
    let resume_from = if options.resume {
        let found = list_checkpoints(out)?;
        match found.last().cloned() {
            // Stopped before its first checkpoint (e.g. killed early): start it again.
            None if out.join("config.toml").is_file() => None,
            None => {
                return Err(TrainError::Checkpoint {
                    path: out.join("checkpoints"),
                    problem: "no checkpoint to resume from".into(),
                });
            }
            Some(dir) => Some(resume_state(config, dir)?),
        }
    } else {
        None
    };
    prepare_out(options)?;
    remove_partial_checkpoints(out)?;

    let data = load_run_data(config)?;
    let model_config = config.model_config()?;
    check_shapes(config, &model_config, &data.train)?;
    let devices: Vec<Device> = crate::backend::devices(&config.backend, config.devices)
        .map_err(TrainError::Backend)?
        .into_iter()
        .map(Device::autodiff)
        .collect();
    let device = devices[0].clone();
    let inner = device.clone().inner();
    device.seed(config.seed);
    let mut model = model_config.init(&device)?;
    let mut optim = optimizer(config);
    let deq: Deq = config.deq_config()?.init()?;
    let batch_size = config.batch_size;
    let batches_per_epoch = data.train.len().div_ceil(batch_size);
    let total_steps = config.epochs * batches_per_epoch;
    let mut scheduler = CosineAnnealingLrSchedulerConfig::new(config.lr, total_steps)
        .init()
        .map_err(|e| TrainError::config("lr", config.lr, e))?;

    let (mut epoch, mut batches_done, mut step, mut elapsed) = (0, 0, 0, 0.0);
    let mut totals = EpochTotals::default();
    if let Some((dir, state)) = &resume_from {
        model = load_model(dir, model)?;
        optim = load_optimizer(dir, optim)?;
        (epoch, batches_done, step, elapsed) =
            (state.epoch, state.batches_done, state.step, state.elapsed_s);
        totals = state.epoch_totals;
        for _ in 0..step {
            scheduler.step();
        }
    }
    let config_path = out.join("config.toml");
    write_atomic(&config_path, config.to_toml().as_bytes())
        .map_err(|e| TrainError::io(&config_path, e))?;
    let mut log = MetricsLog::open(out, step)?;
    let parameters = deq_models::trainable_params(&model);
    observe(RunEvent::Start {
        train_images: data.train.len(),
        test_images: data.test.len(),
        parameters,
        batches_per_epoch,
        start_step: step,
        start_epoch: epoch,
    });

    let loss_fn = CrossEntropyLossConfig::new().init(&device);
    let train_batcher = ImageBatcher::new(
        data.train.shape(),
        &data.mean,
        &data.std,
        config.augmentation(),
    );
    let eval_batcher = ImageBatcher::new(
        data.test.shape(),
        &data.mean,
        &data.std,
        crate::data::Augment::NONE,
    );
    let (mut backward_all, mut forward_all) = (Vec::new(), Vec::new());
    let mut last_eval: Option<EvalResult> = None;
    let mut consecutive_skips = 0;
    let save = |model: &Mdeq,
                optim: &ModuleOptimizer,
                epoch: usize,
                batches_done: usize,
                step: usize,
                elapsed: f64,
                totals: EpochTotals| {
        let (epoch, batches_done, totals) = if batches_done == batches_per_epoch {
            (epoch + 1, 0, EpochTotals::default())
        } else {
            (epoch, batches_done, totals)
        };
        save_checkpoint(
            out,
            model,
            optim,
            &CheckpointState {
                format: CHECKPOINT_FORMAT,
                version: env!("CARGO_PKG_VERSION").to_string(),
                config: config.clone(),
                epoch,
                batches_done,
                step,
                mean: data.mean.clone(),
                std: data.std.clone(),
                elapsed_s: elapsed,
                epoch_totals: totals,
            },
        )
    };

    while epoch < config.epochs {
        let epoch_seed = mix(config.seed, 1 + epoch as u64);
        let dataset = ShuffledDataset::new(
            ImageDataset::new(data.train.clone(), epoch_seed),
            epoch_seed,
        );
        let dataset = PartialDataset::new(dataset, batches_done * batch_size, data.train.len());
        let loader: Arc<dyn DataLoader<ImageBatch>> = DataLoaderBuilder::new(train_batcher.clone())
            .batch_size(batch_size)
            .num_workers(config.workers)
            .set_device(device.clone())
            .build(dataset);
        let mut epoch_backward = Vec::new();
        for batch in loader.iter() {
            let batch = batch.map_err(|e| TrainError::loading(&data.train, e))?;
            let started = Instant::now();
            step += 1;
            device.seed(mix(config.seed ^ 0x5eed, step as u64));
            let pretrain = step <= config.pretrain_steps;
            let mode = if pretrain {
                MdeqMode::Unrolled {
                    layers: model.pretrain_layers(),
                }
            } else {
                MdeqMode::Equilibrium(&deq)
            };
            let n = batch.labels.dims()[0];
            let fault = config.faults.as_ref().map(|f| (f.at(step), f.samples));
            // The forward pass updates the batch norms' running statistics; a skipped step
            // must not keep that update (it may hold NaN), so keep a detached copy to go back to.
            let before = model.valid();
            let shares = forward_backward(&model, &devices, mode, &loss_fn, batch, fault)?;
            let loss_value: f64 = shares.iter().map(|s| s.loss).sum();
            let hits = shares.iter().map(|s| s.hits).sum::<usize>();
            let forward_ms = shares.iter().map(|s| s.forward_ms).sum::<f64>();
            let backward_ms = shares.iter().map(|s| s.backward_ms).sum::<f64>();
            // The schedule advances on skipped steps too, so it stays a function of the step.
            let lr = scheduler.step().base();
            // A non-finite loss or gradient on any share: no update, the parameters stay.
            let skipped = shares.iter().any(|s| s.grads.is_none());
            let mut deq_outputs = Vec::new();
            let mut multi = MultiGradientsParams::default();
            for share in shares {
                deq_outputs.extend(share.deq);
                if let Some(grads) = share.grads {
                    multi.grads.push((grads, share.device));
                }
            }
            if skipped {
                model = before.train();
                consecutive_skips += 1;
                if consecutive_skips >= config.max_skipped_steps {
                    return Err(TrainError::NonFiniteLoss {
                        step,
                        count: consecutive_skips,
                        value: loss_value,
                    });
                }
            } else {
                consecutive_skips = 0;
                model = if multi.grads.len() == 1 {
                    let (grads, _) = multi.grads.pop().expect("one share");
                    optim.step(lr, model, grads)
                } else {
                    // Forking the replicas moved the running statistics that clones share
                    // (Burn's RunningState) to the last device: bring everything back to the
                    // first.
                    optim.step_multi(lr, model, multi).fork(&devices[0])
                };
            }
            elapsed += started.elapsed().as_secs_f64();
            batches_done += 1;
            let (mut forward_iters, mut max_residual, mut converged, mut diverged, mut fallbacks) =
                (0.0, 0.0, 0, 0, 0);
            if !deq_outputs.is_empty() {
                let mut samples = 0;
                for deq_out in &deq_outputs {
                    let stats = &deq_out.stats;
                    forward_iters += stats.mean_iterations() * stats.samples.len() as f64;
                    samples += stats.samples.len();
                    // Samples that went non-finite are counted in `diverged`, not here.
                    max_residual = stats
                        .samples
                        .iter()
                        .map(|s| s.rel_residual)
                        .filter(|r| r.is_finite())
                        .fold(max_residual, f64::max);
                    converged += stats.count(SolveStatus::Converged);
                    diverged +=
                        stats.count(SolveStatus::Diverged) + stats.count(SolveStatus::NonFinite);
                    fallbacks += deq_out.backward.get().map_or(0, |b| b.fallback_count());
                }
                forward_iters /= samples.max(1) as f64;
                backward_all.push(backward_ms);
                forward_all.push(forward_ms);
                epoch_backward.push(backward_ms);
            }
            if loss_value.is_finite() {
                totals.loss_sum += loss_value * n as f64;
                totals.correct += hits;
                totals.seen += n;
            }
            let record = StepRecord {
                epoch,
                step,
                phase: if pretrain { "pretrain" } else { "deq" }.into(),
                loss: loss_value,
                accuracy: hits as f64 / n as f64,
                lr,
                forward_iters,
                max_residual,
                converged,
                diverged,
                batch: n,
                forward_ms,
                backward_ms,
                fallbacks,
                skipped,
            };
            totals.failures.add(&record);
            log.write(&MetricsLine::Step(record.clone()))?;
            observe(RunEvent::Step(&record));
            let stop = options.should_stop(step);
            let periodic = config.checkpoint_every > 0 && step % config.checkpoint_every == 0;
            if (stop || periodic) && batches_done < batches_per_epoch {
                let dir = save(&model, &optim, epoch, batches_done, step, elapsed, totals)?;
                observe(RunEvent::Checkpoint(&dir));
            }
            if stop && batches_done < batches_per_epoch {
                return summary(
                    false,
                    step,
                    epoch,
                    &last_eval,
                    elapsed,
                    &mut backward_all,
                    &mut forward_all,
                    config,
                    parameters,
                    out,
                );
            }
        }
        observe(RunEvent::Evaluating { epoch });
        let result = evaluate(
            &model.valid(),
            &deq,
            &data.test,
            &eval_batcher,
            config.eval_batch_size,
            &inner,
        )?;
        let record = EpochRecord {
            epoch,
            step,
            train_loss: totals.loss_sum / totals.seen.max(1) as f64,
            train_accuracy: totals.correct as f64 / totals.seen.max(1) as f64,
            test_loss: result.loss,
            test_accuracy: result.accuracy,
            test_forward_iters: result.mean_iterations,
            test_converged: result.converged_fraction,
            median_backward_ms: median(&mut epoch_backward).unwrap_or(0.0),
            elapsed_s: elapsed,
            failures: totals.failures,
        };
        log.write(&MetricsLine::Epoch(record.clone()))?;
        let dir = save(&model, &optim, epoch, batches_done, step, elapsed, totals)?;
        observe(RunEvent::Epoch(&record));
        observe(RunEvent::Checkpoint(&dir));
        last_eval = Some(result);
        epoch += 1;
        batches_done = 0;
        totals = EpochTotals::default();
        if options.should_stop(step) && epoch < config.epochs {
            return summary(
                false,
                step,
                epoch,
                &last_eval,
                elapsed,
                &mut backward_all,
                &mut forward_all,
                config,
                parameters,
                out,
            );
        }
    }
    let result = summary(
        true,
        step,
        epoch,
        &last_eval,
        elapsed,
        &mut backward_all,
        &mut forward_all,
        config,
        parameters,
        out,
    )?;
    let path = out.join("summary.json");
    write_atomic(
        &path,
        &serde_json::to_vec_pretty(&result).expect("summary serialises"),
    )
    .map_err(|e| TrainError::io(&path, e))?;
    Ok(result)
}

/// Whether every gradient in `grads` is finite (one read from the device: NaN and ±∞ survive
/// the sum of all entries; so does a finite sum overflowing to ∞, which is as harmful).
fn gradients_finite(grads: &GradientsParams, model: &Mdeq) -> bool {
    struct Sums<'a> {
        grads: &'a GradientsParams,
        out: Vec<Tensor<1>>,
    }
    impl ModuleVisitor for Sums<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            if let Some(g) = self.grads.get::<D>(param.id) {
                self.out.push(g.sum());
            }
        }
    }
    let mut sums = Sums {
        grads,
        out: Vec::new(),
    };
    model.visit(&mut sums);
    sums.out.is_empty()
        || Tensor::cat(sums.out, 0)
            .sum()
            .into_scalar::<f64>()
            .is_finite()
}

/// One device's share of a training step.
struct Share {
    device: Device,
    /// The share's loss, weighted by its share of the batch (the shares sum to the batch loss).
    loss: f64,
    hits: usize,
    forward_ms: f64,
    backward_ms: f64,
    /// `None` when the loss or a gradient was not finite (the step is skipped).
    grads: Option<GradientsParams>,
    deq: Option<DeqOutput>,
}

/// Forward and backward of `batch` split over `devices` (contiguous shares, sizes differing by
/// at most one): each device runs a fork of `model` on its share, with the loss weighted by the
/// share's size so that the summed gradients are those of the whole batch's mean loss. With
/// one device it is the plain step.
fn forward_backward(
    model: &Mdeq,
    devices: &[Device],
    mode: MdeqMode<'_>,
    loss_fn: &CrossEntropyLoss,
    batch: ImageBatch,
    fault: Option<(Option<FaultKind>, usize)>,
) -> Result<Vec<Share>, TrainError> {
    let n = batch.labels.dims()[0];
    let k = devices.len().min(n);
    let mut shares = Vec::with_capacity(k);
    let mut start = 0;
    for (i, device) in devices.iter().take(k).enumerate() {
        let len = n / k + usize::from(i < n % k);
        let started = Instant::now();
        let (replica, images, labels) = if k == 1 {
            (model.clone(), batch.images.clone(), batch.labels.clone())
        } else {
            (
                model.clone().fork(device),
                batch.images.clone().narrow(0, start, len).to_device(device),
                batch.labels.clone().narrow(0, start, len).to_device(device),
            )
        };
        start += len;
        let output = match fault {
            None => replica.forward(images, mode)?,
            Some((kind, samples)) => {
                replica.forward_with(images, mode, |f| Faulty::new(f, kind, samples))?
            }
        };
        let loss = loss_fn.forward(output.logits.clone(), labels.clone()) * (len as f64 / n as f64);
        let loss_value = loss.clone().into_scalar::<f64>();
        let predicted: Tensor<1, Int> = output.logits.inner().argmax(1).reshape([len]);
        let hits = predicted
            .equal(labels.inner())
            .int()
            .sum()
            .into_scalar::<i64>() as usize;
        let forward_ms = started.elapsed().as_secs_f64() * 1e3;
        let backward_started = Instant::now();
        let grads = if loss_value.is_finite() {
            let grads = GradientsParams::from_grads(loss.backward(), &replica);
            gradients_finite(&grads, &replica).then_some(grads)
        } else {
            None
        };
        let backward_ms = backward_started.elapsed().as_secs_f64() * 1e3;
        shares.push(Share {
            device: device.clone(),
            loss: loss_value,
            hits,
            forward_ms,
            backward_ms,
            grads,
            deq: output.deq,
        });
    }
    Ok(shares)
}

#[allow(clippy::too_many_arguments)]
fn summary(
    completed: bool,
    steps: usize,
    epochs: usize,
    eval: &Option<EvalResult>,
    train_s: f64,
    backward: &mut [f64],
    forward: &mut [f64],
    config: &TrainConfig,
    parameters: usize,
    out: &Path,
) -> Result<RunSummary, TrainError> {
    // From the log, so that the steps before a resume count too.
    let mut failures = FailureCounts::default();
    for line in read_metrics(&out.join("metrics.jsonl"))? {
        if let MetricsLine::Step(s) = line {
            failures.add(&s);
        }
    }
    Ok(RunSummary {
        completed,
        steps,
        epochs,
        test_accuracy: eval.as_ref().map(|e| e.accuracy),
        test_loss: eval.as_ref().map(|e| e.loss),
        train_s,
        median_backward_ms: median(backward),
        median_forward_ms: median(forward),
        backward: config.backward.clone(),
        parameters,
        failures,
    })
}
