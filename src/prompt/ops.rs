//! The text tower's layers as forward/backward pairs over any [`Real`], limited to what a
//! prompt needs: every backward gives the gradient of the layer's *input* only (the weights
//! are frozen, so no weight gradient is ever formed). Each backward returns a new buffer
//! (it overwrites, never accumulates); the residual sums are the caller's.
//!
//! Shapes: activations are row-major `[rows, width]`; weights are `nn.Linear`'s `[out, in]`.
//! The forward semantics are [`crate::model::ops`]'s (LayerNorm statistics in f64, softmax
//! with the row maximum subtracted, causal mask), written again here generically so that the
//! f64 instantiation checks the f32 code by finite differences (the tests below).

use crate::adapter::Real;
use crate::adapter::kernel::matmul;
use crate::weights::Activation;
use gemm::Parallelism;
use rayon::prelude::*;

/// Products go parallel from this much work (m·n·k) on, as in `crate::model::ops`.
fn parallelism(flops: usize) -> Parallelism {
    if flops < 1 << 20 {
        Parallelism::None
    } else {
        Parallelism::Rayon(0)
    }
}

/// `y[m, n] = x[m, k] · w[n, k]ᵀ + bias[n]`: an `nn.Linear`.
pub fn linear<T: Real>(x: &[T], m: usize, k: usize, w: &[T], bias: &[T], n: usize) -> Vec<T> {
    assert_eq!(x.len(), m * k, "linear: input is not [{m}, {k}]");
    assert_eq!(w.len(), n * k, "linear: weight is not [{n}, {k}]");
    assert_eq!(bias.len(), n, "linear: bias is not [{n}]");
    let mut y: Vec<T> = bias.iter().copied().cycle().take(m * n).collect();
    matmul(
        &mut y,
        m,
        n,
        k,
        x,
        k,
        1,
        w,
        1,
        k,
        true,
        parallelism(m * n * k),
    );
    y
}

/// `dx[m, k] = dy[m, n] · w[n, k]`: the input gradient of [`linear`] (llm.c's first loop of
/// `matmul_backward`; the bias has no effect on it).
pub fn linear_backward_input<T: Real>(dy: &[T], m: usize, n: usize, w: &[T], k: usize) -> Vec<T> {
    assert_eq!(
        dy.len(),
        m * n,
        "linear_backward_input: dy is not [{m}, {n}]"
    );
    assert_eq!(
        w.len(),
        n * k,
        "linear_backward_input: weight is not [{n}, {k}]"
    );
    let mut dx = vec![T::ZERO; m * k];
    matmul(
        &mut dx,
        m,
        k,
        n,
        dy,
        n,
        1,
        w,
        k,
        1,
        false,
        parallelism(m * n * k),
    );
    dx
}

/// LayerNorm statistics of each row: the mean and `1/√(var + eps)`.
#[derive(Clone, Debug, Default)]
pub struct NormStats<T> {
    pub mean: Vec<T>,
    pub rstd: Vec<T>,
}

/// LayerNorm over rows of width `d`: `((x − mean) · rstd) · γ + β`, the statistics in f64 as
/// `crate::model::ops::layer_norm` computes them, returned for the backward pass.
pub fn layer_norm<T: Real>(
    x: &[T],
    d: usize,
    gamma: &[T],
    beta: &[T],
    eps: f64,
) -> (Vec<T>, NormStats<T>) {
    let rows = x.len() / d;
    let mut y = vec![T::ZERO; x.len()];
    let mut stats = NormStats {
        mean: vec![T::ZERO; rows],
        rstd: vec![T::ZERO; rows],
    };
    for (r, (yrow, xrow)) in y.chunks_exact_mut(d).zip(x.chunks_exact(d)).enumerate() {
        let mean = xrow.iter().map(|v| v.to_f64()).sum::<f64>() / d as f64;
        let var = xrow
            .iter()
            .map(|v| (v.to_f64() - mean).powi(2))
            .sum::<f64>()
            / d as f64;
        let rstd = 1.0 / (var + eps).sqrt();
        for j in 0..d {
            yrow[j] = T::from_f64((xrow[j].to_f64() - mean) * rstd) * gamma[j] + beta[j];
        }
        stats.mean[r] = T::from_f64(mean);
        stats.rstd[r] = T::from_f64(rstd);
    }
    (y, stats)
}

