//! `state.safetensors`: everything a resumed run needs to continue exactly where the last
//! finished round left it, the strategy's own server tensors included.

use super::strategy::Bytes;
use crate::adapter::OptimizerState;
use crate::io::write_safetensors;
use anyhow::{Context, Result, ensure};
use safetensors::SafeTensors;
use std::collections::HashMap;
use std::path::Path;

pub const STATE_FILE: &str = "state.safetensors";

/// Tensor names of the strategy's server state start with this (e.g. `server.m`).
const SERVER_PREFIX: &str = "server.";

/// The run's state after its last finished round.
pub struct State {
    /// Rounds finished so far.
    pub rounds_done: u32,
    pub global: Vec<f32>,
    /// `[K, P]`, one row per training client.
    pub clients: Vec<f32>,
    /// (round, mean val accuracy, deployed parameters) of the best round so far.
    pub best: Option<(u32, f64, Vec<f32>)>,
    pub seconds_training: f64,
    /// Bytes moved so far, each way.
    pub bytes: Bytes,
    /// Each finished round's bytes; `None` for a run checkpointed before they were kept.
    pub bytes_per_round: Option<Vec<Bytes>>,
    /// Kept across rounds only with `--keep-optimizer-state`, so only then checkpointed.
    pub optimizer: Option<OptimizerState>,
    /// The strategy's server tensors ([`super::strategy::Strategy::state`]).
    pub server: Vec<(String, Vec<f32>)>,
}

impl State {
    /// Adds one finished round's bytes.
    pub fn count_bytes(&mut self, round: Bytes) {
        self.bytes.down += round.down;
        self.bytes.up += round.up;
        if let Some(v) = &mut self.bytes_per_round {
            v.push(round);
        }
    }

    pub fn save(&self, dir: &Path) -> Result<()> {
        let mut meta = HashMap::new();
        meta.insert("rounds_done".to_string(), self.rounds_done.to_string());
        meta.insert(
            "seconds_training".to_string(),
            self.seconds_training.to_string(),
        );
        meta.insert("bytes".to_string(), self.bytes.total().to_string());
        meta.insert("bytes_down".to_string(), self.bytes.down.to_string());
        meta.insert("bytes_up".to_string(), self.bytes.up.to_string());
        for (name, values) in [
            ("global", &self.global),
            ("clients", &self.clients),
            (
                "best",
                &self.best.as_ref().map_or(Vec::new(), |b| b.2.clone()),
            ),
        ] {
            ensure!(
                values.iter().all(|x| x.is_finite()),
                "not writing {}: its `{name}` parameters are not finite",
                dir.join(STATE_FILE).display()
            );
        }
        if let Some(v) = &self.bytes_per_round {
            meta.insert(
                "bytes_per_round_runs".to_string(),
                serde_json::to_string(&runs_of(v))?,
            );
        }
        let server: Vec<(String, &[f32])> = self
            .server
            .iter()
            .map(|(n, v)| (format!("{SERVER_PREFIX}{n}"), v.as_slice()))
            .collect();
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
        for (name, v) in &server {
            tensors.push((name, vec![v.len()], v));
        }
        write_safetensors(&dir.join(STATE_FILE), &tensors, meta)
    }

