//! One client's adapter parameters, flat in a fixed layout.

use super::real::Real;
use anyhow::{Result, bail, ensure};

/// Number of scalars in one adapter of feature width `dim`: `2·dim² + 2·dim`.
pub fn param_count(dim: usize) -> usize {
    2 * dim * dim + 2 * dim
}

/// Offsets of the four tensors inside a flat parameter vector of width `dim`:
/// `[W1 (dim×dim) | b1 (dim) | W2 (dim×dim) | b2 (dim)]`, weights `[out, in]` row-major as
/// `nn.Linear` stores them. The CPU trainer stores K clients as `[K, param_count(dim)]`
/// with this layout per row; a device backend uses the same layout.
pub(crate) fn split<T>(p: &[T], d: usize) -> (&[T], &[T], &[T], &[T]) {
    let (w1, rest) = p.split_at(d * d);
    let (b1, rest) = rest.split_at(d);
    let (w2, b2) = rest.split_at(d * d);
    (w1, b1, w2, b2)
}

pub(crate) fn split_mut<T>(p: &mut [T], d: usize) -> (&mut [T], &mut [T], &mut [T], &mut [T]) {
    let (w1, rest) = p.split_at_mut(d * d);
    let (b1, rest) = rest.split_at_mut(d);
    let (w2, b2) = rest.split_at_mut(d * d);
    (w1, b1, w2, b2)
}

/// The FedCLIP image adapter `softmax(W2 · tanh(W1 · x + b1) + b2)` of width `dim`, i.e.
/// `nn.Sequential(Linear(d, d), Tanh(), Linear(d, d), Softmax(dim=1))`. Gradients use the
/// same type and layout.
#[derive(Clone, Debug, PartialEq)]
pub struct AdapterParams<T: Real = f32> {
    dim: usize,
    data: Vec<T>,
}

impl<T: Real> AdapterParams<T> {
    /// All zeros (a uniform attention: the adapter then leaves features unchanged).
    pub fn zeros(dim: usize) -> Self {
        AdapterParams {
            dim,
            data: vec![T::ZERO; param_count(dim)],
        }
    }

    /// From the four tensors: `w1`, `w2` `[dim, dim]` (`[out, in]`), `b1`, `b2` `[dim]`.
    pub fn from_parts(dim: usize, w1: &[T], b1: &[T], w2: &[T], b2: &[T]) -> Result<Self> {
        ensure!(dim > 0, "adapter dim must be positive");
        for (name, t, want) in [
            ("w1", w1, dim * dim),
            ("b1", b1, dim),
            ("w2", w2, dim * dim),
            ("b2", b2, dim),
        ] {
            if t.len() != want {
                bail!(
                    "adapter {name} has {} values, expected {want} for dim {dim}",
                    t.len()
                );
            }
        }
        let mut data = Vec::with_capacity(param_count(dim));
        for t in [w1, b1, w2, b2] {
            data.extend_from_slice(t);
        }
        Ok(AdapterParams { dim, data })
    }

    /// From a flat vector in the layout of [`param_count`] (`[W1 | b1 | W2 | b2]`).
    pub fn from_flat(dim: usize, data: Vec<T>) -> Result<Self> {
        ensure!(dim > 0, "adapter dim must be positive");
        ensure!(
            data.len() == param_count(dim),
            "flat adapter parameters have {} values, expected {} for dim {dim}",
            data.len(),
            param_count(dim)
        );
        Ok(AdapterParams { dim, data })
    }

    pub fn dim(&self) -> usize {
        self.dim
    }
    /// The flat `[W1 | b1 | W2 | b2]` vector.
    pub fn as_slice(&self) -> &[T] {
        &self.data
    }
    pub fn as_mut_slice(&mut self) -> &mut [T] {
        &mut self.data
    }
    pub fn into_vec(self) -> Vec<T> {
        self.data
    }
    pub fn w1(&self) -> &[T] {
        split(&self.data, self.dim).0
    }
    pub fn b1(&self) -> &[T] {
        split(&self.data, self.dim).1
    }
    pub fn w2(&self) -> &[T] {
        split(&self.data, self.dim).2
    }
    pub fn b2(&self) -> &[T] {
        split(&self.data, self.dim).3
    }
    /// `(w1, b1, w2, b2)`, mutable.
    pub fn parts_mut(&mut self) -> (&mut [T], &mut [T], &mut [T], &mut [T]) {
        split_mut(&mut self.data, self.dim)
    }

    /// The same parameters in another float type.
    pub fn cast<U: Real>(&self) -> AdapterParams<U> {
        AdapterParams {
            dim: self.dim,
            data: self.data.iter().map(|&v| U::from_f64(v.to_f64())).collect(),
        }
    }
}

impl AdapterParams<f32> {
    /// PyTorch `nn.Linear`'s default initialisation: weights and biases uniform in
    /// `±1/√dim`, drawn from our own seeded generator (not torch's stream).
    pub fn init(dim: usize, seed: u64) -> Self {
        let bound = 1.0 / (dim as f64).sqrt();
        let mut rng = SplitMix64(seed);
        let data = (0..param_count(dim))
            .map(|_| ((2.0 * rng.unit() - 1.0) * bound) as f32)
            .collect();
        AdapterParams { dim, data }
    }
}

/// Uniform draws in [0, 1) from the seeded generator of [`AdapterParams::init`], for other
/// families' initialisations.
pub fn seeded_unit_stream(seed: u64) -> impl FnMut() -> f64 {
    let mut rng = SplitMix64(seed);
    move || rng.unit()
}

/// SplitMix64: a small, well-mixed, seedable generator.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1), 53 bits.
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}
