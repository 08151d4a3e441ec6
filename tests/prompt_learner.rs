//! The prompt learner (src/prompt, src/heads/prompt.rs): context gradients through the text
//! tower against PyTorch float64 autograd (tests/reference/make_prompt_fixtures.py) on
//! weights/tiny-clip, a small random GELU tower and the ViT-B/32 text shape, CSC and shared,
//! every class-token position; Adam steps; the end-token truncation against the 77-token
//! pass; the forward against the model engine; CoOp's tokenisation; the flags' errors.

mod common;
use common::{Fixture, relative_error, repo};
use fedclip::adapter::{AdapterBackend, ClientBatch, OptimizerConfig, OptimizerKind, Real};
use fedclip::heads::{Head, HeadTrainer, PromptHead};
use fedclip::model::ClipModel;
use fedclip::prompt::{
    ClassPrompt, ClassTokenPosition, ContextSpec, PromptLayout, PromptTower, TextActs,
    class_prompts, context_length, counter_uniform, init_context, init_tokens, random_text_weights,
};
use fedclip::tokenizer::{ClipTokenizer, TokenizerKind};
use fedclip::weights::{Activation, TextConfig, TextPooling};
use serde_json::Value;
use std::path::PathBuf;
use std::sync::Arc;

fn tiny_clip() -> PathBuf {
    repo().join("weights/tiny-clip")
}

/// The text config of a random tower of the fixture script (`vocab` ids, SOS vocab−2,
/// EOS vocab−1 pooled at the argmax).
fn random_config(
    width: usize,
    heads: usize,
    layers: usize,
    mlp: usize,
    proj: usize,
    act: Activation,
    vocab: usize,
) -> TextConfig {
    TextConfig {
        vocab_size: vocab,
        hidden_size: width,
        intermediate_size: mlp,
        num_hidden_layers: layers,
        num_attention_heads: heads,
        max_position_embeddings: 77,
        projection_dim: proj,
        hidden_act: act,
        layer_norm_eps: 1e-5,
        bos_token_id: vocab as u32 - 2,
        eos_token_id: vocab as u32 - 1,
        pad_token_id: 0,
        pooling: TextPooling::Argmax,
    }
}

fn tower<T: Real>(name: &str, seed: u64) -> PromptTower<T> {
    let config = match name {
        "tiny-clip" => return PromptTower::load(&tiny_clip()).unwrap(),
        "small" => random_config(24, 3, 2, 40, 20, Activation::Gelu, 40),
        "vitb32" => random_config(512, 8, 12, 2048, 512, Activation::QuickGelu, 64),
        other => panic!("unknown fixture tower {other}"),
    };
    let (text, blocks) = random_text_weights(&config, seed);
    PromptTower::from_weights(&config, &text, &blocks).unwrap()
}

struct Case {
    fixture: Fixture,
    meta: Value,
    prompts: Vec<ClassPrompt>,
}

impl Case {
    fn load(file: &str) -> Case {
        let fixture = Fixture::load(&repo().join("tests/fixtures/prompt").join(file));
        let meta: Value = serde_json::from_str(&fixture.metadata["case"]).unwrap();
        let ids = fixture.ids("ids");
        let lens = fixture.ids("name_lens");
        let prompts = (ids.chunks_exact(77).zip(&lens))
            .map(|(row, &n)| {
                let end = row.iter().rposition(|&t| t != 0).unwrap();
                ClassPrompt {
                    ids: row[..=end].to_vec(),
                    name_len: n as usize,
                }
            })
            .collect();
        Case {
            fixture,
            meta,
            prompts,
        }
    }
    fn get(&self, key: &str) -> &Value {
        &self.meta[key]
    }
    fn n_ctx(&self) -> usize {
        self.get("n_ctx").as_u64().unwrap() as usize
    }
    fn csc(&self) -> bool {
        self.get("csc").as_bool().unwrap()
    }
    fn seed(&self) -> u64 {
        self.get("seed").as_u64().unwrap()
    }
    fn position(&self) -> ClassTokenPosition {
        match self.get("position").as_str().unwrap() {
            "end" => ClassTokenPosition::End,
            "middle" => ClassTokenPosition::Middle,
            _ => ClassTokenPosition::Front,
        }
    }

    fn head<T: Real>(&self, tower: Arc<PromptTower<T>>) -> PromptHead<T> {
        let layout =
            PromptLayout::new(&tower, &self.prompts, self.n_ctx(), self.position()).unwrap();
        let scale = T::from_f64(self.get("logit_scale").as_f64().unwrap());
        PromptHead::new(tower, Arc::new(layout), self.csc(), self.position(), scale)
    }

