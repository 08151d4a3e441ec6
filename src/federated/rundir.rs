//! The run directory (`--out`): what may be written into, held by one run at a time, and
//! the next free name when `--out` is not given.
//!
//! * A non-empty folder that is not a fedclip run directory (no lock file, no fedclip
//!   `config.json`) is refused, as is an `--out` or `--cache-dir` inside `--data` or
//!   `--model`: a run never writes over a model's files or into a dataset.
//! * [`claim`] takes an exclusive lock (`fs4`, released when the process ends, even by
//!   kill -9) on `<out>/.fedclip-run.lock` for the whole run, and writes the holder (pid,
//!   start time) into it, so a second run on the same folder fails at once naming it; then
//!   removes the temporary files a killed run left half-written.
//! * [`next_free`]: `runs/<name>`, else `runs/<name>-2`, `-3`, … (as Lightning's
//!   `version_N`), so the README's command can be run twice.

use super::RunConfig;
use anyhow::{Context, Result, bail};
use fs4::fs_std::FileExt;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

/// The lock file inside a run directory; its presence also marks the folder as one.
pub const LOCK_FILE: &str = ".fedclip-run.lock";

/// [`claim`]'s error when another process holds the lock: a type of its own so that a sweep
/// can tell a busy cell from a failed one.
#[derive(Debug)]
pub struct InUse {
    pub out: PathBuf,
    /// What the holder wrote into the lock file (pid, start time, seed).
    pub holder: String,
}

impl std::fmt::Display for InUse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "--out {} is in use by another fedclip run ({}); wait for it, or choose another --out",
            self.out.display(),
            self.holder
        )
    }
}

impl std::error::Error for InUse {}

/// Holds the run directory's lock until dropped (or the process ends).
pub struct RunDirLock {
    _file: File,
}

/// Whether `dir` is a fedclip run directory: it has the lock file, or a `config.json`
/// that reads as a fedclip run config.
pub fn is_run_dir(dir: &Path) -> bool {
    dir.join(LOCK_FILE).is_file()
        || std::fs::read_to_string(dir.join("config.json"))
            .ok()
            .is_some_and(|t| serde_json::from_str::<RunConfig>(&t).is_ok())
}

/// Whether `dir` holds a run (started or finished), as opposed to being absent or empty.
fn holds_anything(dir: &Path) -> Result<bool> {
    if !dir.exists() {
        return Ok(false);
    }
    let mut entries =
        std::fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))?;
    Ok(entries.next().is_some())
}

/// `path` made absolute with its symbolic links resolved, as far as it exists.
fn resolved(path: &Path) -> PathBuf {
    let abs = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let mut existing = abs.as_path();
    let mut rest = Vec::new();
    while !existing.exists() {
        match (existing.parent(), existing.file_name()) {
            (Some(p), Some(n)) => {
                rest.push(n.to_os_string());
                existing = p;
            }
            _ => return abs,
        }
    }
    let mut out = existing
        .canonicalize()
        .unwrap_or_else(|_| existing.to_path_buf());
    out.extend(rest.iter().rev());
    out
}

/// Refuses `--out` or `--cache-dir` inside `--data` or `--model`.
fn check_placement(cfg: &RunConfig) -> Result<()> {
    for (flag, path) in [("--out", &cfg.out), ("--cache-dir", &cfg.cache_dir)] {
        let p = resolved(path);
        for (other, inside, why) in [
            (
                "--data",
                &cfg.data,
                "the next scan would read it as a domain",
            ),
            (
                "--model",
                &cfg.model,
                "it would write over the model's files",
            ),
        ] {
            if p.starts_with(resolved(inside)) {
                bail!(
                    "{flag} {} is inside {other} {}: {why}; choose a folder outside it",
                    path.display(),
                    inside.display()
                );
            }
        }
    }
    Ok(())
}

