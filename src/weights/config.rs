//! `config.json` of a Hugging Face CLIP save: `CLIPModel` (both towers), or a
//! `CLIPVisionModel*` / `CLIPTextModel*` save whose config is the tower config itself.
//! Defaults are transformers' own, so sparse configs (as openai's are) read the same.

use super::TensorStore;
use anyhow::{Context, Result, bail};
use serde::Deserialize;
use std::path::Path;

/// The MLP nonlinearity named by `hidden_act`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    /// x · σ(1.702 x), what OpenAI's CLIP was trained with.
    QuickGelu,
    /// The exact erf GELU.
    Gelu,
}

impl Activation {
    fn parse(name: &str, field: &str, file: &Path) -> Result<Self> {
        match name {
            "quick_gelu" => Ok(Activation::QuickGelu),
            "gelu" => Ok(Activation::Gelu),
            other => bail!(
                "{}: `{field}` = {other:?} is not supported (expected \"quick_gelu\" or \"gelu\")",
                file.display()
            ),
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct VisionConfig {
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_channels: usize,
    pub image_size: usize,
    pub patch_size: usize,
    pub projection_dim: usize,
    pub hidden_act: Activation,
    pub layer_norm_eps: f32,
}

impl VisionConfig {
    /// Patches per side: the convolution has stride = kernel = patch and no padding.
    pub fn grid(&self) -> usize {
        self.image_size / self.patch_size
    }
    /// Tokens per image: the class token and one per patch.
    pub fn num_positions(&self) -> usize {
        self.grid() * self.grid() + 1
    }
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }
}

/// Which token a text sequence is pooled at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TextPooling {
    /// The first maximum id: the end token, highest in CLIP's vocabulary. transformers with
    /// the legacy `eos_token_id = 2` (openai's saves), and open_clip's `pool_type = "argmax"`.
    Argmax,
    /// The first `eos_token_id`: transformers with any other `eos_token_id`.
    FirstEos,
}

#[derive(Clone, Debug, PartialEq)]
pub struct TextConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub max_position_embeddings: usize,
    pub projection_dim: usize,
    pub hidden_act: Activation,
    pub layer_norm_eps: f32,
    pub bos_token_id: u32,
    pub eos_token_id: u32,
    pub pad_token_id: u32,
    pub pooling: TextPooling,
}

impl TextConfig {
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }
    /// Whether sequences are pooled at their first maximum id (see [`TextPooling`]).
    pub fn pools_at_argmax(&self) -> bool {
        self.pooling == TextPooling::Argmax
    }

    /// Checks a `[batch, seq]` id buffer against the model (length, positions, vocabulary) and
    /// returns where each sequence is pooled. Both engines' text towers start here.
    pub fn check_ids(&self, ids: &[u32], batch: usize, seq: usize) -> Result<Vec<usize>> {
        if ids.len() != batch * seq {
            bail!(
                "token buffer holds {} ids, expected {batch}×{seq}",
                ids.len()
            );
        }
        if seq > self.max_position_embeddings {
            bail!(
                "sequence of {seq} tokens exceeds the model's {} positions",
                self.max_position_embeddings
            );
        }
        if let Some(&bad) = ids.iter().find(|&&t| t as usize >= self.vocab_size) {
            bail!(
                "token id {bad} is outside the vocabulary of {} tokens",
                self.vocab_size
            );
        }
        self.pool_positions(ids, batch, seq)
    }

    /// The token each of `batch` sequences (`ids` is `[batch, seq]`) is pooled at, by
    /// [`TextPooling`]. Both engines pool here.
    pub fn pool_positions(&self, ids: &[u32], batch: usize, seq: usize) -> Result<Vec<usize>> {
        (0..batch)
            .map(|b| {
                let row = &ids[b * seq..(b + 1) * seq];
                let found = if self.pools_at_argmax() {
                    // The first maximum, as torch.argmax returns.
                    let mut best: Option<(usize, u32)> = None;
                    for (i, &t) in row.iter().enumerate() {
                        if best.is_none_or(|(_, bt)| t > bt) {
                            best = Some((i, t));
                        }
                    }
                    best.map(|(i, _)| i)
                } else {
                    row.iter().position(|&t| t == self.eos_token_id)
                };
                found.with_context(|| {
                    format!(
                        "token sequence {b} has no end token (id {}) to pool at",
                        self.eos_token_id
                    )
                })
            })
            .collect()
    }
}

/// What a model directory holds.
#[derive(Clone, Debug, PartialEq)]
pub struct ClipConfig {
    pub vision: Option<VisionConfig>,
    pub text: Option<TextConfig>,
}

#[derive(Deserialize, Default)]
struct RawVision {
    hidden_size: Option<usize>,
    intermediate_size: Option<usize>,
    num_hidden_layers: Option<usize>,
    num_attention_heads: Option<usize>,
    num_channels: Option<usize>,
    image_size: Option<usize>,
    patch_size: Option<usize>,
    projection_dim: Option<usize>,
    hidden_act: Option<String>,
    layer_norm_eps: Option<f64>,
}

