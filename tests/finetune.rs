//! `--finetune-local-steps N`: each training client's test accuracy after N local steps from
//! the final global adapter, against the same steps taken by hand on the trainer, with the
//! batch order that finetune.rs documents.

mod common;

use common::repo;
use fedclip::adapter::{
    AdapterBackend, AdapterParams, ClientBatch, CpuAdapters, OptimizerConfig, TrainConfig, predict,
};
use fedclip::data::Dataset;
use fedclip::data::rng::RandomState;
use fedclip::data::split::{SplitConfig, make_splits};
use fedclip::encode::Engine;
use fedclip::federated::{RunConfig, features, run_on};
use safetensors::SafeTensors;

fn config(dir: &std::path::Path, steps: u32) -> RunConfig {
    let text = format!(
        r#"{{"data": {:?}, "model": {:?}, "test_domains": ["art_painting"], "method": "fedclip",
        "rounds": 2, "local_epochs": 1, "batch": 16, "lr": 0.005, "weight_decay": 0.2,
        "optimizer": "adam", "keep_optimizer_state": false, "loss": "contrastive", "mu": 0.0,
        "aggregate": "uniform", "finetune_local_steps": {steps}, "seed": 3,
        "clients_per_domain": 1, "dirichlet_alpha": 0.5, "sample_fraction": 1.0,
        "prompt_template": "a picture of a {{}}", "extract_batch": 64, "cache_dir": {:?},
        "out": {:?}}}"#,
        repo().join("data/pacs-mini"),
        repo().join("weights/tiny-clip"),
        dir.join("cache"),
        dir.join("run"),
    );
    serde_json::from_str(&text).unwrap()
}

#[test]
fn finetuned_accuracy_equals_the_steps_taken_by_hand() {
    let tmp = tempfile::tempdir().unwrap();
    let steps = 7; // more than one pass over a 84-sample split at batch 16
    let cfg = config(tmp.path(), steps);
    let outcome = run_on(&cfg, false, None).unwrap();
    let got = outcome.summary.finetuned_test_accuracy.clone().unwrap();
    assert_eq!(outcome.summary.finetune_local_steps, Some(steps));

    let dataset = Dataset::scan(&cfg.data).unwrap();
    let split_cfg = SplitConfig {
        seed: cfg.seed,
        test_domains: cfg.test_domains.clone(),
        ..SplitConfig::default()
    };
    let splits = make_splits(&dataset, &split_cfg).unwrap();
    let feats = features::extract(&cfg, &dataset, &splits, &Engine::Cpu).unwrap();
    let bytes = std::fs::read(cfg.out.join("adapter-last.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let flat: Vec<f32> = [
        "attention.0.weight",
        "attention.0.bias",
        "attention.2.weight",
        "attention.2.bias",
    ]
    .iter()
    .flat_map(|n| bytemuck::pod_collect_to_vec::<u8, f32>(st.tensor(n).unwrap().data()))
    .collect();
    let global = AdapterParams::from_flat(feats.dim, flat).unwrap();
    let trainees = splits.training_clients();
    let train_config = TrainConfig {
        logit_scale: feats.logit_scale,
        optimizer: OptimizerConfig {
            lr: cfg.lr,
            ..OptimizerConfig::default()
        },
        ..TrainConfig::default()
    };
    let mut trainer =
        CpuAdapters::new(trainees.len(), &global, feats.texts.clone(), train_config).unwrap();
    for step in 0..steps {
        let data: Vec<(Vec<f32>, Vec<u32>)> = trainees
            .iter()
            .enumerate()
            .map(|(slot, &c)| {
                let train = &feats.clients[c].train;
                let per_pass = train.len().div_ceil(cfg.batch) as u32;
                let order = RandomState::from_key(&[cfg.seed, 4, slot as u32, step / per_pass])
                    .permutation(train.len());
                let rows = order
                    .chunks(cfg.batch)
                    .nth((step % per_pass) as usize)
                    .unwrap();
                let d = feats.dim;
                (
                    rows.iter()
                        .flat_map(|&i| train.features[i * d..(i + 1) * d].to_vec())
                        .collect(),
                    rows.iter().map(|&i| train.labels[i]).collect(),
                )
            })
            .collect();
        let batches: Vec<Option<ClientBatch>> = data
            .iter()
            .map(|(f, l)| Some(ClientBatch::new(f, l)))
            .collect();
        trainer.step(&batches).unwrap();
    }
    assert_eq!(got.len(), trainees.len());
    for (slot, &c) in trainees.iter().enumerate() {
        let client = &feats.clients[c];
        let own = trainer.client_params(slot).unwrap();
        let pred = predict(Some(&own), &client.test.features, &feats.texts).unwrap();
        let right = pred
            .iter()
            .zip(&client.test.labels)
            .filter(|(p, y)| p == y)
            .count();
        let want = right as f64 / client.test.len() as f64;
        assert_eq!(got[&client.name], want, "{}", client.name);
    }
    // The rounds' own outputs do not depend on the fine-tuning.
    let mut plain = config(&tmp.path().join("plain"), 0);
    plain.cache_dir = cfg.cache_dir.clone();
    let base = run_on(&plain, false, None).unwrap();
    assert!(base.summary.finetuned_test_accuracy.is_none());
    assert_eq!(
        std::fs::read(cfg.out.join("metrics.csv")).unwrap(),
        std::fs::read(plain.out.join("metrics.csv")).unwrap()
    );
}

#[test]
fn finetuning_needs_a_global_model() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = config(tmp.path(), 3);
    cfg.method = fedclip::federated::Method::Local;
    let err = format!("{:#}", run_on(&cfg, false, None).err().unwrap());
    assert!(err.contains("--finetune-local-steps"), "{err}");
    assert!(!cfg.out.exists(), "the run directory was created");
}
