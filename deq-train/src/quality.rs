//! Gradient quality on a trained model: each backward mode's gradient of the whole network
//! against a reference implicit gradient (a long adjoint solve on a tight forward solve), over
//! batches of a split.
use burn::data::dataloader::DataLoaderBuilder;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::GradientsParams;
use burn::tensor::Device;
use deq_core::{BackwardMode, DeqConfig, SolveStatus, SolverConfig, SolverKind, StepPrecision};
use deq_models::{Mdeq, MdeqMode, gradient_values};
use serde::{Deserialize, Serialize};

use crate::data::{ImageBatcher, ImageDataset, ImageSet};
use crate::stats::median;
use crate::train::TrainError;

/// What [`gradient_quality`] compares, and on how much data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QualityConfig {
    /// Batches of the split (a fixed random order).
    pub batches: usize,
    /// Images per batch.
    pub batch_size: usize,
    /// Forward Broyden budget for every mode.
    pub forward_iters: usize,
    /// Forward Broyden memory (rank-one factors kept) for every mode; `None`: the budget, so
    /// that no factor is ever dropped. The matrix SHINE reuses holds at most this many.
    #[serde(default)]
    pub memory: Option<usize>,
    /// How Broyden stores its steps in every mode.
    #[serde(default)]
    pub steps: StepPrecision,
    /// Forward relative-residual tolerance.
    pub tol: f64,
    /// The reference backward mode (an implicit mode with a long adjoint solve).
    pub reference: String,
    /// The modes compared with it.
    pub modes: Vec<String>,
    /// Seed of the batch order (and of dropout masks, the same for every mode).
    pub seed: u64,
}

impl Default for QualityConfig {
    fn default() -> Self {
        Self {
            batches: 20,
            batch_size: 32,
            forward_iters: 40,
            memory: None,
            steps: StepPrecision::Full,
            tol: 1e-5,
            reference: "implicit:max_iter=100,tol=1e-8".into(),
            modes: [
                "shine",
                "shine:fallback=1.8",
                "shine:refine=1",
                "shine:refine=2",
                "shine:refine=5",
                "jfb",
                "jfb:refine=2",
                "phantom:k=5,tau=0.5",
            ]
            .map(String::from)
            .to_vec(),
            seed: 0,
        }
    }
}

/// One batch: the solves and each mode's agreement with the reference.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BatchQuality {
    /// Batch index (0-based).
    pub batch: usize,
    /// Largest relative residual of the forward solve.
    pub forward_max_residual: f64,
    /// Samples whose forward solve converged.
    pub forward_converged: usize,
    /// Samples in the batch.
    pub samples: usize,
    /// Largest relative residual of the reference's adjoint solve.
    pub reference_adjoint_residual: Option<f64>,
    /// Per mode (in [`QualityConfig::modes`] order): cosine with the reference gradient.
    pub cosine: Vec<f64>,
    /// Per mode: ‖g_mode‖ / ‖g_reference‖.
    pub norm_ratio: Vec<f64>,
    /// Per mode: samples whose SHINE estimate fell back to `∇L`.
    pub fallbacks: Vec<usize>,
}

/// One mode over all batches.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModeQuality {
    /// The backward mode.
    pub mode: String,
    /// Median cosine over the batches.
    pub cosine_median: f64,
    /// Mean cosine.
    pub cosine_mean: f64,
    /// Smallest cosine.
    pub cosine_min: f64,
    /// Median norm ratio.
    pub norm_ratio_median: f64,
    /// Fallbacks over all batches.
    pub fallbacks: usize,
}

/// The result of [`gradient_quality`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QualityReport {
    /// The settings.
    pub config: QualityConfig,
    /// Per batch.
    pub batches: Vec<BatchQuality>,
    /// Per mode, summarised over the batches.
    pub modes: Vec<ModeQuality>,
}

