//! The FedCLIP attention adapter: forward, backward, losses, Adam / AdamW / SGD, and a trainer
//! that steps many independent client adapters at once.
//!
//! # What is trained (as in FedCLIP's reference, `microsoft/PersonalizedFL/fedclip`)
//!
//! For a projected, un-normalised CLIP image feature `I` (d values):
//! `a = softmax(W2 · tanh(W1 · I + b1) + b2)` over the d feature dimensions,
//! `I* = a ⊙ I`, `n = I* / ‖I*‖`. Class text features `t_c` are frozen and L2-normalised
//! ([`TextFeatures`]). With `s = exp(logit_scale)`:
//!
//! - [`Loss::Contrastive`] (the reference): `logits = s · n Tᵀ` [B, B] where row j of `T` is
//!   the text feature of sample j's label (two samples of one class both stay in);
//!   `loss = (CE(logits, arange B) + CE(logitsᵀ, arange B)) / 2`.
//! - [`Loss::Class`]: `CE(s · n T_classesᵀ, labels)`.
//!
//! Prediction is `argmax_c n · t_c` ([`predict`]); zero-shot is the same with `a = 1`.
//!
//! # Layers
//!
//! - [`AdapterParams`], [`forward`], [`loss_and_grad`], [`predict`]: one adapter, generic over
//!   `f32` / `f64` ([`Real`]); the f64 instantiation is what the gradient checks use.
//! - [`AdapterBackend`]: K client adapters trained together, one (possibly absent, possibly
//!   differently sized) batch per client per step. [`CpuAdapters`] implements it with rayon
//!   across clients; a CUDA backend is meant to implement the same trait over device
//!   buffers of the same `[K, param_count(d)]` layout.

mod cpu;
pub(crate) mod kernel;
mod optim;
mod params;
mod real;

pub use cpu::CpuAdapters;
pub(crate) use optim::step as optimizer_step;
pub use optim::{OptimizerConfig, OptimizerKind};
pub use params::{AdapterParams, param_count, seeded_unit_stream};
pub use real::Real;
pub(crate) use real::all_finite;

use anyhow::{Result, bail, ensure};

/// Which loss a step minimises.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Loss {
    /// FedCLIP's reference: symmetric image↔text CE over the batch (needs B ≥ 2 to be useful).
    Contrastive,
    /// Plain classification CE against all class text features.
    Class,
}

/// Everything a trainer needs besides the data.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TrainConfig {
    pub loss: Loss,
    /// CLIP's `logit_scale` parameter (the log of the scale): s = exp(logit_scale), computed in
    /// f32. Trained CLIP models hold ln 100 ≈ 4.6052.
    pub logit_scale: f32,
    pub optimizer: OptimizerConfig,
    /// Batches with fewer samples are skipped (no update, loss `None`). The reference
    /// trains only on batches with more than one sample, so the default is 2.
    pub min_batch: usize,
}

impl Default for TrainConfig {
    /// The reference: contrastive loss, s = 100, Adam(5e-5, (0.9, 0.98), 1e-6, wd 0.2),
    /// batches of one sample skipped.
    fn default() -> Self {
        TrainConfig {
            loss: Loss::Contrastive,
            logit_scale: 100f32.ln(),
            optimizer: OptimizerConfig::default(),
            min_batch: 2,
        }
    }
}

/// One client's batch for one step: `labels.len()` samples, `features` [B, d] row-major
/// (raw projected CLIP image features, not normalised). Features stored as f16 elsewhere
/// are converted by the caller.
#[derive(Clone, Copy, Debug)]
pub struct ClientBatch<'a, T: Real = f32> {
    pub features: &'a [T],
    pub labels: &'a [u32],
}

impl<'a, T: Real> ClientBatch<'a, T> {
    pub fn new(features: &'a [T], labels: &'a [u32]) -> Self {
        ClientBatch { features, labels }
    }
    pub fn len(&self) -> usize {
        self.labels.len()
    }
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }
}

/// Frozen class text features, L2-normalised on construction: [C, d] row-major.
#[derive(Clone, Debug, PartialEq)]
pub struct TextFeatures<T: Real = f32> {
    classes: usize,
    dim: usize,
    data: Vec<T>,
}

