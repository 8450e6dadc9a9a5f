//! Cost of the Broyden bookkeeping per iteration next to the cost of evaluating f.
//!
//! `cargo run --release -p deq-core --example broyden_overhead -- [batch] [dim] [memory] [iters]`
//! Uses an elementwise f (so the solver's own work dominates) and reports, per iteration, the
//! median time of the Broyden loop and of one evaluation of f.
use std::time::Instant;

use burn::tensor::{Distribution, Tensor};
use deq_core::{SolverConfig, SolverKind};

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse().expect("whole numbers"))
        .collect();
    let get = |i: usize, d: usize| args.get(i).copied().unwrap_or(d);
    let (batch, dim, memory, iters) = (get(0, 32), get(1, 30720), get(2, 30), get(3, 20));
    let device = deq_core::device::cpu();
    let x = Tensor::<2>::random([batch, dim], Distribution::Normal(0.0, 1.0), &device);
    let f = |z: Tensor<2>| (z * 0.9 + x.clone()).tanh();
    let config = SolverConfig::new(SolverKind::broyden(memory))
        .with_max_iter(iters)
        .with_tol(1e-30);
    let mut per_iter = Vec::new();
    let mut per_f = Vec::new();
    for _ in 0..5 {
        let z0 = Tensor::<2>::zeros([batch, dim], &device);
        let started = Instant::now();
        let mut map = |z: Tensor<2>| f(z);
        let result = config.solve(&mut map, z0.clone(), iters).unwrap();
        let _ = result.z.into_data();
        per_iter.push(started.elapsed().as_secs_f64() / (iters + 1) as f64);
        let started = Instant::now();
        for _ in 0..iters {
            let _ = f(z0.clone()).into_data();
        }
        per_f.push(started.elapsed().as_secs_f64() / iters as f64);
    }
    let (it, fe) = (median(per_iter), median(per_f));
    println!(
        "batch {batch}, dim {dim}, memory {memory}, {iters} iterations: {:.2} ms per Broyden iteration, {:.2} ms per f evaluation, bookkeeping {:.2} ms",
        it * 1e3,
        fe * 1e3,
        (it - fe) * 1e3
    );
}
