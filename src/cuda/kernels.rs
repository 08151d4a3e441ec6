//! One launch wrapper per kernel in `kernels/`: checks every size and buffer length on the host
//! (so a shape mistake is an error here, not an out-of-bounds access on the GPU), picks the
//! launch geometry, and passes arguments in the kernel's parameter order.
//!
//! Each wrapper names its CPU twin, the function its tests compare it with.

use super::driver::{Arg, Gpu, View};
pub use super::sources::GemmVersion;
use crate::weights::Activation;
use anyhow::{Result, bail, ensure};
use half::f16;

/// Activation codes shared with kernels/common.cuh (FC_ACT_*).
pub fn act_code(act: Option<Activation>) -> i32 {
    match act {
        None => 0,
        Some(Activation::QuickGelu) => 1,
        Some(Activation::Gelu) => 2,
    }
}

fn int(v: usize, what: &str) -> Result<i32> {
    i32::try_from(v).map_err(|_| anyhow::anyhow!("{what} = {v} exceeds the kernels' 32-bit sizes"))
}

/// Elements a row-major `[rows, cols]` matrix with row stride `ld` spans.
fn span(rows: usize, cols: usize, ld: usize) -> usize {
    if rows == 0 { 0 } else { (rows - 1) * ld + cols }
}

fn need<T>(v: View<T>, elems: usize, what: &str) -> Result<()> {
    ensure!(
        v.len() >= elems,
        "{what}: buffer of {} elements, the shape needs {elems}",
        v.len()
    );
    Ok(())
}

fn opt<T>(v: Option<View<T>>) -> Arg {
    v.map_or(Arg::Ptr(0), |v| v.arg())
}

/// Which GEMM kernel (version and tile shape) to launch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GemmTile {
    /// [`GemmVersion::from_env`]'s version, with the tile that fills the GPU (see `auto`).
    Auto,
    /// v1 128×128, 8 warps of 64×32.
    T128,
    /// v1 128×128, 4 warps of 64×64.
    T128W4,
    /// v1 64×64, 4 warps of 32×32.
    T64,
    /// v2 128×128, 8 warps of 64×32, 96 KiB of shared memory.
    V2T128,
    /// v2 128×256, 8 warps of 64×64, 144 KiB of shared memory.
    V2T128x256,
}

/// Launch geometry of one GEMM kernel.
struct GemmLaunch {
    name: &'static str,
    bm: usize,
    bn: usize,
    threads: u32,
    smem: u32,
    /// v2 numbers its blocks itself from a one-dimensional grid.
    linear_grid: bool,
}

impl GemmTile {
    /// Every kernel, for tests and benches (so neither can forget one).
    pub const ALL: [GemmTile; 5] = [
        GemmTile::T128,
        GemmTile::T128W4,
        GemmTile::T64,
        GemmTile::V2T128,
        GemmTile::V2T128x256,
    ];

    pub fn version(self) -> Option<GemmVersion> {
        match self {
            GemmTile::Auto => None,
            GemmTile::T128 | GemmTile::T128W4 | GemmTile::T64 => Some(GemmVersion::V1),
            GemmTile::V2T128 | GemmTile::V2T128x256 => Some(GemmVersion::V2),
        }
    }

    /// Whether `gpu` grants this kernel's shared memory (v2's 128×256 needs 144 KiB: A100,
    /// H100, H200 yes; sm_86 / sm_89 cards no).
    pub fn available(self, gpu: &Gpu) -> bool {
        self.geometry().smem <= gpu.info.max_smem_optin
    }

    fn geometry(self) -> GemmLaunch {
        let (name, bm, bn, threads, smem, linear_grid) = match self {
            GemmTile::T128 => ("fc_gemm_128x128", 128, 128, 256, 40960, false),
            GemmTile::T128W4 => ("fc_gemm_128x128w4", 128, 128, 128, 40960, false),
            GemmTile::V2T128 => ("fc_gemm2_128x128", 128, 128, 256, 3 * 256 * 128, true),
            GemmTile::V2T128x256 => ("fc_gemm2_128x256", 128, 256, 256, 3 * 384 * 128, true),
            GemmTile::T64 | GemmTile::Auto => ("fc_gemm_64x64", 64, 64, 128, 20480, false),
        };
        GemmLaunch {
            name,
            bm,
            bn,
            threads,
            smem,
            linear_grid,
        }
    }

