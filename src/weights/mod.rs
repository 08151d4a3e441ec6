//! Stage 1: a Hugging Face CLIP model directory (`config.json` + safetensors).

mod config;
mod random;
mod store;

pub use config::{Activation, ClipConfig, TextConfig, VisionConfig};
pub use random::{clip_tensor_shapes, write_random_clip};
pub use store::{Tensor, TensorStore};

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
