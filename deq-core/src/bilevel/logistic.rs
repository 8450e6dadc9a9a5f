//! ℓ2-regularised binary logistic regression as the inner problem, and its outer loss.
use super::sparse::CsrMatrix;

/// `log(1 + exp(t))` without overflow.
pub(crate) fn softplus(t: f64) -> f64 {
    if t > 0.0 {
        t + (-t).exp().ln_1p()
    } else {
        t.exp().ln_1p()
    }
}

/// `1 / (1 + exp(−t))`.
pub(crate) fn sigmoid(t: f64) -> f64 {
    if t >= 0.0 {
        1.0 / (1.0 + (-t).exp())
    } else {
        let e = t.exp();
        e / (1.0 + e)
    }
}

/// A smooth data loss `L(x)` of an inner problem (a sum over samples, no regularisation).
pub trait DataLoss: Clone + Send + Sync {
    /// What a Hessian-vector product at a fixed `x` needs (computed once per `x`).
    type Curvature;
    /// Number of parameters.
    fn dim(&self) -> usize;
    /// `L(x)`.
    fn value(&self, x: &[f64]) -> f64;
    /// `L(x)` and `∇L(x)`.
    fn value_grad(&self, x: &[f64]) -> (f64, Vec<f64>);
    /// The curvature at `x`.
    fn curvature(&self, x: &[f64]) -> Self::Curvature;
    /// `∇²L(x) v` with `curvature` from [`DataLoss::curvature`] at `x`.
    fn hvp_with(&self, curvature: &Self::Curvature, v: &[f64]) -> Vec<f64>;
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

impl DataLoss for LogisticLoss {
    type Curvature = Vec<f64>;

    fn dim(&self) -> usize {
        self.a.cols()
    }

    fn value(&self, x: &[f64]) -> f64 {
        self.a
            .mul_vec(x)
            .iter()
            .zip(&self.y)
            .map(|(&m, &y)| softplus(-y * m))
            .sum()
    }

    fn value_grad(&self, x: &[f64]) -> (f64, Vec<f64>) {
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

    /// The weights `σ(z)σ(−z)` per sample.
    fn curvature(&self, x: &[f64]) -> Vec<f64> {
        self.a
            .mul_vec(x)
            .iter()
            .zip(&self.y)
            .map(|(&m, &y)| sigmoid(y * m) * sigmoid(-y * m))
            .collect()
    }

    /// `Aᵀ diag(w) A v`.
    fn hvp_with(&self, weights: &Vec<f64>, v: &[f64]) -> Vec<f64> {
        let av: Vec<f64> = self
            .a
            .mul_vec(v)
            .iter()
            .zip(weights)
            .map(|(a, w)| a * w)
            .collect();
        self.a.mul_t_vec(&av)
    }
}

/// Multinomial logistic (softmax cross-entropy) loss on `(A, labels)` with `classes` classes:
/// `Σᵢ (log Σₖ exp(sᵢₖ) − sᵢ,yᵢ)` with scores `S = A X`. The parameters `X` are
/// `features × classes`, stored feature-major (`x[j · classes + k]`). No intercept.
#[derive(Debug, Clone)]
pub struct MultinomialLoss {
    /// The design matrix, one sample per row.
    pub a: CsrMatrix,
    /// Class of each sample, in `0..classes`.
    pub labels: Vec<usize>,
    /// Number of classes.
    pub classes: usize,
}

impl MultinomialLoss {
    /// Softmax probabilities per row, and the loss.
    fn probabilities(&self, x: &[f64]) -> (Vec<f64>, f64) {
        let k = self.classes;
        let mut s = self.a.mul_dense(x, self.classes);
        let mut loss = 0.0;
        for (i, row) in s.chunks_mut(k).enumerate() {
            let max = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let sum: f64 = row.iter().map(|v| (v - max).exp()).sum();
            let lse = max + sum.ln();
            loss += lse - row[self.labels[i]];
            row.iter_mut().for_each(|v| *v = (*v - lse).exp());
        }
        (s, loss)
    }
}

impl DataLoss for MultinomialLoss {
    /// Softmax probabilities `P` (`rows × classes`).
    type Curvature = Vec<f64>;

    fn dim(&self) -> usize {
        self.a.cols() * self.classes
    }

    fn value(&self, x: &[f64]) -> f64 {
        self.probabilities(x).1
    }

    fn value_grad(&self, x: &[f64]) -> (f64, Vec<f64>) {
        let (mut p, loss) = self.probabilities(x);
        for (i, &y) in self.labels.iter().enumerate() {
            p[i * self.classes + y] -= 1.0;
        }
        (loss, self.a.mul_t_dense(&p, self.classes))
    }

    fn curvature(&self, x: &[f64]) -> Vec<f64> {
        self.probabilities(x).0
    }

    /// `Aᵀ (P ⊙ U − P ⊙ (P·U) 1ᵀ)` per row with `U = A V`.
    fn hvp_with(&self, p: &Vec<f64>, v: &[f64]) -> Vec<f64> {
        let k = self.classes;
        let mut u = self.a.mul_dense(v, k);
        for (row, prob) in u.chunks_mut(k).zip(p.chunks(k)) {
            let dot: f64 = row.iter().zip(prob).map(|(a, b)| a * b).sum();
            row.iter_mut()
                .zip(prob)
                .for_each(|(a, b)| *a = b * (*a - dot));
        }
        self.a.mul_t_dense(&u, k)
    }
}

/// The inner objective `h(x, λ) = L_train(x) + ½ e^λ ‖x‖²`.
#[derive(Debug, Clone)]
pub struct Ridge<L: DataLoss> {
    /// The training loss.
    pub loss: L,
}

/// ℓ2-regularised binary logistic regression.
pub type RidgeLogistic = Ridge<LogisticLoss>;

impl<L: DataLoss> Ridge<L> {
    /// `h(x, λ)` and `∇ₓh`.
    pub fn value_grad(&self, x: &[f64], lambda: f64) -> (f64, Vec<f64>) {
        let (v, mut g) = self.loss.value_grad(x);
        let reg = lambda.exp();
        for (gi, xi) in g.iter_mut().zip(x) {
            *gi += reg * xi;
        }
        (v + 0.5 * reg * x.iter().map(|t| t * t).sum::<f64>(), g)
    }

    /// `∇²ₓₓh(x, λ) v`, with `curvature = loss.curvature(x)`.
    pub fn hvp_with(&self, curvature: &L::Curvature, lambda: f64, v: &[f64]) -> Vec<f64> {
        let reg = lambda.exp();
        self.loss
            .hvp_with(curvature, v)
            .iter()
            .zip(v)
            .map(|(h, vi)| h + reg * vi)
            .collect()
    }

    /// The dense Hessian (small problems and tests).
    pub fn dense_hessian(&self, x: &[f64], lambda: f64) -> Vec<f64> {
        let n = self.loss.dim();
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
