//! AVX2+FMA kernels: a 6 × 16 tile (12 ymm accumulators, two panel loads and one
//! broadcast per k), the column tail through masked moves, and the row-wise kernels of `rows`
//! compiled for 256-bit vectors.

use super::gemm::{Act, Microkernel, Tile};
use super::rows;
use std::arch::x86_64::*;

/// Rows per packed A micro-panel (the `mr` below).
const MR_PACKED: usize = 6;

pub(super) const NR: usize = 16;

pub(super) static MICROKERNEL: Microkernel = Microkernel {
    mr: MR_PACKED,
    kc: 256,
    tile,
    act,
};

/// # Safety
/// As `Microkernel::tile`; the CPU must have AVX2 and FMA (the ISA was checked at load).
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
            m => unreachable!("avx2 tile of {m} rows"),
        }
    }
}

/// Lane masks (all ones where the column exists) for the two 8-column halves of a tile.
#[target_feature(enable = "avx2,fma")]
fn masks(n: usize) -> (__m256i, __m256i) {
    let lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    let half = |w: usize| _mm256_cmpgt_epi32(_mm256_set1_epi32(w as i32), lanes);
    (half(n.min(8)), half(n.saturating_sub(8)))
}

#[target_feature(enable = "avx2,fma")]
unsafe fn tile_rows<const MR: usize>(t: &Tile) {
    let mut acc = [[_mm256_setzero_ps(); 2]; MR];
    // SAFETY: the caller vouches for `a` (MR rows × kc), `b` (kc × 16) and `c` (MR × n).
    unsafe {
        for p in 0..t.kc {
            let b0 = _mm256_loadu_ps(t.b.add(p * NR));
            let b1 = _mm256_loadu_ps(t.b.add(p * NR + 8));
            for (r, acc) in acc.iter_mut().enumerate() {
                let a = _mm256_set1_ps(*t.a.add(p * MR_PACKED + r));
                acc[0] = _mm256_fmadd_ps(a, b0, acc[0]);
                acc[1] = _mm256_fmadd_ps(a, b1, acc[1]);
            }
        }
        let (m0, m1) = masks(t.n);
        let (bias0, bias1) = if t.bias.is_null() {
            (_mm256_setzero_ps(), _mm256_setzero_ps())
        } else {
            (_mm256_loadu_ps(t.bias), _mm256_loadu_ps(t.bias.add(8)))
        };
        for (r, acc) in acc.iter().enumerate() {
            let c = t.c.add(r * t.ldc);
            let mut v0 = _mm256_add_ps(acc[0], bias0);
            let mut v1 = _mm256_add_ps(acc[1], bias1);
            if t.load_c {
                v0 = _mm256_add_ps(v0, _mm256_maskload_ps(c, m0));
                v1 = _mm256_add_ps(v1, _mm256_maskload_ps(c.add(8), m1));
            }
            _mm256_maskstore_ps(c, m0, v0);
            _mm256_maskstore_ps(c.add(8), m1, v1);
        }
    }
}

/// # Safety
/// As `Microkernel::act`; the CPU must have AVX2 and FMA.
#[target_feature(enable = "avx2,fma")]
unsafe fn act(c: *mut f32, ldc: usize, m: usize, n: usize, act: Act) {
    // SAFETY: forwarded.
    unsafe { rows::activate_tile(c, ldc, m, n, act) }
}

/// # Safety
/// The CPU must have AVX2 and FMA.
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn layer_norm(x: &[f32], out: &mut [f32], gamma: &[f32], beta: &[f32], eps: f32) {
    rows::layer_norm(x, out, gamma, beta, eps)
}

/// # Safety
/// As `rows::attention_head`; the CPU must have AVX2 and FMA.
#[target_feature(enable = "avx2,fma")]
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
