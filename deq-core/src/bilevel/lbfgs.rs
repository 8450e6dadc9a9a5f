//! L-BFGS with its inverse-Hessian memory exposed (SHINE reuses it).
use std::collections::VecDeque;

use super::BilevelError;
use super::error::{check_nonzero, check_positive, invalid};

pub(crate) fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

pub(crate) fn norm(a: &[f64]) -> f64 {
    dot(a, a).sqrt()
}

/// The L-BFGS inverse-Hessian estimate: at most `capacity` pairs `(s, y)`, oldest first.
#[derive(Debug, Clone)]
pub struct LbfgsMemory {
    capacity: usize,
    scaled_h0: bool,
    s: VecDeque<Vec<f64>>,
    y: VecDeque<Vec<f64>>,
    rho: VecDeque<f64>,
}

impl LbfgsMemory {
    /// Empty memory. `scaled_h0`: `H₀ = (sᵀy / yᵀy) I` from the newest pair instead of `I`.
    pub fn new(capacity: usize, scaled_h0: bool) -> Self {
        Self {
            capacity,
            scaled_h0,
            s: VecDeque::new(),
            y: VecDeque::new(),
            rho: VecDeque::new(),
        }
    }

    /// Number of stored pairs.
    pub fn len(&self) -> usize {
        self.s.len()
    }

    /// Whether no pair is stored.
    pub fn is_empty(&self) -> bool {
        self.s.is_empty()
    }

    /// Appends `(s, y)` (dropping the oldest when full) if the curvature `sᵀy` is positive;
    /// returns whether it was kept.
    pub fn push(&mut self, s: Vec<f64>, y: Vec<f64>) -> bool {
        let sy = dot(&s, &y);
        if !(sy > 1e-12 * norm(&s) * norm(&y)) || self.capacity == 0 {
            return false;
        }
        if self.s.len() == self.capacity {
            self.s.pop_front();
            self.y.pop_front();
            self.rho.pop_front();
        }
        self.s.push_back(s);
        self.y.push_back(y);
        self.rho.push_back(1.0 / sy);
        true
    }

    /// The initial scaling `γ` of `H₀ = γ I`.
    pub fn gamma(&self) -> f64 {
        match (self.scaled_h0, self.s.back(), self.y.back()) {
            (true, Some(s), Some(y)) => dot(s, y) / dot(y, y),
            _ => 1.0,
        }
    }

    /// `H g` by the two-loop recursion (`H ≈ (∇²h)⁻¹`).
    pub fn apply(&self, g: &[f64]) -> Vec<f64> {
        let k = self.s.len();
        let mut q = g.to_vec();
        let mut alpha = vec![0.0; k];
        for i in (0..k).rev() {
            alpha[i] = self.rho[i] * dot(&self.s[i], &q);
            for (qj, yj) in q.iter_mut().zip(&self.y[i]) {
                *qj -= alpha[i] * yj;
            }
        }
        let gamma = self.gamma();
        let mut r: Vec<f64> = q.iter().map(|v| gamma * v).collect();
        for i in 0..k {
            let beta = self.rho[i] * dot(&self.y[i], &r);
            for (rj, sj) in r.iter_mut().zip(&self.s[i]) {
                *rj += sj * (alpha[i] - beta);
            }
        }
        r
    }

    /// The dense `n × n` matrix `H` (row-major), by applying it to the unit vectors.
    pub fn dense(&self, n: usize) -> Vec<f64> {
        let mut h = vec![0.0; n * n];
        for c in 0..n {
            let mut e = vec![0.0; n];
            e[c] = 1.0;
            for (r, v) in self.apply(&e).into_iter().enumerate() {
                h[r * n + c] = v;
            }
        }
        h
    }

    /// The stored pairs `(s, y)`, oldest first.
    pub fn pairs(&self) -> impl Iterator<Item = (&[f64], &[f64])> {
        self.s
            .iter()
            .zip(&self.y)
            .map(|(s, y)| (s.as_slice(), y.as_slice()))
    }
}

