//! The encoder seam: one [`Encoder`] turns images and prompts into projected CLIP features on
//! whichever engine `--device` resolved to ([`Engine`]). Both jobs (`embed`, `run`) use it, and
//! neither imports the other.

use crate::cuda::{CudaClip, CudaText, CudaVision, Gpu};
use crate::device::{Backend, Device, select_device};
use crate::features::ModelKey;
use crate::model::{ClipModel, TextTower, VisionTower};
use crate::preprocess::augment::{ViewId, preprocess_view_file};
use crate::preprocess::{DEFAULT_MAX_IMAGE_PIXELS, PreprocessConfig, preprocess_file};
use crate::tokenizer::{ClipTokenizer, TokenizerKind};
use crate::weights::{ClipConfig, ModelFiles, TextConfig};
use anyhow::{Context, Result, bail};
use indicatif::{ProgressBar, ProgressStyle};
use rayon::prelude::*;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The engine `--device` resolved to, once per job; encoders and adapter trainers are built
/// on it.
#[derive(Clone)]
pub enum Engine {
    Cpu,
    Cuda(Arc<Gpu>),
}

impl Engine {
    /// Resolves `--device` (see [`select_device`]) and opens the GPU when it is chosen.
    pub fn select(device: Device) -> Result<Engine> {
        Ok(match select_device(device)? {
            Backend::Cpu => Engine::Cpu,
            Backend::Cuda => Engine::Cuda(Gpu::open()?),
        })
    }

    /// The GPU, on the CUDA engine.
    pub fn gpu(&self) -> Option<&Arc<Gpu>> {
        match self {
            Engine::Cpu => None,
            Engine::Cuda(g) => Some(g),
        }
    }

    /// From an optional GPU (tests pass the host emulator here).
    pub fn from_gpu(gpu: Option<Arc<Gpu>>) -> Engine {
        gpu.map_or(Engine::Cpu, Engine::Cuda)
    }
}

/// One image to encode: where it is and the name it is listed under.
#[derive(Clone, Debug, PartialEq)]
pub struct ImageEntry {
    pub path: PathBuf,
    pub name: String,
}

impl ImageEntry {
    /// An entry listed under its own path.
    pub fn from_path(path: &Path) -> ImageEntry {
        ImageEntry {
            path: path.to_path_buf(),
            name: path.display().to_string(),
        }
    }
}

/// What [`Encoder::encode_images`] returns.
#[derive(Clone, Debug, Default)]
pub struct EncodedImages {
    /// `[kept.len(), projection_dim]`, projected and not L2-normalised.
    pub embeds: Vec<f32>,
    /// Names of the encoded images, in output order.
    pub kept: Vec<String>,
    /// Names of the images left out (only with `skip_bad`).
    pub skipped: Vec<String>,
}

/// A loaded CLIP model on one engine.
enum Towers {
    Cpu(Box<ClipModel>),
    Cuda(Box<CudaClip>),
}

/// A CLIP model directory loaded on one engine: images and prompts in, features out.
pub struct Encoder {
    towers: Towers,
    logit_scale: Option<f32>,
    /// Pillow's `MAX_IMAGE_PIXELS` rule, checked from each image's header before decoding.
    max_image_pixels: u64,
    /// On the CUDA engine, decode the next batch of images while the GPU encodes this one.
    decode_ahead: bool,
}

impl From<ClipModel> for Encoder {
    fn from(model: ClipModel) -> Encoder {
        Encoder {
            logit_scale: model.logit_scale,
            towers: Towers::Cpu(Box::new(model)),
            max_image_pixels: DEFAULT_MAX_IMAGE_PIXELS,
            decode_ahead: true,
        }
    }
}

impl<'a> From<&'a Encoder> for ModelKey<'a> {
    fn from(encoder: &'a Encoder) -> Self {
        ModelKey {
            files: encoder.files(),
            config: encoder.config(),
        }
    }
}

impl Encoder {
    /// Loads `dir` on `engine`: to the GPU directly there (no f32 host copy), else the CPU.
    pub fn open(dir: &Path, engine: &Engine) -> Result<Encoder> {
        match engine {
            Engine::Cpu => Ok(ClipModel::load(dir)?.into()),
            Engine::Cuda(gpu) => Encoder::cuda(CudaClip::load(gpu, dir)?),
        }
    }

