//! Solver properties (f64): the secant identity, convergence on random contractive maps,
//! per-sample divergence and non-finite handling, and bad input.
mod common;

use std::cell::RefCell;

use burn::tensor::{DType, Tensor};
use common::*;
use deq_core::{
    BackwardMode, BatchMap, DeqConfig, DeqError, SolveStatus, SolverConfig, SolverKind, StopMode,
    deq_fn, row_index,
};
use proptest::prelude::*;

fn zeros(batch: usize, dim: usize) -> Tensor<2> {
    Tensor::zeros([batch, dim], (&device(), DType::F64))
}

/// A random contractive map `z ↦ tanh(z W + b)` with `‖W‖₂ = rho`, per-sample offsets b.
fn contractive(seed: u64, batch: usize, dim: usize, rho: f64) -> (Tensor<2>, Tensor<2>) {
    let mut rng = common::Rng::new(seed);
    let w = matrix_with_norm(&mut rng, dim, rho);
    let b = rng.normals(batch * dim);
    (tensor2(w, [dim, dim]), tensor2(b, [batch, dim]))
}

/// Must-show 2a: after the solve, the inverse current at each sample's returned iterate
/// satisfies the secant identity `B Δg = Δz` for the step that produced that iterate.
#[test]
fn broyden_keeps_the_secant_identity() {
    let (batch, dim) = (3, 10);
    let (w, b) = contractive(3, batch, dim, 0.8);
    for max_iter in 1..=8 {
        let seen: RefCell<Vec<(Vec<f64>, Vec<f64>)>> = RefCell::new(Vec::new());
        let mut map = |z: Tensor<2>| {
            let fz = (z.clone().matmul(w.clone()) + b.clone()).tanh();
            seen.borrow_mut().push((host(&z), host(&fz)));
            fz
        };
        let config = SolverConfig::new(SolverKind::broyden(20)).with_tol(1e-14);
        let result = config.solve(&mut map, zeros(batch, dim), max_iter).unwrap();
        let inverse = result.inverse.unwrap();
        let seen = seen.into_inner();
        for s in 0..batch {
            let k = result.stats.samples[s].best_iteration;
            assert!(k >= 1, "the residual must have decreased at least once");
            let err = secant_error(&seen, s, dim, k, &inverse.dense(s));
            assert!(
                err <= 1e-6,
                "max_iter {max_iter}, sample {s}, step {k}: secant error {err:e}"
            );
        }
    }
}

/// The returned inverse is exactly the matrix current at each sample's best iterate, also when
/// the ring buffer overwrote pairs after it: rerunning with `max_iter = best_iteration` (same
/// trajectory, stopped there) gives the same matrix.
#[test]
fn broyden_returns_the_matrix_of_the_best_iterate() {
    let (batch, dim) = (4, 6);
    let (w, b) = contractive(21, batch, dim, 0.95);
    let mut map = |z: Tensor<2>| (z.matmul(w.clone()) + b.clone()).tanh();
    // Tolerance never reached: the residual reaches round-off and jitters there, so the best
    // iterate is usually not the last; memory 2 makes the ring buffer overwrite pairs.
    let config = SolverConfig::new(SolverKind::broyden(2))
        .with_tol(1e-300)
        .with_stop(StopMode::Absolute);
    let long = config.solve(&mut map, zeros(batch, dim), 60).unwrap();
    let best: Vec<usize> = long
        .stats
        .samples
        .iter()
        .map(|s| s.best_iteration)
        .collect();
    println!("best iterations of a 60-iteration run: {best:?}");
    assert!(
        best.iter().any(|&k| k > 2 && k < 60),
        "the case must exercise an earlier best with evictions"
    );
    let long_inverse = long.inverse.unwrap();
    for s in 0..batch {
        let short = config.solve(&mut map, zeros(batch, dim), best[s]).unwrap();
        assert_eq!(short.stats.samples[s].best_iteration, best[s]);
        let expected = short.inverse.unwrap().dense(s);
        let found = long_inverse.dense(s);
        let err = rel_err(&found, &expected);
        assert!(err < 1e-12, "sample {s} (best {}): {err:e}", best[s]);
        assert!(
            rel_err(
                &host(&long.z)[s * dim..(s + 1) * dim],
                &host(&short.z)[s * dim..(s + 1) * dim]
            ) < 1e-15
        );
    }
}

