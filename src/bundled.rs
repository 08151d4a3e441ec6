//! The bundled model (`weights/tiny-clip`) and dataset (`data/pacs-mini`), the defaults of
//! `--model` and `--data`, found at run time rather than at the build checkout's path, so
//! that a moved or installed binary still finds them, or says clearly where it looked.

use anyhow::{Result, bail};
use std::path::{Path, PathBuf};

/// The bundled random-weight model, relative to a fedclip checkout or install.
pub const BUNDLED_MODEL: &str = "weights/tiny-clip";
/// The bundled PACS-mini, relative to a fedclip checkout or install.
pub const BUNDLED_DATA: &str = "data/pacs-mini";
/// Names the folder holding `weights/` and `data/` when they are elsewhere.
pub const BUNDLE_ENV: &str = "FEDCLIP_BUNDLE";

/// Folders searched for the bundle, in order: `$FEDCLIP_BUNDLE`, the executable's folder and
/// each folder above it (`target/release/fedclip` finds the checkout), `share/fedclip` beside
/// an installed `bin/`, then the current directory.
fn search_roots() -> Vec<PathBuf> {
    let mut roots = Vec::new();
    if let Some(dir) = std::env::var_os(BUNDLE_ENV) {
        roots.push(PathBuf::from(dir));
    }
    if let Some(exe_dir) = std::env::current_exe()
        .ok()
        .and_then(|e| e.canonicalize().ok())
        .and_then(|e| e.parent().map(Path::to_path_buf))
    {
        for dir in exe_dir.ancestors() {
            roots.push(dir.to_path_buf());
            roots.push(dir.join("share/fedclip"));
        }
    }
    if let Ok(cwd) = std::env::current_dir() {
        roots.push(cwd);
    }
    roots
}

/// The bundled file or folder `rel`, or an error naming `flag` and where it looked.
fn find(rel: &str, flag: &str) -> Result<PathBuf> {
    let roots = search_roots();
    if let Some(found) = roots.iter().map(|r| r.join(rel)).find(|p| p.is_dir()) {
        return Ok(found);
    }
    let looked: Vec<String> = roots.iter().map(|r| r.display().to_string()).collect();
    bail!(
        "the bundled {rel} was not found (looked under {}); pass {flag} <dir>, or set \
         {BUNDLE_ENV} to the folder holding {rel}",
        looked.join(", ")
    )
}

/// The bundled model directory (the default of `--model`).
pub fn bundled_model() -> Result<PathBuf> {
    find(BUNDLED_MODEL, "--model")
}

/// The bundled dataset root (the default of `--data`).
pub fn bundled_data() -> Result<PathBuf> {
    find(BUNDLED_DATA, "--data")
}

/// Whether `dir` is the bundled model, whose weights are random.
pub fn is_bundled_model(dir: &Path) -> bool {
    let canon = |p: &Path| std::fs::canonicalize(p).ok();
    match (canon(dir), bundled_model().ok().and_then(|b| canon(&b))) {
        (Some(a), Some(b)) => a == b,
        _ => false,
    }
}
