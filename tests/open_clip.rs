//! open_clip checkpoints: the open_clip layout against open_clip 3.3 itself
//! (tests/reference/make_open_clip_fixtures.py), the same weights in both layouts giving the
//! same features, the bundled tokenizer, and the errors for what is not supported.

mod common;

use common::{Fixture, assert_close, relative_error, repo};
use fedclip::features::hash::{HashMemo, model_fingerprint};
use fedclip::model::ClipModel;
use fedclip::tokenizer::{ClipTokenizer, TokenizerKind};
use fedclip::weights::{Layout, ModelFiles, write_random_clip, write_random_open_clip};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// f32 math against PyTorch's f32 math on the same weights, as the brief asks.
const REL: f32 = 1e-4;

fn model_dir(name: &str) -> PathBuf {
    repo().join("tests/fixtures/models").join(name)
}

fn expected(name: &str) -> Fixture {
    Fixture::load(&repo().join(format!("tests/fixtures/expected/{name}.safetensors")))
}

/// (image features, text features) of `model` on a fixture's inputs.
fn features(model: &ClipModel, fx: &Fixture) -> (Vec<f32>, Vec<f32>) {
    let vision = model.vision.as_ref().expect("vision tower");
    let batch = fx.shape("pixel_values")[0];
    let image = vision.forward(&fx.f32("pixel_values"), batch, false).embeds;
    let text = model.text.as_ref().expect("text tower");
    let shape = fx.shape("input_ids");
    let ids = fx.ids("input_ids");
    let text = text
        .forward(&ids, shape[0], shape[1], false)
        .unwrap()
        .embeds;
    (image, text)
}

fn check_against_open_clip(name: &str) {
    let model = ClipModel::load(&model_dir(name)).unwrap();
    assert_eq!(model.files.layout, Layout::OpenClip, "{name}");
    let fx = expected(name);
    let (image, text) = features(&model, &fx);
    assert_close(
        &format!("{name} image_features"),
        &image,
        &fx.f32("image_features"),
        REL,
    );
    assert_close(
        &format!("{name} text_features"),
        &text,
        &fx.f32("text_features"),
        REL,
    );
    println!(
        "{name}: relative error image {:.2e}, text {:.2e}",
        relative_error(&image, &fx.f32("image_features")),
        relative_error(&text, &fx.f32("text_features"))
    );
}

#[test]
fn quickgelu_open_clip_hub_save_equals_open_clip() {
    check_against_open_clip("oc-tiny-quickgelu");
}

#[test]
fn gelu_open_clip_bare_config_equals_open_clip() {
    check_against_open_clip("oc-tiny-gelu");
}

#[test]
fn open_clip_configs_read_as_open_clip_defines_them() {
    let model = ClipModel::load(&model_dir("oc-tiny-quickgelu")).unwrap();
    let (v, t) = (
        model.config.vision.as_ref().unwrap(),
        model.config.text.as_ref().unwrap(),
    );
    use fedclip::weights::{Activation, TextPooling};
    assert_eq!(
        (v.hidden_size, v.num_attention_heads, v.intermediate_size),
        (64, 4, 256)
    );
    assert_eq!(
        (v.image_size, v.patch_size, v.num_positions()),
        (64, 16, 17)
    );
    assert_eq!(v.hidden_act, Activation::QuickGelu);
    assert_eq!(t.hidden_act, Activation::QuickGelu);
    assert_eq!(t.pooling, TextPooling::Argmax);
    assert_eq!((t.vocab_size, t.max_position_embeddings), (49408, 77));
    let gelu = ClipModel::load(&model_dir("oc-tiny-gelu")).unwrap();
    assert_eq!(
        gelu.config.vision.as_ref().unwrap().hidden_act,
        Activation::Gelu,
        "no `quick_gelu` means nn.GELU"
    );
    // logit_scale is read in both layouts (open_clip's init: ln(1/0.07)).
    assert!((model.logit_scale.unwrap() - (1.0f32 / 0.07).ln()).abs() < 1e-3);
}

/// The converted save was checked against transformers by the reference script; here the two
/// layouts of the same f32 weights give bit-identical features.
#[test]
fn same_weights_in_both_layouts_give_identical_features() {
    let oc = ClipModel::load(&model_dir("oc-tiny-gelu")).unwrap();
    let hf = ClipModel::load(&model_dir("oc-tiny-gelu-hf")).unwrap();
    assert_eq!(hf.files.layout, Layout::HuggingFace);
    let fx = expected("oc-tiny-gelu");
    let (oc_image, oc_text) = features(&oc, &fx);
    let (hf_image, hf_text) = features(&hf, &fx);
    assert_eq!(oc_image, hf_image, "image features");
    assert_eq!(oc_text, hf_text, "text features");
    assert_eq!(oc.logit_scale, hf.logit_scale);
}

