//! The `fedclip embed` job: images and prompts in, projected CLIP features out.

use crate::cuda::{CudaClip, CudaText, CudaVision, Gpu};
use crate::device::{Backend, Device, select_device};
use crate::model::{ClipModel, TextTower, VisionTower};
use crate::paths::utf8;
use crate::preprocess::{PreprocessConfig, preprocess_file};
use crate::tokenizer::ClipTokenizer;
use anyhow::{Context, Result, bail, ensure};
use indicatif::{ProgressBar, ProgressStyle};
use rayon::prelude::*;
use safetensors::{Dtype, tensor::TensorView};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// File extensions taken from image directories: the formats fedclip decodes. Other files
/// there are ignored, images in other formats with a warning.
const IMAGE_EXTENSIONS: &[&str] = &["jpg", "jpeg", "png"];
/// Image formats fedclip does not decode, warned about when a directory holds them.
const UNREAD_IMAGE_EXTENSIONS: &[&str] = &["bmp", "gif", "webp", "tif", "tiff", "ppm", "pgm"];

pub struct EmbedRequest {
    pub model: PathBuf,
    pub images: Vec<PathBuf>,
    pub texts: Option<PathBuf>,
    pub out: PathBuf,
    pub batch: usize,
    pub device: Device,
    pub skip_bad: bool,
    pub truncate: bool,
    /// Pillow's `MAX_IMAGE_PIXELS` rule (see [`crate::preprocess::decode_bytes_limited`]).
    pub max_image_pixels: u64,
}

pub struct EmbedSummary {
    pub images: usize,
    pub skipped: Vec<String>,
    pub texts: usize,
    pub images_per_second: f64,
}

/// One image to encode: where it is and the name it is listed under.
#[derive(Clone, Debug, PartialEq)]
pub struct ImageEntry {
    pub path: PathBuf,
    pub name: String,
}

/// Expands `--images` arguments: a directory is walked recursively in sorted
/// relative-path order (names relative to it when it is the only argument); a file is
/// taken as given, whatever its extension.
pub fn collect_images(args: &[PathBuf]) -> Result<Vec<ImageEntry>> {
    let mut entries = Vec::new();
    for arg in args {
        if arg.is_dir() {
            let (mut found, mut unread) = (Vec::new(), Vec::new());
            walk(arg, &mut found, &mut unread)
                .with_context(|| format!("cannot list {}", arg.display()))?;
            unread.sort();
            if let Some(first) = unread.first() {
                eprintln!(
                    "warning: ignoring {} file(s) under {} in formats fedclip does not decode \
                     (only JPEG and PNG are read), e.g. {}",
                    unread.len(),
                    arg.display(),
                    first.display()
                );
            }
            if found.is_empty() {
                bail!(
                    "no images ({}) found under {}",
                    IMAGE_EXTENSIONS.join(", "),
                    arg.display()
                );
            }
            let mut rel: Vec<(String, PathBuf)> = found
                .into_iter()
                .map(|p| {
                    let r = utf8("--images", p.strip_prefix(arg).unwrap_or(&p))?.to_string();
                    Ok((r, p))
                })
                .collect::<Result<_>>()?;
            rel.sort();
            for (r, path) in rel {
                let name = if args.len() == 1 {
                    r
                } else {
                    utf8("--images", &path)?.to_string()
                };
                entries.push(ImageEntry { path, name });
            }
        } else if arg.is_file() {
            entries.push(ImageEntry {
                path: arg.clone(),
                name: utf8("--images", arg)?.to_string(),
            });
        } else {
            bail!("{}: no such image file or directory", arg.display());
        }
    }
    Ok(entries)
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>, unread: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            walk(&path, out, unread)?;
        } else if has_extension(&path, IMAGE_EXTENSIONS) {
            out.push(path);
        } else if has_extension(&path, UNREAD_IMAGE_EXTENSIONS) {
            unread.push(path);
        }
    }
    Ok(())
}

fn has_extension(path: &Path, extensions: &[&str]) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| extensions.contains(&e.to_ascii_lowercase().as_str()))
}

