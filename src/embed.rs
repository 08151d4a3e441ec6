//! The `fedclip embed` job: images and prompts in, projected CLIP features out.

use crate::device::Device;
use crate::encode::{Encoder, Engine, ImageEntry};
use crate::io::write_safetensors;
use crate::paths::utf8;
use crate::tokenizer::TokenizerKind;
use anyhow::{Context, Result, bail};
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
    pub tokenizer: TokenizerKind,
}

pub struct EmbedSummary {
    pub images: usize,
    pub skipped: Vec<String>,
    pub texts: usize,
    pub images_per_second: f64,
}

/// Expands `--images` arguments: a directory is walked recursively (the shared
/// [`walk`](crate::walk): regular files only, each directory once) in sorted relative-path
/// order (names relative to it when it is the only argument); a file is taken as given,
/// whatever its extension, if it is a regular file.
pub fn collect_images(args: &[PathBuf]) -> Result<Vec<ImageEntry>> {
    let mut entries = Vec::new();
    for arg in args {
        if arg.is_dir() {
            entries.extend(images_under(arg, args.len() == 1)?);
        } else if let Some(what) = crate::walk::not_regular(arg) {
            bail!(
                "--images {} is {what}, not a regular file; fedclip reads only regular files",
                arg.display()
            );
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

/// The JPEG and PNG files under `dir`, named relative to it (`relative`) or by their path;
/// a warning for images in formats fedclip does not decode.
fn images_under(dir: &Path, relative: bool) -> Result<Vec<ImageEntry>> {
    let walk = crate::walk::regular_files(dir, "--images", |name| {
        has_extension(Path::new(name), IMAGE_EXTENSIONS)
            || has_extension(Path::new(name), UNREAD_IMAGE_EXTENSIONS)
    })?;
    for w in &walk.warnings {
        eprintln!("warning: {w}");
    }
    let (mut found, mut unread): (Vec<_>, Vec<_>) = walk
        .files
        .into_iter()
        .map(|f| (f.rel(), f.path))
        .partition(|(_, p)| has_extension(p, IMAGE_EXTENSIONS));
    unread.sort();
    if let Some((first, _)) = unread.first() {
        eprintln!(
            "warning: ignoring {} file(s) under {} in formats fedclip does not decode \
             (only JPEG and PNG are read), e.g. {}",
            unread.len(),
            dir.display(),
            dir.join(first).display()
        );
    }
    if found.is_empty() {
        bail!(
            "no images ({}) found under {}",
            IMAGE_EXTENSIONS.join(", "),
            dir.display()
        );
    }
    found.sort();
    found
        .into_iter()
        .map(|(rel, path)| {
            let name = if relative {
                rel
            } else {
                utf8("--images", &path)?.to_string()
            };
            Ok(ImageEntry { path, name })
        })
        .collect()
}

/// Files beside a model's config that fedclip may read (tokenizer, preprocessing).
const MODEL_SIDE_FILES: &[&str] = &[
    "tokenizer.json",
    "tokenizer_config.json",
    "preprocessor_config.json",
    "open_clip_config.json",
];

/// Refuses an `--out` that is not a regular file ([`crate::io::check_replaceable`]) or is
/// one of this job's inputs (the same file by device and inode, whatever the path): an
/// image, the prompt file or one of the model's files would be overwritten by the output.
fn check_out(
    out: &Path,
    images: &[ImageEntry],
    texts: Option<&Path>,
    model: &crate::weights::ModelFiles,
) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    crate::io::check_replaceable(out).context("--out")?;
    let Ok(meta) = std::fs::metadata(out) else {
        return Ok(()); // a new file
    };
    let same = |p: &Path| {
        std::fs::metadata(p).is_ok_and(|m| (m.dev(), m.ino()) == (meta.dev(), meta.ino()))
    };
    let refuse = |what: &str, p: &Path| {
        bail!(
            "--out {} is {what} {}: writing the embeddings would overwrite it; choose another --out",
            out.display(),
            p.display()
        )
    };
    if let Some(image) = images.iter().find(|e| same(&e.path)) {
        return refuse("the input image", &image.path);
    }
    if let Some(t) = texts.filter(|t| same(t)) {
        return refuse("the prompt file", t);
    }
    let mut model_files = vec![model.config_file.clone()];
    model_files.extend(MODEL_SIDE_FILES.iter().map(|n| model.dir.join(n)));
    match &model.weights {
        crate::weights::WeightFiles::File(f) => model_files.push(f.clone()),
        // model.safetensors, or its shards and index
        crate::weights::WeightFiles::HfDir => model_files.extend(
            (std::fs::read_dir(&model.dir)
                .into_iter()
                .flatten()
                .flatten())
            .map(|e| e.path())
            .filter(|p| has_extension(p, &["safetensors", "json"])),
        ),
    }
    if let Some(f) = model_files.iter().find(|f| same(f)) {
        return refuse("the model's file", f);
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
    let engine = Engine::select(req.device)?;
    if let Some(gpu) = engine.gpu() {
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
    }
    let mut encoder = Encoder::open(&req.model, &engine)?;
    check_out(&req.out, &entries, req.texts.as_deref(), encoder.files())?;
    encoder.set_max_image_pixels(req.max_image_pixels);
    let config = encoder.config();
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
        let images = encoder.encode_images(&entries, req.batch, req.skip_bad)?;
        let (embeds, kept, skipped) = (images.embeds, images.kept, images.skipped);
        summary.images_per_second = kept.len() as f64 / start.elapsed().as_secs_f64();
        let dim = config.vision.as_ref().map_or(0, |v| v.projection_dim);
        owned.push(("image_embeds", vec![kept.len(), dim], embeds));
        metadata.insert("images".into(), serde_json::to_string(&kept)?);
        metadata.insert("skipped".into(), serde_json::to_string(&skipped)?);
        summary.images = kept.len();
        summary.skipped = skipped;
    }
    if let Some(prompts) = &prompts {
        let embeds = encoder
            .encode_texts(prompts, req.batch, req.truncate, req.tokenizer)
            .map_err(|e| {
                if e.chain().any(|c| c.is::<crate::tokenizer::PromptTooLong>()) {
                    e.context("pass --truncate to cut prompts to the context")
                } else {
                    e
                }
            })?;
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
