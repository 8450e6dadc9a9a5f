//! `deq-train crosscheck`: the same gradients on two backends (e.g. WGPU against flex).
use anyhow::Context;
use clap::Args;
use deq_train::crosscheck::{self, Comparison};

/// Options of `crosscheck`.
#[derive(Args, Debug)]
pub struct CrossCheckArgs {
    /// The backend to check.
    #[arg(long, default_value = "wgpu")]
    pub backend: String,
    /// The reference backend (also computes the exact f64 toy gradient).
    #[arg(long, default_value = "flex")]
    pub against: String,
    /// MDEQ training steps compared per mode.
    #[arg(long, default_value_t = 3)]
    pub steps: usize,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Runs `crosscheck`; fails when a comparison is over its tolerance.
pub fn crosscheck(args: &CrossCheckArgs) -> anyhow::Result<()> {
    let test = deq_train::backend::device(&args.backend).map_err(anyhow::Error::msg)?;
    let reference = deq_train::backend::device(&args.against).map_err(anyhow::Error::msg)?;
    let test_name = deq_train::backend::describe(&args.backend).map_err(anyhow::Error::msg)?;
    let reference_name = deq_train::backend::describe(&args.against).map_err(anyhow::Error::msg)?;
    eprintln!("crosscheck: {test_name} against {reference_name}");
    let started = std::time::Instant::now();
    let header = format!(
        "{:<30} {:<50} {:>9} {:>9} {:>9} {:>9} {:>8}",
        "case", "mode", "rel diff", "worst", "f32/f64", "vs exact", "tol"
    );
    // Each line as soon as it is known (to stderr with --json), so a run cut short still
    // shows what it found.
    let line = |c: &Comparison| {
        format!(
            "{:<30} {:<50} {:>9.2e} {:>9.2e} {:>9} {:>9} {:>8.1e}{}{}",
            c.case,
            c.mode,
            c.rel_diff,
            c.worst_tensor,
            c.f32_vs_f64.map_or("-".into(), |e| format!("{e:.2e}")),
            c.rel_to_exact.map_or("-".into(), |e| format!("{e:.2e}")),
            c.tolerance,
            if c.passes() { "" } else { "  FAIL" },
            c.worst_name
                .as_ref()
                .map_or(String::new(), |n| format!("  (worst: {n})"))
        )
    };
    let json = args.json;
    let mut progress = |c: &Comparison| {
        if json {
            eprintln!("{}", line(c));
        } else {
            println!("{}", line(c));
        }
    };
    if json {
        eprintln!("{header}");
    } else {
        println!("{header}");
    }
    let toy_modes = crosscheck::toy_modes();
    let mut results = crosscheck::toy(&test, &reference, &reference, &toy_modes, &mut progress)
        .context("toy DEQ")?;
    let modes = crosscheck::mdeq_modes();
    results.extend(
        crosscheck::mdeq(&test, &reference, &modes, args.steps, &mut progress).context("MDEQ")?,
    );
    let seconds = started.elapsed().as_secs_f64();
    let failed: Vec<&Comparison> = results.iter().filter(|c| !c.passes()).collect();
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "backend": args.backend,
                "device": test_name,
                "against": args.against,
                "against_device": reference_name,
                "seconds": seconds,
                "comparisons": results,
                "passed": failed.is_empty(),
            }))?
        );
    } else {
        println!("{} comparisons in {seconds:.1} s", results.len());
    }
    anyhow::ensure!(
        failed.is_empty(),
        "{} of {} comparisons exceed their tolerance",
        failed.len(),
        results.len()
    );
    Ok(())
}
