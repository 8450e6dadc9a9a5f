//! `deq-train train / eval / plot` end to end on a small slice of the bundled data: outputs,
//! interruption and resumption (same parameters as an uninterrupted run), and bad input.
mod common;

use common::temp_dir;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_deq-train");

/// A few seconds of training: 96 images, batches of 16 (6 steps per epoch), 2 epochs.
const QUICK: &[&str] = &[
    "--train-limit",
    "96",
    "--test-limit",
    "48",
    "--batch-size",
    "16",
    "--eval-batch-size",
    "48",
    "--epochs",
    "2",
    "--pretrain-steps",
    "3",
    "--forward-iters",
    "6",
    "--eval-iters",
    "6",
    "--quiet",
];

fn run(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .output()
        .expect("deq-train runs")
}

/// A finished run's standard output, then its standard error.
fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn ok(args: &[&str]) -> String {
    let out = run(args);
    let text = text(&out);
    assert!(out.status.success(), "deq-train {args:?} failed:\n{text}");
    text
}

fn fails(args: &[&str], needles: &[&str]) {
    let out = run(args);
    let text = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!out.status.success(), "deq-train {args:?} should fail");
    assert!(
        !text.contains("panicked"),
        "deq-train {args:?} panicked:\n{text}"
    );
    for needle in needles {
        assert!(
            text.contains(needle),
            "error of {args:?} does not say `{needle}`:\n{text}"
        );
    }
}

fn train_args<'a>(out: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["train", "--out", out];
    args.extend_from_slice(QUICK);
    args.extend_from_slice(extra);
    args
}

/// The newest checkpoint's name and parameter values.
fn final_model(run: &Path) -> (String, Vec<(String, Vec<f32>)>) {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(run.join("checkpoints"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_str()
                .unwrap()
                .starts_with("step-")
        })
        .collect();
    dirs.sort();
    let dir = dirs.pop().expect("a checkpoint");
    (
        dir.file_name().unwrap().to_string_lossy().into_owned(),
        deq_train::train::checkpoint_parameters(&dir).unwrap(),
    )
}

/// Asserts two checkpoints hold the same step and bit-identical parameters, naming the first
/// tensor that differs (without printing thousands of values).
fn assert_same(
    a: &(String, Vec<(String, Vec<f32>)>),
    b: &(String, Vec<(String, Vec<f32>)>),
    what: &str,
) {
    assert_eq!(a.0, b.0, "{what}: checkpoint step");
    assert_eq!(a.1.len(), b.1.len(), "{what}: tensor count");
    let values: usize = a.1.iter().map(|(_, v)| v.len()).sum();
    assert!(
        values >= 41_242,
        "{what}: only {values} values compared (the small MDEQ has 41,242 parameters)"
    );
    for ((name, x), (other, y)) in a.1.iter().zip(&b.1) {
        assert_eq!(name, other, "{what}: tensor order");
        let first = x
            .iter()
            .zip(y)
            .position(|(u, v)| u.to_bits() != v.to_bits());
        assert!(
            x.len() == y.len() && first.is_none(),
            "{what}: {name} differs at {first:?} ({:?} vs {:?})",
            first.map(|i| x[i]),
            first.map(|i| y[i])
        );
    }
}

