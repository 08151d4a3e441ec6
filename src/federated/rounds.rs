//! Stage 3 of a run: the one round loop (Flower's `start`). Per round: the strategy's plan,
//! the local epochs on the K-client trainer, the strategy's aggregation; then, in this order,
//! the metrics rows, the best round, the checkpoint, and the crash points the resume tests
//! abort at.

use super::checkpoint::{STATE_FILE, State};
use super::config::{RunConfig, readable};
use super::evaluate::Evaluation;
use super::family;
use super::features::Features;
use super::report;
use super::strategy::{Bytes, ClientUpdates, Deployed, Sizes, Strategy};
use super::train::local_epochs;
use crate::adapter::AdapterBackend;
use crate::data::split::Splits;
use crate::encode::Engine;
use crate::heads::Classifier;
use anyhow::{Result, ensure};
use std::path::Path;
use std::time::Instant;

/// Test hook for the resume tests: `FEDCLIP_ABORT_AT=<round>:<metrics|state>` aborts the
/// process, as a kill would, right after that round's metrics or its checkpoint are written.
fn crash_point(round: u32, point: &str) {
    if let Ok(spec) = std::env::var("FEDCLIP_ABORT_AT")
        && spec == format!("{round}:{point}")
    {
        eprintln!("FEDCLIP_ABORT_AT: aborting after round {round}'s {point}");
        std::process::abort();
    }
}

/// A round's mean val accuracy as printed; NaN means there were no validation files.
fn val_text(mean_val: f64) -> String {
    if mean_val.is_nan() {
        "no validation files".into()
    } else {
        format!("mean val accuracy {:.2}%", 100.0 * mean_val)
    }
}

/// The federation between rounds: trainer, strategy and state.
pub struct Rounds<'a> {
    pub(super) cfg: &'a RunConfig,
    splits: &'a Splits,
    pub(super) features: &'a Features,
    /// Client index of each trainer slot.
    pub trainees: Vec<usize>,
    pub(super) backend: Box<dyn AdapterBackend>,
    /// Predictions and tensor names of the strategy's family.
    pub classifier: Box<dyn Classifier>,
    pub strategy: Box<dyn Strategy>,
    pub state: State,
}

impl<'a> Rounds<'a> {
    /// The trainer on `engine` with one slot per training client, and the state: the saved
    /// one when resuming, else round 0 from the seeded adapter initialisation.
    pub fn new(
        cfg: &'a RunConfig,
        splits: &'a Splits,
        features: &'a Features,
        engine: &Engine,
        mut strategy: Box<dyn Strategy>,
        saved: Option<State>,
    ) -> Result<Self> {
        let trainees = splits.training_clients();
        ensure!(
            !trainees.is_empty(),
            "every domain is held out: no client to train"
        );
        let family::Trainable {
            mut backend,
            classifier,
            global,
        } = family::build(strategy.family(), cfg, features, &trainees, engine)?;
        let k = trainees.len();
        let p = backend.param_count();
        let state = match saved {
            Some(s) => {
                ensure!(
                    s.global.len() == global.len() && s.clients.len() == k * p,
                    "{}: saved adapters do not fit this run",
                    cfg.out.join(STATE_FILE).display()
                );
                backend.write_all_params(&s.clients)?;
                if let Some(o) = &s.optimizer {
                    backend.set_optimizer_state(o)?;
                }
                strategy.load_state(&s.server)?;
                s
            }
            None => State {
                rounds_done: 0,
                global,
                clients: backend.read_all_params()?,
                best: None,
                seconds_training: 0.0,
                bytes: Bytes::default(),
                bytes_per_round: Some(Vec::new()),
                optimizer: None,
                server: strategy.state(),
            },
        };
        Ok(Rounds {
            cfg,
            splits,
            features,
            trainees,
            backend,
            classifier,
            strategy,
            state,
        })
    }

    /// Runs the rounds left, appending to `<out>/metrics.csv` and checkpointing after each,
    /// then telling `on_round` (see [`super::OnRound`]).
    pub fn run(&mut self, out: &Path, on_round: super::OnRound<'_>) -> Result<()> {
        // Rows are labelled with the number of finished rounds (1-based); later ones are dropped.
        let dp = &self.cfg.dp;
        let mut metrics = report::open_metrics_with_header(
            &out.join("metrics.csv"),
            self.state.rounds_done + 1,
            &dp.metrics_header(),
        )?;
        let total = self.strategy.rounds(self.cfg.rounds);
        let trainees = self.trainees.clone();
        if (trainees.iter()).all(|&c| self.features.clients[c].val.is_empty()) {
            eprintln!(
                "warning: no training client has validation files, so no round can be chosen \
                 by validation accuracy: the best round (adapter-best, summary.json) is the last"
            );
        }
        for round in self.state.rounds_done..total {
            let t0 = Instant::now();
            let losses = self.train_round(round)?;
            self.state.seconds_training += t0.elapsed().as_secs_f64();
            let eval = Evaluation {
                clients: &self.features.clients,
                trainees: &trainees,
                classifier: &*self.classifier,
            };
            let (rows, mean_val) = eval.round(round, &*self.strategy, &self.state, &losses)?;
            let epsilon = dp.metrics_suffix(round + 1, self.cfg.sample_fraction);
            report::append_rows_with(&mut metrics, &rows, &epsilon)?;
            crash_point(round, "metrics");
            self.keep_if_best(round, mean_val);
            self.state.rounds_done = round + 1;
            self.state.server = self.strategy.state();
            self.state.save(out)?;
            crash_point(round, "state");
            on_round(round + 1, &rows)?;
            if (round + 1) % 10 == 0 || round + 1 == total || round == 0 {
                eprintln!("round {:>4}/{total}: {}", round + 1, val_text(mean_val));
            }
        }
        Ok(())
    }

