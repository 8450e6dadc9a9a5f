#![warn(missing_docs)]
//! # deq-models
//!
//! Deep equilibrium models on top of [`deq_core`]:
//!
//! - [`mdeq`]: the multiscale MDEQ classifier (presets `tiny`, `large` for CIFAR-10 and `small`
//!   for 28×28 grey images), faithful to the reference architecture;
//! - [`DenseDeq`]: a small fully-connected DEQ classifier, which doubles as the example of
//!   plugging a Burn module in as `f`.
//!
//! ```
//! use burn::tensor::{Device, Distribution, Tensor};
//! use deq_core::{BackwardMode, DeqConfig};
//! use deq_models::DenseDeqConfig;
//!
//! let device = Device::default().autodiff();
//! let model = DenseDeqConfig::new(8, 32, 3).init(&device);
//! let deq = DeqConfig::broyden(BackwardMode::shine()).init().unwrap();
//! let x = Tensor::<2>::random([5, 8], Distribution::Normal(0.0, 1.0), &device);
//! let out = model.forward(&deq, x).unwrap();
//! assert_eq!(out.logits.dims(), [5, 3]);
//! assert!(out.deq.stats.all_converged());
//! let grads = out.logits.sum().backward();
//! assert!(model.inner.weight.val().grad(&grads).is_some());
//! ```

mod dense;
mod error;
pub mod mdeq;
pub mod norm;
mod params;

pub use dense::{DenseDeq, DenseDeqConfig, DenseDeqOutput};
pub use error::ModelError;
pub use mdeq::{Mdeq, MdeqConfig, MdeqMode, MdeqOutput};
pub use params::{float_tensors, gradient_values, materialize_params, trainable_params};
