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
    /// Images over twice this many pixels are refused from their header (Pillow's rule).
    #[serde(default = "default_max_image_pixels")]
    pub max_image_pixels: u64,
}

fn default_max_image_pixels() -> u64 {
    crate::preprocess::DEFAULT_MAX_IMAGE_PIXELS
}

impl RunConfig {
    /// The settings that must equal the interrupted run's for `--resume` to continue it:
    /// everything but the round count (a run may be extended), where files live and
    /// settings that never change a result.
    pub fn resume_mismatches(&self, saved: &RunConfig) -> Vec<String> {
        let mut a = serde_json::to_value(self).expect("config serialises");
        let mut b = serde_json::to_value(saved).expect("config serialises");
        for key in [
            "rounds",
            "cache_dir",
            "out",
            "extract_batch",
            "max_image_pixels",
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
