//! The stride-1 "same" convolution computed directly on host memory (`f32`, NCHW), without
//! im2col.
//!
//! Burn's CPU convolution copies every input patch into a matrix (im2col) and multiplies it with
//! the kernel. For the MDEQ's convolutions (8 to 120 channels, 7×7 to 32×32 images) the copy
//! costs about as much as the product. Here each sample's input is copied once into a zero-padded
//! buffer whose rows are `W + 2p` wide. In that layout the input a kernel tap `(ky, kx)` sees
//! for output position `q = y (W + 2p) + x` is at `q + ky (W + 2p) + kx`: the same contiguous run
//! for every output pixel. So a block of output pixels is a sum over (input channel, tap) of
//! one vector load times a broadcast kernel weight, kept in registers for several output
//! channels at once (the two columns of the padded row are computed and dropped).
//!
//! The inner loop works on vectors of a [`Lanes`] type: AVX-512 or AVX2 + FMA registers (the
//! CPU picks at run time, [`Isa`]) or a portable array. The samples run in parallel on Rayon's
//! pool (the one Burn's CPU backend uses). The sums are in a different order from Burn's, so
//! results agree to rounding.
use rayon::prelude::*;

use super::lanes::Lanes;
#[cfg(target_arch = "x86_64")]
use super::lanes::x86;
use crate::isa::Isa;

/// The sizes of a convolution: `x` `[batch, channels_in, height, width]`, kernel
/// `[channels_out, channels_in, kernel, kernel]` (odd `kernel`, padding `kernel / 2`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ConvShape {
    /// Samples.
    pub batch: usize,
    /// Input channels.
    pub channels_in: usize,
    /// Output channels.
    pub channels_out: usize,
    /// Image height.
    pub height: usize,
    /// Image width.
    pub width: usize,
    /// Kernel size (odd).
    pub kernel: usize,
}

/// Writes the convolution of `x` (row-major `[batch, in, H, W]`) with `weight` (row-major
/// `[out, in, k, k]`) to `out` (row-major `[batch, out, H, W]`): stride 1, padding `k / 2` on
/// every side, no bias.
///
/// # Panics
/// When `kernel` is even or a slice's length differs from what the shape says.
pub(crate) fn conv2d_same(x: &[f32], weight: &[f32], shape: ConvShape, out: &mut [f32]) {
    conv2d_same_with(Isa::detect(), x, weight, shape, out)
}

/// [`conv2d_same`] with the loops compiled for `isa` (which the CPU must support).
fn conv2d_same_with(isa: Isa, x: &[f32], weight: &[f32], shape: ConvShape, out: &mut [f32]) {
    let ConvShape {
        batch,
        channels_in,
        channels_out,
        height,
        width,
        kernel,
    } = shape;
    assert!(kernel % 2 == 1, "conv2d_same: even kernel size {kernel}");
    let pixels = height * width;
    assert!(
        x.len() == batch * channels_in * pixels
            && weight.len() == channels_out * channels_in * kernel * kernel
            && out.len() == batch * channels_out * pixels,
        "conv2d_same: x {} / weight {} / out {} values for {shape:?}",
        x.len(),
        weight.len(),
        out.len()
    );
    if out.is_empty() {
        return;
    }
    if channels_in == 0 {
        // An empty sum.
        out.fill(0.0);
        return;
    }
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => {
            let plan = Plan::<8>::new(weight, shape, 2 * 16);
            // SAFETY: `Isa::detect` chose AVX-512 only where the CPU has it.
            run(&plan, x, out, |p, x, pad, o| unsafe {
                sample_avx512(p, x, pad, o)
            })
        }
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2Fma => {
            let plan = Plan::<4>::new(weight, shape, 3 * 8);
            // SAFETY: `Isa::detect` chose AVX2 + FMA only where the CPU has them.
            run(&plan, x, out, |p, x, pad, o| unsafe {
                sample_avx2_fma(p, x, pad, o)
            })
        }
        Isa::Portable => {
            let plan = Plan::<4>::new(weight, shape, 2 * 4);
            run(&plan, x, out, sample::<[f32; 4], 2, 4>)
        }
    }
}

/// The geometry of one convolution and its kernel, packed for blocks of `ROWS` output channels
/// and `block` output positions.
struct Plan<const ROWS: usize> {
    shape: ConvShape,
    /// Output positions per block.
    block: usize,
    /// Width of a padded row, `W + 2p`.
    padded_width: usize,
    /// Distance between two channels in the padded buffer.
    channel_stride: usize,
    /// Output positions computed per output channel (`H × padded_width`, rounded up to `block`).
    positions: usize,
    /// Offset of each kernel tap's input from the output position.
    offsets: Vec<usize>,
    /// Per output position, its index in the output image, or `u32::MAX` when dropped.
    destinations: Vec<u32>,
    /// `packed[((block · in + c) · taps + t) · ROWS + r]` = weight of output channel
    /// `block · ROWS + r`, input channel `c`, tap `t` (zero past the last output channel).
    packed: Vec<f32>,
}

