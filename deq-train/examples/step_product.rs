//! The product of a Broyden iteration, `B g⁺` with its two dot products, against the memory it
//! must read.
//!
//! `MIMALLOC_PURGE_DELAY=-1 cargo run --release -p deq-train --example step_product -- [batch] [dim] [factors] [cold] [half]`
//!
//! The allocator is the CLI's (mimalloc, with purging off as `deq-train` sets it). The inverse
//! holds `factors` factors per sample (`factors + 1` steps, the ring full), as in a long solve.
//! Times, per call (median of 30, three rounds), with the steps in the cache from the call
//! before, or with `cold` = 1 after 64 MiB of other memory has been written (as in a solve,
//! where f runs between two iterations), and with `half` = 1 the steps stored in `f16`
//! (`StepPrecision::Half`; the floor still reads `f32`):
//! - `apply_with_dots`: what the solver runs (on flex: the fused per-sample loop of
//!   `deq_core::backward::op::factor_product`, compiled for AVX-512 / AVX2 and run on Rayon's
//!   pool);
//! - `apply_to_residual`: the same product of the residual `fz − z`, taken in the product's first
//!   sweep (what the solver runs since the residual was fused in);
//! - `push_step`: the step `z − s B g⁺` with the write of `s B g⁺` into the ring (one pass);
//! - `apply_transposed`: SHINE's product;
//! - the floor: a plain sum over a host copy of the same steps (each read once).
use std::time::Instant;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use burn::tensor::{Distribution, Tensor};
use deq_core::{StepInverse, StepPrecision};

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// `Σ aᵢ` with eight partial sums (so that the loop vectorises).
fn sum(a: &[f32]) -> f32 {
    let mut s = [0f32; 8];
    for chunk in a.chunks_exact(8) {
        for l in 0..8 {
            s[l] += chunk[l];
        }
    }
    s.iter().sum::<f32>() + a[a.len() / 8 * 8..].iter().sum::<f32>()
}

/// Milliseconds `run` takes, after `evict` (which is not timed).
fn timed(evict: &mut impl FnMut(), run: impl FnOnce()) -> f64 {
    evict();
    let started = Instant::now();
    run();
    started.elapsed().as_secs_f64() * 1e3
}

fn host(t: Tensor<2>) -> Vec<f32> {
    t.into_data().try_to_vec::<f32>().expect("f32 data")
}

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse().expect("whole numbers"))
        .collect();
    let get = |i: usize, d: usize| args.get(i).copied().unwrap_or(d);
    let (batch, dim, factors, cold) = (get(0, 32), get(1, 2352), get(2, 12), get(3, 0) == 1);
    let precision = match get(4, 0) {
        1 => StepPrecision::Half,
        _ => StepPrecision::Full,
    };
    let mut other = vec![0u8; if cold { 64 << 20 } else { 0 }];
    let mut evict = || {
        for line in other.chunks_mut(64) {
            line[0] = line[0].wrapping_add(1);
        }
    };
    let device = deq_core::device::cpu();
    let like = Tensor::<2>::zeros([batch, dim], &device);
    let mut inverse = StepInverse::identity_with(&like, factors, precision);
    let all = vec![true; batch];
    let mut copy = Vec::new();
    for k in 0..=factors + 1 {
        let step = Tensor::<2>::random([batch, dim], Distribution::Normal(0.0, 1.0), &device);
        let norms: Vec<f64> = vec![dim as f64; batch];
        inverse.set_newest_norms(&norms, &all);
        inverse.push_as_best(step.clone(), &all, &vec![k > 0; batch], &all);
        copy.extend(host(step));
    }
    assert_eq!(inverse.rank(0), factors, "a full ring");
    let copy = copy[batch * dim..].to_vec();
    let x = Tensor::<2>::random([batch, dim], Distribution::Normal(0.0, 1.0), &device);
    let z = Tensor::<2>::random([batch, dim], Distribution::Normal(0.0, 1.0), &device);
    let fz = Tensor::<2>::random([batch, dim], Distribution::Normal(0.0, 1.0), &device);
    let scale = vec![0.5; batch];
    let bytes = match inverse.precision() {
        StepPrecision::Half => 2,
        StepPrecision::Full => 4,
    };
    let mb = ((factors + 1) * batch * dim * bytes) as f64 / 1e6;
    let cache = if cold { "cold" } else { "warm" };
    println!(
        "batch {batch}, dim {dim}, {factors} factors ({mb:.1} MB of {} steps), {cache} cache; ms per call:",
        precision.name()
    );
    let mut sink = 0f32;
    for round in 0..3 {
        let (mut forward, mut transposed, mut floor) = (Vec::new(), Vec::new(), Vec::new());
        let (mut fused, mut pushes) = (Vec::new(), Vec::new());
        for _ in 0..30 {
            // A fresh `x` of its own, as the solver hands over its residual (the product is
            // then written in its buffer).
            let fresh = x.clone() + 0.0;
            forward.push(timed(&mut evict, || drop(inverse.apply_with_dots(fresh))));
            let mut w = None;
            fused.push(timed(&mut evict, || {
                w = Some(inverse.apply_to_residual(&z, &fz).0)
            }));
            let w = w.expect("timed ran the product");
            pushes.push(timed(&mut evict, || {
                drop(inverse.push_step(w, &scale, &z, &all, &all, &all))
            }));
            inverse.set_newest_norms(&vec![dim as f64; batch], &all);
            let fresh = x.clone() + 0.0;
            transposed.push(timed(&mut evict, || drop(inverse.apply_transposed(fresh))));
            floor.push(timed(&mut evict, || sink += sum(&copy)));
        }
        println!(
            "round {round}: apply_with_dots {:.3}, apply_to_residual {:.3}, push_step {:.3}, apply_transposed {:.3}, one read of the steps {:.3}",
            median(forward),
            median(fused),
            median(pushes),
            median(transposed),
            median(floor)
        );
    }
    assert!(sink.is_finite() || sink.is_nan());
}
