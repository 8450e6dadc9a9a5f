//! The same computation on two backends, compared: the gradient of every backward mode on the
//! documented toy DEQ (`deq_core::toy`), and a few MDEQ training steps from the same weights.
//! This is how the GPU path (WGPU) is checked against the CPU path (flex): one code base, two
//! backends, gradients equal to float tolerance.
use burn::module::{Module, ModuleVisitor, Param};
use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::{GradientsParams, SgdConfig};
use burn::tensor::{DType, Device, Int, Tensor, TensorData};
use deq_core::toy::{Toy, toy_fn};
use deq_core::{BackwardMode, DeqConfig, DeqError, SolverConfig, SolverKind};
use deq_models::{Mdeq, MdeqConfig, MdeqMode, ModelError};
use serde::Serialize;

/// One comparison.
#[derive(Debug, Clone, Serialize)]
pub struct Comparison {
    /// What was computed (`toy`, `mdeq step 2`, …).
    pub case: String,
    /// The backward mode.
    pub mode: String,
    /// `‖g_test − g_ref‖ / ‖g_ref‖` over all gradients (or parameters) together.
    pub rel_diff: f64,
    /// The worst single tensor's relative difference.
    pub worst_tensor: f64,
    /// For the MDEQ: that tensor's parameter path.
    pub worst_name: Option<String>,
    /// For the toy: the test backend's distance to the exact (f64, tight) implicit gradient.
    pub rel_to_exact: Option<f64>,
    /// For the toy: how far the same mode moves between f32 and f64 on the reference backend
    /// (its sensitivity to rounding; SHINE's matrix is built from ~20 divided secant updates).
    pub f32_vs_f64: Option<f64>,
    /// The tolerance `rel_diff` must meet.
    pub tolerance: f64,
}

impl Comparison {
    /// Whether the difference is within tolerance.
    pub fn passes(&self) -> bool {
        self.rel_diff <= self.tolerance
    }
}

