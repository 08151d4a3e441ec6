//! Which engine runs the encoders. CUDA libraries are probed with a plain `dlopen` before
//! anything touches them (see [`crate::cuda::availability`]), so a machine without them gets
//! one clear line, never a panic.

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
    Cuda,
}

/// Whether the CUDA driver library can be loaded on this machine.
pub fn cuda_driver_present() -> bool {
    crate::cuda::driver_present()
}

/// Resolves `--device` to an engine: `cuda` fails with the reason when CUDA is unusable;
/// `auto` falls back to the CPU, saying why in one line.
pub fn select_device(requested: Device) -> Result<Backend> {
    match requested {
        Device::Cpu => Ok(Backend::Cpu),
        Device::Cuda => match crate::cuda::availability() {
            Ok(()) => Ok(Backend::Cuda),
            Err(why) => bail!("--device cuda: {why}; use --device cpu or auto"),
        },
        Device::Auto => match crate::cuda::availability() {
            Ok(()) => Ok(Backend::Cuda),
            Err(why) if why.starts_with("no CUDA device") => {
                eprintln!("no CUDA device: using the CPU engine");
                Ok(Backend::Cpu)
            }
            Err(why) => {
                eprintln!("CUDA unavailable ({why}): using the CPU engine");
                Ok(Backend::Cpu)
            }
        },
    }
}
