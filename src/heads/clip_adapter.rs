//! CLIP-Adapter (Gao et al. 2021, "CLIP-Adapter: Better Vision-Language Models with Feature
//! Adapters"), the visual adapter of the paper's code: on the projected image feature x,
//! `A(x) = ReLU(W2 · ReLU(W1 · x))` with W1 [r, d], W2 [d, r], r = d / 4, no biases;
//! `f = α A(x) + (1 − α) x`, `n = f / ‖f‖`, `logits = s · n Tᵀ` over the normalised class
//! text features T at CLIP's logit scale s; softmax cross-entropy.

use super::{Head, cross_entropy, matmul_bt, named, normalize_rows};
use crate::adapter::{Real, TextFeatures};
use std::ops::Range;

/// The paper's bottleneck: d → d / 4 → d.
pub const REDUCTION: usize = 4;

#[derive(Clone)]
pub struct ClipAdapter<T: Real> {
    dim: usize,
    hidden: usize,
    texts: TextFeatures<T>,
    scale: T,
    ratio: T,
}

/// One batch's forward values, kept for the backward pass.
struct Forward<T> {
    h1: Vec<T>,
    h2: Vec<T>,
    n: Vec<T>,
    norms: Vec<T>,
}

impl<T: Real> ClipAdapter<T> {
    /// `ratio` is α; `logit_scale` the log of s. The hidden width is `max(dim / 4, 1)`.
    pub fn new(texts: TextFeatures<T>, logit_scale: T, ratio: T) -> Self {
        let dim = texts.dim();
        ClipAdapter {
            dim,
            hidden: (dim / REDUCTION).max(1),
            texts,
            scale: logit_scale.exp(),
            ratio,
        }
    }

    pub fn hidden(&self) -> usize {
        self.hidden
    }

    /// `nn.Linear`'s default initialisation without biases: each weight uniform in
    /// `±1/√fan_in`, from the seeded generator the attention adapter uses.
    pub fn init(dim: usize, seed: u64) -> Vec<f32> {
        let r = (dim / REDUCTION).max(1);
        let mut u = crate::adapter::seeded_unit_stream(seed);
        let w1 = (0..r * dim).map(|_| (u() * 2.0 - 1.0) / (dim as f64).sqrt());
        let w1: Vec<f64> = w1.collect();
        let w2 = (0..dim * r).map(|_| (u() * 2.0 - 1.0) / (r as f64).sqrt());
        w1.into_iter().chain(w2).map(|v| v as f32).collect()
    }

    fn forward(&self, params: &[T], x: &[T]) -> Forward<T> {
        let (d, r) = (self.dim, self.hidden);
        let b = x.len() / d;
        let (w1, w2) = params.split_at(r * d);
        let h1 = matmul_bt(x, b, w1, r, d);
        let a1: Vec<T> = h1.iter().map(|&v| v.max(T::ZERO)).collect();
        let h2 = matmul_bt(&a1, b, w2, d, r);
        let keep = T::ONE - self.ratio;
        let f: Vec<T> = (h2.iter().zip(x))
            .map(|(&h, &xi)| self.ratio * h.max(T::ZERO) + keep * xi)
            .collect();
        let (n, norms) = normalize_rows(&f, d);
        Forward { h1, h2, n, norms }
    }
}

impl<T: Real> Head<T> for ClipAdapter<T> {
    fn name(&self) -> &'static str {
        "clip-adapter"
    }
    fn dim(&self) -> usize {
        self.dim
    }
    fn classes(&self) -> usize {
        self.texts.classes()
    }
    fn param_count(&self) -> usize {
        2 * self.dim * self.hidden
    }

    fn loss_and_grad(&self, params: &[T], features: &[T], labels: &[u32], grad: &mut [T]) -> T {
        let (d, r, c) = (self.dim, self.hidden, self.classes());
        let b = labels.len();
        let fw = self.forward(params, features);
        let t = self.texts.as_slice();
        let mut g: Vec<T> = matmul_bt(&fw.n, b, t, c, d);
        g.iter_mut().for_each(|v| *v *= self.scale);
        let loss = cross_entropy(&mut g, labels, c);
        let w2 = &params[r * d..];
        let (gw1, gw2) = grad.split_at_mut(r * d);
        gw1.fill(T::ZERO);
        gw2.fill(T::ZERO);
        for i in 0..b {
            let n = &fw.n[i * d..(i + 1) * d];
            // dn = s · G T; df = (dn − n (n·dn)) / ‖f‖; dh2 = α df ⊙ [h2 > 0].
            let mut dn = vec![T::ZERO; d];
            for (k, &gk) in g[i * c..(i + 1) * c].iter().enumerate() {
                let tk = &t[k * d..(k + 1) * d];
                dn.iter_mut()
                    .zip(tk)
                    .for_each(|(v, &tv)| *v += self.scale * gk * tv);
            }
            let ndn: T = n.iter().zip(&dn).map(|(&a, &b)| a * b).sum();
            let h2 = &fw.h2[i * d..(i + 1) * d];
            let dh2: Vec<T> = (0..d)
                .map(|j| {
                    let df = (dn[j] - n[j] * ndn) / fw.norms[i];
                    if h2[j] > T::ZERO {
                        self.ratio * df
                    } else {
                        T::ZERO
                    }
                })
                .collect();
            let h1 = &fw.h1[i * r..(i + 1) * r];
            // dW2 = dh2ᵀ a1; da1 = dh2 W2; dW1 = (da1 ⊙ [h1 > 0])ᵀ x.
            let mut da1 = vec![T::ZERO; r];
            for (j, &dj) in dh2.iter().enumerate() {
                for q in 0..r {
                    gw2[j * r + q] += dj * h1[q].max(T::ZERO);
                    da1[q] += dj * w2[j * r + q];
                }
            }
            let x = &features[i * d..(i + 1) * d];
            for q in 0..r {
                if h1[q] > T::ZERO {
                    let row = &mut gw1[q * d..(q + 1) * d];
                    row.iter_mut().zip(x).for_each(|(w, &xv)| *w += da1[q] * xv);
                }
            }
        }
        loss
    }

    fn logits(&self, params: &[T], features: &[T]) -> Vec<T> {
        let fw = self.forward(params, features);
        let b = features.len() / self.dim;
        let mut g = matmul_bt(&fw.n, b, self.texts.as_slice(), self.classes(), self.dim);
        g.iter_mut().for_each(|v| *v *= self.scale);
        g
    }

    fn tensors(&self) -> Vec<(String, Vec<usize>, Range<usize>)> {
        let (d, r) = (self.dim, self.hidden);
        named(&[("fc.0.weight", vec![r, d]), ("fc.2.weight", vec![d, r])])
    }

    fn layout(&self) -> String {
        format!(
            "CLIP-Adapter: Linear(d, d/4, bias=False) → ReLU → Linear(d/4, d, bias=False) → ReLU, \
             blended with ratio {}; PyTorch [out, in]",
            self.ratio
        )
    }
}
