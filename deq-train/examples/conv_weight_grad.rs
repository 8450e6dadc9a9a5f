//! The gradients of the MDEQ's convolutions (batch 32), timed alone:
//!
//! 1. kernel gradient (kernel tracked, `loss.backward()` and the read-back): Burn's `conv2d`
//!    (a convolution with the batch as channels and the output gradient as kernel) against
//!    `deq_core::conv2d_same` (on flex in `f32` with kernels larger than 1×1, the
//!    register-blocked loop of `direct_kernel_gradient`; otherwise shifted matrix products
//!    where `shifted_products_pay`), for the shapes of `tiny` and `small`;
//! 2. input gradient of stride-1 convolutions with no more input than output channels:
//!    Burn's transposed convolution against the forward convolution with the flipped,
//!    transposed kernel (the route `conv2d_same` takes with more input than output channels);
//! 3. stride-2 convolutions (Burn's routes only): forward, kernel and input gradients.
//!
//! `RAYON_NUM_THREADS=1 cargo run --release -p deq-train --example conv_weight_grad`
//! Medians (`deq_train::bench::Spread`) of 10 runs.
use std::time::Instant;

use burn::tensor::module::{conv_transpose2d, conv2d};
use burn::tensor::ops::{ConvOptions, ConvTransposeOptions};
use burn::tensor::{Distribution, Tensor};
use deq_train::bench::Spread;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn normal(shape: [usize; 4]) -> Tensor<4> {
    Tensor::<4>::random(
        shape,
        Distribution::Normal(0.0, 1.0),
        &deq_core::device::cpu(),
    )
}

/// Milliseconds of `loss.backward()` to the kernel, and the kernel gradient.
fn kernel_gradient(
    x: &Tensor<4>,
    w: &Tensor<4>,
    dy: &Tensor<4>,
    stride: usize,
    ours: bool,
) -> (f64, Tensor<4>) {
    let p = w.dims()[2] / 2;
    let wa = w.clone().autodiff().require_grad();
    let xa = x.clone().autodiff();
    let y = if ours {
        deq_core::conv2d_same(xa, wa.clone())
    } else {
        conv2d(
            xa,
            wa.clone(),
            None,
            ConvOptions::new([stride, stride], [p, p], [1, 1], 1),
        )
    };
    let started = Instant::now();
    let grads = (y * dy.clone().autodiff()).sum().backward();
    let dw = wa.grad(&grads).expect("the kernel is tracked");
    let _ = dw.clone().into_data();
    (started.elapsed().as_secs_f64() * 1e3, dw)
}

/// Milliseconds of `loss.backward()` to the input.
fn input_gradient(x: &Tensor<4>, w: &Tensor<4>, dy: &Tensor<4>, stride: usize) -> f64 {
    let p = w.dims()[2] / 2;
    let xa = x.clone().autodiff().require_grad();
    let y = conv2d(
        xa.clone(),
        w.clone().autodiff(),
        None,
        ConvOptions::new([stride, stride], [p, p], [1, 1], 1),
    );
    let started = Instant::now();
    let grads = (y * dy.clone().autodiff()).sum().backward();
    let _ = xa.grad(&grads).expect("the input is tracked").into_data();
    started.elapsed().as_secs_f64() * 1e3
}

fn forward(x: &Tensor<4>, w: &Tensor<4>, stride: usize) -> f64 {
    let p = w.dims()[2] / 2;
    let started = Instant::now();
    let options = ConvOptions::new([stride, stride], [p, p], [1, 1], 1);
    let _ = conv2d(x.clone(), w.clone(), None, options).into_data();
    started.elapsed().as_secs_f64() * 1e3
}

