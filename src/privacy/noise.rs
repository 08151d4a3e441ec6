//! The noise of the DP mechanisms: ChaCha20 (a cryptographically secure generator) seeded
//! from the operating system, or from `--dp-seed` for a reproducible research run. Gaussian
//! samples are drawn in f64 by Box–Muller from 53-bit uniforms. The stream's whole state
//! (key and position) round-trips through a checkpoint, so `--resume` continues it.

use anyhow::{Result, ensure};
use rand_chacha::ChaCha20Rng;
use rand_core::{RngCore, SeedableRng};

pub struct NoiseSource {
    rng: ChaCha20Rng,
}

/// Values in a saved state: the 32-byte key and the 128-bit word position, as 16-bit
/// pieces, each stored exactly as an f32 (checkpoints hold f32 tensors).
const SAVED_LEN: usize = 16 + 8;

impl NoiseSource {
    /// A stream whose key comes from the operating system's generator.
    pub fn from_os() -> Result<Self> {
        let rng = ChaCha20Rng::try_from_os_rng()
            .map_err(|e| anyhow::anyhow!("cannot seed the DP noise from the OS: {e}"))?;
        Ok(NoiseSource { rng })
    }

    /// A reproducible stream (`--dp-seed`): the key is the seed expanded by ChaCha's seeding.
    pub fn from_seed(seed: u64) -> Self {
        NoiseSource {
            rng: ChaCha20Rng::seed_from_u64(seed),
        }
    }

    /// Uniform in [0, 1) with 53 random bits.
    pub fn uniform(&mut self) -> f64 {
        (self.rng.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// One draw of N(0, σ²): Box–Muller's cosine branch, from two fresh uniforms (no spare
    /// is kept, so the state is the stream position alone).
    pub fn gaussian(&mut self, sigma: f64) -> f64 {
        let u1 = 1.0 - self.uniform(); // in (0, 1]: the log is finite
        let u2 = self.uniform();
        sigma * (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }

    /// True with probability p (Poisson sampling of a unit).
    pub fn bernoulli(&mut self, p: f64) -> bool {
        self.uniform() < p
    }

    /// The key and position, for a checkpoint.
    pub fn save(&self) -> Vec<f32> {
        let key = self.rng.get_seed();
        let pos = self.rng.get_word_pos();
        let key_pieces = key
            .chunks_exact(2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]));
        let pos_pieces = (0..8).map(|i| (pos >> (16 * i)) as u16);
        key_pieces.chain(pos_pieces).map(f32::from).collect()
    }

    /// The stream [`NoiseSource::save`] saved, at the same position.
    pub fn load(saved: &[f32]) -> Result<Self> {
        ensure!(
            saved.len() == SAVED_LEN
                && saved
                    .iter()
                    .all(|&v| v.fract() == 0.0 && (0.0..65536.0).contains(&v)),
            "the checkpoint's DP noise state is damaged"
        );
        let pieces: Vec<u16> = saved.iter().map(|&v| v as u16).collect();
        let mut key = [0u8; 32];
        for (dst, piece) in key.chunks_exact_mut(2).zip(&pieces[..16]) {
            dst.copy_from_slice(&piece.to_le_bytes());
        }
        let pos = (pieces[16..].iter().enumerate())
            .fold(0u128, |acc, (i, &p)| acc | (u128::from(p) << (16 * i)));
        let mut rng = ChaCha20Rng::from_seed(key);
        rng.set_word_pos(pos);
        Ok(NoiseSource { rng })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_saved_stream_continues_where_it_stopped() {
        let mut a = NoiseSource::from_seed(7);
        for _ in 0..13 {
            a.gaussian(1.0);
        }
        let mut b = NoiseSource::load(&a.save()).unwrap();
        for _ in 0..50 {
            assert_eq!(a.gaussian(2.5).to_bits(), b.gaussian(2.5).to_bits());
        }
        assert!(NoiseSource::load(&[0.5; SAVED_LEN]).is_err());
        assert!(NoiseSource::load(&[1.0; 3]).is_err());
    }

    #[test]
    fn os_seeded_streams_differ() {
        let (mut a, mut b) = (
            NoiseSource::from_os().unwrap(),
            NoiseSource::from_os().unwrap(),
        );
        assert_ne!(a.uniform(), b.uniform());
    }
}
