//! `deq-train`: data, training, evaluation, checkpoints and plots for deep equilibrium models.
//! The `deq-train` binary is the command-line front end; this library holds what it runs, so
//! that it can be tested and reused.
#![warn(missing_docs)]

pub mod backend;
pub mod bench;
pub mod crosscheck;
pub mod data;
pub mod fsio;
pub mod quality;
pub mod resident;
pub mod stats;
pub mod train;
