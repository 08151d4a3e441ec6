use anyhow::Result;
use clap::{Args, Parser, Subcommand};
use fedclip::bundled::{BUNDLED_MODEL, bundled_data, bundled_model};
use fedclip::device::Device;
use fedclip::embed::{self, EmbedRequest};
use fedclip::federated::{
    self, Aggregate, LossName, Method, MethodOptions, OptimizerName, RunConfig, ServerOptConfig,
    ServerOptName,
};
use fedclip::preprocess::DEFAULT_MAX_IMAGE_PIXELS;
use fedclip::tokenizer::TokenizerKind;
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
    /// Run a federated experiment (FedCLIP by default) on a domain-generalisation dataset.
    /// With no flags: the PACS protocol on the bundled PACS-mini with the bundled tiny model.
    Run(Box<RunArgs>),
}

#[derive(Args)]
struct RunArgs {
    /// Dataset root laid out as <root>/<domain>/<class>/<image> (PACS, VLCS, Office-Home,
    /// DomainNet or any such folder). Default: the bundled data/pacs-mini, found beside the
    /// executable (or under $FEDCLIP_BUNDLE).
    #[arg(long)]
    data: Option<PathBuf>,
    /// CLIP model: a Hugging Face or open_clip directory, or a .safetensors file with its
    /// config beside it (layout detected). Default: the bundled weights/tiny-clip (random
    /// weights: its accuracies mean nothing); e.g. --model path/to/clip-vit-base-patch32.
    #[arg(long)]
    model: Option<PathBuf>,
    /// Held-out domain(s), tested with the global adapter and never trained on
    /// (leave-one-domain-out). Default: the first domain in sorted order, as the
    /// reference's `--test_envs 0`.
    #[arg(long = "test-domain", num_args = 1..)]
    test_domains: Vec<String>,
    #[arg(long, value_enum, default_value_t = Method::Fedclip)]
    method: Method,
    /// Communication rounds.
    #[arg(long, default_value_t = 200)]
    rounds: u32,
    /// Passes over each client's training split per round.
    #[arg(long, default_value_t = 1)]
    local_epochs: u32,
    /// Local batch size; batches of one sample are skipped, as the reference does.
    #[arg(long, default_value_t = 32)]
    batch: usize,
    /// Adam/AdamW learning rate (the reference's 5e-5).
    #[arg(long, default_value_t = 5e-5)]
    lr: f64,
    /// Weight decay: L2 added to the gradient with Adam (the reference), decoupled with
    /// AdamW. Zero or positive.
    #[arg(long, default_value_t = 0.2)]
    weight_decay: f64,
    #[arg(long, value_enum, default_value_t = OptimizerName::Adam)]
    optimizer: OptimizerName,
    /// Keep optimiser moments across rounds (the reference creates a fresh Adam per round).
    #[arg(long)]
    keep_optimizer_state: bool,
    #[arg(long, value_enum, default_value_t = LossName::Contrastive)]
    loss: LossName,
    /// FedProx proximal weight μ (with --method fedprox).
    #[arg(long, default_value_t = 0.01)]
    mu: f64,
    #[arg(long, value_enum, default_value_t = Aggregate::Uniform)]
    aggregate: Aggregate,
    /// Server optimiser over the aggregate (Reddi et al. 2021), for fedclip and fedprox.
    #[arg(long, value_enum, default_value_t = ServerOptName::Fedavg)]
    server_opt: ServerOptName,
    /// Server learning rate η. Default: 1 (fedavgm), 0.1 (fedadam), 0.01 (fedyogi).
    #[arg(long)]
    server_lr: Option<f64>,
    /// FedAvgM's server momentum.
    #[arg(long, default_value_t = 0.9)]
    server_momentum: f64,
    /// FedAdam / FedYogi β1.
    #[arg(long, default_value_t = 0.9)]
    server_beta1: f64,
    /// FedAdam / FedYogi β2.
    #[arg(long, default_value_t = 0.99)]
    server_beta2: f64,
    /// Personalization: after the rounds, each training client takes N local steps from the
    /// final global adapter; summary.json reports its test accuracy then.
    #[arg(long, default_value_t = 0)]
    finetune_local_steps: u32,
    /// FedAdam / FedYogi τ (adaptivity).
    #[arg(long, default_value_t = 1e-3)]
    server_tau: f64,
    /// CLIP-Adapter's residual ratio α: f = α·A(x) + (1 − α)·x (with --method clip-adapter).
    #[arg(long, default_value_t = 0.2)]
    clip_adapter_ratio: f64,
    /// Tip-Adapter's weight α of the cache logits (with --method tip-adapter, tip-adapter-f).
    #[arg(long, default_value_t = 1.0)]
    tip_alpha: f64,
    /// Tip-Adapter's sharpness β of the affinities exp(−β(1 − x·key)).
    #[arg(long, default_value_t = 5.5)]
    tip_beta: f64,
    /// Seed of the numpy-identical splits, the adapter initialisation and batch orders.
    #[arg(long, default_value_t = 0)]
    seed: u32,
    /// Clients per training domain, with Dirichlet label skew when above 1.
    #[arg(long, default_value_t = 1)]
    clients_per_domain: usize,
    /// Leave out images that cannot be decoded (a warning each, listed in summary.json's
    /// `skipped_images`) instead of stopping with an error that lists them all.
    #[arg(long)]
    skip_bad: bool,
    /// Leave out clients that --clients-per-domain leaves without training files (with a
    /// warning) instead of refusing the partition.
    #[arg(long)]
    drop_empty_clients: bool,
    /// Dirichlet concentration α of the label skew (smaller is more skewed).
    #[arg(long, default_value_t = 0.5)]
    dirichlet_alpha: f64,
    /// Fraction of training clients sampled each round.
    #[arg(long, default_value_t = 1.0)]
    sample_fraction: f64,
    /// Class prompt; `{}` becomes the class name with `_` as spaces, lower-cased.
    #[arg(long, default_value = "a picture of a {}")]
    prompt_template: String,
    /// Prompt tokenization: `openai` cleans text as OpenAI's clip.tokenize does (ftfy, HTML
    /// unescaping, whitespace, lower case), as the reference; `hf` as transformers'
    /// CLIPTokenizerFast (tokenizer.json alone).
    #[arg(long, value_enum, default_value_t = TokenizerKind::Openai)]
    tokenizer: TokenizerKind,
    /// Images per forward pass while extracting features.
    #[arg(long, default_value_t = 64)]
    extract_batch: usize,
    /// Where frozen CLIP features are cached across runs.
    #[arg(long, default_value = "runs/feature-cache")]
    cache_dir: PathBuf,
    /// Run directory. Default: runs/<method>[+<server opt>]-<dataset>-<held-out domains>-seed<seed>.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Continue an interrupted run in --out from its last finished round.
    #[arg(long)]
    resume: bool,
    #[arg(long, value_enum, default_value_t = Device::Auto)]
    device: Device,
    /// Pixel limit against decompression bombs, read from each image's header before
    /// decoding: a warning above it, an error above twice it (Pillow's MAX_IMAGE_PIXELS).
    #[arg(long, default_value_t = DEFAULT_MAX_IMAGE_PIXELS, value_parser = clap::value_parser!(u64).range(1..))]
    max_image_pixels: u64,
}

