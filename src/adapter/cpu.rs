//! [`CpuAdapters`]: K client adapters on the CPU, stepped in parallel with rayon.

use super::kernel::{self, Scratch};
use super::optim;
use super::params::{AdapterParams, param_count};
use super::real::all_finite;
use super::{
    AdapterBackend, ClientBatch, OptimizerState, TextFeatures, TrainConfig, check_features,
    check_setup, check_step,
};
use anyhow::{Result, bail, ensure};
use rayon::prelude::*;
use std::sync::Mutex;

/// Per-task work buffers: the kernel's scratch and one client's gradient.
#[derive(Default)]
struct Work {
    scratch: Scratch<f32>,
    grad: Vec<f32>,
}

/// Buffers kept across steps, so that steps do not allocate (and page-fault) megabytes.
#[derive(Default)]
struct WorkPool(Mutex<Vec<Work>>);

/// A [`Work`] borrowed from the pool, returned on drop.
struct Lease<'a> {
    pool: &'a WorkPool,
    work: Option<Work>,
}

impl WorkPool {
    fn lease(&self) -> Lease<'_> {
        let work = self.0.lock().map(|mut v| v.pop()).unwrap_or_default();
        Lease {
            pool: self,
            work: Some(work.unwrap_or_default()),
        }
    }
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        if let (Some(w), Ok(mut v)) = (self.work.take(), self.pool.0.lock()) {
            v.push(w);
        }
    }
}

/// K independent adapters of width d sharing one set of class text features and one
/// [`TrainConfig`]. Parameters and the Adam moments are stored `[K, param_count(d)]`
/// contiguous; each client keeps its own optimiser step count (it advances only when that
/// client steps). Clients run in parallel; a large batch also parallelises inside its
/// client. A client's results never depend on which other clients step with it: K = 1 and
/// K = 1000 compute each client bit-for-bit the same.
pub struct CpuAdapters {
    dim: usize,
    clients: usize,
    texts: TextFeatures<f32>,
    config: TrainConfig,
    scale: f32,
    params: Vec<f32>,
    m: Vec<f32>,
    v: Vec<f32>,
    optimizer_steps: Vec<u64>,
    steps: u64,
    pool: WorkPool,
    /// FedProx: μ and the anchor θ_global of the term μ/2 ‖θ − θ_global‖².
    proximal: Option<(f32, Vec<f32>)>,
}

impl CpuAdapters {
    /// `num_clients` adapters, all starting from `init` (as FedCLIP deep-copies the server
    /// adapter), with fresh optimiser state.
    pub fn new(
        num_clients: usize,
        init: &AdapterParams<f32>,
        texts: TextFeatures<f32>,
        config: TrainConfig,
    ) -> Result<Self> {
        let dim = init.dim();
        let scale = check_setup(num_clients, dim, &texts, &config)?;
        let p = param_count(dim);
        let total = num_clients
            .checked_mul(p)
            .ok_or_else(|| anyhow::anyhow!("{num_clients} clients × {p} parameters overflow"))?;
        let mut params = vec![0.0f32; total];
        params
            .par_chunks_mut(p)
            .for_each(|c| c.copy_from_slice(init.as_slice()));
        Ok(CpuAdapters {
            dim,
            clients: num_clients,
            texts,
            config,
            scale,
            params,
            m: vec![0.0; total],
            v: vec![0.0; total],
            optimizer_steps: vec![0; num_clients],
            steps: 0,
            pool: WorkPool::default(),
            proximal: None,
        })
    }

    pub fn config(&self) -> &TrainConfig {
        &self.config
    }
    pub fn texts(&self) -> &TextFeatures<f32> {
        &self.texts
    }
    /// All parameters, `[K, param_count(d)]`, without a copy.
    pub fn params(&self) -> &[f32] {
        &self.params
    }
    /// How many optimiser steps client `k` has taken since the last reset.
    pub fn optimizer_steps(&self, k: usize) -> Option<u64> {
        self.optimizer_steps.get(k).copied()
    }

    fn client_range(&self, k: usize) -> Result<std::ops::Range<usize>> {
        ensure!(
            k < self.clients,
            "client {k} does not exist ({} clients)",
            self.clients
        );
        let p = param_count(self.dim);
        Ok(k * p..(k + 1) * p)
    }
}

impl AdapterBackend for CpuAdapters {
    fn num_clients(&self) -> usize {
        self.clients
    }
    fn dim(&self) -> usize {
        self.dim
    }
    fn steps(&self) -> u64 {
        self.steps
    }

