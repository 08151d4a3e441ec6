//! The on-disk feature cache: hits on a second run, recomputation of changed files only,
//! corrupt and stale files rebuilt with a warning, keys that follow the model and the
//! preprocessing, the file-hash memo, and the real CLIP encoder behind it.

use anyhow::{Result, bail};
use fedclip::encode::{Encoder, ImageEntry};
use fedclip::features::{CacheKeys, CacheOptions, FeatureCache, MEMO_FILE};
use fedclip::model::ClipModel;
use fedclip::preprocess::PreprocessConfig;
use fedclip::tokenizer::TokenizerKind;
use std::cell::Cell;
use std::path::{Path, PathBuf};
use std::time::Duration;

const DIM: usize = 8;

fn keys() -> CacheKeys {
    CacheKeys {
        image: "test-image-key".into(),
        image_dim: DIM,
        text: "test-text-key".into(),
        text_dim: 5,
    }
}

fn quiet() -> CacheOptions {
    CacheOptions {
        progress: false,
        ..CacheOptions::default()
    }
}

/// A fake encoder: features are a function of the file bytes; counts calls and files.
struct Fake {
    calls: Cell<usize>,
    files: Cell<usize>,
}

impl Fake {
    fn new() -> Fake {
        Fake {
            calls: Cell::new(0),
            files: Cell::new(0),
        }
    }

    fn encode(&self, paths: &[PathBuf]) -> Result<Vec<f32>> {
        self.calls.set(self.calls.get() + 1);
        self.files.set(self.files.get() + paths.len());
        let mut out = Vec::new();
        for p in paths {
            let bytes = std::fs::read(p)?;
            let sum: u64 = bytes.iter().map(|&b| b as u64).sum();
            for j in 0..DIM {
                out.push((sum as f32) * 0.001 * (j as f32 + 1.0) + bytes.len() as f32);
            }
        }
        Ok(out)
    }
}

fn make_images(dir: &Path, n: usize) -> Vec<PathBuf> {
    std::fs::create_dir_all(dir).unwrap();
    (0..n)
        .map(|i| {
            let p = dir.join(format!("img{i:03}.png"));
            std::fs::write(&p, format!("image number {i} {}", "x".repeat(i))).unwrap();
            p
        })
        .collect()
}

fn shards(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
        .collect();
    v.sort();
    v
}

#[test]
fn second_run_computes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let files = make_images(&tmp.path().join("data"), 20);
    let cache_dir = tmp.path().join("cache");
    let fake = Fake::new();

    let cache = FeatureCache::open_keys(&cache_dir, keys(), quiet()).unwrap();
    let (first, stats) = cache.image_features(&files, |p| fake.encode(p)).unwrap();
    assert_eq!(first.len(), 20 * DIM);
    assert_eq!((stats.hits, stats.computed), (0, 20));
    assert_eq!(fake.files.get(), 20);
    // Same instance: nothing computed.
    let (again, stats) = cache.image_features(&files, |p| fake.encode(p)).unwrap();
    assert_eq!((stats.hits, stats.computed), (20, 0));
    assert_eq!(again, first);
    drop(cache);

    // A new process (new instance): nothing computed, identical features.
    let fake2 = Fake::new();
    let cache = FeatureCache::open_keys(&cache_dir, keys(), quiet()).unwrap();
    let (second, stats) = cache.image_features(&files, |p| fake2.encode(p)).unwrap();
    assert_eq!(fake2.calls.get(), 0);
    assert_eq!((stats.hits, stats.computed), (20, 0));
    assert_eq!(second, first);
    assert!(cache.warnings().is_empty(), "{:?}", cache.warnings());
    // A subset, in another order, is served from the cache too.
    let subset = vec![files[5].clone(), files[0].clone()];
    let (sub, stats) = cache.image_features(&subset, |p| fake2.encode(p)).unwrap();
    assert_eq!(stats.computed, 0);
    assert_eq!(&sub[..DIM], &first[5 * DIM..6 * DIM]);
    assert_eq!(&sub[DIM..], &first[..DIM]);
}

