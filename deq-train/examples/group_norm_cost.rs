//! The GroupNorms of one evaluation of MDEQ `small`'s f (batch 32), input tracked as in a
//! vector-Jacobian product: `burn::nn::GroupNorm` against `deq_core::group_norm` (fused
//! backward), forward and backward times.
//!
//! `RAYON_NUM_THREADS=1 cargo run --release -p deq-train --example group_norm_cost`
//! Medians (`deq_train::bench::Spread`) of 20 repetitions; the two are measured twice,
//! alternately.
use std::time::Instant;

use burn::nn::GroupNormConfig;
use burn::tensor::{Distribution, Tensor};
use deq_train::bench::Spread;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let device = deq_core::device::cpu();
    // (shape, groups) of every GroupNorm in f: blocks (3 per branch), fusion, post-fusion.
    let norms = [
        ([32, 40, 14, 14], 4),
        ([32, 80, 7, 7], 4),
        ([32, 8, 14, 14], 4),
        ([32, 8, 14, 14], 4),
        ([32, 16, 7, 7], 4),
        ([32, 16, 7, 7], 4),
        ([32, 8, 7, 7], 4),
        ([32, 16, 7, 7], 4),
        ([32, 8, 14, 14], 2),
        ([32, 16, 7, 7], 2),
    ];
    for ours in [false, true, false, true] {
        let (mut forward, mut backward) = (Vec::new(), Vec::new());
        for _ in 0..20 {
            let (mut f, mut b) = (0.0, 0.0);
            for (shape, groups) in norms {
                let norm = GroupNormConfig::new(groups, shape[1]).init(&device);
                let normal = || Tensor::<4>::random(shape, Distribution::Normal(0.0, 1.0), &device);
                let x = normal().autodiff().require_grad();
                let weight = normal().autodiff();
                let started = Instant::now();
                let y = if ours {
                    deq_core::group_norm(
                        x.clone(),
                        groups,
                        norm.gamma.as_ref().map(|g| g.val()),
                        norm.beta.as_ref().map(|b| b.val()),
                        norm.epsilon,
                    )
                } else {
                    norm.forward(x.clone())
                };
                let _ = y.clone().without_autodiff().into_data();
                f += started.elapsed().as_secs_f64();
                let started = Instant::now();
                let grads = (y * weight).sum().backward();
                let _ = x.grad(&grads).expect("x is tracked").into_data();
                b += started.elapsed().as_secs_f64();
            }
            forward.push(f * 1e3);
            backward.push(b * 1e3);
        }
        println!(
            "{}: forward {:.2} ms, backward {:.2} ms",
            if ours {
                "deq_core::group_norm"
            } else {
                "burn::nn::GroupNorm "
            },
            Spread::of(forward).median,
            Spread::of(backward).median
        );
    }
}
