//! Method families with their own parameter shapes, on frozen CLIP features: the linear
//! probe, CLIP-Adapter and Tip-Adapter's cache. Each is a [`Head`]: a flat parameter row of
//! [`Head::param_count`] values, a mean cross-entropy loss with its gradient on one batch,
//! and class logits. [`HeadTrainer`] steps K clients' rows at once behind the same
//! [`crate::adapter::AdapterBackend`] the rounds loop drives for the attention adapter.
//!
//! Heads are generic over [`Real`] so that the f64 instantiation checks the f32 code
//! (finite differences, the reference fixtures). The trainer is CPU-only.

mod clip_adapter;
mod linear_probe;
mod prompt;
mod tip_cache;
mod trainer;

pub use clip_adapter::ClipAdapter;
pub use linear_probe::LinearProbe;
pub use prompt::PromptHead;
pub use tip_cache::{TipCache, cache_row as tip_cache_row};
pub use trainer::HeadTrainer;

use crate::adapter::{AdapterParams, Real, TextFeatures, predict};
use anyhow::{Result, ensure};
use std::ops::Range;

/// One method family's model on frozen features.
pub trait Head<T: Real>: Send + Sync {
    /// What the family is called in messages.
    fn name(&self) -> &'static str;
    /// Image feature width d.
    fn dim(&self) -> usize;
    fn classes(&self) -> usize;
    /// Values in one client's row (P).
    fn param_count(&self) -> usize;
    /// The leading values of a row the optimiser updates; the rest are frozen.
    fn trainable(&self) -> usize {
        self.param_count()
    }
    /// Mean cross-entropy of the batch (`features` [B, d] raw, `labels` [B], B ≥ 1) and its
    /// gradient, written over `grad` (P values).
    fn loss_and_grad(&self, params: &[T], features: &[T], labels: &[u32], grad: &mut [T]) -> T;
    /// Class logits [B, C] of `features` [B, d] with `params` (a row; Tip's cache also takes
    /// the union of several).
    fn logits(&self, params: &[T], features: &[T]) -> Vec<T>;
    /// The named tensors of one row: (name, shape, range in the row), for adapter files.
    fn tensors(&self) -> Vec<(String, Vec<usize>, Range<usize>)>;
    /// The `layout` metadata of adapter files.
    fn layout(&self) -> String;
    /// Whether [`Head::logits`] takes several rows at once (Tip-Adapter's union of caches).
    fn takes_union(&self) -> bool {
        false
    }
}

/// What evaluation, fine-tuning and the adapter files need of a family: predictions from
/// flat parameters and the names of their tensors.
pub trait Classifier: Send + Sync {
    fn param_count(&self) -> usize;
    /// Predicted class per row of `features` [B, d]; `None` is CLIP zero-shot.
    fn predict(&self, params: Option<&[f32]>, features: &[f32]) -> Result<Vec<u32>>;
    /// The named tensors of one row (see [`Head::tensors`]).
    fn tensors(&self) -> Vec<(String, Vec<usize>, Range<usize>)>;
    fn layout(&self) -> String;
    /// Refuses parameters `predict` cannot take, naming both lengths.
    fn check_params(&self, params: &[f32]) -> Result<()> {
        let p = self.param_count();
        ensure!(
            params.len() == p,
            "the parameters hold {} values where the method's have {p}",
            params.len()
        );
        Ok(())
    }
}

/// The FedCLIP attention adapter as a [`Classifier`] (predictions through
/// [`crate::adapter::predict`], unchanged).
pub struct AttentionClassifier {
    pub dim: usize,
    pub texts: TextFeatures<f32>,
}

impl Classifier for AttentionClassifier {
    fn param_count(&self) -> usize {
        crate::adapter::param_count(self.dim)
    }
    fn predict(&self, params: Option<&[f32]>, features: &[f32]) -> Result<Vec<u32>> {
        let params = params
            .map(|p| AdapterParams::from_flat(self.dim, p.to_vec()))
            .transpose()?;
        predict(params.as_ref(), features, &self.texts)
    }
    fn tensors(&self) -> Vec<(String, Vec<usize>, Range<usize>)> {
        let d = self.dim;
        named(&[
            ("attention.0.weight", vec![d, d]),
            ("attention.0.bias", vec![d]),
            ("attention.2.weight", vec![d, d]),
            ("attention.2.bias", vec![d]),
        ])
    }
    fn layout(&self) -> String {
        "FedCLIP adapter: Linear(d,d) → Tanh → Linear(d,d) → Softmax; PyTorch [out, in]".into()
    }
}

