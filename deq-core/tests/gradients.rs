//! Every backward mode against exact gradients on the documented toy layer, in f64.
mod common;

use burn::tensor::{DType, Tensor};
use common::*;
use deq_core::{BackwardMode, DeqConfig, DeqFunction, SolverConfig, SolverKind, StopMode};

const NAMES: [&str; 4] = ["W", "U", "b", "x"];

fn toy() -> Toy {
    Toy::new(7, 4, 16, 8, 0.7)
}

/// Must-show 1a: Implicit matches central finite differences of the loss to ≤ 1e-5 (every
/// entry of every parameter).
#[test]
fn implicit_matches_finite_differences() {
    let toy = toy();
    let config = DeqConfig::new(tight_broyden(1e-13)).with_backward(exact_implicit());
    let (grads, out) = toy_gradients(&toy, &config);
    assert!(out.stats.all_converged());
    let solver = tight_broyden(1e-14);
    let h = 1e-6;
    for (which, size) in toy.sizes().into_iter().enumerate() {
        let fd: Vec<f64> = (0..size)
            .map(|i| {
                (toy_loss(&toy, &solver, which, i, h) - toy_loss(&toy, &solver, which, i, -h))
                    / (2.0 * h)
            })
            .collect();
        let err = rel_err(&grads[which], &fd);
        println!(
            "{}: relative error vs finite differences {err:.3e}",
            NAMES[which]
        );
        assert!(err <= 1e-5, "{}: relative error {err:e}", NAMES[which]);
    }
}

/// Must-show 1b: Implicit matches the Unrolled gradient of a long converged solve to ≤ 1e-6.
#[test]
fn implicit_matches_long_unrolled_solve() {
    let toy = toy();
    let implicit = DeqConfig::new(tight_broyden(1e-13)).with_backward(exact_implicit());
    let unrolled = DeqConfig::new(
        SolverConfig::new(SolverKind::fixed_point())
            .with_max_iter(400)
            .with_tol(1e-15)
            .with_stop(StopMode::Absolute),
    )
    .with_backward(BackwardMode::Unrolled);
    let (gi, _) = toy_gradients(&toy, &implicit);
    let (gu, out) = toy_gradients(&toy, &unrolled);
    println!("unrolled iterations: {}", out.stats.max_iterations());
    for which in 0..4 {
        let err = rel_err(&gi[which], &gu[which]);
        println!("{}: implicit vs unrolled {err:.3e}", NAMES[which]);
        assert!(err <= 1e-6, "{}: {err:e}", NAMES[which]);
    }
}

fn shine_config(tol: f64, mode: BackwardMode) -> DeqConfig {
    DeqConfig::new(
        SolverConfig::new(SolverKind::broyden(60))
            .with_max_iter(100)
            .with_tol(tol),
    )
    .with_backward(mode)
}

/// Must-show 3a: with Broyden converged to relative residual ≤ 1e-6, SHINE's weight gradient
/// has cosine ≥ 0.9 with the implicit one.
#[test]
fn shine_gradient_is_close_to_implicit() {
    let toy = toy();
    let (exact, _) = toy_gradients(&toy, &shine_config(1e-6, exact_implicit()));
    let (shine, out) = toy_gradients(&toy, &shine_config(1e-6, BackwardMode::shine()));
    assert!(out.stats.all_converged() && out.stats.max_rel_residual() <= 1e-6);
    let (jfb, _) = toy_gradients(&toy, &shine_config(1e-6, BackwardMode::jacobian_free()));
    let cos = cosine(&shine[0], &exact[0]);
    let cos_jfb = cosine(&jfb[0], &exact[0]);
    println!("cosine(SHINE, implicit) for W: {cos:.6}; JFB: {cos_jfb:.6}");
    assert!(cos >= 0.9, "cosine {cos}");
    assert!(cos > cos_jfb, "SHINE ({cos}) should beat JFB ({cos_jfb})");
    let report = out.backward.get().expect("backward ran");
    assert_eq!(report.mode, "shine");
    assert_eq!(
        report.vjp_evaluations, 0,
        "SHINE needs no vector-Jacobian product"
    );
}

