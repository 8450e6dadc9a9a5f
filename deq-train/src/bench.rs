//! Benchmarks of the backward modes on an MDEQ: the wall time of the forward solve, of the
//! backward pass alone and of a whole training step per mode, interleaved over the same
//! batches; and the cost of the Broyden bookkeeping next to one evaluation of f.
//!
//! Every clock is read after [`Device::sync`], so on a GPU the times cover the work itself and
//! not only its submission.
use std::time::Instant;

use burn::module::Module;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::{AdamConfig, GradientsParams};
use burn::tensor::{Device, Distribution, Int, Tensor, TensorData};
use deq_core::{
    BackwardMode, DeqConfig, DeqFunction, SolveStatus, SolverConfig, SolverKind, StepPrecision,
    StopMode,
};
use deq_models::{MdeqConfig, MdeqMode};
use serde::{Deserialize, Serialize};

use crate::data::mix;
use crate::resident::{PhaseMeter, resident_mib};

/// What to measure.
#[derive(Debug, Clone)]
pub struct BenchConfig {
    /// MDEQ preset: `tiny` (3×32×32 input), `small` (1×28×28) or `large`.
    pub model: String,
    /// Batch size.
    pub batch: usize,
    /// Forward Broyden iteration budget.
    pub forward_iters: usize,
    /// Forward relative-residual tolerance.
    pub tol: f64,
    /// Forward Broyden memory.
    pub memory: usize,
    /// How Broyden stores its steps.
    pub steps: StepPrecision,
    /// Backward modes, as given (`implicit`, `shine:refine=2`, …).
    pub modes: Vec<String>,
    /// Measured batches per mode.
    pub reps: usize,
    /// Unmeasured batches per mode first (kernel compilation, allocator warm-up).
    pub warmup: usize,
    /// Backend name (`flex`, `wgpu`, …).
    pub backend: String,
    /// Seed of the weights and the random batches.
    pub seed: u64,
    /// Also measure the Broyden bookkeeping overhead.
    pub overhead: bool,
}

impl BenchConfig {
    /// The modes of the paper's comparison: implicit (full budget and k = 1, 2, 5
    /// iterations), SHINE and SHINE + refine k, JFB and JFB + refine k.
    pub fn default_modes() -> Vec<String> {
        let mut modes = vec!["implicit".to_string()];
        for k in [1, 2, 5] {
            modes.push(format!("implicit:max_iter={k}"));
        }
        modes.push("shine".into());
        for k in [1, 2, 5] {
            modes.push(format!("shine:refine={k}"));
        }
        modes.push("jfb".into());
        for k in [1, 2, 5] {
            modes.push(format!("jfb:refine={k}"));
        }
        modes
    }
}

/// Median and quartiles of a set of times, with the times themselves.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Spread {
    /// Median.
    pub median: f64,
    /// First quartile.
    pub q1: f64,
    /// Third quartile.
    pub q3: f64,
    /// The measurements, in order.
    pub samples: Vec<f64>,
}

impl Spread {
    /// The spread of `samples` (empty: all NaN).
    pub fn of(samples: Vec<f64>) -> Self {
        let mut sorted = samples.clone();
        sorted.sort_by(f64::total_cmp);
        let at = |q: f64| {
            if sorted.is_empty() {
                return f64::NAN;
            }
            let pos = q * (sorted.len() - 1) as f64;
            let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
            sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo as f64)
        };
        Self {
            median: at(0.5),
            q1: at(0.25),
            q3: at(0.75),
            samples,
        }
    }
}

/// The measurements of one backward mode.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ModeTiming {
    /// The mode as given.
    pub mode: String,
    /// The mode with every setting spelled out.
    pub spec: String,
    /// Forward solve, head and loss, ms.
    pub forward_ms: Spread,
    /// `loss.backward()` alone, ms.
    pub backward_ms: Spread,
    /// Forward, backward and an Adam step, ms.
    pub step_ms: Spread,
    /// Mean forward iterations per sample.
    pub forward_iterations_mean: f64,
    /// Mean adjoint iterations per sample (implicit and refine).
    pub adjoint_iterations_mean: Option<f64>,
    /// Mean vector-Jacobian products of f per backward pass.
    pub vjp_evaluations_mean: f64,
    /// Mean samples per batch that fell back to `∇L`.
    pub fallbacks_mean: f64,
    /// Mean samples per batch whose forward solve reached the tolerance.
    pub converged_mean: f64,
    /// Median backward time of the first mode named `implicit` over this mode's.
    pub implicit_over_mode: Option<f64>,
}

