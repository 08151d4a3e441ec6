//! Decode + preprocess arbitrary bytes under a 4-Mpixel limit: an error or pixels, never a
//! panic, and memory bounded by the limit.
#![no_main]

use fedclip::preprocess::{PreprocessConfig, preprocess_bytes};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut cfg = PreprocessConfig::openai(30);
    cfg.max_image_pixels = 1 << 22;
    let _ = preprocess_bytes(data, "fuzz", &cfg);
});
