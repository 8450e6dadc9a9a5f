//! The adjoint computations run inside the backward of the gradient-replacing op.
use burn::tensor::Tensor;

use super::op::AdjointMap;
use super::{BackwardMode, BackwardReport, BackwardStats};
use crate::function::DeqFunction;
use crate::linearization::Linearization;
use crate::solver::{
    BatchMap, SolveStatus, SolverConfig, StepInverse, StopMode, StopRule, broyden_from,
};

/// Refinement stops early only at this relative adjoint residual.
const REFINE_TOL: f64 = 1e-10;

/// Everything the backward needs, captured at forward time (all without autodiff).
pub(crate) struct AdjointPlan<F: DeqFunction> {
    pub f: F,
    pub x: F::Input,
    pub z_star: Tensor<2>,
    pub inverse: Option<StepInverse>,
    pub forward_status: Vec<SolveStatus>,
    pub mode: BackwardMode,
    pub report: BackwardReport,
}

/// `J_fᵀ w` at `z`: one tracked evaluation of `f` from a fresh leaf, one backward.
pub(crate) fn vjp<F: DeqFunction>(f: &F, x: &F::Input, z: &Tensor<2>, w: Tensor<2>) -> Tensor<2> {
    let leaf = z.clone().autodiff().require_grad();
    let y = f.forward(leaf.clone(), x);
    if !y.is_tracked() {
        return w.zeros_like();
    }
    let grads = (y * w.clone()).sum().backward();
    leaf.grad(&grads)
        .map(|g| g.without_autodiff())
        .unwrap_or_else(|| w.zeros_like())
}

/// Builds the backward rule `∇L ↦ w` of the layer's gradient-replacing op.
pub(crate) fn adjoint_map<F: DeqFunction>(plan: AdjointPlan<F>) -> AdjointMap {
    AdjointMap::new(move |grad| {
        let (w, stats) = compute_adjoint(&plan, grad);
        plan.report.set(stats);
        w
    })
}

fn compute_adjoint<F: DeqFunction>(
    plan: &AdjointPlan<F>,
    grad: Tensor<2>,
) -> (Tensor<2>, BackwardStats) {
    let batch = grad.dims()[0];
    let mut vjps = 0usize;
    let mut stats = BackwardStats {
        mode: plan.mode.name().to_string(),
        adjoint: None,
        fallback: vec![false; batch],
        vjp_evaluations: 0,
    };
    // The adjoint fixed-point map F(w) = J_fᵀ w + ∇L. The products reuse f's linearisation at
    // z* when f has one, built at the first product (SHINE and JFB without refinement need
    // none).
    let mut linearization: Option<Option<Linearization>> = None;
    let mut adjoint_map = |w: Tensor<2>| {
        vjps += 1;
        let linear = linearization.get_or_insert_with(|| plan.f.linearize(&plan.z_star, &plan.x));
        match linear {
            Some(linear) => linear.vjp(w) + grad.clone(),
            None => vjp(&plan.f, &plan.x, &plan.z_star, w) + grad.clone(),
        }
    };
    let refine_rule = StopRule {
        mode: StopMode::Relative,
        tol: REFINE_TOL,
        divergence_factor: 1e6,
    };
    let w = match &plan.mode {
        BackwardMode::Implicit {
            solver,
            max_iter,
            tol,
        } => {
            let config = SolverConfig::new(solver.clone())
                .with_max_iter(*max_iter)
                .with_tol(*tol);
            match config.solve(&mut adjoint_map, grad.clone(), *max_iter) {
                Ok(result) => {
                    stats.adjoint = Some(result.stats);
                    result.z
                }
                // Only reachable with an invalid config, which DeqConfig::init rejects.
                Err(_) => grad.clone(),
            }
        }
        BackwardMode::JacobianFree { refine } => {
            if *refine == 0 {
                grad.clone()
            } else {
                let init = StepInverse::identity(&grad, *refine);
                refine_from(
                    &mut adjoint_map,
                    grad.clone(),
                    refine_rule,
                    *refine,
                    init,
                    &mut stats,
                )
            }
        }
        BackwardMode::Shine { fallback, refine } => {
            let inverse = plan
                .inverse
                .clone()
                .expect("validated: SHINE has a Broyden forward");
            let shine = inverse.apply_transposed(grad.clone()).neg();
            let (w0, replaced) = apply_fallback(shine, &grad, *fallback, &plan.forward_status);
            stats.fallback = replaced;
            if *refine == 0 {
                w0
            } else {
                let init = StepInverse::over_transposed(inverse, *refine);
                refine_from(&mut adjoint_map, w0, refine_rule, *refine, init, &mut stats)
            }
        }
        // Phantom and Unrolled backpropagate through ordinary ops; no adjoint op is inserted.
        BackwardMode::Phantom { .. } | BackwardMode::Unrolled => grad.clone(),
    };
    stats.vjp_evaluations = vjps;
    (w, stats)
}

fn refine_from(
    map: &mut dyn BatchMap,
    w0: Tensor<2>,
    rule: StopRule,
    iterations: usize,
    init: StepInverse,
    stats: &mut BackwardStats,
) -> Tensor<2> {
    match broyden_from(map, w0.clone(), rule, iterations, init) {
        Ok(result) => {
            stats.adjoint = Some(result.stats);
            result.z
        }
        Err(_) => w0,
    }
}

/// Per sample: keep SHINE's `w` unless it is non-finite, `‖w‖ > τ ‖∇L‖`, or the forward solve
/// of that sample diverged / went non-finite; then use `∇L`.
fn apply_fallback(
    shine: Tensor<2>,
    grad: &Tensor<2>,
    tau: Option<f64>,
    forward_status: &[SolveStatus],
) -> (Tensor<2>, Vec<bool>) {
    let norms = crate::solver::row_norms(&shine, grad);
    let replaced: Vec<bool> = (0..forward_status.len())
        .map(|b| {
            let [w, g] = norms[b];
            let bad_forward = matches!(
                forward_status[b],
                SolveStatus::Diverged | SolveStatus::NonFinite
            );
            bad_forward || !w.is_finite() || tau.is_some_and(|tau| w > tau * g)
        })
        .collect();
    if !replaced.iter().any(|&r| r) {
        return (shine, replaced);
    }
    (
        crate::solver::where_rows(shine, &replaced, grad.clone()),
        replaced,
    )
}
