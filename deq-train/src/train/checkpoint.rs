//! Checkpoints: model, optimiser and progress, written atomically as one folder.
//!
//! A checkpoint is a folder `checkpoints/step-NNNNNNNN/` holding `model.bpk` and `optim.bpk`
//! (Burn's burnpack record format) and `state.json` (progress, the run's settings, the data
//! normalisation). It is assembled under a temporary name and renamed into place only when
//! every file is on disk, so a kill at any moment leaves the previous checkpoints intact and
//! never a partial one under a `step-*` name.
use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::optim::ModuleOptimizer;
use burn::store::ModuleRecord;
use deq_models::Mdeq;
use serde::{Deserialize, Serialize};

use super::metrics::FailureCounts;
use super::{TrainConfig, TrainError};
use crate::fsio::{sync_dir, write_atomic};

/// Version of the checkpoint layout; a checkpoint of another version is refused.
pub const CHECKPOINT_FORMAT: u32 = 1;

/// Checkpoints kept in a run folder (older ones are removed).
pub const KEEP_CHECKPOINTS: usize = 2;

/// Progress and context saved with a checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckpointState {
    /// [`CHECKPOINT_FORMAT`] at writing time.
    pub format: u32,
    /// Version of `deq-train` that wrote it.
    pub version: String,
    /// The run's settings.
    pub config: TrainConfig,
    /// Epoch to continue (0-based).
    pub epoch: usize,
    /// Batches of that epoch already trained.
    pub batches_done: usize,
    /// Optimiser steps taken in total.
    pub step: usize,
    /// Per-channel mean used to normalise the inputs.
    pub mean: Vec<f64>,
    /// Per-channel standard deviation used to normalise the inputs.
    pub std: Vec<f64>,
    /// Training time so far, in seconds.
    pub elapsed_s: f64,
    /// Running totals of the epoch in progress, so its record is the same after a resume.
    pub epoch_totals: EpochTotals,
}

/// Sums over the steps of the epoch in progress.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct EpochTotals {
    /// Sum of per-sample losses.
    pub loss_sum: f64,
    /// Correct predictions.
    pub correct: usize,
    /// Samples seen.
    pub seen: usize,
    /// Skipped steps, diverged samples and SHINE fallbacks so far.
    #[serde(flatten)]
    pub failures: FailureCounts,
}

/// The folder of the checkpoint after `step` steps.
pub fn checkpoint_dir(run: &Path, step: usize) -> PathBuf {
    run.join("checkpoints").join(format!("step-{step:08}"))
}

fn ckpt_err(path: &Path, problem: impl Into<String>) -> TrainError {
    TrainError::Checkpoint {
        path: path.to_path_buf(),
        problem: problem.into(),
    }
}

/// Writes a checkpoint of `model`, `optim` and `state` into `run/checkpoints/` and removes
/// all but the newest [`KEEP_CHECKPOINTS`]. Returns its folder.
pub fn save_checkpoint(
    run: &Path,
    model: &Mdeq,
    optim: &ModuleOptimizer,
    state: &CheckpointState,
) -> Result<PathBuf, TrainError> {
    let dir = checkpoint_dir(run, state.step);
    if dir.is_dir() {
        return Ok(dir);
    }
    let parent = run.join("checkpoints");
    std::fs::create_dir_all(&parent).map_err(|e| TrainError::io(&parent, e))?;
    let tmp = parent.join(format!(
        ".partial-step-{:08}-{}",
        state.step,
        std::process::id()
    ));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| TrainError::io(&tmp, e))?;
    }
    std::fs::create_dir(&tmp).map_err(|e| TrainError::io(&tmp, e))?;
    let model_path = tmp.join("model.bpk");
    // Burn's batch-norm running statistics (`RunningState`) keep their newest update aside
    // until the next read; a record holds only the value before it. `valid()` folds the update
    // in (x / 1, exactly), so that the checkpoint holds the statistics the run goes on with.
    let _ = model.valid();
    model
        .clone()
        .into_record()
        .save(&model_path)
        .map_err(|e| ckpt_err(&model_path, e.to_string()))?;
    let optim_path = tmp.join("optim.bpk");
    optim
        .save(&optim_path)
        .map_err(|e| ckpt_err(&optim_path, e.to_string()))?;
    let state_path = tmp.join("state.json");
    let json = serde_json::to_vec_pretty(state).expect("the state always serialises");
    write_atomic(&state_path, &json).map_err(|e| TrainError::io(&state_path, e))?;
    std::fs::rename(&tmp, &dir).map_err(|e| TrainError::io(&dir, e))?;
    sync_dir(&dir).map_err(|e| TrainError::io(&parent, e))?;
    for old in list_checkpoints(run)?
        .into_iter()
        .rev()
        .skip(KEEP_CHECKPOINTS)
    {
        std::fs::remove_dir_all(&old).map_err(|e| TrainError::io(&old, e))?;
    }
    Ok(dir)
}

