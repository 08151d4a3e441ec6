//! Random-weight model directories of any CLIP shape, in the Hugging Face `CLIPModel`
//! layout or open_clip's. No pretrained weights can be downloaded on CI, so tests and benches use these to
//! exercise real sizes (ViT-B/32 … L/14-336).

use super::config::{Activation, ClipConfig};
use crate::preprocess::{OPENAI_MEAN, OPENAI_STD};
use anyhow::{Context, Result, bail};
use half::f16;
use safetensors::{Dtype, tensor::TensorView};
use std::collections::HashMap;
use std::path::Path;

/// Every tensor a `CLIPModel` save holds for `config`, with its shape.
pub fn clip_tensor_shapes(config: &ClipConfig) -> Vec<(String, Vec<usize>)> {
    let mut out = Vec::new();
    let block = |out: &mut Vec<(String, Vec<usize>)>, prefix: &str, layers, d: usize, f: usize| {
        for i in 0..layers {
            let p = format!("{prefix}encoder.layers.{i}.");
            for n in ["q_proj", "k_proj", "v_proj", "out_proj"] {
                out.push((format!("{p}self_attn.{n}.weight"), vec![d, d]));
                out.push((format!("{p}self_attn.{n}.bias"), vec![d]));
            }
            for n in ["layer_norm1", "layer_norm2"] {
                out.push((format!("{p}{n}.weight"), vec![d]));
                out.push((format!("{p}{n}.bias"), vec![d]));
            }
            out.push((format!("{p}mlp.fc1.weight"), vec![f, d]));
            out.push((format!("{p}mlp.fc1.bias"), vec![f]));
            out.push((format!("{p}mlp.fc2.weight"), vec![d, f]));
            out.push((format!("{p}mlp.fc2.bias"), vec![d]));
        }
    };
    if let Some(v) = &config.vision {
        let (d, p) = (v.hidden_size, v.patch_size);
        let pre = "vision_model.";
        out.push((format!("{pre}embeddings.class_embedding"), vec![d]));
        out.push((
            format!("{pre}embeddings.patch_embedding.weight"),
            vec![d, v.num_channels, p, p],
        ));
        out.push((
            format!("{pre}embeddings.position_embedding.weight"),
            vec![v.num_positions(), d],
        ));
        for ln in ["pre_layrnorm", "post_layernorm"] {
            out.push((format!("{pre}{ln}.weight"), vec![d]));
            out.push((format!("{pre}{ln}.bias"), vec![d]));
        }
        block(&mut out, pre, v.num_hidden_layers, d, v.intermediate_size);
        out.push(("visual_projection.weight".into(), vec![v.projection_dim, d]));
    }
    if let Some(t) = &config.text {
        let d = t.hidden_size;
        let pre = "text_model.";
        out.push((
            format!("{pre}embeddings.token_embedding.weight"),
            vec![t.vocab_size, d],
        ));
        out.push((
            format!("{pre}embeddings.position_embedding.weight"),
            vec![t.max_position_embeddings, d],
        ));
        out.push((format!("{pre}final_layer_norm.weight"), vec![d]));
        out.push((format!("{pre}final_layer_norm.bias"), vec![d]));
        block(&mut out, pre, t.num_hidden_layers, d, t.intermediate_size);
        out.push(("text_projection.weight".into(), vec![t.projection_dim, d]));
    }
    out.push(("logit_scale".into(), vec![]));
    out
}

/// A seeded normal sampler (xorshift + Box–Muller): reproducible without a rand crate.
struct Normal(u64);

