//! What a solver iterates: a map on the whole batch that may also be evaluated on part of it.
use burn::tensor::{Device, Int, Tensor, TensorData};

/// The map `z ↦ F(z)` that a solver iterates, on batched states `z`: `[batch, dim]`.
///
/// Every closure `FnMut(Tensor<2>) -> Tensor<2>` is one, evaluated on the whole batch. A map
/// whose value for each sample depends on that sample alone can also implement
/// [`eval_rows`](BatchMap::eval_rows): once some samples have stopped, the solvers then
/// evaluate only the samples still iterating (on a CPU backend, where the cost of `F` grows
/// with the number of samples; a GPU runs the whole batch for about the same time).
pub trait BatchMap {
    /// `F(z)`; `z`: `[batch, dim]`.
    fn eval(&mut self, z: Tensor<2>) -> Tensor<2>;

    /// `F` on the samples `rows` of the batch only: `rows` are ascending indices into the
    /// batch, `z`: `[rows.len(), dim]` their states in that order; returns
    /// `[rows.len(), dim]`. `None` (the default): `F` cannot be evaluated on part of the
    /// batch, and the solver evaluates all of it.
    fn eval_rows(&mut self, z: Tensor<2>, rows: &[usize]) -> Option<Tensor<2>> {
        let _ = (z, rows);
        None
    }
}

impl<F: FnMut(Tensor<2>) -> Tensor<2>> BatchMap for F {
    fn eval(&mut self, z: Tensor<2>) -> Tensor<2> {
        self(z)
    }
}

/// The samples `rows` (indices into the batch) as an index tensor on `device`, for `select`
/// and `select_assign` along the batch axis (as in [`BatchMap::eval_rows`] and
/// [`crate::DeqFunction::forward_rows`]).
pub fn row_index(rows: &[usize], device: &Device) -> Tensor<1, Int> {
    Tensor::from_data(
        TensorData::new(rows.iter().map(|&b| b as i64).collect(), [rows.len()]),
        device,
    )
}

/// The runs of consecutive `true` entries of `rows`, as `start..end` index pairs.
pub(crate) fn row_runs(rows: &[bool]) -> Vec<(usize, usize)> {
    let mut runs = Vec::new();
    let mut start = None;
    for (b, &r) in rows.iter().chain(std::iter::once(&false)).enumerate() {
        match (r, start) {
            (true, None) => start = Some(b),
            (false, Some(s)) => {
                runs.push((s, b));
                start = None;
            }
            _ => {}
        }
    }
    runs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn row_runs_are_the_consecutive_selected_rows() {
        assert_eq!(row_runs(&[]), vec![]);
        assert_eq!(row_runs(&[false, false]), vec![]);
        assert_eq!(row_runs(&[true, true, true]), vec![(0, 3)]);
        assert_eq!(
            row_runs(&[true, false, true, true, false, false, true]),
            vec![(0, 1), (2, 4), (6, 7)]
        );
    }
}