    /// The context and the image batch, drawn as the script draws them.
    fn inputs<T: Real>(&self, head: &PromptHead<T>) -> (Vec<T>, Vec<T>, Vec<u32>) {
        let cast = |v: Vec<f32>| {
            v.into_iter()
                .map(|x| T::from_f64(x as f64))
                .collect::<Vec<T>>()
        };
        let ctx = cast(counter_uniform(
            self.seed(),
            1000,
            head.param_count(),
            0.0,
            0.05,
        ));
        let labels = self.fixture.ids("labels");
        let images = cast(counter_uniform(
            self.seed(),
            1001,
            labels.len() * head.dim(),
            0.0,
            1.0,
        ));
        (ctx, images, labels)
    }
}

const CASES: [&str; 3] = ["tiny-clip", "small", "vitb32"];

fn files(tower: &str) -> Vec<String> {
    let mut out = Vec::new();
    for p in ["end", "middle", "front"] {
        for c in ["shared", "csc"] {
            out.push(format!("{tower}-{p}-{c}.safetensors"));
        }
    }
    out
}

fn to_f32<T: Real>(v: &[T]) -> Vec<f32> {
    v.iter().map(|x| x.to_f64() as f32).collect()
}

/// Compares a gradient with the reference: the whole tensor within `rel` (‖got − want‖ /
/// ‖want‖), and each element within `rel` of its value or `rel` × the tensor's largest value.
fn check(what: &str, got: &[f32], want: &[f32], rel: f64) -> f64 {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let err = relative_error(got, want);
    let top = want.iter().fold(0.0f64, |m, &w| m.max(w.abs() as f64));
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let d = (g as f64 - w as f64).abs();
        assert!(
            d <= rel * (w.abs() as f64).max(top),
            "{what}: element {i}: got {g}, want {w} (tensor relative error {err:.2e})"
        );
    }
    assert!(err <= rel, "{what}: relative error {err:.2e} over {rel:e}");
    err
}

/// f64 matches the float64 reference up to its float32 storage (2⁻²⁴ ≈ 6e-8 relative, and
/// up to a few ulp through the cancellations of LayerNorm's backward); f32 accumulates
/// rounding through the layers: ~ε·√(width)·layers ≈ 6e-8 · 23 · 12 ≈ 2e-5 at the widest
/// element-wise, 1e-5 over the tensor (measured: see the printed errors).
fn compare_case<T: Real>(file: &str, tower: Arc<PromptTower<T>>, rel: f64) {
    let case = Case::load(file);
    let head = case.head(tower);
    let (ctx, images, labels) = case.inputs(&head);
    let mut grad = vec![T::ZERO; head.param_count()];
    let mut trace = Vec::new();
    let loss = head.loss_and_grad_traced(&ctx, &images, &labels, &mut grad, Some(&mut trace));
    let want_loss = case.fixture.f32("loss")[0] as f64;
    assert!(
        (loss.to_f64() - want_loss).abs() <= rel * want_loss.abs(),
        "{file}: loss {loss} vs {want_loss}"
    );
    let err = check(
        &format!("{file} grad_ctx"),
        &to_f32(&grad),
        &case.fixture.f32("grad_ctx"),
        rel,
    );
    for (i, dh) in trace.iter().enumerate() {
        let name = format!("dhidden_{i}");
        if case.fixture.has(&name) {
            check(
                &format!("{file} {name}"),
                &to_f32(dh),
                &case.fixture.f32(&name),
                rel,
            );
        }
    }
    println!(
        "{file} ({}): grad_ctx relative error {err:.2e}",
        std::any::type_name::<T>()
    );
}

#[test]
fn ctx_gradients_match_pytorch_in_f64() {
    for name in ["tiny-clip", "small"] {
        let seed = if name == "small" { 11 } else { 0 };
        let t = Arc::new(tower::<f64>(name, seed));
        for file in files(name) {
            compare_case(&file, t.clone(), 5e-7);
        }
    }
}

#[test]
fn ctx_gradients_match_pytorch_in_f32() {
    for name in CASES {
        let seed = match name {
            "small" => 11,
            "vitb32" => 5,
            _ => 0,
        };
        let t = Arc::new(tower::<f32>(name, seed));
        for file in files(name) {
            compare_case(&file, t.clone(), 2e-5);
        }
    }
}

