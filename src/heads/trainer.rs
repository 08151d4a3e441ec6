//! [`HeadTrainer`]: K clients' rows of one [`Head`] on the CPU, stepped in parallel with
//! rayon, with the attention adapter's optimisers (Adam / AdamW / SGD) and its step checks and messages.

use super::{Head, argmax_rows, check_rows};
use crate::adapter::{
    AdapterBackend, AdapterParams, ClientBatch, OptimizerConfig, OptimizerState, all_finite,
    check_step, optimizer_step,
};
use anyhow::{Result, bail, ensure};
use rayon::prelude::*;

/// K rows `[K, P]` of one head with per-client Adam moments and step counts. Only the first
/// [`Head::trainable`] values of a row are stepped. Batches with fewer than `min_batch`
/// samples are skipped. A client's results never depend on which others step with it.
pub struct HeadTrainer<H> {
    head: H,
    clients: usize,
    optimizer: OptimizerConfig,
    min_batch: usize,
    params: Vec<f32>,
    m: Vec<f32>,
    v: Vec<f32>,
    optimizer_steps: Vec<u64>,
    steps: u64,
}

impl<H: Head<f32>> HeadTrainer<H> {
    /// The trainer with `rows` (`[K, P]`) as the clients' starting parameters.
    pub fn new(
        head: H,
        rows: Vec<f32>,
        optimizer: OptimizerConfig,
        min_batch: usize,
    ) -> Result<Self> {
        let p = head.param_count();
        ensure!(
            p > 0 && !rows.is_empty() && rows.len().is_multiple_of(p),
            "{}: {} initial values are not whole rows of {p}",
            head.name(),
            rows.len()
        );
        let clients = rows.len() / p;
        Ok(HeadTrainer {
            head,
            clients,
            optimizer,
            min_batch: min_batch.max(1),
            m: vec![0.0; rows.len()],
            v: vec![0.0; rows.len()],
            params: rows,
            optimizer_steps: vec![0; clients],
            steps: 0,
        })
    }

    pub fn head(&self) -> &H {
        &self.head
    }

    fn row(&self, k: usize) -> Result<std::ops::Range<usize>> {
        ensure!(
            k < self.clients,
            "client {k} does not exist ({} clients)",
            self.clients
        );
        let p = self.head.param_count();
        Ok(k * p..(k + 1) * p)
    }

    fn no_adapter(&self) -> anyhow::Error {
        anyhow::anyhow!(
            "the {} trainer holds flat rows, not attention adapters",
            self.head.name()
        )
    }
}

impl<H: Head<f32>> AdapterBackend for HeadTrainer<H> {
    fn num_clients(&self) -> usize {
        self.clients
    }
    fn dim(&self) -> usize {
        self.head.dim()
    }
    fn steps(&self) -> u64 {
        self.steps
    }

    fn step(&mut self, batches: &[Option<ClientBatch<'_>>]) -> Result<Vec<Option<f32>>> {
        let step = self.steps;
        let (d, c) = (self.head.dim(), self.head.classes());
        check_step(step, batches, self.clients, d, c)?;
        self.steps += 1;
        let (p, trained) = (self.head.param_count(), self.head.trainable());
        let (head, optimizer, min_batch) = (&self.head, self.optimizer, self.min_batch);
        let results: Vec<Result<Option<f32>>> = (self.params.par_chunks_mut(p))
            .zip(self.m.par_chunks_mut(p))
            .zip(self.v.par_chunks_mut(p))
            .zip(self.optimizer_steps.par_iter_mut())
            .zip(batches.par_iter())
            .enumerate()
            .map(|(k, ((((theta, m), v), t), batch))| {
                let Some(batch) = batch.filter(|b| b.len() >= min_batch) else {
                    return Ok(None);
                };
                let mut grad = vec![0.0f32; p];
                let loss = head.loss_and_grad(theta, batch.features, batch.labels, &mut grad);
                if !loss.is_finite() {
                    bail!("client {k}, step {step}: loss is {loss}; training diverged");
                }
                if !all_finite(&grad) {
                    bail!(
                        "client {k}, step {step}: gradient is not finite (loss {loss}); \
                         training diverged"
                    );
                }
                if trained > 0 {
                    *t += 1;
                    let (theta, grad) = (&mut theta[..trained], &grad[..trained]);
                    optimizer_step(
                        &optimizer,
                        *t,
                        theta,
                        grad,
                        &mut m[..trained],
                        &mut v[..trained],
                    );
                }
                Ok(Some(loss))
            })
            .collect();
        results.into_iter().collect()
    }

    fn set_proximal(&mut self, mu: f32, anchor: Option<&AdapterParams<f32>>) -> Result<()> {
        self.set_proximal_row(mu, anchor.map(|a| a.as_slice()))
    }

    fn set_proximal_row(&mut self, mu: f32, anchor: Option<&[f32]>) -> Result<()> {
        if anchor.is_some() && mu != 0.0 {
            bail!("{} has no proximal term (FedProx's μ)", self.head.name());
        }
        Ok(())
    }

    fn optimizer_state(&self) -> OptimizerState {
        OptimizerState {
            m: self.m.clone(),
            v: self.v.clone(),
            steps: self.optimizer_steps.clone(),
        }
    }

    fn set_optimizer_state(&mut self, state: &OptimizerState) -> Result<()> {
        crate::adapter::restore_moments(&mut self.m, &mut self.v, &mut self.optimizer_steps, state)
    }

    fn reset(&mut self) {
        self.m.fill(0.0);
        self.v.fill(0.0);
        self.optimizer_steps.fill(0);
    }

    fn set_lr(&mut self, lr: f64) {
        self.optimizer.lr = lr;
    }

    fn client_params(&self, _k: usize) -> Result<AdapterParams<f32>> {
        Err(self.no_adapter())
    }

    fn set_client_params(&mut self, _k: usize, _params: &AdapterParams<f32>) -> Result<()> {
        Err(self.no_adapter())
    }

    fn read_all_params(&self) -> Result<Vec<f32>> {
        Ok(self.params.clone())
    }

    fn write_all_params(&mut self, params: &[f32]) -> Result<()> {
        ensure!(
            params.len() == self.params.len(),
            "parameter buffer has {} values, expected {} clients × {} = {}",
            params.len(),
            self.clients,
            self.head.param_count(),
            self.params.len()
        );
        self.params.copy_from_slice(params);
        Ok(())
    }

    fn predict(&self, k: usize, features: &[f32]) -> Result<Vec<u32>> {
        let r = self.row(k)?;
        check_rows(&format!("client {k}, predict"), features, self.head.dim())?;
        let logits = self.head.logits(&self.params[r], features);
        Ok(argmax_rows(&logits, self.head.classes()))
    }

    fn param_count(&self) -> usize {
        self.head.param_count()
    }

    fn client_row(&self, k: usize) -> Result<Vec<f32>> {
        Ok(self.params[self.row(k)?].to_vec())
    }

    fn set_client_row(&mut self, k: usize, row: &[f32]) -> Result<()> {
        let r = self.row(k)?;
        ensure!(
            row.len() == r.len(),
            "client {k}: a row of {} values, the {} rows hold {}",
            row.len(),
            self.head.name(),
            r.len()
        );
        self.params[r].copy_from_slice(row);
        Ok(())
    }
}
