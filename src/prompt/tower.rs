//! The frozen text tower run from token embeddings ([`PromptTower::forward_embeds`]) with
//! every activation the backward pass needs kept in [`TextActs`], and the gradient of the
//! projected features with respect to those input embeddings ([`PromptTower::backward_embeds`]).
//!
//! The forward is `crate::model`'s text tower (transformers' `CLIPTextTransformer`, CoOp's
//! `TextEncoder`): embeddings + positions, pre-LN causal blocks, the final LayerNorm at each
//! sequence's pooled row, the projection. Under the causal mask a row never sees later rows,
//! so callers run only `max(pool) + 1` positions; `tests/prompt_learner.rs` shows this equals
//! the 77-token computation.

use super::ops::{self, AttentionShape, NormStats};
use crate::adapter::Real;
use crate::weights::{
    Activation, BlockWeights, ClipConfig, ModelFiles, TextConfig, TextWeights, TowerWeights,
};
use anyhow::{Context, Result, bail, ensure};
use std::path::Path;

/// One block's weights in `T` (Q, K and V split).
struct Block<T> {
    ln1: (Vec<T>, Vec<T>),
    q: (Vec<T>, Vec<T>),
    k: (Vec<T>, Vec<T>),
    v: (Vec<T>, Vec<T>),
    out: (Vec<T>, Vec<T>),
    ln2: (Vec<T>, Vec<T>),
    fc1: (Vec<T>, Vec<T>),
    fc2: (Vec<T>, Vec<T>),
}

fn cast<T: Real>(v: &[f32]) -> Vec<T> {
    v.iter().map(|&x| T::from_f64(x as f64)).collect()
}

impl<T: Real> Block<T> {
    fn new(w: &BlockWeights, d: usize) -> Self {
        let part = |m: &[f32], i: usize, len: usize| cast(&m[i * len..(i + 1) * len]);
        let qkv = |i| (part(&w.qkv_weight, i, d * d), part(&w.qkv_bias, i, d));
        Block {
            ln1: (cast(&w.ln1.weight), cast(&w.ln1.bias)),
            q: qkv(0),
            k: qkv(1),
            v: qkv(2),
            out: (cast(&w.out_weight), cast(&w.out_bias)),
            ln2: (cast(&w.ln2.weight), cast(&w.ln2.bias)),
            fc1: (cast(&w.fc1_weight), cast(&w.fc1_bias)),
            fc2: (cast(&w.fc2_weight), cast(&w.fc2_bias)),
        }
    }
}

/// A CLIP text tower with a projection, its weights in `T`, frozen.
pub struct PromptTower<T> {
    config: TextConfig,
    tokens: Vec<T>,
    positions: Vec<T>,
    blocks: Vec<Block<T>>,
    final_norm: (Vec<T>, Vec<T>),
    /// `[projection_dim, hidden]`.
    projection: Vec<T>,
}

/// What one block keeps of its forward pass.
#[derive(Clone, Debug, Default)]
pub struct LayerActs<T> {
    /// The block input `[B·T, d]`.
    pub input: Vec<T>,
    pub ln1: NormStats<T>,
    pub q: Vec<T>,
    pub k: Vec<T>,
    pub v: Vec<T>,
    /// `[B, heads, T, T]`.
    pub probs: Vec<T>,
    /// The attention output before `out_proj`.
    pub ctx: Vec<T>,
    /// The residual after attention, input of LN2.
    pub mid: Vec<T>,
    pub ln2: NormStats<T>,
    /// fc1's output before the nonlinearity `[B·T, intermediate]`.
    pub fc1_pre: Vec<T>,
}

/// The activations of one [`PromptTower::forward_embeds`] for `batch` sequences of `seq`
/// tokens; a pass of another shape is refused.
#[derive(Clone, Debug)]
pub struct TextActs<T> {
    batch: usize,
    seq: usize,
    pub layers: Vec<LayerActs<T>>,
    /// Each sequence's pooled row.
    pub pool: Vec<usize>,
    /// The last block's output at the pooled rows `[B, d]`, input of the final LN.
    pub pooled_in: Vec<T>,
    pub final_ln: NormStats<T>,
    /// After the final LN `[B, d]`.
    pub pooled: Vec<T>,
    /// The projected features `[B, projection_dim]` (not normalised).
    pub features: Vec<T>,
}

impl<T> TextActs<T> {
    pub fn new(batch: usize, seq: usize) -> Self {
        TextActs {
            batch,
            seq,
            layers: Vec::new(),
            pool: Vec::new(),
            pooled_in: Vec::new(),
            final_ln: NormStats {
                mean: Vec::new(),
                rstd: Vec::new(),
            },
            pooled: Vec::new(),
            features: Vec::new(),
        }
    }
    pub fn shape(&self) -> (usize, usize) {
        (self.batch, self.seq)
    }
}

