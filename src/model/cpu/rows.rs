//! Row-wise kernels written once in plain Rust and compiled per ISA: each ISA module wraps
//! them in a `#[target_feature]` function, and these `#[inline(always)]` bodies vectorise
//! there (16 independent lanes per sum, `mul_add` for fused multiply-adds).

use super::gemm::Act;
use crate::math::exp_f32;

/// Lanes of the partial sums: one AVX-512 register, two AVX2 registers.
const LANES: usize = 16;

#[inline(always)]
fn lane_sum(x: &[f32], f: impl Fn(f32) -> f32) -> f32 {
    let mut acc = [0.0f32; LANES];
    let mut chunks = x.chunks_exact(LANES);
    for c in &mut chunks {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a += f(v);
        }
    }
    let tail: f32 = chunks.remainder().iter().map(|&v| f(v)).sum();
    acc.iter().sum::<f32>() + tail
}

/// LayerNorm of each `dim`-row of `x` into `out`, in f32 with a two-pass variance.
///
/// Error model (u = 2⁻²⁴): each of the 16 lane sums adds ≤ d/16 terms, so the mean's
/// relative error is ≤ (d/16 + 4)·u in the sum of |x| (≈ 1e-6 for d = 768 relative to
/// mean|x|); the second pass sums (x − mean)², all non-negative, so the variance is within
/// (d/16 + 6)·u relative plus the mean's error squared — no cancellation, unlike E[x²] − mean².
/// The output then carries a few ulps of its own, far inside the tests' 1e-4.
#[inline(always)]
pub(super) fn layer_norm(x: &[f32], out: &mut [f32], gamma: &[f32], beta: &[f32], eps: f32) {
    let dim = gamma.len();
    for (orow, row) in out.chunks_exact_mut(dim).zip(x.chunks_exact(dim)) {
        let mean = lane_sum(row, |v| v) / dim as f32;
        let var = lane_sum(row, |v| (v - mean) * (v - mean)) / dim as f32;
        let inv = 1.0 / (var + eps).sqrt();
        for (((o, &v), &g), &b) in orow.iter_mut().zip(row).zip(gamma).zip(beta) {
            *o = ((v - mean) * inv).mul_add(g, b);
        }
    }
}

/// The activation on an `m × n` tile of rows `ldc` apart.
///
/// # Safety
/// `c` must cover `m` rows of `ldc` floats with `n ≤ ldc`.
#[inline(always)]
pub(super) unsafe fn activate_tile(c: *mut f32, ldc: usize, m: usize, n: usize, act: Act) {
    for i in 0..m {
        // SAFETY: forwarded from the caller.
        let row = unsafe { std::slice::from_raw_parts_mut(c.add(i * ldc), n) };
        match act {
            Act::None => {}
            Act::QuickGelu => row
                .iter_mut()
                .for_each(|v| *v /= 1.0 + exp_f32(-1.702 * *v)),
            Act::Gelu => row
                .iter_mut()
                .for_each(|v| *v = super::super::ops::gelu(*v)),
        }
    }
}

/// One (sequence, head) block of attention over the joined `[seq, 3·width]` QKV rows of one
/// sequence, written into that head's columns of `ctx` (`[seq, width]` rows).
///
/// `scratch` holds Kᵀ (`head_dim × seq`, so that a query row's scores are axpys over keys)
/// and one score row. Softmax in three passes over each row (max; exp, summed as stored;
/// the 1/sum folded into the output row), with `exp_f32`.
///
/// # Safety
/// `ctx` must cover `seq` rows of `width` floats; `h·head_dim + head_dim ≤ width`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn attention_head(
    qkv: &[f32],
    ctx: *mut f32,
    (seq, width, head_dim, h): (usize, usize, usize, usize),
    causal: bool,
    scratch: &mut Vec<f32>,
) {
    let scale = (head_dim as f32).powf(-0.5);
    scratch.resize(head_dim * seq + seq, 0.0);
    let (kt, scores) = scratch.split_at_mut(head_dim * seq);
    let (qo, ko, vo) = (h * head_dim, width + h * head_dim, 2 * width + h * head_dim);
    for j in 0..seq {
        let krow = &qkv[j * 3 * width + ko..][..head_dim];
        for (c, &v) in krow.iter().enumerate() {
            kt[c * seq + j] = v;
        }
    }
    for i in 0..seq {
        let visible = if causal { i + 1 } else { seq };
        let s = &mut scores[..visible];
        s.fill(0.0);
        let qrow = &qkv[i * 3 * width + qo..][..head_dim];
        for (c, &q) in qrow.iter().enumerate() {
            let q = q * scale;
            for (x, &kv) in s.iter_mut().zip(&kt[c * seq..c * seq + visible]) {
                *x = q.mul_add(kv, *x);
            }
        }
        let max = s.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
        s.iter_mut().for_each(|x| *x = exp_f32(*x - max));
        let inv = 1.0 / lane_sum(s, |v| v);
        // SAFETY: row i of ctx, this head's columns, inside the caller's bounds.
        let out = unsafe { std::slice::from_raw_parts_mut(ctx.add(i * width + qo), head_dim) };
        out.fill(0.0);
        for (j, &p) in s.iter().enumerate() {
            let vrow = &qkv[j * 3 * width + vo..][..head_dim];
            for (o, &v) in out.iter_mut().zip(vrow) {
                *o = p.mul_add(v, *o);
            }
        }
        out.iter_mut().for_each(|o| *o *= inv);
    }
}
