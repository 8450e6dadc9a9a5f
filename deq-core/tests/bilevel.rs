//! Bi-level optimisation: exact hypergradients, L-BFGS inverse estimates, SHINE and OPA.
use deq_core::bilevel::*;
use deq_core::toy::SplitMix;

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}
fn norm(a: &[f64]) -> f64 {
    dot(a, a).sqrt()
}
fn cosine(a: &[f64], b: &[f64]) -> f64 {
    dot(a, b) / (norm(a) * norm(b))
}
fn rel_err(a: &[f64], b: &[f64]) -> f64 {
    norm(&a.iter().zip(b).map(|(x, y)| x - y).collect::<Vec<_>>()) / norm(b)
}

fn tight() -> LbfgsConfig {
    LbfgsConfig {
        memory: 30,
        max_iter: 5000,
        gtol: 1e-10,
        ..LbfgsConfig::default()
    }
}

/// The inner solution to machine precision: L-BFGS from zero to `gtol`, then Newton.
fn solve_exact<L: DataLoss>(problem: &BilevelProblem<L>, lambda: f64, gtol: f64) -> Vec<f64> {
    let start = vec![0.0; problem.inner.loss.dim()];
    let config = LbfgsConfig { gtol, ..tight() };
    let r = problem.solve_inner(lambda, start, &config, LbfgsMemory::new(30, true), None);
    problem.solve_inner_newton(lambda, r.x)
}

fn problem() -> BilevelProblem {
    let (a, y) = breast_cancer().unwrap();
    split_problem(&a, &y, 0).unwrap().0
}

/// Must-show 1: the exact hypergradient (dense solve) matches central finite differences of
/// the outer loss in λ to relative error ≤ 1e-5.
#[test]
fn exact_hypergradient_matches_finite_differences() {
    let problem = problem();
    // L-BFGS to 1e-6, then Newton to machine precision.
    let outer_at = |lambda: f64| {
        let x = solve_exact(&problem, lambda, 1e-6);
        let gnorm = norm(&problem.inner.value_grad(&x, lambda).1);
        assert!(gnorm < 1e-9, "inner solve at λ = {lambda}: ‖∇h‖ = {gnorm}");
        (problem.outer.value(&x), x)
    };
    for lambda in [-2.0, 0.0, 1.5] {
        let (_, x) = outer_at(lambda);
        let exact = problem
            .hypergradient(lambda, &x, HypergradMethod::Exact, None, None)
            .value;
        let h = 1e-4;
        let fd = (outer_at(lambda + h).0 - outer_at(lambda - h).0) / (2.0 * h);
        let err = (exact - fd).abs() / fd.abs();
        println!(
            "λ = {lambda}: exact {exact:.10e}, finite differences {fd:.10e}, relative error {err:.2e}"
        );
        assert!(err <= 1e-5, "λ = {lambda}: {err:e}");
    }
}

