//! Stage 5 of a run: the files derived from the state and `metrics.csv`, rewritten whole each
//! time: the adapters, `accuracy.svg` and `summary.json`.

use super::config::{RunConfig, ServerOptName};
use super::features::Features;
use super::plan::Plan;
use super::report::{self, MetricRow, Summary};
use super::rounds::Rounds;
use super::strategy::{Bytes, Deployed};
use crate::bundled::is_bundled_model;
use crate::heads::Classifier;
use crate::io::{write_atomic, write_safetensors};
use anyhow::{Result, ensure};
use std::collections::{BTreeMap, HashMap};
use std::ops::Range;
use std::path::Path;

/// The adapter files a run directory holds: the last round's and the best round's.
pub const ADAPTER_FILES: [&str; 2] = ["adapter-last.safetensors", "adapter-best.safetensors"];

/// Writes the adapters, the plot and the summary; returns the summary.
pub fn write(
    cfg: &RunConfig,
    plan: &Plan,
    features: &Features,
    rounds: &Rounds,
    finetuned: Option<BTreeMap<String, f64>>,
) -> Result<Summary> {
    let out = &cfg.out;
    let layout = AdapterLayout::of(&*rounds.classifier);
    let names: Vec<&str> = match rounds.strategy.deployed() {
        Deployed::EachClient => (rounds.trainees.iter())
            .map(|&c| features.clients[c].name.as_str())
            .collect(),
        _ => vec!["global"],
    };
    if rounds.strategy.deployed() != Deployed::Nothing {
        let last = rounds.deployed_params();
        write_adapter(&out.join(ADAPTER_FILES[0]), &layout, &last, &names)?;
        if let Some((_, _, best)) = &rounds.state.best {
            write_adapter(&out.join(ADAPTER_FILES[1]), &layout, best, &names)?;
        }
    }
    let state = &rounds.state;
    let totals = RunTotals {
        clients: (features.clients.iter())
            .map(|c| (c.name.clone(), c.held_out))
            .collect(),
        trainees: rounds.trainees.clone(),
        rounds_done: state.rounds_done,
        best: state.best.as_ref().map(|(r, v, _)| (*r, *v)),
        adapter_parameters: rounds.classifier.param_count(),
        seconds_extracting: features.seconds_extracting,
        seconds_training: state.seconds_training,
        images_extracted: features.extracted,
        images_from_cache: features.from_cache,
        bytes: state.bytes,
        bytes_per_round: state.bytes_per_round.clone(),
        skipped_images: features.skipped_images.clone(),
    };
    write_report(cfg, &plan.dataset.root, &totals, finetuned)
}

/// What `summary.json` says besides the settings and `metrics.csv`, wherever the rounds ran
/// (here, or on the Flower app's server).
#[derive(Clone, Debug)]
pub struct RunTotals {
    /// Every client's name and whether it is held out, in client order.
    pub clients: Vec<(String, bool)>,
    /// Client index of each trainer slot.
    pub trainees: Vec<usize>,
    pub rounds_done: u32,
    /// The best round (1-based) and its mean validation accuracy.
    pub best: Option<(u32, f64)>,
    /// Values in one client's parameter row (the method family's P).
    pub adapter_parameters: usize,
    pub seconds_extracting: f64,
    pub seconds_training: f64,
    pub images_extracted: usize,
    pub images_from_cache: usize,
    /// Training traffic in all, and per round where the run counted it.
    pub bytes: Bytes,
    pub bytes_per_round: Option<Vec<Bytes>>,
    pub skipped_images: Vec<String>,
}

/// The plot and `summary.json` from `<out>/metrics.csv` and `totals`; returns the summary.
/// `data_root` names the dataset in the plot's title.
pub fn write_report(
    cfg: &RunConfig,
    data_root: &Path,
    totals: &RunTotals,
    finetuned: Option<BTreeMap<String, f64>>,
) -> Result<Summary> {
    let out = &cfg.out;
    let rows = report::read_metrics(&out.join("metrics.csv"))?;
    let method = cfg.method.name();
    let title = format!(
        "{method} on {} (held out: {})",
        (data_root.file_name()).map_or("data".into(), |n| n.to_string_lossy()),
        cfg.test_domains.join(", ")
    );
    report::plot_accuracy(&out.join("accuracy.svg"), &rows, &title)?;
    let mut summary = summarise(cfg, method, totals, &rows);
    if let Some(acc) = finetuned {
        summary.finetune_local_steps = Some(cfg.finetune_local_steps);
        summary.mean_finetuned_test_accuracy =
            (!acc.is_empty()).then(|| acc.values().sum::<f64>() / acc.len() as f64);
        summary.finetuned_test_accuracy = Some(acc);
    }
    write_atomic(
        &out.join("summary.json"),
        serde_json::to_string_pretty(&summary)?.as_bytes(),
    )?;
    Ok(summary)
}

