//! The subcommands.
mod bench;
mod crosscheck;
mod demo;
mod eval;
mod plot;
mod toy;
mod train;

pub use bench::{BenchArgs, bench};
pub use crosscheck::{CrossCheckArgs, crosscheck};
pub use demo::{DemoArgs, demo};
pub use eval::{EvalArgs, eval};
pub use plot::{PlotArgs, plot};
pub use toy::toy;
pub use train::{TrainArgs, train};
