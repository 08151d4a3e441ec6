//! The CUDA engine: the CLIP towers on an NVIDIA GPU (compute capability 8.0+).
//!
//! - Kernels are the `.cu` files in `kernels/`, embedded in the binary and compiled with NVRTC
//!   for the device's architecture on first use, then cached on disk ([`nvrtc`]). No CUDA
//!   toolkit is needed to build; at run time only the driver (libcuda) and libnvrtc.
//! - [`kernels`]: one checked launch wrapper per kernel; [`twins`]: the CPU function each
//!   kernel is tested against (most are `crate::model::ops` itself).
//! - [`profile`]: per-kernel time of a stretch of launches (CUDA events).
//! - [`CudaClip`]: fp16 weights uploaded once, f32 residual stream, fp16 GEMM inputs, a
//!   workspace reused across batches.
//!
//! Nothing here touches the driver before [`availability`] has `dlopen`ed libcuda and libnvrtc
//! itself, so a machine without them gets an error message, never cudarc's panic.

pub mod adapter;
pub mod driver;
mod emu;
pub mod kernels;
mod libcuda;
pub mod nvrtc;
pub mod profile;
pub mod sources;
mod tower;
pub mod twins;

pub use adapter::{CudaAdapters, StepProfile};
pub use driver::{Arg, DevBuf, DeviceInfo, Gpu, HostBuf, View};
pub use tower::{CudaClip, CudaText, CudaVision, TowerOutput, pixels_to_f16};

use libcuda::DRIVER_NAMES;
use std::sync::Arc;

/// Whether the CUDA driver library can be `dlopen`ed.
pub fn driver_present() -> bool {
    DRIVER_NAMES.iter().any(|name| {
        // SAFETY: loading the driver runs only its own initialisers; it is unloaded (dropped)
        // immediately, and cudarc will load it again by the same names.
        unsafe { libloading::Library::new(*name) }.is_ok()
    })
}

/// Why CUDA cannot be used here, if it cannot: no driver library, no device, no NVRTC. The
/// message starts with "no CUDA device" exactly when the driver or a device is missing.
pub fn availability() -> Result<(), String> {
    if !driver_present() {
        return Err("no CUDA device (the driver library libcuda.so.1 is not installed)".into());
    }
    // The library loads, so cudarc will not panic looking for it; catch_unwind still guards
    // against a driver too old to have a symbol cudarc expects.
    let count = std::panic::catch_unwind(|| {
        use cudarc::driver::result;
        result::init().map_err(|e| format!("cuInit failed: {e}"))?;
        result::device::get_count().map_err(|e| format!("cuDeviceGetCount failed: {e}"))
    })
    .unwrap_or_else(|_| Err("the CUDA driver library is unusable".into()));
    match count {
        Ok(n) if n > 0 => driver::driver_version()
            .and_then(|(major, _)| nvrtc::Nvrtc::load_for_driver(major))
            .map(|_| ())
            .map_err(|e| format!("{e:#}")),
        Ok(_) => Err("no CUDA device (the driver reports none)".into()),
        // CUDA_ERROR_NO_DEVICE comes from cuInit on machines with the driver but no GPU.
        Err(e) if e.contains("NO_DEVICE") => Err(format!("no CUDA device ({e})")),
        Err(e) => Err(e),
    }
}

/// The device GPU tests and benches run on: the GPU when there is one; else, when
/// `FEDCLIP_EMULATE=1`, the host emulator (slow; for checking kernels without a GPU); else
/// `None` after printing `skipped: no CUDA device`. A machine that has a GPU but cannot open
/// it (e.g. NVRTC missing) panics: that must not pass as a skip.
pub fn test_gpu() -> Option<Arc<Gpu>> {
    match availability() {
        Ok(()) => Some(Gpu::open().unwrap_or_else(|e| panic!("CUDA device present but: {e:#}"))),
        Err(why) => {
            if std::env::var("FEDCLIP_EMULATE").is_ok_and(|v| v == "1") {
                println!("{why}: running on the host emulator");
                Some(Gpu::emulator().unwrap_or_else(|e| panic!("emulator: {e:#}")))
            } else if why.starts_with("no CUDA device") {
                // Straight to the stream, past the test harness' capture of `println!`, so a
                // plain `cargo test` shows which tests did not run.
                use std::io::Write;
                let _ = writeln!(std::io::stderr(), "skipped: no CUDA device");
                None
            } else {
                panic!("CUDA driver present but unusable: {why}")
            }
        }
    }
}
