//! The instruction set a host loop is compiled for, chosen at run time.
//!
//! The CPU kernels (`solver::product_kernel`, `backward::direct_conv`) are written for the
//! compiler to vectorise and compiled once per variant under `#[target_feature]`; [`Isa::detect`]
//! picks the widest one this CPU runs. [`for_each_sample`] runs a per-sample kernel over the
//! batch on Rayon's pool.

/// A compiled variant of a host loop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Isa {
    /// AVX-512 (with AVX2 and FMA).
    #[cfg(target_arch = "x86_64")]
    Avx512,
    /// AVX2 with FMA (and F16C, which every CPU with both has).
    #[cfg(target_arch = "x86_64")]
    Avx2Fma,
    /// The target's baseline.
    Portable,
}

impl Isa {
    /// Every variant, widest first.
    const ALL: &[Self] = &[
        #[cfg(target_arch = "x86_64")]
        Self::Avx512,
        #[cfg(target_arch = "x86_64")]
        Self::Avx2Fma,
        Self::Portable,
    ];

    /// Whether this CPU has the features the variant is compiled for.
    fn runs_here(self) -> bool {
        match self {
            #[cfg(target_arch = "x86_64")]
            Self::Avx512 => {
                std::arch::is_x86_feature_detected!("avx512f")
                    && std::arch::is_x86_feature_detected!("f16c")
            }
            #[cfg(target_arch = "x86_64")]
            Self::Avx2Fma => {
                std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
                    && std::arch::is_x86_feature_detected!("f16c")
            }
            Self::Portable => true,
        }
    }

    /// The widest variant this CPU runs.
    pub(crate) fn detect() -> Self {
        Self::ALL
            .iter()
            .copied()
            .find(|isa| isa.runs_here())
            .unwrap_or(Self::Portable)
    }

    /// Every variant this CPU runs (what the kernels' tests check).
    #[cfg(test)]
    pub(crate) fn supported() -> Vec<Self> {
        Self::ALL
            .iter()
            .copied()
            .filter(|isa| isa.runs_here())
            .collect()
    }
}

/// A value that depends on every index, in [−1, 1]: test data for the host loops.
#[cfg(test)]
pub(crate) fn test_value(seed: usize, i: usize) -> f32 {
    ((seed * 7919 + i * 104_729) % 2001) as f32 / 1000.0 - 1.0
}

/// Runs `one(b, row, values)` for every sample `b` of a host kernel with one `[batch, dim]`
/// output (`rows`; `row`: sample `b`'s `dim` entries) and `width` more values per sample
/// (`values`, `[batch, width]`; sample `b`'s `width` of them). The samples run on Rayon's pool
/// (the one Burn's CPU backend uses): in parallel, or at one thread as one job on the pool's
/// thread, where Burn's own operations run (the calling thread itself once it is in the pool:
/// [`crate::join_cpu_pool`]).
pub(crate) fn for_each_sample<V: Send>(
    rows: &mut [f32],
    dim: usize,
    values: &mut [V],
    width: usize,
    one: impl Fn(usize, &mut [f32], &mut [V]) + Send + Sync,
) {
    use rayon::prelude::*;
    let one = |(b, (row, values)): (usize, (&mut [f32], &mut [V]))| one(b, row, values);
    if rayon::current_num_threads() <= 1 {
        rayon::scope(|_| {
            rows.chunks_mut(dim)
                .zip(values.chunks_mut(width))
                .enumerate()
                .for_each(one)
        });
    } else {
        rows.par_chunks_mut(dim)
            .zip(values.par_chunks_mut(width))
            .enumerate()
            .for_each(one);
    }
}

/// `a · b + c`, fused where the instruction exists (`FMA`; without it `mul_add` would be a
/// slow library call).
#[inline(always)]
pub(crate) fn madd<const FMA: bool>(a: f32, b: f32, c: f32) -> f32 {
    if FMA { a.mul_add(b, c) } else { a * b + c }
}