    /// The tile `Auto` takes on `gpu`: see [`GemmTile::auto_for`].
    fn auto(gpu: &Gpu, m: usize, n: usize, version: GemmVersion) -> GemmTile {
        Self::auto_for(gpu.info.sm_count, gpu.info.max_smem_optin, m, n, version)
    }

    /// The tile `Auto` takes on a device of `sms` SMs granting `smem_optin` bytes of shared
    /// memory per block: the largest whose blocks still fill every SM (guesses until a GPU has
    /// measured them), v2 only where the device grants its shared memory, else v1.
    fn auto_for(sms: u32, smem_optin: u32, m: usize, n: usize, version: GemmVersion) -> GemmTile {
        let sms = sms as usize;
        let blocks = |bm: usize, bn: usize| m.div_ceil(bm) * n.div_ceil(bn);
        let granted = |t: GemmTile| t.geometry().smem <= smem_optin;
        if version == GemmVersion::V2 {
            if blocks(128, 256) >= 2 * sms && granted(GemmTile::V2T128x256) {
                return GemmTile::V2T128x256;
            }
            if blocks(128, 128) >= sms && granted(GemmTile::V2T128) {
                return GemmTile::V2T128;
            }
        }
        if blocks(128, 128) >= sms {
            GemmTile::T128
        } else {
            GemmTile::T64
        }
    }
}

/// `out[m, n] = act(Σ_k a[m, k]·w[n, k] + bias[n]) + resid[m, n]`: see kernels/gemm.cu.
/// CPU twin: [`super::twins::gemm_epilogue`].
pub struct Gemm<'a> {
    pub a: View<'a, f16>,
    pub lda: usize,
    pub w: View<'a, f16>,
    pub ldw: usize,
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub bias: Option<View<'a, f32>>,
    pub act: Option<Activation>,
    /// Added after the activation; may be the same memory as `out32`.
    pub resid: Option<View<'a, f32>>,
    pub out32: Option<View<'a, f32>>,
    pub out16: Option<View<'a, f16>>,
}

impl Gemm<'_> {
    pub fn launch(&self, gpu: &Gpu, tile: GemmTile) -> Result<()> {
        let (m, n, k) = (self.m, self.n, self.k);
        ensure!(m > 0 && n > 0 && k > 0, "gemm: empty shape {m}×{n}×{k}");
        ensure!(
            self.lda >= k && self.ldw >= k,
            "gemm: row strides {}/{} below K = {k}",
            self.lda,
            self.ldw
        );
        ensure!(
            self.out32.is_some() || self.out16.is_some(),
            "gemm: no output"
        );
        need(self.a, span(m, k, self.lda), "gemm A")?;
        need(self.w, span(n, k, self.ldw), "gemm W")?;
        if let Some(b) = self.bias {
            need(b, n, "gemm bias")?;
        }
        for (v, what) in [(self.resid, "gemm residual"), (self.out32, "gemm out32")] {
            if let Some(v) = v {
                need(v, m * n, what)?;
            }
        }
        if let Some(v) = self.out16 {
            need(v, m * n, "gemm out16")?;
        }
        let tile = match tile {
            GemmTile::Auto => GemmTile::auto(gpu, m, n, gpu.gemm_version()?),
            t => t,
        };
        let g = tile.geometry();
        let grid = if g.linear_grid {
            let blocks = m.div_ceil(g.bm) * n.div_ceil(g.bn);
            ensure!(
                blocks <= i32::MAX as usize,
                "gemm: {m}×{n} needs more blocks than the grid holds"
            );
            (blocks as u32, 1, 1)
        } else {
            let grid_y = m.div_ceil(g.bm);
            ensure!(grid_y <= 65535, "gemm: M = {m} rows exceeds the grid limit");
            (n.div_ceil(g.bn) as u32, grid_y as u32, 1)
        };
        gpu.allow_dynamic_smem(g.name, g.smem)?;
        gpu.launch(
            g.name,
            grid,
            (g.threads, 1, 1),
            g.smem,
            &[
                self.a.arg(),
                Arg::I32(int(self.lda, "lda")?),
                self.w.arg(),
                Arg::I32(int(self.ldw, "ldw")?),
                opt(self.bias),
                opt(self.resid),
                opt(self.out32),
                opt(self.out16),
                Arg::I32(int(m, "M")?),
                Arg::I32(int(n, "N")?),
                Arg::I32(int(k, "K")?),
                Arg::I32(act_code(self.act)),
            ],
        )
    }
}