/// Must-show 3b: applying `B` instead of `Bᵀ` is measurably worse. Compares both adjoint
/// estimates with the exact adjoint `(I − J_f)⁻ᵀ g`, computed densely per sample, over
/// several random problems: `Bᵀ` must win on every one and by ≥ 1.5× on average.
#[test]
fn transpose_matters() {
    let mut ratios = Vec::new();
    for seed in 1..=5 {
        let (err_t, err_b) = adjoint_errors(&Toy::new(seed, 4, 16, 8, 0.7));
        println!("seed {seed}: mean relative adjoint error Bᵀ {err_t:.4e}, B {err_b:.4e}");
        assert!(
            err_t < err_b,
            "seed {seed}: Bᵀ ({err_t}) must beat B ({err_b})"
        );
        ratios.push(err_b / err_t);
    }
    let mean = ratios.iter().sum::<f64>() / ratios.len() as f64;
    println!("mean error ratio B / Bᵀ: {mean:.3}");
    assert!(mean >= 1.5, "ratios {ratios:?}");
}

/// Mean over samples of the relative error of `−Bᵀg` and of `−Bg` against the exact adjoint.
fn adjoint_errors(toy: &Toy) -> (f64, f64) {
    let params = toy.plain_shifted(0, 0, 0.0);
    let f = toy_fn();
    let mut map = |z: Tensor<2>| f.forward(z, &params);
    let result = SolverConfig::new(SolverKind::broyden(60))
        .with_max_iter(100)
        .with_tol(1e-8)
        .solve(&mut map, toy.z0(), 100)
        .unwrap();
    assert!(result.stats.all_converged());
    let inverse = result.inverse.unwrap();
    let g = toy.c();
    let w_t = host(&inverse.apply_transposed(g.clone()).neg());
    let w_b = host(&inverse.apply(g.clone()).neg());
    let bg_low = host(&inverse.apply(g));
    // With row vectors z ↦ tanh(zW + …): (J_f)_{ij} = (1 − f_i²) W_{ji}. Solve (I − J_f)ᵀ w = g.
    let fz = host(&f.forward(result.z.clone(), &params));
    let (n, batch) = (toy.dim, toy.batch);
    let (mut err_t, mut err_b) = (0.0, 0.0);
    for s in 0..batch {
        let mut a = vec![0.0; n * n]; // a[r][c] = δ_rc − J_f[c][r] = δ_rc − (1 − f_c²) W_{rc}
        for r in 0..n {
            for c in 0..n {
                let jf_cr = (1.0 - fz[s * n + c].powi(2)) * toy.w[r * n + c];
                a[r * n + c] = if r == c { 1.0 } else { 0.0 } - jf_cr;
            }
        }
        let exact = deq_core::dense::solve(a, toy.c[s * n..(s + 1) * n].to_vec())
            .expect("I − J_f is invertible for a contraction");
        err_t += rel_err(&w_t[s * n..(s + 1) * n], &exact);
        err_b += rel_err(&w_b[s * n..(s + 1) * n], &exact);
        // The low-rank products agree with the dense matrix −I + U Vᵀ.
        let dense = inverse.dense(s);
        let gs = &toy.c[s * n..(s + 1) * n];
        let bg: Vec<f64> = (0..n)
            .map(|r| (0..n).map(|c| dense[r * n + c] * gs[c]).sum::<f64>())
            .collect();
        assert!(rel_err(&bg_low[s * n..(s + 1) * n], &bg) < 1e-12);
    }
    (err_t / batch as f64, err_b / batch as f64)
}

/// Must-show 3c: refine k = 0, 1, 5, 20 approaches Implicit monotonically and reaches ≤ 1e-4.
#[test]
fn refine_converges_to_implicit() {
    let toy = toy();
    let (exact, _) = toy_gradients(&toy, &shine_config(1e-6, exact_implicit()));
    let mut errors = Vec::new();
    for k in [0, 1, 5, 20] {
        let (g, out) = toy_gradients(
            &toy,
            &shine_config(
                1e-6,
                BackwardMode::Shine {
                    fallback: None,
                    refine: k,
                },
            ),
        );
        let err = rel_err(&g[0], &exact[0]);
        println!(
            "refine {k:>2}: relative error {err:.3e}, VJPs {}",
            out.backward.get().unwrap().vjp_evaluations
        );
        errors.push(err);
    }
    for pair in errors.windows(2) {
        assert!(
            pair[1] <= pair[0] * 1.05 + 1e-12,
            "not monotone: {errors:?}"
        );
    }
    assert!(errors[3] <= 1e-4, "refine 20: {}", errors[3]);
}

