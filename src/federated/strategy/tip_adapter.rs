//! Tip-Adapter and Tip-Adapter-F (Zhang et al. 2022) federated. Each client's cache is its
//! own training features (keys) and one-hot labels (values); for its own test data a
//! client deploys its own cache (personalization). The server's cache, which a held-out
//! domain deploys, is the union of the clients' caches: their rows concatenated, not
//! averaged. Tip-Adapter trains nothing and runs one round; Tip-Adapter-F fine-tunes each
//! client's keys for `--local-epochs` per round with the run's optimiser, and the union is
//! rebuilt from the new keys every round. The union holds only the caches the server has
//! received: a client not yet sampled (`--sample-fraction`) has its row zeroed there, which
//! is an empty cache (all padding).
//!
//! Bytes: every sampled client sends its cache up each round, N_k keys as f32 and N_k labels
//! as 4-byte class indices (the one-hot values are rebuilt from them): N_k (4d + 4). Nothing
//! is sent down to training clients, who keep their own keys. A held-out client deploying
//! the union would download Σ N_k (4d + 4) bytes once; that is not counted per round.

use super::{Bytes, ClientUpdates, Deploy, Deployed, Family, RoundPlan, Sizes, Strategy};
use crate::federated::config::MethodOptions;
use anyhow::{Result, bail, ensure};

pub struct TipAdapter {
    options: MethodOptions,
    /// Tip-Adapter-F.
    fine_tune: bool,
    /// Per trainer slot: whether the server has received its cache (checkpointed).
    received: Vec<bool>,
}

impl TipAdapter {
    pub fn new(options: MethodOptions, fine_tune: bool) -> Self {
        TipAdapter {
            options,
            fine_tune,
            received: Vec::new(),
        }
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

    /// The union of the caches received so far: every slot's latest row (clients not sampled
    /// this round keep the one they sent last), rows never sent zeroed.
    fn aggregate_train(
        &mut self,
        _round: u32,
        _global: &[f32],
        updates: &ClientUpdates,
    ) -> Result<Option<Vec<f32>>> {
        let p = updates.param_count;
        let k = updates.params.len() / p;
        self.received.resize(k, false);
        for &s in updates.slots {
            self.received[s] = true;
        }
        let mut union = updates.params.to_vec();
        for (row, _) in (union.chunks_exact_mut(p).zip(&self.received)).filter(|(_, r)| !**r) {
            row.fill(0.0);
        }
        Ok(Some(union))
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

    fn state(&self) -> Vec<(String, Vec<f32>)> {
        if self.received.is_empty() {
            return Vec::new();
        }
        let flags = self.received.iter().map(|&r| if r { 1.0 } else { 0.0 });
        vec![("received".into(), flags.collect())]
    }

    fn load_state(&mut self, saved: &[(String, Vec<f32>)]) -> Result<()> {
        match saved {
            [] => self.received.clear(),
            [(name, flags)] if name == "received" => {
                ensure!(
                    flags.iter().all(|&f| f == 0.0 || f == 1.0),
                    "the checkpoint's Tip-Adapter state is not a set of flags"
                );
                self.received = flags.iter().map(|&f| f == 1.0).collect();
            }
            _ => bail!("the checkpoint holds server state Tip-Adapter does not use"),
        }
        Ok(())
    }

    fn family(&self) -> Family {
        Family::TipCache {
            alpha: self.options.tip_alpha,
            beta: self.options.tip_beta,
            train_keys: self.fine_tune,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_union_holds_only_the_caches_received() {
        let mut tip = TipAdapter::new(MethodOptions::default(), true);
        let params: Vec<f32> = (1..=6).map(|v| v as f32).collect(); // 3 rows of 2
        let sizes = [1, 1, 1];
        let round = |tip: &mut TipAdapter, slots: &[usize]| {
            let updates = ClientUpdates {
                slots,
                params: &params,
                param_count: 2,
                train_sizes: &sizes,
            };
            tip.aggregate_train(0, &[], &updates).unwrap().unwrap()
        };
        assert_eq!(round(&mut tip, &[1]), [0.0, 0.0, 3.0, 4.0, 0.0, 0.0]);
        assert_eq!(round(&mut tip, &[2]), [0.0, 0.0, 3.0, 4.0, 5.0, 6.0]);
        let saved = tip.state();
        let mut resumed = TipAdapter::new(MethodOptions::default(), true);
        resumed.load_state(&saved).unwrap();
        assert_eq!(round(&mut resumed, &[0]), params);
        assert!(resumed.load_state(&[("m".into(), vec![0.0])]).is_err());
    }
}