/// The fragment-load self-check (tests only, kernels/fragments.cu): `out[p]` = `a·wᵀ` for
/// the 16×16 fp16 matrices `a` and `w` (`bt` = `wᵀ`), computed by one warp with each fragment
/// load path `p` (32-bit loads, ldmatrix.x4, .x4.trans, .x2 and .x2.trans); `out` is `[4, 16, 16]`.
/// CPU twin: [`super::twins::gemm_epilogue`] without bias or activation.
pub fn check_fragments(
    gpu: &Gpu,
    a: View<f16>,
    w: View<f16>,
    bt: View<f16>,
    out: View<f32>,
) -> Result<()> {
    for (v, what) in [(a, "a"), (w, "w"), (bt, "bt")] {
        need(v, 256, what)?;
    }
    need(out, 4 * 256, "out")?;
    gpu.launch(
        "fc_check_fragments",
        (1, 1, 1),
        (32, 1, 1),
        3 * 16 * 24 * 2,
        &[a.arg(), w.arg(), bt.arg(), out.arg()],
    )
}

/// LayerNorm of rows of `x` (f32), gathered through `row_index` when given: see
/// kernels/layernorm.cu. CPU twin: [`crate::model::ops::layer_norm`].
pub struct LayerNorm<'a> {
    pub x: View<'a, f32>,
    pub row_index: Option<View<'a, i32>>,
    /// Rows written (= rows read without `row_index`).
    pub rows: usize,
    pub dim: usize,
    pub gamma: View<'a, f32>,
    pub beta: View<'a, f32>,
    pub eps: f32,
    /// May be `x` itself when `row_index` is `None`.
    pub out32: Option<View<'a, f32>>,
    pub out16: Option<View<'a, f16>>,
}

impl LayerNorm<'_> {
    /// `index_host`: the host copy of `row_index` (required with it), checked against the
    /// rows `x` holds so no gather can read out of bounds.
    pub fn launch(&self, gpu: &Gpu, index_host: Option<&[i32]>) -> Result<()> {
        let (rows, dim) = (self.rows, self.dim);
        ensure!(dim > 0, "layernorm: zero width");
        need(self.gamma, dim, "layernorm gamma")?;
        need(self.beta, dim, "layernorm beta")?;
        match (self.row_index, index_host) {
            (None, _) => need(self.x, rows * dim, "layernorm input")?,
            (Some(ix), Some(host)) => {
                need(ix, rows, "layernorm row index")?;
                ensure!(host.len() == rows, "layernorm: host index length");
                let x_rows = self.x.len() / dim;
                if let Some(&bad) = host.iter().find(|&&r| r < 0 || r as usize >= x_rows) {
                    bail!("layernorm: row index {bad} outside the input's {x_rows} rows");
                }
            }
            (Some(_), None) => bail!("layernorm: pass the row index's host copy for checking"),
        }
        ensure!(
            self.out32.is_some() || self.out16.is_some(),
            "layernorm: no output"
        );
        if let Some(o) = self.out32 {
            need(o, rows * dim, "layernorm out32")?;
        }
        if let Some(o) = self.out16 {
            need(o, rows * dim, "layernorm out16")?;
        }
        gpu.launch(
            "fc_layernorm",
            (rows.div_ceil(8) as u32, 1, 1),
            (256, 1, 1),
            0,
            &[
                self.x.arg(),
                opt(self.row_index),
                Arg::I32(int(rows, "rows")?),
                Arg::I32(int(dim, "dim")?),
                self.gamma.arg(),
                self.beta.arg(),
                Arg::F32(self.eps),
                opt(self.out32),
                opt(self.out16),
            ],
        )
    }
}

/// Which attention kernel to launch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttentionKernel {
    /// The tensor-core kernel (v1) when the shape allows (head dim 64, aligned), else rows.
    /// v1 stays Auto's choice until a GPU has measured v2 (emulator-only so far).
    Auto,
    Rows,
    /// v1, kernels/attention.cu `fc_attention_hd64`.
    Hd64,
    /// v2, kernels/attention2.cu `fc_attention2_hd64`: cp.async double-buffered K/V,
    /// ldmatrix (V through `.trans`); the same shapes as `Hd64`.
    Hd64V2,
}