/// Must-show 3c (JFB variant): JFB + refine also approaches Implicit.
#[test]
fn jfb_refine_converges_to_implicit() {
    let toy = toy();
    let (exact, _) = toy_gradients(&toy, &shine_config(1e-6, exact_implicit()));
    let (g0, _) = toy_gradients(
        &toy,
        &shine_config(1e-6, BackwardMode::JacobianFree { refine: 0 }),
    );
    let (g20, _) = toy_gradients(
        &toy,
        &shine_config(1e-6, BackwardMode::JacobianFree { refine: 20 }),
    );
    let (e0, e20) = (rel_err(&g0[0], &exact[0]), rel_err(&g20[0], &exact[0]));
    println!("JFB {e0:.3e}, JFB + refine 20 {e20:.3e}");
    assert!(e20 <= 1e-4 && e20 < e0);
}

/// Must-show 3d: the fallback fires per sample on an ill-conditioned case and only there.
/// Sample 0 sees `f(z) = tanh(s (z W) + x)` with s ‖W‖ = 0.99 (a nearly singular I − J_f),
/// the others s ‖W‖ = 0.3.
#[test]
fn fallback_fires_only_on_the_ill_conditioned_sample() {
    let (batch, dim) = (4, 12);
    let mut rng = Rng::new(11);
    let a = rng.normals(dim * dim);
    // Symmetric, so the spectral radius equals the norm and I − J_f is nearly singular.
    let sym: Vec<f64> = (0..dim * dim)
        .map(|k| {
            let (i, j) = (k / dim, k % dim);
            a[i * dim + j] + a[j * dim + i]
        })
        .collect();
    let s = spectral_norm(&sym, dim, dim);
    let w: Vec<f64> = sym.iter().map(|v| v / s).collect();
    let scales = vec![0.99, 0.3, 0.3, 0.3];
    let x: Vec<f64> = rng.normals(batch * dim).iter().map(|v| 1e-3 * v).collect();
    let c = rng.normals(batch * dim);

    let run = |mode: BackwardMode| {
        let xt = tensor2(x.clone(), [batch, dim]).autodiff().require_grad();
        let inputs = (
            tensor2(w.clone(), [dim, dim]),
            tensor2(scales.clone(), [batch, 1]),
            xt.clone(),
        );
        let f = deq_core::deq_fn(
            |z: Tensor<2>, (w, s, x): &(Tensor<2>, Tensor<2>, Tensor<2>)| {
                (z.matmul(w.clone()) * s.clone() + x.clone()).tanh()
            },
        );
        let deq = shine_config(1e-8, mode).init().unwrap();
        let out = deq
            .forward(
                &f,
                &inputs,
                Tensor::zeros([batch, dim], (&device(), burn::tensor::DType::F64)),
            )
            .unwrap();
        assert!(out.stats.all_converged());
        let grads = (out.z.clone() * tensor2(c.clone(), [batch, dim]))
            .sum()
            .backward();
        (host(&xt.grad(&grads).unwrap()), out.backward.get())
    };
    let (g_fallback, report) = run(BackwardMode::Shine {
        fallback: Some(1.8),
        refine: 0,
    });
    let (g_shine, _) = run(BackwardMode::shine());
    let (g_jfb, _) = run(BackwardMode::jacobian_free());
    let report = report.unwrap();
    println!("fallback per sample: {:?}", report.fallback);
    assert_eq!(report.fallback, vec![true, false, false, false]);
    assert_eq!(report.fallback_count(), 1);
    // Row 0 of the injection gradient is JFB's, the other rows SHINE's.
    assert!(rel_err(&g_fallback[..dim], &g_jfb[..dim]) < 1e-12);
    assert!(rel_err(&g_fallback[dim..], &g_shine[dim..]) < 1e-12);
    assert!(
        rel_err(&g_shine[..dim], &g_jfb[..dim]) > 1e-2,
        "the case must actually be ill-conditioned"
    );
}