#[test]
fn duplicate_contents_are_computed_once() {
    let tmp = tempfile::tempdir().unwrap();
    let mut files = make_images(&tmp.path().join("data"), 3);
    let dup = tmp.path().join("data/copy.png");
    std::fs::copy(&files[1], &dup).unwrap();
    files.push(dup);
    let fake = Fake::new();
    let cache = FeatureCache::open_keys(&tmp.path().join("cache"), keys(), quiet()).unwrap();
    let (f, stats) = cache.image_features(&files, |p| fake.encode(p)).unwrap();
    assert_eq!((stats.computed, stats.hits), (3, 1));
    assert_eq!(&f[DIM..2 * DIM], &f[3 * DIM..]);
}

#[test]
fn changed_file_is_recomputed_alone() {
    let tmp = tempfile::tempdir().unwrap();
    let files = make_images(&tmp.path().join("data"), 10);
    let cache_dir = tmp.path().join("cache");
    let fake = Fake::new();
    let (before, _) = FeatureCache::open_keys(&cache_dir, keys(), quiet())
        .unwrap()
        .image_features(&files, |p| fake.encode(p))
        .unwrap();
    // Same size, different bytes, written right away: the memo must not hide it.
    let old = std::fs::read(&files[3]).unwrap();
    let mut new = old.clone();
    new[0] ^= 0x20;
    std::fs::write(&files[3], &new).unwrap();

    let fake2 = Fake::new();
    let cache = FeatureCache::open_keys(&cache_dir, keys(), quiet()).unwrap();
    let (after, stats) = cache.image_features(&files, |p| fake2.encode(p)).unwrap();
    assert_eq!((stats.computed, stats.hits), (1, 9));
    assert_eq!(fake2.files.get(), 1);
    for i in 0..10 {
        let (a, b) = (
            &before[i * DIM..(i + 1) * DIM],
            &after[i * DIM..(i + 1) * DIM],
        );
        if i == 3 {
            assert_ne!(a, b);
        } else {
            assert_eq!(a, b, "row {i}");
        }
    }
    // Putting the old bytes back finds the old row again.
    std::fs::write(&files[3], &old).unwrap();
    let (back, stats) = cache.image_features(&files, |p| fake2.encode(p)).unwrap();
    assert_eq!(stats.computed, 0);
    assert_eq!(back, before);
}

fn corrupt_and_rebuild(damage: impl Fn(&Path)) {
    let tmp = tempfile::tempdir().unwrap();
    let files = make_images(&tmp.path().join("data"), 12);
    let cache_dir = tmp.path().join("cache");
    let fake = Fake::new();
    let cache = FeatureCache::open_keys(&cache_dir, keys(), quiet()).unwrap();
    let (before, _) = cache.image_features(&files, |p| fake.encode(p)).unwrap();
    let store = cache.image_store_dir();
    drop(cache);
    let found = shards(&store);
    assert_eq!(found.len(), 1);
    damage(&found[0]);

    let fake2 = Fake::new();
    let cache = FeatureCache::open_keys(&cache_dir, keys(), quiet()).unwrap();
    let (after, stats) = cache.image_features(&files, |p| fake2.encode(p)).unwrap();
    assert_eq!(stats.computed, 12);
    assert_eq!(after, before);
    let warnings = cache.warnings();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(
        warnings[0].contains(&found[0].display().to_string()),
        "{warnings:?}"
    );
    drop(cache);
    // Rebuilt: the next run is clean and computes nothing.
    let fake3 = Fake::new();
    let cache = FeatureCache::open_keys(&cache_dir, keys(), quiet()).unwrap();
    let (again, stats) = cache.image_features(&files, |p| fake3.encode(p)).unwrap();
    assert_eq!(stats.computed, 0);
    assert_eq!(again, before);
    assert!(cache.warnings().is_empty());
}