fn solver_kinds(memory: usize) -> [SolverKind; 3] {
    [
        SolverKind::fixed_point(),
        SolverKind::Anderson {
            memory,
            ridge: 1e-8,
            mixing: 1.0,
        },
        SolverKind::broyden(memory),
    ]
}

/// Fixed-point, Anderson and Broyden all converge on the contractive map of `seed` and report
/// the residual of the iterate they return.
fn converges_on_contractive_map(
    seed: u64,
    batch: usize,
    dim: usize,
    memory: usize,
    rho: f64,
    log_tol: f64,
    relative: bool,
) -> Result<(), TestCaseError> {
    let (w, b) = contractive(seed, batch, dim, rho);
    let tol = 10f64.powf(log_tol);
    let stop = if relative {
        StopMode::Relative
    } else {
        StopMode::Absolute
    };
    for kind in solver_kinds(memory) {
        let config = SolverConfig::new(kind.clone())
            .with_tol(tol)
            .with_stop(stop)
            .with_max_iter(400);
        let mut map = |z: Tensor<2>| (z.matmul(w.clone()) + b.clone()).tanh();
        let result = config.solve(&mut map, zeros(batch, dim), 400).unwrap();
        let z = host(&result.z);
        prop_assert!(z.iter().all(|v| v.is_finite()));
        for (i, s) in result.stats.samples.iter().enumerate() {
            prop_assert_eq!(
                s.status,
                SolveStatus::Converged,
                "{} sample {}: {:?}",
                kind.name(),
                i,
                s
            );
            let res = if relative {
                s.rel_residual
            } else {
                s.abs_residual
            };
            prop_assert!(res <= tol);
        }
        // The reported residual is the residual of the returned iterate.
        let fz = host(&map(result.z.clone()));
        for s in 0..batch {
            let r: Vec<f64> = (0..dim).map(|j| fz[s * dim + j] - z[s * dim + j]).collect();
            let reported = result.stats.samples[s].abs_residual;
            prop_assert!((norm(&r) - reported).abs() <= 1e-9 * (1.0 + reported));
        }
    }
    Ok(())
}

proptest! {
    // A fixed seed: CI checks the same 100 cases on every run (with random seeds about one
    // run in 40 drew a case Broyden fails; two such cases are kept below as known failures).
    #![proptest_config(ProptestConfig {
        cases: 100,
        rng_seed: proptest::test_runner::RngSeed::Fixed(0x5EED),
        .. ProptestConfig::default()
    })]

    /// Must-show 2b: fixed-point, Anderson and Broyden all converge on random contractive maps.
    #[test]
    fn all_solvers_converge_on_contractive_maps(
        seed in any::<u64>(),
        batch in 1usize..6,
        dim in 2usize..25,
        memory in 1usize..13,
        rho in 0.05f64..0.9,
        log_tol in -9.0f64..-4.0,
        relative in any::<bool>(),
    ) {
        converges_on_contractive_map(seed, batch, dim, memory, rho, log_tol, relative)?;
    }
}

