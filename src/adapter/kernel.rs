//! The adapter's forward and backward pass for one client's batch, written once for any
//! [`Real`] (f32 to train, f64 to check gradients). Inputs are assumed validated by the
//! callers in `mod.rs` / `cpu.rs`; only internal invariants are asserted here.
//!
//! Shapes: `x` [B, d] raw image features, `texts` [C, d] L2-normalised class text features,
//! parameters flat `[W1 | b1 | W2 | b2]` (see `params.rs`).
//!
//! Forward: `H = tanh(X W1ᵀ + b1)`, `A = softmax_row(H W2ᵀ + b2)`, `Y = A ⊙ X`,
//! `N = Y / ‖Y‖_row`, `G = N Tᵀ` [B, C] (cosine similarity of every sample with every class).
//!
//! The contrastive loss of the reference builds `L = s · N T_bᵀ` [B, B] with `T_b` the text
//! feature of each sample's label. Column j of that matrix is column `y_j` of `s·G`, so the
//! loss and its gradient are computed from `G` alone with class counts `cnt_c`:
//! row i's log-sum-exp is `log Σ_c cnt_c exp(s G[i,c])`, column j's is
//! `log Σ_i exp(s G[i, y_j])`, and
//! `∂loss/∂G[i,c] = s/(2B) · (P_row[i,c] + cnt_c · P_col[i,c] − 2·[c = y_i])` with
//! `P_row[i,c] = cnt_c e^{sG[i,c]} / Σ_c' cnt_c' e^{sG[i,c']}` and
//! `P_col[i,c] = e^{sG[i,c]} / Σ_i' e^{sG[i',c]}`. This is exact (duplicates of a class stay in
//! the batch as in the reference) and costs O(B·C) instead of O(B²).

use super::Loss;
use super::params::{split, split_mut};
use super::real::Real;
use gemm::Parallelism;
use rayon::prelude::*;

/// Rows per rayon task for row-wise work.
const ROWS_PER_TASK: usize = 32;
/// Row-wise loops go parallel from this many elements (B·d) on.
const PAR_ROWS_MIN: usize = 1 << 16;
/// The d×d products go parallel from this much work (B·d·d) on. Decided from the client's own
/// batch only (never from how many clients run at once), so that a client's result does not
/// depend on the other clients of a step.
const PAR_GEMM_MIN: usize = 1 << 24;

/// How one client's batch is parallelised.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Par {
    gemm: Parallelism,
    rows: bool,
}

impl Par {
    pub(crate) fn for_batch(b: usize, d: usize) -> Par {
        Par {
            gemm: if b * d * d >= PAR_GEMM_MIN {
                Parallelism::Rayon(0)
            } else {
                Parallelism::None
            },
            rows: b * d >= PAR_ROWS_MIN,
        }
    }
}

/// Reusable buffers for one client's step.
#[derive(Default)]
pub(crate) struct Scratch<T> {
    h: Vec<T>,
    a: Vec<T>,
    nb: Vec<T>,
    dz: Vec<T>,
    g: Vec<T>,
    cnt: Vec<usize>,
    cmax: Vec<T>,
    csum: Vec<T>,
}

impl<T: Real> Scratch<T> {
    /// Sizes the buffers for a batch of `b` rows, width `d`, `c` classes.
    pub(crate) fn prepare(&mut self, b: usize, d: usize, c: usize) {
        for v in [&mut self.h, &mut self.a, &mut self.nb, &mut self.dz] {
            v.resize(b * d, T::ZERO);
        }
        self.g.resize(b * c, T::ZERO);
        self.cnt.clear();
        self.cnt.resize(c, 0);
        self.cmax.resize(c, T::ZERO);
        self.csum.resize(c, T::ZERO);
    }

    /// The normalised adapted features `N` [B, d] of the last forward pass.
    pub(crate) fn normalized(&self, b: usize, d: usize) -> &[T] {
        &self.nb[..b * d]
    }
}

