//! The FedCLIP adapter (src/adapter): gradients against finite differences (f64), training
//! against PyTorch fixtures (tests/reference/make_adapter_fixtures.py), many clients at once
//! against each alone, and errors on bad input.

mod common;

use common::{Fixture, assert_close, relative_error, repo};
use fedclip::adapter::{
    AdapterBackend, AdapterParams, ClientBatch, CpuAdapters, Loss, OptimizerConfig, OptimizerKind,
    TextFeatures, TrainConfig, loss_and_grad, predict,
};

/// A small deterministic generator for test data.
struct Lcg(u64);
impl Lcg {
    fn unit(&mut self) -> f64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
    /// Roughly normal (sum of uniforms).
    fn normal(&mut self) -> f64 {
        (0..6).map(|_| self.unit()).sum::<f64>() - 3.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.unit() * n as f64) as usize % n
    }
}

/// Features correlated with their label's text: `0.5·text[y] + noise`, [B, d].
fn make_batch(rng: &mut Lcg, texts: &[f32], d: usize, c: usize, b: usize) -> (Vec<f32>, Vec<u32>) {
    let labels: Vec<u32> = (0..b).map(|_| rng.below(c) as u32).collect();
    let mut feats = Vec::with_capacity(b * d);
    for &y in &labels {
        for j in 0..d {
            feats.push(0.5 * texts[y as usize * d + j] + rng.normal() as f32);
        }
    }
    (feats, labels)
}

fn random_texts(rng: &mut Lcg, c: usize, d: usize) -> Vec<f32> {
    (0..c * d).map(|_| rng.normal() as f32).collect()
}

// ---------------------------------------------------------------------------------------
// Gradients
// ---------------------------------------------------------------------------------------

fn gradient_check(loss: Loss, logit_scale: f64, seed: u64) {
    let (d, b, c) = (7usize, 5usize, 4usize);
    let mut rng = Lcg(seed);
    // Parameters a bit larger than the default init so that tanh and softmax are non-linear.
    let mut params: AdapterParams<f64> = AdapterParams::init(d, seed).cast();
    params.as_mut_slice().iter_mut().for_each(|v| *v *= 3.0);
    let texts_raw: Vec<f64> = (0..c * d).map(|_| rng.normal()).collect();
    let texts = TextFeatures::new(&texts_raw, c, d).unwrap();
    // Two classes appear twice, class 3 not at all (the contrastive loss only sees classes
    // present in the batch; the class loss sees all four).
    let labels = [0u32, 2, 2, 1, 0];
    let feats: Vec<f64> = (0..b * d)
        .map(|i| 0.5 * texts_raw[labels[i / d] as usize * d + i % d] + rng.normal())
        .collect();
    let batch = ClientBatch::new(&feats, &labels);
    let (value, grad) = loss_and_grad(&params, &batch, &texts, logit_scale, loss).unwrap();
    assert!(value.is_finite() && value > 0.0);

    let h = 1e-6;
    let names = ["w1", "b1", "w2", "b2"];
    let sizes = [d * d, d, d * d, d];
    let mut offset = 0;
    for (name, size) in names.iter().zip(sizes) {
        let analytic = &grad.as_slice()[offset..offset + size];
        let scale = analytic.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        assert!(scale > 1e-4, "{loss:?} {name}: gradient is ~0 ({scale:e})");
        let mut worst = 0.0f64;
        for (i, &want) in analytic.iter().enumerate() {
            let mut p = params.clone();
            p.as_mut_slice()[offset + i] += h;
            let up = loss_and_grad(&p, &batch, &texts, logit_scale, loss)
                .unwrap()
                .0;
            p.as_mut_slice()[offset + i] -= 2.0 * h;
            let down = loss_and_grad(&p, &batch, &texts, logit_scale, loss)
                .unwrap()
                .0;
            let numeric = (up - down) / (2.0 * h);
            let err = (numeric - want).abs() / scale;
            worst = worst.max(err);
            assert!(
                err < 1e-6,
                "{loss:?} s={logit_scale}: d{name}[{i}] analytic {want} vs numeric {numeric} \
                 (relative to max |d{name}| {scale:e}: {err:e})"
            );
        }
        println!(
            "{loss:?} logit_scale {logit_scale}: d{name} worst error {worst:.1e} of max |grad|"
        );
        offset += size;
    }

    // The f32 instantiation of the same code agrees with f64 to f32 precision.
    let (v32, g32) = loss_and_grad(
        &params.cast::<f32>(),
        &ClientBatch::new(
            &feats.iter().map(|&v| v as f32).collect::<Vec<_>>(),
            &labels,
        ),
        &texts.cast::<f32>(),
        logit_scale as f32,
        loss,
    )
    .unwrap();
    assert!((v32 as f64 - value).abs() <= 1e-5 * value.abs().max(1.0));
    let g64: Vec<f32> = grad.as_slice().iter().map(|&v| v as f32).collect();
    let err = relative_error(g32.as_slice(), &g64);
    assert!(err < 1e-5, "{loss:?}: f32 gradient off by {err:e} from f64");
}

