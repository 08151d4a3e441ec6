//! The one name table: every tensor the towers read, by its logical role, in f32, from
//! either layout. Both engines build from these structs (`crate::model` keeps them,
//! `crate::cuda` uploads them), so no other file spells a stored tensor name.
//!
//! Hugging Face names follow transformers' `modeling_clip.py` (`CLIPVisionEmbeddings`,
//! `CLIPEncoderLayer`, `CLIPTextTransformer`); open_clip names follow its `transformer.py`
//! (`VisionTransformer`, `ResidualAttentionBlock`, `TextTransformer`). Layout differences
//! handled here: open_clip fuses Q, K and V into `attn.in_proj_weight` `[3·width, width]`
//! (the order HF's three projections are concatenated in), and stores `visual.proj` and
//! `text_projection` as `[width, embed]` matrices applied as `x @ proj`, the transpose of
//! HF's `nn.Linear` weight `[embed, width]`.

use super::Scope;
use super::config::{TextConfig, VisionConfig};
use super::layout::Layout;
use super::store::TensorStore;
use anyhow::Result;

/// A LayerNorm's gain and bias, `[dim]` each.
pub struct Norm {
    pub weight: Vec<f32>,
    pub bias: Vec<f32>,
}

/// One pre-LN transformer block. Matrices are `[out, in]` row-major (`nn.Linear`).
pub struct BlockWeights {
    pub ln1: Norm,
    /// Q, K and V stacked: `[3·hidden, hidden]`.
    pub qkv_weight: Vec<f32>,
    /// `[3·hidden]`.
    pub qkv_bias: Vec<f32>,
    pub out_weight: Vec<f32>,
    pub out_bias: Vec<f32>,
    pub ln2: Norm,
    /// `[intermediate, hidden]`.
    pub fc1_weight: Vec<f32>,
    pub fc1_bias: Vec<f32>,
    /// `[hidden, intermediate]`.
    pub fc2_weight: Vec<f32>,
    pub fc2_bias: Vec<f32>,
}

/// The image tower apart from its blocks.
pub struct VisionWeights {
    /// The patch convolution `[hidden, channels, patch, patch]` (no bias).
    pub patch: Vec<f32>,
    pub class_embedding: Vec<f32>,
    /// `[num_positions, hidden]`.
    pub positions: Vec<f32>,
    pub pre_norm: Norm,
    pub post_norm: Norm,
    /// `[projection_dim, hidden]` (`nn.Linear` form), when the save has one.
    pub projection: Option<Vec<f32>>,
}

/// The text tower apart from its blocks.
pub struct TextWeights {
    /// `[vocab, hidden]`.
    pub tokens: Vec<f32>,
    /// `[max_positions, hidden]`.
    pub positions: Vec<f32>,
    pub final_norm: Norm,
    /// `[projection_dim, hidden]` (`nn.Linear` form), when the save has one.
    pub projection: Option<Vec<f32>>,
}

/// Reads a store's tensors by role, for its layout.
pub struct TowerWeights<'a> {
    pub store: &'a TensorStore,
    pub layout: Layout,
}

/// The sizes of one tower's blocks, for reading them.
#[derive(Clone, Copy)]
struct Dims {
    hidden: usize,
    intermediate: usize,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Tower {
    Vision,
    Text,
}

fn transpose(m: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut t = vec![0.0f32; m.len()];
    for r in 0..rows {
        for c in 0..cols {
            t[c * rows + r] = m[r * cols + c];
        }
    }
    t
}

impl<'a> TowerWeights<'a> {
    pub fn new(store: &'a TensorStore, layout: Layout) -> Self {
        TowerWeights { store, layout }
    }

