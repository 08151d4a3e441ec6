//! Stage 5: federated rounds. Each client's frozen CLIP features are extracted once (and
//! cached across runs); the rounds then only train adapters, all training clients stepped
//! together as one K-client batch.
//!
//! A run is five stages, one module each: [`plan`] (flags, data, splits, run directory
//! with [`rundir`], resume, checked against [`inputs`]) → [`features`] (encoder + cache, [`bad_images`] found first) → [`rounds`] (the loop over a
//! [`strategy::Strategy`], its [`family`] (which trainer and classifier its parameters
//! need), [`train`] the shared local update (at the [`schedule`]'s rate) and [`evaluate`] the
//! per-round metrics; [`checkpoint`] the state) → [`outputs`] (adapters, plot, summary).

pub mod aggregate;
pub mod bad_images;
pub mod checkpoint;
pub mod config;
pub mod dp;
pub mod evaluate;
pub mod family;
pub mod features;
pub mod finetune;
pub mod inputs;
pub mod outputs;
pub mod plan;
pub mod report;
pub mod rounds;
pub mod rundir;
pub mod schedule;
pub mod strategy;
pub mod train;

pub use crate::bundled::is_bundled_model;
pub use config::{
    Aggregate, LossName, Method, MethodOptions, OptimizerName, PromptOptions, RunConfig,
    ServerOptConfig, ServerOptName,
};
pub use dp::{DpConfig, DpMode};
pub use schedule::LrSchedule;

use crate::cuda::Gpu;
use crate::device::Device;
use crate::encode::Engine;
use anyhow::{Result, bail};
use report::Summary;
use std::path::PathBuf;
use std::sync::Arc;

/// What `run` reports back to the CLI.
pub struct RunOutcome {
    pub out: PathBuf,
    pub summary: Summary,
    pub resumed_from: Option<u32>,
}

/// Told after each round, once its metrics and checkpoint are written: the rounds finished
/// (as `metrics.csv` numbers them) and the round's rows. An error stops the run there; it
/// resumes from that checkpoint.
pub type OnRound<'a> = &'a mut dyn FnMut(u32, &[report::MetricRow]) -> Result<()>;

/// Runs (or, with `resume`, continues) one experiment. See `fedclip run --help`.
pub fn run(cfg: &RunConfig, resume: bool, device: Device) -> Result<RunOutcome> {
    run_with(cfg, resume, device, &mut |_, _| Ok(()))
}

/// [`run`], telling `on_round` after each round (the Python module's per-round callback).
pub fn run_with(
    cfg: &RunConfig,
    resume: bool,
    device: Device,
    on_round: OnRound<'_>,
) -> Result<RunOutcome> {
    // On a GPU both the extraction and the adapter rounds run there.
    let gpu = Engine::select(device)?.gpu().cloned();
    run_on_with(cfg, resume, gpu, on_round)
}

/// [`run`] on a given GPU (or the CPU with `None`); tests pass the host emulator here.
pub fn run_on(cfg: &RunConfig, resume: bool, gpu: Option<Arc<Gpu>>) -> Result<RunOutcome> {
    run_on_with(cfg, resume, gpu, &mut |_, _| Ok(()))
}

fn run_on_with(
    cfg: &RunConfig,
    resume: bool,
    gpu: Option<Arc<Gpu>>,
    on_round: OnRound<'_>,
) -> Result<RunOutcome> {
    let strategy = strategy::build(cfg)?;
    let trains = strategy.deployed() != strategy::Deployed::Nothing;
    finetune::check(cfg.finetune_local_steps, strategy.deployed())?;
    if cfg.augment_views > 0 && !(trains && strategy.local_epochs(cfg.local_epochs) > 0) {
        bail!(
            "--augment-views {}: --method {} takes no training steps, so it has no use for \
             augmented views",
            cfg.augment_views,
            cfg.method.name()
        );
    }
    train::check_batch(cfg, strategy.family(), trains)?;
    let mut plan = plan::make(cfg, resume, trains)?;
    let engine = Engine::from_gpu(gpu);
    let features = features::extract(cfg, &plan.dataset, &plan.splits, &engine)?;
    let saved = plan.saved.take();
    let resumed_from = saved.as_ref().map(|s| s.rounds_done);
    let mut rounds = rounds::Rounds::new(cfg, &plan.splits, &features, &engine, strategy, saved)?;
    rounds.run(&cfg.out, on_round)?;
    let finetuned = match cfg.finetune_local_steps {
        0 => None,
        steps => Some(rounds.finetune(steps)?),
    };
    let summary = outputs::write(cfg, &plan, &features, &rounds, finetuned)?;
    Ok(RunOutcome {
        out: cfg.out.clone(),
        summary,
        resumed_from,
    })
}
