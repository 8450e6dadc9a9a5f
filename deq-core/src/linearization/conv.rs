//! The input gradient of a 2-D convolution with a fixed kernel.
use burn::tensor::Tensor;
use burn::tensor::module::conv_transpose2d;
use burn::tensor::ops::ConvTransposeOptions;

use crate::backward::op::input_gradient_by_conv;

/// The input gradient of an undilated, ungrouped `conv2d(x, weight, bias, options)` (any bias)
/// with respect to `x`, for inputs of one spatial size and any number of output gradients.
///
/// A stride-1, undilated, ungrouped convolution with "same" padding (`k / 2` for an odd `k × k`
/// kernel) takes the gradient as a forward convolution with the flipped, transposed kernel,
/// prepared once, where [`crate::conv2d_same`] does (more input than output channels, or any
/// channels on flex);
/// every other convolution takes Burn's transposed convolution, with the output padding that
/// restores the input size.
#[derive(Clone, Debug)]
pub struct Conv2dVjp {
    kernel: Tensor<4>,
    route: Route,
}

#[derive(Clone, Debug)]
enum Route {
    /// [`crate::conv2d_same`]`(grad, kernel)` with the flipped, transposed kernel.
    Forward,
    /// `conv_transpose2d(grad, weight)`.
    Transposed(ConvTransposeOptions<2>),
}

impl Conv2dVjp {
    /// For `conv2d(x, weight, _, ConvOptions::new(stride, padding, [1, 1], 1))`: `weight`
    /// `[out, in, kH, kW]`, the same `padding` on both sides of each dimension, `input_size`
    /// the input's `[H, W]`.
    pub fn new(
        weight: Tensor<4>,
        stride: [usize; 2],
        padding: [usize; 2],
        input_size: [usize; 2],
    ) -> Self {
        let [channels_out, channels_in, kernel_h, kernel_w] = weight.dims();
        let kernel = [kernel_h, kernel_w];
        let same = kernel_h == kernel_w
            && kernel_h % 2 == 1
            && stride == [1, 1]
            && padding == [kernel_h / 2, kernel_w / 2];
        if same && input_gradient_by_conv(channels_in, channels_out, &weight.device()) {
            return Self {
                kernel: weight.swap_dims(0, 1).flip([2, 3]),
                route: Route::Forward,
            };
        }
        // The transposed convolution's output is `(H' − 1) s − 2p + k`; the rows the forward
        // convolution's stride skipped at the end come back as output padding.
        let padding_out = std::array::from_fn(|d| {
            (input_size[d] + 2 * padding[d]).saturating_sub(kernel[d]) % stride[d]
        });
        Self {
            kernel: weight,
            route: Route::Transposed(ConvTransposeOptions::new(
                stride,
                padding,
                padding_out,
                [1, 1],
                1,
            )),
        }
    }

    /// `∂L/∂x` (`[batch, in, H, W]`) from `grad = ∂L/∂y` (`[batch, out, H', W']`).
    pub fn backward(&self, grad: Tensor<4>) -> Tensor<4> {
        match &self.route {
            Route::Forward => crate::conv2d_same(grad, self.kernel.clone()),
            Route::Transposed(options) => {
                conv_transpose2d(grad, self.kernel.clone(), None, options.clone())
            }
        }
    }
}
