//! Compressed sparse rows, with the two products the logistic models need.
use super::BilevelError;

/// A sparse matrix in CSR form (`f64` values).
#[derive(Debug, Clone, PartialEq)]
pub struct CsrMatrix {
    rows: usize,
    cols: usize,
    indptr: Vec<usize>,
    indices: Vec<usize>,
    values: Vec<f64>,
}

impl CsrMatrix {
    /// Builds a matrix from its rows, each a list of `(column, value)`; the columns of a row
    /// need not be sorted, duplicates are summed. Errors on a column ≥ `cols` or a non-finite
    /// value.
    pub fn from_rows(cols: usize, rows: Vec<Vec<(usize, f64)>>) -> Result<Self, BilevelError> {
        let mut indptr = Vec::with_capacity(rows.len() + 1);
        let (mut indices, mut values) = (Vec::new(), Vec::new());
        indptr.push(0);
        for (r, mut row) in rows.into_iter().enumerate() {
            row.sort_by_key(|&(c, _)| c);
            for (c, v) in row {
                if c >= cols {
                    return Err(BilevelError::Data(format!(
                        "row {r}: column {c} out of range (matrix has {cols} columns)"
                    )));
                }
                if !v.is_finite() {
                    return Err(BilevelError::Data(format!(
                        "row {r}, column {c}: non-finite value {v}"
                    )));
                }
                if indices.len() > *indptr.last().unwrap() && *indices.last().unwrap() == c {
                    *values.last_mut().unwrap() += v;
                } else {
                    indices.push(c);
                    values.push(v);
                }
            }
            indptr.push(indices.len());
        }
        Ok(Self {
            rows: indptr.len() - 1,
            cols,
            indptr,
            indices,
            values,
        })
    }

    /// A dense row-major `rows × cols` matrix, zeros dropped.
    pub fn from_dense(rows: usize, cols: usize, data: &[f64]) -> Result<Self, BilevelError> {
        if data.len() != rows * cols {
            return Err(BilevelError::Data(format!(
                "dense data has {} values, expected {rows}×{cols}",
                data.len()
            )));
        }
        Self::from_rows(
            cols,
            (0..rows)
                .map(|r| {
                    (0..cols)
                        .filter(|&c| data[r * cols + c] != 0.0)
                        .map(|c| (c, data[r * cols + c]))
                        .collect()
                })
                .collect(),
        )
    }

    /// Number of rows.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Number of columns.
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Number of stored entries.
    pub fn nnz(&self) -> usize {
        self.values.len()
    }

    /// Row `r` as `(columns, values)`.
    pub fn row(&self, r: usize) -> (&[usize], &[f64]) {
        let (a, b) = (self.indptr[r], self.indptr[r + 1]);
        (&self.indices[a..b], &self.values[a..b])
    }

    /// `A x` (`x` of length `cols`).
    pub fn mul_vec(&self, x: &[f64]) -> Vec<f64> {
        (0..self.rows)
            .map(|r| {
                let (idx, val) = self.row(r);
                idx.iter().zip(val).map(|(&c, &v)| v * x[c]).sum()
            })
            .collect()
    }

    /// `Aᵀ y` (`y` of length `rows`).
    pub fn mul_t_vec(&self, y: &[f64]) -> Vec<f64> {
        let mut out = vec![0.0; self.cols];
        for (r, &yr) in y.iter().enumerate() {
            if yr != 0.0 {
                let (idx, val) = self.row(r);
                for (&c, &v) in idx.iter().zip(val) {
                    out[c] += v * yr;
                }
            }
        }
        out
    }

    /// `A X` for a dense `cols × k` matrix `X` (row-major); the result is `rows × k`.
    pub fn mul_dense(&self, x: &[f64], k: usize) -> Vec<f64> {
        let mut out = vec![0.0; self.rows * k];
        for r in 0..self.rows {
            let (idx, val) = self.row(r);
            let out_row = &mut out[r * k..(r + 1) * k];
            for (&c, &v) in idx.iter().zip(val) {
                out_row
                    .iter_mut()
                    .zip(&x[c * k..(c + 1) * k])
                    .for_each(|(o, xi)| *o += v * xi);
            }
        }
        out
    }