impl<const ROWS: usize> Plan<ROWS> {
    fn new(weight: &[f32], shape: ConvShape, block: usize) -> Self {
        let ConvShape {
            channels_in,
            channels_out,
            height,
            width,
            kernel,
            ..
        } = shape;
        let pad = kernel / 2;
        let padded_width = width + 2 * pad;
        let positions = (height * padded_width).div_ceil(block) * block;
        // The last block's furthest tap reads `positions − 1 + 2p (W + 2p) + 2p`.
        let channel_stride = positions + 2 * pad * padded_width + 2 * pad;
        let offsets = (0..kernel)
            .flat_map(|ky| (0..kernel).map(move |kx| ky * padded_width + kx))
            .collect();
        let destinations = (0..positions)
            .map(|q| {
                let (y, x) = (q / padded_width, q % padded_width);
                if y < height && x < width {
                    (y * width + x) as u32
                } else {
                    u32::MAX
                }
            })
            .collect();
        let taps = kernel * kernel;
        let blocks = channels_out.div_ceil(ROWS);
        let mut packed = vec![0f32; blocks * channels_in * taps * ROWS];
        for o in 0..channels_out {
            let (block, r) = (o / ROWS, o % ROWS);
            for c in 0..channels_in {
                for t in 0..taps {
                    packed[((block * channels_in + c) * taps + t) * ROWS + r] =
                        weight[(o * channels_in + c) * taps + t];
                }
            }
        }
        Self {
            shape,
            block,
            padded_width,
            channel_stride,
            positions,
            offsets,
            destinations,
            packed,
        }
    }
}

