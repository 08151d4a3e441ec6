//! CLIP zero-shot: no adapter, nothing trained or sent; one evaluation round.

use super::{Bytes, ClientUpdates, Deploy, Deployed, RoundPlan, Sizes, Strategy};
use anyhow::Result;

pub struct Zeroshot;

impl Strategy for Zeroshot {
    fn rounds(&self, _requested: u32) -> u32 {
        1
    }

    fn configure_train(
        &self,
        _round: u32,
        _sampled: Vec<usize>,
        _global: &[f32],
    ) -> Option<RoundPlan> {
        None
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

    fn configure_evaluate(&self, _slot: Option<usize>) -> Deploy {
        Deploy::Zeroshot
    }

    fn deployed(&self) -> Deployed {
        Deployed::Nothing
    }
}