/// The input gradient of [`layer_norm`]: with `x̂ = (x − mean)·rstd` and `g = dy ⊙ γ`,
/// `dx = rstd · (g − mean(g) − x̂ · mean(g ⊙ x̂))` per row.
pub fn layer_norm_backward<T: Real>(
    dy: &[T],
    x: &[T],
    d: usize,
    gamma: &[T],
    stats: &NormStats<T>,
) -> Vec<T> {
    let mut dx = vec![T::ZERO; x.len()];
    let inv_d = T::from_f64(1.0 / d as f64);
    for (r, ((dxrow, xrow), dyrow)) in (dx.chunks_exact_mut(d).zip(x.chunks_exact(d)))
        .zip(dy.chunks_exact(d))
        .enumerate()
    {
        let (mean, rstd) = (stats.mean[r], stats.rstd[r]);
        let (mut g_sum, mut gx_sum) = (T::ZERO, T::ZERO);
        for j in 0..d {
            let g = dyrow[j] * gamma[j];
            g_sum += g;
            gx_sum += g * (xrow[j] - mean) * rstd;
        }
        let (g_mean, gx_mean) = (g_sum * inv_d, gx_sum * inv_d);
        for j in 0..d {
            let xhat = (xrow[j] - mean) * rstd;
            dxrow[j] = rstd * (dyrow[j] * gamma[j] - g_mean - xhat * gx_mean);
        }
    }
    dx
}

fn sigmoid<T: Real>(x: T) -> T {
    T::ONE / (T::ONE + (-x).exp())
}

fn erf<T: Real>(x: T) -> T {
    T::from_f64(libm::erf(x.to_f64()))
}

const QUICK_GELU_K: f64 = 1.702;

/// The MLP nonlinearity, elementwise.
pub fn activate<T: Real>(u: &[T], act: Activation) -> Vec<T> {
    let k = T::from_f64(QUICK_GELU_K);
    let half = T::from_f64(0.5);
    let r2 = T::from_f64(std::f64::consts::FRAC_1_SQRT_2);
    u.iter()
        .map(|&x| match act {
            Activation::QuickGelu => x * sigmoid(k * x),
            Activation::Gelu => half * x * (T::ONE + erf(x * r2)),
        })
        .collect()
}

/// The input gradient of [`activate`] at pre-activations `u`: QuickGELU's
/// `σ + 1.702·x·σ·(1 − σ)` with `σ = σ(1.702 x)`, GELU's `Φ(x) + x·φ(x)`.
pub fn activate_backward<T: Real>(dy: &[T], u: &[T], act: Activation) -> Vec<T> {
    let k = T::from_f64(QUICK_GELU_K);
    let half = T::from_f64(0.5);
    let r2 = T::from_f64(std::f64::consts::FRAC_1_SQRT_2);
    let inv_sqrt_2pi = T::from_f64(1.0 / (2.0 * std::f64::consts::PI).sqrt());
    dy.iter()
        .zip(u)
        .map(|(&g, &x)| {
            let slope = match act {
                Activation::QuickGelu => {
                    let s = sigmoid(k * x);
                    s + k * x * s * (T::ONE - s)
                }
                Activation::Gelu => {
                    half * (T::ONE + erf(x * r2)) + x * inv_sqrt_2pi * (-half * x * x).exp()
                }
            };
            g * slope
        })
        .collect()
}

/// The sizes of one causal attention call: `batch` sequences of `seq` tokens, `heads` heads
/// of `head_dim` columns (head h owns columns `h·head_dim ..` of q, k, v and the result).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttentionShape {
    pub batch: usize,
    pub seq: usize,
    pub heads: usize,
    pub head_dim: usize,
}

