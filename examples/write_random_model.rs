//! Writes a model folder with random fp16 weights for a Hugging Face CLIP config:
//! `cargo run --release --example write_random_model -- CONFIG.json OUT_DIR [SEED]`.
//! Used by benches/pacs_extract.sh (timing does not depend on the weights).

use anyhow::{Context, Result};

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [config, out, rest @ ..] = args.as_slice() else {
        anyhow::bail!("usage: write_random_model CONFIG.json OUT_DIR [SEED]");
    };
    let seed = rest.first().map_or(Ok(1), |s| s.parse()).context("SEED")?;
    let text = std::fs::read_to_string(config).with_context(|| format!("reading {config}"))?;
    fedclip::weights::write_random_clip(std::path::Path::new(out), &text, seed)
}
