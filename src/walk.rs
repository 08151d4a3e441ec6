//! The one directory walker of every job that lists files from the user (`embed --images`,
//! `run --data`), and the one way those files are read (a leaf: it imports nothing from the
//! crate).
//!
//! * Symbolic links are followed (datasets are often linked together), but each directory is
//!   read once: a visited set by (device, inode) turns a link loop or a DAG of links (24
//!   levels of paired links would otherwise be 2^24 walks) into one visit and a warning.
//! * A depth limit ([`MAX_DEPTH`]) bounds the walk and its memory.
//! * Only regular files are listed: a FIFO (opening one blocks for ever), a device (reading
//!   `/dev/zero` never ends) or a socket under a wanted name is an error naming it.
//! * [`read_regular`] opens without blocking and checks the opened file, so a file swapped
//!   for a FIFO or device after the walk is refused too.

use anyhow::{Context, Result, bail};
use std::collections::HashMap;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

/// Directory levels below the walk's root that are read; deeper is an error naming the path.
pub const MAX_DEPTH: usize = 64;

/// One regular file found by [`regular_files`].
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Found {
    /// Its directory relative to the root, `/`-separated; empty for the root itself.
    pub dir: String,
    /// Its file name.
    pub name: String,
    /// The root joined with `dir` and `name`.
    pub path: PathBuf,
}

impl Found {
    /// `dir/name` (or `name` in the root).
    pub fn rel(&self) -> String {
        if self.dir.is_empty() {
            self.name.clone()
        } else {
            format!("{}/{}", self.dir, self.name)
        }
    }
}

/// What a walk found: the wanted regular files (unsorted) and warnings about directories
/// reached twice.
#[derive(Debug, Default)]
pub struct Walk {
    pub files: Vec<Found>,
    /// The relative paths of every directory read (the root as ""), unsorted.
    pub dirs: Vec<String>,
    pub warnings: Vec<String>,
}

/// Every file under `root` whose name `wanted` accepts, following links to directories once
/// each (see the module comment). `flag` names the option the root came from in messages.
/// A link that leads nowhere is listed as a file (reading it then names it).
pub fn regular_files(root: &Path, flag: &str, wanted: impl Fn(&str) -> bool) -> Result<Walk> {
    let mut walk = Walk::default();
    // (device, inode) of each directory read → the path it was first read by.
    let mut seen: HashMap<(u64, u64), PathBuf> = HashMap::new();
    // (relative dir, path, depth); a stack, so memory grows with the tree's width, not 2^depth.
    let mut todo = vec![(String::new(), root.to_path_buf(), 0usize)];
    while let Some((rel, dir, depth)) = todo.pop() {
        let meta =
            std::fs::metadata(&dir).with_context(|| format!("cannot read {}", dir.display()))?;
        let id = (meta.dev(), meta.ino());
        if let Some(first) = seen.get(&id) {
            walk.warnings.push(format!(
                "{flag}: {} is the directory {} again (a symbolic link loop or a second link \
                 to it); its files are read once",
                dir.display(),
                first.display()
            ));
            continue;
        }
        seen.insert(id, dir.clone());
        if depth > MAX_DEPTH {
            bail!(
                "{flag}: {} is more than {MAX_DEPTH} folders deep; fedclip does not read deeper",
                dir.display()
            );
        }
        walk.dirs.push(rel.clone());
        let mut subdirs = Vec::new();
        for entry in sorted_entries(&dir)? {
            let path = entry.path();
            let os_name = entry.file_name();
            // Only names that are kept must be text (they are recorded).
            let kind = kind(&entry)?;
            if !matches!(kind, Kind::Dir) && !wanted(&os_name.to_string_lossy()) {
                continue;
            }
            let name = utf8_name(flag, &os_name, &path)?;
            match kind {
                Kind::Dir => {
                    let sub = if rel.is_empty() {
                        name
                    } else {
                        format!("{rel}/{name}")
                    };
                    subdirs.push((sub, path, depth + 1));
                }
                Kind::File | Kind::Dangling => walk.files.push(Found {
                    dir: rel.clone(),
                    name,
                    path,
                }),
                Kind::Special(what) => bail!(
                    "{flag}: {} is {what}, not a regular file; fedclip reads only regular \
                     files (reading it could block or never end): remove it or move it away",
                    path.display()
                ),
            }
        }
        // Popped in name order: the walk is depth first in sorted order, so which of two
        // links to one directory is read (and names its files) does not depend on the
        // order the file system lists them in.
        todo.extend(subdirs.into_iter().rev());
    }
    Ok(walk)
}