/// ViT-B-32's real shape, weights generated at run time: the very same random weights written
/// in both layouts give bit-identical features (QuickGELU, as OpenAI's config says).
#[test]
fn vit_b32_shape_in_both_layouts_gives_identical_features() {
    let config =
        std::fs::read_to_string(repo().join("tests/fixtures/configs/clip-vit-base-patch32.json"))
            .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let (hf_dir, oc_dir) = (tmp.path().join("hf"), tmp.path().join("oc"));
    write_random_clip(&hf_dir, &config, 5).unwrap();
    write_random_open_clip(&oc_dir, &config, 5).unwrap();
    let pixels: Vec<f32> = (0..3 * 224 * 224)
        .map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0)
        .collect();
    let ids = [49406, 320, 1929, 539, 320, 1929, 49407, 0, 0];
    let run = |dir: &Path| {
        let m = ClipModel::load(dir).unwrap();
        let image = m.vision.as_ref().unwrap().forward(&pixels, 1, false).embeds;
        let text = m.text.as_ref().unwrap().forward(&ids, 1, 9, false).unwrap();
        (m.files.layout, image, text.embeds)
    };
    let (hf_layout, hf_image, hf_text) = run(&hf_dir);
    let (oc_layout, oc_image, oc_text) = run(&oc_dir);
    assert_eq!(
        (hf_layout, oc_layout),
        (Layout::HuggingFace, Layout::OpenClip)
    );
    assert_eq!(hf_image.len(), 512);
    assert_eq!(hf_image, oc_image, "image features");
    assert_eq!(hf_text, oc_text, "text features");
}

/// With `FEDCLIP_OPEN_CLIP_VIT_B32=<dir>` (written by `make_open_clip_fixtures.py --vit-b-32
/// <dir>`): open_clip's real ViT-B-32 and ViT-B-32-quickgelu, random weights, against open_clip.
#[test]
fn vit_b_32_equals_open_clip() {
    let Some(root) = std::env::var_os("FEDCLIP_OPEN_CLIP_VIT_B32") else {
        eprintln!(
            "skipped: set FEDCLIP_OPEN_CLIP_VIT_B32 (see tests/reference/make_open_clip_fixtures.py)"
        );
        return;
    };
    for name in ["ViT-B-32", "ViT-B-32-quickgelu"] {
        let dir = Path::new(&root).join(name);
        let model = ClipModel::load(&dir).unwrap();
        let fx = Fixture::load(&dir.join("expected.safetensors"));
        let (image, text) = features(&model, &fx);
        let (ie, te) = (
            relative_error(&image, &fx.f32("image_features")),
            relative_error(&text, &fx.f32("text_features")),
        );
        assert_close(
            &format!("{name} image"),
            &image,
            &fx.f32("image_features"),
            REL,
        );
        assert_close(
            &format!("{name} text"),
            &text,
            &fx.f32("text_features"),
            REL,
        );
        println!("{name}: relative error image {ie:.2e}, text {te:.2e}");
    }
}

/// open_clip checkpoints carry no tokenizer file; the bundled OpenAI BPE gives open_clip's
/// own ids (`open_clip.tokenize`, which pads with 0).
#[test]
fn bundled_tokenizer_gives_open_clip_ids() {
    let dir = model_dir("oc-tiny-quickgelu");
    assert!(!dir.join("tokenizer.json").exists());
    let fx = expected("oc-tiny-quickgelu");
    let prompts: Vec<String> = serde_json::from_str(&fx.metadata["prompts"]).unwrap();
    let tok = ClipTokenizer::load(&dir, 77, TokenizerKind::Openai).unwrap();
    let mut ids = Vec::new();
    for p in &prompts {
        let mut row = tok.encode(p, false).unwrap();
        row.resize(77, 0);
        ids.extend(row);
    }
    assert_eq!(ids, fx.ids("input_ids"));
}

