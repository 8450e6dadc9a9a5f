//! Gradient check of every backward mode on the documented toy problem (f64, CPU).
//!
//! `f(z, x) = tanh(z W + x U + b)` with `‖W‖₂ = ρ`, loss `L = Σ c ⊙ z*`; see `deq_core::toy`.
//! Each mode's gradient of (W, U, b, x) is compared with the exact implicit gradient (Broyden
//! forward and adjoint solves to 1e-13), and the exact implicit gradient with central finite
//! differences of the loss.
//!
//! ```text
//! cargo run --release -p deq-core --example gradcheck -- --json
//! ```
use burn::tensor::{DType, Device, FloatDType, Tensor};
use clap::Parser;
use deq_core::toy::{TOY_PARAMETERS, Toy, toy_fn};
use deq_core::{BackwardMode, DeqConfig, DeqFunction, SolverConfig, SolverKind, StopMode};
use serde_json::{Value, json};

/// Gradient check of every backward mode on the toy DEQ.
#[derive(Parser)]
struct Args {
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
    /// Seed of the toy problem.
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// Batch size.
    #[arg(long, default_value_t = 4)]
    batch: usize,
    /// State dimension.
    #[arg(long, default_value_t = 16)]
    dim: usize,
    /// Input dimension.
    #[arg(long, default_value_t = 8)]
    input: usize,
    /// Spectral norm of W.
    #[arg(long, default_value_t = 0.7)]
    rho: f64,
    /// Relative-residual tolerance of the forward Broyden solve for the compared modes.
    #[arg(long, default_value_t = 1e-6)]
    tol: f64,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut device = deq_core::device::cpu();
    device
        .configure(FloatDType::F64)
        .map_err(|e| anyhow::anyhow!("cannot use f64 on {device:?}: {e:?}"))?;
    let toy = Toy::new(args.seed, args.batch, args.dim, args.input, args.rho);

    let exact = gradients(&toy, &device, &deq_core::toy::exact_config())?;

    // Finite differences of the loss for the exact implicit gradient.
    let h = 1e-6;
    let fd_solver = SolverConfig::new(SolverKind::broyden(100))
        .with_max_iter(200)
        .with_tol(1e-14)
        .with_stop(StopMode::Absolute);
    let mut fd = Vec::new();
    for (which, size) in toy.sizes().into_iter().enumerate() {
        let grad: Vec<f64> = (0..size)
            .map(|i| {
                Ok((loss(&toy, &device, &fd_solver, which, i, h)?
                    - loss(&toy, &device, &fd_solver, which, i, -h)?)
                    / (2.0 * h))
            })
            .collect::<anyhow::Result<_>>()?;
        fd.push(grad);
    }
    let fd_report = json!({
        "mode": "implicit",
        "reference": "central finite differences",
        "h": h,
        "cosine": cosine(&concat(&exact), &concat(&fd)),
        "rel_err": rel_err(&concat(&exact), &concat(&fd)),
        "per_parameter": per_parameter(&exact, &fd),
    });

    let forward = SolverConfig::new(SolverKind::broyden(30))
        .with_max_iter(50)
        .with_tol(args.tol);
    let modes = [
        "implicit",
        "implicit:solver=anderson,memory=5",
        "implicit:solver=fixed_point,max_iter=100",
        "shine",
        "shine:fallback=1.8",
        "shine:refine=1",
        "shine:refine=5",
        "shine:refine=20",
        "jfb",
        "jfb:refine=5",
        "phantom:k=5,tau=0.5",
        "unrolled",
    ];
    let mut rows = Vec::new();
    for text in modes {
        let mode: BackwardMode = text.parse()?;
        let config = DeqConfig::new(forward.clone()).with_backward(mode.clone());
        let started = std::time::Instant::now();
        let (grads, vjps, forward_iters) = gradients_with_stats(&toy, &device, &config)?;
        let seconds = started.elapsed().as_secs_f64();
        rows.push(json!({
            "mode": mode.to_string(),
            "cosine": cosine(&concat(&grads), &concat(&exact)),
            "rel_err": rel_err(&concat(&grads), &concat(&exact)),
            "vjp_evaluations": vjps,
            "forward_iterations": forward_iters,
            "seconds": seconds,
            "per_parameter": per_parameter(&grads, &exact),
        }));
    }