/// Reads a prompt file: one prompt per line, blank lines skipped.
pub fn read_prompts(file: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(file)
        .with_context(|| format!("cannot read prompt file {}", file.display()))?;
    let prompts: Vec<String> = text
        .lines()
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty())
        .collect();
    if prompts.is_empty() {
        bail!("prompt file {} has no prompts", file.display());
    }
    Ok(prompts)
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
    fn config(&self) -> &crate::weights::TextConfig {
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

/// Encodes images in batches. Decoding runs in parallel; files that fail are one error
/// naming every one of them, or with `skip_bad` a warning each, and they are left out.
/// Images over twice `max_image_pixels` (from their header) are refused before decoding.
pub fn encode_images(
    model: &ClipModel,
    entries: &[ImageEntry],
    batch: usize,
    skip_bad: bool,
    max_image_pixels: u64,
) -> Result<(Vec<f32>, Vec<String>, Vec<String>)> {
    let vision = model
        .vision
        .as_ref()
        .with_context(|| format!("{} has no vision tower", model.dir.display()))?;
    let opts = ImageOptions {
        batch,
        skip_bad,
        max_image_pixels,
    };
    encode_images_on(Vision::Cpu(vision), &model.dir, entries, &opts)
}

/// [`encode_images`] on the CUDA engine.
pub fn encode_images_cuda(
    model: &CudaClip,
    entries: &[ImageEntry],
    batch: usize,
    skip_bad: bool,
    max_image_pixels: u64,
) -> Result<(Vec<f32>, Vec<String>, Vec<String>)> {
    let vision = model
        .vision
        .as_ref()
        .with_context(|| format!("{} has no vision tower", model.dir.display()))?;
    let opts = ImageOptions {
        batch,
        skip_bad,
        max_image_pixels,
    };
    encode_images_on(Vision::Cuda(vision), &model.dir, entries, &opts)
}

struct ImageOptions {
    batch: usize,
    skip_bad: bool,
    max_image_pixels: u64,
}

fn encode_images_on(
    vision: Vision,
    dir: &Path,
    entries: &[ImageEntry],
    opts: &ImageOptions,
) -> Result<(Vec<f32>, Vec<String>, Vec<String>)> {
    if !vision.has_projection() {
        bail!(
            "{}: no `visual_projection.weight`, so there are no projected image features",
            dir.display()
        );
    }
    let mut cfg = PreprocessConfig::from_model_dir(dir, vision.image_size())?;
    cfg.max_image_pixels = opts.max_image_pixels;
    let bar = progress(entries.len(), "images");
    let (mut embeds, mut kept, mut skipped) = (Vec::new(), Vec::new(), Vec::new());
    // Without `skip_bad`, the first failure stops encoding, but decoding goes on so that one
    // error lists every bad file.
    let mut failures: Vec<String> = Vec::new();
    for (b, chunk) in entries.chunks(opts.batch.max(1)).enumerate() {
        let decoded: Vec<Result<Vec<f32>>> = chunk
            .par_iter()
            .map(|e| preprocess_file(&e.path, &cfg))
            .collect();
        let mut pixels = Vec::with_capacity(chunk.len() * vision.pixels_per_image());
        let mut names = Vec::with_capacity(chunk.len());
        for (entry, result) in chunk.iter().zip(decoded) {
            match result {
                Ok(p) if p.len() == vision.pixels_per_image() => {
                    pixels.extend_from_slice(&p);
                    names.push(entry.name.clone());
                }
                Ok(p) => bail!(
                    "{}: preprocessing gave {} values, the model takes {} (is preprocessor_config.json's crop size the model's image_size?)",
                    entry.path.display(),
                    p.len(),
                    vision.pixels_per_image()
                ),
                Err(e) if opts.skip_bad => {
                    bar.suspend(|| eprintln!("warning: skipping {}: {e:#}", entry.path.display()));
                    skipped.push(entry.name.clone());
                }
                Err(e) => failures.push(format!("{e:#}")),
            }
        }
        let n = names.len();
        if n > 0 && failures.is_empty() {
            let out = vision.embeds(&pixels, n)?;
            check_finite(&out, n, &names, b, "image")?;
            embeds.extend(out);
            kept.extend(names);
        }
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();
    match failures.len() {
        0 => Ok((embeds, kept, skipped)),
        1 => bail!("{} (pass --skip-bad to leave it out)", failures[0]),
        k => bail!(
            "{k} images cannot be used (pass --skip-bad to leave them out):\n  {}",
            failures.join("\n  ")
        ),
    }
}

/// No NaN or infinity leaves the engine: a non-finite embedding is an error naming the
/// batch and the input it belongs to.
fn check_finite(
    embeds: &[f32],
    n: usize,
    names: &[String],
    batch: usize,
    what: &str,
) -> Result<()> {
    let dim = embeds.len() / n.max(1);
    if let Some(i) = embeds.iter().position(|v| !v.is_finite()) {
        let row = i / dim.max(1);
        bail!(
            "the model gave a non-finite {what} embedding ({}) for {what} `{}` in batch {batch} \
             (check the model's weights and config.json)",
            embeds[i],
            names.get(row).map_or("?", String::as_str)
        );
    }
    Ok(())
}

/// Encodes prompts, batched, each batch padded only to its longest prompt: with the
/// causal mask and end-token pooling, padding never changes a result.
pub fn encode_texts(
    model: &ClipModel,
    prompts: &[String],
    batch: usize,
    truncate: bool,
) -> Result<Vec<f32>> {
    let text = model
        .text
        .as_ref()
        .with_context(|| format!("{} has no text tower", model.dir.display()))?;
    encode_texts_on(Text::Cpu(text), &model.dir, prompts, batch, truncate)
}

/// [`encode_texts`] on the CUDA engine.
pub fn encode_texts_cuda(
    model: &CudaClip,
    prompts: &[String],
    batch: usize,
    truncate: bool,
) -> Result<Vec<f32>> {
    let text = model
        .text
        .as_ref()
        .with_context(|| format!("{} has no text tower", model.dir.display()))?;
    encode_texts_on(Text::Cuda(text), &model.dir, prompts, batch, truncate)
}

fn encode_texts_on(
    text: Text,
    dir: &Path,
    prompts: &[String],
    batch: usize,
    truncate: bool,
) -> Result<Vec<f32>> {
    if !text.has_projection() {
        bail!(
            "{}: no `text_projection.weight`, so there are no projected text features",
            dir.display()
        );
    }
    let config = text.config();
    let tokenizer = ClipTokenizer::load(dir, config.max_position_embeddings)?;
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
        check_finite(&out, chunk.len(), texts, b, "prompt")?;
        embeds.extend(out);
    }
    Ok(embeds)
}

/// Writes f32 tensors and string metadata to a safetensors file atomically: a temporary
/// file beside it, renamed into place, so an interrupted run never leaves half a file.
pub fn write_safetensors(
    out: &Path,
    tensors: &[(&str, Vec<usize>, &[f32])],
    metadata: HashMap<String, String>,
) -> Result<()> {
    let views = tensors
        .iter()
        .map(|(name, shape, data)| {
            let view = TensorView::new(Dtype::F32, shape.clone(), bytemuck::cast_slice(data))
                .with_context(|| format!("tensor `{name}` does not match its shape {shape:?}"))?;
            Ok((name.to_string(), view))
        })
        .collect::<Result<Vec<_>>>()?;
    if let Some(parent) = out.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("cannot create directory {}", parent.display()))?;
    }
    let tmp = out.with_extension(format!("tmp{}", std::process::id()));
    let bytes = safetensors::serialize(views, Some(metadata))
        .with_context(|| format!("cannot serialise {}", out.display()))?;
    let bytes = with_sorted_metadata(bytes)?;
    std::fs::write(&tmp, bytes).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, out).with_context(|| format!("cannot move {} into place", out.display()))
}

