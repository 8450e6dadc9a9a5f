//! Shared helpers for the deq-core integration tests (f64 on the default CPU device).
#![allow(unused_imports)]
#![allow(dead_code)]
use std::sync::OnceLock;

use burn::tensor::{Device, FloatDType, Tensor, TensorData};
use deq_core::{BackwardMode, DeqConfig, SolverConfig, SolverKind, StopMode};

/// The default device configured for f64 (once per test process).
pub fn device() -> Device {
    static DEVICE: OnceLock<Device> = OnceLock::new();
    DEVICE
        .get_or_init(|| {
            let mut device = deq_core::device::cpu();
            if device.configure(FloatDType::F64).is_err() {
                assert_eq!(
                    device.settings().float_dtype,
                    FloatDType::F64,
                    "device already set to another dtype"
                );
            }
            device
        })
        .clone()
}

pub use deq_core::toy::{SplitMix as Rng, ToyInput, matrix_with_norm, spectral_norm};

pub fn tensor2(values: Vec<f64>, shape: [usize; 2]) -> Tensor<2> {
    let device = device();
    Tensor::from_data(
        TensorData::new(values, shape),
        (&device, burn::tensor::DType::F64),
    )
}

/// A tensor of any rank in `f32` on the test device (where flex runs its host kernels).
pub fn f32s<const D: usize>(values: Vec<f64>, shape: [usize; D]) -> Tensor<D> {
    Tensor::from_data(
        TensorData::new(values, shape),
        (&device(), burn::tensor::DType::F32),
    )
}

/// The values of a tensor of any rank (consumed), in f64.
pub fn values<const D: usize>(t: Tensor<D>) -> Vec<f64> {
    t.into_data().iter::<f64>().collect()
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

/// The secant identity's error `‖B Δg − Δz‖ / ‖Δz‖` of sample `s` for the step into the iterate
/// of evaluation `k`: `seen[i]` holds the iterates `z` and images `F(z)` of evaluation `i` (host
/// copies, row-major `[batch, dim]`), `dense` the sample's inverse (row-major `dim × dim`).
pub fn secant_error(
    seen: &[(Vec<f64>, Vec<f64>)],
    s: usize,
    dim: usize,
    k: usize,
    dense: &[f64],
) -> f64 {
    let rows = |t: &Vec<f64>| t[s * dim..(s + 1) * dim].to_vec();
    let g = |i: usize| -> Vec<f64> {
        let (z, fz) = (rows(&seen[i].0), rows(&seen[i].1));
        fz.iter().zip(z).map(|(f, z)| f - z).collect()
    };
    let dz: Vec<f64> = (rows(&seen[k].0).iter().zip(rows(&seen[k - 1].0)))
        .map(|(a, b)| a - b)
        .collect();
    let dg: Vec<f64> = g(k).iter().zip(g(k - 1)).map(|(a, b)| a - b).collect();
    let b_dg: Vec<f64> = (0..dim)
        .map(|r| (0..dim).map(|c| dense[r * dim + c] * dg[c]).sum())
        .collect();
    rel_err(&b_dg, &dz)
}

pub fn cosine(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum::<f64>() / (norm(a) * norm(b))
}

pub use deq_core::toy::toy_fn;

/// The toy problem with f64 helpers on the test device.
pub struct Toy(pub deq_core::toy::Toy);

impl std::ops::Deref for Toy {
    type Target = deq_core::toy::Toy;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl Toy {
    pub fn new(seed: u64, batch: usize, dim: usize, input: usize, rho: f64) -> Self {
        Self(deq_core::toy::Toy::new(seed, batch, dim, input, rho))
    }
    pub fn tracked(&self) -> ToyInput {
        self.0.tracked_inputs(&device(), burn::tensor::DType::F64)
    }
    pub fn plain_shifted(&self, which: usize, index: usize, delta: f64) -> ToyInput {
        self.0
            .inputs(&device(), burn::tensor::DType::F64, which, index, delta)
    }
    pub fn z0(&self) -> Tensor<2> {
        self.0.z0(&device(), burn::tensor::DType::F64)
    }
    pub fn c(&self) -> Tensor<2> {
        self.0.c(&device(), burn::tensor::DType::F64)
    }
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
    BackwardMode::Implicit {
        solver: SolverKind::broyden(100),
        max_iter: 200,
        tol: 1e-13,
    }
}

/// Gradients of `L = Σ c ⊙ z*` for (W, U, b, x), flattened, with the given layer config.
pub fn toy_gradients(toy: &Toy, config: &DeqConfig) -> (Vec<Vec<f64>>, deq_core::DeqOutput) {
    let deq = config.init().expect("valid config");
    let params = toy.tracked();
    let out = deq.forward(&toy_fn(), &params, toy.z0()).expect("forward");
    let loss = (out.z.clone() * toy.c()).sum();
    let grads = loss.backward();
    let (w, u, b, x) = params;
    let g = [w, u, b, x]
        .iter()
        .map(|p| host(&p.grad(&grads).expect("gradient present")))
        .collect();
    (g, out)
}

/// The loss at a converged solve of the shifted problem (no autodiff).
pub fn toy_loss(toy: &Toy, solver: &SolverConfig, which: usize, index: usize, delta: f64) -> f64 {
    let params = toy.plain_shifted(which, index, delta);
    let f = toy_fn();
    let mut map = |z: Tensor<2>| deq_core::DeqFunction::forward(&f, z, &params);
    let result = solver
        .solve(&mut map, toy.z0(), solver.max_iter)
        .expect("solve");
    assert!(
        result.stats.all_converged(),
        "finite-difference solve must converge"
    );
    host(&result.z).iter().zip(&toy.c).map(|(z, c)| z * c).sum()
}