/// Must-show 2: on a strictly convex quadratic of dimension n, L-BFGS with m ≥ n and exact
/// line search ends with `H = A⁻¹`; the two-loop product equals the explicit BFGS matrix.
#[test]
fn lbfgs_recovers_the_inverse_hessian_of_a_quadratic() {
    let n = 8;
    let mut rng = SplitMix::new(3);
    let m: Vec<f64> = rng.normals(n * n);
    // A = MᵀM + I (SPD).
    let a: Vec<f64> = (0..n * n)
        .map(|k| {
            let (i, j) = (k / n, k % n);
            (0..n).map(|r| m[r * n + i] * m[r * n + j]).sum::<f64>()
                + if i == j { 1.0 } else { 0.0 }
        })
        .collect();
    let matvec = |v: &[f64]| -> Vec<f64> {
        (0..n)
            .map(|i| (0..n).map(|j| a[i * n + j] * v[j]).sum())
            .collect()
    };
    let b = rng.normals(n);
    for scaled in [false, true] {
        let mut memory = LbfgsMemory::new(n, scaled);
        let mut x = rng.normals(n);
        // Explicit BFGS matrix, built by the recursion H⁺ = (I − ρ s yᵀ) H (I − ρ y sᵀ) + ρ s sᵀ
        // from H₀ = γ I (γ of the newest pair, as the two-loop recursion does).
        for _ in 0..n {
            let g: Vec<f64> = matvec(&x).iter().zip(&b).map(|(ax, b)| ax - b).collect();
            let d: Vec<f64> = memory.apply(&g).iter().map(|v| -v).collect();
            let alpha = -dot(&g, &d) / dot(&d, &matvec(&d)); // exact line search
            let s: Vec<f64> = d.iter().map(|v| alpha * v).collect();
            let y = matvec(&s);
            x.iter_mut().zip(&s).for_each(|(xi, si)| *xi += si);
            assert!(memory.push(s, y));
            let gamma = memory.gamma();
            let mut h: Vec<f64> = (0..n * n)
                .map(|k| if k / n == k % n { gamma } else { 0.0 })
                .collect();
            for (s, y) in memory.pairs() {
                let rho = 1.0 / dot(s, y);
                // V = I − ρ y sᵀ; H⁺ = Vᵀ H V + ρ s sᵀ.
                let v: Vec<f64> = (0..n * n)
                    .map(|k| if k / n == k % n { 1.0 } else { 0.0 } - rho * y[k / n] * s[k % n])
                    .collect();
                let hv: Vec<f64> = (0..n * n)
                    .map(|k| (0..n).map(|t| h[(k / n) * n + t] * v[t * n + k % n]).sum())
                    .collect();
                h = (0..n * n)
                    .map(|k| {
                        (0..n)
                            .map(|t| v[t * n + k / n] * hv[t * n + k % n])
                            .sum::<f64>()
                            + rho * s[k / n] * s[k % n]
                    })
                    .collect();
            }
            let two_loop = memory.dense(n);
            assert!(
                rel_err(&two_loop, &h) < 1e-10,
                "scaled={scaled}: two-loop vs explicit {:e}",
                rel_err(&two_loop, &h)
            );
        }
        if !scaled {
            // A⁻¹ by solving A X = I column by column.
            let inverse = memory.dense(n);
            let product: Vec<f64> = (0..n * n)
                .map(|k| {
                    (0..n)
                        .map(|t| inverse[(k / n) * n + t] * a[t * n + k % n])
                        .sum()
                })
                .collect();
            let identity: Vec<f64> = (0..n * n)
                .map(|k| if k / n == k % n { 1.0 } else { 0.0 })
                .collect();
            let err = rel_err(&product, &identity);
            println!("‖H A − I‖ / ‖I‖ after {n} exact steps: {err:.2e}");
            assert!(err <= 1e-6, "{err:e}");
        }
    }
}

/// Must-show 3a: at a converged inner solve on breast_cancer, SHINE's estimate of `H⁻¹∇g`
/// (L-BFGS, memory 30, scaled `H₀`, with OPA pairs every 5 iterations) has cosine ≥ 0.9 with
/// the exact one, and its hypergradient is within 5 % of the exact one, for λ from −4 to 2.
/// Plain SHINE (no OPA) is printed for comparison: the memory of the last 30 steps alone is
/// much less accurate in this direction.
#[test]
fn shine_hypergradient_is_close_on_breast_cancer() {
    let problem = problem();
    let n = problem.inner.loss.a.cols();
    let config = LbfgsConfig {
        memory: 30,
        gtol: 1e-6,
        scaled_h0: true,
        ..LbfgsConfig::default()
    };
    for lambda in [-4.0, -2.0, 0.0, 2.0] {
        let plain = problem.solve_inner(
            lambda,
            vec![0.0; n],
            &config,
            LbfgsMemory::new(30, true),
            None,
        );
        let opa = problem.solve_inner(
            lambda,
            vec![0.0; n],
            &config,
            LbfgsMemory::new(30, true),
            Some(5),
        );
        assert!(opa.converged, "λ = {lambda}: ‖∇h‖ = {}", norm(&opa.grad));
        let exact = problem.hypergradient(lambda, &opa.x, HypergradMethod::Exact, None, None);
        let shine = problem.hypergradient(
            lambda,
            &opa.x,
            HypergradMethod::Shine,
            Some(&opa.memory),
            None,
        );
        let refine = problem.hypergradient(
            lambda,
            &opa.x,
            HypergradMethod::ShineRefine { iterations: 5 },
            Some(&opa.memory),
            None,
        );
        let exact_plain =
            problem.hypergradient(lambda, &plain.x, HypergradMethod::Exact, None, None);
        let shine_plain = problem.hypergradient(
            lambda,
            &plain.x,
            HypergradMethod::Shine,
            Some(&plain.memory),
            None,
        );
        let jfb =
            problem.hypergradient(lambda, &plain.x, HypergradMethod::JacobianFree, None, None);
        let cos = cosine(&shine.q, &exact.q);
        let err = (shine.value - exact.value).abs() / exact.value.abs();
        println!(
            "λ = {lambda:>4}: cosine(q) SHINE+OPA {cos:.4} (hypergradient error {err:.1e}), SHINE+OPA+5 CG {:.4}, plain SHINE {:.4} (‖∇h‖ {:.1e}), JFB {:.4}",
            cosine(&refine.q, &exact.q),
            cosine(&shine_plain.q, &exact_plain.q),
            norm(&plain.grad),
            cosine(&jfb.q, &exact_plain.q)
        );
        assert!(cos >= 0.9, "λ = {lambda}: cosine {cos}");
        assert!(err <= 0.05, "λ = {lambda}: hypergradient error {err}");
    }
}

