//! `fedclip.sweep`, `fedclip.table` and `fedclip.run`'s per-round callback: JSON in, the core
//! crate's sweep job and federated run, JSON or Python objects out.

use crate::errors::{Kind, to_py};
use crate::parse_device;
use fedclip::federated::report::MetricRow;
use fedclip::federated::{self, RunConfig};
use fedclip::sweep::{self, SweepSpec, TestDomains, grid};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyDict;
use std::path::PathBuf;

fn config_from(json: &str) -> PyResult<RunConfig> {
    serde_json::from_str(json).map_err(|e| PyValueError::new_err(format!("run options: {e}")))
}

/// A round's metrics rows as dicts (the columns of `metrics.csv`).
fn rows_to_py<'py>(py: Python<'py>, rows: &[MetricRow]) -> PyResult<Vec<Bound<'py, PyDict>>> {
    rows.iter()
        .map(|r| {
            let d = PyDict::new(py);
            d.set_item("client", &r.client)?;
            d.set_item("split", r.split)?;
            d.set_item("accuracy", r.accuracy)?;
            d.set_item("samples", r.samples)?;
            d.set_item("loss", r.loss)?;
            Ok(d)
        })
        .collect()
}

/// Runs `fedclip run` from a RunConfig as JSON, calling `on_round(round, rows)` after each
/// round (its metrics and checkpoint written); returns summary.json's text. An exception in
/// the callback stops the run there (it resumes from that round) and is raised as it was.
#[pyfunction]
#[pyo3(signature = (config_json, resume = false, device = "auto", on_round = None))]
pub fn run_json(
    py: Python<'_>,
    config_json: &str,
    resume: bool,
    device: &str,
    on_round: Option<Py<PyAny>>,
) -> PyResult<String> {
    let device = parse_device(device)?;
    let cfg = config_from(config_json)?;
    let mut raised: Option<PyErr> = None;
    let outcome = py.detach(|| {
        let mut tell = |round: u32, rows: &[MetricRow]| -> anyhow::Result<()> {
            let Some(callback) = &on_round else {
                return Ok(());
            };
            Python::attach(|py| {
                let called = rows_to_py(py, rows).and_then(|r| callback.call1(py, (round, r)));
                called.map(drop).map_err(|e| {
                    let text = e.to_string();
                    raised = Some(e);
                    anyhow::anyhow!("on_round raised {text}")
                })
            })
        };
        federated::run_with(&cfg, resume, device, &mut tell)
    });
    let outcome = match (outcome, raised) {
        (Ok(o), _) => o,
        (Err(_), Some(e)) => return Err(e),
        (Err(e), None) => return Err(to_py(e, Kind::Input)),
    };
    serde_json::to_string_pretty(&outcome.summary).map_err(|e| to_py(e.into(), Kind::Engine))
}

/// Runs a sweep: `template_json` is a RunConfig for every cell (its method, held-out
/// domains, seed and out are the cell's); returns what happened as JSON.
#[pyfunction]
#[pyo3(signature = (template_json, out, methods, test_domains, seeds, shard = None, device = "auto"))]
#[allow(clippy::too_many_arguments)]
pub fn sweep_json(
    py: Python<'_>,
    template_json: &str,
    out: PathBuf,
    methods: &str,
    test_domains: &str,
    seeds: &str,
    shard: Option<&str>,
    device: &str,
) -> PyResult<String> {
    let device = parse_device(device)?;
    let input = |e: anyhow::Error| to_py(e, Kind::Input);
    let spec = SweepSpec {
        dir: out,
        methods: grid::parse_methods(methods).map_err(input)?,
        test_domains: TestDomains::parse(test_domains),
        seeds: grid::parse_seeds(seeds).map_err(input)?,
        shard: match shard {
            Some(s) => grid::Shard::parse(s).map_err(input)?,
            None => grid::Shard::WHOLE,
        },
    };
    let template = config_from(template_json)?;
    let outcome = py
        .detach(|| sweep::run(&spec, &template, device))
        .map_err(input)?;
    serde_json::to_string(&outcome).map_err(|e| to_py(e.into(), Kind::Engine))
}

/// The long-form table rows of sweep or run directories as JSON; with `out`, the table
/// files are written there too.
#[pyfunction]
#[pyo3(signature = (dirs, out = None))]
pub fn table_json(py: Python<'_>, dirs: Vec<PathBuf>, out: Option<PathBuf>) -> PyResult<String> {
    let runs = py
        .detach(|| -> anyhow::Result<_> {
            let runs = sweep::table::collect(&dirs)?;
            if let Some(out) = &out {
                std::fs::create_dir_all(out)?;
                sweep::render::write_all(&runs, out)?;
            }
            Ok(runs)
        })
        .map_err(|e| to_py(e, Kind::Input))?;
    serde_json::to_string(&sweep::render::long_rows(&runs))
        .map_err(|e| to_py(e.into(), Kind::Engine))
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(run_json, m)?)?;
    m.add_function(wrap_pyfunction!(sweep_json, m)?)?;
    m.add_function(wrap_pyfunction!(table_json, m)?)?;
    Ok(())
}
