//! `<sweep dir>/sweep.json`: the grid and the settings every run shares. Written by the first
//! invocation; every later one (another shard, a rerun after a crash) must ask for the same
//! sweep, or it is refused naming what differs.

use super::grid::Grid;
use crate::federated::RunConfig;
use crate::io::write_atomic;
use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::path::Path;

pub const MANIFEST_FILE: &str = "sweep.json";

/// The settings that differ per cell, left out of the shared ones.
const PER_CELL: [&str; 4] = ["method", "test_domains", "seed", "out"];
/// Shared settings that never change a result, so may differ between invocations (as
/// `--resume` allows): where the cache is, how it is filled.
const FREE: [&str; 3] = ["cache_dir", "extract_batch", "max_image_pixels"];

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub grid: Grid,
    /// Every cell's run directory, in grid order.
    pub runs: Vec<String>,
    /// The `fedclip run` settings all cells share (a run's `config.json` less its cell's
    /// method, held-out domain, seed and directory).
    pub settings: Map<String, Value>,
}

impl Manifest {
    pub fn new(grid: Grid, template: &RunConfig) -> Result<Manifest> {
        let runs = grid.cells().iter().map(|c| c.dir_name()).collect();
        Ok(Manifest {
            grid,
            runs,
            settings: shared_settings(template)?,
        })
    }

    pub fn read(dir: &Path) -> Result<Manifest> {
        let path = dir.join(MANIFEST_FILE);
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        serde_json::from_str(&text)
            .with_context(|| format!("{} is not a fedclip sweep manifest", path.display()))
    }

    /// Writes the manifest into a new sweep directory, or checks that the one there asks for
    /// the same sweep. Concurrent shards write identical bytes, so their race is harmless.
    pub fn write_or_check(&self, dir: &Path) -> Result<()> {
        let path = dir.join(MANIFEST_FILE);
        if !path.exists() {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
        }
        // Shards starting together take turns: the first writes, the others check.
        let _turn = super::lock_sweep(dir)?;
        if !path.exists() {
            let mut entries =
                std::fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))?;
            if entries.any(|e| e.is_ok_and(|e| e.file_name() != super::SWEEP_LOCK)) {
                bail!(
                    "--out {} is not empty and holds no {MANIFEST_FILE}: it is not a fedclip sweep \
                     directory; choose a new or empty folder",
                    dir.display()
                );
            }
            return write_atomic(&path, serde_json::to_string_pretty(self)?.as_bytes());
        }
        let saved = Manifest::read(dir)?;
        let diff = self.differences(&saved);
        if !diff.is_empty() {
            bail!(
                "the sweep in {} was started with other settings ({}); rerun it with its own \
                 flags, or choose another --out:\n  {}",
                dir.display(),
                path.display(),
                diff.join("\n  ")
            );
        }
        Ok(())
    }

    /// Each grid axis or shared setting that differs from `saved`, named as its flag.
    fn differences(&self, saved: &Manifest) -> Vec<String> {
        let mut diff = Vec::new();
        let axes = [
            (
                "--methods",
                names(&self.grid.methods),
                names(&saved.grid.methods),
            ),
            (
                "--test-domains",
                self.grid.test_domains.join(","),
                saved.grid.test_domains.join(","),
            ),
            (
                "--seeds",
                joined(&self.grid.seeds),
                joined(&saved.grid.seeds),
            ),
        ];
        for (flag, now, was) in axes {
            if now != was {
                diff.push(format!("{flag}: now {now}, the sweep has {was}"));
            }
        }
        let keys = (self.settings.keys()).chain(
            saved
                .settings
                .keys()
                .filter(|k| !self.settings.contains_key(*k)),
        );
        for key in keys {
            if FREE.contains(&key.as_str()) {
                continue;
            }
            let (now, was) = (self.settings.get(key), saved.settings.get(key));
            if now != was {
                let show = |v: Option<&Value>| v.map_or("absent".into(), Value::to_string);
                diff.push(format!(
                    "{} ({key}): now {}, the sweep has {}",
                    flag_of(key),
                    show(now),
                    show(was)
                ));
            }
        }
        diff
    }
}

/// The run config as JSON, less the per-cell settings.
fn shared_settings(template: &RunConfig) -> Result<Map<String, Value>> {
    let Value::Object(mut map) = serde_json::to_value(template)? else {
        bail!("a run config serialises to a JSON object");
    };
    for key in PER_CELL {
        map.remove(key);
    }
    Ok(map)
}

/// The `fedclip run` flag of a config key: `local_epochs` → `--local-epochs`.
fn flag_of(key: &str) -> String {
    format!("--{}", key.replace('_', "-"))
}

fn names(methods: &[crate::federated::Method]) -> String {
    methods
        .iter()
        .map(|m| m.name())
        .collect::<Vec<_>>()
        .join(",")
}

fn joined(seeds: &[u32]) -> String {
    seeds
        .iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(",")
}
