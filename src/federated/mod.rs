//! Stage 5: federated rounds. Each client's frozen CLIP features are extracted once (and
//! cached across runs); the rounds then only train adapters, all training clients stepped
//! together as one K-client batch.

pub mod bad_images;
pub mod config;
pub mod report;
pub mod rundir;

pub use config::{Aggregate, LossName, Method, OptimizerName, RunConfig};

use crate::adapter::{
    AdapterBackend, AdapterParams, ClientBatch, CpuAdapters, Loss, OptimizerConfig, OptimizerKind,
    OptimizerState, TextFeatures, TrainConfig, param_count, predict,
};
use crate::cuda::{CudaAdapters, CudaClip, Gpu};
use crate::data::rng::RandomState;
use crate::data::split::{SplitConfig, make_splits};
use crate::data::{Dataset, PromptTemplate};
use crate::device::{Backend, Device, select_device};
use crate::embed::{
    ImageEntry, encode_images, encode_images_cuda, encode_texts, encode_texts_cuda,
};
use crate::features::FeatureCache;
use crate::model::ClipModel;
use crate::preprocess::PreprocessConfig;
use anyhow::{Context, Result, bail, ensure};
use report::{MetricRow, Summary};
use safetensors::SafeTensors;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

pub use crate::bundled::is_bundled_model;

/// Random-stream tag of the per-round batch order (the data module uses 1 and 2).
const TAG_BATCHES: u32 = 3;

/// Writes a file atomically: a temporary file beside it, synced, then renamed over it.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let write = || -> std::io::Result<()> {
        use std::io::Write;
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    };
    write().with_context(|| format!("cannot write {}", path.display()))
}

/// Test hook for the resume tests: `FEDCLIP_ABORT_AT=<round>:<metrics|state>` aborts the
/// process, as a kill would, right after that round's metrics or its checkpoint are written.
fn crash_point(round: u32, point: &str) {
    if let Ok(spec) = std::env::var("FEDCLIP_ABORT_AT")
        && spec == format!("{round}:{point}")
    {
        eprintln!("FEDCLIP_ABORT_AT: aborting after round {round}'s {point}");
        std::process::abort();
    }
}

/// Features and labels of one split of one client.
#[derive(Clone, Debug, Default)]
struct SplitData {
    features: Vec<f32>,
    labels: Vec<u32>,
}

impl SplitData {
    fn len(&self) -> usize {
        self.labels.len()
    }
}

struct ClientData {
    name: String,
    held_out: bool,
    train: SplitData,
    val: SplitData,
    test: SplitData,
}

/// Everything a resumed run needs to continue exactly where the last finished round left it.
struct State {
    /// Rounds finished so far.
    rounds_done: u32,
    global: Vec<f32>,
    /// `[K, P]`, one row per training client.
    clients: Vec<f32>,
    best: Option<(u32, f64, Vec<f32>)>,
    seconds_training: f64,
    bytes: u64,
    /// Kept across rounds only with `--keep-optimizer-state`, so only then checkpointed.
    optimizer: Option<OptimizerState>,
}

const STATE_FILE: &str = "state.safetensors";

impl State {
    fn save(&self, dir: &Path) -> Result<()> {
        let mut meta = HashMap::new();
        meta.insert("rounds_done".to_string(), self.rounds_done.to_string());
        meta.insert(
            "seconds_training".to_string(),
            self.seconds_training.to_string(),
        );
        meta.insert("bytes".to_string(), self.bytes.to_string());
        let mut tensors: Vec<(&str, Vec<usize>, &[f32])> = vec![
            ("global", vec![self.global.len()], &self.global),
            ("clients", vec![self.clients.len()], &self.clients),
        ];
        if let Some(o) = &self.optimizer {
            tensors.push(("adam_m", vec![o.m.len()], &o.m));
            tensors.push(("adam_v", vec![o.v.len()], &o.v));
            meta.insert("adam_steps".to_string(), serde_json::to_string(&o.steps)?);
        }
        if let Some((round, val, params)) = &self.best {
            meta.insert("best_round".to_string(), round.to_string());
            meta.insert("best_val".to_string(), val.to_string());
            tensors.push(("best", vec![params.len()], params));
        }
        crate::embed::write_safetensors(&dir.join(STATE_FILE), &tensors, meta)
    }

