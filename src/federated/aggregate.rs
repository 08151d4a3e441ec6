//! Free helpers the server side of strategies share (Flower's `strategy_utils`).

use super::config::Aggregate;

/// The mean of the rows `slots` of `params` (`[K, p]`), weighted by `weights`, summed in f64
/// in slot order and rounded to f32 once.
pub fn weighted_mean(params: &[f32], p: usize, slots: &[usize], weights: &[f64]) -> Vec<f32> {
    let total: f64 = weights.iter().sum();
    let mut avg = vec![0f64; p];
    for (&s, w) in slots.iter().zip(weights) {
        for (a, &v) in avg.iter_mut().zip(&params[s * p..(s + 1) * p]) {
            *a += w / total * v as f64;
        }
    }
    avg.into_iter().map(|v| v as f32).collect()
}

/// Each sampled client's weight: 1, or its number of training samples.
pub fn client_weights(how: Aggregate, slots: &[usize], train_sizes: &[usize]) -> Vec<f64> {
    slots
        .iter()
        .map(|&s| match how {
            Aggregate::Uniform => 1.0,
            Aggregate::Weighted => train_sizes[s] as f64,
        })
        .collect()
}

/// The plain mean of every row of `params` (`[K, p]`), in f64: what a client outside the
/// federation deploys under `local`.
pub fn mean_of_rows(params: &[f32], p: usize) -> Vec<f32> {
    let k = params.len() / p;
    let mut m = vec![0f64; p];
    for row in params.chunks_exact(p) {
        m.iter_mut()
            .zip(row)
            .for_each(|(a, &v)| *a += v as f64 / k as f64);
    }
    m.into_iter().map(|v| v as f32).collect()
}
