//! Rayon's global pool with the calling thread in it: where Burn's CPU backend (flex) and this
//! crate's host kernels run their work.
//!
//! Flex runs its large operations, and this crate runs its host kernels (the direct
//! convolution and its gradients, Broyden's products, steps and row copies), on Rayon's global
//! pool. By default the thread that drives a model (usually `main`) is not in that pool: each
//! such call hands its work to a pool thread and sleeps until it is done, two context switches
//! per call even at one thread. A Broyden iteration makes several such calls besides those of
//! f, and on a virtual machine a wake-up costs tens of microseconds. [`join_cpu_pool`] builds the
//! global pool with the calling thread as one of its threads: at one thread the work then runs
//! where it is called, and with more the caller works beside the others instead of waiting.
//! `docs/RESULTS.md`, "The caller in Rayon's pool", has the measurements.

use thiserror::Error;

/// Why [`join_cpu_pool`] could not build the pool.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[error("could not put the calling thread in Rayon's global pool: {reason}")]
pub struct CpuPoolError {
    /// Rayon's message (for instance: the global pool was already built, perhaps implicitly by a
    /// parallel operation run before this call).
    pub reason: String,
}

/// Builds Rayon's global pool with `threads` threads (`None`: Rayon's default, which reads
/// `RAYON_NUM_THREADS` and otherwise takes the number of CPUs), the calling thread one of them.
/// Returns the pool's number of threads.
///
/// Call it once, first thing, on the thread that will run the model (the pool can be built
/// only once per process, and any parallel operation builds it implicitly). That thread then
/// counts as one of the `threads`. It works for the pool only while it runs Rayon work itself:
///
/// - at one thread, work handed to the pool from *another* thread (a Burn operation large
///   enough to run in parallel, called from a data-loading thread, say) waits until the calling
///   thread next runs a parallel operation. If the calling thread is blocked waiting for that
///   other thread, neither moves. This crate's own types never do that; with two or more
///   threads the other pool threads take such work.
/// - the calling thread must outlive all use of the pool.
///
/// # Errors
/// When Rayon cannot build the pool, typically because the global pool exists already.
pub fn join_cpu_pool(threads: Option<usize>) -> Result<usize, CpuPoolError> {
    let builder = rayon::ThreadPoolBuilder::new().use_current_thread();
    let builder = match threads {
        Some(threads) => builder.num_threads(threads),
        None => builder,
    };
    builder.build_global().map_err(|e| CpuPoolError {
        reason: e.to_string(),
    })?;
    Ok(rayon::current_num_threads())
}