#[test]
fn gradients_match_finite_differences_contrastive() {
    gradient_check(Loss::Contrastive, 10f64.ln(), 1);
    gradient_check(Loss::Contrastive, 100f64.ln(), 2);
}

#[test]
fn gradients_match_finite_differences_class() {
    gradient_check(Loss::Class, 10f64.ln(), 3);
    gradient_check(Loss::Class, 100f64.ln(), 4);
}

// ---------------------------------------------------------------------------------------
// PyTorch fixtures
// ---------------------------------------------------------------------------------------

struct Case {
    fx: Fixture,
    d: usize,
    c: usize,
    steps: usize,
    config: TrainConfig,
}

fn load_case(name: &str) -> Case {
    let fx = Fixture::load(&repo().join(format!("tests/fixtures/adapter/{name}.safetensors")));
    let meta = |k: &str| fx.metadata[k].clone();
    let num = |k: &str| meta(k).parse::<f64>().unwrap();
    let d = num("dim") as usize;
    let c = num("classes") as usize;
    let steps = fx.shape("loss")[0];
    let config = TrainConfig {
        loss: match meta("loss").as_str() {
            "contrastive" => Loss::Contrastive,
            "class" => Loss::Class,
            other => panic!("{other}"),
        },
        logit_scale: fx.f32("logit_scale")[0],
        optimizer: OptimizerConfig {
            kind: match meta("optimizer").as_str() {
                "adam" => OptimizerKind::Adam,
                "adamw" => OptimizerKind::AdamW,
                other => panic!("{other}"),
            },
            lr: num("lr"),
            beta1: num("beta1"),
            beta2: num("beta2"),
            eps: num("eps"),
            weight_decay: num("weight_decay"),
            ..OptimizerConfig::default()
        },
        min_batch: num("min_batch") as usize,
    };
    Case {
        fx,
        d,
        c,
        steps,
        config,
    }
}

fn fixture_params(fx: &Fixture, d: usize, suffix: &str) -> AdapterParams<f32> {
    AdapterParams::from_parts(
        d,
        &fx.f32(&format!("w1_{suffix}")),
        &fx.f32(&format!("b1_{suffix}")),
        &fx.f32(&format!("w2_{suffix}")),
        &fx.f32(&format!("b2_{suffix}")),
    )
    .unwrap()
}

/// `(‖got − want‖ / ‖want‖, max_i |got_i − want_i| / rms(want))`.
fn param_errors(got: &[f32], want: &[f32]) -> (f64, f64) {
    let rms = (want.iter().map(|&w| (w as f64).powi(2)).sum::<f64>() / want.len() as f64).sqrt();
    let worst = got
        .iter()
        .zip(want)
        .map(|(&g, &w)| (g as f64 - w as f64).abs())
        .fold(0.0f64, f64::max);
    (relative_error(got, want), worst / rms)
}