impl AttentionShape {
    fn width(&self) -> usize {
        self.heads * self.head_dim
    }
    fn scale<T: Real>(&self) -> T {
        T::from_f64((self.head_dim as f64).powf(-0.5))
    }
    /// The column block of head h in row t of sequence b.
    fn at(&self, b: usize, h: usize, t: usize) -> usize {
        (b * self.seq + t) * self.width() + h * self.head_dim
    }
}

fn dot<T: Real>(a: &[T], b: &[T]) -> T {
    a.iter().zip(b).map(|(&x, &y)| x * y).sum()
}

/// Causal multi-head attention: `ctx` `[batch·seq, width]` and the probabilities
/// `[batch, heads, seq, seq]` (zero above the diagonal), kept for the backward pass.
pub fn attention<T: Real>(q: &[T], k: &[T], v: &[T], shape: AttentionShape) -> (Vec<T>, Vec<T>) {
    let (s, hd) = (shape.seq, shape.head_dim);
    assert_eq!(
        q.len(),
        shape.batch * s * shape.width(),
        "attention: q is not [B·T, width]"
    );
    let scale: T = shape.scale();
    let per_head: Vec<(Vec<T>, Vec<T>)> = (0..shape.batch * shape.heads)
        .into_par_iter()
        .map(|bh| {
            let (b, h) = (bh / shape.heads, bh % shape.heads);
            let mut probs = vec![T::ZERO; s * s];
            let mut ctx = vec![T::ZERO; s * hd];
            for i in 0..s {
                let qi = &q[shape.at(b, h, i)..][..hd];
                let row = &mut probs[i * s..(i + 1) * s];
                for j in 0..=i {
                    row[j] = dot(qi, &k[shape.at(b, h, j)..][..hd]) * scale;
                }
                let max = row[..=i].iter().fold(T::NEG_INFINITY, |a, &x| a.max(x));
                let mut sum = T::ZERO;
                for p in &mut row[..=i] {
                    *p = (*p - max).exp();
                    sum += *p;
                }
                let inv = T::ONE / sum;
                row[..=i].iter_mut().for_each(|p| *p *= inv);
                let out = &mut ctx[i * hd..(i + 1) * hd];
                for j in 0..=i {
                    let vj = &v[shape.at(b, h, j)..][..hd];
                    out.iter_mut().zip(vj).for_each(|(o, &x)| *o += row[j] * x);
                }
            }
            (probs, ctx)
        })
        .collect();
    let mut ctx = vec![T::ZERO; q.len()];
    let mut probs = Vec::with_capacity(shape.batch * shape.heads * s * s);
    for (bh, (p, c)) in per_head.into_iter().enumerate() {
        let (b, h) = (bh / shape.heads, bh % shape.heads);
        for t in 0..s {
            ctx[shape.at(b, h, t)..][..hd].copy_from_slice(&c[t * hd..(t + 1) * hd]);
        }
        probs.extend(p);
    }
    (ctx, probs)
}

