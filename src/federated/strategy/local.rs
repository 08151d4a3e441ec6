//! Local training only: each client trains its own adapter across rounds and deploys it;
//! nothing is averaged or communicated. A client outside the federation (a held-out domain)
//! deploys the mean of the clients' adapters.

use super::{Bytes, ClientUpdates, Deploy, Deployed, RoundPlan, Sizes, Strategy};
use anyhow::Result;

pub struct Local;

impl Strategy for Local {
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

    fn aggregate_train(
        &mut self,
        _round: u32,
        _global: &[f32],
        _updates: &ClientUpdates,
    ) -> Result<Option<Vec<f32>>> {
        Ok(None)
    }

    fn bytes(&self, _plan: &RoundPlan, _sizes: &Sizes) -> Bytes {
        Bytes::default()
    }

    fn configure_evaluate(&self, slot: Option<usize>) -> Deploy {
        slot.map_or(Deploy::MeanOfLocal, Deploy::Own)
    }

    fn deployed(&self) -> Deployed {
        Deployed::EachClient
    }
}
