//! The federated seams from Python, named as in Rust (and so as in Flower): the clients'
//! splits ([`Splits`]), the server side ([`Strategy`]: `configure_train`, `aggregate_train`,
//! `configure_evaluate`, `state`) and the client side ([`Clients`]: the K-client trainer
//! behind `AdapterBackend`, with `local_update` the local epochs `fedclip run` takes). A loop
//! over these in Python reproduces `fedclip run`'s adapters bit for bit.

use crate::errors::{Kind, to_py};
use crate::report::{score_splits, split_data};
use crate::{FeatureStore, matrix, parse_device};
use anyhow::Context;
use fedclip::adapter::{AdapterBackend, AdapterParams, OptimizerState, TextFeatures};
use fedclip::data::split::{SplitConfig, check_fraction, make_splits};
use fedclip::data::{Dataset, PromptTemplate};
use fedclip::encode::Engine;
use fedclip::federated::RunConfig;
use fedclip::federated::bad_images::find as find_bad;
use fedclip::federated::family::{self, FamilyData, Trainable};
use fedclip::federated::features::{ClientData, SplitData};
use fedclip::federated::finetune::finetune_rows;
use fedclip::federated::strategy::{
    self, ClientUpdates, Deploy, Deployed, Family, RoundPlan, Sizes,
};
use fedclip::federated::train::local_epochs;
use fedclip::heads::Classifier;
use numpy::{PyArray1, PyArray2, PyReadonlyArray1, PyReadonlyArray2, PyUntypedArrayMethods};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyDict;

fn parse_config(config_json: &str) -> PyResult<RunConfig> {
    let cfg: RunConfig = serde_json::from_str(config_json)
        .map_err(|e| PyValueError::new_err(format!("run options: {e}")))?;
    // The Python loop samples clients itself, not by Poisson as the accountant assumes.
    if !cfg.dp.is_off() {
        return Err(PyValueError::new_err(
            "run options: dp: differential privacy is not available in fedclip.Splits, \
             Strategy or Clients yet (their client sampling is not the Poisson sampling the \
             accountant assumes); use `fedclip run --dp client`",
        ));
    }
    Ok(cfg)
}

fn value_err(e: anyhow::Error) -> PyErr {
    to_py(e, Kind::Input)
}

/// One client of a split: its files (paths) and labels per split, in split order.
#[pyclass(module = "fedclip._fedclip", frozen, get_all)]
struct Client {
    name: String,
    domain: String,
    held_out: bool,
    /// Every file assigned to the client, in dataset order (its splits, plus the at most two
    /// files the split's rounding leaves out); what `fedclip run` extracts.
    files: (Vec<String>, Vec<u32>),
    train: (Vec<String>, Vec<u32>),
    val: (Vec<String>, Vec<u32>),
    test: (Vec<String>, Vec<u32>),
}

/// The clients `fedclip run` makes of a dataset for these options (numpy-identical splits).
#[pyclass(module = "fedclip._fedclip")]
pub struct Splits {
    cfg: RunConfig,
    dataset: Dataset,
    splits: fedclip::data::split::Splits,
    prompts: Vec<String>,
    clients: Vec<Py<Client>>,
}

/// Each client's files and labels per split, as Python objects.
fn client_objects(
    py: Python<'_>,
    dataset: &Dataset,
    splits: &fedclip::data::split::Splits,
) -> PyResult<Vec<Py<Client>>> {
    (splits.clients.iter())
        .map(|c| {
            let domain = &dataset.domains[c.domain];
            let files = |idx: &[usize]| {
                let paths = idx
                    .iter()
                    .map(|&i| domain.samples[i].path.display().to_string());
                let labels = idx.iter().map(|&i| domain.samples[i].label as u32);
                (paths.collect(), labels.collect())
            };
            let client = Client {
                name: c.name.clone(),
                domain: domain.name.clone(),
                held_out: c.held_out,
                files: files(&c.files),
                train: files(&c.train),
                val: files(&c.val),
                test: files(&c.test),
            };
            Py::new(py, client)
        })
        .collect()
}

