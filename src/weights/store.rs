//! Memory-mapped safetensors, one file or a sharded set, read into f32 on demand.

use anyhow::{Context, Result, bail};
use half::{bf16, f16};
use memmap2::Mmap;
use safetensors::{Dtype, SafeTensors};
use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

struct Shard {
    path: PathBuf,
    map: Mmap,
    /// Byte offset of the tensor data: 8-byte length + JSON header.
    data_start: usize,
}

struct Entry {
    shard: usize,
    dtype: Dtype,
    shape: Vec<usize>,
    range: (usize, usize),
}

/// All tensors of a model directory, by name.
pub struct TensorStore {
    shards: Vec<Shard>,
    entries: HashMap<String, Entry>,
}

/// A tensor converted to f32, with its shape.
#[derive(Clone, Debug)]
pub struct Tensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

impl TensorStore {
    /// Opens `model.safetensors`, or the shards listed by `model.safetensors.index.json`.
    pub fn open_dir(dir: &Path) -> Result<Self> {
        let single = dir.join("model.safetensors");
        let index = dir.join("model.safetensors.index.json");
        if single.exists() {
            Self::open_files(&[single])
        } else if index.exists() {
            let text = std::fs::read_to_string(&index)
                .with_context(|| format!("cannot read {}", index.display()))?;
            let json: serde_json::Value = serde_json::from_str(&text)
                .with_context(|| format!("{} is not valid JSON", index.display()))?;
            let map = json
                .get("weight_map")
                .and_then(|m| m.as_object())
                .with_context(|| format!("{}: no `weight_map` object", index.display()))?;
            let mut files: Vec<PathBuf> = Vec::new();
            for (tensor, file) in map {
                let file = file.as_str().with_context(|| {
                    format!(
                        "{}: `weight_map.{tensor}` is not a file name",
                        index.display()
                    )
                })?;
                let path = dir.join(file);
                if !files.contains(&path) {
                    files.push(path);
                }
            }
            files.sort();
            let store = Self::open_files(&files)?;
            for tensor in map.keys() {
                if !store.entries.contains_key(tensor) {
                    bail!(
                        "{}: tensor `{tensor}` is listed but absent from its shard",
                        index.display()
                    );
                }
            }
            Ok(store)
        } else {
            bail!(
                "{}: no model.safetensors or model.safetensors.index.json",
                dir.display()
            )
        }
    }

    /// Opens and validates the headers of the given safetensors files.
    pub fn open_files(paths: &[PathBuf]) -> Result<Self> {
        let mut shards = Vec::new();
        let mut entries = HashMap::new();
        for (i, path) in paths.iter().enumerate() {
            let file =
                File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
            // SAFETY: the file is opened read-only; a concurrent writer would be a user error
            // that at worst yields garbage numbers, which the shape checks do not rely on.
            let map = unsafe { Mmap::map(&file) }
                .with_context(|| format!("cannot memory-map {}", path.display()))?;
            let (header_len, meta) = SafeTensors::read_metadata(&map).map_err(|e| {
                anyhow::anyhow!(
                    "{} is not a valid safetensors file (truncated or corrupt?): {e}",
                    path.display()
                )
            })?;
            for (name, info) in meta.tensors() {
                entries.insert(
                    name,
                    Entry {
                        shard: i,
                        dtype: info.dtype,
                        shape: info.shape.clone(),
                        range: info.data_offsets,
                    },
                );
            }
            shards.push(Shard {
                path: path.clone(),
                map,
                data_start: 8 + header_len,
            });
        }
        Ok(TensorStore { shards, entries })
    }

    pub fn contains(&self, name: &str) -> bool {
        self.entries.contains_key(name)
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.entries.keys().map(|s| s.as_str())
    }

    /// The file a tensor lives in (or the first file, for error messages about absent ones).
    pub fn file_of(&self, name: &str) -> &Path {
        let shard = self.entries.get(name).map_or(0, |e| e.shard);
        self.shards
            .get(shard)
            .map_or(Path::new("<no file>"), |s| s.path.as_path())
    }

    pub fn shape(&self, name: &str) -> Option<&[usize]> {
        self.entries.get(name).map(|e| e.shape.as_slice())
    }

    /// Reads a tensor as f32, checking its shape. `expected` of `[]` accepts a 0-dim tensor
    /// or a 1-element one (some saves store scalars as `[1]`).
    pub fn get(&self, name: &str, expected: &[usize]) -> Result<Tensor> {
        let entry = self.entries.get(name).with_context(|| {
            format!("{}: missing tensor `{name}`", self.file_of(name).display())
        })?;
        let shard = &self.shards[entry.shard];
        let count: usize = entry.shape.iter().product();
        let scalar_ok = expected.is_empty() && count == 1;
        if entry.shape != expected && !scalar_ok {
            bail!(
                "{}: tensor `{name}` has shape {:?} but config.json implies {:?}",
                shard.path.display(),
                entry.shape,
                expected
            );
        }
        let bytes = &shard.map[shard.data_start + entry.range.0..shard.data_start + entry.range.1];
        let data = match entry.dtype {
            Dtype::F32 => bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
            Dtype::F16 => bytes
                .chunks_exact(2)
                .map(|b| f16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            Dtype::BF16 => bytes
                .chunks_exact(2)
                .map(|b| bf16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            Dtype::F64 => bytes
                .chunks_exact(8)
                .map(|b| f64::from_le_bytes(b.try_into().unwrap()) as f32)
                .collect(),
            other => bail!(
                "{}: tensor `{name}` has dtype {other:?}; CLIP weights must be F16, BF16, F32 or F64",
                shard.path.display()
            ),
        };
        Ok(Tensor {
            shape: entry.shape.clone(),
            data,
        })
    }
}
