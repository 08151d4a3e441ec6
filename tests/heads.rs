//! The method families of `src/heads/` against PyTorch (tests/reference/make_head_fixtures.py,
//! float64 autograd and torch.optim): loss and gradient at the start, and three optimiser
//! steps of the K-client trainer; f64 finite differences of each family's own gradient; the
//! linear probe's starting point predicting exactly as CLIP zero-shot.
//!
//! Error model. The f64 instantiation computes the same formulas as the reference in the
//! same precision, so it must agree to a few ulp of f64 per accumulated term: we allow
//! 64 ε64 √n · L. The f32 instantiation rounds every operation at ε32 = 2⁻²³; a sum of n
//! rounded terms of size ≤ L errs by about ε √n L (random-walk accumulation), so we allow
//! c ε32 √n · L with c = 8 (the margin for exp/ln and the normalisations), where n is the
//! longest accumulation behind the value (d + C for a loss, B·d for a gradient entry) and L
//! bounds the magnitudes involved: the logits' bound (s, plus α·N for the cache) times the
//! chain factor of the gradient (s for CLIP-Adapter's dn = s G T, α β for the cache's
//! dA = β E ⊙ α G Vᵀ). An Adam step moves an entry by lr · m̂ / (√v̂ + eps), whose relative
//! error is the gradient's relative error δ/|g|, and which is sign-like when |g| ≲ δ, so an
//! entry may differ by up to lr · min(2, 4 δ / |g|) per step, plus the rounding of θ itself.

mod common;

use common::repo;
use fedclip::adapter::{
    AdapterBackend, ClientBatch, OptimizerConfig, OptimizerKind, Real, TextFeatures, predict,
};
use fedclip::heads::{
    Classifier, ClipAdapter, Head, HeadClassifier, HeadTrainer, LinearProbe, TipCache,
    tip_cache_row,
};
use serde_json::Value;

const EPS32: f64 = f32::EPSILON as f64;
const EPS64: f64 = f64::EPSILON;

struct Inputs {
    fixture: Value,
    d: usize,
    c: usize,
    logit_scale: f64,
    features: Vec<f64>,
    labels: Vec<u32>,
    texts: Vec<f64>,
}

fn inputs() -> Inputs {
    let path = repo().join("tests/fixtures/heads/heads.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let fixture: Value = serde_json::from_str(&text).unwrap();
    Inputs {
        d: fixture["dim"].as_u64().unwrap() as usize,
        c: fixture["classes"].as_u64().unwrap() as usize,
        logit_scale: fixture["logit_scale"].as_f64().unwrap(),
        features: floats(&fixture["features"]),
        labels: ints(&fixture["labels"]),
        texts: floats(&fixture["texts"]),
        fixture,
    }
}

fn floats(v: &Value) -> Vec<f64> {
    (v.as_array().expect("an array").iter())
        .map(|x| x.as_f64().unwrap())
        .collect()
}

fn ints(v: &Value) -> Vec<u32> {
    (v.as_array().expect("an array").iter())
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

fn cast<T: Real>(v: &[f64]) -> Vec<T> {
    v.iter().map(|&x| T::from_f64(x)).collect()
}

fn optimizer(v: &Value) -> OptimizerConfig {
    OptimizerConfig {
        kind: match v["kind"].as_str().unwrap() {
            "adam" => OptimizerKind::Adam,
            _ => OptimizerKind::AdamW,
        },
        lr: v["lr"].as_f64().unwrap(),
        beta1: v["beta1"].as_f64().unwrap(),
        beta2: v["beta2"].as_f64().unwrap(),
        eps: v["eps"].as_f64().unwrap(),
        weight_decay: v["weight_decay"].as_f64().unwrap(),
        ..OptimizerConfig::default()
    }
}

/// Every |got − want| within `tol(i)`; the message names the quantity and the entry. Prints
/// the largest difference (`--nocapture`), the figure the README quotes.
fn assert_close(what: &str, got: &[f64], want: &[f64], tol: impl Fn(usize) -> f64) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    let worst = (got.iter().zip(want))
        .map(|(g, w)| (g - w).abs())
        .fold(0.0, f64::max);
    let scale = want.iter().fold(0.0, |m: f64, w| m.max(w.abs()));
    eprintln!("{what}: max |diff| {worst:.2e} (max |reference| {scale:.2e})");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= tol(i),
            "{what}[{i}]: got {g}, reference {w}, |diff| {:e} > tol {:e}",
            (g - w).abs(),
            tol(i)
        );
    }
}

/// Bounds of one case for the error model: the logits' magnitude and the gradient's chain
/// factor.
struct Scales {
    logits: f64,
    chain: f64,
}