    /// `Aᵀ Y` for a dense `rows × k` matrix `Y` (row-major); the result is `cols × k`.
    pub fn mul_t_dense(&self, y: &[f64], k: usize) -> Vec<f64> {
        let mut out = vec![0.0; self.cols * k];
        for r in 0..self.rows {
            let (idx, val) = self.row(r);
            let y_row = &y[r * k..(r + 1) * k];
            for (&c, &v) in idx.iter().zip(val) {
                out[c * k..(c + 1) * k]
                    .iter_mut()
                    .zip(y_row)
                    .for_each(|(o, yi)| *o += v * yi);
            }
        }
        out
    }

    /// The rows at `rows`, in that order.
    pub fn select_rows(&self, rows: &[usize]) -> Self {
        let mut indptr = vec![0];
        let (mut indices, mut values) = (Vec::new(), Vec::new());
        for &r in rows {
            let (idx, val) = self.row(r);
            indices.extend_from_slice(idx);
            values.extend_from_slice(val);
            indptr.push(indices.len());
        }
        Self {
            rows: rows.len(),
            cols: self.cols,
            indptr,
            indices,
            values,
        }
    }

    /// The dense row-major form (for small matrices and tests).
    pub fn to_dense(&self) -> Vec<f64> {
        let mut d = vec![0.0; self.rows * self.cols];
        for r in 0..self.rows {
            let (idx, val) = self.row(r);
            for (&c, &v) in idx.iter().zip(val) {
                d[r * self.cols + c] = v;
            }
        }
        d
    }
}

/// The largest feature index [`read_libsvm`] accepts (the solvers allocate dense vectors of
/// the width: 800 MB at this size).
pub const MAX_LIBSVM_COLUMNS: usize = 100_000_000;

/// Reads LIBSVM text (`label index:value …`, 1-based indices, `#` comments) into a matrix
/// and a label per row. `cols` fixes the width (else the largest index). Errors name the line.
pub fn read_libsvm(text: &str, cols: Option<usize>) -> Result<(CsrMatrix, Vec<f64>), BilevelError> {
    let mut rows = Vec::new();
    let mut labels = Vec::new();
    let mut width = 0usize;
    for (n, raw) in text.lines().enumerate() {
        let line_no = n + 1;
        let line = raw.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let fail = |reason: String| BilevelError::Libsvm {
            line: line_no,
            reason,
        };
        let mut parts = line.split_whitespace();
        let label_text = parts.next().expect("non-empty line");
        let label: f64 = label_text
            .parse()
            .map_err(|_| fail(format!("label `{label_text}` is not a number")))?;
        if !label.is_finite() {
            return Err(fail(format!("label `{label_text}` is not finite")));
        }
        let mut row = Vec::new();
        for item in parts {
            let (i, v) = item
                .split_once(':')
                .ok_or_else(|| fail(format!("`{item}` is not index:value")))?;
            let i: usize = i
                .parse()
                .map_err(|_| fail(format!("index `{i}` is not a whole number")))?;
            if i == 0 {
                return Err(fail("indices start at 1, found 0".into()));
            }
            if i > MAX_LIBSVM_COLUMNS {
                return Err(fail(format!(
                    "index {i} exceeds the {MAX_LIBSVM_COLUMNS} columns supported (dense vectors of that length are allocated)"
                )));
            }
            let v: f64 = v
                .parse()
                .map_err(|_| fail(format!("value `{v}` is not a number")))?;
            if !v.is_finite() {
                return Err(fail(format!("value `{v}` at index {i} is not finite")));
            }
            if let Some(c) = cols {
                if i > c {
                    return Err(fail(format!("index {i} exceeds the {c} columns")));
                }
            }
            width = width.max(i);
            row.push((i - 1, v));
        }
        rows.push(row);
        labels.push(label);
    }
    if rows.is_empty() {
        return Err(BilevelError::Data(
            "the LIBSVM input has no data lines".into(),
        ));
    }
    let matrix = CsrMatrix::from_rows(cols.unwrap_or(width), rows)?;
    Ok((matrix, labels))
}

/// Maps labels with exactly two distinct values to −1 (the smaller) and +1.
pub fn binary_labels(labels: &[f64]) -> Result<Vec<f64>, BilevelError> {
    let mut distinct: Vec<f64> = labels.to_vec();
    distinct.sort_by(f64::total_cmp);
    distinct.dedup();
    if distinct.len() != 2 {
        return Err(BilevelError::Data(format!(
            "binary logistic regression needs exactly two label values, found {} ({:?}{})",
            distinct.len(),
            &distinct[..distinct.len().min(5)],
            if distinct.len() > 5 { ", …" } else { "" }
        )));
    }
    Ok(labels
        .iter()
        .map(|&l| if l == distinct[0] { -1.0 } else { 1.0 })
        .collect())
}
