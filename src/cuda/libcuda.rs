//! The CUDA driver library: the names it is loaded by, and its errors turned into messages.
//! A leaf below the driver and the profiler, which both call it.

use anyhow::anyhow;
use cudarc::driver::result;

pub(crate) const DRIVER_NAMES: &[&str] = &["libcuda.so.1", "libcuda.so"];

/// `map_err` for a driver call: "CUDA <what> failed: <error name>: <error text>".
pub(super) fn driver_err(what: &str) -> impl FnOnce(result::DriverError) -> anyhow::Error + '_ {
    move |e| {
        let name = e
            .error_name()
            .map(|c| c.to_string_lossy().into_owned())
            .unwrap_or_else(|_| format!("{:?}", e.0));
        let text = e
            .error_string()
            .map(|c| c.to_string_lossy().into_owned())
            .unwrap_or_default();
        anyhow!("CUDA {what} failed: {name}: {text}")
    }
}
