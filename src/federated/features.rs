//! Stage 2 of a run: every image and prompt through the encoder once (the feature cache
//! answers what it already holds), then each client's splits gathered from them.

use super::bad_images;
use super::config::RunConfig;
use crate::adapter::TextFeatures;
use crate::data::split::Splits;
use crate::data::{Dataset, PromptTemplate};
use crate::encode::{Encoder, Engine, ImageEntry};
use crate::features::FeatureCache;
use anyhow::{Context, Result};
use std::time::Instant;

/// Features and labels of one split of one client.
#[derive(Clone, Debug, Default)]
pub struct SplitData {
    /// `[len, dim]`, projected CLIP image features.
    pub features: Vec<f32>,
    pub labels: Vec<u32>,
}

impl SplitData {
    pub fn len(&self) -> usize {
        self.labels.len()
    }
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }
}

pub struct ClientData {
    pub name: String,
    pub held_out: bool,
    pub train: SplitData,
    pub val: SplitData,
    pub test: SplitData,
}

/// The frozen features a run trains and evaluates on.
pub struct Features {
    pub clients: Vec<ClientData>,
    /// Class text features, normalised.
    pub texts: TextFeatures<f32>,
    pub dim: usize,
    /// CLIP's `logit_scale` (the log of the temperature).
    pub logit_scale: f32,
    pub seconds_extracting: f64,
    pub extracted: usize,
    pub from_cache: usize,
    /// Images left out with `--skip-bad`, relative to the data root.
    pub skipped_images: Vec<String>,
}

/// Encodes (or reads from the cache) every image and class prompt of `dataset`, then
/// gathers each client's splits.
pub fn extract(
    cfg: &RunConfig,
    dataset: &Dataset,
    splits: &Splits,
    engine: &Engine,
) -> Result<Features> {
    let mut encoder = Encoder::open(&cfg.model, engine)?;
    encoder.set_max_image_pixels(cfg.max_image_pixels);
    let pre = encoder.preprocess_config()?;
    let cache = FeatureCache::open(&cfg.cache_dir, &encoder, &pre, cfg.tokenizer)?;
    let bad = bad_images::find(dataset, &cache, cfg.max_image_pixels, cfg.skip_bad)?;
    let mut splits = splits.clone();
    bad.check_left(&splits)?;
    bad.remove_from(&mut splits);
    let start = Instant::now();
    let (mut extracted, mut from_cache) = (0, 0);
    let mut domain_features = Vec::new();
    for d in 0..dataset.domains.len() {
        let (feats, stats) = cache.image_features(&bad.usable_paths(dataset, d), |chunk| {
            let entries: Vec<ImageEntry> = chunk.iter().map(|p| ImageEntry::from_path(p)).collect();
            Ok(encoder
                .encode_images(&entries, cfg.extract_batch, false)?
                .embeds)
        })?;
        extracted += stats.computed;
        from_cache += stats.hits;
        domain_features.push(bad.with_gaps(dataset, d, feats));
    }
    let prompts = dataset.prompts(&PromptTemplate::new(&cfg.prompt_template));
    let (text_raw, _) = cache.text_features(&prompts, |chunk| {
        encoder.encode_texts(chunk, cfg.extract_batch, false, cfg.tokenizer)
    })?;
    // The cache printed its warnings as they arose.
    let seconds_extracting = start.elapsed().as_secs_f64();
    // From the model, not the first domain's rows (which --skip-bad may have emptied).
    let dim = cache.keys().image_dim;
    let texts = TextFeatures::new(&text_raw, dataset.classes.len(), dim)?;
    let logit_scale = encoder.logit_scale().with_context(|| {
        format!(
            "{}: no `logit_scale` tensor (the loss needs CLIP's temperature)",
            cfg.model.display()
        )
    })?;
    Ok(Features {
        clients: gather_clients(dataset, &splits, &domain_features, dim),
        texts,
        dim,
        logit_scale,
        seconds_extracting,
        extracted,
        from_cache,
        skipped_images: bad.rel_paths,
    })
}

/// Each client's train / val / test rows, in split order.
fn gather_clients(
    dataset: &Dataset,
    splits: &Splits,
    domain_features: &[Vec<f32>],
    dim: usize,
) -> Vec<ClientData> {
    let gather = |domain: usize, idx: &[usize]| SplitData {
        features: idx
            .iter()
            .flat_map(|&i| {
                domain_features[domain][i * dim..(i + 1) * dim]
                    .iter()
                    .copied()
            })
            .collect(),
        labels: idx
            .iter()
            .map(|&i| dataset.domains[domain].samples[i].label as u32)
            .collect(),
    };
    splits
        .clients
        .iter()
        .map(|c| ClientData {
            name: c.name.clone(),
            held_out: c.held_out,
            train: gather(c.domain, &c.train),
            val: gather(c.domain, &c.val),
            test: gather(c.domain, &c.test),
        })
        .collect()
}