impl<T: Real> TextFeatures<T> {
    /// From raw (normalised or not) text features [classes, dim]. Each row is divided by its
    /// L2 norm. Errors on a wrong length, non-finite values or an all-zero row.
    pub fn new(raw: &[T], classes: usize, dim: usize) -> Result<Self> {
        ensure!(
            classes > 0 && dim > 0,
            "text features need at least one class and one dim"
        );
        ensure!(
            raw.len() == classes * dim,
            "text features have {} values, expected {classes} classes × {dim} dims = {}",
            raw.len(),
            classes * dim
        );
        let mut data = raw.to_vec();
        for (c, row) in data.chunks_exact_mut(dim).enumerate() {
            if let Some(j) = row.iter().position(|v| !v.is_finite()) {
                bail!(
                    "text feature of class {c} is not finite at dim {j} ({})",
                    row[j]
                );
            }
            let norm = row.iter().map(|&v| v * v).sum::<T>().sqrt();
            ensure!(norm > T::ZERO, "text feature of class {c} is all zeros");
            row.iter_mut().for_each(|v| *v /= norm);
        }
        Ok(TextFeatures { classes, dim, data })
    }
    pub fn classes(&self) -> usize {
        self.classes
    }
    pub fn dim(&self) -> usize {
        self.dim
    }
    /// The normalised features, [classes, dim].
    pub fn as_slice(&self) -> &[T] {
        &self.data
    }
    pub fn cast<U: Real>(&self) -> TextFeatures<U> {
        TextFeatures {
            classes: self.classes,
            dim: self.dim,
            data: self.data.iter().map(|&v| U::from_f64(v.to_f64())).collect(),
        }
    }
}

/// Adam moments `[K, param_count(d)]` each and per-client step counts. With SGD, `m` is the
/// momentum buffer and `v` stays zero.
#[derive(Clone, Debug, PartialEq)]
pub struct OptimizerState {
    pub m: Vec<f32>,
    pub v: Vec<f32>,
    pub steps: Vec<u64>,
}

/// Restores saved Adam moments and step counts into a trainer's host buffers (both CPU
/// trainers keep them as `[K, P]` rows and K counts), when the shapes agree.
pub(crate) fn restore_moments(
    m: &mut [f32],
    v: &mut [f32],
    steps: &mut [u64],
    saved: &OptimizerState,
) -> Result<()> {
    ensure!(
        saved.m.len() == m.len() && saved.v.len() == v.len() && saved.steps.len() == steps.len(),
        "optimiser state is for another shape: {} moments and {} step counts, expected {} and {}",
        saved.m.len(),
        saved.steps.len(),
        m.len(),
        steps.len()
    );
    m.copy_from_slice(&saved.m);
    v.copy_from_slice(&saved.v);
    steps.copy_from_slice(&saved.steps);
    Ok(())
}

