//! The strategy seam: what a federated method does each round, in Flower's terms.
//!
//! A strategy says *what* happens: which sampled clients start from which parameters
//! ([`Strategy::configure_train`]), what the server makes of their results
//! ([`Strategy::aggregate_train`]), what each client deploys when evaluated
//! ([`Strategy::configure_evaluate`]), what it checkpoints and how many bytes move. The
//! rounds loop (`super::rounds`) and the batched K-client trainer behind
//! [`crate::adapter::AdapterBackend`] do the rest, so a new method is one file here plus
//! its line in [`build`].

mod dp_client;
mod fedavg;
mod fedopt;
mod local;
mod tip_adapter;
mod zeroshot;

pub use dp_client::{DpClient, clip_factor, clipped_noised_mean};
pub use fedavg::FedAvg;
pub use fedopt::FedOpt;
pub use local::Local;
pub use tip_adapter::TipAdapter;
pub use zeroshot::Zeroshot;

use super::config::{Method, RunConfig, ServerOptName};
use crate::privacy::noise::NoiseSource;
use anyhow::{Result, bail};

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

/// Bytes one round moves: server → client (`down`) and client → server (`up`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Bytes {
    pub down: u64,
    pub up: u64,
}

impl Bytes {
    pub fn total(self) -> u64 {
        self.down + self.up
    }
}

/// What [`Strategy::bytes`] counts with.
pub struct Sizes<'a> {
    /// Values in one client's row (P).
    pub param_count: usize,
    /// Image feature width d.
    pub dim: usize,
    /// Training samples per trainer slot.
    pub train_sizes: &'a [usize],
}

/// Which parameters a method trains (its trainer and classifier, `super::family`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Family {
    /// FedCLIP's attention adapter (also zero-shot, which trains none).
    Attention,
    /// A linear classifier [C, d] + [C] on the normalised image features.
    LinearProbe,
    /// CLIP-Adapter's residual bottleneck with ratio α.
    ClipAdapter { ratio: f64 },
    /// Tip-Adapter's cache; `train_keys` for Tip-Adapter-F.
    TipCache {
        alpha: f64,
        beta: f64,
        train_keys: bool,
    },
    /// CoOp's prompt context through the frozen text tower (settings in
    /// [`super::config::PromptOptions`]).
    Prompt,
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
    /// The trainer slots this round samples out of `clients`, when the strategy samples
    /// itself (client-level DP's Poisson sampling); `None`: `--sample-fraction` as usual.
    fn sample(&mut self, _round: u32, _clients: usize) -> Option<Vec<usize>> {
        None
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
    /// Bytes sent this round each way.
    fn bytes(&self, plan: &RoundPlan, sizes: &Sizes) -> Bytes;
    /// Bytes sent this round, both ways together, for a family whose bytes depend on the
    /// row length alone (every method but Tip-Adapter, which needs the clients' sizes).
    fn bytes_communicated(&self, plan: &RoundPlan, param_count: usize) -> u64 {
        let sizes = Sizes {
            param_count,
            dim: 0,
            train_sizes: &[],
        };
        self.bytes(plan, &sizes).total()
    }
    /// Local epochs per round for `--local-epochs requested` (0: nothing is stepped).
    fn local_epochs(&self, requested: u32) -> u32 {
        requested
    }
    /// The parameters this method trains.
    fn family(&self) -> Family {
        Family::Attention
    }
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

/// The strategy of `cfg.method` under `cfg.server_opt`: the one place that matches on
/// [`Method`].
pub fn build(cfg: &RunConfig) -> Result<Box<dyn Strategy>> {
    let base: Box<dyn Strategy> = match cfg.method {
        Method::Fedclip => Box::new(FedAvg::new(cfg.aggregate, None)),
        Method::Fedprox => Box::new(FedAvg::new(cfg.aggregate, Some(cfg.mu as f32))),
        Method::Local => Box::new(Local::of(Family::Attention)),
        Method::Zeroshot => Box::new(Zeroshot),
        Method::LinearProbe => Box::new(FedAvg::new(cfg.aggregate, None).of(Family::LinearProbe)),
        Method::ClipAdapter => Box::new(FedAvg::new(cfg.aggregate, None).of(Family::ClipAdapter {
            ratio: cfg.method_options.clip_adapter_ratio,
        })),
        Method::Promptfl => Box::new(FedAvg::new(cfg.aggregate, None).of(Family::Prompt)),
        Method::Coop => Box::new(Local::of(Family::Prompt)),
        Method::TipAdapter | Method::TipAdapterF => Box::new(TipAdapter::new(
            cfg.method_options,
            cfg.method == Method::TipAdapterF,
        )),
    };
    let base = with_dp(base, cfg)?;
    let server = cfg.server_opt;
    if server.opt == ServerOptName::Fedavg {
        return Ok(base);
    }
    if base.deployed() != Deployed::Global {
        bail!(
            "--server-opt {} needs a method with a global model (fedclip, fedprox, linear-probe, \
             clip-adapter, promptfl), not --method {}",
            format!("{:?}", server.opt).to_lowercase(),
            cfg.method.name()
        );
    }
    check_server_opt(&server)?;
    Ok(Box::new(FedOpt::new(base, server)))
}

/// `base` under client-level DP when `--dp client` (the flags were checked by
/// `RunConfig::validate`); the noise stream from `--dp-seed` or the operating system.
fn with_dp(base: Box<dyn Strategy>, cfg: &RunConfig) -> Result<Box<dyn Strategy>> {
    let dp = cfg.dp;
    if dp.is_off() {
        return Ok(base);
    }
    let source = match dp.seed {
        Some(seed) => NoiseSource::from_seed(seed),
        None => NoiseSource::from_os()?,
    };
    Ok(Box::new(DpClient::new(
        base,
        dp.clip,
        dp.noise,
        cfg.sample_fraction,
        source,
    )))
}

fn check_server_opt(c: &super::config::ServerOptConfig) -> Result<()> {
    use super::config::f32_setting;
    let unit = |v: f64| (0.0..1.0).contains(&v);
    if !(c.lr > 0.0 && c.lr.is_finite()) {
        bail!("--server-lr must be positive, got {}", c.lr);
    }
    if !unit(c.momentum) {
        bail!("--server-momentum must be in [0, 1), got {}", c.momentum);
    }
    if !unit(c.beta1) || !unit(c.beta2) {
        bail!(
            "--server-beta1 and --server-beta2 must be in [0, 1), got {} and {}",
            c.beta1,
            c.beta2
        );
    }
    if !(c.tau > 0.0 && c.tau.is_finite()) {
        bail!("--server-tau must be positive, got {}", c.tau);
    }
    f32_setting("--server-lr", c.lr)?;
    f32_setting("--server-tau", c.tau)?;
    Ok(())
}
