//! A Broyden step and the write of its vector into the inverse's ring, in one pass over host
//! memory (`f32`; the ring `f32` or `f16`): per sample, the step `b = s · w` is stored in the
//! sample's slot and `w` becomes the next iterate `z − b`.
//!
//! As tensor operations this is a scaling, a ring write and a subtraction: three passes, with a
//! `[batch, dim]` temporary. Here each sample's `w` and `z` are read once (twice for an `f16`
//! ring: a first read finds the row's largest entry). The loop is compiled per [`Isa`]
//! variant; the samples run in parallel on Rayon's pool.
//!
//! An `f16` ring holds each step divided by a power of two, its unit, chosen so that the row's
//! largest entry lies in `[2¹⁴, 2¹⁵)`: every entry keeps `f16`'s 11 significant bits down to
//! 2⁻²⁸ times the largest one, and none overflows. The units are returned; the next iterate is
//! computed from the `f32` step, exactly as with an `f32` ring.
use half::f16;

#[cfg(target_arch = "x86_64")]
use crate::backward::lanes::x86;
use crate::backward::lanes::{Lanes, prefetch, prefetch_address};
use crate::isa::{Isa, for_each_sample};

/// Per sample `b`: when `slots[b]` names a slot, writes `scale[b] · w_b` to that slot of the
/// sample's steps (`ring`, row-major `[batch, slots, dim]`) and replaces `w_b` by
/// `z_b − scale[b] · w_b`; otherwise replaces `w_b` by `z_b` (the sample does not move).
/// `w` and `z` are row-major `[batch, dim]`. Returns per sample the unit of the written row
/// (the step is the row times it): 1 for an `f32` ring or a sample without a slot.
///
/// # Panics
/// When the slices disagree with the shapes, or a slot is outside the ring.
pub(crate) fn push_step<E: Ring>(
    ring: &mut [E],
    slots: &[Option<usize>],
    scale: &[f32],
    z: &[f32],
    w: &mut [f32],
    dim: usize,
) -> Vec<f32> {
    let batch = slots.len();
    assert!(
        scale.len() == batch && z.len() == batch * dim && w.len() == batch * dim,
        "push_step: scale {} / z {} / w {} for batch {batch} × dim {dim}",
        scale.len(),
        z.len(),
        w.len()
    );
    if dim == 0 || batch == 0 {
        return vec![1.0; batch];
    }
    let sample_stride = ring.len() / batch;
    assert!(
        ring.len() == batch * sample_stride
            && slots
                .iter()
                .flatten()
                .all(|&j| (j + 1) * dim <= sample_stride),
        "push_step: a ring of {} values for batch {batch} × dim {dim}, slots {slots:?}",
        ring.len()
    );
    let isa = Isa::detect();
    // Where the next sample's slot lies, as an address: that is another sample's chunk of the
    // ring, only ever prefetched, never accessed through this.
    let ring_at = ring.as_ptr() as usize;
    // Each sample's chunk of the ring with the unit its pass finds.
    let mut parts: Vec<(&mut [E], f32)> =
        ring.chunks_mut(sample_stride).map(|c| (c, 1.0)).collect();
    for_each_sample(w, dim, &mut parts, 1, |b, w, part| {
        let (ring, unit) = &mut part[0];
        let z_row = |b: usize| &z[b * dim..(b + 1) * dim];
        let ahead = match slots.get(b + 1) {
            Some(Some(j)) => Ahead {
                z: z_row(b + 1),
                slot: ring_at + ((b + 1) * sample_stride + j * dim) * size_of::<E>(),
                bytes: size_of::<E>(),
            },
            _ => Ahead {
                z: &[],
                slot: 0,
                bytes: 0,
            },
        };
        match slots[b] {
            Some(j) => {
                let slot = &mut ring[j * dim..(j + 1) * dim];
                *unit = isa.push_step(slot, scale[b], z_row(b), w, ahead)
            }
            None => w.copy_from_slice(z_row(b)),
        }
    });
    parts.into_iter().map(|(_, unit)| unit).collect()
}

/// What the next sample's pass reads and writes, prefetched during this one: its `z` (empty for
/// none) and the address of its slot (0 for none), whose entries take `bytes` each.
#[derive(Clone, Copy)]
pub(crate) struct Ahead<'a> {
    z: &'a [f32],
    slot: usize,
    bytes: usize,
}

impl Ahead<'_> {
    /// Prefetches the line of entry `at` of the next sample's `z` and slot.
    #[inline(always)]
    fn fetch(&self, at: usize) {
        prefetch(self.z, at);
        if self.slot != 0 {
            prefetch_address(self.slot + at * self.bytes);
        }
    }
}

