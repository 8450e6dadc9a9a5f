//! `deq-train hpo`: hyperparameter optimisation of the ℓ2 strength of a logistic regression
//! with every hypergradient method, over several seeds (the SHINE paper's first experiment).
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use deq_core::bilevel::{
    CsrMatrix, OuterMethod, OuterStep, binary_labels, breast_cancer, fortunes_dataset, grid_search,
    optimize_lambda, random_search, read_libsvm, split_problem, synthetic_sparse,
};
use deq_train::stats::median;
use serde::Serialize;

/// What to run.
pub struct HpoArgs {
    /// `breast-cancer`, `synthetic[:ROWSxCOLS]`, `fortunes[:DIR]` or `libsvm:PATH`.
    pub dataset: String,
    /// Methods: hoag, shine, shine-refine, jfb, opa, cg<k>, grid, random.
    pub methods: Vec<String>,
    /// Number of seeds (splits).
    pub seeds: usize,
    /// Output folder.
    pub out: PathBuf,
    /// Outer iterations (and grid / random points).
    pub outer_iters: usize,
}

/// One row of the CSV.
#[derive(Serialize)]
struct Row<'a> {
    method: &'a str,
    seed: usize,
    iteration: usize,
    seconds: f64,
    lambda: f64,
    val_loss: f64,
    test_loss: f64,
    accepted: bool,
}

/// Per-method summary in the JSON file.
#[derive(Serialize)]
struct MethodSummary {
    /// Median over seeds of the time until the delivered model (see [`delivered`]) has a
    /// held-out loss within 1 % of the best seen for that seed (any method); `None` if fewer
    /// than half the seeds got there.
    median_seconds_to_1pct: Option<f64>,
    /// Seeds that reached the target.
    seeds_reaching: usize,
    /// Median over seeds of the final held-out loss.
    median_final_test_loss: f64,
    /// Median over seeds of the total time.
    median_total_seconds: f64,
}

/// Loads a dataset by name (labels ±1).
pub fn load_dataset(name: &str) -> anyhow::Result<(CsrMatrix, Vec<f64>)> {
    let (kind, arg) = name
        .split_once(':')
        .map_or((name, None), |(k, a)| (k, Some(a)));
    Ok(match (kind, arg) {
        ("breast-cancer", None) => breast_cancer()?,
        ("synthetic", size) => {
            let (rows, cols) = match size {
                None => (72_309, 20_958),
                Some(s) => {
                    let (r, c) = s
                        .split_once('x')
                        .with_context(|| format!("synthetic size `{s}`: expected ROWSxCOLS"))?;
                    (
                        r.parse().with_context(|| format!("synthetic rows `{r}`"))?,
                        c.parse().with_context(|| format!("synthetic cols `{c}`"))?,
                    )
                }
            };
            synthetic_sparse(rows, cols, 0.0024_f64.max(10.0 / cols as f64), 0.5, 0)?
        }
        ("fortunes", dir) => {
            let dir = PathBuf::from(dir.unwrap_or("/usr/share/games/fortunes"));
            let (a, y, _) = fortunes_dataset(&dir).with_context(|| {
                format!("reading fortunes from {} (install with `apt-get install fortunes`, or unpack `apt-get download fortunes` with `dpkg-deb -x` and pass fortunes:DIR)", dir.display())
            })?;
            (a, y)
        }
        ("libsvm", Some(path)) => {
            let text = std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?;
            let (a, labels) =
                read_libsvm(&text, None).with_context(|| format!("parsing {path}"))?;
            let y = binary_labels(&labels).with_context(|| format!("labels of {path}"))?;
            (a, y)
        }
        _ => bail!(
            "unknown dataset `{name}` (expected breast-cancer, synthetic[:ROWSxCOLS], fortunes[:DIR] or libsvm:PATH)"
        ),
    })
}

fn parse_method(name: &str) -> anyhow::Result<Option<OuterMethod>> {
    Ok(Some(match name {
        "hoag" => OuterMethod::Hoag,
        "shine" => OuterMethod::Shine,
        "shine-refine" => OuterMethod::ShineRefine,
        "opa" => OuterMethod::Opa,
        "jfb" => OuterMethod::JacobianFree,
        "grid" | "random" => return Ok(None),
        other => match other.strip_prefix("cg").map(str::parse::<usize>) {
            Some(Ok(k)) if k > 0 => OuterMethod::TruncatedCg { k },
            _ => bail!(
                "unknown method `{other}` (expected hoag, shine, shine-refine, opa, jfb, cg<k>, grid, random)"
            ),
        },
    }))
}