/// The Broyden bookkeeping next to one evaluation of f.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Overhead {
    /// One evaluation of f (evaluation mode), ms (median).
    pub f_eval_ms: f64,
    /// One Broyden iteration (an evaluation of f and the bookkeeping), ms (median over runs).
    pub broyden_iteration_ms: f64,
    /// `(iteration − f) / f`.
    pub overhead_fraction: f64,
    /// Bookkeeping per iteration measured inside the same solves: solve time minus the time
    /// spent in f (the device synchronised after each evaluation), per evaluation, ms (median).
    /// Less exposed to machine noise than the difference of two separate timings.
    #[serde(default)]
    pub bookkeeping_ms: f64,
    /// `bookkeeping_ms / f_eval_ms`.
    #[serde(default)]
    pub bookkeeping_fraction: f64,
    /// One evaluation of f as timed inside the same solves (the time in f per evaluation), ms
    /// (median over runs).
    #[serde(default)]
    pub f_in_solve_ms: f64,
    /// Per run, the bookkeeping over the time in f of the same solve (median over runs): both
    /// sides from the same minutes.
    #[serde(default)]
    pub bookkeeping_fraction_in_solve: f64,
    /// Evaluations of f per timed solve.
    pub evaluations: usize,
    /// How the timed solves stored their steps (`half` only where the host kernels run: see
    /// [`StepPrecision::Half`]).
    #[serde(default)]
    pub steps: StepPrecision,
}

/// Everything a benchmark run measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BenchReport {
    /// `deq-train`.
    pub tool: String,
    /// Backend name.
    pub backend: String,
    /// What it ran on (adapter, CPU threads).
    pub device: String,
    /// MDEQ preset.
    pub model: String,
    /// Batch size.
    pub batch: usize,
    /// `[channels, height, width]`.
    pub input_shape: [usize; 3],
    /// Trainable parameters.
    pub parameters: usize,
    /// Forward iteration budget.
    pub forward_iters: usize,
    /// Forward Broyden memory.
    #[serde(default)]
    pub memory: usize,
    /// How Broyden stored its steps (`full` in reports from before the option).
    #[serde(default)]
    pub steps: StepPrecision,
    /// Forward tolerance.
    pub tol: f64,
    /// Measured batches per mode.
    pub reps: usize,
    /// `RAYON_NUM_THREADS`, when set.
    pub threads: Option<usize>,
    /// Per mode, in the order given.
    pub modes: Vec<ModeTiming>,
    /// The solver overhead, when measured.
    pub solver_overhead: Option<Overhead>,
}

