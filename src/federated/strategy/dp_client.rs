//! Client-level differential privacy over an averaging strategy (McMahan et al. 2018,
//! "DP-FedAvg"), as Flower's `DifferentialPrivacyServerSideFixedClipping` wraps a strategy.
//! Each training client is sampled independently with probability q (Poisson, so the
//! accountant's subsampling holds); each sampled client's update Δ = θ − θ_global (the
//! family's parameters, flattened) is clipped to L2 norm C; the server adds N(0, (zC)²) to
//! the sum of the clipped updates and divides by the expected number of sampled clients qK:
//! θ_global + (Σ clip(Δ) + N(0, (zC)²)) / (qK). With q = 1 this is Flower's mean of clipped
//! updates plus N(0, (zC/K)²). The inner strategy plans the rounds, evaluates and counts
//! bytes; a server optimiser (FedOpt) wraps this one and steps with the noised mean.

use super::{Bytes, ClientUpdates, Deploy, Deployed, Family, RoundPlan, Sizes, Strategy};
use crate::privacy::noise::NoiseSource;
use anyhow::Result;

pub struct DpClient {
    inner: Box<dyn Strategy>,
    /// Clipping norm C.
    clip: f64,
    /// Noise multiplier z.
    noise: f64,
    /// Poisson sampling rate q.
    sampling_rate: f64,
    source: NoiseSource,
}

/// Name of the noise stream's tensor in the checkpoint's server state.
const NOISE_STATE: &str = "dp_noise";

impl DpClient {
    pub fn new(
        inner: Box<dyn Strategy>,
        clip: f64,
        noise: f64,
        sampling_rate: f64,
        source: NoiseSource,
    ) -> Self {
        DpClient {
            inner,
            clip,
            noise,
            sampling_rate,
            source,
        }
    }
}

/// min(1, C / ‖Δ‖): the factor that clips an update of norm `norm` to `clip`.
pub fn clip_factor(norm: f64, clip: f64) -> f64 {
    if norm > clip { clip / norm } else { 1.0 }
}

/// θ_global + (Σ clip(θ_s − θ_global) + noise) / expected, summed in f64 in slot order and
/// rounded to f32 once. `noise` holds one value per parameter (N(0, (zC)²) draws), or is
/// empty for none. An unclipped client contributes its own row, so that with no clipping and
/// no noise this is exactly FedAvg's uniform mean (`aggregate::weighted_mean`) when
/// `expected` is the number of sampled clients.
pub fn clipped_noised_mean(
    global: &[f32],
    params: &[f32],
    slots: &[usize],
    clip: f64,
    noise: &[f64],
    expected: f64,
) -> Vec<f32> {
    let p = global.len();
    let mut sum = vec![0f64; p];
    for &s in slots {
        let row = &params[s * p..(s + 1) * p];
        let norm = (row.iter().zip(global))
            .map(|(&v, &g)| (v as f64 - g as f64).powi(2))
            .sum::<f64>()
            .sqrt();
        let factor = clip_factor(norm, clip);
        for ((a, &v), &g) in sum.iter_mut().zip(row).zip(global) {
            let clipped = if factor == 1.0 {
                v as f64
            } else {
                g as f64 + factor * (v as f64 - g as f64)
            };
            *a += 1.0 / expected * clipped;
        }
    }
    // The clients' rows carry θ_global once each: the (expected − sampled) missing copies.
    let missing = (expected - slots.len() as f64) / expected;
    (sum.iter().zip(global).enumerate())
        .map(|(i, (&a, &g))| {
            let mut x = a;
            if missing != 0.0 {
                x += missing * g as f64;
            }
            if let Some(n) = noise.get(i) {
                x += n / expected;
            }
            x as f32
        })
        .collect()
}

impl Strategy for DpClient {
    fn rounds(&self, requested: u32) -> u32 {
        self.inner.rounds(requested)
    }

    /// Poisson sampling from the noise stream: each training client with probability q.
    fn sample(&mut self, _round: u32, clients: usize) -> Option<Vec<usize>> {
        let q = self.sampling_rate;
        Some((0..clients).filter(|_| self.source.bernoulli(q)).collect())
    }

    fn configure_train(
        &self,
        round: u32,
        sampled: Vec<usize>,
        global: &[f32],
    ) -> Option<RoundPlan> {
        self.inner.configure_train(round, sampled, global)
    }

    fn aggregate_train(
        &mut self,
        _round: u32,
        global: &[f32],
        updates: &ClientUpdates,
    ) -> Result<Option<Vec<f32>>> {
        let sigma = self.noise * self.clip;
        let noise: Vec<f64> = if sigma > 0.0 {
            (0..global.len())
                .map(|_| self.source.gaussian(sigma))
                .collect()
        } else {
            Vec::new()
        };
        let expected = self.sampling_rate * updates.train_sizes.len() as f64;
        Ok(Some(clipped_noised_mean(
            global,
            updates.params,
            updates.slots,
            self.clip,
            &noise,
            expected,
        )))
    }

    fn bytes(&self, plan: &RoundPlan, sizes: &Sizes) -> Bytes {
        self.inner.bytes(plan, sizes)
    }

    fn local_epochs(&self, requested: u32) -> u32 {
        self.inner.local_epochs(requested)
    }

    fn family(&self) -> Family {
        self.inner.family()
    }

    fn configure_evaluate(&self, slot: Option<usize>) -> Deploy {
        self.inner.configure_evaluate(slot)
    }

    fn deployed(&self) -> Deployed {
        self.inner.deployed()
    }

    fn state(&self) -> Vec<(String, Vec<f32>)> {
        vec![(NOISE_STATE.into(), self.source.save())]
    }

    fn load_state(&mut self, saved: &[(String, Vec<f32>)]) -> Result<()> {
        match saved {
            [(name, v)] if name == NOISE_STATE => self.source = NoiseSource::load(v)?,
            _ => anyhow::bail!("the checkpoint holds no DP noise state (a run without --dp?)"),
        }
        Ok(())
    }
}
