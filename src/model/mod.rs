//! Stage 2: the CLIP encoders on the CPU, in f32 from f16/bf16/f32 weights. This is the
//! reference the CUDA kernels are checked against and the path used without a GPU.

mod encoder;
pub mod ops;
mod text;
mod vision;

pub use text::{TextOutput, TextTower};
pub use vision::{VisionOutput, VisionTower, im2col};

use crate::weights::{ClipConfig, TensorStore};
use anyhow::{Context, Result};
use std::path::{Path, PathBuf};

/// A loaded CLIP model directory: whichever towers it holds.
pub struct ClipModel {
    pub dir: PathBuf,
    pub config: ClipConfig,
    pub vision: Option<VisionTower>,
    pub text: Option<TextTower>,
    /// `logit_scale` as stored (the log of the temperature), when the save has it.
    pub logit_scale: Option<f32>,
}

impl ClipModel {
    pub fn load(dir: &Path) -> Result<Self> {
        let config = ClipConfig::load(dir)?;
        let store = TensorStore::open_dir(dir)?;
        config.check_against(&store, dir)?;
        let vision = config
            .vision
            .as_ref()
            .map(|c| VisionTower::load(&store, c))
            .transpose()
            .with_context(|| format!("loading the vision tower of {}", dir.display()))?;
        let text = config
            .text
            .as_ref()
            .map(|c| TextTower::load(&store, c))
            .transpose()
            .with_context(|| format!("loading the text tower of {}", dir.display()))?;
        let logit_scale = if store.contains("logit_scale") {
            Some(store.get("logit_scale", &[])?.data[0])
        } else {
            None
        };
        Ok(ClipModel {
            dir: dir.to_path_buf(),
            config,
            vision,
            text,
            logit_scale,
        })
    }
}
