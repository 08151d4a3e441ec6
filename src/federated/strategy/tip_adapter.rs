//! Tip-Adapter and Tip-Adapter-F (Zhang et al. 2022) federated. Each client's cache is its
//! own training features (keys) and one-hot labels (values); for its own test data a
//! client deploys its own cache (personalization). The server's cache, which a held-out
//! domain deploys, is the union of the clients' caches: their rows concatenated, not
//! averaged. Tip-Adapter trains nothing and runs one round; Tip-Adapter-F fine-tunes each
//! client's keys for `--local-epochs` per round with the run's optimiser, and the union is
//! rebuilt from the new keys every round.
//!
//! Bytes: every sampled client sends its cache up each round, N_k keys as f32 and N_k labels
//! as 4-byte class indices (the one-hot values are rebuilt from them): N_k (4d + 4). Nothing
//! is sent down to training clients, who keep their own keys. A held-out client deploying
//! the union would download Σ N_k (4d + 4) bytes once; that is not counted per round.

use super::{Bytes, ClientUpdates, Deploy, Deployed, Family, RoundPlan, Sizes, Strategy};
use crate::federated::config::MethodOptions;
use anyhow::Result;

pub struct TipAdapter {
    options: MethodOptions,
    /// Tip-Adapter-F.
    fine_tune: bool,
}

impl TipAdapter {
    pub fn new(options: MethodOptions, fine_tune: bool) -> Self {
        TipAdapter { options, fine_tune }
    }
}

impl Strategy for TipAdapter {
    fn rounds(&self, requested: u32) -> u32 {
        if self.fine_tune { requested } else { 1 }
    }

    fn local_epochs(&self, requested: u32) -> u32 {
        if self.fine_tune { requested } else { 0 }
    }

    fn configure_train(
        &self,
        _round: u32,
        sampled: Vec<usize>,
        _global: &[f32],
    ) -> Option<RoundPlan> {
        Some(RoundPlan {
            slots: sampled,
            start: None,
            anchor: None,
            mu: 0.0,
        })
    }

    /// The union of every training client's cache (the rows of clients not sampled this
    /// round are their last ones).
    fn aggregate_train(
        &mut self,
        _round: u32,
        _global: &[f32],
        updates: &ClientUpdates,
    ) -> Result<Option<Vec<f32>>> {
        Ok(Some(updates.params.to_vec()))
    }

    fn bytes(&self, plan: &RoundPlan, sizes: &Sizes) -> Bytes {
        let up = (plan.slots.iter())
            .map(|&s| sizes.train_sizes.get(s).copied().unwrap_or(0) as u64)
            .map(|n| n * (4 * sizes.dim as u64 + 4))
            .sum();
        Bytes { down: 0, up }
    }

    fn configure_evaluate(&self, slot: Option<usize>) -> Deploy {
        slot.map_or(Deploy::Global, Deploy::Own)
    }

    fn deployed(&self) -> Deployed {
        Deployed::EachClient
    }

    fn family(&self) -> Family {
        Family::TipCache {
            alpha: self.options.tip_alpha,
            beta: self.options.tip_beta,
            train_keys: self.fine_tune,
        }
    }
}