    /// The strategy's plan, the local epochs, the aggregation. Returns each slot's losses.
    fn train_round(&mut self, round: u32) -> Result<Vec<Vec<f32>>> {
        let k = self.trainees.len();
        let sampled = match self.strategy.sample(round, k) {
            Some(slots) => slots,
            None => self.sampled_slots(round),
        };
        let Some(plan) = self
            .strategy
            .configure_train(round, sampled, &self.state.global)
        else {
            self.state.count_bytes(Bytes::default());
            return Ok(vec![Vec::new(); k]);
        };
        if let Some(start) = &plan.start {
            for &s in &plan.slots {
                self.backend.set_client_row(s, start)?;
            }
        }
        if !self.cfg.keep_optimizer_state {
            self.backend.reset();
        }
        self.backend
            .set_proximal_row(plan.mu, plan.anchor.as_deref())?;
        let losses = match self.strategy.local_epochs(self.cfg.local_epochs) {
            0 => vec![Vec::new(); k],
            _ => local_epochs(
                &mut *self.backend,
                self.cfg,
                round,
                &plan.slots,
                &self.features.clients,
                &self.trainees,
            )?,
        };
        self.state.clients = self.backend.read_all_params()?;
        self.check_client_rows(round, &plan.slots)?;
        if self.cfg.keep_optimizer_state {
            self.state.optimizer = Some(self.backend.optimizer_state());
        }
        let train_sizes: Vec<usize> = (self.trainees.iter())
            .map(|&c| self.features.clients[c].train.len())
            .collect();
        let p = self.backend.param_count();
        let updates = ClientUpdates {
            slots: &plan.slots,
            params: &self.state.clients,
            param_count: p,
            train_sizes: &train_sizes,
        };
        if let Some(global) = self
            .strategy
            .aggregate_train(round, &self.state.global, &updates)?
        {
            ensure!(
                global.iter().all(|x| x.is_finite()),
                "round {}: the aggregated global parameters are not finite (--server-opt {}, \
                 --server-lr {}): the server step overflows; lower --server-lr",
                round + 1,
                format!("{:?}", self.cfg.server_opt.opt).to_lowercase(),
                readable(self.cfg.server_opt.lr)
            );
            self.state.global = global;
        }
        let sizes = Sizes {
            param_count: p,
            dim: self.features.dim,
            train_sizes: &train_sizes,
        };
        self.state.count_bytes(self.strategy.bytes(&plan, &sizes));
        Ok(losses)
    }

    /// Refuses a round whose local training left a trained client's parameters not finite
    /// (a step so large it overflows f32, e.g. `--lr 1e38`), before they are aggregated,
    /// checkpointed or written as an adapter.
    fn check_client_rows(&self, round: u32, slots: &[usize]) -> Result<()> {
        let p = self.backend.param_count();
        for &slot in slots {
            let row = &self.state.clients[slot * p..(slot + 1) * p];
            ensure!(
                row.iter().all(|x| x.is_finite()),
                "round {}: client {}'s parameters are not finite after its local training \
                 (--lr {}, --weight-decay {}): the optimiser's steps overflow; lower --lr or \
                 --weight-decay",
                round + 1,
                self.features.clients[self.trainees[slot]].name,
                readable(self.cfg.lr),
                readable(self.cfg.weight_decay)
            );
        }
        Ok(())
    }

    /// Trainer slots of the clients sampled for `round` (`--sample-fraction`).
    fn sampled_slots(&self, round: u32) -> Vec<usize> {
        (self.splits.sample_round(self.cfg.sample_fraction, round))
            .iter()
            .map(|c| {
                (self.trainees.iter())
                    .position(|t| t == c)
                    .expect("a sampled client is a training client")
            })
            .collect()
    }

    /// Keeps this round's deployed parameters when its mean val accuracy is the best so far.
    /// Without validation files (`mean_val` NaN) there is nothing to choose by, so the
    /// latest round is kept: the best round is the last.
    fn keep_if_best(&mut self, round: u32, mean_val: f64) {
        if mean_val.is_nan() || (self.state.best.as_ref()).is_none_or(|(_, v, _)| mean_val > *v) {
            self.state.best = Some((round + 1, mean_val, self.deployed_params()));
        }
    }

    /// What the run deploys now: every client's parameters, or the global ones.
    pub fn deployed_params(&self) -> Vec<f32> {
        match self.strategy.deployed() {
            Deployed::EachClient => self.state.clients.clone(),
            Deployed::Global | Deployed::Nothing => self.state.global.clone(),
        }
    }
}
