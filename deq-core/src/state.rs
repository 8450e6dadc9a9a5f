//! Multiscale states: a `Vec` of branch tensors `[batch, C, H, W]` flattened to `[batch, dim]`.
use burn::tensor::Tensor;

use crate::error::DeqError;

/// The per-branch shapes `(C, H, W)` of a multiscale state; flattens a list of branch tensors
/// into one `[batch, dim]` tensor (the solvers' layout) and back. Both directions are reshapes
/// plus one concatenation / narrow per branch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateShape {
    branches: Vec<[usize; 3]>,
}

impl StateShape {
    /// Shapes `(C, H, W)` per branch.
    pub fn new(branches: Vec<[usize; 3]>) -> Self {
        Self { branches }
    }

    /// The shape of the given branch tensors (batch dimension ignored).
    pub fn of(branches: &[Tensor<4>]) -> Self {
        Self::new(
            branches
                .iter()
                .map(|t| {
                    let [_, c, h, w] = t.dims();
                    [c, h, w]
                })
                .collect(),
        )
    }

    /// Per-branch shapes.
    pub fn branches(&self) -> &[[usize; 3]] {
        &self.branches
    }

    /// Total flattened size `Σ C·H·W`.
    pub fn dim(&self) -> usize {
        self.branches.iter().map(|[c, h, w]| c * h * w).sum()
    }

    /// `Vec<[batch, C, H, W]>` to `[batch, dim]`.
    pub fn flatten(&self, branches: Vec<Tensor<4>>) -> Result<Tensor<2>, DeqError> {
        if branches.len() != self.branches.len() {
            return Err(DeqError::ShapeMismatch {
                what: "number of state branches",
                expected: vec![self.branches.len()],
                found: vec![branches.len()],
            });
        }
        let batch = branches.first().map(|t| t.dims()[0]).unwrap_or(0);
        let mut flat = Vec::with_capacity(branches.len());
        for (t, &[c, h, w]) in branches.into_iter().zip(&self.branches) {
            let dims = t.dims();
            if dims != [batch, c, h, w] {
                return Err(DeqError::ShapeMismatch {
                    what: "state branch",
                    expected: vec![batch, c, h, w],
                    found: dims.to_vec(),
                });
            }
            flat.push(t.reshape([batch, c * h * w]));
        }
        Ok(if flat.len() == 1 {
            flat.pop().unwrap()
        } else {
            Tensor::cat(flat, 1)
        })
    }

    /// `[batch, dim]` to `Vec<[batch, C, H, W]>`.
    pub fn unflatten(&self, z: Tensor<2>) -> Result<Vec<Tensor<4>>, DeqError> {
        let [batch, dim] = z.dims();
        if dim != self.dim() {
            return Err(DeqError::ShapeMismatch {
                what: "flattened state",
                expected: vec![batch, self.dim()],
                found: vec![batch, dim],
            });
        }
        let mut start = 0;
        Ok(self
            .branches
            .iter()
            .map(|&[c, h, w]| {
                let size = c * h * w;
                let branch = z.clone().narrow(1, start, size).reshape([batch, c, h, w]);
                start += size;
                branch
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Distribution;

    #[test]
    fn flatten_round_trips_and_checks_shapes() {
        let device = crate::device::cpu();
        let branches = vec![
            Tensor::<4>::random([3, 4, 8, 8], Distribution::Default, &device),
            Tensor::<4>::random([3, 6, 4, 4], Distribution::Default, &device),
        ];
        let shape = StateShape::of(&branches);
        assert_eq!(shape.dim(), 4 * 64 + 6 * 16);
        let flat = shape.flatten(branches.clone()).unwrap();
        assert_eq!(flat.dims(), [3, shape.dim()]);
        for (a, b) in shape.unflatten(flat).unwrap().into_iter().zip(branches) {
            a.into_data().assert_eq(&b.into_data(), true);
        }
        let wrong = vec![Tensor::<4>::zeros([3, 4, 8, 8], &device)];
        assert!(matches!(
            shape.flatten(wrong),
            Err(DeqError::ShapeMismatch {
                what: "number of state branches",
                ..
            })
        ));
        let wrong = vec![
            Tensor::<4>::zeros([3, 4, 8, 8], &device),
            Tensor::<4>::zeros([3, 6, 4, 5], &device),
        ];
        assert!(matches!(
            shape.flatten(wrong),
            Err(DeqError::ShapeMismatch {
                what: "state branch",
                ..
            })
        ));
        assert!(shape.unflatten(Tensor::zeros([3, 5], &device)).is_err());
    }
}