/// The head in f64 and f32 on the fixture's batch: loss and gradient against the reference,
/// then central finite differences of the f64 loss against the f64 gradient.
fn check_loss_and_grad<H64: Head<f64>, H32: Head<f32>>(
    name: &str,
    h64: &H64,
    h32: &H32,
    init: &[f64],
    inp: &Inputs,
    sc: &Scales,
) {
    let case = &inp.fixture["cases"][name];
    let (b, d, c) = (inp.labels.len(), inp.d, inp.c);
    let want_loss = case["loss0"].as_f64().unwrap();
    let trained = h64.trainable();
    let want_grad = floats(&case["grad0"]);
    let n_loss = ((d + c) as f64).sqrt();
    let n_grad = ((b * d) as f64).sqrt();

    let mut g64 = vec![0.0; init.len()];
    let l64 = h64.loss_and_grad(init, &inp.features, &inp.labels, &mut g64);
    assert!(
        (l64 - want_loss).abs() <= 64.0 * EPS64 * n_loss * sc.logits,
        "{name}: f64 loss {l64} vs {want_loss}"
    );
    let tol64 = 64.0 * EPS64 * n_grad * sc.logits * sc.chain;
    assert_close(
        &format!("{name}: f64 grad"),
        &g64[..trained],
        &want_grad,
        |_| tol64,
    );
    assert!(
        g64[trained..].iter().all(|&g| g == 0.0),
        "{name}: frozen values get no gradient"
    );

    let (x32, p32) = (cast::<f32>(&inp.features), cast::<f32>(init));
    let mut g32 = vec![0f32; init.len()];
    let l32 = h32.loss_and_grad(&p32, &x32, &inp.labels, &mut g32) as f64;
    let loss_tol = 8.0 * EPS32 * n_loss * sc.logits;
    assert!(
        (l32 - want_loss).abs() <= loss_tol,
        "{name}: f32 loss {l32} vs {want_loss} (tol {loss_tol:e})"
    );
    let g32: Vec<f64> = g32.iter().map(|&g| g as f64).collect();
    let tol32 = 8.0 * EPS32 * n_grad * sc.logits * sc.chain;
    assert_close(
        &format!("{name}: f32 grad"),
        &g32[..trained],
        &want_grad,
        |_| tol32,
    );

    // Central differences in f64: truncation O(h²) plus rounding O(ε64 L / h).
    let h = 1e-6;
    let mut p = init.to_vec();
    let mut scratch = vec![0.0; init.len()];
    for i in 0..trained {
        p[i] = init[i] + h;
        let up = h64.loss_and_grad(&p, &inp.features, &inp.labels, &mut scratch);
        p[i] = init[i] - h;
        let down = h64.loss_and_grad(&p, &inp.features, &inp.labels, &mut scratch);
        p[i] = init[i];
        let fd = (up - down) / (2.0 * h);
        let tol = 1e-6 * sc.logits * sc.chain.max(1.0) + 1e-5 * g64[i].abs();
        assert!(
            (fd - g64[i]).abs() <= tol,
            "{name}: finite difference of entry {i}: {fd} vs gradient {}",
            g64[i]
        );
    }
}

