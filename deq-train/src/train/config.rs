//! The settings of a training run (TOML file, command-line overrides, written to the run folder).
use std::path::{Path, PathBuf};

use deq_core::{BackwardMode, DeqConfig, SolverConfig, SolverKind, StepPrecision};
use deq_models::MdeqConfig;
use serde::{Deserialize, Serialize};

use super::TrainError;
use super::fault::FaultConfig;
use crate::data::{Augment, DatasetKind};

/// The default memory of the forward solver (rank-one factors of Broyden's inverse estimate;
/// with
/// `solver = "anderson"`, Anderson's history length): 12.
///
/// Measured on the main job (`docs/RESULTS.md`, "Broyden memory 12 by default"), against
/// memory 30 (the default before, which kept every factor of an 18-iteration solve):
/// - three seeds gave the same test accuracy within their spread (82.50 % against 82.25 % on
///   average; single runs 81.85–83.05 %);
/// - SHINE's gradient has the same cosine with the implicit one at the training budget;
/// - 1.3 % more forward iterations per step, and fewer samples reach the tolerance within the
///   budget (training solves 86.6–99.4 % against 91.5–99.7 %, test solves 97.45–99.95 %
///   against 99.85–100 %);
/// - a SHINE training step's peak memory at forward budget 32 is 1.05× its peak at budget 8
///   (1.30× with memory 30), because SHINE's matrix holds at most this many factors.
pub const DEFAULT_SOLVER_MEMORY: usize = 12;

/// Everything that determines a training run. Field names are the TOML keys (and, with `-`
/// for `_`, the command-line options). Defaults: the small MDEQ on the bundled Fashion-MNIST
/// subset with SHINE backward — the run `deq-train` starts with no arguments.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {
    /// `fashion-mnist`, `mnist` or `cifar10`.
    pub dataset: DatasetKind,
    /// Folder (IDX or CIFAR-10 binary) or archive (CIFAR-10 JPEG); `None`: the bundled
    /// Fashion-MNIST subset.
    pub data_dir: Option<PathBuf>,
    /// Present grey 28×28 images as 3×32×32 (zero-padded, grey repeated), so CIFAR-shaped
    /// models (`tiny`, `large`) train on (Fashion-)MNIST.
    pub rgb32: bool,
    /// Model preset: `small` (28×28 grey), `tiny` or `large` (3×32×32).
    pub model: String,
    /// Architecture fields that override the preset named by `model` (a TOML table with
    /// the keys of `MdeqConfig`, e.g. `channels = [16, 16]`).
    pub mdeq: Option<toml::Table>,
    /// Backward mode, e.g. `shine`, `shine:fallback=1.8`, `shine:refine=5`, `implicit`, `jfb`,
    /// `phantom:k=5,tau=0.5`, `unrolled`.
    pub backward: String,
    /// Forward solver: `broyden`, `anderson` or `fixed-point`.
    pub solver: String,
    /// Memory of the Broyden / Anderson solver (default [`DEFAULT_SOLVER_MEMORY`]).
    pub solver_memory: usize,
    /// How Broyden stores its steps: `full` (default) or `half` (`f16`, half the bytes; see
    /// [`StepPrecision`]).
    pub solver_steps: StepPrecision,
    /// Forward iteration budget during training.
    pub forward_iters: usize,
    /// Forward iteration budget in evaluation.
    pub eval_iters: usize,
    /// Relative-residual tolerance of the forward solve.
    pub tol: f64,
    /// Optimiser steps of unrolled pretraining (f applied `pretrain_layers` times from zero)
    /// before the equilibrium training starts.
    pub pretrain_steps: usize,
    /// Passes over the training set.
    pub epochs: usize,
    /// Training batch size.
    pub batch_size: usize,
    /// Evaluation batch size.
    pub eval_batch_size: usize,
    /// Peak learning rate of Adam (cosine decay to 0 over the run, stepped every iteration).
    pub lr: f64,
    /// L2 weight decay of Adam.
    pub weight_decay: f64,
    /// Clip the gradient's global norm to this value (0: no clipping).
    pub grad_clip: f64,
    /// Random crop (padding 4) and horizontal flip; `None`: on for CIFAR-10, off otherwise.
    pub augment: Option<bool>,
    /// Use only N training images, a fixed random sample (0: all).
    pub train_limit: usize,
    /// Use only N test images, a fixed random sample (0: all).
    pub test_limit: usize,
    /// Seed of the initialisation, the data order, augmentation and dropout.
    pub seed: u64,
    /// `flex` (CPU), `wgpu` or `cuda`, as compiled in.
    pub backend: String,
    /// Also write a checkpoint every N steps (0: only at the end of each epoch).
    pub checkpoint_every: usize,
    /// Data-parallel devices of the backend (Burn's multi-device gradients: each device
    /// computes the gradient of its share of the batch, the optimiser sums them). With
    /// BatchNorm (the injection transform) or dropout the result differs from one device,
    /// because their statistics and masks are per share.
    pub devices: usize,
    /// Data-loading threads (0: load in the training thread). With threads, Burn's loader
    /// splits the data among them, so batches are composed differently and the run is not
    /// reproducible step for step; exact resumption needs 0 (the default).
    pub workers: usize,
    /// Stop with an error after this many consecutive steps whose loss or gradient was not
    /// finite (each such step is skipped and logged; the parameters are left as they were).
    pub max_skipped_steps: usize,
    /// Faults injected into f on chosen steps (reliability tests; see [`FaultConfig`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub faults: Option<FaultConfig>,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            dataset: DatasetKind::FashionMnist,
            data_dir: None,
            rgb32: false,
            model: "small".into(),
            mdeq: None,
            backward: "shine".into(),
            solver: "broyden".into(),
            solver_memory: DEFAULT_SOLVER_MEMORY,
            solver_steps: StepPrecision::Full,
            forward_iters: 18,
            eval_iters: 30,
            tol: 1e-3,
            pretrain_steps: 200,
            epochs: 4,
            batch_size: 32,
            eval_batch_size: 200,
            lr: 2e-3,
            weight_decay: 0.0,
            grad_clip: 0.0,
            augment: None,
            train_limit: 0,
            test_limit: 0,
            seed: 0,
            backend: "flex".into(),
            checkpoint_every: 0,
            devices: 1,
            workers: 0,
            max_skipped_steps: 20,
            faults: None,
        }
    }
}

