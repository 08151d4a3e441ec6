//! Rényi-DP accountant for the Poisson-subsampled Gaussian mechanism, composed over steps and
//! converted to (ε, δ) the way dp-accounting's `RdpAccountant` does (its default orders, its
//! log-space A_α sums for integer and fractional orders, and its ε conversion: Proposition 12
//! of Canonne, Kamath & Steinke 2020 with the KL shortcut). Written from the math
//! (Mironov, Talwar & Zhang 2019, "Rényi DP of the Sampled Gaussian Mechanism").

/// The accountant's name as summaries report it.
pub const ACCOUNTANT_NAME: &str = "rdp (dp-accounting RdpAccountant orders and conversion)";

/// dp-accounting's DEFAULT_RDP_ORDERS: 1.1, 1.2, …, 10.9, then 11 … 63, then 128 … 1024.
pub fn default_orders() -> Vec<f64> {
    let tenths = (1..100).map(|x| 1.0 + x as f64 / 10.0);
    let integers = (11..64).map(f64::from);
    let large = [128.0, 256.0, 512.0, 1024.0];
    tenths.chain(integers).chain(large).collect()
}

/// Fractional orders sum at most this many terms of each series (as dp-accounting); an order
/// that has not converged by then is left out (its RDP is +∞).
const MAX_FRACTIONAL_TERMS: usize = 1000;

/// log(e^a + e^b) without overflow.
fn log_add(a: f64, b: f64) -> f64 {
    let (lo, hi) = if a < b { (a, b) } else { (b, a) };
    if lo == f64::NEG_INFINITY {
        return hi;
    }
    (lo - hi).exp().ln_1p() + hi
}

/// log |Γ(x)|, as scipy's gammaln (which the reference uses also at negative non-integers).
fn ln_abs_gamma(x: f64) -> f64 {
    libm::lgamma_r(x).0
}

/// log of the (generalised) binomial coefficient n choose k.
fn log_binomial(n: f64, k: f64) -> f64 {
    ln_abs_gamma(n + 1.0) - ln_abs_gamma(k + 1.0) - ln_abs_gamma(n - k + 1.0)
}

/// log erfc(x), accurate where erfc underflows: past x = 20 the asymptotic (Laurent) series
/// of log erfc at infinity, whose first omitted term is below 1e-11 there.
fn log_erfc(x: f64) -> f64 {
    if x <= 20.0 {
        return libm::erfc(x).ln();
    }
    let x2 = x * x;
    -std::f64::consts::PI.ln() / 2.0 - x.ln() - x2 - 0.5 / x2 + 0.625 / (x2 * x2)
        - 37.0 / 24.0 / (x2 * x2 * x2)
        + 353.0 / 64.0 / (x2 * x2 * x2 * x2)
}

/// log A_α for an integer order α: the binomial expansion of E[(μ1/μ0)^α] for the mixture
/// (1 − q) N(0, σ²) + q N(1, σ²) against N(0, σ²).
fn log_a_integer(q: f64, sigma: f64, alpha: u32) -> f64 {
    let log_q = q.ln();
    let log_1mq = (-q).ln_1p();
    let two_var = 2.0 * sigma * sigma;
    let a = f64::from(alpha);
    (0..=alpha).fold(f64::NEG_INFINITY, |acc, i| {
        let i = f64::from(i);
        let log_coef = log_binomial(a, i) + i * log_q + (a - i) * log_1mq;
        log_add(acc, log_coef + (i * i - i) / two_var)
    })
}

/// log A_α for a fractional order: the two half-line integrals of Sec. 3.3 of Mironov et al.,
/// each a series summed until both terms fall and are 30 nats below the total.
fn log_a_fractional(q: f64, sigma: f64, alpha: f64) -> f64 {
    let var = sigma * sigma;
    let z0 = var * (1.0 / q - 1.0).ln() + 0.5;
    let log_q = q.ln();
    let log_1mq = (-q).ln_1p();
    let log_half = 0.5f64.ln();
    let erfc_scale = std::f64::consts::SQRT_2 * sigma;
    let (mut log_a0, mut log_a1) = (f64::NEG_INFINITY, f64::NEG_INFINITY);
    let (mut last_s0, mut last_s1) = (f64::NEG_INFINITY, f64::NEG_INFINITY);
    for i in 0..MAX_FRACTIONAL_TERMS {
        let i = i as f64;
        let j = alpha - i;
        let log_coef = log_binomial(alpha, i);
        let log_t0 = log_coef + i * log_q + j * log_1mq;
        let log_t1 = log_coef + j * log_q + i * log_1mq;
        let log_e0 = log_half + log_erfc((i - z0) / erfc_scale);
        let log_e1 = log_half + log_erfc((z0 - j) / erfc_scale);
        let log_s0 = log_t0 + (i * i - i) / (2.0 * var) + log_e0;
        let log_s1 = log_t1 + (j * j - j) / (2.0 * var) + log_e1;
        log_a0 = log_add(log_a0, log_s0);
        log_a1 = log_add(log_a1, log_s1);
        let total = log_add(log_a0, log_a1);
        if log_s0 < last_s0 && log_s1 < last_s1 && log_s0.max(log_s1) < total - 30.0 {
            return total;
        }
        last_s0 = log_s0;
        last_s1 = log_s1;
    }
    f64::INFINITY
}

/// RDP at order α of one step of the Poisson-subsampled Gaussian mechanism with sampling rate
/// q ∈ [0, 1] and noise multiplier z ≥ 0 (noise standard deviation / L2 sensitivity).
pub fn rdp_one_step(q: f64, z: f64, alpha: f64) -> f64 {
    if q == 0.0 {
        return 0.0;
    }
    if alpha.is_infinite() || z == 0.0 {
        return f64::INFINITY;
    }
    if q == 1.0 {
        return alpha / (2.0 * z * z);
    }
    let log_a = if alpha.fract() == 0.0 {
        log_a_integer(q, z, alpha as u32)
    } else {
        log_a_fractional(q, z, alpha)
    };
    log_a / (alpha - 1.0)
}

/// ε of (ε, δ)-DP implied by RDP values at the given orders: the smallest over orders of
/// r + log(1 − 1/α) − log(δα)/(α − 1), 0 where the KL bound √(1 − e^−r) ≤ δ already holds.
pub fn epsilon_from_rdp(orders: &[f64], rdp: &[f64], delta: f64) -> f64 {
    let per_order = orders.iter().zip(rdp).map(|(&a, &r)| {
        if r < 0.0 || delta * delta + (-r).exp_m1() > 0.0 {
            0.0
        } else if a > 1.01 {
            r + (-1.0 / a).ln_1p() - (delta * a).ln() / (a - 1.0)
        } else {
            f64::INFINITY
        }
    });
    per_order.fold(f64::INFINITY, f64::min).max(0.0)
}

/// ε after `steps` compositions of the Poisson-subsampled Gaussian mechanism (q, z), at δ.
pub fn epsilon(q: f64, z: f64, steps: u64, delta: f64) -> f64 {
    let orders = default_orders();
    let rdp: Vec<f64> = orders
        .iter()
        .map(|&a| steps as f64 * rdp_one_step(q, z, a))
        .collect();
    epsilon_from_rdp(&orders, &rdp, delta)
}
