//! The benchmark, the backend cross-check and the demo on the CPU: what they report, and that
//! the measurements can tell the modes apart.
use std::process::Command;

use deq_core::StepPrecision;
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
        steps: StepPrecision::Full,
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
    assert_eq!((report.forward_iters, report.memory), (6, 10));
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
    assert!(overhead.bookkeeping_ms > 0.0 && overhead.bookkeeping_fraction > 0.0);
    // The second ratio divides the same bookkeeping by the time in f of the same solves.
    assert!(overhead.f_in_solve_ms > 0.0 && overhead.bookkeeping_fraction_in_solve > 0.0);
    let implied = overhead.bookkeeping_ms / overhead.f_in_solve_ms;
    assert!(
        (0.2..5.0).contains(&(overhead.bookkeeping_fraction_in_solve / implied)),
        "{overhead:?}"
    );

    assert_eq!(overhead.steps, StepPrecision::Full);
    // Half-precision steps run in the bench's solves (not silently in full precision).
    let half = BenchConfig {
        steps: StepPrecision::Half,
        modes: vec!["shine".into()],
        reps: 1,
        ..config.clone()
    };
    let report = bench::run(&half, backend::cpu()).unwrap();
    assert_eq!(report.steps, StepPrecision::Half);
    let overhead = report.solver_overhead.unwrap();
    assert_eq!(overhead.steps, StepPrecision::Half);
    assert!(overhead.bookkeeping_ms > 0.0 && report.modes[0].backward_ms.median > 0.0);

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

/// `bench --peak-memory`: one probe per budget, run with the memory asked for (the probes once
/// ignored `--memory`), each peak attributed to a phase of the step.
#[test]
fn peak_memory_probes_use_the_settings_and_name_the_phase() {
    let json = std::env::temp_dir().join(format!("deq-train-memory-{}.json", std::process::id()));
    let output = Command::new(BIN)
        .args(["bench", "--model", "small", "--batch", "2", "--peak-memory"])
        .args(["--mode", "shine", "--memory", "3", "--json"])
        .arg(&json)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let _ = std::fs::remove_file(&json);
    let probes: Vec<bench::MemoryProbe> = serde_json::from_value(report["memory"].clone()).unwrap();
    let budgets: Vec<usize> = probes.iter().map(|p| p.forward_iters).collect();
    assert_eq!(budgets, [8, 32]);
    for probe in &probes {
        assert_eq!((probe.mode.as_str(), probe.memory), ("shine", 3));
        assert!(probe.step_mib > 0.0 && probe.peak_mib > probe.before_mib);
        if cfg!(target_os = "linux") {
            let p = probe.phases.expect("Linux lets the probe reset its peak");
            let highest = p.forward_mib.max(p.backward_mib).max(p.optimizer_mib);
            assert!(
                (highest - probe.step_mib).abs() < 1e-9,
                "the overall peak is the highest phase's: {p:?} against {}",
                probe.step_mib
            );
        }
    }
    let table = String::from_utf8_lossy(&output.stdout);
    assert!(table.contains("Broyden memory 3"), "{table}");
    assert!(table.contains("(highest: "), "{table}");
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

/// `gradient_quality`: the reference compared with itself gives cosine 1 and norm ratio 1 (the
/// same batch, dropout masks and solve for every mode); other modes give a cosine in [-1, 1].
#[test]
fn gradient_quality_compares_modes_on_the_same_batches() {
    use deq_train::data::{Augment, ImageBatcher};
    use deq_train::quality::{QualityConfig, gradient_quality};
    use deq_train::train::{TrainConfig, load_run_data};

    let config = TrainConfig {
        test_limit: 32,
        train_limit: 32,
        ..TrainConfig::default()
    };
    let data = load_run_data(&config).unwrap();
    let device = backend::cpu().autodiff();
    device.seed(1);
    let model = config.model_config().unwrap().init(&device).unwrap();
    let batcher = ImageBatcher::new(data.test.shape(), &data.mean, &data.std, Augment::NONE);
    let settings = QualityConfig {
        batches: 2,
        batch_size: 8,
        forward_iters: 12,
        memory: None,
        steps: StepPrecision::Full,
        tol: 1e-4,
        reference: "implicit:max_iter=40,tol=1e-8".into(),
        modes: vec![
            "implicit:max_iter=40,tol=1e-8".into(),
            "shine".into(),
            "jfb".into(),
        ],
        seed: 0,
    };
    let mut seen = 0;
    let report = gradient_quality(
        &model,
        &data.test,
        &batcher,
        &device,
        &settings,
        &mut |_| seen += 1,
    )
    .unwrap();
    assert_eq!((seen, report.batches.len(), report.modes.len()), (2, 2, 3));
    for b in &report.batches {
        assert_eq!(b.samples, 8);
        assert!((b.cosine[0] - 1.0).abs() < 1e-9, "{b:?}");
        assert!((b.norm_ratio[0] - 1.0).abs() < 1e-9, "{b:?}");
        for c in &b.cosine {
            assert!(c.is_finite() && c.abs() <= 1.0 + 1e-9, "{b:?}");
        }
    }
    assert!(
        report.modes[1].cosine_median < 1.0 - 1e-6,
        "SHINE is not the exact gradient"
    );

    // A shorter Broyden memory changes the matrix SHINE reuses (not the implicit gradient).
    let short = QualityConfig {
        memory: Some(2),
        ..settings.clone()
    };
    let limited =
        gradient_quality(&model, &data.test, &batcher, &device, &short, &mut |_| {}).unwrap();
    assert_eq!(limited.config.memory, Some(2));
    for (full, limited) in report.batches.iter().zip(&limited.batches) {
        assert!((limited.cosine[0] - 1.0).abs() < 1e-9, "{limited:?}");
        assert!(
            (limited.cosine[1] - full.cosine[1]).abs() > 1e-9,
            "memory 2 gave SHINE the same gradient as memory 12: {limited:?} / {full:?}"
        );
    }
    let zero = QualityConfig {
        memory: Some(0),
        ..settings
    };
    let error = gradient_quality(&model, &data.test, &batcher, &device, &zero, &mut |_| {})
        .unwrap_err()
        .to_string();
    assert!(error.contains("memory") && error.contains('0'), "{error}");
}
