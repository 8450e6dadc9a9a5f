//! The two low-rank products of a Broyden iteration (`B x` and `Bᵀ y`) against the memory
//! they must read.
//!
//! `MIMALLOC_PURGE_DELAY=-1 cargo run --release -p deq-train --example low_rank_pair -- [batch] [dim] [pairs] [cold]`
//!
//! The allocator is the CLI's (mimalloc, with purging off as `deq-train` sets it): with the
//! system allocator every large output is a fresh mapping whose page faults the matrix
//! products would pay and the plain loop, which reuses its outputs, would not.
//!
//! Times, per call (median of 30, three rounds), with `pairs` pairs stored per sample, the
//! factors in the cache from the call before, or with `cold` = 1 after 64 MiB of other
//! memory has been written (as in a solve, where f runs between two iterations):
//! - `apply_pair`: what the solver runs (on flex: the fused per-sample loop of
//!   `deq_core::backward::op::low_rank_pair`, compiled for AVX-512 / AVX2 and run on Rayon's
//!   pool);
//! - `apply` then `apply_transposed`: the two products as batched matrix products;
//! - a plain loop over host copies of the factors that reads each sample's pairs once for both
//!   dot products and once for both sums, compiled for the baseline x86-64 (no FMA, no AVX).
//!
//! All three give the same values (checked first).
use std::time::Instant;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use burn::tensor::{Distribution, Tensor};
use deq_core::LowRankInverse;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// `(Σ aᵢxᵢ, Σ bᵢyᵢ)` with eight partial sums each (so that the loop vectorises).
fn dots(a: &[f32], x: &[f32], b: &[f32], y: &[f32]) -> (f32, f32) {
    let (mut s, mut t) = ([0f32; 8], [0f32; 8]);
    let chunks = a
        .chunks_exact(8)
        .zip(x.chunks_exact(8))
        .zip(b.chunks_exact(8).zip(y.chunks_exact(8)));
    for ((a, x), (b, y)) in chunks {
        for l in 0..8 {
            s[l] += a[l] * x[l];
            t[l] += b[l] * y[l];
        }
    }
    let tail = a.len() / 8 * 8;
    let (mut s, mut t) = (s.iter().sum::<f32>(), t.iter().sum::<f32>());
    for i in tail..a.len() {
        s += a[i] * x[i];
        t += b[i] * y[i];
    }
    (s, t)
}

/// One sample: `bx = −x + Σⱼ (vⱼ·x) uⱼ` and `by = −y + Σⱼ (uⱼ·y) vⱼ`; `u`, `v`: `pairs × dim`.
fn plain_pair(u: &[f32], v: &[f32], x: &[f32], y: &[f32], bx: &mut [f32], by: &mut [f32]) {
    let dim = x.len();
    let coefficients: Vec<(f32, f32)> = u
        .chunks_exact(dim)
        .zip(v.chunks_exact(dim))
        .map(|(uj, vj)| dots(vj, x, uj, y))
        .collect();
    for (o, xi) in bx.iter_mut().zip(x) {
        *o = -*xi;
    }
    for (o, yi) in by.iter_mut().zip(y) {
        *o = -*yi;
    }
    for ((uj, vj), (cx, cy)) in u
        .chunks_exact(dim)
        .zip(v.chunks_exact(dim))
        .zip(coefficients)
    {
        for (o, ui) in bx.iter_mut().zip(uj) {
            *o += cx * *ui;
        }
        for (o, vi) in by.iter_mut().zip(vj) {
            *o += cy * *vi;
        }
    }
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
    let (batch, dim, pairs, cold) = (get(0, 32), get(1, 2352), get(2, 18), get(3, 0) == 1);
    let mut other = vec![0u8; if cold { 64 << 20 } else { 0 }];
    let mut evict = || {
        for line in other.chunks_mut(64) {
            line[0] = line[0].wrapping_add(1);
        }
    };
    let device = deq_core::device::cpu();
    let mut inverse = LowRankInverse::identity(&Tensor::<2>::zeros([batch, dim], &device), pairs);
    // Host copies, per sample `pairs × dim`.
    let (mut uh, mut vh) = (
        vec![0f32; batch * pairs * dim],
        vec![0f32; batch * pairs * dim],
    );
    for j in 0..pairs {
        let random = || Tensor::<2>::random([batch, dim], Distribution::Normal(0.0, 0.01), &device);
        let (u, v) = (random(), random());
        inverse.push(u.clone(), v.clone(), &vec![true; batch]);
        let (u, v) = (host(u), host(v));
        for b in 0..batch {
            let at = (b * pairs + j) * dim;
            uh[at..at + dim].copy_from_slice(&u[b * dim..(b + 1) * dim]);
            vh[at..at + dim].copy_from_slice(&v[b * dim..(b + 1) * dim]);
        }
    }
    let x = Tensor::<2>::random([batch, dim], Distribution::Normal(0.0, 1.0), &device);
    let y = Tensor::<2>::random([batch, dim], Distribution::Normal(0.0, 1.0), &device);
    let (xh, yh) = (host(x.clone()), host(y.clone()));
    let (mut bx, mut by) = (vec![0f32; batch * dim], vec![0f32; batch * dim]);
    let plain = |bx: &mut [f32], by: &mut [f32]| {
        let per = pairs * dim;
        for b in 0..batch {
            let rows = b * dim..(b + 1) * dim;
            plain_pair(
                &uh[b * per..(b + 1) * per],
                &vh[b * per..(b + 1) * per],
                &xh[rows.clone()],
                &yh[rows.clone()],
                &mut bx[rows.clone()],
                &mut by[rows],
            );
        }
    };

    let (px, py, _) = inverse.apply_pair(x.clone(), y.clone());
    plain(&mut bx, &mut by);
    let worst = host(px)
        .iter()
        .zip(&bx)
        .chain(host(py).iter().zip(&by))
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(worst < 1e-4, "the plain loop disagrees: {worst}");
    let mb = 2.0 * (batch * pairs * dim * 4) as f64 / 1e6;
    let cache = if cold { "cold" } else { "warm" };
    println!(
        "batch {batch}, dim {dim}, {pairs} pairs ({mb:.1} MB of factors), {cache} cache; ms per call:"
    );
    for round in 0..3 {
        let (mut chunked, mut whole, mut looped) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..30 {
            evict();
            let started = Instant::now();
            drop(inverse.apply_pair(x.clone(), y.clone()));
            chunked.push(started.elapsed().as_secs_f64() * 1e3);
            evict();
            let started = Instant::now();
            drop((
                inverse.apply(x.clone()),
                inverse.apply_transposed(y.clone()),
            ));
            whole.push(started.elapsed().as_secs_f64() * 1e3);
            evict();
            let started = Instant::now();
            plain(&mut bx, &mut by);
            looped.push(started.elapsed().as_secs_f64() * 1e3);
        }
        println!(
            "round {round}: apply_pair {:.3}, apply + apply_transposed {:.3}, plain loop {:.3}",
            median(chunked),
            median(whole),
            median(looped)
        );
    }
}
