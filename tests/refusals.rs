//! What fedclip refuses, and that each refusal names the thing: hostile images, untrustworthy
//! model configs, non-finite results, unreadable formats and paths (README: "What fedclip
//! refuses"). Every test checks the message.

mod common;

use common::repo;
use fedclip::preprocess::{DEFAULT_MAX_IMAGE_PIXELS, decode_bytes_limited, header_dimensions};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn fedclip(args: &[&std::ffi::OsStr]) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_fedclip"))
        .args(args)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "the CLI panicked: {stderr}");
    assert!(out.status.code().is_some(), "killed by a signal: {stderr}");
    out
}

fn os<S: AsRef<std::ffi::OsStr> + ?Sized>(s: &S) -> &std::ffi::OsStr {
    s.as_ref()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn pacs_image(name: &str) -> Vec<u8> {
    std::fs::read(repo().join("tests/fixtures/images/pacs").join(name)).unwrap()
}

/// A real PNG whose IHDR is rewritten to claim `w × h` (the CRC is left stale: the size is
/// read before anything checks it).
fn png_claiming(w: u32, h: u32) -> Vec<u8> {
    let mut png = pacs_image("sketch_dog_5281.png");
    png[16..20].copy_from_slice(&w.to_be_bytes());
    png[20..24].copy_from_slice(&h.to_be_bytes());
    png.truncate(300);
    png
}

/// A real JPEG whose frame header (SOF0) is rewritten to claim `w × h`.
fn jpeg_claiming(w: u16, h: u16) -> Vec<u8> {
    let mut jpg = pacs_image("photo_dog_056_0001.jpg");
    let sof = jpg
        .windows(2)
        .position(|m| m == [0xFF, 0xC0])
        .expect("baseline JPEG");
    jpg[sof + 5..sof + 7].copy_from_slice(&h.to_be_bytes());
    jpg[sof + 7..sof + 9].copy_from_slice(&w.to_be_bytes());
    jpg
}

fn embed_args(images: &Path, out: &Path) -> Vec<PathBuf> {
    ["embed", "--device", "cpu", "--images"]
        .iter()
        .map(PathBuf::from)
        .chain([images.to_path_buf(), "--out".into(), out.to_path_buf()])
        .collect()
}

fn run_embed(args: &[PathBuf], extra: &[&str]) -> Output {
    let mut all: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_os_str()).collect();
    all.extend(extra.iter().map(os));
    fedclip(&all)
}

#[test]
fn header_sizes_are_read_without_decoding() {
    assert_eq!(
        header_dimensions(&png_claiming(100_000, 100_000)),
        Some((100_000, 100_000))
    );
    assert_eq!(
        header_dimensions(&jpeg_claiming(65_535, 65_535)),
        Some((65_535, 65_535))
    );
    assert_eq!(header_dimensions(b"not an image"), None);
}

#[test]
fn decompression_bombs_are_refused_before_allocating() {
    for (name, bytes) in [
        ("bomb.png", png_claiming(100_000, 100_000)),
        ("bomb.jpg", jpeg_claiming(65_535, 65_535)),
    ] {
        let t = std::time::Instant::now();
        let msg = format!(
            "{:#}",
            decode_bytes_limited(&bytes, name, DEFAULT_MAX_IMAGE_PIXELS).unwrap_err()
        );
        assert!(
            msg.contains(name) && msg.contains("decompression bomb") && msg.contains("pixels"),
            "{msg}"
        );
        // Refused from the header, not after a 12 GB decode (a bound, not a benchmark).
        assert!(t.elapsed().as_secs() < 5, "{name} took {:?}", t.elapsed());
    }
    let msg = format!(
        "{:#}",
        decode_bytes_limited(&png_claiming(100_000, 100_000), "b.png", 1000).unwrap_err()
    );
    assert!(msg.contains("100000x100000 = 10000000000 pixels"), "{msg}");
}

