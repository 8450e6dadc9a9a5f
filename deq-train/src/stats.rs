//! Summary statistics shared by the training loop, evaluation, plots and the bi-level runs.

/// The median of `values` (the mean of the two middle values for an even count; sorts the
/// slice in place), or `None` for an empty slice.
pub fn median(values: &mut [f64]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let n = values.len();
    Some(if n % 2 == 1 {
        values[n / 2]
    } else {
        0.5 * (values[n / 2 - 1] + values[n / 2])
    })
}
