//! CPU building blocks in f32. These are the reference semantics the CUDA kernels are
//! checked against, so each stays small and obvious; speed comes from the GEMM crate
//! and from rayon across rows and heads.

use crate::weights::Activation;
use gemm::Parallelism;
use rayon::prelude::*;

/// Rows per rayon task for row-wise ops: big enough to amortise scheduling.
const ROWS_PER_TASK: usize = 16;

fn parallelism(flops: usize) -> Parallelism {
    // Threading tiny products costs more than it saves.
    if flops < 1 << 20 {
        Parallelism::None
    } else {
        Parallelism::Rayon(rayon::current_num_threads())
    }
}

/// Below this many rows `linear` threads over output columns instead of leaving it to gemm.
const SMALL_M: usize = 256;

/// `dst[m, n] (+)= x[m, k] · w[n, k]ᵀ` with `dst` rows `ld` apart and `w` rows `k` apart.
///
/// # Safety
/// `dst` must be valid for `m` rows of `ld` floats (n ≤ ld) and `w` for `n · k` floats.
unsafe fn gemm_into(
    dst: *mut f32,
    ld: usize,
    x: &[f32],
    w: *const f32,
    (m, n, k): (usize, usize, usize),
    accumulate: bool,
    par: Parallelism,
) {
    // SAFETY: forwarded from the caller; `x` is [m, k].
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            1,
            ld as isize,
            accumulate,
            x.as_ptr(),
            1,
            k as isize,
            w,
            k as isize,
            1,
            1.0,
            1.0,
            false,
            false,
            false,
            par,
        )
    }
}

/// `out[m, n] = x[m, k] · w[n, k]ᵀ (+ bias[n])`: a PyTorch `nn.Linear` with `w` stored
/// `[out_features, in_features]` row-major, as safetensors holds it.
pub fn linear(
    x: &[f32],
    m: usize,
    k: usize,
    w: &[f32],
    bias: Option<&[f32]>,
    n: usize,
) -> Vec<f32> {
    assert_eq!(x.len(), m * k, "linear: input is not [{m}, {k}]");
    assert_eq!(w.len(), n * k, "linear: weight is not [{n}, {k}]");
    let mut out = vec![0.0f32; m * n];
    if let Some(b) = bias {
        assert_eq!(b.len(), n);
        out.chunks_exact_mut(n)
            .for_each(|row| row.copy_from_slice(b));
    }
    let threads = rayon::current_num_threads();
    if m < SMALL_M && threads > 1 && m * n * k >= 1 << 20 {
        // Few rows (batch 1 of a ViT is 50): gemm's own threading splits rows in blocks of its
        // microkernel height, which leaves threads idle here. Split the output columns instead,
        // one single-threaded product per thread on disjoint columns.
        let cols = n.div_ceil(threads).next_multiple_of(16);
        let out_ptr = out.as_mut_ptr() as usize;
        (0..n.div_ceil(cols)).into_par_iter().for_each(|c| {
            let (j0, j1) = (c * cols, ((c + 1) * cols).min(n));
            // SAFETY: each task writes only columns j0..j1 of `out`; the reads stay inside `x`
            // and rows j0..j1 of `w`, whose lengths were asserted above.
            unsafe {
                gemm_into(
                    (out_ptr as *mut f32).add(j0),
                    n,
                    x,
                    w.as_ptr().add(j0 * k),
                    (m, j1 - j0, k),
                    bias.is_some(),
                    Parallelism::None,
                )
            };
        });
    } else {
        // SAFETY: the strides describe buffers whose lengths were asserted above.
        unsafe {
            gemm_into(
                out.as_mut_ptr(),
                n,
                x,
                w.as_ptr(),
                (m, n, k),
                bias.is_some(),
                parallelism(m * n * k),
            )
        };
    }
    out
}

