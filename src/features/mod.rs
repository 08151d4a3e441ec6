//! A disk cache of frozen CLIP features: every image (and prompt) is encoded once per model
//! and preprocessing.
//!
//! # Keys
//!
//! * The **store key** of image features is BLAKE3 over the model's weight files
//!   (`config.json` + the safetensors `TensorStore` reads, full contents) and
//!   [`PreprocessConfig::fingerprint`]; of text features, over the weight files, the
//!   tokenizer files and the [`TokenizerKind`] (`hf` keeps the key of caches written before
//!   the choice existed, which hold its features). Each key has its own directory, `<cache>/image-<hash>/` or
//!   `<cache>/text-<hash>/`, so changing the model or the preprocessing simply selects
//!   another table.
//! * A **row key** is BLAKE3 of the image file's bytes (so renamed or duplicated files
//!   share a row and an edited file gets a new one), or of the prompt's UTF-8 text. An
//!   augmented training view (`--augment-views`) has its own row in the image table, keyed by
//!   [`view_row_key`]: the file's digest, the run seed and the view index, so views are
//!   cached across runs beside the centre crops, which stay as they are.
//!
//! Content hashes of files (images and multi-GB checkpoints alike) are memoised in
//! `<cache>/file-hashes.bin` by path, size, mtime, ctime and inode (see [`hash`]), so a
//! second run over 600k DomainNet images stats them instead of reading 20 GB.
//!
//! # Layout, for 10k–600k images
//!
//! One table per store key, stored as a few large append-only safetensors shards
//! (see [`store`]) rather than one file per image: opening maps them and builds a
//! digest → row index (≈ 50 bytes of memory per row); a run appends its new rows as a new
//! shard every `flush_rows` rows (so an interrupted extraction keeps most of its work), and
//! many shards are merged into one. Shards are written to a temporary name, synced and
//! renamed; each carries its key and a checksum, and one that fails to read or check is
//! deleted with a warning and its rows recomputed. Processes sharing a cache directory only
//! ever add files under fresh names or delete merged ones, so they do not corrupt each other.
//!
//! Caveats: the text key covers the tokenizer files but not how the closure treats over-long
//! prompts (`truncate`), which the cache cannot see. [`Encoder::encode_images`](crate::encode::Encoder::encode_images)
//! draws its own progress bar for each chunk it is given; with it inside the closure, set
//! [`CacheOptions::progress`] to false or keep the cache's bar and accept both.
//!
//! # Use
//!
//! ```no_run
//! # use fedclip::encode::{Encoder, Engine, ImageEntry};
//! # use fedclip::features::FeatureCache;
//! # use fedclip::tokenizer::TokenizerKind;
//! # fn main() -> anyhow::Result<()> {
//! # let files: Vec<std::path::PathBuf> = vec![];
//! let encoder = Encoder::open("weights/tiny-clip".as_ref(), &Engine::Cpu)?;
//! let cfg = encoder.preprocess_config()?;
//! let cache = FeatureCache::open("cache".as_ref(), &encoder, &cfg, TokenizerKind::Openai)?;
//! let (features, stats) = cache.image_features(&files, |paths| {
//!     let entries: Vec<ImageEntry> = paths.iter().map(|p| ImageEntry::from_path(p)).collect();
//!     Ok(encoder.encode_images(&entries, 64, false)?.embeds)
//! })?;
//! # Ok(()) }
//! ```

pub mod hash;
pub mod store;

use crate::model::ClipModel;
use crate::preprocess::PreprocessConfig;
use crate::preprocess::augment::{VIEW_ALGORITHM, ViewId};
use crate::tokenizer::TokenizerKind;
use crate::weights::{ClipConfig, ModelFiles};
use anyhow::{Context, Result, bail, ensure};
use hash::{Digest, FileStamp, HashMemo, model_fingerprint_of};
use indicatif::{ProgressBar, ProgressStyle};
use rayon::prelude::*;
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use store::{Store, store_dir};

/// Name of the file-hash memo inside the cache directory.
pub const MEMO_FILE: &str = "file-hashes.bin";

