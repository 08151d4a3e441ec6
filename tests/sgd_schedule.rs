//! `--optimizer sgd` and the round schedule (`--lr-schedule`, `--warmup-rounds`) against
//! PyTorch (tests/reference/make_sgd_schedule_fixtures.py: float64 autograd, torch.optim.SGD /
//! AdamW, torch's CosineAnnealingLR behind CoOp's constant warm-up): the linear probe trained
//! for a few rounds of two steps by the f32 [`HeadTrainer`], optimiser kept or re-created
//! per round, rates set per round by [`round_lr`] as the federated loop does.
//!
//! Error model. A gradient entry of the f32 head errs by δ = 8 ε32 √(B·d) · s (the heads
//! test's model: B·d-term accumulations of values bounded by the logit scale s). The loss
//! gradient of a softmax cross-entropy on [x̂, 1] (‖·‖² = 2) is 1-Lipschitz in the parameters
//! (its Hessian's norm is at most ½ · 2), so a parameter error of 2-norm E adds at most E to
//! the gradient's 2-norm; weight decay adds wd · E. SGD: the buffer's error (2-norm) is
//! e_b ← μ e_b + √P δ + (1 + wd) E, and E ← E + lr · e_b + 2 ε32 ‖θ‖ (rounding θ and the
//! buffer). Every entry is within E (∞-norm ≤ 2-norm); we allow 2 E. Adam / AdamW: a step
//! moves an entry by lr · m̂ / (√v̂ + eps), whose error is its gradient's relative error,
//! sign-like where |g| is small, so up to lr · min(2, 4 (δ + E) / |g|) per step with |g| the
//! smallest of the round's reference gradients of that entry (plus the coupled decay's wd·θ
//! for Adam), plus 2 ε32 |θ|; we allow twice the sum.

mod common;

use common::repo;
use fedclip::adapter::{AdapterBackend, ClientBatch, OptimizerConfig, OptimizerKind, TextFeatures};
use fedclip::federated::LrSchedule;
use fedclip::federated::schedule::round_lr;
use fedclip::heads::{HeadTrainer, LinearProbe};
use serde_json::Value;

const EPS32: f64 = f32::EPSILON as f64;