/// Maps `f(z) = z + g(z)` whose `g` has no root, with Jacobian `I + J_g` of spectral norm
/// above 1: `g(z) = h(z) + |z| / 2 + c` with `c > 0` and
/// - kind 0: `h(z) = z ⊙ z`: quadratic growth;
/// - kind 1: `h(z) = exp(z W)`: exponential growth, overflows to ∞ in f64;
/// - kind 2: `h(z) = ρ tanh(z W)`, `ρ = 0.05 < c`: bounded.
///
/// The `|z| / 2` keeps `‖g‖ ≥ ‖z‖ / 2`. Without it proptest found iterates running off to
/// |z| ~ 1e16, where `z + g(z) == z` in f64, or to |z| ~ 1e3 with a bounded residual, whose
/// relative residual ‖g‖ / ‖f(z)‖ falls below the tolerance: what a relative test means.
fn rootless_map(
    kind: usize,
    seed: u64,
    batch: usize,
    dim: usize,
) -> impl FnMut(Tensor<2>) -> Tensor<2> {
    let mut rng = common::Rng::new(seed);
    let w = tensor2(matrix_with_norm(&mut rng, dim, 2.0), [dim, dim]);
    let c: Vec<f64> = rng
        .normals(batch * dim)
        .into_iter()
        .map(|v| 0.1 + v.abs())
        .collect();
    let c = tensor2(c, [batch, dim]);
    move |z: Tensor<2>| {
        let h = match kind {
            0 => z.clone() * z.clone(),
            1 => z.clone().matmul(w.clone()).exp(),
            _ => z.clone().matmul(w.clone()).tanh() * 0.05,
        };
        z.clone() + h + z.abs() * 0.5 + c.clone()
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 64,
        rng_seed: proptest::test_runner::RngSeed::Fixed(0xD1CE),
        .. ProptestConfig::default()
    })]

    /// Must-show 5 (reliability): on random non-contractive maps without a fixed point, every
    /// solver returns finite values and reports every sample as not converged (diverged,
    /// non-finite or out of iterations), never as converged.
    #[test]
    fn rootless_non_contractive_maps_never_give_nan(
        kind in 0usize..3,
        seed in any::<u64>(),
        batch in 1usize..5,
        dim in 1usize..20,
        memory in 1usize..13,
        log_tol in -9.0f64..-2.0,
        max_iter in 1usize..80,
        relative in any::<bool>(),
    ) {
        let mut map = rootless_map(kind, seed, batch, dim);
        for solver in solver_kinds(memory) {
            let config = SolverConfig::new(solver.clone())
                .with_tol(10f64.powf(log_tol))
                .with_stop(if relative { StopMode::Relative } else { StopMode::Absolute })
                .with_max_iter(max_iter);
            let result = config.solve(&mut map, zeros(batch, dim), max_iter).unwrap();
            prop_assert!(
                host(&result.z).iter().all(|v| v.is_finite()),
                "{}: non-finite values returned", solver.name()
            );
            prop_assert_eq!(result.stats.samples.len(), batch);
            for (i, s) in result.stats.samples.iter().enumerate() {
                prop_assert!(
                    s.status != SolveStatus::Converged,
                    "{} map {} sample {}: {:?}", solver.name(), kind, i, s
                );
            }
        }
    }
}

/// Found by the property test with random seeds: limited-memory Broyden with memory 1 cycled
/// on a 2-dimensional map (stalled above the 2e-6 absolute tolerance); restarts fix it.
#[test]
fn broyden_memory_1_regression() {
    converges_on_contractive_map(
        12788604900096775721,
        1,
        2,
        1,
        0.709464617645461,
        -5.721767653388185,
        false,
    )
    .unwrap();
}

/// Found by the property test with random seeds: Broyden with memory 3 stalled at 3e-6 and
/// then grew (declared diverged) for an absolute tolerance of 1.5e-9; restarts fix it.
#[test]
fn broyden_memory_3_regression() {
    converges_on_contractive_map(
        8648175382638204564,
        2,
        10,
        3,
        0.8524044573638396,
        -8.837307366748195,
        false,
    )
    .unwrap();
}

/// `f(z, x) = (z W) ⊙ s + x` with one sample scaled to ‖sW‖ = 3 (non-contractive).
fn linear_with_one_bad_sample(batch: usize, dim: usize) -> (Tensor<2>, Tensor<2>, Tensor<2>) {
    let mut rng = common::Rng::new(5);
    let w = matrix_with_norm(&mut rng, dim, 0.5);
    let mut scales = vec![1.0; batch];
    scales[1] = 6.0;
    let x = rng.normals(batch * dim);
    (
        tensor2(w, [dim, dim]),
        tensor2(scales, [batch, 1]),
        tensor2(x, [batch, dim]),
    )
}