#[test]
fn trains_evaluates_and_plots() {
    let dir = temp_dir("basic");
    let out = dir.join("run");
    let out_s = out.to_str().unwrap();
    let text = ok(&train_args(out_s, &["--backward", "shine:fallback=1.8"]));
    assert!(text.contains("done: test accuracy"), "{text}");
    for file in [
        "config.toml",
        "metrics.jsonl",
        "summary.json",
        "training.png",
    ] {
        assert!(out.join(file).is_file(), "{file} missing");
    }
    let metrics = deq_train::train::read_metrics(&out.join("metrics.jsonl")).unwrap();
    let epochs = metrics
        .iter()
        .filter(|l| matches!(l, deq_train::train::MetricsLine::Epoch(_)))
        .count();
    assert_eq!((metrics.len(), epochs), (14, 2));
    // The written config reproduces the run's settings.
    let config = deq_train::train::TrainConfig::from_toml_file(&out.join("config.toml")).unwrap();
    assert_eq!(
        (
            config.backward.as_str(),
            config.batch_size,
            config.train_limit
        ),
        ("shine:fallback=1.8", 16, 96)
    );

    let eval = ok(&["eval", out_s, "--json"]);
    let result: serde_json::Value = serde_json::from_str(&eval).unwrap();
    assert_eq!(result["images"], 48);
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("summary.json")).unwrap()).unwrap();
    assert_eq!(
        result["accuracy"], summary["test_accuracy"],
        "eval reproduces the run's last evaluation"
    );

    // A second run with another mode, then the accuracy-vs-backward-time figure.
    // Without --quiet and with output to a pipe (no terminal), the epoch lines still appear.
    let other = dir.join("run-jfb");
    let loud: Vec<&str> = train_args(other.to_str().unwrap(), &["--backward", "jfb"])
        .into_iter()
        .filter(|a| *a != "--quiet")
        .collect();
    let text = ok(&loud);
    assert!(text.contains("epoch   2  step     12"), "{text}");
    let figure = dir.join("modes.png");
    ok(&[
        "plot",
        out_s,
        other.to_str().unwrap(),
        "--out",
        figure.to_str().unwrap(),
    ]);
    assert!(std::fs::metadata(&figure).unwrap().len() > 1000);
}

