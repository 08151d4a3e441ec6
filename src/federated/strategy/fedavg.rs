//! FedCLIP's server: every sampled client starts from the global adapter, the server takes
//! the (uniform or size-weighted) mean (McMahan et al. 2017). With μ this is FedProx
//! (Li et al. 2020): the same, plus the proximal term towards the round's global adapter.

use super::{ClientUpdates, Deploy, Deployed, RoundPlan, Strategy};
use crate::federated::aggregate::{client_weights, weighted_mean};
use crate::federated::config::Aggregate;
use anyhow::Result;

pub struct FedAvg {
    aggregate: Aggregate,
    /// FedProx's μ; `None` is plain FedAvg.
    proximal_mu: Option<f32>,
}

impl FedAvg {
    pub fn new(aggregate: Aggregate, proximal_mu: Option<f32>) -> Self {
        FedAvg {
            aggregate,
            proximal_mu,
        }
    }
}

impl Strategy for FedAvg {
    fn configure_train(
        &self,
        _round: u32,
        sampled: Vec<usize>,
        global: &[f32],
    ) -> Option<RoundPlan> {
        Some(RoundPlan {
            slots: sampled,
            start: Some(global.to_vec()),
            anchor: self.proximal_mu.map(|_| global.to_vec()),
            mu: self.proximal_mu.unwrap_or(0.0),
        })
    }

    fn aggregate_train(
        &mut self,
        _round: u32,
        _global: &[f32],
        updates: &ClientUpdates,
    ) -> Result<Option<Vec<f32>>> {
        let weights = client_weights(self.aggregate, updates.slots, updates.train_sizes);
        Ok(Some(weighted_mean(
            updates.params,
            updates.param_count,
            updates.slots,
            &weights,
        )))
    }

    /// The global adapter down to each sampled client, then its update back up.
    fn bytes_communicated(&self, plan: &RoundPlan, param_count: usize) -> u64 {
        2 * (plan.slots.len() * param_count * 4) as u64
    }

    fn configure_evaluate(&self, _slot: Option<usize>) -> Deploy {
        Deploy::Global
    }

    fn deployed(&self) -> Deployed {
        Deployed::Global
    }
}