#[derive(Args)]
struct EmbedArgs {
    /// CLIP model: a Hugging Face directory (config.json, model.safetensors, tokenizer.json),
    /// an open_clip one (open_clip_config.json, open_clip_model.safetensors), or a
    /// .safetensors file with its config beside it.
    /// Default: the bundled weights/tiny-clip, whose weights are random.
    #[arg(long)]
    model: Option<PathBuf>,
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
    /// Pixel limit against decompression bombs, read from each image's header before
    /// decoding: a warning above it, an error above twice it (Pillow's MAX_IMAGE_PIXELS).
    #[arg(long, default_value_t = DEFAULT_MAX_IMAGE_PIXELS, value_parser = clap::value_parser!(u64).range(1..))]
    max_image_pixels: u64,
    /// Prompt tokenization: `openai` cleans text as OpenAI's clip.tokenize does (ftfy, HTML
    /// unescaping, whitespace, lower case), as the reference; `hf` as transformers'
    /// CLIPTokenizerFast (tokenizer.json alone).
    #[arg(long, value_enum, default_value_t = TokenizerKind::Openai)]
    tokenizer: TokenizerKind,
}

fn embed_command(a: EmbedArgs) -> Result<()> {
    let model = match a.model {
        Some(m) => m,
        None => {
            let m = bundled_model()?;
            eprintln!(
                "note: using the bundled tiny model {BUNDLED_MODEL}; its weights are random, so its features mean nothing"
            );
            m
        }
    };
    let req = EmbedRequest {
        model,
        images: a.images,
        texts: a.texts,
        out: a.out,
        batch: a.batch,
        device: a.device,
        skip_bad: a.skip_bad,
        truncate: a.truncate,
        max_image_pixels: a.max_image_pixels,
        tokenizer: a.tokenizer,
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

fn run_command(a: RunArgs) -> Result<()> {
    let (resume, device) = (a.resume, a.device);
    let cfg = run_config(a)?;
    let outcome = federated::run(&cfg, resume, device)?;
    print_outcome(&outcome);
    Ok(())
}

/// The run's configuration from its flags: the embedded data and model where none is
/// given, the first domain held out by default, and the run directory's default name.
fn run_config(mut a: RunArgs) -> Result<RunConfig> {
    let data = match a.data.take() {
        Some(d) => d,
        None => bundled_data()?,
    };
    let model = match a.model.take() {
        Some(m) => m,
        None => bundled_model()?,
    };
    if federated::is_bundled_model(&model) {
        eprintln!(
            "note: the bundled tiny model has RANDOM weights, so accuracies mean nothing; \
             pass --model path/to/clip-vit-base-patch32 for real numbers"
        );
    }
    let test_domains = if a.test_domains.is_empty() {
        // The first domain folder; the run scans the dataset itself (once: at DomainNet's
        // size a scan takes over a second).
        vec![fedclip::data::Dataset::domain_folders(&data)?.swap_remove(0)]
    } else {
        a.test_domains
    };
    let data_name = data
        .file_name()
        .map_or("data".into(), |n| n.to_string_lossy().into_owned());
    // A server optimiser other than plain averaging joins the method's name: fedclip+fedadam.
    let method = match a.server_opt {
        ServerOptName::Fedavg => a.method.name(),
        opt => format!("{}+{}", a.method.name(), format!("{opt:?}").to_lowercase()),
    };
    let out = match a.out {
        Some(out) => out,
        None => default_out(
            &PathBuf::from("runs").join(format!(
                "{method}-{data_name}-{}-seed{}",
                test_domains.join("+"),
                a.seed
            )),
            a.resume,
        )?,
    };
    Ok(RunConfig {
        data,
        model,
        test_domains,
        method: a.method,
        rounds: a.rounds,
        local_epochs: a.local_epochs,
        batch: a.batch,
        lr: a.lr,
        weight_decay: a.weight_decay,
        optimizer: a.optimizer,
        keep_optimizer_state: a.keep_optimizer_state,
        loss: a.loss,
        mu: a.mu,
        aggregate: a.aggregate,
        server_opt: ServerOptConfig {
            opt: a.server_opt,
            lr: a
                .server_lr
                .unwrap_or(ServerOptConfig::default_lr(a.server_opt)),
            momentum: a.server_momentum,
            beta1: a.server_beta1,
            beta2: a.server_beta2,
            tau: a.server_tau,
        },
        finetune_local_steps: a.finetune_local_steps,
        method_options: MethodOptions {
            clip_adapter_ratio: a.clip_adapter_ratio,
            tip_alpha: a.tip_alpha,
            tip_beta: a.tip_beta,
        },
        seed: a.seed,
        clients_per_domain: a.clients_per_domain,
        dirichlet_alpha: a.dirichlet_alpha,
        sample_fraction: a.sample_fraction,
        prompt_template: a.prompt_template,
        tokenizer: a.tokenizer,
        extract_batch: a.extract_batch,
        cache_dir: a.cache_dir,
        out,
        max_image_pixels: a.max_image_pixels,
        drop_empty_clients: a.drop_empty_clients,
        skip_bad: a.skip_bad,
    })
}

/// What a finished run prints: cache use, timings, the best round, held-out accuracies.
fn print_outcome(outcome: &federated::RunOutcome) {
    let s = &outcome.summary;
    if let Some(r) = outcome.resumed_from {
        eprintln!("resumed after round {r}");
    }
    eprintln!(
        "features: {} extracted, {} from cache in {:.1}s; training {:.1}s",
        s.images_extracted, s.images_from_cache, s.seconds_extracting, s.seconds_training
    );
    match (s.best_round, s.best_mean_val_accuracy) {
        (Some(best), Some(val)) => {
            eprintln!("best round {best} (mean val accuracy {:.2}%)", 100.0 * val)
        }
        (Some(best), None) => eprintln!("best round {best} (the last: no validation files)"),
        (None, _) => {}
    }
    for (domain, acc) in &s.held_out_test_accuracy {
        eprintln!("held-out {domain}: test accuracy {:.2}%", 100.0 * acc);
    }
    eprintln!("run directory: {}", outcome.out.display());
}

/// Without `--out`: a new run takes the next free `runs/<name>[-N]`; `--resume` continues
/// the last of them. Says which when it is not the plain name.
fn default_out(base: &std::path::Path, resume: bool) -> Result<PathBuf> {
    let out = if resume {
        federated::rundir::latest(base)?.unwrap_or_else(|| base.to_path_buf())
    } else {
        federated::rundir::next_free(base)?
    };
    if out != base {
        eprintln!(
            "note: {} already holds a run; {} {}",
            base.display(),
            if resume { "resuming" } else { "writing to" },
            out.display()
        );
    }
    Ok(out)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Embed(a) => embed_command(a),
        Command::Run(a) => run_command(*a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
