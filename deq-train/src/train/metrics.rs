//! The metrics log: one JSON object per line (`metrics.jsonl`), a `step` record per optimiser
//! step and an `epoch` record per evaluation.
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::TrainError;
use crate::fsio::write_atomic;

/// One optimiser step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepRecord {
    /// Epoch (0-based).
    pub epoch: usize,
    /// Global step (1-based).
    pub step: usize,
    /// `pretrain` (unrolled) or `deq`.
    pub phase: String,
    /// Mean cross-entropy of the batch (`null` in the file when it was not finite; such a
    /// step is `skipped`).
    #[serde(deserialize_with = "null_as_nan")]
    pub loss: f64,
    /// Accuracy on the batch.
    pub accuracy: f64,
    /// Learning rate used.
    pub lr: f64,
    /// Mean forward solver iterations per sample (0 in pretraining).
    pub forward_iters: f64,
    /// Largest finite relative residual of the batch's forward solve (0 in pretraining).
    pub max_residual: f64,
    /// Samples whose forward solve converged.
    pub converged: usize,
    /// Samples whose forward solve diverged or went non-finite.
    pub diverged: usize,
    /// Batch size.
    pub batch: usize,
    /// Wall time of the forward pass, ms.
    pub forward_ms: f64,
    /// Wall time of the backward pass, ms.
    pub backward_ms: f64,
    /// Samples whose SHINE estimate fell back to the Jacobian-free direction.
    pub fallbacks: usize,
    /// The optimiser step was skipped: the loss or a gradient was not finite, and the
    /// parameters were left as they were.
    #[serde(default)]
    pub skipped: bool,
}

/// What went wrong numerically over a span of training (an epoch, a run). In the log and the
/// run summary these are flat fields of the record.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailureCounts {
    /// Steps skipped because the loss or a gradient was not finite (parameters untouched).
    #[serde(default, alias = "skipped")]
    pub skipped_steps: usize,
    /// Training samples whose forward solve diverged or went non-finite.
    #[serde(default, alias = "diverged")]
    pub diverged_samples: usize,
    /// Training samples whose SHINE estimate fell back to `∇L`.
    #[serde(default)]
    pub fallbacks: usize,
}

impl FailureCounts {
    /// Adds one step's counts.
    pub fn add(&mut self, step: &StepRecord) {
        self.skipped_steps += usize::from(step.skipped);
        self.diverged_samples += step.diverged;
        self.fallbacks += step.fallbacks;
    }
}

/// JSON has no NaN: `serde_json` writes a non-finite loss as `null`; read it back as NaN.
fn null_as_nan<'de, D: serde::Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
}

/// One evaluation on the test split, at the end of an epoch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochRecord {
    /// Epoch (0-based).
    pub epoch: usize,
    /// Global step at the end of the epoch.
    pub step: usize,
    /// Mean training loss over the epoch.
    #[serde(deserialize_with = "null_as_nan")]
    pub train_loss: f64,
    /// Training accuracy over the epoch (with dropout and augmentation).
    pub train_accuracy: f64,
    /// Test loss.
    #[serde(deserialize_with = "null_as_nan")]
    pub test_loss: f64,
    /// Test accuracy.
    pub test_accuracy: f64,
    /// Mean forward iterations on the test split.
    pub test_forward_iters: f64,
    /// Fraction of test samples whose forward solve converged.
    pub test_converged: f64,
    /// Median backward time of the epoch's steps, ms.
    pub median_backward_ms: f64,
    /// Training time so far (excluding evaluation), s.
    pub elapsed_s: f64,
    /// The epoch's skipped steps, diverged samples and SHINE fallbacks.
    #[serde(flatten)]
    pub failures: FailureCounts,
}

/// A line of the log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum MetricsLine {
    /// A step.
    Step(StepRecord),
    /// An epoch.
    Epoch(EpochRecord),
}

impl MetricsLine {
    /// The global step the line belongs to.
    pub fn step(&self) -> usize {
        match self {
            Self::Step(s) => s.step,
            Self::Epoch(e) => e.step,
        }
    }
}