/// Why a cross-check could not run.
#[derive(Debug, thiserror::Error)]
pub enum CrossCheckError {
    /// The layer failed.
    #[error(transparent)]
    Deq(#[from] DeqError),
    /// The model failed.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// A gradient is missing.
    #[error("no gradient for {0}")]
    MissingGradient(String),
}

/// The backward modes compared on the toy DEQ.
pub fn toy_modes() -> Vec<BackwardMode> {
    [
        "implicit:max_iter=60,tol=1e-6",
        "shine",
        "shine:fallback=1.8",
        "shine:refine=2",
        "jfb",
        "jfb:refine=2",
        "phantom:k=5,tau=0.5",
        "unrolled",
    ]
    .iter()
    .map(|m| m.parse().expect("valid mode text"))
    .collect()
}

/// The backward modes compared on MDEQ training steps. The implicit adjoint solve gets a
/// fixed 5 iterations: on an untrained MDEQ the forward map is not contractive enough for the
/// full adjoint solve to converge, and a non-converged Broyden iteration amplifies f32 rounding
/// chaotically (measured on software Vulkan: 6e-4 after one step, 0.8 after two), which says
/// nothing about the backend. The full implicit solve is compared on the (converging) toy.
pub fn mdeq_modes() -> Vec<BackwardMode> {
    ["shine", "jfb", "implicit:max_iter=5,tol=1e-5"]
        .iter()
        .map(|m| m.parse().expect("valid mode text"))
        .collect()
}

/// Relative tolerance of the toy comparison (f32 on both backends), unless the mode's own f32
/// rounding effect ([`Comparison::f32_vs_f64`]) is larger: then [`ROUNDING_FACTOR`] times that.
pub const TOY_TOLERANCE: f64 = 1e-3;
/// See [`TOY_TOLERANCE`].
pub const ROUNDING_FACTOR: f64 = 3.0;
/// Relative tolerance of the MDEQ comparison (f32 on both backends).
pub const MDEQ_TOLERANCE: f64 = 1e-3;

fn toy_problem() -> Toy {
    Toy::new(7, 4, 16, 8, 0.7)
}

/// Gradients of `L = Σ c ⊙ z*` with respect to (W, U, b, x) on `device` in `dtype`, flattened
/// per tensor.
pub fn toy_gradients(
    device: &Device,
    dtype: DType,
    toy: &Toy,
    config: &DeqConfig,
) -> Result<Vec<Vec<f64>>, CrossCheckError> {
    let deq = config.init()?;
    let params = toy.tracked_inputs(device, dtype);
    let out = deq.forward(&toy_fn(), &params, toy.z0(device, dtype))?;
    let loss = (out.z * toy.c(device, dtype)).sum();
    let grads = loss.backward();
    let (w, u, b, x) = params;
    [("W", w), ("U", u), ("b", b), ("x", x)]
        .into_iter()
        .map(|(name, p)| {
            p.grad(&grads)
                .map(|g| host(g.into_data()))
                .ok_or_else(|| CrossCheckError::MissingGradient(name.into()))
        })
        .collect()
}

fn host(data: TensorData) -> Vec<f64> {
    data.convert::<f64>().iter::<f64>().collect()
}

fn toy_config(mode: BackwardMode) -> DeqConfig {
    DeqConfig::new(
        SolverConfig::new(SolverKind::broyden(30))
            .with_max_iter(60)
            .with_tol(1e-5),
    )
    .with_backward(mode)
}

/// Each of `modes` (e.g. [`toy_modes`]) on the toy DEQ in f32, on `test` and on `reference`;
/// and the distance of `test`'s gradient to the exact implicit gradient (computed on `exact`,
/// which must support f64). `progress` sees each comparison as soon as it is made.
pub fn toy(
    test: &Device,
    reference: &Device,
    exact: &Device,
    modes: &[BackwardMode],
    progress: &mut dyn FnMut(&Comparison),
) -> Result<Vec<Comparison>, CrossCheckError> {
    let toy = toy_problem();
    let exact_grads = toy_gradients(exact, DType::F64, &toy, &deq_core::toy::exact_config())?;
    modes
        .iter()
        .map(|mode| {
            let config = toy_config(mode.clone());
            let g_test = toy_gradients(test, DType::F32, &toy, &config)?;
            let g_ref = toy_gradients(reference, DType::F32, &toy, &config)?;
            let g_ref64 = toy_gradients(exact, DType::F64, &toy, &config)?;
            let (rel_diff, worst_tensor) = compare(&g_test, &g_ref);
            let rounding = compare(&g_ref, &g_ref64).0;
            let comparison = Comparison {
                case: "toy".into(),
                mode: mode.to_string(),
                rel_diff,
                worst_tensor,
                worst_name: None,
                rel_to_exact: Some(compare(&g_test, &exact_grads).0),
                f32_vs_f64: Some(rounding),
                tolerance: TOY_TOLERANCE.max(ROUNDING_FACTOR * rounding),
            };
            progress(&comparison);
            Ok(comparison)
        })
        .collect()
}

/// `(‖a − b‖ / ‖b‖ over all tensors, worst tensor's relative difference)`.
pub fn compare(a: &[Vec<f64>], b: &[Vec<f64>]) -> (f64, f64) {
    let (overall, worst, _) = compare_tensors(a.iter().zip(b));
    (overall, worst)
}

/// [`compare`] for named tensors (paired in order), with the worst tensor's name.
fn compare_named(a: &[(String, Vec<f64>)], b: &[(String, Vec<f64>)]) -> (f64, f64, Option<String>) {
    let (overall, worst, at) = compare_tensors(a.iter().zip(b).map(|((_, x), (_, y))| (x, y)));
    (overall, worst, at.map(|k| b[k].0.clone()))
}

/// Over the pairs `(x, y)`: `‖x − y‖ / ‖y‖` for all together, the largest per-pair value, and
/// the index of the pair that has it.
fn compare_tensors<'a>(
    pairs: impl Iterator<Item = (&'a Vec<f64>, &'a Vec<f64>)>,
) -> (f64, f64, Option<usize>) {
    let (mut diff, mut norm, mut worst, mut at) = (0.0, 0.0, 0.0f64, None);
    for (k, (x, y)) in pairs.enumerate() {
        let d: f64 = x.iter().zip(y).map(|(p, q)| (p - q) * (p - q)).sum();
        let n: f64 = y.iter().map(|q| q * q).sum();
        diff += d;
        norm += n;
        let rel = if n > 0.0 {
            (d / n).sqrt()
        } else if d > 0.0 {
            f64::INFINITY
        } else {
            0.0
        };
        if rel > worst {
            (worst, at) = (rel, Some(k));
        }
    }
    ((diff / norm.max(f64::MIN_POSITIVE)).sqrt(), worst, at)
}