/// Must-show 6a: a diverging sample is reported as such, the output has no NaN and the other
/// samples are exactly as if solved alone.
#[test]
fn diverging_sample_is_isolated() {
    let (batch, dim) = (4, 8);
    let (w, s, x) = linear_with_one_bad_sample(batch, dim);
    let f = deq_fn(
        |z: Tensor<2>, (w, s, x): &(Tensor<2>, Tensor<2>, Tensor<2>)| {
            z.matmul(w.clone()) * s.clone() + x.clone()
        },
    );
    let config = DeqConfig::new(
        SolverConfig::new(SolverKind::fixed_point())
            .with_max_iter(200)
            .with_tol(1e-10),
    )
    .with_backward(BackwardMode::jacobian_free());
    let deq = config.init().unwrap();
    let out = deq
        .forward(&f, &(w.clone(), s.clone(), x.clone()), zeros(batch, dim))
        .unwrap();
    let statuses: Vec<SolveStatus> = out.stats.samples.iter().map(|s| s.status).collect();
    println!(
        "statuses: {statuses:?}, iterations {:?}",
        out.stats
            .samples
            .iter()
            .map(|s| s.iterations)
            .collect::<Vec<_>>()
    );
    assert_eq!(statuses[1], SolveStatus::Diverged);
    assert!(host(&out.z).iter().all(|v| v.is_finite()));
    // The other samples, solved without the bad one, give the same result.
    let keep = [0usize, 2, 3];
    let rows =
        |t: &Tensor<2>| Tensor::cat(keep.iter().map(|&i| t.clone().narrow(0, i, 1)).collect(), 0);
    let alone = deq
        .forward(&f, &(w, rows(&s), rows(&x)), zeros(3, dim))
        .unwrap();
    assert!(alone.stats.all_converged());
    let z = host(&out.z);
    let z_alone = host(&alone.z);
    for (j, &i) in keep.iter().enumerate() {
        assert_eq!(statuses[i], SolveStatus::Converged);
        assert!(rel_err(&z[i * dim..(i + 1) * dim], &z_alone[j * dim..(j + 1) * dim]) < 1e-12);
    }
}

/// Must-show 6b: a sample producing NaN is reported `NonFinite` by every solver, its output row
/// is finite, and the other samples converge as if alone; also in training mode.
#[test]
fn non_finite_sample_is_isolated_for_every_solver() {
    let (batch, dim) = (4, 8);
    let (w, b) = contractive(9, batch, dim, 0.6);
    // log(s) is NaN for the negative entry: sample 2 produces NaN from the first evaluation on.
    let s = tensor2(vec![1.0, 1.0, -1.0, 1.0], [batch, 1]);
    for kind in solver_kinds(6) {
        for training in [false, true] {
            let f = deq_fn(
                |z: Tensor<2>, (w, b, s): &(Tensor<2>, Tensor<2>, Tensor<2>)| {
                    (z.matmul(w.clone()) + b.clone()).tanh() + s.clone().log() * 0.0
                },
            );
            let bt = if training {
                b.clone().autodiff().require_grad()
            } else {
                b.clone()
            };
            let deq = DeqConfig::new(
                SolverConfig::new(kind.clone())
                    .with_max_iter(100)
                    .with_tol(1e-10),
            )
            .with_backward(BackwardMode::jacobian_free())
            .init()
            .unwrap();
            let out = deq
                .forward(&f, &(w.clone(), bt, s.clone()), zeros(batch, dim))
                .unwrap();
            let statuses: Vec<SolveStatus> = out.stats.samples.iter().map(|s| s.status).collect();
            assert_eq!(
                statuses,
                vec![
                    SolveStatus::Converged,
                    SolveStatus::Converged,
                    SolveStatus::NonFinite,
                    SolveStatus::Converged
                ],
                "{} training={training}",
                kind.name()
            );
            let z = host(&out.z.clone().without_autodiff());
            assert!(
                z.iter().all(|v| v.is_finite()),
                "{} training={training}: NaN in output",
                kind.name()
            );
            assert!(out.stats.samples[0].rel_residual <= 1e-10);
        }
    }
}

/// NaN in the input gives a non-finite status for that sample, never a panic or NaN output.
#[test]
fn nan_input_gives_non_finite_status() {
    let (batch, dim) = (3, 6);
    let (w, _) = contractive(4, batch, dim, 0.5);
    let mut x = vec![0.1; batch * dim];
    x[dim + 2] = f64::NAN;
    let f = deq_fn(|z: Tensor<2>, (w, x): &(Tensor<2>, Tensor<2>)| {
        (z.matmul(w.clone()) + x.clone()).tanh()
    });
    for kind in solver_kinds(5) {
        let deq = DeqConfig::new(SolverConfig::new(kind))
            .with_backward(BackwardMode::jacobian_free())
            .init()
            .unwrap();
        let out = deq
            .forward(
                &f,
                &(w.clone(), tensor2(x.clone(), [batch, dim])),
                zeros(batch, dim),
            )
            .unwrap();
        assert_eq!(out.stats.samples[1].status, SolveStatus::NonFinite);
        assert_eq!(out.stats.samples[0].status, SolveStatus::Converged);
        assert!(host(&out.z).iter().all(|v| v.is_finite()));
    }
}

