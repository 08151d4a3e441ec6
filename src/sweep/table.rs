//! `fedclip table`: the paper's layout from run directories. Each run's numbers come from its
//! `summary.json` (the accuracies at the best-validation round) and its labels from its
//! `config.json`; a run without a summary is listed as unfinished, failed or not started,
//! never dropped.

use super::grid::Cell;
use super::manifest::{MANIFEST_FILE, Manifest};
use crate::federated::{RunConfig, ServerOptName};
use anyhow::{Context, Result, bail};
use serde_json::Value;
use std::path::{Path, PathBuf};

/// The numbers a table row may report, as they are named in `summary.json` and `table.csv`.
pub const HELD_OUT: &str = "held_out_test_accuracy";
pub const CLIENTS: &str = "mean_client_test_accuracy";
pub const FINETUNED: &str = "mean_finetuned_test_accuracy";

/// Where a sweep keeps the error of a cell whose run failed (`<cell>.txt`), until it succeeds.
pub const FAILED_DIR: &str = "failed";

/// Whether a run has its results.
#[derive(Clone, Debug, PartialEq)]
pub enum Status {
    Finished,
    /// Started, no summary yet: rounds with metrics so far, of the rounds asked.
    Unfinished {
        rounds_done: u32,
        rounds: u32,
    },
    /// The sweep recorded an error (its first line).
    Failed(String),
    NotStarted,
}

impl Status {
    pub fn describe(&self) -> String {
        match self {
            Status::Finished => "finished".into(),
            Status::Unfinished {
                rounds_done,
                rounds,
            } => {
                format!("unfinished ({rounds_done} of {rounds} rounds)")
            }
            Status::Failed(e) => format!("failed: {e}"),
            Status::NotStarted => "not started".into(),
        }
    }
}

