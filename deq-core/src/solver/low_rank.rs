//! The per-sample limited-memory Broyden inverse `B = −I + Σⱼ uⱼ vⱼᵀ`.
use burn::tensor::{Bool, Tensor, TensorData};

/// Per-sample low-rank inverse-Jacobian estimate `B = −I + U Vᵀ` (`B ≈ J_g⁻¹`, see
/// `shine-math.md`), stored as ring buffers `U`, `V` of shape `[batch, capacity, dim]`.
///
/// Each sample has its own write position and fill level (explicit order: the oldest pair is
/// overwritten first), so samples that stopped early keep their matrix intact while others go
/// on updating theirs.
#[derive(Clone, Debug)]
pub struct LowRankInverse {
    u: Tensor<3>,
    v: Tensor<3>,
    len: Vec<usize>,
    next: Vec<usize>,
}

impl LowRankInverse {
    /// `B = −I` for every sample, with room for `capacity` pairs; dtype and device follow `like`
    /// (`[batch, dim]`).
    pub fn identity(like: &Tensor<2>, capacity: usize) -> Self {
        let [batch, dim] = like.dims();
        let options = (&like.device(), like.dtype());
        Self {
            u: Tensor::zeros([batch, capacity, dim], options),
            v: Tensor::zeros([batch, capacity, dim], options),
            len: vec![0; batch],
            next: vec![0; batch],
        }
    }

    /// Number of pairs each sample can hold.
    pub fn capacity(&self) -> usize {
        self.u.dims()[1]
    }

    /// Number of pairs currently stored for `sample`.
    pub fn rank(&self, sample: usize) -> usize {
        self.len[sample]
    }

    /// `B x` per sample: `−x + U (Vᵀ x)`. `x`: `[batch, dim]`.
    pub fn apply(&self, x: Tensor<2>) -> Tensor<2> {
        low_rank_product(&self.u, &self.v, x)
    }

    /// `Bᵀ x` per sample: `−x + V (Uᵀ x)`. This is what SHINE needs. `x`: `[batch, dim]`.
    pub fn apply_transposed(&self, x: Tensor<2>) -> Tensor<2> {
        low_rank_product(&self.v, &self.u, x)
    }

    /// The estimate of the transposed inverse, `Bᵀ = −I + V Uᵀ` (the roles of U and V swap).
    pub fn transposed(self) -> Self {
        Self {
            u: self.v,
            v: self.u,
            len: self.len,
            next: self.next,
        }
    }

    /// The same matrices with room for `extra` more pairs before the oldest is overwritten.
    pub fn with_extra_capacity(self, extra: usize) -> Self {
        if extra == 0 {
            return self;
        }
        let [batch, capacity, dim] = self.u.dims();
        let options = (&self.u.device(), self.u.dtype());
        let pad = || Tensor::<3>::zeros([batch, extra, dim], options);
        // Rotate each sample's ring so that its oldest pair comes first; then the free slots
        // follow the newest pair and writing continues in order.
        let (u, v) = if self.len.iter().zip(&self.next).all(|(&l, &n)| l < capacity || n == 0) {
            (self.u, self.v)
        } else {
            let order: Vec<i64> = (0..batch)
                .flat_map(|b| {
                    let start = if self.len[b] == capacity { self.next[b] } else { 0 };
                    (0..capacity).map(move |j| ((start + j) % capacity) as i64)
                })
                .collect();
            let index = Tensor::<3, burn::tensor::Int>::from_data(
                TensorData::new(order, [batch, capacity, 1]),
                &self.u.device(),
            )
            .expand([batch, capacity, dim]);
            (self.u.gather(1, index.clone()), self.v.gather(1, index))
        };
        let next = self.len.clone();
        Self {
            u: Tensor::cat(vec![u, pad()], 1),
            v: Tensor::cat(vec![v, pad()], 1),
            len: self.len,
            next,
        }
    }

