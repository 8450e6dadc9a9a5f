//! Training of the MDEQ classifier: settings, the loop, evaluation, checkpoints, metrics.
mod checkpoint;
mod config;
mod error;
mod evaluate;
mod fault;
mod metrics;
mod run;

pub use checkpoint::{
    CHECKPOINT_FORMAT, CheckpointState, EpochTotals, KEEP_CHECKPOINTS, checkpoint_dir,
    checkpoint_parameters, config_differences, list_checkpoints, load_model, load_optimizer,
    parameter_values, read_state, resolve_checkpoint, save_checkpoint,
};
pub use config::{DEFAULT_SOLVER_MEMORY, TrainConfig};
pub use error::TrainError;
pub use evaluate::{EvalResult, evaluate};
pub use fault::{FaultConfig, FaultKind, Faulty};
pub use metrics::{EpochRecord, FailureCounts, MetricsLine, MetricsLog, StepRecord, read_metrics};
pub use run::{RunData, RunEvent, RunOptions, RunSummary, load_run_data, optimizer, train};
