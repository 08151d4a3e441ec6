//! A run's evaluation and run directory from Python, for rounds driven elsewhere (the Flower
//! app's server and silos): a client's splits scored as `fedclip run` scores them
//! ([`evaluate_splits`], [`mean_loss`]), the mean of local adapters ([`mean_of_rows`]), and
//! [`RunDir`]: `config.json`, `metrics.csv`, the adapters, `accuracy.svg` and `summary.json`
//! written by the same code as `fedclip run`'s. Only conversions live here.

use crate::errors::{Kind, to_py};
use fedclip::adapter::{AdapterParams, TextFeatures};
use fedclip::federated::RunConfig;
use fedclip::federated::aggregate::mean_of_rows as mean_rows;
use fedclip::federated::checkpoint::State;
use fedclip::federated::evaluate::{accuracy, mean_loss as mean_of_losses};
use fedclip::federated::features::SplitData;
use fedclip::federated::outputs::{
    ADAPTER_FILES, AdapterLayout, RunTotals, write_adapter, write_report,
};
use fedclip::federated::plan::resume_state;
use fedclip::federated::report::{self, MetricRow};
use fedclip::federated::rundir::{self, RunDirLock};
use fedclip::federated::strategy::Bytes;
use fedclip::heads::{AttentionClassifier, Classifier};
use fedclip::io::write_atomic;
use numpy::{PyArray1, PyReadonlyArray1, PyReadonlyArray2, PyUntypedArrayMethods};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyDict;
use std::collections::BTreeMap;
use std::fs::File;
use std::path::PathBuf;

fn parse_config(config_json: &str) -> PyResult<RunConfig> {
    serde_json::from_str(config_json)
        .map_err(|e| PyValueError::new_err(format!("run options: {e}")))
}

/// `(split, accuracy, samples)` of each non-empty split `(name, features [N, D], labels [N])`
/// with the FedCLIP attention adapter `params` `[P]` (None: zero-shot), as a `metrics.csv` row
/// scores it. `texts` are the class text features `[C, D]` (raw; normalised here). Every
/// family: `Clients.evaluate`.
#[pyfunction]
#[pyo3(signature = (texts, splits, params = None))]
pub fn evaluate_splits(
    py: Python<'_>,
    texts: PyReadonlyArray2<f32>,
    splits: Vec<(String, PyReadonlyArray2<f32>, PyReadonlyArray1<u32>)>,
    params: Option<PyReadonlyArray1<f32>>,
) -> PyResult<Vec<(String, f64, usize)>> {
    let (classes, dim) = (texts.shape()[0], texts.shape()[1]);
    let texts = TextFeatures::new(texts.as_slice()?, classes, dim).map_err(value_err)?;
    let params = params
        .map(|p| p.as_slice().map(<[f32]>::to_vec))
        .transpose()?;
    if let Some(p) = &params {
        AdapterParams::from_flat(dim, p.clone()).map_err(value_err)?;
    }
    let classifier = AttentionClassifier { dim, texts };
    score_splits(py, &classifier, (dim, classes), &splits, params.as_deref())
}

/// `features [N, D]` and their labels as a split, refused (naming `who`) unless they fit.
pub(crate) fn split_data(
    who: &str,
    f: &PyReadonlyArray2<f32>,
    l: &PyReadonlyArray1<u32>,
    dim: usize,
    classes: usize,
) -> PyResult<SplitData> {
    let labels = l.as_slice()?;
    if let Some((row, label)) = labels
        .iter()
        .enumerate()
        .find(|&(_, &y)| y as usize >= classes)
    {
        return Err(PyValueError::new_err(format!(
            "{who}: label {label} (row {row}) is not a class: there are {classes} classes, \
             labelled 0 to {}",
            classes.saturating_sub(1)
        )));
    }
    if f.shape()[1] != dim || f.shape()[0] != l.len() {
        return Err(PyValueError::new_err(format!(
            "{who}: features must be [N, {dim}] with N labels, got {:?} and {}",
            f.shape(),
            l.len()
        )));
    }
    Ok(SplitData {
        features: f.as_slice()?.to_vec(),
        labels: labels.to_vec(),
        views: Vec::new(),
    })
}