/// Must-show 4a: JacobianFree equals the gradient of one tracked application of f at z*.
#[test]
fn jacobian_free_is_one_tracked_application() {
    let toy = toy();
    let config = shine_config(1e-10, BackwardMode::jacobian_free());
    let (g, _) = toy_gradients(&toy, &config);
    let manual = manual_gradients(&toy, &config, 1, 1.0);
    for which in 0..4 {
        assert!(
            rel_err(&g[which], &manual[which]) < 1e-12,
            "{}",
            NAMES[which]
        );
    }
}

/// Must-show 4b: Phantom{k, τ} equals backprop through k damped steps from z*.
#[test]
fn phantom_is_backprop_through_damped_steps() {
    let toy = toy();
    for (k, tau) in [(1, 1.0), (5, 0.5), (3, 0.8)] {
        let config = shine_config(1e-10, BackwardMode::Phantom { k, tau });
        let (g, _) = toy_gradients(&toy, &config);
        let manual = manual_gradients(&toy, &config, k, tau);
        for which in 0..4 {
            let err = rel_err(&g[which], &manual[which]);
            assert!(err < 1e-12, "k={k} tau={tau} {}: {err:e}", NAMES[which]);
        }
    }
}

/// Gradients of `Σ c ⊙ z_k` where z_k comes from k tracked damped steps from the plain z*.
fn manual_gradients(toy: &Toy, config: &DeqConfig, k: usize, tau: f64) -> Vec<Vec<f64>> {
    let plain = toy.plain_shifted(0, 0, 0.0);
    let f = toy_fn();
    let mut map = |z: Tensor<2>| f.forward(z, &plain);
    let z_star = config
        .solver
        .solve(&mut map, toy.z0(), config.solver.max_iter)
        .unwrap()
        .z;
    let params = toy.tracked();
    let mut z = z_star;
    for _ in 0..k {
        z = z.clone() * (1.0 - tau) + f.forward(z, &params) * tau;
    }
    let grads = (z * toy.c()).sum().backward();
    let (w, u, b, x) = params;
    [w, u, b, x]
        .iter()
        .map(|p| host(&p.grad(&grads).unwrap()))
        .collect()
}

/// `conv2d_same` has the value and the gradients of Burn's `conv2d` (both routes of its input
/// gradient: more input than output channels, and fewer; both routes of its kernel gradient:
/// narrow and wide images), with the input, the kernel or both tracked, in f64 and in f32 (on
/// flex, f32 takes the direct loop of `direct_conv`, also untracked).
#[test]
fn conv2d_same_matches_burn_conv2d() {
    for (dtype, tol_value, tol_grad) in [(DType::F64, 1e-13, 1e-12), (DType::F32, 1e-6, 1e-5)] {
        conv2d_same_matches_burn_conv2d_in(dtype, tol_value, tol_grad);
    }
}

