//! `deq-train bench`: backward-pass cost per mode on an MDEQ (and the solver's overhead),
//! printed as a table and written as JSON.
use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use deq_train::bench::{self, BenchConfig, BenchReport};
use deq_train::fsio::write_atomic;
use deq_train::train::DEFAULT_SOLVER_MEMORY;

/// Options of `bench`.
#[derive(Args, Debug)]
pub struct BenchArgs {
    /// MDEQ preset: `tiny` (CIFAR-shaped 3×32×32 input), `small` (1×28×28) or `large`.
    #[arg(long, default_value = "tiny")]
    pub model: String,
    /// Batch size.
    #[arg(long, default_value_t = 32)]
    pub batch: usize,
    /// Forward Broyden iteration budget.
    #[arg(long, default_value_t = 18)]
    pub forward_iters: usize,
    /// Forward relative-residual tolerance.
    #[arg(long, default_value_t = 1e-3)]
    pub tol: f64,
    /// Forward Broyden memory (the training default).
    #[arg(long, default_value_t = DEFAULT_SOLVER_MEMORY)]
    pub memory: usize,
    /// How Broyden stores its steps: `full`, or `half` (`f16`, half the bytes).
    #[arg(long, default_value = "full")]
    pub steps: deq_core::StepPrecision,
    /// A backward mode to time (repeat the option; default: implicit, implicit:max_iter=k,
    /// shine, shine:refine=k, jfb, jfb:refine=k for k = 1, 2, 5).
    #[arg(long = "mode")]
    pub modes: Vec<String>,
    /// Measured batches per mode.
    #[arg(long, default_value_t = 20)]
    pub reps: usize,
    /// Unmeasured batches per mode first.
    #[arg(long, default_value_t = 2)]
    pub warmup: usize,
    /// Backend: flex, ndarray, wgpu or cuda (as compiled in).
    #[arg(long, default_value = "flex")]
    pub backend: String,
    /// Seed of the weights and batches.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Skip the solver-overhead measurement.
    #[arg(long)]
    pub no_overhead: bool,
    /// Measure peak resident memory of training steps instead of times: implicit, SHINE and
    /// unrolled (or the `--mode`s given) at forward budgets 8 and 32 with `--memory`, each in a
    /// process of its own, and the phase of the step (forward, backward, optimiser) where each
    /// peak is reached. The probes return freed memory to the OS at once
    /// (`MIMALLOC_PURGE_DELAY=0` unless set), so a peak is memory in use, not the heap the
    /// allocator keeps for reuse; `RAYON_NUM_THREADS=1` gives the steadiest figures.
    #[arg(long)]
    pub peak_memory: bool,
    /// (internal) One memory measurement of this mode in this process, printed as JSON.
    #[arg(long, hide = true)]
    pub peak_memory_probe: Option<String>,
    /// Write the report as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// Runs `bench`.
pub fn bench(args: &BenchArgs) -> anyhow::Result<()> {
    let device = deq_train::backend::device(&args.backend).map_err(anyhow::Error::msg)?;
    let described = deq_train::backend::describe(&args.backend).map_err(anyhow::Error::msg)?;
    eprintln!("bench: {} on {described}", args.model);
    let config = BenchConfig {
        model: args.model.clone(),
        batch: args.batch,
        forward_iters: args.forward_iters,
        tol: args.tol,
        memory: args.memory,
        steps: args.steps,
        modes: if args.modes.is_empty() {
            BenchConfig::default_modes()
        } else {
            args.modes.clone()
        },
        reps: args.reps,
        warmup: args.warmup,
        backend: args.backend.clone(),
        seed: args.seed,
        overhead: !args.no_overhead,
    };
    if let Some(mode) = &args.peak_memory_probe {
        let probe = bench::memory_probe(&config, mode, 2, device)?;
        println!("{}", serde_json::to_string(&probe)?);
        return Ok(());
    }
    if args.peak_memory {
        return memory(args);
    }
    let mut report = bench::run(&config, device)?;
    report.device = described;
    print_table(&report);
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&report)?;
        write_atomic(path, text.as_bytes())
            .with_context(|| format!("cannot write {}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

fn print_table(report: &BenchReport) {
    println!(
        "MDEQ {} ({} parameters), batch {}, input {:?}, forward Broyden ≤ {} iterations (memory {}, {} steps) to {:e}; {} batches per mode; {}",
        report.model,
        report.parameters,
        report.batch,
        report.input_shape,
        report.forward_iters,
        report.memory,
        report.steps.name(),
        report.tol,
        report.reps,
        report.device
    );
    println!(
        "{:<22} {:>12} {:>14} {:>12} {:>10} {:>9} {:>8} {:>10}",
        "mode",
        "forward ms",
        "backward ms",
        "step ms",
        "implicit/",
        "fwd it",
        "adj it",
        "fallbacks"
    );
    for t in &report.modes {
        println!(
            "{:<22} {:>12.1} {:>14.2} {:>12.1} {:>10} {:>9.1} {:>8} {:>10.1}",
            t.mode,
            t.forward_ms.median,
            t.backward_ms.median,
            t.step_ms.median,
            t.implicit_over_mode
                .map_or("-".to_string(), |r| format!("{r:.1}×")),
            t.forward_iterations_mean,
            t.adjoint_iterations_mean
                .map_or("-".to_string(), |a| format!("{a:.1}")),
            t.fallbacks_mean,
        );
    }
    if let Some(o) = &report.solver_overhead {
        println!(
            "solver overhead ({} steps): one f evaluation {:.3} ms, one Broyden iteration {:.3} ms → bookkeeping {:.1} % of f \
             (measured inside the solves: {:.3} ms per iteration outside f, {:.1} % of f; \
             f inside the solves {:.3} ms, bookkeeping {:.1} % of that)",
            o.steps.name(),
            o.f_eval_ms,
            o.broyden_iteration_ms,
            100.0 * o.overhead_fraction,
            o.bookkeeping_ms,
            100.0 * o.bookkeeping_fraction,
            o.f_in_solve_ms,
            100.0 * o.bookkeeping_fraction_in_solve
        );
    }
}

/// `bench --peak-memory`: one child process per (mode, budget).
fn memory(args: &BenchArgs) -> anyhow::Result<()> {
    let exe = std::env::current_exe().context("cannot find the deq-train executable")?;
    let modes = if args.modes.is_empty() {
        vec!["implicit".to_string(), "shine".into(), "unrolled".into()]
    } else {
        args.modes.clone()
    };
    let mut probes = Vec::new();
    for mode in &modes {
        for budget in [8usize, 32] {
            let mut probe = std::process::Command::new(&exe);
            if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
                // Training keeps freed memory for reuse (`main.rs`); with it the peak would
                // count whatever the allocator kept, which varies from run to run with two
                // threads (32 / 8 ratios of 0.93–1.35 for SHINE on `small`, docs/RESULTS.md).
                probe.env("MIMALLOC_PURGE_DELAY", "0");
            }
            let output = probe
                .args(["bench", "--model", &args.model, "--backend", &args.backend])
                .args(["--batch", &args.batch.to_string()])
                .args(["--peak-memory-probe", mode])
                .args(["--forward-iters", &budget.to_string()])
                .args(["--memory", &args.memory.to_string()])
                .args(["--steps", args.steps.name()])
                .args(["--seed", &args.seed.to_string()])
                .output()
                .context("cannot run the memory probe")?;
            anyhow::ensure!(
                output.status.success(),
                "memory probe of {mode} at budget {budget} failed: {}",
                String::from_utf8_lossy(&output.stderr)
            );
            let probe: bench::MemoryProbe =
                serde_json::from_slice(&output.stdout).context("unreadable memory probe output")?;
            let phase = probe
                .phases
                .map_or(String::new(), |p| format!(", in the {}", p.highest()));
            eprintln!(
                "{mode:<12} budget {budget:>2}: peak {:.0} MiB, {:.1} MiB above the state before the steps{phase}",
                probe.peak_mib, probe.step_mib
            );
            probes.push(probe);
        }
    }
    println!(
        "MDEQ {}, batch {}, Broyden memory {}, 2 training steps per process; peak resident memory above the model and batch (MiB):",
        args.model, args.batch, args.memory
    );
    println!(
        "{:<12} {:>10} {:>10} {:>12}",
        "mode", "budget 8", "budget 32", "32 / 8"
    );
    for pair in probes.chunks(2) {
        println!(
            "{:<12} {:>10.1} {:>10.1} {:>12.2}",
            pair[0].mode,
            pair[0].step_mib,
            pair[1].step_mib,
            pair[1].step_mib / pair[0].step_mib
        );
    }
    if probes.iter().all(|p| p.phases.is_some()) {
        println!(
            "peak per phase of the step, MiB above the same state (forward / backward / optimiser):"
        );
        for probe in &probes {
            if let Some(p) = probe.phases {
                println!(
                    "{:<12} budget {:>2}: {:>8.1} {:>8.1} {:>8.1}  (highest: {})",
                    probe.mode,
                    probe.forward_iters,
                    p.forward_mib,
                    p.backward_mib,
                    p.optimizer_mib,
                    p.highest()
                );
            }
        }
    }
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&serde_json::json!({
            "model": args.model,
            "batch": args.batch,
            "backend": args.backend,
            "memory": probes,
        }))?;
        write_atomic(path, text.as_bytes())
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}
