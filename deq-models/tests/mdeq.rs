//! The MDEQ: parameter counts, shapes, per-pass determinism, dropout, bad input, and one
//! optimiser step with every backward mode (f32, default CPU device).
use burn::module::Module;
use burn::optim::{AdamConfig, GradientsParams};
use burn::tensor::{Device, Distribution, Tensor};
use deq_core::{BackwardMode, DeqConfig, DeqFunction, SolverConfig, SolverKind, row_index};
use deq_models::{MdeqConfig, MdeqMode, ModelError, trainable_params};

fn input(config: &MdeqConfig, batch: usize, size: usize, device: &Device) -> Tensor<4> {
    Tensor::random(
        [batch, config.input_channels, size, size],
        Distribution::Normal(0.0, 1.0),
        device,
    )
}

fn size_of(config: &MdeqConfig) -> usize {
    if config.input_channels == 1 { 28 } else { 32 }
}

/// Must-show 1: trainable parameter counts equal our count of the reference code.
#[test]
fn parameter_counts_match_the_reference() {
    let device = deq_core::device::cpu();
    let tiny = MdeqConfig::tiny().init(&device).unwrap();
    assert_eq!(trainable_params(&tiny), 158_890);
    assert_eq!(trainable_params(&tiny.stem), 5_928);
    assert_eq!(trainable_params(&tiny.core), 111_696);
    assert_eq!(trainable_params(&tiny.head), 41_266);
    let large = MdeqConfig::large().init(&device).unwrap();
    assert_eq!(trainable_params(&large), 11_097_438);
    let small = MdeqConfig::small().init(&device).unwrap();
    assert_eq!(trainable_params(&small), 41_242);
}

/// Must-show 2: output shapes for every config and batch sizes 1 and 7; branch resolutions
/// halve per branch.
#[test]
fn shapes_for_every_config() {
    let device = deq_core::device::cpu();
    for config in [MdeqConfig::tiny(), MdeqConfig::large(), MdeqConfig::small()] {
        let model = config.init(&device).unwrap();
        let size = size_of(&config);
        let base = size >> config.downsample_times;
        for batch in [1, 7] {
            let out = model
                .forward(
                    input(&config, batch, size, &device),
                    MdeqMode::Unrolled { layers: 1 },
                )
                .unwrap();
            assert_eq!(out.logits.dims(), [batch, config.classes]);
            for (i, (branch, &c)) in out.state.iter().zip(&config.channels).enumerate() {
                assert_eq!(
                    branch.dims(),
                    [batch, c, base >> i, base >> i],
                    "{config:?} branch {i}"
                );
            }
        }
    }
}

/// Must-show 3: within one forward pass f is one fixed function; the dropout masks change
/// between training passes; evaluation is deterministic.
#[test]
fn dropout_and_weight_norm_are_frozen_per_pass() {
    let device = deq_core::device::cpu().autodiff();
    let config = MdeqConfig::tiny();
    let model = config.init(&device).unwrap();
    let x = input(&config, 3, 32, &device);
    let (core, injection) = model.prepare(x.clone()).unwrap();
    let dim = core.state_shape().dim();
    let z = Tensor::<2>::random(
        [3, dim],
        Distribution::Normal(0.0, 1.0),
        &device.clone().inner(),
    );
    let a = core.forward(z.clone(), &injection).into_data();
    let b = core.forward(z.clone(), &injection).into_data();
    a.assert_eq(&b, true);
    // The detached copy the solver uses computes the same function.
    let plain = core.without_autodiff();
    plain
        .forward(z.clone(), &injection.clone().detach().without_autodiff())
        .into_data()
        .assert_approx_eq::<f32>(&a, burn::tensor::Tolerance::default());
    let mask = |c: &deq_models::mdeq::PreparedCore| {
        c.blocks()[0]
            .mask()
            .expect("training draws a mask")
            .clone()
            .into_data()
    };
    assert_eq!(core.blocks()[0].mask().unwrap().dims(), [3, 24, 1, 1]);
    let (other, _) = model.prepare(x.clone()).unwrap();
    assert_ne!(mask(&core), mask(&other), "a new pass draws new masks");
    // Evaluation: no masks, and two passes agree exactly.
    let eval = model.valid();
    let xe = x.detach().without_autodiff();
    let (core_eval, _) = eval.prepare(xe.clone()).unwrap();
    assert!(core_eval.blocks().iter().all(|b| b.mask().is_none()));
    let y1 = eval
        .forward(xe.clone(), MdeqMode::Unrolled { layers: 3 })
        .unwrap()
        .logits
        .into_data();
    let y2 = eval
        .forward(xe, MdeqMode::Unrolled { layers: 3 })
        .unwrap()
        .logits
        .into_data();
    y1.assert_eq(&y2, true);
}

