//! The product of a Broyden inverse in product form with one vector per sample, fused on host
//! memory (`f32`, the steps `f32` or `f16`): `w = ±x`, then each factor `I + κ a dᵀ` in turn, `w ← w + κ (d · w) a`, and
//! the two dot products of the secant update with the sample's newest step `y`, `y · w` and
//! `y · y`.
//!
//! The factors of a Broyden solve chain: the vector `a` one factor adds is the vector `d` the
//! next one takes its dot product with (both are steps, see `step_inverse`). So one sweep over
//! `a` adds it to `w` and takes the next factor's dot product with the updated `w`: every step
//! is read from memory once, while `w` (one row) stays in the core's own cache. Where the chain
//! breaks (a skipped update) the dot product takes a sweep of its own. The samples run in
//! parallel on Rayon's pool (the one Burn's CPU backend uses).
//!
//! The loops run on explicit vectors ([`Lanes`]: AVX-512, AVX2 + FMA, or a portable array; the
//! CPU picks one at run time), with the partial sums in registers and summed in `f64` block by
//! block. Half-precision steps are widened to `f32` as they are loaded: they halve the bytes
//! read, which is what the product's time goes to.
#[cfg(target_arch = "x86_64")]
use crate::backward::lanes::x86;
use crate::backward::lanes::{Lanes, Stored, prefetch};
use crate::backward::op::{FactorPlan, SamplePlan};
use crate::isa::{Isa as Kernel, for_each_sample};

/// Entries per block: the partial sums go to `f64` once per block.
const BLOCK: usize = 512;

/// The steps of every sample: `data[b * sample_stride + j * slot_stride + i]` is entry `i` of
/// slot `j` of sample `b`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Steps<'a, E> {
    /// The storage the strides index into.
    pub data: &'a [E],
    /// Distance between two samples.
    pub sample_stride: usize,
    /// Distance between two slots of one sample.
    pub slot_stride: usize,
}

impl<E> Steps<'_, E> {
    fn row(&self, sample: usize, slot: usize, dim: usize) -> &[E] {
        let start = sample * self.sample_stride + slot * self.slot_stride;
        &self.data[start..start + dim]
    }
}

/// Where a product's `x` comes from.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Input<'a> {
    /// `w` holds `x` on entry.
    InPlace,
    /// `x = fz − z`, the residual of fixed-point iterates (row-major `[batch, dim]` each),
    /// written to `w` by the product's first sweep, which also takes `‖x‖²` and `‖fz‖²`.
    Residual {
        /// The iterates.
        z: &'a [f32],
        /// Their images.
        fz: &'a [f32],
    },
}

/// Replaces each row of `w` (row-major `[batch, dim]`) by the product of `plan` with `x` (see
/// [`Input`]), and writes per sample to `values` (`[batch, width]`): with
/// [`Input::Residual`], `‖x‖²` and `‖fz‖²`, then in both cases `y · w` and `y · y` for the
/// sample's newest step `y` (zeros where the plan names none; a step is its row times the
/// plan's `newest_scale`). `width` is 4 with a residual, 2 without. In place: the caller's
/// buffer (often `x`'s own) is the output.
///
/// # Panics
/// When a slice is shorter than the shapes say, or the plan has another number of samples.
pub(crate) fn factor_product<E: Stored>(
    steps: Steps<'_, E>,
    input: Input<'_>,
    w: &mut [f32],
    dim: usize,
    plan: &FactorPlan,
    values: &mut [f32],
) {
    let batch = plan.samples.len();
    let width = match input {
        Input::InPlace => 2,
        Input::Residual { z, fz } => {
            assert!(
                z.len() == batch * dim && fz.len() == batch * dim,
                "factor_product: z {} / fz {} for batch {batch} × dim {dim}",
                z.len(),
                fz.len()
            );
            4
        }
    };
    assert!(
        w.len() == batch * dim && values.len() == width * batch,
        "factor_product: w {} / values {} for batch {batch} × dim {dim}",
        w.len(),
        values.len()
    );
    if dim == 0 {
        values.fill(0.0);
        return;
    }
    let kernel = Kernel::detect();
    for_each_sample(w, dim, values, width, |b, w, values| {
        let residual = match input {
            Input::InPlace => None,
            Input::Residual { z, fz } => Some((&z[b * dim..][..dim], &fz[b * dim..][..dim])),
        };
        let sample = Sample {
            steps,
            b,
            plan: &plan.samples[b],
            negate: plan.negate,
            residual,
        };
        let (dots, squares) = kernel.run(&sample, w);
        let unit = plan.samples[b].newest_scale;
        let out = match residual {
            Some(_) => {
                values[0] = squares[0] as f32;
                values[1] = squares[1] as f32;
                &mut values[2..]
            }
            None => values,
        };
        out[0] = (dots[0] * unit) as f32;
        out[1] = (dots[1] * unit * unit) as f32;
    });
}