#[test]
fn corrupt_feature_bytes_are_detected() {
    corrupt_and_rebuild(|p| {
        let mut bytes = std::fs::read(p).unwrap();
        let n = bytes.len();
        bytes[n - 3] ^= 0xff;
        std::fs::write(p, bytes).unwrap();
    });
}

#[test]
fn truncated_cache_file_is_detected() {
    corrupt_and_rebuild(|p| {
        let bytes = std::fs::read(p).unwrap();
        std::fs::write(p, &bytes[..bytes.len() / 2]).unwrap();
    });
}

#[test]
fn garbage_cache_file_is_detected() {
    corrupt_and_rebuild(|p| std::fs::write(p, b"garbage").unwrap());
}

#[test]
fn stale_cache_file_is_detected() {
    // A shard written under another key, found in this key's directory.
    corrupt_and_rebuild(|p| {
        let tmp = tempfile::tempdir().unwrap();
        let other = CacheKeys {
            image: "another model".into(),
            ..keys()
        };
        let files = make_images(&tmp.path().join("d"), 2);
        let cache = FeatureCache::open_keys(&tmp.path().join("c"), other, quiet()).unwrap();
        cache
            .image_features(&files, |f| Fake::new().encode(f))
            .unwrap();
        let foreign = shards(&cache.image_store_dir()).remove(0);
        std::fs::copy(foreign, p).unwrap();
    });
}

#[test]
fn flushes_and_compacts_shards_and_keeps_partial_work() {
    let tmp = tempfile::tempdir().unwrap();
    let files = make_images(&tmp.path().join("data"), 23);
    let cache_dir = tmp.path().join("cache");
    let opts = CacheOptions {
        chunk_size: 2,
        flush_rows: 4,
        compact_over: 3,
        ..quiet()
    };
    // The encoder fails on its 6th call: the 10 rows done before are kept.
    let fake = Fake::new();
    let cache = FeatureCache::open_keys(&cache_dir, keys(), opts.clone()).unwrap();
    let err = cache
        .image_features(&files, |p| {
            if fake.calls.get() == 5 {
                bail!("encoder crashed");
            }
            fake.encode(p)
        })
        .unwrap_err();
    assert!(format!("{err:#}").contains("encoder crashed"));
    drop(cache);

    let fake2 = Fake::new();
    let cache = FeatureCache::open_keys(&cache_dir, keys(), opts.clone()).unwrap();
    let (f, stats) = cache.image_features(&files, |p| fake2.encode(p)).unwrap();
    assert_eq!((stats.hits, stats.computed), (10, 13));
    // Many small shards were merged into one.
    assert_eq!(shards(&cache.image_store_dir()).len(), 1);
    let (g, stats) = cache.image_features(&files, |p| fake2.encode(p)).unwrap();
    assert_eq!(stats.computed, 0);
    assert_eq!(f, g);
    assert_eq!(f, Fake::new().encode(&files).unwrap());
}

#[test]
fn wrong_feature_count_is_an_error_and_caches_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let files = make_images(&tmp.path().join("data"), 3);
    let cache = FeatureCache::open_keys(&tmp.path().join("cache"), keys(), quiet()).unwrap();
    let err = cache
        .image_features(&files, |p| Ok(vec![0.0; p.len() * DIM - 1]))
        .unwrap_err();
    assert!(format!("{err:#}").contains("expected 24"), "{err:#}");
    let fake = Fake::new();
    let (_, stats) = cache.image_features(&files, |p| fake.encode(p)).unwrap();
    assert_eq!(stats.computed, 3);
}

#[test]
fn missing_image_is_an_error_naming_it() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = FeatureCache::open_keys(&tmp.path().join("cache"), keys(), quiet()).unwrap();
    let missing = tmp.path().join("nope.jpg");
    let err = cache
        .image_features(std::slice::from_ref(&missing), |p| Fake::new().encode(p))
        .unwrap_err();
    assert!(
        format!("{err:#}").contains(&missing.display().to_string()),
        "{err:#}"
    );
}