fn check_fixture(name: &str) {
    let Case {
        fx,
        d,
        c,
        steps,
        config,
    } = load_case(name);
    let init = fixture_params(&fx, d, "init");
    let texts = TextFeatures::new(&fx.f32("text"), c, d).unwrap();
    let rel = 1e-5f32;

    // Gradient of step 0 alone.
    let (f0, l0) = (fx.f32("features_0"), fx.ids("labels_0"));
    let (_, g0) = loss_and_grad(
        &init,
        &ClientBatch::new(&f0, &l0),
        &texts,
        config.logit_scale,
        config.loss,
    )
    .unwrap();
    for (part, got) in [
        ("w1", g0.w1()),
        ("b1", g0.b1()),
        ("w2", g0.w2()),
        ("b2", g0.b2()),
    ] {
        let want = fx.f32(&format!("grad_{part}_0"));
        println!(
            "{name}: step-0 gradient {part}: relative error {:.2e}",
            relative_error(got, &want)
        );
        assert_close(&format!("{name}: step-0 gradient {part}"), got, &want, 1e-4);
    }

    let mut trainer = CpuAdapters::new(1, &init, texts.clone(), config).unwrap();
    let want_losses = fx.f32("loss");
    let stepped = fx.ids("stepped");
    let mut worst_loss = 0.0f64;
    let mut worst_param = 0.0f64;
    let mut worst_element = 0.0f64;
    for i in 0..steps {
        let (f, l) = (
            fx.f32(&format!("features_{i}")),
            fx.ids(&format!("labels_{i}")),
        );
        let got = trainer.step(&[Some(ClientBatch::new(&f, &l))]).unwrap()[0];
        match (got, stepped[i]) {
            (None, 0) => {}
            (Some(loss), 1) => {
                let want = want_losses[i];
                // Relative to the loss, with a floor of 1 for losses near 0 (a CE near 0 is a
                // difference of two log-sum-exps of size ~s, so its float noise is absolute).
                let err = (loss - want).abs() as f64 / (want.abs().max(1.0)) as f64;
                worst_loss = worst_loss.max(err);
                assert!(
                    err <= rel as f64,
                    "{name}: step {i}: loss {loss} vs torch {want} (error {err:.2e})"
                );
            }
            (got, s) => panic!("{name}: step {i}: got {got:?}, torch stepped = {s}"),
        }
        let p = trainer.client_params(0).unwrap();
        let want = fixture_params(&fx, d, &i.to_string());
        for (part, got, want) in [
            ("w1", p.w1(), want.w1()),
            ("b1", p.b1(), want.b1()),
            ("w2", p.w2(), want.w2()),
            ("b2", p.b2(), want.b2()),
        ] {
            let what = format!("{name}: step {i}: {part}");
            let (err, element) = param_errors(got, want);
            worst_param = worst_param.max(err);
            worst_element = worst_element.max(element);
            assert!(err <= rel as f64, "{what}: relative error {err:.2e}");
            // Single elements: Adam divides by sqrt(v) + eps, which turns the f32 rounding of
            // a near-zero gradient element (torch and we sum in different orders) into an
            // update error up to lr·δg/eps. Still ≪ one lr-sized step (1e-2 / rms ≈ 0.1).
            assert!(
                element <= 3e-4,
                "{what}: an element is off by {element:.2e} of the tensor rms"
            );
        }
    }
    // How far the update itself (final − initial) is from torch's, relative to its size.
    let fin = trainer.client_params(0).unwrap();
    let want_fin = fixture_params(&fx, d, &(steps - 1).to_string());
    let delta = |a: &AdapterParams<f32>| -> Vec<f32> {
        a.as_slice()
            .iter()
            .zip(init.as_slice())
            .map(|(a, b)| a - b)
            .collect()
    };
    let delta_err = relative_error(&delta(&fin), &delta(&want_fin));
    println!(
        "{name}: worst loss error {worst_loss:.2e}, worst parameter error {worst_param:.2e} \
         (worst element {worst_element:.2e} of rms), update (final − init) error {delta_err:.2e}"
    );

    // Predictions of the trained adapter and zero-shot.
    let test = fx.f32("test_features");
    assert_eq!(
        trainer.predict(0, &test).unwrap(),
        fx.ids("pred"),
        "{name}: pred"
    );
    assert_eq!(
        predict(Some(&fin), &test, &texts).unwrap(),
        fx.ids("pred"),
        "{name}: pred (free fn)"
    );
    assert_eq!(
        predict(None, &test, &texts).unwrap(),
        fx.ids("pred_zero_shot"),
        "{name}: zero-shot"
    );
}

#[test]
fn torch_contrastive_adam_reference_hyperparameters() {
    check_fixture("contrastive_adam_ref");
}