impl<T: Real> PromptTower<T> {
    /// The text tower of the model at `path` (a directory or `.safetensors`, either layout).
    pub fn load(path: &Path) -> Result<Self> {
        let files = ModelFiles::locate(path)?;
        let config: ClipConfig = files.config()?;
        let store = files.open_store()?;
        config.check_against(&store, &files.config_file)?;
        let Some(text) = config.text.as_ref() else {
            bail!(
                "{}: prompt learning needs the model's text tower; this save has none",
                path.display()
            );
        };
        let weights = TowerWeights::new(&store, files.layout);
        let blocks = (0..text.num_hidden_layers)
            .map(|i| weights.text_block(text, i))
            .collect::<Result<Vec<_>>>()
            .with_context(|| format!("loading the text tower of {}", path.display()))?;
        let rest = weights
            .text(text)
            .with_context(|| format!("loading the text tower of {}", path.display()))?;
        Self::from_weights(text, &rest, &blocks).with_context(|| path.display().to_string())
    }

    /// The tower from weights in memory (tests build random ones).
    pub fn from_weights(
        config: &TextConfig,
        w: &TextWeights,
        blocks: &[BlockWeights],
    ) -> Result<Self> {
        let Some(projection) = &w.projection else {
            bail!(
                "prompt learning needs the text projection (text_projection); the model has none"
            );
        };
        ensure!(
            blocks.len() == config.num_hidden_layers,
            "{} blocks given for a tower of {} layers",
            blocks.len(),
            config.num_hidden_layers
        );
        let d = config.hidden_size;
        Ok(PromptTower {
            config: config.clone(),
            tokens: cast(&w.tokens),
            positions: cast(&w.positions),
            blocks: blocks.iter().map(|b| Block::new(b, d)).collect(),
            final_norm: (cast(&w.final_norm.weight), cast(&w.final_norm.bias)),
            projection: cast(projection),
        })
    }

    pub fn config(&self) -> &TextConfig {
        &self.config
    }
    /// The text width d_text.
    pub fn width(&self) -> usize {
        self.config.hidden_size
    }
    /// The projected feature width.
    pub fn feature_dim(&self) -> usize {
        self.config.projection_dim
    }
    /// Token `id`'s embedding row.
    pub fn token_embedding(&self, id: u32) -> &[T] {
        let d = self.width();
        &self.tokens[id as usize * d..][..d]
    }

    fn attention_shape(&self, batch: usize, seq: usize) -> AttentionShape {
        AttentionShape {
            batch,
            seq,
            heads: self.config.num_attention_heads,
            head_dim: self.config.head_dim(),
        }
    }

    fn eps(&self) -> f64 {
        self.config.layer_norm_eps as f64
    }

    fn act(&self) -> Activation {
        self.config.hidden_act
    }

    /// Runs `embeds` (`[batch, seq, d]` token embeddings, positions not yet added) through
    /// the tower, pooling sequence b at row `pool[b]`; the projected features are
    /// `acts.features`.
    pub fn forward_embeds(
        &self,
        embeds: &[T],
        pool: &[usize],
        acts: &mut TextActs<T>,
    ) -> Result<()> {
        let (batch, seq) = acts.shape();
        let d = self.width();
        ensure!(
            embeds.len() == batch * seq * d,
            "prompt embeddings hold {} values where the activations were sized for {batch}×{seq}×{d}",
            embeds.len()
        );
        ensure!(
            seq <= self.config.max_position_embeddings,
            "a prompt of {seq} tokens exceeds the text tower's {} positions",
            self.config.max_position_embeddings
        );
        ensure!(
            pool.len() == batch && pool.iter().all(|&p| p < seq),
            "pooled rows {pool:?} do not fit {batch} prompts of {seq} tokens"
        );
        let mut h = embeds.to_vec();
        for (i, row) in h.chunks_exact_mut(d).enumerate() {
            let pos = &self.positions[(i % seq) * d..][..d];
            row.iter_mut().zip(pos).for_each(|(x, &p)| *x += p);
        }
        acts.layers.clear();
        for block in &self.blocks {
            let layer = self.block_forward(block, &mut h, batch, seq);
            acts.layers.push(layer);
        }
        acts.pool = pool.to_vec();
        acts.pooled_in = (pool.iter().enumerate())
            .flat_map(|(b, &p)| h[(b * seq + p) * d..][..d].to_vec())
            .collect();
        let (gamma, beta) = &self.final_norm;
        (acts.pooled, acts.final_ln) = ops::layer_norm(&acts.pooled_in, d, gamma, beta, self.eps());
        let zero = vec![T::ZERO; self.feature_dim()];
        acts.features = ops::linear(
            &acts.pooled,
            batch,
            d,
            &self.projection,
            &zero,
            self.feature_dim(),
        );
        Ok(())
    }