/// Why a benchmark could not run.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// A setting is out of range.
    #[error("bench: {0}")]
    Setting(String),
    /// The model or layer rejected the configuration.
    #[error(transparent)]
    Model(#[from] deq_models::ModelError),
    /// The layer failed.
    #[error(transparent)]
    Deq(#[from] deq_core::DeqError),
    /// The device failed.
    #[error("bench: the device failed: {0}")]
    Device(String),
}

/// The input shape of an MDEQ preset: CIFAR-shaped for `tiny` and `large`, 28×28 grey for
/// `small`.
pub fn input_shape(config: &MdeqConfig) -> [usize; 3] {
    if config.input_channels == 1 {
        [1, 28, 28]
    } else {
        [config.input_channels, 32, 32]
    }
}

/// Waits for the device's queued work (the clocks are read after it).
fn sync(device: &Device) -> Result<(), BenchError> {
    device
        .sync()
        .map_err(|e| BenchError::Device(format!("{e:?}")))
}

/// A backward mode from its text form.
fn parse_mode(text: &str) -> Result<BackwardMode, BenchError> {
    text.parse()
        .map_err(|e| BenchError::Setting(format!("{e}")))
}

/// The preset `config.model` without dropout, drawn from `config.seed` on `device` with
/// autodiff, its input shape, and the autodiff device.
fn bench_model(
    config: &BenchConfig,
    device: Device,
) -> Result<(deq_models::Mdeq, [usize; 3], Device), BenchError> {
    let mut model_config = MdeqConfig::preset(&config.model)?;
    model_config.dropout = 0.0;
    let shape = input_shape(&model_config);
    let device = device.autodiff();
    device.seed(config.seed);
    Ok((model_config.init(&device)?, shape, device))
}

/// A Broyden solve that runs exactly `config.forward_iters` iterations (an absolute tolerance
/// of the smallest positive float cannot be met).
fn forced_solver(config: &BenchConfig) -> SolverConfig {
    SolverConfig::new(SolverKind::broyden_with(config.memory, config.steps))
        .with_max_iter(config.forward_iters)
        .with_tol(f64::MIN_POSITIVE)
        .with_stop(StopMode::Absolute)
}

/// Runs the benchmark: for each repetition, a new random batch, then every mode on it in turn.
pub fn run(config: &BenchConfig, device: Device) -> Result<BenchReport, BenchError> {
    if config.batch == 0 || config.reps == 0 || config.forward_iters == 0 {
        return Err(BenchError::Setting(
            "batch, reps and forward_iters must be at least 1".into(),
        ));
    }
    if config.modes.is_empty() {
        return Err(BenchError::Setting("no backward mode given".into()));
    }
    let modes: Vec<BackwardMode> = config
        .modes
        .iter()
        .map(|m| parse_mode(m))
        .collect::<Result<_, _>>()?;
    let (model, shape, device) = bench_model(config, device)?;
    let parameters = deq_models::trainable_params(&model);
    let solver = SolverConfig::new(SolverKind::broyden_with(config.memory, config.steps))
        .with_max_iter(config.forward_iters)
        .with_tol(config.tol);
    let layers: Vec<_> = modes
        .iter()
        .map(|mode| {
            DeqConfig::new(solver.clone())
                .with_backward(mode.clone())
                .init()
        })
        .collect::<Result<_, _>>()?;
    let loss_fn = CrossEntropyLossConfig::new().init(&device);

    #[derive(Default)]
    struct Acc {
        forward: Vec<f64>,
        backward: Vec<f64>,
        step: Vec<f64>,
        iterations: f64,
        adjoint: Option<f64>,
        vjp: f64,
        fallbacks: f64,
        converged: f64,
    }
    let mut acc: Vec<Acc> = modes.iter().map(|_| Acc::default()).collect();
    for rep in 0..config.warmup + config.reps {
        let measured = rep >= config.warmup;
        device.seed(mix(config.seed, rep as u64 + 1));
        let [c, h, w] = shape;
        let images = Tensor::<4>::random(
            [config.batch, c, h, w],
            Distribution::Normal(0.0, 1.0),
            &device,
        );
        let labels: Vec<i64> = (0..config.batch)
            .map(|i| (mix(config.seed ^ rep as u64, i as u64) % 10) as i64)
            .collect();
        let labels = Tensor::<1, Int>::from_data(TensorData::new(labels, [config.batch]), &device);
        for (layer, acc) in layers.iter().zip(acc.iter_mut()) {
            sync(&device)?;
            let started = Instant::now();
            let output = model.forward(images.clone(), MdeqMode::Equilibrium(layer))?;
            let loss = loss_fn.forward(output.logits, labels.clone());
            let _ = loss.clone().into_scalar::<f64>();
            let forward_ms = started.elapsed().as_secs_f64() * 1e3;
            let backward_started = Instant::now();
            let grads = loss.backward();
            sync(&device)?;
            let backward_ms = backward_started.elapsed().as_secs_f64() * 1e3;
            let grads = GradientsParams::from_grads(grads, &model);
            let mut optim = AdamConfig::new().init();
            let stepped = optim.step(1e-3, model.clone(), grads);
            sync(&device)?;
            let step_ms = started.elapsed().as_secs_f64() * 1e3;
            drop(stepped);
            if !measured {
                continue;
            }
            acc.forward.push(forward_ms);
            acc.backward.push(backward_ms);
            acc.step.push(step_ms);
            let n = config.reps as f64;
            let deq = output.deq.expect("an equilibrium forward has layer output");
            acc.iterations += deq.stats.mean_iterations() / n;
            acc.converged += deq.stats.count(SolveStatus::Converged) as f64 / n;
            if let Some(stats) = deq.backward.get() {
                acc.vjp += stats.vjp_evaluations as f64 / n;
                acc.fallbacks += stats.fallback_count() as f64 / n;
                if let Some(adjoint) = stats.adjoint {
                    *acc.adjoint.get_or_insert(0.0) += adjoint.mean_iterations() / n;
                }
            }
        }
    }
    let mut timings: Vec<ModeTiming> = modes
        .iter()
        .zip(&config.modes)
        .zip(acc)
        .map(|((mode, given), acc)| ModeTiming {
            mode: given.trim().to_string(),
            spec: mode.to_string(),
            forward_ms: Spread::of(acc.forward),
            backward_ms: Spread::of(acc.backward),
            step_ms: Spread::of(acc.step),
            forward_iterations_mean: acc.iterations,
            adjoint_iterations_mean: acc.adjoint,
            vjp_evaluations_mean: acc.vjp,
            fallbacks_mean: acc.fallbacks,
            converged_mean: acc.converged,
            implicit_over_mode: None,
        })
        .collect();
    if let Some(implicit) = timings
        .iter()
        .find(|t| t.mode == "implicit")
        .map(|t| t.backward_ms.median)
    {
        for t in &mut timings {
            t.implicit_over_mode = Some(implicit / t.backward_ms.median);
        }
    }
    let solver_overhead = if config.overhead {
        Some(overhead(config, &model.valid(), shape)?)
    } else {
        None
    };
    Ok(BenchReport {
        tool: "deq-train".into(),
        backend: config.backend.clone(),
        device: String::new(),
        model: config.model.clone(),
        batch: config.batch,
        input_shape: shape,
        parameters,
        forward_iters: config.forward_iters,
        memory: config.memory,
        steps: config.steps,
        tol: config.tol,
        reps: config.reps,
        threads: std::env::var("RAYON_NUM_THREADS")
            .ok()
            .and_then(|t| t.parse().ok()),
        modes: timings,
        solver_overhead,
    })
}

/// Times solves that run exactly `forward_iters` Broyden iterations (absolute tolerance 0
/// cannot be met) against as many evaluations of f alone, in evaluation mode.
fn overhead(
    config: &BenchConfig,
    model: &deq_models::Mdeq,
    shape: [usize; 3],
) -> Result<Overhead, BenchError> {
    let device = model
        .devices()
        .into_iter()
        .next()
        .unwrap_or_else(crate::backend::cpu);
    let [c, h, w] = shape;
    device.seed(mix(config.seed, 0x0e4));
    let images = Tensor::<4>::random(
        [config.batch, c, h, w],
        Distribution::Normal(0.0, 1.0),
        &device,
    );
    let (core, injection) = model.prepare(images)?;
    let dim = core.state_shape().dim();
    let iters = config.forward_iters;
    let solver = forced_solver(config);
    let (mut per_iteration, mut per_f, mut counted) = (Vec::new(), Vec::new(), 0);
    let mut per_bookkeeping = Vec::new();
    let (mut per_f_in_solve, mut per_fraction_in_solve) = (Vec::new(), Vec::new());
    let mut steps = StepPrecision::Full;
    for run in 0..config.reps.clamp(3, 10) + 1 {
        let z0 = Tensor::<2>::zeros([config.batch, dim], &device);
        sync(&device)?;
        let started = Instant::now();
        let mut evaluations = 0usize;
        let mut in_f = 0.0f64;
        let mut sync_failed = None;
        let mut map = |z: Tensor<2>| {
            evaluations += 1;
            let started = Instant::now();
            let fz = core.forward(z, &injection);
            if let Err(e) = sync(&device) {
                sync_failed = Some(e);
            }
            in_f += started.elapsed().as_secs_f64();
            fz
        };
        let result = solver.solve(&mut map, z0.clone(), iters)?;
        let _ = result.z.into_data();
        if let Some(inverse) = &result.inverse {
            steps = inverse.precision();
        }
        let solve_s = started.elapsed().as_secs_f64();
        if let Some(e) = sync_failed {
            return Err(e);
        }
        let evaluations = evaluations.max(1);
        sync(&device)?;
        let started = Instant::now();
        let mut z = z0;
        for _ in 0..evaluations {
            z = core.forward(z, &injection);
        }
        let _ = z.into_data();
        let f_s = started.elapsed().as_secs_f64() / evaluations as f64;
        counted = evaluations;
        if run > 0 {
            per_iteration.push(solve_s / evaluations as f64 * 1e3);
            per_bookkeeping.push((solve_s - in_f) / evaluations as f64 * 1e3);
            per_f_in_solve.push(in_f / evaluations as f64 * 1e3);
            per_fraction_in_solve.push((solve_s - in_f) / in_f.max(f64::MIN_POSITIVE));
            per_f.push(f_s * 1e3);
        }
    }
    let (iteration, f) = (Spread::of(per_iteration).median, Spread::of(per_f).median);
    let bookkeeping = Spread::of(per_bookkeeping).median;
    Ok(Overhead {
        f_eval_ms: f,
        broyden_iteration_ms: iteration,
        overhead_fraction: (iteration - f) / f,
        bookkeeping_ms: bookkeeping,
        bookkeeping_fraction: bookkeeping / f,
        f_in_solve_ms: Spread::of(per_f_in_solve).median,
        bookkeeping_fraction_in_solve: Spread::of(per_fraction_in_solve).median,
        evaluations: counted,
        steps,
    })
}

/// Peak memory of training steps, measured in a process of its own (the peak is per process).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MemoryProbe {
    /// The backward mode.
    pub mode: String,
    /// Forward iteration budget (every iteration is run: tolerance 0 cannot be met).
    pub forward_iters: usize,
    /// Broyden memory of the forward solve.
    pub memory: usize,
    /// Resident memory before the first step (model, optimiser and batch in place), MiB.
    pub before_mib: f64,
    /// Peak resident memory after the steps, MiB.
    pub peak_mib: f64,
    /// `peak − before`: what the steps themselves added at their peak, MiB.
    pub step_mib: f64,
    /// Where the peak was reached: the highest peak of each phase over the steps, MiB above
    /// `before_mib` (absent where the kernel's peak counter cannot be reset).
    pub phases: Option<PhasePeaks>,
}