/// The entries of `dir`, sorted by name.
fn sorted_entries(dir: &Path) -> Result<Vec<std::fs::DirEntry>> {
    let mut entries = std::fs::read_dir(dir)
        .and_then(|it| it.collect::<std::io::Result<Vec<_>>>())
        .with_context(|| format!("cannot list {}", dir.display()))?;
    entries.sort_by_key(|e| e.file_name());
    Ok(entries)
}

enum Kind {
    Dir,
    File,
    /// A symbolic link to nothing.
    Dangling,
    Special(&'static str),
}

/// What `entry` is, links followed; `stat` is called only for links.
fn kind(entry: &std::fs::DirEntry) -> Result<Kind> {
    let ty = entry
        .file_type()
        .with_context(|| format!("cannot stat {}", entry.path().display()))?;
    let ty = if ty.is_symlink() {
        match std::fs::metadata(entry.path()) {
            Ok(m) => m.file_type(),
            Err(_) => return Ok(Kind::Dangling),
        }
    } else {
        ty
    };
    Ok(file_kind(ty))
}

fn file_kind(ty: std::fs::FileType) -> Kind {
    if ty.is_dir() {
        Kind::Dir
    } else if ty.is_file() {
        Kind::File
    } else if ty.is_fifo() {
        Kind::Special("a FIFO (named pipe)")
    } else if ty.is_char_device() {
        Kind::Special("a character device")
    } else if ty.is_block_device() {
        Kind::Special("a block device")
    } else if ty.is_socket() {
        Kind::Special("a socket")
    } else {
        Kind::Special("not a file or folder")
    }
}

/// Describes what `path` is when it exists and is not a regular file (links followed).
pub fn not_regular(path: &Path) -> Option<&'static str> {
    match std::fs::metadata(path).map(|m| file_kind(m.file_type())) {
        Ok(Kind::Special(what)) => Some(what),
        Ok(Kind::Dir) => Some("a folder"),
        _ => None,
    }
}

fn utf8_name(flag: &str, name: &std::ffi::OsStr, path: &Path) -> Result<String> {
    name.to_str().map(str::to_string).with_context(|| {
        format!(
            "{flag}: the file name {:?} is not valid UTF-8 (fedclip records file names as \
             text); rename it",
            path.as_os_str()
        )
    })
}

/// Opens `path` for reading if it is a regular file: without blocking (a FIFO put in its
/// place would otherwise block the open for ever), then the opened file is checked, so a
/// FIFO, device or folder is refused by name whatever a walk saw before.
pub fn open_regular(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)?;
    let what = match file_kind(file.metadata()?.file_type()) {
        Kind::Special(what) => what,
        Kind::Dir => "a folder",
        _ => return Ok(file),
    };
    Err(std::io::Error::other(format!(
        "{} is {what}, not a regular file",
        path.display()
    )))
}

/// The bytes of the regular file `path` ([`open_regular`]).
pub fn read_regular(path: &Path) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let mut file = open_regular(path)?;
    let mut bytes = Vec::new();
    let len = file.metadata()?.len();
    bytes
        .try_reserve_exact(usize::try_from(len).unwrap_or(usize::MAX))
        .map_err(|e| std::io::Error::other(format!("{} ({len} bytes): {e}", path.display())))?;
    file.read_to_end(&mut bytes)?;
    Ok(bytes)
}
