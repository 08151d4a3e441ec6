//! AVX-512F kernels: a 12 × 32 tile (24 zmm accumulators, two panel loads and one
//! broadcast per k), the column tail through opmasks, and the row-wise kernels of `rows`
//! compiled for 512-bit vectors.

use super::gemm::{Act, Microkernel, Tile};
use super::rows;
use std::arch::x86_64::*;

/// Rows per packed A micro-panel (the `mr` below).
const MR_PACKED: usize = 12;

pub(super) const NR: usize = 32;

pub(super) static MICROKERNEL: Microkernel = Microkernel {
    mr: MR_PACKED,
    kc: 256,
    tile,
    act,
};

/// # Safety
/// As `Microkernel::tile`; the CPU must have AVX-512F (the ISA was checked at load).
unsafe fn tile(t: &Tile) {
    // SAFETY: forwarded; each arm is the same kernel at a fixed row count.
    unsafe {
        match t.m {
            1 => tile_rows::<1>(t),
            2 => tile_rows::<2>(t),
            3 => tile_rows::<3>(t),
            4 => tile_rows::<4>(t),
            5 => tile_rows::<5>(t),
            6 => tile_rows::<6>(t),
            7 => tile_rows::<7>(t),
            8 => tile_rows::<8>(t),
            9 => tile_rows::<9>(t),
            10 => tile_rows::<10>(t),
            11 => tile_rows::<11>(t),
            12 => tile_rows::<12>(t),
            m => unreachable!("avx512 tile of {m} rows"),
        }
    }
}

/// Masks for the two 16-column halves of an `n`-column tile.
#[inline(always)]
fn masks(n: usize) -> (__mmask16, __mmask16) {
    let bits = |w: usize| {
        if w >= 16 {
            0xFFFF
        } else {
            ((1u32 << w) - 1) as u16
        }
    };
    (bits(n.min(16)), bits(n.saturating_sub(16)))
}

#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn tile_rows<const MR: usize>(t: &Tile) {
    let mut acc = [[_mm512_setzero_ps(); 2]; MR];
    // SAFETY: the caller vouches for `a` (MR rows × kc), `b` (kc × 32) and `c` (MR × n).
    unsafe {
        for p in 0..t.kc {
            let b0 = _mm512_loadu_ps(t.b.add(p * NR));
            let b1 = _mm512_loadu_ps(t.b.add(p * NR + 16));
            for (r, acc) in acc.iter_mut().enumerate() {
                let a = _mm512_set1_ps(*t.a.add(p * MR_PACKED + r));
                acc[0] = _mm512_fmadd_ps(a, b0, acc[0]);
                acc[1] = _mm512_fmadd_ps(a, b1, acc[1]);
            }
        }
        let (m0, m1) = masks(t.n);
        let (bias0, bias1) = if t.bias.is_null() {
            (_mm512_setzero_ps(), _mm512_setzero_ps())
        } else {
            (_mm512_loadu_ps(t.bias), _mm512_loadu_ps(t.bias.add(16)))
        };
        for (r, acc) in acc.iter().enumerate() {
            let c = t.c.add(r * t.ldc);
            let mut v0 = _mm512_add_ps(acc[0], bias0);
            let mut v1 = _mm512_add_ps(acc[1], bias1);
            if t.load_c {
                v0 = _mm512_add_ps(v0, _mm512_maskz_loadu_ps(m0, c));
                v1 = _mm512_add_ps(v1, _mm512_maskz_loadu_ps(m1, c.add(16)));
            }
            _mm512_mask_storeu_ps(c, m0, v0);
            _mm512_mask_storeu_ps(c.add(16), m1, v1);
        }
    }
}

/// # Safety
/// As `Microkernel::act`; the CPU must have AVX-512F.
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn act(c: *mut f32, ldc: usize, m: usize, n: usize, act: Act) {
    // SAFETY: forwarded.
    unsafe { rows::activate_tile(c, ldc, m, n, act) }
}

/// # Safety
/// The CPU must have AVX-512F.
#[target_feature(enable = "avx512f,avx2,fma")]
pub(super) unsafe fn layer_norm(x: &[f32], out: &mut [f32], gamma: &[f32], beta: &[f32], eps: f32) {
    rows::layer_norm(x, out, gamma, beta, eps)
}

/// # Safety
/// As `rows::attention_head`; the CPU must have AVX-512F.
#[target_feature(enable = "avx512f,avx2,fma")]
pub(super) unsafe fn attention_head(
    qkv: &[f32],
    ctx: *mut f32,
    dims: (usize, usize, usize, usize),
    causal: bool,
    scratch: &mut Vec<f32>,
) {
    // SAFETY: forwarded.
    unsafe { rows::attention_head(qkv, ctx, dims, causal, scratch) }
}