/// Runs `one` on every sample: the input sample, a padded buffer kept across the samples of one
/// job, and the output sample.
fn run<const ROWS: usize>(
    plan: &Plan<ROWS>,
    x: &[f32],
    out: &mut [f32],
    one: impl Fn(&Plan<ROWS>, &[f32], &mut Vec<f32>, &mut [f32]) + Sync,
) {
    let ConvShape {
        channels_in,
        channels_out,
        height,
        width,
        ..
    } = plan.shape;
    let (size_in, size_out) = (channels_in * height * width, channels_out * height * width);
    if rayon::current_num_threads() <= 1 {
        // One job on the pool's thread, where Burn's own operations run.
        rayon::scope(|_| {
            let mut pad = Vec::new();
            for (x, out) in x.chunks(size_in).zip(out.chunks_mut(size_out)) {
                one(plan, x, &mut pad, out);
            }
        });
    } else {
        out.par_chunks_mut(size_out)
            .zip(x.par_chunks(size_in))
            .for_each_init(Vec::new, |pad, (out, x)| one(plan, x, pad, out));
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma,f16c")]
unsafe fn sample_avx512(plan: &Plan<8>, x: &[f32], pad: &mut Vec<f32>, out: &mut [f32]) {
    sample::<x86::Avx512, 2, 8>(plan, x, pad, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn sample_avx2_fma(plan: &Plan<4>, x: &[f32], pad: &mut Vec<f32>, out: &mut [f32]) {
    sample::<x86::Avx2, 3, 4>(plan, x, pad, out)
}

/// Most output positions a block holds (`VECS × WIDTH` for every variant above).
const MAX_BLOCK: usize = 32;

/// One sample: `x` `[in, H, W]` into the padded buffer, then every block of output positions
/// (`VECS` vectors) and output channels (`ROWS`), accumulated in registers.
#[inline(always)]
fn sample<V: Lanes, const VECS: usize, const ROWS: usize>(
    plan: &Plan<ROWS>,
    x: &[f32],
    pad: &mut Vec<f32>,
    out: &mut [f32],
) {
    let ConvShape {
        channels_in,
        channels_out,
        height,
        width,
        kernel,
        ..
    } = plan.shape;
    let (stride, padded_width, block) = (plan.channel_stride, plan.padded_width, plan.block);
    debug_assert_eq!(block, VECS * V::WIDTH);
    let p = kernel / 2;
    if pad.len() != channels_in * stride {
        // The border and the tail stay zero: later samples write the same interior positions.
        pad.clear();
        pad.resize(channels_in * stride, 0.0);
    }
    for c in 0..channels_in {
        for y in 0..height {
            let to = c * stride + (y + p) * padded_width + p;
            let from = (c * height + y) * width;
            pad[to..to + width].copy_from_slice(&x[from..from + width]);
        }
    }
    let taps = plan.offsets.len();
    let pixels = height * width;
    let mut values = [0f32; MAX_BLOCK];
    for q0 in (0..plan.positions).step_by(block) {
        let destinations = &plan.destinations[q0..q0 + block];
        for (index, weights) in plan
            .packed
            .chunks_exact(channels_in * taps * ROWS)
            .enumerate()
        {
            let mut acc = [[V::zero(); VECS]; ROWS];
            for (c, weights) in weights.chunks_exact(taps * ROWS).enumerate() {
                let input = &pad[c * stride + q0..];
                for (&offset, w) in plan.offsets.iter().zip(weights.chunks_exact(ROWS)) {
                    let run = &input[offset..offset + block];
                    let xs: [V; VECS] = std::array::from_fn(|v| V::load(&run[v * V::WIDTH..]));
                    for (acc, &w) in acc.iter_mut().zip(w) {
                        let w = V::splat(w);
                        for (acc, &x) in acc.iter_mut().zip(&xs) {
                            *acc = w.madd(x, *acc);
                        }
                    }
                }
            }
            let rows = ROWS.min(channels_out - index * ROWS);
            for (r, acc) in acc.iter().enumerate().take(rows) {
                for (v, lanes) in acc.iter().enumerate() {
                    lanes.store(&mut values[v * V::WIDTH..]);
                }
                let image = &mut out[(index * ROWS + r) * pixels..][..pixels];
                for (&d, &value) in destinations.iter().zip(&values) {
                    if d != u32::MAX {
                        image[d as usize] = value;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::isa::test_value as value;

    /// The convolution in f64, straight from the definition (zero outside the image).
    fn reference(x: &[f32], weight: &[f32], s: ConvShape) -> Vec<f64> {
        let (h, w, k) = (s.height as isize, s.width as isize, s.kernel as isize);
        let p = k / 2;
        let mut out = vec![0f64; s.batch * s.channels_out * s.height * s.width];
        for b in 0..s.batch {
            for o in 0..s.channels_out {
                for y in 0..h {
                    for xx in 0..w {
                        let mut sum = 0f64;
                        for c in 0..s.channels_in {
                            for ky in 0..k {
                                for kx in 0..k {
                                    let (iy, ix) = (y + ky - p, xx + kx - p);
                                    if iy < 0 || iy >= h || ix < 0 || ix >= w {
                                        continue;
                                    }
                                    let xi = ((b * s.channels_in + c) as isize * h + iy) * w + ix;
                                    let wi = ((o * s.channels_in + c) as isize * k + ky) * k + kx;
                                    sum += x[xi as usize] as f64 * weight[wi as usize] as f64;
                                }
                            }
                        }
                        out[((b * s.channels_out + o) as isize * h + y) as usize * s.width
                            + xx as usize] = sum;
                    }
                }
            }
        }
        out
    }

    /// Every variant this CPU runs, against the definition: 1×1, 3×3 and 5×5 kernels, output
    /// channels that do not fill a block of rows, images whose padded size is not a multiple of
    /// the block, one-pixel images, no input channels.
    #[test]
    fn every_variant_matches_the_definition() {
        let variants = Isa::supported();
        for (batch, channels_in, channels_out, height, width, kernel) in [
            (3, 8, 40, 14, 14, 3),
            (2, 5, 3, 7, 7, 3),
            (2, 16, 8, 7, 9, 1),
            (1, 3, 11, 6, 5, 5),
            (2, 2, 9, 1, 1, 3),
            (1, 1, 1, 4, 3, 1),
            (2, 0, 3, 4, 4, 3),
        ] {
            let shape = ConvShape {
                batch,
                channels_in,
                channels_out,
                height,
                width,
                kernel,
            };
            let x: Vec<f32> = (0..batch * channels_in * height * width)
                .map(|i| value(1, i))
                .collect();
            let weight: Vec<f32> = (0..channels_out * channels_in * kernel * kernel)
                .map(|i| value(2, i))
                .collect();
            let expected = reference(&x, &weight, shape);
            for &isa in &variants {
                let mut out = vec![f32::NAN; expected.len()];
                conv2d_same_with(isa, &x, &weight, shape, &mut out);
                for (i, (&got, &want)) in out.iter().zip(&expected).enumerate() {
                    assert!(
                        (got as f64 - want).abs() < 1e-4 * (1.0 + want.abs()),
                        "{isa:?} {shape:?}, entry {i}: {got} against {want}"
                    );
                }
            }
        }
    }
}
