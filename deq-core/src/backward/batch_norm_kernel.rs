//! BatchNorm's backward in training mode on host memory (`f32`, NCHW): two passes over the
//! gradient and the normalised input instead of the dozen whole-tensor operations (three
//! reductions per sum, products, broadcasts) of the tensor form.
//!
//! The first pass forms, per channel, `Σ g` and `Σ g x̂` over batch and pixels (32 partial sums
//! per run of pixels, added in `f64`); the second writes `∂x = (g − Σg / n − x̂ Σgx̂ / n) γ / σ`.
//! Both run on Rayon's pool (the one Burn's CPU backend uses). The sums are in a different order
//! from Burn's reductions, so results agree to rounding.
use rayon::prelude::*;

/// Partial sums per run of pixels.
const LANES: usize = 32;

/// The sizes of a BatchNorm backward: tensors `[batch, channels, pixels]` in row-major order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct NormShape {
    /// Samples.
    pub batch: usize,
    /// Channels.
    pub channels: usize,
    /// Pixels per channel and sample (`H × W`).
    pub pixels: usize,
}

/// Per channel `c`, returns `(Σ g, Σ g x̂)` over batch and pixels, and writes
/// `∂x = (g − Σg / n − x̂ Σgx̂ / n) · scale[c]` to `grad_x` when it is given (`n = batch ×
/// pixels`, `scale = γ / σ`).
///
/// # Panics
/// When a slice's length differs from what the shape says.
pub(crate) fn batch_norm_backward(
    grad: &[f32],
    normalized: &[f32],
    scale: &[f32],
    shape: NormShape,
    grad_x: Option<&mut [f32]>,
) -> Vec<(f64, f64)> {
    let NormShape {
        batch,
        channels,
        pixels,
    } = shape;
    let len = batch * channels * pixels;
    assert!(
        grad.len() == len
            && normalized.len() == len
            && scale.len() == channels
            && grad_x.as_ref().is_none_or(|g| g.len() == len),
        "batch_norm_backward: grad {} / normalized {} / scale {} values for {shape:?}",
        grad.len(),
        normalized.len(),
        scale.len()
    );
    let sums: Vec<(f64, f64)> = (0..channels)
        .into_par_iter()
        .map(|c| {
            let (mut sum, mut sum_normalized) = (0f64, 0f64);
            for b in 0..batch {
                let run = (b * channels + c) * pixels..(b * channels + c + 1) * pixels;
                let (s, t) = sums_of(&grad[run.clone()], &normalized[run]);
                sum += s;
                sum_normalized += t;
            }
            (sum, sum_normalized)
        })
        .collect();
    if let Some(grad_x) = grad_x {
        let count = (batch * pixels) as f64;
        let coefficients: Vec<[f32; 3]> = sums
            .iter()
            .zip(scale)
            .map(|(&(s, t), &k)| [(s / count) as f32, (t / count) as f32, k])
            .collect();
        if pixels > 0 {
            grad_x
                .par_chunks_mut(pixels)
                .enumerate()
                .for_each(|(run, out)| {
                    let [mean, mean_normalized, k] = coefficients[run % channels];
                    let at = run * pixels..(run + 1) * pixels;
                    for ((o, &g), &x) in out.iter_mut().zip(&grad[at.clone()]).zip(&normalized[at])
                    {
                        *o = (g - mean - x * mean_normalized) * k;
                    }
                });
        }
    }
    sums
}

/// `(Σ g, Σ g x)` over one run, with [`LANES`] partial sums each.
fn sums_of(g: &[f32], x: &[f32]) -> (f64, f64) {
    let (mut s, mut t) = ([0f32; LANES], [0f32; LANES]);
    let whole = g.len() / LANES * LANES;
    for (g, x) in g[..whole]
        .chunks_exact(LANES)
        .zip(x[..whole].chunks_exact(LANES))
    {
        for l in 0..LANES {
            s[l] += g[l];
            t[l] += g[l] * x[l];
        }
    }
    let mut s: f64 = s.iter().map(|&v| v as f64).sum();
    let mut t: f64 = t.iter().map(|&v| v as f64).sum();
    for (&g, &x) in g[whole..].iter().zip(&x[whole..]) {
        s += g as f64;
        t += (g * x) as f64;
    }
    (s, t)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::isa::test_value as value;

    /// Against the definition in f64, with runs of pixels that are not a multiple of the lanes,
    /// and without the input gradient.
    #[test]
    fn matches_the_definition() {
        for shape in [
            NormShape {
                batch: 3,
                channels: 4,
                pixels: 2 * LANES + 5,
            },
            NormShape {
                batch: 2,
                channels: 3,
                pixels: 1,
            },
        ] {
            let NormShape {
                batch,
                channels,
                pixels,
            } = shape;
            let len = batch * channels * pixels;
            let grad: Vec<f32> = (0..len).map(|i| value(1, i)).collect();
            let normalized: Vec<f32> = (0..len).map(|i| value(2, i)).collect();
            let scale: Vec<f32> = (0..channels).map(|c| 0.5 + c as f32).collect();
            let mut grad_x = vec![f32::NAN; len];
            let sums = batch_norm_backward(&grad, &normalized, &scale, shape, Some(&mut grad_x));
            assert_eq!(
                batch_norm_backward(&grad, &normalized, &scale, shape, None),
                sums
            );
            let n = (batch * pixels) as f64;
            for c in 0..channels {
                let at = |b: usize, p: usize| (b * channels + c) * pixels + p;
                let (mut s, mut t) = (0f64, 0f64);
                for b in 0..batch {
                    for p in 0..pixels {
                        s += grad[at(b, p)] as f64;
                        t += grad[at(b, p)] as f64 * normalized[at(b, p)] as f64;
                    }
                }
                assert!((sums[c].0 - s).abs() < 1e-5 && (sums[c].1 - t).abs() < 1e-5);
                for b in 0..batch {
                    for p in 0..pixels {
                        let (g, x) = (grad[at(b, p)] as f64, normalized[at(b, p)] as f64);
                        let want = (g - s / n - x * t / n) * scale[c] as f64;
                        let got = grad_x[at(b, p)] as f64;
                        assert!(
                            (got - want).abs() < 1e-5 * (1.0 + want.abs()),
                            "{shape:?}, channel {c}, sample {b}, pixel {p}: {got} against {want}"
                        );
                    }
                }
            }
        }
    }
}
