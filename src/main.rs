use anyhow::{Result, bail};
use clap::parser::ValueSource;
use clap::{ArgMatches, Args, CommandFactory, FromArgMatches, Parser, Subcommand};
use fedclip::bundled::{BUNDLED_MODEL, bundled_data, bundled_model};
use fedclip::device::Device;
use fedclip::embed::{self, EmbedRequest};
use fedclip::federated::config::DEFAULT_WARMUP_LR;
use fedclip::federated::{
    self, Aggregate, DpConfig, DpMode, LossName, LrSchedule, Method, MethodOptions, OptimizerName,
    PromptOptions, RunConfig, ServerOptConfig, ServerOptName,
};
use fedclip::preprocess::DEFAULT_MAX_IMAGE_PIXELS;
use fedclip::privacy;
use fedclip::sweep::{self, SweepSpec, TestDomains, grid};
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
    /// The differential-privacy accountant alone, for planning: ε after T steps of the
    /// Poisson-subsampled Gaussian mechanism, or the noise multiplier for a target ε.
    Privacy(PrivacyArgs),
    /// Run every method × held-out domain × seed as run directories inside one sweep
    /// directory (resumable, shardable over machines), then write the table.
    Sweep(Box<SweepArgs>),
    /// The paper's table (table.md, .tex, .csv, .svg) from a sweep directory or run directories.
    Table(TableArgs),
}

#[derive(Args)]
struct PrivacyArgs {
    /// Poisson sampling rate q of each step, in (0, 1]: for client-level DP the fraction of
    /// clients sampled per round, for DP-SGD the batch size over the client's examples.
    #[arg(long, allow_hyphen_values = true)]
    sampling_rate: f64,
    /// Noise multiplier z: the noise standard deviation over the clipping norm.
    #[arg(
        long,
        required_unless_present = "target_epsilon",
        allow_hyphen_values = true
    )]
    noise_multiplier: Option<f64>,
    /// Instead of --noise-multiplier: print the z whose ε is at most this and within 0.01 of it.
    #[arg(long, conflicts_with = "noise_multiplier", allow_hyphen_values = true)]
    target_epsilon: Option<f64>,
    /// Steps (rounds for client-level DP), composed.
    #[arg(long)]
    steps: u64,
    /// δ of (ε, δ)-DP, in (0, 1); conventionally below 1/N for N units (clients or examples).
    #[arg(long, allow_hyphen_values = true)]
    delta: f64,
    /// Print the answer as one JSON object.
    #[arg(long)]
    json: bool,
}

/// Client-level differential privacy (`fedclip run --dp client …`).
#[derive(Args, Clone)]
struct DpArgs {
    /// Differential privacy: `client` clips each sampled client's update to --dp-clip, adds
    /// N(0, (z·C)²) to their sum and divides by the expected number of sampled clients;
    /// clients are then Poisson-sampled with probability --sample-fraction.
    #[arg(long, value_enum, default_value_t = DpMode::Off)]
    dp: DpMode,
    /// Clipping norm C of each client's update (L2, all the family's parameters).
    #[arg(long, allow_hyphen_values = true)]
    dp_clip: Option<f64>,
    /// Noise multiplier z: the noise standard deviation over C.
    #[arg(long, allow_hyphen_values = true, conflicts_with = "dp_target_epsilon")]
    dp_noise: Option<f64>,
    /// Instead of --dp-noise: the z whose ε after --rounds is at most this (within 0.01).
    #[arg(long, allow_hyphen_values = true)]
    dp_target_epsilon: Option<f64>,
    /// δ of the reported (ε, δ); the default 1e-5 is below 1/N for up to 10⁵ clients.
    #[arg(long, allow_hyphen_values = true, default_value_t = fedclip::federated::dp::DEFAULT_DELTA)]
    dp_delta: f64,
    /// Seed of the noise stream, for a reproducible research run; default: from the OS.
    #[arg(long)]
    dp_seed: Option<u64>,
}

impl DpArgs {
    /// The run's DP settings, z chosen for --dp-target-epsilon over `rounds`.
    fn config(&self, rounds: u32, sample_fraction: f64) -> Result<DpConfig> {
        let mut dp = DpConfig {
            mode: self.dp,
            clip: self.dp_clip.unwrap_or(f64::NAN),
            noise: self.dp_noise.unwrap_or(0.0),
            delta: self.dp_delta,
            seed: self.dp_seed,
            target_epsilon: self.dp_target_epsilon,
        };
        if dp.mode == DpMode::Client && self.dp_noise.is_none() && self.dp_target_epsilon.is_none()
        {
            anyhow::bail!("--dp client needs --dp-noise z or --dp-target-epsilon ε");
        }
        dp.resolve_noise(rounds, sample_fraction)?;
        Ok(dp)
    }
}

