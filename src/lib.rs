//! fedclip: a CLIP forward pass and FedCLIP adapter training engine.
//!
//! Pipeline stages, one module each:
//! weights (config + safetensors) → model (CPU encoders; `cuda` for the GPU) → preprocess /
//! tokenizer (inputs) → encode (one encoder over either engine) → features (the cache) →
//! adapter (the K-client trainer; `heads` for the other method families) → the jobs: `embed` (`fedclip embed`) and `federated`
//! (`fedclip run`). `io` (atomic files) is a leaf used by all; no job imports another.

pub mod adapter;
pub mod bundled;
pub mod cuda;
pub mod data;
pub mod device;
pub mod embed;
pub mod encode;
pub mod features;
pub mod federated;
pub mod heads;
pub mod io;
pub mod math;
pub mod model;
pub mod paths;
pub mod preprocess;
pub mod tokenizer;
pub mod weights;
