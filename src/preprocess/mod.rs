//! Image decoding and OpenAI CLIP's `_transform` (owned by the preprocessing work).
