//! Bundled and generated data for the bi-level experiments.
use super::BilevelError;
use super::hypergrad::BilevelProblem;
use super::logistic::{LogisticLoss, MultinomialLoss, Ridge, RidgeLogistic};
use super::sparse::CsrMatrix;
use crate::toy::SplitMix;

const BREAST_CANCER: &str = include_str!("../../../assets/breast_cancer/breast_cancer.csv");

/// The breast-cancer data set (569 × 30), features standardised to zero mean and unit
/// variance, labels ±1 (−1 malignant, +1 benign).
pub fn breast_cancer() -> Result<(CsrMatrix, Vec<f64>), BilevelError> {
    let mut lines = BREAST_CANCER.lines();
    let header = lines
        .next()
        .ok_or_else(|| BilevelError::Data("breast_cancer.csv is empty".into()))?;
    let dims: Vec<usize> = header
        .split(',')
        .take(2)
        .map(|v| v.trim().parse().unwrap_or(0))
        .collect();
    let (n, d) = (dims[0], dims[1]);
    let mut x = Vec::with_capacity(n * d);
    let mut y = Vec::with_capacity(n);
    for (i, line) in lines.enumerate() {
        let values: Vec<f64> = line
            .split(',')
            .map(|v| v.trim().parse::<f64>())
            .collect::<Result<_, _>>()
            .map_err(|e| BilevelError::Data(format!("breast_cancer.csv line {}: {e}", i + 2)))?;
        if values.len() != d + 1 {
            return Err(BilevelError::Data(format!(
                "breast_cancer.csv line {}: {} fields, expected {}",
                i + 2,
                values.len(),
                d + 1
            )));
        }
        x.extend_from_slice(&values[..d]);
        y.push(if values[d] == 0.0 { -1.0 } else { 1.0 });
    }
    if y.len() != n {
        return Err(BilevelError::Data(format!(
            "breast_cancer.csv has {} samples, header says {n}",
            y.len()
        )));
    }
    for c in 0..d {
        let mean = (0..n).map(|r| x[r * d + c]).sum::<f64>() / n as f64;
        let var = (0..n).map(|r| (x[r * d + c] - mean).powi(2)).sum::<f64>() / n as f64;
        let sd = var.sqrt().max(1e-12);
        for r in 0..n {
            x[r * d + c] = (x[r * d + c] - mean) / sd;
        }
    }
    Ok((CsrMatrix::from_dense(n, d, &x)?, y))
}

/// A random split of `n` samples into 90 % inner training, 5 % outer (validation) and 5 %
/// held-out test, as the reference experiments.
pub fn split_indices(n: usize, seed: u64) -> Result<[Vec<usize>; 3], BilevelError> {
    let mut order: Vec<usize> = (0..n).collect();
    let mut rng = SplitMix::new(seed);
    for i in (1..n).rev() {
        let j = (rng.next_u64() % (i as u64 + 1)) as usize;
        order.swap(i, j);
    }
    let val = (n as f64 * 0.05).round() as usize;
    let test = val;
    if val == 0 || n <= val + test {
        return Err(BilevelError::Data(format!(
            "{n} samples are too few for a 90/5/5 split (a split would be empty)"
        )));
    }
    let train = n - val - test;
    Ok([
        order[..train].to_vec(),
        order[train..train + val].to_vec(),
        order[train + val..].to_vec(),
    ])
}

/// The bi-level problem on a split: inner = training rows, outer = validation rows; also
/// returns the held-out test loss.
pub fn split_problem(
    a: &CsrMatrix,
    y: &[f64],
    seed: u64,
) -> Result<(BilevelProblem, LogisticLoss), BilevelError> {
    let [train, val, test] = split_indices(a.rows(), seed)?;
    let part = |rows: &[usize]| LogisticLoss {
        a: a.select_rows(rows),
        y: rows.iter().map(|&r| y[r]).collect(),
    };
    for (name, rows) in [("training", &train), ("validation", &val), ("test", &test)] {
        let labels: Vec<f64> = rows.iter().map(|&r| y[r]).collect();
        if !(labels.contains(&1.0) && labels.contains(&-1.0)) {
            return Err(BilevelError::Data(format!(
                "the {name} split (seed {seed}) holds one class only"
            )));
        }
    }
    Ok((
        BilevelProblem {
            inner: RidgeLogistic { loss: part(&train) },
            outer: part(&val),
        },
        part(&test),
    ))
}

