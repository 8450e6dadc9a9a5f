//! The two low-rank products of a Broyden iteration, `B x` and `Bᵀ y` for
//! `B = −I + U Vᵀ`, fused per sample on host memory (`f32`), with the two dot products of the
//! secant update, `y · (B x)` and `y · y`, taken while `B x` and `y` are still in the cache.
//!
//! Burn's batched matrix products make four passes over the factors (`Vᵀ x`, `U (Vᵀ x)`,
//! `Uᵀ y`, `V (Uᵀ y)`), each over the whole batch, so each pass reads the factors from the
//! last-level cache or from memory. Here each sample is done at once, a group of pairs at a
//! time: one pass computes both sets of dot products of the group (`vⱼ·x` and `uⱼ·y`), and the
//! second pass, which adds the group's terms to both sums, finds the group's factors (at most
//! [`GROUP_BYTES`]; all 12 pairs of MDEQ `small`, 226 KB, are one group) still in the core's own
//! cache. So the factors are read from memory once. The samples run in parallel on Rayon's pool
//! (the one Burn's CPU backend uses).
//!
//! The loops are written for the compiler to vectorise (32 independent partial sums per dot
//! product) and compiled three times: with AVX-512, with AVX2 + FMA, and portable; the CPU picks
//! one at run time. The sums are in a different order from a matrix product's, so the results
//! agree with Burn's to rounding, not bit for bit.
use rayon::prelude::*;

use crate::isa::{Isa as Kernel, madd};

/// Partial sums per dot product: enough independent lanes for two 512-bit registers × 2.
const LANES: usize = 32;
/// Output elements per block of the second pass (a block of both outputs stays in L1).
const BLOCK: usize = 512;
/// Factor bytes per group of pairs: what the second pass over a group finds in a core's
/// private cache, with the two outputs and `x`, `y` beside it. 256 KiB to 512 KiB ran
/// fastest on a 2 MiB L2 (MDEQ `tiny`, 12 pairs: 13–15 ms a call against 18–19 ms for one
/// group of all pairs, `examples/low_rank_pair.rs`).
const GROUP_BYTES: usize = 512 << 10;

/// One factor of every sample: `data[b * sample_stride + j * slot_stride + i]` is entry `i` of
/// pair `j` of sample `b`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Factor<'a> {
    /// The storage the strides index into.
    pub data: &'a [f32],
    /// Distance between two samples.
    pub sample_stride: usize,
    /// Distance between two pairs of one sample.
    pub slot_stride: usize,
}

impl Factor<'_> {
    fn row(&self, sample: usize, slot: usize, dim: usize) -> &[f32] {
        let start = sample * self.sample_stride + slot * self.slot_stride;
        &self.data[start..start + dim]
    }
}

/// The outputs of [`low_rank_pair`], row-major: `bx`, `by`: `[batch, dim]`; `dots`:
/// `[batch, 2]`.
pub(crate) struct PairOutputs<'a> {
    /// `B x`.
    pub bx: &'a mut [f32],
    /// `Bᵀ y`.
    pub by: &'a mut [f32],
    /// Per sample, `y · (B x)` and `y · y`.
    pub dots: &'a mut [f32],
}

