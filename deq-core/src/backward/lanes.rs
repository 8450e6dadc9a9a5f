//! A vector of `f32` lanes, the unit of the host loops' inner loops (`direct_conv`,
//! `direct_kernel_gradient`): a portable array, or an AVX-512 or AVX2 register on x86-64.

use half::f16;

/// A vector of `f32` lanes, the unit of the inner loop.
pub(crate) trait Lanes: Copy {
    /// Lanes per vector.
    const WIDTH: usize;
    /// All lanes zero.
    fn zero() -> Self;
    /// All lanes `value`.
    fn splat(value: f32) -> Self;
    /// The first `WIDTH` values of `from` (panics when it is shorter).
    fn load(from: &[f32]) -> Self;
    /// `self · b + c`, lane by lane.
    fn madd(self, b: Self, c: Self) -> Self;
    /// Writes the lanes to the first `WIDTH` values of `to` (panics when it is shorter).
    fn store(self, to: &mut [f32]);
    /// The first `WIDTH` values of `from`, widened to `f32` (exactly; panics when it is
    /// shorter).
    fn load_half(from: &[f16]) -> Self;
    /// Writes the lanes, rounded to the nearest `f16`, to the first `WIDTH` values of `to`
    /// (panics when it is shorter).
    fn store_half(self, to: &mut [f16]);
}

/// An element type the host loops read vectors of: `f32`, or `f16` (the half-precision steps
/// of `solver::step_inverse`, widened to `f32` as they are loaded).
pub(crate) trait Stored: Copy + Send + Sync + 'static {
    /// The first `L::WIDTH` values of `from`, as `f32` lanes.
    fn load<L: Lanes>(from: &[Self]) -> L;
    /// One value as `f32`.
    fn get(self) -> f32;
}

impl Stored for f32 {
    #[inline(always)]
    fn load<L: Lanes>(from: &[Self]) -> L {
        L::load(from)
    }
    #[inline(always)]
    fn get(self) -> f32 {
        self
    }
}

impl Stored for f16 {
    #[inline(always)]
    fn load<L: Lanes>(from: &[Self]) -> L {
        L::load_half(from)
    }
    #[inline(always)]
    fn get(self) -> f32 {
        self.to_f32()
    }
}

impl Lanes for [f32; 4] {
    const WIDTH: usize = 4;
    #[inline(always)]
    fn zero() -> Self {
        [0.0; 4]
    }
    #[inline(always)]
    fn splat(value: f32) -> Self {
        [value; 4]
    }
    #[inline(always)]
    fn load(from: &[f32]) -> Self {
        from[..4].try_into().unwrap()
    }
    #[inline(always)]
    fn madd(self, b: Self, c: Self) -> Self {
        std::array::from_fn(|l| self[l] * b[l] + c[l])
    }
    #[inline(always)]
    fn store(self, to: &mut [f32]) {
        to[..4].copy_from_slice(&self);
    }
    #[inline(always)]
    fn load_half(from: &[f16]) -> Self {
        std::array::from_fn(|l| from[l].to_f32())
    }
    #[inline(always)]
    fn store_half(self, to: &mut [f16]) {
        for (to, v) in to[..4].iter_mut().zip(self) {
            *to = f16::from_f32(v);
        }
    }
}

/// The x86-64 vector registers. Their methods are only called from functions compiled with the
/// features they need (`#[target_feature]`), which the kernels run only where `Isa::detect`
/// found them.
#[cfg(target_arch = "x86_64")]
pub(crate) mod x86 {
    use super::Lanes;
    use half::f16;
    use std::arch::x86_64::*;

    /// One AVX-512 register.
    #[derive(Clone, Copy)]
    pub(crate) struct Avx512(__m512);

    /// One AVX2 register.
    #[derive(Clone, Copy)]
    pub(crate) struct Avx2(__m256);

