//! The same computation on two backends, compared: the gradient of every backward mode on the
//! documented toy DEQ (`deq_core::toy`), and a few MDEQ training steps from the same weights.
//! This is how the GPU path (WGPU) is checked against the CPU path (flex): one code base, two
//! backends, gradients equal to float tolerance.
use burn::module::{Module, ModuleVisitor, ParamId};
use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::{AdamConfig, GradientsParams};
use burn::tensor::{DType, Device, Int, Tensor, TensorData};
use deq_core::toy::{Toy, toy_fn};
use deq_core::{BackwardMode, DeqConfig, DeqError, SolverConfig, SolverKind, StopMode};
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
    /// For the toy: the test backend's distance to the exact (f64, tight) implicit gradient.
    pub rel_to_exact: Option<f64>,
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

/// Relative tolerance of the toy comparison (f32 on both backends).
pub const TOY_TOLERANCE: f64 = 1e-3;
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

/// Every mode of [`toy_modes`] on the toy DEQ in f32, on `test` and on `reference`; and the
/// distance of `test`'s gradient to the exact implicit gradient (computed on `exact`, which
/// must support f64).
pub fn toy(
    test: &Device,
    reference: &Device,
    exact: &Device,
) -> Result<Vec<Comparison>, CrossCheckError> {
    let toy = toy_problem();
    let exact_config = DeqConfig::new(
        SolverConfig::new(SolverKind::broyden(60))
            .with_max_iter(200)
            .with_tol(1e-13)
            .with_stop(StopMode::Absolute),
    )
    .with_backward(BackwardMode::Implicit {
        solver: SolverKind::broyden(100),
        max_iter: 200,
        tol: 1e-13,
    });
    let exact_grads = toy_gradients(exact, DType::F64, &toy, &exact_config)?;
    toy_modes()
        .into_iter()
        .map(|mode| {
            let config = toy_config(mode.clone());
            let g_test = toy_gradients(test, DType::F32, &toy, &config)?;
            let g_ref = toy_gradients(reference, DType::F32, &toy, &config)?;
            let (rel_diff, worst_tensor) = compare(&g_test, &g_ref);
            Ok(Comparison {
                case: "toy".into(),
                mode: mode.to_string(),
                rel_diff,
                worst_tensor,
                rel_to_exact: Some(compare(&g_test, &exact_grads).0),
                tolerance: TOY_TOLERANCE,
            })
        })
        .collect()
}

/// `(‖a − b‖ / ‖b‖ over all tensors, worst tensor's relative difference)`.
pub fn compare(a: &[Vec<f64>], b: &[Vec<f64>]) -> (f64, f64) {
    let (mut diff, mut norm, mut worst) = (0.0, 0.0, 0.0f64);
    for (x, y) in a.iter().zip(b) {
        let d: f64 = x.iter().zip(y).map(|(p, q)| (p - q) * (p - q)).sum();
        let n: f64 = y.iter().map(|q| q * q).sum();
        diff += d;
        norm += n;
        if n > 0.0 {
            worst = worst.max((d / n).sqrt());
        } else if d > 0.0 {
            worst = f64::INFINITY;
        }
    }
    ((diff / norm.max(f64::MIN_POSITIVE)).sqrt(), worst)
}

/// A small MDEQ (the `small` preset with half its channels and no dropout) for the
/// comparison; on 1×28×28 inputs.
pub fn check_model_config() -> MdeqConfig {
    MdeqConfig::new(1, vec![4, 8], vec![2, 4], 16, 10)
        .with_groups(2)
        .with_dropout(0.0)
        .with_downsample_times(1)
}

/// Float tensors of a module by path (values), and, given gradients, their gradients.
fn collect(model: &Mdeq, grads: Option<&GradientsParams>) -> Vec<(String, Vec<f64>)> {
    struct Collect<'a> {
        grads: Option<&'a GradientsParams>,
        out: Vec<(String, Vec<f64>)>,
    }
    impl ModuleVisitor for Collect<'_> {
        fn visit_float_with_path<const D: usize>(
            &mut self,
            path: &[String],
            id: ParamId,
            tensor: &Tensor<D>,
        ) {
            let values = match self.grads {
                None => Some(tensor.to_data()),
                Some(grads) => grads.get::<D>(id).map(|g| g.into_data()),
            };
            if let Some(values) = values {
                self.out.push((path.join("."), host(values)));
            }
        }
    }
    let mut c = Collect {
        grads,
        out: Vec::new(),
    };
    model.visit(&mut c);
    c.out
}

/// `steps` Adam steps of the [`check_model_config`] MDEQ with `mode` on fixed random batches
/// (batch 4) on `device`, from the weights of `init`: per step the gradients by parameter
/// path, then the final parameters.
pub fn mdeq_steps(
    init: &Mdeq,
    device: &Device,
    mode: &BackwardMode,
    steps: usize,
    forward_iters: usize,
) -> Result<(Vec<Vec<(String, Vec<f64>)>>, Vec<(String, Vec<f64>)>), CrossCheckError> {
    let device = device.clone().autodiff();
    let mut model = init.clone().fork(&device);
    let deq = DeqConfig::new(
        SolverConfig::new(SolverKind::broyden(30))
            .with_max_iter(forward_iters)
            .with_tol(1e-4),
    )
    .with_backward(mode.clone())
    .init()?;
    let loss_fn = CrossEntropyLossConfig::new().init(&device);
    let mut optim = AdamConfig::new().init();
    let mut per_step = Vec::new();
    let mut rng = deq_core::toy::SplitMix::new(11);
    for _ in 0..steps {
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
        let images = Tensor::<4>::from_data(images, &device);
        let labels = Tensor::<1, Int>::from_data(labels, &device);
        let output = model.forward(images, MdeqMode::Equilibrium(&deq))?;
        let loss = loss_fn.forward(output.logits, labels);
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        per_step.push(collect(&model, Some(&grads)));
        model = optim.step(1e-3, model, grads);
    }
    Ok((per_step, collect(&model, None)))
}

/// [`mdeq_steps`] on `test` and on `reference` from the same initial weights, for each mode:
/// one comparison per step's gradients and one of the final parameters.
pub fn mdeq(
    test: &Device,
    reference: &Device,
    modes: &[BackwardMode],
    steps: usize,
) -> Result<Vec<Comparison>, CrossCheckError> {
    reference.seed(5);
    let init = check_model_config().init(&reference.clone().autodiff())?;
    let mut out = Vec::new();
    for mode in modes {
        let (g_test, p_test) = mdeq_steps(&init, test, mode, steps, 12)?;
        let (g_ref, p_ref) = mdeq_steps(&init, reference, mode, steps, 12)?;
        let values = |v: &[(String, Vec<f64>)]| -> Vec<Vec<f64>> {
            v.iter().map(|(_, x)| x.clone()).collect()
        };
        for (step, (a, b)) in g_test.iter().zip(&g_ref).enumerate() {
            let (rel_diff, worst_tensor) = compare(&values(a), &values(b));
            out.push(Comparison {
                case: format!("mdeq gradients, step {}", step + 1),
                mode: mode.to_string(),
                rel_diff,
                worst_tensor,
                rel_to_exact: None,
                tolerance: MDEQ_TOLERANCE,
            });
        }
        let (rel_diff, worst_tensor) = compare(&values(&p_test), &values(&p_ref));
        out.push(Comparison {
            case: format!("mdeq parameters after {steps} steps"),
            mode: mode.to_string(),
            rel_diff,
            worst_tensor,
            rel_to_exact: None,
            tolerance: MDEQ_TOLERANCE,
        });
    }
    Ok(out)
}
