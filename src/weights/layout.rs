//! Which files a `--model` path means, and in which state-dict layout they are.
//!
//! * **Hugging Face** (`transformers` `CLIPModel` or tower saves): `config.json` +
//!   `model.safetensors` (or sharded with `model.safetensors.index.json`), `tokenizer.json`,
//!   optionally `preprocessor_config.json`.
//! * **open_clip**: `open_clip_config.json` (a hub save: `{"model_cfg": …, "preprocess_cfg": …}`)
//!   or a bare open_clip model config (`{"embed_dim", "vision_cfg", "text_cfg", …}`, as in
//!   `open_clip/model_configs/`), with `open_clip_model.safetensors` (or
//!   `open_clip_pytorch_model.safetensors`, or `model.safetensors`).
//!
//! A directory that holds both (LAION's hub repositories do) is read as Hugging Face; both
//! give the same features. A path to a `.safetensors` file reads that file, with the config
//! from the same folder (`open_clip_config.json`, else `config.json`). The layout is taken
//! from the config's form and checked against the tensor names.

use super::config::ClipConfig;
use super::open_clip;
use super::store::TensorStore;
use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};

/// The state-dict naming a checkpoint uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    HuggingFace,
    OpenClip,
}

impl Layout {
    pub fn name(self) -> &'static str {
        match self {
            Layout::HuggingFace => "Hugging Face",
            Layout::OpenClip => "open_clip",
        }
    }

    /// A tensor only this layout has, to tell layouts apart by their names.
    fn marker_tensors(self) -> &'static [&'static str] {
        match self {
            Layout::HuggingFace => &[
                "vision_model.embeddings.patch_embedding.weight",
                "embeddings.patch_embedding.weight",
                "text_model.embeddings.token_embedding.weight",
                "embeddings.token_embedding.weight",
            ],
            Layout::OpenClip => &[
                "visual.conv1.weight",
                "token_embedding.weight",
                "text.token_embedding.weight",
            ],
        }
    }
}

/// The weights a model reads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WeightFiles {
    /// What [`TensorStore::open_dir`] reads: `model.safetensors` or its shard index.
    HfDir,
    /// One safetensors file.
    File(PathBuf),
}

/// Where the text tokenizer comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TokenizerSource {
    /// `<dir>/tokenizer.json`.
    File(PathBuf),
    /// fedclip's bundled copy of OpenAI's BPE, which open_clip uses for every CLIP model
    /// whose config names no `hf_tokenizer_name` (open_clip ships it inside its package,
    /// so its checkpoints carry no tokenizer file).
    BundledOpenAi,
    /// None found; the reason says what is needed.
    Missing(String),
}

/// A located model: its folder, layout, config file and weights.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModelFiles {
    /// The folder holding the config (and the tokenizer, preprocessing settings).
    pub dir: PathBuf,
    pub layout: Layout,
    pub config_file: PathBuf,
    pub weights: WeightFiles,
}

/// Weight file names open_clip looks for, in its own order of preference
/// (`open_clip.factory._find_checkpoint_in_dir`), restricted to safetensors.
const OPEN_CLIP_WEIGHTS: [&str; 3] = [
    "open_clip_model.safetensors",
    "open_clip_pytorch_model.safetensors",
    "model.safetensors",
];

fn read_json(file: &Path) -> Result<serde_json::Value> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{} is not valid JSON", file.display()))
}

fn config_layout(file: &Path) -> Result<Layout> {
    Ok(if open_clip::is_open_clip_config(&read_json(file)?) {
        Layout::OpenClip
    } else {
        Layout::HuggingFace
    })
}

impl ModelFiles {
    /// Locates the model at `path`, a directory or a `.safetensors` file (see the module docs).
    pub fn locate(path: &Path) -> Result<Self> {
        if path.is_file() {
            return Self::locate_file(path);
        }
        if !path.is_dir() {
            let msg = format!(
                "model {} does not exist (expected a model directory or a .safetensors file)",
                path.display()
            );
            // An I/O error in the chain, so that callers (the Python module) can tell.
            return Err(std::io::Error::new(std::io::ErrorKind::NotFound, msg).into());
        }
        let dir = path.to_path_buf();
        let hf_config = dir.join("config.json");
        let oc_config = dir.join("open_clip_config.json");
        let hf_weights = dir.join("model.safetensors").is_file()
            || dir.join("model.safetensors.index.json").is_file();
        let hf_is_hf = hf_config.is_file() && config_layout(&hf_config)? == Layout::HuggingFace;
        if hf_is_hf && hf_weights {
            return Ok(Self::hf(dir));
        }
        let oc_file = if oc_config.is_file() {
            Some(oc_config)
        } else if hf_config.is_file() && !hf_is_hf {
            Some(hf_config)
        } else {
            None
        };
        match oc_file {
            Some(config_file) => {
                let weights = OPEN_CLIP_WEIGHTS
                    .iter()
                    .map(|n| dir.join(n))
                    .find(|p| p.is_file())
                    .with_context(|| {
                        format!(
                            "{}: an open_clip model (config {}) needs its weights as {}{}",
                            dir.display(),
                            config_file.display(),
                            OPEN_CLIP_WEIGHTS.join(" or "),
                            if dir.join("open_clip_pytorch_model.bin").is_file() {
                                "; open_clip_pytorch_model.bin is a pickle, which fedclip does not read (convert it with safetensors.torch.save_file)"
                            } else {
                                ""
                            }
                        )
                    })?;
                Ok(ModelFiles {
                    dir,
                    layout: Layout::OpenClip,
                    config_file,
                    weights: WeightFiles::File(weights),
                })
            }
            // Hugging Face, or nothing recognisable: the HF loader names what is missing.
            None => Ok(Self::hf(dir)),
        }
    }

