//! Kernel gradient of stride-1 "same" 3×3 convolutions: Burn's (a convolution with the batch
//! as channels and the image as kernel) against shifted matrix products.
use std::time::Instant;

use burn::tensor::module::conv2d;
use burn::tensor::ops::ConvOptions;
use burn::tensor::{Distribution, Tensor};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn burn_grad(x: &Tensor<4>, w: &Tensor<4>, dy: &Tensor<4>) -> (f64, Tensor<4>) {
    let p = w.dims()[2] / 2;
    let wa = w.clone().autodiff().require_grad();
    let y = conv2d(
        x.clone().autodiff(),
        wa.clone(),
        None,
        ConvOptions::new([1, 1], [p, p], [1, 1], 1),
    );
    let started = Instant::now();
    let grads = (y * dy.clone().autodiff()).sum().backward();
    let dw = wa.grad(&grads).expect("tracked");
    let _ = dw.clone().into_data();
    (started.elapsed().as_secs_f64() * 1e3, dw)
}

fn shifted(x: &Tensor<4>, dy: &Tensor<4>, k: usize) -> (f64, Tensor<4>) {
    let started = Instant::now();
    let [b, cin, h, w] = x.dims();
    let [_, cout, _, _] = dy.dims();
    let p = k / 2;
    let wp = w + 2 * p;
    // x padded by p on every side plus one more bottom row so every shifted window fits.
    let xp = x.clone().pad(
        [(p, p + 1), (p, p)],
        burn::tensor::ops::PadMode::Constant(0.0),
    );
    let hp = h + 2 * p + 1;
    let xp = xp.reshape([b, cin, hp * wp]);
    // dy with its rows widened to the padded width (zeros in the extra columns).
    let dyp = dy
        .clone()
        .pad(
            [(0, 0), (0, 2 * p)],
            burn::tensor::ops::PadMode::Constant(0.0),
        )
        .reshape([b, cout, h * wp]);
    let len = h * wp;
    let mut taps = Vec::with_capacity(k * k);
    for ky in 0..k {
        for kx in 0..k {
            let off = ky * wp + kx;
            let window = xp
                .clone()
                .slice([0..b, 0..cin, off..off + len])
                .swap_dims(1, 2);
            let prod = dyp
                .clone()
                .matmul(window)
                .sum_dim(0)
                .reshape([cout, cin, 1]);
            taps.push(prod);
        }
    }
    let dw = Tensor::cat(taps, 2).reshape([cout, cin, k, k]);
    let _ = dw.clone().into_data();
    (started.elapsed().as_secs_f64() * 1e3, dw)
}

fn flat(x: &Tensor<4>, dy: &Tensor<4>, k: usize) -> (f64, Tensor<4>) {
    let started = Instant::now();
    let [b, cin, h, w] = x.dims();
    let [_, cout, _, _] = dy.dims();
    let p = k / 2;
    let (hp, wp) = (h + 2 * p, w + 2 * p);
    let per = hp * wp;
    let n = b * per;
    let tail = (k - 1) * wp + k - 1;
    use burn::tensor::ops::PadMode::Constant;
    let xp = x
        .clone()
        .pad([(p, p), (p, p)], Constant(0.0))
        .swap_dims(0, 1)
        .reshape([cin, n]);
    let xp = Tensor::cat(vec![xp, Tensor::zeros([cin, tail], &x.device())], 1);
    let dyp = dy
        .clone()
        .pad([(0, 2 * p), (0, 2 * p)], Constant(0.0))
        .swap_dims(0, 1)
        .reshape([cout, n]);
    let mut taps = Vec::with_capacity(k * k);
    for ky in 0..k {
        for kx in 0..k {
            let off = ky * wp + kx;
            let window = xp.clone().slice([0..cin, off..off + n]).transpose();
            taps.push(dyp.clone().matmul(window).reshape([cout, cin, 1]));
        }
    }
    let dw = Tensor::cat(taps, 2).reshape([cout, cin, k, k]);
    let _ = dw.clone().into_data();
    (started.elapsed().as_secs_f64() * 1e3, dw)
}

