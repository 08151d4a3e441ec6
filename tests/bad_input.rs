//! Every kind of bad input gives an error that names the file and the tensor or field,
//! a non-zero exit code from the CLI, and no panic.

mod common;

use common::repo;
use fedclip::model::ClipModel;
use safetensors::{Dtype, SafeTensors, tensor::TensorView};
use std::path::{Path, PathBuf};
use std::process::Command;

/// A writable copy of the small f32 fixture model.
fn model_copy() -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("model");
    std::fs::create_dir(&dir).unwrap();
    let src = repo().join("tests/fixtures/models/tiny-f32");
    for entry in std::fs::read_dir(&src).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, dir.join(path.file_name().unwrap())).unwrap();
    }
    (tmp, dir)
}

fn load_error(dir: &Path) -> String {
    match ClipModel::load(dir) {
        Ok(_) => panic!("{} loaded, but it is broken", dir.display()),
        Err(e) => format!("{e:#}"),
    }
}

/// Rewrites model.safetensors with `edit` applied to its (name, dtype, shape, bytes) list.
fn rewrite_weights(dir: &Path, edit: impl FnOnce(&mut Vec<(String, Dtype, Vec<usize>, Vec<u8>)>)) {
    let file = dir.join("model.safetensors");
    let bytes = std::fs::read(&file).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let mut tensors: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = st
        .tensors()
        .into_iter()
        .map(|(n, v)| (n, v.dtype(), v.shape().to_vec(), v.data().to_vec()))
        .collect();
    edit(&mut tensors);
    let views: Vec<(String, TensorView)> = tensors
        .iter()
        .map(|(n, d, s, b)| (n.clone(), TensorView::new(*d, s.clone(), b).unwrap()))
        .collect();
    safetensors::serialize_to_file(views, None, &file).unwrap();
}

const FC1: &str = "vision_model.encoder.layers.0.mlp.fc1.weight";

#[test]
fn truncated_safetensors_names_the_file() {
    let (_tmp, dir) = model_copy();
    let file = dir.join("model.safetensors");
    let bytes = std::fs::read(&file).unwrap();
    std::fs::write(&file, &bytes[..bytes.len() / 2]).unwrap();
    let msg = load_error(&dir);
    assert!(
        msg.contains("model.safetensors") && msg.contains("truncated or corrupt"),
        "{msg}"
    );
}

#[test]
fn garbage_safetensors_names_the_file() {
    let (_tmp, dir) = model_copy();
    std::fs::write(
        dir.join("model.safetensors"),
        b"this is not a tensor file at all",
    )
    .unwrap();
    let msg = load_error(&dir);
    assert!(
        msg.contains("model.safetensors") && msg.contains("not a valid safetensors"),
        "{msg}"
    );
}

#[test]
fn missing_tensor_is_named() {
    let (_tmp, dir) = model_copy();
    rewrite_weights(&dir, |t| t.retain(|(n, ..)| n != FC1));
    let msg = load_error(&dir);
    assert!(msg.contains("missing tensor") && msg.contains(FC1), "{msg}");
}

#[test]
fn shape_disagreeing_with_config_is_named() {
    let (_tmp, dir) = model_copy();
    let cfg = dir.join("config.json");
    let mut json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&cfg).unwrap()).unwrap();
    json["vision_config"]["intermediate_size"] = serde_json::json!(73);
    std::fs::write(&cfg, json.to_string()).unwrap();
    let msg = load_error(&dir);
    assert!(
        msg.contains(FC1) && msg.contains("has shape") && msg.contains("config.json"),
        "{msg}"
    );
}

#[test]
fn unknown_dtype_is_named() {
    let (_tmp, dir) = model_copy();
    rewrite_weights(&dir, |t| {
        let fc1 = t.iter_mut().find(|(n, ..)| n == FC1).unwrap();
        fc1.1 = Dtype::I32; // same byte size as F32
    });
    let msg = load_error(&dir);
    assert!(msg.contains(FC1) && msg.contains("I32"), "{msg}");
}

#[test]
fn missing_config_is_named() {
    let (_tmp, dir) = model_copy();
    std::fs::remove_file(dir.join("config.json")).unwrap();
    let msg = load_error(&dir);
    assert!(msg.contains("config.json"), "{msg}");
}

#[test]
fn bad_hidden_act_names_the_field() {
    let (_tmp, dir) = model_copy();
    let cfg = dir.join("config.json");
    let mut json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&cfg).unwrap()).unwrap();
    json["text_config"]["hidden_act"] = serde_json::json!("relu");
    std::fs::write(&cfg, json.to_string()).unwrap();
    let msg = load_error(&dir);
    assert!(
        msg.contains("text_config.hidden_act") && msg.contains("relu"),
        "{msg}"
    );
}

