//! The kernel gradient of a stride-1 "same" convolution computed directly on host memory
//! (`f32`, NCHW), as a register-blocked outer-product loop.
//!
//! For `y = conv2d(x, W)` with stride 1, padding `p = k / 2` and `g = ∂L/∂y`,
//! `∂L/∂W[o, c, t] = Σ_n Σ_q g[n, o, q] · x_pad[n, c, q + off(t)]`: with the image rows widened
//! to `W + 2p` (as in `direct_conv`), tap `t = (ky, kx)` reads the input at the output position
//! `q` plus `off(t) = ky (W + 2p) + kx`. The sum over `q` is the long one (a thousand positions
//! per sample on 32×32 images), so it runs in the innermost loop, with the products accumulated
//! in registers: a vector holds `L` channels of one operand at one position, and is multiplied
//! by `R` broadcast scalars of the other operand (one per (channel, tap) "stream"). Every
//! register lane belongs to one entry of `∂L/∂W`: no horizontal sums, and the registers carry
//! on from one sample to the next through a small accumulator.
//!
//! Two layouts, the choice by the work each does (with the vector channels rounded up to whole
//! registers and the streams to whole groups):
//! - output channels in the vectors: the output gradient is transposed to positions-major
//!   `[q][o]` and the padded input gives the streams, at offsets `+off(t)`;
//! - input channels in the vectors: the padded input is transposed to `[q'][c]`, and the output
//!   gradient, placed after a zero margin of `off(last tap)`, gives the streams at offsets
//!   `−off(t)`: `Σ_q g[o, q] x_pad[c, q + off(t)] = Σ_q' x_pad[c, q'] g[o, q' − off(t)]`.
//!
//! Samples run in parallel on Rayon's pool: one job per thread over consecutive samples, each
//! with its own accumulator, added in order at the end, so that the result depends on the
//! thread count only. The sums are in a different order from Burn's, so results agree to
//! rounding.
use rayon::prelude::*;

use super::direct_conv::ConvShape;
use super::lanes::Lanes;
#[cfg(target_arch = "x86_64")]
use super::lanes::x86;
use crate::isa::Isa;

/// Writes `∂L/∂W` (row-major `[out, in, k, k]`) of the convolution of `x` (row-major
/// `[batch, in, H, W]`) with stride 1 and padding `k / 2`, from `grad = ∂L/∂y` (row-major
/// `[batch, out, H, W]`).
///
/// # Panics
/// When `kernel` is even or a slice's length differs from what the shape says.
pub(crate) fn kernel_gradient(x: &[f32], grad: &[f32], shape: ConvShape, out: &mut [f32]) {
    kernel_gradient_with(Isa::detect(), x, grad, shape, out)
}

/// [`kernel_gradient`] with the loops compiled for `isa` (which the CPU must support).
fn kernel_gradient_with(isa: Isa, x: &[f32], grad: &[f32], shape: ConvShape, out: &mut [f32]) {
    let ConvShape {
        batch,
        channels_in,
        channels_out,
        height,
        width,
        kernel,
    } = shape;
    assert!(
        kernel % 2 == 1,
        "kernel_gradient: even kernel size {kernel}"
    );
    let pixels = height * width;
    assert!(
        x.len() == batch * channels_in * pixels
            && grad.len() == batch * channels_out * pixels
            && out.len() == channels_out * channels_in * kernel * kernel,
        "kernel_gradient: x {} / grad {} / out {} values for {shape:?}",
        x.len(),
        grad.len(),
        out.len()
    );
    if out.is_empty() {
        return;
    }
    if batch == 0 || pixels == 0 {
        // An empty sum.
        out.fill(0.0);
        return;
    }
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => {
            let plan = Plan::new(shape, 16, 2, 12);
            // SAFETY: `Isa::detect` chose AVX-512 only where the CPU has it.
            run(&plan, x, grad, out, |p, x, g, b, acc| unsafe {
                sample_avx512(p, x, g, b, acc)
            })
        }
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2Fma => {
            let plan = Plan::new(shape, 8, 2, 6);
            // SAFETY: `Isa::detect` chose AVX2 + FMA only where the CPU has them.
            run(&plan, x, grad, out, |p, x, g, b, acc| unsafe {
                sample_avx2_fma(p, x, g, b, acc)
            })
        }
        Isa::Portable => {
            let plan = Plan::new(shape, 4, 2, 4);
            run(&plan, x, grad, out, sample::<[f32; 4], 2, 4>)
        }
    }
}