/// Each domain's position among the federation's (empty: the dataset is the federation's).
fn partition_keys(dataset: &Dataset, federation: Option<&[String]>) -> anyhow::Result<Vec<u32>> {
    let Some(all) = federation else {
        return Ok(Vec::new());
    };
    (dataset.domains.iter())
        .map(|d| {
            let at = all.iter().position(|n| *n == d.name);
            at.map(|i| i as u32).with_context(|| {
                format!("domain `{}` is not one of the federation's {all:?}", d.name)
            })
        })
        .collect()
}

#[pymethods]
impl Splits {
    /// `federation_domains`: every domain of the federation in `fedclip run`'s (sorted)
    /// order, when this dataset holds only some of them (a Flower silo), so that its
    /// `clients_per_domain` partition is the one `fedclip run` makes of the whole dataset.
    #[new]
    #[pyo3(signature = (config_json, federation_domains = None))]
    fn new(
        py: Python<'_>,
        config_json: &str,
        federation_domains: Option<Vec<String>>,
    ) -> PyResult<Splits> {
        let cfg = parse_config(config_json)?;
        let (dataset, splits) = py
            .detach(|| -> anyhow::Result<_> {
                let dataset = Dataset::scan(&cfg.data)?;
                let split_cfg = SplitConfig {
                    seed: cfg.seed,
                    test_domains: cfg.test_domains.clone(),
                    clients_per_domain: cfg.clients_per_domain,
                    dirichlet_alpha: cfg.dirichlet_alpha,
                    partition_keys: partition_keys(&dataset, federation_domains.as_deref())?,
                    ..SplitConfig::default()
                };
                let mut splits = make_splits(&dataset, &split_cfg)?;
                for w in splits.check_training_data(&dataset, cfg.drop_empty_clients)? {
                    eprintln!("warning: {w}");
                }
                Ok((dataset, splits))
            })
            .map_err(value_err)?;
        Ok(Splits {
            prompts: dataset.prompts(&PromptTemplate::new(&cfg.prompt_template)),
            clients: client_objects(py, &dataset, &splits)?,
            cfg,
            dataset,
            splits,
        })
    }

    /// What `fedclip run` does before extracting: decodes every image `store`'s cache lacks
    /// (under `max_image_pixels`). A bad image is a ValueError listing every one, or with
    /// `skip_bad` it is left out of the clients' files and splits, with a warning. Returns
    /// the paths left out, relative to the data root (`summary.json`'s `skipped_images`).
    fn check_images(&mut self, py: Python<'_>, store: &FeatureStore) -> PyResult<Vec<String>> {
        let (cfg, dataset) = (&self.cfg, &self.dataset);
        let bad = py
            .detach(|| {
                let mut pre = store.model.get().encoder.preprocess_config()?;
                pre.max_image_pixels = cfg.max_image_pixels;
                find_bad(dataset, &store.cache, &pre, cfg.skip_bad)
            })
            .map_err(value_err)?;
        bad.check_left(&self.splits).map_err(value_err)?;
        bad.remove_from(&mut self.splits);
        self.clients = client_objects(py, &self.dataset, &self.splits)?;
        Ok(bad.rel_paths)
    }

    /// Every client, in `fedclip run`'s order (domain order, then client order).
    #[getter]
    fn clients(&self, py: Python<'_>) -> Vec<Py<Client>> {
        self.clients.iter().map(|c| c.clone_ref(py)).collect()
    }

    #[getter]
    fn classes(&self) -> Vec<String> {
        self.dataset.classes.clone()
    }

    /// The class prompts (`prompt_template` applied), in class order.
    #[getter]
    fn prompts(&self) -> Vec<String> {
        self.prompts.clone()
    }

    /// Client indices of the training clients; trainer slot `s` is `training_clients()[s]`.
    fn training_clients(&self) -> Vec<usize> {
        self.splits.training_clients()
    }

    /// Trainer slots of the clients sampled for `round` (0-based) at `fraction`.
    fn sample_round(&self, fraction: f64, round: u32) -> PyResult<Vec<usize>> {
        check_fraction(fraction).map_err(value_err)?;
        let trainees = self.splits.training_clients();
        let sampled = self.splits.sample_round(fraction, round);
        Ok((sampled.iter())
            .filter_map(|c| trainees.iter().position(|t| t == c))
            .collect())
    }
}