/// K client adapters trained together. One implementation per compute backend; all use the
/// flat per-client layout of [`param_count`] (`[W1 | b1 | W2 | b2]`), clients contiguous.
///
/// Step numbers in errors count calls to [`AdapterBackend::step`] from 0.
pub trait AdapterBackend {
    fn num_clients(&self) -> usize;
    fn dim(&self) -> usize;
    /// Number of `step` calls so far (the number the next call's errors will name).
    fn steps(&self) -> u64;
    /// One optimiser step for every client that has a batch: `batches[k]` is client k's batch
    /// or `None`; batches may differ in size. Returns each client's loss, `None` where it did
    /// not step (no batch, or fewer than `min_batch` samples).
    ///
    /// Errors, naming the client and step: `batches.len() != num_clients()`, a feature block
    /// that is not [B, d], a label ≥ the number of classes, a NaN/inf or all-zero feature row
    /// (all checked before any client is updated), and a non-finite loss or gradient (that
    /// client is left unchanged; clients computed alongside it may have stepped).
    fn step(&mut self, batches: &[Option<ClientBatch<'_>>]) -> Result<Vec<Option<f32>>>;
    /// FedProx: adds μ/2 ‖θ_k − anchor‖² to every client's loss from the next step on
    /// (`None` removes it). The anchor is the global adapter the round started from.
    fn set_proximal(&mut self, mu: f32, anchor: Option<&AdapterParams<f32>>) -> Result<()>;
    /// Every client's Adam moments and step count, for checkpoints.
    fn optimizer_state(&self) -> OptimizerState;
    /// Restores what [`AdapterBackend::optimizer_state`] returned.
    fn set_optimizer_state(&mut self, state: &OptimizerState) -> Result<()>;
    /// Forgets every client's optimiser state (moments and step count), as building a fresh
    /// `torch.optim.Adam` per round does. Parameters are kept.
    fn reset(&mut self);
    /// The learning rate of the next steps (a schedule sets it per round, as an
    /// `lr_scheduler` sets `param_groups[i]["lr"]`); optimiser state is kept.
    fn set_lr(&mut self, lr: f64);
    /// Client `k`'s parameters.
    fn client_params(&self, k: usize) -> Result<AdapterParams<f32>>;
    /// Overwrites client `k`'s parameters (optimiser state is kept; call `reset` to drop it).
    fn set_client_params(&mut self, k: usize, params: &AdapterParams<f32>) -> Result<()>;
    /// All parameters, `[K, param_count(d)]` row-major.
    fn read_all_params(&self) -> Result<Vec<f32>>;
    /// Overwrites all parameters from a `[K, param_count(d)]` buffer.
    fn write_all_params(&mut self, params: &[f32]) -> Result<()>;
    /// Predicted class per row of `features` [B, d] with client k's adapter.
    fn predict(&self, k: usize, features: &[f32]) -> Result<Vec<u32>>;

    // Flat rows: what the rounds loop uses, so that trainers of other parameter shapes
    // (`crate::heads`) fit. The defaults go through [`AdapterParams`], for the attention
    // adapter's engines.

    /// Values per client row (P).
    fn param_count(&self) -> usize {
        param_count(self.dim())
    }
    /// Client `k`'s parameters as one flat row of [`AdapterBackend::param_count`] values.
    fn client_row(&self, k: usize) -> Result<Vec<f32>> {
        Ok(self.client_params(k)?.into_vec())
    }
    /// Overwrites client `k`'s row (optimiser state is kept).
    fn set_client_row(&mut self, k: usize, row: &[f32]) -> Result<()> {
        let params = AdapterParams::from_flat(self.dim(), row.to_vec())?;
        self.set_client_params(k, &params)
    }
    /// [`AdapterBackend::set_proximal`] with the anchor as a flat row.
    fn set_proximal_row(&mut self, mu: f32, anchor: Option<&[f32]>) -> Result<()> {
        let anchor = anchor
            .map(|a| AdapterParams::from_flat(self.dim(), a.to_vec()))
            .transpose()?;
        self.set_proximal(mu, anchor.as_ref())
    }
}

/// Checks what a K-client trainer is built from and returns the logit scale s = exp(logit_scale).
pub(crate) fn check_setup(
    num_clients: usize,
    dim: usize,
    texts: &TextFeatures<f32>,
    config: &TrainConfig,
) -> Result<f32> {
    ensure!(num_clients > 0, "need at least one client");
    check_texts(dim, texts)?;
    ensure!(
        config.logit_scale.is_finite(),
        "logit scale {} is not finite",
        config.logit_scale
    );
    let scale = config.logit_scale.exp();
    ensure!(
        scale.is_finite(),
        "logit scale {} overflows exp()",
        config.logit_scale
    );
    Ok(scale)
}

/// Checks one step's batches before any client is touched: one entry per client, each batch
/// as [`check_batch`] wants it. Messages name the client and the step.
pub(crate) fn check_step(
    step: u64,
    batches: &[Option<ClientBatch<'_>>],
    clients: usize,
    dim: usize,
    classes: usize,
) -> Result<()> {
    if batches.len() != clients {
        bail!(
            "step {step}: {} batches given for {clients} clients",
            batches.len()
        );
    }
    for (k, batch) in batches.iter().enumerate() {
        if let Some(batch) = batch {
            check_batch(&format!("client {k}, step {step}"), batch, dim, classes)?;
        }
    }
    Ok(())
}

/// Checks one batch: [B, d] features, finite and not all zero per row, labels < classes.
/// `who` prefixes the messages (e.g. "client 3, step 7").
pub(crate) fn check_batch<T: Real>(
    who: &str,
    batch: &ClientBatch<'_, T>,
    dim: usize,
    classes: usize,
) -> Result<()> {
    let b = batch.labels.len();
    if batch.features.len() != b * dim {
        bail!(
            "{who}: features hold {} values but there are {b} labels; expected {b} × {dim} \
             (the adapter dim) = {}",
            batch.features.len(),
            b * dim
        );
    }
    if let Some((i, &y)) = batch
        .labels
        .iter()
        .enumerate()
        .find(|&(_, &y)| y as usize >= classes)
    {
        bail!("{who}: label {y} of sample {i} is out of range for {classes} classes");
    }
    check_features(who, batch.features, dim)
}

/// Features finite and no row all zero (its adapted feature would have no direction).
pub(crate) fn check_features<T: Real>(who: &str, features: &[T], dim: usize) -> Result<()> {
    if !real::all_finite(features) {
        let i = features.iter().position(|v| !v.is_finite()).unwrap_or(0);
        let v = features[i];
        let what = if v.is_nan() { "NaN" } else { "infinite" };
        bail!(
            "{who}: feature of sample {} at dim {} is {what} ({v})",
            i / dim,
            i % dim
        );
    }
    if let Some(r) = features
        .chunks_exact(dim)
        .position(|row| row.iter().all(|&v| v == T::ZERO))
    {
        bail!("{who}: feature of sample {r} is all zeros");
    }
    Ok(())
}

fn check_texts<T: Real>(dim: usize, texts: &TextFeatures<T>) -> Result<()> {
    ensure!(
        texts.dim() == dim,
        "text features have dim {}, the adapter has dim {dim}",
        texts.dim()
    );
    Ok(())
}

/// The adapted, L2-normalised features `n` [B, d] of `features` [B, d].
pub fn forward<T: Real>(params: &AdapterParams<T>, features: &[T]) -> Result<Vec<T>> {
    let d = params.dim();
    ensure!(
        features.len().is_multiple_of(d),
        "features hold {} values, not a multiple of the adapter dim {d}",
        features.len()
    );
    check_features("forward", features, d)?;
    let b = features.len() / d;
    let mut s = kernel::Scratch::default();
    s.prepare(b, d, 0);
    kernel::forward_into(params.as_slice(), d, features, b, &mut s);
    Ok(s.normalized(b, d).to_vec())
}

/// Loss of one batch and its gradient, in `T` (use `f64` for gradient checks). No batch is
/// skipped here (B = 1 gives the contrastive loss 0); B = 0 is an error.
pub fn loss_and_grad<T: Real>(
    params: &AdapterParams<T>,
    batch: &ClientBatch<'_, T>,
    texts: &TextFeatures<T>,
    logit_scale: T,
    loss: Loss,
) -> Result<(T, AdapterParams<T>)> {
    let d = params.dim();
    check_texts(d, texts)?;
    ensure!(!batch.is_empty(), "loss_and_grad: empty batch");
    check_batch("loss_and_grad", batch, d, texts.classes())?;
    let mut grad = AdapterParams::zeros(d);
    let mut s = kernel::Scratch::default();
    let value = kernel::loss_and_grad_into(
        params.as_slice(),
        d,
        batch.features,
        batch.labels,
        texts.as_slice(),
        texts.classes(),
        logit_scale.exp(),
        loss,
        grad.as_mut_slice(),
        &mut s,
    );
    Ok((value, grad))
}

/// Predicted class (`argmax_c n · t_c`) per row of `features` [B, d]; `params = None` is
/// CLIP zero-shot (no adapter).
pub fn predict<T: Real>(
    params: Option<&AdapterParams<T>>,
    features: &[T],
    texts: &TextFeatures<T>,
) -> Result<Vec<u32>> {
    let d = texts.dim();
    if let Some(p) = params {
        check_texts(p.dim(), texts)?;
    }
    ensure!(
        features.len().is_multiple_of(d),
        "features hold {} values, not a multiple of the feature dim {d}",
        features.len()
    );
    let b = features.len() / d;
    match params {
        Some(p) => {
            let n = forward(p, features)?;
            Ok(kernel::argmax_classes(
                &n,
                b,
                d,
                texts.as_slice(),
                texts.classes(),
            ))
        }
        None => {
            check_features("predict", features, d)?;
            Ok(kernel::argmax_classes(
                features,
                b,
                d,
                texts.as_slice(),
                texts.classes(),
            ))
        }
    }
}
