//! `fedclip run` with extraction and adapter rounds on the CUDA engine, against the same run on
//! the CPU. Runs on a GPU, or on the host emulator with FEDCLIP_EMULATE=1; else prints
//! "skipped: no CUDA device".

mod common;

use common::repo;
use fedclip::federated::{Aggregate, LossName, Method, OptimizerName, RunConfig, run_on};
use fedclip::tokenizer::TokenizerKind;
use std::path::Path;

fn small_dataset(root: &Path) {
    // Two domains × two classes × three distinct images.
    let src = repo().join("data/pacs-mini");
    for (d, from) in [("d1", "photo"), ("d2", "cartoon")] {
        for (c, class) in [("dog", "dog"), ("horse", "horse")] {
            let dir = root.join(d).join(c);
            std::fs::create_dir_all(&dir).unwrap();
            let mut files: Vec<_> = std::fs::read_dir(src.join(from).join(class))
                .unwrap()
                .map(|e| e.unwrap().path())
                .collect();
            files.sort();
            for f in files.iter().take(5) {
                std::fs::copy(f, dir.join(f.file_name().unwrap())).unwrap();
            }
        }
    }
}

fn config(root: &Path, out: &Path, cache: &Path) -> RunConfig {
    RunConfig {
        data: root.to_path_buf(),
        model: repo().join("weights/tiny-clip"),
        test_domains: vec!["d1".into()],
        method: Method::Fedclip,
        rounds: 3,
        local_epochs: 1,
        batch: 4,
        lr: 1e-2,
        weight_decay: 0.2,
        optimizer: OptimizerName::Adam,
        momentum: fedclip::federated::config::DEFAULT_MOMENTUM,
        lr_schedule: Default::default(),
        warmup_rounds: 0,
        warmup_lr: fedclip::federated::config::DEFAULT_WARMUP_LR,
        keep_optimizer_state: false,
        loss: LossName::Contrastive,
        mu: 0.0,
        aggregate: Aggregate::Uniform,
        server_opt: Default::default(),
        finetune_local_steps: 0,
        method_options: Default::default(),
        prompt: Default::default(),
        seed: 0,
        clients_per_domain: 1,
        dirichlet_alpha: 0.5,
        sample_fraction: 1.0,
        prompt_template: "a picture of a {}".into(),
        tokenizer: TokenizerKind::Openai,
        extract_batch: 8,
        cache_dir: cache.to_path_buf(),
        out: out.to_path_buf(),
        max_image_pixels: fedclip::preprocess::DEFAULT_MAX_IMAGE_PIXELS,
        drop_empty_clients: false,
        skip_bad: false,
        augment_views: 0,
        dp: Default::default(),
    }
}

#[test]
fn run_on_gpu_matches_cpu() {
    let Some(gpu) = fedclip::cuda::test_gpu() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("data");
    small_dataset(&root);
    let cpu = run_on(
        &config(&root, &tmp.path().join("cpu"), &tmp.path().join("c1")),
        false,
        None,
    )
    .unwrap();
    let cuda = run_on(
        &config(&root, &tmp.path().join("gpu"), &tmp.path().join("c2")),
        false,
        Some(gpu),
    )
    .unwrap();
    assert_eq!(cpu.summary.images_extracted, 20);
    assert_eq!(cuda.summary.images_extracted, 20);
    let read =
        |dir: &str| std::fs::read_to_string(tmp.path().join(dir).join("metrics.csv")).unwrap();
    assert_close_metrics(&read("cpu"), &read("gpu"));
}

/// The families of `src/heads/` on a GPU take their features from the GPU encoder and train
/// on the CPU engine: the same rows as the CPU run, accuracies and losses within what fp16
/// features move.
#[test]
fn new_methods_on_gpu_train_on_the_cpu_engine() {
    let Some(gpu) = fedclip::cuda::test_gpu() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("data");
    small_dataset(&root);
    for method in [
        Method::LinearProbe,
        Method::ClipAdapter,
        Method::TipAdapterF,
    ] {
        let name = method.name();
        let (c, g) = (format!("{name}-cpu"), format!("{name}-gpu"));
        let mut cfg = config(&root, &tmp.path().join(&c), &tmp.path().join("c1"));
        cfg.method = method;
        run_on(&cfg, false, None).unwrap();
        cfg.out = tmp.path().join(&g);
        cfg.cache_dir = tmp.path().join("c2");
        run_on(&cfg, false, Some(gpu.clone())).unwrap();
        let read =
            |dir: &str| std::fs::read_to_string(tmp.path().join(dir).join("metrics.csv")).unwrap();
        assert_close_metrics(&read(&c), &read(&g));
    }
}

fn assert_close_metrics(a: &str, b: &str) {
    assert_eq!(a.lines().count(), b.lines().count());
    for (x, y) in a.lines().skip(1).zip(b.lines().skip(1)) {
        let (fx, fy): (Vec<&str>, Vec<&str>) = (x.split(',').collect(), y.split(',').collect());
        // Same rows; fp16 features move losses slightly, accuracies rarely.
        assert_eq!(fx[..3], fy[..3]);
        let (ax, ay): (f64, f64) = (fx[3].parse().unwrap(), fy[3].parse().unwrap());
        assert!((ax - ay).abs() <= 0.1, "accuracy {x} vs {y}");
        if !fx[5].is_empty() {
            let (lx, ly): (f64, f64) = (fx[5].parse().unwrap(), fy[5].parse().unwrap());
            assert!(
                (lx - ly).abs() <= 1e-2 * lx.abs().max(1.0),
                "loss {x} vs {y}"
            );
        }
    }
}