    /// Loads `<dir>/state.safetensors` of a run configured for `max_rounds` rounds; a
    /// `rounds_done` beyond that is refused (the file is not this run's).
    pub fn load(dir: &Path, max_rounds: u32) -> Result<State> {
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
        let rounds_done: u32 = num("rounds_done")?
            .parse()
            .with_context(|| bad("rounds_done"))?;
        ensure!(
            rounds_done <= max_rounds,
            "{}",
            bad(&format!(
                "rounds_done is {rounds_done}, more than the {max_rounds} rounds its config.json \
                 asks for, so it is not this run's checkpoint"
            ))
        );
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
        let total: u64 = num("bytes")?.parse().with_context(|| bad("bytes"))?;
        let bytes = match (meta.get("bytes_down"), meta.get("bytes_up")) {
            (Some(d), Some(u)) => Bytes {
                down: d.parse().with_context(|| bad("bytes_down"))?,
                up: u.parse().with_context(|| bad("bytes_up"))?,
            },
            // Saved before the two ways were counted apart: every method then sent as much
            // down as up, so half each is exact.
            _ => Bytes {
                down: total / 2,
                up: total - total / 2,
            },
        };
        let bytes_per_round = match (
            meta.get("bytes_per_round_runs"),
            meta.get("bytes_per_round"),
        ) {
            (Some(text), _) => {
                let runs: Vec<[u64; 3]> =
                    serde_json::from_str(text).with_context(|| bad("bytes_per_round_runs"))?;
                Some(expand_runs(&runs, rounds_done).with_context(|| bad("bytes_per_round_runs"))?)
            }
            // Written before the rounds were run-length coded: one pair per round.
            (None, Some(text)) => {
                let pairs: Vec<[u64; 2]> =
                    serde_json::from_str(text).with_context(|| bad("bytes_per_round"))?;
                Some(pairs.iter().map(|&[down, up]| Bytes { down, up }).collect())
            }
            (None, None) => None,
        };
        let mut server = Vec::new();
        for name in st.names() {
            if let Some(short) = name.strip_prefix(SERVER_PREFIX) {
                server.push((short.to_string(), tensor(name)?));
            }
        }
        server.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(State {
            optimizer,
            rounds_done,
            global: tensor("global")?,
            clients: tensor("clients")?,
            best,
            seconds_training: num("seconds_training")?
                .parse()
                .with_context(|| bad("seconds_training"))?,
            bytes,
            bytes_per_round,
            server,
        })
    }
}

/// Each finished round's bytes as runs of equal rounds, `[down, up, rounds]`: most methods
/// move the same bytes every round, so the checkpoint stays a few numbers long instead of
/// growing with the round count (its size, and the time to write it, once grew with the
/// square of the rounds run).
fn runs_of(per_round: &[Bytes]) -> Vec<[u64; 3]> {
    let mut runs: Vec<[u64; 3]> = Vec::new();
    for b in per_round {
        match runs.last_mut() {
            Some(r) if r[0] == b.down && r[1] == b.up => r[2] += 1,
            _ => runs.push([b.down, b.up, 1]),
        }
    }
    runs
}

/// The inverse of [`runs_of`] for a checkpoint of `rounds_done` rounds: the runs must
/// count exactly that many (checked before anything is allocated).
fn expand_runs(runs: &[[u64; 3]], rounds_done: u32) -> Result<Vec<Bytes>> {
    let total: u64 = runs.iter().map(|r| r[2]).fold(0, u64::saturating_add);
    ensure!(
        total == u64::from(rounds_done),
        "the runs count {total} rounds, not the {rounds_done} finished"
    );
    let mut out = Vec::with_capacity(total as usize);
    for &[down, up, n] in runs {
        out.extend(std::iter::repeat_n(Bytes { down, up }, n as usize));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_round_bytes_are_run_length_coded_and_round_trip() {
        let b = |down, up| Bytes { down, up };
        let rounds = vec![b(4, 4), b(4, 4), b(4, 0), b(4, 4), b(4, 4), b(4, 4)];
        let runs = runs_of(&rounds);
        assert_eq!(runs, vec![[4, 4, 2], [4, 0, 1], [4, 4, 3]]);
        assert_eq!(expand_runs(&runs, 6).unwrap(), rounds);
        // 16,000 equal rounds are one run.
        assert_eq!(runs_of(&vec![b(8, 8); 16_000]).len(), 1);
        assert!(runs_of(&[]).is_empty());
        for bad in [[1, 1, u64::MAX], [1, 1, 5]] {
            let err = expand_runs(&[bad], 6).unwrap_err().to_string();
            assert!(err.contains("not the 6 finished"), "{err}");
        }
    }
}