/// One run directory's labels and numbers.
#[derive(Clone, Debug, PartialEq)]
pub struct RunResult {
    pub dir: PathBuf,
    /// The method as the table labels it: `fedclip`, `fedclip+fedadam`, …
    pub method: String,
    /// The held-out domain(s), `+`-joined when a run holds out several.
    pub test_domain: String,
    pub seed: u32,
    pub status: Status,
    /// metric name → value (fractions, as in `summary.json`); empty unless finished.
    pub values: Vec<(&'static str, f64)>,
    /// The dataset and model (absent for a run that never started).
    pub data: Option<PathBuf>,
    pub model: Option<PathBuf>,
}

impl RunResult {
    pub fn value(&self, metric: &str) -> Option<f64> {
        self.values
            .iter()
            .find(|(m, _)| *m == metric)
            .map(|(_, v)| *v)
    }
}

/// The runs a table covers and how many seeds each cell should have.
#[derive(Clone, Debug)]
pub struct Runs {
    pub results: Vec<RunResult>,
    pub seeds_asked: usize,
}

/// Reads `paths`, each a sweep directory (every cell of its grid) or a run directory.
pub fn collect(paths: &[PathBuf]) -> Result<Runs> {
    if paths.is_empty() {
        bail!("table: name a sweep directory or run directories");
    }
    let mut results = Vec::new();
    let mut seeds = Vec::new();
    for path in paths {
        if path.join(MANIFEST_FILE).is_file() {
            let manifest = Manifest::read(path)?;
            seeds.extend(manifest.grid.seeds.iter().copied());
            for cell in manifest.grid.cells() {
                results.push(read_cell(path, &cell)?);
            }
        } else {
            let r = read_run(path)?;
            seeds.push(r.seed);
            results.push(r);
        }
    }
    check_same_setup(&results)?;
    seeds.sort();
    seeds.dedup();
    Ok(Runs {
        results,
        seeds_asked: seeds.len(),
    })
}

/// A sweep's cell: its run directory if it was started, else what the sweep knows of it.
fn read_cell(sweep: &Path, cell: &Cell) -> Result<RunResult> {
    let dir = sweep.join(cell.dir_name());
    let failure = std::fs::read_to_string(sweep.join(FAILED_DIR).join(cell.dir_name() + ".txt"))
        .ok()
        .map(|e| e.lines().next().unwrap_or("").to_string());
    if dir.join("config.json").is_file() {
        let mut r = read_run(&dir)?;
        if let (Some(e), Status::Unfinished { .. }) = (&failure, &r.status) {
            r.status = Status::Failed(e.clone());
        }
        return Ok(r);
    }
    Ok(RunResult {
        dir,
        method: cell.method.name(),
        test_domain: cell.test_domain.clone(),
        seed: cell.seed,
        status: failure.map_or(Status::NotStarted, Status::Failed),
        values: Vec::new(),
        data: None,
        model: None,
    })
}

/// A run directory: labels from `config.json`, numbers from `summary.json` if it is there.
pub fn read_run(dir: &Path) -> Result<RunResult> {
    let config_path = dir.join("config.json");
    let text = std::fs::read_to_string(&config_path).with_context(|| {
        format!(
            "table: {} is neither a sweep directory (no {MANIFEST_FILE}) nor a run directory \
             (no config.json)",
            dir.display()
        )
    })?;
    let cfg: RunConfig = serde_json::from_str(&text).with_context(|| {
        format!(
            "table: {} is not a fedclip run config",
            config_path.display()
        )
    })?;
    let method = match cfg.server_opt.opt {
        ServerOptName::Fedavg => cfg.method.name(),
        opt => format!(
            "{}+{}",
            cfg.method.name(),
            format!("{opt:?}").to_lowercase()
        ),
    };
    let summary_path = dir.join("summary.json");
    let (status, values) = if summary_path.is_file() {
        (Status::Finished, summary_values(&summary_path)?)
    } else {
        let rounds_done = crate::federated::report::read_metrics(&dir.join("metrics.csv"))
            .map_or(0, |rows| rows.iter().map(|r| r.round).max().unwrap_or(0));
        let rounds = cfg.rounds;
        (
            Status::Unfinished {
                rounds_done,
                rounds,
            },
            Vec::new(),
        )
    };
    Ok(RunResult {
        dir: dir.to_path_buf(),
        method,
        test_domain: cfg.test_domains.join("+"),
        seed: cfg.seed,
        status,
        values,
        data: Some(cfg.data),
        model: Some(cfg.model),
    })
}

/// The table's numbers from `summary.json`: the held-out test accuracy at the best round
/// (the mean over held-out domains when a run holds out several), the clients' mean test
/// accuracy then, and the fine-tuned one where the run fine-tuned.
fn summary_values(path: &Path) -> Result<Vec<(&'static str, f64)>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let summary: Value = serde_json::from_str(&text)
        .with_context(|| format!("{} is not a run summary", path.display()))?;
    let mut values = Vec::new();
    let held_out: Vec<f64> = (summary[HELD_OUT].as_object())
        .map(|m| m.values().filter_map(Value::as_f64).collect())
        .unwrap_or_default();
    if !held_out.is_empty() {
        values.push((
            HELD_OUT,
            held_out.iter().sum::<f64>() / held_out.len() as f64,
        ));
    }
    for metric in [CLIENTS, FINETUNED] {
        if let Some(v) = summary[metric].as_f64() {
            values.push((metric, v));
        }
    }
    Ok(values)
}

/// Refuses runs of different datasets or models in one table, naming both.
fn check_same_setup(results: &[RunResult]) -> Result<()> {
    let same = |a: &Path, b: &Path| {
        a == b || matches!((a.canonicalize(), b.canonicalize()), (Ok(x), Ok(y)) if x == y)
    };
    let started: Vec<&RunResult> = results.iter().filter(|r| r.data.is_some()).collect();
    let Some(first) = started.first() else {
        return Ok(());
    };
    for r in &started[1..] {
        for (what, a, b) in [
            ("datasets", &first.data, &r.data),
            ("models", &first.model, &r.model),
        ] {
            let (a, b) = (
                a.as_deref().unwrap_or(Path::new("")),
                b.as_deref().unwrap_or(Path::new("")),
            );
            if !same(a, b) {
                bail!(
                    "table: the runs use different {what}: {} has {}, {} has {}; a table compares \
                     runs of one dataset and model",
                    first.dir.display(),
                    a.display(),
                    r.dir.display(),
                    b.display()
                );
            }
        }
    }
    Ok(())
}

/// Mean, sample standard deviation (n − 1) and count of some seeds' values.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Stat {
    pub mean: f64,
    /// `None` for fewer than two values.
    pub std: Option<f64>,
    pub n: usize,
}