/// `fedclip sweep`: the grid's axes and `--shard`; every `fedclip run` flag besides is shared
/// by all runs, and `--out` names the sweep directory.
#[derive(Args)]
struct SweepArgs {
    /// Methods, comma-separated (`--method` names), e.g. fedclip,fedprox,zeroshot.
    #[arg(long)]
    methods: String,
    /// Held-out domains: `all` (each domain folder in turn) or a comma-separated list.
    #[arg(
        long = "test-domains",
        id = "sweep_test_domains",
        default_value = "all"
    )]
    sweep_test_domains: String,
    /// Seeds, comma-separated, e.g. 0,1,2.
    #[arg(long, default_value = "0")]
    seeds: String,
    /// Run only share i of n of the grid (0 <= i < n), e.g. in a SLURM array job
    /// `--shard $SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT`. Shards may share the sweep
    /// directory; each run directory's lock keeps two from running the same cell.
    #[arg(long)]
    shard: Option<String>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Args)]
struct TableArgs {
    /// Sweep directories and/or run directories.
    #[arg(required = true)]
    dirs: Vec<PathBuf>,
    /// Folder for the table files. Default: the sweep directory, when one alone is given.
    #[arg(long)]
    out: Option<PathBuf>,
}

#[derive(Args, Clone)]
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
    /// Learning rate (of the rounds after any warm-up). Default: the reference's 5e-5 with
    /// Adam / AdamW, CoOp's 0.002 with SGD.
    #[arg(long)]
    lr: Option<f64>,
    /// Weight decay: L2 added to the gradient with Adam (the reference) and SGD, decoupled
    /// with AdamW. Zero or positive. Default: 0.2 with Adam / AdamW, CoOp's 5e-4 with SGD.
    #[arg(long)]
    weight_decay: Option<f64>,
    #[arg(long, value_enum, default_value_t = OptimizerName::Adam)]
    optimizer: OptimizerName,
    /// SGD's momentum in [0, 1) (with --optimizer sgd; torch.optim.SGD's, dampening 0, no
    /// Nesterov).
    #[arg(long)]
    momentum: Option<f64>,
    /// Learning rate over the rounds: `cosine` is lr·½(1 + cos(π(r − W)/R)) in round r of R
    /// after W warm-up rounds (CoOp's).
    #[arg(long, value_enum, default_value_t = LrSchedule::Constant)]
    lr_schedule: LrSchedule,
    /// Rounds at --warmup-lr before the schedule starts (CoOp's constant warm-up).
    #[arg(long, default_value_t = 0)]
    warmup_rounds: u32,
    /// The warm-up rounds' learning rate.
    #[arg(long, default_value_t = DEFAULT_WARMUP_LR)]
    warmup_lr: f64,
    /// Keep optimiser state (Adam's moments, SGD's momentum) across rounds (the reference
    /// creates a fresh optimiser per round).
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
    /// Context vectors per class prompt (with --method promptfl, coop). Default: 16, or the
    /// token count of --ctx-init.
    #[arg(long)]
    n_ctx: Option<usize>,
    /// Class-specific contexts: one context per class (CoOp's CSC).
    #[arg(long)]
    csc: bool,
    /// Words whose token embeddings start the context, e.g. "a photo of a" (CoOp's CTX_INIT);
    /// without it the context starts N(0, 0.02²) from --seed.
    #[arg(long)]
    ctx_init: Option<String>,
    /// Where the class name goes in the prompt: end (default), middle or front, as CoOp.
    #[arg(long, value_enum)]
    class_token_position: Option<fedclip::prompt::ClassTokenPosition>,
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
    /// Train on N augmented views of every training image (torchvision's RandomResizedCrop
    /// and a horizontal flip), each encoded once and cached; local epoch e of the run uses
    /// view e mod N. Evaluation keeps the centre crops. Default: centre crops only.
    #[arg(long, value_name = "N")]
    augment_views: Option<u32>,
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
    #[command(flatten)]
    dp: DpArgs,
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
            &PathBuf::from("runs").join(federated::rundir::default_name(
                &method,
                &data_name,
                &test_domains,
                a.seed,
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
        lr: a.lr.unwrap_or(a.optimizer.default_lr()),
        weight_decay: a.weight_decay.unwrap_or(a.optimizer.default_weight_decay()),
        optimizer: a.optimizer,
        momentum: a.optimizer.momentum(a.momentum)?,
        lr_schedule: a.lr_schedule,
        warmup_rounds: a.warmup_rounds,
        warmup_lr: a.warmup_lr,
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
        prompt: PromptOptions {
            n_ctx: a.n_ctx,
            csc: a.csc,
            ctx_init: a.ctx_init,
            class_token_position: a.class_token_position,
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
        augment_views: augment_views(a.augment_views)?,
        dp: a.dp.config(a.rounds, a.sample_fraction)?,
    })
}

