//! Every sample's lowest-residual iterate, kept as shared references to whole iterates and
//! copied row by row only when too many of them would stay alive.
use burn::tensor::Tensor;

use super::tracker::where_rows;

/// Most iterates (each a pair `z`, `F(z)`) kept alive at once. A solver's iterates are new
/// tensors every iteration, so keeping one costs no copy, only its memory until no sample's
/// best row lies in it; past this many, the rows of the least used one are copied into another.
const MAX_KEPT: usize = 3;

/// Per sample, the iterate `z` with the lowest residual so far and its image `F(z)`.
///
/// Copying the improved rows into one best buffer every iteration reads and writes two rows per
/// improved sample. Here an iteration that improves some samples keeps a reference to its `z`
/// and `F(z)` (no copy), and the samples point at it. When more than [`MAX_KEPT`] iterates are
/// referenced, the one with the fewest samples (never the newest) has its rows copied into
/// the older one with the most: the samples stuck at their best for a while, usually few.
/// Memory: at most [`MAX_KEPT`] pairs of `[batch, dim]` tensors, the newest of them the
/// iterate the solver holds anyway.
#[derive(Debug)]
pub(crate) struct BestIterates {
    /// `(z, F(z))` pairs (`[batch, dim]` each) holding some sample's best row, oldest first.
    kept: Vec<(Tensor<2>, Tensor<2>)>,
    /// Per sample: the index in `kept` of its best iterate.
    of: Vec<usize>,
}

impl BestIterates {
    /// Every sample's best iterate is `z` with image `fz` (both `[batch, dim]`).
    pub fn new(z: &Tensor<2>, fz: &Tensor<2>) -> Self {
        Self {
            kept: vec![(z.clone(), fz.clone())],
            of: vec![0; z.dims()[0]],
        }
    }

    /// The samples where `improved` is true have `z` (image `fz`) as their new best iterate.
    pub fn update(&mut self, improved: &[bool], z: &Tensor<2>, fz: &Tensor<2>) {
        if !improved.iter().any(|&i| i) {
            return;
        }
        let newest = self.kept.len();
        self.kept.push((z.clone(), fz.clone()));
        for (of, _) in self.of.iter_mut().zip(improved).filter(|(_, i)| **i) {
            *of = newest;
        }
        self.drop_unused();
        while self.kept.len() > MAX_KEPT {
            let counts = self.counts();
            let older = 0..self.kept.len() - 1;
            let from = older
                .clone()
                .min_by_key(|&k| counts[k])
                .expect("two or more older");
            let into = older
                .filter(|&k| k != from)
                .max_by_key(|&k| counts[k])
                .expect("two or more older");
            self.merge(from, into);
            self.drop_unused();
        }
    }

    /// Moves the samples where `rows` is true to their best iterate: their rows of `z` and `fz`
    /// (updated in place) are taken from it.
    pub fn restore(&self, rows: &[bool], z: &mut Tensor<2>, fz: &mut Tensor<2>) {
        for (k, (best_z, best_fz)) in self.kept.iter().enumerate() {
            let here: Vec<bool> = (rows.iter().zip(&self.of))
                .map(|(&r, &of)| r && of == k)
                .collect();
            *z = where_rows(z.clone(), &here, best_z.clone());
            *fz = where_rows(fz.clone(), &here, best_fz.clone());
        }
    }

    /// The best iterates as one `[batch, dim]` tensor (the rows of every kept iterate copied
    /// into the one most samples point at).
    pub fn into_z(mut self) -> Tensor<2> {
        while self.kept.len() > 1 {
            let counts = self.counts();
            let into = (0..self.kept.len())
                .max_by_key(|&k| counts[k])
                .expect("two or more kept");
            let from = usize::from(into == 0);
            let z = self.kept[from].0.clone();
            let here: Vec<bool> = self.of.iter().map(|&of| of == from).collect();
            let target = std::mem::replace(&mut self.kept[into].0, z.clone());
            self.kept[into].0 = where_rows(target, &here, z);
            self.relabel(from, into);
            self.drop_unused();
        }
        self.kept.swap_remove(0).0
    }

    /// Per kept iterate, the number of samples whose best it is.
    fn counts(&self) -> Vec<usize> {
        let mut counts = vec![0; self.kept.len()];
        for &of in &self.of {
            counts[of] += 1;
        }
        counts
    }