/// Runs every method on every seed and writes `trace.csv`, `summary.json` and
/// `suboptimality.png` into `out`.
pub fn run(args: &HpoArgs) -> anyhow::Result<()> {
    if args.seeds == 0 || args.outer_iters == 0 {
        bail!("--seeds and --outer-iters must be at least 1");
    }
    for m in &args.methods {
        parse_method(m)?;
    }
    let (a, y) = load_dataset(&args.dataset)?;
    println!(
        "dataset `{}`: {} samples × {} features, {} non-zeros",
        args.dataset,
        a.rows(),
        a.cols(),
        a.nnz()
    );
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let mut traces: BTreeMap<(String, usize), Vec<OuterStep>> = BTreeMap::new();
    for seed in 0..args.seeds {
        let (problem, test) = split_problem(&a, &y, seed as u64)?;
        for name in &args.methods {
            let trace = match (name.as_str(), parse_method(name)?) {
                ("grid", _) => grid_search(&problem, &test, args.outer_iters, 12.0, 1e-6),
                ("random", _) => {
                    random_search(&problem, &test, args.outer_iters, 12.0, 1e-6, seed as u64)
                }
                (_, Some(method)) => {
                    let config = deq_core::bilevel::OuterConfig {
                        outer_iters: args.outer_iters,
                        ..method.default_config()
                    };
                    optimize_lambda(&problem, &test, &config)?
                }
                (_, None) => unreachable!("checked above"),
            };
            let last = trace.last().expect("at least one step");
            println!(
                "seed {seed:>2} {name:>12}: {:>3} steps, {:.3} s, final λ {:+.3}, validation {:.5}, test {:.5}",
                trace.len(),
                last.seconds,
                last.lambda,
                last.val_loss,
                last.test_loss
            );
            traces.insert((name.clone(), seed), trace);
        }
    }
    write_atomic(&args.out.join("trace.csv"), |file| {
        let mut writer = csv::Writer::from_writer(&mut *file);
        for ((method, seed), trace) in &traces {
            for s in trace {
                writer.serialize(Row {
                    method,
                    seed: *seed,
                    iteration: s.iteration,
                    seconds: s.seconds,
                    lambda: s.lambda,
                    val_loss: s.val_loss,
                    test_loss: s.test_loss,
                    accepted: s.accepted,
                })?;
            }
        }
        writer.flush()?;
        Ok(())
    })?;
    let best = best_per_seed(&traces, args.seeds);
    crate::plot::plot_suboptimality(
        &traces,
        &args.methods,
        &best,
        &format!(
            "{}: median over {} seeds, 10–90 % band",
            args.dataset.split(':').next().unwrap_or(""),
            args.seeds
        ),
        &args.out.join("suboptimality.png"),
    )?;
    let summary = summarise(&traces, &args.methods, &best);
    write_atomic(&args.out.join("summary.json"), |file| {
        serde_json::to_writer_pretty(&mut *file, &summary)?;
        writeln!(file)?;
        Ok(())
    })?;
    println!("median time to a held-out loss within 1 % of the best seen:");
    for (method, s) in &summary {
        match s.median_seconds_to_1pct {
            Some(t) => println!(
                "  {method:>12}: {t:.3} s ({} of {} seeds)",
                s.seeds_reaching, args.seeds
            ),
            None => println!(
                "  {method:>12}: not reached on most seeds ({} of {})",
                s.seeds_reaching, args.seeds
            ),
        }
    }
    if let (Some(h), Some(s)) = (
        summary.get("hoag").and_then(|s| s.median_seconds_to_1pct),
        summary.get("shine").and_then(|s| s.median_seconds_to_1pct),
    ) {
        println!("HOAG / SHINE time ratio: {:.2}", h / s);
    }
    println!(
        "wrote {}, {} and {}",
        args.out.join("trace.csv").display(),
        args.out.join("summary.json").display(),
        args.out.join("suboptimality.png").display()
    );
    Ok(())
}

/// The held-out loss of the model each method would hand over at each point of its trace:
/// the current iterate for the hypergradient methods, the best-validation point so far for
/// grid and random search. `(seconds, held-out loss)`.
pub fn delivered(method: &str, trace: &[OuterStep]) -> Vec<(f64, f64)> {
    if method == "grid" || method == "random" {
        let mut best: Option<&OuterStep> = None;
        trace
            .iter()
            .map(|s| {
                if best.is_none_or(|b| s.val_loss < b.val_loss) {
                    best = Some(s);
                }
                (s.seconds, best.expect("set above").test_loss)
            })
            .collect()
    } else {
        trace
            .iter()
            .filter(|s| s.accepted)
            .map(|s| (s.seconds, s.test_loss))
            .collect()
    }
}

/// Per seed, the lowest held-out loss that any method reached.
fn best_per_seed(traces: &BTreeMap<(String, usize), Vec<OuterStep>>, seeds: usize) -> Vec<f64> {
    (0..seeds)
        .map(|seed| {
            traces
                .iter()
                .filter(|((_, s), _)| *s == seed)
                .flat_map(|(_, t)| t.iter().map(|s| s.test_loss))
                .fold(f64::INFINITY, f64::min)
        })
        .collect()
}

/// Per method, the medians over seeds against `best` (from [`best_per_seed`]).
fn summarise(
    traces: &BTreeMap<(String, usize), Vec<OuterStep>>,
    methods: &[String],
    best: &[f64],
) -> BTreeMap<String, MethodSummary> {
    let seeds = best.len();
    methods
        .iter()
        .map(|method| {
            let mut reach = Vec::new();
            let (mut finals, mut totals) = (Vec::new(), Vec::new());
            for seed in 0..seeds {
                let points = delivered(method, &traces[&(method.clone(), seed)]);
                if let Some(&(seconds, _)) = points.iter().find(|p| p.1 <= best[seed] * 1.01) {
                    reach.push(seconds);
                }
                finals.push(points.last().map_or(f64::NAN, |p| p.1));
                totals.push(points.last().map_or(f64::NAN, |p| p.0));
            }
            let summary = MethodSummary {
                seeds_reaching: reach.len(),
                median_seconds_to_1pct: (2 * reach.len() >= seeds)
                    .then(|| median(&mut reach))
                    .flatten(),
                median_final_test_loss: median(&mut finals).unwrap_or(f64::NAN),
                median_total_seconds: median(&mut totals).unwrap_or(f64::NAN),
            };
            (method.clone(), summary)
        })
        .collect()
}

/// Builds a file's content in memory with `write` and stores it with
/// [`deq_train::fsio::write_atomic`] (never half-written).
pub fn write_atomic(
    path: &Path,
    write: impl FnOnce(&mut Vec<u8>) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let mut bytes = Vec::new();
    write(&mut bytes).with_context(|| format!("preparing {}", path.display()))?;
    deq_train::fsio::write_atomic(path, &bytes)
        .with_context(|| format!("writing {}", path.display()))
}