#[test]
fn torch_contrastive_adam_large_lr() {
    check_fixture("contrastive_adam_lr1e-2");
}

#[test]
fn torch_contrastive_adamw() {
    check_fixture("contrastive_adamw_lr1e-2");
}

#[test]
fn torch_class_adam() {
    check_fixture("class_adam_lr1e-2");
}

#[test]
fn torch_class_adamw() {
    check_fixture("class_adamw_lr1e-2");
}

// ---------------------------------------------------------------------------------------
// Many clients at once
// ---------------------------------------------------------------------------------------

/// Client k's batch at step s: absent, empty, a single sample (skipped), or 2..=40
/// samples; client 0 gets 1100 samples on some steps so that the parallel paths inside one
/// client run too.
fn ragged_size(k: usize, s: usize) -> Option<usize> {
    match (k * 7 + s * 3) % 11 {
        0 => None,
        1 => Some(0),
        2 => Some(1),
        _ if k == 0 && s % 2 == 1 => Some(1100),
        r => Some(2 + (k * 13 + s * 5 + r) % 39),
    }
}

/// `data[s][k]`: client k's batch (features, labels) at step s, if any.
type RaggedData = Vec<Vec<Option<(Vec<f32>, Vec<u32>)>>>;

fn many_clients_case(config: TrainConfig) {
    let (k_clients, d, c, steps) = (37usize, 64usize, 6usize, 6usize);
    let mut rng = Lcg(77);
    let texts_raw = random_texts(&mut rng, c, d);
    let texts = TextFeatures::new(&texts_raw, c, d).unwrap();
    let data: RaggedData = (0..steps)
        .map(|s| {
            (0..k_clients)
                .map(|k| ragged_size(k, s).map(|b| make_batch(&mut rng, &texts_raw, d, c, b)))
                .collect()
        })
        .collect();
    let inits: Vec<AdapterParams<f32>> = (0..k_clients)
        .map(|k| AdapterParams::init(d, 500 + k as u64))
        .collect();
    let reset_after = 2; // a round boundary: fresh optimiser state, as FedCLIP does per round

    let mut all = CpuAdapters::new(k_clients, &inits[0], texts.clone(), config).unwrap();
    for (k, p) in inits.iter().enumerate() {
        all.set_client_params(k, p).unwrap();
    }
    let mut losses_all = Vec::new();
    for (s, step) in data.iter().enumerate() {
        let batches: Vec<Option<ClientBatch>> = step
            .iter()
            .map(|b| b.as_ref().map(|(f, l)| ClientBatch::new(f, l)))
            .collect();
        losses_all.push(all.step(&batches).unwrap());
        if s == reset_after {
            all.reset();
        }
    }
    let mut stepped = 0;
    for k in 0..k_clients {
        let mut one = CpuAdapters::new(1, &inits[k], texts.clone(), config).unwrap();
        for (s, step) in data.iter().enumerate() {
            let batch = step[k].as_ref().map(|(f, l)| ClientBatch::new(f, l));
            let got = one.step(&[batch]).unwrap()[0];
            assert_eq!(
                got.map(f32::to_bits),
                losses_all[s][k].map(f32::to_bits),
                "client {k} step {s}: loss alone {got:?} vs together {:?}",
                losses_all[s][k]
            );
            stepped += got.is_some() as usize;
            if s == reset_after {
                one.reset();
            }
        }
        let alone = one.client_params(0).unwrap();
        let together = all.client_params(k).unwrap();
        assert!(
            alone
                .as_slice()
                .iter()
                .zip(together.as_slice())
                .all(|(a, b)| a.to_bits() == b.to_bits()),
            "client {k}: parameters differ between K = 1 and K = {k_clients}"
        );
        assert_ne!(alone, inits[k], "client {k} never moved");
        assert_eq!(one.optimizer_steps(0), all.optimizer_steps(k));
    }
    assert!(
        stepped > steps * k_clients / 2,
        "too few client-steps ({stepped})"
    );
}

#[test]
fn many_clients_equal_each_alone_contrastive_adam() {
    many_clients_case(TrainConfig {
        optimizer: OptimizerConfig {
            lr: 1e-3,
            ..OptimizerConfig::default()
        },
        ..TrainConfig::default()
    });
}