#[test]
fn memo_skips_rehashing_unchanged_files() {
    let tmp = tempfile::tempdir().unwrap();
    let files = make_images(&tmp.path().join("data"), 6);
    let cache_dir = tmp.path().join("cache");
    // Trust stamps at once (the default 2 s window would re-hash these fresh files).
    let opts = CacheOptions {
        racy_window: Duration::ZERO,
        ..quiet()
    };
    let fake = Fake::new();
    let (_, s1) = FeatureCache::open_keys(&cache_dir, keys(), opts.clone())
        .unwrap()
        .image_features(&files, |p| fake.encode(p))
        .unwrap();
    assert_eq!(s1.hashed, 6);
    let cache = FeatureCache::open_keys(&cache_dir, keys(), opts.clone()).unwrap();
    let (_, s2) = cache.image_features(&files, |p| fake.encode(p)).unwrap();
    assert_eq!((s2.hashed, s2.computed), (0, 0));
    // A rewrite that changes the size is seen through the memo.
    std::fs::write(
        &files[2],
        b"something else entirely, and longer than before",
    )
    .unwrap();
    let (_, s3) = cache.image_features(&files, |p| fake.encode(p)).unwrap();
    assert_eq!((s3.hashed, s3.computed), (1, 1));
    drop(cache);
    // A damaged memo is dropped with a warning; everything is hashed again, nothing computed.
    let memo = cache_dir.join(MEMO_FILE);
    let mut bytes = std::fs::read(&memo).unwrap();
    bytes[20] ^= 1;
    std::fs::write(&memo, bytes).unwrap();
    let cache = FeatureCache::open_keys(&cache_dir, keys(), opts).unwrap();
    assert_eq!(cache.warnings().len(), 1);
    let (_, s4) = cache.image_features(&files, |p| fake.encode(p)).unwrap();
    assert_eq!((s4.hashed, s4.computed), (6, 0));
}

