//! Every bad input of `docs/RELIABILITY.md`, one row each: data files, LIBSVM lines, run
//! settings (TOML and command line), checkpoints, NaN / Inf in inputs and parameters, and wrong
//! shapes at the library API. Each must give an error that names the problem (checked by the
//! words it must contain), never a panic. `cargo test -p deq-train --test bad_inputs --
//! --nocapture` prints the table.
mod common;

use common::{idx_images, idx_labels, temp_dir};
use std::path::Path;
use std::process::Command;

use burn::module::{Module, ModuleMapper, Param};
use burn::tensor::{DType, Tensor};
use deq_core::{BackwardMode, DeqConfig, SolveStatus, deq_fn};
use deq_models::{MdeqConfig, MdeqMode};
use deq_train::data::{
    CIFAR_RECORD, DatasetKind, load_splits, parse_cifar_batches, parse_idx_pair, read_image_folders,
};
use deq_train::train::{TrainConfig, list_checkpoints, load_model, read_state};

const BIN: &str = env!("CARGO_BIN_EXE_deq-train");

/// The table being built: (area, input, what the user gets).
#[derive(Default)]
struct Table(Vec<(&'static str, String, String)>);

impl Table {
    /// Records a row after checking that `result` is an error containing every needle.
    fn row<T>(
        &mut self,
        area: &'static str,
        input: &str,
        result: Result<T, String>,
        needles: &[&str],
    ) {
        let message = match result {
            Ok(_) => panic!("{input}: accepted"),
            Err(m) => m,
        };
        assert!(!message.contains("panicked"), "{input}: {message}");
        for needle in needles {
            assert!(
                message.contains(needle),
                "{input}: the error does not say `{needle}`:\n{message}"
            );
        }
        // One line for the table: lines joined, long messages cut.
        let joined: Vec<&str> = message
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && *l != "|")
            .collect();
        let mut shown: String = joined.join(" ⏎ ").replace('|', "\\|");
        if shown.chars().count() > 240 {
            shown = shown.chars().take(240).collect::<String>() + " …";
        }
        self.0.push((area, input.to_string(), shown));
    }
}

fn idx(images: Vec<u8>, labels: Vec<u8>) -> Result<(), String> {
    parse_idx_pair(
        (Path::new("train-images-idx3-ubyte"), images),
        (Path::new("train-labels-idx1-ubyte"), labels),
        &deq_train::data::FASHION_MNIST_CLASSES,
    )
    .map(|_| ())
    .map_err(|e| e.to_string())
}

fn cifar(bytes: Vec<u8>) -> Result<(), String> {
    parse_cifar_batches(&[("data_batch_1.bin".into(), bytes)])
        .map(|_| ())
        .map_err(|e| e.to_string())
}

fn libsvm(text: &str, cols: Option<usize>) -> Result<(), String> {
    deq_core::bilevel::read_libsvm(text, cols)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

fn config(text: &str) -> Result<(), String> {
    let c = TrainConfig::from_toml_str(text, Path::new("run.toml")).map_err(|e| e.to_string())?;
    c.validate().map_err(|e| e.to_string())
}

/// Runs the CLI; `Err(stderr)` when it fails.
fn cli(args: &[&str]) -> Result<(), String> {
    let out = Command::new(BIN).args(args).output().unwrap();
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

#[test]
fn every_bad_input_gives_a_named_error() {
    let mut t = Table::default();
    let labels = idx_labels(&[1, 2, 3]);
    let images = idx_images(3, 28, 28);

    // --- IDX ---
    let mut wrong = images.clone();
    wrong[3] = 0x01;
    t.row(
        "IDX",
        "images file with the labels' magic number",
        idx(wrong, labels.clone()),
        &["train-images-idx3-ubyte", "wrong magic number 0x00000801"],
    );
    t.row(
        "IDX",
        "file of 7 bytes (shorter than the header)",
        idx(images[..7].to_vec(), labels.clone()),
        &["train-images-idx3-ubyte", "truncated", "header"],
    );
    t.row(
        "IDX",
        "images cut in the middle of the pixels",
        idx(images[..1000].to_vec(), labels.clone()),
        &["truncated", "announces"],
    );
    let mut long = images.clone();
    long.extend([0; 5]);
    t.row(
        "IDX",
        "5 bytes after the announced data",
        idx(long, labels.clone()),
        &["5 unexpected bytes"],
    );
    let mut gz = vec![0x1f, 0x8b, 8, 0];
    gz.extend([0xff; 20]);
    t.row(
        "IDX",
        "garbled gzip stream",
        idx(gz, labels.clone()),
        &["train-images-idx3-ubyte", "corrupt gzip"],
    );
    t.row(
        "IDX",
        "3 images, 2 labels",
        idx(images.clone(), idx_labels(&[1, 2])),
        &["3 images", "2 labels"],
    );
    t.row(
        "IDX",
        "label 12 (10 classes)",
        idx(images.clone(), idx_labels(&[1, 12, 3])),
        &["train-labels-idx1-ubyte", "label 12", "out of range"],
    );
    let mut huge = idx_images(0, 1, 1);
    huge[4..16].copy_from_slice(&[0xff; 12]);
    t.row(
        "IDX",
        "header dimensions 2³²−1 × 2³²−1 × 2³²−1",
        idx(huge, labels.clone()),
        &["more bytes than can be addressed"],
    );
    t.row(
        "IDX",
        "empty files (0 × 0 × 0 images)",
        idx(idx_images(0, 0, 0), idx_labels(&[])),
        &["empty image shape"],
    );

    // --- CIFAR-10 binary ---
    let record = |label: u8| {
        let mut r = vec![label];
        r.extend(std::iter::repeat_n(7u8, CIFAR_RECORD - 1));
        r
    };
    t.row(
        "CIFAR-10",
        "batch cut short (1.5 records)",
        cifar([record(1), record(2)].concat()[..CIFAR_RECORD * 3 / 2].to_vec()),
        &["data_batch_1.bin", "not a positive multiple"],
    );
    t.row(
        "CIFAR-10",
        "empty batch file",
        cifar(Vec::new()),
        &["data_batch_1.bin", "0 bytes"],
    );
    t.row(
        "CIFAR-10",
        "label byte 10",
        cifar([record(1), record(10)].concat()),
        &["data_batch_1.bin", "label 10", "out of range"],
    );
    let dir = temp_dir("data");
    t.row(
        "data",
        "--data-dir that does not exist",
        load_splits(DatasetKind::FashionMnist, Some(&dir.join("missing")))
            .map(|_| ())
            .map_err(|e| e.to_string()),
        &["missing", "not found"],
    );
    t.row(
        "data",
        "IDX folder without the test files",
        {
            std::fs::write(dir.join("train-images-idx3-ubyte"), &images).unwrap();
            std::fs::write(dir.join("train-labels-idx1-ubyte"), &labels).unwrap();
            load_splits(DatasetKind::FashionMnist, Some(&dir))
                .map(|_| ())
                .map_err(|e| e.to_string())
        },
        &["t10k-images-idx3-ubyte", "not found"],
    );
    let archive = dir.join("cifar.tar.gz");
    std::fs::write(
        &archive,
        b"\x1f\x8b\x08\x00garbage that is not a tar stream",
    )
    .unwrap();
    t.row(
        "data",
        "CIFAR JPEG archive that is not a .tar.gz",
        read_image_folders(&archive)
            .map(|_| ())
            .map_err(|e| e.to_string()),
        &["cifar.tar.gz"],
    );

    // --- LIBSVM ---
    t.row(
        "LIBSVM",
        "`abc 1:2` (label not a number)",
        libsvm("abc 1:2\n", None),
        &["line 1", "label `abc`"],
    );
    t.row(
        "LIBSVM",
        "`1 3` (no index:value)",
        libsvm("1 1:1\n1 3\n", None),
        &["line 2", "`3` is not index:value"],
    );
    t.row(
        "LIBSVM",
        "`1 0:2` (index 0)",
        libsvm("1 0:2\n", None),
        &["line 1", "start at 1"],
    );
    t.row(
        "LIBSVM",
        "`1 x:2` (index not a number)",
        libsvm("1 x:2\n", None),
        &["index `x`"],
    );
    t.row(
        "LIBSVM",
        "`1 2:nan` (non-finite value)",
        libsvm("1 2:nan\n", None),
        &["value `NaN`", "not finite"],
    );
    t.row(
        "LIBSVM",
        "`inf 2:1` (non-finite label)",
        libsvm("inf 2:1\n", None),
        &["label `inf`", "not finite"],
    );
    t.row(
        "LIBSVM",
        "index 5 with 3 columns fixed",
        libsvm("1 5:1\n", Some(3)),
        &["index 5 exceeds the 3 columns"],
    );
    t.row(
        "LIBSVM",
        "index 10¹⁸",
        libsvm("1 1000000000000000000:1\n", None),
        &["exceeds the 100000000 columns"],
    );
    t.row(
        "LIBSVM",
        "only comments",
        libsvm("# nothing\n\n", None),
        &["no data lines"],
    );

    // --- Run settings: TOML ---
    t.row(
        "settings",
        "TOML syntax error",
        config("epochs = [\n"),
        &["run.toml", "line"],
    );
    t.row(
        "settings",
        "unknown key `learning_rate`",
        config("learning_rate = 0.1\n"),
        &["run.toml", "learning_rate"],
    );
    t.row(
        "settings",
        "`epochs = \"two\"`",
        config("epochs = \"two\"\n"),
        &["run.toml", "epochs"],
    );
    t.row(
        "settings",
        "`lr = 0`",
        config("lr = 0.0\n"),
        &["`lr`", "> 0"],
    );
    t.row(
        "settings",
        "`lr = nan`",
        config("lr = nan\n"),
        &["`lr`", "NaN"],
    );
    t.row(
        "settings",
        "`batch_size = 0`",
        config("batch_size = 0\n"),
        &["`batch_size`", "at least 1"],
    );
    t.row(
        "settings",
        "`tol = -1e-3`",
        config("tol = -1e-3\n"),
        &["`tol`"],
    );
    t.row(
        "settings",
        "`backward = \"shine:refin=2\"`",
        config("backward = \"shine:refin=2\"\n"),
        &["backward", "refin"],
    );
    t.row(
        "settings",
        "`solver = \"newton\"`",
        config("solver = \"newton\"\n"),
        &["solver", "newton"],
    );
    t.row(
        "settings",
        "`[mdeq] channels = [8, 16, 32]` with 2 head channels",
        config("[mdeq]\nchannels = [8, 16, 32]\n"),
        &["head_channels"],
    );
    t.row(
        "settings",
        "`[mdeq] groups = 3` (does not divide 8)",
        config("[mdeq]\ngroups = 3\n"),
        &["groups", "3"],
    );
    t.row(
        "settings",
        "`[mdeq] colour = 1` (unknown field)",
        config("[mdeq]\ncolour = 1\n"),
        &["mdeq", "colour"],
    );
    t.row(
        "settings",
        "`[faults] samples = 0`",
        config("[faults]\nsamples = 0\n"),
        &["faults.samples"],
    );

    // --- Command line ---
    let out_dir = dir.join("run");
    let o = out_dir.to_str().unwrap();
    t.row(
        "command line",
        "`--epochs=-1`",
        cli(&["train", "--out", o, "--epochs=-1"]),
        &["--epochs", "-1"],
    );
    t.row(
        "command line",
        "`--lr 0`",
        cli(&["train", "--out", o, "--lr", "0"]),
        &["lr", "0"],
    );
    t.row(
        "command line",
        "`--batch-size 0`",
        cli(&["train", "--out", o, "--batch-size", "0"]),
        &["batch_size"],
    );
    t.row(
        "command line",
        "`--backward magic`",
        cli(&["train", "--out", o, "--backward", "magic"]),
        &["backward", "magic"],
    );
    t.row(
        "command line",
        "`--backend metal`",
        cli(&["train", "--out", o, "--backend", "metal"]),
        &["metal"],
    );
    t.row(
        "command line",
        "`--devices 64` with batch 32",
        cli(&["train", "--out", o, "--devices", "64"]),
        &["devices", "batch_size"],
    );
    t.row(
        "command line",
        "`--model tiny` (3×32×32) on 28×28 data",
        cli(&["train", "--out", o, "--model", "tiny"]),
        &["model", "rgb32"],
    );
    t.row(
        "command line",
        "`--resume` of a folder without a run",
        cli(&["train", "--out", o, "--resume"]),
        &["no checkpoint"],
    );
    t.row(
        "command line",
        "`eval` of a folder without checkpoints",
        cli(&["eval", o]),
        &["checkpoint"],
    );

    // --- Checkpoints ---
    let quick = [
        "--train-limit",
        "64",
        "--test-limit",
        "32",
        "--batch-size",
        "16",
        "--eval-batch-size",
        "32",
        "--epochs",
        "2",
        "--forward-iters",
        "4",
        "--eval-iters",
        "4",
        "--quiet",
    ];
    let train = |out: &str, extra: &[&str]| {
        let mut args = vec!["train", "--out", out];
        args.extend_from_slice(&quick);
        if !extra.contains(&"--pretrain-steps") {
            args.extend_from_slice(&["--pretrain-steps", "1"]);
        }
        args.extend_from_slice(extra);
        cli(&args)
    };
    train(o, &["--stop-after", "2"]).unwrap();
    t.row(
        "checkpoints",
        "a new run into a folder holding a run (no `--force`)",
        train(o, &[]),
        &["already holds a run", "--force"],
    );
    t.row(
        "checkpoints",
        "`--resume` with other settings (`--lr 0.5`)",
        cli(&["train", "--out", o, "--resume", "--lr", "0.5"]),
        &["other settings", "lr"],
    );
    let newest = list_checkpoints(&out_dir).unwrap().pop().unwrap();
    let state_path = newest.join("state.json");
    let state_text = std::fs::read_to_string(&state_path).unwrap();
    std::fs::write(
        &state_path,
        state_text.replace("\"format\": 1", "\"format\": 99"),
    )
    .unwrap();
    t.row(
        "checkpoints",
        "state.json of another checkpoint format (99)",
        cli(&["eval", o]),
        &["state.json", "format 99"],
    );
    std::fs::write(&state_path, "{ not json").unwrap();
    t.row(
        "checkpoints",
        "garbled state.json",
        cli(&["eval", o]),
        &["state.json", "not valid JSON"],
    );
    std::fs::write(&state_path, &state_text).unwrap();
    let model_path = newest.join("model.bpk");
    let model_bytes = std::fs::read(&model_path).unwrap();
    std::fs::write(&model_path, &model_bytes[..model_bytes.len() / 2]).unwrap();
    t.row(
        "checkpoints",
        "model.bpk cut in half",
        cli(&["train", "--out", o, "--resume"]),
        &["model.bpk"],
    );
    std::fs::write(&model_path, &model_bytes).unwrap();
    // Weights of another architecture under a checkpoint's name.
    let other = dir.join("other");
    train(
        other.to_str().unwrap(),
        &["--stop-after", "1", "--config", {
            let p = dir.join("wide.toml");
            std::fs::write(&p, "[mdeq]\nchannels = [8, 24]\n").unwrap();
            Box::leak(p.to_string_lossy().into_owned().into_boxed_str())
        }],
    )
    .unwrap();
    let other_model = list_checkpoints(&other)
        .unwrap()
        .pop()
        .unwrap()
        .join("model.bpk");
    std::fs::copy(&other_model, &model_path).unwrap();
    t.row(
        "checkpoints",
        "model.bpk of another architecture (channels [8, 24])",
        cli(&["eval", o]),
        &["model.bpk"],
    );
    let state = read_state(&newest).unwrap();
    let device = deq_core::device::cpu();
    let model = state.config.model_config().unwrap().init(&device).unwrap();
    t.row(
        "checkpoints",
        "the same through the library (`load_model`)",
        load_model(&newest, model)
            .map(|_| ())
            .map_err(|e| e.to_string()),
        &["model.bpk"],
    );

    // --- NaN / Inf at the library API ---
    let deq = DeqConfig::broyden(BackwardMode::jacobian_free())
        .init()
        .unwrap();
    let f = deq_fn(|z: Tensor<2>, x: &Tensor<2>| (z * 0.5 + x.clone()).tanh());
    let mut x = vec![0.1f64; 12];
    x[4] = f64::NAN;
    x[9] = f64::INFINITY;
    let x = Tensor::<2>::from_data(
        burn::tensor::TensorData::new(x, [3, 4]),
        (&device, DType::F64),
    );
    let z0 = Tensor::<2>::zeros([3, 4], (&device, DType::F64));
    let out = deq.forward(&f, &x, z0).unwrap();
    let statuses: Vec<SolveStatus> = out.stats.samples.iter().map(|s| s.status).collect();
    // Sample 1 has a NaN; sample 2 an ∞, which tanh saturates to a finite value.
    assert_eq!(
        statuses,
        [
            SolveStatus::Converged,
            SolveStatus::NonFinite,
            SolveStatus::Converged
        ]
    );
    assert!(
        out.z
            .clone()
            .narrow(0, 0, 1)
            .into_data()
            .try_to_vec::<f64>()
            .unwrap()
            .iter()
            .all(|v| v.is_finite())
    );
    t.row(
        "NaN / Inf",
        "NaN in sample 1, ∞ in sample 2 of f(z, x) = tanh(z/2 + x) (DEQ layer)",
        Err::<(), _>(format!(
            "no error: per-sample status {statuses:?} (tanh saturates the ∞)"
        )),
        &["NonFinite", "Converged"],
    );
    // NaN in the parameters of the MDEQ: every sample reports it, nothing panics.
    struct Poison;
    impl ModuleMapper for Poison {
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
            param.map(|t| t.clone().mul_scalar(f32::NAN))
        }
    }
    let poisoned = MdeqConfig::small().init(&device).unwrap().map(&mut Poison);
    let deq = DeqConfig::broyden(BackwardMode::shine()).init().unwrap();
    let images = Tensor::<4>::ones([2, 1, 28, 28], &device);
    let out = poisoned
        .valid()
        .forward(images, MdeqMode::Equilibrium(&deq))
        .unwrap();
    let statuses: Vec<SolveStatus> = out
        .deq
        .unwrap()
        .stats
        .samples
        .iter()
        .map(|s| s.status)
        .collect();
    assert!(
        statuses.iter().all(|s| *s == SolveStatus::NonFinite),
        "{statuses:?}"
    );
    t.row(
        "NaN / Inf",
        "NaN in every MDEQ parameter (forward)",
        Err::<(), _>(format!(
            "no error: every sample's status is NonFinite ({statuses:?})"
        )),
        &["NonFinite"],
    );
    let faults = dir.join("nan.toml");
    std::fs::write(
        &faults,
        "max_skipped_steps = 2\n[faults]\nnan_steps = [1, 2, 3]\n",
    )
    .unwrap();
    t.row(
        "NaN / Inf",
        "f = NaN on every pretraining step (the loss is NaN, as with NaN parameters)",
        train(
            dir.join("nan").to_str().unwrap(),
            &[
                "--config",
                faults.to_str().unwrap(),
                "--pretrain-steps",
                "4",
            ],
        ),
        &["not finite on 2 consecutive steps", "step 2"],
    );

    // --- Shapes at the library API ---
    let deq = DeqConfig::broyden(BackwardMode::jacobian_free())
        .init()
        .unwrap();
    let g = deq_fn(|z: Tensor<2>, _: &()| z.narrow(1, 0, 3));
    t.row(
        "shapes",
        "f returning [2, 3] for a [2, 6] state",
        deq.forward(&g, &(), Tensor::<2>::zeros([2, 6], &device))
            .map(|_| ())
            .map_err(|e| e.to_string()),
        &["f(z0) output", "[2, 6]", "[2, 3]"],
    );
    let model = MdeqConfig::small().init(&device).unwrap();
    let unrolled = MdeqMode::Unrolled { layers: 1 };
    t.row(
        "shapes",
        "3-channel images into `small` (1 channel)",
        model
            .forward(Tensor::zeros([2, 3, 28, 28], &device), unrolled)
            .map(|_| ())
            .map_err(|e| e.to_string()),
        &["channel count", "3"],
    );
    t.row(
        "shapes",
        "27×28 images into `small`",
        model
            .forward(Tensor::zeros([2, 1, 27, 28], &device), unrolled)
            .map(|_| ())
            .map_err(|e| e.to_string()),
        &["spatial size"],
    );
    t.row(
        "shapes",
        "empty batch",
        model
            .forward(Tensor::zeros([0, 1, 28, 28], &device), unrolled)
            .map(|_| ())
            .map_err(|e| e.to_string()),
        &["batch size"],
    );

    println!("| area | bad input | what the user gets |\n|---|---|---|");
    for (area, input, message) in &t.0 {
        println!("| {area} | {input} | {message} |");
    }
    println!(
        "{} bad inputs, every one a named error or status, no panic",
        t.0.len()
    );
}