    fn load(dir: &Path) -> Result<State> {
        let path = dir.join(STATE_FILE);
        let bytes =
            std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
        let bad = |what: &str| {
            format!(
                "{}: {what} (delete the run directory to start over)",
                path.display()
            )
        };
        let st = SafeTensors::deserialize(&bytes)
            .map_err(|e| anyhow::anyhow!("{}", bad(&format!("corrupt: {e}"))))?;
        let (_, meta) = SafeTensors::read_metadata(&bytes)
            .map_err(|e| anyhow::anyhow!("{}", bad(&e.to_string())))?;
        let meta = meta.metadata().clone().unwrap_or_default();
        let num = |k: &str| -> Result<String> {
            meta.get(k)
                .cloned()
                .with_context(|| bad(&format!("no `{k}`")))
        };
        let tensor = |k: &str| -> Result<Vec<f32>> {
            let t = st
                .tensor(k)
                .map_err(|_| anyhow::anyhow!("{}", bad(&format!("no tensor `{k}`"))))?;
            Ok(bytemuck::pod_collect_to_vec(t.data()))
        };
        let best = match meta.get("best_round") {
            Some(r) => Some((
                r.parse().with_context(|| bad("best_round"))?,
                num("best_val")?.parse().with_context(|| bad("best_val"))?,
                tensor("best")?,
            )),
            None => None,
        };
        let optimizer = match meta.get("adam_steps") {
            Some(steps) => Some(OptimizerState {
                m: tensor("adam_m")?,
                v: tensor("adam_v")?,
                steps: serde_json::from_str(steps).with_context(|| bad("adam_steps"))?,
            }),
            None => None,
        };
        Ok(State {
            optimizer,
            rounds_done: num("rounds_done")?
                .parse()
                .with_context(|| bad("rounds_done"))?,
            global: tensor("global")?,
            clients: tensor("clients")?,
            best,
            seconds_training: num("seconds_training")?
                .parse()
                .with_context(|| bad("seconds_training"))?,
            bytes: num("bytes")?.parse().with_context(|| bad("bytes"))?,
        })
    }
}

/// What `run` reports back to the CLI.
pub struct RunOutcome {
    pub out: PathBuf,
    pub summary: Summary,
    pub resumed_from: Option<u32>,
}

fn write_adapter(path: &Path, dim: usize, params: &[f32], clients: &[&str]) -> Result<()> {
    let p = param_count(dim);
    let d = dim;
    let mut tensors: Vec<(String, Vec<usize>, &[f32])> = Vec::new();
    for (k, chunk) in params.chunks_exact(p).enumerate() {
        let prefix = if clients.len() > 1 {
            format!("{}.", clients[k])
        } else {
            String::new()
        };
        let (w1, rest) = chunk.split_at(d * d);
        let (b1, rest) = rest.split_at(d);
        let (w2, b2) = rest.split_at(d * d);
        tensors.push((format!("{prefix}attention.0.weight"), vec![d, d], w1));
        tensors.push((format!("{prefix}attention.0.bias"), vec![d], b1));
        tensors.push((format!("{prefix}attention.2.weight"), vec![d, d], w2));
        tensors.push((format!("{prefix}attention.2.bias"), vec![d], b2));
    }
    let refs: Vec<(&str, Vec<usize>, &[f32])> = tensors
        .iter()
        .map(|(n, s, d)| (n.as_str(), s.clone(), *d))
        .collect();
    let mut meta = HashMap::new();
    meta.insert(
        "layout".into(),
        "FedCLIP adapter: Linear(d,d) → Tanh → Linear(d,d) → Softmax; PyTorch [out, in]".into(),
    );
    crate::embed::write_safetensors(path, &refs, meta)
}

/// Accuracy of `params` (None: zero-shot) on one split.
fn accuracy(
    params: Option<&AdapterParams<f32>>,
    split: &SplitData,
    texts: &TextFeatures<f32>,
) -> Result<f64> {
    if split.len() == 0 {
        return Ok(f64::NAN);
    }
    let pred = predict(params, &split.features, texts)?;
    let right = pred
        .iter()
        .zip(&split.labels)
        .filter(|(p, y)| p == y)
        .count();
    Ok(right as f64 / split.len() as f64)
}

/// Runs (or, with `resume`, continues) one experiment. See `fedclip run --help`.
pub fn run(cfg: &RunConfig, resume: bool, device: Device) -> Result<RunOutcome> {
    // On a GPU both the extraction and the adapter rounds run there.
    let gpu = match select_device(device)? {
        Backend::Cpu => None,
        Backend::Cuda => Some(Gpu::open()?),
    };
    run_on(cfg, resume, gpu)
}