/// Multi-head attention over `batch` sequences of `seq` tokens: see kernels/attention.cu.
/// CPU twin: [`crate::model::ops::attention`].
pub struct Attention<'a> {
    pub q: View<'a, f16>,
    pub k: View<'a, f16>,
    pub v: View<'a, f16>,
    pub ld_in: usize,
    pub out: View<'a, f16>,
    pub ld_out: usize,
    pub batch: usize,
    pub seq: usize,
    pub heads: usize,
    pub head_dim: usize,
    pub causal: bool,
}

/// Dynamic shared memory of the row kernel: 8 rows of scores and one query row per warp, f32.
pub fn rows_kernel_smem(seq: usize, head_dim: usize) -> usize {
    4 * 8 * (head_dim + seq)
}

/// Largest `seq` the row kernel holds in `smem` bytes of shared memory (the device's opt-in
/// maximum, [`super::DeviceInfo::max_smem_optin`]; over 48 KiB the launch raises the
/// kernel's limit first).
pub fn rows_kernel_max_seq(head_dim: usize, smem: usize) -> usize {
    (smem / 4 / 8).saturating_sub(head_dim)
}

impl Attention<'_> {
    /// Whether the tensor-core kernel can take this call.
    pub fn hd64_ok(&self) -> bool {
        self.head_dim == 64
            && self.ld_in.is_multiple_of(8)
            && self.ld_out.is_multiple_of(8)
            && self.q.aligned16()
            && self.k.aligned16()
            && self.v.aligned16()
            && self.out.aligned16()
    }

    pub fn launch(&self, gpu: &Gpu, which: AttentionKernel) -> Result<()> {
        let (b, s, h, hd) = (self.batch, self.seq, self.heads, self.head_dim);
        ensure!(b > 0 && s > 0 && h > 0 && hd > 0, "attention: empty shape");
        let width = h * hd;
        ensure!(
            self.ld_in >= width && self.ld_out >= width,
            "attention: row strides below heads × head_dim"
        );
        for (v, what) in [(self.q, "q"), (self.k, "k"), (self.v, "v")] {
            need(v, span(b * s, width, self.ld_in), what)?;
        }
        need(self.out, span(b * s, width, self.ld_out), "attention out")?;
        let scale = (hd as f32).powf(-0.5);
        let tensor_kernel = match which {
            AttentionKernel::Auto if self.hd64_ok() => Some("fc_attention_hd64"),
            AttentionKernel::Auto | AttentionKernel::Rows => None,
            AttentionKernel::Hd64 | AttentionKernel::Hd64V2 => {
                ensure!(self.hd64_ok(), "attention: shape not for the hd64 kernel");
                Some(if which == AttentionKernel::Hd64 {
                    "fc_attention_hd64"
                } else {
                    "fc_attention2_hd64"
                })
            }
        };
        let smem_rows = rows_kernel_smem(s, hd);
        if tensor_kernel.is_none() {
            ensure!(
                smem_rows <= gpu.info.max_smem_optin as usize,
                "attention: {s} tokens × head dim {hd} exceed the row kernel's shared memory ({} bytes on this device)",
                gpu.info.max_smem_optin
            );
            gpu.allow_dynamic_smem("fc_attention_rows", smem_rows as u32)?;
        }
        // Grid rows are (sequence, head) pairs, at most max_grid_y per launch: split by
        // whole sequences, each launch starting at its first sequence's rows.
        let per_launch = (gpu.info.max_grid_y as usize / h).max(1);
        ensure!(
            h <= gpu.info.max_grid_y as usize,
            "attention: {h} heads exceed the grid's {} rows",
            gpu.info.max_grid_y
        );
        let mut b0 = 0;
        while b0 < b {
            let nb = per_launch.min(b - b0);
            let rows_in = b0 * s * self.ld_in;
            let rows_out = b0 * s * self.ld_out;
            let common = [
                self.q.offset(rows_in).arg(),
                self.k.offset(rows_in).arg(),
                self.v.offset(rows_in).arg(),
                Arg::I32(int(self.ld_in, "ld_in")?),
                self.out.offset(rows_out).arg(),
                Arg::I32(int(self.ld_out, "ld_out")?),
                Arg::I32(int(s, "seq")?),
                Arg::I32(int(h, "heads")?),
            ];
            let grid_y = (nb * h) as u32;
            if let Some(name) = tensor_kernel {
                let mut args = common.to_vec();
                args.extend([Arg::I32(self.causal as i32), Arg::F32(scale)]);
                // v1: Q, K and transposed V tiles; v2: Q and two K and V tiles. [64][72] halves each.
                let tiles = if name == "fc_attention_hd64" { 3 } else { 5 };
                gpu.launch(
                    name,
                    (s.div_ceil(64) as u32, grid_y, 1),
                    (128, 1, 1),
                    tiles * 64 * 72 * 2,
                    &args,
                )?;
            } else {
                let mut args = common.to_vec();
                args.extend([
                    Arg::I32(int(hd, "head_dim")?),
                    Arg::I32(self.causal as i32),
                    Arg::F32(scale),
                ]);
                gpu.launch(
                    "fc_attention_rows",
                    (s.div_ceil(8) as u32, grid_y, 1),
                    (256, 1, 1),
                    smem_rows as u32,
                    &args,
                )?;
            }
            b0 += nb;
        }
        Ok(())
    }
}