fn conv2d_same_matches_burn_conv2d_in(dtype: DType, tol_value: f64, tol_grad: f64) {
    use burn::tensor::TensorData;
    use burn::tensor::module::conv2d;
    use burn::tensor::ops::ConvOptions;
    let device = device();
    let t4 = |shape: [usize; 4], seed: u64| {
        let values = Rng::new(seed).normals(shape.iter().product());
        Tensor::<4>::from_data(TensorData::new(values, shape), (&device, DType::F64)).cast(dtype)
    };
    // On flex in f32 the kernel gradient of k > 1 is the direct loop (6 -> 2 puts the input
    // channels in its vectors, 2 -> 6 the output channels); otherwise 7×6 images take Burn's
    // kernel gradient for k > 1, 5×33 ones the shifted products.
    let cases = [(6, 2, 3), (2, 6, 3), (5, 3, 1), (4, 4, 5)];
    for ((cin, cout, k), [h, w_]) in cases.into_iter().flat_map(|c| [(c, [7, 6]), (c, [5, 33])]) {
        let x = t4([3, cin, h, w_], 10 + cin as u64);
        let w = t4([cout, cin, k, k], 20 + cout as u64);
        let weight_out = t4([3, cout, h, w_], 30);
        let p = k / 2;
        let options = ConvOptions::new([1, 1], [p, p], [1, 1], 1);
        let (plain, reference) = (
            values(deq_core::conv2d_same(x.clone(), w.clone())),
            values(conv2d(x.clone(), w.clone(), None, options.clone())),
        );
        let case = format!("{dtype:?} {cin}->{cout}, k {k}, {h}x{w_}, untracked");
        assert!(rel_err(&plain, &reference) < tol_value, "{case}: value");
        for (track_x, track_w) in [(true, true), (true, false), (false, true)] {
            let grads_of = |ours: bool| {
                let xa = if track_x {
                    x.clone().autodiff().require_grad()
                } else {
                    x.clone()
                };
                let wa = if track_w {
                    w.clone().autodiff().require_grad()
                } else {
                    w.clone()
                };
                let y = if ours {
                    deq_core::conv2d_same(xa.clone(), wa.clone())
                } else {
                    conv2d(xa.clone(), wa.clone(), None, options.clone())
                };
                let value = values(y.clone().without_autodiff());
                let grads = (y * weight_out.clone().autodiff()).sum().backward();
                let gx = xa.grad(&grads).map(values);
                let gw = wa.grad(&grads).map(values);
                (value, gx, gw)
            };
            let (v0, gx0, gw0) = grads_of(false);
            let (v1, gx1, gw1) = grads_of(true);
            let case = format!(
                "{dtype:?} {cin}->{cout}, k {k}, {h}x{w_}, tracked x {track_x}, w {track_w}"
            );
            assert!(rel_err(&v1, &v0) < tol_value, "{case}: value");
            assert_eq!(gx0.is_some(), track_x, "{case}");
            assert_eq!(gx1.is_some(), track_x, "{case}: input gradient present");
            assert_eq!(gw1.is_some(), track_w, "{case}: kernel gradient present");
            if let (Some(a), Some(b)) = (gx1, gx0) {
                assert!(
                    rel_err(&a, &b) < tol_grad,
                    "{case}: input gradient {:e}",
                    rel_err(&a, &b)
                );
            }
            if let (Some(a), Some(b)) = (gw1, gw0) {
                assert!(
                    rel_err(&a, &b) < tol_grad,
                    "{case}: kernel gradient {:e}",
                    rel_err(&a, &b)
                );
            }
        }
    }
}

/// `group_norm` has the value and the gradients of `burn::nn::GroupNorm` (affine or not; input,
/// scale and shift tracked or constant), in f64 and in f32.
#[test]
fn group_norm_matches_burn_group_norm() {
    for (dtype, tol_value, tol_grad) in [(DType::F64, 1e-12, 1e-10), (DType::F32, 1e-5, 1e-4)] {
        group_norm_matches_burn_group_norm_in(dtype, tol_value, tol_grad);
    }
}