/// What the sampled clients do this round (`Strategy.configure_train`'s result).
#[pyclass(module = "fedclip._fedclip", name = "RoundPlan", frozen)]
#[derive(Clone)]
pub struct PyRoundPlan {
    plan: RoundPlan,
}

#[pymethods]
impl PyRoundPlan {
    /// A plan made elsewhere (a Flower silo gets its row of the server's plan this way).
    #[new]
    #[pyo3(signature = (slots, start = None, anchor = None, mu = 0.0))]
    fn new(
        slots: Vec<usize>,
        start: Option<PyReadonlyArray1<f32>>,
        anchor: Option<PyReadonlyArray1<f32>>,
        mu: f32,
    ) -> PyResult<PyRoundPlan> {
        let owned = |a: Option<PyReadonlyArray1<f32>>| -> PyResult<Option<Vec<f32>>> {
            a.map(|a| Ok(a.as_slice()?.to_vec())).transpose()
        };
        let plan = RoundPlan {
            slots,
            start: owned(start)?,
            anchor: owned(anchor)?,
            mu,
        };
        Ok(PyRoundPlan { plan })
    }
    /// Trainer slots of the sampled clients.
    #[getter]
    fn slots(&self) -> Vec<usize> {
        self.plan.slots.clone()
    }
    /// Parameters every sampled client starts from, or None (each keeps its own).
    #[getter]
    fn start<'py>(&self, py: Python<'py>) -> Option<Bound<'py, PyArray1<f32>>> {
        self.plan
            .start
            .as_ref()
            .map(|s| PyArray1::from_slice(py, s))
    }
    /// FedProx's anchor of μ/2 ‖θ − anchor‖², or None.
    #[getter]
    fn anchor<'py>(&self, py: Python<'py>) -> Option<Bound<'py, PyArray1<f32>>> {
        self.plan
            .anchor
            .as_ref()
            .map(|s| PyArray1::from_slice(py, s))
    }
    #[getter]
    fn mu(&self) -> f32 {
        self.plan.mu
    }
    fn __repr__(&self) -> String {
        format!(
            "RoundPlan(slots={:?}, start={}, anchor={}, mu={})",
            self.plan.slots,
            if self.plan.start.is_some() {
                "array"
            } else {
                "None"
            },
            if self.plan.anchor.is_some() {
                "array"
            } else {
                "None"
            },
            self.plan.mu
        )
    }
}

/// The server side of `method` (and `server_opt`): the strategy `fedclip run` builds.
#[pyclass(module = "fedclip._fedclip", unsendable)]
pub struct Strategy {
    inner: Box<dyn strategy::Strategy>,
}

#[pymethods]
impl Strategy {
    #[new]
    fn new(config_json: &str) -> PyResult<Strategy> {
        let cfg = parse_config(config_json)?;
        let inner = strategy::build(&cfg).map_err(value_err)?;
        fedclip::federated::finetune::check(cfg.finetune_local_steps, inner.deployed())
            .map_err(value_err)?;
        Ok(Strategy { inner })
    }