/// Checks that `cfg.out` may take this run and locks it for the run's length.
pub fn claim(cfg: &RunConfig, resume: bool) -> Result<RunDirLock> {
    let out = &cfg.out;
    check_placement(cfg)?;
    if out.exists() && !out.is_dir() {
        bail!("--out {} exists and is not a folder", out.display());
    }
    if holds_anything(out)? && !is_run_dir(out) {
        bail!(
            "--out {} is not empty and is not a fedclip run directory (no {LOCK_FILE} or \
             fedclip config.json); a run would overwrite its files: choose a new or empty folder",
            out.display()
        );
    }
    if resume && !out.join("config.json").exists() {
        bail!(
            "--resume: {} holds no run to continue (no config.json)",
            out.display()
        );
    }
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let path = out.join(LOCK_FILE);
    let mut file = open_lock_file(&path)?;
    let locked = file
        .try_lock_exclusive()
        .with_context(|| format!("cannot lock {}", path.display()))?;
    if !locked {
        let mut holder = String::new();
        let _ = file.read_to_string(&mut holder);
        let holder = match holder.trim() {
            "" => "which has not written its process id yet",
            h => h,
        };
        return Err(InUse {
            out: out.clone(),
            holder: holder.to_string(),
        }
        .into());
    }
    let started = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let holder = format!(
        "pid {}, started at unix time {started}, seed {}",
        std::process::id(),
        cfg.seed
    );
    let write = |f: &mut File| -> std::io::Result<()> {
        f.set_len(0)?;
        f.rewind()?;
        f.write_all(holder.as_bytes())?;
        f.sync_all()
    };
    write(&mut file).with_context(|| format!("cannot write {}", path.display()))?;
    // Holding the lock, no writer of this run directory is alive: a temporary file here is
    // what a killed run left.
    let removed = crate::io::remove_debris(out)?;
    if removed > 0 {
        eprintln!(
            "note: removed {removed} temporary file(s) a killed run left in {}",
            out.display()
        );
    }
    Ok(RunDirLock { _file: file })
}

/// Opens (creating) the lock file without following a symbolic link: a link put there
/// would have its target, outside the run directory, truncated and rewritten.
fn open_lock_file(path: &Path) -> Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    if std::fs::symlink_metadata(path).is_ok_and(|m| !m.file_type().is_file()) {
        bail!(
            "{} is not a regular file (a symbolic link or other); fedclip writes its lock only \
             into a file of its own: remove it",
            path.display()
        );
    }
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .with_context(|| format!("cannot open {}", path.display()))
}

/// `base` if it holds nothing, else the first of `base-2`, `base-3`, … that holds nothing,
/// reserved by creating its lock file (`O_EXCL`): of two runs started at once without
/// `--out`, one creates it and the other moves on to the next name.
pub fn next_free(base: &Path) -> Result<PathBuf> {
    for n in 1.. {
        let candidate = numbered(base, n);
        if holds_anything(&candidate)? {
            continue;
        }
        std::fs::create_dir_all(&candidate)
            .with_context(|| format!("cannot create {}", candidate.display()))?;
        match crate::io::create_new(&candidate.join(LOCK_FILE)) {
            Ok(_) => return Ok(candidate),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => {
                return Err(e)
                    .with_context(|| format!("cannot create a lock in {}", candidate.display()));
            }
        }
    }
    unreachable!("an unbounded range ends only by returning")
}

/// Longest default run-folder name kept whole; file systems allow 255 bytes a name.
const MAX_DEFAULT_NAME: usize = 120;

/// The folder name of a run without `--out`: `<method>-<data>-<held-out domains>-seed<seed>`,
/// or, when that is over [`MAX_DEFAULT_NAME`] bytes (many held-out domains, a long folder
/// name), its first 100 characters and a hash of the whole, so that it stays a valid name
/// and different settings still get different names.
pub fn default_name(method: &str, data: &str, held_out: &[String], seed: u32) -> String {
    let stem = format!("{method}-{data}-{}", held_out.join("+"));
    if stem.len() + format!("-seed{seed}").len() <= MAX_DEFAULT_NAME {
        return format!("{stem}-seed{seed}");
    }
    let hash = blake3::hash(stem.as_bytes()).to_hex();
    let short: String = stem.chars().take(100).collect();
    format!("{short}-{}-seed{seed}", &hash[..12])
}

/// The last of `base`, `base-2`, … that holds a run (what `--resume` without `--out`
/// continues), or `None`.
pub fn latest(base: &Path) -> Result<Option<PathBuf>> {
    let mut last = None;
    for n in 1.. {
        let candidate = numbered(base, n);
        if !holds_anything(&candidate)? {
            return Ok(last);
        }
        last = Some(candidate);
    }
    unreachable!("an unbounded range ends only by returning")
}

fn numbered(base: &Path, n: u32) -> PathBuf {
    if n == 1 {
        return base.to_path_buf();
    }
    let mut name = base.file_name().unwrap_or_default().to_os_string();
    name.push(format!("-{n}"));
    base.with_file_name(name)
}
