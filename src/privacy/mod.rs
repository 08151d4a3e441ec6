//! Differential privacy: the accountant (`rdp`, equal to dp-accounting's `RdpAccountant`) and
//! the choice of a noise multiplier for a target ε. A leaf: it imports nothing from the jobs.

pub mod noise;
pub mod rdp;

use anyhow::{Result, bail};

/// The largest noise multiplier the search for a target ε tries (as Opacus's MAX_SIGMA).
pub const MAX_NOISE_MULTIPLIER: f64 = 1e6;

/// How far below the target ε the chosen z's ε may be (Opacus's default epsilon_tolerance).
pub const EPSILON_TOLERANCE: f64 = 0.01;

/// What the accountant needs besides z: Poisson sampling rate, number of steps and δ.
#[derive(Clone, Copy, Debug)]
pub struct Budget {
    pub sampling_rate: f64,
    pub steps: u64,
    pub delta: f64,
}

impl Budget {
    /// Checks each value, naming it with the flag that set it (`flags` = the three flag names
    /// for q, T and δ, so the CLI and the federated loop word their errors their own way).
    pub fn check(&self, flags: [&str; 3]) -> Result<()> {
        let [q_flag, steps_flag, delta_flag] = flags;
        let q = self.sampling_rate;
        if !(q > 0.0 && q <= 1.0) {
            bail!("{q_flag} {q}: the sampling rate must be in (0, 1]");
        }
        if self.steps == 0 {
            bail!("{steps_flag} 0: at least one step is needed");
        }
        check_delta(self.delta, delta_flag)
    }

    /// ε after all steps with noise multiplier z.
    pub fn epsilon(&self, z: f64) -> f64 {
        rdp::epsilon(self.sampling_rate, z, self.steps, self.delta)
    }
}

/// δ must be a probability strictly between 0 and 1.
pub fn check_delta(delta: f64, flag: &str) -> Result<()> {
    if !(delta > 0.0 && delta < 1.0) {
        bail!("{flag} {delta}: δ must be in (0, 1), e.g. 1e-5 (below 1/N for N units)");
    }
    Ok(())
}

/// z ≥ 0 and finite.
pub fn check_noise_multiplier(z: f64, flag: &str) -> Result<()> {
    if !(z >= 0.0 && z.is_finite()) {
        bail!("{flag} {z}: the noise multiplier must be zero or positive and finite");
    }
    Ok(())
}

/// The noise multiplier whose ε after the budget's steps is at most `target` and within
/// EPSILON_TOLERANCE of it: Opacus's get_noise_multiplier search (double z from 20 until ε ≤
/// target, then bisect), with this crate's accountant. `flag` names the target in errors.
pub fn noise_multiplier_for(target: f64, budget: &Budget, flag: &str) -> Result<f64> {
    if !(target > 0.0 && target.is_finite()) {
        bail!("{flag} {target}: the target ε must be positive and finite");
    }
    let mut z_low = 0.0;
    let mut z_high = 10.0;
    let mut eps_high = f64::INFINITY;
    while eps_high > target {
        z_high *= 2.0;
        if z_high > MAX_NOISE_MULTIPLIER {
            bail!(
                "{flag} {target}: no noise multiplier up to {MAX_NOISE_MULTIPLIER:e} reaches it \
                 (sampling rate {}, {} steps, δ {:e}); raise the target ε or δ, or use fewer steps",
                budget.sampling_rate,
                budget.steps,
                budget.delta
            );
        }
        eps_high = budget.epsilon(z_high);
    }
    while target - eps_high > EPSILON_TOLERANCE {
        let z = (z_low + z_high) / 2.0;
        let eps = budget.epsilon(z);
        if eps < target {
            z_high = z;
            eps_high = eps;
        } else {
            z_low = z;
        }
    }
    Ok(z_high)
}

/// What `fedclip privacy` is asked: ε for a given noise multiplier, or z for a target ε.
#[derive(Clone, Copy, Debug)]
pub enum Ask {
    Epsilon { noise_multiplier: f64 },
    NoiseMultiplier { target_epsilon: f64 },
}

/// What `fedclip privacy` answers (`--json` prints it as is).
#[derive(Clone, Debug, serde::Serialize)]
pub struct Plan {
    pub accountant: &'static str,
    pub sampling_rate: f64,
    pub steps: u64,
    pub delta: f64,
    pub noise_multiplier: f64,
    pub epsilon: f64,
    pub target_epsilon: Option<f64>,
}

/// Checks the budget and the ask (errors name the `fedclip privacy` flags), then answers it.
pub fn plan(budget: Budget, ask: Ask) -> Result<Plan> {
    budget.check(["--sampling-rate", "--steps", "--delta"])?;
    let (noise_multiplier, target_epsilon) = match ask {
        Ask::Epsilon { noise_multiplier } => {
            check_noise_multiplier(noise_multiplier, "--noise-multiplier")?;
            (noise_multiplier, None)
        }
        Ask::NoiseMultiplier { target_epsilon } => {
            let z = noise_multiplier_for(target_epsilon, &budget, "--target-epsilon")?;
            (z, Some(target_epsilon))
        }
    };
    Ok(Plan {
        accountant: rdp::ACCOUNTANT_NAME,
        sampling_rate: budget.sampling_rate,
        steps: budget.steps,
        delta: budget.delta,
        noise_multiplier,
        epsilon: budget.epsilon(noise_multiplier),
        target_epsilon,
    })
}
