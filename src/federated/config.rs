//! The resolved settings of one `fedclip run`, written to `<run dir>/config.json` and
//! compared on `--resume`.

use crate::adapter::{Loss, OptimizerConfig, OptimizerKind, TrainConfig};
use crate::paths::utf8;
use crate::tokenizer::TokenizerKind;
use anyhow::{Result, bail};
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
    /// A linear classifier on the normalised image features, initialised from the class
    /// prompts (round 0 is zero-shot), averaged each round.
    #[serde(rename = "linear-probe")]
    LinearProbe,
    /// CLIP-Adapter (Gao et al. 2021): a residual bottleneck MLP on the image feature,
    /// averaged each round.
    #[serde(rename = "clip-adapter")]
    ClipAdapter,
    /// Tip-Adapter (Zhang et al. 2022): a training-free cache of the clients' features.
    #[serde(rename = "tip-adapter")]
    TipAdapter,
    /// Tip-Adapter-F: each client fine-tunes its cache keys.
    #[serde(rename = "tip-adapter-f")]
    TipAdapterF,
}

impl Method {
    /// The name `--method` takes (and `summary.json` reports).
    pub fn name(self) -> String {
        use clap::ValueEnum;
        self.to_possible_value()
            .map_or_else(|| format!("{self:?}"), |v| v.get_name().to_string())
    }
}

/// The hyper-parameters of the method families beyond the attention adapter.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct MethodOptions {
    /// CLIP-Adapter's residual ratio α in `f = α A(x) + (1 − α) x` (`--clip-adapter-ratio`).
    pub clip_adapter_ratio: f64,
    /// Tip-Adapter's residual weight α of the cache logits (`--tip-alpha`).
    pub tip_alpha: f64,
    /// Tip-Adapter's sharpness β in `exp(−β (1 − x̂ Kᵀ))` (`--tip-beta`).
    pub tip_beta: f64,
}

impl Default for MethodOptions {
    /// CLIP-Adapter's 0.2 (the paper's code); Tip-Adapter's α = 1, β = 5.5 (the paper's
    /// ImageNet setting; its configs start a validation search from other values).
    fn default() -> Self {
        MethodOptions {
            clip_adapter_ratio: 0.2,
            tip_alpha: 1.0,
            tip_beta: 5.5,
        }
    }
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
    /// CLIP-Adapter's and Tip-Adapter's settings (absent in runs made before they existed).
    #[serde(default)]
    pub method_options: MethodOptions,
    pub seed: u32,
    pub clients_per_domain: usize,
    pub dirichlet_alpha: f64,
    pub sample_fraction: f64,
    /// `{}` is replaced by the class name (underscores to spaces, lower case).
    pub prompt_template: String,
    /// How prompts are tokenized. A config saved before this setting existed was tokenized
    /// as `hf`, so that is what it reads back as: resuming such a run needs `--tokenizer hf`.
    #[serde(default = "TokenizerKind::before_the_choice")]
    pub tokenizer: TokenizerKind,
    /// Images or prompts per forward pass during feature extraction.
    pub extract_batch: usize,
    pub cache_dir: PathBuf,
    pub out: PathBuf,
    /// Images over twice this many pixels are refused from their header (Pillow's rule).
    #[serde(default = "default_max_image_pixels")]
    pub max_image_pixels: u64,
    /// Leave out clients that a partition leaves without training files (with a warning)
    /// instead of refusing the partition.
    #[serde(default)]
    pub drop_empty_clients: bool,
    /// Leave out images that cannot be decoded (warned, listed in `summary.json`) instead of
    /// stopping with an error listing them all.
    #[serde(default)]
    pub skip_bad: bool,
}

fn default_max_image_pixels() -> u64 {
    crate::preprocess::DEFAULT_MAX_IMAGE_PIXELS
}

/// `value` of `flag` as the f32 the trainers compute with, refused when it is finite as an
/// f64 but not as an f32 (e.g. `--tip-alpha 1e39`), which would turn every logit or step
/// into inf or NaN.
pub fn f32_setting(flag: &str, value: f64) -> Result<f32> {
    let narrow = value as f32;
    if value.is_finite() && !narrow.is_finite() {
        bail!(
            "{flag} {} is beyond the range of f32 (about ±3.4e38), which the trainers compute \
             in; choose a smaller value",
            readable(value)
        );
    }
    Ok(narrow)
}

/// A float as a person reads it: `1e300`, not three hundred digits.
pub fn readable(x: f64) -> String {
    if x != 0.0 && x.is_finite() && !(1e-4..1e6).contains(&x.abs()) {
        format!("{x:e}")
    } else {
        format!("{x}")
    }
}

