//! Fuzzing of the parsers that read user files: IDX (raw and gzip), CIFAR-10 binary, LIBSVM and
//! the TOML run settings.
//!
//! A proptest-based harness rather than `cargo fuzz`: libFuzzer would rebuild Burn and every
//! other dependency on nightly with coverage instrumentation (about half an hour on this
//! project's 2-core machines) for parsers that are a few hundred lines. Inputs are random bytes
//! or valid files changed by 1–5 random mutations (bit flips, byte writes, insertions,
//! deletions, truncation, header fields set to edge values, appended bytes).
//!
//! - `FUZZ_SECONDS` (default 2): time budget per target. `docs/RELIABILITY.md` records runs
//!   of 600 s per target: `FUZZ_SECONDS=600 cargo test -p deq-train --test fuzz -- --nocapture`.
//! - `FUZZ_SEED`: the random stream (default: from the clock; printed).
//! - Every input must give `Ok` or an error that names the file (or line); a panic fails the
//!   target, and the input is written to `FUZZ_CRASHES` (default `target/fuzz-crashes`).
mod common;

use common::{gz, idx_images, idx_labels};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};

use deq_train::data::{parse_cifar_batches, parse_idx_pair};
use deq_train::train::TrainConfig;

#[derive(Debug, Clone)]
enum Mutation {
    Flip(usize, u8),
    Set(usize, u8),
    Insert(usize, Vec<u8>),
    Remove(usize, usize),
    Truncate(usize),
    /// A big-endian u32 at a header offset (0, 4, 8, 12): magic and dimensions.
    Field(usize, u32),
    Append(Vec<u8>),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let edge = prop_oneof![
        Just(0u32),
        Just(1),
        Just(2),
        Just(0x7fff_ffff),
        Just(0x8000_0000),
        Just(u32::MAX),
        Just(0x0000_0803),
        Just(0x0000_0801),
        0u32..100,
        any::<u32>(),
    ];
    prop_oneof![
        (any::<usize>(), 1u8..).prop_map(|(i, b)| Mutation::Flip(i, b)),
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Mutation::Set(i, b)),
        (any::<usize>(), prop::collection::vec(any::<u8>(), 1..16))
            .prop_map(|(i, b)| Mutation::Insert(i, b)),
        (any::<usize>(), 1usize..64).prop_map(|(i, n)| Mutation::Remove(i, n)),
        any::<usize>().prop_map(Mutation::Truncate),
        (0usize..4, edge).prop_map(|(f, v)| Mutation::Field(4 * f, v)),
        prop::collection::vec(any::<u8>(), 1..64).prop_map(Mutation::Append),
    ]
}

fn apply(mut bytes: Vec<u8>, m: &Mutation) -> Vec<u8> {
    let at = |i: usize, len: usize| if len == 0 { 0 } else { i % len };
    match m {
        Mutation::Flip(i, b) if !bytes.is_empty() => {
            let i = at(*i, bytes.len());
            bytes[i] ^= b;
        }
        Mutation::Set(i, b) if !bytes.is_empty() => {
            let i = at(*i, bytes.len());
            bytes[i] = *b;
        }
        Mutation::Insert(i, b) => {
            let i = at(*i, bytes.len() + 1);
            bytes.splice(i..i, b.iter().copied());
        }
        Mutation::Remove(i, n) if !bytes.is_empty() => {
            let i = at(*i, bytes.len());
            let end = (i + n).min(bytes.len());
            bytes.drain(i..end);
        }
        Mutation::Truncate(i) => {
            let i = at(*i, bytes.len() + 1);
            bytes.truncate(i);
        }
        Mutation::Field(offset, v) if bytes.len() >= offset + 4 => {
            bytes[*offset..offset + 4].copy_from_slice(&v.to_be_bytes());
        }
        Mutation::Append(b) => bytes.extend_from_slice(b),
        _ => {}
    }
    bytes
}

/// Random bytes (1 in 7) or one of `seeds` with 1–5 mutations.
fn mutated(seeds: Vec<Vec<u8>>) -> impl Strategy<Value = Vec<u8>> {
    let n = seeds.len();
    prop_oneof![
        1 => prop::collection::vec(any::<u8>(), 0..300),
        6 => (0..n, prop::collection::vec(mutation(), 1..6))
            .prop_map(move |(i, ms)| ms.iter().fold(seeds[i].clone(), apply)),
    ]
}

