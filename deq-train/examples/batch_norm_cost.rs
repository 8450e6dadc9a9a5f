//! The training-mode BatchNorms of MDEQ `tiny`'s stem and head (batch 32), input and affine
//! parameters tracked: `burn::tensor::module::batch_norm_train` against
//! `deq_core::batch_norm_train` (one node, fused backward), forward and backward times.
//!
//! `RAYON_NUM_THREADS=1 cargo run --release -p deq-train --example batch_norm_cost`
//! Medians (`deq_train::bench::Spread`) of 20 repetitions of all of them together; the two
//! are measured three times, alternately.
use std::time::Instant;

use burn::tensor::{Distribution, Tensor};
use deq_train::bench::Spread;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let device = deq_core::device::cpu().autodiff();
    // Stem (2), head bottlenecks at 32×32 and 16×16 (4 each), downsampling, final.
    let shapes = [
        [32, 24, 32, 32],
        [32, 24, 32, 32],
        [32, 8, 32, 32],
        [32, 8, 32, 32],
        [32, 32, 32, 32],
        [32, 32, 32, 32],
        [32, 16, 16, 16],
        [32, 16, 16, 16],
        [32, 64, 16, 16],
        [32, 64, 16, 16],
        [32, 64, 16, 16],
        [32, 200, 16, 16],
    ];
    let inputs: Vec<_> = shapes
        .iter()
        .map(|&shape| {
            let x = Tensor::<4>::random(shape, Distribution::Normal(0.5, 2.0), &device);
            let g = Tensor::<4>::random(shape, Distribution::Normal(0.0, 1.0), &device);
            (x, g)
        })
        .collect();
    for round in 0..3 {
        for fused in [false, true] {
            let (mut forward, mut backward) = (Vec::new(), Vec::new());
            for _ in 0..20 {
                let mut outputs = Vec::new();
                let mut params = Vec::new();
                let started = Instant::now();
                for (x, g) in &inputs {
                    let channels = x.dims()[1];
                    let x = x.clone().detach().require_grad();
                    let gamma = Tensor::<1>::ones([channels], &device).require_grad();
                    let beta = Tensor::<1>::zeros([channels], &device).require_grad();
                    let y = if fused {
                        deq_core::batch_norm_train(x.clone(), gamma.clone(), beta.clone(), 1e-5).0
                    } else {
                        burn::tensor::module::batch_norm_train(
                            x.clone(),
                            gamma.clone(),
                            beta.clone(),
                            1e-5,
                        )
                        .output
                    };
                    outputs.push((y * g.clone()).sum());
                    params.push((x, gamma));
                }
                let loss = Tensor::cat(outputs, 0).sum();
                let _ = loss.clone().into_data();
                forward.push(started.elapsed().as_secs_f64() * 1e3);
                let started = Instant::now();
                let grads = loss.backward();
                for (x, gamma) in &params {
                    let _ = x.grad(&grads).unwrap().into_data();
                    let _ = gamma.grad(&grads).unwrap().into_data();
                }
                backward.push(started.elapsed().as_secs_f64() * 1e3);
            }
            println!(
                "round {round}, {}: forward {:.2} ms, backward {:.2} ms",
                if fused {
                    "deq_core::batch_norm_train"
                } else {
                    "Burn's batch_norm_train"
                },
                Spread::of(forward).median,
                Spread::of(backward).median
            );
        }
    }
}
