//! The pre-LN transformer block shared by both towers, written once over a [`Kernels`]
//! table (see `cpu`): it never names an instruction set.

use super::cpu::{Act, AttentionShape, Epilogue, Kernels, PackedLinear};
use crate::weights::{Activation, BlockWeights, Norm};

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

    /// `x` and `out` are whole rows of the norm's width.
    pub fn forward_into(&self, kernels: &Kernels, x: &[f32], out: &mut [f32]) {
        kernels.layer_norm(x, out, &self.weight, &self.bias, self.eps)
    }

    pub fn forward(&self, kernels: &Kernels, x: &[f32]) -> Vec<f32> {
        let mut out = vec![0.0f32; x.len()];
        self.forward_into(kernels, x, &mut out);
        out
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

/// The activations of one forward, sized for the largest batch seen and reused by every
/// layer, so that a block allocates nothing.
#[derive(Default)]
pub struct Workspace {
    x: Vec<f32>,
    qkv: Vec<f32>,
    ctx: Vec<f32>,
    mid: Vec<f32>,
}

impl Workspace {
    fn ensure(&mut self, rows: usize, shape: &BlockShape) {
        let (d, f) = (shape.hidden, shape.intermediate);
        self.x.resize(rows * d, 0.0);
        self.qkv.resize(rows * 3 * d, 0.0);
        self.ctx.resize(rows * d, 0.0);
        self.mid.resize(rows * f, 0.0);
    }
}

/// `h + attn(LN1 h)`, then `h + mlp(LN2 h)`, as transformers' `CLIPEncoderLayer`.
pub struct EncoderLayer {
    shape: BlockShape,
    ln1: LayerNorm,
    /// Q, K and V joined: `[3·hidden, hidden]`, one product.
    qkv: PackedLinear,
    out: PackedLinear,
    ln2: LayerNorm,
    fc1: PackedLinear,
    fc2: PackedLinear,
}

impl EncoderLayer {
    /// Packs the block's weights for `kernels` (the stacked Q/K/V rows as one product).
    pub fn new(kernels: &Kernels, w: BlockWeights, shape: BlockShape) -> Self {
        let (d, f) = (shape.hidden, shape.intermediate);
        EncoderLayer {
            shape,
            ln1: LayerNorm::new(w.ln1, shape.eps),
            qkv: kernels.pack(&w.qkv_weight, Some(&w.qkv_bias), (d, 3 * d), 3),
            out: kernels.pack(&w.out_weight, Some(&w.out_bias), (d, d), 1),
            ln2: LayerNorm::new(w.ln2, shape.eps),
            fc1: kernels.pack(&w.fc1_weight, Some(&w.fc1_bias), (d, f), 1),
            fc2: kernels.pack(&w.fc2_weight, Some(&w.fc2_bias), (f, d), 1),
        }
    }

    /// `h` is `[batch·seq, hidden]`, updated in place.
    pub fn forward(
        &self,
        kernels: &Kernels,
        h: &mut [f32],
        (batch, seq): (usize, usize),
        causal: bool,
        ws: &mut Workspace,
    ) {
        let rows = batch * seq;
        ws.ensure(rows, &self.shape);
        let residual = Epilogue {
            act: Act::None,
            residual: true,
        };
        self.ln1.forward_into(kernels, h, &mut ws.x);
        kernels.linear(&self.qkv, &ws.x, rows, &mut ws.qkv, Epilogue::PLAIN);
        let heads = self.shape.heads;
        let shape = AttentionShape {
            batch,
            seq,
            heads,
            head_dim: self.shape.hidden / heads,
            causal,
        };
        kernels.attention(&ws.qkv, &mut ws.ctx, shape);
        kernels.linear(&self.out, &ws.ctx, rows, h, residual);
        self.ln2.forward_into(kernels, h, &mut ws.x);
        let act = match self.shape.act {
            Activation::QuickGelu => Act::QuickGelu,
            Activation::Gelu => Act::Gelu,
        };
        let fc1 = Epilogue {
            act,
            residual: false,
        };
        kernels.linear(&self.fc1, &ws.x, rows, &mut ws.mid, fc1);
        kernels.linear(&self.fc2, &ws.mid, rows, h, residual);
    }
}

/// A projection without bias, packed for `kernels`: `[rows, in] → [rows, out]`.
pub fn project(kernels: &Kernels, p: &PackedLinear, x: &[f32], rows: usize) -> Vec<f32> {
    let mut out = vec![0.0f32; rows * p.out_features];
    kernels.linear(p, x, rows, &mut out, Epilogue::PLAIN);
    out
}

/// Collects per-layer hidden states when asked (tests compare them layer by layer).
pub type Trace = Option<Vec<Vec<f32>>>;

pub fn record(trace: &mut Trace, h: &[f32]) {
    if let Some(t) = trace {
        t.push(h.to_vec());
    }
}