/// LayerNorm over the last dimension, statistics in f64 for a stable reference.
pub fn layer_norm(x: &[f32], dim: usize, gamma: &[f32], beta: &[f32], eps: f32) -> Vec<f32> {
    let mut out = vec![0.0f32; x.len()];
    out.par_chunks_mut(dim * ROWS_PER_TASK)
        .zip(x.par_chunks(dim * ROWS_PER_TASK))
        .for_each(|(o, xs)| {
            for (orow, row) in o.chunks_exact_mut(dim).zip(xs.chunks_exact(dim)) {
                let mean = row.iter().map(|&v| v as f64).sum::<f64>() / dim as f64;
                let var = row.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / dim as f64;
                let inv = 1.0 / (var + eps as f64).sqrt();
                for j in 0..dim {
                    orow[j] = ((row[j] as f64 - mean) * inv) as f32 * gamma[j] + beta[j];
                }
            }
        });
    out
}

pub fn quick_gelu(x: f32) -> f32 {
    x / (1.0 + (-1.702 * x).exp())
}

pub fn gelu(x: f32) -> f32 {
    0.5 * x * (1.0 + libm::erff(x * std::f32::consts::FRAC_1_SQRT_2))
}

pub fn activate(x: &mut [f32], act: Activation) {
    let f = match act {
        Activation::QuickGelu => quick_gelu,
        Activation::Gelu => gelu,
    };
    x.par_chunks_mut(4096)
        .for_each(|c| c.iter_mut().for_each(|v| *v = f(*v)));
}

/// `a += b`, elementwise.
pub fn add_in_place(a: &mut [f32], b: &[f32]) {
    assert_eq!(a.len(), b.len());
    a.par_chunks_mut(4096)
        .zip(b.par_chunks(4096))
        .for_each(|(x, y)| x.iter_mut().zip(y).for_each(|(x, y)| *x += y));
}

/// The sizes of one attention call.
#[derive(Clone, Copy, Debug)]
pub struct AttentionShape {
    pub batch: usize,
    pub seq: usize,
    pub heads: usize,
    pub head_dim: usize,
    pub causal: bool,
}