/// The geometry of one kernel gradient: which operand is vectorised, the blocks and the streams.
struct Plan {
    shape: ConvShape,
    /// The vectors hold output channels (else input channels).
    vector_out: bool,
    /// Channels per block of vectors (`VECS × WIDTH`).
    block: usize,
    /// Channels of the vectorised operand, and of the streamed one.
    vector_channels: usize,
    stream_channels: usize,
    /// Positions summed over per sample.
    positions: usize,
    /// Width of a padded row, `W + 2p`.
    padded_width: usize,
    /// Distance between two channels in the stream buffer.
    stream_stride: usize,
    /// Per stream: its (streamed channel, tap), `None` for the padding that fills the last group
    /// of `R` (it reads the zero channel after the real ones).
    streams: Vec<Option<(usize, usize)>>,
    /// Per stream: where it starts in the stream buffer.
    starts: Vec<usize>,
}

impl Plan {
    /// `lanes` per vector, `vecs` vectors per block, streams in groups of `rows`.
    fn new(shape: ConvShape, lanes: usize, vecs: usize, rows: usize) -> Self {
        let ConvShape {
            channels_in,
            channels_out,
            height,
            width,
            kernel,
            ..
        } = shape;
        let block = lanes * vecs;
        let p = kernel / 2;
        let padded_width = width + 2 * p;
        let padded_rows = height + 2 * p;
        let taps = kernel * kernel;
        // The FMAs of each layout per padded row: vector channels rounded up to whole blocks,
        // times streams rounded up to whole groups, times the rows summed over (the
        // input-channel layout also sums over the padded border).
        let work = |vector: usize, streamed: usize, rows_summed: usize| {
            vector.div_ceil(block) * block * (streamed * taps).div_ceil(rows) * rows * rows_summed
        };
        let vector_out =
            work(channels_out, channels_in, height) <= work(channels_in, channels_out, padded_rows);
        let margin = 2 * p * padded_width + 2 * p;
        let (vector_channels, stream_channels, positions, stream_stride) = if vector_out {
            // Streams: the padded input; the last tap reads up to `positions − 1 + margin`.
            let positions = height * padded_width;
            (channels_out, channels_in, positions, positions + margin)
        } else {
            // Streams: the output gradient after a zero margin.
            let positions = padded_rows * padded_width;
            (channels_in, channels_out, positions, margin + positions)
        };
        let offset = |t: usize| (t / kernel) * padded_width + t % kernel;
        let count = (stream_channels * taps).div_ceil(rows) * rows;
        let streams: Vec<Option<(usize, usize)>> = (0..count)
            .map(|i| (i < stream_channels * taps).then_some((i / taps, i % taps)))
            .collect();
        let starts = streams
            .iter()
            .map(|stream| match *stream {
                Some((s, t)) if vector_out => s * stream_stride + offset(t),
                Some((s, t)) => s * stream_stride + margin - offset(t),
                None => stream_channels * stream_stride,
            })
            .collect();
        Self {
            shape,
            vector_out,
            block,
            vector_channels,
            stream_channels,
            positions,
            padded_width,
            stream_stride,
            streams,
            starts,
        }
    }

    /// Values of a job's accumulator: per block of vector channels, per stream, `block` lanes.
    fn accumulator_len(&self) -> usize {
        self.vector_channels.div_ceil(self.block) * self.streams.len() * self.block
    }

