//! The four OpenAI ViT CLIP shapes load, and ViT-B/32 runs end to end with random weights.

mod common;

use common::repo;
use fedclip::model::ClipModel;
use fedclip::weights::{ClipConfig, write_random_clip};

fn config_text(name: &str) -> String {
    std::fs::read_to_string(repo().join(format!("tests/fixtures/configs/{name}.json"))).unwrap()
}

#[test]
fn real_configs_give_real_shapes() {
    for (name, tokens, width, heads, proj, argmax) in [
        ("clip-vit-base-patch32", 50, 768, 12, 512, true),
        ("clip-vit-base-patch16", 197, 768, 12, 512, true),
        ("clip-vit-large-patch14", 257, 1024, 16, 768, true),
        ("clip-vit-large-patch14-336", 577, 1024, 16, 768, true),
    ] {
        let cfg = ClipConfig::parse(&config_text(name), std::path::Path::new(name)).unwrap();
        let v = cfg.vision.unwrap();
        let t = cfg.text.unwrap();
        assert_eq!(
            (v.num_positions(), v.hidden_size, v.num_attention_heads),
            (tokens, width, heads),
            "{name}"
        );
        assert_eq!((v.head_dim(), t.head_dim()), (64, 64), "{name}");
        assert_eq!((v.projection_dim, t.projection_dim), (proj, proj), "{name}");
        assert_eq!(
            t.pools_at_argmax(),
            argmax,
            "{name}: openai saves carry eos_token_id 2"
        );
    }
}

#[test]
fn vit_b32_random_weights_encode_and_batch_consistently() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("b32");
    write_random_clip(&dir, &config_text("clip-vit-base-patch32"), 7).unwrap();
    let model = ClipModel::load(&dir).unwrap();
    let vision = model.vision.as_ref().unwrap();
    let per = vision.pixels_per_image();
    let pixels: Vec<f32> = (0..2 * per)
        .map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0)
        .collect();
    let both = vision.forward(&pixels, 2, false).embeds;
    assert_eq!(both.len(), 2 * 512);
    assert!(both.iter().all(|v| v.is_finite()));
    // Each image's result does not depend on its batch mates.
    let second = vision.forward(&pixels[per..], 1, false).embeds;
    common::assert_close("B/32 batch vs single", &both[512..], &second, 1e-5);
    assert!(
        common::relative_error(&both[..512], &both[512..]) > 1e-2,
        "different images differ"
    );

    let text = model.text.as_ref().unwrap();
    // Legacy eos_token_id 2: pooled at the highest id, the end token 49407.
    let ids = [49406, 320, 1929, 539, 320, 1929, 49407, 0, 0];
    let out = text.forward(&ids, 1, ids.len(), false).unwrap();
    let trimmed = text.forward(&ids[..7], 1, 7, false).unwrap();
    assert_eq!(out.embeds.len(), 512);
    common::assert_close("B/32 text padding-free", &out.embeds, &trimmed.embeds, 1e-5);
    assert!((model.logit_scale.unwrap() - 100f32.ln()).abs() < 1e-2);
}

/// The larger shapes load from a real-layout save and encode one image: 197 and 577 tokens.
#[test]
fn vit_b16_and_l14_336_random_weights_load_and_encode() {
    for (name, proj) in [
        ("clip-vit-base-patch16", 512),
        ("clip-vit-large-patch14-336", 768),
    ] {
        let tmp = tempfile::tempdir().unwrap();
        write_random_clip(tmp.path(), &config_text(name), 3).unwrap();
        let model = ClipModel::load(tmp.path()).unwrap();
        let vision = model.vision.as_ref().unwrap();
        let pixels: Vec<f32> = (0..vision.pixels_per_image())
            .map(|i| ((i * 31) % 255) as f32 / 128.0 - 1.0)
            .collect();
        let out = vision.forward(&pixels, 1, false);
        assert_eq!(out.embeds.len(), proj, "{name}");
        assert!(out.embeds.iter().all(|v| v.is_finite()), "{name}");
        let norm: f32 = out.embeds.iter().map(|v| v * v).sum::<f32>().sqrt();
        assert!(norm > 1e-3, "{name}: degenerate output");
    }
}
