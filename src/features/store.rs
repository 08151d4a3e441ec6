//! One cache key's feature table: digest → `dim` floats, in append-only safetensors shards.
//!
//! A store is a directory `<cache>/<kind>-<key prefix>/` of immutable files
//! `shard-<nanos>-<pid>.safetensors`, each holding
//!
//! * `keys`: `U8 [rows, 32]`, the BLAKE3 digests of the inputs (file bytes or prompt text);
//! * `features`: `F32 [rows, dim]`;
//! * metadata `format` (`fedclip-features/1`), `key` (the full cache key hash), `dim`,
//!   `rows`, `checksum` (BLAKE3 of the two tensors' bytes) and `description`.
//!
//! Shards are memory-mapped and indexed by digest on first use, checksums verified; a shard
//! that fails any check (unreadable, bad header, shape, checksum) or belongs to another key
//! is deleted with a warning, so its inputs are computed again. New rows are appended as new
//! shards, written to a temporary name and renamed; once there are more than
//! `compact_over` shards they are merged into one (streamed from the maps).

use super::hash::{Digest, hex};
use crate::io::temp_path;
use anyhow::{Context, Result, bail};
use memmap2::Mmap;
use safetensors::{Dtype, SafeTensors};
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub const FORMAT: &str = "fedclip-features/1";
/// Temporary files this old are debris of a killed writer and are removed.
const STALE_TEMP: Duration = Duration::from_secs(24 * 3600);

struct Shard {
    path: PathBuf,
    map: Mmap,
    /// Byte offset of the `features` data in the file.
    features_at: usize,
}

pub struct Store {
    pub dir: PathBuf,
    key: String,
    description: String,
    pub dim: usize,
    shards: Vec<Shard>,
    index: HashMap<Digest, (u32, u32)>,
    loaded: bool,
}

impl Store {
    pub fn new(dir: PathBuf, key: String, description: String, dim: usize) -> Store {
        Store {
            dir,
            key,
            description,
            dim,
            shards: Vec::new(),
            index: HashMap::new(),
            loaded: false,
        }
    }

    pub fn len(&self) -> usize {
        self.index.len()
    }

    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    pub fn shard_count(&self) -> usize {
        self.shards.len()
    }

    pub fn contains(&self, d: &Digest) -> bool {
        self.index.contains_key(d)
    }