#[test]
fn many_clients_equal_each_alone_class_adamw() {
    many_clients_case(TrainConfig {
        loss: Loss::Class,
        logit_scale: 30f32.ln(),
        optimizer: OptimizerConfig {
            kind: OptimizerKind::AdamW,
            lr: 1e-3,
            ..OptimizerConfig::default()
        },
        min_batch: 1,
    });
}

#[test]
fn reset_restarts_the_optimiser_but_keeps_parameters() {
    let (d, c) = (16, 4);
    let mut rng = Lcg(5);
    let texts_raw = random_texts(&mut rng, c, d);
    let texts = TextFeatures::new(&texts_raw, c, d).unwrap();
    let batches: Vec<_> = (0..4)
        .map(|_| make_batch(&mut rng, &texts_raw, d, c, 9))
        .collect();
    let config = TrainConfig::default();
    let init = AdapterParams::init(d, 9);
    let mut a = CpuAdapters::new(1, &init, texts.clone(), config).unwrap();
    for (f, l) in &batches[..2] {
        a.step(&[Some(ClientBatch::new(f, l))]).unwrap();
    }
    a.reset();
    assert_eq!(a.optimizer_steps(0), Some(0));
    let mut b = CpuAdapters::new(1, &a.client_params(0).unwrap(), texts, config).unwrap();
    for (f, l) in &batches[2..] {
        let la = a.step(&[Some(ClientBatch::new(f, l))]).unwrap();
        let lb = b.step(&[Some(ClientBatch::new(f, l))]).unwrap();
        assert_eq!(la, lb);
    }
    assert_eq!(a.client_params(0).unwrap(), b.client_params(0).unwrap());
    assert_eq!(a.steps(), 4);
    assert_eq!(b.steps(), 2);
}

#[test]
fn zero_params_equal_zero_shot() {
    // W = 0, b = 0 gives a uniform attention: the adapter then is the identity up to scale.
    let (d, c) = (12, 5);
    let mut rng = Lcg(8);
    let texts_raw = random_texts(&mut rng, c, d);
    let texts = TextFeatures::new(&texts_raw, c, d).unwrap();
    let (f, _) = make_batch(&mut rng, &texts_raw, d, c, 50);
    let zero = AdapterParams::zeros(d);
    assert_eq!(
        predict(Some(&zero), &f, &texts).unwrap(),
        predict(None, &f, &texts).unwrap()
    );
}

// ---------------------------------------------------------------------------------------
// Bad input
// ---------------------------------------------------------------------------------------

struct Setup {
    trainer: CpuAdapters,
    data: Vec<(Vec<f32>, Vec<u32>)>,
    d: usize,
}

fn setup(k: usize) -> Setup {
    let (d, c) = (10, 5);
    let mut rng = Lcg(21);
    let texts_raw = random_texts(&mut rng, c, d);
    let texts = TextFeatures::new(&texts_raw, c, d).unwrap();
    let trainer =
        CpuAdapters::new(k, &AdapterParams::init(d, 1), texts, TrainConfig::default()).unwrap();
    let data = (0..k)
        .map(|_| make_batch(&mut rng, &texts_raw, d, c, 6))
        .collect();
    Setup { trainer, data, d }
}

fn batches(data: &[(Vec<f32>, Vec<u32>)]) -> Vec<Option<ClientBatch<'_>>> {
    data.iter()
        .map(|(f, l)| Some(ClientBatch::new(f, l)))
        .collect()
}

fn err_text(r: anyhow::Result<Vec<Option<f32>>>) -> String {
    format!("{:#}", r.expect_err("expected an error"))
}

#[test]
fn nan_feature_names_client_and_step() {
    let Setup {
        mut trainer,
        mut data,
        d,
    } = setup(5);
    trainer.step(&batches(&data)).unwrap(); // step 0 is fine
    let before = trainer.read_all_params().unwrap();
    data[3].0[2 * d + 4] = f32::NAN;
    let msg = err_text(trainer.step(&batches(&data)));
    assert!(msg.contains("client 3, step 1"), "{msg}");
    assert!(
        msg.contains("NaN") && msg.contains("sample 2") && msg.contains("dim 4"),
        "{msg}"
    );
    // Nothing was updated: inputs are checked before any client steps.
    assert_eq!(trainer.read_all_params().unwrap(), before);
    assert_eq!(trainer.steps(), 1);

    data[3].0[2 * d + 4] = f32::INFINITY;
    let msg = err_text(trainer.step(&batches(&data)));
    assert!(
        msg.contains("client 3, step 1") && msg.contains("infinite"),
        "{msg}"
    );

    data[3].0[2 * d + 4] = 1.0;
    data[1].0[..d].fill(0.0);
    let msg = err_text(trainer.step(&batches(&data)));
    assert!(
        msg.contains("client 1, step 1") && msg.contains("all zeros"),
        "{msg}"
    );
}

