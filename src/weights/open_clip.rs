//! open_clip's JSON model config (`open_clip/model_configs/<name>.json`, or the
//! `open_clip_config.json` of a hub save, whose `model_cfg` is that same object), read into
//! the [`ClipConfig`] the towers take. Defaults are open_clip 3.3's `CLIPVisionCfg` and
//! `CLIPTextCfg`. Options that change the computation away from the standard CLIP ViT
//! (layer scale, attentional pooling, timm or Hugging Face towers, …) are errors naming the
//! field, never silently ignored.

use super::config::{Activation, ClipConfig, TextConfig, TextPooling, VisionConfig};
use anyhow::{Context, Result, bail};
use serde_json::{Map, Value};
use std::path::Path;

/// OpenAI's BPE: `<|startoftext|>` and `<|endoftext|>` of its 49408-token vocabulary.
const OPENAI_BOS: u32 = 49406;
const OPENAI_EOS: u32 = 49407;

/// Whether a parsed JSON config is open_clip's rather than a Hugging Face `config.json`.
pub fn is_open_clip_config(json: &Value) -> bool {
    json.get("model_cfg").is_some()
        || json.get("vision_cfg").is_some()
        || json.get("text_cfg").is_some()
}

/// What an open_clip config says beyond the tower shapes.
#[derive(Clone, Debug, PartialEq)]
pub struct OpenClipExtras {
    /// `text_cfg.hf_tokenizer_name`: a tokenizer other than OpenAI's BPE.
    pub hf_tokenizer_name: Option<String>,
}

/// Parses an open_clip config; `file` names it in errors.
pub fn parse(json: &str, file: &Path) -> Result<(ClipConfig, OpenClipExtras)> {
    let value: Value = serde_json::from_str(json)
        .with_context(|| format!("{} is not valid JSON", file.display()))?;
    let top = match value.get("model_cfg") {
        Some(m) => (m, "model_cfg."),
        None => (&value, ""),
    };
    let (model, p) = (Fields::new(top.0, top.1, file)?, top.1);
    for key in ["multimodal_cfg", "init_logit_bias"] {
        if model.obj.get(key).is_some_and(|v| !v.is_null()) {
            bail!(
                "{}: `{p}{key}` is set: only CLIP models (no CoCa decoder, no SigLIP bias) are supported",
                file.display()
            );
        }
    }
    let embed_dim = model.usize_or("embed_dim", 512)?;
    let act = if model.bool_or("quick_gelu", false)? {
        Activation::QuickGelu
    } else {
        Activation::Gelu
    };
    let vision = match model.present("vision_cfg") {
        Some(v) => Some(vision(
            &Fields::new(v, &format!("{p}vision_cfg."), file)?,
            embed_dim,
            act,
        )?),
        None => None,
    };
    let (text, tokenizer) = match model.present("text_cfg") {
        Some(t) => {
            let f = Fields::new(t, &format!("{p}text_cfg."), file)?;
            (
                Some(text(&f, embed_dim, act)?),
                f.string_opt("hf_tokenizer_name")?,
            )
        }
        None => (None, None),
    };
    if vision.is_none() && text.is_none() {
        bail!(
            "{}: neither `{p}vision_cfg` nor `{p}text_cfg`",
            file.display()
        );
    }
    Ok((
        ClipConfig { vision, text },
        OpenClipExtras {
            hf_tokenizer_name: tokenizer,
        },
    ))
}

/// The `preprocess_cfg` of a hub `open_clip_config.json`, when present.
pub fn preprocess_cfg(json: &str, file: &Path) -> Result<Option<Map<String, Value>>> {
    let value: Value = serde_json::from_str(json)
        .with_context(|| format!("{} is not valid JSON", file.display()))?;
    match value.get("preprocess_cfg") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(m)) => Ok(Some(m.clone())),
        Some(_) => bail!("{}: `preprocess_cfg` is not an object", file.display()),
    }
}

/// One JSON object of the config, with its path for error messages.
struct Fields<'a> {
    obj: &'a Map<String, Value>,
    prefix: String,
    file: &'a Path,
}

impl<'a> Fields<'a> {
    fn new(value: &'a Value, prefix: &str, file: &'a Path) -> Result<Self> {
        let obj = value.as_object().with_context(|| {
            format!(
                "{}: `{}` is not an object",
                file.display(),
                prefix.trim_end_matches('.')
            )
        })?;
        Ok(Fields {
            obj,
            prefix: prefix.to_string(),
            file,
        })
    }

