//! The instruction set a host loop is compiled for, chosen at run time.
//!
//! The CPU kernels (`solver::pair_kernel`, `backward::direct_conv`) are written for the
//! compiler to vectorise and compiled once per variant under `#[target_feature]`; [`Isa::detect`]
//! picks the widest one this CPU runs.

/// A compiled variant of a host loop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Isa {
    /// AVX-512 (with AVX2 and FMA).
    #[cfg(target_arch = "x86_64")]
    Avx512,
    /// AVX2 with FMA.
    #[cfg(target_arch = "x86_64")]
    Avx2Fma,
    /// The target's baseline.
    Portable,
}

impl Isa {
    /// The widest variant this CPU runs.
    pub(crate) fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f") {
                return Self::Avx512;
            }
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
            {
                return Self::Avx2Fma;
            }
        }
        Self::Portable
    }
}

/// `a · b + c`, fused where the instruction exists (`FMA`; without it `mul_add` would be a
/// slow library call).
#[inline(always)]
pub(crate) fn madd<const FMA: bool>(a: f32, b: f32, c: f32) -> f32 {
    if FMA { a.mul_add(b, c) } else { a * b + c }
}
