//! fedclip: a CLIP forward pass and FedCLIP adapter training engine.
//!
//! Pipeline stages, one module each:
//! weights (config + safetensors) → model (CPU encoders) → preprocess / tokenizer (inputs)
//! → embed (the `fedclip embed` job).

pub mod adapter;
pub mod bundled;
pub mod cuda;
pub mod data;
pub mod device;
pub mod embed;
pub mod features;
pub mod federated;
pub mod model;
pub mod paths;
pub mod preprocess;
pub mod tokenizer;
pub mod weights;
