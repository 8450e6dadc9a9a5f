//! A real sparse text task, offline: Debian's `fortunes` collection as bag-of-words tf-idf.
use std::collections::HashMap;
use std::path::Path;

use super::BilevelError;
use super::sparse::CsrMatrix;

/// Categories labelled +1 (computing and science); every other category is −1.
pub const FORTUNES_POSITIVE: &[&str] = &[
    "computers",
    "debian",
    "linux",
    "linuxcookie",
    "perl",
    "science",
    "goedel",
];

/// Reads a fortunes folder (one file per category, entries separated by lines holding `%`;
/// files with an extension such as `.dat` or `.u8` are skipped) into tf-idf rows: lowercase
/// alphabetic tokens of ≥ 2 letters, `tf · (ln((1 + N) / (1 + df)) + 1)`, rows L2-normalised.
/// Label +1 for [`FORTUNES_POSITIVE`] categories, −1 otherwise. Returns the matrix, the labels
/// and each row's category. Folder: `/usr/share/games/fortunes` after
/// `apt-get install fortunes`, or `usr/share/games/fortunes` inside
/// `dpkg-deb -x fortunes_*.deb DIR` after `apt-get download fortunes`.
pub fn fortunes_dataset(dir: &Path) -> Result<(CsrMatrix, Vec<f64>, Vec<String>), BilevelError> {
    let entries = std::fs::read_dir(dir)
        .map_err(|e| BilevelError::Data(format!("cannot read {}: {e}", dir.display())))?;
    let mut files: Vec<_> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_file() && p.extension().is_none())
        .collect();
    files.sort();
    let mut docs: Vec<Vec<String>> = Vec::new();
    let mut categories = Vec::new();
    for path in &files {
        let bytes = std::fs::read(path)
            .map_err(|e| BilevelError::Data(format!("cannot read {}: {e}", path.display())))?;
        let text = String::from_utf8_lossy(&bytes);
        let category = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("")
            .to_string();
        let mut current = String::new();
        for line in text.lines().chain(std::iter::once("%")) {
            if line.trim() == "%" {
                let tokens = tokenize(&current);
                if !tokens.is_empty() {
                    docs.push(tokens);
                    categories.push(category.clone());
                }
                current.clear();
            } else {
                current.push_str(line);
                current.push('\n');
            }
        }
    }
    if docs.is_empty() {
        return Err(BilevelError::Data(format!(
            "no fortunes found in {}",
            dir.display()
        )));
    }
    let mut vocabulary: HashMap<String, usize> = HashMap::new();
    let mut df: Vec<usize> = Vec::new();
    let mut counts: Vec<HashMap<usize, f64>> = Vec::with_capacity(docs.len());
    for doc in &docs {
        let mut c: HashMap<usize, f64> = HashMap::new();
        for token in doc {
            let next = vocabulary.len();
            let id = *vocabulary.entry(token.clone()).or_insert(next);
            if id == df.len() {
                df.push(0);
            }
            *c.entry(id).or_insert(0.0) += 1.0;
        }
        for &id in c.keys() {
            df[id] += 1;
        }
        counts.push(c);
    }
    let n = docs.len() as f64;
    let idf: Vec<f64> = df
        .iter()
        .map(|&d| ((1.0 + n) / (1.0 + d as f64)).ln() + 1.0)
        .collect();
    let rows: Vec<Vec<(usize, f64)>> = counts
        .into_iter()
        .map(|c| {
            let mut row: Vec<(usize, f64)> =
                c.into_iter().map(|(id, tf)| (id, tf * idf[id])).collect();
            let norm = row.iter().map(|(_, v)| v * v).sum::<f64>().sqrt();
            row.iter_mut().for_each(|e| e.1 /= norm);
            row
        })
        .collect();
    let labels: Vec<f64> = categories
        .iter()
        .map(|c| {
            if FORTUNES_POSITIVE.contains(&c.as_str()) {
                1.0
            } else {
                -1.0
            }
        })
        .collect();
    if !(labels.contains(&1.0) && labels.contains(&-1.0)) {
        return Err(BilevelError::Data(format!(
            "the fortunes in {} fall into one class only",
            dir.display()
        )));
    }
    Ok((
        CsrMatrix::from_rows(vocabulary.len(), rows)?,
        labels,
        categories,
    ))
}

fn tokenize(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_alphabetic())
        .filter(|w| w.chars().count() >= 2)
        .map(str::to_lowercase)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_generated_fortunes_folder() {
        let dir = std::env::temp_dir().join(format!("deq-fortunes-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("computers"),
            "The computer is down.\n%\nRebooting fixes it, said the admin.\n%\n",
        )
        .unwrap();
        std::fs::write(
            dir.join("love"),
            "Love is blind.\n%\n   \n%\nAll you need is love, love.\n",
        )
        .unwrap();
        std::fs::write(dir.join("love.dat"), [0u8, 1, 2]).unwrap();
        let (a, y, cats) = fortunes_dataset(&dir).unwrap();
        assert_eq!(
            a.rows(),
            4,
            "the blank entry is dropped, the .dat file skipped"
        );
        assert_eq!(y, vec![1.0, 1.0, -1.0, -1.0]);
        assert_eq!(cats, vec!["computers", "computers", "love", "love"]);
        for r in 0..a.rows() {
            let norm: f64 = a.row(r).1.iter().map(|v| v * v).sum::<f64>().sqrt();
            assert!((norm - 1.0).abs() < 1e-12);
        }
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(fortunes_dataset(&dir).is_err());
    }
}