#[test]
fn cli_refuses_bombs_naming_file_and_size_and_skip_bad_skips_them() {
    let tmp = tempfile::tempdir().unwrap();
    let images = tmp.path().join("imgs");
    std::fs::create_dir(&images).unwrap();
    std::fs::write(
        images.join("a_good.jpg"),
        pacs_image("photo_dog_056_0001.jpg"),
    )
    .unwrap();
    std::fs::write(images.join("b_bomb.png"), png_claiming(100_000, 100_000)).unwrap();
    std::fs::write(images.join("c_bomb.jpg"), jpeg_claiming(65_535, 65_535)).unwrap();
    let out = tmp.path().join("o.safetensors");
    let args = embed_args(&images, &out);
    let o = run_embed(&args, &[]);
    let err = stderr(&o);
    assert!(!o.status.success());
    // One error lists both bad files, each with its claimed size.
    for want in [
        "b_bomb.png",
        "100000x100000",
        "c_bomb.jpg",
        "65535x65535",
        "2 images",
    ] {
        assert!(err.contains(want), "missing {want}: {err}");
    }
    assert!(!out.exists());
    let o = run_embed(&args, &["--skip-bad"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let bytes = std::fs::read(&out).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let meta = meta.metadata().clone().unwrap();
    assert_eq!(meta["skipped"], r#"["b_bomb.png","c_bomb.jpg"]"#);
}

#[test]
fn max_image_pixels_warns_above_and_refuses_above_twice() {
    let tmp = tempfile::tempdir().unwrap();
    let images = tmp.path().join("imgs");
    std::fs::create_dir(&images).unwrap();
    let jpg = pacs_image("photo_dog_056_0001.jpg");
    let (w, h) = header_dimensions(&jpg).unwrap();
    std::fs::write(images.join("dog.jpg"), &jpg).unwrap();
    let out = tmp.path().join("o.safetensors");
    let args = embed_args(&images, &out);
    let limit = (w * h - 1).to_string();
    let o = run_embed(&args, &["--max-image-pixels", &limit]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("warning: image") && stderr(&o).contains("over --max-image-pixels"),
        "{}",
        stderr(&o)
    );
    let limit = (w * h / 2 - 1).to_string();
    let o = run_embed(&args, &["--max-image-pixels", &limit]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("dog.jpg") && stderr(&o).contains(&format!("{w}x{h}")),
        "{}",
        stderr(&o)
    );
    let o = run_embed(&args, &["--max-image-pixels", "0"]);
    assert!(
        !o.status.success() && stderr(&o).contains("--max-image-pixels"),
        "{}",
        stderr(&o)
    );
}

/// A writable copy of a bundled or fixture model directory.
fn model_copy(src: &str) -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("model");
    std::fs::create_dir(&dir).unwrap();
    for entry in std::fs::read_dir(repo().join(src)).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, dir.join(path.file_name().unwrap())).unwrap();
    }
    (tmp, dir)
}

fn edit_config(dir: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let file = dir.join("config.json");
    let mut json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    edit(&mut json);
    std::fs::write(&file, json.to_string()).unwrap();
}

fn load_error(dir: &Path) -> String {
    match fedclip::model::ClipModel::load(dir) {
        Ok(_) => panic!("{} loaded, but its config is wrong", dir.display()),
        Err(e) => format!("{e:#}"),
    }
}

#[test]
fn layer_norm_eps_must_be_positive_and_finite() {
    for (bad, shown) in [(0.0, "0e0"), (-1e-5, "-1e-5"), (1e300, "1e300")] {
        let (_tmp, dir) = model_copy("tests/fixtures/models/tiny-f32");
        edit_config(&dir, |c| c["vision_config"]["layer_norm_eps"] = bad.into());
        let msg = load_error(&dir);
        assert!(
            msg.contains("`vision_config.layer_norm_eps`")
                && msg.contains(shown)
                && msg.contains("positive and finite"),
            "{msg}"
        );
    }
}

#[test]
fn layer_count_must_match_the_checkpoint() {
    let (_tmp, dir) = model_copy("tests/fixtures/models/tiny-f32");
    edit_config(&dir, |c| c["text_config"]["num_hidden_layers"] = 1.into());
    let msg = load_error(&dir);
    assert!(
        msg.contains("config.json")
            && msg.contains("text config's `num_hidden_layers` is 1")
            && msg.contains("model.safetensors holds 2 text layers"),
        "{msg}"
    );
    edit_config(&dir, |c| c["text_config"]["num_hidden_layers"] = 0.into());
    let msg = load_error(&dir);
    assert!(
        msg.contains("`text_config.num_hidden_layers` must be positive"),
        "{msg}"
    );
}

