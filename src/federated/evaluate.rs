//! Stage 4 of a round: every client × split evaluated with what the strategy says the client
//! deploys, as `metrics.csv` rows, and the best-round score.

use super::aggregate::mean_of_rows;
use super::checkpoint::State;
use super::features::{ClientData, SplitData};
use super::report::MetricRow;
use super::strategy::{Deploy, Strategy};
use crate::heads::Classifier;
use anyhow::Result;
use rayon::prelude::*;

/// What the evaluation of one round reads.
pub struct Evaluation<'a> {
    pub clients: &'a [ClientData],
    pub trainees: &'a [usize],
    /// The strategy family's predictions.
    pub classifier: &'a dyn Classifier,
}

impl Evaluation<'_> {
    /// The rows of round `round` (0-based; rows say `round + 1`) and the mean validation
    /// accuracy over training clients (the reference's best-round criterion; NaN when no
    /// training client has validation files). `losses[slot]`
    /// are the slot's step losses this round.
    pub fn round(
        &self,
        round: u32,
        strategy: &dyn Strategy,
        state: &State,
        losses: &[Vec<f32>],
    ) -> Result<(Vec<MetricRow>, f64)> {
        let p = self.classifier.param_count();
        let local_mean = mean_of_rows(&state.clients, p);
        let slots: Vec<Option<usize>> = (0..self.clients.len())
            .map(|c| self.trainees.iter().position(|&t| t == c))
            .collect();
        let deploys: Vec<Deploy> = (slots.iter())
            .map(|&slot| strategy.configure_evaluate(slot))
            .collect();
        // Clients are scored in parallel; rows and the sum below keep client order.
        let per_client: Vec<Vec<MetricRow>> = (self.clients.par_iter().enumerate())
            .map(|(c, client)| {
                let params = match deploys[c] {
                    Deploy::Zeroshot => None,
                    Deploy::Global => Some(&state.global[..]),
                    Deploy::MeanOfLocal => Some(&local_mean[..]),
                    Deploy::Own(s) => Some(&state.clients[s * p..(s + 1) * p]),
                };
                let mean_loss = slots[c].and_then(|s| mean_loss(&losses[s]));
                self.client_rows(round, client, params, mean_loss)
            })
            .collect::<Result<_>>()?;
        let mut val_sum = (0.0, 0usize);
        for (client, rows) in self.clients.iter().zip(&per_client) {
            for r in rows.iter().filter(|r| r.split == "val" && !client.held_out) {
                val_sum = (val_sum.0 + r.accuracy, val_sum.1 + 1);
            }
        }
        let rows = per_client.into_iter().flatten().collect();
        // No validation rows at all: NaN, not a meaningless 0 (see `Rounds::keep_if_best`).
        let mean_val = match val_sum.1 {
            0 => f64::NAN,
            n => val_sum.0 / n as f64,
        };
        Ok((rows, mean_val))
    }
}

impl Evaluation<'_> {
    /// One client's rows: each non-empty split scored with `params`.
    fn client_rows(
        &self,
        round: u32,
        client: &ClientData,
        params: Option<&[f32]>,
        mean_loss: Option<f64>,
    ) -> Result<Vec<MetricRow>> {
        let mut rows = Vec::new();
        for (split, data) in [
            ("train", &client.train),
            ("val", &client.val),
            ("test", &client.test),
        ] {
            if data.is_empty() {
                continue;
            }
            rows.push(MetricRow {
                round: round + 1,
                client: client.name.clone(),
                split,
                accuracy: accuracy(self.classifier, params, data)?,
                samples: data.len(),
                loss: if split == "train" { mean_loss } else { None },
            });
        }
        Ok(rows)
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
    classifier: &dyn Classifier,
    params: Option<&[f32]>,
    split: &SplitData,
) -> Result<f64> {
    if split.is_empty() {
        return Ok(f64::NAN);
    }
    let pred = classifier.predict(params, &split.features)?;
    let right = pred
        .iter()
        .zip(&split.labels)
        .filter(|(p, y)| p == y)
        .count();
    Ok(right as f64 / split.len() as f64)
}
