//! Tip-Adapter's cache model (Zhang et al. 2022, "Tip-Adapter: Training-free Adaption of
//! CLIP for Few-shot Classification"): keys K [N, d] are L2-normalised training image
//! features, values V [N, C] their one-hot labels. For a normalised feature x̂,
//! `logits = s · x̂ Tᵀ + α · exp(−β (1 − x̂ Kᵀ)) V`. Tip-Adapter uses the cache as built;
//! Tip-Adapter-F fine-tunes the keys with cross-entropy (values stay frozen).
//!
//! A row holds one cache of `capacity` entries, `[K (capacity × d) | V (capacity × C)]`;
//! a client with fewer samples pads with all-zero keys and values, which add nothing to the
//! logits and get no gradient. The server's cache for a held-out domain is the union of the
//! clients' caches: their rows concatenated, which [`Head::logits`] takes as one cache (each
//! row's entries add to the logits; padding adds nothing).

use super::{Head, cross_entropy, matmul_bt, named, normalize_rows};
use crate::adapter::{Real, TextFeatures};
use std::ops::Range;

#[derive(Clone)]
pub struct TipCache<T: Real> {
    texts: TextFeatures<T>,
    scale: T,
    alpha: T,
    beta: T,
    /// Entries per client row.
    capacity: usize,
    /// Tip-Adapter-F: the keys are trained; else nothing is.
    train_keys: bool,
}

impl<T: Real> TipCache<T> {
    pub fn new(
        texts: TextFeatures<T>,
        logit_scale: T,
        alpha: T,
        beta: T,
        capacity: usize,
        train_keys: bool,
    ) -> Self {
        TipCache {
            scale: logit_scale.exp(),
            texts,
            alpha,
            beta,
            capacity,
            train_keys,
        }
    }

    fn entry(&self) -> usize {
        self.texts.dim() + self.texts.classes()
    }
}

/// One client's cache row of `capacity` entries from its training `features` [N, d] and
/// `labels` (N ≤ capacity), padded with zeros.
pub fn cache_row<T: Real>(
    features: &[T],
    labels: &[u32],
    dim: usize,
    classes: usize,
    capacity: usize,
) -> Vec<T> {
    let (keys, _) = normalize_rows(features, dim);
    let mut row = vec![T::ZERO; capacity * (dim + classes)];
    row[..keys.len()].copy_from_slice(&keys);
    let values = &mut row[capacity * dim..];
    for (i, &y) in labels.iter().enumerate() {
        values[i * classes + y as usize] = T::ONE;
    }
    row
}

impl<T: Real> Head<T> for TipCache<T> {
    fn name(&self) -> &'static str {
        if self.train_keys {
            "tip-adapter-f"
        } else {
            "tip-adapter"
        }
    }
    fn dim(&self) -> usize {
        self.texts.dim()
    }
    fn classes(&self) -> usize {
        self.texts.classes()
    }
    fn param_count(&self) -> usize {
        self.capacity * self.entry()
    }
    fn trainable(&self) -> usize {
        if self.train_keys {
            self.capacity * self.dim()
        } else {
            0
        }
    }

    fn loss_and_grad(&self, params: &[T], features: &[T], labels: &[u32], grad: &mut [T]) -> T {
        let (d, c) = (self.dim(), self.classes());
        let n = params.len() / self.entry();
        let b = labels.len();
        let (keys, values) = params.split_at(n * d);
        let (x, _) = normalize_rows(features, d);
        let mut g = self.clip_logits(&x);
        let e = self.add_cache_logits(&x, keys, values, &mut g);
        let loss = cross_entropy(&mut g, labels, c);
        grad.fill(T::ZERO);
        // dE = α G Vᵀ; dA = β E ⊙ dE; dK = dAᵀ x̂.
        for i in 0..b {
            let gi = &g[i * c..(i + 1) * c];
            let xi = &x[i * d..(i + 1) * d];
            for j in 0..n {
                let vj = &values[j * c..(j + 1) * c];
                let de: T = gi.iter().zip(vj).map(|(&a, &v)| a * v).sum::<T>() * self.alpha;
                let da = self.beta * e[i * n + j] * de;
                let gk = &mut grad[j * d..(j + 1) * d];
                gk.iter_mut().zip(xi).for_each(|(w, &xv)| *w += da * xv);
            }
        }
        loss
    }

    fn logits(&self, params: &[T], features: &[T]) -> Vec<T> {
        let d = self.dim();
        let (x, _) = normalize_rows(features, d);
        let mut logits = self.clip_logits(&x);
        for row in params.chunks_exact(self.param_count()) {
            let (keys, values) = row.split_at(self.capacity * d);
            self.add_cache_logits(&x, keys, values, &mut logits);
        }
        logits
    }

    fn takes_union(&self) -> bool {
        true
    }

    fn tensors(&self) -> Vec<(String, Vec<usize>, Range<usize>)> {
        let (n, d, c) = (self.capacity, self.dim(), self.classes());
        named(&[("cache.keys", vec![n, d]), ("cache.values", vec![n, c])])
    }

    fn layout(&self) -> String {
        format!(
            "Tip-Adapter cache: keys [N, d] (L2-normalised image features), values [N, C] \
             (one-hot labels; all-zero rows are padding); alpha {}, beta {}",
            self.alpha, self.beta
        )
    }
}

impl<T: Real> TipCache<T> {
    /// `s · x Tᵀ` [B, C] of normalised `x`.
    fn clip_logits(&self, x: &[T]) -> Vec<T> {
        let (d, c) = (self.dim(), self.classes());
        let mut logits = matmul_bt(x, x.len() / d, self.texts.as_slice(), c, d);
        logits.iter_mut().for_each(|v| *v *= self.scale);
        logits
    }

    /// Adds `α E V` to `logits` and returns `E = exp(−β (1 − x Kᵀ))` [B, N].
    fn add_cache_logits(&self, x: &[T], keys: &[T], values: &[T], logits: &mut [T]) -> Vec<T> {
        let (d, c) = (self.dim(), self.classes());
        let b = x.len() / d;
        let n = keys.len() / d;
        let mut e = matmul_bt(x, b, keys, n, d);
        e.iter_mut()
            .for_each(|a| *a = (-(self.beta - self.beta * *a)).exp());
        for i in 0..b {
            for j in 0..n {
                let w = self.alpha * e[i * n + j];
                let vj = &values[j * c..(j + 1) * c];
                let li = &mut logits[i * c..(i + 1) * c];
                li.iter_mut().zip(vj).for_each(|(l, &v)| *l += w * v);
            }
        }
        e
    }
}
