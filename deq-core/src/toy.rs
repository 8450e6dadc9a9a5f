//! The documented toy problem used by the gradient checks, tests and benchmarks.
//!
//! `f(z, x) = tanh(z W + x U + b)` on row vectors, with `‖W‖₂ = ρ < 1` (so `f` is a
//! contraction in `z`), and the loss `L = Σ c ⊙ z*` for a fixed random `c`. All values come
//! from a seeded generator, so a problem is reproducible from `(seed, sizes, ρ)`.
use burn::tensor::{DType, Device, Tensor, TensorData};

use crate::backward::BackwardMode;
use crate::deq::DeqConfig;
use crate::function::{FnDeq, deq_fn};
use crate::solver::{SolverConfig, SolverKind, StopMode};

/// Small deterministic generator (SplitMix64 with Box–Muller normals).
#[derive(Debug, Clone)]
pub struct SplitMix(u64);

impl SplitMix {
    /// A generator from a seed.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Standard normal.
    pub fn normal(&mut self) -> f64 {
        let (u1, u2) = (self.uniform().max(1e-300), self.uniform());
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }

    /// `n` standard normals.
    pub fn normals(&mut self, n: usize) -> Vec<f64> {
        (0..n).map(|_| self.normal()).collect()
    }
}

/// Largest singular value of a row-major `n × m` matrix (power iteration on AᵀA).
pub fn spectral_norm(a: &[f64], n: usize, m: usize) -> f64 {
    let mut v = vec![1.0 / (m as f64).sqrt(); m];
    let mut sigma = 0.0;
    for _ in 0..500 {
        let av: Vec<f64> = (0..n)
            .map(|i| (0..m).map(|j| a[i * m + j] * v[j]).sum())
            .collect();
        let atav: Vec<f64> = (0..m)
            .map(|j| (0..n).map(|i| a[i * m + j] * av[i]).sum())
            .collect();
        let norm = atav.iter().map(|x| x * x).sum::<f64>().sqrt();
        if norm == 0.0 {
            return 0.0;
        }
        sigma = norm.sqrt();
        v = atav.iter().map(|x| x / norm).collect();
    }
    sigma
}

/// A random `n × n` matrix with spectral norm `rho`.
pub fn matrix_with_norm(rng: &mut SplitMix, n: usize, rho: f64) -> Vec<f64> {
    let a = rng.normals(n * n);
    let s = spectral_norm(&a, n, n);
    a.iter().map(|x| x * rho / s).collect()
}

/// The injection of the toy problem: `(W, U, b, x)`.
pub type ToyInput = (Tensor<2>, Tensor<2>, Tensor<2>, Tensor<2>);

/// Names of the four parameter tensors, in [`ToyInput`] order.
pub const TOY_PARAMETERS: [&str; 4] = ["W", "U", "b", "x"];

/// The toy problem's values (host, f64).
#[derive(Debug, Clone)]
pub struct Toy {
    /// Batch size.
    pub batch: usize,
    /// State dimension.
    pub dim: usize,
    /// Input dimension.
    pub input: usize,
    /// `W`, `dim × dim`, row-major, `‖W‖₂ = ρ`.
    pub w: Vec<f64>,
    /// `U`, `input × dim`.
    pub u: Vec<f64>,
    /// `b`, `1 × dim`.
    pub b: Vec<f64>,
    /// `x`, `batch × input`.
    pub x: Vec<f64>,
    /// Loss weights `c`, `batch × dim`.
    pub c: Vec<f64>,
}

impl Toy {
    /// A reproducible problem.
    pub fn new(seed: u64, batch: usize, dim: usize, input: usize, rho: f64) -> Self {
        let mut rng = SplitMix::new(seed);
        let w = matrix_with_norm(&mut rng, dim, rho);
        let u: Vec<f64> = rng
            .normals(input * dim)
            .iter()
            .map(|v| v / (input as f64).sqrt())
            .collect();
        let b: Vec<f64> = rng.normals(dim).iter().map(|v| 0.1 * v).collect();
        let x = rng.normals(batch * input);
        let c = rng.normals(batch * dim);
        Self {
            batch,
            dim,
            input,
            w,
            u,
            b,
            x,
            c,
        }
    }

    /// Number of entries of each parameter tensor, in [`ToyInput`] order.
    pub fn sizes(&self) -> [usize; 4] {
        [self.w.len(), self.u.len(), self.b.len(), self.x.len()]
    }

    /// The parameters on `device` (plain), with `delta` added to entry `index` of parameter
    /// `which` (0..4 in [`ToyInput`] order; use `delta = 0` for the unshifted problem).
    pub fn inputs(
        &self,
        device: &Device,
        dtype: DType,
        which: usize,
        index: usize,
        delta: f64,
    ) -> ToyInput {
        let mut params = [
            self.w.clone(),
            self.u.clone(),
            self.b.clone(),
            self.x.clone(),
        ];
        params[which][index] += delta;
        let [w, u, b, x] = params;
        let t = |v: Vec<f64>, shape: [usize; 2]| {
            Tensor::<2>::from_data(TensorData::new(v, shape), (device, dtype))
        };
        (
            t(w, [self.dim, self.dim]),
            t(u, [self.input, self.dim]),
            t(b, [1, self.dim]),
            t(x, [self.batch, self.input]),
        )
    }

    /// The parameters with autodiff enabled and gradients required.
    pub fn tracked_inputs(&self, device: &Device, dtype: DType) -> ToyInput {
        let (w, u, b, x) = self.inputs(device, dtype, 0, 0, 0.0);
        let track = |t: Tensor<2>| t.autodiff().require_grad();
        (track(w), track(u), track(b), track(x))
    }

    /// `z0 = 0`, `[batch, dim]`.
    pub fn z0(&self, device: &Device, dtype: DType) -> Tensor<2> {
        Tensor::zeros([self.batch, self.dim], (device, dtype))
    }

    /// The loss weights `c`, `[batch, dim]`.
    pub fn c(&self, device: &Device, dtype: DType) -> Tensor<2> {
        Tensor::from_data(
            TensorData::new(self.c.clone(), [self.batch, self.dim]),
            (device, dtype),
        )
    }
}

/// The toy function `f(z, (W, U, b, x)) = tanh(z W + x U + b)`.
pub fn toy_fn() -> FnDeq<ToyInput, fn(Tensor<2>, &ToyInput) -> Tensor<2>> {
    fn f(z: Tensor<2>, (w, u, b, x): &ToyInput) -> Tensor<2> {
        (z.matmul(w.clone()) + x.clone().matmul(u.clone()) + b.clone()).tanh()
    }
    deq_fn(f as fn(Tensor<2>, &ToyInput) -> Tensor<2>)
}

/// The layer that gives the toy's exact gradient (in f64): Broyden forward and adjoint solves
/// (memory 100, at most 200 iterations) to an absolute residual of 1e-13.
pub fn exact_config() -> DeqConfig {
    DeqConfig::new(
        SolverConfig::new(SolverKind::broyden(100))
            .with_max_iter(200)
            .with_tol(1e-13)
            .with_stop(StopMode::Absolute),
    )
    .with_backward(BackwardMode::Implicit {
        solver: SolverKind::broyden(100),
        max_iter: 200,
        tol: 1e-13,
    })
}