/// Writes `B x` and `Bᵀ y` (row-major `[batch, dim]`), with `B = −I + Σⱼ uⱼ vⱼᵀ` per sample
/// over the first `live` pairs, and per sample the dot products `y · (B x)` and `y · y`
/// (accumulated in `f64` over blocks of [`BLOCK`] entries). `x`, `y`: row-major
/// `[batch, dim]`.
///
/// # Panics
/// When a slice is shorter than the shapes say.
pub(crate) fn low_rank_pair(
    u: Factor<'_>,
    v: Factor<'_>,
    live: usize,
    x: &[f32],
    y: &[f32],
    dim: usize,
    out: PairOutputs<'_>,
) {
    let PairOutputs { bx, by, dots } = out;
    if dim == 0 {
        dots.fill(0.0);
        return;
    }
    let batch = x.len() / dim;
    assert!(
        [y.len(), bx.len(), by.len()] == [batch * dim; 3] && dots.len() == 2 * batch,
        "low_rank_pair: x {} / y {} / outputs {}, {}, dots {} for batch {batch} × dim {dim}",
        x.len(),
        y.len(),
        bx.len(),
        by.len(),
        dots.len()
    );
    let (kernel, group) = (Kernel::detect(), group_size(dim));
    type Rows<'a> = ((&'a mut [f32], &'a mut [f32]), &'a mut [f32]);
    let one = |coef: &mut Vec<f32>, (b, ((bx, by), dots)): (usize, Rows<'_>)| {
        let rows = b * dim..(b + 1) * dim;
        let sample = Sample {
            u,
            v,
            b,
            live,
            group,
            x: &x[rows.clone()],
            y: &y[rows],
        };
        let found = kernel.run(&sample, coef, bx, by);
        dots[0] = found[0] as f32;
        dots[1] = found[1] as f32;
    };
    if rayon::current_num_threads() <= 1 {
        // One job on the pool's thread, where Burn's own operations run.
        rayon::scope(|_| {
            let mut coef = vec![0f32; 2 * live];
            let rows = bx.chunks_mut(dim).zip(by.chunks_mut(dim));
            for sample in rows.zip(dots.chunks_mut(2)).enumerate() {
                one(&mut coef, sample);
            }
        });
    } else {
        bx.par_chunks_mut(dim)
            .zip(by.par_chunks_mut(dim))
            .zip(dots.par_chunks_mut(2))
            .enumerate()
            .for_each_init(|| vec![0f32; 2 * live], one);
    }
}

/// One sample's inputs.
struct Sample<'a> {
    u: Factor<'a>,
    v: Factor<'a>,
    b: usize,
    live: usize,
    /// Pairs per group (see [`sample`]).
    group: usize,
    x: &'a [f32],
    y: &'a [f32],
}

