//! Personalization after training (`--finetune-local-steps N`): every training client starts
//! from the final global parameters with a fresh optimiser at the base `--lr` (the round
//! schedule and warm-up do not extend past the rounds), takes N local steps on its own
//! training split, and is tested with the result. It runs after the last checkpoint and
//! changes nothing the rounds saved.
//!
//! Step j of client k uses batch `j mod S` (S = ⌈train / batch⌉) of pass `⌊j / S⌋`, whose
//! order is `RandomState::from_key([seed, 4, k, pass]).permutation(train)`.

use super::config::RunConfig;
use super::evaluate::accuracy;
use super::features::{ClientData, SplitData};
use super::rounds::Rounds;
use super::strategy::Deployed;
use crate::adapter::{AdapterBackend, ClientBatch};
use crate::data::rng::RandomState;
use anyhow::{Context, Result, bail};
use std::collections::BTreeMap;

/// Random-stream tag of the fine-tuning batch order (rounds use 3).
pub const TAG_FINETUNE: u32 = 4;

/// Checks `--finetune-local-steps` against the method: there must be a global model.
pub fn check(steps: u32, deployed: Deployed) -> Result<()> {
    if steps > 0 && deployed != Deployed::Global {
        bail!(
            "--finetune-local-steps needs a method with a global model (fedclip, fedprox, \
             linear-probe, clip-adapter); \
             this one deploys none to start from"
        );
    }
    Ok(())
}

/// The batch of `rows` a client with `n` training samples uses at fine-tuning step `step`.
pub fn batch_rows(seed: u32, slot: usize, n: usize, batch: usize, step: u32) -> Vec<usize> {
    if n == 0 {
        return Vec::new();
    }
    let per_pass = n.div_ceil(batch) as u32;
    let order =
        RandomState::from_key(&[seed, TAG_FINETUNE, slot as u32, step / per_pass]).permutation(n);
    order
        .chunks(batch)
        .nth((step % per_pass) as usize)
        .map(<[usize]>::to_vec)
        .unwrap_or_default()
}

/// Every slot of `backend` from `global` with a fresh optimiser, then `steps` local steps on
/// its own training split (`train[slot]`; an empty split takes none) in the documented batch
/// order. A slot's result does not depend on the others'.
pub fn finetune_rows(
    backend: &mut dyn AdapterBackend,
    cfg: &RunConfig,
    global: &[f32],
    train: &[&SplitData],
    steps: u32,
) -> Result<()> {
    let dim = backend.dim();
    for s in 0..train.len() {
        backend.set_client_row(s, global)?;
    }
    backend.reset();
    backend.set_lr(cfg.lr);
    backend.set_proximal_row(0.0, None)?;
    for step in 0..steps {
        let buffers: Vec<(Vec<f32>, Vec<u32>)> = (train.iter().enumerate())
            .map(|(s, t)| gather(t, &batch_rows(cfg.seed, s, t.len(), cfg.batch, step), dim))
            .collect();
        let batches: Vec<Option<ClientBatch>> = (buffers.iter())
            .map(|(f, l)| (!l.is_empty()).then(|| ClientBatch::new(f, l)))
            .collect();
        backend
            .step(&batches)
            .with_context(|| format!("--finetune-local-steps: step {step}"))?;
    }
    Ok(())
}

impl Rounds<'_> {
    /// Test accuracy of each training client after `steps` local steps from the final
    /// global parameters.
    pub fn finetune(&mut self, steps: u32) -> Result<BTreeMap<String, f64>> {
        let clients: Vec<&ClientData> = (self.trainees.iter())
            .map(|&c| &self.features.clients[c])
            .collect();
        let train: Vec<&SplitData> = clients.iter().map(|c| &c.train).collect();
        finetune_rows(
            &mut *self.backend,
            self.cfg,
            &self.state.global,
            &train,
            steps,
        )?;
        let mut out = BTreeMap::new();
        for (s, c) in clients.iter().enumerate() {
            if !c.test.is_empty() {
                let own = self.backend.client_row(s)?;
                out.insert(
                    c.name.clone(),
                    accuracy(&*self.classifier, Some(&own), &c.test)?,
                );
            }
        }
        Ok(out)
    }
}

fn gather(split: &SplitData, rows: &[usize], dim: usize) -> (Vec<f32>, Vec<u32>) {
    let features = rows
        .iter()
        .flat_map(|&i| split.features[i * dim..(i + 1) * dim].iter().copied())
        .collect();
    (features, rows.iter().map(|&i| split.labels[i]).collect())
}
