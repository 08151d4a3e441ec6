//! `fedclip._fedclip`: the Python face of the fedclip engine. It only converts data
//! (paths and prompts in, numpy arrays out) and calls the core crate's seams: the encoder
//! ([`fedclip::encode::Encoder`]), the feature cache ([`fedclip::features::FeatureCache`])
//! and the federated run ([`fedclip::federated::run`]). The engine works with the GIL
//! released.

mod errors;
mod federation;
mod report;
mod sweep;

use errors::{Kind, images_to_py, to_py};
use fedclip::bundled;
use fedclip::device::Device;
use fedclip::encode::{Encoder, Engine, ImageEntry};
use fedclip::features::FeatureCache;
use fedclip::federated;
use fedclip::tokenizer::TokenizerKind;
use numpy::{PyArray1, PyArray2, PyArrayMethods};
use pyo3::exceptions::{PyOSError, PyValueError};
use pyo3::prelude::*;
use std::path::PathBuf;

/// `device="auto" | "cpu" | "cuda"`, as `--device`.
pub(crate) fn parse_device(device: &str) -> PyResult<Device> {
    match device {
        "auto" => Ok(Device::Auto),
        "cpu" => Ok(Device::Cpu),
        "cuda" => Ok(Device::Cuda),
        other => Err(PyValueError::new_err(format!(
            "device must be \"auto\", \"cpu\" or \"cuda\", got {other:?}"
        ))),
    }
}

/// A bundled folder as the CLI finds it (`FEDCLIP_BUNDLE`, the current directory, ...), else
/// the one in the checkout this module was built from.
fn bundled_path(found: anyhow::Result<PathBuf>, rel: &str) -> String {
    found
        .unwrap_or_else(|_| {
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("..")
                .join(rel)
        })
        .display()
        .to_string()
}

fn parse_tokenizer(tokenizer: &str) -> PyResult<TokenizerKind> {
    match tokenizer {
        "openai" => Ok(TokenizerKind::Openai),
        "hf" => Ok(TokenizerKind::Hf),
        other => Err(PyValueError::new_err(format!(
            "tokenizer must be \"openai\" or \"hf\", got {other:?}"
        ))),
    }
}

fn check_batch(batch: usize) -> PyResult<()> {
    if batch == 0 {
        return Err(PyValueError::new_err("batch must be at least 1"));
    }
    Ok(())
}

/// `[rows, dim]` float32 from a flat row-major buffer.
fn matrix<'py>(py: Python<'py>, flat: Vec<f32>, dim: usize) -> PyResult<Bound<'py, PyArray2<f32>>> {
    let rows = flat.len().checked_div(dim).unwrap_or(0);
    PyArray1::from_vec(py, flat).reshape([rows, dim])
}

/// A CLIP model directory loaded on one engine.
#[pyclass(module = "fedclip._fedclip", frozen)]
struct Model {
    encoder: Encoder,
    tokenizer: TokenizerKind,
}

#[pymethods]
impl Model {
    #[new]
    #[pyo3(signature = (path, device = "auto", tokenizer = "openai"))]
    fn new(py: Python<'_>, path: PathBuf, device: &str, tokenizer: &str) -> PyResult<Model> {
        let device = parse_device(device)?;
        let tokenizer = parse_tokenizer(tokenizer)?;
        let engine = py
            .detach(|| Engine::select(device))
            .map_err(|e| to_py(e, Kind::Engine))?;
        let encoder = py
            .detach(|| Encoder::open(&path, &engine))
            .map_err(|e| to_py(e, Kind::Input))?;
        Ok(Model { encoder, tokenizer })
    }

    /// Projected feature size (`projection_dim`).
    #[getter]
    fn dim(&self) -> usize {
        let c = self.encoder.config();
        c.vision
            .as_ref()
            .map(|v| v.projection_dim)
            .or(c.text.as_ref().map(|t| t.projection_dim))
            .unwrap_or(0)
    }

    /// `logit_scale` as stored (the log of CLIP's temperature), or None.
    #[getter]
    fn logit_scale(&self) -> Option<f32> {
        self.encoder.logit_scale()
    }

    /// The model directory.
    #[getter]
    fn path(&self) -> PathBuf {
        self.encoder.dir().to_path_buf()
    }