/// `dst[m, n] (+)= lhs[m, k] · rhs[k, n]`, `dst` row-major with leading dimension `n`,
/// `lhs` / `rhs` given by their row and column strides.
#[allow(clippy::too_many_arguments)]
pub(crate) fn matmul<T: Real>(
    dst: &mut [T],
    m: usize,
    n: usize,
    k: usize,
    lhs: &[T],
    lhs_rs: usize,
    lhs_cs: usize,
    rhs: &[T],
    rhs_rs: usize,
    rhs_cs: usize,
    accumulate: bool,
    par: Parallelism,
) {
    assert!(dst.len() >= m * n, "matmul: destination too small");
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            dst[..m * n].fill(T::ZERO);
        }
        return;
    }
    assert!(
        (m - 1) * lhs_rs + (k - 1) * lhs_cs < lhs.len(),
        "matmul: lhs too small"
    );
    assert!(
        (k - 1) * rhs_rs + (n - 1) * rhs_cs < rhs.len(),
        "matmul: rhs too small"
    );
    // SAFETY: every index the strides can reach was bounds-checked above; `dst` does not
    // alias `lhs` or `rhs` (distinct borrows).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            lhs.as_ptr(),
            lhs_cs as isize,
            lhs_rs as isize,
            rhs.as_ptr(),
            rhs_cs as isize,
            rhs_rs as isize,
            T::ONE,
            T::ONE,
            false,
            false,
            false,
            par,
        );
    }
}

/// Applies `f(row_index, row)` to every `d`-wide row of `buf`, in parallel chunks when
/// `par`. Each row is independent, so the result does not depend on the split.
fn rows<T: Real, F>(buf: &mut [T], d: usize, par: bool, f: F)
where
    F: Fn(usize, &mut [T]) + Sync + Send,
{
    if par {
        buf.par_chunks_mut(d * ROWS_PER_TASK)
            .enumerate()
            .for_each(|(t, chunk)| {
                for (r, row) in chunk.chunks_exact_mut(d).enumerate() {
                    f(t * ROWS_PER_TASK + r, row);
                }
            });
    } else {
        for (i, row) in buf.chunks_exact_mut(d).enumerate() {
            f(i, row);
        }
    }
}

/// `out[j] = Σ_i buf[i, j]`, rows summed in order.
fn column_sums<T: Real>(out: &mut [T], buf: &[T], d: usize) {
    out.fill(T::ZERO);
    for row in buf.chunks_exact(d) {
        for (o, &v) in out.iter_mut().zip(row) {
            *o += v;
        }
    }
}

fn fill_rows<T: Real>(buf: &mut [T], bias: &[T]) {
    for row in buf.chunks_exact_mut(bias.len()) {
        row.copy_from_slice(bias);
    }
}

/// Lanes of the partial sums below: enough independent accumulators for the compiler to
/// vectorise a reduction (the summation order is fixed, so results are deterministic).
const LANES: usize = 8;

/// `Σ_j f(j)` over `0..n` in `LANES` interleaved partial sums.
#[inline(always)]
fn lane_sum<T: Real>(n: usize, f: impl Fn(usize) -> T) -> T {
    let mut acc = [T::ZERO; LANES];
    let full = n - n % LANES;
    for j in (0..full).step_by(LANES) {
        for (l, a) in acc.iter_mut().enumerate() {
            *a += f(j + l);
        }
    }
    let mut total = T::ZERO;
    for j in full..n {
        total += f(j);
    }
    acc.iter().fold(T::ZERO, |s, &a| s + a) + total
}

/// Row maximum (NaN entries are skipped; they still reach the result through the sum).
#[inline(always)]
fn row_max<T: Real>(row: &[T]) -> T {
    let mut acc = [T::NEG_INFINITY; LANES];
    let mut chunks = row.chunks_exact(LANES);
    for c in &mut chunks {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a = if v > *a { v } else { *a };
        }
    }
    let m = chunks
        .remainder()
        .iter()
        .fold(T::NEG_INFINITY, |m, &v| if v > m { v } else { m });
    acc.iter().fold(m, |m, &v| if v > m { v } else { m })
}

/// ‖a ⊙ x‖.
#[inline(always)]
fn norm<T: Real>(a: &[T], x: &[T]) -> T {
    lane_sum(a.len(), |j| {
        let y = a[j] * x[j];
        y * y
    })
    .sqrt()
}