/// Three optimiser steps of the f32 trainer (client 0 of two; client 1 has no batch) against
/// torch.optim's trajectory, with the Adam error model of the header.
fn check_steps<H: Head<f32> + 'static>(
    name: &str,
    head: H,
    init: &[f64],
    inp: &Inputs,
    sc: &Scales,
) {
    let case = &inp.fixture["cases"][name];
    let opt = optimizer(&case["optimizer"]);
    let trained = head.trainable();
    let p = head.param_count();
    let mut rows = cast::<f32>(init);
    rows.extend(cast::<f32>(init));
    let mut trainer = HeadTrainer::new(head, rows, opt, 1).unwrap();
    let x32 = cast::<f32>(&inp.features);
    let grad0 = floats(&case["grad0"]);
    let n_grad = ((inp.labels.len() * inp.d) as f64).sqrt();
    let delta = 8.0 * EPS32 * n_grad * sc.logits * sc.chain;
    let decay = if opt.kind == OptimizerKind::Adam {
        opt.weight_decay
    } else {
        0.0
    };
    let want_losses = floats(&case["losses"]);
    for (step, want) in case["params"].as_array().unwrap().iter().enumerate() {
        let batch = ClientBatch::new(&x32, &inp.labels);
        let losses = trainer.step(&[Some(batch), None]).unwrap();
        let loss = losses[0].expect("client 0 steps") as f64;
        let loss_tol = 8.0 * EPS32 * ((inp.d + inp.c) as f64).sqrt() * sc.logits;
        assert!(
            (loss - want_losses[step]).abs() <= loss_tol,
            "{name}: step {step} loss {loss} vs {}",
            want_losses[step]
        );
        assert_eq!(losses[1], None, "{name}: client 1 has no batch");
        let got: Vec<f64> = trainer.client_row(0).unwrap()[..trained]
            .iter()
            .map(|&v| v as f64)
            .collect();
        let want = floats(want);
        let steps = (step + 1) as f64;
        assert_close(
            &format!("{name}: params after step {}", step + 1),
            &got,
            &want,
            |i| {
                let g = (grad0[i] + decay * init[i]).abs();
                let per_step = if g > 0.0 {
                    (4.0 * delta / g).min(2.0)
                } else {
                    0.0
                };
                steps * (opt.lr * per_step + 4.0 * EPS32 * want[i].abs())
            },
        );
    }
    let untouched: Vec<f64> = trainer
        .client_row(1)
        .unwrap()
        .iter()
        .map(|&v| v as f64)
        .collect();
    assert_eq!(
        untouched,
        init.iter().map(|&v| v as f32 as f64).collect::<Vec<_>>()
    );
    assert_eq!(
        trainer.client_row(0).unwrap()[trained..p],
        cast::<f32>(&init[trained..]),
        "{name}: frozen values unchanged"
    );
}

#[test]
fn linear_probe_matches_pytorch() {
    let inp = inputs();
    let case = &inp.fixture["cases"]["linear_probe"];
    let texts64 = TextFeatures::new(&inp.texts, inp.c, inp.d).unwrap();
    let init = LinearProbe::init(&texts64, inp.logit_scale);
    assert_close("linear probe init", &init, &floats(&case["init"]), |i| {
        4.0 * EPS64 * init[i].abs()
    });
    let head = LinearProbe::new(inp.d, inp.c);
    let s = inp.logit_scale.exp();
    let sc = Scales {
        logits: s,
        chain: 1.0,
    };
    check_loss_and_grad("linear_probe", &head, &head, &init, &inp, &sc);
    check_steps("linear_probe", head, &init, &inp, &sc);
}

#[test]
fn clip_adapter_matches_pytorch() {
    let inp = inputs();
    let case = &inp.fixture["cases"]["clip_adapter"];
    let ratio = case["ratio"].as_f64().unwrap();
    let init = floats(&case["init"]);
    let texts64 = TextFeatures::new(&inp.texts, inp.c, inp.d).unwrap();
    let h64 = ClipAdapter::new(texts64.clone(), inp.logit_scale, ratio);
    let h32 = ClipAdapter::new(texts64.cast::<f32>(), inp.logit_scale as f32, ratio as f32);
    assert_eq!(h64.hidden(), inp.d / 4);
    let s = inp.logit_scale.exp();
    let sc = Scales {
        logits: s,
        chain: s,
    };
    check_loss_and_grad("clip_adapter", &h64, &h32, &init, &inp, &sc);
    check_steps("clip_adapter", h32, &init, &inp, &sc);
}

#[test]
fn tip_adapter_cache_matches_pytorch() {
    let inp = inputs();
    let case = &inp.fixture["cases"]["tip_adapter_f"];
    let (alpha, beta) = (
        case["alpha"].as_f64().unwrap(),
        case["beta"].as_f64().unwrap(),
    );
    let capacity = case["capacity"].as_u64().unwrap() as usize;
    let (train_x, train_y) = (floats(&case["train_features"]), ints(&case["train_labels"]));
    let init = tip_cache_row(&train_x, &train_y, inp.d, inp.c, capacity);
    let want_init = floats(&case["init"]);
    assert_close("tip cache row", &init, &want_init, |i| {
        4.0 * EPS64 * want_init[i].abs()
    });
    let texts64 = TextFeatures::new(&inp.texts, inp.c, inp.d).unwrap();
    let make64 = |train| {
        TipCache::new(
            texts64.clone(),
            inp.logit_scale,
            alpha,
            beta,
            capacity,
            train,
        )
    };
    let h32 = TipCache::new(
        texts64.cast::<f32>(),
        inp.logit_scale as f32,
        alpha as f32,
        beta as f32,
        capacity,
        true,
    );
    let s = inp.logit_scale.exp();
    let sc = Scales {
        logits: s + alpha * capacity as f64,
        chain: alpha * beta,
    };

    // Training-free: the cache's logits as built.
    let want = floats(&case["training_free_logits"]);
    let got = make64(false).logits(&init, &inp.features);
    assert_close("tip logits f64", &got, &want, |_| 64.0 * EPS64 * sc.logits);
    let got32 = h32.logits(&cast::<f32>(&init), &cast::<f32>(&inp.features));
    let got32: Vec<f64> = got32.iter().map(|&v| v as f64).collect();
    let tol = 8.0 * EPS32 * ((inp.d + capacity) as f64).sqrt() * sc.logits;
    assert_close("tip logits f32", &got32, &want, |_| tol);
    assert_eq!(make64(false).trainable(), 0, "Tip-Adapter trains nothing");

    check_loss_and_grad("tip_adapter_f", &make64(true), &h32, &init, &inp, &sc);
    check_steps("tip_adapter_f", h32, &init, &inp, &sc);
}