/// A ring element type: how one sample's step is written into its slot.
pub(crate) trait Ring: Copy + Send + Sync + 'static {
    /// `slot ← s w` (stored as this type), `w ← z − s w`; returns the slot's unit.
    fn push<L: Lanes>(
        slot: &mut [Self],
        scale: f32,
        z: &[f32],
        w: &mut [f32],
        ahead: Ahead<'_>,
    ) -> f32;
}

impl Isa {
    fn push_step<E: Ring>(
        self,
        slot: &mut [E],
        scale: f32,
        z: &[f32],
        w: &mut [f32],
        ahead: Ahead<'_>,
    ) -> f32 {
        match self {
            // SAFETY: `detect` chose these only where the CPU has the features they are
            // compiled for.
            #[cfg(target_arch = "x86_64")]
            Self::Avx512 => unsafe { sample_avx512(slot, scale, z, w, ahead) },
            #[cfg(target_arch = "x86_64")]
            Self::Avx2Fma => unsafe { sample_avx2_fma(slot, scale, z, w, ahead) },
            Self::Portable => E::push::<[f32; 4]>(slot, scale, z, w, ahead),
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma,f16c")]
unsafe fn sample_avx512<E: Ring>(
    slot: &mut [E],
    scale: f32,
    z: &[f32],
    w: &mut [f32],
    ahead: Ahead<'_>,
) -> f32 {
    E::push::<x86::Avx512>(slot, scale, z, w, ahead)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn sample_avx2_fma<E: Ring>(
    slot: &mut [E],
    scale: f32,
    z: &[f32],
    w: &mut [f32],
    ahead: Ahead<'_>,
) -> f32 {
    E::push::<x86::Avx2>(slot, scale, z, w, ahead)
}

/// Values per cache line.
const LINE: usize = 16;

impl Ring for f32 {
    /// Line by line, with the next sample's lines at the same offset prefetched; each entry
    /// rounded like the tensor operations. (Written for the compiler to vectorise.)
    #[inline(always)]
    fn push<L: Lanes>(
        slot: &mut [f32],
        scale: f32,
        z: &[f32],
        w: &mut [f32],
        ahead: Ahead<'_>,
    ) -> f32 {
        let lines = slot
            .chunks_mut(LINE)
            .zip(z.chunks(LINE))
            .zip(w.chunks_mut(LINE));
        for (k, ((slot, z), w)) in lines.enumerate() {
            ahead.fetch(k * LINE);
            for ((slot, z), w) in slot.iter_mut().zip(z).zip(w.iter_mut()) {
                let b = scale * *w;
                *slot = b;
                *w = z - b;
            }
        }
        1.0
    }
}

impl Ring for f16 {
    /// A first read for the largest `|s w|` (as bits: the absolute values of `f32`s order like
    /// their bit patterns), then the write of `s w / unit` rounded to `f16`, and of `z − s w`.
    #[inline(always)]
    fn push<L: Lanes>(
        slot: &mut [f16],
        scale: f32,
        z: &[f32],
        w: &mut [f32],
        ahead: Ahead<'_>,
    ) -> f32 {
        let largest = w.iter().map(|v| v.to_bits() & 0x7fff_ffff).max();
        let unit = half_unit(f32::from_bits(largest.unwrap_or(0)) * scale.abs());
        let (n, zero, minus) = (L::WIDTH, L::zero(), L::splat(-1.0));
        let (s, inverse) = (L::splat(scale), L::splat(1.0 / unit));
        let whole = w.len() / n * n;
        for i in (0..whole).step_by(n) {
            if i % LINE == 0 {
                ahead.fetch(i);
            }
            // `w s + 0` and `−b + z` round once each, like the product and the difference.
            let b = L::load(&w[i..]).madd(s, zero);
            b.madd(inverse, zero).store_half(&mut slot[i..]);
            b.madd(minus, L::load(&z[i..])).store(&mut w[i..]);
        }
        for i in whole..w.len() {
            let b = scale * w[i];
            slot[i] = f16::from_f32(b / unit);
            w[i] = z[i] - b;
        }
        unit
    }
}

/// The power of two that brings `largest` (≥ 0) into `[2¹⁴, 2¹⁵)`; 1 when it is 0, not finite,
/// or too small for the unit to be a normal `f32`.
fn half_unit(largest: f32) -> f32 {
    if !largest.is_normal() {
        return 1.0;
    }
    let exponent = ((largest.to_bits() >> 23) & 0xff) as i32 - 127;
    let e = exponent - 14;
    if e < -126 {
        1.0
    } else {
        f32::from_bits(((e + 127) as u32) << 23)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::isa::test_value as value;

    /// Every variant this CPU runs, and the batched entry point, on an `f32` and an `f16` ring:
    /// the written slot holds `s · w` (exactly for `f32`; for `f16` times a power-of-two unit
    /// that puts the row's largest entry in `[2¹⁴, 2¹⁵)`, within `f16`'s rounding), the other
    /// slots are untouched, `w` becomes `z − s · w` exactly, and a sample without a slot gets
    /// `z`. One row is tiny (its unit far below 1), one is zero.
    #[test]
    fn every_variant_writes_the_step_and_the_next_iterate() {
        check_variants::<f32>(|v| v, |v| v, 4);
        check_variants::<f16>(f16::from_f32, f16::to_f32, 2);
    }

    fn check_variants<E: Ring + PartialEq + std::fmt::Debug>(
        stored: impl Fn(f32) -> E,
        get: impl Fn(E) -> f32,
        bytes: usize,
    ) {
        assert_eq!(size_of::<E>(), bytes);
        let (batch, slots, dim) = (5, 4, 37);
        let ring0: Vec<E> = (0..batch * slots * dim)
            .map(|i| stored(value(1, i)))
            .collect();
        let z: Vec<f32> = (0..batch * dim).map(|i| value(2, i)).collect();
        let mut w0: Vec<f32> = (0..batch * dim).map(|i| value(3, i)).collect();
        w0[3 * dim..4 * dim].iter_mut().for_each(|v| *v *= 1e-7);
        w0[4 * dim..5 * dim].fill(0.0);
        let targets = [Some(2), None, Some(0), Some(3), Some(1)];
        let scale = [0.5f32, 7.0, -1.25, 3.0, 2.0];
        for isa in Isa::supported() {
            let (mut ring, mut w) = (ring0.clone(), w0.clone());
            let mut units = vec![1.0; batch];
            for b in 0..batch {
                let rows = b * dim..(b + 1) * dim;
                match targets[b] {
                    Some(j) => {
                        let at = (b * slots + j) * dim;
                        units[b] = isa.push_step(
                            &mut ring[at..at + dim],
                            scale[b],
                            &z[rows.clone()],
                            &mut w[rows],
                            Ahead {
                                z: &[],
                                slot: 0,
                                bytes: 0,
                            },
                        );
                    }
                    None => w[rows.clone()].copy_from_slice(&z[rows]),
                }
            }
            let (mut whole_ring, mut whole_w) = (ring0.clone(), w0.clone());
            let whole_units = push_step(&mut whole_ring, &targets, &scale, &z, &mut whole_w, dim);
            let cases = [
                ("variant", &ring, &w, &units),
                ("push_step", &whole_ring, &whole_w, &whole_units),
            ];
            for (name, ring, w, units) in cases {
                for b in 0..batch {
                    let steps: Vec<f32> = (0..dim).map(|i| scale[b] * w0[b * dim + i]).collect();
                    let largest = steps.iter().fold(0f32, |m, v| m.max(v.abs()));
                    let unit = units[b];
                    if bytes == 4 || targets[b].is_none() || largest == 0.0 {
                        assert_eq!(unit, 1.0, "{name} {isa:?}: unit of sample {b}");
                    } else {
                        assert_eq!(unit.log2().fract(), 0.0, "{name} {isa:?}: {unit}");
                        let top = largest / unit;
                        assert!((16384.0..32768.0).contains(&top), "{name}: {top}");
                    }
                    for (i, &step) in steps.iter().enumerate() {
                        let k = b * dim + i;
                        let expected = match targets[b] {
                            Some(_) => z[k] - step,
                            None => z[k],
                        };
                        assert_eq!(w[k], expected, "{name} {isa:?}: w[{k}]");
                        for j in 0..slots {
                            let at = (b * slots + j) * dim + i;
                            if targets[b] != Some(j) {
                                assert_eq!(ring[at], ring0[at], "{name} {isa:?}: ring[{at}]");
                                continue;
                            }
                            let found = get(ring[at]) * unit;
                            // f16 rounds to 11 significant bits; the smallest entries of a row
                            // are kept to 2⁻²⁸ of its largest.
                            let tol = if bytes == 4 {
                                0.0
                            } else {
                                step.abs() * 2f32.powi(-11) + largest * 2f32.powi(-28)
                            };
                            assert!(
                                (found - step).abs() <= tol,
                                "{name} {isa:?}: ring[{at}] {found} against {}",
                                step
                            );
                        }
                    }
                }
            }
        }
    }
}
