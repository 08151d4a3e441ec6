//! `fedclip run --augment-views N` on the bundled PACS-mini and tiny model: each training
//! image is encoded N more times, once (a second run reads every view from the cache), the
//! centre crops stay as they were, a client's view rows are its files' views, the setting is
//! part of the resume check, and bad values are refused by name.

mod common;

use common::repo;
use fedclip::data::Dataset;
use fedclip::data::split::{SplitConfig, make_splits};
use fedclip::encode::{Encoder, Engine, ImageEntry};
use fedclip::federated::{RunConfig, features};
use fedclip::preprocess::augment::ViewId;
use std::path::Path;
use std::process::Output;

fn fedclip(args: &[&str]) -> Output {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_fedclip"))
        .args(args)
        .output()
        .unwrap();
    assert!(!stderr(&out).contains("panicked"), "{}", stderr(&out));
    out
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn run(out: &Path, cache: &Path, extra: &[&str]) -> Output {
    let (out, cache) = (out.to_str().unwrap(), cache.to_str().unwrap());
    let args = [
        "run",
        "--device",
        "cpu",
        "--rounds",
        "2",
        "--lr",
        "5e-3",
        "--out",
        out,
        "--cache-dir",
        cache,
    ];
    fedclip(&[&args[..], extra].concat())
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

#[test]
fn views_are_encoded_once_cached_and_trained_on() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    // 3 training domains × 84 training files × 2 views; the 560 centre crops as always.
    let first = run(&tmp.path().join("a"), &cache, &["--augment-views", "2"]);
    assert!(first.status.success(), "{}", stderr(&first));
    let log = stderr(&first);
    assert!(log.contains("560 extracted, 0 from cache"), "{log}");
    assert!(
        log.contains("augmented views: 2 per training image, 504 extracted, 0 from cache"),
        "{log}"
    );
    let config: serde_json::Value =
        serde_json::from_str(&read(&tmp.path().join("a/config.json"))).unwrap();
    assert_eq!(config["augment_views"], 2);

    let second = run(&tmp.path().join("b"), &cache, &["--augment-views", "2"]);
    assert!(second.status.success(), "{}", stderr(&second));
    let log = stderr(&second);
    assert!(log.contains("0 extracted, 560 from cache"), "{log}");
    assert!(
        log.contains("augmented views: 2 per training image, 0 extracted, 504 from cache"),
        "{log}"
    );
    let metrics = read(&tmp.path().join("a/metrics.csv"));
    assert_eq!(metrics, read(&tmp.path().join("b/metrics.csv")));

    // Without the flag: the centre crops, all from the cache, and other training losses.
    let plain = run(&tmp.path().join("c"), &cache, &[]);
    assert!(plain.status.success(), "{}", stderr(&plain));
    let log = stderr(&plain);
    assert!(
        log.contains("0 extracted, 560 from cache") && !log.contains("augmented"),
        "{log}"
    );
    let losses = |m: &str| -> Vec<String> {
        (m.lines().filter(|l| l.contains(",train,")))
            .map(|l| l.rsplit(',').next().unwrap().to_string())
            .collect()
    };
    let plain_metrics = read(&tmp.path().join("c/metrics.csv"));
    assert_eq!(losses(&metrics).len(), losses(&plain_metrics).len());
    assert_ne!(losses(&metrics), losses(&plain_metrics));

    // The setting is part of what --resume checks.
    let resumed = run(&tmp.path().join("a"), &cache, &["--resume"]);
    assert!(!resumed.status.success());
    assert!(
        stderr(&resumed).contains("augment_views: now 0, saved 2"),
        "{}",
        stderr(&resumed)
    );
}

fn config(dir: &Path, views: u32) -> RunConfig {
    let text = format!(
        r#"{{"data": {:?}, "model": {:?}, "test_domains": ["art_painting"], "method": "fedclip",
        "rounds": 1, "local_epochs": 1, "batch": 16, "lr": 0.005, "weight_decay": 0.2,
        "optimizer": "adam", "keep_optimizer_state": false, "loss": "contrastive", "mu": 0.0,
        "aggregate": "uniform", "seed": 5, "clients_per_domain": 2, "dirichlet_alpha": 0.5,
        "sample_fraction": 1.0, "prompt_template": "a picture of a {{}}", "extract_batch": 16,
        "cache_dir": {:?}, "out": {:?}, "augment_views": {views}}}"#,
        repo().join("data/pacs-mini"),
        repo().join("weights/tiny-clip"),
        dir.join("cache"),
        dir.join("run"),
    );
    serde_json::from_str(&text).unwrap()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn a_clients_view_rows_are_its_files_views_and_centre_crops_stay() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config(tmp.path(), 3);
    let dataset = Dataset::scan(&cfg.data).unwrap();
    let split_cfg = SplitConfig {
        seed: cfg.seed,
        test_domains: cfg.test_domains.clone(),
        clients_per_domain: cfg.clients_per_domain,
        dirichlet_alpha: cfg.dirichlet_alpha,
        ..SplitConfig::default()
    };
    let splits = make_splits(&dataset, &split_cfg).unwrap();
    let with = features::extract(&cfg, &dataset, &splits, &Engine::Cpu).unwrap();
    let without =
        features::extract(&config(tmp.path(), 0), &dataset, &splits, &Engine::Cpu).unwrap();
    let train_files: usize = (splits.clients.iter()).map(|c| c.train.len()).sum();
    assert_eq!(with.views_extracted, 3 * train_files);
    assert_eq!((without.views_extracted, without.views_from_cache), (0, 0));
    let encoder = Encoder::open(&cfg.model, &Engine::Cpu).unwrap();
    let dim = with.dim;
    for (c, (a, b)) in with.clients.iter().zip(&without.clients).enumerate() {
        // Centre crops are the same rows with or without views; only train has views.
        assert_eq!(a.train.features, b.train.features);
        assert_eq!(a.test.features, b.test.features);
        assert!(a.val.views.is_empty() && a.test.views.is_empty() && b.train.views.is_empty());
        let client = &splits.clients[c];
        if client.held_out {
            assert!(a.train.views.is_empty());
            continue;
        }
        assert_eq!(a.train.views.len(), 3);
        // The last rows of the split (a shuffled order), encoded directly, view by view.
        let rows: Vec<usize> = (a.train.len().saturating_sub(3)..a.train.len()).collect();
        let entries: Vec<ImageEntry> = (rows.iter())
            .map(|&r| {
                ImageEntry::from_path(&dataset.domains[client.domain].samples[client.train[r]].path)
            })
            .collect();
        for v in 0..3u32 {
            let view = ViewId {
                seed: cfg.seed,
                index: v,
            };
            let direct = encoder.encode_image_views(&entries, view, 8).unwrap();
            for (i, &r) in rows.iter().enumerate() {
                let want = &direct[i * dim..(i + 1) * dim];
                let row = |m: &[f32]| m[r * dim..(r + 1) * dim].to_vec();
                // Batched f32 sums of the CPU engine round differently in another batch
                // (~1e-7 relative here); another view or the centre crop is O(1) away.
                let held = row(&a.train.views[v as usize]);
                assert!(
                    max_diff(&held, want) < 1e-4,
                    "client {c}, row {r}, view {v}"
                );
                let others = (0..3)
                    .filter(|&o| o != v as usize)
                    .map(|o| row(&a.train.views[o]))
                    .chain([row(&a.train.features)]);
                for other in others {
                    assert!(
                        max_diff(&other, want) > 1e-2,
                        "client {c}, row {r}, view {v}"
                    );
                }
            }
        }
        assert_ne!(a.train.views[0], a.train.views[1]);
    }
}

#[test]
fn bad_augment_views_are_refused_by_name() {
    let tmp = tempfile::tempdir().unwrap();
    let (out, cache) = (tmp.path().join("run"), tmp.path().join("cache"));
    let zero = run(&out, &cache, &["--augment-views", "0"]);
    assert!(!zero.status.success());
    assert!(
        stderr(&zero).contains("--augment-views must be at least 1, got 0"),
        "{}",
        stderr(&zero)
    );
    let zeroshot = run(
        &out,
        &cache,
        &["--augment-views", "2", "--method", "zeroshot"],
    );
    assert!(!zeroshot.status.success());
    assert!(
        stderr(&zeroshot).contains("--augment-views 2: --method zeroshot takes no training steps"),
        "{}",
        stderr(&zeroshot)
    );
    let tip = run(
        &out,
        &cache,
        &["--augment-views", "1", "--method", "tip-adapter"],
    );
    assert!(
        stderr(&tip).contains("--method tip-adapter takes no training steps"),
        "{}",
        stderr(&tip)
    );
    // Nothing was written for the refused runs.
    assert!(!out.join("config.json").exists());
}