#[test]
fn config_type_errors_name_the_field_path() {
    let (_tmp, dir) = model_copy("tests/fixtures/models/tiny-f32");
    edit_config(&dir, |c| c["vision_config"]["hidden_size"] = "wide".into());
    let msg = load_error(&dir);
    assert!(
        msg.contains("config.json")
            && msg.contains("field `vision_config.hidden_size`")
            && msg.contains("invalid type"),
        "{msg}"
    );
    edit_config(&dir, |c| {
        c["vision_config"]["hidden_size"] = 64.into();
        c["text_config"]["eos_token_id"] = (-3).into();
    });
    let msg = load_error(&dir);
    assert!(msg.contains("field `text_config.eos_token_id`"), "{msg}");
    edit_config(&dir, |c| {
        c["text_config"]["eos_token_id"] = 49407.into();
        c["text_config"]["num_attention_heads"] = 5.into();
    });
    let msg = load_error(&dir);
    assert!(
        msg.contains("`text_config.hidden_size` = 24 is not a multiple of `text_config.num_attention_heads` = 5"),
        "{msg}"
    );
}

/// Replaces one tensor of `dir`'s model.safetensors by f32 NaNs of the same shape.
fn poison_tensor(dir: &Path, name: &str) {
    use safetensors::{Dtype, SafeTensors, tensor::TensorView};
    let file = dir.join("model.safetensors");
    let bytes = std::fs::read(&file).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let mut tensors: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = st
        .tensors()
        .into_iter()
        .map(|(n, v)| (n, v.dtype(), v.shape().to_vec(), v.data().to_vec()))
        .collect();
    let t = tensors.iter_mut().find(|t| t.0 == name).unwrap();
    let count: usize = t.2.iter().product();
    t.1 = Dtype::F32;
    t.3 = f32::NAN.to_le_bytes().repeat(count);
    let views: Vec<(String, TensorView)> = tensors
        .iter()
        .map(|(n, d, s, b)| (n.clone(), TensorView::new(*d, s.clone(), b).unwrap()))
        .collect();
    safetensors::serialize_to_file(views, None, &file).unwrap();
}

#[test]
fn non_finite_embeddings_are_an_error_naming_batch_and_input() {
    let (tmp, model) = model_copy("weights/tiny-clip");
    poison_tensor(&model, "visual_projection.weight");
    poison_tensor(&model, "text_projection.weight");
    let images = tmp.path().join("imgs");
    std::fs::create_dir(&images).unwrap();
    std::fs::write(images.join("dog.jpg"), pacs_image("photo_dog_056_0001.jpg")).unwrap();
    let out = tmp.path().join("o.safetensors");
    let mut args = embed_args(&images, &out);
    args.extend(["--model".into(), model.clone()]);
    let o = run_embed(&args, &[]);
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(
        err.contains("non-finite image embedding (NaN)")
            && err.contains("`dog.jpg`")
            && err.contains("batch 0"),
        "{err}"
    );
    assert!(!out.exists(), "nothing written");
    let prompts = tmp.path().join("p.txt");
    std::fs::write(&prompts, "a dog\na cat\n").unwrap();
    let o = fedclip(&[
        os("embed"),
        os("--device"),
        os("cpu"),
        os("--model"),
        model.as_os_str(),
        os("--texts"),
        prompts.as_os_str(),
        os("--out"),
        out.as_os_str(),
    ]);
    let err = stderr(&o);
    assert!(
        !o.status.success()
            && err.contains("non-finite prompt embedding")
            && err.contains("`a dog`"),
        "{err}"
    );
    assert!(!out.exists(), "nothing written");
}

/// A two-domain dataset of real PACS images: `<root>/<d>/<c>/<i>.jpg`.
fn small_dataset(root: &Path) {
    let pics = [
        "art_painting_dog_pic_001.jpg",
        "cartoon_house_pic_001.jpg",
        "photo_dog_056_0001.jpg",
    ];
    for d in ["d1", "d2"] {
        for c in ["dog", "house"] {
            let dir = root.join(d).join(c);
            std::fs::create_dir_all(&dir).unwrap();
            for (i, p) in pics.iter().enumerate() {
                std::fs::write(dir.join(format!("{i}.jpg")), pacs_image(p)).unwrap();
            }
        }
    }
}