fn main() {
    let device = deq_core::device::cpu();
    for (cin, cout, hw, k) in [
        (24, 24, 32, 3),
        (8, 8, 32, 3),
        (16, 16, 16, 3),
        (8, 32, 32, 1),
        (16, 64, 16, 1),
        (24, 24, 16, 1),
        (8, 8, 14, 3),
        (16, 16, 7, 3),
        (24, 120, 32, 3),
    ] {
        let p = k / 2;
        let normal =
            |shape: [usize; 4]| Tensor::<4>::random(shape, Distribution::Normal(0.0, 1.0), &device);
        let (w, dy) = (normal([cout, cin, k, k]), normal([32, cout, hw, hw]));
        let (mut a, mut b) = (Vec::new(), Vec::new());
        for _ in 0..10 {
            let started = Instant::now();
            let _ = burn::tensor::module::conv_transpose2d(
                dy.clone(),
                w.clone(),
                None,
                burn::tensor::ops::ConvTransposeOptions::new([1, 1], [p, p], [0, 0], [1, 1], 1),
            )
            .into_data();
            a.push(started.elapsed().as_secs_f64() * 1e3);
            let started = Instant::now();
            let _ = conv2d(
                dy.clone(),
                w.clone().swap_dims(0, 1).flip([2, 3]),
                None,
                ConvOptions::new([1, 1], [p, p], [1, 1], 1),
            )
            .into_data();
            b.push(started.elapsed().as_secs_f64() * 1e3);
        }
        println!(
            "{k}x{k} {cin} -> {cout}, {hw}x{hw}: input gradient transposed {:.2} ms, forward {:.2} ms",
            median(a),
            median(b)
        );
    }
    if std::env::args().count() > 1 {
        stride_two();
        return;
    }
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
        (24, 16, 16, 1),
        (16, 64, 16, 1),
        (24, 64, 16, 1),
        (64, 200, 16, 1),
        (24, 24, 16, 1),
        (8, 40, 14, 3),
        (16, 80, 7, 3),
    ] {
        let normal =
            |shape: [usize; 4]| Tensor::<4>::random(shape, Distribution::Normal(0.0, 1.0), &device);
        let (x, w, dy) = (
            normal([32, cin, hw, hw]),
            normal([cout, cin, k, k]),
            normal([32, cout, hw, hw]),
        );
        let (mut forward, mut burn, mut ours) = (Vec::new(), Vec::new(), Vec::new());
        let mut diff = 0.0f32;
        for _ in 0..10 {
            let started = Instant::now();
            let _ = conv2d(
                x.clone(),
                w.clone(),
                None,
                ConvOptions::new([1, 1], [k / 2, k / 2], [1, 1], 1),
            )
            .into_data();
            forward.push(started.elapsed().as_secs_f64() * 1e3);
            let (a_ms, a) = burn_grad(&x, &w, &dy);
            let (b_ms, b) = shifted(&x, &dy, k);
            burn.push(a_ms);
            ours.push(b_ms);
            diff = (a.clone() - b).abs().max().into_scalar::<f32>()
                / a.abs().max().into_scalar::<f32>();
        }
        println!(
            "{k}x{k} {cin} -> {cout}, {hw}x{hw}: forward {:.2} ms; kernel gradient: Burn {:.2} ms, shifted {:.2} ms (rel diff {diff:e})",
            median(forward),
            median(burn),
            median(ours),
        );
    }
}

/// Stride-2 3×3 convolutions: forward, Burn's kernel and input gradients.
#[allow(dead_code)]
pub fn stride_two() {
    let device = deq_core::device::cpu();
    for (cin, cout, hw) in [(24, 24, 32), (32, 64, 32), (8, 16, 14)] {
        let normal =
            |shape: [usize; 4]| Tensor::<4>::random(shape, Distribution::Normal(0.0, 1.0), &device);
        let (x, w, dy) = (
            normal([32, cin, hw, hw]),
            normal([cout, cin, 3, 3]),
            normal([32, cout, hw / 2, hw / 2]),
        );
        let options = ConvOptions::new([2, 2], [1, 1], [1, 1], 1);
        let (mut f, mut kw, mut kx) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..10 {
            let started = Instant::now();
            let _ = conv2d(x.clone(), w.clone(), None, options.clone()).into_data();
            f.push(started.elapsed().as_secs_f64() * 1e3);
            let wa = w.clone().autodiff().require_grad();
            let y = conv2d(x.clone().autodiff(), wa.clone(), None, options.clone());
            let started = Instant::now();
            let g = (y * dy.clone().autodiff()).sum().backward();
            let _ = wa.grad(&g).unwrap().into_data();
            kw.push(started.elapsed().as_secs_f64() * 1e3);
            let xa = x.clone().autodiff().require_grad();
            let y = conv2d(xa.clone(), w.clone().autodiff(), None, options.clone());
            let started = Instant::now();
            let g = (y * dy.clone().autodiff()).sum().backward();
            let _ = xa.grad(&g).unwrap().into_data();
            kx.push(started.elapsed().as_secs_f64() * 1e3);
        }
        println!(
            "stride 2, 3x3 {cin} -> {cout}, {hw}x{hw}: forward {:.2} ms, kernel gradient {:.2} ms, input gradient {:.2} ms",
            median(f),
            median(kw),
            median(kx)
        );
    }
}
