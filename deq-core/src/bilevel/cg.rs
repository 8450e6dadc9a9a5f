//! Conjugate gradient for symmetric positive definite systems.

/// Result of [`conjugate_gradient`].
#[derive(Debug, Clone)]
pub struct CgResult {
    /// The solution estimate.
    pub x: Vec<f64>,
    /// Iterations run.
    pub iterations: usize,
    /// `‖b − A x‖ / ‖b‖` at the end.
    pub rel_residual: f64,
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Solves `A x = b` from `x0` (warm start) until `‖b − A x‖ ≤ rel_tol ‖b‖` or `max_iter`
/// iterations; `matvec` computes `A v`.
pub fn conjugate_gradient(
    mut matvec: impl FnMut(&[f64]) -> Vec<f64>,
    b: &[f64],
    x0: Vec<f64>,
    rel_tol: f64,
    max_iter: usize,
) -> CgResult {
    let bnorm = dot(b, b).sqrt();
    let mut x = x0;
    if bnorm == 0.0 {
        return CgResult {
            x: vec![0.0; b.len()],
            iterations: 0,
            rel_residual: 0.0,
        };
    }
    let ax = matvec(&x);
    let mut r: Vec<f64> = b.iter().zip(&ax).map(|(b, a)| b - a).collect();
    let mut p = r.clone();
    let mut rr = dot(&r, &r);
    let mut iterations = 0;
    while iterations < max_iter && rr.sqrt() > rel_tol * bnorm {
        let ap = matvec(&p);
        let pap = dot(&p, &ap);
        if !(pap > 0.0) {
            break; // not positive definite along p (or non-finite): stop with the current x
        }
        let alpha = rr / pap;
        for i in 0..x.len() {
            x[i] += alpha * p[i];
            r[i] -= alpha * ap[i];
        }
        let rr_new = dot(&r, &r);
        let beta = rr_new / rr;
        for i in 0..p.len() {
            p[i] = r[i] + beta * p[i];
        }
        rr = rr_new;
        iterations += 1;
    }
    CgResult {
        x,
        iterations,
        rel_residual: rr.sqrt() / bnorm,
    }
}
