//! Content hashes (BLAKE3) of image and model files, with a memo so that unchanged files are
//! not read again on the next run.
//!
//! The memo (`<cache>/file-hashes.bin`) maps an absolute path to the file's size, mtime,
//! ctime and inode when it was hashed, and the hash. A file whose stat still matches is taken
//! as unchanged (the same trade-off as git's index: rewriting a file changes its ctime, which
//! no tool can set back). A file changed less than `racy_window` before it was hashed is not
//! memoised, because a second change within the file system's timestamp granularity could
//! leave every stat field equal ("racy git"); such files are simply hashed again next time.
//! A memo that is unreadable or fails its checksum is discarded with a warning.

use crate::weights::{ModelFiles, TokenizerSource};
use anyhow::{Context, Result, bail};
use memmap2::Mmap;
use std::collections::HashMap;
use std::fs::Metadata;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A BLAKE3 digest.
pub type Digest = [u8; 32];

const MEMO_MAGIC: &[u8; 8] = b"FCHMEMO1";
/// Files at least this large are hashed from a memory map on all cores.
const LARGE_FILE: u64 = 16 << 20;

/// The stat fields a memo entry is checked against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileStamp {
    pub size: u64,
    pub mtime: (i64, u32),
    pub ctime: (i64, u32),
    pub ino: u64,
}

impl FileStamp {
    pub fn of(meta: &Metadata) -> FileStamp {
        #[cfg(unix)]
        {
            use std::os::unix::fs::MetadataExt;
            FileStamp {
                size: meta.len(),
                mtime: (meta.mtime(), meta.mtime_nsec() as u32),
                ctime: (meta.ctime(), meta.ctime_nsec() as u32),
                ino: meta.ino(),
            }
        }
        #[cfg(not(unix))]
        {
            let t = |s: std::io::Result<SystemTime>| {
                s.ok()
                    .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                    .map_or((0, 0), |d| (d.as_secs() as i64, d.subsec_nanos()))
            };
            FileStamp {
                size: meta.len(),
                mtime: t(meta.modified()),
                ctime: t(meta.created()),
                ino: 0,
            }
        }
    }

    /// Changed less than `window` before `now` (or in the future)?
    fn is_racy(&self, now: SystemTime, window: Duration) -> bool {
        let newest = self.mtime.max(self.ctime);
        let Ok(now) = now.duration_since(UNIX_EPOCH) else {
            return true;
        };
        let newest = Duration::new(newest.0.max(0) as u64, newest.1.min(999_999_999));
        newest + window > now
    }
}