/// The scores of [`evaluate_splits`] with any family's classifier.
pub(crate) fn score_splits(
    py: Python<'_>,
    classifier: &dyn Classifier,
    (dim, classes): (usize, usize),
    splits: &[(String, PyReadonlyArray2<f32>, PyReadonlyArray1<u32>)],
    params: Option<&[f32]>,
) -> PyResult<Vec<(String, f64, usize)>> {
    let mut data = Vec::new();
    for (name, f, l) in splits {
        data.push((
            name.clone(),
            split_data(&format!("split {name}"), f, l, dim, classes)?,
        ));
    }
    py.detach(|| {
        (data.iter().filter(|(_, s)| !s.is_empty()))
            .map(|(name, s)| Ok((name.clone(), accuracy(classifier, params, s)?, s.len())))
            .collect::<anyhow::Result<Vec<_>>>()
    })
    .map_err(|e| to_py(e, Kind::Engine))
}

/// The `loss` of a train row: the mean of a client's step losses, None if it did not step.
#[pyfunction]
pub fn mean_loss(losses: Vec<f32>) -> Option<f64> {
    mean_of_losses(&losses)
}

/// The mean of the rows of `[K, P]` (what `local` deploys on held-out clients).
#[pyfunction]
pub fn mean_of_rows<'py>(
    py: Python<'py>,
    params: PyReadonlyArray2<f32>,
) -> PyResult<Bound<'py, PyArray1<f32>>> {
    let (k, p) = (params.shape()[0], params.shape()[1]);
    if k == 0 || p == 0 {
        return Err(PyValueError::new_err(format!(
            "mean_of_rows: params is [{k}, {p}]; the mean needs at least one row of at least \
             one value"
        )));
    }
    Ok(PyArray1::from_vec(py, mean_rows(params.as_slice()?, p)))
}

/// `fedclip run`'s next free run directory for `base`: `base` if it holds nothing, else the
/// first of `base-2`, `base-3`, … that does not (with `resume`, the last that does).
#[pyfunction]
#[pyo3(signature = (base, resume = false))]
pub fn free_run_dir(base: PathBuf, resume: bool) -> PyResult<String> {
    let found = if resume {
        rundir::latest(&base).map(|l| l.unwrap_or_else(|| base.clone()))
    } else {
        rundir::next_free(&base)
    };
    found.map(|p| p.display().to_string()).map_err(value_err)
}

fn value_err(e: anyhow::Error) -> PyErr {
    to_py(e, Kind::Input)
}

/// A run directory written as `fedclip run` writes it, for rounds run elsewhere: claimed
/// (locked) and given `config.json` on creation, then `metrics.csv` rows appended per round,
/// the adapters, and at the end `accuracy.svg` and `summary.json`.
#[pyclass(module = "fedclip._fedclip", unsendable)]
pub struct RunDir {
    cfg: RunConfig,
    metrics: File,
    /// With `resume`: the interrupted run's state after its last finished round.
    saved: Option<State>,
    _lock: RunDirLock,
}

#[pymethods]
impl RunDir {
    /// Refuses what `fedclip run` refuses (bad settings, a folder holding something else or
    /// a run, unless `resume`), then writes `config.json` and opens `metrics.csv`. With
    /// `resume`, as `fedclip run --resume`: the settings must equal the interrupted run's
    /// (the round count may grow), `saved` holds its state and `metrics.csv` keeps the rows of
    /// its finished rounds.
    #[new]
    #[pyo3(signature = (config_json, resume = false))]
    fn new(py: Python<'_>, config_json: &str, resume: bool) -> PyResult<RunDir> {
        let cfg = parse_config(config_json)?;
        py.detach(|| -> anyhow::Result<RunDir> {
            cfg.validate()?;
            let lock = rundir::claim(&cfg, resume)?;
            let out = &cfg.out;
            let saved = if resume {
                resume_state(&cfg)?
            } else {
                anyhow::ensure!(
                    !out.join("metrics.csv").exists(),
                    "{} already holds a run; resume it, or choose another out",
                    out.display()
                );
                None
            };
            write_atomic(
                &out.join("config.json"),
                serde_json::to_string_pretty(&cfg)?.as_bytes(),
            )?;
            let done = saved.as_ref().map_or(0, |s| s.rounds_done);
            let metrics = report::open_metrics(&out.join("metrics.csv"), done + 1)?;
            Ok(RunDir {
                cfg,
                metrics,
                saved,
                _lock: lock,
            })
        })
        .map_err(value_err)
    }

