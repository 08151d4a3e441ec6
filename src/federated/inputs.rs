//! `inputs.json`: what a run was started on, so that `--resume` continues only the same
//! run. It lists every scanned data file (relative to `--data`) with its content hash, and
//! the hashes of the model's weight and tokenizer files, all through the feature cache's
//! file-hash memo (so unchanged files are not read again). A resume on anything else is
//! refused, naming each added, removed or edited file, or the replaced model. Paths play no
//! part: `./data` and `data` are the same dataset, and a dataset or model moved elsewhere
//! with equal content resumes under its new path.

use super::config::RunConfig;
use crate::data::Dataset;
use crate::features::hash::{HashMemo, hex, model_fingerprint};
use crate::features::{CacheOptions, MEMO_FILE};
use crate::io::write_atomic;
use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

pub const INPUTS_FILE: &str = "inputs.json";

/// How many changed files a refusal lists by name before it counts the rest.
const NAMED: usize = 20;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Inputs {
    /// BLAKE3 over the model's config and weight files; `None` when the model could not be
    /// located (opening it then fails with its own message).
    pub model_weights: Option<String>,
    /// BLAKE3 over the model's tokenizer files.
    pub model_tokenizer: Option<String>,
    /// Data file (relative to the data root, `/`-separated) → BLAKE3 of its bytes.
    pub files: BTreeMap<String, String>,
}

impl Inputs {
    /// Hashes `dataset`'s files and `cfg.model`'s through the memo in `cfg.cache_dir`
    /// (saved there when the folder exists; nothing is created before the run directory's
    /// checks, which refuse a cache inside the data).
    pub fn of(cfg: &RunConfig, dataset: &Dataset) -> Result<Inputs> {
        let memo_path = cfg.cache_dir.join(MEMO_FILE);
        let (mut memo, _) = HashMemo::load(&memo_path, CacheOptions::default().racy_window);
        let mut files = BTreeMap::new();
        for sample in dataset.domains.iter().flat_map(|d| &d.samples) {
            let (digest, _) = memo.digest(&sample.path)?;
            files.insert(sample.rel.clone(), hex(&digest));
        }
        let model = model_fingerprint(&cfg.model, &mut memo).ok();
        // The memo is only a speed-up; the feature cache reports a memo it cannot save.
        if cfg.cache_dir.is_dir() {
            let _ = memo.save();
        }
        Ok(Inputs {
            model_weights: model.as_ref().map(|m| m.weights.clone()),
            model_tokenizer: model.map(|m| m.tokenizer),
            files,
        })
    }

    /// What differs from `saved` (the run's record), one line per change.
    pub fn changes_since(&self, saved: &Inputs) -> Vec<String> {
        let mut changes = Vec::new();
        if self.model_weights != saved.model_weights {
            changes.push("the model's weights (config.json or weight files) changed".into());
        }
        if self.model_tokenizer != saved.model_tokenizer {
            changes.push("the model's tokenizer files changed".into());
        }
        for (rel, hash) in &saved.files {
            match self.files.get(rel) {
                None => changes.push(format!("removed: {rel}")),
                Some(h) if h != hash => changes.push(format!("edited: {rel}")),
                Some(_) => {}
            }
        }
        for rel in self.files.keys().filter(|r| !saved.files.contains_key(*r)) {
            changes.push(format!("added: {rel}"));
        }
        changes
    }
}

/// On a new run, records `inputs` in `<out>/inputs.json`. With `resume`, refuses inputs
/// other than the recorded ones, naming what changed; a run recorded before this file
/// existed gets it now, with a warning that its inputs could not be checked.
pub fn record_or_check(out: &Path, inputs: &Inputs, resume: bool) -> Result<()> {
    let path = out.join(INPUTS_FILE);
    if resume {
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                let saved: Inputs = serde_json::from_str(&text).with_context(|| {
                    format!(
                        "--resume: {} is not a fedclip inputs record",
                        path.display()
                    )
                })?;
                return refuse_changes(&path, &inputs.changes_since(&saved));
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => eprintln!(
                "warning: --resume: {} is missing (a run started by an older fedclip); the \
                 data and model cannot be checked against the interrupted run's, and are \
                 recorded now",
                path.display()
            ),
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        }
    }
    write_atomic(&path, serde_json::to_string_pretty(inputs)?.as_bytes())
}

fn refuse_changes(path: &Path, changes: &[String]) -> Result<()> {
    if changes.is_empty() {
        return Ok(());
    }
    let mut listed: Vec<String> = changes.iter().take(NAMED).cloned().collect();
    if changes.len() > NAMED {
        listed.push(format!("… and {} more", changes.len() - NAMED));
    }
    bail!(
        "--resume: the data or model differ from what the interrupted run started on ({}), so \
         it cannot be continued:\n  {}\nrestore them, or start a new run (another --out)",
        path.display(),
        listed.join("\n  ")
    )
}
