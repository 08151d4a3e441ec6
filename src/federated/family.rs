//! The trainer, the classifier and the round-0 parameters of a strategy's [`Family`]: the
//! attention adapter on the selected engine, or a [`crate::heads`] family on the CPU.
//!
//! The new families train on the CPU engine only: with `--device cuda` the features still
//! come from the GPU encoder, and the rounds run on the CPU with a one-time note.

use super::config::RunConfig;
use super::features::{Features, SplitData};
use super::strategy::Family;
use crate::adapter::{AdapterBackend, AdapterParams, CpuAdapters, TextFeatures};
use crate::cuda::CudaAdapters;
use crate::encode::Engine;
use crate::heads::{
    AttentionClassifier, Classifier, ClipAdapter, Head, HeadClassifier, HeadTrainer, LinearProbe,
    PromptHead, TipCache, tip_cache_row,
};
use anyhow::{Result, ensure};

/// What the rounds train and evaluate.
pub struct Trainable {
    pub backend: Box<dyn AdapterBackend + Send>,
    pub classifier: Box<dyn Classifier>,
    /// The global parameters before round 1.
    pub global: Vec<f32>,
}

/// What a family's trainer is built from: the feature width, the class text features
/// (normalised), CLIP's `logit_scale`, and each training client's train split (trainer slot
/// order).
pub struct FamilyData<'a> {
    pub dim: usize,
    pub texts: TextFeatures<f32>,
    /// The class names in label order (the prompt learner's prompts; may be empty for the
    /// other families).
    pub class_names: Vec<String>,
    pub logit_scale: f32,
    pub train: Vec<&'a SplitData>,
    /// Rows of every Tip-Adapter cache: the largest train split of all training clients
    /// (`None`: of `train`). A silo that holds one client gets the federation's from the
    /// server, so that its cache rows have the run's length.
    pub cache_capacity: Option<usize>,
}

impl FamilyData<'_> {
    /// Tip-Adapter's cache rows: `cache_capacity`, else the largest train split; refuses a
    /// capacity that would not hold a client's split.
    pub fn cache_rows(&self) -> Result<usize> {
        let largest = self.train.iter().map(|t| t.len()).max().unwrap_or(0);
        let capacity = self.cache_capacity.unwrap_or(largest);
        ensure!(
            capacity >= largest,
            "cache capacity {capacity} is below a client's {largest} training samples"
        );
        Ok(capacity)
    }
}

/// The family's trainer with one row per training client (`trainees`), its classifier and
/// the global parameters of round 0.
pub fn build(
    family: Family,
    cfg: &RunConfig,
    features: &Features,
    trainees: &[usize],
    engine: &Engine,
) -> Result<Trainable> {
    let data = FamilyData {
        dim: features.dim,
        texts: features.texts.clone(),
        class_names: features.class_names.clone(),
        logit_scale: features.logit_scale,
        train: trainees
            .iter()
            .map(|&c| &features.clients[c].train)
            .collect(),
        cache_capacity: None,
    };
    build_from(family, cfg, &data, engine)
}

/// Every family scales its logits by exp(logit_scale): a model whose `logit_scale` is not
/// finite, or overflows exp() in f32, is refused here, for every method, before anything is
/// trained or scored (a later NaN loss would read as "training diverged").
pub fn check_logit_scale(logit_scale: f32) -> Result<()> {
    ensure!(
        logit_scale.is_finite() && logit_scale.exp().is_finite(),
        "the model's logit_scale is {logit_scale}, so exp(logit_scale), the scale of every \
         logit, is not finite: the model's weights are damaged (CLIP's is about 4.6)"
    );
    Ok(())
}

/// [`build`] from the training clients' data alone (the Python `Clients`, a Flower silo).
pub fn build_from(
    family: Family,
    cfg: &RunConfig,
    data: &FamilyData<'_>,
    engine: &Engine,
) -> Result<Trainable> {
    check_logit_scale(data.logit_scale)?;
    let (dim, texts) = (data.dim, data.texts.clone());
    let k = data.train.len();
    let config = cfg.train_config(data.logit_scale);
    if family == Family::Attention {
        let init = AdapterParams::<f32>::init(dim, cfg.seed as u64);
        let backend: Box<dyn AdapterBackend + Send> = match engine {
            Engine::Cuda(g) => Box::new(CudaAdapters::new(g, k, &init, texts.clone(), config)?),
            Engine::Cpu => Box::new(CpuAdapters::new(k, &init, texts.clone(), config)?),
        };
        let classifier = Box::new(AttentionClassifier { dim, texts });
        return Ok(Trainable {
            backend,
            classifier,
            global: init.into_vec(),
        });
    }
    if matches!(engine, Engine::Cuda(_)) {
        eprintln!(
            "note: --method {} trains on the CPU engine (its features came from the GPU)",
            cfg.method.name()
        );
    }
    let scale = data.logit_scale;
    let opt = config.optimizer;
    match family {
        Family::Attention => unreachable!("handled above"),
        Family::LinearProbe => {
            let init = LinearProbe::init(&texts, scale);
            let head = LinearProbe::new(dim, texts.classes());
            trainable(head, init.repeat(k), init, texts, opt)
        }
        Family::ClipAdapter { ratio } => {
            let init = ClipAdapter::<f32>::init(dim, cfg.seed as u64);
            let head = ClipAdapter::new(texts.clone(), scale, ratio as f32);
            trainable(head, init.repeat(k), init, texts, opt)
        }
        Family::TipCache {
            alpha,
            beta,
            train_keys,
        } => {
            let capacity = data.cache_rows()?;
            let rows: Vec<f32> = (data.train.iter())
                .flat_map(|t| tip_cache_row(&t.features, &t.labels, dim, texts.classes(), capacity))
                .collect();
            let head = TipCache::new(
                texts.clone(),
                scale,
                alpha as f32,
                beta as f32,
                capacity,
                train_keys,
            );
            // The union of the clients' caches is their rows concatenated.
            trainable(head, rows.clone(), rows, texts, opt)
        }
        Family::Prompt => {
            let (head, init) = PromptHead::from_model(
                &cfg.model,
                cfg.tokenizer,
                &data.class_names,
                &cfg.prompt.spec(),
                scale,
                cfg.seed as u64,
            )?;
            ensure!(
                head.dim() == dim,
                "the text tower projects to {} values but the image features have {dim}",
                head.dim()
            );
            trainable(head, init.repeat(k), init, texts, opt)
        }
    }
}

fn trainable<H: Head<f32> + Clone + 'static>(
    head: H,
    rows: Vec<f32>,
    global: Vec<f32>,
    texts: TextFeatures<f32>,
    optimizer: crate::adapter::OptimizerConfig,
) -> Result<Trainable> {
    // Cross-entropy is defined for one sample, so no batch is skipped (the attention
    // adapter's contrastive loss needs two).
    let backend = Box::new(HeadTrainer::new(head.clone(), rows, optimizer, 1)?);
    let classifier = Box::new(HeadClassifier { head, texts });
    Ok(Trainable {
        backend,
        classifier,
        global,
    })
}
