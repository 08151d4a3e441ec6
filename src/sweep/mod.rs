//! The `sweep` job (`fedclip sweep`): every (method, held-out domain, seed) cell of a grid as
//! an ordinary run directory inside one sweep directory, run one after another through
//! [`federated::run`](crate::federated::run) with one shared feature cache, then the table.
//!
//! [`grid`] (cells, `--shard`) → [`manifest`] (`sweep.json`: the same sweep every time) →
//! the cells, each skipped when finished, resumed when interrupted, else started → [`table`]
//! (results from the run directories) → [`render`] (the table files).
//!
//! A cell whose run directory is locked by another process (another shard, a second sweep)
//! is skipped at once and reported, not waited for: its holder finishes it, and the table
//! lists it as unfinished until then. Rerunning the sweep afterwards picks up anything left.

pub mod grid;
pub mod manifest;
pub mod render;
pub mod table;

use crate::data::Dataset;
use crate::device::Device;
use crate::federated::{self, Method, RunConfig, rundir::InUse};
use anyhow::{Context, Result};
use fs4::fs_std::FileExt;
use grid::{Cell, Grid, Shard};
use manifest::Manifest;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// `--test-domains`: every domain folder of the dataset, or these.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TestDomains {
    All,
    Named(Vec<String>),
}

impl TestDomains {
    /// `all` or a comma-separated list.
    pub fn parse(text: &str) -> TestDomains {
        match text.trim() {
            "all" => TestDomains::All,
            list => TestDomains::Named(list.split(',').map(|s| s.trim().to_string()).collect()),
        }
    }
}

/// What to sweep; every other setting comes from the template run config.
#[derive(Clone, Debug)]
pub struct SweepSpec {
    /// The sweep directory (`--out`).
    pub dir: PathBuf,
    pub methods: Vec<Method>,
    pub test_domains: TestDomains,
    pub seeds: Vec<u32>,
    pub shard: Shard,
}

/// What happened to this invocation's share of the grid.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct SweepOutcome {
    /// Cells run to the end now (started or resumed).
    pub ran: Vec<String>,
    /// Cells that had finished before.
    pub already_finished: Vec<String>,
    /// Cells locked by another process, with its error.
    pub busy: Vec<String>,
    /// Cells whose run failed, with the error.
    pub failed: Vec<(String, String)>,
    /// Images encoded (not read from the cache) by this invocation's runs.
    pub images_extracted: usize,
    /// The table files written at the end.
    pub table_files: Vec<PathBuf>,
}

/// The run config of one cell: the template with the cell's method, held-out domain, seed
/// and run directory, as `fedclip run --method … --test-domain … --seed … --out …` makes it.
pub fn cell_config(template: &RunConfig, dir: &Path, cell: &Cell) -> RunConfig {
    RunConfig {
        method: cell.method,
        test_domains: vec![cell.test_domain.clone()],
        seed: cell.seed,
        out: dir.join(cell.dir_name()),
        ..template.clone()
    }
}

/// The grid of `spec` over the template's dataset, each name checked.
pub fn grid(spec: &SweepSpec, template: &RunConfig) -> Result<Grid> {
    let available = Dataset::domain_folders(&template.data)?;
    let test_domains = match &spec.test_domains {
        TestDomains::All => available,
        TestDomains::Named(names) => grid::parse_test_domains(
            &names.join(","),
            &available,
            &template.data.display().to_string(),
        )?,
    };
    if spec.seeds.is_empty() || spec.methods.is_empty() {
        anyhow::bail!("a sweep needs at least one method and one seed");
    }
    Ok(Grid {
        methods: spec.methods.clone(),
        test_domains,
        seeds: spec.seeds.clone(),
    })
}

