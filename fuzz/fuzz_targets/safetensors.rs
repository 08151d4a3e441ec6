//! A `model.safetensors` beside the small fixture config: loaded or refused, never a panic.
#![no_main]

use fedclip::model::ClipModel;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let dir = tempfile::tempdir().unwrap();
    let config = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/fixtures/models/tiny-f32/config.json"
    );
    std::fs::copy(config, dir.path().join("config.json")).unwrap();
    std::fs::write(dir.path().join("model.safetensors"), data).unwrap();
    let _ = ClipModel::load(dir.path());
});