/// f on some samples of the batch (what the forward solve evaluates once others have
/// converged) is those samples' rows of f on the whole batch, dropout masks included.
#[test]
fn f_on_some_samples_is_their_rows_of_f() {
    let device = deq_core::device::cpu().autodiff();
    let config = MdeqConfig::tiny();
    let model = config.init(&device).unwrap();
    let batch = 5;
    let x = input(&config, batch, 32, &device);
    let (core, injection) = model.prepare(x).unwrap();
    let (core, injection) = (
        core.without_autodiff(),
        injection.detach().without_autodiff(),
    );
    assert!(core.blocks()[0].mask().is_some(), "training draws masks");
    let dim = core.state_shape().dim();
    let plain = device.clone().inner();
    let z = Tensor::<2>::random([batch, dim], Distribution::Normal(0.0, 1.0), &plain);
    let whole = core.forward(z.clone(), &injection);
    for rows in [vec![0, 2, 3], vec![4], vec![1, 2, 3, 4]] {
        let index = row_index(&rows, &plain);
        let part = core
            .forward_rows(z.clone().select(0, index.clone()), &injection, &rows)
            .expect("the MDEQ's f works per sample");
        part.into_data().assert_approx_eq::<f32>(
            &whole.clone().select(0, index).into_data(),
            burn::tensor::Tolerance::absolute(1e-5),
        );
    }
}

/// Bad input and inconsistent configs give errors naming the problem.
#[test]
fn bad_input_and_configs_are_errors() {
    let device = deq_core::device::cpu();
    let model = MdeqConfig::tiny().init(&device).unwrap();
    let unrolled = MdeqMode::Unrolled { layers: 1 };
    let err = model
        .forward(Tensor::zeros([2, 1, 32, 32], &device), unrolled)
        .unwrap_err();
    assert!(
        matches!(
            err,
            ModelError::Input {
                what: "channel count",
                ..
            }
        ),
        "{err}"
    );
    let err = model
        .forward(Tensor::zeros([2, 3, 31, 32], &device), unrolled)
        .unwrap_err();
    assert!(
        matches!(
            err,
            ModelError::Input {
                what: "spatial size",
                ..
            }
        ),
        "{err}"
    );
    let err = model
        .forward(Tensor::zeros([0, 3, 32, 32], &device), unrolled)
        .unwrap_err();
    assert!(
        matches!(
            err,
            ModelError::Input {
                what: "batch size",
                ..
            }
        ),
        "{err}"
    );
    println!("{err}");
    let field = |c: MdeqConfig| match c.init(&device) {
        Err(ModelError::Config { field, .. }) => field,
        other => panic!("expected a config error, got {other:?}"),
    };
    assert_eq!(
        field(MdeqConfig {
            head_channels: vec![8],
            ..MdeqConfig::tiny()
        }),
        "head_channels"
    );
    assert_eq!(field(MdeqConfig::tiny().with_groups(5)), "groups");
    assert_eq!(
        field(MdeqConfig {
            channels: vec![24, 20],
            ..MdeqConfig::tiny()
        }),
        "groups"
    );
    assert_eq!(
        field(MdeqConfig {
            channels: vec![],
            head_channels: vec![],
            ..MdeqConfig::tiny()
        }),
        "channels"
    );
    assert_eq!(field(MdeqConfig::tiny().with_dropout(1.0)), "dropout");
    assert_eq!(
        field(MdeqConfig {
            classes: 0,
            ..MdeqConfig::tiny()
        }),
        "classes"
    );
    assert!(MdeqConfig::preset("huge").is_err());
}

/// Must-show 5 (first part): with every backward mode, one Adam step on `tiny` and on
/// `small` runs and changes the parameters of the stem, f and the head.
#[test]
fn one_step_with_every_backward_mode_changes_the_parameters() {
    let device = deq_core::device::cpu().autodiff();
    let modes = [
        "implicit:max_iter=4",
        "shine",
        "shine:fallback=1.8",
        "shine:refine=2",
        "jfb",
        "jfb:refine=2",
        "phantom:k=2,tau=0.5",
        "unrolled",
    ];
    for config in [MdeqConfig::tiny(), MdeqConfig::small()] {
        let model = config.init(&device).unwrap();
        let x = input(&config, 2, size_of(&config), &device);
        let labels = Tensor::<1, burn::tensor::Int>::from_data([1, 3], &device);
        for text in modes {
            let mode: BackwardMode = text.parse().unwrap();
            let deq = DeqConfig::new(SolverConfig::new(SolverKind::broyden(6)).with_max_iter(6))
                .with_backward(mode)
                .init()
                .unwrap();
            let out = model
                .forward(x.clone(), MdeqMode::Equilibrium(&deq))
                .unwrap();
            let loss = burn::nn::loss::CrossEntropyLossConfig::new()
                .init(&device)
                .forward(out.logits, labels.clone());
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            let mut optim = AdamConfig::new().init();
            let stepped = optim.step(1e-3, model.clone(), grads);
            let changed =
                |a: Tensor<4>, b: Tensor<4>| (a - b).abs().max().into_scalar::<f64>() > 0.0;
            assert!(
                changed(
                    model.stem.conv1.weight.val(),
                    stepped.stem.conv1.weight.val()
                ),
                "{text}: stem"
            );
            assert!(
                changed(
                    model.core.blocks[0].conv1.v.val(),
                    stepped.core.blocks[0].conv1.v.val()
                ),
                "{text}: f"
            );
            assert!(
                changed(
                    model.head.final_conv.weight.val(),
                    stepped.head.final_conv.weight.val()
                ),
                "{text}: head"
            );
        }
    }
}