/// Forward pass on `b` rows of `x` (after `s.prepare(b, d, _)`): leaves `H` in `s.h`, `A` in
/// `s.a` and `N` in `s.nb`.
pub(crate) fn forward_into<T: Real>(p: &[T], d: usize, x: &[T], b: usize, s: &mut Scratch<T>) {
    let par = Par::for_batch(b, d);
    let (w1, b1, w2, b2) = split(p, d);
    let x = &x[..b * d];
    let h = &mut s.h[..b * d];
    fill_rows(h, b1);
    matmul(h, b, d, d, x, d, 1, w1, 1, d, true, par.gemm);
    rows(h, d, par.rows, |_, row| {
        row.iter_mut().for_each(|v| *v = v.tanh_fast())
    });
    let a = &mut s.a[..b * d];
    fill_rows(a, b2);
    matmul(a, b, d, d, h, d, 1, w2, 1, d, true, par.gemm);
    rows(a, d, par.rows, |_, row| {
        let m = row_max(row);
        row.iter_mut().for_each(|v| *v = (*v - m).exp_fast());
        let sum = lane_sum(row.len(), |j| row[j]);
        row.iter_mut().for_each(|v| *v /= sum);
    });
    let a = &s.a[..b * d];
    rows(&mut s.nb[..b * d], d, par.rows, |i, row| {
        let (ar, xr) = (&a[i * d..(i + 1) * d], &x[i * d..(i + 1) * d]);
        let r = norm(ar, xr);
        for j in 0..d {
            row[j] = ar[j] * xr[j] / r;
        }
    });
}

/// Contrastive loss of the reference from `g` = s·G (see the module docs); overwrites `g`
/// with ∂loss/∂G.
fn contrastive<T: Real>(
    g: &mut [T],
    labels: &[u32],
    c: usize,
    scale: T,
    cnt: &mut [usize],
    cmax: &mut [T],
    csum: &mut [T],
) -> T {
    let b = labels.len();
    for &y in labels {
        cnt[y as usize] += 1;
    }
    cmax.fill(T::NEG_INFINITY);
    csum.fill(T::ZERO);
    for row in g.chunks_exact(c) {
        for k in 0..c {
            cmax[k] = cmax[k].max(row[k]);
        }
    }
    for row in g.chunks_exact(c) {
        for k in 0..c {
            csum[k] += (row[k] - cmax[k]).exp();
        }
    }
    // Column log-sum-exp per class: the text-side CE of every sample of that class.
    let col_lse: Vec<T> = (0..c).map(|k| cmax[k] + csum[k].ln()).collect();
    let counts: Vec<T> = cnt.iter().map(|&n| T::from_f64(n as f64)).collect();
    let coef = scale / T::from_f64(2.0 * b as f64);
    let two = T::from_f64(2.0);
    let mut total = T::ZERO;
    for (row, &y) in g.chunks_exact_mut(c).zip(labels) {
        let y = y as usize;
        let mut m = T::NEG_INFINITY;
        for k in 0..c {
            if cnt[k] > 0 {
                m = m.max(row[k]);
            }
        }
        let mut sum = T::ZERO;
        for k in 0..c {
            if cnt[k] > 0 {
                sum += counts[k] * (row[k] - m).exp();
            }
        }
        let lse = m + sum.ln();
        // Image-side CE of this row plus text-side CE of this row's column.
        total += (lse - row[y]) + (col_lse[y] - row[y]);
        for k in 0..c {
            let mut dg = if cnt[k] > 0 {
                counts[k] * (row[k] - m).exp() / sum
                    + counts[k] * (row[k] - cmax[k]).exp() / csum[k]
            } else {
                T::ZERO
            };
            if k == y {
                dg -= two;
            }
            row[k] = coef * dg;
        }
    }
    total / T::from_f64(2.0 * b as f64)
}

/// Cross-entropy of `g` = s·G against the labels (mean over the batch); overwrites `g` with
/// ∂loss/∂G.
fn class_ce<T: Real>(g: &mut [T], labels: &[u32], c: usize, scale: T) -> T {
    let b = labels.len();
    let coef = scale / T::from_f64(b as f64);
    let mut total = T::ZERO;
    for (row, &y) in g.chunks_exact_mut(c).zip(labels) {
        let y = y as usize;
        let m = row.iter().fold(T::NEG_INFINITY, |m, &v| m.max(v));
        let sum: T = row.iter().map(|&v| (v - m).exp()).sum();
        total += m + sum.ln() - row[y];
        for (k, v) in row.iter_mut().enumerate() {
            let mut dg = (*v - m).exp() / sum;
            if k == y {
                dg -= T::ONE;
            }
            *v = coef * dg;
        }
    }
    total / T::from_f64(b as f64)
}

