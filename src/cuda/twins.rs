//! CPU twins of the CUDA kernels that have no single counterpart in `crate::model::ops`: each
//! is built from the CPU engine's own functions where one exists, so a kernel test compares
//! the GPU against the code the CPU engine runs. LayerNorm and attention use
//! [`crate::model::ops::layer_norm`] / [`crate::model::ops::attention`] directly.

use crate::model::{im2col, ops};
use crate::weights::Activation;
use half::f16;

/// Rounds each value to fp16 and back: what a kernel reading fp16 sees.
pub fn round_f16(x: &[f32]) -> Vec<f32> {
    x.iter().map(|&v| f16::from_f32(v).to_f32()).collect()
}

pub fn to_f16(x: &[f32]) -> Vec<f16> {
    x.iter().map(|&v| f16::from_f32(v)).collect()
}

pub fn from_f16(x: &[f16]) -> Vec<f32> {
    x.iter().map(|v| v.to_f32()).collect()
}

/// kernels/gemm.cu: `act(a·wᵀ + bias) + resid`, `a` `[m, k]`, `w` `[n, k]`, in f32 — as
/// `EncoderLayer::forward` composes `Linear::forward`, `ops::activate` and
/// `ops::add_in_place`.
#[allow(clippy::too_many_arguments)]
pub fn gemm_epilogue(
    a: &[f32],
    m: usize,
    k: usize,
    w: &[f32],
    n: usize,
    bias: Option<&[f32]>,
    act: Option<Activation>,
    resid: Option<&[f32]>,
) -> Vec<f32> {
    let mut out = ops::linear(a, m, k, w, bias, n);
    if let Some(act) = act {
        ops::activate(&mut out, act);
    }
    if let Some(r) = resid {
        ops::add_in_place(&mut out, r);
    }
    out
}

/// kernels/embed.cu `fc_im2col`: [`im2col`] with each row zero-padded to `kp` columns.
pub fn im2col_padded(
    pixels: &[f32],
    batch: usize,
    channels: usize,
    size: usize,
    patch: usize,
    kp: usize,
) -> Vec<f32> {
    let k = channels * patch * patch;
    let rows = im2col(pixels, batch, channels, size, patch);
    let mut out = vec![0.0f32; rows.len() / k * kp];
    for (o, r) in out.chunks_exact_mut(kp).zip(rows.chunks_exact(k)) {
        o[..k].copy_from_slice(r);
    }
    out
}

/// kernels/embed.cu `fc_vision_embed`: the class token and patch embeddings plus positions,
/// as `VisionTower::forward` assembles them.
pub fn vision_embed(
    patches: &[f32],
    cls: &[f32],
    pos: &[f32],
    batch: usize,
    tokens: usize,
    dim: usize,
) -> Vec<f32> {
    let mut h = vec![0.0f32; batch * tokens * dim];
    for (b, img) in h.chunks_exact_mut(tokens * dim).enumerate() {
        img[..dim].copy_from_slice(cls);
        img[dim..].copy_from_slice(&patches[b * (tokens - 1) * dim..(b + 1) * (tokens - 1) * dim]);
        img.iter_mut().zip(pos).for_each(|(x, p)| *x += p);
    }
    h
}

/// kernels/embed.cu `fc_text_embed`: token plus position embeddings, as `TextTower::forward`.
pub fn text_embed(ids: &[u32], table: &[f32], pos: &[f32], seq: usize, dim: usize) -> Vec<f32> {
    let mut h = vec![0.0f32; ids.len() * dim];
    for (i, row) in h.chunks_exact_mut(dim).enumerate() {
        let (t, p) = (ids[i] as usize, i % seq);
        for ((x, a), b) in row
            .iter_mut()
            .zip(&table[t * dim..][..dim])
            .zip(&pos[p * dim..][..dim])
        {
            *x = a + b;
        }
    }
    h
}

/// kernels/embed.cu `fc_l2_normalize`: each row divided by max(‖row‖₂, eps), as torch's
/// `F.normalize` (which the adapter and zero-shot scoring apply to CLIP features).
pub fn l2_normalize(x: &[f32], dim: usize, eps: f32) -> Vec<f32> {
    let mut out = x.to_vec();
    for row in out.chunks_exact_mut(dim) {
        let norm = row.iter().map(|&v| (v as f64).powi(2)).sum::<f64>().sqrt() as f32;
        let inv = 1.0 / norm.max(eps);
        row.iter_mut().for_each(|v| *v *= inv);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn im2col_padded_pads_with_zeros() {
        // One 1-channel 4×4 image, 2×2 patches: 4 rows of 4 values, padded to 8.
        let pixels: Vec<f32> = (0..16).map(|v| v as f32).collect();
        let out = im2col_padded(&pixels, 1, 1, 4, 2, 8);
        assert_eq!(out.len(), 32);
        assert_eq!(&out[..8], &[0.0, 1.0, 4.0, 5.0, 0.0, 0.0, 0.0, 0.0]);
        assert_eq!(&out[8..12], &[2.0, 3.0, 6.0, 7.0]);
    }

    #[test]
    fn l2_normalize_gives_unit_rows_and_keeps_zero_rows() {
        let out = l2_normalize(&[3.0, 4.0, 0.0, 0.0], 2, 1e-12);
        assert_eq!(out, vec![0.6, 0.8, 0.0, 0.0]);
    }

    #[test]
    fn embeddings_add_positions() {
        let h = vision_embed(&[1.0, 2.0], &[10.0], &[100.0, 200.0, 300.0], 1, 3, 1);
        assert_eq!(h, vec![110.0, 201.0, 302.0]);
        let t = text_embed(&[1, 0], &[5.0, 7.0], &[0.5, 0.25], 2, 1);
        assert_eq!(t, vec![7.5, 5.25]);
    }
}
