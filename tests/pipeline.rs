//! End to end on the bundled tiny model: tokenizer ids, real JPEGs through the
//! preprocessing and the vision tower, and the `fedclip embed` CLI, all against
//! transformers / torchvision outputs from tests/reference/make_fixtures.py.

mod common;

use common::{Fixture, assert_close, relative_error, repo};
use fedclip::model::ClipModel;
use fedclip::preprocess::{PreprocessConfig, preprocess_file};
use fedclip::tokenizer::{ClipTokenizer, TokenizerKind};
use safetensors::SafeTensors;
use std::process::Command;

fn tiny_clip() -> std::path::PathBuf {
    repo().join("weights/tiny-clip")
}

fn fixture() -> Fixture {
    Fixture::load(&repo().join("tests/fixtures/expected/tiny-clip.safetensors"))
}

fn real_images(fx: &Fixture) -> Vec<String> {
    serde_json::from_str(&fx.metadata["real_images"]).unwrap()
}

#[test]
fn tokenizer_matches_transformers_ids() {
    let tok = ClipTokenizer::load(&tiny_clip(), 77, TokenizerKind::Hf).unwrap();
    let cases: Vec<serde_json::Value> = serde_json::from_str(
        &std::fs::read_to_string(repo().join("tests/fixtures/tokenizer_cases.json")).unwrap(),
    )
    .unwrap();
    assert!(cases.len() >= 10);
    for case in cases {
        let text = case["text"].as_str().unwrap();
        let want: Vec<u32> = case["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        if want.len() > 77 {
            assert!(
                tok.encode(text, false).is_err(),
                "{text:?} is over 77 tokens"
            );
            let cut = tok.encode(text, true).unwrap();
            assert_eq!(cut.len(), 77);
            assert_eq!(&cut[..76], &want[..76], "{text:?}");
            assert_eq!(cut[76], 49407);
        } else {
            assert_eq!(tok.encode(text, false).unwrap(), want, "{text:?}");
        }
    }
}

#[test]
fn real_jpegs_preprocess_like_torchvision() {
    let fx = fixture();
    let cfg = PreprocessConfig::from_model_dir(&tiny_clip(), 224).unwrap();
    let want = fx.f32("real.pixel_values");
    let per = 3 * 224 * 224;
    let mut worst = 0.0f32;
    for (i, name) in real_images(&fx).iter().enumerate() {
        let got = preprocess_file(&repo().join("tests/fixtures/images").join(name), &cfg).unwrap();
        for (j, (g, w)) in got.iter().zip(&want[i * per..(i + 1) * per]).enumerate() {
            // Undo the normalisation: the difference in 0..1 pixel units.
            let d = (g - w).abs() * cfg.std[j / (224 * 224)];
            worst = worst.max(d);
        }
    }
    println!("real JPEGs: max pixel difference {:.3}/255", worst * 255.0);
    assert!(
        worst <= 1.0 / 255.0 + 1e-6,
        "max difference {}/255",
        worst * 255.0
    );
}

#[test]
fn real_images_and_prompts_end_to_end() {
    let fx = fixture();
    let model = ClipModel::load(&tiny_clip()).unwrap();
    let vision = model.vision.as_ref().unwrap();
    let n = fx.shape("real.pixel_values")[0];
    // Same pixels: the tower alone, to the f32 tolerance.
    let out = vision.forward(&fx.f32("real.pixel_values"), n, false);
    assert_close(
        "real.image_embeds",
        &out.embeds,
        &fx.f32("real.image_embeds"),
        1e-4,
    );

    // From the JPEG files through the CLI: the pixels are bit-identical, so the same tolerance.
    let tmp = tempfile::tempdir().unwrap();
    let prompts: Vec<String> = serde_json::from_str(&fx.metadata["real_texts"]).unwrap();
    let texts = tmp.path().join("prompts.txt");
    std::fs::write(&texts, prompts.join("\n")).unwrap();
    let out_file = tmp.path().join("embeds.safetensors");
    let images = real_images(&fx);
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_fedclip"));
    cmd.args(["embed", "--device", "cpu", "--batch", "4", "--texts"])
        .arg(&texts)
        .arg("--out")
        .arg(&out_file)
        .arg("--images");
    for name in &images {
        cmd.arg(repo().join("tests/fixtures/images").join(name));
    }
    let run = cmd.output().unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );

    let bytes = std::fs::read(&out_file).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let read =
        |name: &str| -> Vec<f32> { bytemuck::pod_collect_to_vec(st.tensor(name).unwrap().data()) };
    assert_eq!(st.tensor("image_embeds").unwrap().shape(), &[n, 32]);
    let err = relative_error(&read("image_embeds"), &fx.f32("real.image_embeds"));
    println!(
        "JPEG files → image_embeds: relative error {err:.2e} vs transformers on torchvision pixels"
    );
    assert!(err < 1e-2, "end-to-end relative error {err}");
    // Prompts are tokenized exactly, and padding never reaches the pooled token.
    assert_close(
        "real.text_embeds",
        &read("text_embeds"),
        &fx.f32("real.text_embeds"),
        1e-4,
    );
    let (_, meta) = SafeTensors::read_metadata(&bytes).unwrap();
    let meta = meta.metadata().clone().unwrap();
    let texts_back: Vec<String> = serde_json::from_str(&meta["texts"]).unwrap();
    assert_eq!(texts_back, prompts);
}

#[test]
fn directory_input_is_taken_in_sorted_relative_order() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("data");
    let src = std::fs::read_dir(repo().join("tests/fixtures/images/pacs"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    for rel in ["b/z.jpg", "a/y.JPG", "b/a.jpg", "c.png.txt"] {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::copy(&src, &p).unwrap();
    }
    let entries = fedclip::embed::collect_images(&[root]).unwrap();
    let names: Vec<&str> = entries.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(names, ["a/y.JPG", "b/a.jpg", "b/z.jpg"]);
}