fn fedclip(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_fedclip"))
        .args(args)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!stderr.contains("panicked"), "the CLI panicked: {stderr}");
    (out.status.success(), stderr)
}

#[test]
fn cli_missing_tokenizer_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let prompts = tmp.path().join("prompts.txt");
    std::fs::write(&prompts, "a picture of a dog\n").unwrap();
    let model = repo().join("tests/fixtures/models/tiny-f32"); // saved without a tokenizer
    let out = tmp.path().join("out.safetensors");
    let (ok, err) = fedclip(&[
        "embed",
        "--device",
        "cpu",
        "--model",
        model.to_str().unwrap(),
        "--texts",
        prompts.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(!ok && err.contains("tokenizer.json"), "{err}");
    assert!(!out.exists(), "no output on failure");
}

#[test]
fn cli_empty_image_folder_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let empty = tmp.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let (ok, err) = fedclip(&[
        "embed",
        "--device",
        "cpu",
        "--images",
        empty.to_str().unwrap(),
        "--out",
        tmp.path().join("o.safetensors").to_str().unwrap(),
    ]);
    assert!(
        !ok && err.contains("no images") && err.contains("empty"),
        "{err}"
    );
}

#[test]
fn cli_non_image_file_is_named_and_skippable() {
    let tmp = tempfile::tempdir().unwrap();
    let images = tmp.path().join("imgs");
    std::fs::create_dir(&images).unwrap();
    let good = repo().join("tests/fixtures/images/pacs");
    let first = std::fs::read_dir(&good)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    std::fs::copy(&first, images.join("a_good.jpg")).unwrap();
    std::fs::write(images.join("b_bad.jpg"), b"plain text, not a JPEG").unwrap();
    let out = tmp.path().join("o.safetensors");
    let args = [
        "embed",
        "--device",
        "cpu",
        "--images",
        images.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ];
    let (ok, err) = fedclip(&args);
    assert!(!ok && err.contains("b_bad.jpg"), "{err}");
    assert!(!out.exists(), "no output on failure");

    let (ok, err) = fedclip(&[&args[..], &["--skip-bad"]].concat());
    assert!(ok, "{err}");
    assert!(
        err.contains("warning") && err.contains("b_bad.jpg"),
        "{err}"
    );
    let bytes = std::fs::read(&out).unwrap();
    let (_, meta) = SafeTensors::read_metadata(&bytes).unwrap();
    let meta = meta.metadata().clone().unwrap();
    assert_eq!(meta["images"], r#"["a_good.jpg"]"#);
    assert_eq!(meta["skipped"], r#"["b_bad.jpg"]"#);
    let st = SafeTensors::deserialize(&bytes).unwrap();
    assert_eq!(st.tensor("image_embeds").unwrap().shape(), &[1, 32]);
}

#[test]
fn cli_wrong_flag_and_cuda_request_fail_cleanly() {
    let (ok, err) = fedclip(&["embed", "--no-such-flag"]);
    assert!(!ok && err.contains("--no-such-flag"), "{err}");
    let tmp = tempfile::tempdir().unwrap();
    let prompts = tmp.path().join("p.txt");
    std::fs::write(&prompts, "a dog\n").unwrap();
    let (ok, err) = fedclip(&[
        "embed",
        "--device",
        "cuda",
        "--texts",
        prompts.to_str().unwrap(),
        "--out",
        tmp.path().join("o.safetensors").to_str().unwrap(),
    ]);
    match fedclip::cuda::availability() {
        // Without a usable GPU, asking for one is a clear error, not a fallback.
        Err(why) => assert!(
            !ok && err.contains("--device cuda") && err.contains(&why),
            "{err}"
        ),
        Ok(()) => assert!(ok, "{err}"),
    }
    let (ok, err) = fedclip(&["run", "--rounds", "0", "--bogus"]);
    assert!(!ok && err.contains("--bogus"), "{err}");
}

#[test]
fn cli_overlong_prompt_needs_truncate() {
    let tmp = tempfile::tempdir().unwrap();
    let prompts = tmp.path().join("p.txt");
    std::fs::write(&prompts, format!("{}\n", "dog ".repeat(100))).unwrap();
    let out = tmp.path().join("o.safetensors");
    let base = [
        "embed",
        "--device",
        "cpu",
        "--texts",
        prompts.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ];
    let (ok, err) = fedclip(&base);
    assert!(
        !ok && err.contains("over the context of 77") && err.contains("--truncate"),
        "{err}"
    );
    let (ok, err) = fedclip(&[&base[..], &["--truncate"]].concat());
    assert!(ok, "{err}");
}