/// At one thread the CLI's thread is Rayon's only thread (`deq_core::join_cpu_pool`): data
/// loading on threads of its own must still finish (nothing they run may wait for the pool).
/// The run is all pretraining, so there is no equilibrium backward to time, and the summary
/// says so instead of printing a NaN.
#[test]
fn loader_threads_at_one_thread_and_a_pretraining_only_run() {
    let dir = temp_dir("one-thread-workers");
    let out = dir.join("run");
    let mut args = train_args(out.to_str().unwrap(), &["--workers", "2"]);
    // QUICK's 12 steps, all of them pretraining.
    let at = args.iter().position(|&a| a == "--pretrain-steps").unwrap();
    args[at + 1] = "100";
    let mut child = Command::new(BIN)
        .args(&args)
        .env("RAYON_NUM_THREADS", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("deq-train starts");
    let deadline = Instant::now() + Duration::from_secs(120);
    while child.try_wait().expect("deq-train runs").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!(
                "deq-train with 2 loader threads at RAYON_NUM_THREADS=1 did not finish in 120 s"
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let output = child.wait_with_output().expect("deq-train output");
    let text = text(&output);
    assert!(output.status.success(), "{text}");
    assert!(text.contains("no equilibrium step"), "{text}");
    assert!(!text.contains("NaN"), "{text}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn resume_after_stop_matches_uninterrupted_run() {
    let dir = temp_dir("resume");
    let straight = dir.join("straight");
    ok(&train_args(straight.to_str().unwrap(), &[]));
    let reference = final_model(&straight);
    assert_eq!(reference.0, "step-00000012");

    // Stopped mid-epoch (step 4 of 6), then at an epoch boundary (step 6 ends epoch 1)
    // and during pretraining (step 2).
    for stops in [&["4"][..], &["6"], &["2", "9"]] {
        let resumed = dir.join(format!("stopped-{}", stops.join("-")));
        let path = resumed.to_str().unwrap();
        let first = ok(&train_args(path, &["--stop-after", stops[0]]));
        assert!(first.contains("stopped after step"), "{first}");
        for stop in &stops[1..] {
            ok(&[
                "train",
                "--out",
                path,
                "--resume",
                "--quiet",
                "--stop-after",
                stop,
            ]);
        }
        ok(&["train", "--out", path, "--resume", "--quiet"]);
        assert_same(
            &final_model(&resumed),
            &reference,
            &format!("stops at {stops:?}"),
        );
        let metrics = deq_train::train::read_metrics(&resumed.join("metrics.jsonl")).unwrap();
        let steps: Vec<usize> = metrics.iter().map(|l| l.step()).collect();
        let reference_steps: Vec<usize> =
            deq_train::train::read_metrics(&straight.join("metrics.jsonl"))
                .unwrap()
                .iter()
                .map(|l| l.step())
                .collect();
        assert_eq!(steps, reference_steps, "the resumed log has each step once");
    }
}

#[test]
fn sigkill_then_resume_matches_uninterrupted_run() {
    let dir = temp_dir("kill");
    let straight = dir.join("straight");
    ok(&train_args(
        straight.to_str().unwrap(),
        &["--checkpoint-every", "1"],
    ));
    let reference = final_model(&straight);

    let killed = dir.join("killed");
    let path = killed.to_str().unwrap();
    let mut child = Command::new(BIN)
        .args(train_args(path, &["--checkpoint-every", "1"]))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Kill as soon as the third checkpoint exists (mid-run, while training goes on).
    let started = Instant::now();
    while !killed.join("checkpoints").join("step-00000003").is_dir() {
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "no checkpoint appeared"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let resumed = ok(&["train", "--out", path, "--resume", "--quiet"]);
    assert!(resumed.contains("done"), "{resumed}");
    assert_same(&final_model(&killed), &reference, "killed at step 3");
}

#[test]
fn bad_input_gives_named_errors() {
    let dir = temp_dir("bad");
    let out = dir.join("run");
    let o = out.to_str().unwrap();
    fails(&["train", "--out", o, "--lr", "0"], &["lr", "0"]);
    fails(&["train", "--out", o, "--batch-size", "0"], &["batch_size"]);
    fails(&["train", "--out", o, "--epochs=-1"], &["--epochs", "-1"]);
    fails(
        &["train", "--out", o, "--backward", "shine:refin=2"],
        &["backward", "refin"],
    );
    fails(
        &["train", "--out", o, "--backward", "magic"],
        &["backward", "magic"],
    );
    fails(
        &["train", "--out", o, "--solver", "newton"],
        &["solver", "newton"],
    );
    fails(&["train", "--out", o, "--backend", "metal"], &["metal"]);
    if !cfg!(feature = "wgpu") {
        fails(
            &["train", "--out", o, "--backend", "wgpu"],
            &["not compiled", "--features wgpu"],
        );
    }
    fails(
        &["train", "--out", o, "--data-dir", "/nonexistent/fm"],
        &["/nonexistent/fm", "not found"],
    );
    fails(
        &["train", "--out", o, "--model", "tiny"],
        &["model", "rgb32"],
    );
    fails(&["train", "--out", o, "--dataset", "svhn"], &["svhn"]);
    let toml = dir.join("bad.toml");
    std::fs::write(&toml, "epochs = 2\nlearning_rate = 0.1\n").unwrap();
    fails(
        &["train", "--out", o, "--config", toml.to_str().unwrap()],
        &["bad.toml", "learning_rate"],
    );
    std::fs::write(&toml, "epochs = \"two\"\n").unwrap();
    fails(
        &["train", "--out", o, "--config", toml.to_str().unwrap()],
        &["bad.toml", "epochs"],
    );
    fails(&["train", "--out", o, "--resume"], &["no checkpoint"]);
    assert!(
        !out.join("config.toml").exists(),
        "nothing written by refused runs"
    );

    // An existing run is neither overwritten nor resumed with other settings.
    ok(&train_args(o, &["--stop-after", "2"]));
    let before = std::fs::read(out.join("metrics.jsonl")).unwrap();
    fails(&train_args(o, &[]), &["already holds a run", "--force"]);
    assert_eq!(std::fs::read(out.join("metrics.jsonl")).unwrap(), before);
    fails(
        &["train", "--out", o, "--resume", "--lr", "0.5"],
        &["other settings", "lr"],
    );
    fails(
        &["train", "--out", o, "--resume", "--workers", "2"],
        &["other settings", "workers"],
    );
    // A damaged checkpoint is named.
    let (name, _) = final_model(&out);
    let model = out.join("checkpoints").join(&name).join("model.bpk");
    let bytes = std::fs::read(&model).unwrap();
    std::fs::write(&model, &bytes[..bytes.len() / 2]).unwrap();
    fails(&["train", "--out", o, "--resume"], &["model.bpk"]);
    let state = out.join("checkpoints").join(&name).join("state.json");
    let text = std::fs::read_to_string(&state)
        .unwrap()
        .replace("\"format\": 1", "\"format\": 99");
    std::fs::write(&state, text).unwrap();
    fails(&["eval", o], &["state.json", "format 99"]);
    ok(&train_args(o, &["--force", "--stop-after", "1"]));
}

#[test]
fn ctrl_c_writes_a_checkpoint_and_resume_matches() {
    let dir = temp_dir("sigint");
    let straight = dir.join("straight");
    ok(&train_args(straight.to_str().unwrap(), &[]));
    let reference = final_model(&straight);

    let stopped = dir.join("stopped");
    let path = stopped.to_str().unwrap();
    let child = Command::new(BIN)
        .args(train_args(path, &[]))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Interrupt once the third step is logged (no periodic checkpoints in this run).
    let metrics = stopped.join("metrics.jsonl");
    let started = Instant::now();
    while std::fs::read_to_string(&metrics).map_or(0, |t| t.lines().count()) < 3 {
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "no steps logged"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "interrupted run failed: {text}");
    assert!(text.contains("stopped after step"), "{text}");
    assert!(
        std::fs::read_dir(stopped.join("checkpoints"))
            .unwrap()
            .count()
            >= 1,
        "Ctrl-C left a checkpoint"
    );
    ok(&["train", "--out", path, "--resume", "--quiet"]);
    assert_same(&final_model(&stopped), &reference, "interrupted by SIGINT");
    // A finished run has nothing to resume, and its results stay as they are.
    let summary = std::fs::read(stopped.join("summary.json")).unwrap();
    fails(&["train", "--out", path, "--resume"], &["already complete"]);
    assert_eq!(
        std::fs::read(stopped.join("summary.json")).unwrap(),
        summary
    );
}

/// Data-parallel training (`--devices 2`, Burn's multi-device gradients): both runs take the
/// same steps with finite losses and end near each other. They cannot end equal: the MDEQ's head
/// has batch norms (and the stem, unless `stem_norm = false`), whose training statistics are
/// per share of the batch. Measured here: trained parameters 5e-2 apart (relative) after 12 steps.
#[test]
fn two_devices_train_like_one_device() {
    let dir = temp_dir("devices");
    let config = dir.join("config.toml");
    std::fs::write(
        &config,
        "[mdeq]\ndropout = 0.0\ninjection_transform = false\nstem_norm = false\n",
    )
    .unwrap();
    let config_s = config.to_str().unwrap();
    let runs: Vec<_> = ["1", "2"]
        .iter()
        .map(|devices| {
            let out = dir.join(format!("devices-{devices}"));
            ok(&train_args(
                out.to_str().unwrap(),
                &["--config", config_s, "--devices", devices],
            ));
            let metrics = deq_train::train::read_metrics(&out.join("metrics.jsonl")).unwrap();
            for line in &metrics {
                if let deq_train::train::MetricsLine::Step(s) = line {
                    assert!(s.loss.is_finite(), "{devices} devices: step {}", s.step);
                    assert_eq!(s.batch, 16, "{devices} devices: the whole batch is counted");
                }
            }
            final_model(&out)
        })
        .collect();
    assert_eq!(runs[0].0, runs[1].0, "same number of steps");
    let values: usize = runs[0].1.iter().map(|(_, v)| v.len()).sum();
    assert!(values >= 41_000, "only {values} values compared");
    let (mut diff, mut norm) = (0.0f64, 0.0f64);
    for ((name, x), (_, y)) in runs[0].1.iter().zip(&runs[1].1) {
        assert_eq!(x.len(), y.len(), "{name}");
        if name.contains("running_") {
            continue;
        }
        for (u, v) in x.iter().zip(y) {
            diff += f64::from(u - v).powi(2);
            norm += f64::from(*u).powi(2);
        }
    }
    let rel = (diff / norm).sqrt();
    println!("trained parameters, 2 devices vs 1: relative difference {rel:.2e}");
    assert!(rel.is_finite() && rel < 0.5, "relative difference {rel:e}");

    fails(
        &train_args(dir.join("too-many").to_str().unwrap(), &["--devices", "17"]),
        &["devices", "17", "batch_size"],
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A divergent f (no fixed point, spectral norm above 1) on 4 of 16 samples at steps 5 and 8,
/// an f returning NaN at step 10 (both equilibrium steps) and NaN during pretraining at step 2:
/// the affected samples are counted as diverged, SHINE falls back to `∇L` on exactly them, the
/// logged loss stays finite, the pretraining step whose loss is NaN is skipped without touching
/// the parameters (nor the batch norms' running statistics), no NaN reaches the model, and the
/// run finishes. Too many consecutive non-finite steps stop the run with a named error.
#[test]
fn divergent_f_is_reported_and_survived() {
    let dir = temp_dir("diverge");
    let config = dir.join("faults.toml");
    std::fs::write(
        &config,
        "[faults]\ndiverge_steps = [5, 8]\nnan_steps = [2, 10]\nsamples = 4\n",
    )
    .unwrap();
    let out = dir.join("run");
    let o = out.to_str().unwrap();
    let mut args = train_args(
        o,
        &[
            "--config",
            config.to_str().unwrap(),
            "--checkpoint-every",
            "1",
            "--stop-after",
            "2",
        ],
    );
    // Enough iterations for the residual's growth to be seen (with 6, some of the faulty
    // samples end at the budget, reported as not converged, before that).
    let at = args.iter().position(|a| *a == "--forward-iters").unwrap();
    args[at + 1] = "12";
    let text = ok(&args);
    assert!(text.contains("step 2: loss NaN"), "{text}");
    // The skipped step left everything as it was (parameters and running statistics).
    let checkpoint = |step: usize| {
        let dir = deq_train::train::checkpoint_dir(&out, step);
        (
            "same step".to_string(),
            deq_train::train::checkpoint_parameters(&dir).unwrap(),
        )
    };
    assert_same(&checkpoint(1), &checkpoint(2), "skipped step 2");
    let text = ok(&["train", "--out", o, "--resume", "--quiet"]);
    assert!(text.contains("1 steps skipped"), "{text}");

    let lines = deq_train::train::read_metrics(&out.join("metrics.jsonl")).unwrap();
    let mut epoch_diverged = 0;
    for line in &lines {
        match line {
            deq_train::train::MetricsLine::Step(s) => {
                let faulty = [5, 8, 10].contains(&s.step);
                assert_eq!(s.skipped, s.step == 2, "step {}: skipped", s.step);
                if s.step != 2 {
                    assert!(s.loss.is_finite(), "step {}: loss {}", s.step, s.loss);
                }
                assert_eq!(s.diverged, if faulty { 4 } else { 0 }, "step {}", s.step);
                assert_eq!(s.fallbacks, if faulty { 4 } else { 0 }, "step {}", s.step);
            }
            deq_train::train::MetricsLine::Epoch(e) => {
                assert!(e.train_loss.is_finite() && e.test_loss.is_finite());
                epoch_diverged += e.failures.diverged_samples;
            }
        }
    }
    assert_eq!(epoch_diverged, 12);
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["skipped_steps"], 1);
    assert_eq!(summary["diverged_samples"], 12);
    assert_eq!(summary["fallbacks"], 12);
    assert_eq!(summary["completed"], true);

    // Nothing non-finite reached the model.
    let (_, last) = final_model(&out);
    for (name, values) in &last {
        assert!(values.iter().all(|v| v.is_finite()), "{name} is not finite");
    }

    // NaN on every step: the run stops after `max_skipped_steps` in a row, naming them.
    std::fs::write(
        &config,
        "max_skipped_steps = 3\n[faults]\nnan_steps = [1, 2, 3, 4]\n",
    )
    .unwrap();
    fails(
        &train_args(
            dir.join("nan").to_str().unwrap(),
            &["--config", config.to_str().unwrap()],
        ),
        &["not finite on 3 consecutive steps", "step 3"],
    );
}

/// SIGKILL at 5 random points of a run, each followed by `--resume`: the run ends with exactly
/// the uninterrupted run's parameters, and no half-written checkpoint is left. Each point is a
/// random step of the 12 (distinct, increasing) plus a random 0–100 ms after that step is
/// logged, so kills land in training steps, evaluations and checkpoint writes. The points come
/// from `DEQ_KILL_SEED` (printed; by default the clock), so a failure can be replayed.
#[test]
fn sigkill_at_five_random_points_then_resume_matches() {
    let dir = temp_dir("kill5");
    let straight = dir.join("straight");
    ok(&train_args(
        straight.to_str().unwrap(),
        &["--checkpoint-every", "1"],
    ));
    let reference = final_model(&straight);

    let seed = common::seed_from_env("DEQ_KILL_SEED");
    let mut state = seed | 1;
    let mut uniform = move || {
        // xorshift64*
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        (state.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) as f64 / (1u64 << 53) as f64
    };
    // 5 distinct steps of the run's 12 (2 epochs of 6), increasing.
    let mut steps: Vec<usize> = (1..=12).collect();
    for i in (1..steps.len()).rev() {
        steps.swap(i, (uniform() * (i + 1) as f64) as usize);
    }
    let mut steps = steps[..5].to_vec();
    steps.sort();
    println!("DEQ_KILL_SEED={seed}: kills after steps {steps:?}");

    let killed = dir.join("killed");
    let path = killed.to_str().unwrap();
    let last_logged = || {
        deq_train::train::read_metrics(&killed.join("metrics.jsonl"))
            .map(|lines| lines.iter().map(|l| l.step()).max().unwrap_or(0))
            .unwrap_or(0)
    };
    let mut kills = Vec::new();
    for &step in &steps {
        let args = if killed.join("config.toml").is_file() {
            vec!["train", "--out", path, "--resume", "--quiet"]
        } else {
            train_args(path, &["--checkpoint-every", "1"])
        };
        let mut child = Command::new(BIN)
            .args(&args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let started = Instant::now();
        while last_logged() < step {
            assert!(
                child.try_wait().unwrap().is_none(),
                "{args:?} ended before step {step}"
            );
            assert!(started.elapsed() < Duration::from_secs(300), "no progress");
            std::thread::sleep(Duration::from_millis(1));
        }
        let extra = Duration::from_secs_f64(0.1 * uniform());
        std::thread::sleep(extra);
        let alive = child.try_wait().unwrap().is_none();
        child.kill().unwrap();
        child.wait().unwrap();
        let newest = deq_train::train::list_checkpoints(&killed)
            .unwrap()
            .last()
            .map(|d| d.file_name().unwrap().to_string_lossy().into_owned());
        assert!(alive, "the run ended before its kill after step {step}");
        kills.push((step, extra, newest));
    }
    println!("killed (after step, + delay, newest checkpoint then): {kills:?}");
    // A checkpoint write cut short (as by a kill during it) leaves a temporary folder: the
    // resume goes on from the newest complete checkpoint and clears the temporary one.
    let newest = deq_train::train::list_checkpoints(&killed)
        .unwrap()
        .pop()
        .unwrap();
    let partial = killed
        .join("checkpoints")
        .join(".partial-step-00000099-4242");
    std::fs::create_dir(&partial).unwrap();
    let model = std::fs::read(newest.join("model.bpk")).unwrap();
    std::fs::write(partial.join("model.bpk"), &model[..model.len() / 3]).unwrap();
    ok(&["train", "--out", path, "--resume", "--quiet"]);
    assert_same(
        &final_model(&killed),
        &reference,
        &format!("killed 5 times (DEQ_KILL_SEED={seed})"),
    );
    let partial: Vec<_> = std::fs::read_dir(killed.join("checkpoints"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with("step-"))
        .collect();
    assert!(partial.is_empty(), "left behind: {partial:?}");
}
