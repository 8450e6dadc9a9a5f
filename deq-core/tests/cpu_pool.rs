//! `join_cpu_pool`: the calling thread becomes the global pool's thread, parallel work runs on
//! it, and the host kernels give the same bits as on a pool of their own. One test in its own
//! binary: the global pool is built once per process.
mod common;

use std::thread;

use burn::tensor::Tensor;
use common::*;
use deq_core::{SolverConfig, SolverKind, StopMode, conv2d_same, join_cpu_pool};

/// A Broyden solve of `z ↦ tanh(conv(z) + x)` in `f32` on flex: the direct convolution and
/// Broyden's product and step kernels, all on Rayon's pool. Returns `z*` and the iterations.
fn solve() -> (Vec<f32>, usize) {
    let (batch, channels, side) = (3, 4, 6);
    let dim = channels * side * side;
    let mut rng = Rng::new(7);
    let scale = 0.6 / (9.0 * channels as f64).sqrt();
    let weight: Vec<f64> = rng.normals(channels * channels * 9);
    let weight = f32s(
        weight.iter().map(|w| w * scale).collect(),
        [channels, channels, 3, 3],
    );
    let x = f32s(rng.normals(batch * dim), [batch, dim]);
    let mut map = |z: Tensor<2>| {
        let image = z.reshape([batch, channels, side, side]);
        (conv2d_same(image, weight.clone()).reshape([batch, dim]) + x.clone()).tanh()
    };
    let config = SolverConfig::new(SolverKind::broyden(12))
        .with_tol(1e-5)
        .with_stop(StopMode::Relative)
        .with_max_iter(60);
    let result = config
        .solve(&mut map, f32s(vec![0.0; batch * dim], [batch, dim]), 60)
        .expect("a valid solve");
    assert!(result.stats.all_converged(), "{:?}", result.stats);
    let iterations = result.stats.samples.iter().map(|s| s.iterations).sum();
    let z = result
        .z
        .into_data()
        .try_to_vec::<f32>()
        .expect("f32 iterates");
    (z, iterations)
}

#[test]
fn the_calling_thread_runs_the_pools_work() {
    // Before: on a pool of its own (the route without `join_cpu_pool`: handed to a pool thread).
    let other = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .expect("a local pool");
    let (on_other_pool, iterations) = other.install(solve);

    let me = thread::current().id();
    assert_eq!(join_cpu_pool(Some(1)), Ok(1));
    assert_eq!(rayon::current_thread_index(), Some(0));
    assert_eq!(rayon::current_num_threads(), 1);
    // A scope and a parallel iterator run here, not on a thread of their own.
    assert_eq!(rayon::scope(|_| thread::current().id()), me);
    let ran_on: Vec<_> = {
        use rayon::prelude::*;
        (0..8)
            .into_par_iter()
            .map(|_| thread::current().id())
            .collect()
    };
    assert!(ran_on.iter().all(|&id| id == me), "{ran_on:?}");

    // The same solve, now on the calling thread: the same bits.
    let (here, iterations_here) = solve();
    assert_eq!(iterations_here, iterations);
    assert!(
        here.iter()
            .zip(&on_other_pool)
            .all(|(a, b)| a.to_bits() == b.to_bits()),
        "the solve on the calling thread differs from the one on a pool of its own"
    );

    // The pool exists now: a second call says so instead of building another.
    let again = join_cpu_pool(Some(2)).expect_err("the global pool is built once");
    assert!(again.to_string().contains("Rayon's global pool"), "{again}");
}