/// `--augment-views`: absent is 0 (centre crops only); an explicit 0 is refused.
fn augment_views(flag: Option<u32>) -> Result<u32> {
    match flag {
        Some(0) => bail!(
            "--augment-views must be at least 1, got 0 (leave the flag out to train on the \
             centre crops only)"
        ),
        n => Ok(n.unwrap_or(0)),
    }
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

fn privacy_command(a: PrivacyArgs) -> Result<()> {
    let budget = privacy::Budget {
        sampling_rate: a.sampling_rate,
        steps: a.steps,
        delta: a.delta,
    };
    let ask = match (a.noise_multiplier, a.target_epsilon) {
        (_, Some(target_epsilon)) => privacy::Ask::NoiseMultiplier { target_epsilon },
        (Some(noise_multiplier), None) => privacy::Ask::Epsilon { noise_multiplier },
        (None, None) => unreachable!("clap requires one of the two"),
    };
    let plan = privacy::plan(budget, ask)?;
    if a.json {
        println!("{}", serde_json::to_string(&plan)?);
    } else if let Some(target) = plan.target_epsilon {
        println!(
            "noise multiplier {} (ε = {:.6} ≤ {target} at δ = {:e}, q = {}, {} steps; {})",
            plan.noise_multiplier,
            plan.epsilon,
            plan.delta,
            plan.sampling_rate,
            plan.steps,
            plan.accountant
        );
    } else {
        println!(
            "ε = {} at δ = {:e} (q = {}, z = {}, {} steps; {})",
            plan.epsilon,
            plan.delta,
            plan.sampling_rate,
            plan.noise_multiplier,
            plan.steps,
            plan.accountant
        );
    }
    Ok(())
}

/// The run flags a sweep sets per cell, and the sweep flag to use instead.
const PER_CELL_FLAGS: [(&str, &str, &str); 4] = [
    ("method", "--method", "--methods"),
    ("test_domains", "--test-domain", "--test-domains"),
    ("seed", "--seed", "--seeds"),
    (
        "resume",
        "--resume",
        "nothing: a sweep resumes its unfinished runs by itself",
    ),
];

fn sweep_command(mut a: SweepArgs, given: &ArgMatches) -> Result<()> {
    for (id, flag, instead) in PER_CELL_FLAGS {
        if given.value_source(id) == Some(ValueSource::CommandLine) {
            anyhow::bail!("fedclip sweep: {flag} is set per run by the sweep; use {instead}");
        }
    }
    let Some(dir) = a.run.out.clone() else {
        anyhow::bail!("fedclip sweep needs --out <sweep dir>, the folder that holds its runs");
    };
    let spec = SweepSpec {
        dir: dir.clone(),
        methods: grid::parse_methods(&a.methods)?,
        test_domains: TestDomains::parse(&a.sweep_test_domains),
        seeds: grid::parse_seeds(&a.seeds)?,
        shard: match &a.shard {
            Some(s) => grid::Shard::parse(s)?,
            None => grid::Shard::WHOLE,
        },
    };
    if given.value_source("cache_dir") != Some(ValueSource::CommandLine) {
        // One cache inside the sweep directory, so that the sweep is self-contained.
        a.run.cache_dir = dir.join("feature-cache");
    }
    a.run.method = spec.methods[0];
    a.run.seed = spec.seeds[0];
    let device = a.run.device;
    let template = run_config(a.run)?;
    let outcome = sweep::run(&spec, &template, device)?;
    eprintln!(
        "sweep: {} run now, {} finished before, {} images encoded",
        outcome.ran.len(),
        outcome.already_finished.len(),
        outcome.images_extracted
    );
    if !outcome.busy.is_empty() {
        eprintln!(
            "sweep: {} run(s) were held by other processes and left to them: {}; rerun this \
             command once they end to check that nothing is left",
            outcome.busy.len(),
            outcome.busy.join(", ")
        );
    }
    for f in &outcome.table_files {
        eprintln!("wrote {}", f.display());
    }
    if !outcome.failed.is_empty() {
        let list: Vec<String> = (outcome.failed.iter())
            .map(|(name, e)| format!("{name}: {e}"))
            .collect();
        anyhow::bail!(
            "{} run(s) of the sweep failed (rerun the sweep to retry them):\n  {}",
            list.len(),
            list.join("\n  ")
        );
    }
    Ok(())
}

fn table_command(a: TableArgs) -> Result<()> {
    let files = match (&a.out, &a.dirs[..]) {
        (None, [dir]) if dir.join(sweep::manifest::MANIFEST_FILE).is_file() => {
            sweep::write_table(dir)?
        }
        (None, _) => anyhow::bail!(
            "fedclip table: give --out <folder> for the table files (only a sweep directory \
             given alone gets them inside)"
        ),
        (Some(out), dirs) => {
            let runs = sweep::table::collect(dirs)?;
            std::fs::create_dir_all(out)
                .map_err(|e| anyhow::anyhow!("cannot create --out {}: {e}", out.display()))?;
            sweep::render::write_all(&runs, out)?
        }
    };
    if let Some(md) = files.first() {
        print!("{}", std::fs::read_to_string(md)?);
    }
    for f in &files {
        eprintln!("wrote {}", f.display());
    }
    Ok(())
}

fn main() -> ExitCode {
    let matches = Cli::command().get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    let result = match cli.command {
        Command::Embed(a) => embed_command(a),
        Command::Run(a) => run_command(*a),
        Command::Privacy(a) => privacy_command(a),
        Command::Sweep(a) => {
            let given = matches.subcommand_matches("sweep").unwrap_or(&matches);
            sweep_command(*a, given)
        }
        Command::Table(a) => table_command(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
