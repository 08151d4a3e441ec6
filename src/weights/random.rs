//! Random-weight model directories of any CLIP shape, in the Hugging Face `CLIPModel`
//! layout. No pretrained weights can be downloaded on CI, so tests and benches use these to
//! exercise real sizes (ViT-B/32 … L/14-336).

use super::config::ClipConfig;
use anyhow::{Context, Result};
use half::f16;
use safetensors::{Dtype, tensor::TensorView};
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

/// Writes `config.json` (copied from `config_json`) and an f16 `model.safetensors` of
/// random weights into `dir`: weights N(0, 0.02), LayerNorm gains near 1, as CLIP's init.
pub fn write_random_clip(dir: &Path, config_json: &str, seed: u64) -> Result<()> {
    let config = ClipConfig::parse(config_json, &dir.join("config.json"))?;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    std::fs::write(dir.join("config.json"), config_json)
        .with_context(|| format!("cannot write {}", dir.join("config.json").display()))?;
    let mut rng = Normal(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let tensors: Vec<(String, Vec<usize>, Vec<u8>)> = clip_tensor_shapes(&config)
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
            (name, shape, bytemuck::cast_slice(&values).to_vec())
        })
        .collect();
    let views = tensors
        .iter()
        .map(|(n, s, b)| Ok((n.clone(), TensorView::new(Dtype::F16, s.clone(), b)?)))
        .collect::<Result<Vec<_>>>()?;
    let file = dir.join("model.safetensors");
    safetensors::serialize_to_file(views, None, &file)
        .with_context(|| format!("cannot write {}", file.display()))
}
