//! Prompt learning through the frozen text tower: the forward pass from token embeddings
//! with saved activations and the backward pass to those embeddings (`tower`, over the
//! layer pairs of `ops`), and CoOp's prompt construction and context initialisation
//! (`learner`). The family that trains it is [`crate::heads::PromptHead`].
//!
//! Everything is generic over [`crate::adapter::Real`], so the f64 instantiation checks the
//! f32 code (finite differences in `ops`' tests, PyTorch float64 fixtures in
//! `tests/prompt_learner.rs`). Backward functions return new buffers; none accumulates.

mod learner;
mod ops;
mod random;
mod tower;

pub use learner::{
    ClassPrompt, ClassTokenPosition, ContextSpec, DEFAULT_N_CTX, PromptLayout, class_prompts,
    context_length, init_context, init_tokens, normal_stream,
};
pub use random::{counter_uniform, random_text_weights};
pub use tower::{LayerActs, PromptTower, TextActs};