impl Stat {
    pub fn of(values: &[f64]) -> Option<Stat> {
        let n = values.len();
        if n == 0 {
            return None;
        }
        let mean = values.iter().sum::<f64>() / n as f64;
        let std = (n >= 2).then(|| {
            let ss: f64 = values.iter().map(|v| (v - mean) * (v - mean)).sum();
            (ss / (n - 1) as f64).sqrt()
        });
        Some(Stat { mean, std, n })
    }
}

/// One table: rows (label, metric) by columns (held-out domains, then the average).
#[derive(Clone, Debug)]
pub struct Table {
    pub title: String,
    pub columns: Vec<String>,
    /// Row label and one entry per column plus the average last.
    pub rows: Vec<(String, Vec<Option<Stat>>)>,
}

/// The labels in the order they first appear.
fn first_seen(results: &[RunResult], key: impl Fn(&RunResult) -> &str) -> Vec<String> {
    let mut seen: Vec<String> = Vec::new();
    for r in results {
        if !seen.iter().any(|s| s == key(r)) {
            seen.push(key(r).to_string());
        }
    }
    seen
}

impl Runs {
    pub fn methods(&self) -> Vec<String> {
        first_seen(&self.results, |r| &r.method)
    }

    pub fn domains(&self) -> Vec<String> {
        first_seen(&self.results, |r| &r.test_domain)
    }

    /// `metric` per column for `method`, and the average over columns: the mean over the
    /// domains per seed (only seeds with every domain), then its mean ± std over seeds.
    pub fn row(&self, method: &str, metric: &str) -> Vec<Option<Stat>> {
        let domains = self.domains();
        let value = |domain: &str, seed: u32| {
            (self.results.iter())
                .find(|r| r.method == method && r.test_domain == domain && r.seed == seed)
                .and_then(|r| r.value(metric))
        };
        let mut seeds: Vec<u32> = (self.results.iter())
            .filter(|r| r.method == method)
            .map(|r| r.seed)
            .collect();
        seeds.sort();
        seeds.dedup();
        let mut row: Vec<Option<Stat>> = (domains.iter())
            .map(|d| {
                Stat::of(
                    &seeds
                        .iter()
                        .filter_map(|&s| value(d, s))
                        .collect::<Vec<_>>(),
                )
            })
            .collect();
        let averages: Vec<f64> = (seeds.iter())
            .filter_map(|&s| {
                let per_domain: Option<Vec<f64>> = domains.iter().map(|d| value(d, s)).collect();
                per_domain.map(|v| v.iter().sum::<f64>() / v.len() as f64)
            })
            .collect();
        row.push(Stat::of(&averages));
        row
    }

    /// The paper's table: held-out test accuracy at the best-validation round.
    pub fn held_out_table(&self) -> Table {
        Table {
            title: "Held-out domain test accuracy (%) at the best-validation round".into(),
            columns: self.domains(),
            rows: (self.methods().into_iter())
                .map(|m| {
                    let row = self.row(&m, HELD_OUT);
                    (m, row)
                })
                .collect(),
        }
    }

    /// Personalization: the training clients' mean in-domain test accuracy, and after local
    /// fine-tuning for methods whose runs fine-tuned. Columns name each run's held-out domain.
    pub fn personalization_table(&self) -> Table {
        let mut rows = Vec::new();
        for m in self.methods() {
            rows.push((m.clone(), self.row(&m, CLIENTS)));
            let finetuned = self.row(&m, FINETUNED);
            if finetuned.iter().any(Option::is_some) {
                rows.push((format!("{m} (fine-tuned)"), finetuned));
            }
        }
        Table {
            title: "Clients' in-domain test accuracy (%) (personalization), by held-out domain"
                .into(),
            columns: self.domains(),
            rows,
        }
    }

    /// The runs without results, for the note under each table.
    pub fn incomplete(&self) -> Vec<&RunResult> {
        (self.results.iter())
            .filter(|r| r.status != Status::Finished)
            .collect()
    }
}