#[test]
fn text_features_are_cached_per_prompt() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = FeatureCache::open_keys(&tmp.path().join("cache"), keys(), quiet()).unwrap();
    let calls = Cell::new(0);
    let enc = |ps: &[String]| -> Result<Vec<f32>> {
        calls.set(calls.get() + ps.len());
        Ok(ps
            .iter()
            .flat_map(|p| (0..5).map(move |j| p.len() as f32 + j as f32))
            .collect())
    };
    let prompts: Vec<String> = ["a picture of a dog", "a picture of a cat"]
        .map(String::from)
        .to_vec();
    let (a, s) = cache.text_features(&prompts, enc).unwrap();
    assert_eq!((s.computed, a.len()), (2, 10));
    let more = vec![prompts[1].clone(), "a picture of a horse".to_string()];
    let (b, s) = cache.text_features(&more, enc).unwrap();
    assert_eq!((s.hits, s.computed), (1, 1));
    assert_eq!(&b[..5], &a[5..]);
    assert_eq!(calls.get(), 3);
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let p = e.unwrap().path();
        std::fs::copy(&p, to.join(p.file_name().unwrap())).unwrap();
    }
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn keys_follow_model_and_preprocessing() {
    let tmp = tempfile::tempdir().unwrap();
    let model_dir = tmp.path().join("model");
    copy_dir(&repo().join("tests/fixtures/models/tiny-f32"), &model_dir);
    let cache_dir = tmp.path().join("cache");
    let model = ClipModel::load(&model_dir).unwrap();
    let pre = PreprocessConfig::openai(30);

    let a = FeatureCache::open(&cache_dir, &model, &pre, TokenizerKind::Openai).unwrap();
    assert_eq!(a.keys().image_dim, 24);
    assert_eq!(a.keys().text_dim, 24);
    let same = FeatureCache::open(&cache_dir, &model, &pre, TokenizerKind::Openai).unwrap();
    assert_eq!(a.keys(), same.keys());
    assert_eq!(a.image_store_dir(), same.image_store_dir());

    // Preprocessing changes the image key only.
    let mut other_pre = pre.clone();
    other_pre.mean = [0.5, 0.5, 0.5];
    let b = FeatureCache::open(&cache_dir, &model, &other_pre, TokenizerKind::Openai).unwrap();
    assert_ne!(a.keys().image, b.keys().image);
    assert_ne!(a.image_store_dir(), b.image_store_dir());
    assert_eq!(a.keys().text, b.keys().text);

    // The tokenizer choice changes the text key only; `hf` keeps the key caches had before
    // the choice existed.
    let hf = FeatureCache::open(&cache_dir, &model, &pre, TokenizerKind::Hf).unwrap();
    assert_ne!(a.keys().text, hf.keys().text);
    assert_ne!(a.text_store_dir(), hf.text_store_dir());
    assert_eq!(a.keys().image, hf.keys().image);
    assert!(
        hf.keys()
            .text
            .starts_with("fedclip-text-features/1;weights=")
            && !hf.keys().text.contains("cleaning"),
        "{}",
        hf.keys().text
    );

    // Changing one byte of the weights (same size, just written) changes both keys.
    let weights = model_dir.join("model.safetensors");
    let mut bytes = std::fs::read(&weights).unwrap();
    let n = bytes.len();
    bytes[n - 2] ^= 0x01;
    std::fs::write(&weights, bytes).unwrap();
    let model2 = ClipModel::load(&model_dir).unwrap();
    let c = FeatureCache::open(&cache_dir, &model2, &pre, TokenizerKind::Openai).unwrap();
    assert_ne!(a.keys().image, c.keys().image);
    assert_ne!(a.keys().text, c.keys().text);
    assert_ne!(a.text_store_dir(), c.text_store_dir());

    // Features computed under one key are not served under another.
    let files = make_images(&tmp.path().join("data"), 2);
    let fake = Fake24;
    let (_, s) = a.image_features(&files, |p| fake.encode(p)).unwrap();
    assert_eq!(s.computed, 2);
    let (_, s) = c.image_features(&files, |p| fake.encode(p)).unwrap();
    assert_eq!(s.computed, 2);
    let (_, s) = same.image_features(&files, |p| fake.encode(p)).unwrap();
    assert_eq!(s.computed, 0);
}

struct Fake24;

impl Fake24 {
    fn encode(&self, p: &[PathBuf]) -> Result<Vec<f32>> {
        Ok(vec![1.0; p.len() * 24])
    }
}