    #[pyo3(signature = (paths, batch = 64))]
    fn encode_images<'py>(
        &self,
        py: Python<'py>,
        paths: Vec<PathBuf>,
        batch: usize,
    ) -> PyResult<Bound<'py, PyArray2<f32>>> {
        check_batch(batch)?;
        // As `fedclip embed --images` checks its arguments, with its message.
        if let Some(missing) = paths.iter().find(|p| !p.exists()) {
            return Err(PyOSError::new_err(format!(
                "{}: no such image file or directory",
                missing.display()
            )));
        }
        let entries: Vec<ImageEntry> = paths.iter().map(|p| ImageEntry::from_path(p)).collect();
        let out = py
            .detach(|| self.encoder.encode_images(&entries, batch, false))
            .map_err(|e| images_to_py(e, &paths))?;
        matrix(py, out.embeds, self.image_dim())
    }

    #[pyo3(signature = (prompts, batch = 64, truncate = false))]
    fn encode_texts<'py>(
        &self,
        py: Python<'py>,
        prompts: Vec<String>,
        batch: usize,
        truncate: bool,
    ) -> PyResult<Bound<'py, PyArray2<f32>>> {
        check_batch(batch)?;
        let embeds = py
            .detach(|| {
                self.encoder
                    .encode_texts(&prompts, batch, truncate, self.tokenizer)
            })
            .map_err(|e| to_py(e, Kind::Input))?;
        matrix(py, embeds, self.text_dim())
    }

    fn __repr__(&self) -> String {
        format!(
            "fedclip.Model({:?})",
            self.encoder.dir().display().to_string()
        )
    }
}

impl Model {
    fn image_dim(&self) -> usize {
        let v = self.encoder.config().vision.as_ref();
        v.map_or(0, |v| v.projection_dim)
    }
    fn text_dim(&self) -> usize {
        let t = self.encoder.config().text.as_ref();
        t.map_or(0, |t| t.projection_dim)
    }
}

/// The feature cache `fedclip run` uses: features keyed by the model's files and each
/// image's bytes, computed with the model only when missing.
#[pyclass(module = "fedclip._fedclip", frozen)]
pub(crate) struct FeatureStore {
    pub(crate) cache: FeatureCache,
    model: Py<Model>,
}

#[pymethods]
impl FeatureStore {
    #[new]
    fn new(py: Python<'_>, cache_dir: PathBuf, model: Py<Model>) -> PyResult<FeatureStore> {
        let m = model.get();
        let cache = py
            .detach(|| {
                let pre = m.encoder.preprocess_config()?;
                FeatureCache::open(&cache_dir, &m.encoder, &pre, m.tokenizer)
            })
            .map_err(|e| to_py(e, Kind::Input))?;
        Ok(FeatureStore { cache, model })
    }

    /// `(features [N, D] float32, stats)`; stats counts cache `hits`, `computed` and `hashed`.
    #[pyo3(signature = (paths, batch = 64))]
    fn image_features<'py>(
        &self,
        py: Python<'py>,
        paths: Vec<PathBuf>,
        batch: usize,
    ) -> PyResult<(Bound<'py, PyArray2<f32>>, Stats)> {
        check_batch(batch)?;
        let m = self.model.get();
        let (feats, stats) = py
            .detach(|| {
                self.cache.image_features(&paths, |chunk| {
                    let entries: Vec<ImageEntry> =
                        chunk.iter().map(|p| ImageEntry::from_path(p)).collect();
                    Ok(m.encoder.encode_images(&entries, batch, false)?.embeds)
                })
            })
            .map_err(|e| images_to_py(e, &paths))?;
        Ok((matrix(py, feats, m.image_dim())?, stats.into()))
    }

    /// `(features [M, D] float32, stats)` of prompts.
    #[pyo3(signature = (prompts, batch = 64))]
    fn text_features<'py>(
        &self,
        py: Python<'py>,
        prompts: Vec<String>,
        batch: usize,
    ) -> PyResult<(Bound<'py, PyArray2<f32>>, Stats)> {
        check_batch(batch)?;
        let m = self.model.get();
        let (feats, stats) = py
            .detach(|| {
                self.cache.text_features(&prompts, |chunk| {
                    m.encoder.encode_texts(chunk, batch, false, m.tokenizer)
                })
            })
            .map_err(|e| to_py(e, Kind::Input))?;
        Ok((matrix(py, feats, m.text_dim())?, stats.into()))
    }

    /// Warnings the cache collected (unreadable shards, an unsaved memo).
    fn warnings(&self) -> Vec<String> {
        self.cache.warnings()
    }

    #[getter]
    fn dir(&self) -> PathBuf {
        self.cache.dir().to_path_buf()
    }
}