#[derive(Deserialize, Default)]
struct RawText {
    vocab_size: Option<usize>,
    hidden_size: Option<usize>,
    intermediate_size: Option<usize>,
    num_hidden_layers: Option<usize>,
    num_attention_heads: Option<usize>,
    max_position_embeddings: Option<usize>,
    projection_dim: Option<usize>,
    hidden_act: Option<String>,
    layer_norm_eps: Option<f64>,
    bos_token_id: Option<u32>,
    eos_token_id: Option<u32>,
    pad_token_id: Option<u32>,
}

#[derive(Deserialize)]
struct RawTop {
    model_type: Option<String>,
    projection_dim: Option<usize>,
    vision_config: Option<RawVision>,
    text_config: Option<RawText>,
}

impl ClipConfig {
    /// Reads `<dir>/config.json`.
    pub fn load(dir: &Path) -> Result<Self> {
        let file = dir.join("config.json");
        let text = std::fs::read_to_string(&file).with_context(|| {
            format!(
                "cannot read {} (a CLIP model directory needs config.json)",
                file.display()
            )
        })?;
        Self::parse(&text, &file)
    }

    /// Parses config.json text; `file` names it in errors.
    pub fn parse(json: &str, file: &Path) -> Result<Self> {
        let value: serde_json::Value = serde_json::from_str(json)
            .with_context(|| format!("{} is not valid JSON", file.display()))?;
        let top: RawTop = typed(value.clone(), file)?;
        let model_type = top.model_type.as_deref().unwrap_or("");
        let (vision, text) = match (top.vision_config, top.text_config) {
            // A CLIPModel save: both towers share the top-level projection_dim.
            (Some(v), Some(t)) => {
                let proj = top.projection_dim.unwrap_or(512);
                (
                    Some(vision_config(v, Some(proj), file, "vision_config.")?),
                    Some(text_config(t, Some(proj), file, "text_config.")?),
                )
            }
            (None, None) if model_type == "clip_vision_model" => {
                let v: RawVision = typed(value, file)?;
                (Some(vision_config(v, None, file, "")?), None)
            }
            (None, None) if model_type == "clip_text_model" => {
                let t: RawText = typed(value, file)?;
                (None, Some(text_config(t, None, file, "")?))
            }
            (Some(v), None) => (
                Some(vision_config(
                    v,
                    top.projection_dim,
                    file,
                    "vision_config.",
                )?),
                None,
            ),
            (None, Some(t)) => (
                None,
                Some(text_config(t, top.projection_dim, file, "text_config.")?),
            ),
            (None, None) => bail!(
                "{}: not a CLIP config (no `vision_config`/`text_config`, and `model_type` is {model_type:?})",
                file.display()
            ),
        };
        Ok(ClipConfig { vision, text })
    }

    /// Checks the config against the checkpoint where shapes cannot: each tower's layer
    /// count against the `encoder.layers.N` tensors (a config with fewer layers would
    /// silently drop the rest). Widths and head counts are checked by the tensors' shapes.
    pub fn check_against(&self, store: &TensorStore, config_file: &Path) -> Result<()> {
        let towers = [
            (
                "vision",
                "vision_model.",
                self.vision.as_ref().map(|v| v.num_hidden_layers),
            ),
            (
                "text",
                "text_model.",
                self.text.as_ref().map(|t| t.num_hidden_layers),
            ),
        ];
        for (tower, prefix, layers) in towers {
            let Some(layers) = layers else { continue };
            let stored = stored_layers(store, prefix).or_else(|| stored_layers(store, ""));
            let Some((count, file)) = stored else {
                continue;
            };
            if count != layers {
                bail!(
                    "{}: the {tower} config's `num_hidden_layers` is {layers}, but {} holds {count} \
                     {tower} layers (encoder.layers.0-{})",
                    config_file.display(),
                    file.display(),
                    count - 1
                );
            }
        }
        Ok(())
    }
}

/// Number of layers (`1 + the largest N` of `<prefix>encoder.layers.N.*`) and the file of the
/// last one, or `None` when no tensor has that prefix.
fn stored_layers(store: &TensorStore, prefix: &str) -> Option<(usize, std::path::PathBuf)> {
    let head = format!("{prefix}encoder.layers.");
    store
        .names()
        .filter_map(|n| {
            let rest = n.strip_prefix(&head)?;
            let index: usize = rest.split('.').next()?.parse().ok()?;
            Some((index + 1, n))
        })
        .max_by_key(|(count, _)| *count)
        .map(|(count, name)| (count, store.file_of(name).to_path_buf()))
}

