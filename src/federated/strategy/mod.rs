//! The strategy seam: what a federated method does each round, in Flower's terms.
//!
//! A strategy says *what* happens: which sampled clients start from which parameters
//! ([`Strategy::configure_train`]), what the server makes of their results
//! ([`Strategy::aggregate_train`]), what each client deploys when evaluated
//! ([`Strategy::configure_evaluate`]), what it checkpoints and how many bytes move. The
//! rounds loop (`super::rounds`) and the batched K-client trainer behind
//! [`crate::adapter::AdapterBackend`] do the rest, so a new method is one file here plus
//! its line in [`build`].

mod fedavg;
mod local;
mod zeroshot;

use super::config::{Method, RunConfig};
use anyhow::Result;

/// What the sampled clients do this round (Flower's `configure_train` result).
#[derive(Clone, Debug, PartialEq)]
pub struct RoundPlan {
    /// Trainer slots (indices into the training clients) of the sampled clients.
    pub slots: Vec<usize>,
    /// Parameters every sampled client starts from; `None`: each continues from its own.
    pub start: Option<Vec<f32>>,
    /// FedProx: the anchor of the proximal term μ/2 ‖θ − anchor‖², and μ.
    pub anchor: Option<Vec<f32>>,
    pub mu: f32,
}

/// What the sampled clients sent back after their local epochs.
pub struct ClientUpdates<'a> {
    pub slots: &'a [usize],
    /// Every training client's parameters, `[K, P]` (rows not in `slots` are unchanged).
    pub params: &'a [f32],
    pub param_count: usize,
    /// Training samples per slot, for weighted aggregation.
    pub train_sizes: &'a [usize],
}

/// What one client is evaluated with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Deploy {
    /// No adapter: CLIP zero-shot.
    Zeroshot,
    /// The server's global parameters.
    Global,
    /// The client's own trained parameters (its trainer slot).
    Own(usize),
    /// The mean of every training client's parameters (a client that trained none).
    MeanOfLocal,
}

/// Which parameters the run deploys: the best round keeps them, the adapter files hold them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Deployed {
    /// Nothing is trained; no adapter files.
    Nothing,
    /// One global adapter (`adapter-*.safetensors` without a client prefix).
    Global,
    /// One adapter per training client, prefixed by its name.
    EachClient,
}

pub trait Strategy {
    /// Rounds actually run for `--rounds requested`.
    fn rounds(&self, requested: u32) -> u32 {
        requested
    }
    /// This round's plan for the sampled clients, or `None` when nothing is trained.
    fn configure_train(&self, round: u32, sampled: Vec<usize>, global: &[f32])
    -> Option<RoundPlan>;
    /// The new global parameters from the clients' results, or `None` to keep them.
    fn aggregate_train(
        &mut self,
        round: u32,
        global: &[f32],
        updates: &ClientUpdates,
    ) -> Result<Option<Vec<f32>>>;
    /// Bytes sent this round, both ways together (f32 parameters).
    fn bytes_communicated(&self, plan: &RoundPlan, param_count: usize) -> u64;
    /// What a client deploys; `slot` is its trainer slot, `None` for a held-out client.
    fn configure_evaluate(&self, slot: Option<usize>) -> Deploy;
    fn deployed(&self) -> Deployed;
    /// Server tensors to checkpoint for `--resume` (e.g. a server optimiser's moments).
    fn state(&self) -> Vec<(String, Vec<f32>)> {
        Vec::new()
    }
    /// Restores what [`Strategy::state`] returned.
    fn load_state(&mut self, saved: &[(String, Vec<f32>)]) -> Result<()> {
        anyhow::ensure!(
            saved.is_empty(),
            "the checkpoint holds server state this method does not use"
        );
        Ok(())
    }
}

/// The strategy of `cfg.method`: the one place that matches on [`Method`].
pub fn build(cfg: &RunConfig) -> Box<dyn Strategy> {
    match cfg.method {
        Method::Fedclip => Box::new(fedavg::FedAvg::new(cfg.aggregate, None)),
        Method::Fedprox => Box::new(fedavg::FedAvg::new(cfg.aggregate, Some(cfg.mu as f32))),
        Method::Local => Box::new(local::Local),
        Method::Zeroshot => Box::new(zeroshot::Zeroshot),
    }
}