/// Runs this shard's cells of the sweep (see the module header), then writes the table.
pub fn run(spec: &SweepSpec, template: &RunConfig, device: Device) -> Result<SweepOutcome> {
    template.validate()?;
    let grid = grid(spec, template)?;
    Manifest::new(grid.clone(), template)?.write_or_check(&spec.dir)?;
    let cells = spec.shard.share(grid.cells());
    let mut outcome = SweepOutcome::default();
    let mut progress = Progress::new(cells.len());
    for (i, (_, cell)) in cells.iter().enumerate() {
        let cfg = cell_config(template, &spec.dir, cell);
        let name = cell.dir_name();
        if cfg.out.join("summary.json").is_file() {
            eprintln!(
                "sweep: run {} of {}: {name} finished before; skipped",
                i + 1,
                cells.len()
            );
            outcome.already_finished.push(name);
            continue;
        }
        let resume = cfg.out.join("config.json").is_file();
        eprintln!("sweep: {}", progress.line(i, &name, resume));
        let t0 = Instant::now();
        match federated::run(&cfg, resume, device) {
            Ok(run) => {
                progress.done(t0.elapsed().as_secs_f64());
                clear_failure(&spec.dir, &name)?;
                outcome.images_extracted += run.summary.images_extracted;
                outcome.ran.push(name);
            }
            Err(e) if e.downcast_ref::<InUse>().is_some() => {
                eprintln!("sweep: {name} is being run by another process; skipped ({e:#})");
                outcome.busy.push(name);
            }
            Err(e) => {
                let error = format!("{e:#}");
                eprintln!("sweep: {name} failed: {error}");
                record_failure(&spec.dir, &name, &error)?;
                outcome.failed.push((name, error));
            }
        }
    }
    outcome.table_files = write_table(&spec.dir)?;
    Ok(outcome)
}

/// Rewrites the sweep's table from every cell's run directory. Shards finishing together
/// take turns (a lock in the sweep directory), so the last to write has seen every cell
/// finished before it.
pub fn write_table(dir: &Path) -> Result<Vec<PathBuf>> {
    let _turn = lock_sweep(dir)?;
    remove_debris(dir)?;
    let runs = table::collect(&[dir.to_path_buf()])?;
    render::write_all(&runs, dir)
}

/// The sweep directory's own lock file, held briefly around its manifest and table.
pub const SWEEP_LOCK: &str = ".fedclip-sweep.lock";

/// Waits for the sweep directory's lock (held only for a manifest or table write, never
/// during a run) and holds it until the returned file is dropped.
fn lock_sweep(dir: &Path) -> Result<std::fs::File> {
    let path = dir.join(SWEEP_LOCK);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    file.lock_exclusive()
        .with_context(|| format!("cannot lock {}", path.display()))?;
    Ok(file)
}

/// Removes the temporary files of a table or manifest write that a killed sweep left at the
/// top of the sweep directory; those writes take the sweep's lock, held here.
fn remove_debris(dir: &Path) -> Result<()> {
    for entry in std::fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))? {
        let path = entry?.path();
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        if name.contains(".tmp-") && path.is_file() {
            std::fs::remove_file(&path)
                .with_context(|| format!("cannot remove {}", path.display()))?;
        }
    }
    Ok(())
}

fn failure_path(dir: &Path, name: &str) -> PathBuf {
    dir.join(table::FAILED_DIR).join(format!("{name}.txt"))
}

fn record_failure(dir: &Path, name: &str, error: &str) -> Result<()> {
    let path = failure_path(dir, name);
    std::fs::create_dir_all(dir.join(table::FAILED_DIR))
        .with_context(|| format!("cannot create {}", dir.join(table::FAILED_DIR).display()))?;
    crate::io::write_atomic(&path, error.as_bytes())
}

fn clear_failure(dir: &Path, name: &str) -> Result<()> {
    let path = failure_path(dir, name);
    match std::fs::remove_file(&path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("cannot remove {}", path.display()))
        }
        _ => Ok(()),
    }
}

/// `run i of n` and an estimate of the time left from the runs this invocation finished.
struct Progress {
    total: usize,
    seconds: f64,
    finished: usize,
}

impl Progress {
    fn new(total: usize) -> Progress {
        Progress {
            total,
            seconds: 0.0,
            finished: 0,
        }
    }

    fn done(&mut self, seconds: f64) {
        self.seconds += seconds;
        self.finished += 1;
    }

    /// The line printed before run `i` (0-based).
    fn line(&self, i: usize, name: &str, resume: bool) -> String {
        let action = if resume { "resuming" } else { "starting" };
        let left = match self.finished {
            0 => "time left: known after the first run".to_string(),
            k => {
                let secs = self.seconds / k as f64 * (self.total - i) as f64;
                format!("about {} left", duration(secs))
            }
        };
        format!("run {} of {}: {action} {name} ({left})", i + 1, self.total)
    }
}

/// `1h02m`, `3m05s`, `12s`.
fn duration(secs: f64) -> String {
    let s = secs.round() as u64;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
    }
}