/// Runs `target` on values drawn from `strategy` for the time budget; panics are failures.
fn fuzz<T: std::fmt::Debug>(
    name: &str,
    strategy: impl Strategy<Value = T>,
    bytes_of: impl Fn(&T) -> Vec<u8>,
    target: impl Fn(&T) -> Result<(), String>,
    names_the_problem: impl Fn(&str) -> bool,
) {
    let budget = std::env::var("FUZZ_SECONDS")
        .ok()
        .and_then(|s| s.parse::<f64>().ok())
        .unwrap_or(2.0);
    let seed = common::seed_from_env("FUZZ_SEED");
    let mut key = [0u8; 32];
    key[..8].copy_from_slice(&seed.to_le_bytes());
    key[8..16].copy_from_slice(&(name.len() as u64).to_le_bytes());
    let mut runner = TestRunner::new_with_rng(
        Config::default(),
        TestRng::from_seed(RngAlgorithm::ChaCha, &key),
    );
    let crashes = std::env::var("FUZZ_CRASHES")
        .map(PathBuf::from)
        .unwrap_or_else(|_| Path::new(env!("CARGO_TARGET_TMPDIR")).join("fuzz-crashes"));
    let started = Instant::now();
    let (mut runs, mut accepted) = (0u64, 0u64);
    let mut kinds = std::collections::BTreeSet::new();
    let mut failures = Vec::new();
    while started.elapsed() < Duration::from_secs_f64(budget) {
        let value = strategy.new_tree(&mut runner).unwrap().current();
        runs += 1;
        let outcome = catch_unwind(AssertUnwindSafe(|| target(&value)));
        let problem = match outcome {
            Ok(Ok(())) => {
                accepted += 1;
                None
            }
            Ok(Err(message)) => {
                // The kind of error: its first words, without numbers and quoted values.
                let words: Vec<&str> = message
                    .split_whitespace()
                    .filter(|w| !w.contains(|c: char| c.is_ascii_digit() || "`'\"".contains(c)))
                    .take(6)
                    .collect();
                kinds.insert(words.join(" "));
                (!names_the_problem(&message))
                    .then(|| format!("error does not name the file or line: {message}"))
            }
            Err(_) => Some("panicked".to_string()),
        };
        if let Some(problem) = problem {
            std::fs::create_dir_all(&crashes).unwrap();
            let path = crashes.join(format!("{name}-{}.bin", failures.len()));
            std::fs::write(&path, bytes_of(&value)).unwrap();
            failures.push(format!("{problem} (input: {})", path.display()));
            if failures.len() >= 5 {
                break;
            }
        }
    }
    println!(
        "fuzz {name}: {runs} inputs in {:.0} s (FUZZ_SEED={seed}): {accepted} accepted, {} rejected with {} distinct errors, {} failures",
        started.elapsed().as_secs_f64(),
        runs - accepted,
        kinds.len(),
        failures.len()
    );
    assert!(failures.is_empty(), "{name}: {failures:#?}");
    assert!(runs > 100, "{name}: only {runs} inputs in the budget");
}

#[test]
fn fuzz_idx() {
    let labels: Vec<u8> = (0..6).map(|i| i % 10).collect();
    let images = idx_images(6, 4, 3);
    let image_seeds = vec![images.clone(), gz(&images), idx_images(0, 28, 28)];
    let label_seeds = vec![
        idx_labels(&labels),
        gz(&idx_labels(&labels)),
        idx_labels(&[]),
    ];
    // Each file is valid, mutated or random; mostly one of the two is damaged.
    let strategy = (mutated(image_seeds.clone()), mutated(label_seeds.clone())).prop_flat_map(
        move |(bad_images, bad_labels)| {
            let (good_images, good_labels) = (image_seeds[0].clone(), label_seeds[0].clone());
            prop_oneof![
                Just((bad_images.clone(), good_labels)),
                Just((good_images, bad_labels.clone())),
                Just((bad_images, bad_labels)),
            ]
        },
    );
    fuzz(
        "idx",
        strategy,
        |(images, labels)| [&(images.len() as u64).to_le_bytes()[..], images, labels].concat(),
        |(images, labels)| {
            parse_idx_pair(
                (Path::new("images.idx"), images.clone()),
                (Path::new("labels.idx"), labels.clone()),
                &deq_train::data::FASHION_MNIST_CLASSES,
            )
            .map(|_| ())
            .map_err(|e| e.to_string())
        },
        |m| m.contains("images.idx") || m.contains("labels.idx"),
    );
}

#[test]
fn fuzz_cifar() {
    let record = |label: u8| {
        let mut r = vec![label];
        r.extend((0..3072).map(|i| (i % 251) as u8));
        r
    };
    let batch: Vec<u8> = (0..3).flat_map(|i| record(i as u8 * 3)).collect();
    let seeds = vec![batch.clone(), record(9), Vec::new()];
    let strategy = (mutated(seeds), 0usize..3);
    fuzz(
        "cifar",
        strategy,
        |(bytes, _)| bytes.clone(),
        move |(bytes, position)| {
            // The damaged file among valid ones: first, second or alone.
            let files: Vec<(PathBuf, Vec<u8>)> = match position {
                0 => vec![("bad.bin".into(), bytes.clone())],
                1 => vec![
                    ("good.bin".into(), batch.clone()),
                    ("bad.bin".into(), bytes.clone()),
                ],
                _ => vec![
                    ("bad.bin".into(), bytes.clone()),
                    ("good.bin".into(), batch.clone()),
                ],
            };
            parse_cifar_batches(&files)
                .map(|_| ())
                .map_err(|e| e.to_string())
        },
        |m| m.contains("bad.bin"),
    );
}