/// A [`Head`] as a [`Classifier`]; zero-shot goes through [`crate::adapter::predict`].
pub struct HeadClassifier<H> {
    pub head: H,
    pub texts: TextFeatures<f32>,
}

impl<H: Head<f32>> Classifier for HeadClassifier<H> {
    fn param_count(&self) -> usize {
        self.head.param_count()
    }
    fn predict(&self, params: Option<&[f32]>, features: &[f32]) -> Result<Vec<u32>> {
        let Some(params) = params else {
            return predict(None, features, &self.texts);
        };
        self.check_params(params)?;
        check_rows(self.head.name(), features, self.head.dim())?;
        let logits = self.head.logits(params, features);
        Ok(argmax_rows(&logits, self.head.classes()))
    }
    fn tensors(&self) -> Vec<(String, Vec<usize>, Range<usize>)> {
        self.head.tensors()
    }
    fn layout(&self) -> String {
        self.head.layout()
    }
    fn check_params(&self, params: &[f32]) -> Result<()> {
        let p = self.head.param_count();
        let rows = params.len() / p;
        let whole = rows >= 1 && params.len() == rows * p;
        ensure!(
            whole && (rows == 1 || self.head.takes_union()),
            "{}: the parameters hold {} values where one row has {p}{}",
            self.head.name(),
            params.len(),
            if self.head.takes_union() {
                " (or a union of rows)"
            } else {
                ""
            }
        );
        Ok(())
    }
}

/// Features [B, d], finite, no row all zero (it would have no direction).
pub(crate) fn check_rows(who: &str, features: &[f32], dim: usize) -> Result<()> {
    ensure!(
        features.len().is_multiple_of(dim),
        "{who}: features hold {} values, not a multiple of the feature dim {dim}",
        features.len()
    );
    crate::adapter::check_features(who, features, dim)
}

/// Index of the largest value of each row of `m` [B, c] (the first on ties).
pub fn argmax_rows<T: Real>(m: &[T], c: usize) -> Vec<u32> {
    m.chunks_exact(c)
        .map(|row| {
            let mut best = 0;
            for k in 1..c {
                if row[k] > row[best] {
                    best = k;
                }
            }
            best as u32
        })
        .collect()
}

/// Each row of `x` [B, d] divided by its L2 norm, and the norms.
pub(crate) fn normalize_rows<T: Real>(x: &[T], d: usize) -> (Vec<T>, Vec<T>) {
    let mut out = x.to_vec();
    let mut norms = Vec::with_capacity(x.len() / d);
    for row in out.chunks_exact_mut(d) {
        let norm = row.iter().map(|&v| v * v).sum::<T>().sqrt();
        row.iter_mut().for_each(|v| *v /= norm);
        norms.push(norm);
    }
    (out, norms)
}

/// `a` [m, k] times `bᵀ` (`b` [n, k]): [m, n], through the `gemm` crate as the adapter is.
pub(crate) fn matmul_bt<T: Real>(a: &[T], m: usize, b: &[T], n: usize, k: usize) -> Vec<T> {
    let mut out = vec![T::ZERO; m * n];
    // One client's batch per call; the trainer already runs clients in parallel.
    crate::adapter::kernel::matmul(
        &mut out,
        m,
        n,
        k,
        a,
        k,
        1,
        b,
        1,
        k,
        false,
        gemm::Parallelism::None,
    );
    out
}

/// Mean softmax cross-entropy of `logits` [B, C] against `labels`, and its gradient with
/// respect to the logits, `(softmax − onehot) / B`, in place of the logits.
pub(crate) fn cross_entropy<T: Real>(logits: &mut [T], labels: &[u32], c: usize) -> T {
    let b = T::from_f64(labels.len() as f64);
    let mut loss = T::ZERO;
    for (row, &y) in logits.chunks_exact_mut(c).zip(labels) {
        let max = row.iter().fold(T::NEG_INFINITY, |m, &v| m.max(v));
        let sum: T = row.iter().map(|&v| (v - max).exp()).sum();
        loss += sum.ln() + max - row[y as usize];
        for (j, v) in row.iter_mut().enumerate() {
            let p = (*v - max).exp() / sum;
            let onehot = if j == y as usize { T::ONE } else { T::ZERO };
            *v = (p - onehot) / b;
        }
    }
    loss / b
}

/// Consecutive named tensors from their shapes, for [`Head::tensors`].
pub(crate) fn named(parts: &[(&str, Vec<usize>)]) -> Vec<(String, Vec<usize>, Range<usize>)> {
    let mut at = 0;
    parts
        .iter()
        .map(|(name, shape)| {
            let n: usize = shape.iter().product();
            at += n;
            (name.to_string(), shape.clone(), at - n..at)
        })
        .collect()
}