/// Bad configuration values are rejected with an error naming the field.
#[test]
fn invalid_settings_name_the_field() {
    let cases: Vec<(DeqConfig, &str)> = vec![
        (
            DeqConfig::new(SolverConfig::new(SolverKind::broyden(30)).with_tol(0.0)),
            "solver.tol",
        ),
        (
            DeqConfig::new(SolverConfig::new(SolverKind::broyden(30)).with_tol(-1e-3)),
            "solver.tol",
        ),
        (
            DeqConfig::new(SolverConfig::new(SolverKind::broyden(30)).with_tol(f64::NAN)),
            "solver.tol",
        ),
        (
            DeqConfig::new(SolverConfig::new(SolverKind::broyden(0))),
            "solver.memory",
        ),
        (
            DeqConfig::new(SolverConfig::new(SolverKind::anderson(0))),
            "solver.memory",
        ),
        (
            DeqConfig::new(SolverConfig::new(SolverKind::broyden(30)).with_max_iter(0)),
            "solver.max_iter",
        ),
        (
            DeqConfig::new(SolverConfig::new(SolverKind::FixedPoint { damping: 0.0 })),
            "solver.damping",
        ),
        (
            DeqConfig::new(SolverConfig::new(SolverKind::Anderson {
                memory: 5,
                ridge: -1.0,
                mixing: 1.0,
            })),
            "solver.ridge",
        ),
        (
            DeqConfig::broyden(BackwardMode::Shine {
                fallback: Some(-1.0),
                refine: 0,
            }),
            "backward.fallback",
        ),
        (
            DeqConfig::broyden(BackwardMode::Phantom { k: 0, tau: 0.5 }),
            "backward.k",
        ),
        (
            DeqConfig::broyden(BackwardMode::Phantom { k: 2, tau: 1.5 }),
            "backward.tau",
        ),
        (
            DeqConfig::broyden(BackwardMode::Implicit {
                solver: SolverKind::broyden(0),
                max_iter: 10,
                tol: 1e-6,
            }),
            "backward.solver.memory",
        ),
        (
            DeqConfig::broyden(BackwardMode::Implicit {
                solver: SolverKind::broyden(5),
                max_iter: 10,
                tol: 0.0,
            }),
            "backward.tol",
        ),
    ];
    for (config, field) in cases {
        match config.init() {
            Err(DeqError::InvalidConfig { field: f, .. }) => assert_eq!(f, field),
            other => panic!("expected an InvalidConfig error for {field}, got {other:?}"),
        }
    }
    let err = DeqConfig::new(SolverConfig::new(SolverKind::anderson(5)))
        .with_backward(BackwardMode::shine())
        .init()
        .unwrap_err();
    assert!(matches!(err, DeqError::IncompatibleModes { .. }), "{err}");
    println!("{err}");
}

/// Shape mismatches between z0, f's output and the injection give errors, not panics.
#[test]
fn shape_mismatches_are_errors() {
    let (w, b) = contractive(1, 2, 6, 0.5);
    let deq = DeqConfig::broyden(BackwardMode::jacobian_free())
        .init()
        .unwrap();
    let f = deq_fn(|z: Tensor<2>, (w, b): &(Tensor<2>, Tensor<2>)| {
        (z.matmul(w.clone()) + b.clone()).tanh()
    });
    // z0 with the wrong width: the matmul inside f fails.
    let err = deq
        .forward(&f, &(w.clone(), b.clone()), zeros(2, 5))
        .unwrap_err();
    assert!(matches!(err, DeqError::FunctionFailed { .. }), "{err}");
    println!("{err}");
    // f returning another shape than z0.
    let g = deq_fn(|z: Tensor<2>, _: &()| z.narrow(1, 0, 3));
    let err = deq.forward(&g, &(), zeros(2, 6)).unwrap_err();
    assert_eq!(
        err,
        DeqError::ShapeMismatch {
            what: "f(z0) output",
            expected: vec![2, 6],
            found: vec![2, 3]
        }
    );
    // An injection with another batch size than z0 (broadcast fails inside f).
    let err = deq
        .forward(&f, &(w, tensor2(vec![0.0; 18], [3, 6])), zeros(2, 6))
        .unwrap_err();
    assert!(
        matches!(
            err,
            DeqError::FunctionFailed { .. } | DeqError::ShapeMismatch { .. }
        ),
        "{err}"
    );
}

