//! The benchmark, the backend cross-check and the demo on the CPU: what they report, and that
//! the measurements can tell the modes apart.
use std::process::Command;

use deq_train::backend;
use deq_train::bench::{self, BenchConfig};
use deq_train::crosscheck;

const BIN: &str = env!("CARGO_BIN_EXE_deq-train");

#[test]
fn bench_times_every_mode_and_the_solver_overhead() {
    let config = BenchConfig {
        model: "small".into(),
        batch: 2,
        forward_iters: 6,
        tol: 1e-3,
        memory: 10,
        modes: vec!["implicit".into(), "shine".into(), "jfb:refine=2".into()],
        reps: 2,
        warmup: 0,
        backend: "flex".into(),
        seed: 3,
        overhead: true,
    };
    let report = bench::run(&config, backend::cpu()).unwrap();
    assert_eq!(report.input_shape, [1, 28, 28]);
    assert_eq!(report.parameters, 41_242);
    assert_eq!(report.modes.len(), 3);
    for t in &report.modes {
        assert_eq!(t.backward_ms.samples.len(), 2, "{}", t.mode);
        assert!(t.backward_ms.median > 0.0 && t.step_ms.median >= t.forward_ms.median);
        assert!(t.implicit_over_mode.unwrap().is_finite());
        assert!(t.forward_iterations_mean > 0.0 && t.forward_iterations_mean <= 6.0);
    }
    let (implicit, shine, refine) = (&report.modes[0], &report.modes[1], &report.modes[2]);
    assert_eq!(implicit.implicit_over_mode, Some(1.0));
    // SHINE needs no vector-Jacobian product; refine k needs k + 1; implicit one per iteration.
    assert_eq!(shine.vjp_evaluations_mean, 0.0);
    assert_eq!(refine.vjp_evaluations_mean, 3.0);
    assert!(implicit.vjp_evaluations_mean > refine.vjp_evaluations_mean);
    assert!(implicit.adjoint_iterations_mean.unwrap() > 2.0);
    let overhead = report.solver_overhead.unwrap();
    assert_eq!(overhead.evaluations, 7);
    assert!(overhead.f_eval_ms > 0.0 && overhead.broyden_iteration_ms > 0.0);

    let bad = BenchConfig {
        modes: vec!["sideways".into()],
        ..config
    };
    let err = bench::run(&bad, backend::cpu()).unwrap_err().to_string();
    assert!(err.contains("sideways"), "{err}");
}

#[test]
fn crosscheck_of_the_cpu_with_itself_is_exact_and_sees_mode_errors() {
    let cpu = backend::cpu();
    let results = crosscheck::toy(&cpu, &cpu, &cpu, &crosscheck::toy_modes(), &mut |_| {}).unwrap();
    for c in &results {
        assert_eq!(c.rel_diff, 0.0, "{}: same backend, same result", c.mode);
    }
    let exact = |name: &str| {
        results
            .iter()
            .find(|c| c.mode.starts_with(name))
            .and_then(|c| c.rel_to_exact)
            .unwrap()
    };
    // f32 implicit is close to the exact f64 gradient; SHINE and JFB are visibly not.
    assert!(exact("implicit") < 1e-4, "{}", exact("implicit"));
    assert!(exact("shine") > 1e-2 && exact("jfb") > 1e-2);
    let (a, b) = crosscheck::compare(&[vec![1.0, 2.0]], &[vec![1.0, 2.5]]);
    assert!((a - 0.5 / 7.25f64.sqrt()).abs() < 1e-12);
    assert!((b - a).abs() < 1e-12);
}

#[test]
fn demo_trains_and_draws_on_the_cpu() {
    let out = std::env::temp_dir().join(format!("deq-train-demo-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let output = Command::new(BIN)
        .args([
            "demo",
            "--backend",
            "flex",
            "--train-images",
            "64",
            "--test-images",
            "32",
        ])
        .args([
            "--epochs",
            "1",
            "--pretrain-steps",
            "1",
            "--show",
            "4",
            "--out",
        ])
        .arg(&out)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("running on flex"), "{stdout}");
    let png = std::fs::read(out.join("demo.png")).unwrap();
    assert_eq!(&png[1..4], b"PNG");
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn backends_not_compiled_in_or_unknown_say_what_to_do() {
    let err = backend::device("vulkan").unwrap_err();
    assert!(err.contains("unknown backend `vulkan`"), "{err}");
    if !backend::compiled_backends().contains(&"cuda") {
        let err = backend::device("cuda").unwrap_err();
        assert!(err.contains("--features cuda"), "{err}");
    }
    let output = Command::new(BIN)
        .args(["bench", "--backend", "cuda", "--reps", "1"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("cuda") && !stderr.contains("panicked"),
        "{stderr}"
    );
}
