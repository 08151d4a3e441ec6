//! Which engine runs the encoders. CUDA libraries are probed with a plain `dlopen` before
//! anything touches them, so a machine without them gets one clear line, never a panic.

use anyhow::{Result, bail};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Device {
    /// The GPU when one is usable, else the CPU (said once on stderr).
    Auto,
    Cpu,
    Cuda,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Cpu,
}

/// Whether the CUDA driver library can be loaded on this machine.
pub fn cuda_driver_present() -> bool {
    ["libcuda.so.1", "libcuda.so"].iter().any(|name| {
        // SAFETY: loading the driver runs no initialisers that affect this process' state
        // beyond the library itself; it is dropped (unloaded) immediately.
        unsafe { libloading::Library::new(*name) }.is_ok()
    })
}

/// Resolves `--device` to an engine.
pub fn select_device(requested: Device) -> Result<Backend> {
    match requested {
        Device::Cpu => Ok(Backend::Cpu),
        Device::Cuda => bail!(
            "--device cuda: the CUDA engine is not part of this build yet; use --device cpu or auto"
        ),
        Device::Auto => {
            if cuda_driver_present() {
                eprintln!(
                    "CUDA driver found, but the CUDA engine is not part of this build yet: using the CPU engine"
                );
            } else {
                eprintln!("no CUDA device: using the CPU engine");
            }
            Ok(Backend::Cpu)
        }
    }
}