impl Kernel {
    fn run(self, s: &Sample<'_>, coef: &mut [f32], bx: &mut [f32], by: &mut [f32]) -> [f64; 2] {
        match self {
            // SAFETY: `detect` chose these only where the CPU has the features they are
            // compiled for.
            #[cfg(target_arch = "x86_64")]
            Self::Avx512 => unsafe { sample_avx512(s, coef, bx, by) },
            #[cfg(target_arch = "x86_64")]
            Self::Avx2Fma => unsafe { sample_avx2_fma(s, coef, bx, by) },
            Self::Portable => sample::<false>(s, coef, bx, by),
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn sample_avx512(
    s: &Sample<'_>,
    coef: &mut [f32],
    bx: &mut [f32],
    by: &mut [f32],
) -> [f64; 2] {
    sample::<true>(s, coef, bx, by)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn sample_avx2_fma(
    s: &Sample<'_>,
    coef: &mut [f32],
    bx: &mut [f32],
    by: &mut [f32],
) -> [f64; 2] {
    sample::<true>(s, coef, bx, by)
}

/// One sample, a group of pairs at a time (at most [`GROUP_BYTES`] of factors): both sets of
/// dot products of the group in one pass, then the group's terms of both sums block by block.
/// The second pass finds the group's factors still in the core's cache, however many pairs
/// there are. The last group's blocks also give `y · (B x)` and `y · y` while the block is in
/// the cache. Returns `[y · (B x), y · y]`.
#[inline(always)]
fn sample<const FMA: bool>(
    s: &Sample<'_>,
    coef: &mut [f32],
    bx: &mut [f32],
    by: &mut [f32],
) -> [f64; 2] {
    let dim = s.x.len();
    let (cx, cy) = coef.split_at_mut(s.live);
    let group = s.group.max(1);
    let (mut y_bx, mut y_y) = (0f64, 0f64);
    let mut first = 0;
    loop {
        let last = (first + group).min(s.live);
        for j in first..last {
            let (uj, vj) = (s.u.row(s.b, j, dim), s.v.row(s.b, j, dim));
            (cx[j], cy[j]) = dot_pair::<FMA>(vj, s.x, uj, s.y);
        }
        let final_group = last == s.live;
        let mut start = 0;
        while start < dim {
            let end = (start + BLOCK).min(dim);
            let (ox, oy) = (&mut bx[start..end], &mut by[start..end]);
            if first == 0 {
                for ((o, p), (xi, yi)) in ox
                    .iter_mut()
                    .zip(oy.iter_mut())
                    .zip(s.x[start..end].iter().zip(&s.y[start..end]))
                {
                    *o = -xi;
                    *p = -yi;
                }
            }
            for j in first..last {
                let uj = &s.u.row(s.b, j, dim)[start..end];
                let vj = &s.v.row(s.b, j, dim)[start..end];
                let (a, c) = (cx[j], cy[j]);
                for ((o, p), (ui, vi)) in ox.iter_mut().zip(oy.iter_mut()).zip(uj.iter().zip(vj)) {
                    *o = madd::<FMA>(*ui, a, *o);
                    *p = madd::<FMA>(*vi, c, *p);
                }
            }
            if final_group {
                let block_y = &s.y[start..end];
                let (yo, yy) = dot_pair::<FMA>(block_y, ox, block_y, block_y);
                y_bx += yo as f64;
                y_y += yy as f64;
            }
            start = end;
        }
        if final_group {
            return [y_bx, y_y];
        }
        first = last;
    }
}

/// Pairs per group of [`sample`]: as many as fit in [`GROUP_BYTES`], at least one.
fn group_size(dim: usize) -> usize {
    (GROUP_BYTES / (2 * dim * std::mem::size_of::<f32>()).max(1)).max(1)
}

/// `(a · x, b · y)` with [`LANES`] partial sums each.
#[inline(always)]
fn dot_pair<const FMA: bool>(a: &[f32], x: &[f32], b: &[f32], y: &[f32]) -> (f32, f32) {
    let (mut s, mut t) = ([0f32; LANES], [0f32; LANES]);
    let whole = a.len() / LANES * LANES;
    for i in (0..whole).step_by(LANES) {
        let (a, x) = (&a[i..i + LANES], &x[i..i + LANES]);
        let (b, y) = (&b[i..i + LANES], &y[i..i + LANES]);
        for l in 0..LANES {
            s[l] = madd::<FMA>(a[l], x[l], s[l]);
            t[l] = madd::<FMA>(b[l], y[l], t[l]);
        }
    }
    let (mut s, mut t) = (s.iter().sum::<f32>(), t.iter().sum::<f32>());
    for i in whole..a.len() {
        s = madd::<FMA>(a[i], x[i], s);
        t = madd::<FMA>(b[i], y[i], t);
    }
    (s, t)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::isa::test_value as value;

    /// `B x` and `Bᵀ y` of one sample in f64, straight from the definition.
    fn reference(u: &[Vec<f64>], v: &[Vec<f64>], x: &[f64], y: &[f64]) -> (Vec<f64>, Vec<f64>) {
        let dot = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(a, b)| a * b).sum::<f64>();
        let mut bx: Vec<f64> = x.iter().map(|x| -x).collect();
        let mut by: Vec<f64> = y.iter().map(|y| -y).collect();
        for (uj, vj) in u.iter().zip(v) {
            let (a, c) = (dot(vj, x), dot(uj, y));
            for i in 0..x.len() {
                bx[i] += a * uj[i];
                by[i] += c * vj[i];
            }
        }
        (bx, by)
    }

    /// Every kernel this CPU runs, with pairs stored in a ring of `capacity` slots (only
    /// `live` used), sample and slot strides as in a `[batch, capacity, dim]` buffer, `dim`
    /// not a multiple of the lanes or the block, and the pairs in one group, in groups of one
    /// and two, and in groups with a partial last one. `low_rank_pair` takes the group size of
    /// `dim`.
    #[test]
    fn every_kernel_matches_the_definition() {
        let (batch, capacity, dim) = (3, 5, 2 * BLOCK + LANES + 7);
        let data_u: Vec<f32> = (0..batch * capacity * dim).map(|i| value(1, i)).collect();
        let data_v: Vec<f32> = (0..batch * capacity * dim).map(|i| value(2, i)).collect();
        let x: Vec<f32> = (0..batch * dim).map(|i| value(3, i)).collect();
        let y: Vec<f32> = (0..batch * dim).map(|i| value(4, i)).collect();
        let factor = |data| Factor {
            data,
            sample_stride: capacity * dim,
            slot_stride: dim,
        };
        let (u, v) = (factor(data_u.as_slice()), factor(data_v.as_slice()));
        let kernels = Kernel::supported();
        for (live, group) in [(0, 1), (1, 1), (4, 64), (4, 2), (5, 2), (5, 1)] {
            for &kernel in &kernels {
                let mut out = vec![f32::NAN; 2 * batch * dim];
                let (bx, by) = out.split_at_mut(batch * dim);
                let mut coef = vec![0f32; 2 * live];
                let mut dots = vec![[f64::NAN; 2]; batch];
                for (b, found) in dots.iter_mut().enumerate() {
                    let rows = b * dim..(b + 1) * dim;
                    let sample = Sample {
                        u,
                        v,
                        b,
                        live,
                        group,
                        x: &x[rows.clone()],
                        y: &y[rows.clone()],
                    };
                    *found = kernel.run(&sample, &mut coef, &mut bx[rows.clone()], &mut by[rows]);
                }
                let mut whole = vec![f32::NAN; 2 * batch * dim];
                let (wx, wy) = whole.split_at_mut(batch * dim);
                let mut whole_dots = vec![f32::NAN; 2 * batch];
                let outputs = PairOutputs {
                    bx: wx,
                    by: wy,
                    dots: &mut whole_dots,
                };
                low_rank_pair(u, v, live, &x, &y, dim, outputs);
                for b in 0..batch {
                    let f64s = |s: &[f32]| s.iter().map(|&v| v as f64).collect::<Vec<_>>();
                    let rows = |f: Factor<'_>| (0..live).map(|j| f64s(f.row(b, j, dim))).collect();
                    let (ur, vr): (Vec<_>, Vec<_>) = (rows(u), rows(v));
                    let at = b * dim..(b + 1) * dim;
                    let yb = f64s(&y[at.clone()]);
                    let (ex, ey) = reference(&ur, &vr, &f64s(&x[at]), &yb);
                    let expected = [
                        yb.iter().zip(&ex).map(|(a, b)| a * b).sum::<f64>(),
                        yb.iter().map(|a| a * a).sum::<f64>(),
                    ];
                    let got = [
                        dots[b],
                        [whole_dots[2 * b] as f64, whole_dots[2 * b + 1] as f64],
                    ];
                    for (name, got) in [("kernel", got[0]), ("low_rank_pair", got[1])] {
                        for k in 0..2 {
                            assert!(
                                (got[k] - expected[k]).abs() < 1e-4 * (1.0 + expected[k].abs()),
                                "{name} {kernel:?}, live {live}, group {group}, sample {b}, dot {k}: {} against \
                                 {}",
                                got[k],
                                expected[k]
                            );
                        }
                    }
                    for (name, got) in [("kernel", &out), ("low_rank_pair", &whole)] {
                        for i in 0..dim {
                            let (gx, gy) =
                                (got[b * dim + i] as f64, got[(batch + b) * dim + i] as f64);
                            assert!(
                                (gx - ex[i]).abs() < 1e-3 && (gy - ey[i]).abs() < 1e-3,
                                "{name} {kernel:?}, live {live}, group {group}, sample {b}, entry {i}: \
                                 ({gx}, {gy}) against ({}, {})",
                                ex[i],
                                ey[i]
                            );
                        }
                    }
                }
            }
        }
    }
}