/// One sample's inputs.
struct Sample<'a, E> {
    steps: Steps<'a, E>,
    b: usize,
    plan: &'a SamplePlan,
    negate: bool,
    /// The sample's `z` and `fz` when `x` is their residual (otherwise `w` holds `x`).
    residual: Option<(&'a [f32], &'a [f32])>,
}

impl Kernel {
    /// One sample: its dots and, with a residual, its squares (zeros without).
    fn run<E: Stored>(self, s: &Sample<'_, E>, w: &mut [f32]) -> ([f64; 2], [f64; 2]) {
        match self {
            // SAFETY: `detect` chose these only where the CPU has the features they are
            // compiled for.
            #[cfg(target_arch = "x86_64")]
            Self::Avx512 => unsafe { sample_avx512(s, w) },
            #[cfg(target_arch = "x86_64")]
            Self::Avx2Fma => unsafe { sample_avx2_fma(s, w) },
            Self::Portable => sample::<[f32; 4], E>(s, w),
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma,f16c")]
unsafe fn sample_avx512<E: Stored>(s: &Sample<'_, E>, w: &mut [f32]) -> ([f64; 2], [f64; 2]) {
    sample::<x86::Avx512, E>(s, w)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn sample_avx2_fma<E: Stored>(s: &Sample<'_, E>, w: &mut [f32]) -> ([f64; 2], [f64; 2]) {
    sample::<x86::Avx2, E>(s, w)
}

/// One sample, in place: `x` (from `w`, or the residual written to `w` by the first sweep,
/// which also takes the first factor's dot product), the first factor's dot product, then one
/// sweep per factor (with the next factor's dot product when the chain continues; the last
/// sweep also applies the sign), then `[y · w, y · y]` (from the last sweep when it was over
/// `y`). Without factors, one sweep applies the sign and takes the dot products. Returns the
/// dots and the residual's squares (zeros without one).
#[inline(always)]
fn sample<L: Lanes, E: Stored>(s: &Sample<'_, E>, w: &mut [f32]) -> ([f64; 2], [f64; 2]) {
    let dim = w.len();
    let row = |slot: usize| s.steps.row(s.b, slot, dim);
    let factors = &s.plan.factors;
    let sign = if s.negate { -1.0 } else { 1.0 };
    // The row that the sweeps of factor `i` read first (its `a`, or its `d` where the chain
    // breaks), prefetched during the sweep before; after the last factor, the newest step
    // when that is not the last `a`. (Prefetching the next sample's first step there made the
    // products slower on the machine of `docs/RESULTS.md`.)
    let after = |i: usize| -> &[E] {
        match factors.get(i) {
            Some(f) if i > 0 && factors[i - 1].axpy != f.dot => row(f.dot),
            Some(f) => row(f.axpy),
            None => match s.plan.newest {
                Some(y) if factors.last().is_none_or(|f| f.axpy != y) => row(y),
                _ => &[],
            },
        }
    };
    let (mut next, squares) = match s.residual {
        Some((z, fz)) => {
            // Without factors the dot product is taken with `fz` (already read) and dropped.
            let [g2, f2, dg] = match factors.first() {
                Some(f) => residual_dot::<L, E>(z, fz, w, row(f.dot), after(0)),
                None => residual_dot::<L, f32>(z, fz, w, fz, after(0)),
            };
            (factors.first().map(|_| dg), [g2, f2])
        }
        None => (
            factors
                .first()
                .map(|f| dot::<L, E, f32, E>(row(f.dot), w, after(0))),
            [0.0; 2],
        ),
    };
    if factors.is_empty() {
        let y = s.plan.newest.map(row);
        let found = scale_dots::<L, E>(w, sign, y);
        return (if y.is_some() { found } else { [0.0; 2] }, squares);
    }
    let mut last = None;
    for (i, f) in factors.iter().enumerate() {
        let d = match next.take() {
            Some(d) => d,
            None => dot::<L, E, f32, E>(row(f.dot), w, row(f.axpy)),
        };
        let final_sweep = i + 1 == factors.len();
        let sign = if final_sweep { sign } else { 1.0 };
        let (aw, aa) = axpy_dots::<L, E>(w, row(f.axpy), (f.scale * d) as f32, sign, after(i + 1));
        if factors.get(i + 1).is_some_and(|n| n.dot == f.axpy) {
            next = Some(aw);
        }
        last = (final_sweep && s.plan.newest == Some(f.axpy)).then_some([aw, aa]);
    }
    let dots = match (s.plan.newest, last) {
        (Some(_), Some(found)) => found,
        (Some(y), None) => {
            let y = row(y);
            [dot::<L, E, f32, E>(y, w, &[]), dot::<L, E, E, E>(y, y, &[])]
        }
        (None, _) => [0.0; 2],
    };
    (dots, squares)
}

/// `w ← fz − z`, returning `[‖w‖², ‖fz‖², d · w]` with the new `w`, in one sweep (partial sums
/// in three vectors, summed in `f64` per [`BLOCK`]); `ahead` as for [`dot`].
#[inline(always)]
fn residual_dot<L: Lanes, E: Stored>(
    z: &[f32],
    fz: &[f32],
    w: &mut [f32],
    d: &[E],
    ahead: &[impl Sized],
) -> [f64; 3] {
    let (n, minus) = (L::WIDTH, L::splat(-1.0));
    let mut total = [0f64; 3];
    let blocks = z
        .chunks(BLOCK)
        .zip(fz.chunks(BLOCK))
        .zip(w.chunks_mut(BLOCK))
        .zip(d.chunks(BLOCK));
    for (k, (((z, fz), w), d)) in blocks.enumerate() {
        let base = k * BLOCK;
        let mut s = [L::zero(); 3];
        let whole = z.len() / n * n;
        for i in (0..whole).step_by(n) {
            prefetch_lines(ahead, base + i, n);
            let f = L::load(&fz[i..]);
            // fz − z, rounded once like the subtraction.
            let g = L::load(&z[i..]).madd(minus, f);
            g.store(&mut w[i..]);
            s[0] = g.madd(g, s[0]);
            s[1] = f.madd(f, s[1]);
            s[2] = E::load::<L>(&d[i..]).madd(g, s[2]);
        }
        let mut t = [lane_sum(s[0]), lane_sum(s[1]), lane_sum(s[2])];
        for i in whole..z.len() {
            let g = fz[i] - z[i];
            w[i] = g;
            t[0] += g * g;
            t[1] += fz[i] * fz[i];
            t[2] += d[i].get() * g;
        }
        for k in 0..3 {
            total[k] += t[k] as f64;
        }
    }
    total
}

/// `w ← sign · w`, returning `(y · w, y · y)` with the new `w` when `y` is given.
#[inline(always)]
fn scale_dots<L: Lanes, E: Stored>(w: &mut [f32], sign: f32, y: Option<&[E]>) -> [f64; 2] {
    if sign != 1.0 {
        for v in w.iter_mut() {
            *v *= sign;
        }
    }
    // A `match`, not a closure: a closure would not get this function's target features, and
    // the vector intrinsics inside would not be inlined.
    match y {
        Some(y) => [dot::<L, E, f32, E>(y, w, &[]), dot::<L, E, E, E>(y, y, &[])],
        None => [0.0; 2],
    }
}

/// The sum of a vector's lanes.
#[inline(always)]
fn lane_sum<L: Lanes>(v: L) -> f32 {
    let mut lanes = [0f32; 16];
    v.store(&mut lanes);
    lanes[..L::WIDTH].iter().sum()
}

/// Bytes per cache line.
const LINE: usize = 64;

/// Prefetches the lines of `ahead` that hold entries `at..at + count` (see [`prefetch`]).
#[inline(always)]
fn prefetch_lines<T>(ahead: &[T], at: usize, count: usize) {
    for k in (0..count).step_by(LINE / size_of::<T>()) {
        prefetch(ahead, at + k);
    }
}

/// `a · b`: four vectors of partial sums, summed in `f64` per [`BLOCK`]; `ahead` (the row the
/// next sweep reads, or empty) is prefetched on the way, line for line.
#[inline(always)]
fn dot<L: Lanes, A: Stored, B: Stored, P>(a: &[A], b: &[B], ahead: &[P]) -> f64 {
    let (n, one) = (L::WIDTH, L::splat(1.0));
    let mut total = 0f64;
    for (k, (a, b)) in a.chunks(BLOCK).zip(b.chunks(BLOCK)).enumerate() {
        let base = k * BLOCK;
        let mut s = [L::zero(); 4];
        let whole = a.len() / (4 * n) * (4 * n);
        for i in (0..whole).step_by(4 * n) {
            prefetch_lines(ahead, base + i, 4 * n);
            for (k, s) in s.iter_mut().enumerate() {
                let at = i + k * n;
                *s = A::load::<L>(&a[at..]).madd(B::load::<L>(&b[at..]), *s);
            }
        }
        let sum = s[0].madd(one, s[1]).madd(one, s[2].madd(one, s[3]));
        let tail: f32 = (a[whole..].iter().zip(&b[whole..]))
            .map(|(a, b)| a.get() * b.get())
            .sum();
        total += (lane_sum(sum) + tail) as f64;
    }
    total
}

/// `w ← sign · (w + c a)`, returning `(a · w, a · a)` with the updated `w`, in one sweep: two
/// vectors of partial sums each, summed in `f64` per [`BLOCK`]; `ahead` as for [`dot`].
#[inline(always)]
fn axpy_dots<L: Lanes, E: Stored>(
    w: &mut [f32],
    a: &[E],
    c: f32,
    sign: f32,
    ahead: &[E],
) -> (f64, f64) {
    let (n, one) = (L::WIDTH, L::splat(1.0));
    let (sc, sg, zero) = (L::splat(sign * c), L::splat(sign), L::zero());
    let (mut aw, mut aa) = (0f64, 0f64);
    for (k, (w, a)) in w.chunks_mut(BLOCK).zip(a.chunks(BLOCK)).enumerate() {
        let base = k * BLOCK;
        let (mut s, mut t) = ([L::zero(); 2], [L::zero(); 2]);
        let whole = a.len() / (2 * n) * (2 * n);
        for i in (0..whole).step_by(2 * n) {
            prefetch_lines(ahead, base + i, 2 * n);
            for k in 0..2 {
                let at = i + k * n;
                let ak = E::load::<L>(&a[at..]);
                let wk = ak.madd(sc, L::load(&w[at..]).madd(sg, zero));
                wk.store(&mut w[at..]);
                s[k] = ak.madd(wk, s[k]);
                t[k] = ak.madd(ak, t[k]);
            }
        }
        let (mut s, mut t) = (
            lane_sum(s[0].madd(one, s[1])),
            lane_sum(t[0].madd(one, t[1])),
        );
        for i in whole..a.len() {
            let ai = a[i].get();
            w[i] = sign * (w[i] + c * ai);
            s += ai * w[i];
            t += ai * ai;
        }
        aw += s as f64;
        aa += t as f64;
    }
    (aw, aa)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backward::op::PlanFactor;
    use crate::isa::test_value as value;

    /// One sample's product in f64, straight from the definition.
    fn reference(
        rows: &[Vec<f64>],
        x: &[f64],
        plan: &SamplePlan,
        negate: bool,
    ) -> (Vec<f64>, [f64; 2]) {
        let dot = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(a, b)| a * b).sum::<f64>();
        let mut w: Vec<f64> = x.iter().map(|v| if negate { -v } else { *v }).collect();
        for f in &plan.factors {
            let c = f.scale * dot(&rows[f.dot], &w);
            for (o, a) in w.iter_mut().zip(&rows[f.axpy]) {
                *o += c * a;
            }
        }
        let dots = plan
            .newest
            .map_or([0.0; 2], |y| [dot(&rows[y], &w), dot(&rows[y], &rows[y])]);
        (w, dots)
    }

    /// Every kernel this CPU runs, on a ring of 5 slots with `dim` not a multiple of the lanes
    /// or the block: a chain that wraps around the ring and ends at the newest step (the last
    /// sweep gives the dots), a chain broken by a skipped update with the newest step after it
    /// (a sweep of its own), no factors, and no newest step; from `x` and from `−x`, with `x`
    /// in `w` and `x` the residual of `z` and `fz` (with its squared norms). With `f32` steps
    /// and `f16` steps (the reference takes the `f16` values as they are), and scaled newest
    /// steps.
    #[test]
    fn every_kernel_matches_the_definition() {
        check_kernels(|v| v);
        check_kernels(half::f16::from_f32);
    }

    fn check_kernels<E: Stored>(stored: impl Fn(f32) -> E) {
        let (slots, dim) = (5, 2 * BLOCK + 32 + 7);
        let factor = |dot, axpy, scale| PlanFactor { dot, axpy, scale };
        let plans = [
            SamplePlan {
                factors: vec![factor(3, 4, 0.7), factor(4, 0, -1.3), factor(0, 1, 0.4)],
                newest: Some(1),
                newest_scale: 0.25,
            },
            SamplePlan {
                factors: vec![factor(0, 1, 0.9), factor(2, 3, 0.5)],
                newest: Some(4),
                newest_scale: 1.0,
            },
            SamplePlan {
                factors: vec![],
                newest: Some(2),
                newest_scale: 8.0,
            },
            SamplePlan {
                factors: vec![factor(1, 2, 1.1)],
                ..SamplePlan::default()
            },
            SamplePlan::default(),
        ];
        let batch = plans.len();
        let data: Vec<E> = (0..batch * slots * dim)
            .map(|i| stored(value(1, i) * 0.1))
            .collect();
        let z: Vec<f32> = (0..batch * dim).map(|i| value(2, i)).collect();
        let fz: Vec<f32> = (0..batch * dim).map(|i| 0.5 * value(3, i)).collect();
        // `x` in place, and `x` as the residual `fz − z` (then `w` starts as garbage).
        let x_of_residual: Vec<f32> = fz.iter().zip(&z).map(|(f, z)| f - z).collect();
        let steps = Steps {
            data: &data,
            sample_stride: slots * dim,
            slot_stride: dim,
        };
        let inputs = [
            (Input::InPlace, z.clone(), z.clone()),
            (
                Input::Residual { z: &z, fz: &fz },
                x_of_residual,
                vec![f32::NAN; batch * dim],
            ),
        ];
        for (input, x, start) in inputs {
            let with_residual = matches!(input, Input::Residual { .. });
            let width = if with_residual { 4 } else { 2 };
            for negate in [true, false] {
                let plan = FactorPlan {
                    negate,
                    samples: plans.to_vec(),
                };
                for &kernel in &Kernel::supported() {
                    let mut w = start.clone();
                    let mut found = vec![([f64::NAN; 2], [f64::NAN; 2]); batch];
                    for (b, found) in found.iter_mut().enumerate() {
                        let rows = b * dim..(b + 1) * dim;
                        let sample = Sample {
                            steps,
                            b,
                            plan: &plan.samples[b],
                            negate,
                            residual: with_residual.then(|| (&z[rows.clone()], &fz[rows.clone()])),
                        };
                        *found = kernel.run(&sample, &mut w[rows]);
                    }
                    let mut whole = start.clone();
                    let mut values = vec![f32::NAN; width * batch];
                    factor_product(steps, input, &mut whole, dim, &plan, &mut values);
                    for b in 0..batch {
                        let f64s = |s: &[f32]| s.iter().map(|&v| v as f64).collect::<Vec<_>>();
                        let rows: Vec<Vec<f64>> = (0..slots)
                            .map(|j| steps.row(b, j, dim).iter().map(|v| v.get() as f64))
                            .map(|row| row.collect())
                            .collect();
                        let xb = f64s(&x[b * dim..(b + 1) * dim]);
                        let (ew, ed) = reference(&rows, &xb, &plan.samples[b], negate);
                        let unit = plan.samples[b].newest_scale;
                        let scaled = [ed[0] * unit, ed[1] * unit * unit];
                        let fb = f64s(&fz[b * dim..(b + 1) * dim]);
                        let norm = |v: &[f64]| v.iter().map(|v| v * v).sum::<f64>();
                        let es = if with_residual {
                            [norm(&xb), norm(&fb)]
                        } else {
                            [0.0; 2]
                        };
                        let row = &values[width * b..width * (b + 1)];
                        let whole_found = if with_residual {
                            (
                                [row[2] as f64, row[3] as f64],
                                [row[0] as f64, row[1] as f64],
                            )
                        } else {
                            ([row[0] as f64, row[1] as f64], [0.0; 2])
                        };
                        let case = |name: &str| {
                            format!(
                                "{name} {kernel:?}, residual {with_residual}, sample {b}, negate {negate}"
                            )
                        };
                        for (name, (dots, squares), ed) in [
                            ("kernel", found[b], ed),
                            ("factor_product", whole_found, scaled),
                        ] {
                            for k in 0..2 {
                                for (what, got, expected) in
                                    [("dot", dots[k], ed[k]), ("square", squares[k], es[k])]
                                {
                                    assert!(
                                        (got - expected).abs() < 1e-4 * (1.0 + expected.abs()),
                                        "{}, {what} {k}: {got} against {expected}",
                                        case(name)
                                    );
                                }
                            }
                        }
                        for (name, got) in [("kernel", &w), ("factor_product", &whole)] {
                            for i in 0..dim {
                                let g = got[b * dim + i] as f64;
                                assert!(
                                    (g - ew[i]).abs() < 1e-3 * (1.0 + ew[i].abs()),
                                    "{}, entry {i}: {g} against {}",
                                    case(name),
                                    ew[i]
                                );
                            }
                        }
                    }
                }
            }
        }
    }
}
