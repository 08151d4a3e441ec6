//! What a run leaves behind besides checkpoints: `metrics.csv`, `summary.json`,
//! `accuracy.svg`.

use anyhow::{Context, Result};
use plotters::prelude::*;
use serde::Serialize;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

/// One row of `metrics.csv`.
#[derive(Clone, Debug, PartialEq)]
pub struct MetricRow {
    /// Rounds finished when measured (1 after the first round; zero-shot reports 1).
    pub round: u32,
    pub client: String,
    /// `train`, `val` or `test`.
    pub split: &'static str,
    pub accuracy: f64,
    pub samples: usize,
    /// Mean training loss of the client's steps this round (train rows of trained clients).
    pub loss: Option<f64>,
}

pub const METRICS_HEADER: &str = "round,client,split,accuracy,samples,loss";

impl MetricRow {
    pub fn csv(&self) -> String {
        format!(
            "{},{},{},{:.6},{},{}",
            self.round,
            self.client,
            self.split,
            self.accuracy,
            self.samples,
            self.loss.map_or(String::new(), |l| format!("{l:.6}"))
        )
    }
}

/// Keeps the rows of rounds before `keep_before` (a resumed run drops what the interrupted
/// one wrote after its last checkpoint), and returns a writer that appends.
pub fn open_metrics(path: &Path, keep_before: u32) -> Result<std::fs::File> {
    open_metrics_with_header(path, keep_before, METRICS_HEADER)
}

/// [`open_metrics`] with another header (a DP run's adds `,epsilon`).
pub fn open_metrics_with_header(
    path: &Path,
    keep_before: u32,
    header: &str,
) -> Result<std::fs::File> {
    let kept: Vec<String> = match std::fs::read_to_string(path) {
        Ok(text) => text
            .lines()
            .skip(1)
            .filter(|l| {
                l.split(',')
                    .next()
                    .and_then(|r| r.parse::<u32>().ok())
                    .is_some_and(|r| r < keep_before)
            })
            .map(str::to_string)
            .collect(),
        Err(_) => Vec::new(),
    };
    let mut text = format!("{header}\n");
    for line in kept {
        text.push_str(&line);
        text.push('\n');
    }
    crate::io::write_atomic(path, text.as_bytes())?;
    std::fs::OpenOptions::new()
        .append(true)
        .open(path)
        .with_context(|| format!("cannot append to {}", path.display()))
}

pub fn append_rows(file: &mut std::fs::File, rows: &[MetricRow]) -> Result<()> {
    append_rows_with(file, rows, "")
}

/// [`append_rows`] with `suffix` after each row (a DP run's `,<ε>`).
pub fn append_rows_with(file: &mut std::fs::File, rows: &[MetricRow], suffix: &str) -> Result<()> {
    let mut text = String::new();
    for r in rows {
        text.push_str(&r.csv());
        text.push_str(suffix);
        text.push('\n');
    }
    file.write_all(text.as_bytes())
        .and_then(|()| file.sync_data())
        .context("cannot write metrics.csv")
}

/// Reads `metrics.csv` back: accuracy per (client, split) per round.
pub fn read_metrics(path: &Path) -> Result<Vec<MetricRow>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut rows = Vec::new();
    for (i, line) in text.lines().enumerate().skip(1) {
        let f: Vec<&str> = line.split(',').collect();
        let bad = || format!("{} line {}: malformed row {line:?}", path.display(), i + 1);
        // A DP run's rows carry a seventh column, the cumulative ε.
        anyhow::ensure!(f.len() == 6 || f.len() == 7, bad());
        let split = match f[2] {
            "train" => "train",
            "val" => "val",
            "test" => "test",
            _ => anyhow::bail!(bad()),
        };
        rows.push(MetricRow {
            round: f[0].parse().with_context(bad)?,
            client: f[1].to_string(),
            split,
            accuracy: f[3].parse().with_context(bad)?,
            samples: f[4].parse().with_context(bad)?,
            loss: if f[5].is_empty() {
                None
            } else {
                Some(f[5].parse().with_context(bad)?)
            },
        });
    }
    Ok(rows)
}