    fn hf(dir: PathBuf) -> Self {
        ModelFiles {
            config_file: dir.join("config.json"),
            dir,
            layout: Layout::HuggingFace,
            weights: WeightFiles::HfDir,
        }
    }

    fn locate_file(path: &Path) -> Result<Self> {
        if path.extension().is_none_or(|e| e != "safetensors") {
            bail!(
                "model {} is a file but not a .safetensors file (expected a model directory or a .safetensors file)",
                path.display()
            );
        }
        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let config_file = ["open_clip_config.json", "config.json"]
            .iter()
            .map(|n| dir.join(n))
            .find(|p| p.is_file())
            .with_context(|| {
                format!(
                    "{}: no open_clip_config.json or config.json beside it to say the model's shape",
                    path.display()
                )
            })?;
        Ok(ModelFiles {
            layout: config_layout(&config_file)?,
            dir,
            config_file,
            weights: WeightFiles::File(path.to_path_buf()),
        })
    }

    /// The model's tower shapes.
    pub fn config(&self) -> Result<ClipConfig> {
        match self.layout {
            Layout::HuggingFace if self.weights == WeightFiles::HfDir => {
                ClipConfig::load(&self.dir)
            }
            Layout::HuggingFace => {
                let text = std::fs::read_to_string(&self.config_file)
                    .with_context(|| format!("cannot read {}", self.config_file.display()))?;
                ClipConfig::parse(&text, &self.config_file)
            }
            Layout::OpenClip => {
                let text = std::fs::read_to_string(&self.config_file)
                    .with_context(|| format!("cannot read {}", self.config_file.display()))?;
                Ok(open_clip::parse(&text, &self.config_file)?.0)
            }
        }
    }

    /// Opens the weights and checks that their names are in this layout.
    pub fn open_store(&self) -> Result<TensorStore> {
        let store = match &self.weights {
            WeightFiles::HfDir => TensorStore::open_dir(&self.dir)?,
            WeightFiles::File(f) => TensorStore::open_files(std::slice::from_ref(f))?,
        };
        let other = match self.layout {
            Layout::HuggingFace => Layout::OpenClip,
            Layout::OpenClip => Layout::HuggingFace,
        };
        let has = |l: Layout| l.marker_tensors().iter().any(|n| store.contains(n));
        if has(other) && !has(self.layout) {
            bail!(
                "{}: the tensors are in {}'s layout (e.g. `{}`), but {} is a {} config",
                store.file_of("").display(),
                other.name(),
                other
                    .marker_tensors()
                    .iter()
                    .find(|n| store.contains(n))
                    .unwrap_or(&""),
                self.config_file.display(),
                self.layout.name()
            );
        }
        Ok(store)
    }

    /// The one weight file, unless the weights are a Hugging Face directory's
    /// ([`WeightFiles::HfDir`]).
    pub fn single_weight_file(&self) -> Option<&Path> {
        match &self.weights {
            WeightFiles::HfDir => None,
            WeightFiles::File(f) => Some(f),
        }
    }

    /// Where prompts are tokenized from (see [`TokenizerSource`]).
    pub fn tokenizer(&self) -> Result<TokenizerSource> {
        let file = self.dir.join("tokenizer.json");
        if file.is_file() {
            return Ok(TokenizerSource::File(file));
        }
        if self.layout == Layout::HuggingFace {
            return Ok(TokenizerSource::Missing(format!(
                "{}: missing (text prompts need the model's tokenizer.json)",
                file.display()
            )));
        }
        let text = std::fs::read_to_string(&self.config_file)
            .with_context(|| format!("cannot read {}", self.config_file.display()))?;
        let (config, extras) = open_clip::parse(&text, &self.config_file)?;
        Ok(match (extras.hf_tokenizer_name, config.text) {
            (Some(name), _) => TokenizerSource::Missing(format!(
                "{}: the model uses the Hugging Face tokenizer `{name}` (text_cfg.hf_tokenizer_name), not OpenAI's BPE; put its tokenizer.json in {}",
                self.config_file.display(),
                self.dir.display()
            )),
            (None, Some(t)) if t.vocab_size != 49408 => TokenizerSource::Missing(format!(
                "{}: text_cfg.vocab_size is {}, not the 49408 of OpenAI's BPE; put the model's tokenizer.json in {}",
                self.config_file.display(),
                t.vocab_size,
                self.dir.display()
            )),
            _ => TokenizerSource::BundledOpenAi,
        })
    }
}
