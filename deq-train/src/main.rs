//! `deq-train`: the command-line front end. With no arguments it trains the small MDEQ with
//! SHINE backward on the bundled Fashion-MNIST subset. Subcommands: `train`, `eval`, `plot`,
//! `bench` (backward cost per mode, solver overhead, peak memory), `crosscheck` (gradients on two
//! backends), `demo` (short training on the GPU WGPU finds, with a figure), `toy` (the dense DEQ
//! on synthetic data) and `hpo` (bi-level hyperparameter optimisation).
mod commands;
mod hpo;
mod plot;

use clap::{Parser, Subcommand};
use deq_core::BackwardMode;

/// mimalloc keeps freed memory for reuse: Burn's CPU backend allocates a fresh buffer for every
/// tensor operation, and with the system allocator the large ones are new memory mappings whose
/// pages fault in one by one (see docs/RESULTS.md, "Allocator").
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc's `mi_option_purge_delay`: index 15 in both its v2 and v3 headers (they keep
/// deprecated entries so that the numbering stays); default 1000 ms in v3 (what the `mimalloc`
/// crate builds), 10 ms in v2.
const MI_OPTION_PURGE_DELAY: std::ffi::c_int = 15;

unsafe extern "C" {
    fn mi_option_get(option: std::ffi::c_int) -> std::ffi::c_long;
    fn mi_option_set(option: std::ffi::c_int, value: std::ffi::c_long);
}

/// Tells mimalloc to keep freed memory instead of returning it to the OS a second later: Burn's
/// CPU backend frees and reallocates large buffers at every operation, and faulting the pages
/// back in cost 5–7 % of an implicit training step (docs/RESULTS.md, "mimalloc's purging"). The
/// process keeps its peak heap. A `MIMALLOC_PURGE_DELAY` set by the user wins; so does any
/// value other than mimalloc's defaults (then index 15 is not what we expect, and nothing
/// is changed). Returns whether purging is now off.
fn keep_freed_memory() -> bool {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_some() {
        return false;
    }
    // SAFETY: both calls only read and store one option value of the linked mimalloc.
    unsafe {
        if matches!(mi_option_get(MI_OPTION_PURGE_DELAY), 10 | 1000) {
            mi_option_set(MI_OPTION_PURGE_DELAY, -1);
        }
        mi_option_get(MI_OPTION_PURGE_DELAY) == -1
    }
}

use commands::{BenchArgs, CrossCheckArgs, DemoArgs, EvalArgs, PlotArgs, QualityArgs, TrainArgs};