#[test]
fn a_safetensors_file_path_loads_with_its_folder_config() {
    let file = model_dir("oc-tiny-quickgelu").join("open_clip_model.safetensors");
    let by_file = ClipModel::load(&file).unwrap();
    assert_eq!(by_file.dir, model_dir("oc-tiny-quickgelu"));
    let fx = expected("oc-tiny-quickgelu");
    let by_dir = ClipModel::load(&model_dir("oc-tiny-quickgelu")).unwrap();
    assert_eq!(features(&by_file, &fx), features(&by_dir, &fx));
}

/// The feature cache keys an open_clip model by its own files (and, without a tokenizer
/// file, the bundled BPE); both layouts of the same weights get their own, stable keys.
#[test]
fn cache_fingerprints_cover_open_clip_files() {
    let tmp = tempfile::tempdir().unwrap();
    let mut memo = HashMemo::load(&tmp.path().join("memo"), Duration::ZERO).0;
    let oc = model_fingerprint(&model_dir("oc-tiny-gelu"), &mut memo).unwrap();
    let hf = model_fingerprint(&model_dir("oc-tiny-gelu-hf"), &mut memo).unwrap();
    assert_ne!(oc.weights, hf.weights);
    let again = model_fingerprint(&model_dir("oc-tiny-gelu"), &mut memo).unwrap();
    assert_eq!(oc.weights, again.weights);
    let quick = model_fingerprint(&model_dir("oc-tiny-quickgelu"), &mut memo).unwrap();
    let empty = model_fingerprint(&model_dir("oc-tiny-gelu-hf"), &mut memo).unwrap();
    assert_ne!(
        quick.tokenizer, empty.tokenizer,
        "the bundled BPE is part of the text key"
    );
}

/// Copies a fixture model into a temporary folder, applying `edit` to its config JSON.
fn edited_copy(
    name: &str,
    config: &str,
    edit: impl Fn(&mut serde_json::Value),
) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(model_dir(name)).unwrap() {
        let p = entry.unwrap().path();
        std::fs::copy(&p, tmp.path().join(p.file_name().unwrap())).unwrap();
    }
    let file = tmp.path().join(config);
    let mut json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    edit(&mut json);
    std::fs::write(&file, json.to_string()).unwrap();
    tmp
}

fn load_error(dir: &Path) -> String {
    match ClipModel::load(dir) {
        Ok(_) => panic!("{} loaded", dir.display()),
        Err(e) => format!("{e:#}"),
    }
}

#[test]
fn unsupported_open_clip_options_are_errors_naming_the_field() {
    for (field, value, says) in [
        ("ls_init_value", serde_json::json!(0.1), "layer scale"),
        ("timm_model_name", serde_json::json!("vit_base"), "timm"),
        ("layers", serde_json::json!([3, 4, 6, 3]), "ModifiedResNet"),
        ("pool_type", serde_json::json!("avg"), "class token"),
        ("attentional_pool", serde_json::json!(true), "class token"),
        (
            "norm_kwargs",
            serde_json::json!({"elementwise_affine": false}),
            "only `eps`",
        ),
    ] {
        let tmp = edited_copy("oc-tiny-quickgelu", "open_clip_config.json", |j| {
            j["model_cfg"]["vision_cfg"][field] = value.clone();
        });
        let msg = load_error(tmp.path());
        assert!(
            msg.contains(&format!("model_cfg.vision_cfg.{field}")) && msg.contains(says),
            "{field}: {msg}"
        );
    }
    let tmp = edited_copy("oc-tiny-gelu", "config.json", |j| {
        j["text_cfg"]["hf_model_name"] = serde_json::json!("roberta-base");
    });
    let msg = load_error(tmp.path());
    assert!(msg.contains("`text_cfg.hf_model_name`"), "{msg}");
    let tmp = edited_copy("oc-tiny-gelu", "config.json", |j| {
        j["text_cfg"]["no_causal_mask"] = serde_json::json!(true);
    });
    let msg = load_error(tmp.path());
    assert!(msg.contains("`text_cfg.no_causal_mask`"), "{msg}");
}

#[test]
fn a_non_openai_tokenizer_without_tokenizer_json_is_an_error() {
    let tmp = edited_copy("oc-tiny-quickgelu", "open_clip_config.json", |j| {
        j["model_cfg"]["text_cfg"]["hf_tokenizer_name"] = serde_json::json!("timm/some-bpe");
    });
    let msg = ClipTokenizer::load(tmp.path(), 77, TokenizerKind::Openai)
        .err()
        .unwrap()
        .to_string();
    assert!(
        msg.contains("hf_tokenizer_name") && msg.contains("tokenizer.json"),
        "{msg}"
    );
}