    let report = json!({
        "problem": {
            "f": "tanh(z W + x U + b)", "loss": "sum(c * z*)", "seed": args.seed, "batch": args.batch,
            "dim": args.dim, "input": args.input, "rho": args.rho, "dtype": "f64",
            "forward": format!("broyden(memory 30), relative tol {:e}, at most 50 iterations", args.tol),
            "reference": "implicit with Broyden forward and adjoint solves to absolute tol 1e-13",
        },
        "finite_difference": fd_report,
        "modes": rows,
    });
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!(
            "toy DEQ f(z, x) = tanh(zW + xU + b), ‖W‖ = {}, batch {}, dim {}, f64",
            args.rho, args.batch, args.dim
        );
        println!(
            "exact implicit vs finite differences: rel_err {:.3e}",
            report["finite_difference"]["rel_err"].as_f64().unwrap()
        );
        println!(
            "{:<45} {:>10} {:>11} {:>6}",
            "mode", "cosine", "rel_err", "VJPs"
        );
        for row in report["modes"].as_array().unwrap() {
            println!(
                "{:<45} {:>10.6} {:>11.3e} {:>6}",
                row["mode"].as_str().unwrap(),
                row["cosine"].as_f64().unwrap(),
                row["rel_err"].as_f64().unwrap(),
                row["vjp_evaluations"]
            );
        }
    }
    Ok(())
}

fn gradients(toy: &Toy, device: &Device, config: &DeqConfig) -> anyhow::Result<Vec<Vec<f64>>> {
    Ok(gradients_with_stats(toy, device, config)?.0)
}

/// Gradients of L for (W, U, b, x), the VJP count of the backward and the forward iterations.
fn gradients_with_stats(
    toy: &Toy,
    device: &Device,
    config: &DeqConfig,
) -> anyhow::Result<(Vec<Vec<f64>>, usize, usize)> {
    let deq = config.init()?;
    let params = toy.tracked_inputs(device, DType::F64);
    let out = deq.forward(&toy_fn(), &params, toy.z0(device, DType::F64))?;
    let grads = (out.z.clone() * toy.c(device, DType::F64)).sum().backward();
    let (w, u, b, x) = params;
    let g = [w, u, b, x]
        .iter()
        .map(|p| {
            p.grad(&grads)
                .map(|g| g.into_data().iter::<f64>().collect())
                .ok_or_else(|| anyhow::anyhow!("missing gradient"))
        })
        .collect::<anyhow::Result<_>>()?;
    let vjps = out.backward.get().map_or(0, |r| r.vjp_evaluations);
    Ok((g, vjps, out.stats.max_iterations()))
}

fn loss(
    toy: &Toy,
    device: &Device,
    solver: &SolverConfig,
    which: usize,
    index: usize,
    delta: f64,
) -> anyhow::Result<f64> {
    let params = toy.inputs(device, DType::F64, which, index, delta);
    let f = toy_fn();
    let mut map = |z: Tensor<2>| f.forward(z, &params);
    let result = solver.solve(&mut map, toy.z0(device, DType::F64), solver.max_iter)?;
    anyhow::ensure!(
        result.stats.all_converged(),
        "finite-difference solve did not converge"
    );
    Ok(result
        .z
        .into_data()
        .iter::<f64>()
        .zip(&toy.c)
        .map(|(z, c)| z * c)
        .sum())
}

fn concat(g: &[Vec<f64>]) -> Vec<f64> {
    g.concat()
}

fn norm(a: &[f64]) -> f64 {
    a.iter().map(|x| x * x).sum::<f64>().sqrt()
}

fn rel_err(a: &[f64], exact: &[f64]) -> f64 {
    norm(&a.iter().zip(exact).map(|(x, y)| x - y).collect::<Vec<_>>()) / norm(exact)
}

fn cosine(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum::<f64>() / (norm(a) * norm(b))
}

fn per_parameter(a: &[Vec<f64>], exact: &[Vec<f64>]) -> Value {
    let map: serde_json::Map<String, Value> = TOY_PARAMETERS
        .iter()
        .zip(a.iter().zip(exact))
        .map(|(name, (g, e))| {
            (
                name.to_string(),
                json!({"cosine": cosine(g, e), "rel_err": rel_err(g, e)}),
            )
        })
        .collect();
    Value::Object(map)
}