#[test]
fn run_refuses_formats_it_does_not_decode_before_any_work() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    small_dataset(&data);
    std::fs::write(data.join("d2/dog/scan.bmp"), b"BM not decoded").unwrap();
    let o = fedclip(&[
        os("run"),
        os("--device"),
        os("cpu"),
        os("--data"),
        data.as_os_str(),
        os("--out"),
        tmp.path().join("run").as_os_str(),
        os("--cache-dir"),
        tmp.path().join("cache").as_os_str(),
    ]);
    let err = stderr(&o);
    assert!(
        !o.status.success()
            && err.contains("--data")
            && err.contains("1 image file(s) in formats fedclip does not decode")
            && err.contains("d2/dog/scan.bmp"),
        "{err}"
    );
    assert!(!tmp.path().join("run").exists(), "nothing started");
}

#[test]
fn embed_ignores_formats_it_does_not_decode_with_a_warning() {
    let tmp = tempfile::tempdir().unwrap();
    let images = tmp.path().join("imgs");
    std::fs::create_dir(&images).unwrap();
    std::fs::write(images.join("a.jpg"), pacs_image("photo_dog_056_0001.jpg")).unwrap();
    std::fs::write(images.join("b.webp"), b"RIFF....WEBP").unwrap();
    let out = tmp.path().join("o.safetensors");
    let o = run_embed(&embed_args(&images, &out), &[]);
    let err = stderr(&o);
    assert!(o.status.success(), "{err}");
    assert!(
        err.contains("ignoring 1 file(s)") && err.contains("b.webp"),
        "{err}"
    );
    let bytes = std::fs::read(&out).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    assert_eq!(meta.metadata().as_ref().unwrap()["images"], r#"["a.jpg"]"#);
}

#[cfg(unix)]
#[test]
fn non_utf8_paths_are_refused_naming_the_flag_and_showing_the_path() {
    use std::os::unix::ffi::OsStrExt;
    let tmp = tempfile::tempdir().unwrap();
    let images = tmp.path().join("imgs");
    std::fs::create_dir(&images).unwrap();
    let bad = std::ffi::OsStr::from_bytes(b"caf\xe9.jpg");
    if std::fs::write(images.join(bad), pacs_image("photo_dog_056_0001.jpg")).is_err() {
        return; // a file system that refuses such names cannot hold them either
    }
    let out = tmp.path().join("o.safetensors");
    let o = run_embed(&embed_args(&images, &out), &[]);
    let err = stderr(&o);
    assert!(
        !o.status.success()
            && err.contains("--images")
            && err.contains(r"caf\xE9.jpg")
            && err.contains("not valid UTF-8"),
        "{err}"
    );
    assert!(!out.exists(), "no names of files that do not exist");
    let mut args = embed_args(&images.join("x.jpg"), &out);
    args[4] = repo().join("tests/fixtures/images/pacs/photo_dog_056_0001.jpg");
    args[6] = tmp
        .path()
        .join(std::ffi::OsStr::from_bytes(b"o\xff.safetensors"));
    let o = run_embed(&args, &[]);
    let err = stderr(&o);
    assert!(
        !o.status.success() && err.contains("--out") && err.contains(r"o\xFF.safetensors"),
        "{err}"
    );
    // In a dataset: the file name is shown escaped and --data named.
    let data = tmp.path().join("data");
    small_dataset(&data);
    std::fs::write(data.join("d1/dog").join(bad), b"x").unwrap();
    let o = fedclip(&[
        os("run"),
        os("--device"),
        os("cpu"),
        os("--data"),
        data.as_os_str(),
        os("--out"),
        tmp.path().join("run").as_os_str(),
    ]);
    let err = stderr(&o);
    assert!(
        !o.status.success() && err.contains("--data") && err.contains(r"caf\xE9.jpg"),
        "{err}"
    );
}

#[test]
fn embed_output_is_byte_identical_across_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let images = tmp.path().join("imgs");
    std::fs::create_dir(&images).unwrap();
    std::fs::write(images.join("a.jpg"), pacs_image("photo_dog_056_0001.jpg")).unwrap();
    std::fs::write(images.join("b.jpg"), b"bad").unwrap();
    let prompts = tmp.path().join("p.txt");
    std::fs::write(&prompts, "a dog\n").unwrap();
    let mut outputs = Vec::new();
    // Four metadata keys: 24 orders, so HashMap order would differ within a few runs.
    for i in 0..4 {
        let out = tmp.path().join(format!("o{i}.safetensors"));
        let mut args = embed_args(&images, &out);
        args.extend(["--texts".into(), prompts.clone()]);
        let o = run_embed(&args, &["--skip-bad"]);
        assert!(o.status.success(), "{}", stderr(&o));
        outputs.push(std::fs::read(&out).unwrap());
    }
    assert!(outputs.windows(2).all(|w| w[0] == w[1]), "outputs differ");
    let (_, meta) = safetensors::SafeTensors::read_metadata(&outputs[0]).unwrap();
    let keys: Vec<String> = {
        let mut k: Vec<String> = meta.metadata().as_ref().unwrap().keys().cloned().collect();
        k.sort();
        k
    };
    assert_eq!(keys, ["images", "model", "skipped", "texts"]);
}