/// The summary: accuracies at the best round, bytes, timings.
fn summarise(cfg: &RunConfig, method: String, totals: &RunTotals, rows: &[MetricRow]) -> Summary {
    let best_round = totals.best.map(|(r, _)| r);
    let mut best_acc: BTreeMap<String, BTreeMap<String, f64>> = BTreeMap::new();
    for r in rows.iter().filter(|r| Some(r.round) == best_round) {
        best_acc
            .entry(r.client.clone())
            .or_default()
            .insert(r.split.to_string(), r.accuracy);
    }
    let test_of = |name: &str| best_acc.get(name).and_then(|m| m.get("test")).copied();
    let clients = &totals.clients;
    let held_out: BTreeMap<String, f64> = (clients.iter().filter(|(_, h)| *h))
        .filter_map(|(name, _)| test_of(name).map(|a| (name.clone(), a)))
        .collect();
    let client_tests: Vec<f64> = (totals.trainees.iter())
        .filter_map(|&t| test_of(&clients[t].0))
        .collect();
    let server_opt = (cfg.server_opt.opt != ServerOptName::Fedavg)
        .then(|| format!("{:?}", cfg.server_opt.opt).to_lowercase());
    Summary {
        method,
        server_opt,
        rounds_run: totals.rounds_done,
        best_round,
        // NaN: chosen without validation files (the last round), so no accuracy to report.
        best_mean_val_accuracy: totals.best.map(|(_, v)| v).filter(|v| !v.is_nan()),
        best_round_accuracy: best_acc.clone(),
        held_out_test_accuracy: held_out,
        mean_client_test_accuracy: (!client_tests.is_empty())
            .then(|| client_tests.iter().sum::<f64>() / client_tests.len() as f64),
        seconds_extracting: totals.seconds_extracting,
        seconds_training: totals.seconds_training,
        images_extracted: totals.images_extracted,
        images_from_cache: totals.images_from_cache,
        bytes_communicated: totals.bytes.total(),
        bytes_down: totals.bytes.down,
        bytes_up: totals.bytes.up,
        bytes_down_per_round: (totals.bytes_per_round.as_ref())
            .map(|v| v.iter().map(|b| b.down).collect()),
        bytes_up_per_round: (totals.bytes_per_round.as_ref())
            .map(|v| v.iter().map(|b| b.up).collect()),
        adapter_parameters: totals.adapter_parameters,
        clients: clients.len(),
        model: cfg.model.display().to_string(),
        model_weights_random: is_bundled_model(&cfg.model),
        finetune_local_steps: None,
        finetuned_test_accuracy: None,
        mean_finetuned_test_accuracy: None,
        skipped_images: totals.skipped_images.clone(),
        dp: cfg.dp.summary(totals.rounds_done, cfg.sample_fraction),
    }
}

/// What an adapter file names: one row's tensors (name, shape, range in the row) and the
/// `layout` metadata.
pub struct AdapterLayout {
    pub tensors: Vec<(String, Vec<usize>, Range<usize>)>,
    pub layout: String,
}

impl AdapterLayout {
    pub fn of(classifier: &dyn Classifier) -> AdapterLayout {
        AdapterLayout {
            tensors: classifier.tensors(),
            layout: classifier.layout(),
        }
    }

    /// From `(name, shape)` in row order (what a Flower silo reports to the server).
    pub fn from_shapes(shapes: &[(String, Vec<usize>)], layout: String) -> AdapterLayout {
        let parts: Vec<(&str, Vec<usize>)> = (shapes.iter())
            .map(|(name, shape)| (name.as_str(), shape.clone()))
            .collect();
        let tensors = crate::heads::named(&parts);
        AdapterLayout { tensors, layout }
    }

    /// Values in one row.
    pub fn param_count(&self) -> usize {
        self.tensors.last().map_or(0, |(_, _, r)| r.end)
    }
}

/// The deployed parameters under their family's tensor names (the attention adapter as
/// PyTorch names FedCLIP's), one set per row of `params`, prefixed by the client's name when
/// there are several.
pub fn write_adapter(
    path: &Path,
    layout: &AdapterLayout,
    params: &[f32],
    clients: &[&str],
) -> Result<()> {
    let p = layout.param_count();
    ensure!(
        p > 0 && params.len() == clients.len() * p,
        "{}: {} values are not one row of {p} per name ({} names)",
        path.display(),
        params.len(),
        clients.len()
    );
    ensure!(
        params.iter().all(|x| x.is_finite()),
        "not writing {}: its parameters are not finite",
        path.display()
    );
    let mut tensors: Vec<(String, Vec<usize>, &[f32])> = Vec::new();
    for (k, chunk) in params.chunks_exact(p).enumerate() {
        let prefix = if clients.len() > 1 {
            format!("{}.", clients[k])
        } else {
            String::new()
        };
        for (name, shape, range) in &layout.tensors {
            tensors.push((
                format!("{prefix}{name}"),
                shape.clone(),
                &chunk[range.clone()],
            ));
        }
    }
    let refs: Vec<(&str, Vec<usize>, &[f32])> = tensors
        .iter()
        .map(|(n, s, d)| (n.as_str(), s.clone(), *d))
        .collect();
    let mut meta = HashMap::new();
    meta.insert("layout".into(), layout.layout.clone());
    write_safetensors(path, &refs, meta)
}
