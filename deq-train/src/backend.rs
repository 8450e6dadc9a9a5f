//! Backend selection by name for the command line: see [`deq_core::device`].
pub use deq_core::device::{compiled_backends, cpu, describe, device, devices};