    /// The parameters' family: `"attention"`, `"linear-probe"`, `"clip-adapter"` or
    /// `"tip-cache"` (each client starts from a cache of its own data).
    #[getter]
    fn family(&self) -> &'static str {
        match self.inner.family() {
            Family::Attention => "attention",
            Family::LinearProbe => "linear-probe",
            Family::ClipAdapter { .. } => "clip-adapter",
            Family::TipCache { .. } => "tip-cache",
            Family::Prompt => "prompt",
        }
    }

    /// Rounds actually run for `requested` (zero-shot runs one).
    fn rounds(&self, requested: u32) -> u32 {
        self.inner.rounds(requested)
    }

    /// The plan for the sampled trainer slots, or None when nothing is trained.
    fn configure_train(
        &self,
        round: u32,
        sampled: Vec<usize>,
        global_params: PyReadonlyArray1<f32>,
    ) -> PyResult<Option<PyRoundPlan>> {
        let global = global_params.as_slice()?;
        Ok(self
            .inner
            .configure_train(round, sampled, global)
            .map(|plan| PyRoundPlan { plan }))
    }

    /// The new global parameters from every client's `[K, P]` parameters (rows `slots` sent
    /// back this round), or None to keep `global` (`[P]`; Tip-Adapter's union: `[K·P]`).
    fn aggregate_train<'py>(
        &mut self,
        py: Python<'py>,
        round: u32,
        global_params: PyReadonlyArray1<f32>,
        params: PyReadonlyArray2<f32>,
        slots: Vec<usize>,
        train_sizes: Vec<usize>,
    ) -> PyResult<Option<Bound<'py, PyArray1<f32>>>> {
        let global = global_params.as_slice()?;
        let (k, p) = (params.shape()[0], params.shape()[1]);
        // One client's row, or (Tip-Adapter) the union of K rows.
        let global_fits = global.len() == p || global.len() == k * p;
        if p == 0 || !global_fits || train_sizes.len() != k {
            return Err(PyValueError::new_err(format!(
                "params must be [K, P] with the global's {} values (P, or K·P for Tip-Adapter) \
                 and one train size per row, got {:?} and {} sizes",
                global.len(),
                params.shape(),
                train_sizes.len()
            )));
        }
        if let Some(s) = slots.iter().find(|&&s| s >= k) {
            return Err(PyValueError::new_err(format!(
                "slot {s} is not a row of params ({k} rows)"
            )));
        }
        let params = params.as_slice()?;
        let updates = ClientUpdates {
            slots: &slots,
            params,
            param_count: p,
            train_sizes: &train_sizes,
        };
        let next = self
            .inner
            .aggregate_train(round, global, &updates)
            .map_err(value_err)?;
        Ok(next.map(|g| PyArray1::from_vec(py, g)))
    }

    /// What a client deploys: `("zeroshot" | "global" | "mean_of_local", None)` or
    /// `("own", slot)`; `slot` is its trainer slot, None for a held-out client.
    #[pyo3(signature = (slot = None))]
    fn configure_evaluate(&self, slot: Option<usize>) -> (&'static str, Option<usize>) {
        match self.inner.configure_evaluate(slot) {
            Deploy::Zeroshot => ("zeroshot", None),
            Deploy::Global => ("global", None),
            Deploy::Own(s) => ("own", Some(s)),
            Deploy::MeanOfLocal => ("mean_of_local", None),
        }
    }

    /// `"nothing"`, `"global"` or `"each_client"`: what the run's adapter files hold.
    fn deployed(&self) -> &'static str {
        match self.inner.deployed() {
            Deployed::Nothing => "nothing",
            Deployed::Global => "global",
            Deployed::EachClient => "each_client",
        }
    }

    /// Bytes both ways this round for `plan` (f32 parameters).
    fn bytes_communicated(&self, plan: &PyRoundPlan, param_count: usize) -> u64 {
        self.inner.bytes_communicated(&plan.plan, param_count)
    }

    /// `(down, up)`: bytes server → clients and clients → server this round for `plan`
    /// (`param_count` values per client's parameters; Tip-Adapter counts each sampled
    /// client's cache from `dim` and its slot's `train_sizes`).
    #[pyo3(signature = (plan, param_count, dim = 0, train_sizes = Vec::new()))]
    fn bytes(
        &self,
        plan: &PyRoundPlan,
        param_count: usize,
        dim: usize,
        train_sizes: Vec<usize>,
    ) -> (u64, u64) {
        let sizes = Sizes {
            param_count,
            dim,
            train_sizes: &train_sizes,
        };
        let b = self.inner.bytes(&plan.plan, &sizes);
        (b.down, b.up)
    }

    /// Server tensors (e.g. a server optimiser's moments) by name.
    fn state<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        for (name, values) in self.inner.state() {
            d.set_item(name, PyArray1::from_vec(py, values))?;
        }
        Ok(d)
    }

    /// Restores what `state()` returned.
    fn load_state(&mut self, saved: &Bound<'_, PyDict>) -> PyResult<()> {
        let saved = saved
            .iter()
            .map(|(n, a)| {
                let a: PyReadonlyArray1<f32> = a.extract()?;
                Ok((n.extract::<String>()?, a.as_slice()?.to_vec()))
            })
            .collect::<PyResult<Vec<_>>>()?;
        self.inner.load_state(&saved).map_err(value_err)
    }
}