/// Loss of one batch and its gradient (written to `grad`, same layout as `p`).
/// `labels.len()` is the batch size B ≥ 1; `scale` is s = exp(logit_scale).
#[allow(clippy::too_many_arguments)]
pub(crate) fn loss_and_grad_into<T: Real>(
    p: &[T],
    d: usize,
    x: &[T],
    labels: &[u32],
    texts: &[T],
    c: usize,
    scale: T,
    loss: Loss,
    grad: &mut [T],
    s: &mut Scratch<T>,
) -> T {
    let b = labels.len();
    let par = Par::for_batch(b, d);
    s.prepare(b, d, c);
    forward_into(p, d, x, b, s);
    let x = &x[..b * d];
    let Scratch {
        h,
        a,
        nb,
        dz,
        g,
        cnt,
        cmax,
        csum,
    } = s;
    // G = N Tᵀ, then s·G.
    let g = &mut g[..b * c];
    matmul(g, b, c, d, nb, d, 1, texts, 1, d, false, Parallelism::None);
    g.iter_mut().for_each(|v| *v *= scale);
    let value = match loss {
        Loss::Contrastive => contrastive(g, labels, c, scale, cnt, cmax, csum),
        Loss::Class => class_ce(g, labels, c, scale),
    };
    // ∂N = ∂G · T  [B, d]
    matmul(dz, b, d, c, g, c, 1, texts, d, 1, false, Parallelism::None);
    // Through the normalisation, the product with X and the softmax: ∂Z, in place.
    let (a, nb_ro) = (&a[..b * d], &nb[..b * d]);
    rows(&mut dz[..b * d], d, par.rows, |i, row| {
        let (ar, xr, nr) = (
            &a[i * d..(i + 1) * d],
            &x[i * d..(i + 1) * d],
            &nb_ro[i * d..(i + 1) * d],
        );
        let r = norm(ar, xr);
        let dot = lane_sum(d, |j| nr[j] * row[j]);
        for j in 0..d {
            // ∂Y = (∂N − N (N·∂N)) / r, then ∂A = ∂Y ⊙ X.
            row[j] = (row[j] - nr[j] * dot) / r * xr[j];
        }
        let ad = lane_sum(d, |j| ar[j] * row[j]);
        for j in 0..d {
            row[j] = ar[j] * (row[j] - ad);
        }
    });
    let dz = &dz[..b * d];
    let (_, _, p_w2, _) = split(p, d);
    let (gw1, gb1, gw2, gb2) = split_mut(grad, d);
    column_sums(gb2, dz, d);
    // ∂W2 = ∂Zᵀ H
    matmul(gw2, d, d, b, dz, 1, d, h, d, 1, false, par.gemm);
    // ∂H = ∂Z W2, then ∂U = ∂H ⊙ (1 − H²), in the N buffer (N is no longer needed).
    let du = &mut nb[..b * d];
    matmul(du, b, d, d, dz, d, 1, p_w2, d, 1, false, par.gemm);
    let h = &h[..b * d];
    rows(du, d, par.rows, |i, row| {
        let hr = &h[i * d..(i + 1) * d];
        for j in 0..d {
            row[j] *= T::ONE - hr[j] * hr[j];
        }
    });
    column_sums(gb1, du, d);
    // ∂W1 = ∂Uᵀ X
    matmul(gw1, d, d, b, du, 1, d, x, d, 1, false, par.gemm);
    value
}

/// Class index of the best cosine similarity per row of `m` [B, d] (first on ties).
pub(crate) fn argmax_classes<T: Real>(
    m: &[T],
    b: usize,
    d: usize,
    texts: &[T],
    c: usize,
) -> Vec<u32> {
    let mut g = vec![T::ZERO; b * c];
    matmul(
        &mut g,
        b,
        c,
        d,
        m,
        d,
        1,
        texts,
        1,
        d,
        false,
        Parallelism::None,
    );
    g.chunks_exact(c)
        .map(|row| {
            let mut best = 0;
            for k in 1..c {
                if row[k] > row[best] {
                    best = k;
                }
            }
            best as u32
        })
        .collect()
}