/// Tuning of a [`FeatureCache`].
#[derive(Clone, Debug)]
pub struct CacheOptions {
    /// Inputs per call of the compute closure (the progress bar moves per call).
    pub chunk_size: usize,
    /// New rows are written to disk as a shard once this many are pending.
    pub flush_rows: usize,
    /// More shards than this in a store are merged into one after a run.
    pub compact_over: usize,
    /// Show a progress bar (items/s) and a summary line on stderr while computing.
    pub progress: bool,
    /// Files changed less than this before being hashed are not memoised (see [`hash`]).
    pub racy_window: Duration,
}

impl Default for CacheOptions {
    fn default() -> Self {
        CacheOptions {
            chunk_size: 256,
            flush_rows: 4096,
            compact_over: 16,
            progress: true,
            racy_window: Duration::from_secs(2),
        }
    }
}

/// What a lookup did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Inputs whose features came from the cache (or from a duplicate computed in the same
    /// call).
    pub hits: usize,
    /// Inputs passed to the compute closure.
    pub computed: usize,
    /// Files whose bytes were read to hash them (the rest had a matching memo entry).
    pub hashed: usize,
}

/// A model's files and parsed config: all the cache needs of a model, whichever engine it
/// is loaded on.
#[derive(Clone, Copy)]
pub struct ModelKey<'a> {
    pub files: &'a ModelFiles,
    pub config: &'a ClipConfig,
}

impl<'a> From<&'a ClipModel> for ModelKey<'a> {
    fn from(model: &'a ClipModel) -> Self {
        ModelKey {
            files: &model.files,
            config: &model.config,
        }
    }
}

/// The store keys, as descriptions (hashed into the store directory names) and feature
/// sizes. [`FeatureCache::open`] derives them from a model; tests may make their own.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CacheKeys {
    pub image: String,
    pub image_dim: usize,
    pub text: String,
    pub text_dim: usize,
}

impl CacheKeys {
    /// Keys of `model` (files hashed through `memo`) with image preprocessing `pre` and
    /// prompts tokenized as `tokenizer`.
    pub fn for_model(
        model: ModelKey,
        pre: &PreprocessConfig,
        tokenizer: TokenizerKind,
        memo: &mut HashMemo,
    ) -> Result<Self> {
        let fp = model_fingerprint_of(model.files, memo)
            .with_context(|| format!("hashing the model files of {}", model.files.dir.display()))?;
        Ok(CacheKeys {
            image: format!(
                "fedclip-image-features/1;weights={};preprocess={}",
                fp.weights,
                pre.fingerprint()
            ),
            image_dim: model.config.vision.as_ref().map_or(0, |v| v.projection_dim),
            text: text_key(&fp.weights, &fp.tokenizer, tokenizer),
            text_dim: model.config.text.as_ref().map_or(0, |t| t.projection_dim),
        })
    }
}

/// The text store key. `hf` is what fedclip did before the choice existed, so its key is the
/// one those caches were written under; `openai` adds its cleaning, whose tag must change
/// whenever the cleaning's output does. `ftfy-6.3.1-exact`: fedclip's own ftfy, equal to
/// Python's on the whole parity corpus (the earlier `ftfy-6.3` tag was plsfix's, which
/// repaired some mojibake otherwise).
fn text_key(weights: &str, tokenizer_files: &str, kind: TokenizerKind) -> String {
    let key = format!("fedclip-text-features/1;weights={weights};tokenizer={tokenizer_files}");
    match kind {
        TokenizerKind::Hf => key,
        TokenizerKind::Openai => key + ";cleaning=openai-clip-ftfy-6.3.1-exact",
    }
}

struct Inner {
    memo: HashMemo,
    image: Store,
    text: Store,
    warnings: Vec<String>,
}

/// Frozen image and text features on disk; see the module docs.
pub struct FeatureCache {
    dir: PathBuf,
    keys: CacheKeys,
    options: CacheOptions,
    inner: Mutex<Inner>,
}

fn warn_into(list: &mut Vec<String>) -> impl FnMut(String) + '_ {
    move |w: String| {
        eprintln!("warning: {w}");
        list.push(w);
    }
}

