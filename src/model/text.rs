//! The text tower: token + position embeddings, causal blocks, final LN, the end
//! token pooled, projection.

use super::cpu::{Kernels, PackedLinear};
use super::encoder::{BlockShape, EncoderLayer, LayerNorm, Trace, Workspace, project, record};
use crate::weights::{TextConfig, TowerWeights};
use anyhow::Result;

pub struct TextTower {
    pub config: TextConfig,
    kernels: &'static Kernels,
    tokens: Vec<f32>,
    positions: Vec<f32>,
    layers: Vec<EncoderLayer>,
    final_ln: LayerNorm,
    projection: Option<PackedLinear>,
}

pub struct TextOutput {
    /// The final-LN hidden state at each sequence's end token, `[batch, hidden]`.
    pub pooled: Vec<f32>,
    /// Projected features before L2 normalisation, `[batch, projection_dim]`.
    pub embeds: Vec<f32>,
    /// Embeddings and each block's output (before the final LN), when traced.
    pub hidden_states: Vec<Vec<f32>>,
    /// After the final LN, `[batch·seq, hidden]`, when traced.
    pub last_hidden_state: Vec<f32>,
}

impl TextTower {
    /// Loads and packs the tower's weights for `kernels`.
    pub fn load(
        kernels: &'static Kernels,
        weights: &TowerWeights,
        config: &TextConfig,
    ) -> Result<Self> {
        let d = config.hidden_size;
        let eps = config.layer_norm_eps;
        let shape = BlockShape {
            hidden: d,
            intermediate: config.intermediate_size,
            heads: config.num_attention_heads,
            act: config.hidden_act,
            eps,
        };
        let layers = (0..config.num_hidden_layers)
            .map(|i| {
                Ok(EncoderLayer::new(
                    kernels,
                    weights.text_block(config, i)?,
                    shape,
                ))
            })
            .collect::<Result<Vec<_>>>()?;
        let w = weights.text(config)?;
        Ok(TextTower {
            tokens: w.tokens,
            positions: w.positions,
            layers,
            final_ln: LayerNorm::new(w.final_norm, eps),
            projection: w
                .projection
                .map(|p| kernels.pack(&p, None, (d, config.projection_dim), 1)),
            config: config.clone(),
            kernels,
        })
    }

    pub fn has_projection(&self) -> bool {
        self.projection.is_some()
    }

    /// `ids` is `[batch, seq]` with `seq ≤ max_position_embeddings`.
    pub fn forward(
        &self,
        ids: &[u32],
        batch: usize,
        seq: usize,
        trace: bool,
    ) -> Result<TextOutput> {
        let c = &self.config;
        let d = c.hidden_size;
        let pool = c.check_ids(ids, batch, seq)?;
        let mut h = vec![0.0f32; batch * seq * d];
        for (i, row) in h.chunks_exact_mut(d).enumerate() {
            let (t, pos) = (ids[i] as usize, i % seq);
            let (tok, posv) = (&self.tokens[t * d..][..d], &self.positions[pos * d..][..d]);
            for ((x, a), b) in row.iter_mut().zip(tok).zip(posv) {
                *x = a + b;
            }
        }
        let k = self.kernels;
        let mut states: Trace = trace.then(Vec::new);
        record(&mut states, &h);
        let mut ws = Workspace::default();
        for layer in &self.layers {
            layer.forward(k, &mut h, (batch, seq), true, &mut ws);
            record(&mut states, &h);
        }
        // Only the pooled rows are needed unless traced; LN is row-wise so either is exact.
        let (pooled, last) = if trace {
            let last = self.final_ln.forward(k, &h);
            let pooled = pool
                .iter()
                .enumerate()
                .flat_map(|(b, &p)| last[(b * seq + p) * d..(b * seq + p + 1) * d].to_vec())
                .collect();
            (pooled, last)
        } else {
            let rows: Vec<f32> = pool
                .iter()
                .enumerate()
                .flat_map(|(b, &p)| h[(b * seq + p) * d..(b * seq + p + 1) * d].to_vec())
                .collect();
            (self.final_ln.forward(k, &rows), Vec::new())
        };
        let embeds = self
            .projection
            .as_ref()
            .map_or_else(Vec::new, |p| project(k, p, &pooled, batch));
        Ok(TextOutput {
            pooled,
            embeds,
            hidden_states: states.unwrap_or_default(),
            last_hidden_state: last,
        })
    }
}
