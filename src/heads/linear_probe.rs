//! The linear probe: `logits = W x̂ + b` on the L2-normalised image feature x̂, W [C, d],
//! b [C], trained with softmax cross-entropy. Initialised from the class text features
//! (`W = s · t_c`, b = 0, s = exp(logit_scale)), so before any step it predicts exactly as
//! CLIP zero-shot does.

use super::{Head, cross_entropy, matmul_bt, named, normalize_rows};
use crate::adapter::{Real, TextFeatures};
use std::ops::Range;

#[derive(Clone)]
pub struct LinearProbe {
    dim: usize,
    classes: usize,
}

impl LinearProbe {
    pub fn new(dim: usize, classes: usize) -> Self {
        LinearProbe { dim, classes }
    }

    /// `[W | b]` with W = s · t_c (the normalised text features) and b = 0.
    pub fn init<T: Real>(texts: &TextFeatures<T>, logit_scale: T) -> Vec<T> {
        let s = logit_scale.exp();
        let mut row: Vec<T> = texts.as_slice().iter().map(|&t| s * t).collect();
        row.resize(row.len() + texts.classes(), T::ZERO);
        row
    }
}

impl<T: Real> Head<T> for LinearProbe {
    fn name(&self) -> &'static str {
        "linear-probe"
    }
    fn dim(&self) -> usize {
        self.dim
    }
    fn classes(&self) -> usize {
        self.classes
    }
    fn param_count(&self) -> usize {
        self.classes * self.dim + self.classes
    }

    fn loss_and_grad(&self, params: &[T], features: &[T], labels: &[u32], grad: &mut [T]) -> T {
        let (d, c) = (self.dim, self.classes);
        let b = labels.len();
        let (x, _) = normalize_rows(features, d);
        let mut g = self.logits(params, features);
        let loss = cross_entropy(&mut g, labels, c);
        let (gw, gb) = grad.split_at_mut(c * d);
        gw.fill(T::ZERO);
        gb.fill(T::ZERO);
        // dW = Gᵀ x̂, db = Σ_rows G.
        for i in 0..b {
            let (gi, xi) = (&g[i * c..(i + 1) * c], &x[i * d..(i + 1) * d]);
            for (k, &gik) in gi.iter().enumerate() {
                gb[k] += gik;
                for (w, &xj) in gw[k * d..(k + 1) * d].iter_mut().zip(xi) {
                    *w += gik * xj;
                }
            }
        }
        loss
    }

    fn logits(&self, params: &[T], features: &[T]) -> Vec<T> {
        let (d, c) = (self.dim, self.classes);
        let (x, _) = normalize_rows(features, d);
        let (w, bias) = params.split_at(c * d);
        let mut out = matmul_bt(&x, x.len() / d, w, c, d);
        for row in out.chunks_exact_mut(c) {
            row.iter_mut().zip(bias).for_each(|(v, &bk)| *v += bk);
        }
        out
    }

    fn tensors(&self) -> Vec<(String, Vec<usize>, Range<usize>)> {
        let (d, c) = (self.dim, self.classes);
        named(&[("linear.weight", vec![c, d]), ("linear.bias", vec![c])])
    }

    fn layout(&self) -> String {
        "linear probe: Linear(d, C) on the L2-normalised image feature; PyTorch [out, in]".into()
    }
}
