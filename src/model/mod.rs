//! Stage 2: the CLIP encoders on the CPU, in f32 from f16/bf16/f32 weights. This is the
//! reference the CUDA kernels are checked against and the path used without a GPU.

pub mod cpu;
mod encoder;
pub mod ops;
mod text;
mod vision;

pub use text::{TextOutput, TextTower};
pub use vision::{VisionOutput, VisionTower, im2col};

use crate::weights::{ClipConfig, ModelFiles, TowerWeights};
use anyhow::{Context, Result};
use cpu::Kernels;
use std::path::{Path, PathBuf};

/// A loaded CLIP model: whichever towers it holds.
pub struct ClipModel {
    /// The model's folder (config, tokenizer, preprocessing settings).
    pub dir: PathBuf,
    /// Which files, in which layout.
    pub files: ModelFiles,
    pub config: ClipConfig,
    pub vision: Option<VisionTower>,
    pub text: Option<TextTower>,
    /// `logit_scale` as stored (the log of the temperature), when the save has it.
    pub logit_scale: Option<f32>,
}

impl ClipModel {
    /// Loads the model at `path`, a directory or a `.safetensors` file, in either layout
    /// (see [`ModelFiles::locate`]), packed for the kernels `FEDCLIP_ISA` names or else the
    /// widest this CPU runs.
    pub fn load(path: &Path) -> Result<Self> {
        ClipModel::load_with(path, Kernels::from_env()?)
    }

    /// As [`ClipModel::load`], for the given kernels (tests run each ISA in one process).
    pub fn load_with(path: &Path, kernels: &'static Kernels) -> Result<Self> {
        let files = ModelFiles::locate(path)?;
        let config = files.config()?;
        let store = files.open_store()?;
        config.check_against(&store, &files.config_file)?;
        let weights = TowerWeights::new(&store, files.layout);
        let vision = config
            .vision
            .as_ref()
            .map(|c| VisionTower::load(kernels, &weights, c))
            .transpose()
            .with_context(|| format!("loading the vision tower of {}", path.display()))?;
        let text = config
            .text
            .as_ref()
            .map(|c| TextTower::load(kernels, &weights, c))
            .transpose()
            .with_context(|| format!("loading the text tower of {}", path.display()))?;
        Ok(ClipModel {
            dir: files.dir.clone(),
            logit_scale: weights.logit_scale()?,
            files,
            config,
            vision,
            text,
        })
    }
}
