//! Shared helpers for the deq-core integration tests (f64 on the default CPU device).
#![allow(dead_code)]
use std::sync::OnceLock;

use burn::tensor::{Device, FloatDType, Tensor, TensorData};
use deq_core::{BackwardMode, DeqConfig, SolverConfig, SolverKind, StopMode, deq_fn, FnDeq};

/// The default device configured for f64 (once per test process).
pub fn device() -> Device {
    static DEVICE: OnceLock<Device> = OnceLock::new();
    DEVICE
        .get_or_init(|| {
            let mut device = Device::default();
            if device.configure(FloatDType::F64).is_err() {
                assert_eq!(device.settings().float_dtype, FloatDType::F64, "device already set to another dtype");
            }
            device
        })
        .clone()
}

/// A small deterministic generator (SplitMix64) so tests need no extra crate.
pub struct Rng(u64);
impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    pub fn normal(&mut self) -> f64 {
        let (u1, u2) = (self.uniform().max(1e-300), self.uniform());
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }
    pub fn normals(&mut self, n: usize) -> Vec<f64> {
        (0..n).map(|_| self.normal()).collect()
    }
}

/// Largest singular value of a row-major `n × m` matrix (power iteration on AᵀA).
pub fn spectral_norm(a: &[f64], n: usize, m: usize) -> f64 {
    let mut v = vec![1.0 / (m as f64).sqrt(); m];
    let mut sigma = 0.0;
    for _ in 0..500 {
        let av: Vec<f64> = (0..n).map(|i| (0..m).map(|j| a[i * m + j] * v[j]).sum()).collect();
        let atav: Vec<f64> = (0..m).map(|j| (0..n).map(|i| a[i * m + j] * av[i]).sum()).collect();
        let norm = atav.iter().map(|x| x * x).sum::<f64>().sqrt();
        sigma = norm.sqrt();
        v = atav.iter().map(|x| x / norm).collect();
    }
    sigma
}

/// A random `n × n` matrix with spectral norm `rho`.
pub fn matrix_with_norm(rng: &mut Rng, n: usize, rho: f64) -> Vec<f64> {
    let a = rng.normals(n * n);
    let s = spectral_norm(&a, n, n);
    a.iter().map(|x| x * rho / s).collect()
}

pub fn tensor2(values: Vec<f64>, shape: [usize; 2]) -> Tensor<2> {
    let device = device();
    Tensor::from_data(TensorData::new(values, shape), (&device, burn::tensor::DType::F64))
}

pub fn host(t: &Tensor<2>) -> Vec<f64> {
    t.to_data().iter::<f64>().collect()
}

pub fn norm(a: &[f64]) -> f64 {
    a.iter().map(|x| x * x).sum::<f64>().sqrt()
}

pub fn rel_err(a: &[f64], exact: &[f64]) -> f64 {
    let diff: Vec<f64> = a.iter().zip(exact).map(|(x, y)| x - y).collect();
    norm(&diff) / norm(exact)
}

pub fn cosine(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum::<f64>() / (norm(a) * norm(b))
}

/// The documented toy problem: `f(z, x) = tanh(z W + x U + b)` with `‖W‖₂ = rho`,
/// loss `L = Σ c ⊙ z*` with a fixed random `c`.
pub struct Toy {
    pub batch: usize,
    pub dim: usize,
    pub input: usize,
    pub w: Vec<f64>,
    pub u: Vec<f64>,
    pub b: Vec<f64>,
    pub x: Vec<f64>,
    pub c: Vec<f64>,
}

pub type ToyInput = (Tensor<2>, Tensor<2>, Tensor<2>, Tensor<2>);

impl Toy {
    pub fn new(seed: u64, batch: usize, dim: usize, input: usize, rho: f64) -> Self {
        let mut rng = Rng::new(seed);
        let w = matrix_with_norm(&mut rng, dim, rho);
        let u: Vec<f64> = rng.normals(input * dim).iter().map(|v| v / (input as f64).sqrt()).collect();
        let b: Vec<f64> = rng.normals(dim).iter().map(|v| 0.1 * v).collect();
        let x = rng.normals(batch * input);
        let c = rng.normals(batch * dim);
        Self { batch, dim, input, w, u, b, x, c }
    }