fn group_norm_matches_burn_group_norm_in(dtype: DType, tol_value: f64, tol_grad: f64) {
    use burn::module::Param;
    use burn::nn::GroupNormConfig;
    use burn::tensor::TensorData;
    let device = device();
    let tensor = |shape: Vec<usize>, seed: u64| {
        let values = Rng::new(seed).normals(shape.iter().product());
        let len: usize = shape.iter().product();
        Tensor::<1>::from_data(TensorData::new(values, [len]), (&device, DType::F64)).cast(dtype)
    };
    let shape = [3, 6, 4, 5];
    let x0 = tensor(shape.to_vec(), 41).reshape(shape);
    let weight = tensor(shape.to_vec(), 42).reshape(shape);
    for (groups, affine) in [(3, true), (2, false), (6, true)] {
        for (track_x, track_params) in [(true, true), (true, false), (false, true)] {
            if !track_x && !affine {
                continue; // nothing tracked
            }
            let gamma0 = tensor(vec![6], 43) * 0.5 + 1.0;
            let beta0 = tensor(vec![6], 44);
            let run = |ours: bool| {
                let x = if track_x {
                    x0.clone().autodiff().require_grad()
                } else {
                    x0.clone().autodiff()
                };
                let lift = |t: Tensor<1>| {
                    if track_params {
                        t.autodiff().require_grad()
                    } else {
                        t.autodiff()
                    }
                };
                let (gamma, beta) = (lift(gamma0.clone()), lift(beta0.clone()));
                let y = if ours {
                    deq_core::group_norm(
                        x.clone(),
                        groups,
                        affine.then(|| gamma.clone()),
                        affine.then(|| beta.clone()),
                        1e-5,
                    )
                } else {
                    let mut norm = GroupNormConfig::new(groups, 6)
                        .with_affine(affine)
                        .init(&device);
                    if affine {
                        norm.gamma = Some(Param::from_tensor(gamma.clone()));
                        norm.beta = Some(Param::from_tensor(beta.clone()));
                    }
                    norm.forward(x.clone())
                };
                let value = values(y.clone().without_autodiff());
                let grads = (y * weight.clone().autodiff()).sum().backward();
                let gx = x.grad(&grads).map(values);
                let gg = gamma.grad(&grads).map(values);
                let gb = beta.grad(&grads).map(values);
                (value, gx, gg, gb)
            };
            let (v0, gx0, gg0, gb0) = run(false);
            let (v1, gx1, gg1, gb1) = run(true);
            let case = format!(
                "{dtype:?}, groups {groups}, affine {affine}, tracked x {track_x}, params \
                 {track_params}"
            );
            assert!(
                rel_err(&v1, &v0) < tol_value,
                "{case}: value {:e}",
                rel_err(&v1, &v0)
            );
            assert_eq!(gx1.is_some(), track_x, "{case}: input gradient present");
            if let (Some(a), Some(b)) = (gx1, gx0) {
                assert!(
                    rel_err(&a, &b) < tol_grad,
                    "{case}: input gradient {:e}",
                    rel_err(&a, &b)
                );
            }
            if affine && track_params {
                let (a, b) = (gg1.expect("scale gradient"), gg0.expect("reference"));
                assert!(
                    rel_err(&a, &b) < tol_grad,
                    "{case}: scale gradient {:e}",
                    rel_err(&a, &b)
                );
                let (a, b) = (gb1.expect("shift gradient"), gb0.expect("reference"));
                assert!(
                    rel_err(&a, &b) < tol_grad,
                    "{case}: shift gradient {:e}",
                    rel_err(&a, &b)
                );
            }
        }
    }
}

/// `batch_norm_train` has the value, the batch statistics and the gradients of
/// `burn::tensor::module::batch_norm_train` (input, scale and shift tracked or constant), in f64
/// and in f32 (on flex, f32 takes the fused backward of `batch_norm_kernel`).
#[test]
fn batch_norm_train_matches_burn() {
    for (dtype, tol_value, tol_grad) in [(DType::F64, 1e-12, 1e-10), (DType::F32, 1e-5, 1e-4)] {
        batch_norm_train_matches_burn_in(dtype, tol_value, tol_grad);
    }
}