/// The union of two caches (their rows concatenated) scores as the cache holding both
/// clients' entries: the cache logits add.
#[test]
fn tip_union_is_the_concatenation_of_the_clients_caches() {
    let inp = inputs();
    let case = &inp.fixture["cases"]["tip_adapter_f"];
    let (train_x, train_y) = (floats(&case["train_features"]), ints(&case["train_labels"]));
    let (d, c) = (inp.d, inp.c);
    let texts = TextFeatures::new(&inp.texts, c, d).unwrap();
    // Client A holds samples 0..2, client B 2..5; capacity 3 pads A.
    let a = tip_cache_row(&train_x[..2 * d], &train_y[..2], d, c, 3);
    let b = tip_cache_row(&train_x[2 * d..], &train_y[2..], d, c, 3);
    let all = tip_cache_row(&train_x, &train_y, d, c, 5);
    let union: Vec<f64> = a.iter().chain(&b).copied().collect();
    let pair = TipCache::new(texts.clone(), inp.logit_scale, 1.0, 5.5, 3, false);
    let single = TipCache::new(texts, inp.logit_scale, 1.0, 5.5, 5, false);
    let got = pair.logits(&union, &inp.features);
    let want = single.logits(&all, &inp.features);
    assert_close("union logits", &got, &want, |i| {
        64.0 * EPS64 * (1.0 + want[i].abs())
    });
}

/// Before any step the linear probe (W = s·t̂, b = 0) predicts exactly what zero-shot does.
#[test]
fn linear_probe_starts_as_zero_shot() {
    let (d, c, n) = (32, 7, 4000);
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut draw = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 11) as f32 / (1u64 << 53) as f32 * 2.0 - 1.0
    };
    let raw_texts: Vec<f32> = (0..c * d).map(|_| draw()).collect();
    let features: Vec<f32> = (0..n * d).map(|_| 3.0 * draw()).collect();
    let texts = TextFeatures::new(&raw_texts, c, d).unwrap();
    let logit_scale = 100f32.ln();
    let init = LinearProbe::init(&texts, logit_scale);
    let probe = HeadClassifier {
        head: LinearProbe::new(d, c),
        texts: texts.clone(),
    };
    let got = probe.predict(Some(&init), &features).unwrap();
    let want = predict(None, &features, &texts).unwrap();
    let differ = got.iter().zip(&want).filter(|(a, b)| a != b).count();
    assert_eq!(
        differ, 0,
        "{differ} of {n} predictions differ from zero-shot"
    );
}

/// Bad batches fail before any client moves, with the attention adapter's messages.
#[test]
fn head_trainer_checks_batches_like_the_adapter_trainer() {
    let (d, c) = (4, 2);
    let head = LinearProbe::new(d, c);
    let rows = vec![0.5f32; 2 * (c * d + c)];
    let mut t = HeadTrainer::new(head, rows.clone(), OptimizerConfig::default(), 1).unwrap();
    let x = [1.0f32, 0.0, 0.0, 0.0];
    let err = t
        .step(&[Some(ClientBatch::new(&x, &[5])), None])
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("client 0, step 0: label 5 of sample 0 is out of range for 2 classes"),
        "{err}"
    );
    let nan = [f32::NAN, 0.0, 0.0, 0.0];
    let err = t
        .step(&[
            Some(ClientBatch::new(&x, &[0])),
            Some(ClientBatch::new(&nan, &[1])),
        ])
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("client 1, step 0: feature of sample 0 at dim 0 is NaN"),
        "{err}"
    );
    let err = t.step(&[None]).unwrap_err();
    assert!(
        err.to_string()
            .contains("step 0: 1 batches given for 2 clients"),
        "{err}"
    );
    assert_eq!(t.read_all_params().unwrap(), rows, "no client moved");
    assert!(
        t.client_params(0).is_err(),
        "a head has no attention adapter"
    );
}
