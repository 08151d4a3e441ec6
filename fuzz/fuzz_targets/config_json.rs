//! `config.json` text: parsed into a model config or an error naming the field.
#![no_main]

use fedclip::weights::ClipConfig;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = ClipConfig::parse(text, "config.json".as_ref());
    }
});
