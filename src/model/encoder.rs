//! The pre-LN transformer block shared by both towers.

use super::ops;
use crate::weights::{Activation, Scope, TensorStore};
use anyhow::Result;

/// An `nn.Linear`: weight `[out, in]`, optional bias `[out]`.
pub struct Linear {
    pub weight: Vec<f32>,
    pub bias: Option<Vec<f32>>,
    pub in_features: usize,
    pub out_features: usize,
}

impl Linear {
    pub fn load(s: &Scope, name: &str, in_f: usize, out_f: usize, bias: bool) -> Result<Self> {
        Ok(Linear {
            weight: s.get(&format!("{name}.weight"), &[out_f, in_f])?,
            bias: if bias {
                Some(s.get(&format!("{name}.bias"), &[out_f])?)
            } else {
                None
            },
            in_features: in_f,
            out_features: out_f,
        })
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
    pub fn load(s: &Scope, name: &str, dim: usize, eps: f32) -> Result<Self> {
        Ok(LayerNorm {
            weight: s.get(&format!("{name}.weight"), &[dim])?,
            bias: s.get(&format!("{name}.bias"), &[dim])?,
            eps,
        })
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

impl BlockShape {
    /// Loads `count` blocks stored as `encoder.layers.{i}` under `s`.
    pub fn load_layers(self, s: &Scope, count: usize) -> Result<Vec<EncoderLayer>> {
        (0..count)
            .map(|i| EncoderLayer::load(s, &format!("encoder.layers.{i}"), self))
            .collect()
    }
}

/// A tower's projection (`visual_projection` / `text_projection`, stored without a prefix and
/// without a bias), or `None` for saves that have none.
pub fn load_projection(
    store: &TensorStore,
    name: &str,
    hidden: usize,
    dim: usize,
) -> Result<Option<Linear>> {
    let s = Scope {
        store,
        prefixes: &[""],
    };
    if !s.has(&format!("{name}.weight")) {
        return Ok(None);
    }
    Linear::load(&s, name, hidden, dim, false).map(Some)
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
    pub fn load(s: &Scope, prefix: &str, shape: BlockShape) -> Result<Self> {
        let (d, f) = (shape.hidden, shape.intermediate);
        let lin = |n: &str, i, o| Linear::load(s, &format!("{prefix}.{n}"), i, o, true);
        Ok(EncoderLayer {
            shape,
            ln1: LayerNorm::load(s, &format!("{prefix}.layer_norm1"), d, shape.eps)?,
            q: lin("self_attn.q_proj", d, d)?,
            k: lin("self_attn.k_proj", d, d)?,
            v: lin("self_attn.v_proj", d, d)?,
            out: lin("self_attn.out_proj", d, d)?,
            ln2: LayerNorm::load(s, &format!("{prefix}.layer_norm2"), d, shape.eps)?,
            fc1: lin("mlp.fc1", d, f)?,
            fc2: lin("mlp.fc2", f, d)?,
        })
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