    /// An encoder over a model already on the GPU.
    pub fn cuda(model: CudaClip) -> Result<Encoder> {
        Ok(Encoder {
            logit_scale: model.logit_scale,
            towers: Towers::Cuda(Box::new(model)),
            max_image_pixels: DEFAULT_MAX_IMAGE_PIXELS,
            decode_ahead: true,
        })
    }

    /// Images whose header claims more than twice `max` pixels are refused before decoding
    /// (`--max-image-pixels`; a warning above `max`).
    pub fn set_max_image_pixels(&mut self, max: u64) {
        self.max_image_pixels = max;
    }

    /// On the CUDA engine, whether [`encode_images`](Self::encode_images) decodes batch i+1
    /// on the CPUs while the GPU encodes batch i (default on; the results are the same either
    /// way). The CPU engine never overlaps: its encoding already uses every core.
    pub fn set_decode_ahead(&mut self, on: bool) {
        self.decode_ahead = on;
    }

    /// The model's files (layout, config and weight files).
    pub fn files(&self) -> &ModelFiles {
        match &self.towers {
            Towers::Cpu(m) => &m.files,
            Towers::Cuda(m) => &m.files,
        }
    }

    pub fn dir(&self) -> &Path {
        match &self.towers {
            Towers::Cpu(m) => &m.dir,
            Towers::Cuda(m) => &m.dir,
        }
    }

    pub fn config(&self) -> &ClipConfig {
        match &self.towers {
            Towers::Cpu(m) => &m.config,
            Towers::Cuda(m) => &m.config,
        }
    }

    /// `logit_scale` as stored (the log of CLIP's temperature), when the save has it.
    pub fn logit_scale(&self) -> Option<f32> {
        self.logit_scale
    }

    /// The image preprocessing of this model (its `preprocessor_config.json`, else CLIP's).
    pub fn preprocess_config(&self) -> Result<PreprocessConfig> {
        let image_size = self.vision()?.image_size();
        let mut cfg = PreprocessConfig::from_model_dir(self.dir(), image_size)?;
        cfg.max_image_pixels = self.max_image_pixels;
        cfg.check_sizes(image_size).with_context(|| {
            format!(
                "the preprocessing of {} (its preprocessor_config.json or open_clip_config.json)",
                self.dir().display()
            )
        })?;
        Ok(cfg)
    }

