//! Engine errors as Python exceptions, carrying the message the CLI prints after `error: `
//! (anyhow's `{:#}`: the context chain joined by `: `).
//!
//! The class follows the error's kind: a failing file operation anywhere in the chain (a
//! `std::io::Error`: missing, unreadable, unwritable) is `OSError`; a device or engine that
//! cannot start or fails is `RuntimeError`; everything else the engine rejects (flags,
//! shapes, file contents, a corrupt image) is `ValueError`.
//!
//! The encoder gathers every image it cannot use into one message (the CLI's), which keeps
//! no `std::io::Error`; [`images_to_py`] makes it `OSError` when one of those images is a
//! file that does not exist, as the message (`No such file or directory`) says.

use pyo3::PyErr;
use pyo3::exceptions::{PyOSError, PyRuntimeError, PyValueError};
use std::path::PathBuf;

/// Where an error came from, when its chain holds no I/O error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Checking or reading what the caller gave: `ValueError`.
    Input,
    /// Starting or running the compute engine: `RuntimeError`.
    Engine,
}

pub fn to_py(e: anyhow::Error, kind: Kind) -> PyErr {
    let message = format!("{e:#}");
    if e.chain().any(|c| c.is::<std::io::Error>()) {
        PyOSError::new_err(message)
    } else {
        match kind {
            Kind::Input => PyValueError::new_err(message),
            Kind::Engine => PyRuntimeError::new_err(message),
        }
    }
}

/// An image-encoding error: `OSError` when one of `paths` is missing, else as [`to_py`].
pub fn images_to_py(e: anyhow::Error, paths: &[PathBuf]) -> PyErr {
    if paths.iter().any(|p| std::fs::metadata(p).is_err()) {
        return PyOSError::new_err(format!("{e:#}"));
    }
    to_py(e, Kind::Input)
}
