//! The resolved settings of one `fedclip run`, written to `<run dir>/config.json` and
//! compared on `--resume`.

use super::schedule::{LrSchedule, round_lr};
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
    /// PromptFL (Guo et al. 2023): CoOp's learnable prompt context through the frozen text
    /// tower, one global context averaged each round.
    Promptfl,
    /// CoOp (Zhou et al. 2022) per client: each client trains its own prompt context, never
    /// averaged; a held-out domain uses the mean of the clients' contexts.
    Coop,
}

impl Method {
    /// Whether the method learns prompt contexts (the `--n-ctx` family of flags).
    pub fn learns_prompts(self) -> bool {
        matches!(self, Method::Promptfl | Method::Coop)
    }

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

/// The prompt learner's settings (`--n-ctx`, `--csc`, `--ctx-init`,
/// `--class-token-position`), for `promptfl` and `coop` only.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PromptOptions {
    /// Context vectors per prompt as given; `None`: the init's token count, else 16.
    pub n_ctx: Option<usize>,
    /// One context per class (CoOp's class-specific context).
    pub csc: bool,
    /// Words whose token embeddings start the context (CoOp's `CTX_INIT`).
    pub ctx_init: Option<String>,
    /// Where the class name goes; `None`: `end`.
    pub class_token_position: Option<crate::prompt::ClassTokenPosition>,
}

