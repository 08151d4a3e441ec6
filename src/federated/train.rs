//! The local update every training strategy shares: `--local-epochs` passes over each sampled
//! client's training split, all sampled clients stepped together as one K-client batch on
//! the trainer ([`AdapterBackend`]), at the round's learning rate ([`RunConfig::round_lr`]).
//! Local epoch `epoch` of round `round` is the run's epoch `round · local_epochs + epoch`; with
//! `--augment-views N` it trains on view `e mod N` of it ([`SplitData::epoch_features`]).

use super::config::RunConfig;
use super::features::{ClientData, SplitData};
use super::strategy::Family;
use crate::adapter::{AdapterBackend, ClientBatch};
use crate::data::rng::RandomState;
use anyhow::{Context, Result};

/// Random-stream tag of the per-round batch order (the data module uses 1 and 2).
const TAG_BATCHES: u32 = 3;

/// Refuses `--batch 1` where the attention adapter trains: its steps skip batches of fewer
/// than two images (the contrastive loss needs a pair; the class loss shares the rule), so
/// every batch would be skipped and nothing trained, silently.
pub fn check_batch(cfg: &RunConfig, family: Family, trains: bool) -> Result<()> {
    let min = cfg.train_config(0.0).min_batch;
    anyhow::ensure!(
        !(trains && family == Family::Attention && cfg.batch < min),
        "--batch {} with --method {} (--loss {}): the adapter's steps skip batches of fewer \
         than {min} images, so nothing would be trained; use --batch {min} or more",
        cfg.batch,
        cfg.method.name(),
        format!("{:?}", cfg.loss).to_lowercase()
    );
    Ok(())
}

/// Runs the local epochs of round `round` for the trainer slots `slots` (`trainees[slot]` is
/// the client) at the round's learning rate. Returns each slot's step losses (empty for
/// slots that did not step).
pub fn local_epochs(
    backend: &mut dyn AdapterBackend,
    cfg: &RunConfig,
    round: u32,
    slots: &[usize],
    clients: &[ClientData],
    trainees: &[usize],
) -> Result<Vec<Vec<f32>>> {
    backend.set_lr(cfg.round_lr(round));
    let mut losses: Vec<Vec<f32>> = vec![Vec::new(); trainees.len()];
    let dim = backend.dim();
    let train = |s: usize| &clients[trainees[s]].train;
    for epoch in 0..cfg.local_epochs {
        // Each sampled client's own shuffled batch order, from (seed, round, client, epoch).
        let orders: Vec<Vec<usize>> = slots
            .iter()
            .map(|&s| {
                RandomState::from_key(&[cfg.seed, TAG_BATCHES, round, s as u32, epoch])
                    .permutation(train(s).len())
            })
            .collect();
        let steps = orders
            .iter()
            .map(|o| o.len().div_ceil(cfg.batch))
            .max()
            .unwrap_or(0);
        for step in 0..steps {
            let buffers: Vec<Option<(Vec<f32>, Vec<u32>)>> = (0..trainees.len())
                .map(|k| {
                    let i = slots.iter().position(|&s| s == k)?;
                    let chunk = orders[i].chunks(cfg.batch).nth(step)?;
                    // The run's epoch count picks the augmented view (if any).
                    let run_epoch = round as u64 * cfg.local_epochs as u64 + epoch as u64;
                    Some(batch_rows(train(k), run_epoch, chunk, dim))
                })
                .collect();
            let batches: Vec<Option<ClientBatch>> = buffers
                .iter()
                .map(|b| b.as_ref().map(|(f, l)| ClientBatch::new(f, l)))
                .collect();
            let step_losses = backend
                .step(&batches)
                .with_context(|| format!("round {round}, local epoch {epoch}, step {step}"))?;
            for (s, loss) in step_losses.iter().enumerate() {
                if let Some(l) = loss {
                    losses[s].push(*l);
                }
            }
        }
    }
    Ok(losses)
}