fn batch_norm_train_matches_burn_in(dtype: DType, tol_value: f64, tol_grad: f64) {
    use burn::tensor::TensorData;
    let device = device();
    let tensor = |len: usize, seed: u64| {
        let values = Rng::new(seed).normals(len);
        Tensor::<1>::from_data(TensorData::new(values, [len]), (&device, DType::F64)).cast(dtype)
    };
    let shape = [3, 4, 5, 6];
    let len = shape.iter().product();
    // Offsets per channel, so that the means are not zero.
    let x0 = tensor(len, 51).reshape(shape) + tensor(4, 52).reshape([1, 4, 1, 1]) * 3.0;
    let weight = tensor(len, 53).reshape(shape);
    let gamma0 = tensor(4, 54) * 0.5 + 1.0;
    let beta0 = tensor(4, 55);
    for (track_x, track_params) in [(true, true), (true, false), (false, true)] {
        let run = |ours: bool| {
            let lift = |t: Tensor<1>, track: bool| {
                if track {
                    t.autodiff().require_grad()
                } else {
                    t.autodiff()
                }
            };
            let x = if track_x {
                x0.clone().autodiff().require_grad()
            } else {
                x0.clone().autodiff()
            };
            let (gamma, beta) = (
                lift(gamma0.clone(), track_params),
                lift(beta0.clone(), track_params),
            );
            let (y, mean, variance) = if ours {
                deq_core::batch_norm_train(x.clone(), gamma.clone(), beta.clone(), 1e-5)
            } else {
                let out = burn::tensor::module::batch_norm_train(
                    x.clone(),
                    gamma.clone(),
                    beta.clone(),
                    1e-5,
                );
                (out.output, out.mean, out.variance)
            };
            let stats = [mean, variance].map(|t| {
                t.without_autodiff()
                    .into_data()
                    .iter::<f64>()
                    .collect::<Vec<_>>()
            });
            let value = values(y.clone().without_autodiff());
            let grads = (y * weight.clone().autodiff()).sum().backward();
            let gx = x.grad(&grads).map(values);
            let flat = |t: Tensor<1>| t.into_data().iter::<f64>().collect::<Vec<_>>();
            let gg = gamma.grad(&grads).map(flat);
            let gb = beta.grad(&grads).map(flat);
            (value, stats, gx, gg, gb)
        };
        let (v0, s0, gx0, gg0, gb0) = run(false);
        let (v1, s1, gx1, gg1, gb1) = run(true);
        let case = format!("{dtype:?}, tracked x {track_x}, params {track_params}");
        assert!(rel_err(&v1, &v0) < tol_value, "{case}: value");
        assert!(rel_err(&s1[0], &s0[0]) < tol_value, "{case}: mean");
        assert!(rel_err(&s1[1], &s0[1]) < tol_value, "{case}: variance");
        assert_eq!(gx1.is_some(), track_x, "{case}: input gradient present");
        assert_eq!(
            gg1.is_some(),
            track_params,
            "{case}: scale gradient present"
        );
        assert_eq!(
            gb1.is_some(),
            track_params,
            "{case}: shift gradient present"
        );
        for (name, ours, theirs) in [
            ("input", gx1, gx0),
            ("scale", gg1, gg0),
            ("shift", gb1, gb0),
        ] {
            if let (Some(a), Some(b)) = (ours, theirs) {
                let err = rel_err(&a, &b);
                assert!(err < tol_grad, "{case}: {name} gradient {err:e}");
            }
        }
    }
}