    /// `Lanes` for one register type: its width and its zero, broadcast, unaligned load,
    /// fused multiply-add and unaligned store intrinsics, then the register holding its lanes
    /// as `f16` and that register's widening, load, narrowing and store intrinsics (the
    /// conversions need F16C for AVX2, AVX-512F for AVX-512).
    macro_rules! lanes {
        (
            $register:ident, $width:literal, $zero:ident, $splat:ident, $load:ident, $fmadd:ident,
            $store:ident, $half:ident, $widen:ident, $half_load:ident, $narrow:ident,
            $half_store:ident
        ) => {
            // SAFETY (every `unsafe` below): the caller runs on a CPU with the register's
            // features (see the module docs), and loads and stores stay inside the slices
            // (checked lengths).
            impl Lanes for $register {
                const WIDTH: usize = $width;
                #[inline(always)]
                fn zero() -> Self {
                    Self(unsafe { $zero() })
                }
                #[inline(always)]
                fn splat(value: f32) -> Self {
                    Self(unsafe { $splat(value) })
                }
                #[inline(always)]
                fn load(from: &[f32]) -> Self {
                    let from = &from[..$width];
                    Self(unsafe { $load(from.as_ptr()) })
                }
                #[inline(always)]
                fn madd(self, b: Self, c: Self) -> Self {
                    Self(unsafe { $fmadd(self.0, b.0, c.0) })
                }
                #[inline(always)]
                fn store(self, to: &mut [f32]) {
                    let to = &mut to[..$width];
                    unsafe { $store(to.as_mut_ptr(), self.0) }
                }
                #[inline(always)]
                fn load_half(from: &[f16]) -> Self {
                    let from = &from[..$width];
                    Self(unsafe { $widen($half_load(from.as_ptr().cast::<$half>())) })
                }
                #[inline(always)]
                fn store_half(self, to: &mut [f16]) {
                    let to = &mut to[..$width];
                    let half = unsafe { $narrow::<_MM_FROUND_TO_NEAREST_INT>(self.0) };
                    unsafe { $half_store(to.as_mut_ptr().cast::<$half>(), half) }
                }
            }
        };
    }

    lanes!(
        Avx512,
        16,
        _mm512_setzero_ps,
        _mm512_set1_ps,
        _mm512_loadu_ps,
        _mm512_fmadd_ps,
        _mm512_storeu_ps,
        __m256i,
        _mm512_cvtph_ps,
        _mm256_loadu_si256,
        _mm512_cvtps_ph,
        _mm256_storeu_si256
    );
    lanes!(
        Avx2,
        8,
        _mm256_setzero_ps,
        _mm256_set1_ps,
        _mm256_loadu_ps,
        _mm256_fmadd_ps,
        _mm256_storeu_ps,
        __m128i,
        _mm256_cvtph_ps,
        _mm_loadu_si128,
        _mm256_cvtps_ph,
        _mm_storeu_si128
    );
}

/// Asks the CPU to bring the cache line holding `row[at]` into its nearest cache (a hint: no
/// effect where `at` is outside `row`, and none off x86-64). The host loops call it for the row
/// their next sweep will read, so that each sweep's row streams in while the one before runs.
#[inline(always)]
pub(crate) fn prefetch<T>(row: &[T], at: usize) {
    #[cfg(target_arch = "x86_64")]
    if let Some(value) = row.get(at) {
        // SAFETY: a prefetch never faults, and the address is inside `row` anyway.
        unsafe {
            std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(
                (value as *const T).cast(),
            )
        };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (row, at);
}

/// [`prefetch`] by address, for memory the caller may not borrow (another thread's chunk of
/// one buffer): a hint that never faults, whatever the address (none off x86-64).
#[inline(always)]
pub(crate) fn prefetch_address(address: usize) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch never faults and reads nothing into the program.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(address as *const i8)
    };
    #[cfg(not(target_arch = "x86_64"))]
    let _ = address;
}
