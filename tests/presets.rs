//! VLCS, Office-Home and DomainNet end to end: `fedclip run` on generated folders with the
//! benchmarks' real domain and class names (tiny images, few rounds), and `fedclip embed`
//! on an open_clip checkpoint. The scale test at DomainNet's full size is behind
//! `FEDCLIP_SCALE_TEST=1` (see BENCHMARKS.md).

mod common;

use common::{Fixture, assert_close, repo};
use fedclip::data::{Dataset, Preset, SplitConfig, make_splits};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Instant;

fn fedclip(args: &[&str]) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_fedclip"))
        .args(args)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "panic: {stderr}");
    out
}

/// `<root>/<domain>/<class>/<n>.png`, `per_class` distinct 4×4 images per class folder.
/// `domains` may respell a preset's folders (Office-Home's archive has `Real World`).
fn preset_tree(root: &Path, domains: &[&str], classes: &[&str], per_class: usize) {
    let mut n = 0u32;
    for domain in domains {
        for class in classes {
            let dir = root.join(domain).join(class);
            std::fs::create_dir_all(&dir).unwrap();
            for i in 0..per_class {
                n += 1;
                let img = image::RgbImage::from_fn(4, 4, |x, y| {
                    let v = n.wrapping_mul(2_654_435_761).wrapping_add(x * 7 + y * 13);
                    image::Rgb([v as u8, (v >> 8) as u8, (v >> 16) as u8])
                });
                img.save(dir.join(format!("{i:03}.png"))).unwrap();
            }
        }
    }
}

/// Runs `fedclip run` on `root` for two rounds and checks what it wrote.
fn run_preset(root: &Path, preset: Preset, held_out: &str, extra: &[&str]) -> String {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    let cache = tmp.path().join("cache");
    let mut args = vec![
        "run",
        "--data",
        root.to_str().unwrap(),
        "--device",
        "cpu",
        "--rounds",
        "2",
        "--lr",
        "5e-3",
        "--test-domain",
        held_out,
        "--out",
        out.to_str().unwrap(),
        "--cache-dir",
        cache.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let o = fedclip(&args);
    let stderr = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(o.status.success(), "{}: {stderr}", preset.name());
    // The real names are recognised: no "looks like … but has N classes" or
    // "class folder(s) … are not …'s" warning.
    assert!(
        !stderr.contains("looks like") && !stderr.contains("are not"),
        "{}: {stderr}",
        preset.name()
    );
    let metrics = std::fs::read_to_string(out.join("metrics.csv")).unwrap();
    let clients = preset.domains().len() - 1;
    // 2 rounds × (held-out test + clients × train/val/test) rows and a header.
    assert_eq!(
        metrics.lines().count(),
        1 + 2 * (1 + 3 * clients),
        "{metrics}"
    );
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    let acc = &summary["held_out_test_accuracy"][held_out];
    assert!(
        acc.as_f64().is_some_and(|a| (0.0..=1.0).contains(&a)),
        "{summary}"
    );
    assert!(out.join("adapter-best.safetensors").is_file());
    stderr
}

#[test]
fn vlcs_runs_end_to_end_on_an_open_clip_model() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("VLCS");
    let p = Preset::Vlcs;
    preset_tree(&root, p.domains(), p.classes(), 6);
    let ds = Dataset::scan(&root).unwrap();
    assert_eq!(ds.preset, Some(p));
    assert_eq!(ds.classes, p.classes());
    let model = repo().join("tests/fixtures/models/oc-tiny-quickgelu");
    run_preset(
        &root,
        p,
        "Caltech101",
        &["--model", model.to_str().unwrap()],
    );
}

#[test]
fn office_home_runs_end_to_end() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("OfficeHome");
    let p = Preset::OfficeHome;
    // The original archive spells the fourth domain with a space.
    preset_tree(
        &root,
        &["Art", "Clipart", "Product", "Real World"],
        p.classes(),
        2,
    );
    let ds = Dataset::scan(&root).unwrap();
    assert_eq!(ds.preset, Some(p));
    assert_eq!(ds.classes.len(), 65);
    run_preset(&root, p, "Real World", &[]);
}

#[test]
fn domainnet_runs_end_to_end() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("DomainNet");
    let p = Preset::DomainNet;
    preset_tree(&root, p.domains(), p.classes(), 1);
    let ds = Dataset::scan(&root).unwrap();
    assert_eq!(ds.preset, Some(p));
    assert_eq!(ds.classes, p.classes());
    assert_eq!(ds.num_files(), 6 * 345);
    run_preset(&root, p, "sketch", &[]);
}

#[test]
fn preset_class_lists_are_the_benchmarks() {
    for (p, n) in [
        (Preset::Pacs, 7),
        (Preset::Vlcs, 5),
        (Preset::OfficeHome, 65),
        (Preset::DomainNet, 345),
    ] {
        let c = p.classes();
        assert_eq!(c.len(), n, "{}", p.name());
        // ImageFolder order (byte order, uppercase first), no duplicates.
        assert!(
            c.windows(2).all(|w| w[0] < w[1]),
            "{} is not sorted",
            p.name()
        );
        assert_eq!(p.domain_sizes().len(), p.domains().len());
    }
    assert_eq!(
        Preset::DomainNet.domain_sizes().iter().sum::<usize>(),
        586_575
    );
    assert_eq!(
        Preset::OfficeHome.domain_sizes().iter().sum::<usize>(),
        15_588
    );
    assert_eq!(Preset::Vlcs.domain_sizes().iter().sum::<usize>(), 10_729);
    assert_eq!(Preset::Pacs.domain_sizes().iter().sum::<usize>(), 9_991);
}