/// The features (as the run's local epoch `run_epoch` sees them) and labels of rows `rows` of
/// `split`.
fn batch_rows(
    split: &SplitData,
    run_epoch: u64,
    rows: &[usize],
    dim: usize,
) -> (Vec<f32>, Vec<u32>) {
    let source = split.epoch_features(run_epoch);
    let features = rows
        .iter()
        .flat_map(|&i| source[i * dim..(i + 1) * dim].iter().copied())
        .collect();
    (features, rows.iter().map(|&i| split.labels[i]).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::adapter::{AdapterParams, OptimizerState};

    /// Records the first feature of every batch it is given; nothing else is called.
    struct Recorder {
        dim: usize,
        seen: Vec<f32>,
    }

    impl AdapterBackend for Recorder {
        fn num_clients(&self) -> usize {
            1
        }
        fn dim(&self) -> usize {
            self.dim
        }
        fn steps(&self) -> u64 {
            0
        }
        fn step(&mut self, batches: &[Option<ClientBatch<'_>>]) -> Result<Vec<Option<f32>>> {
            let b = batches[0].as_ref().expect("one client, always sampled");
            self.seen.push(b.features[0]);
            Ok(vec![Some(0.0)])
        }
        fn set_proximal(&mut self, _: f32, _: Option<&AdapterParams<f32>>) -> Result<()> {
            unreachable!()
        }
        fn optimizer_state(&self) -> OptimizerState {
            unreachable!()
        }
        fn set_optimizer_state(&mut self, _: &OptimizerState) -> Result<()> {
            unreachable!()
        }
        fn reset(&mut self) {}
        fn set_lr(&mut self, _: f64) {}
        fn client_params(&self, _: usize) -> Result<AdapterParams<f32>> {
            unreachable!()
        }
        fn set_client_params(&mut self, _: usize, _: &AdapterParams<f32>) -> Result<()> {
            unreachable!()
        }
        fn read_all_params(&self) -> Result<Vec<f32>> {
            unreachable!()
        }
        fn write_all_params(&mut self, _: &[f32]) -> Result<()> {
            unreachable!()
        }
        fn predict(&self, _: usize, _: &[f32]) -> Result<Vec<u32>> {
            unreachable!()
        }
    }

    fn config(epochs_per_round: u32) -> RunConfig {
        let mut cfg: RunConfig = serde_json::from_str(
            r#"{"data": "d", "model": "m", "test_domains": [], "method": "fedclip",
            "rounds": 1, "local_epochs": 1, "batch": 4, "lr": 0.1, "weight_decay": 0.0,
            "optimizer": "adam", "keep_optimizer_state": false, "loss": "class", "mu": 0.0,
            "aggregate": "uniform", "seed": 0, "clients_per_domain": 1,
            "dirichlet_alpha": 0.5, "sample_fraction": 1.0, "prompt_template": "{}",
            "extract_batch": 8, "cache_dir": "c", "out": "o"}"#,
        )
        .unwrap();
        cfg.local_epochs = epochs_per_round;
        cfg
    }

    /// A client of 4 rows whose centre features are all 9 and whose view v is all v.
    fn client(views: usize) -> ClientData {
        let dim = 2;
        let split = |views: usize| SplitData {
            features: vec![9.0; 4 * dim],
            labels: vec![0; 4],
            views: (0..views).map(|v| vec![v as f32; 4 * dim]).collect(),
        };
        ClientData {
            name: "c".into(),
            held_out: false,
            train: split(views),
            val: split(0),
            test: split(0),
        }
    }

    /// The feature value each step of `rounds` rounds saw (one step per epoch: batch 4).
    fn seen(views: usize, epochs_per_round: u32, rounds: u32) -> Vec<f32> {
        let cfg = config(epochs_per_round);
        let mut rec = Recorder {
            dim: 2,
            seen: Vec::new(),
        };
        let clients = [client(views)];
        for round in 0..rounds {
            local_epochs(&mut rec, &cfg, round, &[0], &clients, &[0]).unwrap();
        }
        rec.seen
    }

    #[test]
    fn the_runs_epoch_e_trains_on_view_e_mod_n() {
        // 2 local epochs × 3 rounds = run epochs 0..6 → views 0,1,2,0,1,2 with N = 3.
        assert_eq!(seen(3, 2, 3), [0.0, 1.0, 2.0, 0.0, 1.0, 2.0]);
        // One local epoch per round still cycles through the views.
        assert_eq!(seen(2, 1, 3), [0.0, 1.0, 0.0]);
        // No views: the centre crops, every epoch.
        assert_eq!(seen(0, 2, 2), [9.0; 4]);
    }
}