#[test]
fn caches_real_clip_features() {
    let tmp = tempfile::tempdir().unwrap();
    let model: Encoder = ClipModel::load(&repo().join("tests/fixtures/models/tiny-f32"))
        .unwrap()
        .into();
    let pre = PreprocessConfig::from_model_dir(model.dir(), 30).unwrap();
    let pacs = repo().join("data/pacs-mini");
    let files: Vec<PathBuf> = ["photo/dog", "sketch/horse"]
        .iter()
        .flat_map(|d| {
            let mut v: Vec<PathBuf> = std::fs::read_dir(pacs.join(d))
                .unwrap()
                .map(|e| e.unwrap().path())
                .collect();
            v.sort();
            v.truncate(3);
            v
        })
        .collect();
    let entries = |paths: &[PathBuf]| -> Vec<ImageEntry> {
        paths.iter().map(|p| ImageEntry::from_path(p)).collect()
    };
    let direct = model
        .encode_images(&entries(&files), 4, false)
        .unwrap()
        .embeds;

    let cache_dir = tmp.path().join("cache");
    let calls = Cell::new(0);
    let encode = |paths: &[PathBuf]| -> Result<Vec<f32>> {
        calls.set(calls.get() + 1);
        Ok(model.encode_images(&entries(paths), 4, false)?.embeds)
    };
    let cache =
        FeatureCache::open_with(&cache_dir, &model, &pre, TokenizerKind::Openai, quiet()).unwrap();
    let (first, s) = cache.image_features(&files, encode).unwrap();
    assert_eq!(s.computed, 6);
    assert_eq!(first, direct);
    drop(cache);
    let cache =
        FeatureCache::open_with(&cache_dir, &model, &pre, TokenizerKind::Openai, quiet()).unwrap();
    let (second, s) = cache.image_features(&files, encode).unwrap();
    assert_eq!((s.computed, s.hits), (0, 6));
    assert_eq!(second, direct);
    assert_eq!(calls.get(), 1);

    // Text features through the real encoder (the bundled model has a tokenizer).
    let clip: Encoder = ClipModel::load(&repo().join("weights/tiny-clip"))
        .unwrap()
        .into();
    let pre = clip.preprocess_config().unwrap();
    let cache =
        FeatureCache::open_with(&cache_dir, &clip, &pre, TokenizerKind::Openai, quiet()).unwrap();
    let prompts = vec![
        "a picture of a dog".to_string(),
        "a picture of a cat".to_string(),
    ];
    let direct = clip
        .encode_texts(&prompts, 8, false, TokenizerKind::Openai)
        .unwrap();
    let (t, s) = cache
        .text_features(&prompts, |p| {
            clip.encode_texts(p, 8, false, TokenizerKind::Openai)
        })
        .unwrap();
    assert_eq!(
        (s.computed, t.len()),
        (2, 2 * clip.config().text.as_ref().unwrap().projection_dim)
    );
    assert_eq!(t, direct);
    let (t, s) = cache
        .text_features(&prompts, |_| bail!("must not be called"))
        .unwrap();
    assert_eq!((s.computed, &t), (0, &direct));
}

/// Scale check, not run by default: `cargo test --release --test feature_cache -- --ignored
/// --nocapture`. 200k prompts at 512 floats (400 MB of features) and 50k image files.
#[test]
#[ignore]
fn scale() {
    use std::time::Instant;
    let tmp = tempfile::tempdir().unwrap();
    let keys = CacheKeys {
        image: "scale".into(),
        image_dim: 512,
        text: "scale".into(),
        text_dim: 512,
    };
    let cache_dir = tmp.path().join("cache");
    let prompts: Vec<String> = (0..200_000).map(|i| format!("prompt {i}")).collect();
    let enc = |p: &[String]| -> Result<Vec<f32>> { Ok(vec![0.5; p.len() * 512]) };
    let t = Instant::now();
    let cache = FeatureCache::open_keys(&cache_dir, keys.clone(), quiet()).unwrap();
    let (_, s) = cache.text_features(&prompts, enc).unwrap();
    eprintln!("200k rows, first run: {:?} ({s:?})", t.elapsed());
    drop(cache);
    let t = Instant::now();
    let cache = FeatureCache::open_keys(&cache_dir, keys.clone(), quiet()).unwrap();
    let (_, s) = cache.text_features(&prompts, enc).unwrap();
    eprintln!("200k rows, second run: {:?} ({s:?})", t.elapsed());
    assert_eq!(s.computed, 0);

    let dir = tmp.path().join("data");
    std::fs::create_dir_all(&dir).unwrap();
    let files: Vec<PathBuf> = (0..50_000)
        .map(|i| {
            let p = dir.join(format!("{i}.jpg"));
            std::fs::write(&p, format!("{i}").repeat(1000)).unwrap();
            p
        })
        .collect();
    let opts = CacheOptions {
        racy_window: Duration::ZERO,
        ..quiet()
    };
    let fenc = |p: &[PathBuf]| -> Result<Vec<f32>> { Ok(vec![0.25; p.len() * 512]) };
    for run in 0..3 {
        let t = Instant::now();
        let cache = FeatureCache::open_keys(&cache_dir, keys.clone(), opts.clone()).unwrap();
        let (_, s) = cache.image_features(&files, fenc).unwrap();
        eprintln!("50k files, run {run}: {:?} ({s:?})", t.elapsed());
    }
}
