//! Anderson acceleration (type II, with ridge regularisation and mixing).
use burn::tensor::{Tensor, TensorData};

use super::StopRule;
use super::map::BatchMap;
use super::tracker::Tracker;

/// Anderson acceleration with memory `memory`, ridge `ridge` and mixing `mixing` (β).
///
/// With histories `X`, `F = F(X)` and `G = F − X`, each step solves, per sample,
/// `min ‖Gᵀα‖² + ridge ‖α‖²` subject to `Σα = 1` and moves to
/// `β Σ αᵢ F(xᵢ) + (1 − β) Σ αᵢ xᵢ`. The small `(n+1)×(n+1)` systems are solved on the host in
/// f64; a singular or non-finite system falls back to a plain fixed-point step for that sample.
pub(crate) fn anderson(
    map: &mut dyn BatchMap,
    z0: Tensor<2>,
    fz0: Tensor<2>,
    rule: StopRule,
    max_iter: usize,
    memory: usize,
    ridge: f64,
    mixing: f64,
) -> Tracker {
    let [batch, dim] = z0.dims();
    let mut tracker = Tracker::new(&z0, rule);
    let (mut z, mut fz) = (z0, fz0);
    tracker.start(&mut z, &mut fz);
    let mut xs: Vec<Tensor<2>> = Vec::with_capacity(memory);
    let mut fs: Vec<Tensor<2>> = Vec::with_capacity(memory);
    for iter in 1..=max_iter {
        if !tracker.any_active() {
            break;
        }
        if xs.len() == memory {
            xs.remove(0);
            fs.remove(0);
        }
        xs.push(z.clone());
        fs.push(fz.clone());
        let n = xs.len();
        let x_hist = Tensor::stack::<3>(xs.clone(), 1); // [batch, n, dim]
        let f_hist = Tensor::stack::<3>(fs.clone(), 1);
        let g = f_hist.clone() - x_hist.clone();
        let gram: Vec<f64> = g
            .clone()
            .matmul(g.swap_dims(1, 2))
            .into_data()
            .iter::<f64>()
            .collect();
        let mut alpha = vec![0.0f64; batch * n];
        for b in 0..batch {
            let weights = constrained_least_squares(&gram[b * n * n..(b + 1) * n * n], n, ridge)
                .unwrap_or_else(|| {
                    let mut w = vec![0.0; n];
                    w[n - 1] = 1.0;
                    w
                });
            alpha[b * n..(b + 1) * n].copy_from_slice(&weights);
        }
        let alpha = Tensor::<3>::from_data(
            TensorData::new(alpha, [batch, 1, n]),
            (&z.device(), z.dtype()),
        );
        let mixed_f = alpha.clone().matmul(f_hist).reshape([batch, dim]);
        let step = if mixing == 1.0 {
            mixed_f
        } else {
            let mixed_x = alpha.matmul(x_hist).reshape([batch, dim]);
            mixed_f * mixing + mixed_x * (1.0 - mixing)
        };
        tracker.advance(iter, map, step, &mut z, &mut fz);
    }
    tracker
}

/// Solves `[0 1ᵀ; 1 (K + λ I)] [ν; α] = [1; 0]` for α (`K` the row-major `n × n` Gram matrix,
/// normalised by its largest diagonal entry so that the ridge regularises at every scale).
/// Returns `None` if the system is singular or not finite.
fn constrained_least_squares(gram: &[f64], n: usize, ridge: f64) -> Option<Vec<f64>> {
    let size = n + 1;
    let scale = (0..n)
        .map(|i| gram[i * n + i])
        .fold(0.0f64, f64::max)
        .max(f64::MIN_POSITIVE);
    let mut a = vec![0.0f64; size * size];
    let mut rhs = vec![0.0f64; size];
    rhs[0] = 1.0;
    for i in 1..size {
        a[i] = 1.0;
        a[i * size] = 1.0;
        for j in 1..size {
            a[i * size + j] = gram[(i - 1) * n + (j - 1)] / scale;
        }
        a[i * size + i] += ridge;
    }
    crate::dense::solve(a, rhs).map(|x| x[1..].to_vec())
}

#[cfg(test)]
mod tests {
    use super::constrained_least_squares;

    #[test]
    fn weights_sum_to_one_and_pick_the_smaller_residual() {
        // Two residuals: g1 = (1, 0), g2 = (0, 2): K = diag(1, 4). The optimum is α ∝ (4, 1).
        let alpha = constrained_least_squares(&[1.0, 0.0, 0.0, 4.0], 2, 0.0).unwrap();
        assert!((alpha[0] + alpha[1] - 1.0).abs() < 1e-12);
        assert!((alpha[0] - 0.8).abs() < 1e-12, "{alpha:?}");
    }

    #[test]
    fn singular_system_returns_none_without_ridge() {
        assert!(constrained_least_squares(&[f64::NAN, 0.0, 0.0, 1.0], 2, 0.0).is_none());
    }
}