/// The evaluation budget differs from the training one.
#[test]
fn evaluation_budget_is_separate() {
    let (w, b) = contractive(2, 2, 8, 0.9);
    let config = DeqConfig::new(
        SolverConfig::new(SolverKind::fixed_point())
            .with_max_iter(3)
            .with_eval_max_iter(Some(7))
            .with_tol(1e-14),
    )
    .with_backward(BackwardMode::jacobian_free());
    let deq = config.init().unwrap();
    let f = deq_fn(|z: Tensor<2>, (w, b): &(Tensor<2>, Tensor<2>)| {
        (z.matmul(w.clone()) + b.clone()).tanh()
    });
    let eval = deq
        .forward(&f, &(w.clone(), b.clone()), zeros(2, 8))
        .unwrap();
    assert_eq!(eval.stats.max_iterations(), 7);
    assert_eq!(eval.stats.samples[0].status, SolveStatus::MaxIterations);
    let train = deq
        .forward(&f, &(w, b.autodiff().require_grad()), zeros(2, 8))
        .unwrap();
    assert_eq!(train.stats.max_iterations(), 3);
    assert_eq!(train.stats.samples[0].trace.len(), 4);
}

/// `z ↦ tanh(ρₛ z W + bₛ)` per sample `s` (so samples converge at different speeds), evaluated
/// on part of the batch when a solver asks. Records how many samples each evaluation covered.
struct PerSample {
    w: Tensor<2>,
    b: Tensor<2>,
    rho: Tensor<2>,
    rows_per_call: Vec<usize>,
}

impl PerSample {
    fn f(&self, z: Tensor<2>, b: Tensor<2>, rho: Tensor<2>) -> Tensor<2> {
        ((z * rho).matmul(self.w.clone()) + b).tanh()
    }
}

impl BatchMap for PerSample {
    fn eval(&mut self, z: Tensor<2>) -> Tensor<2> {
        self.rows_per_call.push(z.dims()[0]);
        self.f(z, self.b.clone(), self.rho.clone())
    }

    fn eval_rows(&mut self, z: Tensor<2>, rows: &[usize]) -> Option<Tensor<2>> {
        self.rows_per_call.push(rows.len());
        let index = row_index(rows, &device());
        let (b, rho) = (
            self.b.clone().select(0, index.clone()),
            self.rho.clone().select(0, index),
        );
        Some(self.f(z, b, rho))
    }
}

/// Once some samples have converged, every solver evaluates only the others (when the map
/// allows it), and the result is the one of evaluating the whole batch each time.
#[test]
fn solvers_evaluate_only_the_samples_still_iterating() {
    let (batch, dim) = (5, 8);
    let (w, b) = contractive(11, batch, dim, 0.9);
    let rho = tensor2(vec![0.05, 0.9, 0.3, 0.95, 0.6], [batch, 1]);
    for kind in [
        SolverKind::broyden(6),
        SolverKind::anderson(4),
        SolverKind::FixedPoint { damping: 1.0 },
    ] {
        let config = SolverConfig::new(kind.clone()).with_tol(1e-10);
        let mut rows = PerSample {
            w: w.clone(),
            b: b.clone(),
            rho: rho.clone(),
            rows_per_call: Vec::new(),
        };
        let with_rows = config.solve(&mut rows, zeros(batch, dim), 200).unwrap();
        let whole = PerSample {
            rows_per_call: Vec::new(),
            ..rows
        };
        let mut plain = |z: Tensor<2>| whole.f(z, whole.b.clone(), whole.rho.clone());
        let all = config.solve(&mut plain, zeros(batch, dim), 200).unwrap();

        let calls = &rows.rows_per_call;
        assert_eq!(
            calls[0], batch,
            "{kind:?}: the first evaluation is the whole batch"
        );
        assert!(
            calls.iter().any(|&n| n < batch) && calls.iter().all(|&n| n >= 1),
            "{kind:?}: {calls:?}"
        );
        assert!(
            calls.windows(2).all(|w| w[1] <= w[0]),
            "{kind:?}: {calls:?}"
        );
        for (a, b) in with_rows.stats.samples.iter().zip(&all.stats.samples) {
            assert_eq!(a.status, SolveStatus::Converged, "{kind:?}");
            assert_eq!(
                (a.status, a.iterations),
                (b.status, b.iterations),
                "{kind:?}"
            );
            assert_eq!(a.trace, b.trace, "{kind:?}");
        }
        assert_eq!(host(&with_rows.z), host(&all.z), "{kind:?}");
    }
}
