#![warn(missing_docs)]
//! # deq-models
//!
//! Deep equilibrium models on top of [`deq_core`]. For now: [`DenseDeq`], a small
//! fully-connected DEQ classifier (injection → equilibrium layer → head), which doubles as the
//! example of plugging a Burn module in as `f`. The multiscale MDEQ follows.
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

pub use dense::{DenseDeq, DenseDeqConfig, DenseDeqOutput};
