//! The kernel gradient of a stride-1 "same" convolution as `k²` shifted matrix products.
//!
//! For `y = conv2d(x, W)` with stride 1 and padding `p = k / 2`,
//! `∂L/∂W[o, i, a, b] = Σ_n Σ_(r,c) g[n, o, r, c] · x_pad[n, i, r + a, c + b]` with `g = ∂L/∂y`.
//! With the rows of `g` widened by zeros to the padded width `w + 2p` and both images
//! flattened, the window of `x_pad` that meets `g` for the tap `(a, b)` starts at
//! `a (w + 2p) + b` and has the same flat layout as `g`: every tap is one batched product
//! `[out, h (w + 2p)] × [h (w + 2p), in]` of views, with no im2col buffer. The zero columns
//! cost `2p / w` of the work.
use burn::tensor::Tensor;
use burn::tensor::ops::PadMode;

/// Whether [`kernel_gradient`] beats Burn's kernel gradient on the CPU for images `width`
/// pixels wide and a `kernel × kernel` kernel: when its wasted work (`(k − 1) / width`) is at
/// most 1/8. Measured on flex (`docs/RESULTS.md`): 1.7–2× faster on 32×32 and 1×1 kernels,
/// on par at 14×14 with 3×3, slower at 7×7.
pub(crate) fn shifted_products_pay(width: usize, kernel: usize) -> bool {
    8 * (kernel - 1) <= width
}

/// `∂L/∂W` (`[out, in, k, k]`) of `conv2d(x, W)` with stride 1 and padding `k / 2` (odd `k`),
/// from `x` (`[batch, in, h, w]`) and `grad = ∂L/∂y` (`[batch, out, h, w]`).
pub(crate) fn kernel_gradient(x: Tensor<4>, grad: Tensor<4>, kernel: usize) -> Tensor<4> {
    let [batch, channels_in, height, width] = x.dims();
    let channels_out = grad.dims()[1];
    if kernel == 1 {
        let x = x
            .reshape([batch, channels_in, height * width])
            .swap_dims(1, 2);
        let grad = grad.reshape([batch, channels_out, height * width]);
        return grad
            .matmul(x)
            .sum_dim(0)
            .reshape([channels_out, channels_in, 1, 1]);
    }
    let p = kernel / 2;
    let row = width + 2 * p;
    let len = height * row;
    // One extra zero row at the bottom, so that the last tap's window stays inside the image.
    let rows = height + 2 * p + 1;
    let x = x
        .pad([(p, p + 1), (p, p)], PadMode::Constant(0.0))
        .reshape([batch, channels_in, rows * row]);
    let grad = grad
        .pad([(0, 0), (0, 2 * p)], PadMode::Constant(0.0))
        .reshape([batch, channels_out, len]);
    let taps = (0..kernel * kernel)
        .map(|tap| {
            let start = (tap / kernel) * row + tap % kernel;
            let window = x
                .clone()
                .slice([0..batch, 0..channels_in, start..start + len])
                .swap_dims(1, 2);
            grad.clone()
                .matmul(window)
                .sum_dim(0)
                .reshape([channels_out, channels_in, 1])
        })
        .collect();
    Tensor::cat(taps, 2).reshape([channels_out, channels_in, kernel, kernel])
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::module::conv2d;
    use burn::tensor::ops::ConvOptions;
    use burn::tensor::{DType, Distribution, TensorData};

    /// Against the kernel gradient of Burn's `conv2d`, in f64: 1×1, 3×3 and 5×5 kernels,
    /// non-square images, more input than output channels and fewer.
    #[test]
    fn shifted_products_equal_burns_kernel_gradient() {
        let device = crate::device::cpu();
        let random = |shape: [usize; 4]| {
            let values: Vec<f64> =
                Tensor::<4>::random(shape, Distribution::Normal(0.0, 1.0), &device)
                    .into_data()
                    .iter::<f64>()
                    .collect();
            Tensor::<4>::from_data(TensorData::new(values, shape), (&device, DType::F64))
        };
        for (cin, cout, k, h, w) in [
            (3, 5, 1, 4, 7),
            (4, 2, 3, 5, 9),
            (2, 6, 3, 8, 3),
            (3, 2, 5, 6, 7),
        ] {
            let (x, weight, g) = (
                random([2, cin, h, w]),
                random([cout, cin, k, k]),
                random([2, cout, h, w]),
            );
            let tracked = weight.autodiff().require_grad();
            let p = k / 2;
            let y = conv2d(
                x.clone().autodiff(),
                tracked.clone(),
                None,
                ConvOptions::new([1, 1], [p, p], [1, 1], 1),
            );
            let grads = (y * g.clone().autodiff()).sum().backward();
            let expected = tracked.grad(&grads).expect("the kernel is tracked");
            let ours = kernel_gradient(x, g, k);
            assert_eq!(ours.dims(), expected.dims());
            let scale = expected.clone().abs().max().into_scalar::<f64>();
            let err = (ours - expected).abs().max().into_scalar::<f64>() / scale;
            assert!(err < 1e-13, "{cin}->{cout}, k {k}, {h}x{w}: {err:e}");
        }
    }

    #[test]
    fn the_rule_follows_the_wasted_fraction() {
        assert!(shifted_products_pay(1, 1));
        assert!(shifted_products_pay(16, 3) && !shifted_products_pay(15, 3));
        assert!(shifted_products_pay(32, 5) && !shifted_products_pay(31, 5));
    }
}
