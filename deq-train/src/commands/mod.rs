//! The subcommands.
mod eval;
mod plot;
mod toy;
mod train;

pub use eval::{EvalArgs, eval};
pub use plot::{PlotArgs, plot};
pub use toy::toy;
pub use train::{TrainArgs, train};
