//! Paths given on the command line must be UTF-8: they are written into `config.json`,
//! `splits.json` and embedding metadata, where a lossy rendering would name a file that does
//! not exist.

use anyhow::{Result, bail};
use std::path::Path;

/// `path` as text, or an error naming `flag` and showing the path with its bad bytes escaped.
pub fn utf8<'a>(flag: &str, path: &'a Path) -> Result<&'a str> {
    match path.to_str() {
        Some(s) => Ok(s),
        None => bail!(
            "{flag}: the path {:?} is not valid UTF-8; fedclip records paths as text, so \
             rename it (or a folder above it)",
            path.as_os_str()
        ),
    }
}
