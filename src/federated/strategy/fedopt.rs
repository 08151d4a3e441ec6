//! Server optimisers over any aggregating strategy (Reddi et al. 2021, "Adaptive Federated
//! Optimization"), by composition: the inner strategy's aggregate x̄ gives the
//! pseudo-gradient Δ = x̄ − x, and the server steps x with it. The rules follow Flower's
//! `FedAvgM`, `FedAdam` and `FedYogi` (m and v start at zero):
//!
//! - FedAvgM: m ← μ m − Δ; x ← x − η m.
//! - FedAdam: m ← β1 m + (1 − β1) Δ; v ← β2 v + (1 − β2) Δ²;
//!   x ← x + η_t m / (√v + τ) with η_t = η √(1 − β2^(t+1)) / (1 − β1^(t+1)), t the 1-based
//!   round (Flower's bias correction, exponent t + 1 as Flower has it).
//! - FedYogi: m as Adam; v ← v − (1 − β2) Δ² sign(v − Δ²); x ← x + η m / (√v + τ) (no bias
//!   correction).
//!
//! Each element is computed in f64 from the f32 state and stored back as f32, so a
//! checkpoint of m and v resumes bit for bit.

use super::{Bytes, ClientUpdates, Deploy, Deployed, Family, RoundPlan, Sizes, Strategy};
use crate::federated::config::{ServerOptConfig, ServerOptName};
use anyhow::{Result, bail, ensure};

/// Prefix of the inner strategy's tensors in FedOpt's state.
const INNER: &str = "inner.";

pub struct FedOpt {
    inner: Box<dyn Strategy>,
    cfg: ServerOptConfig,
    /// First moment (FedAdam / FedYogi) or momentum buffer (FedAvgM).
    m: Vec<f32>,
    /// Second moment (FedAdam / FedYogi).
    v: Vec<f32>,
}

impl FedOpt {
    /// `cfg.opt` over `inner`'s aggregate; `inner` must aggregate (return new parameters).
    pub fn new(inner: Box<dyn Strategy>, cfg: ServerOptConfig) -> Self {
        FedOpt {
            inner,
            cfg,
            m: Vec::new(),
            v: Vec::new(),
        }
    }

    /// One server step from `global` with the aggregate `mean`; `round` is 0-based.
    pub fn step(&mut self, round: u32, global: &[f32], mean: &[f32]) -> Vec<f32> {
        let n = global.len();
        if self.m.len() != n {
            self.m = vec![0.0; n];
            self.v = vec![0.0; n];
        }
        let c = self.cfg;
        let t = round as f64 + 1.0;
        let eta = match c.opt {
            ServerOptName::Fedadam => {
                c.lr * (1.0 - c.beta2.powf(t + 1.0)).sqrt() / (1.0 - c.beta1.powf(t + 1.0))
            }
            _ => c.lr,
        };
        let mut next = Vec::with_capacity(n);
        for i in 0..n {
            let (x, delta) = (global[i] as f64, mean[i] as f64 - global[i] as f64);
            let (m, v) = (self.m[i] as f64, self.v[i] as f64);
            let (m, v, x) = match c.opt {
                ServerOptName::Fedavg => (m, v, mean[i] as f64),
                ServerOptName::Fedavgm => {
                    let m = c.momentum * m - delta;
                    (m, v, x - eta * m)
                }
                ServerOptName::Fedadam | ServerOptName::Fedyogi => {
                    let m = c.beta1 * m + (1.0 - c.beta1) * delta;
                    let d2 = delta * delta;
                    let v = if c.opt == ServerOptName::Fedadam {
                        c.beta2 * v + (1.0 - c.beta2) * d2
                    } else {
                        v - (1.0 - c.beta2) * d2 * sign(v - d2)
                    };
                    (m, v, x + eta * m / (v.sqrt() + c.tau))
                }
            };
            self.m[i] = m as f32;
            self.v[i] = v as f32;
            next.push(x as f32);
        }
        next
    }
}

/// NumPy's `sign`: 0 at 0.
fn sign(x: f64) -> f64 {
    if x > 0.0 {
        1.0
    } else if x < 0.0 {
        -1.0
    } else {
        0.0
    }
}

impl Strategy for FedOpt {
    fn rounds(&self, requested: u32) -> u32 {
        self.inner.rounds(requested)
    }

    fn sample(&mut self, round: u32, clients: usize) -> Option<Vec<usize>> {
        self.inner.sample(round, clients)
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
        round: u32,
        global: &[f32],
        updates: &ClientUpdates,
    ) -> Result<Option<Vec<f32>>> {
        let Some(mean) = self.inner.aggregate_train(round, global, updates)? else {
            bail!(
                "--server-opt needs a method whose server averages (fedclip, fedprox, linear-probe, clip-adapter)"
            );
        };
        Ok(Some(self.step(round, global, &mean)))
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

    /// m and v, then the inner strategy's state (e.g. the DP noise stream) as `inner.*`.
    fn state(&self) -> Vec<(String, Vec<f32>)> {
        let mut state = Vec::new();
        if !self.m.is_empty() {
            state = vec![("m".into(), self.m.clone()), ("v".into(), self.v.clone())];
        }
        let inner = self.inner.state().into_iter();
        state.extend(inner.map(|(name, v)| (format!("{INNER}{name}"), v)));
        state
    }

    fn load_state(&mut self, saved: &[(String, Vec<f32>)]) -> Result<()> {
        let (inner, own): (Vec<_>, Vec<_>) = saved
            .iter()
            .cloned()
            .partition(|(n, _)| n.starts_with(INNER));
        let inner: Vec<_> = (inner.into_iter())
            .map(|(n, v)| (n[INNER.len()..].to_string(), v))
            .collect();
        self.inner.load_state(&inner)?;
        let get = |k: &str| own.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        match (get("m"), get("v")) {
            (Some(m), Some(v)) => {
                ensure!(
                    m.len() == v.len() && own.len() == 2,
                    "the checkpoint's server optimiser state is inconsistent"
                );
                (self.m, self.v) = (m, v);
            }
            (None, None) if own.is_empty() => {}
            _ => bail!("the checkpoint's server optimiser state is incomplete (needs m and v)"),
        }
        Ok(())
    }
}
