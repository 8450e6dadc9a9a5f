//! A Broyden step and the write of its vector into the inverse's ring, in one pass over host
//! memory (`f32`): per sample, the step `b = s · w` is stored in the sample's slot and `w`
//! becomes the next iterate `z − b`.
//!
//! As tensor operations this is a scaling, a ring write and a subtraction: three passes, with a
//! `[batch, dim]` temporary. Here each sample's `w` and `z` are read once. The loop is written
//! for the compiler to vectorise and compiled per [`Isa`] variant; the samples run in parallel
//! on Rayon's pool.
use crate::backward::lanes::{prefetch, prefetch_address};
use crate::isa::{Isa, for_each_sample};

/// Per sample `b`: when `slots[b]` names a slot, writes `scale[b] · w_b` to that slot of the
/// sample's steps (`ring`, row-major `[batch, slots, dim]`) and replaces `w_b` by
/// `z_b − scale[b] · w_b`; otherwise replaces `w_b` by `z_b` (the sample does not move).
/// `w` and `z` are row-major `[batch, dim]`.
///
/// # Panics
/// When the slices disagree with the shapes, or a slot is outside the ring.
pub(crate) fn push_step(
    ring: &mut [f32],
    slots: &[Option<usize>],
    scale: &[f32],
    z: &[f32],
    w: &mut [f32],
    dim: usize,
) {
    let batch = slots.len();
    assert!(
        scale.len() == batch && z.len() == batch * dim && w.len() == batch * dim,
        "push_step: scale {} / z {} / w {} for batch {batch} × dim {dim}",
        scale.len(),
        z.len(),
        w.len()
    );
    if dim == 0 || batch == 0 {
        return;
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
    for_each_sample(w, dim, ring, sample_stride, |b, w, ring| {
        let z_row = |b: usize| &z[b * dim..(b + 1) * dim];
        let ahead = match slots.get(b + 1) {
            Some(Some(j)) => Ahead {
                z: z_row(b + 1),
                slot: ring_at + ((b + 1) * sample_stride + j * dim) * size_of::<f32>(),
            },
            _ => Ahead { z: &[], slot: 0 },
        };
        match slots[b] {
            Some(j) => {
                let slot = &mut ring[j * dim..(j + 1) * dim];
                isa.push_step(slot, scale[b], z_row(b), w, ahead)
            }
            None => w.copy_from_slice(z_row(b)),
        }
    });
}

/// What the next sample's pass reads and writes, prefetched during this one: its `z` (empty for
/// none) and the address of its slot (0 for none).
#[derive(Clone, Copy)]
struct Ahead<'a> {
    z: &'a [f32],
    slot: usize,
}

impl Isa {
    fn push_step(self, slot: &mut [f32], scale: f32, z: &[f32], w: &mut [f32], ahead: Ahead<'_>) {
        match self {
            // SAFETY: `detect` chose these only where the CPU has the features they are
            // compiled for.
            #[cfg(target_arch = "x86_64")]
            Self::Avx512 => unsafe { sample_avx512(slot, scale, z, w, ahead) },
            #[cfg(target_arch = "x86_64")]
            Self::Avx2Fma => unsafe { sample_avx2_fma(slot, scale, z, w, ahead) },
            Self::Portable => sample(slot, scale, z, w, ahead),
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn sample_avx512(slot: &mut [f32], scale: f32, z: &[f32], w: &mut [f32], ahead: Ahead<'_>) {
    sample(slot, scale, z, w, ahead)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn sample_avx2_fma(
    slot: &mut [f32],
    scale: f32,
    z: &[f32],
    w: &mut [f32],
    ahead: Ahead<'_>,
) {
    sample(slot, scale, z, w, ahead)
}

/// Values per cache line.
const LINE: usize = 16;

/// One sample: `slot ← s w`, `w ← z − s w` (each rounded like the tensor operations), line by
/// line, with the next sample's lines at the same offset prefetched.
#[inline(always)]
fn sample(slot: &mut [f32], scale: f32, z: &[f32], w: &mut [f32], ahead: Ahead<'_>) {
    let lines = slot
        .chunks_mut(LINE)
        .zip(z.chunks(LINE))
        .zip(w.chunks_mut(LINE));
    for (k, ((slot, z), w)) in lines.enumerate() {
        let at = k * LINE;
        prefetch(ahead.z, at);
        if ahead.slot != 0 {
            prefetch_address(ahead.slot + at * size_of::<f32>());
        }
        for ((slot, z), w) in slot.iter_mut().zip(z).zip(w.iter_mut()) {
            let b = scale * *w;
            *slot = b;
            *w = z - b;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::isa::test_value as value;

    /// Every variant this CPU runs, and the batched entry point: the written slot holds
    /// `s · w`, the other slots are untouched, `w` becomes `z − s · w`, and a sample without
    /// a slot gets `z`.
    #[test]
    fn every_variant_writes_the_step_and_the_next_iterate() {
        let (batch, slots, dim) = (3, 4, 37);
        let ring0: Vec<f32> = (0..batch * slots * dim).map(|i| value(1, i)).collect();
        let z: Vec<f32> = (0..batch * dim).map(|i| value(2, i)).collect();
        let w0: Vec<f32> = (0..batch * dim).map(|i| value(3, i)).collect();
        let targets = [Some(2), None, Some(0)];
        let scale = [0.5f32, 7.0, -1.25];
        for isa in Isa::supported() {
            let (mut ring, mut w) = (ring0.clone(), w0.clone());
            for b in 0..batch {
                let rows = b * dim..(b + 1) * dim;
                match targets[b] {
                    Some(j) => {
                        let at = (b * slots + j) * dim;
                        isa.push_step(
                            &mut ring[at..at + dim],
                            scale[b],
                            &z[rows.clone()],
                            &mut w[rows],
                            Ahead { z: &[], slot: 0 },
                        );
                    }
                    None => w[rows.clone()].copy_from_slice(&z[rows]),
                }
            }
            let (mut whole_ring, mut whole_w) = (ring0.clone(), w0.clone());
            push_step(&mut whole_ring, &targets, &scale, &z, &mut whole_w, dim);
            for (name, ring, w) in [("variant", &ring, &w), ("push_step", &whole_ring, &whole_w)] {
                for b in 0..batch {
                    for i in 0..dim {
                        let k = b * dim + i;
                        let step = scale[b] * w0[k];
                        let expected = match targets[b] {
                            Some(_) => z[k] - step,
                            None => z[k],
                        };
                        assert_eq!(w[k], expected, "{name} {isa:?}: w[{k}]");
                        for j in 0..slots {
                            let at = (b * slots + j) * dim + i;
                            let expected = if targets[b] == Some(j) {
                                step
                            } else {
                                ring0[at]
                            };
                            assert_eq!(ring[at], expected, "{name} {isa:?}: ring[{at}]");
                        }
                    }
                }
            }
        }
    }
}
