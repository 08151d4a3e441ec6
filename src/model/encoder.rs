//! The pre-LN transformer block shared by both towers.

use super::ops;
use crate::weights::{Activation, BlockWeights, Norm};

/// An `nn.Linear`: weight `[out, in]`, optional bias `[out]`.
pub struct Linear {
    pub weight: Vec<f32>,
    pub bias: Option<Vec<f32>>,
    pub in_features: usize,
    pub out_features: usize,
}

impl Linear {
    /// `weight` is `[out_f, in_f]`, as the name table returns it.
    pub fn new(weight: Vec<f32>, bias: Option<Vec<f32>>, in_f: usize, out_f: usize) -> Self {
        debug_assert_eq!(weight.len(), in_f * out_f);
        Linear {
            weight,
            bias,
            in_features: in_f,
            out_features: out_f,
        }
    }

    /// `x` is `[rows, in_features]`.
    pub fn forward(&self, x: &[f32], rows: usize) -> Vec<f32> {
        ops::linear(
            x,
            rows,
            self.in_features,
            &self.weight,
            self.bias.as_deref(),
            self.out_features,
        )
    }
}

pub struct LayerNorm {
    pub weight: Vec<f32>,
    pub bias: Vec<f32>,
    pub eps: f32,
}

impl LayerNorm {
    pub fn new(norm: Norm, eps: f32) -> Self {
        LayerNorm {
            weight: norm.weight,
            bias: norm.bias,
            eps,
        }
    }

    pub fn forward(&self, x: &[f32]) -> Vec<f32> {
        ops::layer_norm(x, self.weight.len(), &self.weight, &self.bias, self.eps)
    }
}

/// Sizes of one tower's blocks.
#[derive(Clone, Copy, Debug)]
pub struct BlockShape {
    pub hidden: usize,
    pub intermediate: usize,
    pub heads: usize,
    pub act: Activation,
    pub eps: f32,
}

/// `h + attn(LN1 h)`, then `h + mlp(LN2 h)`, as transformers' `CLIPEncoderLayer`.
pub struct EncoderLayer {
    shape: BlockShape,
    ln1: LayerNorm,
    q: Linear,
    k: Linear,
    v: Linear,
    out: Linear,
    ln2: LayerNorm,
    fc1: Linear,
    fc2: Linear,
}

impl EncoderLayer {
    /// Splits the stacked Q/K/V rows into the three projections the attention takes.
    pub fn new(w: BlockWeights, shape: BlockShape) -> Self {
        let (d, f) = (shape.hidden, shape.intermediate);
        let split = |m: &[f32], part: usize, len: usize| m[part * len..(part + 1) * len].to_vec();
        let qkv = |part| {
            Linear::new(
                split(&w.qkv_weight, part, d * d),
                Some(split(&w.qkv_bias, part, d)),
                d,
                d,
            )
        };
        EncoderLayer {
            shape,
            ln1: LayerNorm::new(w.ln1, shape.eps),
            q: qkv(0),
            k: qkv(1),
            v: qkv(2),
            out: Linear::new(w.out_weight, Some(w.out_bias), d, d),
            ln2: LayerNorm::new(w.ln2, shape.eps),
            fc1: Linear::new(w.fc1_weight, Some(w.fc1_bias), d, f),
            fc2: Linear::new(w.fc2_weight, Some(w.fc2_bias), f, d),
        }
    }

    /// `h` is `[batch·seq, hidden]`, updated in place.
    pub fn forward(&self, h: &mut [f32], batch: usize, seq: usize, causal: bool) {
        let rows = batch * seq;
        let x = self.ln1.forward(h);
        let (q, k, v) = (
            self.q.forward(&x, rows),
            self.k.forward(&x, rows),
            self.v.forward(&x, rows),
        );
        let heads = self.shape.heads;
        let ctx = ops::attention(
            &q,
            &k,
            &v,
            ops::AttentionShape {
                batch,
                seq,
                heads,
                head_dim: self.shape.hidden / heads,
                causal,
            },
        );
        ops::add_in_place(h, &self.out.forward(&ctx, rows));
        let x = self.ln2.forward(h);
        let mut mid = self.fc1.forward(&x, rows);
        ops::activate(&mut mid, self.shape.act);
        ops::add_in_place(h, &self.fc2.forward(&mid, rows));
    }
}

/// Collects per-layer hidden states when asked (tests compare them layer by layer).
pub type Trace = Option<Vec<Vec<f32>>>;

pub fn record(trace: &mut Trace, h: &[f32]) {
    if let Some(t) = trace {
        t.push(h.to_vec());
    }
}
