//! Adam, AdamW and SGD with momentum on flat parameter vectors, with `torch.optim.Adam` /
//! `torch.optim.AdamW` / `torch.optim.SGD` semantics (Adam non-amsgrad; SGD with dampening 0,
//! no Nesterov; none maximising): scalars (bias corrections, step size) in f64 as Python
//! computes them, element-wise work in the parameter type in torch's operation order.

use super::real::Real;

/// Which update rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OptimizerKind {
    /// `torch.optim.Adam`: L2 penalty coupled into the gradient, `g ← g + wd·θ`.
    Adam,
    /// `torch.optim.AdamW`: decoupled decay, `θ ← θ·(1 − lr·wd)` before the Adam step.
    AdamW,
    /// `torch.optim.SGD` with momentum μ (dampening 0, no Nesterov): `d = g + wd·θ`;
    /// `buf = d` on the first step after a reset, else `buf = μ·buf + d`; `θ ← θ − lr·buf`.
    /// The momentum buffer lives where Adam keeps its first moment; the second is unused.
    Sgd,
}

/// Optimiser hyper-parameters. [`Default`] is FedCLIP's reference setting: Adam, lr 5e-5,
/// betas (0.9, 0.98), eps 1e-6, weight decay 0.2 (and CoOp's SGD momentum 0.9, which Adam
/// does not use).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct OptimizerConfig {
    pub kind: OptimizerKind,
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    /// SGD's momentum μ in [0, 1) (unused by Adam / AdamW).
    pub momentum: f64,
}

impl Default for OptimizerConfig {
    fn default() -> Self {
        OptimizerConfig {
            kind: OptimizerKind::Adam,
            lr: 5e-5,
            beta1: 0.9,
            beta2: 0.98,
            eps: 1e-6,
            weight_decay: 0.2,
            momentum: 0.9,
        }
    }
}

/// One optimiser step number `t` (1 for the first step after a reset) on `theta` with
/// gradient `grad` and moment buffers `m`, `v` (all the same length; SGD uses `m` as its
/// momentum buffer and leaves `v` alone).
pub(crate) fn step<T: Real>(
    cfg: &OptimizerConfig,
    t: u64,
    theta: &mut [T],
    grad: &[T],
    m: &mut [T],
    v: &mut [T],
) {
    assert!(t >= 1);
    assert!(grad.len() == theta.len() && m.len() == theta.len() && v.len() == theta.len());
    if cfg.kind == OptimizerKind::Sgd {
        return sgd_step(cfg, t, theta, grad, m);
    }
    let bias_correction1 = 1.0 - cfg.beta1.powf(t as f64);
    let bias_correction2 = 1.0 - cfg.beta2.powf(t as f64);
    let neg_step_size = T::from_f64(-(cfg.lr / bias_correction1));
    let bc2_sqrt = T::from_f64(bias_correction2.sqrt());
    let one_minus_beta1 = T::from_f64(1.0 - cfg.beta1);
    let beta2 = T::from_f64(cfg.beta2);
    let one_minus_beta2 = T::from_f64(1.0 - cfg.beta2);
    let eps = T::from_f64(cfg.eps);
    let update = |p: &mut T, g: T, m: &mut T, v: &mut T| {
        // exp_avg.lerp_(grad, 1 − β1): torch's lerp for weight < 0.5 is `self + w·(end − self)`.
        *m += one_minus_beta1 * (g - *m);
        // exp_avg_sq.mul_(β2).addcmul_(grad, grad, value = 1 − β2)
        *v = *v * beta2 + one_minus_beta2 * g * g;
        // denom = sqrt(v) / sqrt(bc2) + eps; param.addcdiv_(m, denom, value = −lr / bc1)
        let denom = v.sqrt() / bc2_sqrt + eps;
        *p += neg_step_size * *m / denom;
    };
    let all = theta
        .iter_mut()
        .zip(grad)
        .zip(m.iter_mut())
        .zip(v.iter_mut());
    match cfg.kind {
        OptimizerKind::Adam => {
            let wd = T::from_f64(cfg.weight_decay);
            // grad.add(param, alpha = wd)
            all.for_each(|(((p, &g), m), v)| update(p, g + wd * *p, m, v));
        }
        OptimizerKind::AdamW => {
            // param.mul_(1 − lr·wd), then the Adam step on the raw gradient.
            let decay = T::from_f64(1.0 - cfg.lr * cfg.weight_decay);
            all.for_each(|(((p, &g), m), v)| {
                *p *= decay;
                update(p, g, m, v)
            });
        }
        OptimizerKind::Sgd => unreachable!("stepped above"),
    }
}

/// `torch.optim.SGD`'s step (dampening 0, no Nesterov) with momentum buffer `buf`.
fn sgd_step<T: Real>(cfg: &OptimizerConfig, t: u64, theta: &mut [T], grad: &[T], buf: &mut [T]) {
    let wd = T::from_f64(cfg.weight_decay);
    let momentum = T::from_f64(cfg.momentum);
    let neg_lr = T::from_f64(-cfg.lr);
    let first = t == 1;
    for ((p, &g), b) in theta.iter_mut().zip(grad).zip(buf.iter_mut()) {
        // d_p = grad.add(param, alpha = wd)
        let d = g + wd * *p;
        // buf = clone(d_p) on the first step, else buf.mul_(μ).add_(d_p)
        *b = if first { d } else { *b * momentum + d };
        // param.add_(buf, alpha = −lr)
        *p += neg_lr * *b;
    }
}
