//! FedCLIP's server: every sampled client starts from the global adapter, the server takes
//! the (uniform or size-weighted) mean (McMahan et al. 2017). With μ this is FedProx
//! (Li et al. 2020): the same, plus the proximal term towards the round's global adapter.
//! The linear probe and CLIP-Adapter are FedAvg over their own parameters ([`FedAvg::of`]).

use super::{Bytes, ClientUpdates, Deploy, Deployed, Family, RoundPlan, Sizes, Strategy};
use crate::federated::aggregate::{client_weights, weighted_mean};
use crate::federated::config::Aggregate;
use anyhow::{Result, ensure};

pub struct FedAvg {
    aggregate: Aggregate,
    /// FedProx's μ; `None` is plain FedAvg.
    proximal_mu: Option<f32>,
    family: Family,
}

impl FedAvg {
    pub fn new(aggregate: Aggregate, proximal_mu: Option<f32>) -> Self {
        FedAvg {
            aggregate,
            proximal_mu,
            family: Family::Attention,
        }
    }

    /// FedAvg over the parameters of `family` instead of the attention adapter.
    pub fn of(self, family: Family) -> Self {
        FedAvg { family, ..self }
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
        // All-zero weights would divide by zero: NaN parameters.
        ensure!(
            weights.is_empty() || weights.iter().sum::<f64>() > 0.0,
            "weighted aggregation: the train sizes of the sampled clients {:?} sum to 0, so \
             there is nothing to weigh their parameters by",
            updates.slots
        );
        Ok(Some(weighted_mean(
            updates.params,
            updates.param_count,
            updates.slots,
            &weights,
        )))
    }

    /// The global parameters down to each sampled client, then its update back up.
    fn bytes(&self, plan: &RoundPlan, sizes: &Sizes) -> Bytes {
        let each_way = (plan.slots.len() * sizes.param_count * 4) as u64;
        Bytes {
            down: each_way,
            up: each_way,
        }
    }

    fn family(&self) -> Family {
        self.family
    }

    fn configure_evaluate(&self, _slot: Option<usize>) -> Deploy {
        Deploy::Global
    }

    fn deployed(&self) -> Deployed {
        Deployed::Global
    }
}