#[test]
fn ctx_gradient_matches_finite_differences() {
    let t = Arc::new(tower::<f64>("small", 11));
    for file in files("small") {
        let case = Case::load(&file);
        let head = case.head(t.clone());
        let (ctx, images, labels) = case.inputs(&head);
        let mut grad = vec![0.0; head.param_count()];
        head.loss_and_grad(&ctx, &images, &labels, &mut grad);
        let mut scratch = vec![0.0; grad.len()];
        let top = grad.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        // Every 7th coordinate keeps the test quick; central differences with h = 1e-5.
        for i in (0..ctx.len()).step_by(7) {
            let mut at = |delta: f64| {
                let mut c = ctx.clone();
                c[i] += delta;
                head.loss_and_grad(&c, &images, &labels, &mut scratch)
            };
            let fd = (at(1e-5) - at(-1e-5)) / 2e-5;
            assert!(
                (fd - grad[i]).abs() <= 1e-7 * top.max(1.0),
                "{file}: ctx[{i}]: finite difference {fd}, backward {}",
                grad[i]
            );
        }
    }
}

#[test]
fn adam_steps_match_pytorch() {
    let case = Case::load("tiny-clip-end-shared.safetensors");
    let head = case.head(Arc::new(tower::<f32>("tiny-clip", 0)));
    let (ctx, images, labels) = case.inputs(&head);
    let opt = &case.meta["optimizer"];
    let f = |k: &str| opt[k].as_f64().unwrap();
    let config = OptimizerConfig {
        kind: OptimizerKind::Adam,
        lr: f("lr"),
        beta1: f("beta1"),
        beta2: f("beta2"),
        eps: f("eps"),
        weight_decay: f("weight_decay"),
        momentum: 0.0,
    };
    let mut trainer = HeadTrainer::new(head, ctx, config, 1).unwrap();
    for s in 0..3 {
        trainer
            .step(&[Some(ClientBatch::new(&images, &labels))])
            .unwrap();
        let got = trainer.client_row(0).unwrap();
        let want = case.fixture.f32(&format!("ctx_{s}"));
        let err = check(&format!("ctx after step {s}"), &got, &want, 2e-5);
        println!("Adam step {s}: ctx relative error {err:.2e}");
    }
}

/// Pads each prompt of `layout`'s embeddings to 77 positions with the embedding of id 0, as
/// `clip.tokenize` pads.
fn padded(tower: &PromptTower<f32>, layout: &PromptLayout<f32>, embeds: &[f32]) -> Vec<f32> {
    let (d, seq) = (tower.width(), layout.seq());
    let mut out = Vec::new();
    for prompt in embeds.chunks_exact(seq * d) {
        out.extend_from_slice(prompt);
        for _ in seq..77 {
            out.extend_from_slice(tower.token_embedding(0));
        }
    }
    out
}

#[test]
fn end_token_truncation_equals_the_77_token_pass() {
    for (name, seed) in [("tiny-clip", 0), ("small", 11)] {
        let t = tower::<f32>(name, seed);
        for file in files(name) {
            let case = Case::load(&file);
            let layout =
                PromptLayout::new(&t, &case.prompts, case.n_ctx(), case.position()).unwrap();
            let c = layout.classes();
            let len = layout.ctx_len(case.csc());
            let ctx = counter_uniform(3, 1, len, 0.0, 0.05);
            let short = layout.embeds(&ctx, case.csc());
            let mut cut = TextActs::new(c, layout.seq());
            t.forward_embeds(&short, layout.pool(), &mut cut).unwrap();
            let mut full = TextActs::new(c, 77);
            t.forward_embeds(&padded(&t, &layout, &short), layout.pool(), &mut full)
                .unwrap();
            let tol = 1e-6 * cut.features.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            for (a, b) in cut.features.iter().zip(&full.features) {
                assert!(
                    (a - b).abs() <= tol,
                    "{file}: features {a} (truncated) vs {b} (77 tokens)"
                );
            }
            let dfeat = counter_uniform(3, 2, c * t.feature_dim(), 0.0, 1.0);
            let d_cut = t.backward_embeds(&cut, &dfeat, None);
            let d_full = t.backward_embeds(&full, &dfeat, None);
            let (d, seq) = (t.width(), layout.seq());
            let top = d_cut.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            for p in 0..c {
                let (a, b) = (
                    &d_cut[p * seq * d..][..seq * d],
                    &d_full[p * 77 * d..][..77 * d],
                );
                for (x, y) in a.iter().zip(&b[..seq * d]) {
                    assert!(
                        (x - y).abs() <= 1e-6 * top,
                        "{file}: prompt {p}: d embeds {x} vs {y}"
                    );
                }
                assert!(
                    b[seq * d..].iter().all(|&v| v == 0.0),
                    "{file}: prompt {p}: gradient after its end token"
                );
            }
        }
    }
}