/// The input gradients (dq, dk, dv) of [`attention`] from `dctx` and the saved
/// probabilities. Per head, with `P` the probabilities: `dP = dctx·vᵀ`, `dv = Pᵀ·dctx`,
/// `dS = P ⊙ (dP − rowsum(dP ⊙ P))` (the softmax needs only its output), `dq = scale·dS·k`,
/// `dk = scale·dSᵀ·q`; masked entries have P = 0 and so no gradient.
pub fn attention_backward<T: Real>(
    dctx: &[T],
    q: &[T],
    k: &[T],
    v: &[T],
    probs: &[T],
    shape: AttentionShape,
) -> (Vec<T>, Vec<T>, Vec<T>) {
    let (s, hd) = (shape.seq, shape.head_dim);
    let scale: T = shape.scale();
    let per_head: Vec<[Vec<T>; 3]> = (0..shape.batch * shape.heads)
        .into_par_iter()
        .map(|bh| {
            let (b, h) = (bh / shape.heads, bh % shape.heads);
            let p = &probs[bh * s * s..(bh + 1) * s * s];
            let (mut dq, mut dk, mut dv) = (
                vec![T::ZERO; s * hd],
                vec![T::ZERO; s * hd],
                vec![T::ZERO; s * hd],
            );
            let mut ds = vec![T::ZERO; s];
            for i in 0..s {
                let g = &dctx[shape.at(b, h, i)..][..hd];
                let prow = &p[i * s..(i + 1) * s];
                for j in 0..=i {
                    ds[j] = dot(g, &v[shape.at(b, h, j)..][..hd]);
                    let dvj = &mut dv[j * hd..(j + 1) * hd];
                    dvj.iter_mut().zip(g).for_each(|(d, &x)| *d += prow[j] * x);
                }
                let weighted: T = (0..=i).map(|j| ds[j] * prow[j]).sum();
                let qi = &q[shape.at(b, h, i)..][..hd];
                for j in 0..=i {
                    let dsj = prow[j] * (ds[j] - weighted) * scale;
                    let kj = &k[shape.at(b, h, j)..][..hd];
                    let dqi = &mut dq[i * hd..(i + 1) * hd];
                    dqi.iter_mut().zip(kj).for_each(|(d, &x)| *d += dsj * x);
                    let dkj = &mut dk[j * hd..(j + 1) * hd];
                    dkj.iter_mut().zip(qi).for_each(|(d, &x)| *d += dsj * x);
                }
            }
            [dq, dk, dv]
        })
        .collect();
    let mut out = [
        vec![T::ZERO; q.len()],
        vec![T::ZERO; q.len()],
        vec![T::ZERO; q.len()],
    ];
    for (bh, grads) in per_head.into_iter().enumerate() {
        let (b, h) = (bh / shape.heads, bh % shape.heads);
        for (dst, src) in out.iter_mut().zip(&grads) {
            for t in 0..s {
                dst[shape.at(b, h, t)..][..hd].copy_from_slice(&src[t * hd..(t + 1) * hd]);
            }
        }
    }
    let [dq, dk, dv] = out;
    (dq, dk, dv)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn random(n: usize, stream: u64) -> Vec<f64> {
        (crate::prompt::counter_uniform(99, stream, n, 0.0, 1.0).iter())
            .map(|&v| v as f64)
            .collect()
    }

    /// Central differences of `⟨g, f(x)⟩` against the analytic `dx`, every coordinate; the
    /// step 1e-5 leaves truncation ~1e-10 and rounding ~1e-11 on these O(1) values.
    pub(crate) fn check_grad(x: &[f64], g: &[f64], dx: &[f64], f: impl Fn(&[f64]) -> Vec<f64>) {
        let h = 1e-5;
        let loss = |x: &[f64]| -> f64 { f(x).iter().zip(g).map(|(a, b)| a * b).sum() };
        let scale = dx.iter().fold(1e-3f64, |m, v| m.max(v.abs()));
        for i in 0..x.len() {
            let (mut up, mut down) = (x.to_vec(), x.to_vec());
            up[i] += h;
            down[i] -= h;
            let fd = (loss(&up) - loss(&down)) / (2.0 * h);
            assert!(
                (fd - dx[i]).abs() <= 1e-7 * scale,
                "coordinate {i}: finite difference {fd}, backward {}",
                dx[i]
            );
        }
    }

    #[test]
    fn linear_backward_input_matches_finite_differences() {
        let (m, k, n) = (3, 5, 7);
        let (x, w, b, g) = (
            random(m * k, 1),
            random(n * k, 2),
            random(n, 3),
            random(m * n, 4),
        );
        let dx = linear_backward_input(&g, m, n, &w, k);
        check_grad(&x, &g, &dx, |x| linear(x, m, k, &w, &b, n));
    }

    #[test]
    fn layer_norm_backward_matches_finite_differences() {
        let (rows, d) = (4, 7);
        let x: Vec<f64> = random(rows * d, 5).iter().map(|v| 3.0 * v + 0.5).collect();
        let (gamma, beta, g) = (random(d, 6), random(d, 7), random(rows * d, 8));
        let (_, stats) = layer_norm(&x, d, &gamma, &beta, 1e-5);
        let dx = layer_norm_backward(&g, &x, d, &gamma, &stats);
        check_grad(&x, &g, &dx, |x| layer_norm(x, d, &gamma, &beta, 1e-5).0);
    }

    #[test]
    fn activation_backward_matches_finite_differences() {
        // Both signs, near zero and in the tails.
        let u: Vec<f64> = random(40, 9)
            .iter()
            .map(|v| 6.0 * v)
            .chain([0.0, 1e-3, -8.0, 8.0])
            .collect();
        let g = random(u.len(), 10);
        for act in [Activation::QuickGelu, Activation::Gelu] {
            let du = activate_backward(&g, &u, act);
            check_grad(&u, &g, &du, |u| activate(u, act));
        }
    }

    #[test]
    fn activations_match_the_model_engine() {
        for x in [-5.0f32, -1.3, -0.2, 0.0, 0.7, 2.9, 9.0] {
            let q = activate(&[x], Activation::QuickGelu)[0];
            let e = activate(&[x], Activation::Gelu)[0];
            approx::assert_relative_eq!(
                q,
                crate::model::ops::quick_gelu(x),
                max_relative = 2e-6,
                epsilon = 1e-7
            );
            approx::assert_relative_eq!(
                e,
                crate::model::ops::gelu(x),
                max_relative = 2e-6,
                epsilon = 1e-7
            );
        }
    }

    #[test]
    fn attention_backward_matches_finite_differences() {
        // Awkward sizes: 2 sequences of 5 tokens, 3 heads of 2 columns.
        let shape = AttentionShape {
            batch: 2,
            seq: 5,
            heads: 3,
            head_dim: 2,
        };
        let n = 2 * 5 * 6;
        let (q, k, v, g) = (random(n, 11), random(n, 12), random(n, 13), random(n, 14));
        let q: Vec<f64> = q.iter().map(|x| 2.0 * x).collect();
        let (_, probs) = attention(&q, &k, &v, shape);
        let (dq, dk, dv) = attention_backward(&g, &q, &k, &v, &probs, shape);
        check_grad(&q, &g, &dq, |q| attention(q, &k, &v, shape).0);
        check_grad(&k, &g, &dk, |k| attention(&q, k, &v, shape).0);
        check_grad(&v, &g, &dv, |v| attention(&q, &k, v, shape).0);
    }

    #[test]
    fn attention_matches_the_model_engine() {
        let shape = AttentionShape {
            batch: 2,
            seq: 7,
            heads: 2,
            head_dim: 3,
        };
        let n = 2 * 7 * 6;
        let f = |s| random(n, s).iter().map(|&v| v as f32).collect::<Vec<f32>>();
        let (q, k, v) = (f(15), f(16), f(17));
        let (ours, probs) = attention(&q, &k, &v, shape);
        let model = crate::model::ops::attention(
            &q,
            &k,
            &v,
            crate::model::ops::AttentionShape {
                batch: 2,
                seq: 7,
                heads: 2,
                head_dim: 3,
                causal: true,
            },
        );
        for (a, b) in ours.iter().zip(&model) {
            approx::assert_relative_eq!(a, b, max_relative = 1e-5, epsilon = 1e-6);
        }
        // Causal: nothing above the diagonal, rows sum to one.
        for row in 0..2 * 2 * 7 {
            let (i, r) = (row % 7, &probs[row * 7..(row + 1) * 7]);
            assert!(r[i + 1..].iter().all(|&p| p == 0.0));
            approx::assert_relative_eq!(r.iter().sum::<f32>(), 1.0, epsilon = 1e-6);
        }
    }
}