    /// Copies the rows of the samples pointing at `from` into iterate `into` (in place where
    /// it is not shared) and points them there.
    fn merge(&mut self, from: usize, into: usize) {
        let here: Vec<bool> = self.of.iter().map(|&of| of == from).collect();
        let (z, fz) = self.kept[from].clone();
        let (target_z, target_fz) =
            std::mem::replace(&mut self.kept[into], (z.clone(), fz.clone()));
        self.kept[into] = (
            where_rows(target_z, &here, z),
            where_rows(target_fz, &here, fz),
        );
        self.relabel(from, into);
    }

    fn relabel(&mut self, from: usize, into: usize) {
        for of in self.of.iter_mut().filter(|of| **of == from) {
            *of = into;
        }
    }

    /// Forgets the kept iterates no sample points at.
    fn drop_unused(&mut self) {
        let counts = self.counts();
        let mut index = vec![0; self.kept.len()];
        let mut next = 0;
        for (k, &count) in counts.iter().enumerate() {
            index[k] = next;
            next += usize::from(count > 0);
        }
        let mut k = 0;
        self.kept.retain(|_| {
            k += 1;
            counts[k - 1] > 0
        });
        for of in &mut self.of {
            *of = index[*of];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{DType, TensorData};

    fn rows(values: &[f64], dim: usize) -> Tensor<2> {
        Tensor::from_data(
            TensorData::new(values.to_vec(), [values.len() / dim, dim]),
            (&crate::device::cpu(), DType::F32),
        )
    }

    fn host(t: Tensor<2>) -> Vec<f64> {
        t.into_data().iter::<f64>().collect()
    }

    /// Against a plain copy of the improved rows into one buffer, over more iterates than are
    /// kept, with improvement patterns that leave samples stuck at old iterates: the restored
    /// rows and the final iterates agree exactly, and never more than `MAX_KEPT` are alive.
    #[test]
    fn matches_copying_the_improved_rows_every_iteration() {
        let (batch, dim) = (5, 3);
        let iterate = |i: usize, image: bool| {
            let values: Vec<f64> = (0..batch * dim)
                .map(|k| (i * 100 + k) as f64 + if image { 0.5 } else { 0.0 })
                .collect();
            rows(&values, dim)
        };
        let patterns: [[bool; 5]; 7] = [
            [false, true, false, false, true],
            [false, false, true, false, false],
            [true, false, false, false, true],
            [false, false, false, false, false],
            [false, true, false, true, false],
            [false, false, false, false, true],
            [true, true, true, true, true],
        ];
        let mut best = BestIterates::new(&iterate(0, false), &iterate(0, true));
        let (mut plain_z, mut plain_fz) = (iterate(0, false), iterate(0, true));
        for (i, improved) in patterns.iter().enumerate().map(|(i, p)| (i + 1, p)) {
            let (z, fz) = (iterate(i, false), iterate(i, true));
            best.update(improved, &z, &fz);
            plain_z = where_rows(plain_z, improved, z.clone());
            plain_fz = where_rows(plain_fz, improved, fz.clone());
            assert!(
                best.kept.len() <= MAX_KEPT,
                "iteration {i}: {} kept",
                best.kept.len()
            );
            let restore = [true, false, true, true, false];
            let (mut rz, mut rfz) = (iterate(99, false), iterate(99, true));
            best.restore(&restore, &mut rz, &mut rfz);
            let expected_z = where_rows(iterate(99, false), &restore, plain_z.clone());
            let expected_fz = where_rows(iterate(99, true), &restore, plain_fz.clone());
            assert_eq!(host(rz), host(expected_z), "iteration {i}: restored z");
            assert_eq!(host(rfz), host(expected_fz), "iteration {i}: restored F(z)");
            if i == 5 {
                // Part way: the merged best iterates are those of the plain copies.
                let snapshot = BestIterates {
                    kept: best.kept.clone(),
                    of: best.of.clone(),
                };
                assert_eq!(
                    host(snapshot.into_z()),
                    host(plain_z.clone()),
                    "iteration {i}"
                );
            }
        }
        assert_eq!(host(best.into_z()), host(plain_z));
    }
}