/// What one cache lookup did.
#[pyclass(module = "fedclip._fedclip", frozen, get_all)]
struct Stats {
    hits: usize,
    computed: usize,
    hashed: usize,
}

impl From<fedclip::features::CacheStats> for Stats {
    fn from(s: fedclip::features::CacheStats) -> Stats {
        Stats {
            hits: s.hits,
            computed: s.computed,
            hashed: s.hashed,
        }
    }
}

#[pymethods]
impl Stats {
    fn __repr__(&self) -> String {
        format!(
            "Stats(hits={}, computed={}, hashed={})",
            self.hits, self.computed, self.hashed
        )
    }
}

/// The domain names of a dataset root, in sorted order (the default held-out domain is the
/// first, as `fedclip run`'s).
#[pyfunction]
fn domains(py: Python<'_>, data: PathBuf) -> PyResult<Vec<String>> {
    let dataset = py
        .detach(|| fedclip::data::Dataset::scan(&data))
        .map_err(|e| to_py(e, Kind::Input))?;
    Ok(dataset.domains.iter().map(|d| d.name.clone()).collect())
}

/// `--server-lr`'s default for `--server-opt <server_opt>`.
#[pyfunction]
fn default_server_lr(server_opt: &str) -> PyResult<f64> {
    let opt: federated::ServerOptName = serde_json::from_value(serde_json::json!(server_opt))
        .map_err(|e| PyValueError::new_err(format!("server_opt: {e}")))?;
    Ok(federated::ServerOptConfig::default_lr(opt))
}

fn optimizer_name(optimizer: &str) -> PyResult<federated::OptimizerName> {
    serde_json::from_value(serde_json::json!(optimizer))
        .map_err(|e| PyValueError::new_err(format!("optimizer: {e}")))
}

/// `(lr, weight_decay, momentum)` a run of `--optimizer <optimizer>` stores when `lr`,
/// `weight_decay`, `momentum` are `None` (not given), as the CLI resolves them; `momentum`
/// given with Adam / AdamW is refused, as by the CLI.
#[pyfunction]
#[pyo3(signature = (optimizer, lr = None, weight_decay = None, momentum = None))]
fn optimizer_settings(
    optimizer: &str,
    lr: Option<f64>,
    weight_decay: Option<f64>,
    momentum: Option<f64>,
) -> PyResult<(f64, f64, f64)> {
    let opt = optimizer_name(optimizer)?;
    let momentum = opt
        .momentum(momentum)
        .map_err(|e| PyValueError::new_err(e.to_string()))?;
    Ok((
        lr.unwrap_or(opt.default_lr()),
        weight_decay.unwrap_or(opt.default_weight_decay()),
        momentum,
    ))
}

/// The trainer slots `fedclip run` samples for `round` (0-based) out of `n` training clients.
#[pyfunction]
fn sample_clients(n: usize, fraction: f64, seed: u32, round: u32) -> PyResult<Vec<usize>> {
    fedclip::data::split::check_fraction(fraction)
        .map_err(|e| PyValueError::new_err(e.to_string()))?;
    Ok(fedclip::data::split::sample_clients(
        n, fraction, seed, round,
    ))
}

#[pymodule]
fn _fedclip(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Model>()?;
    m.add_class::<FeatureStore>()?;
    m.add_class::<Stats>()?;
    m.add_function(wrap_pyfunction!(domains, m)?)?;
    m.add_function(wrap_pyfunction!(default_server_lr, m)?)?;
    m.add_function(wrap_pyfunction!(optimizer_settings, m)?)?;
    m.add_function(wrap_pyfunction!(sample_clients, m)?)?;
    federation::register(m)?;
    report::register(m)?;
    sweep::register(m)?;
    m.add(
        "BUNDLED_MODEL",
        bundled_path(bundled::bundled_model(), bundled::BUNDLED_MODEL),
    )?;
    m.add(
        "BUNDLED_DATA",
        bundled_path(bundled::bundled_data(), bundled::BUNDLED_DATA),
    )?;
    Ok(())
}
