//! Stage 1: a CLIP model, in the Hugging Face or the open_clip layout ([`layout`]): its
//! config, memory-mapped safetensors, and the one table of tensor names ([`towers`]).

mod config;
pub mod layout;
pub mod open_clip;
mod random;
mod store;
pub mod towers;

pub use config::{Activation, ClipConfig, TextConfig, TextPooling, VisionConfig};
pub use layout::{Layout, ModelFiles, TokenizerSource, WeightFiles};
pub use random::{clip_tensor_shapes, write_random_clip, write_random_open_clip};
pub use store::{Tensor, TensorStore};
pub use towers::{BlockWeights, Norm, TextWeights, TowerWeights, VisionWeights};

use anyhow::Result;

/// Tensor names are looked up under each prefix in turn: `CLIPModel` saves use
/// `vision_model.`/`text_model.`, a tower saved alone may carry no prefix.
pub struct Scope<'a> {
    pub store: &'a TensorStore,
    pub prefixes: &'a [&'a str],
}

impl Scope<'_> {
    /// The full name under which `name` is stored, or the first candidate if none is.
    pub fn resolve(&self, name: &str) -> String {
        self.prefixes
            .iter()
            .map(|p| format!("{p}{name}"))
            .find(|full| self.store.contains(full))
            .unwrap_or_else(|| format!("{}{name}", self.prefixes[0]))
    }

    pub fn get(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        Ok(self.store.get(&self.resolve(name), shape)?.data)
    }

    pub fn has(&self, name: &str) -> bool {
        self.prefixes
            .iter()
            .any(|p| self.store.contains(&format!("{p}{name}")))
    }
}