/// Blocks for a grid-stride elementwise kernel over `total` elements.
fn stride_grid(total: usize) -> u32 {
    total.div_ceil(256).clamp(1, 1 << 20) as u32
}

/// A pixel type im2col reads: f32 (rounded to fp16 on the device) or fp16 (rounded on the
/// host, half the upload); both give the same patch rows bit for bit.
pub trait ImagePixel: bytemuck::Pod {
    /// The kernel in kernels/embed.cu for this type.
    const IM2COL: &'static str;
}

impl ImagePixel for f32 {
    const IM2COL: &'static str = "fc_im2col";
}

impl ImagePixel for f16 {
    const IM2COL: &'static str = "fc_im2col_f16";
}

/// Patch rows `[batch·grid², kp]` fp16 from pixels `[batch, channels, size, size]`: see
/// kernels/embed.cu. CPU twin: [`super::twins::im2col_padded`], rounded to fp16.
#[allow(clippy::too_many_arguments)]
pub fn im2col<T: ImagePixel>(
    gpu: &Gpu,
    pixels: View<T>,
    out: View<f16>,
    batch: usize,
    channels: usize,
    size: usize,
    patch: usize,
    kp: usize,
) -> Result<()> {
    ensure!(
        patch > 0 && patch <= size,
        "im2col: patch {patch}, size {size}"
    );
    ensure!(kp >= channels * patch * patch, "im2col: kp below C·P·P");
    let grid = size / patch;
    need(pixels, batch * channels * size * size, "im2col pixels")?;
    let total = batch * grid * grid * kp;
    need(out, total, "im2col out")?;
    gpu.launch(
        T::IM2COL,
        (stride_grid(total), 1, 1),
        (256, 1, 1),
        0,
        &[
            pixels.arg(),
            out.arg(),
            Arg::I32(int(batch, "batch")?),
            Arg::I32(int(channels, "channels")?),
            Arg::I32(int(size, "size")?),
            Arg::I32(int(patch, "patch")?),
            Arg::I32(int(kp, "kp")?),
        ],
    )
}

/// `h[b, t] = (t == 0 ? cls : patches[b, t−1]) + pos[t]`: see kernels/embed.cu.
/// CPU twin: [`super::twins::vision_embed`].
#[allow(clippy::too_many_arguments)]
pub fn vision_embed(
    gpu: &Gpu,
    patches: View<f32>,
    cls: View<f32>,
    pos: View<f32>,
    h: View<f32>,
    batch: usize,
    tokens: usize,
    dim: usize,
) -> Result<()> {
    ensure!(tokens >= 1, "vision_embed: no tokens");
    need(patches, batch * (tokens - 1) * dim, "vision_embed patches")?;
    need(cls, dim, "vision_embed class")?;
    need(pos, tokens * dim, "vision_embed positions")?;
    let total = batch * tokens * dim;
    need(h, total, "vision_embed out")?;
    gpu.launch(
        "fc_vision_embed",
        (stride_grid(total), 1, 1),
        (256, 1, 1),
        0,
        &[
            patches.arg(),
            cls.arg(),
            pos.arg(),
            h.arg(),
            Arg::I32(int(batch, "batch")?),
            Arg::I32(int(tokens, "tokens")?),
            Arg::I32(int(dim, "dim")?),
        ],
    )
}