/// The toy's f with a hand-written linearisation that counts its products.
struct LinearizedToy {
    products: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl DeqFunction for LinearizedToy {
    type Input = deq_core::toy::ToyInput;

    fn forward(&self, z: Tensor<2>, x: &Self::Input) -> Tensor<2> {
        toy_fn().forward(z, x)
    }

    fn without_autodiff(&self) -> Self {
        Self {
            products: self.products.clone(),
        }
    }

    fn is_autodiff(&self) -> bool {
        false
    }

    /// `f = tanh(z W + x U + b)`: `J_fᵀ w = (w ⊙ (1 − f²)) Wᵀ`.
    fn linearize(&self, z: &Tensor<2>, x: &Self::Input) -> Option<deq_core::Linearization> {
        let f = toy_fn().forward(z.clone(), x);
        let slope = f.clone().neg() * f + 1.0;
        let w_t = x.0.clone().transpose();
        let products = self.products.clone();
        Some(deq_core::Linearization::new(move |w: Tensor<2>| {
            products.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            (w * slope.clone()).matmul(w_t.clone())
        }))
    }
}

/// A `DeqFunction::linearize` is used for every product of the adjoint solves (implicit, SHINE
/// and JFB refinement) and gives the generic path's gradients.
#[test]
fn linearize_replaces_the_tracked_products() {
    use std::sync::atomic::Ordering;
    let toy = toy();
    let products = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let linearized = LinearizedToy {
        products: products.clone(),
    };
    for mode in [
        exact_implicit(),
        "shine:refine=3".parse().unwrap(),
        "jfb:refine=2".parse().unwrap(),
    ] {
        let config = DeqConfig::new(tight_broyden(1e-13)).with_backward(mode.clone());
        let (reference, _) = toy_gradients(&toy, &config);
        products.store(0, Ordering::Relaxed);
        let deq = config.init().unwrap();
        let params = toy.tracked();
        let out = deq.forward(&linearized, &params, toy.z0()).unwrap();
        let grads = (out.z.clone() * toy.c()).sum().backward();
        let report = out.backward.get().unwrap();
        assert!(report.vjp_evaluations > 0);
        assert_eq!(
            products.load(Ordering::Relaxed),
            report.vjp_evaluations,
            "{mode:?}: every product goes through the linearisation"
        );
        let (w, u, b, x) = params;
        for (which, p) in [w, u, b, x].iter().enumerate() {
            let g = host(&p.grad(&grads).unwrap());
            let err = rel_err(&g, &reference[which]);
            assert!(err <= 1e-10, "{mode:?} {}: {err:e}", NAMES[which]);
        }
    }
}

/// The linearisation building blocks give Burn's autodiff input gradients, in f64: GroupNorm
/// (affine or not), convolutions (both routes, strides 1 and 2 with even and odd sizes, 1×1)
/// and ReLU.
#[test]
fn linearization_blocks_match_autodiff() {
    use burn::tensor::TensorData;
    use burn::tensor::module::conv2d;
    use burn::tensor::ops::ConvOptions;
    use deq_core::linearization::{Conv2dVjp, GroupNormVjp, relu_with_mask};
    let device = device();
    let tensor = |shape: [usize; 4], seed: u64| {
        let len = shape.iter().product();
        let values = Rng::new(seed).normals(len);
        Tensor::<4>::from_data(TensorData::new(values, shape), (&device, DType::F64))
    };
    let check = |name: &str, ours: Tensor<4>, exact: Tensor<4>| {
        assert_eq!(ours.dims(), exact.dims(), "{name}");
        let err = rel_err(&values(ours), &values(exact));
        assert!(err <= 1e-12, "{name}: {err:e}");
    };

    // GroupNorm.
    let x = tensor([3, 6, 4, 5], 51);
    let grad = tensor([3, 6, 4, 5], 52);
    for (groups, affine) in [(3, true), (2, false)] {
        let gamma = affine.then(|| tensor([1, 6, 1, 1], 53).reshape([6]) * 0.5 + 1.0);
        let beta = affine.then(|| tensor([1, 6, 1, 1], 54).reshape([6]));
        let leaf = x.clone().autodiff().require_grad();
        let y = deq_core::group_norm(
            leaf.clone(),
            groups,
            gamma.clone().map(|g| g.autodiff()),
            beta.clone().map(|b| b.autodiff()),
            1e-5,
        );
        let exact_y = y.clone().without_autodiff();
        let grads = (y * grad.clone().autodiff()).sum().backward();
        let exact = leaf.grad(&grads).unwrap().without_autodiff();
        let (value, vjp) = GroupNormVjp::forward(x.clone(), groups, gamma, beta, 1e-5);
        check("group norm value", value, exact_y);
        check("group norm", vjp.backward(grad.clone()), exact);
    }

    // Convolutions: [out, in, k], stride, padding, input size.
    for (out, inp, k, stride, padding, size) in [
        (4, 10, 3, 1, 1, 6), // same, more input channels: forward route
        (10, 4, 3, 1, 1, 6), // same, fewer: transposed
        (5, 5, 3, 2, 1, 14), // stride 2, even size
        (5, 3, 3, 2, 1, 7),  // stride 2, odd size
        (6, 8, 1, 1, 0, 5),  // 1×1
    ] {
        let weight = tensor([out, inp, k, k], 55);
        let x = tensor([2, inp, size, size], 56);
        let options = ConvOptions::new([stride; 2], [padding; 2], [1, 1], 1);
        let leaf = x.clone().autodiff().require_grad();
        let y = conv2d(leaf.clone(), weight.clone().autodiff(), None, options);
        let grad = tensor(y.dims(), 57);
        let grads = (y * grad.clone().autodiff()).sum().backward();
        let exact = leaf.grad(&grads).unwrap().without_autodiff();
        let vjp = Conv2dVjp::new(weight, [stride; 2], [padding; 2], [size, size]);
        check(
            &format!("conv {out}←{inp} k{k} s{stride} n{size}"),
            vjp.backward(grad),
            exact,
        );
    }

    // ReLU (with exact zeros in the input).
    let x = tensor([2, 3, 4, 4], 58).mask_fill(tensor([2, 3, 4, 4], 59).greater_elem(1.0), 0.0);
    let leaf = x.clone().autodiff().require_grad();
    let y = burn::tensor::activation::relu(leaf.clone());
    let grad = tensor([2, 3, 4, 4], 60);
    let grads = (y * grad.clone().autodiff()).sum().backward();
    let exact = leaf.grad(&grads).unwrap().without_autodiff();
    let (value, mask) = relu_with_mask(x.clone());
    check("relu value", value, burn::tensor::activation::relu(x));
    check("relu", grad * mask, exact);
}