/// A small MDEQ (the `small` preset with half its channels, no dropout and no batch norm in the
/// stem) for the comparison; on 1×28×28 inputs. The stem's batch norm is left out because Burn
/// keeps running statistics in state shared between a module and its clones, so forking a clone
/// to another device moves the original's statistics too. (The head's batch norm stays.)
pub fn check_model_config() -> MdeqConfig {
    MdeqConfig::new(1, vec![4, 8], vec![2, 4], 16, 10)
        .with_groups(2)
        .with_dropout(0.0)
        .with_downsample_times(1)
        .with_injection_transform(Some(false))
        .with_stem_norm(false)
}

/// Float tensors of a module by path (values), or, given gradients, their gradients.
fn collect(model: &Mdeq, grads: Option<&GradientsParams>) -> Vec<(String, Vec<f64>)> {
    let Some(grads) = grads else {
        // Trained parameters only: batch-norm running statistics live in state that Burn
        // shares between a module and its clones, so every run from `init` updates the same.
        return deq_models::float_tensors(model)
            .into_iter()
            .filter(|(path, _, _)| !path.contains("running_"))
            .map(|(path, _, tensor)| (path, host(tensor.into_data())))
            .collect();
    };
    struct Collect<'a> {
        grads: &'a GradientsParams,
        path: Vec<String>,
        out: Vec<(String, Vec<f64>)>,
    }
    impl ModuleVisitor for Collect<'_> {
        fn enter_module(&mut self, name: &str, _container: &str) {
            self.path.push(name.to_string());
        }
        fn exit_module(&mut self, _name: &str, _container: &str) {
            self.path.pop();
        }
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            if let Some(g) = self.grads.get::<D>(param.id) {
                self.out.push((self.path.join("."), host(g.into_data())));
            }
        }
    }
    let mut c = Collect {
        grads,
        path: Vec::new(),
        out: Vec::new(),
    };
    model.visit(&mut c);
    c.out
}

/// The gradients (by parameter path) of the [`check_model_config`] MDEQ's loss with `mode` on
/// `images` / `labels`, computed on `device` by a fork of `model`.
fn mdeq_gradients(
    model: &Mdeq,
    device: &Device,
    deq: &deq_core::Deq,
    images: &TensorData,
    labels: &TensorData,
) -> Result<(Mdeq, GradientsParams, Vec<(String, Vec<f64>)>), CrossCheckError> {
    let device = device.clone().autodiff();
    let model = model.clone().fork(&device);
    let images = Tensor::<4>::from_data(images.clone(), &device);
    let labels = Tensor::<1, Int>::from_data(labels.clone(), &device);
    let output = model.forward(images, MdeqMode::Equilibrium(deq))?;
    let loss = CrossEntropyLossConfig::new()
        .init(&device)
        .forward(output.logits, labels);
    let grads = GradientsParams::from_grads(loss.backward(), &model);
    let values = collect(&model, Some(&grads));
    Ok((model, grads, values))
}