/// Settings of [`lbfgs`].
#[derive(Debug, Clone, PartialEq)]
pub struct LbfgsConfig {
    /// Pairs kept (m).
    pub memory: usize,
    /// Iteration cap.
    pub max_iter: usize,
    /// Stop when `‖∇h‖ ≤ gtol`.
    pub gtol: f64,
    /// `H₀ = (sᵀy / yᵀy) I` instead of `I`.
    pub scaled_h0: bool,
    /// Armijo constant of the strong Wolfe conditions.
    pub c1: f64,
    /// Curvature constant of the strong Wolfe conditions.
    pub c2: f64,
}

impl Default for LbfgsConfig {
    fn default() -> Self {
        Self {
            memory: 10,
            max_iter: 1000,
            gtol: 1e-6,
            scaled_h0: true,
            c1: 1e-4,
            c2: 0.9,
        }
    }
}

impl LbfgsConfig {
    /// Checks the settings.
    pub fn validate(&self) -> Result<(), BilevelError> {
        check_nonzero("lbfgs.memory", self.memory)?;
        check_positive("lbfgs.gtol", self.gtol)?;
        if !(0.0 < self.c1 && self.c1 < self.c2 && self.c2 < 1.0) {
            return invalid(
                "lbfgs.c1/c2",
                format!("{}/{}", self.c1, self.c2),
                "need 0 < c1 < c2 < 1",
            );
        }
        Ok(())
    }
}

/// Result of [`lbfgs`].
#[derive(Debug, Clone)]
pub struct LbfgsResult {
    /// Final iterate.
    pub x: Vec<f64>,
    /// Objective there.
    pub value: f64,
    /// Gradient there.
    pub grad: Vec<f64>,
    /// Iterations run.
    pub iterations: usize,
    /// Objective/gradient evaluations (line search and extra pairs included).
    pub evaluations: usize,
    /// Whether `‖∇h‖ ≤ gtol` was reached.
    pub converged: bool,
    /// The inverse-Hessian memory at the end.
    pub memory: LbfgsMemory,
}

/// Minimises `f` (returning value and gradient) from `x0`, starting from `memory` (empty, or
/// carried over from an earlier solve).
///
/// `extra` is called after every iteration with `(iteration, x, memory)`; when it returns a
/// direction `e`, the pair `(e, ∇f(x + e) − ∇f(x))` is added to the memory (outer-problem
/// awareness), at the cost of one gradient evaluation.
pub fn lbfgs(
    f: &mut dyn FnMut(&[f64]) -> (f64, Vec<f64>),
    x0: Vec<f64>,
    config: &LbfgsConfig,
    mut memory: LbfgsMemory,
    extra: &mut dyn FnMut(usize, &[f64], &LbfgsMemory) -> Option<Vec<f64>>,
) -> LbfgsResult {
    let mut x = x0;
    let (mut value, mut grad) = f(&x);
    let mut evaluations = 1;
    let mut iterations = 0;
    while iterations < config.max_iter && norm(&grad) > config.gtol && value.is_finite() {
        let mut d: Vec<f64> = memory.apply(&grad).into_iter().map(|v| -v).collect();
        let mut slope = dot(&grad, &d);
        if !(slope < 0.0) {
            // Not a descent direction (e.g. after carried-over pairs): restart from −∇f.
            memory = LbfgsMemory::new(config.memory, config.scaled_h0);
            d = grad.iter().map(|g| -g).collect();
            slope = -dot(&grad, &grad);
        }
        let step0 = if memory.is_empty() {
            (1.0 / norm(&grad)).min(1.0)
        } else {
            1.0
        };
        let search = strong_wolfe(f, &x, value, slope, &d, step0, config, &mut evaluations);
        let Some((step, new_value, new_grad)) = search else {
            break;
        };
        let s: Vec<f64> = d.iter().map(|di| step * di).collect();
        let y: Vec<f64> = new_grad.iter().zip(&grad).map(|(a, b)| a - b).collect();
        for (xi, si) in x.iter_mut().zip(&s) {
            *xi += si;
        }
        memory.push(s, y);
        value = new_value;
        grad = new_grad;
        iterations += 1;
        if let Some(e) = extra(iterations, &x, &memory) {
            let xe: Vec<f64> = x.iter().zip(&e).map(|(a, b)| a + b).collect();
            let (_, ge) = f(&xe);
            evaluations += 1;
            let y: Vec<f64> = ge.iter().zip(&grad).map(|(a, b)| a - b).collect();
            memory.push(e, y);
        }
    }
    let converged = norm(&grad) <= config.gtol;
    LbfgsResult {
        x,
        value,
        grad,
        iterations,
        evaluations,
        converged,
        memory,
    }
}

