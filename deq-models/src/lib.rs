#![warn(missing_docs)]
//! # deq-models
//!
//! Deep equilibrium models on top of [`deq_core`]. For now: [`DenseDeq`], a small
//! fully-connected DEQ classifier (injection → equilibrium layer → head), which doubles as the
//! example of plugging a Burn module in as `f`. The multiscale MDEQ follows.

mod dense;

pub use dense::{DenseDeq, DenseDeqConfig, DenseDeqOutput};