/// An MDEQ comparison from `(relative difference, worst tensor, its name)`, with
/// [`MDEQ_TOLERANCE`].
fn mdeq_comparison(
    case: String,
    mode: &BackwardMode,
    (rel_diff, worst_tensor, worst_name): (f64, f64, Option<String>),
) -> Comparison {
    Comparison {
        case,
        mode: mode.to_string(),
        rel_diff,
        worst_tensor,
        worst_name,
        rel_to_exact: None,
        f32_vs_f64: None,
        tolerance: MDEQ_TOLERANCE,
    }
}

/// `steps` SGD steps (learning rate 0.1, batches of 4 random images) of the
/// [`check_model_config`] MDEQ with each of `modes`, trained on `reference` from the same
/// initial weights. At every step the test backend computes the gradient from the reference's
/// current weights, and both gradients are compared; then both take the SGD step from those
/// weights and the updated parameters are compared.
///
/// Each step starts from the reference's weights because the forward solve of an untrained
/// MDEQ does not converge in its budget and returns its lowest-residual iterate, a discrete
/// choice: f32 rounding differences then grow from step to step (measured on software
/// Vulkan: 7e-6 after one step, 2e-1 after two for SHINE), whichever two backends are compared.
pub fn mdeq(
    test: &Device,
    reference: &Device,
    modes: &[BackwardMode],
    steps: usize,
    progress: &mut dyn FnMut(&Comparison),
) -> Result<Vec<Comparison>, CrossCheckError> {
    reference.seed(5);
    let init = check_model_config().init(&reference.clone().autodiff())?;
    let mut out = Vec::new();
    let mut push = |c: Comparison, out: &mut Vec<Comparison>| {
        progress(&c);
        out.push(c);
    };
    for mode in modes {
        let deq = DeqConfig::new(
            SolverConfig::new(SolverKind::broyden(30))
                .with_max_iter(12)
                .with_tol(1e-4),
        )
        .with_backward(mode.clone())
        .init()?;
        let mut rng = deq_core::toy::SplitMix::new(11);
        let mut model = init.clone();
        for step in 1..=steps {
            let batch = 4;
            let images = TensorData::new(
                (0..batch * 28 * 28)
                    .map(|_| rng.normal() as f32)
                    .collect::<Vec<_>>(),
                [batch, 1, 28, 28],
            );
            let labels = TensorData::new(
                (0..batch)
                    .map(|_| (rng.next_u64() % 10) as i64)
                    .collect::<Vec<_>>(),
                [batch],
            );
            let (m_ref, g_ref, v_ref) = mdeq_gradients(&model, reference, &deq, &images, &labels)?;
            let (m_test, g_test, v_test) = mdeq_gradients(&model, test, &deq, &images, &labels)?;
            push(
                mdeq_comparison(
                    format!("mdeq gradients, step {step}"),
                    mode,
                    compare_named(&v_test, &v_ref),
                ),
                &mut out,
            );
            let stepped_test = SgdConfig::new().init().step(0.1, m_test, g_test);
            model = SgdConfig::new().init().step(0.1, m_ref, g_ref);
            push(
                mdeq_comparison(
                    format!("mdeq parameters after step {step}"),
                    mode,
                    compare_named(&collect(&stepped_test, None), &collect(&model, None)),
                ),
                &mut out,
            );
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compare_named_names_the_worst_tensor() {
        let named = |v: [(&str, Vec<f64>); 3]| -> Vec<(String, Vec<f64>)> {
            v.into_iter().map(|(n, x)| (n.to_string(), x)).collect()
        };
        let reference = named([("a", vec![1.0, 1.0]), ("b", vec![1e-6]), ("c", vec![2.0])]);
        let test = named([("a", vec![1.0, 1.1]), ("b", vec![3e-6]), ("c", vec![2.0])]);
        let (overall, worst, name) = compare_named(&test, &reference);
        assert_eq!(name.as_deref(), Some("b"));
        assert!((worst - 2.0).abs() < 1e-9, "{worst}");
        assert!((overall - 0.1 / 6.0f64.sqrt()).abs() < 1e-6, "{overall}");
        let (_, worst, name) = compare_named(&reference, &reference);
        assert_eq!((worst, name), (0.0, None));
    }
}