    fn bad(&self, key: &str, want: &str) -> anyhow::Error {
        anyhow::anyhow!(
            "{}: `{}{key}` = {} is not {want}",
            self.file.display(),
            self.prefix,
            self.obj[key]
        )
    }

    fn present(&self, key: &str) -> Option<&Value> {
        self.obj.get(key).filter(|v| !v.is_null())
    }

    fn usize_or(&self, key: &str, default: usize) -> Result<usize> {
        match self.present(key) {
            None => Ok(default),
            Some(v) => v
                .as_u64()
                .filter(|&n| n > 0)
                .map(|n| n as usize)
                .ok_or_else(|| self.bad(key, "a positive integer")),
        }
    }

    fn f64_or(&self, key: &str, default: f64) -> Result<f64> {
        match self.present(key) {
            None => Ok(default),
            Some(v) => v
                .as_f64()
                .filter(|&x| x > 0.0)
                .ok_or_else(|| self.bad(key, "a positive number")),
        }
    }

    fn bool_or(&self, key: &str, default: bool) -> Result<bool> {
        match self.present(key) {
            None => Ok(default),
            Some(v) => v.as_bool().ok_or_else(|| self.bad(key, "true or false")),
        }
    }

    fn string_opt(&self, key: &str) -> Result<Option<String>> {
        match self.present(key) {
            None => Ok(None),
            Some(v) => v
                .as_str()
                .map(|s| Some(s.to_string()))
                .ok_or_else(|| self.bad(key, "a string")),
        }
    }

    /// An option fedclip does not implement: an error unless absent, null or `allowed`.
    fn unsupported(&self, key: &str, allowed: &[Value], what: &str) -> Result<()> {
        match self.present(key) {
            Some(v) if !allowed.contains(v) => bail!(
                "{}: `{}{key}` = {v} is not supported ({what})",
                self.file.display(),
                self.prefix
            ),
            _ => Ok(()),
        }
    }

    /// The checks both towers share: layer scale, custom attention blocks, activation and
    /// norm options.
    fn standard_blocks(&self) -> Result<()> {
        self.unsupported("ls_init_value", &[], "layer scale is not implemented")?;
        self.unsupported(
            "block_type",
            &[Value::from("default")],
            "only open_clip's default residual attention block is implemented",
        )?;
        for key in [
            "qk_norm",
            "scaled_cosine_attn",
            "scale_heads",
            "scale_attn_inner",
            "scale_attn",
            "scale_fc",
        ] {
            self.unsupported(
                key,
                &[Value::Bool(false)],
                "only the default attention block is implemented",
            )?;
        }
        if let Some(a) = self.present("act_kwargs")
            && a.as_object().is_none_or(|m| !m.is_empty())
        {
            bail!(
                "{}: `{}act_kwargs` = {a} is not supported (the activation is GELU or QuickGELU, set by `quick_gelu`)",
                self.file.display(),
                self.prefix
            );
        }
        Ok(())
    }

    /// LayerNorm epsilon: open_clip's `nn.LayerNorm` default, or `norm_kwargs.eps`.
    fn layer_norm_eps(&self) -> Result<f32> {
        let Some(kw) = self.present("norm_kwargs") else {
            return Ok(1e-5);
        };
        let m = kw
            .as_object()
            .ok_or_else(|| self.bad("norm_kwargs", "an object"))?;
        if let Some(other) = m.keys().find(|k| *k != "eps") {
            bail!(
                "{}: `{}norm_kwargs.{other}` is not supported (only `eps`)",
                self.file.display(),
                self.prefix
            );
        }
        match m.get("eps") {
            None => Ok(1e-5),
            Some(e) => e
                .as_f64()
                .filter(|&x| x > 0.0)
                .map(|x| x as f32)
                .ok_or_else(|| {
                    anyhow::anyhow!(
                        "{}: `{}norm_kwargs.eps` = {e} is not a positive number",
                        self.file.display(),
                        self.prefix
                    )
                }),
        }
    }

    /// `width · mlp_ratio`, as open_clip's `int(width * mlp_ratio)`.
    fn mlp_width(&self, width: usize) -> Result<usize> {
        let hidden = (width as f64 * self.f64_or("mlp_ratio", 4.0)?) as usize;
        if hidden == 0 {
            return Err(self.bad("mlp_ratio", "large enough for an MLP width of at least 1"));
        }
        Ok(hidden)
    }

    fn heads(&self, width: usize, heads: usize, field: &str) -> Result<usize> {
        if !width.is_multiple_of(heads) {
            bail!(
                "{}: `{}width` = {width} is not a multiple of the head count {heads} ({field})",
                self.file.display(),
                self.prefix
            );
        }
        Ok(heads)
    }
}