fn fixture() -> Value {
    let path = repo().join("tests/fixtures/heads/sgd_schedule.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

fn floats(v: &Value) -> Vec<f64> {
    (v.as_array().expect("an array").iter())
        .map(|x| x.as_f64().unwrap())
        .collect()
}

fn f32s(v: &Value) -> Vec<f32> {
    floats(v).iter().map(|&x| x as f32).collect()
}

fn schedule(v: &Value) -> LrSchedule {
    match v.as_str().unwrap() {
        "cosine" => LrSchedule::Cosine,
        "constant" => LrSchedule::Constant,
        other => panic!("schedule {other}"),
    }
}

fn optimizer(v: &Value) -> OptimizerConfig {
    let num = |k: &str| v[k].as_f64().unwrap();
    let kind = match v["kind"].as_str().unwrap() {
        "sgd" => OptimizerKind::Sgd,
        "adam" => OptimizerKind::Adam,
        "adamw" => OptimizerKind::AdamW,
        other => panic!("optimizer {other}"),
    };
    let base = OptimizerConfig {
        kind,
        lr: num("lr"),
        weight_decay: num("weight_decay"),
        ..OptimizerConfig::default()
    };
    match kind {
        OptimizerKind::Sgd => OptimizerConfig {
            momentum: num("momentum"),
            ..base
        },
        _ => OptimizerConfig {
            beta1: num("beta1"),
            beta2: num("beta2"),
            eps: num("eps"),
            ..base
        },
    }
}

fn norm(v: impl Iterator<Item = f64>) -> f64 {
    v.map(|x| x * x).sum::<f64>().sqrt()
}

/// The rates of [`round_lr`] equal torch's schedulers' to f64 rounding (torch steps the
/// cosine recursively, one rate from the last).
#[test]
fn round_rates_match_torchs_cosine_and_coops_constant_warmup() {
    let fx = fixture();
    for s in fx["schedules"].as_array().unwrap() {
        let rounds = s["rounds"].as_u64().unwrap() as u32;
        let warmup = s["warmup_rounds"].as_u64().unwrap() as u32;
        let warmup_lr = s["warmup_lr"].as_f64().unwrap();
        let want = floats(&s["rates"]);
        assert_eq!(want.len(), rounds as usize);
        for (r, &w) in want.iter().enumerate() {
            let got = round_lr(
                0.002,
                schedule(&s["schedule"]),
                warmup,
                warmup_lr,
                r as u32,
                rounds,
            );
            assert!(
                (got - w).abs() <= 1e-13 * w,
                "{s}: round {r}: rate {got:e}, torch {w:e}"
            );
        }
    }
}

/// One fixture case on the f32 trainer (client 0 trains; client 1 never has a batch).
fn check_case(fx: &Value, name: &str) {
    let case = &fx["cases"][name];
    let (d, c) = (
        fx["dim"].as_u64().unwrap() as usize,
        fx["classes"].as_u64().unwrap() as usize,
    );
    let logit_scale = fx["logit_scale"].as_f64().unwrap() as f32;
    let texts = TextFeatures::new(&f32s(&fx["texts"]), c, d).unwrap();
    let init = LinearProbe::init(&texts, logit_scale);
    let want_init = floats(&case["init"]);
    let p = init.len();
    for (g, w) in init.iter().zip(&want_init) {
        assert!(
            (*g as f64 - w).abs() <= 4.0 * EPS32 * w.abs(),
            "{name}: init"
        );
    }
    let opt = optimizer(&case["optimizer"]);
    let rows = [init.clone(), init.clone()].concat();
    let mut trainer = HeadTrainer::new(LinearProbe::new(d, c), rows, opt, 1).unwrap();
    let batches: Vec<(Vec<f32>, Vec<u32>)> = (fx["batches"].as_array().unwrap().iter())
        .map(|b| {
            let labels = (b["labels"].as_array().unwrap().iter())
                .map(|y| y.as_u64().unwrap() as u32)
                .collect();
            (f32s(&b["features"]), labels)
        })
        .collect();
    let b = batches[0].1.len();
    let rounds = case["rounds"].as_u64().unwrap() as u32;
    let (warmup, warmup_lr) = (
        case["warmup_rounds"].as_u64().unwrap() as u32,
        case["warmup_lr"].as_f64().unwrap(),
    );
    let keep = case["keep"].as_bool().unwrap();
    let per_round = fx["steps_per_round"].as_u64().unwrap() as usize;
    let rates = floats(&case["rates"]);
    let grads: Vec<Vec<f64>> = case["grads"]
        .as_array()
        .unwrap()
        .iter()
        .map(floats)
        .collect();
    let delta = 8.0 * EPS32 * ((b * d) as f64).sqrt() * (logit_scale as f64).exp();
    // The error bounds of the header: SGD's (2-norm) and Adam's (per entry).
    let (mut e2, mut eb2) = (0.0f64, 0.0f64);
    let mut e_entry = vec![0.0f64; p];
    let mut theta = want_init.clone();
    for (r, want) in case["params"].as_array().unwrap().iter().enumerate() {
        if !keep {
            trainer.reset();
        }
        let lr = round_lr(
            opt.lr,
            schedule(&case["schedule"]),
            warmup,
            warmup_lr,
            r as u32,
            rounds,
        );
        assert!(
            (lr - rates[r]).abs() <= 1e-13 * rates[r],
            "{name}: round {r} rate {lr} vs {}",
            rates[r]
        );
        trainer.set_lr(lr);
        for j in 0..per_round {
            let (x, y) = &batches[j % 2];
            let losses = trainer.step(&[Some(ClientBatch::new(x, y)), None]).unwrap();
            assert!(losses[0].is_some() && losses[1].is_none());
            let g = &grads[r * per_round + j];
            let theta_norm = norm(theta.iter().copied());
            match opt.kind {
                OptimizerKind::Sgd => {
                    eb2 = opt.momentum * eb2
                        + (p as f64).sqrt() * delta
                        + (1.0 + opt.weight_decay) * e2;
                    e2 += lr * eb2 + 2.0 * EPS32 * theta_norm;
                }
                _ => {
                    let step_err = delta + e2;
                    for i in 0..p {
                        let gi = match opt.kind {
                            OptimizerKind::Adam => g[i] + opt.weight_decay * theta[i],
                            _ => g[i],
                        }
                        .abs();
                        let per_step = if gi > 0.0 {
                            (4.0 * step_err / gi).min(2.0)
                        } else {
                            2.0
                        };
                        e_entry[i] += lr * per_step + 2.0 * EPS32 * theta[i].abs();
                    }
                    e2 = norm(e_entry.iter().copied());
                }
            }
        }
        let want = floats(want);
        let got = trainer.client_row(0).unwrap();
        let mut worst = 0.0f64;
        for i in 0..p {
            let diff = (got[i] as f64 - want[i]).abs();
            let tol = 2.0
                * if opt.kind == OptimizerKind::Sgd {
                    e2
                } else {
                    e_entry[i]
                };
            worst = worst.max(diff / tol);
            assert!(
                diff <= tol,
                "{name}: round {r}, entry {i}: got {}, torch {}, |diff| {diff:e} > tol {tol:e}",
                got[i],
                want[i]
            );
        }
        eprintln!("{name}: round {r}: worst |diff| / tol {worst:.3}");
        theta = want;
    }
    assert_eq!(
        trainer.client_row(1).unwrap(),
        init,
        "{name}: client 1 never stepped"
    );
}

#[test]
fn sgd_with_momentum_kept_across_rounds_under_cosine_and_warmup_matches_torch() {
    check_case(&fixture(), "sgd_cosine_warmup_kept");
}

#[test]
fn sgd_recreated_every_round_under_cosine_matches_torch() {
    check_case(&fixture(), "sgd_cosine_fresh");
}

#[test]
fn sgd_under_a_constant_schedule_after_warmup_matches_torch() {
    check_case(&fixture(), "sgd_constant_warmup_fresh");
}

#[test]
fn adamw_under_cosine_and_warmup_matches_torch() {
    check_case(&fixture(), "adamw_cosine_warmup_fresh");
}

#[test]
fn the_cuda_adapter_engine_refuses_sgd_naming_the_flags() {
    let sgd = OptimizerConfig {
        kind: OptimizerKind::Sgd,
        ..OptimizerConfig::default()
    };
    let err = fedclip::cuda::adapter::check_optimizer(&sgd)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("--optimizer sgd") && err.contains("--device cpu"),
        "{err}"
    );
    assert!(fedclip::cuda::adapter::check_optimizer(&OptimizerConfig::default()).is_ok());
}