    /// The resumed run's state, or None (a new run, or one stopped before round 1 ended):
    /// `rounds_done`, `global`, `clients` `[K·P]`, `best` `(round, mean val accuracy,
    /// deployed parameters)` or None, `seconds_training`, `bytes_per_round` `[(down, up)]`,
    /// `server` (`Strategy.state()`).
    #[getter]
    fn saved<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyDict>>> {
        let Some(s) = &self.saved else {
            return Ok(None);
        };
        let d = PyDict::new(py);
        d.set_item("rounds_done", s.rounds_done)?;
        d.set_item("global", PyArray1::from_slice(py, &s.global))?;
        d.set_item("clients", PyArray1::from_slice(py, &s.clients))?;
        let best = (s.best.as_ref()).map(|(r, v, p)| (*r, *v, PyArray1::from_slice(py, p)));
        d.set_item("best", best)?;
        d.set_item("seconds_training", s.seconds_training)?;
        let per_round: Vec<(u64, u64)> = (s.bytes_per_round.iter().flatten())
            .map(|b| (b.down, b.up))
            .collect();
        d.set_item("bytes_per_round", per_round)?;
        let server = PyDict::new(py);
        for (name, values) in &s.server {
            server.set_item(name, PyArray1::from_slice(py, values))?;
        }
        d.set_item("server", server)?;
        Ok(Some(d))
    }