/// The checkpoint `path` names: `path` itself when it is a checkpoint folder (with
/// `state.json`), else the newest checkpoint of the run folder `path`.
pub fn resolve_checkpoint(path: &Path) -> Result<PathBuf, TrainError> {
    if path.join("state.json").is_file() {
        return Ok(path.to_path_buf());
    }
    list_checkpoints(path)?.pop().ok_or_else(|| {
        ckpt_err(
            path,
            "is neither a checkpoint folder (with state.json) nor a run folder with checkpoints",
        )
    })
}

/// The checkpoint folders of a run, oldest first. Folders being written (temporary names) are
/// not listed.
pub fn list_checkpoints(run: &Path) -> Result<Vec<PathBuf>, TrainError> {
    let parent = run.join("checkpoints");
    if !parent.is_dir() {
        return Ok(Vec::new());
    }
    let mut found: Vec<(usize, PathBuf)> = std::fs::read_dir(&parent)
        .map_err(|e| TrainError::io(&parent, e))?
        .filter_map(|entry| {
            let path = entry.ok()?.path();
            let step = path
                .file_name()?
                .to_str()?
                .strip_prefix("step-")?
                .parse()
                .ok()?;
            path.is_dir().then_some((step, path))
        })
        .collect();
    found.sort();
    Ok(found.into_iter().map(|(_, p)| p).collect())
}

/// Reads `state.json` of a checkpoint folder and checks its format version.
pub fn read_state(dir: &Path) -> Result<CheckpointState, TrainError> {
    let path = dir.join("state.json");
    let text = std::fs::read(&path).map_err(|e| TrainError::io(&path, e))?;
    let value: serde_json::Value = serde_json::from_slice(&text)
        .map_err(|e| ckpt_err(&path, format!("not valid JSON: {e}")))?;
    let format = value.get("format").and_then(|f| f.as_u64());
    if format != Some(CHECKPOINT_FORMAT as u64) {
        return Err(ckpt_err(
            &path,
            format!(
                "checkpoint format {} is not the format {CHECKPOINT_FORMAT} this version of deq-train reads",
                format.map_or("(missing)".to_string(), |f| f.to_string())
            ),
        ));
    }
    serde_json::from_value(value).map_err(|e| ckpt_err(&path, format!("unexpected content: {e}")))
}

/// Loads a checkpoint's parameters into `model` (built from the checkpoint's own config).
/// A file that is truncated or holds parameters of another shape is an error naming it.
pub fn load_model(dir: &Path, model: Mdeq) -> Result<Mdeq, TrainError> {
    let path = dir.join("model.bpk");
    if !path.is_file() {
        return Err(ckpt_err(&path, "missing"));
    }
    let record = ModuleRecord::load(&path).map_err(|e| ckpt_err(&path, e.to_string()))?;
    model
        .try_load_record(record)
        .map_err(|e| ckpt_err(&path, format!("does not fit the model: {e}")))
}

/// Loads a checkpoint's optimiser state into `optim`.
pub fn load_optimizer(dir: &Path, optim: ModuleOptimizer) -> Result<ModuleOptimizer, TrainError> {
    let path = dir.join("optim.bpk");
    if !path.is_file() {
        return Err(ckpt_err(&path, "missing"));
    }
    optim
        .load(&path)
        .map_err(|e| ckpt_err(&path, e.to_string()))
}

/// Names the settings in which `saved` and `current` differ, ignoring those that do not change
/// the result (`checkpoint_every`, `data_dir`).
pub fn config_differences(saved: &TrainConfig, current: &TrainConfig) -> Vec<String> {
    let normalise = |c: &TrainConfig| {
        let mut c = c.clone();
        c.checkpoint_every = 0;
        c.data_dir = None;
        toml::Value::try_from(c).expect("a TrainConfig always serialises")
    };
    let (a, b) = (normalise(saved), normalise(current));
    let (Some(a), Some(b)) = (a.as_table(), b.as_table()) else {
        return Vec::new();
    };
    let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .filter(|k| a.get(*k) != b.get(*k))
        .map(|k| {
            let show = |v: Option<&toml::Value>| v.map_or("(unset)".to_string(), |v| v.to_string());
            format!(
                "{k}: checkpoint {} vs now {}",
                show(a.get(k)),
                show(b.get(k))
            )
        })
        .collect()
}

/// The float tensors of a module (parameters and running statistics) by path, as `f32` values:
/// what "the same parameters" means when two runs are compared (the files also hold random
/// parameter ids, which differ between runs).
pub fn parameter_values(model: &Mdeq) -> Vec<(String, Vec<f32>)> {
    deq_models::float_tensors(model)
        .into_iter()
        .map(|(path, _, tensor)| {
            let values = tensor
                .into_data()
                .convert::<f32>()
                .try_to_vec::<f32>()
                .unwrap_or_default();
            (path, values)
        })
        .collect()
}

/// [`parameter_values`] of the model saved in a checkpoint folder.
pub fn checkpoint_parameters(dir: &Path) -> Result<Vec<(String, Vec<f32>)>, TrainError> {
    let state = read_state(dir)?;
    let device = crate::backend::device(&state.config.backend).map_err(TrainError::Backend)?;
    let model = load_model(dir, state.config.model_config()?.init(&device)?)?;
    Ok(parameter_values(&model))
}
