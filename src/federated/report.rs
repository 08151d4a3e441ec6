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
    /// The row's fields as `metrics.csv` holds them (accuracy and loss to 6 decimals).
    fn fields(&self) -> [String; 6] {
        [
            self.round.to_string(),
            self.client.clone(),
            self.split.to_string(),
            format!("{:.6}", self.accuracy),
            self.samples.to_string(),
            self.loss.map_or(String::new(), |l| format!("{l:.6}")),
        ]
    }

    /// The row as one CSV line (no line end). A client name with a comma, quote or line
    /// break is quoted, so it reads back as written; ordinary names are written bare.
    pub fn csv(&self) -> String {
        let line = csv_lines([self.fields()]);
        line.strip_suffix('\n').unwrap_or(&line).to_string()
    }

    /// Parses one record of `metrics.csv`; `None` if it is not a well-formed row.
    fn parse(record: &csv::StringRecord) -> Option<MetricRow> {
        // A DP run's rows carry a seventh field, the cumulative ε.
        if record.len() != 6 && record.len() != 7 {
            return None;
        }
        let split = match &record[2] {
            "train" => "train",
            "val" => "val",
            "test" => "test",
            _ => return None,
        };
        Some(MetricRow {
            round: record[0].parse().ok()?,
            client: record[1].to_string(),
            split,
            accuracy: record[3].parse().ok()?,
            samples: record[4].parse().ok()?,
            loss: match &record[5] {
                "" => None,
                l => Some(l.parse().ok()?),
            },
        })
    }
}

/// Records as CSV text, each line ended by `\n`, quoting only fields that need it.
fn csv_lines<R, F>(records: impl IntoIterator<Item = R>) -> String
where
    R: IntoIterator<Item = F>,
    F: AsRef<[u8]>,
{
    let mut w = csv::WriterBuilder::new()
        .terminator(csv::Terminator::Any(b'\n'))
        .from_writer(Vec::new());
    for r in records {
        w.write_record(r)
            .expect("writing CSV to memory cannot fail");
    }
    let bytes = w.into_inner().expect("writing CSV to memory cannot fail");
    String::from_utf8(bytes).expect("CSV of UTF-8 fields is UTF-8")
}

/// `text` (a `metrics.csv`) read as records after its header, each with its line number.
/// A final line without its line end is a row cut by a kill mid-write: it is left out.
fn records(path: &Path, text: &str, headers: &[&str]) -> Result<Vec<(u64, csv::StringRecord)>> {
    let complete = match text.rfind('\n') {
        Some(end) => &text[..=end],
        None => "",
    };
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .from_reader(complete.as_bytes());
    let mut out = Vec::new();
    for (i, record) in reader.records().enumerate() {
        let record = record.with_context(|| format!("{}: not CSV", path.display()))?;
        let line = record.position().map_or(i as u64 + 1, |p| p.line());
        if i == 0 {
            let header = record.iter().collect::<Vec<_>>().join(",");
            anyhow::ensure!(
                headers.contains(&header.as_str()),
                "{} line 1: not the header {:?} of a fedclip metrics.csv",
                path.display(),
                headers[0]
            );
            continue;
        }
        out.push((line, record));
    }
    Ok(out)
}

/// The rows of the `rounds_done` finished rounds in `path`, as a resumed run keeps them:
/// rows of later rounds (written by the interrupted round before its checkpoint) and a cut
/// last line are dropped. Refused, before any round trains, when a row is malformed or the
/// file lacks a finished round's rows (deleted or cut), because those rows cannot be made
/// again from the checkpoint and the summary would silently lose them.
fn finished_rows(path: &Path, rounds_done: u32, header: &str) -> Result<Vec<csv::StringRecord>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && rounds_done == 0 => String::new(),
        Err(e) => {
            return Err(e).with_context(|| {
                format!(
                    "cannot read {} ({rounds_done} rounds finished: their rows cannot be made \
                     again from the checkpoint; restore the file, or delete the run directory \
                     to start over)",
                    path.display()
                )
            });
        }
    };
    let mut kept = Vec::new();
    let mut seen = vec![false; rounds_done as usize];
    for (line, record) in records(path, &text, &[header])? {
        let row = MetricRow::parse(&record).with_context(|| {
            format!(
                "{} line {line}: malformed row {:?}; fix or delete the line, or delete the run \
                 directory to start over",
                path.display(),
                record.iter().collect::<Vec<_>>().join(",")
            )
        })?;
        if row.round >= 1 && row.round <= rounds_done {
            seen[row.round as usize - 1] = true;
            kept.push(record);
        }
    }
    let missing: Vec<String> = (seen.iter().enumerate())
        .filter(|(_, s)| !**s)
        .map(|(r, _)| (r + 1).to_string())
        .collect();
    anyhow::ensure!(
        missing.is_empty(),
        "{} has no rows for round(s) {} of the {rounds_done} the checkpoint says finished (the \
         file was cut or edited); they cannot be made again from the checkpoint: restore the \
         file, or delete the run directory to start over",
        path.display(),
        missing.join(", ")
    );
    Ok(kept)
}

/// Keeps the rows of rounds before `keep_before` (a resumed run drops what the interrupted
/// one wrote after its last checkpoint), and returns a writer that appends. Refuses a file
/// that lacks a kept round's rows or has a malformed row (see [`finished_rows`]).
pub fn open_metrics(path: &Path, keep_before: u32) -> Result<std::fs::File> {
    open_metrics_with_header(path, keep_before, METRICS_HEADER)
}

/// [`open_metrics`] with another header (a DP run's adds `,epsilon`).
pub fn open_metrics_with_header(
    path: &Path,
    keep_before: u32,
    header: &str,
) -> Result<std::fs::File> {
    let kept = finished_rows(path, keep_before.saturating_sub(1), header)?;
    let text = csv_lines([header.split(',')]) + &csv_lines(kept.iter());
    crate::io::write_atomic(path, text.as_bytes())?;
    std::fs::OpenOptions::new()
        .append(true)
        .open(path)
        .with_context(|| format!("cannot append to {}", path.display()))
}

/// Checks, without writing, that `path` holds every row of the `rounds_done` finished
/// rounds (what [`open_metrics`] will keep): `--resume` calls it before any slow work.
pub fn check_metrics(path: &Path, rounds_done: u32, header: &str) -> Result<()> {
    finished_rows(path, rounds_done, header).map(|_| ())
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
    anyhow::ensure!(
        text.is_empty() || text.ends_with('\n'),
        "{}: the last line is cut off",
        path.display()
    );
    let mut rows = Vec::new();
    let dp_header = format!("{METRICS_HEADER},epsilon");
    for (line, record) in records(path, &text, &[METRICS_HEADER, &dp_header])? {
        rows.push(MetricRow::parse(&record).with_context(|| {
            format!(
                "{} line {line}: malformed row {:?}",
                path.display(),
                record.iter().collect::<Vec<_>>().join(",")
            )
        })?);
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
