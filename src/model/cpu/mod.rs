//! The CPU engine's kernel table. The model code (`vision`, `text`, `encoder`) calls a
//! [`Kernels`] chosen once per model and never names an instruction set:
//!
//! - `isa`: which kernels this CPU runs, detected once, `FEDCLIP_ISA` overriding;
//! - `pack`: weights converted once at load into the layout a tile kernel reads;
//! - `gemm`: the BLIS loops and the M/N thread split, free of any ISA;
//! - `avx512`, `avx2`: the tile kernels (`std::arch`) and the row kernels of `rows` compiled
//!   for each vector width.
//!
//! The reference table is `model::ops` and the `gemm` crate exactly as before the packed
//! engine, so `FEDCLIP_ISA=reference` reproduces its bits; it stays the twin of both the
//! packed kernels and the CUDA ones.

mod gemm;
mod isa;
mod pack;
mod rows;

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;

pub use gemm::{Act, Epilogue};
pub use isa::{ISA_ENV, Isa};
pub use pack::PackedLinear;

use super::ops;
use anyhow::{Result, bail};
use rayon::prelude::*;
use std::cell::RefCell;

/// The sizes of one attention call over joined `[rows, 3·width]` QKV rows.
#[derive(Clone, Copy, Debug)]
pub struct AttentionShape {
    pub batch: usize,
    pub seq: usize,
    pub heads: usize,
    pub head_dim: usize,
    pub causal: bool,
}

/// `(x, out, gamma, beta, eps)`.
type LayerNormFn = fn(&[f32], &mut [f32], &[f32], &[f32], f32);

/// One ISA's implementations of the encoder's operations.
pub struct Kernels {
    pub isa: Isa,
    /// `out[rows, out_f] (+)= x[rows, in_f] · Wᵀ + b`, then the epilogue's activation.
    linear: fn(&PackedLinear, &[f32], usize, &mut [f32], Epilogue),
    /// LayerNorm of each `gamma.len()`-row of `x` into `out`.
    layer_norm: LayerNormFn,
    /// Attention from `qkv` `[rows, 3·width]` into `ctx` `[rows, width]`.
    attention: fn(&[f32], &mut [f32], AttentionShape),
}

impl Kernels {
    /// The table for `isa`, or an error naming the instruction set this CPU lacks.
    pub fn for_isa(isa: Isa) -> Result<&'static Kernels> {
        if let Some(feature) = isa.missing_feature() {
            bail!(
                "the {} CPU kernels need the {feature} instructions, which this CPU lacks",
                isa.name()
            );
        }
        Ok(match isa {
            Isa::Reference => &REFERENCE,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => &AVX2,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => &AVX512,
            #[cfg(not(target_arch = "x86_64"))]
            _ => unreachable!("checked by missing_feature"),
        })
    }

    /// The table `FEDCLIP_ISA` names, or the widest this CPU runs.
    pub fn from_env() -> Result<&'static Kernels> {
        Kernels::for_isa(Isa::from_env()?)
    }

    /// Packs an `[out_f, in_f]` weight for these kernels; `parts` row blocks (Q, K, V) stay
    /// separate products on the reference path, so that it keeps its bits.
    pub fn pack(
        &self,
        weight: &[f32],
        bias: Option<&[f32]>,
        dims: (usize, usize),
        parts: usize,
    ) -> PackedLinear {
        PackedLinear::new(self.isa, weight, bias, dims, parts)
    }

    pub fn linear(&self, w: &PackedLinear, x: &[f32], rows: usize, out: &mut [f32], ep: Epilogue) {
        assert_eq!(
            w.isa,
            self.isa,
            "a weight packed for the {} kernels given to the {} kernels",
            w.isa.name(),
            self.isa.name()
        );
        (self.linear)(w, x, rows, out, ep)
    }

    pub fn layer_norm(&self, x: &[f32], out: &mut [f32], gamma: &[f32], beta: &[f32], eps: f32) {
        assert_eq!(x.len(), out.len(), "layer_norm: input and output sizes");
        assert_eq!(
            x.len() % gamma.len(),
            0,
            "layer_norm: rows of {}",
            gamma.len()
        );
        (self.layer_norm)(x, out, gamma, beta, eps)
    }

    pub fn attention(&self, qkv: &[f32], ctx: &mut [f32], shape: AttentionShape) {
        let rows = shape.batch * shape.seq;
        let width = shape.heads * shape.head_dim;
        assert_eq!(
            qkv.len(),
            rows * 3 * width,
            "attention: qkv is not [{rows}, 3·{width}]"
        );
        assert_eq!(
            ctx.len(),
            rows * width,
            "attention: ctx is not [{rows}, {width}]"
        );
        (self.attention)(qkv, ctx, shape)
    }
}

static REFERENCE: Kernels = Kernels {
    isa: Isa::Reference,
    linear: reference_linear,
    layer_norm: |x, out, gamma, beta, eps| {
        out.copy_from_slice(&ops::layer_norm(x, gamma.len(), gamma, beta, eps))
    },
    attention: reference_attention,
};

