//! A `tokenizer.json`: loaded (then used) or refused, never a panic.
#![no_main]

use fedclip::tokenizer::ClipTokenizer;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("tokenizer.json"), data).unwrap();
    if let Ok(t) = ClipTokenizer::load(dir.path(), 77, fedclip::tokenizer::TokenizerKind::Openai) {
        let _ = t.encode("a picture of a dog", true);
    }
});