    /// `h ← h + attn(LN1 h)`, then `h ← h + mlp(LN2 h)`, keeping what the backward needs.
    fn block_forward(&self, w: &Block<T>, h: &mut [T], batch: usize, seq: usize) -> LayerActs<T> {
        let (d, f) = (self.width(), self.config.intermediate_size);
        let rows = batch * seq;
        let input = h.to_vec();
        let (x, ln1) = ops::layer_norm(h, d, &w.ln1.0, &w.ln1.1, self.eps());
        let q = ops::linear(&x, rows, d, &w.q.0, &w.q.1, d);
        let k = ops::linear(&x, rows, d, &w.k.0, &w.k.1, d);
        let v = ops::linear(&x, rows, d, &w.v.0, &w.v.1, d);
        let (ctx, probs) = ops::attention(&q, &k, &v, self.attention_shape(batch, seq));
        let attn = ops::linear(&ctx, rows, d, &w.out.0, &w.out.1, d);
        h.iter_mut().zip(&attn).for_each(|(a, &b)| *a += b);
        let mid = h.to_vec();
        let (x, ln2) = ops::layer_norm(h, d, &w.ln2.0, &w.ln2.1, self.eps());
        let fc1_pre = ops::linear(&x, rows, d, &w.fc1.0, &w.fc1.1, f);
        let act = ops::activate(&fc1_pre, self.act());
        let mlp = ops::linear(&act, rows, f, &w.fc2.0, &w.fc2.1, d);
        h.iter_mut().zip(&mlp).for_each(|(a, &b)| *a += b);
        LayerActs {
            input,
            ln1,
            q,
            k,
            v,
            probs,
            ctx,
            mid,
            ln2,
            fc1_pre,
        }
    }

    /// The gradient `[batch, seq, d]` of the loss with respect to the input embeddings, given
    /// its gradient `dfeatures` `[batch, projection_dim]` with respect to the projected
    /// features of the pass `acts` recorded. With `trace`, also the gradient with respect to
    /// each hidden state, in transformers' `hidden_states` order (embeddings + positions
    /// first, the last block's output last).
    pub fn backward_embeds(
        &self,
        acts: &TextActs<T>,
        dfeatures: &[T],
        trace: Option<&mut Vec<Vec<T>>>,
    ) -> Vec<T> {
        let (batch, seq) = acts.shape();
        let d = self.width();
        assert_eq!(
            dfeatures.len(),
            batch * self.feature_dim(),
            "backward_embeds: dfeatures is not [B, e]"
        );
        let dpooled =
            ops::linear_backward_input(dfeatures, batch, self.feature_dim(), &self.projection, d);
        let dpooled_in = ops::layer_norm_backward(
            &dpooled,
            &acts.pooled_in,
            d,
            &self.final_norm.0,
            &acts.final_ln,
        );
        let mut dh = vec![T::ZERO; batch * seq * d];
        for (b, &p) in acts.pool.iter().enumerate() {
            dh[(b * seq + p) * d..][..d].copy_from_slice(&dpooled_in[b * d..][..d]);
        }
        let mut states = Vec::new();
        if trace.is_some() {
            states.push(dh.clone());
        }
        for (w, layer) in self.blocks.iter().zip(&acts.layers).rev() {
            dh = self.block_backward(w, layer, &dh, batch, seq);
            if trace.is_some() {
                states.push(dh.clone());
            }
        }
        if let Some(t) = trace {
            states.reverse();
            *t = states;
        }
        dh
    }

    /// The gradient with respect to a block's input from the gradient `dout` of its output.
    fn block_backward(
        &self,
        w: &Block<T>,
        a: &LayerActs<T>,
        dout: &[T],
        batch: usize,
        seq: usize,
    ) -> Vec<T> {
        let (d, f) = (self.width(), self.config.intermediate_size);
        let rows = batch * seq;
        // MLP branch: out = mid + fc2(act(fc1(LN2 mid))).
        let dact = ops::linear_backward_input(dout, rows, d, &w.fc2.0, f);
        let dpre = ops::activate_backward(&dact, &a.fc1_pre, self.act());
        let dx2 = ops::linear_backward_input(&dpre, rows, f, &w.fc1.0, d);
        let mut dmid = ops::layer_norm_backward(&dx2, &a.mid, d, &w.ln2.0, &a.ln2);
        dmid.iter_mut().zip(dout).for_each(|(a, &b)| *a += b);
        // Attention branch: mid = input + out_proj(attn(q, k, v of LN1 input)).
        let dctx = ops::linear_backward_input(&dmid, rows, d, &w.out.0, d);
        let (dq, dk, dv) = ops::attention_backward(
            &dctx,
            &a.q,
            &a.k,
            &a.v,
            &a.probs,
            self.attention_shape(batch, seq),
        );
        let mut dx1 = ops::linear_backward_input(&dq, rows, d, &w.q.0, d);
        for (g, m) in [(&dk, &w.k.0), (&dv, &w.v.0)] {
            let part = ops::linear_backward_input(g, rows, d, m, d);
            dx1.iter_mut().zip(&part).for_each(|(a, &b)| *a += b);
        }
        let mut din = ops::layer_norm_backward(&dx1, &a.input, d, &w.ln1.0, &a.ln1);
        din.iter_mut().zip(&dmid).for_each(|(a, &b)| *a += b);
        din
    }
}