/// A synthetic sparse binary task: `rows × cols` with about `density · cols` non-zeros per row
/// (uniform columns, N(0, 1) values, rows L2-normalised like tf-idf), labels
/// `sign(aᵢᵀw + noise · εᵢ)` for a random teacher `w` (scaled so that `aᵢᵀw` has unit spread)
/// and standard normal `εᵢ`. At real-sim shape: `synthetic_sparse(72_309, 20_958, 0.0024, …)`.
pub fn synthetic_sparse(
    rows: usize,
    cols: usize,
    density: f64,
    noise: f64,
    seed: u64,
) -> Result<(CsrMatrix, Vec<f64>), BilevelError> {
    if rows == 0
        || cols == 0
        || !(density > 0.0 && density <= 1.0)
        || !(noise.is_finite() && noise >= 0.0)
    {
        return Err(BilevelError::Setting {
            field: "synthetic",
            value: format!("rows {rows}, cols {cols}, density {density}, noise {noise}"),
            reason: "needs rows, cols ≥ 1, density in (0, 1], noise ≥ 0",
        });
    }
    let mut rng = SplitMix::new(seed);
    let per_row = ((density * cols as f64).round() as usize).clamp(1, cols);
    let teacher: Vec<f64> = rng
        .normals(cols)
        .iter()
        .map(|v| v * (cols as f64 / per_row as f64).sqrt())
        .collect();
    let mut data = Vec::with_capacity(rows);
    let mut labels = Vec::with_capacity(rows);
    for _ in 0..rows {
        let mut row: Vec<(usize, f64)> = (0..per_row)
            .map(|_| ((rng.next_u64() % cols as u64) as usize, rng.normal()))
            .collect();
        row.sort_by_key(|&(c, _)| c);
        row.dedup_by_key(|e| e.0);
        let norm = row
            .iter()
            .map(|(_, v)| v * v)
            .sum::<f64>()
            .sqrt()
            .max(1e-12);
        row.iter_mut().for_each(|e| e.1 /= norm);
        let score: f64 =
            row.iter().map(|&(c, v)| v * teacher[c]).sum::<f64>() + noise * rng.normal();
        labels.push(if score >= 0.0 { 1.0 } else { -1.0 });
        data.push(row);
    }
    Ok((CsrMatrix::from_rows(cols, data)?, labels))
}

/// The multinomial bi-level problem on a 90/5/5 split: labels in `0..classes`; errors on a label
/// out of range or a split missing a class it needs (training must see every class).
pub fn split_multinomial(
    a: &CsrMatrix,
    labels: &[usize],
    classes: usize,
    seed: u64,
) -> Result<(BilevelProblem<MultinomialLoss>, MultinomialLoss), BilevelError> {
    if classes < 2 {
        return Err(BilevelError::Data(format!(
            "multinomial regression needs at least 2 classes, got {classes}"
        )));
    }
    if let Some((i, &l)) = labels.iter().enumerate().find(|(_, l)| **l >= classes) {
        return Err(BilevelError::Data(format!(
            "sample {i} has label {l}, outside 0..{classes}"
        )));
    }
    let [train, val, test] = split_indices(a.rows(), seed)?;
    let part = |rows: &[usize]| MultinomialLoss {
        a: a.select_rows(rows),
        labels: rows.iter().map(|&r| labels[r]).collect(),
        classes,
    };
    for c in 0..classes {
        if !train.iter().any(|&r| labels[r] == c) {
            return Err(BilevelError::Data(format!(
                "class {c} is absent from the training split (seed {seed})"
            )));
        }
    }
    Ok((
        BilevelProblem {
            inner: Ridge { loss: part(&train) },
            outer: part(&val),
        },
        part(&test),
    ))
}
