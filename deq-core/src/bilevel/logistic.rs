//! ℓ2-regularised binary logistic regression as the inner problem, and its outer loss.
use super::sparse::CsrMatrix;

/// `log(1 + exp(t))` without overflow.
pub(crate) fn softplus(t: f64) -> f64 {
    if t > 0.0 { t + (-t).exp().ln_1p() } else { t.exp().ln_1p() }
}

/// `1 / (1 + exp(−t))`.
pub(crate) fn sigmoid(t: f64) -> f64 {
    if t >= 0.0 { 1.0 / (1.0 + (-t).exp()) } else { let e = t.exp(); e / (1.0 + e) }
}

/// Logistic loss on a data set `(A, y)` with labels ±1: `Σᵢ log(1 + exp(−yᵢ aᵢᵀx))` (a sum,
/// not a mean; no intercept).
#[derive(Debug, Clone)]
pub struct LogisticLoss {
    /// The design matrix, one sample per row.
    pub a: CsrMatrix,
    /// Labels ±1.
    pub y: Vec<f64>,
}

impl LogisticLoss {
    /// Loss and gradient at `x`.
    pub fn value_grad(&self, x: &[f64]) -> (f64, Vec<f64>) {
        let margins = self.a.mul_vec(x);
        let mut value = 0.0;
        let coef: Vec<f64> = margins
            .iter()
            .zip(&self.y)
            .map(|(&m, &y)| {
                let z = y * m;
                value += softplus(-z);
                -y * sigmoid(-z)
            })
            .collect();
        (value, self.a.mul_t_vec(&coef))
    }

    /// Loss only.
    pub fn value(&self, x: &[f64]) -> f64 {
        self.a.mul_vec(x).iter().zip(&self.y).map(|(&m, &y)| softplus(-y * m)).sum()
    }

    /// The curvature weights `σ(z)σ(−z)` at `x`, for [`LogisticLoss::hvp_with`].
    pub fn curvature(&self, x: &[f64]) -> Vec<f64> {
        self.a.mul_vec(x).iter().zip(&self.y).map(|(&m, &y)| sigmoid(y * m) * sigmoid(-y * m)).collect()
    }

    /// `∇²L(x) v = Aᵀ diag(w) A v` with `w` from [`LogisticLoss::curvature`].
    pub fn hvp_with(&self, weights: &[f64], v: &[f64]) -> Vec<f64> {
        let av: Vec<f64> = self.a.mul_vec(v).iter().zip(weights).map(|(a, w)| a * w).collect();
        self.a.mul_t_vec(&av)
    }
}

/// The inner objective `h(x, λ) = L_train(x) + ½ e^λ ‖x‖²`.
#[derive(Debug, Clone)]
pub struct RidgeLogistic {
    /// The training loss.
    pub loss: LogisticLoss,
}

impl RidgeLogistic {
    /// `h(x, λ)` and `∇ₓh`.
    pub fn value_grad(&self, x: &[f64], lambda: f64) -> (f64, Vec<f64>) {
        let (v, mut g) = self.loss.value_grad(x);
        let reg = lambda.exp();
        for (gi, xi) in g.iter_mut().zip(x) {
            *gi += reg * xi;
        }
        (v + 0.5 * reg * x.iter().map(|t| t * t).sum::<f64>(), g)
    }

    /// `∇²ₓₓh(x, λ) v`, with `weights = loss.curvature(x)`.
    pub fn hvp_with(&self, weights: &[f64], lambda: f64, v: &[f64]) -> Vec<f64> {
        let reg = lambda.exp();
        self.loss.hvp_with(weights, v).iter().zip(v).map(|(h, vi)| h + reg * vi).collect()
    }

    /// The dense Hessian (small problems and tests).
    pub fn dense_hessian(&self, x: &[f64], lambda: f64) -> Vec<f64> {
        let n = self.loss.a.cols();
        let w = self.loss.curvature(x);
        let mut h = vec![0.0; n * n];
        for c in 0..n {
            let mut e = vec![0.0; n];
            e[c] = 1.0;
            let col = self.hvp_with(&w, lambda, &e);
            for r in 0..n {
                h[r * n + c] = col[r];
            }
        }
        h
    }
}
