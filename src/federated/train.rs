//! The local update every training strategy shares: `--local-epochs` passes over each sampled
//! client's training split, all sampled clients stepped together as one K-client batch on
//! the trainer ([`AdapterBackend`]).

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
/// the client). Returns each slot's step losses (empty for slots that did not step).
pub fn local_epochs(
    backend: &mut dyn AdapterBackend,
    cfg: &RunConfig,
    round: u32,
    slots: &[usize],
    clients: &[ClientData],
    trainees: &[usize],
) -> Result<Vec<Vec<f32>>> {
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
                    Some(batch_rows(train(k), chunk, dim))
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

/// The features and labels of rows `rows` of `split`.
fn batch_rows(split: &SplitData, rows: &[usize], dim: usize) -> (Vec<f32>, Vec<u32>) {
    let features = rows
        .iter()
        .flat_map(|&i| split.features[i * dim..(i + 1) * dim].iter().copied())
        .collect();
    (features, rows.iter().map(|&i| split.labels[i]).collect())
}
