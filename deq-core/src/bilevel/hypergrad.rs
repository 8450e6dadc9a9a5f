//! Hypergradients of `λ ↦ g(x*(λ))` for the ridge-logistic inner problem.
use super::cg::conjugate_gradient;
use super::lbfgs::{LbfgsConfig, LbfgsMemory, LbfgsResult, dot, lbfgs, norm};
use super::logistic::{DataLoss, LogisticLoss, Ridge};

/// An inner problem (training loss + `½ e^λ ‖x‖²`) and an outer loss (validation loss), both
/// binary logistic by default, or multinomial ([`super::MultinomialLoss`]).
#[derive(Debug, Clone)]
pub struct BilevelProblem<L: DataLoss = LogisticLoss> {
    /// `h(x, λ)`.
    pub inner: Ridge<L>,
    /// `g(x)`, unregularised.
    pub outer: L,
}

/// How `q ≈ H⁻¹ ∇ₓg` is obtained (`H = ∇²ₓₓh` at the inner solution).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum HypergradMethod {
    /// Dense Hessian and a direct solve (small problems, reference).
    Exact,
    /// Conjugate gradient to relative tolerance `tol`, warm-started (HOAG).
    Cg {
        /// Relative residual tolerance.
        tol: f64,
        /// Iteration cap.
        max_iter: usize,
    },
    /// SHINE: the L-BFGS inverse estimate of the inner solve applied to `∇ₓg`.
    Shine,
    /// SHINE followed by conjugate gradient warm-started at its estimate.
    ShineRefine {
        /// CG iterations after the SHINE estimate.
        iterations: usize,
    },
    /// Jacobian-free: `q = ∇ₓg`.
    JacobianFree,
    /// Exactly `k` CG iterations from zero (or the warm start).
    TruncatedCg {
        /// Number of iterations.
        k: usize,
    },
}

/// A hypergradient and the vector it came from.
#[derive(Debug, Clone)]
pub struct Hypergradient {
    /// `d g(x*(λ)) / dλ`.
    pub value: f64,
    /// `q ≈ H⁻¹ ∇ₓg`.
    pub q: Vec<f64>,
    /// Hessian-vector products spent.
    pub hvps: usize,
}

impl<L: DataLoss> BilevelProblem<L> {
    /// Solves the inner problem at `lambda` from `x0` with L-BFGS, starting from `memory`.
    /// `opa_every = Some(k)`: every `k` iterations add the pair along `e = B ∇ₓg(x)` rescaled
    /// to the last step's length (outer-problem awareness).
    pub fn solve_inner(
        &self,
        lambda: f64,
        x0: Vec<f64>,
        config: &LbfgsConfig,
        memory: LbfgsMemory,
        opa_every: Option<usize>,
    ) -> LbfgsResult {
        let mut f = |x: &[f64]| self.inner.value_grad(x, lambda);
        let mut extra = |iteration: usize, x: &[f64], memory: &LbfgsMemory| -> Option<Vec<f64>> {
            let every = opa_every?;
            if iteration % every != 0 || memory.is_empty() {
                return None;
            }
            let (_, gout) = self.outer.value_grad(x);
            let e = memory.apply(&gout);
            let (last_s, _) = memory.pairs().last()?;
            let scale = norm(last_s) / norm(&e);
            scale
                .is_finite()
                .then(|| e.iter().map(|v| v * scale).collect())
        };
        lbfgs(&mut f, x0, config, memory, &mut extra)
    }

    /// Newton's method with the dense Hessian from `x0`, until `‖∇ₓh‖` stops decreasing (at most
    /// 50 steps): the inner solution to machine precision, for small problems and references.
    pub fn solve_inner_newton(&self, lambda: f64, x0: Vec<f64>) -> Vec<f64> {
        let mut x = x0;
        let mut gnorm = f64::INFINITY;
        for _ in 0..50 {
            let (_, g) = self.inner.value_grad(&x, lambda);
            let gn = norm(&g);
            if !(gn < gnorm) || gn == 0.0 {
                break;
            }
            gnorm = gn;
            let Some(step) = crate::dense::solve(self.inner.dense_hessian(&x, lambda), g) else {
                break;
            };
            x.iter_mut().zip(&step).for_each(|(xi, si)| *xi -= si);
        }
        x
    }

    /// The hypergradient at the inner solution `x` (with the inner solve's `memory` for the
    /// SHINE variants and `warm` as the starting `q` of CG variants).
    pub fn hypergradient(
        &self,
        lambda: f64,
        x: &[f64],
        method: HypergradMethod,
        memory: Option<&LbfgsMemory>,
        warm: Option<&[f64]>,
    ) -> Hypergradient {
        let (_, gout) = self.outer.value_grad(x);
        let n = x.len();
        let weights = self.inner.loss.curvature(x);
        let mut hvps = 0usize;
        let mut hvp = |v: &[f64]| {
            hvps += 1;
            self.inner.hvp_with(&weights, lambda, v)
        };
        let start = || warm.map(<[f64]>::to_vec).unwrap_or_else(|| vec![0.0; n]);
        let shine = || {
            memory
                .map(|m| m.apply(&gout))
                .unwrap_or_else(|| gout.clone())
        };
        let q = match method {
            // A singular Hessian cannot happen with e^λ > 0; NaN then surfaces as an error upstream.
            HypergradMethod::Exact => {
                crate::dense::solve(self.inner.dense_hessian(x, lambda), gout.clone())
                    .unwrap_or_else(|| vec![f64::NAN; n])
            }
            HypergradMethod::Cg { tol, max_iter } => {
                conjugate_gradient(&mut hvp, &gout, start(), tol, max_iter).x
            }
            HypergradMethod::Shine => shine(),
            HypergradMethod::ShineRefine { iterations } => {
                conjugate_gradient(&mut hvp, &gout, shine(), 0.0, iterations).x
            }
            HypergradMethod::JacobianFree => gout.clone(),
            HypergradMethod::TruncatedCg { k } => {
                conjugate_gradient(&mut hvp, &gout, start(), 0.0, k).x
            }
        };
        let value = -lambda.exp() * dot(x, &q);
        Hypergradient { value, q, hvps }
    }
}
