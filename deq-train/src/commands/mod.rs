//! The subcommands.
mod bench;
mod crosscheck;
mod demo;
mod eval;
mod plot;
mod quality;
mod toy;
mod train;

pub use bench::{BenchArgs, bench};
pub use crosscheck::{CrossCheckArgs, crosscheck};
pub use demo::{DemoArgs, demo};
pub use eval::{EvalArgs, eval};
pub use plot::{PlotArgs, plot};
pub use quality::{QualityArgs, quality};
pub use toy::toy;
pub use train::{TrainArgs, train};