    /// Appends the pair `(u, v)` (each `[batch, dim]`) for the samples where `write` is true,
    /// overwriting that sample's oldest pair when its buffer is full.
    pub fn push(&mut self, u: Tensor<2>, v: Tensor<2>, write: &[bool]) {
        let [batch, capacity, dim] = self.u.dims();
        assert_eq!(write.len(), batch, "one write flag per sample");
        if capacity == 0 || !write.iter().any(|&w| w) {
            return;
        }
        let mut slots = vec![false; batch * capacity];
        for b in 0..batch {
            if write[b] {
                slots[b * capacity + self.next[b]] = true;
                self.next[b] = (self.next[b] + 1) % capacity;
                self.len[b] = (self.len[b] + 1).min(capacity);
            }
        }
        let mask = Tensor::<3, Bool>::from_data(
            TensorData::new(slots, [batch, capacity, 1]),
            &self.u.device(),
        )
        .expand([batch, capacity, dim]);
        let u = u.reshape([batch, 1, dim]).expand([batch, capacity, dim]);
        let v = v.reshape([batch, 1, dim]).expand([batch, capacity, dim]);
        self.u = self.u.clone().mask_where(mask.clone(), u);
        self.v = self.v.clone().mask_where(mask, v);
    }

    /// Per sample, take `other`'s matrix where `take` is true and keep this one elsewhere.
    pub fn take_where(&mut self, other: &Self, take: &[bool]) {
        let [batch, capacity, dim] = self.u.dims();
        if !take.iter().any(|&t| t) {
            return;
        }
        if take.iter().all(|&t| t) {
            *self = other.clone();
            return;
        }
        let mask = Tensor::<3, Bool>::from_data(TensorData::new(take.to_vec(), [batch, 1, 1]), &self.u.device())
            .expand([batch, capacity, dim]);
        self.u = self.u.clone().mask_where(mask.clone(), other.u.clone());
        self.v = self.v.clone().mask_where(mask, other.v.clone());
        for b in 0..batch {
            if take[b] {
                self.len[b] = other.len[b];
                self.next[b] = other.next[b];
            }
        }
    }

    /// Detaches the factors from any autodiff graph (they are plain tensors after a normal solve).
    pub fn without_autodiff(self) -> Self {
        Self {
            u: self.u.detach().without_autodiff(),
            v: self.v.detach().without_autodiff(),
            ..self
        }
    }

    /// The dense matrix `B` of one sample, row-major `dim × dim` (for tests and diagnostics;
    /// O(dim²) memory).
    pub fn dense(&self, sample: usize) -> Vec<f64> {
        let [_, capacity, dim] = self.u.dims();
        let u: Vec<f64> = self.u.clone().narrow(0, sample, 1).into_data().iter::<f64>().collect();
        let v: Vec<f64> = self.v.clone().narrow(0, sample, 1).into_data().iter::<f64>().collect();
        let mut b = vec![0.0; dim * dim];
        for i in 0..dim {
            b[i * dim + i] = -1.0;
        }
        for j in 0..capacity {
            for r in 0..dim {
                let ur = u[j * dim + r];
                if ur == 0.0 {
                    continue;
                }
                for c in 0..dim {
                    b[r * dim + c] += ur * v[j * dim + c];
                }
            }
        }
        b
    }
}

/// `−x + Aᵀ-free low-rank product`: per sample `−x + Σⱼ aⱼ (cⱼ · x)` with `a`, `c`:
/// `[batch, m, dim]`.
fn low_rank_product(a: &Tensor<3>, c: &Tensor<3>, x: Tensor<2>) -> Tensor<2> {
    let [batch, capacity, dim] = a.dims();
    if capacity == 0 {
        return x.neg();
    }
    // coefficients cⱼ·x: [batch, m, 1] -> [batch, 1, m]; then Σⱼ coefⱼ aⱼ: [batch, 1, dim].
    let coef = c.clone().matmul(x.clone().reshape([batch, dim, 1])).reshape([batch, 1, capacity]);
    let low_rank = coef.matmul(a.clone()).reshape([batch, dim]);
    low_rank - x
}
