//! fedclip: a CLIP forward pass and FedCLIP adapter training engine.
//!
//! Pipeline stages, one module each:
//! weights (config + safetensors) → model (CPU encoders; `cuda` for the GPU) → preprocess /
//! tokenizer (inputs) → encode (one encoder over either engine) → features (the cache) →
//! adapter (the K-client trainer; `heads` for the other method families, `prompt` for the
//! text tower's backward pass under the prompt learner) → the jobs: `embed` (`fedclip embed`),
//! `federated` (`fedclip run`) and `sweep` (`fedclip sweep` and `fedclip table`: many runs
//! through `federated`'s library API, then their table). `io` (atomic files) and `walk`
//! (listing and reading the user's files) are leaves used by all; `privacy` (the DP
//! accountant, `fedclip privacy`) is a leaf too; no job imports another but `sweep`, which
//! drives `federated`'s runs.

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
pub mod privacy;
pub mod prompt;
pub mod sweep;
pub mod tokenizer;
pub mod walk;
pub mod weights;