    /// Writes `state.safetensors` after round `rounds_done` (what `saved` gives back): the
    /// global and every client's parameters, the best round's `(round, mean val accuracy,
    /// deployed parameters)`, the training seconds, each round's `(down, up)` bytes and the
    /// strategy's server tensors.
    #[pyo3(signature = (rounds_done, global_params, clients, best, seconds_training,
        bytes_per_round, server))]
    #[allow(clippy::too_many_arguments)]
    fn save_state(
        &self,
        rounds_done: u32,
        global_params: PyReadonlyArray1<f32>,
        clients: PyReadonlyArray2<f32>,
        best: Option<(u32, f64, PyReadonlyArray1<f32>)>,
        seconds_training: f64,
        bytes_per_round: Vec<(u64, u64)>,
        server: &Bound<'_, PyDict>,
    ) -> PyResult<()> {
        let per_round: Vec<Bytes> = (bytes_per_round.iter())
            .map(|&(down, up)| Bytes { down, up })
            .collect();
        let server = (server.iter())
            .map(|(n, a)| {
                let a: PyReadonlyArray1<f32> = a.extract()?;
                Ok((n.extract::<String>()?, a.as_slice()?.to_vec()))
            })
            .collect::<PyResult<Vec<_>>>()?;
        let best = best
            .map(|(r, v, p)| p.as_slice().map(|p| (r, v, p.to_vec())))
            .transpose()?;
        let state = State {
            rounds_done,
            global: global_params.as_slice()?.to_vec(),
            clients: clients.as_slice()?.to_vec(),
            best,
            seconds_training,
            bytes: Bytes {
                down: per_round.iter().map(|b| b.down).sum(),
                up: per_round.iter().map(|b| b.up).sum(),
            },
            bytes_per_round: Some(per_round),
            optimizer: None,
            server,
        };
        state.save(&self.cfg.out).map_err(value_err)
    }

    #[getter]
    fn out(&self) -> String {
        self.cfg.out.display().to_string()
    }

    /// Appends `(round, client, split, accuracy, samples, loss or None)` rows (`round`
    /// 1-based, as the file says) to `metrics.csv`.
    fn append_rows(
        &mut self,
        rows: Vec<(u32, String, String, f64, usize, Option<f64>)>,
    ) -> PyResult<()> {
        let rows = rows
            .into_iter()
            .map(|(round, client, split, accuracy, samples, loss)| {
                let split = match split.as_str() {
                    "train" => "train",
                    "val" => "val",
                    "test" => "test",
                    other => {
                        return Err(PyValueError::new_err(format!(
                            "split must be train, val or test, got {other:?}"
                        )));
                    }
                };
                Ok(MetricRow {
                    round,
                    client,
                    split,
                    accuracy,
                    samples,
                    loss,
                })
            })
            .collect::<PyResult<Vec<_>>>()?;
        report::append_rows(&mut self.metrics, &rows).map_err(value_err)
    }

    /// Writes `<out>/<file>` (`adapter-last.safetensors`, `adapter-best.safetensors`): the
    /// rows of `params` `[R, P]` under the family's tensor names (`tensors`: one row's
    /// `(name, shape)` in order, as `Clients.tensors` gives them; `layout`: its metadata),
    /// prefixed by `names` when R > 1.
    fn write_adapter(
        &self,
        file: &str,
        params: PyReadonlyArray2<f32>,
        names: Vec<String>,
        tensors: Vec<(String, Vec<usize>)>,
        layout: String,
    ) -> PyResult<()> {
        let layout = AdapterLayout::from_shapes(&tensors, layout);
        let (rows, p) = (params.shape()[0], params.shape()[1]);
        if p != layout.param_count() || names.len() != rows {
            return Err(PyValueError::new_err(format!(
                "params must be [R, {}] (the tensors' values) with one name per row, got {:?} \
                 and {} names",
                layout.param_count(),
                params.shape(),
                names.len()
            )));
        }
        if !ADAPTER_FILES.contains(&file) {
            return Err(PyValueError::new_err(format!(
                "write_adapter: file {file:?} is not one of the run's adapter files ({}); \
                 a run directory holds no other",
                ADAPTER_FILES.join(", ")
            )));
        }
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        let path = self.cfg.out.join(file);
        write_adapter(&path, &layout, params.as_slice()?, &names).map_err(value_err)
    }

    /// Writes `accuracy.svg` and `summary.json` from `metrics.csv` and these totals (see
    /// `fedclip run`'s summary); returns summary.json's text. `clients` are every client's
    /// `(name, held_out)` in client order, `trainees` the client index of each trainer slot,
    /// `best` the best round (1-based) and its mean validation accuracy, `adapter_parameters`
    /// the values of one client's parameters (`Clients.param_count`), `bytes_per_round` each
    /// round's `(down, up)` training traffic (`Strategy.bytes`), `finetuned` each training
    /// client's test accuracy after `finetune_local_steps` (`Clients.finetune`),
    /// `skipped_images` the images `skip_bad` left out (`Splits.check_images`).
    #[pyo3(signature = (clients, trainees, rounds_done, best, adapter_parameters, images_extracted,
        images_from_cache, bytes_per_round, seconds_extracting = 0.0, seconds_training = 0.0,
        finetuned = None, skipped_images = Vec::new()))]
    #[allow(clippy::too_many_arguments)]
    fn finish(
        &self,
        py: Python<'_>,
        clients: Vec<(String, bool)>,
        trainees: Vec<usize>,
        rounds_done: u32,
        best: Option<(u32, f64)>,
        adapter_parameters: usize,
        images_extracted: usize,
        images_from_cache: usize,
        bytes_per_round: Vec<(u64, u64)>,
        seconds_extracting: f64,
        seconds_training: f64,
        finetuned: Option<BTreeMap<String, f64>>,
        skipped_images: Vec<String>,
    ) -> PyResult<String> {
        if let Some(t) = trainees.iter().find(|&&t| t >= clients.len()) {
            return Err(PyValueError::new_err(format!(
                "trainee {t} is not one of the {} clients",
                clients.len()
            )));
        }
        let totals = RunTotals {
            clients,
            trainees,
            rounds_done,
            best,
            adapter_parameters,
            seconds_extracting,
            seconds_training,
            images_extracted,
            images_from_cache,
            bytes: Bytes {
                down: bytes_per_round.iter().map(|b| b.0).sum(),
                up: bytes_per_round.iter().map(|b| b.1).sum(),
            },
            bytes_per_round: Some(
                (bytes_per_round.iter())
                    .map(|&(down, up)| Bytes { down, up })
                    .collect(),
            ),
            skipped_images,
        };
        let cfg = &self.cfg;
        let summary = py
            .detach(|| write_report(cfg, &cfg.data, &totals, finetuned))
            .map_err(value_err)?;
        serde_json::to_string_pretty(&summary).map_err(|e| to_py(e.into(), Kind::Engine))
    }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<RunDir>()?;
    m.add_function(wrap_pyfunction!(evaluate_splits, m)?)?;
    m.add_function(wrap_pyfunction!(mean_loss, m)?)?;
    m.add_function(wrap_pyfunction!(mean_of_rows, m)?)?;
    m.add_function(wrap_pyfunction!(free_run_dir, m)?)?;
    Ok(())
}
