//! Local training only: each client trains its own adapter across rounds and deploys it;
//! nothing is averaged or communicated. A client outside the federation (a held-out domain)
//! deploys the mean of the clients' adapters. With [`Family::Prompt`] this is CoOp per
//! client: each client's own prompt context.

use super::{Bytes, ClientUpdates, Deploy, Deployed, Family, RoundPlan, Sizes, Strategy};
use anyhow::Result;

pub struct Local {
    family: Family,
}

impl Local {
    /// Local training of `family`'s parameters.
    pub fn of(family: Family) -> Self {
        Local { family }
    }
}

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

    fn family(&self) -> Family {
        self.family
    }

    fn configure_evaluate(&self, slot: Option<usize>) -> Deploy {
        slot.map_or(Deploy::MeanOfLocal, Deploy::Own)
    }

    fn deployed(&self) -> Deployed {
        Deployed::EachClient
    }
}