fn main() {
    println!("kernel gradient, stride 1:");
    for (cin, cout, hw, k) in [
        (24, 120, 32, 3),
        (120, 24, 32, 3),
        (24, 120, 16, 3),
        (120, 24, 16, 3),
        (8, 8, 32, 3),
        (16, 16, 16, 3),
        (3, 24, 32, 3),
        (24, 24, 32, 3),
        (24, 8, 32, 1),
        (8, 32, 32, 1),
        (24, 32, 32, 1),
        (16, 64, 16, 1),
        (64, 200, 16, 1),
        (24, 24, 16, 1),
        (8, 40, 14, 3),
        (40, 8, 14, 3),
        (16, 80, 7, 3),
        (80, 16, 7, 3),
    ] {
        let (x, w, dy) = (
            normal([32, cin, hw, hw]),
            normal([cout, cin, k, k]),
            normal([32, cout, hw, hw]),
        );
        let (mut f, mut burn, mut ours, mut diff) = (Vec::new(), Vec::new(), Vec::new(), 0.0f32);
        for _ in 0..10 {
            f.push(forward(&x, &w, 1));
            let (a_ms, a) = kernel_gradient(&x, &w, &dy, 1, false);
            let (b_ms, b) = kernel_gradient(&x, &w, &dy, 1, true);
            burn.push(a_ms);
            ours.push(b_ms);
            let scale = a.clone().abs().max().into_scalar::<f32>();
            diff = diff.max((a - b).abs().max().into_scalar::<f32>() / scale);
        }
        println!(
            "  {k}x{k} {cin} -> {cout}, {hw}x{hw}: forward {:.2} ms; Burn {:.2} ms, conv2d_same {:.2} ms (largest relative difference {diff:.1e})",
            Spread::of(f).median,
            Spread::of(burn).median,
            Spread::of(ours).median
        );
    }

    println!("input gradient, stride 1, no more input than output channels:");
    for (cin, cout, hw, k) in [
        (24, 24, 32, 3),
        (8, 8, 32, 3),
        (16, 16, 16, 3),
        (24, 120, 32, 3),
        (8, 32, 32, 1),
        (16, 64, 16, 1),
        (24, 24, 16, 1),
        (8, 8, 14, 3),
        (16, 16, 7, 3),
    ] {
        let p = k / 2;
        let (w, dy) = (normal([cout, cin, k, k]), normal([32, cout, hw, hw]));
        let (mut transposed, mut by_conv) = (Vec::new(), Vec::new());
        for _ in 0..10 {
            let started = Instant::now();
            let options = ConvTransposeOptions::new([1, 1], [p, p], [0, 0], [1, 1], 1);
            let _ = conv_transpose2d(dy.clone(), w.clone(), None, options).into_data();
            transposed.push(started.elapsed().as_secs_f64() * 1e3);
            let started = Instant::now();
            let flipped = w.clone().swap_dims(0, 1).flip([2, 3]);
            let options = ConvOptions::new([1, 1], [p, p], [1, 1], 1);
            let _ = conv2d(dy.clone(), flipped, None, options).into_data();
            by_conv.push(started.elapsed().as_secs_f64() * 1e3);
        }
        println!(
            "  {k}x{k} {cin} -> {cout}, {hw}x{hw}: transposed convolution {:.2} ms, forward convolution {:.2} ms",
            Spread::of(transposed).median,
            Spread::of(by_conv).median
        );
    }

    println!("stride 2 (Burn's routes):");
    for (cin, cout, hw) in [(24, 24, 32), (32, 64, 32), (8, 16, 14)] {
        let (x, w, dy) = (
            normal([32, cin, hw, hw]),
            normal([cout, cin, 3, 3]),
            normal([32, cout, hw / 2, hw / 2]),
        );
        let (mut f, mut kernel, mut input) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..10 {
            f.push(forward(&x, &w, 2));
            kernel.push(kernel_gradient(&x, &w, &dy, 2, false).0);
            input.push(input_gradient(&x, &w, &dy, 2));
        }
        println!(
            "  3x3 {cin} -> {cout}, {hw}x{hw}: forward {:.2} ms, kernel gradient {:.2} ms, input gradient {:.2} ms",
            Spread::of(f).median,
            Spread::of(kernel).median,
            Spread::of(input).median
        );
    }
}