#[test]
fn open_clip_config_without_weights_names_the_files_it_looked_for() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::copy(
        model_dir("oc-tiny-quickgelu").join("open_clip_config.json"),
        tmp.path().join("open_clip_config.json"),
    )
    .unwrap();
    std::fs::write(tmp.path().join("open_clip_pytorch_model.bin"), b"pickle").unwrap();
    let msg = load_error(tmp.path());
    assert!(
        msg.contains("open_clip_model.safetensors") && msg.contains("pickle"),
        "{msg}"
    );
}

#[test]
fn weights_in_the_other_layout_are_an_error_naming_both() {
    // open_clip tensors under a Hugging Face config.json.
    let tmp = tempfile::tempdir().unwrap();
    std::fs::copy(
        model_dir("oc-tiny-gelu-hf").join("config.json"),
        tmp.path().join("config.json"),
    )
    .unwrap();
    std::fs::copy(
        model_dir("oc-tiny-gelu").join("model.safetensors"),
        tmp.path().join("model.safetensors"),
    )
    .unwrap();
    let msg = load_error(tmp.path());
    assert!(
        msg.contains("open_clip's layout") && msg.contains("config.json"),
        "{msg}"
    );
}

#[test]
fn model_paths_that_are_not_models_are_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let msg = load_error(&tmp.path().join("nope"));
    assert!(msg.contains("does not exist"), "{msg}");
    let txt = tmp.path().join("weights.bin");
    std::fs::write(&txt, b"x").unwrap();
    let msg = load_error(&txt);
    assert!(msg.contains("not a .safetensors file"), "{msg}");
    let lone = tmp.path().join("lone.safetensors");
    std::fs::copy(model_dir("oc-tiny-gelu").join("model.safetensors"), &lone).unwrap();
    let msg = load_error(&lone);
    assert!(
        msg.contains("no open_clip_config.json or config.json"),
        "{msg}"
    );
    assert!(ModelFiles::locate(&lone).is_err());
}

/// Every other option the parser refuses, each named in its message.
#[test]
fn open_clip_config_errors_name_the_field() {
    use fedclip::weights::open_clip::parse;
    let base: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(model_dir("oc-tiny-gelu").join("config.json")).unwrap(),
    )
    .unwrap();
    let cases: Vec<(&str, &str, serde_json::Value, &str)> = vec![
        (
            "",
            "multimodal_cfg",
            serde_json::json!({"width": 512}),
            "`multimodal_cfg`",
        ),
        (
            "",
            "init_logit_bias",
            serde_json::json!(-10),
            "`init_logit_bias`",
        ),
        (
            "",
            "embed_dim",
            serde_json::json!(0),
            "`embed_dim` = 0 is not a positive integer",
        ),
        (
            "",
            "quick_gelu",
            serde_json::json!("yes"),
            "`quick_gelu` = \"yes\" is not true or false",
        ),
        (
            "",
            "vision_cfg",
            serde_json::json!(3),
            "`vision_cfg` is not an object",
        ),
        (
            "vision_cfg",
            "image_size",
            serde_json::json!([224, 160]),
            "`vision_cfg.image_size`",
        ),
        (
            "vision_cfg",
            "patch_size",
            serde_json::json!(128),
            "`vision_cfg.patch_size`",
        ),
        (
            "vision_cfg",
            "head_width",
            serde_json::json!(128),
            "`vision_cfg.head_width` = 128 is not at most width",
        ),
        (
            "vision_cfg",
            "head_width",
            serde_json::json!(20),
            "not a multiple of the head count 3",
        ),
        (
            "vision_cfg",
            "mlp_ratio",
            serde_json::json!(-1.0),
            "`vision_cfg.mlp_ratio`",
        ),
        (
            "vision_cfg",
            "act_kwargs",
            serde_json::json!({"approximate": "tanh"}),
            "`vision_cfg.act_kwargs`",
        ),
        (
            "vision_cfg",
            "norm_kwargs",
            serde_json::json!({"eps": -1}),
            "`vision_cfg.norm_kwargs.eps`",
        ),
        (
            "vision_cfg",
            "qk_norm",
            serde_json::json!(true),
            "`vision_cfg.qk_norm`",
        ),
        (
            "vision_cfg",
            "no_ln_pre",
            serde_json::json!(true),
            "`vision_cfg.no_ln_pre`",
        ),
        (
            "vision_cfg",
            "pos_embed_type",
            serde_json::json!("sin_cos_2d"),
            "`vision_cfg.pos_embed_type`",
        ),
        (
            "text_cfg",
            "embed_cls",
            serde_json::json!(true),
            "`text_cfg.embed_cls`",
        ),
        (
            "text_cfg",
            "pool_type",
            serde_json::json!("eos"),
            "`text_cfg.pool_type`",
        ),
        (
            "text_cfg",
            "proj_bias",
            serde_json::json!(true),
            "`text_cfg.proj_bias`",
        ),
        (
            "text_cfg",
            "proj_type",
            serde_json::json!("mlp"),
            "`text_cfg.proj_type`",
        ),
        (
            "text_cfg",
            "pad_id",
            serde_json::json!("zero"),
            "`text_cfg.pad_id`",
        ),
        (
            "text_cfg",
            "heads",
            serde_json::json!(5),
            "`text_cfg.width` = 32 is not a multiple",
        ),
    ];
    for (section, key, value, says) in cases {
        let mut json = base.clone();
        let target = if section.is_empty() {
            &mut json
        } else {
            &mut json[section]
        };
        target[key] = value;
        let msg = match parse(&json.to_string(), Path::new("cfg.json")) {
            Ok(_) => panic!("{section}.{key}: accepted"),
            Err(e) => format!("{e:#}"),
        };
        assert!(
            msg.contains("cfg.json") && msg.contains(says),
            "{section}.{key}: {msg}"
        );
    }
    let msg = parse(
        "{\"embed_dim\": 8, \"vision_cfg\": null}",
        Path::new("cfg.json"),
    )
    .err()
    .unwrap()
    .to_string();
    assert!(msg.contains("neither `vision_cfg` nor `text_cfg`"), "{msg}");
    let msg = parse("{not json", Path::new("cfg.json"))
        .err()
        .unwrap()
        .to_string();
    assert!(msg.contains("cfg.json is not valid JSON"), "{msg}");
}