/// safetensors writes `__metadata__` in `HashMap` order, which changes from run to run;
/// rewrites the header with its keys sorted so that the same input gives the same bytes.
/// The header keeps its length, so the data offsets stay valid.
fn with_sorted_metadata(mut bytes: Vec<u8>) -> Result<Vec<u8>> {
    let n = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes")) as usize;
    let mut header: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&bytes[8..8 + n])?;
    if let Some(serde_json::Value::Object(meta)) = header.get("__metadata__") {
        let sorted: std::collections::BTreeMap<_, _> = meta.clone().into_iter().collect();
        header.insert("__metadata__".into(), serde_json::to_value(sorted)?);
    }
    let mut text = serde_json::to_vec(&header)?;
    ensure!(text.len() <= n, "safetensors header grew when sorted");
    text.resize(n, b' ');
    bytes[8..8 + n].copy_from_slice(&text);
    Ok(bytes)
}

/// The loaded model on the engine `--device` selected.
enum Engine {
    Cpu(Box<ClipModel>),
    Cuda(Box<CudaClip>),
}

pub fn run(req: &EmbedRequest) -> Result<EmbedSummary> {
    if req.images.is_empty() && req.texts.is_none() {
        bail!("nothing to embed: give --images and/or --texts");
    }
    if req.batch == 0 {
        bail!("--batch must be at least 1");
    }
    // Validate every input before the slow part, so a typo fails in a second.
    utf8("--model", &req.model)?;
    utf8("--out", &req.out)?;
    let entries = collect_images(&req.images)?;
    let prompts = req.texts.as_deref().map(read_prompts).transpose()?;
    let engine = match select_device(req.device)? {
        Backend::Cpu => Engine::Cpu(Box::new(ClipModel::load(&req.model)?)),
        Backend::Cuda => {
            let gpu = Gpu::open()?;
            let i = &gpu.info;
            eprintln!(
                "CUDA engine: {} (sm_{}{}), kernels from NVRTC {} ({} compiled, {} cached)",
                i.name,
                i.compute_capability.0,
                i.compute_capability.1,
                i.nvrtc,
                i.kernels_compiled,
                i.kernels_cached
            );
            Engine::Cuda(Box::new(CudaClip::load(&gpu, &req.model)?))
        }
    };
    let config = match &engine {
        Engine::Cpu(m) => &m.config,
        Engine::Cuda(m) => &m.config,
    };
    let mut metadata = HashMap::new();
    metadata.insert("model".into(), utf8("--model", &req.model)?.to_string());
    let mut owned: Vec<(&str, Vec<usize>, Vec<f32>)> = Vec::new();
    let mut summary = EmbedSummary {
        images: 0,
        skipped: Vec::new(),
        texts: 0,
        images_per_second: 0.0,
    };
    if !entries.is_empty() {
        let start = Instant::now();
        let (embeds, kept, skipped) = match &engine {
            Engine::Cpu(m) => {
                encode_images(m, &entries, req.batch, req.skip_bad, req.max_image_pixels)?
            }
            Engine::Cuda(m) => {
                encode_images_cuda(m, &entries, req.batch, req.skip_bad, req.max_image_pixels)?
            }
        };
        summary.images_per_second = kept.len() as f64 / start.elapsed().as_secs_f64();
        let dim = config.vision.as_ref().map_or(0, |v| v.projection_dim);
        owned.push(("image_embeds", vec![kept.len(), dim], embeds));
        metadata.insert("images".into(), serde_json::to_string(&kept)?);
        metadata.insert("skipped".into(), serde_json::to_string(&skipped)?);
        summary.images = kept.len();
        summary.skipped = skipped;
    }
    if let Some(prompts) = &prompts {
        let embeds = match &engine {
            Engine::Cpu(m) => encode_texts(m, prompts, req.batch, req.truncate)?,
            Engine::Cuda(m) => encode_texts_cuda(m, prompts, req.batch, req.truncate)?,
        };
        let dim = config.text.as_ref().map_or(0, |t| t.projection_dim);
        owned.push(("text_embeds", vec![prompts.len(), dim], embeds));
        metadata.insert("texts".into(), serde_json::to_string(prompts)?);
        summary.texts = prompts.len();
    }
    let tensors: Vec<(&str, Vec<usize>, &[f32])> = owned
        .iter()
        .map(|(n, s, d)| (*n, s.clone(), d.as_slice()))
        .collect();
    write_safetensors(&req.out, &tensors, metadata)?;
    Ok(summary)
}
