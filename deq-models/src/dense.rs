//! A fully-connected DEQ classifier.
use burn::config::Config;
use burn::module::Module;
use burn::nn::{Linear, LinearConfig};
use burn::tensor::{Device, Tensor};
use deq_core::{Deq, DeqError, DeqOutput, module_fn};

/// Configuration of a [`DenseDeq`].
#[derive(Config, Debug, PartialEq)]
pub struct DenseDeqConfig {
    /// Input features.
    pub input: usize,
    /// Width of the equilibrium state.
    pub hidden: usize,
    /// Output classes (or regression targets).
    pub classes: usize,
    /// Scale of `f`'s weight at initialisation; below ≈ 1 keeps `f` contractive.
    #[config(default = 0.5)]
    pub contraction: f64,
}

/// `x ↦ head(z*)` with `z* = tanh(W z* + injection(x))`.
#[derive(Module, Debug)]
pub struct DenseDeq {
    /// `x ↦ injection`, `[batch, input] -> [batch, hidden]`.
    pub injection: Linear,
    /// The equilibrium map's linear part (no bias), `[batch, hidden] -> [batch, hidden]`.
    pub inner: Linear,
    /// `z* ↦ logits`, `[batch, hidden] -> [batch, classes]`.
    pub head: Linear,
}

/// Output of [`DenseDeq::forward`].
#[derive(Debug, Clone)]
pub struct DenseDeqOutput {
    /// `[batch, classes]`.
    pub logits: Tensor<2>,
    /// The layer's output (state, statistics, backward report).
    pub deq: DeqOutput,
}

impl DenseDeqConfig {
    /// Builds the model on `device`. `f`'s weight is rescaled so its spectral norm is about
    /// `contraction` (Kaiming-uniform weights have norm ≈ 1 for square layers).
    pub fn init(&self, device: &Device) -> DenseDeq {
        let inner = LinearConfig::new(self.hidden, self.hidden)
            .with_bias(false)
            .init(device);
        let scale = self.contraction;
        let inner = Linear {
            weight: inner.weight.map(|w| (w * scale).detach().require_grad()),
            bias: None,
        };
        DenseDeq {
            injection: LinearConfig::new(self.input, self.hidden).init(device),
            inner,
            head: LinearConfig::new(self.hidden, self.classes).init(device),
        }
    }
}

impl DenseDeq {
    /// `x`: `[batch, input]` → logits `[batch, classes]`, through the equilibrium `deq`.
    pub fn forward(&self, deq: &Deq, x: Tensor<2>) -> Result<DenseDeqOutput, DeqError> {
        let injected = self.injection.forward(x);
        let f = module_fn(
            self.inner.clone(),
            |inner: &Linear, z: Tensor<2>, x: &Tensor<2>| (inner.forward(z) + x.clone()).tanh(),
        );
        let z0 = injected.zeros_like().detach();
        let out = deq.forward(&f, &injected, z0)?;
        Ok(DenseDeqOutput {
            logits: self.head.forward(out.z.clone()),
            deq: out,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Distribution;
    use deq_core::{BackwardMode, DeqConfig};

    #[test]
    fn shapes_and_gradients() {
        let device = deq_core::device::cpu().autodiff();
        let model = DenseDeqConfig::new(5, 12, 3).init(&device);
        let deq = DeqConfig::broyden(BackwardMode::shine()).init().unwrap();
        for batch in [1, 7] {
            let x = Tensor::<2>::random([batch, 5], Distribution::Normal(0.0, 1.0), &device);
            let out = model.forward(&deq, x).unwrap();
            assert_eq!(out.logits.dims(), [batch, 3]);
            assert!(out.deq.stats.all_converged());
            let grads = out.logits.sum().backward();
            assert!(model.inner.weight.val().grad(&grads).is_some());
            assert!(model.injection.weight.val().grad(&grads).is_some());
        }
    }
}
