//! Evaluation of a model on a split: accuracy, loss and forward-solver statistics.
use burn::data::dataloader::DataLoaderBuilder;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::tensor::{Device, Int, Tensor};
use deq_core::{Deq, SolveStatus};
use deq_models::{Mdeq, MdeqMode};
use serde::{Deserialize, Serialize};

use super::TrainError;
use crate::data::{ImageBatcher, ImageDataset, ImageSet};
use crate::stats::median;

/// Result of [`evaluate`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalResult {
    /// Images evaluated.
    pub images: usize,
    /// Fraction classified correctly.
    pub accuracy: f64,
    /// Mean cross-entropy.
    pub loss: f64,
    /// Mean forward-solver iterations per sample.
    pub mean_iterations: f64,
    /// Most forward-solver iterations of any sample.
    pub max_iterations: usize,
    /// Fraction of samples whose forward solve converged.
    pub converged_fraction: f64,
    /// Largest relative residual of any sample.
    pub max_residual: f64,
    /// Median relative residual.
    pub median_residual: f64,
}

/// Evaluates `model` (in evaluation mode: `model.valid()`) with the equilibrium layer `deq`
/// (its evaluation budget) on `set`, in batches of `batch_size` on `device`.
pub fn evaluate(
    model: &Mdeq,
    deq: &Deq,
    set: &ImageSet,
    batcher: &ImageBatcher,
    batch_size: usize,
    device: &Device,
) -> Result<EvalResult, TrainError> {
    let loader = DataLoaderBuilder::new(batcher.clone())
        .batch_size(batch_size)
        .set_device(device.clone())
        .build(ImageDataset::new(set.clone(), 0));
    let loss_fn = CrossEntropyLossConfig::new().init(device);
    let (mut correct, mut loss_sum, mut seen) = (0usize, 0.0, 0usize);
    let (mut iterations, mut max_iterations, mut converged) = (0usize, 0usize, 0usize);
    let mut residuals = Vec::with_capacity(set.len());
    for batch in loader.iter() {
        let batch = batch.map_err(|e| TrainError::loading(set, e))?;
        let n = batch.labels.dims()[0];
        let output = model.forward(batch.images, MdeqMode::Equilibrium(deq))?;
        loss_sum += loss_fn
            .forward(output.logits.clone(), batch.labels.clone())
            .into_scalar::<f64>()
            * n as f64;
        let predicted: Tensor<1, Int> = output.logits.argmax(1).reshape([n]);
        correct += predicted
            .equal(batch.labels)
            .int()
            .sum()
            .into_scalar::<i64>() as usize;
        seen += n;
        if let Some(out) = &output.deq {
            for sample in &out.stats.samples {
                iterations += sample.iterations;
                max_iterations = max_iterations.max(sample.iterations);
                converged += usize::from(sample.status == SolveStatus::Converged);
                residuals.push(sample.rel_residual);
            }
        }
    }
    let max_residual = residuals.iter().copied().fold(0.0, f64::max);
    let median_residual = median(&mut residuals).unwrap_or(0.0);
    let seen_f = seen.max(1) as f64;
    Ok(EvalResult {
        images: seen,
        accuracy: correct as f64 / seen_f,
        loss: loss_sum / seen_f,
        mean_iterations: iterations as f64 / seen_f,
        max_iterations,
        converged_fraction: converged as f64 / seen_f,
        max_residual,
        median_residual,
    })
}