    /// The parameters (W, U, b, x) as tensors on the autodiff device with gradients required.
    pub fn tracked(&self) -> ToyInput {
        let t = |v: &Vec<f64>, s: [usize; 2]| tensor2(v.clone(), s).autodiff().require_grad();
        (
            t(&self.w, [self.dim, self.dim]),
            t(&self.u, [self.input, self.dim]),
            t(&self.b, [1, self.dim]),
            t(&self.x, [self.batch, self.input]),
        )
    }

    /// The same without autodiff, with one entry of one parameter shifted (for finite
    /// differences): `which` in 0..4 is W, U, b, x.
    pub fn plain_shifted(&self, which: usize, index: usize, delta: f64) -> ToyInput {
        let mut params = [self.w.clone(), self.u.clone(), self.b.clone(), self.x.clone()];
        params[which][index] += delta;
        let [w, u, b, x] = params;
        (
            tensor2(w, [self.dim, self.dim]),
            tensor2(u, [self.input, self.dim]),
            tensor2(b, [1, self.dim]),
            tensor2(x, [self.batch, self.input]),
        )
    }

    pub fn sizes(&self) -> [usize; 4] {
        [self.w.len(), self.u.len(), self.b.len(), self.x.len()]
    }

    pub fn z0(&self) -> Tensor<2> {
        Tensor::zeros([self.batch, self.dim], (&device(), burn::tensor::DType::F64))
    }

    pub fn c(&self) -> Tensor<2> {
        tensor2(self.c.clone(), [self.batch, self.dim])
    }
}

pub fn toy_fn() -> FnDeq<ToyInput, impl Fn(Tensor<2>, &ToyInput) -> Tensor<2> + Clone + Send + 'static> {
    deq_fn(|z: Tensor<2>, (w, u, b, x): &ToyInput| {
        (z.matmul(w.clone()) + x.clone().matmul(u.clone()) + b.clone()).tanh()
    })
}

/// A tight Broyden forward solver config.
pub fn tight_broyden(tol: f64) -> SolverConfig {
    SolverConfig::new(SolverKind::broyden(60))
        .with_max_iter(200)
        .with_tol(tol)
        .with_stop(StopMode::Absolute)
}

/// The exact implicit mode used as reference.
pub fn exact_implicit() -> BackwardMode {
    BackwardMode::Implicit { solver: SolverKind::broyden(100), max_iter: 200, tol: 1e-13 }
}

/// Gradients of `L = Σ c ⊙ z*` for (W, U, b, x), flattened, with the given layer config.
pub fn toy_gradients(toy: &Toy, config: &DeqConfig) -> (Vec<Vec<f64>>, deq_core::DeqOutput) {
    let deq = config.init().expect("valid config");
    let params = toy.tracked();
    let out = deq.forward(&toy_fn(), &params, toy.z0()).expect("forward");
    let loss = (out.z.clone() * toy.c()).sum();
    let grads = loss.backward();
    let (w, u, b, x) = params;
    let g = [w, u, b, x].iter().map(|p| host(&p.grad(&grads).expect("gradient present"))).collect();
    (g, out)
}

/// The loss at a converged solve of the shifted problem (no autodiff).
pub fn toy_loss(toy: &Toy, solver: &SolverConfig, which: usize, index: usize, delta: f64) -> f64 {
    let params = toy.plain_shifted(which, index, delta);
    let f = toy_fn();
    let mut map = |z: Tensor<2>| deq_core::DeqFunction::forward(&f, z, &params);
    let result = solver.solve(&mut map, toy.z0(), solver.max_iter).expect("solve");
    assert!(result.stats.all_converged(), "finite-difference solve must converge");
    host(&result.z).iter().zip(&toy.c).map(|(z, c)| z * c).sum()
}