/// [`run`] on a given GPU (or the CPU with `None`); tests pass the host emulator here.
pub fn run_on(cfg: &RunConfig, resume: bool, gpu: Option<Arc<Gpu>>) -> Result<RunOutcome> {
    cfg.validate()?;
    // Validate the data and the run directory before anything slow.
    let dataset = Dataset::scan(&cfg.data)?;
    dataset.check_formats()?;
    for w in &dataset.warnings {
        eprintln!("warning: {w}");
    }
    let split_cfg = SplitConfig {
        seed: cfg.seed,
        test_domains: cfg.test_domains.clone(),
        clients_per_domain: cfg.clients_per_domain,
        dirichlet_alpha: cfg.dirichlet_alpha,
        ..SplitConfig::default()
    };
    let mut splits = make_splits(&dataset, &split_cfg)?;
    for w in splits.check_training_data(&dataset, cfg.drop_empty_clients)? {
        eprintln!("warning: {w}");
    }
    let out = cfg.out.clone();
    let _lock = rundir::claim(cfg, resume)?;
    let config_path = out.join("config.json");
    let state = if resume {
        let saved: RunConfig = serde_json::from_str(
            &std::fs::read_to_string(&config_path)
                .with_context(|| format!("--resume: cannot read {}", config_path.display()))?,
        )
        .with_context(|| format!("--resume: {} is not a run config", config_path.display()))?;
        let diff = cfg.resume_mismatches(&saved);
        if !diff.is_empty() {
            bail!(
                "--resume: the settings differ from the interrupted run's {}:\n  {}",
                config_path.display(),
                diff.join("\n  ")
            );
        }
        match State::load(&out) {
            Ok(s) => Some(s),
            Err(_) if !out.join(STATE_FILE).exists() => None, // stopped before round 1 ended
            Err(e) => return Err(e),
        }
    } else {
        if out.join(STATE_FILE).exists() || out.join("metrics.csv").exists() {
            bail!(
                "{} already holds a run; pass --resume to continue it, or choose another --out",
                out.display()
            );
        }
        None
    };
    std::fs::create_dir_all(&out).with_context(|| format!("cannot create {}", out.display()))?;
    write_atomic(&config_path, serde_json::to_string_pretty(cfg)?.as_bytes())?;
    splits.write_json(&dataset, &out.join("splits.json"))?;

    // Features: once per image and prompt, from the cache when it has them.
    let model = ClipModel::load(&cfg.model)?;
    let gpu_model = gpu
        .as_ref()
        .map(|g| CudaClip::load(g, &cfg.model))
        .transpose()?;
    let vision = model
        .vision
        .as_ref()
        .with_context(|| format!("{} has no vision tower", cfg.model.display()))?;
    let pre = PreprocessConfig::from_model_dir(&cfg.model, vision.config.image_size)?;
    let cache = FeatureCache::open(&cfg.cache_dir, &model, &pre)?;
    let bad = bad_images::find(&dataset, &cache, cfg.max_image_pixels, cfg.skip_bad)?;
    bad.remove_from(&mut splits);
    let extract_start = Instant::now();
    let (mut extracted, mut cached) = (0, 0);
    let mut domain_features = Vec::new();
    for d in 0..dataset.domains.len() {
        let (feats, stats) = cache.image_features(&bad.usable_paths(&dataset, d), |chunk| {
            let entries: Vec<ImageEntry> = chunk
                .iter()
                .map(|p| ImageEntry {
                    path: p.clone(),
                    name: p.display().to_string(),
                })
                .collect();
            Ok(match &gpu_model {
                Some(g) => {
                    encode_images_cuda(g, &entries, cfg.extract_batch, false, cfg.max_image_pixels)?
                        .0
                }
                None => {
                    encode_images(
                        &model,
                        &entries,
                        cfg.extract_batch,
                        false,
                        cfg.max_image_pixels,
                    )?
                    .0
                }
            })
        })?;
        extracted += stats.computed;
        cached += stats.hits;
        domain_features.push(bad.with_gaps(&dataset, d, feats));
    }
    let template = PromptTemplate::new(&cfg.prompt_template);
    let prompts = dataset.prompts(&template);
    let (text_raw, _) = cache.text_features(&prompts, |chunk| match &gpu_model {
        Some(g) => encode_texts_cuda(g, chunk, cfg.extract_batch, false),
        None => encode_texts(&model, chunk, cfg.extract_batch, false),
    })?;
    // The cache printed its warnings as they arose.
    let seconds_extracting = extract_start.elapsed().as_secs_f64();
    let dim = domain_features
        .first()
        .map_or(0, |f| f.len() / dataset.domains[0].samples.len().max(1));
    let texts = TextFeatures::new(&text_raw, dataset.classes.len(), dim)?;
    let logit_scale = model.logit_scale.with_context(|| {
        format!(
            "{}: no `logit_scale` tensor (the loss needs CLIP's temperature)",
            cfg.model.display()
        )
    })?;

    let gather = |domain: usize, idx: &[usize]| SplitData {
        features: idx
            .iter()
            .flat_map(|&i| {
                domain_features[domain][i * dim..(i + 1) * dim]
                    .iter()
                    .copied()
            })
            .collect(),
        labels: idx
            .iter()
            .map(|&i| dataset.domains[domain].samples[i].label as u32)
            .collect(),
    };
    let clients: Vec<ClientData> = splits
        .clients
        .iter()
        .map(|c| ClientData {
            name: c.name.clone(),
            held_out: c.held_out,
            train: gather(c.domain, &c.train),
            val: gather(c.domain, &c.val),
            test: gather(c.domain, &c.test),
        })
        .collect();
    let trainees: Vec<usize> = splits.training_clients();
    ensure!(
        !trainees.is_empty(),
        "every domain is held out: no client to train"
    );

    let p = param_count(dim);
    let init = AdapterParams::<f32>::init(dim, cfg.seed as u64);
    let train_config = TrainConfig {
        loss: match cfg.loss {
            LossName::Contrastive => Loss::Contrastive,
            LossName::Class => Loss::Class,
        },
        logit_scale,
        optimizer: OptimizerConfig {
            kind: match cfg.optimizer {
                OptimizerName::Adam => OptimizerKind::Adam,
                OptimizerName::Adamw => OptimizerKind::AdamW,
            },
            lr: cfg.lr,
            weight_decay: cfg.weight_decay,
            ..OptimizerConfig::default()
        },
        min_batch: 2,
    };
    let mut backend: Box<dyn AdapterBackend> = match &gpu {
        Some(g) => Box::new(CudaAdapters::new(
            g,
            trainees.len(),
            &init,
            texts.clone(),
            train_config,
        )?),
        None => Box::new(CpuAdapters::new(
            trainees.len(),
            &init,
            texts.clone(),
            train_config,
        )?),
    };
    let resumed_from = state.as_ref().map(|s| s.rounds_done);
    let mut state = match state {
        Some(s) => {
            ensure!(
                s.global.len() == p && s.clients.len() == trainees.len() * p,
                "{}: saved adapters do not fit this run",
                out.join(STATE_FILE).display()
            );
            backend.write_all_params(&s.clients)?;
            if let Some(o) = &s.optimizer {
                backend.set_optimizer_state(o)?;
            }
            s
        }
        None => State {
            rounds_done: 0,
            global: init.as_slice().to_vec(),
            clients: backend.read_all_params()?,
            best: None,
            seconds_training: 0.0,
            bytes: 0,
            optimizer: None,
        },
    };
    // Rows are labelled with the number of finished rounds (1-based); later ones are dropped.
    let mut metrics = report::open_metrics(&out.join("metrics.csv"), state.rounds_done + 1)?;
    let total_rounds = if cfg.method == Method::Zeroshot {
        1
    } else {
        cfg.rounds
    };
    let names: Vec<&str> = trainees.iter().map(|&c| clients[c].name.as_str()).collect();

    for round in state.rounds_done..total_rounds {
        let t0 = Instant::now();
        let mut losses: Vec<Vec<f32>> = vec![Vec::new(); trainees.len()];
        if cfg.method != Method::Zeroshot {
            let sampled: Vec<usize> = splits.sample_round(cfg.sample_fraction, round);
            let slots: Vec<usize> = sampled
                .iter()
                .map(|c| {
                    trainees
                        .iter()
                        .position(|t| t == c)
                        .expect("training client")
                })
                .collect();
            let global = AdapterParams::from_flat(dim, state.global.clone())?;
            if matches!(cfg.method, Method::Fedclip | Method::Fedprox) {
                for &s in &slots {
                    backend.set_client_params(s, &global)?;
                }
            }
            if !cfg.keep_optimizer_state {
                backend.reset();
            }
            let anchor = (cfg.method == Method::Fedprox).then_some(&global);
            backend.set_proximal(cfg.mu as f32, anchor)?;
            for epoch in 0..cfg.local_epochs {
                // Each sampled client's own shuffled batch order, from (seed, round, client, epoch).
                let orders: Vec<Vec<usize>> = slots
                    .iter()
                    .map(|&s| {
                        let n = clients[trainees[s]].train.len();
                        RandomState::from_key(&[cfg.seed, TAG_BATCHES, round, s as u32, epoch])
                            .permutation(n)
                    })
                    .collect();
                let steps = orders
                    .iter()
                    .map(|o| o.len().div_ceil(cfg.batch))
                    .max()
                    .unwrap_or(0);
                for step in 0..steps {
                    let mut buffers: Vec<Option<(Vec<f32>, Vec<u32>)>> = vec![None; trainees.len()];
                    for (order, &s) in orders.iter().zip(&slots) {
                        let chunk = order.chunks(cfg.batch).nth(step);
                        if let Some(chunk) = chunk {
                            let tr = &clients[trainees[s]].train;
                            let feats = chunk
                                .iter()
                                .flat_map(|&i| tr.features[i * dim..(i + 1) * dim].iter().copied())
                                .collect();
                            buffers[s] =
                                Some((feats, chunk.iter().map(|&i| tr.labels[i]).collect()));
                        }
                    }
                    let batches: Vec<Option<ClientBatch>> = buffers
                        .iter()
                        .map(|b| b.as_ref().map(|(f, l)| ClientBatch::new(f, l)))
                        .collect();
                    let step_losses = backend.step(&batches).with_context(|| {
                        format!("round {round}, local epoch {epoch}, step {step}")
                    })?;
                    for (s, loss) in step_losses.iter().enumerate() {
                        if let Some(l) = loss {
                            losses[s].push(*l);
                        }
                    }
                }
            }
            state.clients = backend.read_all_params()?;
            if cfg.keep_optimizer_state {
                state.optimizer = Some(backend.optimizer_state());
            }
            if matches!(cfg.method, Method::Fedclip | Method::Fedprox) {
                let weights: Vec<f64> = slots
                    .iter()
                    .map(|&s| match cfg.aggregate {
                        Aggregate::Uniform => 1.0,
                        Aggregate::Weighted => clients[trainees[s]].train.len() as f64,
                    })
                    .collect();
                let total: f64 = weights.iter().sum();
                let mut avg = vec![0f64; p];
                for (&s, w) in slots.iter().zip(&weights) {
                    for (a, &v) in avg.iter_mut().zip(&state.clients[s * p..(s + 1) * p]) {
                        *a += w / total * v as f64;
                    }
                }
                state.global = avg.into_iter().map(|v| v as f32).collect();
                // Down to each sampled client, then its update back up.
                state.bytes += 2 * (slots.len() * p * 4) as u64;
            }
        }
        state.seconds_training += t0.elapsed().as_secs_f64();

        // Evaluate: what each client would deploy after this round.
        let global = AdapterParams::from_flat(dim, state.global.clone())?;
        let local_mean = {
            let mut m = vec![0f64; p];
            for row in state.clients.chunks_exact(p) {
                m.iter_mut()
                    .zip(row)
                    .for_each(|(a, &v)| *a += v as f64 / trainees.len() as f64);
            }
            AdapterParams::from_flat(dim, m.into_iter().map(|v| v as f32).collect())?
        };
        let mut rows = Vec::new();
        let mut val_sum = (0.0, 0usize);
        for (c, client) in clients.iter().enumerate() {
            let slot = trainees.iter().position(|&t| t == c);
            let own;
            let params = match (cfg.method, slot) {
                (Method::Zeroshot, _) => None,
                (Method::Local, Some(s)) => {
                    own =
                        AdapterParams::from_flat(dim, state.clients[s * p..(s + 1) * p].to_vec())?;
                    Some(&own)
                }
                (Method::Local, None) => Some(&local_mean),
                _ => Some(&global),
            };
            for (split, data) in [
                ("train", &client.train),
                ("val", &client.val),
                ("test", &client.test),
            ] {
                if data.len() == 0 {
                    continue;
                }
                let acc = accuracy(params, data, &texts)?;
                if split == "val" && !client.held_out {
                    val_sum = (val_sum.0 + acc, val_sum.1 + 1);
                }
                let loss = match (split, slot) {
                    ("train", Some(s)) if !losses[s].is_empty() => Some(
                        losses[s].iter().map(|&l| l as f64).sum::<f64>() / losses[s].len() as f64,
                    ),
                    _ => None,
                };
                rows.push(MetricRow {
                    round: round + 1,
                    client: client.name.clone(),
                    split,
                    accuracy: acc,
                    samples: data.len(),
                    loss,
                });
            }
        }
        report::append_rows(&mut metrics, &rows)?;
        crash_point(round, "metrics");
        let mean_val = val_sum.0 / val_sum.1.max(1) as f64;
        if state.best.as_ref().is_none_or(|(_, v, _)| mean_val > *v) {
            let params = if cfg.method == Method::Local {
                state.clients.clone()
            } else {
                state.global.clone()
            };
            state.best = Some((round + 1, mean_val, params));
        }
        state.rounds_done = round + 1;
        state.save(&out)?;
        crash_point(round, "state");
        if (round + 1) % 10 == 0 || round + 1 == total_rounds || round == 0 {
            eprintln!(
                "round {:>4}/{total_rounds}: mean val accuracy {:.2}%",
                round + 1,
                100.0 * mean_val
            );
        }
    }

    // Outputs derived from the state and metrics, rewritten whole each time.
    let last = if cfg.method == Method::Local {
        state.clients.clone()
    } else {
        state.global.clone()
    };
    let adapter_names: Vec<&str> = if cfg.method == Method::Local {
        names.clone()
    } else {
        vec!["global"]
    };
    if cfg.method != Method::Zeroshot {
        write_adapter(
            &out.join("adapter-last.safetensors"),
            dim,
            &last,
            &adapter_names,
        )?;
        if let Some((_, _, best)) = &state.best {
            write_adapter(
                &out.join("adapter-best.safetensors"),
                dim,
                best,
                &adapter_names,
            )?;
        }
    }
    let rows = report::read_metrics(&out.join("metrics.csv"))?;
    let title = format!(
        "{} on {} (held out: {})",
        format!("{:?}", cfg.method).to_lowercase(),
        dataset
            .root
            .file_name()
            .map_or("data".into(), |n| n.to_string_lossy()),
        cfg.test_domains.join(", ")
    );
    report::plot_accuracy(&out.join("accuracy.svg"), &rows, &title)?;
    let best_round = state.best.as_ref().map(|(r, _, _)| *r);
    let mut best_acc: BTreeMap<String, BTreeMap<String, f64>> = BTreeMap::new();
    for r in rows.iter().filter(|r| Some(r.round) == best_round) {
        best_acc
            .entry(r.client.clone())
            .or_default()
            .insert(r.split.to_string(), r.accuracy);
    }
    let held_out: BTreeMap<String, f64> = clients
        .iter()
        .filter(|c| c.held_out)
        .filter_map(|c| {
            best_acc
                .get(&c.name)
                .and_then(|m| m.get("test"))
                .map(|&a| (c.name.clone(), a))
        })
        .collect();
    let client_tests: Vec<f64> = trainees
        .iter()
        .filter_map(|&t| {
            best_acc
                .get(&clients[t].name)
                .and_then(|m| m.get("test"))
                .copied()
        })
        .collect();
    let summary = Summary {
        method: format!("{:?}", cfg.method).to_lowercase(),
        rounds_run: state.rounds_done,
        best_round,
        best_mean_val_accuracy: state.best.as_ref().map(|(_, v, _)| *v),
        best_round_accuracy: best_acc,
        held_out_test_accuracy: held_out,
        mean_client_test_accuracy: (!client_tests.is_empty())
            .then(|| client_tests.iter().sum::<f64>() / client_tests.len() as f64),
        seconds_extracting,
        seconds_training: state.seconds_training,
        images_extracted: extracted,
        images_from_cache: cached,
        bytes_communicated: state.bytes,
        adapter_parameters: p,
        clients: clients.len(),
        model: cfg.model.display().to_string(),
        model_weights_random: is_bundled_model(&cfg.model),
        skipped_images: bad.rel_paths.clone(),
    };
    write_atomic(
        &out.join("summary.json"),
        serde_json::to_string_pretty(&summary)?.as_bytes(),
    )?;
    Ok(RunOutcome {
        out,
        summary,
        resumed_from,
    })
}
