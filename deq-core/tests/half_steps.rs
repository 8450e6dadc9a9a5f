//! Broyden with half-precision steps (`StepPrecision::Half`) against full-precision steps on
//! the same `f32` problems: the same convergence, the secant identity to `f16`'s rounding, a
//! SHINE product close to full precision's, and the fallback where the host kernels do not
//! run.
mod common;

use burn::tensor::Tensor;
use common::*;
use deq_core::{SolveStatus, SolverConfig, SolverKind, StepInverse, StepPrecision, StopMode};

/// `z ↦ tanh(z W + b)` in `f32` with `‖W‖₂ = rho`.
fn contractive(seed: u64, batch: usize, dim: usize, rho: f64) -> (Tensor<2>, Tensor<2>) {
    let mut rng = Rng::new(seed);
    let w = matrix_with_norm(&mut rng, dim, rho);
    let b = rng.normals(batch * dim);
    (f32s(w, [dim, dim]), f32s(b, [batch, dim]))
}

fn broyden(steps: StepPrecision, tol: f64) -> SolverConfig {
    SolverConfig::new(SolverKind::broyden_with(12, steps))
        .with_tol(tol)
        .with_stop(StopMode::Relative)
        .with_max_iter(100)
}

/// On 8 random contractive maps (‖W‖ = 0.95, 4 samples of dim 48), both precisions converge
/// every sample to 1e-5, in about as many iterations, to the same fixed point.
#[test]
fn half_steps_converge_like_full_steps() {
    let (batch, dim) = (4, 48);
    let (mut full_iterations, mut half_iterations) = (0, 0);
    for seed in 0..8 {
        let (w, b) = contractive(seed, batch, dim, 0.95);
        let mut map = |z: Tensor<2>| (z.matmul(w.clone()) + b.clone()).tanh();
        let z0 = f32s(vec![0.0; batch * dim], [batch, dim]);
        let mut solve = |steps| {
            let result = broyden(steps, 1e-5)
                .solve(&mut map, z0.clone(), 100)
                .unwrap();
            let inverse = result.inverse.as_ref().unwrap();
            assert_eq!(inverse.precision(), steps, "seed {seed}");
            for (s, stats) in result.stats.samples.iter().enumerate() {
                assert_eq!(
                    stats.status,
                    SolveStatus::Converged,
                    "{steps:?} seed {seed} sample {s}"
                );
            }
            result
        };
        let (full, half) = (solve(StepPrecision::Full), solve(StepPrecision::Half));
        let err = rel_err(&host(&half.z), &host(&full.z));
        assert!(err < 1e-4, "seed {seed}: fixed points {err:e} apart");
        let total = |r: &deq_core::solver::SolveResult| -> usize {
            r.stats.samples.iter().map(|s| s.iterations).sum()
        };
        full_iterations += total(&full);
        half_iterations += total(&half);
    }
    println!("iterations over all samples: full {full_iterations}, half {half_iterations}");
    let ratio = half_iterations as f64 / full_iterations as f64;
    assert!(
        (0.9..=1.1).contains(&ratio),
        "half / full iterations {ratio} (full {full_iterations}, half {half_iterations})"
    );
}

/// The inverse returned satisfies `B Δg = Δz` for the step that produced each sample's best
/// iterate, to the steps' rounding (full precision: to `f32`'s); and its transpose, what
/// SHINE applies, is full precision's to within 1 %.
#[test]
fn half_steps_keep_the_secant_identity_to_their_rounding() {
    let (batch, dim) = (3, 32);
    let (w, b) = contractive(5, batch, dim, 0.9);
    let seen = std::cell::RefCell::new(Vec::new());
    let mut map = |z: Tensor<2>| {
        let fz = (z.clone().matmul(w.clone()) + b.clone()).tanh();
        seen.borrow_mut().push((host(&z), host(&fz)));
        fz
    };
    let z0 = f32s(vec![0.0; batch * dim], [batch, dim]);
    let mut inverses = Vec::new();
    for (steps, tol) in [(StepPrecision::Full, 1e-4), (StepPrecision::Half, 1e-3)] {
        seen.borrow_mut().clear();
        let result = broyden(steps, 1e-6).solve(&mut map, z0.clone(), 6).unwrap();
        let inverse = result.inverse.unwrap();
        let seen = seen.borrow();
        for s in 0..batch {
            let k = result.stats.samples[s].best_iteration;
            assert!(k >= 1);
            let err = secant_error(&seen, s, dim, k, &inverse.dense(s));
            println!("{steps:?} sample {s}: secant error {err:e}");
            assert!(err <= tol, "{steps:?} sample {s}: secant error {err:e}");
        }
        inverses.push(inverse);
    }
    let v = f32s(Rng::new(9).normals(batch * dim), [batch, dim]);
    let [full, half] = [&inverses[0], &inverses[1]].map(|i| host(&i.apply_transposed(v.clone())));
    for s in 0..batch {
        let rows = |t: &Vec<f64>| t[s * dim..(s + 1) * dim].to_vec();
        let err = rel_err(&rows(&half), &rows(&full));
        assert!(err < 1e-2, "sample {s}: Bᵀ v {err:e} from full precision's");
    }
    // SHINE's refine continues over the forward matrix with steps stored the same way.
    let refine = StepInverse::over_transposed(inverses[1].clone(), 3);
    assert_eq!(refine.precision(), StepPrecision::Half);
}

/// Half precision needs the host kernels: with `f64` iterates, or `f32` under autodiff, the
/// steps keep the iterates' dtype.
#[test]
fn half_steps_fall_back_where_the_host_kernels_do_not_run() {
    let (batch, dim) = (2, 8);
    let f64s = tensor2(vec![0.0; batch * dim], [batch, dim]);
    let f32s_ = f32s(vec![0.0; batch * dim], [batch, dim]);
    let half = StepPrecision::Half;
    assert_eq!(
        StepInverse::identity_with(&f64s, 3, half).precision(),
        StepPrecision::Full
    );
    let tracked = f32s_.clone().autodiff();
    assert_eq!(
        StepInverse::identity_with(&tracked, 3, half).precision(),
        StepPrecision::Full
    );
    assert_eq!(
        StepInverse::identity_with(&f32s_, 3, half).precision(),
        half
    );
    assert_eq!(
        StepInverse::identity(&f32s_, 3).precision(),
        StepPrecision::Full
    );
}