/// The training clients: K rows of the method's family (the attention adapter, a linear
/// probe, CLIP-Adapter or Tip-Adapter's cache) on one engine, stepped together, as `fedclip
/// run` trains them. Slot `k` holds client `k`'s training features `[N_k, D]` and labels.
#[pyclass(module = "fedclip._fedclip", unsendable)]
pub struct Clients {
    backend: Box<dyn AdapterBackend + Send>,
    classifier: Box<dyn Classifier>,
    /// The family's global parameters before round 1.
    global: Vec<f32>,
    /// The strategy's local epochs per round (Tip-Adapter's: none).
    local_epochs: u32,
    cfg: RunConfig,
    data: Vec<ClientData>,
    /// Classes of the text features (labels must be below).
    classes: usize,
}

fn client_data(
    train: &[(PyReadonlyArray2<f32>, PyReadonlyArray1<u32>)],
    dim: usize,
    classes: usize,
) -> PyResult<Vec<ClientData>> {
    (train.iter().enumerate())
        .map(|(k, (f, l))| {
            let split = split_data(&format!("client {k}"), f, l, dim, classes)?;
            Ok(ClientData {
                name: format!("slot {k}"),
                held_out: false,
                train: split,
                val: SplitData::default(),
                test: SplitData::default(),
            })
        })
        .collect()
}