    /// Tensor prefixes of a tower: `CLIPModel` saves prefix `vision_model.`/`text_model.`,
    /// tower-only saves nothing; open_clip prefixes `visual.`, and its `CustomTextCLIP`
    /// saves put the text tower under `text.`.
    fn scope(&self, tower: Tower) -> Scope<'a> {
        let prefixes: &'static [&'static str] = match (self.layout, tower) {
            (Layout::HuggingFace, Tower::Vision) => &["vision_model.", ""],
            (Layout::HuggingFace, Tower::Text) => &["text_model.", ""],
            (Layout::OpenClip, Tower::Vision) => &["visual."],
            (Layout::OpenClip, Tower::Text) => &["", "text."],
        };
        Scope {
            store: self.store,
            prefixes,
        }
    }

    fn norm(s: &Scope, name: &str, dim: usize) -> Result<Norm> {
        Ok(Norm {
            weight: s.get(&format!("{name}.weight"), &[dim])?,
            bias: s.get(&format!("{name}.bias"), &[dim])?,
        })
    }

    pub fn vision(&self, c: &VisionConfig) -> Result<VisionWeights> {
        let s = self.scope(Tower::Vision);
        let (d, ch, p) = (c.hidden_size, c.num_channels, c.patch_size);
        let positions = [c.num_positions(), d];
        Ok(match self.layout {
            Layout::HuggingFace => VisionWeights {
                patch: s.get("embeddings.patch_embedding.weight", &[d, ch, p, p])?,
                class_embedding: s.get("embeddings.class_embedding", &[d])?,
                positions: s.get("embeddings.position_embedding.weight", &positions)?,
                // transformers' attribute really is spelled `pre_layrnorm`.
                pre_norm: Self::norm(&s, "pre_layrnorm", d)?,
                post_norm: Self::norm(&s, "post_layernorm", d)?,
                projection: self.hf_projection("visual_projection", d, c.projection_dim)?,
            },
            Layout::OpenClip => VisionWeights {
                patch: s.get("conv1.weight", &[d, ch, p, p])?,
                class_embedding: s.get("class_embedding", &[d])?,
                positions: s.get("positional_embedding", &positions)?,
                pre_norm: Self::norm(&s, "ln_pre", d)?,
                post_norm: Self::norm(&s, "ln_post", d)?,
                projection: Self::open_clip_projection(&s, "proj", d, c.projection_dim)?,
            },
        })
    }

    pub fn text(&self, c: &TextConfig) -> Result<TextWeights> {
        let s = self.scope(Tower::Text);
        let d = c.hidden_size;
        let (tokens, positions) = ([c.vocab_size, d], [c.max_position_embeddings, d]);
        Ok(match self.layout {
            Layout::HuggingFace => TextWeights {
                tokens: s.get("embeddings.token_embedding.weight", &tokens)?,
                positions: s.get("embeddings.position_embedding.weight", &positions)?,
                final_norm: Self::norm(&s, "final_layer_norm", d)?,
                projection: self.hf_projection("text_projection", d, c.projection_dim)?,
            },
            Layout::OpenClip => TextWeights {
                tokens: s.get("token_embedding.weight", &tokens)?,
                positions: s.get("positional_embedding", &positions)?,
                final_norm: Self::norm(&s, "ln_final", d)?,
                projection: Self::open_clip_projection(&s, "text_projection", d, c.projection_dim)?,
            },
        })
    }

    /// HF projections sit at the top level of a `CLIPModel` save, without a bias.
    fn hf_projection(&self, name: &str, hidden: usize, dim: usize) -> Result<Option<Vec<f32>>> {
        let full = format!("{name}.weight");
        if !self.store.contains(&full) {
            return Ok(None);
        }
        Ok(Some(self.store.get(&full, &[dim, hidden])?.data))
    }

    /// open_clip's `[width, embed]` parameter, turned into `nn.Linear` form.
    fn open_clip_projection(
        s: &Scope,
        name: &str,
        hidden: usize,
        dim: usize,
    ) -> Result<Option<Vec<f32>>> {
        if !s.has(name) {
            return Ok(None);
        }
        Ok(Some(transpose(&s.get(name, &[hidden, dim])?, hidden, dim)))
    }

    pub fn vision_block(&self, c: &VisionConfig, i: usize) -> Result<BlockWeights> {
        let dims = Dims {
            hidden: c.hidden_size,
            intermediate: c.intermediate_size,
        };
        self.block(Tower::Vision, i, dims)
    }

    pub fn text_block(&self, c: &TextConfig, i: usize) -> Result<BlockWeights> {
        let dims = Dims {
            hidden: c.hidden_size,
            intermediate: c.intermediate_size,
        };
        self.block(Tower::Text, i, dims)
    }

    fn block(&self, tower: Tower, i: usize, dims: Dims) -> Result<BlockWeights> {
        let s = self.scope(tower);
        let (d, f) = (dims.hidden, dims.intermediate);
        match self.layout {
            Layout::HuggingFace => {
                let p = format!("encoder.layers.{i}");
                let get = |n: &str, shape: &[usize]| s.get(&format!("{p}.{n}"), shape);
                let mut qkv_weight = get("self_attn.q_proj.weight", &[d, d])?;
                qkv_weight.extend(get("self_attn.k_proj.weight", &[d, d])?);
                qkv_weight.extend(get("self_attn.v_proj.weight", &[d, d])?);
                let mut qkv_bias = get("self_attn.q_proj.bias", &[d])?;
                qkv_bias.extend(get("self_attn.k_proj.bias", &[d])?);
                qkv_bias.extend(get("self_attn.v_proj.bias", &[d])?);
                Ok(BlockWeights {
                    ln1: Self::norm(&s, &format!("{p}.layer_norm1"), d)?,
                    qkv_weight,
                    qkv_bias,
                    out_weight: get("self_attn.out_proj.weight", &[d, d])?,
                    out_bias: get("self_attn.out_proj.bias", &[d])?,
                    ln2: Self::norm(&s, &format!("{p}.layer_norm2"), d)?,
                    fc1_weight: get("mlp.fc1.weight", &[f, d])?,
                    fc1_bias: get("mlp.fc1.bias", &[f])?,
                    fc2_weight: get("mlp.fc2.weight", &[d, f])?,
                    fc2_bias: get("mlp.fc2.bias", &[d])?,
                })
            }
            Layout::OpenClip => {
                let p = format!("transformer.resblocks.{i}");
                let get = |n: &str, shape: &[usize]| s.get(&format!("{p}.{n}"), shape);
                Ok(BlockWeights {
                    ln1: Self::norm(&s, &format!("{p}.ln_1"), d)?,
                    qkv_weight: get("attn.in_proj_weight", &[3 * d, d])?,
                    qkv_bias: get("attn.in_proj_bias", &[3 * d])?,
                    out_weight: get("attn.out_proj.weight", &[d, d])?,
                    out_bias: get("attn.out_proj.bias", &[d])?,
                    ln2: Self::norm(&s, &format!("{p}.ln_2"), d)?,
                    fc1_weight: get("mlp.c_fc.weight", &[f, d])?,
                    fc1_bias: get("mlp.c_fc.bias", &[f])?,
                    fc2_weight: get("mlp.c_proj.weight", &[d, f])?,
                    fc2_bias: get("mlp.c_proj.bias", &[d])?,
                })
            }
        }
    }

    /// `logit_scale` as stored (the log of the temperature), when the save has it; the
    /// same name in both layouts.
    pub fn logit_scale(&self) -> Result<Option<f32>> {
        if !self.store.contains("logit_scale") {
            return Ok(None);
        }
        Ok(Some(self.store.get("logit_scale", &[])?.data[0]))
    }
}