/// `h[r] = table[ids[r]] + pos[r % seq]`: see kernels/embed.cu. `ids_host` is the same ids,
/// checked against the table here. CPU twin: [`super::twins::text_embed`].
#[allow(clippy::too_many_arguments)]
pub fn text_embed(
    gpu: &Gpu,
    ids: View<i32>,
    ids_host: &[i32],
    table: View<f32>,
    pos: View<f32>,
    h: View<f32>,
    seq: usize,
    dim: usize,
) -> Result<()> {
    let rows = ids_host.len();
    ensure!(
        seq > 0 && rows.is_multiple_of(seq),
        "text_embed: rows not a multiple of seq"
    );
    need(ids, rows, "text_embed ids")?;
    let vocab = table.len() / dim.max(1);
    if let Some(&bad) = ids_host.iter().find(|&&t| t < 0 || t as usize >= vocab) {
        bail!("text_embed: token id {bad} outside the table's {vocab} rows");
    }
    need(pos, seq * dim, "text_embed positions")?;
    need(h, rows * dim, "text_embed out")?;
    gpu.launch(
        "fc_text_embed",
        (stride_grid(rows * dim), 1, 1),
        (256, 1, 1),
        0,
        &[
            ids.arg(),
            table.arg(),
            pos.arg(),
            h.arg(),
            Arg::I32(int(rows, "rows")?),
            Arg::I32(int(seq, "seq")?),
            Arg::I32(int(dim, "dim")?),
        ],
    )
}

/// Rows of `x` scaled to unit L2 norm, in place: see kernels/embed.cu.
/// CPU twin: [`super::twins::l2_normalize`].
pub fn l2_normalize(gpu: &Gpu, x: View<f32>, rows: usize, dim: usize, eps: f32) -> Result<()> {
    need(x, rows * dim, "l2_normalize")?;
    gpu.launch(
        "fc_l2_normalize",
        (rows.div_ceil(8) as u32, 1, 1),
        (256, 1, 1),
        0,
        &[
            x.arg(),
            Arg::I32(int(rows, "rows")?),
            Arg::I32(int(dim, "dim")?),
            Arg::F32(eps),
        ],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gemm_version_is_v1_unless_v2_is_named() {
        assert_eq!(GemmVersion::parse("").unwrap(), GemmVersion::V1);
        assert_eq!(GemmVersion::parse("v1").unwrap(), GemmVersion::V1);
        assert_eq!(GemmVersion::parse("v2").unwrap(), GemmVersion::V2);
        let e = GemmVersion::parse("V2").unwrap_err().to_string();
        assert!(e.contains("FEDCLIP_GEMM=V2: expected v1 or v2"), "{e}");
    }

    #[test]
    fn auto_takes_v2_only_when_asked_and_granted() {
        use GemmTile::*;
        let (h100, big) = (132, 227 * 1024);
        // ViT-B/32 at batch 1024: 51,200 rows.
        let v = GemmVersion::V2;
        assert_eq!(GemmTile::auto_for(h100, big, 51200, 2304, v), V2T128x256);
        assert_eq!(
            GemmTile::auto_for(h100, big, 51200, 2304, GemmVersion::V1),
            T128
        );
        // Too few blocks for 128×256 to fill the SMs twice: 128×128; too few for that: v1 64×64.
        assert_eq!(GemmTile::auto_for(h100, big, 4096, 768, v), V2T128);
        assert_eq!(GemmTile::auto_for(h100, big, 256, 768, v), T64);
        // A device that cannot grant 144 KiB (sm_86/89: 99 KiB) never gets 128×256.
        assert_eq!(GemmTile::auto_for(h100, 99 * 1024, 51200, 2304, v), V2T128);
        assert_eq!(GemmTile::auto_for(h100, 48 * 1024, 51200, 2304, v), T128);
        // One SM (the emulator posing as a small GPU): v2 at a tiny model's sizes.
        assert_eq!(GemmTile::auto_for(1, big, 250, 192, v), V2T128x256);
        assert_eq!(GemmTile::auto_for(1, big, 100, 192, v), V2T128);
    }

    #[test]
    fn every_gemm_tile_has_a_version_and_a_kernel_of_that_version() {
        for t in GemmTile::ALL {
            let name = t.geometry().name;
            match t.version() {
                Some(GemmVersion::V1) => assert!(name.starts_with("fc_gemm_"), "{t:?}"),
                Some(GemmVersion::V2) => assert!(name.starts_with("fc_gemm2_"), "{t:?}"),
                None => panic!("{t:?} has no version"),
            }
        }
    }
}