#[pymethods]
impl Clients {
    /// `texts` are the class text features `[C, D]` (raw; normalised here), `logit_scale`
    /// the model's; every client starts from the family's initialisation in `fedclip run`
    /// (Tip-Adapter: its own cache, of `cache_capacity` rows, by default the largest train
    /// split here; a silo holding one client passes the federation's).
    #[new]
    #[pyo3(signature = (config_json, texts, logit_scale, train, device = "auto",
        cache_capacity = None))]
    fn new(
        py: Python<'_>,
        config_json: &str,
        texts: PyReadonlyArray2<f32>,
        logit_scale: f32,
        train: Vec<(PyReadonlyArray2<f32>, PyReadonlyArray1<u32>)>,
        device: &str,
        cache_capacity: Option<usize>,
    ) -> PyResult<Clients> {
        let cfg = parse_config(config_json)?;
        if cfg.augment_views > 0 {
            return Err(PyValueError::new_err(
                "augment_views: fedclip.Clients trains on the features it is given and has no \
                 augmented views of them (only `fedclip run` makes them so far)",
            ));
        }
        let device = parse_device(device)?;
        let strategy = strategy::build(&cfg).map_err(value_err)?;
        let (classes, dim) = (texts.shape()[0], texts.shape()[1]);
        let texts = TextFeatures::new(texts.as_slice()?, classes, dim).map_err(value_err)?;
        let data = client_data(&train, dim, classes)?;
        let inputs = FamilyData {
            dim,
            texts,
            // The Python module has no prompt family yet; the others need no class names.
            class_names: Vec::new(),
            logit_scale,
            train: data.iter().map(|c| &c.train).collect(),
            cache_capacity,
        };
        inputs.cache_rows().map_err(value_err)?;
        let family_kind = strategy.family();
        let trainable = py
            .detach(|| -> anyhow::Result<Trainable> {
                family::build_from(family_kind, &cfg, &inputs, &Engine::select(device)?)
            })
            .map_err(|e| to_py(e, Kind::Engine))?;
        Ok(Clients {
            backend: trainable.backend,
            classifier: trainable.classifier,
            global: trainable.global,
            local_epochs: strategy.local_epochs(cfg.local_epochs),
            cfg,
            data,
            classes,
        })
    }

    #[getter]
    fn num_clients(&self) -> usize {
        self.backend.num_clients()
    }
    #[getter]
    fn dim(&self) -> usize {
        self.backend.dim()
    }
    /// Values in one client's parameters (the attention adapter's `[W1 | b1 | W2 | b2]`:
    /// `2 d² + 2 d`); `tensors` names them.
    #[getter]
    fn param_count(&self) -> usize {
        self.backend.param_count()
    }
    /// One client's parameters as named tensors, `(name, shape)` in row order: the names of
    /// `fedclip run`'s adapter files.
    #[getter]
    fn tensors(&self) -> Vec<(String, Vec<usize>)> {
        (self.classifier.tensors().into_iter())
            .map(|(name, shape, _)| (name, shape))
            .collect()
    }
    /// The `layout` metadata of the adapter files.
    #[getter]
    fn layout(&self) -> String {
        self.classifier.layout()
    }
    /// The global parameters before round 1, as `fedclip run` starts them (Tip-Adapter: the
    /// union of these clients' caches, one row each).
    #[getter]
    fn initial_parameters<'py>(&self, py: Python<'py>) -> Bound<'py, PyArray1<f32>> {
        PyArray1::from_slice(py, &self.global)
    }
    /// Local epochs a round runs (the strategy's: none for Tip-Adapter).
    #[getter]
    fn local_epochs(&self) -> u32 {
        self.local_epochs
    }
    /// Training samples per slot (the `train_sizes` of `Strategy.aggregate_train`).
    #[getter]
    fn train_sizes(&self) -> Vec<usize> {
        self.data.iter().map(|c| c.train.len()).collect()
    }

    /// The local update of round `round` for `plan`'s slots, as `fedclip run` does it: the
    /// start parameters, a fresh optimiser (unless `keep_optimizer_state`), the proximal
    /// term, then `local_epochs` passes in the run's batch order at the round's learning
    /// rate (`lr_schedule`, `warmup_rounds`, `warmup_lr` over the run's `rounds`). Returns each slot's step
    /// losses (empty where it did not step).
    fn local_update(
        &mut self,
        py: Python<'_>,
        round: u32,
        plan: &PyRoundPlan,
    ) -> PyResult<Vec<Vec<f32>>> {
        let (backend, cfg, data) = (&mut self.backend, &self.cfg, &self.data);
        let epochs = self.local_epochs;
        let plan = &plan.plan;
        // All or nothing: a failed update (a diverged client, a bad plan) puts back the
        // parameters and optimiser moments it started from.
        let before = (backend.read_all_params(), backend.optimizer_state());
        let result = py.detach(|| -> anyhow::Result<_> {
            anyhow::ensure!(
                plan.slots.iter().all(|&s| s < data.len()),
                "plan slots {:?} are not all below the {} clients",
                plan.slots,
                data.len()
            );
            if let Some(start) = &plan.start {
                for &s in &plan.slots {
                    backend.set_client_row(s, start)?;
                }
            }
            if !cfg.keep_optimizer_state {
                backend.reset();
            }
            backend.set_proximal_row(plan.mu, plan.anchor.as_deref())?;
            if epochs == 0 {
                return Ok(vec![Vec::new(); data.len()]);
            }
            let trainees: Vec<usize> = (0..data.len()).collect();
            local_epochs(&mut **backend, cfg, round, &plan.slots, data, &trainees)
        });
        if result.is_err()
            && let (Ok(params), moments) = before
        {
            backend.write_all_params(&params).map_err(value_err)?;
            backend.set_optimizer_state(&moments).map_err(value_err)?;
        }
        result.map_err(|e| to_py(e, Kind::Engine))
    }

    /// Personalization as `fedclip run --finetune-local-steps` does it: every slot from
    /// `global_params` with a fresh optimiser, then `steps` (default: the run's
    /// `finetune_local_steps`) local steps on its own training split in the run's batch
    /// order. The results are the slots' parameters (`get_parameters`).
    #[pyo3(signature = (global_params, steps = None))]
    fn finetune(
        &mut self,
        py: Python<'_>,
        global_params: PyReadonlyArray1<f32>,
        steps: Option<u32>,
    ) -> PyResult<()> {
        let global = global_params.as_slice()?;
        let (backend, cfg, data) = (&mut self.backend, &self.cfg, &self.data);
        let steps = steps.unwrap_or(cfg.finetune_local_steps);
        py.detach(|| {
            let train: Vec<&SplitData> = data.iter().map(|c| &c.train).collect();
            finetune_rows(&mut **backend, cfg, global, &train, steps)
        })
        .map_err(|e| to_py(e, Kind::Engine))
    }

    /// The trainer's optimiser state `(m [K·P], v [K·P], steps [K])` (Adam's moments; with
    /// SGD, `m` is the momentum buffer and `v` zero), what
    /// `keep_optimizer_state` carries from round to round.
    fn optimizer_state<'py>(
        &self,
        py: Python<'py>,
    ) -> (
        Bound<'py, PyArray1<f32>>,
        Bound<'py, PyArray1<f32>>,
        Vec<u64>,
    ) {
        let s = self.backend.optimizer_state();
        (
            PyArray1::from_vec(py, s.m),
            PyArray1::from_vec(py, s.v),
            s.steps,
        )
    }

    /// Restores what `optimizer_state()` returned.
    fn set_optimizer_state(
        &mut self,
        m: PyReadonlyArray1<f32>,
        v: PyReadonlyArray1<f32>,
        steps: Vec<u64>,
    ) -> PyResult<()> {
        let state = OptimizerState {
            m: m.as_slice()?.to_vec(),
            v: v.as_slice()?.to_vec(),
            steps,
        };
        self.backend.set_optimizer_state(&state).map_err(value_err)
    }

    /// Every slot's parameters, `[K, P]`.
    fn get_parameters<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyArray2<f32>>> {
        let all = self.backend.read_all_params().map_err(value_err)?;
        matrix(py, all, self.param_count())
    }

    /// Overwrites every slot's parameters from `[K, P]`.
    fn set_parameters(&mut self, params: PyReadonlyArray2<f32>) -> PyResult<()> {
        let (k, p) = (self.num_clients(), self.param_count());
        if params.shape() != [k, p] {
            return Err(PyValueError::new_err(format!(
                "parameters must be [{k}, {p}], got {:?}",
                params.shape()
            )));
        }
        let flat = params.as_slice()?;
        self.backend.write_all_params(flat).map_err(value_err)
    }

    /// Predicted class per row of `features` `[B, D]` with slot `k`'s adapter.
    fn predict<'py>(
        &self,
        py: Python<'py>,
        k: usize,
        features: PyReadonlyArray2<f32>,
    ) -> PyResult<Bound<'py, PyArray1<u32>>> {
        let pred = (self.backend)
            .predict(k, features.as_slice()?)
            .map_err(value_err)?;
        Ok(PyArray1::from_vec(py, pred))
    }

    /// `(split, accuracy, samples)` of each non-empty split `(name, features [N, D], labels
    /// [N])` with `params` (one client's `[P]`; Tip-Adapter also takes a union of rows; None:
    /// zero-shot), as a `metrics.csv` row scores it.
    #[pyo3(signature = (splits, params = None))]
    fn evaluate(
        &self,
        py: Python<'_>,
        splits: Vec<(String, PyReadonlyArray2<f32>, PyReadonlyArray1<u32>)>,
        params: Option<PyReadonlyArray1<f32>>,
    ) -> PyResult<Vec<(String, f64, usize)>> {
        let params = params
            .map(|a| a.as_slice().map(<[f32]>::to_vec))
            .transpose()?;
        if let Some(values) = &params {
            self.classifier.check_params(values).map_err(value_err)?;
        }
        let (dim, classes) = (self.backend.dim(), self.classes);
        score_splits(
            py,
            &*self.classifier,
            (dim, classes),
            &splits,
            params.as_deref(),
        )
    }
}

/// The adapter initialisation `fedclip run` starts every client (and the global) from.
#[pyfunction]
pub fn initial_parameters<'py>(
    py: Python<'py>,
    dim: usize,
    seed: u32,
) -> Bound<'py, PyArray1<f32>> {
    PyArray1::from_slice(py, AdapterParams::<f32>::init(dim, seed as u64).as_slice())
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Client>()?;
    m.add_class::<Splits>()?;
    m.add_class::<PyRoundPlan>()?;
    m.add_class::<Strategy>()?;
    m.add_class::<Clients>()?;
    m.add_function(wrap_pyfunction!(initial_parameters, m)?)?;
    Ok(())
}
