//! Which instruction set the CPU engine runs: detected once, overridable with `FEDCLIP_ISA`.

use anyhow::{Result, bail};
use std::sync::OnceLock;

/// The kernel families of the CPU engine, narrowest first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Isa {
    /// `model::ops` and the `gemm` crate, exactly as before the packed engine: the twin.
    Reference,
    /// 256-bit FMA kernels (x86-64 with AVX2 and FMA).
    Avx2,
    /// 512-bit FMA kernels (x86-64 with AVX-512F).
    Avx512,
}

/// The environment variable that overrides detection.
pub const ISA_ENV: &str = "FEDCLIP_ISA";

impl Isa {
    pub const ALL: [Isa; 3] = [Isa::Reference, Isa::Avx2, Isa::Avx512];

    pub fn name(self) -> &'static str {
        match self {
            Isa::Reference => "reference",
            Isa::Avx2 => "avx2",
            Isa::Avx512 => "avx512",
        }
    }

    /// The CPU feature this ISA needs and this CPU lacks, if any (the OS state included:
    /// `is_x86_feature_detected!` checks XCR0).
    pub fn missing_feature(self) -> Option<&'static str> {
        #[cfg(target_arch = "x86_64")]
        {
            match self {
                Isa::Reference => None,
                Isa::Avx2 if !std::arch::is_x86_feature_detected!("avx2") => Some("avx2"),
                Isa::Avx2 if !std::arch::is_x86_feature_detected!("fma") => Some("fma"),
                Isa::Avx2 => None,
                Isa::Avx512 if !std::arch::is_x86_feature_detected!("avx512f") => Some("avx512f"),
                Isa::Avx512 => Isa::Avx2.missing_feature(),
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            match self {
                Isa::Reference => None,
                _ => Some("x86_64"),
            }
        }
    }

    pub fn available(self) -> bool {
        self.missing_feature().is_none()
    }

    /// The widest ISA this CPU runs.
    pub fn detect() -> Isa {
        *Isa::ALL
            .iter()
            .rev()
            .find(|i| i.available())
            .unwrap_or(&Isa::Reference)
    }

    /// Parses an override value, refusing names it does not know and ISAs this CPU cannot run.
    pub fn parse_override(value: &str) -> Result<Isa> {
        let Some(isa) = Isa::ALL.into_iter().find(|i| i.name() == value.trim()) else {
            bail!("{ISA_ENV}={value}: not one of reference, avx2, avx512");
        };
        if let Some(feature) = isa.missing_feature() {
            bail!("{ISA_ENV}={value}: this CPU lacks the {feature} instructions that ISA needs");
        }
        Ok(isa)
    }

    /// `FEDCLIP_ISA` when set, otherwise [`Isa::detect`]; read and checked once per process.
    pub fn from_env() -> Result<Isa> {
        static CHOSEN: OnceLock<Result<Isa, String>> = OnceLock::new();
        CHOSEN
            .get_or_init(|| match std::env::var(ISA_ENV) {
                Ok(v) => Isa::parse_override(&v).map_err(|e| e.to_string()),
                Err(_) => Ok(Isa::detect()),
            })
            .clone()
            .map_err(anyhow::Error::msg)
    }
}
