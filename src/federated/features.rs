//! Stage 2 of a run: every image and prompt through the encoder once (the feature cache
//! answers what it already holds), then each client's splits gathered from them.
//!
//! With `--augment-views N`, every training file (a file in some training client's train
//! split) is also encoded as N augmented views ([`crate::preprocess::augment`]), cached
//! beside the centre crops; a client's train split carries them in its own row order, and
//! the run's local epoch `e` trains on view `e mod N` ([`SplitData::epoch_features`]).
//! Validation, test and held-out data keep the centre crops.

use super::bad_images;
use super::config::RunConfig;
use crate::adapter::TextFeatures;
use crate::data::split::{Client, Splits};
use crate::data::{Dataset, PromptTemplate};
use crate::encode::{Encoder, Engine, ImageEntry};
use crate::features::FeatureCache;
use crate::preprocess::augment::ViewId;
use anyhow::{Context, Result};
use std::collections::HashMap;
use std::time::Instant;

/// Features and labels of one split of one client.
#[derive(Clone, Debug, Default)]
pub struct SplitData {
    /// `[len, dim]`, projected CLIP image features.
    pub features: Vec<f32>,
    pub labels: Vec<u32>,
    /// `--augment-views N`: N augmented views of the same rows, each `[len, dim]` (empty: none).
    pub views: Vec<Vec<f32>>,
}

impl SplitData {
    /// What the run's local epoch `epoch` (counted over all rounds) trains on: view
    /// `epoch mod N`, or the centre crops when there are no views.
    pub fn epoch_features(&self, epoch: u64) -> &[f32] {
        match self.views.len() as u64 {
            0 => &self.features,
            n => &self.views[(epoch % n) as usize],
        }
    }

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
    /// The class folder names, in label order (the prompt learner builds its prompts from them).
    pub class_names: Vec<String>,
    pub dim: usize,
    /// CLIP's `logit_scale` (the log of the temperature).
    pub logit_scale: f32,
    pub seconds_extracting: f64,
    pub extracted: usize,
    pub from_cache: usize,
    /// Augmented views encoded, and found in the cache (`--augment-views`).
    pub views_extracted: usize,
    pub views_from_cache: usize,
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
    let bad = bad_images::find(dataset, &cache, &pre, cfg.skip_bad)?;
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
    let views = training_views(cfg, dataset, &splits, &cache, &encoder)?;
    let prompts = dataset.prompts(&PromptTemplate::new(&cfg.prompt_template));
    let (text_raw, _) = cache.text_features(&prompts, |chunk| {
        encoder.encode_texts(chunk, cfg.extract_batch, false, cfg.tokenizer)
    })
    .map_err(|e| {
        if e.chain().any(|c| c.is::<crate::tokenizer::PromptTooLong>()) {
            e.context("a class prompt must fit the text context: shorten the class folder's name or --prompt-template")
        } else {
            e
        }
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
        clients: gather_clients(dataset, &splits, &domain_features, &views, dim),
        texts,
        class_names: dataset.classes.clone(),
        dim,
        logit_scale,
        seconds_extracting,
        extracted,
        from_cache,
        views_extracted: views.extracted,
        views_from_cache: views.from_cache,
        skipped_images: bad.rel_paths,
    })
}

/// Per domain, the augmented views of its training files.
#[derive(Default)]
struct TrainingViews {
    /// `row_of[d][sample]`: the sample's row in `views[d][v]`.
    row_of: Vec<HashMap<usize, usize>>,
    /// `views[d][v]`: view `v` of domain `d`'s training files, `[rows, dim]`.
    views: Vec<Vec<Vec<f32>>>,
    extracted: usize,
    from_cache: usize,
}

/// Encodes (or reads from the cache) the `--augment-views` views of every file in a training
/// client's train split; nothing without the flag.
fn training_views(
    cfg: &RunConfig,
    dataset: &Dataset,
    splits: &Splits,
    cache: &FeatureCache,
    encoder: &Encoder,
) -> Result<TrainingViews> {
    let mut out = TrainingViews::default();
    if cfg.augment_views == 0 {
        return Ok(out);
    }
    for (d, domain) in dataset.domains.iter().enumerate() {
        let mut samples: Vec<usize> = (splits.clients.iter())
            .filter(|c| c.domain == d && !c.held_out)
            .flat_map(|c| c.train.iter().copied())
            .collect();
        samples.sort_unstable();
        samples.dedup();
        let paths: Vec<_> = samples
            .iter()
            .map(|&i| domain.samples[i].path.clone())
            .collect();
        let mut views = Vec::new();
        for index in 0..cfg.augment_views {
            let view = ViewId {
                seed: cfg.seed,
                index,
            };
            let (feats, stats) = cache.image_view_features(&paths, view, |chunk| {
                let entries: Vec<ImageEntry> =
                    chunk.iter().map(|p| ImageEntry::from_path(p)).collect();
                encoder.encode_image_views(&entries, view, cfg.extract_batch)
            })?;
            out.extracted += stats.computed;
            out.from_cache += stats.hits;
            views.push(feats);
        }
        out.row_of
            .push(samples.iter().enumerate().map(|(r, &i)| (i, r)).collect());
        out.views.push(views);
    }
    eprintln!(
        "augmented views: {} per training image, {} extracted, {} from cache",
        cfg.augment_views, out.extracted, out.from_cache
    );
    Ok(out)
}

/// Rows `idx` of `[n, dim]` features.
fn rows(features: &[f32], idx: impl Iterator<Item = usize>, dim: usize) -> Vec<f32> {
    idx.flat_map(|i| features[i * dim..(i + 1) * dim].iter().copied())
        .collect()
}

/// Each client's train / val / test rows, in split order; the train split with its views.
fn gather_clients(
    dataset: &Dataset,
    splits: &Splits,
    domain_features: &[Vec<f32>],
    views: &TrainingViews,
    dim: usize,
) -> Vec<ClientData> {
    let gather = |domain: usize, idx: &[usize]| SplitData {
        features: rows(&domain_features[domain], idx.iter().copied(), dim),
        labels: idx
            .iter()
            .map(|&i| dataset.domains[domain].samples[i].label as u32)
            .collect(),
        views: Vec::new(),
    };
    let train_views = |c: &Client| -> Vec<Vec<f32>> {
        let Some(row_of) = views.row_of.get(c.domain).filter(|_| !c.held_out) else {
            return Vec::new();
        };
        let idx = &c.train;
        (views.views[c.domain].iter())
            .map(|v| rows(v, idx.iter().map(|i| row_of[i]), dim))
            .collect()
    };
    splits
        .clients
        .iter()
        .map(|c| ClientData {
            name: c.name.clone(),
            held_out: c.held_out,
            train: SplitData {
                views: train_views(c),
                ..gather(c.domain, &c.train)
            },
            val: gather(c.domain, &c.val),
            test: gather(c.domain, &c.test),
        })
        .collect()
}