/// Multi-head scaled dot-product attention over `batch` sequences of `seq` tokens.
/// `q`, `k`, `v` and the result are `[batch·seq, heads·head_dim]`; head h owns columns
/// `h·head_dim ..`. `causal` hides later tokens (the text tower). Softmax in f32 with the
/// row maximum subtracted, as PyTorch does.
pub fn attention(q: &[f32], k: &[f32], v: &[f32], shape: AttentionShape) -> Vec<f32> {
    let AttentionShape {
        batch,
        seq,
        heads,
        head_dim,
        causal,
    } = shape;
    let width = heads * head_dim;
    assert_eq!(q.len(), batch * seq * width);
    let scale = (head_dim as f32).powf(-0.5);
    // One task per (sequence, head): each writes a disjoint column block of its rows.
    let per_head: Vec<(usize, usize, Vec<f32>)> = (0..batch * heads)
        .into_par_iter()
        .map(|bh| {
            let (b, h) = (bh / heads, bh % heads);
            let base = b * seq * width + h * head_dim;
            let mut scores = vec![0.0f32; seq * seq];
            // SAFETY: all strides stay within the [batch·seq, width] buffers.
            unsafe {
                gemm::gemm(
                    seq,
                    seq,
                    head_dim,
                    scores.as_mut_ptr(),
                    1,
                    seq as isize,
                    false,
                    q.as_ptr().add(base),
                    1,
                    width as isize,
                    k.as_ptr().add(base),
                    width as isize,
                    1,
                    0.0,
                    scale,
                    false,
                    false,
                    false,
                    Parallelism::None,
                );
            }
            for (i, row) in scores.chunks_exact_mut(seq).enumerate() {
                let visible = if causal { i + 1 } else { seq };
                let max = row[..visible]
                    .iter()
                    .fold(f32::NEG_INFINITY, |a, &b| a.max(b));
                let mut sum = 0.0f32;
                for s in &mut row[..visible] {
                    *s = (*s - max).exp();
                    sum += *s;
                }
                let inv = 1.0 / sum;
                row[..visible].iter_mut().for_each(|s| *s *= inv);
                row[visible..].iter_mut().for_each(|s| *s = 0.0);
            }
            let mut out = vec![0.0f32; seq * head_dim];
            // SAFETY: as above.
            unsafe {
                gemm::gemm(
                    seq,
                    head_dim,
                    seq,
                    out.as_mut_ptr(),
                    1,
                    head_dim as isize,
                    false,
                    scores.as_ptr(),
                    1,
                    seq as isize,
                    v.as_ptr().add(base),
                    1,
                    width as isize,
                    0.0,
                    1.0,
                    false,
                    false,
                    false,
                    Parallelism::None,
                );
            }
            (b, h, out)
        })
        .collect();
    let mut result = vec![0.0f32; q.len()];
    for (b, h, out) in per_head {
        for t in 0..seq {
            let dst = (b * seq + t) * width + h * head_dim;
            result[dst..dst + head_dim].copy_from_slice(&out[t * head_dim..(t + 1) * head_dim]);
        }
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Naive triple loop, the reference for the GEMM call's strides.
    fn naive_linear(x: &[f32], m: usize, k: usize, w: &[f32], b: &[f32], n: usize) -> Vec<f32> {
        let mut out = vec![0.0; m * n];
        for i in 0..m {
            for j in 0..n {
                let mut s = b[j] as f64;
                for p in 0..k {
                    s += x[i * k + p] as f64 * w[j * k + p] as f64;
                }
                out[i * n + j] = s as f32;
            }
        }
        out
    }

    fn pseudo_random(n: usize, seed: u32) -> Vec<f32> {
        let mut s = seed.wrapping_mul(2654435761).wrapping_add(1);
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 17;
                s ^= s << 5;
                (s as f32 / u32::MAX as f32) * 2.0 - 1.0
            })
            .collect()
    }

    #[test]
    fn linear_matches_naive_at_awkward_sizes() {
        for &(m, k, n) in &[(1, 1, 1), (17, 33, 5), (50, 64, 97), (197, 130, 257)] {
            let x = pseudo_random(m * k, 1);
            let w = pseudo_random(n * k, 2);
            let b = pseudo_random(n, 3);
            let got = linear(&x, m, k, &w, Some(&b), n);
            let want = naive_linear(&x, m, k, &w, &b, n);
            for (g, w) in got.iter().zip(&want) {
                approx::assert_relative_eq!(g, w, epsilon = 1e-4, max_relative = 1e-4);
            }
        }
    }

    #[test]
    fn causal_attention_first_token_sees_only_itself() {
        let (seq, heads, hd) = (5, 2, 3);
        let q = pseudo_random(seq * heads * hd, 4);
        let k = pseudo_random(seq * heads * hd, 5);
        let v = pseudo_random(seq * heads * hd, 6);
        let shape = |causal| AttentionShape {
            batch: 1,
            seq,
            heads,
            head_dim: hd,
            causal,
        };
        let out = attention(&q, &k, &v, shape(true));
        // Token 0 attends only to itself, so its output is its own value row.
        assert_eq!(&out[..heads * hd], &v[..heads * hd]);
        let full = attention(&q, &k, &v, shape(false));
        // The last token sees everything in both variants.
        let last = (seq - 1) * heads * hd;
        for (a, b) in out[last..].iter().zip(&full[last..]) {
            approx::assert_relative_eq!(a, b, epsilon = 1e-6);
        }
    }

    #[test]
    fn layer_norm_normalises_rows() {
        let x = pseudo_random(3 * 7, 7);
        let out = layer_norm(&x, 7, &[1.0; 7], &[0.0; 7], 1e-5);
        for row in out.chunks(7) {
            let mean: f32 = row.iter().sum::<f32>() / 7.0;
            let var: f32 = row.iter().map(|v| (v - mean).powi(2)).sum::<f32>() / 7.0;
            assert!(
                mean.abs() < 1e-5 && (var - 1.0).abs() < 1e-3,
                "{mean} {var}"
            );
        }
    }
}