#[test]
fn fuzz_libsvm() {
    let valid = "+1 1:0.5 3:-2 10:1e-3\n-1 2:1 # comment\n\n1 1:1 2:2 3:3\n0 7:0.25\n";
    let seeds = vec![
        valid.as_bytes().to_vec(),
        b"1 1:1\n".to_vec(),
        b"# only a comment\n".to_vec(),
    ];
    let strategy = (mutated(seeds), prop::option::of(1usize..20));
    fuzz(
        "libsvm",
        strategy,
        |(bytes, _)| bytes.clone(),
        |(bytes, cols)| {
            let text = String::from_utf8_lossy(bytes);
            deq_core::bilevel::read_libsvm(&text, *cols)
                .map(|_| ())
                .map_err(|e| e.to_string())
        },
        |m| m.contains("LIBSVM line") || m.contains("no data lines") || m.contains("row "),
    );
}

/// TOML values of every kind, edge numbers included.
fn toml_value() -> impl Strategy<Value = String> {
    let leaf = prop_oneof![
        any::<i64>().prop_map(|v| v.to_string()),
        (-3i64..40).prop_map(|v| v.to_string()),
        prop_oneof![
            Just("nan"),
            Just("inf"),
            Just("-inf"),
            Just("-0.0"),
            Just("1e308"),
            Just("1e-320"),
            Just("0.5"),
            Just("2e-3"),
        ]
        .prop_map(str::to_string),
        any::<bool>().prop_map(|b| b.to_string()),
        "[a-z:=.,0-9 -]{0,12}".prop_map(|s| format!("{s:?}")),
        prop_oneof![
            Just("shine:fallback=1.8"),
            Just("phantom:k=0,tau=2"),
            Just("implicit:max_iter=0"),
            Just("broyden"),
            Just("tiny"),
            Just("cifar10"),
            Just("wgpu"),
        ]
        .prop_map(|s| format!("{s:?}")),
    ];
    leaf.prop_recursive(2, 8, 4, |inner| {
        prop::collection::vec(inner, 0..4).prop_map(|v| format!("[{}]", v.join(", ")))
    })
}

fn toml_text() -> impl Strategy<Value = String> {
    let top = prop_oneof![
        Just("dataset"),
        Just("data_dir"),
        Just("rgb32"),
        Just("model"),
        Just("backward"),
        Just("solver"),
        Just("solver_memory"),
        Just("forward_iters"),
        Just("eval_iters"),
        Just("tol"),
        Just("pretrain_steps"),
        Just("epochs"),
        Just("batch_size"),
        Just("eval_batch_size"),
        Just("lr"),
        Just("weight_decay"),
        Just("grad_clip"),
        Just("augment"),
        Just("seed"),
        Just("devices"),
        Just("max_skipped_steps"),
        Just("unknown_key"),
    ];
    let mdeq = prop_oneof![
        Just("channels"),
        Just("head_channels"),
        Just("final_channels"),
        Just("groups"),
        Just("dropout"),
        Just("downsample_times"),
        Just("expansion"),
        Just("classes"),
        Just("input_channels"),
        Just("pretrain_layers"),
        Just("init_std"),
        Just("injection_transform"),
    ];
    let faults = prop_oneof![Just("diverge_steps"), Just("nan_steps"), Just("samples")];
    (
        prop::collection::vec((top, toml_value()), 0..6),
        prop::collection::vec((mdeq, toml_value()), 0..5),
        prop::collection::vec((faults, toml_value()), 0..3),
    )
        .prop_map(|(top, mdeq, faults)| {
            let mut text = String::new();
            for (k, v) in top {
                text += &format!("{k} = {v}\n");
            }
            if !mdeq.is_empty() {
                text += "[mdeq]\n";
                for (k, v) in mdeq {
                    text += &format!("{k} = {v}\n");
                }
            }
            if !faults.is_empty() {
                text += "[faults]\n";
                for (k, v) in faults {
                    text += &format!("{k} = {v}\n");
                }
            }
            text
        })
}

#[test]
fn fuzz_config() {
    let wide = TrainConfig {
        model: "tiny".into(),
        rgb32: true,
        ..TrainConfig::default()
    };
    let seeds = vec![
        TrainConfig::default().to_toml().into_bytes(),
        wide.to_toml().into_bytes(),
        b"epochs = 2\n[mdeq]\nchannels = [16, 32]\ngroups = 8\n[faults]\nnan_steps = [3]\n"
            .to_vec(),
    ];
    let strategy = prop_oneof![
        1 => toml_text(),
        1 => mutated(seeds).prop_map(|b| String::from_utf8_lossy(&b).into_owned()),
    ];
    fuzz(
        "config",
        strategy,
        |text| text.clone().into_bytes(),
        |text| {
            let config = TrainConfig::from_toml_str(text, Path::new("fuzz.toml"))
                .map_err(|e| e.to_string())?;
            config.validate().map_err(|e| e.to_string())?;
            config.model_config().map(|_| ()).map_err(|e| e.to_string())
        },
        // Parse errors name the file; value errors name the setting.
        |m| m.contains("fuzz.toml") || m.contains('`') || m.contains("mdeq"),
    );
}