impl Normal {
    fn uniform(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        ((self.0 >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }
    fn sample(&mut self) -> f32 {
        let (u, v) = (self.uniform(), self.uniform());
        ((-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()) as f32
    }
}

/// Random f16 tensors for every name of [`clip_tensor_shapes`]: weights N(0, 0.02),
/// LayerNorm gains near 1, as CLIP's init; the same values for the same seed.
fn random_tensors(config: &ClipConfig, seed: u64) -> Vec<(String, Vec<usize>, Vec<f16>)> {
    let mut rng = Normal(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    clip_tensor_shapes(config)
        .into_iter()
        .map(|(name, shape)| {
            let count: usize = shape.iter().product();
            let (center, spread) = if name == "logit_scale" {
                (100f32.ln(), 0.0)
            } else if name.contains("norm") && name.ends_with(".weight") {
                (1.0, 0.1)
            } else {
                (0.0, 0.02)
            };
            let values: Vec<f16> = (0..count)
                .map(|_| f16::from_f32(center + spread * rng.sample()))
                .collect();
            (name, shape, values)
        })
        .collect()
}

fn write_f16_safetensors(file: &Path, tensors: &[(String, Vec<usize>, Vec<f16>)]) -> Result<()> {
    let views = tensors
        .iter()
        .map(|(n, s, v)| {
            let view = TensorView::new(Dtype::F16, s.clone(), bytemuck::cast_slice(v))?;
            Ok((n.clone(), view))
        })
        .collect::<Result<Vec<_>>>()?;
    safetensors::serialize_to_file(views, None, file)
        .with_context(|| format!("cannot write {}", file.display()))
}

/// Writes `config.json` (copied from `config_json`) and an f16 `model.safetensors` of
/// random weights into `dir`.
pub fn write_random_clip(dir: &Path, config_json: &str, seed: u64) -> Result<()> {
    let config = ClipConfig::parse(config_json, &dir.join("config.json"))?;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    std::fs::write(dir.join("config.json"), config_json)
        .with_context(|| format!("cannot write {}", dir.join("config.json").display()))?;
    write_f16_safetensors(
        &dir.join("model.safetensors"),
        &random_tensors(&config, seed),
    )
}

/// Writes the very weights [`write_random_clip`] writes for the same `config_json` (a
/// Hugging Face config with both towers) and `seed`, in open_clip's layout:
/// `open_clip_config.json` (`model_cfg` + OpenAI preprocessing) and
/// `open_clip_model.safetensors`. Tests use the pair to show both layouts give the same
/// features at real sizes.
pub fn write_random_open_clip(dir: &Path, config_json: &str, seed: u64) -> Result<()> {
    let file = dir.join("config.json");
    let config = ClipConfig::parse(config_json, &file)?;
    let (Some(v), Some(t)) = (&config.vision, &config.text) else {
        bail!("{}: an open_clip model needs both towers", file.display());
    };
    if v.hidden_act != t.hidden_act || v.layer_norm_eps != 1e-5 || t.layer_norm_eps != 1e-5 {
        bail!(
            "{}: open_clip shares one activation between the towers and uses LayerNorm eps 1e-5",
            file.display()
        );
    }
    let model_cfg = serde_json::json!({
        "embed_dim": v.projection_dim,
        "quick_gelu": v.hidden_act == Activation::QuickGelu,
        "vision_cfg": {
            "image_size": v.image_size,
            "layers": v.num_hidden_layers,
            "width": v.hidden_size,
            "head_width": v.head_dim(),
            "mlp_ratio": v.intermediate_size as f64 / v.hidden_size as f64,
            "patch_size": v.patch_size,
        },
        "text_cfg": {
            "context_length": t.max_position_embeddings,
            "vocab_size": t.vocab_size,
            "width": t.hidden_size,
            "heads": t.num_attention_heads,
            "layers": t.num_hidden_layers,
            "mlp_ratio": t.intermediate_size as f64 / t.hidden_size as f64,
        },
    });
    let json = serde_json::json!({
        "model_cfg": model_cfg,
        "preprocess_cfg": {"mean": OPENAI_MEAN, "std": OPENAI_STD},
    });
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let config_file = dir.join("open_clip_config.json");
    std::fs::write(&config_file, serde_json::to_string_pretty(&json)?)
        .with_context(|| format!("cannot write {}", config_file.display()))?;
    let hf = random_tensors(&config, seed);
    write_f16_safetensors(
        &dir.join("open_clip_model.safetensors"),
        &to_open_clip_names(hf),
    )
}

/// Renames Hugging Face tensors to open_clip's, fusing Q/K/V and transposing projections.
fn to_open_clip_names(
    hf: Vec<(String, Vec<usize>, Vec<f16>)>,
) -> Vec<(String, Vec<usize>, Vec<f16>)> {
    let lookup: HashMap<&str, &Vec<f16>> = hf.iter().map(|(n, _, v)| (n.as_str(), v)).collect();
    let mut out = Vec::new();
    for (name, shape, values) in &hf {
        if name.contains("k_proj") || name.contains("v_proj") {
            continue; // fused with q_proj below
        }
        if name.ends_with("_projection.weight") {
            let (p, d) = (shape[0], shape[1]);
            let mut t = vec![f16::ZERO; values.len()];
            for r in 0..p {
                for c in 0..d {
                    t[c * p + r] = values[r * d + c];
                }
            }
            let oc = if name.starts_with("visual") {
                "visual.proj"
            } else {
                "text_projection"
            };
            out.push((oc.to_string(), vec![d, p], t));
            continue;
        }
        let oc = name
            .replace("vision_model.", "visual.")
            .replace("text_model.", "")
            .replace("embeddings.patch_embedding.weight", "conv1.weight")
            .replace("embeddings.class_embedding", "class_embedding")
            .replace(
                "embeddings.position_embedding.weight",
                "positional_embedding",
            )
            .replace("embeddings.token_embedding", "token_embedding")
            .replace("pre_layrnorm", "ln_pre")
            .replace("post_layernorm", "ln_post")
            .replace("final_layer_norm", "ln_final")
            .replace("encoder.layers.", "transformer.resblocks.")
            .replace("layer_norm1", "ln_1")
            .replace("layer_norm2", "ln_2")
            .replace("self_attn.out_proj", "attn.out_proj")
            .replace("mlp.fc1", "mlp.c_fc")
            .replace("mlp.fc2", "mlp.c_proj");
        if name.contains("q_proj") {
            let mut fused = values.clone();
            fused.extend(lookup[name.replace("q_proj", "k_proj").as_str()]);
            fused.extend(lookup[name.replace("q_proj", "v_proj").as_str()]);
            let mut fused_shape = shape.clone();
            fused_shape[0] *= 3;
            let oc = oc
                .replace("self_attn.q_proj.weight", "attn.in_proj_weight")
                .replace("self_attn.q_proj.bias", "attn.in_proj_bias");
            out.push((oc, fused_shape, fused));
            continue;
        }
        out.push((oc, shape.clone(), values.clone()));
    }
    out
}