/// Accuracy per round per client: the `test` split (held-out domains have only that), with
/// each training client's `val` dashed beside it.
pub fn plot_accuracy(path: &Path, rows: &[MetricRow], title: &str) -> Result<()> {
    let mut series: BTreeMap<(String, &str), Vec<(f64, f64)>> = BTreeMap::new();
    for r in rows.iter().filter(|r| r.split != "train") {
        series
            .entry((r.client.clone(), r.split))
            .or_default()
            .push((r.round as f64, 100.0 * r.accuracy));
    }
    let max_round = rows.iter().map(|r| r.round).max().unwrap_or(0).max(1) as f64;
    let root = SVGBackend::new(path, (900, 540)).into_drawing_area();
    let draw = || -> std::result::Result<(), Box<dyn std::error::Error>> {
        root.fill(&WHITE)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(50)
            .build_cartesian_2d(0f64..max_round, 0f64..100f64)?;
        chart
            .configure_mesh()
            .x_desc("round")
            .y_desc("accuracy (%)")
            .draw()?;
        let clients: Vec<String> = {
            let mut c: Vec<String> = series.keys().map(|(c, _)| c.clone()).collect();
            c.dedup();
            c
        };
        for ((client, split), points) in &series {
            let idx = clients.iter().position(|c| c == client).unwrap_or(0);
            let color = Palette99::pick(idx).to_rgba();
            let style = if *split == "val" {
                color.stroke_width(1)
            } else {
                color.stroke_width(2)
            };
            let label = format!("{client} {split}");
            chart
                .draw_series(LineSeries::new(points.iter().copied(), style))?
                .label(label)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], style));
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .position(SeriesLabelPosition::LowerRight)
            .draw()?;
        root.present()?;
        Ok(())
    };
    draw().map_err(|e| anyhow::anyhow!("cannot draw {}: {e}", path.display()))
}

/// `summary.json`.
#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    pub method: String,
    /// The server optimiser, when it is not plain averaging (`fedadam`, …).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_opt: Option<String>,
    pub rounds_run: u32,
    /// The round with the best mean validation accuracy over training clients (as the
    /// reference selects), and the accuracies at that round.
    pub best_round: Option<u32>,
    pub best_mean_val_accuracy: Option<f64>,
    /// client → split → accuracy, at the best round.
    pub best_round_accuracy: BTreeMap<String, BTreeMap<String, f64>>,
    /// Held-out domains' test accuracy at the best round.
    pub held_out_test_accuracy: BTreeMap<String, f64>,
    /// Mean test accuracy over training clients at the best round.
    pub mean_client_test_accuracy: Option<f64>,
    pub seconds_extracting: f64,
    pub seconds_training: f64,
    pub images_extracted: usize,
    pub images_from_cache: usize,
    /// Parameters sent server→client and client→server, in bytes (f32; Tip-Adapter's labels
    /// as 4-byte indices). Both ways together (`bytes_down + bytes_up`), as before the two were counted apart.
    pub bytes_communicated: u64,
    /// Server → clients, all rounds.
    pub bytes_down: u64,
    /// Clients → server, all rounds.
    pub bytes_up: u64,
    /// Per round (absent for a run resumed from a checkpoint made before rounds were kept).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes_down_per_round: Option<Vec<u64>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes_up_per_round: Option<Vec<u64>>,
    pub adapter_parameters: usize,
    pub clients: usize,
    pub model: String,
    pub model_weights_random: bool,
    /// With `--finetune-local-steps N`: N, and each training client's test accuracy after N
    /// local steps from the final global parameters (see `finetune.rs`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finetune_local_steps: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finetuned_test_accuracy: Option<BTreeMap<String, f64>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mean_finetuned_test_accuracy: Option<f64>,
    /// Images left out with `--skip-bad` (relative to the data root), in dataset order;
    /// absent when none was, so that summaries of clean runs keep their bytes.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub skipped_images: Vec<String>,
    /// The privacy guarantee of a `--dp` run; absent otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dp: Option<super::dp::DpSummary>,
}