impl RunConfig {
    /// The adapter trainer's settings for these options (one definition for `fedclip run`
    /// and the Python module, so both train alike).
    pub fn train_config(&self, logit_scale: f32) -> TrainConfig {
        TrainConfig {
            loss: match self.loss {
                LossName::Contrastive => Loss::Contrastive,
                LossName::Class => Loss::Class,
            },
            logit_scale,
            optimizer: OptimizerConfig {
                kind: match self.optimizer {
                    OptimizerName::Adam => OptimizerKind::Adam,
                    OptimizerName::Adamw => OptimizerKind::AdamW,
                },
                lr: self.lr,
                weight_decay: self.weight_decay,
                ..OptimizerConfig::default()
            },
            min_batch: 2,
        }
    }

    /// Checks every setting before any work starts; an error names the flag and shows the
    /// value.
    pub fn validate(&self) -> Result<()> {
        let mut bad: Vec<String> = Vec::new();
        let mut need = |ok: bool, msg: String| {
            if !ok {
                bad.push(msg);
            }
        };
        need(
            self.rounds >= 1,
            "--rounds must be at least 1, got 0".into(),
        );
        need(self.batch >= 1, "--batch must be at least 1, got 0".into());
        need(
            self.extract_batch >= 1,
            "--extract-batch must be at least 1, got 0".into(),
        );
        need(
            self.clients_per_domain >= 1,
            "--clients-per-domain must be at least 1, got 0".into(),
        );
        let floats = [
            ("--lr", self.lr, self.lr > 0.0, "positive"),
            (
                "--weight-decay",
                self.weight_decay,
                self.weight_decay >= 0.0,
                "zero or positive",
            ),
            ("--mu", self.mu, self.mu >= 0.0, "zero or positive"),
            (
                "--dirichlet-alpha",
                self.dirichlet_alpha,
                self.dirichlet_alpha > 0.0,
                "positive",
            ),
            (
                "--clip-adapter-ratio",
                self.method_options.clip_adapter_ratio,
                (0.0..=1.0).contains(&self.method_options.clip_adapter_ratio),
                "in [0, 1]",
            ),
            (
                "--tip-alpha",
                self.method_options.tip_alpha,
                self.method_options.tip_alpha >= 0.0,
                "zero or positive",
            ),
            (
                "--tip-beta",
                self.method_options.tip_beta,
                self.method_options.tip_beta >= 0.0,
                "zero or positive",
            ),
            (
                "--sample-fraction",
                self.sample_fraction,
                self.sample_fraction > 0.0 && self.sample_fraction <= 1.0,
                "in (0, 1]",
            ),
        ];
        for (flag, value, ok, want) in floats {
            let wrong = if value.is_finite() && ok {
                f32_setting(flag, value).err().map(|e| e.to_string())
            } else {
                Some(format!(
                    "{flag} must be finite and {want}, got {}",
                    readable(value)
                ))
            };
            if let Some(msg) = wrong {
                need(false, msg);
            }
        }
        need(
            self.prompt_template.matches("{}").count() == 1,
            format!(
                "--prompt-template must contain `{{}}` exactly once, where the class name goes \
                 (else classes share a prompt), got {:?}",
                self.prompt_template
            ),
        );
        for (flag, path) in [
            ("--data", &self.data),
            ("--model", &self.model),
            ("--cache-dir", &self.cache_dir),
            ("--out", &self.out),
        ] {
            if let Err(e) = utf8(flag, path) {
                bad.push(e.to_string());
            }
        }
        match bad.len() {
            0 => Ok(()),
            1 => bail!("{}", bad[0]),
            _ => bail!("{} settings are wrong:\n  {}", bad.len(), bad.join("\n  ")),
        }
    }

    /// The settings that must equal the interrupted run's for `--resume` to continue it:
    /// everything but the round count (a run may be extended), where files live (their
    /// content is checked by [`super::inputs`]) and settings that never change a result.
    pub fn resume_mismatches(&self, saved: &RunConfig) -> Vec<String> {
        let mut a = serde_json::to_value(self).expect("config serialises");
        let mut b = serde_json::to_value(saved).expect("config serialises");
        // `data` and `model` are compared by content instead (`inputs.json`), so a moved
        // dataset or model resumes under its new path.
        for key in [
            "data",
            "model",
            "rounds",
            "cache_dir",
            "out",
            "extract_batch",
            "finetune_local_steps",
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
