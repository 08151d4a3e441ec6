//! The `--dp` settings of a run (client-level differential privacy) and their checks. Kept
//! apart from `config.rs` so that a run without DP keeps its config.json bytes (the field is
//! skipped when off).

use super::config::{Aggregate, Method, RunConfig};
use crate::privacy::{self, Budget};
use anyhow::{Result, bail};
use serde::{Deserialize, Serialize};

/// Which unit `--dp` protects.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum DpMode {
    /// No differential privacy.
    #[default]
    Off,
    /// One client's whole update (DP-FedAvg, McMahan et al. 2018).
    Client,
}

/// δ when `--dp-delta` is not given: below 1/N for any federation of up to 10⁵ clients.
pub const DEFAULT_DELTA: f64 = 1e-5;

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct DpConfig {
    pub mode: DpMode,
    /// Clipping norm C of each client's update (`--dp-clip`).
    pub clip: f64,
    /// Noise multiplier z (`--dp-noise`, or chosen by `--dp-target-epsilon`).
    pub noise: f64,
    /// δ of the reported (ε, δ) (`--dp-delta`).
    pub delta: f64,
    /// The noise stream's seed (`--dp-seed`); `None`: seeded from the operating system.
    pub seed: Option<u64>,
    /// The ε `--dp-target-epsilon` asked for (z was chosen for it before round 1).
    pub target_epsilon: Option<f64>,
}

impl Default for DpConfig {
    fn default() -> Self {
        DpConfig {
            mode: DpMode::Off,
            clip: f64::NAN,
            noise: 0.0,
            delta: DEFAULT_DELTA,
            seed: None,
            target_epsilon: None,
        }
    }
}

/// `summary.json`'s `dp`: the mechanism, its parameters and the (ε, δ) it gave.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DpSummary {
    pub mechanism: &'static str,
    pub clip: f64,
    pub noise_multiplier: f64,
    pub sampling_rate: f64,
    pub delta: f64,
    /// ε after the rounds run (composed over them; infinite with z = 0).
    pub epsilon: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target_epsilon: Option<f64>,
    pub accountant: &'static str,
}

impl DpConfig {
    pub fn is_off(&self) -> bool {
        self.mode == DpMode::Off
    }

    /// The accountant's budget of a run: one Poisson-sampled step per round.
    pub fn budget(&self, rounds: u32, sample_fraction: f64) -> Budget {
        Budget {
            sampling_rate: sample_fraction,
            steps: u64::from(rounds),
            delta: self.delta,
        }
    }

    /// ε after `rounds` rounds (0 before any).
    pub fn epsilon_after(&self, rounds: u32, sample_fraction: f64) -> f64 {
        match rounds {
            0 => 0.0,
            r => self.budget(r, sample_fraction).epsilon(self.noise),
        }
    }

    /// metrics.csv's header: the usual one, plus `epsilon` with DP on.
    pub fn metrics_header(&self) -> String {
        match self.is_off() {
            true => super::report::METRICS_HEADER.to_string(),
            false => format!("{},epsilon", super::report::METRICS_HEADER),
        }
    }

    /// What follows each metrics.csv row after `rounds` rounds: `,<cumulative ε>` with DP on
    /// (`inf` with z = 0), nothing otherwise.
    pub fn metrics_suffix(&self, rounds: u32, sample_fraction: f64) -> String {
        match self.is_off() {
            true => String::new(),
            false => format!(",{:.6}", self.epsilon_after(rounds, sample_fraction)),
        }
    }

    /// `summary.json`'s `dp` after `rounds` rounds; `None` without DP.
    pub fn summary(&self, rounds: u32, sample_fraction: f64) -> Option<DpSummary> {
        (!self.is_off()).then(|| DpSummary {
            mechanism: "client-level Gaussian (DP-FedAvg: Poisson-sampled clients, updates \
                        clipped to C, N(0, (zC)²) on their sum)",
            clip: self.clip,
            noise_multiplier: self.noise,
            sampling_rate: sample_fraction,
            delta: self.delta,
            epsilon: self.epsilon_after(rounds, sample_fraction),
            target_epsilon: self.target_epsilon,
            accountant: privacy::rdp::ACCOUNTANT_NAME,
        })
    }

    /// With `--dp-target-epsilon`: sets z to the noise multiplier that meets it over the run's
    /// rounds (Opacus's search), before anything runs.
    pub fn resolve_noise(&mut self, rounds: u32, sample_fraction: f64) -> Result<()> {
        if let (DpMode::Client, Some(target)) = (self.mode, self.target_epsilon) {
            privacy::check_delta(self.delta, "--dp-delta")?;
            let budget = self.budget(rounds.max(1), sample_fraction);
            self.noise = privacy::noise_multiplier_for(target, &budget, "--dp-target-epsilon")?;
        }
        Ok(())
    }

    /// The DP flags' own checks and their conflicts with the run's other settings.
    pub fn validate(&self, cfg: &RunConfig) -> Result<()> {
        if self.is_off() {
            let any = !self.clip.is_nan() || self.noise != 0.0 || self.seed.is_some();
            if any || self.target_epsilon.is_some() {
                bail!("--dp-clip, --dp-noise, --dp-target-epsilon and --dp-seed need --dp client");
            }
            return Ok(());
        }
        if !(self.clip > 0.0 && self.clip.is_finite()) {
            bail!(
                "--dp-clip {}: the clipping norm must be positive and finite (--dp client needs it)",
                self.clip
            );
        }
        privacy::check_noise_multiplier(self.noise, "--dp-noise")?;
        privacy::check_delta(self.delta, "--dp-delta")?;
        if cfg.aggregate == Aggregate::Weighted {
            bail!(
                "--aggregate weighted cannot be used with --dp client: weighting by sample counts \
                 lets one client move the mean by more than C/(qK), so the noise would not cover \
                 its sensitivity; use --aggregate uniform"
            );
        }
        let averaging = [
            Method::Fedclip,
            Method::Fedprox,
            Method::LinearProbe,
            Method::ClipAdapter,
        ];
        if !averaging.contains(&cfg.method) {
            bail!(
                "--dp client needs a method whose server averages updates (fedclip, fedprox, \
                 linear-probe, clip-adapter), not --method {}",
                cfg.method.name()
            );
        }
        Ok(())
    }
}
