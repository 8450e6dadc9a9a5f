//! The outer loop: hyperparameter optimisation of λ (HOAG and its SHINE variants), and
//! grid / random search baselines. Every method reports the same per-iteration trace.
use std::time::Instant;

use super::BilevelError;
use super::error::{check_nonzero, check_positive, invalid};
use super::hypergrad::{BilevelProblem, HypergradMethod};
use super::lbfgs::{LbfgsConfig, LbfgsMemory};
use super::logistic::DataLoss;
use crate::toy::SplitMix;

/// How the outer loop obtains its hypergradient.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum OuterMethod {
    /// HOAG: conjugate gradient to the current tolerance, warm-started.
    Hoag,
    /// SHINE: the inner L-BFGS inverse estimate.
    Shine,
    /// SHINE followed by CG warm-started at its estimate, more iterations as ε shrinks.
    ShineRefine,
    /// SHINE with outer-problem-aware pairs in the inner solve (every 5 iterations).
    Opa,
    /// Jacobian-free: `q = ∇ₓg`.
    JacobianFree,
    /// A fixed number of CG iterations.
    TruncatedCg {
        /// CG iterations.
        k: usize,
    },
}

impl OuterMethod {
    /// Short name as used by the CLI: `hoag`, `shine`, `shine-refine`, `opa`, `jfb`, `cg<k>`.
    pub fn name(&self) -> String {
        match self {
            Self::Hoag => "hoag".into(),
            Self::Shine => "shine".into(),
            Self::ShineRefine => "shine-refine".into(),
            Self::Opa => "opa".into(),
            Self::JacobianFree => "jfb".into(),
            Self::TruncatedCg { k } => format!("cg{k}"),
        }
    }

    /// The paper's defaults: HOAG m = 10, ρ = 0.9; the SHINE family m = 30, ρ = 0.78.
    pub fn default_config(self) -> OuterConfig {
        let (memory, rho) = match self {
            Self::Hoag | Self::TruncatedCg { .. } | Self::JacobianFree => (10, 0.9),
            Self::Shine | Self::ShineRefine | Self::Opa => (30, 0.78),
        };
        OuterConfig {
            method: self,
            memory,
            rho,
            ..OuterConfig::hoag()
        }
    }
}

/// Settings of [`optimize_lambda`].
#[derive(Debug, Clone, PartialEq)]
pub struct OuterConfig {
    /// Hypergradient method.
    pub method: OuterMethod,
    /// Starting λ (log of the regularisation strength).
    pub lambda0: f64,
    /// Outer iterations.
    pub outer_iters: usize,
    /// Inner L-BFGS iteration cap.
    pub inner_max_iter: usize,
    /// Inner L-BFGS memory.
    pub memory: usize,
    /// Initial inner tolerance ε₀ (on `‖∇ₓh‖`, relative to `‖∇ₓh(0)‖`).
    pub eps0: f64,
    /// Tolerance decrease per outer iteration.
    pub rho: f64,
    /// λ is kept in `[−bound, bound]`.
    pub lambda_bound: f64,
    /// Start each inner solve from the previous solve's L-BFGS pairs instead of an empty
    /// memory (the curvature changes little between nearby λ).
    pub carry_memory: bool,
}

impl OuterConfig {
    /// HOAG defaults: λ₀ = 0, 30 outer iterations, inner cap 1000, m = 10, ε₀ = 1e-3, ρ = 0.9,
    /// λ in [−12, 12], no carry-over of L-BFGS pairs.
    pub fn hoag() -> Self {
        Self {
            method: OuterMethod::Hoag,
            lambda0: 0.0,
            outer_iters: 30,
            inner_max_iter: 1000,
            memory: 10,
            eps0: 1e-3,
            rho: 0.9,
            lambda_bound: 12.0,
            carry_memory: false,
        }
    }

    /// Checks the settings.
    pub fn validate(&self) -> Result<(), BilevelError> {
        check_nonzero("outer_iters", self.outer_iters)?;
        check_nonzero("memory", self.memory)?;
        check_positive("eps0", self.eps0)?;
        if !(self.rho > 0.0 && self.rho <= 1.0) {
            return invalid("rho", self.rho.to_string(), "must lie in (0, 1]");
        }
        if !(self.lambda0.is_finite()
            && self.lambda_bound.is_finite()
            && self.lambda0.abs() <= self.lambda_bound)
        {
            return invalid(
                "lambda0",
                self.lambda0.to_string(),
                "must be finite and within the bound",
            );
        }
        Ok(())
    }
}

/// One point of a trace.
#[derive(Debug, Clone, PartialEq)]
pub struct OuterStep {
    /// Outer iteration (or evaluation index for searches).
    pub iteration: usize,
    /// Seconds since the start.
    pub seconds: f64,
    /// λ at which the inner problem was solved.
    pub lambda: f64,
    /// Outer (validation) loss there.
    pub val_loss: f64,
    /// Held-out test loss there.
    pub test_loss: f64,
    /// Inner L-BFGS iterations of this step.
    pub inner_iterations: usize,
    /// Whether the step was kept (false: rejected, λ reverted).
    pub accepted: bool,
}