#[derive(Parser)]
#[command(
    version,
    about = "Train deep equilibrium models with implicit or SHINE gradients",
    long_about = "Train deep equilibrium models with implicit or SHINE gradients.\n\nWith no subcommand, `deq-train` runs `train` with its defaults: the small MDEQ, SHINE backward, the bundled Fashion-MNIST subset, output in runs/train-NNN."
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Train an MDEQ classifier (settings from --config TOML, overridden by options).
    Train(Box<TrainArgs>),
    /// Accuracy and solver statistics of a run's checkpoint on a split.
    Eval(EvalArgs),
    /// Figures from runs: one run → its training curves; several → accuracy vs backward time.
    Plot(PlotArgs),
    /// Time the backward modes (and the forward solve, a training step and the solver's
    /// bookkeeping) on an MDEQ with random batches; `--json` writes the report.
    Bench(Box<BenchArgs>),
    /// Gradient quality on a trained checkpoint: each backward mode's gradient against a long
    /// implicit solve's, over test batches (cosine, norm ratio).
    Quality(QualityArgs),
    /// Compare gradients on two backends (default: wgpu against flex): every backward mode on
    /// the toy DEQ, and MDEQ training steps.
    Crosscheck(CrossCheckArgs),
    /// On the GPU WGPU finds (or the CPU): train the small MDEQ briefly on the bundled data and
    /// draw the solver's residual per test image and the predictions (`OUT/demo.png`).
    Demo(DemoArgs),
    /// Train the dense DEQ classifier on a synthetic task (labels from a fixed random teacher).
    Toy {
        /// Backward mode, e.g. `shine`, `shine:fallback=1.8`, `shine:refine=5`, `implicit`,
        /// `jfb`, `phantom:k=5,tau=0.5`, `unrolled`.
        #[arg(long, default_value = "shine")]
        backward: BackwardMode,
        /// Optimiser steps.
        #[arg(long, default_value_t = 300)]
        steps: usize,
        /// Batch size.
        #[arg(long, default_value_t = 64)]
        batch: usize,
        /// Width of the equilibrium state.
        #[arg(long, default_value_t = 64)]
        hidden: usize,
        /// Forward Broyden iteration budget.
        #[arg(long, default_value_t = 20)]
        forward_iters: usize,
        /// Adam learning rate.
        #[arg(long, default_value_t = 3e-3)]
        lr: f64,
        /// Random seed.
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
    /// Hyperparameter optimisation of an ℓ2-regularised logistic regression (SHINE's first
    /// experiment): writes trace.csv and summary.json into --out.
    Hpo {
        /// `breast-cancer`, `synthetic[:ROWSxCOLS]` (default real-sim shape 72309x20958),
        /// `fortunes[:DIR]` or `libsvm:PATH`.
        #[arg(long, default_value = "breast-cancer")]
        dataset: String,
        /// Comma-separated methods: hoag, shine, shine-refine, jfb, opa, cg<k>, grid, random.
        #[arg(
            long,
            value_delimiter = ',',
            default_value = "hoag,shine,shine-refine,jfb,opa,grid,random"
        )]
        methods: Vec<String>,
        /// Number of seeds (random 90/5/5 splits).
        #[arg(long, default_value_t = 10)]
        seeds: usize,
        /// Outer iterations (points for grid and random search).
        #[arg(long, default_value_t = 30)]
        outer_iters: usize,
        /// Output folder.
        #[arg(long, default_value = "hpo-out")]
        out: std::path::PathBuf,
    },
}

fn main() -> anyhow::Result<()> {
    keep_freed_memory();
    // The thread that drives the model works in Rayon's pool instead of handing every host
    // kernel and parallel operation to a pool thread and sleeping (`deq_core::join_cpu_pool`).
    // `RAYON_NUM_THREADS` counts it.
    #[cfg(feature = "flex")]
    if let Err(e) = deq_core::join_cpu_pool(None) {
        eprintln!("warning: {e}; the CPU work runs on Rayon's default pool");
    }
    match Cli::parse().command {
        None => commands::train(&TrainArgs::default()),
        Some(Command::Train(args)) => commands::train(&args),
        Some(Command::Eval(args)) => commands::eval(&args),
        Some(Command::Plot(args)) => commands::plot(&args),
        Some(Command::Quality(args)) => commands::quality(&args),
        Some(Command::Bench(args)) => commands::bench(&args),
        Some(Command::Crosscheck(args)) => commands::crosscheck(&args),
        Some(Command::Demo(args)) => commands::demo(&args),
        Some(Command::Toy {
            backward,
            steps,
            batch,
            hidden,
            forward_iters,
            lr,
            seed,
        }) => {
            anyhow::ensure!(
                steps > 0 && batch > 0 && hidden > 0,
                "--steps, --batch and --hidden must be at least 1"
            );
            commands::toy(backward, steps, batch, hidden, forward_iters, lr, seed)
        }
        Some(Command::Hpo {
            dataset,
            methods,
            seeds,
            outer_iters,
            out,
        }) => hpo::run(&hpo::HpoArgs {
            dataset,
            methods,
            seeds,
            out,
            outer_iters,
        }),
    }
}

#[cfg(test)]
mod tests {
    /// The linked mimalloc has the purge delay at the index we set, with its documented default.
    #[test]
    fn freed_memory_is_kept() {
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_some() {
            return;
        }
        // SAFETY: reads one option value.
        let before = unsafe { super::mi_option_get(super::MI_OPTION_PURGE_DELAY) };
        assert!(matches!(before, 10 | 1000 | -1), "purge delay {before}");
        assert!(super::keep_freed_memory());
    }
}
