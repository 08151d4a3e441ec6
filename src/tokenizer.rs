//! CLIP BPE tokenizer.
