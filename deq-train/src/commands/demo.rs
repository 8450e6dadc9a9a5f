//! `deq-train demo`: on whatever device the backend finds (a GPU through WGPU, or the CPU),
//! trains the small MDEQ with SHINE for a short while on the bundled Fashion-MNIST subset and
//! draws what the model does: the forward solver's residual per test image, iteration by
//! iteration, and the test images with their predicted labels.
use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use burn::data::dataloader::batcher::Batcher;
use burn::data::dataset::Dataset;
use burn::tensor::{Int, Tensor};
use clap::Args;
use deq_core::{DeqConfig, SolverConfig, SolverKind, StopMode};
use deq_models::MdeqMode;
use deq_train::data::{Augment, ImageBatcher, ImageDataset};
use deq_train::train::{
    RunEvent, RunOptions, TrainConfig, list_checkpoints, load_model, load_run_data,
};

use crate::plot::{DemoSample, plot_demo};

/// Options of `demo`.
#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Backend: wgpu (a GPU, or software Vulkan), flex, ndarray or cuda (as compiled in).
    #[arg(long, default_value = "wgpu")]
    pub backend: String,
    /// Output folder (the run and `demo.png`); replaced if it holds an earlier demo.
    #[arg(long, default_value = "runs/demo")]
    pub out: PathBuf,
    /// Training images used (from the bundled 10,000).
    #[arg(long, default_value_t = 3000)]
    pub train_images: usize,
    /// Test images evaluated after each epoch (from the bundled 2,000).
    #[arg(long, default_value_t = 1000)]
    pub test_images: usize,
    /// Epochs over them.
    #[arg(long, default_value_t = 2)]
    pub epochs: usize,
    /// Unrolled pretraining steps first.
    #[arg(long, default_value_t = 40)]
    pub pretrain_steps: usize,
    /// Test images shown (a square number looks best).
    #[arg(long, default_value_t = 16)]
    pub show: usize,
}

/// Runs `demo`.
pub fn demo(args: &DemoArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.show > 0 && args.train_images > 0 && args.test_images > 0 && args.epochs > 0,
        "--show, --train-images, --test-images and --epochs must be at least 1"
    );
    let adapter = deq_train::backend::describe(&args.backend).map_err(anyhow::Error::msg)?;
    println!("demo: running on {adapter}");
    let config = TrainConfig {
        backend: args.backend.clone(),
        train_limit: args.train_images,
        test_limit: args.test_images,
        epochs: args.epochs,
        pretrain_steps: args.pretrain_steps,
        ..TrainConfig::default()
    };
    let mut options = RunOptions::new(args.out.join("run"));
    options.force = true;
    let started = Instant::now();
    let summary = deq_train::train::train(&config, &options, &mut |event| match event {
        RunEvent::Start {
            train_images,
            parameters,
            ..
        } => println!(
            "demo: training the small MDEQ ({parameters} parameters, SHINE backward) on {train_images} images for {} epochs",
            args.epochs
        ),
        RunEvent::Epoch(e) => println!(
            "demo: epoch {}: train accuracy {:.1} %, test accuracy {:.1} % ({:.1} forward iterations)",
            e.epoch + 1,
            100.0 * e.train_accuracy,
            100.0 * e.test_accuracy,
            e.test_forward_iters
        ),
        _ => {}
    })?;
    let train_s = started.elapsed().as_secs_f64();

    // The trained model, in evaluation mode, on the first test images; a tight tolerance so
    // the curves show the whole descent of the residual.
    let dir = list_checkpoints(&options.out)?
        .pop()
        .context("the demo run wrote no checkpoint")?;
    let device = deq_train::backend::device(&args.backend).map_err(anyhow::Error::msg)?;
    let model = load_model(&dir, config.model_config()?.init(&device)?)?;
    let data = load_run_data(&config)?;
    let batcher = ImageBatcher::new(data.test.shape(), &data.mean, &data.std, Augment::NONE);
    let dataset = ImageDataset::new(data.test.clone(), 0);
    let show = args.show.min(dataset.len());
    let items = (0..show).filter_map(|i| dataset.get(i).ok()).collect();
    let batch = batcher.batch(items, &device);
    let deq = DeqConfig::new(
        SolverConfig::new(SolverKind::broyden_with(
            config.solver_memory,
            config.solver_steps,
        ))
        .with_max_iter(40)
        .with_tol(1e-5)
        .with_stop(StopMode::Relative),
    )
    .with_backward(config.backward_mode()?)
    .init()?;
    let solve_started = Instant::now();
    let output = model.forward(batch.images, MdeqMode::Equilibrium(&deq))?;
    let predicted: Tensor<1, Int> = output.logits.argmax(1).reshape([show]);
    let predicted: Vec<i64> = predicted
        .into_data()
        .convert::<i64>()
        .iter::<i64>()
        .collect();
    let solve_ms = solve_started.elapsed().as_secs_f64() * 1e3;
    let stats = output
        .deq
        .context("an equilibrium forward reports statistics")?
        .stats;
    let classes = data.test.classes();
    let samples: Vec<DemoSample> = (0..show)
        .map(|i| DemoSample {
            pixels: data.test.image(i).to_vec(),
            truth: classes[data.test.label(i)].clone(),
            predicted: classes
                .get(predicted[i] as usize)
                .cloned()
                .unwrap_or_else(|| predicted[i].to_string()),
            residuals: stats.samples[i].trace.clone(),
        })
        .collect();
    let correct = samples.iter().filter(|s| s.truth == s.predicted).count();
    let figure = args.out.join("demo.png");
    let title = format!(
        "small MDEQ, SHINE, {} epochs on {} images: test accuracy {:.1} % — {adapter}",
        args.epochs,
        args.train_images,
        100.0 * summary.test_accuracy.unwrap_or(f64::NAN)
    );
    plot_demo(&samples, data.test.shape(), &title, &figure)?;
    println!(
        "demo: trained in {train_s:.1} s; {correct}/{show} shown images right; their solve: {solve_ms:.1} ms, {:.1} iterations on average to relative residual ≤ 1e-5",
        stats.mean_iterations()
    );
    println!("demo: wrote {}", figure.display());
    Ok(())
}