/// Appends lines to `metrics.jsonl`, flushing each.
#[derive(Debug)]
pub struct MetricsLog {
    path: PathBuf,
    file: std::fs::File,
}

impl MetricsLog {
    /// Opens the log of run folder `run` for appending, first dropping the lines after step
    /// `keep_until` (a resumed run replays those steps). `keep_until = 0` starts a new log.
    pub fn open(run: &Path, keep_until: usize) -> Result<Self, TrainError> {
        let path = run.join("metrics.jsonl");
        let kept: Vec<MetricsLine> = if keep_until == 0 {
            Vec::new()
        } else {
            read_metrics(&path)?
                .into_iter()
                .filter(|l| l.step() <= keep_until)
                .collect()
        };
        let mut text = String::new();
        for line in &kept {
            text.push_str(&serde_json::to_string(line).expect("metrics serialise"));
            text.push('\n');
        }
        write_atomic(&path, text.as_bytes()).map_err(|e| TrainError::io(&path, e))?;
        let file = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .map_err(|e| TrainError::io(&path, e))?;
        Ok(Self { path, file })
    }

    /// Appends one line.
    pub fn write(&mut self, line: &MetricsLine) -> Result<(), TrainError> {
        let mut text = serde_json::to_string(line).expect("metrics serialise");
        text.push('\n');
        self.file
            .write_all(text.as_bytes())
            .and_then(|_| self.file.flush())
            .map_err(|e| TrainError::io(&self.path, e))
    }
}

/// Reads a metrics log. A last line cut short by a kill is ignored; any other bad line is an
/// error naming the file and line.
pub fn read_metrics(path: &Path) -> Result<Vec<MetricsLine>, TrainError> {
    let text = std::fs::read_to_string(path).map_err(|e| TrainError::io(path, e))?;
    let complete = text.ends_with('\n');
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::with_capacity(lines.len());
    for (i, line) in lines.iter().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str(line) {
            Ok(parsed) => out.push(parsed),
            Err(_) if i + 1 == lines.len() && !complete => break,
            Err(e) => {
                return Err(TrainError::ConfigFile {
                    path: path.to_path_buf(),
                    problem: format!("line {}: {e}", i + 1),
                });
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::EpochTotals;

    #[test]
    fn failure_counts_are_flat_fields_and_read_the_older_names() {
        let record = EpochRecord {
            epoch: 0,
            step: 10,
            train_loss: 0.5,
            train_accuracy: 0.8,
            test_loss: 0.6,
            test_accuracy: 0.75,
            test_forward_iters: 12.0,
            test_converged: 1.0,
            median_backward_ms: 20.0,
            elapsed_s: 3.0,
            failures: FailureCounts {
                skipped_steps: 1,
                diverged_samples: 4,
                fallbacks: 2,
            },
        };
        let line = serde_json::to_value(MetricsLine::Epoch(record.clone())).unwrap();
        assert_eq!(line["skipped_steps"], 1);
        assert_eq!(line["diverged_samples"], 4);
        assert_eq!(line["fallbacks"], 2);
        let back: MetricsLine = serde_json::from_value(line).unwrap();
        assert_eq!(back, MetricsLine::Epoch(record));

        // Checkpoints written before the counts were grouped used `skipped` and `diverged`;
        // older ones had no counts at all.
        let totals: EpochTotals = serde_json::from_str(
            r#"{"loss_sum": 1.5, "correct": 3, "seen": 4, "skipped": 1, "diverged": 2, "fallbacks": 5}"#,
        )
        .unwrap();
        assert_eq!(
            totals.failures,
            FailureCounts {
                skipped_steps: 1,
                diverged_samples: 2,
                fallbacks: 5
            }
        );
        let totals: EpochTotals =
            serde_json::from_str(r#"{"loss_sum": 1.5, "correct": 3, "seen": 4}"#).unwrap();
        assert_eq!(totals.failures, FailureCounts::default());
    }
}
