//! The residual of a fixed-point iterate, `g = fz − z`, with the squared norms `‖g‖²` and
//! `‖fz‖²` that the stopping rule needs, in one pass over `z` and `fz` per sample (host memory,
//! `f32`).
//!
//! As tensor operations this is a subtraction and two batched dot products: three passes that
//! read five `[batch, dim]` tensors from memory. Here each sample's `z` and `fz` are read once.
//! The loop is written for the compiler to vectorise ([`LANES`] partial sums per norm) and
//! compiled per [`Isa`] variant; the samples run in parallel on Rayon's pool.
use crate::isa::{Isa, for_each_sample, madd};

/// Partial sums per squared norm.
const LANES: usize = 32;

/// Writes `g = fz − z` (row-major `[batch, dim]`) and per sample `[‖g‖², ‖fz‖²]` to `squares`
/// (`[batch, 2]`; the sums of the lanes are added in `f64`).
///
/// # Panics
/// When the slices disagree with `dim` and one another.
pub(crate) fn residual(z: &[f32], fz: &[f32], dim: usize, g: &mut [f32], squares: &mut [f32]) {
    if dim == 0 {
        squares.fill(0.0);
        return;
    }
    let batch = z.len() / dim;
    assert!(
        [fz.len(), g.len()] == [batch * dim; 2] && squares.len() == 2 * batch,
        "residual: z {} / fz {} / g {} / squares {} for batch {batch} × dim {dim}",
        z.len(),
        fz.len(),
        g.len(),
        squares.len()
    );
    let isa = Isa::detect();
    for_each_sample(g, dim, squares, 2, |b, g, out| {
        let rows = b * dim..(b + 1) * dim;
        let found = isa.residual(&z[rows.clone()], &fz[rows], g);
        out[0] = found[0] as f32;
        out[1] = found[1] as f32;
    });
}

impl Isa {
    fn residual(self, z: &[f32], fz: &[f32], g: &mut [f32]) -> [f64; 2] {
        match self {
            // SAFETY: `detect` chose these only where the CPU has the features they are
            // compiled for.
            #[cfg(target_arch = "x86_64")]
            Self::Avx512 => unsafe { sample_avx512(z, fz, g) },
            #[cfg(target_arch = "x86_64")]
            Self::Avx2Fma => unsafe { sample_avx2_fma(z, fz, g) },
            Self::Portable => sample::<false>(z, fz, g),
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma,f16c")]
unsafe fn sample_avx512(z: &[f32], fz: &[f32], g: &mut [f32]) -> [f64; 2] {
    sample::<true>(z, fz, g)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn sample_avx2_fma(z: &[f32], fz: &[f32], g: &mut [f32]) -> [f64; 2] {
    sample::<true>(z, fz, g)
}

/// One sample: `g = fz − z` and `[‖g‖², ‖fz‖²]`.
#[inline(always)]
fn sample<const FMA: bool>(z: &[f32], fz: &[f32], g: &mut [f32]) -> [f64; 2] {
    let (mut sg, mut sf) = ([0f32; LANES], [0f32; LANES]);
    let whole = z.len() / LANES * LANES;
    for ((z, f), g) in z[..whole]
        .chunks_exact(LANES)
        .zip(fz[..whole].chunks_exact(LANES))
        .zip(g[..whole].chunks_exact_mut(LANES))
    {
        for l in 0..LANES {
            let d = f[l] - z[l];
            g[l] = d;
            sg[l] = madd::<FMA>(d, d, sg[l]);
            sf[l] = madd::<FMA>(f[l], f[l], sf[l]);
        }
    }
    let lanes = |s: [f32; LANES]| s.iter().map(|&v| v as f64).sum::<f64>();
    let (mut total_g, mut total_f) = (lanes(sg), lanes(sf));
    for i in whole..z.len() {
        let d = fz[i] - z[i];
        g[i] = d;
        total_g += (d * d) as f64;
        total_f += (fz[i] * fz[i]) as f64;
    }
    [total_g, total_f]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::isa::test_value as value;

    /// Every variant this CPU runs, and the batched entry point, against f64 sums; `dim` not a
    /// multiple of the lanes, and a non-finite sample that stays in its own row.
    #[test]
    fn every_variant_matches_the_definition() {
        let (batch, dim) = (3, 3 * LANES + 5);
        let z: Vec<f32> = (0..batch * dim).map(|i| value(1, i)).collect();
        let mut fz: Vec<f32> = (0..batch * dim).map(|i| 2.0 * value(2, i)).collect();
        fz[dim + 7] = f32::NAN;
        for isa in Isa::supported() {
            let mut g = vec![f32::NAN; batch * dim];
            let mut squares = vec![f32::NAN; 2 * batch];
            for b in 0..batch {
                let rows = b * dim..(b + 1) * dim;
                let found = isa.residual(&z[rows.clone()], &fz[rows.clone()], &mut g[rows]);
                squares[2 * b] = found[0] as f32;
                squares[2 * b + 1] = found[1] as f32;
            }
            let mut whole_g = vec![f32::NAN; batch * dim];
            let mut whole_squares = vec![f32::NAN; 2 * batch];
            residual(&z, &fz, dim, &mut whole_g, &mut whole_squares);
            for (name, g, squares) in [
                ("variant", &g, &squares),
                ("residual", &whole_g, &whole_squares),
            ] {
                for b in 0..batch {
                    let rows = b * dim..(b + 1) * dim;
                    let (mut eg, mut ef) = (0f64, 0f64);
                    for i in rows {
                        let d = fz[i] as f64 - z[i] as f64;
                        eg += d * d;
                        ef += fz[i] as f64 * fz[i] as f64;
                        if d.is_finite() {
                            assert!(
                                (g[i] as f64 - d).abs() < 1e-6,
                                "{name} {isa:?}: g[{i}] = {} against {d}",
                                g[i]
                            );
                        } else {
                            assert!(g[i].is_nan(), "{name} {isa:?}: g[{i}] = {}", g[i]);
                        }
                    }
                    for (k, expected) in [eg, ef].into_iter().enumerate() {
                        let got = squares[2 * b + k] as f64;
                        if b == 1 {
                            assert!(got.is_nan(), "{name} {isa:?}: sample 1 square {k} {got}");
                        } else {
                            assert!(
                                (got - expected).abs() < 1e-5 * expected,
                                "{name} {isa:?}: sample {b} square {k}: {got} against {expected}"
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn empty_rows_have_zero_norms() {
        let mut squares = vec![f32::NAN; 4];
        residual(&[], &[], 0, &mut [], &mut squares);
        assert_eq!(squares, [0.0; 4]);
    }
}
