//! The CPU engine against transformers, layer by layer and end to end, on the random-weight
//! models and outputs made by tests/reference/make_fixtures.py.

mod common;

use common::{Fixture, assert_close, relative_error, repo};
use fedclip::model::ClipModel;
use fedclip::model::cpu::{Isa, Kernels};
use std::path::PathBuf;

/// f32 math against PyTorch's f32 math on the same weights.
const REL: f32 = 1e-4;

fn model_dir(name: &str) -> PathBuf {
    if name == "tiny-clip" {
        repo().join("weights/tiny-clip")
    } else {
        repo().join("tests/fixtures/models").join(name)
    }
}

/// Every kernel family this CPU runs, printing the ones it skips.
fn isas() -> Vec<Isa> {
    Isa::ALL
        .into_iter()
        .filter(|isa| match isa.missing_feature() {
            None => true,
            Some(f) => {
                println!("{}: skipped: no {f}", isa.name());
                false
            }
        })
        .collect()
}

fn load(name: &str, isa: Isa) -> ClipModel {
    ClipModel::load_with(&model_dir(name), Kernels::for_isa(isa).unwrap()).unwrap()
}

fn check_vision(name: &str) {
    for isa in isas() {
        println!("{name}: {} kernels", isa.name());
        check_vision_on(name, isa);
    }
}

fn check_text(name: &str) {
    for isa in isas() {
        println!("{name}: {} kernels", isa.name());
        check_text_on(name, isa);
    }
}

fn check_vision_on(name: &str, isa: Isa) {
    let model = load(name, isa);
    let fx = Fixture::load(&repo().join(format!("tests/fixtures/expected/{name}.safetensors")));
    let vision = model.vision.as_ref().expect("vision tower");
    let batch = fx.shape("pixel_values")[0];
    let out = vision.forward(&fx.f32("pixel_values"), batch, true);
    assert_eq!(out.hidden_states.len(), vision.config.num_hidden_layers + 1);
    for (i, h) in out.hidden_states.iter().enumerate() {
        let want = fx.f32(&format!("vision.hidden_states.{i}"));
        assert_close(&format!("{name} vision.hidden_states.{i}"), h, &want, REL);
    }
    assert_close(
        &format!("{name} vision.pooled"),
        &out.pooled,
        &fx.f32("vision.pooled"),
        REL,
    );
    if !vision.has_projection() {
        assert!(
            out.embeds.is_empty() && !fx.has("image_embeds"),
            "{name}: no projection"
        );
        return;
    }
    let want = fx.f32("image_embeds");
    assert_close(&format!("{name} image_embeds"), &out.embeds, &want, REL);
    println!(
        "{name}: image_embeds relative error {:.2e}",
        relative_error(&out.embeds, &want)
    );
}

fn check_text_on(name: &str, isa: Isa) {
    let model = load(name, isa);
    let fx = Fixture::load(&repo().join(format!("tests/fixtures/expected/{name}.safetensors")));
    let text = model.text.as_ref().expect("text tower");
    let shape = fx.shape("input_ids");
    let out = text
        .forward(&fx.ids("input_ids"), shape[0], shape[1], true)
        .unwrap();
    assert_eq!(out.hidden_states.len(), text.config.num_hidden_layers + 1);
    for (i, h) in out.hidden_states.iter().enumerate() {
        let want = fx.f32(&format!("text.hidden_states.{i}"));
        assert_close(&format!("{name} text.hidden_states.{i}"), h, &want, REL);
    }
    let want = fx.f32("text.last_hidden_state");
    assert_close(
        &format!("{name} text.last_hidden_state"),
        &out.last_hidden_state,
        &want,
        REL,
    );
    assert_close(
        &format!("{name} text.pooled"),
        &out.pooled,
        &fx.f32("text.pooled"),
        REL,
    );
    let want = fx.f32("text_embeds");
    assert_close(&format!("{name} text_embeds"), &out.embeds, &want, REL);
    println!(
        "{name}: text_embeds relative error {:.2e}",
        relative_error(&out.embeds, &want)
    );
    // Untraced (pooled rows only) must agree with the traced path.
    let fast = text
        .forward(&fx.ids("input_ids"), shape[0], shape[1], false)
        .unwrap();
    assert_close(
        &format!("{name} text_embeds untraced"),
        &fast.embeds,
        &want,
        REL,
    );
    if fx.has("logit_scale") {
        let want = fx.f32("logit_scale")[0];
        assert_eq!(model.logit_scale, Some(want), "{name} logit_scale");
    }
}

#[test]
fn tiny_f32_vision_matches_transformers() {
    check_vision("tiny-f32");
}

#[test]
fn tiny_f32_text_matches_transformers() {
    check_text("tiny-f32");
}

#[test]
fn tiny_f16_matches_transformers() {
    check_vision("tiny-f16");
    check_text("tiny-f16");
}

#[test]
fn gelu_sharded_model_matches_transformers() {
    check_vision("tiny-gelu-sharded");
    check_text("tiny-gelu-sharded");
}

#[test]
fn vision_only_save_matches_transformers() {
    let model = ClipModel::load(&model_dir("tiny-vision-only")).unwrap();
    assert!(model.text.is_none());
    check_vision("tiny-vision-only");
}

#[test]
fn bundled_tiny_clip_matches_transformers() {
    check_vision("tiny-clip");
    check_text("tiny-clip");
}

#[test]
fn bare_vision_save_without_prefix_or_projection_matches_transformers() {
    let model = ClipModel::load(&model_dir("tiny-vision-bare")).unwrap();
    assert!(model.text.is_none() && !model.vision.as_ref().unwrap().has_projection());
    check_vision("tiny-vision-bare");
}