/// Deserialises `value`, a type error naming the field's path (`vision_config.hidden_size`).
fn typed<T: serde::de::DeserializeOwned>(value: serde_json::Value, file: &Path) -> Result<T> {
    serde_path_to_error::deserialize(value)
        .map_err(|e| anyhow::anyhow!("{}: field `{}`: {}", file.display(), e.path(), e.inner()))
}

/// `layer_norm_eps` as f32: positive and finite, or LayerNorm divides by zero (NaN).
fn epsilon(value: Option<f64>, prefix: &str, file: &Path) -> Result<f32> {
    let eps = value.unwrap_or(1e-5);
    let as_f32 = eps as f32;
    if !(as_f32.is_finite() && as_f32 > 0.0) {
        bail!(
            "{}: `{prefix}layer_norm_eps` = {eps:e} must be positive and finite",
            file.display()
        );
    }
    Ok(as_f32)
}

fn positive(value: usize, field: &str, prefix: &str, file: &Path) -> Result<usize> {
    if value == 0 {
        bail!("{}: `{prefix}{field}` must be positive", file.display());
    }
    Ok(value)
}

fn divides(hidden: usize, heads: usize, prefix: &str, file: &Path) -> Result<()> {
    if !hidden.is_multiple_of(heads) {
        bail!(
            "{}: `{prefix}hidden_size` = {hidden} is not a multiple of `{prefix}num_attention_heads` = {heads}",
            file.display()
        );
    }
    Ok(())
}

fn vision_config(r: RawVision, proj: Option<usize>, file: &Path, p: &str) -> Result<VisionConfig> {
    let c = VisionConfig {
        hidden_size: positive(r.hidden_size.unwrap_or(768), "hidden_size", p, file)?,
        intermediate_size: positive(
            r.intermediate_size.unwrap_or(3072),
            "intermediate_size",
            p,
            file,
        )?,
        num_hidden_layers: positive(
            r.num_hidden_layers.unwrap_or(12),
            "num_hidden_layers",
            p,
            file,
        )?,
        num_attention_heads: positive(
            r.num_attention_heads.unwrap_or(12),
            "num_attention_heads",
            p,
            file,
        )?,
        num_channels: positive(r.num_channels.unwrap_or(3), "num_channels", p, file)?,
        image_size: positive(r.image_size.unwrap_or(224), "image_size", p, file)?,
        patch_size: positive(r.patch_size.unwrap_or(32), "patch_size", p, file)?,
        projection_dim: positive(
            proj.or(r.projection_dim).unwrap_or(512),
            "projection_dim",
            p,
            file,
        )?,
        hidden_act: Activation::parse(
            r.hidden_act.as_deref().unwrap_or("quick_gelu"),
            &format!("{p}hidden_act"),
            file,
        )?,
        layer_norm_eps: epsilon(r.layer_norm_eps, p, file)?,
    };
    divides(c.hidden_size, c.num_attention_heads, p, file)?;
    if c.patch_size > c.image_size {
        bail!(
            "{}: `{p}patch_size` {} exceeds `{p}image_size` {}",
            file.display(),
            c.patch_size,
            c.image_size
        );
    }
    Ok(c)
}

fn text_config(r: RawText, proj: Option<usize>, file: &Path, p: &str) -> Result<TextConfig> {
    let c = TextConfig {
        vocab_size: positive(r.vocab_size.unwrap_or(49408), "vocab_size", p, file)?,
        hidden_size: positive(r.hidden_size.unwrap_or(512), "hidden_size", p, file)?,
        intermediate_size: positive(
            r.intermediate_size.unwrap_or(2048),
            "intermediate_size",
            p,
            file,
        )?,
        num_hidden_layers: positive(
            r.num_hidden_layers.unwrap_or(12),
            "num_hidden_layers",
            p,
            file,
        )?,
        num_attention_heads: positive(
            r.num_attention_heads.unwrap_or(8),
            "num_attention_heads",
            p,
            file,
        )?,
        max_position_embeddings: positive(
            r.max_position_embeddings.unwrap_or(77),
            "max_position_embeddings",
            p,
            file,
        )?,
        projection_dim: positive(
            proj.or(r.projection_dim).unwrap_or(512),
            "projection_dim",
            p,
            file,
        )?,
        hidden_act: Activation::parse(
            r.hidden_act.as_deref().unwrap_or("quick_gelu"),
            &format!("{p}hidden_act"),
            file,
        )?,
        layer_norm_eps: epsilon(r.layer_norm_eps, p, file)?,
        bos_token_id: r.bos_token_id.unwrap_or(49406),
        eos_token_id: r.eos_token_id.unwrap_or(49407),
        pad_token_id: r.pad_token_id.unwrap_or(1),
        // transformers pools at argmax(input_ids) for the legacy eos_token_id 2.
        pooling: if r.eos_token_id.unwrap_or(49407) == 2 {
            TextPooling::Argmax
        } else {
            TextPooling::FirstEos
        },
    };
    divides(c.hidden_size, c.num_attention_heads, p, file)?;
    Ok(c)
}