    /// Adds the accumulator into `out` (`[out, in, k, k]`, overwritten).
    fn write(&self, acc: &[f32], out: &mut [f32]) {
        let ConvShape {
            channels_in,
            kernel,
            ..
        } = self.shape;
        let taps = kernel * kernel;
        let streams = self.streams.len();
        for ch in 0..self.vector_channels {
            let (vb, lane) = (ch / self.block, ch % self.block);
            for (i, stream) in self.streams.iter().enumerate() {
                let Some((s, t)) = *stream else { continue };
                let (o, c) = if self.vector_out { (ch, s) } else { (s, ch) };
                out[(o * channels_in + c) * taps + t] = acc[(vb * streams + i) * self.block + lane];
            }
        }
    }
}

/// A job's work buffers, kept across its samples: the vectorised operand (`[block of
/// channels][position][block]`) and the streams (`[channel][stream_stride]`, one zero channel
/// more). Only their interiors are written, so the borders stay zero.
#[derive(Default)]
struct Buffers {
    vectors: Vec<f32>,
    streams: Vec<f32>,
}

/// Runs `one` on every sample (input and output gradient of one sample, the job's buffers and
/// accumulator), then writes the sum of the accumulators to `out`.
fn run(
    plan: &Plan,
    x: &[f32],
    grad: &[f32],
    out: &mut [f32],
    one: impl Fn(&Plan, &[f32], &[f32], &mut Buffers, &mut [f32]) + Sync,
) {
    let ConvShape {
        channels_in,
        channels_out,
        height,
        width,
        ..
    } = plan.shape;
    let (size_in, size_out) = (channels_in * height * width, channels_out * height * width);
    let len = plan.accumulator_len();
    let acc = if rayon::current_num_threads() <= 1 {
        // One job on the pool's thread, where Burn's own operations run.
        let mut acc = vec![0f32; len];
        rayon::scope(|_| {
            let mut buffers = Buffers::default();
            for (x, g) in x.chunks(size_in).zip(grad.chunks(size_out)) {
                one(plan, x, g, &mut buffers, &mut acc);
            }
        });
        acc
    } else {
        // One job per thread over consecutive samples, and their sums added in order: the
        // result depends on the thread count only, not on which thread ran what.
        let batch = plan.shape.batch;
        let per_job = batch.div_ceil(rayon::current_num_threads().min(batch));
        let jobs: Vec<Vec<f32>> = x
            .par_chunks(per_job * size_in)
            .zip(grad.par_chunks(per_job * size_out))
            .map(|(x, g)| {
                let (mut buffers, mut acc) = (Buffers::default(), vec![0f32; len]);
                for (x, g) in x.chunks(size_in).zip(g.chunks(size_out)) {
                    one(plan, x, g, &mut buffers, &mut acc);
                }
                acc
            })
            .collect();
        let mut jobs = jobs.into_iter();
        let mut acc = jobs.next().unwrap_or_else(|| vec![0f32; len]);
        for job in jobs {
            acc.iter_mut().zip(&job).for_each(|(a, b)| *a += b);
        }
        acc
    };
    plan.write(&acc, out);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma,f16c")]
unsafe fn sample_avx512(plan: &Plan, x: &[f32], g: &[f32], b: &mut Buffers, acc: &mut [f32]) {
    sample::<x86::Avx512, 2, 12>(plan, x, g, b, acc)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn sample_avx2_fma(plan: &Plan, x: &[f32], g: &[f32], b: &mut Buffers, acc: &mut [f32]) {
    sample::<x86::Avx2, 2, 6>(plan, x, g, b, acc)
}

/// One sample: its two operands into the buffers, then per block of vector channels and group
/// of `ROWS` streams, the sum over every position in registers, added to `acc`.
#[inline(always)]
fn sample<V: Lanes, const VECS: usize, const ROWS: usize>(
    plan: &Plan,
    x: &[f32],
    g: &[f32],
    buffers: &mut Buffers,
    acc: &mut [f32],
) {
    let ConvShape {
        channels_in,
        channels_out,
        height,
        width,
        kernel,
        ..
    } = plan.shape;
    let (block, positions, padded_width) = (plan.block, plan.positions, plan.padded_width);
    debug_assert_eq!(block, VECS * V::WIDTH);
    let p = kernel / 2;
    let blocks = plan.vector_channels.div_ceil(block);
    let Buffers { vectors, streams } = buffers;
    if vectors.is_empty() {
        vectors.resize(blocks * positions * block, 0.0);
        streams.resize((plan.stream_channels + 1) * plan.stream_stride, 0.0);
    }
    let stride = plan.stream_stride;
    if plan.vector_out {
        // Vectors: the output gradient at positions `y (W + 2p) + x`; streams: the padded input.
        for o in 0..channels_out {
            let (vb, lane) = (o / block, o % block);
            let to = &mut vectors[vb * positions * block..][..positions * block];
            for y in 0..height {
                let row = &g[(o * height + y) * width..][..width];
                for (xx, &value) in row.iter().enumerate() {
                    to[(y * padded_width + xx) * block + lane] = value;
                }
            }
        }
        for c in 0..channels_in {
            for y in 0..height {
                let to = c * stride + (y + p) * padded_width + p;
                let from = (c * height + y) * width;
                streams[to..to + width].copy_from_slice(&x[from..from + width]);
            }
        }
    } else {
        // Vectors: the padded input at every padded position; streams: the output gradient
        // after the zero margin.
        let margin = stride - positions;
        for c in 0..channels_in {
            let (vb, lane) = (c / block, c % block);
            let to = &mut vectors[vb * positions * block..][..positions * block];
            for y in 0..height {
                let row = &x[(c * height + y) * width..][..width];
                for (xx, &value) in row.iter().enumerate() {
                    to[((y + p) * padded_width + xx + p) * block + lane] = value;
                }
            }
        }
        for o in 0..channels_out {
            for y in 0..height {
                let to = o * stride + margin + y * padded_width;
                let from = (o * height + y) * width;
                streams[to..to + width].copy_from_slice(&g[from..from + width]);
            }
        }
    }
    let groups = plan.streams.len() / ROWS;
    for vb in 0..blocks {
        let vectors = &vectors[vb * positions * block..][..positions * block];
        for group in 0..groups {
            let starts = &plan.starts[group * ROWS..][..ROWS];
            let runs: [&[f32]; ROWS] =
                std::array::from_fn(|r| &streams[starts[r]..starts[r] + positions]);
            let acc = &mut acc[(vb * plan.streams.len() + group * ROWS) * block..][..ROWS * block];
            let mut sums: [[V; VECS]; ROWS] = std::array::from_fn(|r| {
                std::array::from_fn(|v| V::load(&acc[r * block + v * V::WIDTH..]))
            });
            for (q, at) in vectors.chunks_exact(block).enumerate() {
                let lanes: [V; VECS] = std::array::from_fn(|v| V::load(&at[v * V::WIDTH..]));
                for (sums, run) in sums.iter_mut().zip(&runs) {
                    let s = V::splat(run[q]);
                    for (sum, &lane) in sums.iter_mut().zip(&lanes) {
                        *sum = s.madd(lane, *sum);
                    }
                }
            }
            for (r, sums) in sums.iter().enumerate() {
                for (v, sum) in sums.iter().enumerate() {
                    sum.store(&mut acc[r * block + v * V::WIDTH..]);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::isa::test_value as value;

    /// The kernel gradient in f64, straight from the definition (zero outside the image).
    fn reference(x: &[f32], g: &[f32], s: ConvShape) -> Vec<f64> {
        let (h, w, k) = (s.height as isize, s.width as isize, s.kernel as isize);
        let p = k / 2;
        let mut out = vec![0f64; s.channels_out * s.channels_in * s.kernel * s.kernel];
        for b in 0..s.batch as isize {
            for o in 0..s.channels_out as isize {
                for c in 0..s.channels_in as isize {
                    for ky in 0..k {
                        for kx in 0..k {
                            let mut sum = 0f64;
                            for y in 0..h {
                                for xx in 0..w {
                                    let (iy, ix) = (y + ky - p, xx + kx - p);
                                    if iy < 0 || iy >= h || ix < 0 || ix >= w {
                                        continue;
                                    }
                                    let xi = ((b * s.channels_in as isize + c) * h + iy) * w + ix;
                                    let gi = ((b * s.channels_out as isize + o) * h + y) * w + xx;
                                    sum += x[xi as usize] as f64 * g[gi as usize] as f64;
                                }
                            }
                            out[(((o * s.channels_in as isize + c) * k + ky) * k + kx) as usize] +=
                                sum;
                        }
                    }
                }
            }
        }
        out
    }

    /// The layout with fewer padded FMAs: the vectors take the channels that fill registers
    /// better once the other side's streams are counted (`small`'s 8 → 40 block has 48 / 40
    /// padded output lanes against 32 / 8 input ones, so output channels in the vectors).
    #[test]
    fn the_layout_does_less_work() {
        let plan = |channels_in, channels_out, side| {
            let shape = ConvShape {
                batch: 1,
                channels_in,
                channels_out,
                height: side,
                width: side,
                kernel: 3,
            };
            Plan::new(shape, 16, 2, 12).vector_out
        };
        assert!(plan(8, 40, 14) && !plan(40, 8, 14));
        assert!(plan(16, 80, 7) && !plan(80, 16, 7));
        assert!(plan(24, 120, 32) && !plan(120, 24, 32));
        assert!(plan(3, 24, 32) && plan(24, 24, 32));
    }

    /// Every variant this CPU runs, in both layouts (more output than input channels and
    /// fewer), against the definition: 1×1, 3×3 and 5×5 kernels, channels that do not fill a
    /// block, streams that do not fill a group, one-pixel images, no channels, several threads
    /// (twice each: the same bits).
    #[test]
    fn every_variant_matches_the_definition() {
        let variants = Isa::supported();
        let pools = [1, 3].map(|threads| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .expect("a thread pool")
        });
        for (batch, channels_in, channels_out, height, width, kernel) in [
            (3, 8, 40, 14, 14, 3),
            (3, 40, 8, 14, 14, 3),
            (2, 5, 3, 7, 7, 3),
            (2, 16, 8, 7, 9, 1),
            (1, 3, 11, 6, 5, 5),
            (2, 2, 9, 1, 1, 3),
            (1, 1, 1, 4, 3, 1),
            (2, 0, 3, 4, 4, 3),
            (2, 3, 0, 4, 4, 3),
            (0, 3, 2, 4, 4, 3),
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
            let g: Vec<f32> = (0..batch * channels_out * height * width)
                .map(|i| value(2, i))
                .collect();
            let expected = reference(&x, &g, shape);
            let scale = expected.iter().fold(1f64, |m, v| m.max(v.abs()));
            for &isa in &variants {
                for pool in &pools {
                    let mut out = vec![f32::NAN; expected.len()];
                    pool.install(|| kernel_gradient_with(isa, &x, &g, shape, &mut out));
                    let threads = pool.current_num_threads();
                    let mut again = vec![f32::NAN; expected.len()];
                    pool.install(|| kernel_gradient_with(isa, &x, &g, shape, &mut again));
                    assert!(
                        out.iter()
                            .zip(&again)
                            .all(|(a, b)| a.to_bits() == b.to_bits()),
                        "{isa:?} {shape:?}, {threads} threads: two runs differ"
                    );
                    for (i, (&got, &want)) in out.iter().zip(&expected).enumerate() {
                        assert!(
                            (got as f64 - want).abs() < 1e-5 * scale,
                            "{isa:?} {shape:?}, {threads} threads, entry {i}: {got} against {want}"
                        );
                    }
                }
            }
        }
    }
}