fn vision(f: &Fields, embed_dim: usize, act: Activation) -> Result<VisionConfig> {
    if f.present("timm_model_name").is_some() {
        bail!(
            "{}: `{}timm_model_name` is set: timm image towers are not supported (only open_clip's own ViT)",
            f.file.display(),
            f.prefix
        );
    }
    if f.present("layers").is_some_and(Value::is_array) {
        bail!(
            "{}: `{}layers` is a list: that is a ModifiedResNet image tower, not supported (only ViTs)",
            f.file.display(),
            f.prefix
        );
    }
    f.standard_blocks()?;
    f.unsupported(
        "attentional_pool",
        &[Value::Bool(false)],
        "the class token is pooled",
    )?;
    f.unsupported(
        "no_ln_pre",
        &[Value::Bool(false)],
        "ln_pre is always applied",
    )?;
    f.unsupported(
        "pos_embed_type",
        &[Value::from("learnable")],
        "positions are learned embeddings",
    )?;
    f.unsupported(
        "pool_type",
        &[Value::from("tok")],
        "the class token is pooled",
    )?;
    let image_size = match f.present("image_size") {
        None => 224,
        Some(Value::Array(hw)) if hw.len() == 2 && hw[0] == hw[1] && hw[0].as_u64().is_some() => {
            hw[0].as_u64().unwrap_or(0) as usize
        }
        Some(Value::Array(_)) => {
            return Err(f.bad("image_size", "square (only square inputs are supported)"));
        }
        Some(_) => f.usize_or("image_size", 224)?,
    };
    let width = f.usize_or("width", 768)?;
    let head_width = f.usize_or("head_width", 64)?;
    let patch_size = f.usize_or("patch_size", 16)?;
    if patch_size > image_size || image_size == 0 {
        return Err(f.bad("patch_size", "at most image_size"));
    }
    Ok(VisionConfig {
        hidden_size: width,
        intermediate_size: f.mlp_width(width)?,
        num_hidden_layers: f.usize_or("layers", 12)?,
        // open_clip's `width // head_width` heads.
        num_attention_heads: match width / head_width {
            0 => return Err(f.bad("head_width", "at most width")),
            heads => f.heads(width, heads, "width / head_width")?,
        },
        num_channels: 3,
        image_size,
        patch_size,
        projection_dim: embed_dim,
        hidden_act: act,
        layer_norm_eps: f.layer_norm_eps()?,
    })
}

fn text(f: &Fields, embed_dim: usize, act: Activation) -> Result<TextConfig> {
    if f.present("hf_model_name").is_some() {
        bail!(
            "{}: `{}hf_model_name` is set: Hugging Face text towers are not supported (only open_clip's own text transformer)",
            f.file.display(),
            f.prefix
        );
    }
    f.standard_blocks()?;
    f.unsupported(
        "embed_cls",
        &[Value::Bool(false)],
        "no class token is appended",
    )?;
    f.unsupported(
        "no_causal_mask",
        &[Value::Bool(false)],
        "the text tower is causal",
    )?;
    f.unsupported(
        "pool_type",
        &[Value::from("argmax")],
        "text is pooled at the highest token id, the end token",
    )?;
    f.unsupported(
        "proj_bias",
        &[Value::Bool(false)],
        "the text projection has no bias",
    )?;
    f.unsupported(
        "proj_type",
        &[Value::from("linear")],
        "the text projection is a matrix",
    )?;
    let width = f.usize_or("width", 512)?;
    Ok(TextConfig {
        vocab_size: f.usize_or("vocab_size", 49408)?,
        hidden_size: width,
        intermediate_size: f.mlp_width(width)?,
        num_hidden_layers: f.usize_or("layers", 12)?,
        num_attention_heads: f.heads(width, f.usize_or("heads", 8)?, "heads")?,
        max_position_embeddings: f.usize_or("context_length", 77)?,
        projection_dim: embed_dim,
        hidden_act: act,
        layer_norm_eps: f.layer_norm_eps()?,
        bos_token_id: OPENAI_BOS,
        eos_token_id: OPENAI_EOS,
        // open_clip's tokenizer pads with 0 (`pad_id`); with the causal mask and argmax
        // pooling the padding value never changes a feature.
        pad_token_id: match f.present("pad_id") {
            None => 0,
            Some(v) => v
                .as_u64()
                .map(|n| n as u32)
                .ok_or_else(|| f.bad("pad_id", "a token id"))?,
        },
        pooling: TextPooling::Argmax,
    })
}
