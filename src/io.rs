//! Files written whole or not at all: one atomic writer and the safetensors writer, used by
//! every job (a leaf: it imports nothing from the crate). Outputs never go through a
//! symbolic link nor replace anything but a regular file.

use anyhow::{Context, Result, bail};
use safetensors::{Dtype, tensor::TensorView};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// `<path>.tmp-<pid>-<n>-<nanos>`: unique per writer (process, call, time), and recognisable
/// as debris by the `.tmp-` in its name.
pub fn temp_path(path: &Path) -> PathBuf {
    static CALLS: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let n = CALLS.fetch_add(1, Ordering::Relaxed);
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".tmp-{}-{n}-{nanos}", std::process::id()));
    path.with_file_name(name)
}

/// Writes `bytes` to `path` so that readers see the old file or the new one, never half of
/// one: a temporary file beside it (its directory created if missing), synced, then renamed
/// over it. On failure the temporary file is removed and `path` is untouched.
///
/// Only a regular file is replaced ([`check_replaceable`]): a symbolic link, device or
/// folder at `path` is an error naming it (renaming over `/dev/null` would turn the device
/// into a file). The temporary file is created new, never through a link.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomic_with(path, |tmp| {
        use std::io::Write;
        let mut f = create_new(tmp)?;
        f.write_all(bytes)?;
        f.sync_all()
    })
}

/// Creates `path`, which must not exist (`O_EXCL`: a link or file put there is never
/// opened through), without following a link in its last component.
pub fn create_new(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
}

/// Refuses `path` as an output when it exists and is not a regular file: a symbolic link
/// (its target, perhaps outside the output folder, would be what the user meant to keep), a
/// device, FIFO or folder. An absent path is fine.
pub fn check_replaceable(path: &Path) -> Result<()> {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return Ok(());
    };
    let ty = meta.file_type();
    let what = if ty.is_file() {
        return Ok(());
    } else if ty.is_symlink() {
        "a symbolic link"
    } else if ty.is_dir() {
        "a folder"
    } else {
        "a device, FIFO or socket"
    };
    bail!(
        "{} is {what}, not a regular file: fedclip replaces only regular files it writes; \
         choose another output path",
        path.display()
    )
}

/// Removes the temporary files ([`temp_path`]) a killed writer left in `dir` (not below
/// it); returns how many. Only for a folder whose writers are known to be gone (a run
/// directory whose lock is held): a live writer's file would be pulled from under it.
pub fn remove_debris(dir: &Path) -> Result<usize> {
    let mut removed = 0;
    let entries =
        std::fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))?;
    for entry in entries {
        let entry = entry.with_context(|| format!("cannot list {}", dir.display()))?;
        let is_file = entry.file_type().is_ok_and(|t| t.is_file());
        if is_file && entry.file_name().to_string_lossy().contains(".tmp-") {
            std::fs::remove_file(entry.path())
                .with_context(|| format!("cannot remove {}", entry.path().display()))?;
            removed += 1;
        }
    }
    Ok(removed)
}

/// [`write_atomic`] with the temporary file written by `write`.
fn write_atomic_with(path: &Path, write: impl FnOnce(&Path) -> std::io::Result<()>) -> Result<()> {
    check_replaceable(path).context("cannot write")?;
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("cannot create directory {}", parent.display()))?;
    }
    let tmp = temp_path(path);
    let done = write(&tmp).and_then(|()| std::fs::rename(&tmp, path));
    if done.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    done.with_context(|| format!("cannot write {}", path.display()))
}

/// Writes f32 tensors and string metadata to a safetensors file atomically
/// ([`write_atomic`]), so an interrupted run never leaves half a file.
pub fn write_safetensors(
    out: &Path,
    tensors: &[(&str, Vec<usize>, &[f32])],
    metadata: HashMap<String, String>,
) -> Result<()> {
    let views = tensors
        .iter()
        .map(|(name, shape, data)| {
            let view = TensorView::new(Dtype::F32, shape.clone(), bytemuck::cast_slice(data))
                .with_context(|| format!("tensor `{name}` does not match its shape {shape:?}"))?;
            Ok((name.to_string(), view))
        })
        .collect::<Result<Vec<_>>>()?;
    let bytes = safetensors::serialize(views, Some(metadata))
        .with_context(|| format!("cannot serialise {}", out.display()))?;
    write_atomic(out, &with_sorted_metadata(bytes)?)
}

/// safetensors writes `__metadata__` in `HashMap` order, which changes from run to run;
/// rewrites that object (first in the header) with its keys sorted, the rest of the header
/// untouched, so that the same input gives the same bytes. The length stays the same, so
/// the data offsets stay valid.
fn with_sorted_metadata(mut bytes: Vec<u8>) -> Result<Vec<u8>> {
    const PREFIX: &[u8] = b"{\"__metadata__\":";
    let n = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes")) as usize;
    let header = &bytes[8..8 + n];
    if !header.starts_with(PREFIX) {
        return Ok(bytes); // no metadata
    }
    let start = 8 + PREFIX.len();
    let mut values = serde_json::Deserializer::from_slice(&bytes[start..8 + n])
        .into_iter::<std::collections::BTreeMap<String, String>>();
    let sorted = values
        .next()
        .context("safetensors header: unreadable __metadata__")??;
    let len = values.byte_offset();
    let text = serde_json::to_vec(&sorted)?;
    anyhow::ensure!(
        text.len() == len,
        "safetensors metadata changed length when sorted"
    );
    bytes[start..start + len].copy_from_slice(&text);
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_atomic_replaces_whole_files_and_names_the_path_on_failure() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/a.txt");
        write_atomic(&path, b"one").unwrap();
        write_atomic(&path, b"two").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        let left: Vec<_> = std::fs::read_dir(path.parent().unwrap()).unwrap().collect();
        assert_eq!(left.len(), 1, "temporary files left behind");
        // A directory where the file should go: the rename fails, nothing is left behind.
        let blocked = dir.path().join("blocked");
        std::fs::create_dir_all(blocked.join("x")).unwrap();
        let err = write_atomic(&blocked, b"three").unwrap_err();
        assert!(format!("{err:#}").contains("cannot write"), "{err:#}");
        assert!(format!("{err:#}").contains("blocked"), "{err:#}");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2);
    }

    #[test]
    fn write_safetensors_names_a_tensor_that_does_not_fit_its_shape() {
        let dir = tempfile::tempdir().unwrap();
        let data = [1f32, 2.0, 3.0];
        let err = write_safetensors(
            &dir.path().join("t.safetensors"),
            &[("w", vec![2, 2], &data)],
            HashMap::new(),
        )
        .unwrap_err();
        assert!(format!("{err:#}").contains("tensor `w`"), "{err:#}");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