    /// Maps and indexes every shard, once. Bad shards are removed; `warn` is told why.
    pub fn ensure_loaded(&mut self, warn: &mut dyn FnMut(String)) -> Result<()> {
        if self.loaded {
            return Ok(());
        }
        std::fs::create_dir_all(&self.dir)
            .with_context(|| format!("cannot create cache directory {}", self.dir.display()))?;
        let mut paths = Vec::new();
        for entry in std::fs::read_dir(&self.dir)
            .with_context(|| format!("cannot list {}", self.dir.display()))?
        {
            let path = entry?.path();
            let name = path.file_name().unwrap_or_default().to_string_lossy();
            if name.starts_with("shard-") && name.ends_with(".safetensors") {
                paths.push(path);
            } else if name.contains(".tmp-") {
                let old = std::fs::metadata(&path)
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| t.elapsed().ok())
                    .is_some_and(|age| age > STALE_TEMP);
                if old {
                    let _ = std::fs::remove_file(&path);
                }
            }
        }
        paths.sort();
        for path in paths {
            self.add_shard(path, warn);
        }
        self.loaded = true;
        Ok(())
    }

    /// Maps, checks and indexes one shard; a bad one is deleted with a warning.
    fn add_shard(&mut self, path: PathBuf, warn: &mut dyn FnMut(String)) {
        match self.open_shard(&path) {
            Ok((shard, keys)) => {
                let s = self.shards.len() as u32;
                for (row, k) in keys.into_iter().enumerate() {
                    self.index.entry(k).or_insert((s, row as u32));
                }
                self.shards.push(shard);
            }
            // Merged away by another process between listing and opening: not damage.
            Err(_) if !path.exists() => {}
            Err(e) => {
                warn(format!(
                    "feature cache file {} is unusable ({e:#}); removing it, its features will \
                     be computed again",
                    path.display()
                ));
                if let Err(e) = std::fs::remove_file(&path)
                    && e.kind() != std::io::ErrorKind::NotFound
                {
                    warn(format!("cannot remove {}: {e}", path.display()));
                }
            }
        }
    }

    fn open_shard(&self, path: &Path) -> Result<(Shard, Vec<Digest>)> {
        let file = std::fs::File::open(path).context("cannot open")?;
        // SAFETY: shards are immutable once renamed into place; writers never modify one.
        let map = unsafe { Mmap::map(&file) }.context("cannot map")?;
        let st = SafeTensors::deserialize(&map).context("not a valid safetensors file")?;
        let (_, header) = SafeTensors::read_metadata(&map).context("bad header")?;
        let meta = header.metadata().clone().unwrap_or_default();
        let field = |k: &str| {
            meta.get(k)
                .cloned()
                .with_context(|| format!("metadata field `{k}` missing"))
        };
        if field("format")? != FORMAT {
            bail!("format is not {FORMAT}");
        }
        if field("key")? != self.key {
            bail!("stale: written for another model, preprocessing or tokenizer");
        }
        let dim: usize = field("dim")?.parse().context("bad dim")?;
        let rows: usize = field("rows")?.parse().context("bad rows")?;
        if dim != self.dim {
            bail!("feature size {dim}, expected {}", self.dim);
        }
        let keys = st.tensor("keys").context("no `keys` tensor")?;
        let feats = st.tensor("features").context("no `features` tensor")?;
        if keys.dtype() != Dtype::U8 || keys.shape() != [rows, 32] {
            bail!(
                "`keys` is {:?} {:?}, expected U8 [{rows}, 32]",
                keys.dtype(),
                keys.shape()
            );
        }
        if feats.dtype() != Dtype::F32 || feats.shape() != [rows, dim] {
            bail!(
                "`features` is {:?} {:?}, expected F32 [{rows}, {dim}]",
                feats.dtype(),
                feats.shape()
            );
        }
        let mut h = blake3::Hasher::new();
        h.update(keys.data());
        h.update(feats.data());
        if h.finalize().to_hex().as_str() != field("checksum")? {
            bail!("checksum mismatch");
        }
        let digests = keys
            .data()
            .chunks_exact(32)
            .map(|c| c.try_into().expect("32 bytes"))
            .collect();
        let features_at = feats.data().as_ptr() as usize - map.as_ptr() as usize;
        Ok((
            Shard {
                path: path.to_path_buf(),
                map,
                features_at,
            },
            digests,
        ))
    }

    fn row_bytes(&self, shard: u32, row: u32) -> &[u8] {
        let s = &self.shards[shard as usize];
        let n = self.dim * 4;
        let at = s.features_at + row as usize * n;
        &s.map[at..at + n]
    }

    /// Copies the features of `d` into `out` (`dim` floats); false when absent.
    pub fn read(&self, d: &Digest, out: &mut [f32]) -> bool {
        let Some(&(s, r)) = self.index.get(d) else {
            return false;
        };
        for (o, b) in out.iter_mut().zip(self.row_bytes(s, r).chunks_exact(4)) {
            *o = f32::from_le_bytes(b.try_into().expect("4 bytes"));
        }
        true
    }

    /// Appends rows as a new shard and indexes it.
    pub fn append(&mut self, keys: &[Digest], features: &[f32]) -> Result<()> {
        assert_eq!(features.len(), keys.len() * self.dim);
        if keys.is_empty() {
            return Ok(());
        }
        let rows: Vec<&[u8]> = features
            .chunks_exact(self.dim.max(1))
            .map(bytemuck::cast_slice)
            .collect();
        let path = self.write_shard(keys, rows.into_iter())?;
        let mut err = None;
        self.add_shard(path, &mut |w| err = Some(w));
        match err {
            Some(w) => bail!("a feature cache file just written cannot be read back: {w}"),
            None => Ok(()),
        }
    }

    /// Merges all shards into one when there are more than `max_shards`.
    pub fn compact(&mut self, max_shards: usize, warn: &mut dyn FnMut(String)) -> Result<()> {
        if self.shards.len() <= max_shards.max(1) {
            return Ok(());
        }
        let mut entries: Vec<(&Digest, &(u32, u32))> = self.index.iter().collect();
        entries.sort_by_key(|&(_, &(s, r))| (s, r));
        let keys: Vec<Digest> = entries.iter().map(|(k, _)| **k).collect();
        let path = self.write_shard(
            &keys,
            entries.iter().map(|&(_, &(s, r))| self.row_bytes(s, r)),
        )?;
        let old: Vec<PathBuf> = self.shards.drain(..).map(|s| s.path).collect();
        self.index.clear();
        for p in old {
            if let Err(e) = std::fs::remove_file(&p)
                && e.kind() != std::io::ErrorKind::NotFound
            {
                warn(format!(
                    "cannot remove merged cache file {}: {e}",
                    p.display()
                ));
            }
        }
        let mut err = None;
        self.add_shard(path, &mut |w| err = Some(w));
        match err {
            Some(w) => bail!("the merged feature cache file cannot be read back: {w}"),
            None => Ok(()),
        }
    }

    /// Streams a shard to a temporary file and renames it into place.
    fn write_shard<'a>(
        &self,
        keys: &[Digest],
        rows: impl Iterator<Item = &'a [u8]>,
    ) -> Result<PathBuf> {
        let n = keys.len();
        let key_bytes = n * 32;
        let feat_bytes = n * self.dim * 4;
        // The checksum covers the data, so it is computed before the header is written:
        // one pass over the rows to hash, collected meanwhile for the write.
        let mut h = blake3::Hasher::new();
        let key_flat: &[u8] = bytemuck::cast_slice(keys);
        h.update(key_flat);
        let rows: Vec<&[u8]> = rows.collect();
        for r in &rows {
            debug_assert_eq!(r.len(), self.dim * 4);
            h.update(r);
        }
        let checksum = h.finalize().to_hex().to_string();
        let header = serde_json::json!({
            "__metadata__": {
                "format": FORMAT,
                "key": self.key,
                "dim": self.dim.to_string(),
                "rows": n.to_string(),
                "checksum": checksum,
                "description": self.description,
            },
            "keys": {"dtype": "U8", "shape": [n, 32], "data_offsets": [0, key_bytes]},
            "features": {
                "dtype": "F32",
                "shape": [n, self.dim],
                "data_offsets": [key_bytes, key_bytes + feat_bytes],
            },
        });
        let mut header = serde_json::to_vec(&header)?;
        while header.len() % 8 != 0 {
            header.push(b' ');
        }
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let path = self.dir.join(format!(
            "shard-{nanos:020}-{}.safetensors",
            std::process::id()
        ));
        let tmp = temp_path(&path);
        let write = || -> std::io::Result<()> {
            let mut w = std::io::BufWriter::with_capacity(1 << 20, crate::io::create_new(&tmp)?);
            w.write_all(&(header.len() as u64).to_le_bytes())?;
            w.write_all(&header)?;
            w.write_all(key_flat)?;
            for r in &rows {
                w.write_all(r)?;
            }
            w.into_inner().map_err(|e| e.into_error())?.sync_all()
        };
        if let Err(e) = write() {
            let _ = std::fs::remove_file(&tmp);
            return Err(e).with_context(|| format!("cannot write {}", tmp.display()));
        }
        std::fs::rename(&tmp, &path)
            .with_context(|| format!("cannot move {} into place", path.display()))?;
        Ok(path)
    }
}

/// The store directory name for a kind and key hash.
pub fn store_dir(cache: &Path, kind: &str, key: &Digest) -> PathBuf {
    cache.join(format!("{kind}-{}", &hex(key)[..32]))
}