/// Compares each mode's gradient of the whole network (every parameter of `model`) with the
/// reference's on `config.batches` batches of `set`; `model` is in training mode (on an
/// autodiff device). `observe` sees each batch as it is done.
pub fn gradient_quality(
    model: &Mdeq,
    set: &ImageSet,
    batcher: &ImageBatcher,
    device: &Device,
    config: &QualityConfig,
    observe: &mut dyn FnMut(&BatchQuality),
) -> Result<QualityReport, TrainError> {
    let parse = |text: &str| {
        text.parse::<BackwardMode>()
            .map_err(|e| TrainError::config("mode", text.to_string(), e.to_string()))
    };
    let reference = parse(&config.reference)?;
    let modes = config
        .modes
        .iter()
        .map(|m| parse(m))
        .collect::<Result<Vec<_>, _>>()?;
    let layer = |mode: BackwardMode| {
        DeqConfig::new(
            SolverConfig::new(SolverKind::broyden_with(
                config.memory.unwrap_or(config.forward_iters),
                config.steps,
            ))
            .with_max_iter(config.forward_iters)
            .with_tol(config.tol),
        )
        .with_backward(mode)
        .init()
    };
    let reference_layer = layer(reference)?;
    let layers = modes
        .into_iter()
        .map(layer)
        .collect::<Result<Vec<_>, _>>()?;
    let loader = DataLoaderBuilder::new(batcher.clone())
        .batch_size(config.batch_size)
        .shuffle(config.seed)
        .set_device(device.clone())
        .build(ImageDataset::new(set.clone(), config.seed));
    let loss_fn = CrossEntropyLossConfig::new().init(device);
    let mut batches = Vec::new();
    for (index, batch) in loader.iter().take(config.batches).enumerate() {
        let batch = batch.map_err(|e| TrainError::loading(set, e))?;
        let gradient = |deq| -> Result<_, TrainError> {
            // The same dropout masks for every mode.
            device.seed(config.seed.wrapping_add(1 + index as u64));
            let out = model.forward(batch.images.clone(), MdeqMode::Equilibrium(deq))?;
            let grads = GradientsParams::from_grads(
                loss_fn.forward(out.logits, batch.labels.clone()).backward(),
                model,
            );
            Ok((
                gradient_values(model, &grads),
                out.deq.expect("equilibrium mode"),
            ))
        };
        let (g_ref, ref_out) = gradient(&reference_layer)?;
        let mut quality = BatchQuality {
            batch: index,
            forward_max_residual: ref_out.stats.max_rel_residual(),
            forward_converged: ref_out.stats.count(SolveStatus::Converged),
            samples: ref_out.stats.samples.len(),
            reference_adjoint_residual: ref_out
                .backward
                .get()
                .and_then(|b| b.adjoint)
                .map(|a| a.max_rel_residual()),
            cosine: Vec::new(),
            norm_ratio: Vec::new(),
            fallbacks: Vec::new(),
        };
        for deq in &layers {
            let (g, out) = gradient(deq)?;
            quality.cosine.push(cosine(&g, &g_ref));
            quality.norm_ratio.push(norm(&g) / norm(&g_ref));
            quality
                .fallbacks
                .push(out.backward.get().map_or(0, |b| b.fallback_count()));
        }
        observe(&quality);
        batches.push(quality);
    }
    let modes = config
        .modes
        .iter()
        .enumerate()
        .map(|(m, mode)| {
            let mut cosines: Vec<f64> = batches.iter().map(|b| b.cosine[m]).collect();
            let mut ratios: Vec<f64> = batches.iter().map(|b| b.norm_ratio[m]).collect();
            ModeQuality {
                mode: mode.clone(),
                cosine_mean: cosines.iter().sum::<f64>() / cosines.len().max(1) as f64,
                cosine_min: cosines.iter().copied().fold(f64::INFINITY, f64::min),
                cosine_median: median(&mut cosines).unwrap_or(f64::NAN),
                norm_ratio_median: median(&mut ratios).unwrap_or(f64::NAN),
                fallbacks: batches.iter().map(|b| b.fallbacks[m]).sum(),
            }
        })
        .collect();
    Ok(QualityReport {
        config: config.clone(),
        batches,
        modes,
    })
}

fn norm(a: &[f64]) -> f64 {
    a.iter().map(|x| x * x).sum::<f64>().sqrt()
}

fn cosine(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum::<f64>() / (norm(a) * norm(b))
}