/// `ops::linear` once per part, then `ops::activate` and `ops::add_in_place`: the calls and
/// the order the encoder made before the packed engine.
fn reference_linear(w: &PackedLinear, x: &[f32], rows: usize, out: &mut [f32], ep: Epilogue) {
    let (k, n) = (w.in_features, w.out_features);
    let part = n / w.parts;
    let weight = w.data.as_slice();
    let bias = w.bias.as_ref().map(|b| b.as_slice());
    for p in 0..w.parts {
        let mut y = ops::linear(
            x,
            rows,
            k,
            &weight[p * part * k..(p + 1) * part * k],
            bias.map(|b| &b[p * part..(p + 1) * part]),
            part,
        );
        match ep.act {
            Act::None => {}
            Act::QuickGelu => ops::activate(&mut y, crate::weights::Activation::QuickGelu),
            Act::Gelu => ops::activate(&mut y, crate::weights::Activation::Gelu),
        }
        if w.parts == 1 && ep.residual {
            ops::add_in_place(out, &y);
        } else if w.parts == 1 {
            out.copy_from_slice(&y);
        } else {
            assert!(!ep.residual, "a residual onto a multi-part product");
            for (o, yrow) in out.chunks_exact_mut(n).zip(y.chunks_exact(part)) {
                o[p * part..(p + 1) * part].copy_from_slice(yrow);
            }
        }
    }
}

/// Splits the joined QKV columns into the three buffers `ops::attention` takes (exact copies).
fn reference_attention(qkv: &[f32], ctx: &mut [f32], s: AttentionShape) {
    let width = s.heads * s.head_dim;
    let column = |part: usize| -> Vec<f32> {
        qkv.chunks_exact(3 * width)
            .flat_map(|row| &row[part * width..(part + 1) * width])
            .copied()
            .collect()
    };
    let out = ops::attention(
        &column(0),
        &column(1),
        &column(2),
        ops::AttentionShape {
            batch: s.batch,
            seq: s.seq,
            heads: s.heads,
            head_dim: s.head_dim,
            causal: s.causal,
        },
    );
    ctx.copy_from_slice(&out);
}

/// A head kernel of one ISA (`rows::attention_head` compiled for it).
type HeadKernel = unsafe fn(&[f32], *mut f32, (usize, usize, usize, usize), bool, &mut Vec<f32>);

thread_local! {
    /// Kᵀ and a score row per thread, grown once and reused by every head.
    static ATTENTION_SCRATCH: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Attention threaded over (sequence, head) blocks, each writing its own ctx columns.
fn attention_blocks(head: HeadKernel, qkv: &[f32], ctx: &mut [f32], s: AttentionShape) {
    let width = s.heads * s.head_dim;
    let ctx_ptr = ctx.as_mut_ptr() as usize;
    (0..s.batch * s.heads).into_par_iter().for_each(|bh| {
        let (b, h) = (bh / s.heads, bh % s.heads);
        let rows = &qkv[b * s.seq * 3 * width..(b + 1) * s.seq * 3 * width];
        ATTENTION_SCRATCH.with_borrow_mut(|scratch| {
            // SAFETY: block (b, h) writes only rows b·seq.. and columns h·head_dim.. of ctx,
            // whose size `Kernels::attention` asserted; the ISA was checked at load.
            unsafe {
                let out = (ctx_ptr as *mut f32).add(b * s.seq * width);
                head(rows, out, (s.seq, width, s.head_dim, h), s.causal, scratch)
            }
        });
    });
}

/// Row blocks per rayon task in LayerNorm.
const LN_ROWS_PER_TASK: usize = 16;

type RowsKernel = unsafe fn(&[f32], &mut [f32], &[f32], &[f32], f32);

fn layer_norm_rows(kernel: RowsKernel, x: &[f32], out: &mut [f32], g: &[f32], b: &[f32], eps: f32) {
    let chunk = g.len() * LN_ROWS_PER_TASK;
    out.par_chunks_mut(chunk)
        .zip(x.par_chunks(chunk))
        // SAFETY: the ISA was checked when the table was chosen.
        .for_each(|(o, xs)| unsafe { kernel(xs, o, g, b, eps) });
}

macro_rules! packed_table {
    ($name:ident, $isa:expr, $module:ident) => {
        #[cfg(target_arch = "x86_64")]
        static $name: Kernels = Kernels {
            isa: $isa,
            linear: |w, x, rows, out, ep| gemm::linear(&$module::MICROKERNEL, w, x, rows, out, ep),
            layer_norm: |x, out, g, b, eps| layer_norm_rows($module::layer_norm, x, out, g, b, eps),
            attention: |qkv, ctx, s| attention_blocks($module::attention_head, qkv, ctx, s),
        };
    };
}

packed_table!(AVX2, Isa::Avx2, avx2);
packed_table!(AVX512, Isa::Avx512, avx512);