    fn vision(&self) -> Result<Vision<'_>> {
        let tower = match &self.towers {
            Towers::Cpu(m) => m.vision.as_ref().map(Vision::Cpu),
            Towers::Cuda(m) => m.vision.as_ref().map(Vision::Cuda),
        };
        tower.with_context(|| format!("{} has no vision tower", self.dir().display()))
    }

    fn text(&self) -> Result<Text<'_>> {
        let tower = match &self.towers {
            Towers::Cpu(m) => m.text.as_ref().map(Text::Cpu),
            Towers::Cuda(m) => m.text.as_ref().map(Text::Cuda),
        };
        tower.with_context(|| format!("{} has no text tower", self.dir().display()))
    }

    /// Encodes images in batches. Decoding runs in parallel (on the CUDA engine, one batch
    /// ahead of the GPU); files that fail are one error naming every one (decoding goes on
    /// after the first, encoding stops), or with `skip_bad` a warning each, and they are
    /// left out. A non-finite embedding is an error naming the batch and the image.
    pub fn encode_images(
        &self,
        entries: &[ImageEntry],
        batch: usize,
        skip_bad: bool,
    ) -> Result<EncodedImages> {
        let cfg = self.preprocess_config()?;
        self.encode_decoded(entries, batch, skip_bad, &|path| {
            preprocess_file(path, &cfg)
        })
    }

    /// Encodes augmented view `view` of each image (`[entries.len(), projection_dim]`; see
    /// [`crate::preprocess::augment`]) as [`encode_images`](Self::encode_images) encodes the
    /// centre crops, without `skip_bad`: the images were decoded once already.
    pub fn encode_image_views(
        &self,
        entries: &[ImageEntry],
        view: ViewId,
        batch: usize,
    ) -> Result<Vec<f32>> {
        let cfg = self.preprocess_config()?;
        let decode = |path: &Path| preprocess_view_file(path, &cfg, view.seed, view.index);
        Ok(self.encode_decoded(entries, batch, false, &decode)?.embeds)
    }

    /// [`encode_images`](Self::encode_images) with each file's pixels from `decode`.
    fn encode_decoded(
        &self,
        entries: &[ImageEntry],
        batch: usize,
        skip_bad: bool,
        decode: &Decode,
    ) -> Result<EncodedImages> {
        let vision = self.vision()?;
        if !vision.has_projection() {
            bail!(
                "{}: no `visual_projection.weight`, so there are no projected image features",
                self.dir().display()
            );
        }
        let ahead = self.decode_ahead && matches!(vision, Vision::Cuda(_));
        let bar = progress(entries.len(), "images");
        let mut out = EncodedImages::default();
        let mut failures = Vec::new();
        let chunks: Vec<&[ImageEntry]> = entries.chunks(batch.max(1)).collect();
        // Batch b's decoded files, when they were decoded during batch b − 1's encoding.
        let mut pending = None;
        for (b, &chunk) in chunks.iter().enumerate() {
            let decoded = pending
                .take()
                .unwrap_or_else(|| decode_files(decode, chunk));
            // Names, warnings and failures are recorded in batch order, as without overlap.
            let first = out.kept.len();
            let decoded = record_batch(&vision, chunk, decoded, skip_bad, &bar, &mut out)?;
            failures.extend(decoded.failures);
            let n = decoded.pixels.len() / vision.pixels_per_image();
            let encode = || match n > 0 && failures.is_empty() {
                true => vision.embeds(&decoded.pixels, n).map(Some),
                false => Ok(None),
            };
            let embeds = match chunks.get(b + 1).filter(|_| ahead) {
                Some(&next) => {
                    let (embeds, next) = rayon::join(encode, || decode_files(decode, next));
                    pending = Some(next);
                    embeds?
                }
                None => encode()?,
            };
            if let Some(embeds) = embeds {
                check_finite(&embeds, &out.kept[first..], b, "image")?;
                out.embeds.extend(embeds);
            }
            bar.inc(chunk.len() as u64);
        }
        bar.finish_and_clear();
        match failures.len() {
            0 => Ok(out),
            1 => bail!("{} (pass --skip-bad to leave it out)", failures[0]),
            k => bail!(
                "{k} images cannot be used (pass --skip-bad to leave them out):\n  {}",
                failures.join("\n  ")
            ),
        }
    }

    /// Encodes prompts, batched, each batch padded only to its longest prompt: with the
    /// causal mask and end-token pooling, padding never changes a result.
    pub fn encode_texts(
        &self,
        prompts: &[String],
        batch: usize,
        truncate: bool,
        tokenizer: TokenizerKind,
    ) -> Result<Vec<f32>> {
        let text = self.text()?;
        if !text.has_projection() {
            bail!(
                "{}: no `text_projection.weight`, so there are no projected text features",
                self.dir().display()
            );
        }
        let config = text.config();
        let tokenizer = ClipTokenizer::load(self.dir(), config.max_position_embeddings, tokenizer)?;
        let ids = prompts
            .iter()
            .map(|p| tokenizer.encode(p, truncate))
            .collect::<Result<Vec<_>>>()?;
        let mut embeds = Vec::new();
        for (b, (chunk, texts)) in ids
            .chunks(batch.max(1))
            .zip(prompts.chunks(batch.max(1)))
            .enumerate()
        {
            let seq = chunk.iter().map(Vec::len).max().unwrap_or(1);
            let mut flat = Vec::with_capacity(chunk.len() * seq);
            for row in chunk {
                flat.extend_from_slice(row);
                flat.resize(flat.len() + seq - row.len(), config.pad_token_id);
            }
            let out = text.embeds(&flat, chunk.len(), seq)?;
            check_finite(&out, texts, b, "prompt")?;
            embeds.extend(out);
        }
        Ok(embeds)
    }
}

/// No NaN or infinity leaves the engine: a non-finite embedding is an error naming the
/// batch and the input (`names[row]`) it belongs to.
fn check_finite(embeds: &[f32], names: &[String], batch: usize, what: &str) -> Result<()> {
    let dim = embeds.len() / names.len().max(1);
    if let Some(i) = embeds.iter().position(|v| !v.is_finite()) {
        bail!(
            "the model gave a non-finite {what} embedding ({}) for {what} `{}` in batch {batch} \
             (check the model's weights and config)",
            embeds[i],
            names.get(i / dim.max(1)).map_or("?", String::as_str)
        );
    }
    Ok(())
}

