//! The WGPU path against the CPU path (flex), in f32: the gradient of every backward mode on
//! the toy DEQ, and MDEQ training steps from the same weights, agree to a relative 1e-3; the
//! implicit gradient on WGPU is within 1e-4 of the exact (f64, tight) one. Runs where the
//! `wgpu` feature is compiled in (CI: on software Vulkan, lavapipe); with no adapter the
//! tests fail with the message that says what to install.
#![cfg(feature = "wgpu")]

use deq_train::backend;
use deq_train::crosscheck::{self, Comparison};

fn devices() -> (burn::tensor::Device, burn::tensor::Device) {
    let wgpu = backend::device("wgpu").unwrap_or_else(|e| panic!("{e}"));
    (wgpu, backend::cpu())
}

fn report(results: &[Comparison]) {
    for c in results {
        println!(
            "{:<32} {:<50} rel diff {:.2e} (worst tensor {:.2e}){}",
            c.case,
            c.mode,
            c.rel_diff,
            c.worst_tensor,
            c.rel_to_exact
                .map_or(String::new(), |e| format!(", vs exact {e:.2e}"))
        );
    }
}

#[test]
fn wgpu_names_its_adapter() {
    let described = backend::describe("wgpu").unwrap_or_else(|e| panic!("{e}"));
    println!("adapter: {described}");
    assert!(!described.trim().is_empty());
}

#[test]
fn toy_gradients_of_every_mode_match_the_cpu() {
    let (wgpu, cpu) = devices();
    let results = crosscheck::toy(&wgpu, &cpu, &cpu, &crosscheck::toy_modes(), &mut |c| {
        report(std::slice::from_ref(c))
    })
    .unwrap();
    assert_eq!(results.len(), crosscheck::toy_modes().len());
    for c in &results {
        assert!(c.passes(), "{} {}: {:e}", c.case, c.mode, c.rel_diff);
    }
    let implicit = &results[0];
    assert!(implicit.mode.starts_with("implicit"));
    let exact = implicit.rel_to_exact.unwrap();
    assert!(exact <= 1e-4, "implicit on wgpu vs exact: {exact:e}");
}

#[test]
fn mdeq_training_steps_match_the_cpu() {
    let (wgpu, cpu) = devices();
    let modes = crosscheck::mdeq_modes();
    let results = crosscheck::mdeq(&wgpu, &cpu, &modes, 2, &mut |c| {
        report(std::slice::from_ref(c))
    })
    .unwrap();
    assert_eq!(results.len(), modes.len() * 2 * 2);
    for c in &results {
        assert!(c.passes(), "{} {}: {:e}", c.case, c.mode, c.rel_diff);
    }
}