/// Gradient descent on λ with hypergradients (the reference HOAG outer loop): step `1/L`
/// with an adaptive Lipschitz estimate `L` (×0.95 after an accepted step; ×2, λ reverted and
/// ε halved when the outer loss grew by more than 20 %), inner tolerance `ε ← ρ ε`, warm starts
/// of `x` and (HOAG) `q`; the L-BFGS memory is rebuilt by every inner solve unless
/// `carry_memory` is set.
pub fn optimize_lambda<L: DataLoss>(
    problem: &BilevelProblem<L>,
    test: &L,
    config: &OuterConfig,
) -> Result<Vec<OuterStep>, BilevelError> {
    config.validate()?;
    let started = Instant::now();
    let n = problem.inner.loss.dim();
    let grad0 =
        super::lbfgs::norm(&problem.inner.value_grad(&vec![0.0; n], config.lambda0).1).max(1.0);
    let (mut lambda, mut eps) = (config.lambda0, config.eps0);
    let mut x = vec![0.0; n];
    let mut q: Option<Vec<f64>> = None;
    let mut lipschitz: Option<f64> = None;
    let mut previous: Option<(f64, Vec<f64>, f64)> = None; // (λ, x, loss) of the last accepted step
    let mut carried: Option<LbfgsMemory> = None;
    let mut trace = Vec::with_capacity(config.outer_iters);
    for iteration in 0..config.outer_iters {
        let inner = LbfgsConfig {
            memory: config.memory,
            max_iter: config.inner_max_iter,
            gtol: eps * grad0,
            ..LbfgsConfig::default()
        };
        let opa = matches!(config.method, OuterMethod::Opa).then_some(5);
        let start = carried
            .take()
            .filter(|_| config.carry_memory)
            .unwrap_or_else(|| LbfgsMemory::new(config.memory, true));
        let result = problem.solve_inner(lambda, x.clone(), &inner, start, opa);
        let val_loss = problem.outer.value(&result.x);
        let test_loss = test.value(&result.x);
        let rejected = previous
            .as_ref()
            .is_some_and(|(_, _, loss)| val_loss > 1.2 * loss);
        trace.push(OuterStep {
            iteration,
            seconds: started.elapsed().as_secs_f64(),
            lambda,
            val_loss,
            test_loss,
            inner_iterations: result.iterations,
            accepted: !rejected,
        });
        if rejected {
            let (l, px, _) = previous.clone().expect("checked");
            let step = lambda - l;
            lipschitz = lipschitz.map(|v| v * 2.0);
            eps *= 0.5;
            x = px;
            lambda = (l + step / 2.0).clamp(-config.lambda_bound, config.lambda_bound);
            continue;
        }
        x = result.x;
        if config.carry_memory {
            carried = Some(result.memory.clone());
        }
        let method = match config.method {
            OuterMethod::Hoag => HypergradMethod::Cg {
                tol: eps,
                max_iter: 1000,
            },
            OuterMethod::Shine | OuterMethod::Opa => HypergradMethod::Shine,
            OuterMethod::ShineRefine => HypergradMethod::ShineRefine {
                iterations: ((1e-3 / eps).log10().max(0.0) as usize) + 1,
            },
            OuterMethod::JacobianFree => HypergradMethod::JacobianFree,
            OuterMethod::TruncatedCg { k } => HypergradMethod::TruncatedCg { k },
        };
        let warm = matches!(config.method, OuterMethod::Hoag)
            .then_some(q.as_deref())
            .flatten();
        let hg = problem.hypergradient(lambda, &x, method, Some(&result.memory), warm);
        if !hg.value.is_finite() {
            return Err(BilevelError::Data(format!(
                "non-finite hypergradient at λ = {lambda}"
            )));
        }
        let l = *lipschitz.get_or_insert(hg.value.abs().max(1e-12));
        lipschitz = Some(l * 0.95);
        previous = Some((lambda, x.clone(), val_loss));
        q = Some(hg.q);
        lambda = (lambda - hg.value / l).clamp(-config.lambda_bound, config.lambda_bound);
        eps *= config.rho;
    }
    Ok(trace)
}

/// Grid search: `points` values of λ evenly spaced in `[−bound, bound]`, inner solves to
/// `gtol` (relative to `‖∇h(0)‖`), warm-started from the previous point.
pub fn grid_search<L: DataLoss>(
    problem: &BilevelProblem<L>,
    test: &L,
    points: usize,
    bound: f64,
    gtol: f64,
) -> Vec<OuterStep> {
    let lambdas: Vec<f64> = (0..points)
        .map(|i| -bound + 2.0 * bound * i as f64 / (points.max(2) - 1) as f64)
        .collect();
    search(problem, test, &lambdas, gtol)
}

/// Random search: `points` values of λ uniform in `[−bound, bound]` (seeded).
pub fn random_search<L: DataLoss>(
    problem: &BilevelProblem<L>,
    test: &L,
    points: usize,
    bound: f64,
    gtol: f64,
    seed: u64,
) -> Vec<OuterStep> {
    let mut rng = SplitMix::new(seed);
    let lambdas: Vec<f64> = (0..points)
        .map(|_| -bound + 2.0 * bound * rng.uniform())
        .collect();
    search(problem, test, &lambdas, gtol)
}

fn search<L: DataLoss>(
    problem: &BilevelProblem<L>,
    test: &L,
    lambdas: &[f64],
    gtol: f64,
) -> Vec<OuterStep> {
    let started = Instant::now();
    let n = problem.inner.loss.dim();
    let mut x = vec![0.0; n];
    lambdas
        .iter()
        .enumerate()
        .map(|(iteration, &lambda)| {
            let grad0 =
                super::lbfgs::norm(&problem.inner.value_grad(&vec![0.0; n], lambda).1).max(1.0);
            let config = LbfgsConfig {
                memory: 10,
                max_iter: 1000,
                gtol: gtol * grad0,
                ..LbfgsConfig::default()
            };
            let result =
                problem.solve_inner(lambda, x.clone(), &config, LbfgsMemory::new(10, true), None);
            x = result.x;
            OuterStep {
                iteration,
                seconds: started.elapsed().as_secs_f64(),
                lambda,
                val_loss: problem.outer.value(&x),
                test_loss: test.value(&x),
                inner_iterations: result.iterations,
                accepted: true,
            }
        })
        .collect()
}