impl PromptOptions {
    /// The prompt flags that were given, for the refusal of a method without prompts.
    fn given(&self) -> Vec<&'static str> {
        let mut out = Vec::new();
        for (flag, set) in [
            ("--n-ctx", self.n_ctx.is_some()),
            ("--csc", self.csc),
            ("--ctx-init", self.ctx_init.is_some()),
            (
                "--class-token-position",
                self.class_token_position.is_some(),
            ),
        ] {
            if set {
                out.push(flag);
            }
        }
        out
    }

    pub fn spec(&self) -> crate::prompt::ContextSpec {
        crate::prompt::ContextSpec {
            n_ctx: self.n_ctx,
            ctx_init: self.ctx_init.clone(),
            csc: self.csc,
            position: self.class_token_position.unwrap_or_default(),
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
    /// SGD with momentum and L2 weight decay in the gradient (CoOp's optimiser).
    Sgd,
}

impl OptimizerName {
    /// `--lr`'s default: FedCLIP's 5e-5 for Adam / AdamW, CoOp's 0.002 for SGD.
    pub fn default_lr(self) -> f64 {
        match self {
            OptimizerName::Adam | OptimizerName::Adamw => 5e-5,
            OptimizerName::Sgd => 0.002,
        }
    }
    /// `--weight-decay`'s default: FedCLIP's 0.2 for Adam / AdamW, CoOp's 5e-4 for SGD.
    pub fn default_weight_decay(self) -> f64 {
        match self {
            OptimizerName::Adam | OptimizerName::Adamw => 0.2,
            OptimizerName::Sgd => 5e-4,
        }
    }
    /// The momentum a run stores for `--momentum` (`given`), which only SGD has: the
    /// default when not given; refused with Adam / AdamW (whose moments follow fixed betas)
    /// rather than silently unused.
    pub fn momentum(self, given: Option<f64>) -> Result<f64> {
        match (self, given) {
            (OptimizerName::Sgd, m) => Ok(m.unwrap_or(DEFAULT_MOMENTUM)),
            (_, None) => Ok(DEFAULT_MOMENTUM),
            (other, Some(_)) => bail!(
                "--momentum applies to --optimizer sgd only, not --optimizer {}",
                other.name()
            ),
        }
    }
    /// The name `--optimizer` takes.
    pub fn name(self) -> String {
        use clap::ValueEnum;
        self.to_possible_value()
            .map_or_else(|| format!("{self:?}"), |v| v.get_name().to_string())
    }
}

/// `--momentum`'s default (CoOp's); Adam and AdamW do not use it.
pub const DEFAULT_MOMENTUM: f64 = 0.9;

/// `--warmup-lr`'s default (CoOp's `WARMUP_CONS_LR`).
pub const DEFAULT_WARMUP_LR: f64 = 1e-5;

fn default_momentum() -> f64 {
    DEFAULT_MOMENTUM
}

fn default_warmup_lr() -> f64 {
    DEFAULT_WARMUP_LR
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
    /// SGD's momentum μ (`--momentum`; Adam and AdamW keep the default, unused). Settings
    /// below from here to `warmup_lr` are absent in runs made before they existed, which
    /// trained with exactly these defaults.
    #[serde(default = "default_momentum")]
    pub momentum: f64,
    /// How the learning rate moves over the rounds ([`super::schedule`]).
    #[serde(default)]
    pub lr_schedule: LrSchedule,
    /// Rounds at `warmup_lr` before the schedule starts (CoOp's constant warm-up).
    #[serde(default)]
    pub warmup_rounds: u32,
    #[serde(default = "default_warmup_lr")]
    pub warmup_lr: f64,
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
    /// The prompt learner's settings (absent in runs made before it existed).
    #[serde(default)]
    pub prompt: PromptOptions,
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
    /// `--augment-views N`: N augmented views of every training image, encoded once and
    /// cached; the run's local epoch `e` trains on view `e mod N`. 0: the centre crops only
    /// (and what a config saved before the setting existed reads back as).
    #[serde(default)]
    pub augment_views: u32,
    /// Differential privacy (`--dp …`); absent from config.json when off, so ordinary runs'
    /// files keep their bytes.
    #[serde(default, skip_serializing_if = "super::dp::DpConfig::is_off")]
    pub dp: super::dp::DpConfig,
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
                    OptimizerName::Sgd => OptimizerKind::Sgd,
                },
                lr: self.lr,
                weight_decay: self.weight_decay,
                momentum: self.momentum,
                ..OptimizerConfig::default()
            },
            min_batch: 2,
        }
    }

    /// The learning rate of round `round` (0-based) under `--lr-schedule` and the warm-up,
    /// over `--rounds` ([`super::schedule`]).
    pub fn round_lr(&self, round: u32) -> f64 {
        round_lr(
            self.lr,
            self.lr_schedule,
            self.warmup_rounds,
            self.warmup_lr,
            round,
            self.rounds,
        )
    }

    /// Checks every setting before any work starts; an error names the flag and shows the
    /// value, and lists every wrong setting at once.
    pub fn validate(&self) -> Result<()> {
        let mut bad = self.count_problems();
        bad.extend(self.float_problems());
        bad.extend(self.prompt_problems());
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
        if let Err(e) = self.dp.validate(self) {
            bad.push(e.to_string());
        }
        match bad.len() {
            0 => Ok(()),
            1 => bail!("{}", bad[0]),
            _ => bail!("{} settings are wrong:\n  {}", bad.len(), bad.join("\n  ")),
        }
    }

    /// What is wrong with the counts (rounds, batches, clients).
    fn count_problems(&self) -> Vec<String> {
        problems([
            (
                self.rounds >= 1,
                "--rounds must be at least 1, got 0".into(),
            ),
            (self.batch >= 1, "--batch must be at least 1, got 0".into()),
            (
                self.warmup_rounds == 0 || self.warmup_rounds < self.rounds,
                format!(
                    "--warmup-rounds ({}) must be below --rounds ({}): the schedule would never start",
                    self.warmup_rounds, self.rounds
                ),
            ),
            (
                self.extract_batch >= 1,
                "--extract-batch must be at least 1, got 0".into(),
            ),
            (
                self.clients_per_domain >= 1,
                "--clients-per-domain must be at least 1, got 0".into(),
            ),
            (
                self.clients_per_domain <= crate::data::split::MAX_CLIENTS_PER_DOMAIN,
                format!(
                    "--clients-per-domain must be at most {}, got {}",
                    crate::data::split::MAX_CLIENTS_PER_DOMAIN,
                    self.clients_per_domain
                ),
            ),
        ])
    }

    /// What is wrong with the real-valued settings: each finite, in its range, and within f32.
    fn float_problems(&self) -> Vec<String> {
        let mut bad = Vec::new();
        let floats = [
            ("--lr", self.lr, self.lr > 0.0, "positive"),
            (
                "--weight-decay",
                self.weight_decay,
                self.weight_decay >= 0.0,
                "zero or positive",
            ),
            (
                "--momentum",
                self.momentum,
                (0.0..1.0).contains(&self.momentum),
                "in [0, 1)",
            ),
            (
                "--warmup-lr",
                self.warmup_lr,
                self.warmup_lr > 0.0,
                "positive",
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
            bad.extend(wrong);
        }
        bad
    }

    /// What is wrong with the prompt template and the prompt learner's flags.
    fn prompt_problems(&self) -> Vec<String> {
        let prompt_flags = self.prompt.given();
        problems([
            (
                self.prompt_template.matches("{}").count() == 1,
                format!(
                    "--prompt-template must contain `{{}}` exactly once, where the class name goes \
                 (else classes share a prompt), got {:?}",
                    self.prompt_template
                ),
            ),
            (
                prompt_flags.is_empty() || self.method.learns_prompts(),
                format!(
                    "{} only apply to a method that learns prompts (--method promptfl or coop), not --method {}",
                    prompt_flags.join(", "),
                    self.method.name()
                ),
            ),
            (
                self.prompt.n_ctx != Some(0),
                "--n-ctx must be at least 1, got 0 (a prompt needs at least one context vector)"
                    .into(),
            ),
            (
                self.prompt
                    .ctx_init
                    .as_ref()
                    .is_none_or(|w| !w.trim().is_empty()),
                "--ctx-init must hold at least one word, got an empty string".into(),
            ),
        ])
    }

    /// The settings that must equal the interrupted run's for `--resume` to continue it:
    /// everything but the round count (a run may be extended, unless a cosine schedule
    /// spans the rounds: then every round's rate depends on it), where files live (their
    /// content is checked by [`super::inputs`]) and settings that never change a result.
    pub fn resume_mismatches(&self, saved: &RunConfig) -> Vec<String> {
        let mut a = serde_json::to_value(self).expect("config serialises");
        let mut b = serde_json::to_value(saved).expect("config serialises");
        let rounds_free =
            self.lr_schedule == LrSchedule::Constant && saved.lr_schedule == LrSchedule::Constant;
        if rounds_free {
            for v in [&mut a, &mut b] {
                v.as_object_mut().map(|o| o.remove("rounds"));
            }
        }
        // `data` and `model` are compared by content instead (`inputs.json`), so a moved
        // dataset or model resumes under its new path.
        for key in [
            "data",
            "model",
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
                let why = if k == "rounds" {
                    " (the cosine --lr-schedule spans --rounds, so every round's rate depends on it)"
                } else {
                    ""
                };
                format!(
                    "{k}: now {v}, saved {}{why}",
                    b.get(k).map_or("absent".into(), |x| x.to_string())
                )
            })
            .collect()
    }
}

/// The messages of the checks that failed, in order.
fn problems<const N: usize>(checks: [(bool, String); N]) -> Vec<String> {
    (checks.into_iter())
        .filter(|(ok, _)| !ok)
        .map(|(_, msg)| msg)
        .collect()
}