/// One decoded chunk: the pixels of the images kept, and the errors of those that failed
/// (without `skip_bad`).
struct DecodedBatch {
    pixels: Vec<f32>,
    failures: Vec<String>,
}

/// One file's model-ready pixels (the centre crop, or an augmented view).
type Decode<'a> = dyn Fn(&Path) -> Result<Vec<f32>> + Sync + 'a;

/// Decodes one chunk of images in parallel, each to its pixels or its error; nothing is
/// recorded or printed yet (a chunk decoded ahead may never be used).
fn decode_files(decode: &Decode, chunk: &[ImageEntry]) -> Vec<Result<Vec<f32>>> {
    chunk.par_iter().map(|e| decode(&e.path)).collect()
}

/// Gathers one decoded chunk into `[n, pixels_per_image]`, recording each image as kept or
/// (with `skip_bad`, and a warning) skipped in `out`.
fn record_batch(
    vision: &Vision,
    chunk: &[ImageEntry],
    decoded: Vec<Result<Vec<f32>>>,
    skip_bad: bool,
    bar: &ProgressBar,
    out: &mut EncodedImages,
) -> Result<DecodedBatch> {
    let per_image = vision.pixels_per_image();
    let mut pixels = Vec::with_capacity(chunk.len() * per_image);
    let mut failures = Vec::new();
    for (entry, result) in chunk.iter().zip(decoded) {
        match result {
            Ok(p) if p.len() == per_image => {
                pixels.extend_from_slice(&p);
                out.kept.push(entry.name.clone());
            }
            Ok(p) => bail!(
                "{}: preprocessing gave {} values, the model takes {per_image} (is preprocessor_config.json's crop size the model's image_size?)",
                entry.path.display(),
                p.len(),
            ),
            Err(e) if skip_bad => {
                bar.suspend(|| eprintln!("warning: skipping {}: {e:#}", entry.path.display()));
                out.skipped.push(entry.name.clone());
            }
            Err(e) => failures.push(format!("{e:#}")),
        }
    }
    Ok(DecodedBatch { pixels, failures })
}

fn progress(len: usize, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(len as u64);
    bar.set_style(
        ProgressStyle::with_template(&format!(
            "{what} {{bar:30}} {{pos}}/{{len}} [{{elapsed_precise}}<{{eta_precise}}, {{per_sec}}]"
        ))
        .expect("static template"),
    );
    bar
}

/// A vision tower on either engine.
#[derive(Clone, Copy)]
enum Vision<'a> {
    Cpu(&'a VisionTower),
    Cuda(&'a CudaVision),
}

impl Vision<'_> {
    fn image_size(&self) -> usize {
        match self {
            Vision::Cpu(v) => v.config.image_size,
            Vision::Cuda(v) => v.config.image_size,
        }
    }
    fn has_projection(&self) -> bool {
        match self {
            Vision::Cpu(v) => v.has_projection(),
            Vision::Cuda(v) => v.has_projection(),
        }
    }
    fn pixels_per_image(&self) -> usize {
        match self {
            Vision::Cpu(v) => v.pixels_per_image(),
            Vision::Cuda(v) => v.pixels_per_image(),
        }
    }
    fn embeds(&self, pixels: &[f32], n: usize) -> Result<Vec<f32>> {
        match self {
            Vision::Cpu(v) => Ok(v.forward(pixels, n, false).embeds),
            Vision::Cuda(v) => Ok(v.forward(pixels, n, false)?.embeds),
        }
    }
}

/// A text tower on either engine.
#[derive(Clone, Copy)]
enum Text<'a> {
    Cpu(&'a TextTower),
    Cuda(&'a CudaText),
}

impl Text<'_> {
    fn config(&self) -> &TextConfig {
        match self {
            Text::Cpu(t) => &t.config,
            Text::Cuda(t) => &t.config,
        }
    }
    fn has_projection(&self) -> bool {
        match self {
            Text::Cpu(t) => t.has_projection(),
            Text::Cuda(t) => t.has_projection(),
        }
    }
    fn embeds(&self, ids: &[u32], n: usize, seq: usize) -> Result<Vec<f32>> {
        match self {
            Text::Cpu(t) => Ok(t.forward(ids, n, seq, false)?.embeds),
            Text::Cuda(t) => Ok(t.forward(ids, n, seq, false)?.embeds),
        }
    }
}