/// The README's main command from a binary moved away from the checkout: a clear error
/// naming the bundled folder and the flag, not a missing path from the build machine.
#[test]
fn moved_binary_finds_the_bundle_or_says_where_it_looked() {
    let tmp = tempfile::tempdir().unwrap();
    let exe = tmp.path().join("fedclip");
    std::fs::copy(env!("CARGO_BIN_EXE_fedclip"), &exe).unwrap();
    let run = |bundle: Option<&Path>| {
        let mut cmd = Command::new(&exe);
        cmd.args(["run", "--device", "cpu", "--rounds", "1"])
            .current_dir(tmp.path())
            .env_remove("FEDCLIP_BUNDLE");
        cmd.arg("--out").arg(tmp.path().join("run"));
        cmd.arg("--cache-dir").arg(tmp.path().join("cache"));
        if let Some(b) = bundle {
            cmd.env("FEDCLIP_BUNDLE", b);
        }
        cmd.output().unwrap()
    };
    let o = run(None);
    let err = stderr(&o);
    assert!(
        !o.status.success()
            && err.contains("bundled data/pacs-mini was not found")
            && err.contains("--data")
            && err.contains("FEDCLIP_BUNDLE"),
        "{err}"
    );
    let o = run(Some(&repo()));
    assert!(o.status.success(), "{}", stderr(&o));
}

#[test]
fn warnings_are_printed_once() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    // PACS's domains with two of its seven classes: a "subset?" warning from the scan.
    for d in ["art_painting", "cartoon", "photo", "sketch"] {
        for c in ["dog", "house"] {
            let dir = data.join(d).join(c);
            std::fs::create_dir_all(&dir).unwrap();
            for i in 0..3 {
                std::fs::write(
                    dir.join(format!("{i}.jpg")),
                    pacs_image("photo_dog_056_0001.jpg"),
                )
                .unwrap();
            }
        }
    }
    let o = fedclip(&[
        os("run"),
        os("--device"),
        os("cpu"),
        os("--rounds"),
        os("1"),
        os("--data"),
        data.as_os_str(),
        os("--out"),
        tmp.path().join("run").as_os_str(),
        os("--cache-dir"),
        tmp.path().join("cache").as_os_str(),
    ]);
    let err = stderr(&o);
    assert!(o.status.success(), "{err}");
    assert_eq!(err.matches("a subset?").count(), 1, "{err}");
}

#[test]
fn lr_and_weight_decay_have_help() {
    let o = fedclip(&[os("run"), os("--help")]);
    let help = String::from_utf8_lossy(&o.stdout);
    for flag in ["--lr", "--weight-decay", "--max-image-pixels"] {
        let line = help
            .lines()
            .position(|l| l.trim_start().starts_with(flag))
            .unwrap_or_else(|| panic!("{flag} missing: {help}"));
        let next = help.lines().nth(line + 1).unwrap_or("");
        let text = format!("{} {next}", help.lines().nth(line).unwrap());
        assert!(
            text.trim_end() != flag && text.split_whitespace().count() > 3,
            "{flag} has no help: {text}"
        );
    }
}

/// Found by tests/fuzz_loaders.rs: the tokenizers crate panics on some invalid JSON.
#[test]
fn invalid_tokenizer_json_is_an_error_not_a_panic() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(
        tmp.path().join("tokenizer.json"),
        r#"{"decoder": {"type": "ByteLevel" "add_prefix_space": true}}"#,
    )
    .unwrap();
    let msg = match fedclip::tokenizer::ClipTokenizer::load(
        tmp.path(),
        77,
        fedclip::tokenizer::TokenizerKind::Openai,
    ) {
        Ok(_) => panic!("loaded"),
        Err(e) => format!("{e:#}"),
    };
    assert!(
        msg.contains("tokenizer.json") && msg.contains("not valid JSON"),
        "{msg}"
    );
}
