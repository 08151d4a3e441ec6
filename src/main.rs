use anyhow::Result;
use clap::{Args, Parser, Subcommand};
use fedclip::device::Device;
use fedclip::embed::{self, EmbedRequest};
use std::path::PathBuf;
use std::process::ExitCode;

/// Federated adaptation of CLIP: encoders and adapters on CUDA or the CPU.
#[derive(Parser)]
#[command(name = "fedclip", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Encode images and/or prompts with a CLIP model into a safetensors file.
    Embed(EmbedArgs),
}

/// The bundled model: random weights, for trying the tool out offline.
const DEFAULT_MODEL: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/weights/tiny-clip");

#[derive(Args)]
struct EmbedArgs {
    /// Hugging Face CLIP model directory (config.json, model.safetensors, tokenizer.json).
    /// Defaults to the bundled tiny model, whose weights are random.
    #[arg(long, default_value = DEFAULT_MODEL)]
    model: PathBuf,
    /// Image files, or directories walked recursively in sorted order.
    #[arg(long, num_args = 1..)]
    images: Vec<PathBuf>,
    /// Text file with one prompt per line.
    #[arg(long)]
    texts: Option<PathBuf>,
    /// Output safetensors file: `image_embeds` [N, dim] and `text_embeds` [M, dim], f32,
    /// projected and not L2-normalised.
    #[arg(long)]
    out: PathBuf,
    /// Images or prompts per forward pass.
    #[arg(long, default_value_t = 32)]
    batch: usize,
    #[arg(long, value_enum, default_value_t = Device::Auto)]
    device: Device,
    /// Skip images that fail to decode (listed in the output's `skipped` metadata)
    /// instead of stopping.
    #[arg(long)]
    skip_bad: bool,
    /// Cut prompts longer than the context (77 tokens) instead of failing.
    #[arg(long)]
    truncate: bool,
}

fn embed_command(a: EmbedArgs) -> Result<()> {
    if a.model.as_os_str() == DEFAULT_MODEL {
        eprintln!(
            "note: using the bundled tiny model at {DEFAULT_MODEL}; its weights are random, so its features mean nothing"
        );
    }
    let req = EmbedRequest {
        model: a.model,
        images: a.images,
        texts: a.texts,
        out: a.out,
        batch: a.batch,
        device: a.device,
        skip_bad: a.skip_bad,
        truncate: a.truncate,
    };
    let s = embed::run(&req)?;
    eprintln!(
        "wrote {}: {} image embeddings ({:.1} images/s), {} text embeddings{}",
        req.out.display(),
        s.images,
        s.images_per_second,
        s.texts,
        if s.skipped.is_empty() {
            String::new()
        } else {
            format!(", {} images skipped", s.skipped.len())
        }
    );
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Embed(a) => embed_command(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
