//! Small dense linear algebra on the host (f64), for the few places that need an exact solve
//! of a small system.

/// Solves `A x = b` for a row-major `n × n` matrix `A` by Gaussian elimination with partial
/// pivoting. `None` if `A` is singular (a pivot below 1e-300 in magnitude) or anything is not
/// finite.
pub fn solve(mut a: Vec<f64>, mut b: Vec<f64>) -> Option<Vec<f64>> {
    let n = b.len();
    if a.len() != n * n {
        return None;
    }
    for col in 0..n {
        let pivot =
            (col..n).max_by(|&i, &j| a[i * n + col].abs().total_cmp(&a[j * n + col].abs()))?;
        if !(a[pivot * n + col].abs() > 1e-300) {
            return None;
        }
        if pivot != col {
            for j in 0..n {
                a.swap(pivot * n + j, col * n + j);
            }
            b.swap(pivot, col);
        }
        for r in col + 1..n {
            let factor = a[r * n + col] / a[col * n + col];
            if factor != 0.0 {
                for j in col..n {
                    a[r * n + j] -= factor * a[col * n + j];
                }
                b[r] -= factor * b[col];
            }
        }
    }
    let mut x = vec![0.0; n];
    for r in (0..n).rev() {
        x[r] = (b[r] - (r + 1..n).map(|j| a[r * n + j] * x[j]).sum::<f64>()) / a[r * n + r];
    }
    x.iter().all(|v| v.is_finite()).then_some(x)
}

#[cfg(test)]
mod tests {
    #[test]
    fn solves_and_refuses_singular_systems() {
        let x = super::solve(vec![0.0, 2.0, 1.0, 1.0], vec![4.0, 3.0]).unwrap();
        assert!((x[0] - 1.0).abs() < 1e-15 && (x[1] - 2.0).abs() < 1e-15);
        assert!(super::solve(vec![1.0, 2.0, 2.0, 4.0], vec![1.0, 2.0]).is_none());
        assert!(super::solve(vec![f64::NAN, 0.0, 0.0, 1.0], vec![1.0, 1.0]).is_none());
    }
}
