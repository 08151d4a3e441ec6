//! The learning rate of each round (`--lr-schedule`, `--warmup-rounds`, `--warmup-lr`), as
//! CoOp's Dassl builds it per epoch, with rounds in place of epochs.
//!
//! Dassl's `build_lr_scheduler` wraps `torch.optim.lr_scheduler.CosineAnnealingLR(optimizer,
//! T_max = MAX_EPOCH)` in a `ConstantWarmupScheduler` with `WARMUP_RECOUNT = True` (its
//! default, and CoOp's): epochs `e < W` use the constant warm-up rate, and the cosine
//! scheduler, which only starts stepping after the warm-up, is then at its own epoch `e − W`.
//! So for round `r` of `R` (0-based) and base rate `lr`:
//!
//! - `r < W`: `warmup_lr`;
//! - `constant`: `lr`;
//! - `cosine`: `lr · ½ (1 + cos(π (r − W) / R))`, with `T_max = R` (not `R − W`), so with a
//!   warm-up the last rounds never reach the cosine's end, exactly as in CoOp.
//!
//! torch steps the cosine recursively (each rate from the last); the closed form here agrees
//! with it to f64 rounding, far below the f32 the optimisers step in.

use serde::{Deserialize, Serialize};

/// `--lr-schedule`: how the learning rate moves over the rounds after the warm-up.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LrSchedule {
    /// The same rate every round (the reference).
    #[default]
    Constant,
    /// Cosine annealing over the rounds (CoOp's `cosine`, `eta_min` 0).
    Cosine,
}

/// The learning rate of round `round` (0-based) of `rounds`: the module's formula.
pub fn round_lr(
    lr: f64,
    schedule: LrSchedule,
    warmup_rounds: u32,
    warmup_lr: f64,
    round: u32,
    rounds: u32,
) -> f64 {
    if round < warmup_rounds {
        return warmup_lr;
    }
    match schedule {
        LrSchedule::Constant => lr,
        LrSchedule::Cosine => {
            let t = f64::from(round - warmup_rounds) / f64::from(rounds.max(1));
            lr * 0.5 * (1.0 + (std::f64::consts::PI * t).cos())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_without_warmup_is_the_base_rate_every_round() {
        for r in 0..5 {
            assert_eq!(round_lr(0.002, LrSchedule::Constant, 0, 1e-5, r, 5), 0.002);
        }
    }

    #[test]
    fn cosine_starts_at_the_base_rate_and_halves_at_mid_run() {
        assert_eq!(round_lr(0.002, LrSchedule::Cosine, 0, 1e-5, 0, 4), 0.002);
        let mid = round_lr(0.002, LrSchedule::Cosine, 0, 1e-5, 2, 4);
        assert!((mid - 0.001).abs() < 1e-18, "{mid}");
        // Round R − 1 is one step short of the cosine's end, as CosineAnnealingLR's last epoch.
        let last = round_lr(1.0, LrSchedule::Cosine, 0, 1e-5, 3, 4);
        let want = 0.5 * (1.0 + (0.75 * std::f64::consts::PI).cos());
        assert!((last - want).abs() < 1e-15, "{last} vs {want}");
    }

    #[test]
    fn warmup_rounds_use_the_warmup_rate_then_the_cosine_restarts_at_its_epoch_zero() {
        let at = |r| round_lr(0.002, LrSchedule::Cosine, 2, 1e-5, r, 6);
        assert_eq!(at(0), 1e-5);
        assert_eq!(at(1), 1e-5);
        assert_eq!(at(2), 0.002);
        let want = 0.002 * 0.5 * (1.0 + (std::f64::consts::PI / 6.0).cos());
        assert!((at(3) - want).abs() < 1e-18);
        let constant = |r| round_lr(0.002, LrSchedule::Constant, 1, 1e-5, r, 6);
        assert_eq!(
            (constant(0), constant(1), constant(5)),
            (1e-5, 0.002, 0.002)
        );
    }
}