#[test]
fn open_clip_preprocess_cfg_is_read_and_checked() {
    use fedclip::preprocess::{PreprocessConfig, Resample};
    // The hub fixture's preprocess_cfg is OpenAI's.
    let cfg = PreprocessConfig::from_model_dir(&model_dir("oc-tiny-quickgelu"), 64).unwrap();
    assert_eq!(cfg, PreprocessConfig::openai(64));
    let json = |s: &str| -> serde_json::Map<String, serde_json::Value> {
        serde_json::from_str(s).unwrap()
    };
    let c = PreprocessConfig::from_open_clip(
        &json(r#"{"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "interpolation": "bilinear", "size": 96}"#),
        64,
    )
    .unwrap();
    assert_eq!(
        (c.mean, c.std, c.resample),
        ([0.5; 3], [0.5; 3], Resample::Bilinear)
    );
    assert_eq!(
        (c.resize_shortest, c.crop_height, c.crop_width),
        (96, 96, 96)
    );
    for (bad, says) in [
        (r#"{"resize_mode": "squash"}"#, "`resize_mode`"),
        (r#"{"interpolation": "lanczos"}"#, "`interpolation`"),
        (r#"{"std": [0.5, 0.0, 0.5]}"#, "`std`: must not contain 0"),
        (r#"{"mean": [0.5]}"#, "mean"),
        (r#"{"size": [224, 160]}"#, "only square sizes"),
        (r#"{"mode": "L"}"#, "`mode`"),
    ] {
        let msg = format!(
            "{:#}",
            PreprocessConfig::from_open_clip(&json(bad), 64).unwrap_err()
        );
        assert!(msg.contains(says), "{bad}: {msg}");
    }
    // In a model folder the error names the file.
    let tmp = edited_copy("oc-tiny-quickgelu", "open_clip_config.json", |j| {
        j["preprocess_cfg"]["resize_mode"] = serde_json::json!("longest");
    });
    let msg = format!(
        "{:#}",
        PreprocessConfig::from_model_dir(tmp.path(), 64).unwrap_err()
    );
    assert!(
        msg.contains("open_clip_config.json") && msg.contains("resize_mode"),
        "{msg}"
    );
}

#[test]
fn a_vocabulary_other_than_openai_needs_a_tokenizer_file() {
    // oc-tiny-gelu has 1000 tokens: the bundled BPE does not fit it.
    let msg = ClipTokenizer::load(&model_dir("oc-tiny-gelu"), 77, TokenizerKind::Openai)
        .err()
        .unwrap()
        .to_string();
    assert!(
        msg.contains("vocab_size is 1000") && msg.contains("tokenizer.json"),
        "{msg}"
    );
}