#[test]
fn forward_from_embeddings_equals_the_model_engine() {
    let model = ClipModel::load(&tiny_clip()).unwrap();
    let text = model.text.as_ref().unwrap();
    let t = tower::<f32>("tiny-clip", 0);
    let tok = ClipTokenizer::load(&tiny_clip(), 77, TokenizerKind::Openai).unwrap();
    let prompts = [
        "a photo of a dog.",
        "an x-ray of a small bird, taken at night",
    ];
    let mut ids = Vec::new();
    for p in prompts {
        let mut row = tok.encode(p, false).unwrap();
        row.resize(77, 0);
        ids.extend(row);
    }
    let want = text.forward(&ids, 2, 77, false).unwrap().embeds;
    let pool = t.config().pool_positions(&ids, 2, 77).unwrap();
    let embeds: Vec<f32> = ids
        .iter()
        .flat_map(|&i| t.token_embedding(i).to_vec())
        .collect();
    let mut acts = TextActs::new(2, 77);
    t.forward_embeds(&embeds, &pool, &mut acts).unwrap();
    let err = relative_error(&acts.features, &want);
    assert!(
        err < 1e-5,
        "features differ from the model engine by {err:.2e}"
    );
}

#[test]
fn class_prompts_tokenise_as_coop() {
    let tok = ClipTokenizer::load(&tiny_clip(), 77, TokenizerKind::Openai).unwrap();
    let case = Case::load("tiny-clip-end-shared.safetensors");
    let names: Vec<String> = [
        "dog",
        "guitar",
        "elephant",
        "house",
        "giraffe",
        "person",
        "horse_rider",
    ]
    .map(String::from)
    .to_vec();
    let got = class_prompts(&tok, &names, case.n_ctx(), 77).unwrap();
    assert_eq!(got, case.prompts);
}

fn spec(n_ctx: Option<usize>, init: Option<&str>) -> ContextSpec {
    ContextSpec {
        n_ctx,
        ctx_init: init.map(String::from),
        csc: false,
        position: ClassTokenPosition::End,
    }
}

#[test]
fn context_flags_are_checked() {
    let tok = ClipTokenizer::load(&tiny_clip(), 77, TokenizerKind::Openai).unwrap();
    let err = context_length(&spec(Some(0), None), None)
        .unwrap_err()
        .to_string();
    assert!(err.contains("--n-ctx 0"), "{err}");
    let err = init_tokens(&tok, &spec(Some(3), Some("a photo of a")))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("--n-ctx 3") && err.contains("--ctx-init") && err.contains("4 tokens"),
        "{err}"
    );
    // Without --n-ctx the init sets it.
    let init = init_tokens(&tok, &spec(None, Some("a_photo of a")))
        .unwrap()
        .unwrap();
    assert_eq!(
        context_length(&spec(None, Some("a photo of a")), Some(&init)).unwrap(),
        4
    );
    assert_eq!(context_length(&spec(None, None), None).unwrap(), 16);
    let names = vec!["dog".to_string(), "very long class name indeed".to_string()];
    let err = class_prompts(&tok, &names, 71, 77).unwrap_err().to_string();
    assert!(
        err.contains("very long class name indeed")
            && err.contains("--n-ctx")
            && err.contains("77 positions"),
        "{err}"
    );
    assert!(class_prompts(&tok, &names[..1], 73, 77).is_ok());
}

#[test]
fn context_initialisation() {
    let tok = ClipTokenizer::load(&tiny_clip(), 77, TokenizerKind::Openai).unwrap();
    let t = tower::<f32>("tiny-clip", 0);
    let init = init_tokens(&tok, &spec(None, Some("a photo of a")))
        .unwrap()
        .unwrap();
    let shared = init_context(&t, Some(&init), 4, 3, false, 1);
    let want: Vec<f32> = init
        .iter()
        .flat_map(|&i| t.token_embedding(i).to_vec())
        .collect();
    assert_eq!(shared, want);
    // CSC: every class starts from the same words.
    assert_eq!(init_context(&t, Some(&init), 4, 3, true, 1), want.repeat(3));
    // N(0, 0.02²) from the seed: reproducible, another seed differs, moments close.
    let a = init_context(&t, None, 16, 3, true, 7);
    assert_eq!(a, init_context(&t, None, 16, 3, true, 7));
    assert_ne!(a, init_context(&t, None, 16, 3, true, 8));
    assert_eq!(a.len(), 3 * 16 * 32);
    let n = a.len() as f64;
    let mean = a.iter().map(|&v| v as f64).sum::<f64>() / n;
    let sd = (a.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n).sqrt();
    // 1,536 draws: the mean's standard error is 0.02/√1536 ≈ 5e-4, the sd's ≈ 3.6e-4.
    assert!(
        mean.abs() < 2.5e-3 && (sd - 0.02).abs() < 2e-3,
        "mean {mean}, sd {sd}"
    );
}