impl TrainConfig {
    /// Reads a TOML file; unknown keys and wrong types are errors naming the file and key.
    pub fn from_toml_file(path: &Path) -> Result<Self, TrainError> {
        let text = std::fs::read_to_string(path).map_err(|e| TrainError::io(path, e))?;
        Self::from_toml_str(&text, path)
    }

    /// Parses TOML text; `path` names its origin in errors. Like [`TrainConfig::from_toml_file`],
    /// it does not check the values: call [`TrainConfig::validate`].
    pub fn from_toml_str(text: &str, path: &Path) -> Result<Self, TrainError> {
        toml::from_str(text).map_err(|e| TrainError::ConfigFile {
            path: path.to_path_buf(),
            problem: e.to_string().trim_end().to_string(),
        })
    }

    /// The configuration as TOML text.
    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("a TrainConfig always serialises")
    }

    /// The model architecture: the preset `model` with the fields of `mdeq` overridden.
    pub fn model_config(&self) -> Result<MdeqConfig, TrainError> {
        let preset = MdeqConfig::preset(&self.model)?;
        let Some(overrides) = &self.mdeq else {
            return Ok(preset);
        };
        let mut table = match toml::Value::try_from(&preset) {
            Ok(toml::Value::Table(table)) => table,
            _ => unreachable!("an MdeqConfig serialises to a table"),
        };
        let known = [
            "input_channels",
            "channels",
            "head_channels",
            "final_channels",
            "classes",
            "groups",
            "expansion",
            "dropout",
            "downsample_times",
            "injection_transform",
            "pretrain_layers",
            "init_std",
            "stem_norm",
        ];
        for (key, value) in overrides {
            if !known.contains(&key.as_str()) {
                return Err(TrainError::config(
                    "mdeq",
                    key,
                    format!(
                        "unknown architecture field (expected one of {})",
                        known.join(", ")
                    ),
                ));
            }
            table.insert(key.clone(), value.clone());
        }
        toml::Value::Table(table)
            .try_into()
            .map_err(|e: toml::de::Error| {
                TrainError::config(
                    "mdeq",
                    toml::Value::Table(overrides.clone()),
                    e.message().to_string(),
                )
            })
    }

    /// The parsed backward mode.
    pub fn backward_mode(&self) -> Result<BackwardMode, TrainError> {
        self.backward
            .parse()
            .map_err(|e: deq_core::ParseModeError| {
                TrainError::config("backward", &self.backward, e.to_string())
            })
    }

    /// The forward solver.
    pub fn solver_kind(&self) -> Result<SolverKind, TrainError> {
        match self.solver.as_str() {
            "broyden" => Ok(SolverKind::broyden_with(
                self.solver_memory,
                self.solver_steps,
            )),
            "anderson" => Ok(SolverKind::anderson(self.solver_memory)),
            "fixed-point" | "fixed_point" => Ok(SolverKind::fixed_point()),
            other => Err(TrainError::config(
                "solver",
                other,
                "expected broyden, anderson or fixed-point",
            )),
        }
    }

    /// The DEQ layer's settings.
    pub fn deq_config(&self) -> Result<DeqConfig, TrainError> {
        Ok(DeqConfig::new(
            SolverConfig::new(self.solver_kind()?)
                .with_max_iter(self.forward_iters)
                .with_eval_max_iter(Some(self.eval_iters))
                .with_tol(self.tol),
        )
        .with_backward(self.backward_mode()?))
    }

    /// The training augmentation.
    pub fn augmentation(&self) -> Augment {
        if self.augment.unwrap_or(self.dataset == DatasetKind::Cifar10) {
            Augment {
                crop_padding: 4,
                flip: true,
            }
        } else {
            Augment::NONE
        }
    }

    /// Checks every setting; the error names the first bad one.
    pub fn validate(&self) -> Result<(), TrainError> {
        for (field, value) in [
            ("epochs", self.epochs),
            ("batch_size", self.batch_size),
            ("eval_batch_size", self.eval_batch_size),
            ("forward_iters", self.forward_iters),
            ("eval_iters", self.eval_iters),
            ("devices", self.devices),
            ("max_skipped_steps", self.max_skipped_steps),
        ] {
            if value == 0 {
                return Err(TrainError::config(field, value, "must be at least 1"));
            }
        }
        if self.devices > self.batch_size {
            return Err(TrainError::config(
                "devices",
                self.devices,
                format!(
                    "must not exceed batch_size ({}): each device needs a share of every batch",
                    self.batch_size
                ),
            ));
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return Err(TrainError::config(
                "lr",
                self.lr,
                "must be a finite number > 0",
            ));
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return Err(TrainError::config(
                "weight_decay",
                self.weight_decay,
                "must be a finite number ≥ 0",
            ));
        }
        if !(self.grad_clip.is_finite() && self.grad_clip >= 0.0) {
            return Err(TrainError::config(
                "grad_clip",
                self.grad_clip,
                "must be a finite number ≥ 0 (0 turns clipping off)",
            ));
        }
        if !(self.tol.is_finite() && self.tol > 0.0) {
            return Err(TrainError::config(
                "tol",
                self.tol,
                "must be a finite number > 0",
            ));
        }
        let model = self.model_config()?;
        model.validate()?;
        if self.rgb32 && self.dataset == DatasetKind::Cifar10 {
            return Err(TrainError::config(
                "rgb32",
                true,
                "only applies to the 28×28 grey datasets (fashion-mnist, mnist)",
            ));
        }
        self.deq_config()?.init()?;
        if let Some(faults) = &self.faults {
            faults.validate()?;
        }
        Ok(())
    }
}