/// Sufficient decrease at step `t`: Armijo, or, when the objective is flat to within rounding
/// (`|φ(t) − φ(0)| ≤ 1e-12 |φ(0)|`), Hager & Zhang's approximate form `φ'(t) ≤ (2c₁ − 1) φ'(0)`,
/// which stays decidable near the minimiser where value differences drown in rounding.
fn decreases(f0: f64, slope0: f64, t: f64, ft: f64, st: f64, c1: f64) -> bool {
    let flat = (ft - f0).abs() <= 1e-12 * f0.abs().max(1.0);
    ft.is_finite() && (ft <= f0 + c1 * t * slope0 || (flat && st <= (2.0 * c1 - 1.0) * slope0))
}

/// Strong Wolfe line search along `d` (Nocedal & Wright, algorithms 3.5 and 3.6, with
/// bisection in the zoom; sufficient decrease as in [`decreases`]). Returns the step, value
/// and gradient, or `None` if no acceptable step was found.
fn strong_wolfe(
    f: &mut dyn FnMut(&[f64]) -> (f64, Vec<f64>),
    x: &[f64],
    f0: f64,
    slope0: f64,
    d: &[f64],
    step0: f64,
    config: &LbfgsConfig,
    evaluations: &mut usize,
) -> Option<(f64, f64, Vec<f64>)> {
    let mut eval = |t: f64| {
        let xt: Vec<f64> = x.iter().zip(d).map(|(a, b)| a + t * b).collect();
        let (v, g) = f(&xt);
        *evaluations += 1;
        let slope = dot(&g, d);
        (v, g, slope)
    };
    let (c1, c2) = (config.c1, config.c2);
    let (mut t_prev, mut f_prev) = (0.0, f0);
    let mut t = step0;
    for i in 0..30 {
        let (ft, gt, st) = eval(t);
        if !decreases(f0, slope0, t, ft, st, c1) || (i > 0 && ft >= f_prev && ft > f0) {
            return zoom(&mut eval, f0, slope0, t_prev, f_prev, t, c1, c2);
        }
        if st.abs() <= -c2 * slope0 {
            return Some((t, ft, gt));
        }
        if st >= 0.0 {
            return zoom(&mut eval, f0, slope0, t, ft, t_prev, c1, c2);
        }
        t_prev = t;
        f_prev = ft;
        t *= 2.0;
    }
    None
}

#[allow(clippy::too_many_arguments)]
fn zoom(
    eval: &mut dyn FnMut(f64) -> (f64, Vec<f64>, f64),
    f0: f64,
    slope0: f64,
    mut lo: f64,
    mut f_lo: f64,
    mut hi: f64,
    c1: f64,
    c2: f64,
) -> Option<(f64, f64, Vec<f64>)> {
    let mut best: Option<(f64, f64, Vec<f64>)> = None;
    for _ in 0..60 {
        let t = 0.5 * (lo + hi);
        let (ft, gt, st) = eval(t);
        if !decreases(f0, slope0, t, ft, st, c1) || (ft >= f_lo && ft > f0) {
            hi = t;
        } else {
            if st.abs() <= -c2 * slope0 {
                return Some((t, ft, gt));
            }
            best = Some((t, ft, gt));
            if st * (hi - lo) >= 0.0 {
                hi = lo;
            }
            lo = t;
            f_lo = ft;
        }
        if (hi - lo).abs() < 1e-16 * (1.0 + lo.abs()) {
            break;
        }
    }
    // A step with sufficient decrease is still progress.
    best
}
