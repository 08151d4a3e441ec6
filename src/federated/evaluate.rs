//! Stage 4 of a round: every client × split evaluated with what the strategy says the client
//! deploys, as `metrics.csv` rows, and the best-round score.

use super::aggregate::mean_of_rows;
use super::checkpoint::State;
use super::features::{ClientData, SplitData};
use super::report::MetricRow;
use super::strategy::{Deploy, Strategy};
use crate::adapter::{AdapterParams, TextFeatures, predict};
use anyhow::Result;

/// What the evaluation of one round reads.
pub struct Evaluation<'a> {
    pub clients: &'a [ClientData],
    pub trainees: &'a [usize],
    pub texts: &'a TextFeatures<f32>,
    pub dim: usize,
}

impl Evaluation<'_> {
    /// The rows of round `round` (0-based; rows say `round + 1`) and the mean validation
    /// accuracy over training clients (the reference's best-round criterion). `losses[slot]`
    /// are the slot's step losses this round.
    pub fn round(
        &self,
        round: u32,
        strategy: &dyn Strategy,
        state: &State,
        losses: &[Vec<f32>],
    ) -> Result<(Vec<MetricRow>, f64)> {
        let p = state.global.len();
        let global = AdapterParams::from_flat(self.dim, state.global.clone())?;
        let local_mean = AdapterParams::from_flat(self.dim, mean_of_rows(&state.clients, p))?;
        let mut rows = Vec::new();
        let mut val_sum = (0.0, 0usize);
        for (c, client) in self.clients.iter().enumerate() {
            let slot = self.trainees.iter().position(|&t| t == c);
            let own;
            let params = match strategy.configure_evaluate(slot) {
                Deploy::Zeroshot => None,
                Deploy::Global => Some(&global),
                Deploy::MeanOfLocal => Some(&local_mean),
                Deploy::Own(s) => {
                    own = AdapterParams::from_flat(
                        self.dim,
                        state.clients[s * p..(s + 1) * p].to_vec(),
                    )?;
                    Some(&own)
                }
            };
            let mean_loss = slot.and_then(|s| mean_loss(&losses[s]));
            for (split, data) in [
                ("train", &client.train),
                ("val", &client.val),
                ("test", &client.test),
            ] {
                if data.is_empty() {
                    continue;
                }
                let acc = accuracy(params, data, self.texts)?;
                if split == "val" && !client.held_out {
                    val_sum = (val_sum.0 + acc, val_sum.1 + 1);
                }
                rows.push(MetricRow {
                    round: round + 1,
                    client: client.name.clone(),
                    split,
                    accuracy: acc,
                    samples: data.len(),
                    loss: if split == "train" { mean_loss } else { None },
                });
            }
        }
        Ok((rows, val_sum.0 / val_sum.1.max(1) as f64))
    }
}

/// The mean of a client's step losses this round (the `loss` of its train row), or None
/// when it did not step.
pub fn mean_loss(losses: &[f32]) -> Option<f64> {
    (!losses.is_empty())
        .then(|| losses.iter().map(|&v| v as f64).sum::<f64>() / losses.len() as f64)
}

/// Accuracy of `params` (None: zero-shot) on one split.
pub fn accuracy(
    params: Option<&AdapterParams<f32>>,
    split: &SplitData,
    texts: &TextFeatures<f32>,
) -> Result<f64> {
    if split.is_empty() {
        return Ok(f64::NAN);
    }
    let pred = predict(params, &split.features, texts)?;
    let right = pred
        .iter()
        .zip(&split.labels)
        .filter(|(p, y)| p == y)
        .count();
    Ok(right as f64 / split.len() as f64)
}