    fn step(&mut self, batches: &[Option<ClientBatch<'_>>]) -> Result<Vec<Option<f32>>> {
        let step = self.steps;
        let (d, c) = (self.dim, self.texts.classes());
        check_step(step, batches, self.clients, d, c)?;
        self.steps += 1;
        let p = param_count(d);
        let (config, scale, texts) = (self.config, self.scale, self.texts.as_slice());
        let pool = &self.pool;
        let proximal = self.proximal.as_ref();
        let min_batch = config.min_batch.max(1);
        let results: Vec<Result<Option<f32>>> = self
            .params
            .par_chunks_mut(p)
            .zip(self.m.par_chunks_mut(p))
            .zip(self.v.par_chunks_mut(p))
            .zip(self.optimizer_steps.par_iter_mut())
            .zip(batches.par_iter())
            .enumerate()
            .map_init(
                || pool.lease(),
                |lease, (k, ((((theta, m), v), t), batch))| {
                    let Some(batch) = batch else {
                        return Ok(None);
                    };
                    if batch.len() < min_batch {
                        return Ok(None);
                    }
                    let Work { scratch, grad } = lease.work.as_mut().expect("leased");
                    grad.resize(p, 0.0);
                    let loss = kernel::loss_and_grad_into(
                        theta,
                        d,
                        batch.features,
                        batch.labels,
                        texts,
                        c,
                        scale,
                        config.loss,
                        grad,
                        scratch,
                    );
                    let loss = match proximal {
                        Some((mu, anchor)) => loss + add_proximal(*mu, theta, anchor, grad),
                        None => loss,
                    };
                    if !loss.is_finite() {
                        bail!("client {k}, step {step}: loss is {loss}; training diverged");
                    }
                    if !all_finite(grad) {
                        bail!(
                            "client {k}, step {step}: gradient is not finite (loss {loss}); \
                             training diverged"
                        );
                    }
                    *t += 1;
                    optim::step(&config.optimizer, *t, theta, grad, m, v);
                    Ok(Some(loss))
                },
            )
            .collect();
        results.into_iter().collect()
    }

    fn set_proximal(&mut self, mu: f32, anchor: Option<&AdapterParams<f32>>) -> Result<()> {
        self.proximal = match anchor {
            Some(a) => {
                ensure!(
                    mu.is_finite() && mu >= 0.0,
                    "proximal μ must be finite and ≥ 0, got {mu}"
                );
                ensure!(
                    a.dim() == self.dim,
                    "proximal anchor has dim {}, the adapters have dim {}",
                    a.dim(),
                    self.dim
                );
                Some((mu, a.as_slice().to_vec()))
            }
            None => None,
        };
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
        super::restore_moments(&mut self.m, &mut self.v, &mut self.optimizer_steps, state)
    }

    fn reset(&mut self) {
        self.m.par_chunks_mut(1 << 16).for_each(|c| c.fill(0.0));
        self.v.par_chunks_mut(1 << 16).for_each(|c| c.fill(0.0));
        self.optimizer_steps.fill(0);
    }

    fn set_lr(&mut self, lr: f64) {
        self.config.optimizer.lr = lr;
    }

    fn client_params(&self, k: usize) -> Result<AdapterParams<f32>> {
        let r = self.client_range(k)?;
        AdapterParams::from_flat(self.dim, self.params[r].to_vec())
    }

    fn set_client_params(&mut self, k: usize, params: &AdapterParams<f32>) -> Result<()> {
        ensure!(
            params.dim() == self.dim,
            "client {k}: parameters have dim {}, the adapters have dim {}",
            params.dim(),
            self.dim
        );
        let r = self.client_range(k)?;
        self.params[r].copy_from_slice(params.as_slice());
        Ok(())
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
            param_count(self.dim),
            self.params.len()
        );
        self.params.copy_from_slice(params);
        Ok(())
    }

    fn predict(&self, k: usize, features: &[f32]) -> Result<Vec<u32>> {
        let r = self.client_range(k)?;
        let d = self.dim;
        ensure!(
            features.len().is_multiple_of(d),
            "client {k}: features hold {} values, not a multiple of the adapter dim {d}",
            features.len()
        );
        check_features(&format!("client {k}, predict"), features, d)?;
        let b = features.len() / d;
        let mut s = Scratch::default();
        s.prepare(b, d, 0);
        kernel::forward_into(&self.params[r], d, features, b, &mut s);
        Ok(kernel::argmax_classes(
            s.normalized(b, d),
            b,
            d,
            self.texts.as_slice(),
            self.texts.classes(),
        ))
    }
}

/// Adds FedProx's μ (θ − anchor) to `grad` and returns the term μ/2 ‖θ − anchor‖².
fn add_proximal(mu: f32, theta: &[f32], anchor: &[f32], grad: &mut [f32]) -> f32 {
    let mut sq = 0.0f32;
    for ((g, &t), &a) in grad.iter_mut().zip(theta).zip(anchor) {
        let diff = t - a;
        *g += mu * diff;
        sq += diff * diff;
    }
    0.5 * mu * sq
}
