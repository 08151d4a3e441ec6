//! Random text-tower weights from a counter-based generator, so that a NumPy script can draw
//! the very same values without replaying a sequential stream (`tests/reference/
//! make_prompt_fixtures.py` does, for the ViT-B/32 text shape the fixtures cannot hold).
//!
//! Value i of tensor t under `seed`: `z = mix(seed·φ + t·2³² + i)` with φ = 0x9E3779B97F4A7C15
//! and `mix` SplitMix64's finaliser (add φ, then the two xor-shift-multiply rounds and a last
//! xor-shift), `u = (z >> 11) / 2⁵³`, value `centre + scale·(2u − 1)` in f64, stored as f32.
//! Tensors in order: 0 token table (scale 0.02), 1 positions (0.01), 2/3 final LN gain
//! (1 ± 0.1) and bias (0.02), 4 projection (1/√d); block l's tensors are 8 + 16·l + j for
//! j = LN1 gain, LN1 bias, QKV weight (1/√d), QKV bias, out weight (1/√d), out bias, LN2 gain,
//! LN2 bias, fc1 weight (1/√d), fc1 bias, fc2 weight (1/√intermediate), fc2 bias (biases 0.02).

use crate::weights::{BlockWeights, Norm, TextConfig, TextWeights};

const PHI: u64 = 0x9E37_79B9_7F4A_7C15;

fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(PHI);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// `count` values of tensor `t`: `centre + scale·(2u − 1)` (see the module header).
pub fn counter_uniform(seed: u64, t: u64, count: usize, centre: f64, scale: f64) -> Vec<f32> {
    let base = seed.wrapping_mul(PHI).wrapping_add(t << 32);
    (0..count as u64)
        .map(|i| {
            let u = (mix(base.wrapping_add(i)) >> 11) as f64 / (1u64 << 53) as f64;
            (centre + scale * (2.0 * u - 1.0)) as f32
        })
        .collect()
}

/// A random tower of `config`'s shape, with a projection.
pub fn random_text_weights(config: &TextConfig, seed: u64) -> (TextWeights, Vec<BlockWeights>) {
    let (d, f, e) = (
        config.hidden_size,
        config.intermediate_size,
        config.projection_dim,
    );
    let (v, p) = (config.vocab_size, config.max_position_embeddings);
    let draw =
        |t: u64, n: usize, centre: f64, scale: f64| counter_uniform(seed, t, n, centre, scale);
    let gain = |t: u64| draw(t, d, 1.0, 0.1);
    let bias = |t: u64, n: usize| draw(t, n, 0.0, 0.02);
    let inv = |n: usize| 1.0 / (n as f64).sqrt();
    let text = TextWeights {
        tokens: draw(0, v * d, 0.0, 0.02),
        positions: draw(1, p * d, 0.0, 0.01),
        final_norm: Norm {
            weight: gain(2),
            bias: bias(3, d),
        },
        projection: Some(draw(4, e * d, 0.0, inv(d))),
    };
    let blocks = (0..config.num_hidden_layers as u64)
        .map(|l| {
            let t = 8 + 16 * l;
            BlockWeights {
                ln1: Norm {
                    weight: gain(t),
                    bias: bias(t + 1, d),
                },
                qkv_weight: draw(t + 2, 3 * d * d, 0.0, inv(d)),
                qkv_bias: bias(t + 3, 3 * d),
                out_weight: draw(t + 4, d * d, 0.0, inv(d)),
                out_bias: bias(t + 5, d),
                ln2: Norm {
                    weight: gain(t + 6),
                    bias: bias(t + 7, d),
                },
                fc1_weight: draw(t + 8, f * d, 0.0, inv(d)),
                fc1_bias: bias(t + 9, f),
                fc2_weight: draw(t + 10, d * f, 0.0, inv(f)),
                fc2_bias: bias(t + 11, d),
            }
        })
        .collect();
    (text, blocks)
}