/// BLAKE3 of a file's bytes.
pub fn hash_file(path: &Path) -> Result<Digest> {
    let file = crate::walk::open_regular(path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    let len = file
        .metadata()
        .with_context(|| format!("cannot stat {}", path.display()))?
        .len();
    if len >= LARGE_FILE {
        // SAFETY: read-only map of a file we only read; a concurrent truncation is the
        // caller's problem, as for any reader.
        let map = unsafe { Mmap::map(&file) }
            .with_context(|| format!("cannot map {}", path.display()))?;
        let mut h = blake3::Hasher::new();
        h.update_rayon(&map);
        Ok(*h.finalize().as_bytes())
    } else {
        let bytes = crate::walk::read_regular(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        Ok(*blake3::hash(&bytes).as_bytes())
    }
}

pub fn hex(d: &Digest) -> String {
    d.iter().map(|b| format!("{b:02x}")).collect()
}

/// Path → (stamp, digest), persisted in the cache directory.
pub struct HashMemo {
    path: PathBuf,
    entries: HashMap<Vec<u8>, (FileStamp, Digest)>,
    dirty: bool,
    racy_window: Duration,
}

fn path_key(abs: &Path) -> Vec<u8> {
    abs.as_os_str().as_encoded_bytes().to_vec()
}

impl HashMemo {
    /// Loads the memo at `path` (absent: empty). A damaged memo is dropped; the warning
    /// says so.
    pub fn load(path: &Path, racy_window: Duration) -> (HashMemo, Option<String>) {
        let mut memo = HashMemo {
            path: path.to_path_buf(),
            entries: HashMap::new(),
            dirty: false,
            racy_window,
        };
        let warning = match std::fs::read(path) {
            Ok(bytes) => match parse_memo(&bytes) {
                Ok(entries) => {
                    memo.entries = entries;
                    None
                }
                Err(e) => {
                    memo.dirty = true;
                    Some(format!(
                        "file-hash memo {} is damaged ({e}); every file will be hashed again",
                        path.display()
                    ))
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => Some(format!(
                "cannot read file-hash memo {} ({e}); every file will be hashed again",
                path.display()
            )),
        };
        (memo, warning)
    }

    pub fn lookup(&self, abs: &Path, stamp: &FileStamp) -> Option<Digest> {
        self.entries
            .get(&path_key(abs))
            .filter(|(s, _)| s == stamp)
            .map(|(_, d)| *d)
    }

    /// Records a freshly computed digest, unless the file changed too recently to trust its
    /// stamp; a stale entry for the path is dropped either way.
    pub fn record(&mut self, abs: &Path, stamp: FileStamp, digest: Digest) {
        let key = path_key(abs);
        if stamp.is_racy(SystemTime::now(), self.racy_window) {
            if self.entries.remove(&key).is_some() {
                self.dirty = true;
            }
        } else if self.entries.get(&key) != Some(&(stamp, digest)) {
            self.entries.insert(key, (stamp, digest));
            self.dirty = true;
        }
    }

    /// Digest of `path`, from the memo when its stamp matches, else by reading it (and
    /// memoising). Returns whether the file was read.
    pub fn digest(&mut self, path: &Path) -> Result<(Digest, bool)> {
        let abs = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
        let meta =
            std::fs::metadata(&abs).with_context(|| format!("cannot stat {}", path.display()))?;
        let stamp = FileStamp::of(&meta);
        if let Some(d) = self.lookup(&abs, &stamp) {
            return Ok((d, false));
        }
        let d = hash_file(&abs)?;
        self.record(&abs, stamp, d);
        Ok((d, true))
    }

    pub fn is_dirty(&self) -> bool {
        self.dirty
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Writes the memo atomically if it changed.
    pub fn save(&mut self) -> Result<()> {
        if !self.dirty {
            return Ok(());
        }
        let mut buf = Vec::with_capacity(16 + self.entries.len() * 120);
        buf.extend_from_slice(MEMO_MAGIC);
        buf.extend_from_slice(&(self.entries.len() as u64).to_le_bytes());
        let mut keys: Vec<&Vec<u8>> = self.entries.keys().collect();
        keys.sort();
        for k in keys {
            let (s, d) = &self.entries[k];
            buf.extend_from_slice(&(k.len() as u32).to_le_bytes());
            buf.extend_from_slice(k);
            buf.extend_from_slice(&s.size.to_le_bytes());
            buf.extend_from_slice(&s.mtime.0.to_le_bytes());
            buf.extend_from_slice(&s.mtime.1.to_le_bytes());
            buf.extend_from_slice(&s.ctime.0.to_le_bytes());
            buf.extend_from_slice(&s.ctime.1.to_le_bytes());
            buf.extend_from_slice(&s.ino.to_le_bytes());
            buf.extend_from_slice(d);
        }
        let sum = blake3::hash(&buf);
        buf.extend_from_slice(sum.as_bytes());
        crate::io::write_atomic(&self.path, &buf)?;
        self.dirty = false;
        Ok(())
    }
}

fn parse_memo(bytes: &[u8]) -> Result<HashMap<Vec<u8>, (FileStamp, Digest)>> {
    if bytes.len() < 8 + 8 + 32 || &bytes[..8] != MEMO_MAGIC {
        bail!("not a fedclip file-hash memo");
    }
    let (body, sum) = bytes.split_at(bytes.len() - 32);
    if blake3::hash(body).as_bytes() != sum {
        bail!("checksum mismatch");
    }
    let mut r = Reader { buf: body, pos: 8 };
    let count = r.u64()? as usize;
    let mut entries = HashMap::with_capacity(count.min(1 << 24));
    for _ in 0..count {
        let n = r.u32()? as usize;
        let key = r.take(n)?.to_vec();
        let stamp = FileStamp {
            size: r.u64()?,
            mtime: (r.u64()? as i64, r.u32()?),
            ctime: (r.u64()? as i64, r.u32()?),
            ino: r.u64()?,
        };
        let d: Digest = r.take(32)?.try_into().expect("32 bytes");
        entries.insert(key, (stamp, d));
    }
    if r.pos != body.len() {
        bail!("trailing bytes");
    }
    Ok(entries)
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8]> {
        if self.buf.len() - self.pos < n {
            bail!("truncated");
        }
        self.pos += n;
        Ok(&self.buf[self.pos - n..self.pos])
    }
    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }
    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }
}

/// The files whose bytes determine a model's features.
pub struct ModelFingerprint {
    /// `config.json` and the weights `TensorStore::open_dir` reads (`model.safetensors`, or
    /// the index and every shard it lists).
    pub weights: String,
    /// The tokenizer files present (`tokenizer.json`, `tokenizer_config.json`, `vocab.json`,
    /// `merges.txt`, `special_tokens_map.json`).
    pub tokenizer: String,
}

/// `config.json` and the safetensors `TensorStore::open_dir` reads, as names in `dir`.
fn hf_weight_files(dir: &Path) -> Result<Vec<String>> {
    let mut weight_files = vec!["config.json".to_string()];
    if dir.join("model.safetensors").exists() {
        weight_files.push("model.safetensors".into());
    } else {
        let index = dir.join("model.safetensors.index.json");
        let text = std::fs::read_to_string(&index).with_context(|| {
            format!(
                "{}: no model.safetensors, and cannot read {}",
                dir.display(),
                index.display()
            )
        })?;
        let json: serde_json::Value = serde_json::from_str(&text)
            .with_context(|| format!("{} is not valid JSON", index.display()))?;
        let map = json
            .get("weight_map")
            .and_then(|m| m.as_object())
            .with_context(|| format!("{}: no `weight_map` object", index.display()))?;
        let mut shards: Vec<String> = map
            .values()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect();
        shards.sort();
        shards.dedup();
        weight_files.push("model.safetensors.index.json".into());
        weight_files.extend(shards);
    }
    Ok(weight_files)
}

fn file_name(path: &Path) -> Result<String> {
    path.file_name()
        .and_then(|n| n.to_str())
        .map(str::to_string)
        .with_context(|| format!("{}: file name is not valid UTF-8", path.display()))
}

/// Hashes a Hugging Face model directory's files (through `memo`, so a multi-GB checkpoint is
/// read once).
pub fn model_fingerprint(dir: &Path, memo: &mut HashMemo) -> Result<ModelFingerprint> {
    model_fingerprint_of(&crate::weights::ModelFiles::locate(dir)?, memo)
}

/// Hashes the files of a located model, in either layout. Hugging Face directories hash
/// `config.json` and what `TensorStore::open_dir` reads; other models their config file and
/// their one weight file. Without a tokenizer file, an open_clip model's text key covers
/// the bundled OpenAI BPE it then uses.
pub fn model_fingerprint_of(model: &ModelFiles, memo: &mut HashMemo) -> Result<ModelFingerprint> {
    let dir = model.dir.as_path();
    let weight_files = match model.single_weight_file() {
        None => hf_weight_files(dir)?,
        Some(file) => vec![file_name(&model.config_file)?, file_name(file)?],
    };
    let combine = |memo: &mut HashMemo, tag: &str, names: &[String]| -> Result<String> {
        let mut h = blake3::Hasher::new();
        h.update(tag.as_bytes());
        for name in names {
            let (d, _) = memo.digest(&dir.join(name))?;
            h.update(name.as_bytes());
            h.update(&[0]);
            h.update(&d);
        }
        Ok(h.finalize().to_hex().to_string())
    };
    let weights = combine(memo, "fedclip-model-weights/1\0", &weight_files)?;
    let tok_files: Vec<String> = [
        "tokenizer.json",
        "tokenizer_config.json",
        "vocab.json",
        "merges.txt",
        "special_tokens_map.json",
    ]
    .iter()
    .filter(|n| dir.join(n).is_file())
    .map(|n| n.to_string())
    .collect();
    let mut tokenizer = combine(memo, "fedclip-tokenizer/1\0", &tok_files)?;
    if tok_files.is_empty() && model.tokenizer()? == TokenizerSource::BundledOpenAi {
        let mut h = blake3::Hasher::new();
        h.update(b"fedclip-tokenizer/bundled-openai-bpe/1\0");
        h.update(crate::tokenizer::BUNDLED_OPENAI_BPE);
        tokenizer = h.finalize().to_hex().to_string();
    }
    Ok(ModelFingerprint { weights, tokenizer })
}