impl FeatureCache {
    /// Opens (creating) the cache in `cache_dir` for `model`, `preprocess` and prompts
    /// tokenized as `tokenizer`, with default options. Hashes the model's files unless the
    /// memo knows them.
    pub fn open<'a>(
        cache_dir: &Path,
        model: impl Into<ModelKey<'a>>,
        preprocess: &PreprocessConfig,
        tokenizer: TokenizerKind,
    ) -> Result<Self> {
        Self::open_with(
            cache_dir,
            model,
            preprocess,
            tokenizer,
            CacheOptions::default(),
        )
    }

    pub fn open_with<'a>(
        cache_dir: &Path,
        model: impl Into<ModelKey<'a>>,
        preprocess: &PreprocessConfig,
        tokenizer: TokenizerKind,
        options: CacheOptions,
    ) -> Result<Self> {
        std::fs::create_dir_all(cache_dir)
            .with_context(|| format!("cannot create cache directory {}", cache_dir.display()))?;
        let (mut memo, warning) = HashMemo::load(&cache_dir.join(MEMO_FILE), options.racy_window);
        let mut warnings = Vec::new();
        if let Some(w) = warning {
            warn_into(&mut warnings)(w);
        }
        let keys = CacheKeys::for_model(model.into(), preprocess, tokenizer, &mut memo)?;
        Self::build(cache_dir, keys, options, memo, warnings)
    }

    /// Opens the cache with explicit keys (no model needed).
    pub fn open_keys(cache_dir: &Path, keys: CacheKeys, options: CacheOptions) -> Result<Self> {
        std::fs::create_dir_all(cache_dir)
            .with_context(|| format!("cannot create cache directory {}", cache_dir.display()))?;
        let (memo, warning) = HashMemo::load(&cache_dir.join(MEMO_FILE), options.racy_window);
        let mut warnings = Vec::new();
        if let Some(w) = warning {
            warn_into(&mut warnings)(w);
        }
        Self::build(cache_dir, keys, options, memo, warnings)
    }

    fn build(
        dir: &Path,
        keys: CacheKeys,
        options: CacheOptions,
        mut memo: HashMemo,
        mut warnings: Vec<String>,
    ) -> Result<Self> {
        if let Err(e) = memo.save() {
            warn_into(&mut warnings)(format!("cannot save the file-hash memo: {e:#}"));
        }
        let image_hash = *blake3::hash(keys.image.as_bytes()).as_bytes();
        let text_hash = *blake3::hash(keys.text.as_bytes()).as_bytes();
        let image = Store::new(
            store_dir(dir, "image", &image_hash),
            hash::hex(&image_hash),
            keys.image.clone(),
            keys.image_dim,
        );
        let text = Store::new(
            store_dir(dir, "text", &text_hash),
            hash::hex(&text_hash),
            keys.text.clone(),
            keys.text_dim,
        );
        Ok(FeatureCache {
            dir: dir.to_path_buf(),
            keys,
            options,
            inner: Mutex::new(Inner {
                memo,
                image,
                text,
                warnings,
            }),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn keys(&self) -> &CacheKeys {
        &self.keys
    }

    /// Directory of the image-feature table for this model and preprocessing.
    pub fn image_store_dir(&self) -> PathBuf {
        self.lock().image.dir.clone()
    }

    /// Directory of the text-feature table for this model and tokenizer.
    pub fn text_store_dir(&self) -> PathBuf {
        self.lock().text.dir.clone()
    }

    /// Every warning so far (damaged files removed, memo problems); each was also printed.
    pub fn warnings(&self) -> Vec<String> {
        self.lock().warnings.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Features of `files` (`[files.len(), image_dim]`, row-major, in `files` order). Files
    /// not in the cache are passed to `compute` in chunks (each distinct content once), which
    /// must return `chunk.len() * image_dim` values, e.g. from
    /// [`Encoder::encode_images`](crate::encode::Encoder::encode_images).
    pub fn image_features(
        &self,
        files: &[PathBuf],
        compute: impl FnMut(&[PathBuf]) -> Result<Vec<f32>>,
    ) -> Result<(Vec<f32>, CacheStats)> {
        let mut inner = self.lock();
        ensure!(
            inner.image.dim > 0,
            "the model has no vision tower, so there are no image features"
        );
        let (digests, hashed) = digest_files(&mut inner.memo, files)?;
        let (features, mut stats) =
            self.lookup_or_compute(&mut inner, true, files, &digests, compute, "images")?;
        if let Err(e) = inner.memo.save() {
            let w = format!("cannot save the file-hash memo: {e:#}");
            warn_into(&mut inner.warnings)(w);
        }
        stats.hashed = hashed;
        Ok((features, stats))
    }

    /// Features of augmented view `view` of each of `files` (`[files.len(), image_dim]`), in
    /// the image table under the row key [`view_row_key`]; missing ones are passed to
    /// `compute` (e.g. [`Encoder::encode_image_views`](crate::encode::Encoder::encode_image_views)).
    pub fn image_view_features(
        &self,
        files: &[PathBuf],
        view: ViewId,
        compute: impl FnMut(&[PathBuf]) -> Result<Vec<f32>>,
    ) -> Result<(Vec<f32>, CacheStats)> {
        let mut inner = self.lock();
        ensure!(
            inner.image.dim > 0,
            "the model has no vision tower, so there are no image features"
        );
        let (digests, hashed) = digest_files(&mut inner.memo, files)?;
        let rows: Vec<Digest> = digests.iter().map(|d| view_row_key(d, view)).collect();
        let what = "augmented views";
        let (features, mut stats) =
            self.lookup_or_compute(&mut inner, true, files, &rows, compute, what)?;
        if let Err(e) = inner.memo.save() {
            let w = format!("cannot save the file-hash memo: {e:#}");
            warn_into(&mut inner.warnings)(w);
        }
        stats.hashed = hashed;
        Ok((features, stats))
    }

    /// Indices of the `files` whose image features are not cached yet: the ones a run will
    /// decode (and so the only ones that may turn out undecodable).
    pub fn uncached_images(&self, files: &[PathBuf]) -> Result<Vec<usize>> {
        let mut inner = self.lock();
        let (digests, _) = digest_files(&mut inner.memo, files)?;
        let Inner {
            image, warnings, ..
        } = &mut *inner;
        image.ensure_loaded(&mut warn_into(warnings))?;
        Ok((0..files.len())
            .filter(|&i| !image.contains(&digests[i]))
            .collect())
    }

    /// Features of `prompts` (`[prompts.len(), text_dim]`); missing ones are passed to
    /// `compute` (e.g. [`Encoder::encode_texts`](crate::encode::Encoder::encode_texts)).
    pub fn text_features(
        &self,
        prompts: &[String],
        compute: impl FnMut(&[String]) -> Result<Vec<f32>>,
    ) -> Result<(Vec<f32>, CacheStats)> {
        let mut inner = self.lock();
        ensure!(
            inner.text.dim > 0,
            "the model has no text tower, so there are no text features"
        );
        let digests: Vec<Digest> = prompts
            .iter()
            .map(|p| *blake3::hash(p.as_bytes()).as_bytes())
            .collect();
        self.lookup_or_compute(&mut inner, false, prompts, &digests, compute, "prompts")
    }

    fn lookup_or_compute<T: Clone>(
        &self,
        inner: &mut Inner,
        image: bool,
        items: &[T],
        digests: &[Digest],
        mut compute: impl FnMut(&[T]) -> Result<Vec<f32>>,
        what: &str,
    ) -> Result<(Vec<f32>, CacheStats)> {
        let Inner {
            image: image_store,
            text: text_store,
            warnings,
            ..
        } = inner;
        let store = if image { image_store } else { text_store };
        let mut warn = warn_into(warnings);
        store.ensure_loaded(&mut warn)?;
        let dim = store.dim;

        // Distinct digests not in the store, first occurrence each.
        let mut queued: HashSet<Digest> = HashSet::new();
        let todo: Vec<usize> = (0..digests.len())
            .filter(|&i| !store.contains(&digests[i]) && queued.insert(digests[i]))
            .collect();

        if !todo.is_empty() {
            let bar = if self.options.progress {
                progress(todo.len(), what)
            } else {
                ProgressBar::hidden()
            };
            let start = Instant::now();
            // Rows computed but not yet on disk: todo[done - pending_rows..done].
            let mut pending: Vec<f32> = Vec::new();
            let mut done = 0usize;
            let mut result = Ok(());
            for chunk in todo.chunks(self.options.chunk_size.max(1)) {
                let batch: Vec<T> = chunk.iter().map(|&i| items[i].clone()).collect();
                let out = match compute(&batch) {
                    Ok(out) => out,
                    Err(e) => {
                        result = Err(e);
                        break;
                    }
                };
                if out.len() != chunk.len() * dim {
                    result = Err(anyhow::anyhow!(
                        "feature extraction returned {} values for {} {what}, expected {} \
                         ({} per item)",
                        out.len(),
                        chunk.len(),
                        chunk.len() * dim,
                        dim
                    ));
                    break;
                }
                pending.extend_from_slice(&out);
                done += chunk.len();
                bar.inc(chunk.len() as u64);
                if pending.len() / dim >= self.options.flush_rows {
                    flush(store, &todo[..done], digests, &mut pending)?;
                }
            }
            bar.finish_and_clear();
            // Keep whatever was computed, even when the closure failed part-way.
            flush(store, &todo[..done], digests, &mut pending)?;
            result?;
            let secs = start.elapsed().as_secs_f64();
            if self.options.progress {
                eprintln!(
                    "computed {} {what} features in {secs:.1}s ({:.1} {what}/s); {} from cache",
                    todo.len(),
                    todo.len() as f64 / secs.max(1e-9),
                    items.len() - todo.len()
                );
            }
            store.compact(self.options.compact_over, &mut warn)?;
        }

        // Everything is on disk now; the rows are read back from there, so a first run and a
        // later one return the same bits.
        let mut features = vec![0f32; items.len() * dim];
        for (i, d) in digests.iter().enumerate() {
            if !store.read(d, &mut features[i * dim..(i + 1) * dim]) {
                bail!("internal error: a cached feature row vanished");
            }
        }
        Ok((
            features,
            CacheStats {
                hits: items.len() - todo.len(),
                computed: todo.len(),
                hashed: 0,
            },
        ))
    }
}

/// The row key of augmented view `view` of the file with content digest `content`: BLAKE3 of
/// [`VIEW_ALGORITHM`], the digest, the seed and the view index (little-endian). The view's
/// pixels depend on nothing else but the preprocessing, which is in the store key.
pub fn view_row_key(content: &Digest, view: ViewId) -> Digest {
    let mut h = blake3::Hasher::new();
    h.update(VIEW_ALGORITHM.as_bytes());
    h.update(content);
    h.update(&view.seed.to_le_bytes());
    h.update(&view.index.to_le_bytes());
    *h.finalize().as_bytes()
}

/// Writes the pending rows, the last `pending.len() / dim` of `done`, as a shard.
fn flush(
    store: &mut Store,
    done: &[usize],
    digests: &[Digest],
    pending: &mut Vec<f32>,
) -> Result<()> {
    let rows = pending.len() / store.dim;
    if rows > 0 {
        let keys: Vec<Digest> = done[done.len() - rows..]
            .iter()
            .map(|&i| digests[i])
            .collect();
        store.append(&keys, pending)?;
        pending.clear();
    }
    Ok(())
}

/// Content digests of `files`, in parallel; memo hits skip the read. Returns how many files
/// were read.
fn digest_files(memo: &mut HashMemo, files: &[PathBuf]) -> Result<(Vec<Digest>, usize)> {
    // Each file's digest, and its stamp when it was read (to memoise).
    type Hashed = (Digest, Option<(PathBuf, FileStamp)>);
    let results: Vec<Result<Hashed>> = files
        .par_iter()
        .map(|path| {
            let abs = std::path::absolute(path).unwrap_or_else(|_| path.clone());
            let meta = std::fs::metadata(&abs)
                .with_context(|| format!("cannot read image {}", path.display()))?;
            let stamp = FileStamp::of(&meta);
            if let Some(d) = memo.lookup(&abs, &stamp) {
                return Ok((d, None));
            }
            let d = hash::hash_file(&abs)?;
            Ok((d, Some((abs, stamp))))
        })
        .collect();
    let mut digests = Vec::with_capacity(files.len());
    let mut hashed = 0;
    for r in results {
        let (d, fresh) = r?;
        if let Some((abs, stamp)) = fresh {
            memo.record(&abs, stamp, d);
            hashed += 1;
        }
        digests.push(d);
    }
    Ok((digests, hashed))
}

fn progress(len: usize, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(len as u64);
    bar.set_style(
        ProgressStyle::with_template(&format!(
            "features: {what} {{bar:30}} {{pos}}/{{len}} [{{elapsed_precise}}<{{eta_precise}}, \
             {{per_sec}}]"
        ))
        .expect("static template"),
    );
    bar
}
