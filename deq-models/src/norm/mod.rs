//! Normalisation and regularisation pieces of the MDEQ.
mod batch_norm;
mod variational_dropout;
mod weight_norm;

pub use batch_norm::{BatchNorm2d, BatchNorm2dConfig};
pub use variational_dropout::{VariationalDropout, VariationalDropoutConfig};
pub(crate) use weight_norm::conv_same;
pub use weight_norm::{WeightNormConv2d, WeightNormConv2dConfig};