#[test]
fn wrong_class_names_under_a_preset_are_a_warning() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("VLCS");
    preset_tree(
        &root,
        Preset::Vlcs.domains(),
        &["bird", "car", "chair", "dog", "people"],
        1,
    );
    let ds = Dataset::scan(&root).unwrap();
    assert!(
        ds.warnings
            .iter()
            .any(|w| w.contains("people") && w.contains("not VLCS's")),
        "{:?}",
        ds.warnings
    );
}

/// `fedclip embed` on an open_clip checkpoint: no tokenizer file (the bundled OpenAI BPE),
/// prompts padded with open_clip's pad id; the text features equal open_clip's.
#[test]
fn embed_reads_an_open_clip_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let model = repo().join("tests/fixtures/models/oc-tiny-quickgelu");
    let fx = Fixture::load(&repo().join("tests/fixtures/expected/oc-tiny-quickgelu.safetensors"));
    let prompts: Vec<String> = serde_json::from_str(&fx.metadata["prompts"]).unwrap();
    let texts = tmp.path().join("prompts.txt");
    std::fs::write(&texts, prompts.join("\n") + "\n").unwrap();
    let images = tmp.path().join("images");
    preset_tree(&images, &["d"], &["c"], 3);
    let out = tmp.path().join("embeds.safetensors");
    let o = fedclip(&[
        "embed",
        "--model",
        model.to_str().unwrap(),
        "--images",
        images.to_str().unwrap(),
        "--texts",
        texts.to_str().unwrap(),
        "--device",
        "cpu",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let got = Fixture::load(&out);
    assert_eq!(got.shape("image_embeds"), vec![3, 32]);
    assert_close(
        "embed text_embeds vs open_clip",
        &got.f32("text_embeds"),
        &fx.f32("text_features"),
        1e-4,
    );
}

/// DomainNet at its full size: 6 domains, 345 classes, 586,575 empty files (the scan never
/// reads contents). Measures the scan, the splits and the cache's file-hash index build.
/// `FEDCLIP_SCALE_TEST=1 cargo test --release --test presets -- --nocapture domainnet_scale`
#[test]
fn domainnet_scale() {
    if std::env::var_os("FEDCLIP_SCALE_TEST").is_none() {
        eprintln!("skipped: set FEDCLIP_SCALE_TEST=1 to scan a full-size DomainNet tree");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    // FEDCLIP_SCALE_DIR keeps the tree (e.g. to time other tools on it); else it is temporary.
    let root = std::env::var_os("FEDCLIP_SCALE_DIR")
        .map_or_else(|| tmp.path().join("DomainNet"), PathBuf::from);
    let p = Preset::DomainNet;
    let start = Instant::now();
    let mut files = 0;
    for (domain, &size) in p.domains().iter().zip(p.domain_sizes()) {
        for (c, class) in p.classes().iter().enumerate() {
            let dir = root.join(domain).join(class);
            std::fs::create_dir_all(&dir).unwrap();
            // Spread the domain's images over its classes as evenly as integers allow.
            let n = size / 345 + usize::from(c < size % 345);
            for i in 0..n {
                std::fs::File::create(dir.join(format!("{domain}_{c:03}_{i:06}.jpg"))).unwrap();
            }
            files += n;
        }
    }
    assert_eq!(files, 586_575);
    println!(
        "generated {files} files in {:.1}s",
        start.elapsed().as_secs_f64()
    );

    let start = Instant::now();
    let ds = Dataset::scan(&root).unwrap();
    let scan = start.elapsed().as_secs_f64();
    assert_eq!((ds.preset, ds.num_files()), (Some(p), 586_575));

    let start = Instant::now();
    let splits = make_splits(
        &ds,
        &SplitConfig {
            test_domains: vec!["clipart".into()],
            ..SplitConfig::default()
        },
    )
    .unwrap();
    let split = start.elapsed().as_secs_f64();
    let json = tmp.path().join("splits.json");
    let start = Instant::now();
    splits.write_json(&ds, &json).unwrap();
    let write = start.elapsed().as_secs_f64();

    // The cache's per-file index: every file stat-ed and hashed once, then memo hits.
    let paths: Vec<PathBuf> = ds.domains.iter().flat_map(|d| d.paths()).collect();
    let cache = tmp.path().join("cache");
    let keys = fedclip::features::CacheKeys {
        image: "scale-test-image".into(),
        image_dim: 4,
        text: "scale-test-text".into(),
        text_dim: 4,
    };
    let options = fedclip::features::CacheOptions {
        progress: false,
        ..Default::default()
    };
    let fc =
        fedclip::features::FeatureCache::open_keys(&cache, keys.clone(), options.clone()).unwrap();
    let start = Instant::now();
    let (feats, stats) = fc
        .image_features(&paths, |chunk| Ok(vec![0.5; chunk.len() * 4]))
        .unwrap();
    let first = start.elapsed().as_secs_f64();
    assert_eq!(feats.len(), paths.len() * 4);
    // Empty files share one content hash: one row computed, the rest are hits.
    assert_eq!(stats.computed, 1);
    drop(fc);
    let fc = fedclip::features::FeatureCache::open_keys(&cache, keys, options).unwrap();
    let start = Instant::now();
    let (_, again) = fc
        .image_features(&paths, |chunk| Ok(vec![0.5; chunk.len() * 4]))
        .unwrap();
    let second = start.elapsed().as_secs_f64();
    assert_eq!(again.computed, 0);
    println!(
        "DomainNet scale ({files} files): scan {scan:.2}s, splits {split:.2}s, splits.json {write:.2}s, \
         cache index first pass {first:.2}s (hashed {}), second pass {second:.2}s (hashed {})",
        stats.hashed, again.hashed
    );
}
