//! The ViT image tower: patch embedding, class token, positions, pre-LN, blocks,
//! post-LN on the class token, projection.

use super::cpu::{Epilogue, Kernels, PackedLinear};
use super::encoder::{BlockShape, EncoderLayer, LayerNorm, Trace, Workspace, project, record};
use crate::weights::{TowerWeights, VisionConfig};
use anyhow::Result;
use rayon::prelude::*;

pub struct VisionTower {
    pub config: VisionConfig,
    kernels: &'static Kernels,
    /// Patch convolution as a matrix `[hidden, channels·patch·patch]`.
    patch: PackedLinear,
    class_embedding: Vec<f32>,
    positions: Vec<f32>,
    pre_ln: LayerNorm,
    layers: Vec<EncoderLayer>,
    post_ln: LayerNorm,
    projection: Option<PackedLinear>,
}

/// What one batch of images produces.
pub struct VisionOutput {
    /// Post-LN class token, `[batch, hidden]`.
    pub pooled: Vec<f32>,
    /// Projected features before L2 normalisation, `[batch, projection_dim]`
    /// (empty when the save has no projection).
    pub embeds: Vec<f32>,
    /// Encoder input and each block's output, `[batch·tokens, hidden]`, when traced.
    pub hidden_states: Vec<Vec<f32>>,
}

impl VisionTower {
    /// Loads and packs the tower's weights for `kernels`.
    pub fn load(
        kernels: &'static Kernels,
        weights: &TowerWeights,
        config: &VisionConfig,
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
                    weights.vision_block(config, i)?,
                    shape,
                ))
            })
            .collect::<Result<Vec<_>>>()?;
        let w = weights.vision(config)?;
        Ok(VisionTower {
            patch: kernels.pack(&w.patch, None, (w.patch.len() / d, d), 1),
            class_embedding: w.class_embedding,
            positions: w.positions,
            pre_ln: LayerNorm::new(w.pre_norm, eps),
            layers,
            post_ln: LayerNorm::new(w.post_norm, eps),
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

    /// Floats per image in `pixels`: channels × image_size².
    pub fn pixels_per_image(&self) -> usize {
        let c = &self.config;
        c.num_channels * c.image_size * c.image_size
    }

    /// `pixels` is `[batch, channels, size, size]`, already normalised.
    pub fn forward(&self, pixels: &[f32], batch: usize, trace: bool) -> VisionOutput {
        let c = &self.config;
        assert_eq!(
            pixels.len(),
            batch * self.pixels_per_image(),
            "pixel buffer size"
        );
        let (d, tokens) = (c.hidden_size, c.num_positions());
        let patches = im2col(pixels, batch, c.num_channels, c.image_size, c.patch_size);
        let k = self.kernels;
        let mut embedded = vec![0.0f32; batch * (tokens - 1) * d];
        k.linear(
            &self.patch,
            &patches,
            batch * (tokens - 1),
            &mut embedded,
            Epilogue::PLAIN,
        );
        // [class, patches...] + positions, per image.
        let mut h = vec![0.0f32; batch * tokens * d];
        h.par_chunks_mut(tokens * d)
            .enumerate()
            .for_each(|(b, img)| {
                img[..d].copy_from_slice(&self.class_embedding);
                img[d..]
                    .copy_from_slice(&embedded[b * (tokens - 1) * d..(b + 1) * (tokens - 1) * d]);
                img.iter_mut()
                    .zip(&self.positions)
                    .for_each(|(x, p)| *x += p);
            });
        let mut h = self.pre_ln.forward(k, &h);
        let mut states: Trace = trace.then(Vec::new);
        record(&mut states, &h);
        let mut ws = Workspace::default();
        for layer in &self.layers {
            layer.forward(k, &mut h, (batch, tokens), false, &mut ws);
            record(&mut states, &h);
        }
        let class_tokens: Vec<f32> = (0..batch)
            .flat_map(|b| h[b * tokens * d..b * tokens * d + d].iter().copied())
            .collect();
        let pooled = self.post_ln.forward(k, &class_tokens);
        let embeds = self
            .projection
            .as_ref()
            .map_or_else(Vec::new, |p| project(k, p, &pooled, batch));
        VisionOutput {
            pooled,
            embeds,
            hidden_states: states.unwrap_or_default(),
        }
    }
}

/// Non-overlapping `patch × patch` windows as rows `[batch·grid², channels·patch²]`, in
/// the (channel, row, column) order of the convolution weight. Pixels beyond the last
/// whole patch are dropped, as a stride-`patch` convolution does.
pub fn im2col(
    pixels: &[f32],
    batch: usize,
    channels: usize,
    size: usize,
    patch: usize,
) -> Vec<f32> {
    let grid = size / patch;
    let row_len = channels * patch * patch;
    let mut out = vec![0.0f32; batch * grid * grid * row_len];
    out.par_chunks_mut(grid * grid * row_len)
        .enumerate()
        .for_each(|(b, img_out)| {
            let img = &pixels[b * channels * size * size..(b + 1) * channels * size * size];
            for gy in 0..grid {
                for gx in 0..grid {
                    let row =
                        &mut img_out[(gy * grid + gx) * row_len..(gy * grid + gx + 1) * row_len];
                    for ch in 0..channels {
                        for py in 0..patch {
                            let src = ch * size * size + (gy * patch + py) * size + gx * patch;
                            let dst = (ch * patch + py) * patch;
                            row[dst..dst + patch].copy_from_slice(&img[src..src + patch]);
                        }
                    }
                }
            }
        });
    out
}
