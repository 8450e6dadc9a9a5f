//! The input gradient of the MDEQ `small` convolutions: Burn's `conv2d` (a transposed
//! convolution) against `deq_core::conv2d_same` (a forward convolution when the kernel has more
//! input than output channels).
//!
//! `RAYON_NUM_THREADS=1 cargo run --release -p deq-train --example conv_backward`
//! Batch 32; medians of 20 runs; also the largest difference between the two input gradients.
use std::time::Instant;

use burn::tensor::module::conv2d;
use burn::tensor::ops::ConvOptions;
use burn::tensor::{Distribution, Tensor};
use deq_train::bench::Spread;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Milliseconds of `loss.backward()` through one convolution and the input gradient.
fn input_gradient(x: &Tensor<4>, w: &Tensor<4>, dy: &Tensor<4>, ours: bool) -> (f64, Vec<f32>) {
    let xa = x.clone().autodiff().require_grad();
    let y = if ours {
        deq_core::conv2d_same(xa.clone(), w.clone())
    } else {
        conv2d(
            xa.clone(),
            w.clone(),
            None,
            ConvOptions::new([1, 1], [1, 1], [1, 1], 1),
        )
    };
    let started = Instant::now();
    let grads = (y * dy.clone().autodiff()).sum().backward();
    let dx = xa.grad(&grads).expect("x is tracked").into_data();
    let ms = started.elapsed().as_secs_f64() * 1e3;
    (ms, dx.iter::<f32>().collect())
}

fn main() {
    let device = deq_core::device::cpu();
    for (cin, cout, hw) in [(8, 40, 14), (40, 8, 14), (16, 80, 7), (80, 16, 7)] {
        let normal =
            |shape: [usize; 4]| Tensor::<4>::random(shape, Distribution::Normal(0.0, 1.0), &device);
        let (x, w, dy) = (
            normal([32, cin, hw, hw]),
            normal([cout, cin, 3, 3]),
            normal([32, cout, hw, hw]),
        );
        let (mut forward, mut burn, mut ours) = (Vec::new(), Vec::new(), Vec::new());
        let mut diff = 0.0f32;
        for _ in 0..20 {
            let started = Instant::now();
            let _ = conv2d(
                x.clone(),
                w.clone(),
                None,
                ConvOptions::new([1, 1], [1, 1], [1, 1], 1),
            )
            .into_data();
            forward.push(started.elapsed().as_secs_f64() * 1e3);
            let (ms_burn, a) = input_gradient(&x, &w, &dy, false);
            let (ms_ours, b) = input_gradient(&x, &w, &dy, true);
            burn.push(ms_burn);
            ours.push(ms_ours);
            diff = a
                .iter()
                .zip(&b)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f32::max);
        }
        println!(
            "{cin} -> {cout} channels, {hw}x{hw}: forward {:.2} ms; input gradient: Burn's conv2d {:.2} ms, conv2d_same {:.2} ms (largest difference {diff:e})",
            Spread::of(forward).median,
            Spread::of(burn).median,
            Spread::of(ours).median
        );
    }
}