/// Peak resident memory of each phase of a training step (the highest over the steps), MiB
/// above the state before the steps.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct PhasePeaks {
    /// The model's forward pass, forward solve included.
    pub forward_mib: f64,
    /// The loss and `backward()`.
    pub backward_mib: f64,
    /// The optimiser step.
    pub optimizer_mib: f64,
}

impl PhasePeaks {
    /// The phase whose peak is the highest: `forward`, `backward` or `optimizer` (the earlier
    /// one on a tie: with an allocator that keeps freed memory, later phases repeat the peak).
    pub fn highest(&self) -> &'static str {
        if self.forward_mib >= self.backward_mib.max(self.optimizer_mib) {
            "forward"
        } else if self.backward_mib >= self.optimizer_mib {
            "backward"
        } else {
            "optimizer"
        }
    }
}

/// Runs `steps` training steps of `config.model` with `mode` and a forward solve of exactly
/// `forward_iters` iterations, and reports the resident memory (call once per process).
pub fn memory_probe(
    config: &BenchConfig,
    mode: &str,
    steps: usize,
    device: Device,
) -> Result<MemoryProbe, BenchError> {
    let backward = parse_mode(mode)?;
    let (mut model, [c, h, w], device) = bench_model(config, device)?;
    let layer = DeqConfig::new(forced_solver(config))
        .with_backward(backward)
        .init()?;
    let loss_fn = CrossEntropyLossConfig::new().init(&device);
    let mut optim = AdamConfig::new().init();
    let images = Tensor::<4>::random(
        [config.batch, c, h, w],
        Distribution::Normal(0.0, 1.0),
        &device,
    );
    let labels: Vec<i64> = (0..config.batch).map(|i| (i % 10) as i64).collect();
    let labels = Tensor::<1, Int>::from_data(TensorData::new(labels, [config.batch]), &device);
    sync(&device)?;
    let unavailable =
        || BenchError::Setting("resident memory is read from /proc (Linux only)".into());
    // Per phase where the kernel lets the peak be reset; the overall peak either way.
    let mut meter = PhaseMeter::start();
    let before = match &meter {
        Some(m) => m.before_mib(),
        None => resident_mib().ok_or_else(unavailable)?.0,
    };
    let mut phases: Option<PhasePeaks> = None;
    // The highest phase peak so far (the resets lower the process's own peak counter).
    let mut highest = 0.0f64;
    for _ in 0..steps.max(1) {
        let mut end_phase = || {
            let peak = meter.as_mut().and_then(PhaseMeter::end_phase);
            if peak.is_none() {
                meter = None;
            }
            highest = highest.max(peak.unwrap_or(0.0));
            peak
        };
        let output = model.forward(images.clone(), MdeqMode::Equilibrium(&layer))?;
        sync(&device)?;
        let forward = end_phase();
        let loss = loss_fn.forward(output.logits, labels.clone());
        let gradients = loss.backward();
        sync(&device)?;
        let backward = end_phase();
        let grads = GradientsParams::from_grads(gradients, &model);
        model = optim.step(1e-3, model, grads);
        sync(&device)?;
        let optimizer = end_phase();
        phases = match (forward, backward, optimizer) {
            (Some(forward_mib), Some(backward_mib), Some(optimizer_mib)) => {
                let step = PhasePeaks {
                    forward_mib,
                    backward_mib,
                    optimizer_mib,
                };
                Some(phases.map_or(step, |p| PhasePeaks {
                    forward_mib: p.forward_mib.max(step.forward_mib),
                    backward_mib: p.backward_mib.max(step.backward_mib),
                    optimizer_mib: p.optimizer_mib.max(step.optimizer_mib),
                }))
            }
            _ => None,
        };
    }
    let (_, counter) = resident_mib().ok_or_else(unavailable)?;
    let peak = counter.max(before + highest);
    Ok(MemoryProbe {
        mode: mode.to_string(),
        forward_iters: config.forward_iters,
        memory: config.memory,
        before_mib: before,
        peak_mib: peak,
        step_mib: peak - before,
        phases,
    })
}
