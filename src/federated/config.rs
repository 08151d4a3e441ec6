//! The resolved settings of one `fedclip run`, written to `<run dir>/config.json` and
//! compared on `--resume`.

use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// What the clients do with their adapters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    /// FedCLIP: local adapter training, server averages adapters each round.
    Fedclip,
    /// CLIP zero-shot: no adapter, nothing trained.
    Zeroshot,
    /// Each client trains its own adapter; nothing is averaged or communicated.
    Local,
    /// FedCLIP with FedProx's proximal term μ/2 ‖θ − θ_global‖² in the local loss.
    Fedprox,
}

/// How the server averages client adapters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Aggregate {
    /// Every sampled client weighs the same (the reference).
    Uniform,
    /// Weighted by the client's number of training samples.
    Weighted,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LossName {
    /// Symmetric image↔text cross-entropy over the batch (the reference).
    Contrastive,
    /// Cross-entropy against all class prompts.
    Class,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum OptimizerName {
    /// Adam with L2 weight decay coupled into the gradient (the reference).
    Adam,
    /// AdamW, decoupled weight decay.
    Adamw,
}

/// What the server does with the mean client update (Reddi et al. 2021, "Adaptive
/// Federated Optimization"); the mean minus the global parameters is the pseudo-gradient Δ.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ServerOptName {
    /// The mean becomes the global parameters (FedCLIP's reference).
    Fedavg,
    /// Server momentum (Hsu et al. 2019): m = μ m − Δ, x −= η m.
    Fedavgm,
    /// Adam on Δ, with Flower's bias-corrected η.
    Fedadam,
    /// Yogi on Δ (no bias correction).
    Fedyogi,
}

/// `--server-opt` and its hyper-parameters.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct ServerOptConfig {
    pub opt: ServerOptName,
    /// η (`--server-lr`).
    pub lr: f64,
    /// FedAvgM's momentum (`--server-momentum`).
    pub momentum: f64,
    pub beta1: f64,
    pub beta2: f64,
    /// τ, the adaptivity floor of FedAdam / FedYogi.
    pub tau: f64,
}

impl ServerOptConfig {
    /// Flower's defaults per optimiser: η = 1 (FedAvgM), 0.1 (FedAdam), 0.01 (FedYogi).
    pub fn default_lr(opt: ServerOptName) -> f64 {
        match opt {
            ServerOptName::Fedavg | ServerOptName::Fedavgm => 1.0,
            ServerOptName::Fedadam => 0.1,
            ServerOptName::Fedyogi => 0.01,
        }
    }
}

impl Default for ServerOptConfig {
    fn default() -> Self {
        ServerOptConfig {
            opt: ServerOptName::Fedavg,
            lr: 1.0,
            momentum: 0.9,
            beta1: 0.9,
            beta2: 0.99,
            tau: 1e-3,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunConfig {
    pub data: PathBuf,
    pub model: PathBuf,
    /// Held-out domains (leave-one-domain-out); their files are test data only.
    pub test_domains: Vec<String>,
    pub method: Method,
    pub rounds: u32,
    pub local_epochs: u32,
    pub batch: usize,
    pub lr: f64,
    pub weight_decay: f64,
    pub optimizer: OptimizerName,
    /// Keep each client's optimiser moments across rounds (the reference re-creates it).
    pub keep_optimizer_state: bool,
    pub loss: LossName,
    /// FedProx's μ (used by `fedprox` only).
    pub mu: f64,
    pub aggregate: Aggregate,
    /// The server optimiser over the aggregate (absent in runs made before it existed).
    #[serde(default)]
    pub server_opt: ServerOptConfig,
    /// Personalization after training: local steps from the final global parameters (0: off).
    #[serde(default)]
    pub finetune_local_steps: u32,
    pub seed: u32,
    pub clients_per_domain: usize,
    pub dirichlet_alpha: f64,
    pub sample_fraction: f64,
    /// `{}` is replaced by the class name (underscores to spaces, lower case).
    pub prompt_template: String,
    /// Images or prompts per forward pass during feature extraction.
    pub extract_batch: usize,
    pub cache_dir: PathBuf,
    pub out: PathBuf,
}

impl RunConfig {
    /// The settings that must equal the interrupted run's for `--resume` to continue it:
    /// everything but the round count (a run may be extended) and where files live.
    pub fn resume_mismatches(&self, saved: &RunConfig) -> Vec<String> {
        let mut a = serde_json::to_value(self).expect("config serialises");
        let mut b = serde_json::to_value(saved).expect("config serialises");
        for key in [
            "rounds",
            "cache_dir",
            "out",
            "extract_batch",
            "finetune_local_steps",
        ] {
            a.as_object_mut().map(|o| o.remove(key));
            b.as_object_mut().map(|o| o.remove(key));
        }
        let (a, b) = (
            a.as_object().cloned().unwrap_or_default(),
            b.as_object().cloned().unwrap_or_default(),
        );
        a.iter()
            .filter(|(k, v)| b.get(*k) != Some(v))
            .map(|(k, v)| {
                format!(
                    "{k}: now {v}, saved {}",
                    b.get(k).map_or("absent".into(), |x| x.to_string())
                )
            })
            .collect()
    }
}
