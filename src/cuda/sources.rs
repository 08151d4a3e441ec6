//! The kernel sources: every `.cu` file in `kernels/`, embedded in the binary, with the
//! kernels each defines, and the headers they include. A leaf: NVRTC compiles these, the
//! emulator builds its kernel table from them, the driver loads them, and nothing here looks
//! back up at any of those.

use anyhow::{Result, bail};

/// A kernel source file from `kernels/`, embedded in the binary.
#[derive(Clone, Copy, Debug)]
pub struct KernelSource {
    pub file: &'static str,
    pub source: &'static str,
    /// The `extern "C"` kernels it defines (`tests/kernels_compile.rs` checks this list
    /// against [`kernel_names`] of the source).
    pub kernels: &'static [&'static str],
}

/// Every kernel source the engine loads (one module each). Adding a `.cu` file to `kernels/`
/// means adding it here; `tests/kernels_compile.rs` checks the list against the directory, and
/// the emulator's kernel table is generated from it.
pub const KERNEL_SOURCES: &[KernelSource] = &[
    KernelSource {
        file: "gemm.cu",
        source: include_str!("../../kernels/gemm.cu"),
        kernels: &["fc_gemm_128x128", "fc_gemm_128x128w4", "fc_gemm_64x64"],
    },
    KernelSource {
        file: "gemm2.cu",
        source: include_str!("../../kernels/gemm2.cu"),
        kernels: &["fc_gemm2_128x128", "fc_gemm2_128x256"],
    },
    KernelSource {
        file: "fragments.cu",
        source: include_str!("../../kernels/fragments.cu"),
        kernels: &["fc_check_fragments"],
    },
    KernelSource {
        file: "layernorm.cu",
        source: include_str!("../../kernels/layernorm.cu"),
        kernels: &["fc_layernorm"],
    },
    KernelSource {
        file: "attention.cu",
        source: include_str!("../../kernels/attention.cu"),
        kernels: &["fc_attention_rows", "fc_attention_hd64"],
    },
    KernelSource {
        file: "attention2.cu",
        source: include_str!("../../kernels/attention2.cu"),
        kernels: &["fc_attention2_hd64"],
    },
    KernelSource {
        file: "embed.cu",
        source: include_str!("../../kernels/embed.cu"),
        kernels: &[
            "fc_im2col",
            "fc_im2col_f16",
            "fc_vision_embed",
            "fc_text_embed",
            "fc_l2_normalize",
        ],
    },
    KernelSource {
        file: "adapter.cu",
        source: include_str!("../../kernels/adapter.cu"),
        kernels: &[
            "fc_adapter_forward_m32",
            "fc_adapter_forward_m64",
            "fc_adapter_rows_fwd",
            "fc_adapter_loss",
            "fc_adapter_rows_bwd",
            "fc_adapter_dhidden_m32",
            "fc_adapter_dhidden_m64",
            "fc_adapter_wgrad",
            "fc_adapter_prox",
            "fc_adapter_adam",
            "fc_adapter_fill",
        ],
    },
];

/// Names of the `extern "C" __global__` functions in CUDA source text: after that prefix,
/// skipping the return type and `__launch_bounds__(...)`, the identifier before `(`.
/// Line comments are ignored.
pub fn kernel_names(source: &str) -> Vec<String> {
    let code: String = source
        .lines()
        .map(|l| l.split("//").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n");
    let mut names = Vec::new();
    for part in code.split("extern \"C\"").skip(1) {
        let Some(rest) = part.trim_start().strip_prefix("__global__") else {
            continue;
        };
        let mut rest = rest.trim_start();
        loop {
            let ident: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if ident.is_empty() {
                break;
            }
            rest = rest[ident.len()..].trim_start();
            if ident == "__launch_bounds__" {
                // Skip the parenthesised arguments.
                let close = rest.find(')').map_or(rest.len(), |i| i + 1);
                rest = rest[close..].trim_start();
            } else if rest.starts_with('(') {
                names.push(ident);
                break;
            }
        }
    }
    names
}

/// Headers the sources include, handed to NVRTC by name (no include path is needed).
pub const KERNEL_HEADERS: &[(&str, &str)] =
    &[("common.cuh", include_str!("../../kernels/common.cuh"))];

/// Which GEMM kernel version `GemmTile::Auto` takes: `FEDCLIP_GEMM=v1|v2`, default v1.
///
/// v1 stays the default until a GPU has measured v2 (benches/gpu_encode.rs prints both side
/// by side): v2 has so far run only on the host emulator, never on a GPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GemmVersion {
    /// kernels/gemm.cu: K step 32, two cp.async stages, 32-bit fragment loads.
    V1,
    /// kernels/gemm2.cu: K step 64, three stages, ldmatrix, swizzled shared memory.
    V2,
}

impl GemmVersion {
    /// The version named by `FEDCLIP_GEMM` (unset or empty: v1).
    pub fn from_env() -> Result<GemmVersion> {
        Self::parse(&std::env::var("FEDCLIP_GEMM").unwrap_or_default())
    }

    /// `FEDCLIP_GEMM`'s value: "" or "v1", "v2"; anything else is an error naming it.
    pub fn parse(value: &str) -> Result<GemmVersion> {
        match value {
            "" | "v1" => Ok(GemmVersion::V1),
            "v2" => Ok(GemmVersion::V2),
            other => bail!("FEDCLIP_GEMM={other}: expected v1 or v2"),
        }
    }
}
