//! Stage 1 of a run: the flags checked, the dataset scanned and split, the run directory
//! prepared and the resume decision taken, all before anything slow.

use super::checkpoint::{STATE_FILE, State};
use super::config::RunConfig;
use super::inputs::{self, Inputs};
use super::report;
use super::rundir::{self, RunDirLock};
use crate::data::split::{SplitConfig, Splits, make_splits};
use crate::data::{Dataset, PromptTemplate};
use crate::io::write_atomic;
use anyhow::{Context, Result, bail, ensure};

/// What the later stages run on.
pub struct Plan {
    pub dataset: Dataset,
    pub splits: Splits,
    /// The interrupted run's state with `--resume` (None: start at round 0).
    pub saved: Option<State>,
    /// The run directory's lock, held until the run ends.
    pub lock: RunDirLock,
}

/// Checks the flags, scans and splits the data, then prepares the run directory
/// (`config.json`, `splits.json`). `trains`: whether the method trains anything.
pub fn make(cfg: &RunConfig, resume: bool, trains: bool) -> Result<Plan> {
    check_flags(cfg, trains)?;
    let dataset = Dataset::scan(&cfg.data)?;
    dataset.check_formats()?;
    dataset.check_distinct_prompts(&PromptTemplate::new(&cfg.prompt_template))?;
    for w in &dataset.warnings {
        eprintln!("warning: {w}");
    }
    let split_cfg = SplitConfig {
        seed: cfg.seed,
        test_domains: cfg.test_domains.clone(),
        clients_per_domain: cfg.clients_per_domain,
        dirichlet_alpha: cfg.dirichlet_alpha,
        ..SplitConfig::default()
    };
    let mut splits = make_splits(&dataset, &split_cfg)?;
    for w in splits.check_training_data(&dataset, cfg.drop_empty_clients)? {
        eprintln!("warning: {w}");
    }
    let out = &cfg.out;
    // Hashed before the run directory is taken: on a large dataset this takes a while, and
    // the directory then gets its files at once.
    let inputs = Inputs::of(cfg, &dataset)?;
    check_config_present(cfg)?;
    let lock = rundir::claim(cfg, resume)?;
    let saved = if resume {
        resume_state(cfg)?
    } else {
        if out.join(STATE_FILE).exists() || out.join("metrics.csv").exists() {
            bail!(
                "{} already holds a run; pass --resume to continue it, or choose another --out",
                out.display()
            );
        }
        None
    };
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    // Before config.json: a run directory with a config always has its inputs record.
    inputs::record_or_check(out, &inputs, resume)?;
    write_atomic(
        &out.join("config.json"),
        serde_json::to_string_pretty(cfg)?.as_bytes(),
    )?;
    splits.write_json(&dataset, &out.join("splits.json"))?;
    Ok(Plan {
        dataset,
        splits,
        saved,
        lock,
    })
}

/// A run's state or metrics without its `config.json` (deleted) cannot be resumed, since
/// its settings are unknown, nor overwritten: say that, rather than "no run" or "pass
/// --resume".
fn check_config_present(cfg: &RunConfig) -> Result<()> {
    let out = &cfg.out;
    let found: Vec<&str> = [STATE_FILE, "metrics.csv"]
        .into_iter()
        .filter(|f| out.join(f).exists())
        .collect();
    if !found.is_empty() && !out.join("config.json").exists() {
        bail!(
            "{} holds a run's {} but not its config.json, so the run's settings are unknown \
             and it can be neither resumed nor overwritten: restore config.json, or choose \
             another --out",
            out.display(),
            found.join(" and ")
        );
    }
    Ok(())
}

fn check_flags(cfg: &RunConfig, trains: bool) -> Result<()> {
    ensure!(
        cfg.local_epochs >= 1 || !trains,
        "--local-epochs must be at least 1, got 0"
    );
    cfg.validate()
}

/// With `--resume`: the saved settings must match, and the state (if a round finished) loads.
pub fn resume_state(cfg: &RunConfig) -> Result<Option<State>> {
    let config_path = cfg.out.join("config.json");
    let saved: RunConfig = serde_json::from_str(
        &std::fs::read_to_string(&config_path)
            .with_context(|| format!("--resume: cannot read {}", config_path.display()))?,
    )
    .with_context(|| format!("--resume: {} is not a run config", config_path.display()))?;
    let diff = cfg.resume_mismatches(&saved);
    if !diff.is_empty() {
        bail!(
            "--resume: the settings differ from the interrupted run's {}:\n  {}",
            config_path.display(),
            diff.join("\n  ")
        );
    }
    let state = match State::load(&cfg.out, saved.rounds) {
        Ok(s) => Some(s),
        Err(_) if !cfg.out.join(STATE_FILE).exists() => None, // stopped before round 1 ended
        Err(e) => return Err(e),
    };
    let done = state.as_ref().map_or(0, |s| s.rounds_done);
    if cfg.rounds < done {
        bail!(
            "--resume --rounds {}: the run has already finished {done} rounds, and --rounds can \
             extend a run but not shorten it; pass --rounds {done} or more",
            cfg.rounds
        );
    }
    report::check_metrics(&cfg.out.join("metrics.csv"), done, &cfg.dp.metrics_header())?;
    Ok(state)
}