#[test]
fn diverged_parameters_name_client_and_step() {
    let Setup {
        mut trainer, data, ..
    } = setup(4);
    let mut p = trainer.client_params(2).unwrap();
    p.parts_mut().3[0] = f32::NAN; // b2
    trainer.set_client_params(2, &p).unwrap();
    let msg = err_text(trainer.step(&batches(&data)));
    assert!(msg.contains("client 2, step 0"), "{msg}");
    assert!(
        msg.contains("loss is NaN") && msg.contains("diverged"),
        "{msg}"
    );
}

#[test]
fn dimension_errors() {
    let Setup {
        mut trainer,
        mut data,
        d,
    } = setup(3);
    // Feature width ≠ d.
    let short: Vec<f32> = data[1].0[..data[1].0.len() - 1].to_vec();
    let mut bs = batches(&data);
    bs[1] = Some(ClientBatch::new(&short, &data[1].1));
    let msg = err_text(trainer.step(&bs));
    assert!(
        msg.contains("client 1, step 0") && msg.contains("adapter dim") && msg.contains("6 × 10"),
        "{msg}"
    );
    // Label out of range.
    data[2].1[4] = 5;
    let msg = err_text(trainer.step(&batches(&data)));
    assert!(
        msg.contains("client 2, step 0")
            && msg.contains("label 5 of sample 4")
            && msg.contains("5 classes"),
        "{msg}"
    );
    data[2].1[4] = 0;
    // Wrong number of batches.
    let msg = err_text(trainer.step(&batches(&data[..2])));
    assert!(msg.contains("2 batches given for 3 clients"), "{msg}");
    // Nothing above counted as a step.
    assert_eq!(trainer.steps(), 0);
    trainer.step(&batches(&data)).unwrap();

    // Text features of the wrong shape, or of another width than the adapter.
    let e = TextFeatures::new(&[0.5f32; 49], 5, d).unwrap_err();
    assert!(format!("{e}").contains("5 classes × 10 dims = 50"), "{e}");
    let e = TextFeatures::new(&[0.0f32; 50], 5, d).unwrap_err();
    assert!(format!("{e}").contains("all zeros"), "{e}");
    let texts = TextFeatures::new(&[0.5f32; 44], 4, 11).unwrap();
    let e = CpuAdapters::new(
        2,
        &AdapterParams::init(d, 1),
        texts.clone(),
        TrainConfig::default(),
    )
    .err()
    .unwrap();
    assert!(
        format!("{e}").contains("dim 11") && format!("{e}").contains("dim 10"),
        "{e}"
    );
    let e = loss_and_grad(
        &AdapterParams::<f32>::init(d, 1),
        &ClientBatch::new(&data[0].0, &data[0].1),
        &texts,
        1.0,
        Loss::Class,
    )
    .unwrap_err();
    assert!(format!("{e}").contains("dim 11"), "{e}");

    // Parameter buffers of the wrong size, clients that do not exist, bad predict input.
    assert!(AdapterParams::from_parts(d, &[0.0; 99], &[0.0; 10], &[0.0; 100], &[0.0; 10]).is_err());
    assert!(trainer.client_params(3).is_err());
    assert!(trainer.write_all_params(&[0.0; 7]).is_err());
    let e = trainer.predict(0, &[1.0; 15]).unwrap_err();
    assert!(
        format!("{e}").contains("multiple of the adapter dim 10"),
        "{e}"
    );
    let e = trainer.predict(0, &[f32::NAN; 10]).unwrap_err();
    assert!(
        format!("{e}").contains("client 0") && format!("{e}").contains("NaN"),
        "{e}"
    );
}