/// Must-show 3b: OPA makes the inverse estimate more accurate in the prescribed direction
/// (the outer gradient) than without it: cosine and norm ratio against the exact `H⁻¹∇g`,
/// median over 100 random starts of the inner solve (λ = 0, memory 30, scaled `H₀`).
#[test]
fn opa_improves_the_inverse_in_the_outer_direction() {
    let problem = problem();
    let n = problem.inner.loss.a.cols();
    let lambda = 0.0;
    let config = LbfgsConfig {
        memory: 30,
        gtol: 1e-6,
        scaled_h0: true,
        ..LbfgsConfig::default()
    };
    let mut rng = SplitMix::new(7);
    let (mut cos_plain, mut cos_opa, mut ratio_plain, mut ratio_opa) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..100 {
        let x0: Vec<f64> = rng.normals(n);
        let plain = problem.solve_inner(
            lambda,
            x0.clone(),
            &config,
            LbfgsMemory::new(30, true),
            None,
        );
        let opa = problem.solve_inner(lambda, x0, &config, LbfgsMemory::new(30, true), Some(5));
        for (r, cos, ratio) in [
            (&plain, &mut cos_plain, &mut ratio_plain),
            (&opa, &mut cos_opa, &mut ratio_opa),
        ] {
            let exact = problem.hypergradient(lambda, &r.x, HypergradMethod::Exact, None, None);
            let shine =
                problem.hypergradient(lambda, &r.x, HypergradMethod::Shine, Some(&r.memory), None);
            cos.push(cosine(&shine.q, &exact.q));
            ratio.push(norm(&shine.q) / norm(&exact.q));
        }
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (cp, co) = (median(&mut cos_plain), median(&mut cos_opa));
    let (rp, ro) = (median(&mut ratio_plain), median(&mut ratio_opa));
    println!(
        "median over 100 starts: cosine without OPA {cp:.4}, with OPA {co:.4}; norm ratio without {rp:.4}, with {ro:.4}"
    );
    assert!(co > cp, "OPA cosine {co} vs {cp}");
    assert!(
        (ro - 1.0).abs() < (rp - 1.0).abs(),
        "OPA norm ratio {ro} vs {rp}"
    );
}

/// CG solves a symmetric positive definite system, warm start included.
#[test]
fn conjugate_gradient_solves_spd_systems() {
    let problem = problem();
    let n = problem.inner.loss.a.cols();
    let r = problem.solve_inner(
        0.0,
        vec![0.0; n],
        &LbfgsConfig {
            gtol: 1e-6,
            ..tight()
        },
        LbfgsMemory::new(30, true),
        None,
    );
    let exact = problem.hypergradient(0.0, &r.x, HypergradMethod::Exact, None, None);
    let cg = problem.hypergradient(
        0.0,
        &r.x,
        HypergradMethod::Cg {
            tol: 1e-10,
            max_iter: 200,
        },
        None,
        None,
    );
    assert!(
        rel_err(&cg.q, &exact.q) < 1e-8,
        "{}",
        rel_err(&cg.q, &exact.q)
    );
    let warm = problem.hypergradient(
        0.0,
        &r.x,
        HypergradMethod::Cg {
            tol: 1e-10,
            max_iter: 200,
        },
        None,
        Some(&exact.q),
    );
    assert!(
        warm.hvps <= 2,
        "a warm start at the solution needs no iterations ({} products)",
        warm.hvps
    );
}

/// Bad input: malformed LIBSVM lines name the line, labels must be binary, splits non-empty,
/// values finite.
#[test]
fn bad_input_gives_clear_errors() {
    let (a, y) = read_libsvm("1 1:0.5 3:2\n-1 2:1 # comment\n\n+1 1:1e-3\n", None).unwrap();
    assert_eq!((a.rows(), a.cols(), a.nnz()), (3, 3, 4));
    assert_eq!(y, vec![1.0, -1.0, 1.0]);
    for (text, line, needle) in [
        ("1 1:0.5\n1 2:x\n", 2, "value `x`"),
        ("1 1:0.5\nfoo 2:1\n", 2, "label `foo`"),
        ("1 0:1\n", 1, "start at 1"),
        ("1 1-2\n", 1, "index:value"),
        ("1 1:nan\n", 1, "not finite"),
    ] {
        match read_libsvm(text, None) {
            Err(BilevelError::Libsvm { line: l, reason }) => {
                assert_eq!(l, line, "{text:?}");
                assert!(reason.contains(needle), "{reason}");
            }
            other => panic!("{text:?}: expected a LIBSVM error, got {other:?}"),
        }
    }
    assert!(matches!(
        read_libsvm("1 5:1\n", Some(3)),
        Err(BilevelError::Libsvm { line: 1, .. })
    ));
    assert!(matches!(
        read_libsvm("# nothing\n", None),
        Err(BilevelError::Data(_))
    ));
    let err = binary_labels(&[0.0, 1.0, 2.0]).unwrap_err();
    assert!(
        err.to_string()
            .contains("exactly two label values, found 3"),
        "{err}"
    );
    assert_eq!(
        binary_labels(&[3.0, 7.0, 3.0]).unwrap(),
        vec![-1.0, 1.0, -1.0]
    );
    assert!(
        split_indices(5, 0).is_err(),
        "5 % of 5 rounds to 0: empty splits"
    );
    assert!(matches!(
        CsrMatrix::from_rows(2, vec![vec![(0, f64::INFINITY)]]),
        Err(BilevelError::Data(_))
    ));
    assert!(
        LbfgsConfig {
            memory: 0,
            ..LbfgsConfig::default()
        }
        .validate()
        .is_err()
    );
}

/// The outer loop: every hypergradient method lowers the validation loss from λ₀ = 0, and all
/// but the biased Jacobian-free one end within 2 % of the best value of a 49-point grid over
/// [−12, 12] (synthetic sparse task with label noise, whose optimal λ is interior).
#[test]
fn outer_loop_reaches_the_grid_optimum() {
    let (a, y) = synthetic_sparse(4000, 300, 0.05, 0.5, 3).unwrap();
    let (problem, test) = split_problem(&a, &y, 0).unwrap();
    let grid = grid_search(&problem, &test, 49, 12.0, 1e-6);
    let best = grid
        .iter()
        .map(|s| s.val_loss)
        .fold(f64::INFINITY, f64::min);
    let best_lambda = grid
        .iter()
        .min_by(|a, b| a.val_loss.total_cmp(&b.val_loss))
        .unwrap()
        .lambda;
    println!(
        "grid: best validation loss {best:.5} at λ = {best_lambda:.2} ({:.3} s)",
        grid.last().unwrap().seconds
    );
    for method in [
        OuterMethod::Hoag,
        OuterMethod::Shine,
        OuterMethod::ShineRefine,
        OuterMethod::Opa,
        OuterMethod::JacobianFree,
        OuterMethod::TruncatedCg { k: 5 },
    ] {
        let trace = optimize_lambda(&problem, &test, &method.default_config()).unwrap();
        let first = trace[0].val_loss;
        let reached = trace
            .iter()
            .filter(|s| s.accepted)
            .map(|s| s.val_loss)
            .fold(f64::INFINITY, f64::min);
        let last = trace.last().unwrap();
        println!(
            "{:>12}: validation loss {first:.5} → best {reached:.5} (λ = {:.2} at the end), {} rejected, {:.3} s",
            method.name(),
            last.lambda,
            trace.iter().filter(|s| !s.accepted).count(),
            last.seconds
        );
        assert!(reached < first, "{}: no progress", method.name());
        // JFB ignores the Hessian (q = ∇g): biased, it stops short of the optimum.
        if method != OuterMethod::JacobianFree {
            assert!(
                reached <= best * 1.02,
                "{}: {reached} vs grid {best}",
                method.name()
            );
        }
    }
    let carried = optimize_lambda(
        &problem,
        &test,
        &OuterConfig {
            carry_memory: true,
            ..OuterMethod::Shine.default_config()
        },
    )
    .unwrap();
    let reached = carried
        .iter()
        .map(|s| s.val_loss)
        .fold(f64::INFINITY, f64::min);
    println!(
        "shine with carried L-BFGS pairs: best {reached:.5}, inner iterations {} (without: {})",
        carried.iter().map(|s| s.inner_iterations).sum::<usize>(),
        optimize_lambda(&problem, &test, &OuterMethod::Shine.default_config())
            .unwrap()
            .iter()
            .map(|s| s.inner_iterations)
            .sum::<usize>()
    );
    assert!(reached <= best * 1.02);
    let random = random_search(&problem, &test, 20, 12.0, 1e-6, 1);
    assert_eq!(random.len(), 20);
    assert!(random.iter().all(|s| s.lambda.abs() <= 12.0));
    let err = optimize_lambda(
        &problem,
        &test,
        &OuterConfig {
            rho: 0.0,
            ..OuterConfig::hoag()
        },
    )
    .unwrap_err();
    assert!(
        matches!(err, BilevelError::Setting { field: "rho", .. }),
        "{err}"
    );
}

/// A 3-class problem: 600 samples × 12 dense features, labels from a noisy linear teacher.
fn multinomial_problem() -> (BilevelProblem<MultinomialLoss>, MultinomialLoss) {
    let (n, d, k) = (600, 12, 3);
    let mut rng = SplitMix::new(5);
    let x = rng.normals(n * d);
    let w = rng.normals(d * k);
    let labels: Vec<usize> = (0..n)
        .map(|i| {
            let scores: Vec<f64> = (0..k)
                .map(|c| {
                    (0..d).map(|j| x[i * d + j] * w[j * k + c]).sum::<f64>() + 1.5 * rng.normal()
                })
                .collect();
            (0..k)
                .max_by(|&a, &b| scores[a].total_cmp(&scores[b]))
                .unwrap()
        })
        .collect();
    let a = CsrMatrix::from_dense(n, d, &x).unwrap();
    split_multinomial(&a, &labels, k, 0).unwrap()
}

/// Multinomial logistic regression: the Hessian-vector product matches finite differences of
/// the gradient, the exact hypergradient matches finite differences in λ (≤ 1e-5), SHINE with
/// OPA is accurate, and the outer loop lowers the validation loss.
#[test]
fn multinomial_hypergradients() {
    let (problem, test) = multinomial_problem();
    let dim = problem.inner.loss.dim();
    assert_eq!(dim, 36);
    let mut rng = SplitMix::new(9);
    let x = rng.normals(dim);
    let v = rng.normals(dim);
    let h = 1e-6;
    let shifted = |t: f64| {
        problem
            .inner
            .value_grad(
                &x.iter().zip(&v).map(|(a, b)| a + t * b).collect::<Vec<_>>(),
                0.3,
            )
            .1
    };
    let fd: Vec<f64> = shifted(h)
        .iter()
        .zip(shifted(-h))
        .map(|(a, b)| (a - b) / (2.0 * h))
        .collect();
    let hvp = problem
        .inner
        .hvp_with(&problem.inner.loss.curvature(&x), 0.3, &v);
    assert!(
        rel_err(&hvp, &fd) < 1e-7,
        "HVP vs finite differences: {}",
        rel_err(&hvp, &fd)
    );

    let solve = |lambda: f64| solve_exact(&problem, lambda, 1e-7);
    for lambda in [-1.0, 1.0] {
        let xs = solve(lambda);
        let exact = problem
            .hypergradient(lambda, &xs, HypergradMethod::Exact, None, None)
            .value;
        let step = 1e-4;
        let fd = (problem.outer.value(&solve(lambda + step))
            - problem.outer.value(&solve(lambda - step)))
            / (2.0 * step);
        let err = (exact - fd).abs() / fd.abs();
        let opa = problem.solve_inner(
            lambda,
            vec![0.0; dim],
            &LbfgsConfig {
                memory: 30,
                gtol: 1e-6,
                ..LbfgsConfig::default()
            },
            LbfgsMemory::new(30, true),
            Some(5),
        );
        let shine = problem.hypergradient(
            lambda,
            &opa.x,
            HypergradMethod::Shine,
            Some(&opa.memory),
            None,
        );
        let exact_at_opa =
            problem.hypergradient(lambda, &opa.x, HypergradMethod::Exact, None, None);
        let cos = cosine(&shine.q, &exact_at_opa.q);
        println!(
            "multinomial λ = {lambda}: exact {exact:.6e} vs finite differences {fd:.6e} ({err:.1e}); SHINE+OPA cosine {cos:.4}"
        );
        assert!(err <= 1e-5, "{err:e}");
        assert!(cos >= 0.9, "{cos}");
    }
    let trace = optimize_lambda(&problem, &test, &OuterMethod::Shine.default_config()).unwrap();
    let best = trace
        .iter()
        .map(|s| s.val_loss)
        .fold(f64::INFINITY, f64::min);
    assert!(best < trace[0].val_loss);
    let a = CsrMatrix::from_dense(2, 1, &[1.0, 2.0]).unwrap();
    assert!(
        split_multinomial(&a, &[0, 3], 3, 0)
            .unwrap_err()
            .to_string()
            .contains("label 3, outside 0..3")
    );
}
