//! Issue 23 (part A): inputs whose sizes would ask for more memory than exists, files that
//! must not be read (FIFOs, devices, link loops) and outputs that must not be written. Each
//! case ends with an error naming the thing, or the correct outcome, never an abort or a hang.

mod common;

use common::repo;
use fedclip::preprocess::{PreprocessConfig, preprocess_bytes};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Runs the CLI with a time limit (a hang is a failure, not a stuck test), checking it was
/// neither killed by a signal (an abort) nor panicked.
fn fedclip(args: &[&str]) -> Output {
    fedclip_in(None, args)
}

fn fedclip_in(dir: Option<&Path>, args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_fedclip"));
    cmd.args(args).stdout(Stdio::piped()).stderr(Stdio::piped());
    if let Some(d) = dir {
        cmd.current_dir(d);
    }
    let mut child = cmd.spawn().unwrap();
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > Duration::from_secs(120) {
            child.kill().unwrap();
            panic!("fedclip {args:?} did not end within 120 s (a hang)");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked"), "the CLI panicked: {err}");
    assert!(out.status.code().is_some(), "killed by a signal: {err}");
    out
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn pacs_jpeg() -> Vec<u8> {
    std::fs::read(repo().join("tests/fixtures/images/pacs/photo_dog_056_0001.jpg")).unwrap()
}

/// A real, decodable grey PNG of `w × h` pixels (1 × 100000 compresses to a few hundred bytes).
fn thin_png(w: u32, h: u32) -> Vec<u8> {
    let mut out = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut out, w, h);
        enc.set_color(png::ColorType::Grayscale);
        enc.set_depth(png::BitDepth::Eight);
        let mut writer = enc.write_header().unwrap();
        writer
            .write_image_data(&vec![128u8; (w * h) as usize])
            .unwrap();
    }
    out
}

/// A real JPEG whose frame header (SOF0) is rewritten to claim `w × h`.
fn jpeg_claiming(w: u16, h: u16) -> Vec<u8> {
    let mut jpg = pacs_jpeg();
    let sof = jpg
        .windows(2)
        .position(|m| m == [0xFF, 0xC0])
        .expect("baseline JPEG");
    jpg[sof + 5..sof + 7].copy_from_slice(&h.to_be_bytes());
    jpg[sof + 7..sof + 9].copy_from_slice(&w.to_be_bytes());
    jpg
}

#[test]
fn thin_images_are_refused_by_what_the_resize_would_make_of_them() {
    let cfg = PreprocessConfig::openai(224);
    let png = thin_png(1, 100_000);
    assert!(png.len() < 1000, "{} bytes", png.len());
    for (name, bytes, want) in [
        ("thin.png", png, "224x22400000"),
        ("thin.jpg", jpeg_claiming(8, 65_500), "224x1834000"),
        ("wide.jpg", jpeg_claiming(65_500, 8), "1834000x224"),
    ] {
        let t = Instant::now();
        let msg = format!("{:#}", preprocess_bytes(&bytes, name, &cfg).unwrap_err());
        assert!(
            msg.contains(name) && msg.contains(want) && msg.contains("over twice the limit"),
            "{msg}"
        );
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "{name}: {:?}",
            t.elapsed()
        );
    }
    // The limit is the source's (--max-image-pixels): a thin image whose resize fits is
    // preprocessed, and refused under a lower limit.
    let thin = thin_png(4, 2000); // resized: 224 x 112000 = 25 Mpixel
    assert_eq!(
        preprocess_bytes(&thin, "t.png", &cfg).unwrap().len(),
        3 * 224 * 224
    );
    let mut low = cfg.clone();
    low.max_image_pixels = 1_000_000;
    let msg = format!("{:#}", preprocess_bytes(&thin, "t.png", &low).unwrap_err());
    assert!(
        msg.contains("224x112000") && msg.contains("1000000"),
        "{msg}"
    );
}

/// A copy of the tiny model with `preprocessor_config.json` set to `json`.
fn model_with_preprocessor(tmp: &Path, json: &str) -> PathBuf {
    let dir = tmp.join("model");
    std::fs::create_dir_all(&dir).unwrap();
    let src = repo().join("tests/fixtures/models/tiny-f32");
    for entry in std::fs::read_dir(&src).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, dir.join(path.file_name().unwrap())).unwrap();
    }
    std::fs::write(dir.join("preprocessor_config.json"), json).unwrap();
    dir
}

fn image_dir(tmp: &Path, files: &[(&str, Vec<u8>)]) -> PathBuf {
    let dir = tmp.join("imgs");
    std::fs::create_dir_all(&dir).unwrap();
    for (name, bytes) in files {
        std::fs::write(dir.join(name), bytes).unwrap();
    }
    dir
}

#[test]
fn embed_refuses_thin_images_and_skip_bad_skips_them() {
    let tmp = tempfile::tempdir().unwrap();
    let images = image_dir(
        tmp.path(),
        &[
            ("a_good.jpg", pacs_jpeg()),
            ("b_thin.png", thin_png(1, 100_000)),
            ("c_thin.jpg", jpeg_claiming(8, 65_500)),
        ],
    );
    let out = tmp.path().join("o.safetensors");
    let args = [
        "embed",
        "--device",
        "cpu",
        "--images",
        s(&images),
        "--out",
        s(&out),
    ];
    let o = fedclip(&args);
    let err = stderr(&o);
    assert!(!o.status.success());
    for want in ["b_thin.png", "224x22400000", "c_thin.jpg", "224x1834000"] {
        assert!(err.contains(want), "missing {want}: {err}");
    }
    assert!(!out.exists());
    let o = fedclip(&[&args[..], &["--skip-bad"]].concat());
    assert!(o.status.success(), "{}", stderr(&o));
    let bytes = std::fs::read(&out).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let meta = meta.metadata().clone().unwrap();
    assert_eq!(meta["skipped"], r#"["b_thin.png","c_thin.jpg"]"#);
}

/// Two domains, two classes, five copies of one image each; `extra` files added to d1/cat.
fn small_dataset(root: &Path, extra: &[(&str, Vec<u8>)]) {
    for d in ["d1", "d2"] {
        for c in ["cat", "dog"] {
            let dir = root.join(d).join(c);
            std::fs::create_dir_all(&dir).unwrap();
            for i in 0..5 {
                std::fs::write(dir.join(format!("{i}.jpg")), pacs_jpeg()).unwrap();
            }
        }
    }
    for (name, bytes) in extra {
        std::fs::write(root.join("d1/cat").join(name), bytes).unwrap();
    }
}

fn run_args(tmp: &Path, data: &Path) -> Vec<String> {
    [
        "run",
        "--device",
        "cpu",
        "--rounds",
        "1",
        "--data",
        s(data),
        "--cache-dir",
        s(&tmp.join("cache")),
        "--out",
        s(&tmp.join("out")),
    ]
    .iter()
    .map(|a| a.to_string())
    .collect()
}

fn run(args: &[String], extra: &[&str]) -> Output {
    let all: Vec<&str> = args
        .iter()
        .map(String::as_str)
        .chain(extra.iter().copied())
        .collect();
    fedclip(&all)
}

#[test]
fn run_refuses_a_thin_image_and_skip_bad_skips_it() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    small_dataset(&data, &[("thin.png", thin_png(1, 100_000))]);
    let args = run_args(tmp.path(), &data);
    let o = run(&args, &[]);
    let err = stderr(&o);
    assert!(!o.status.success());
    assert!(
        err.contains("thin.png") && err.contains("224x22400000"),
        "{err}"
    );
    let o = run(&args, &["--skip-bad"]);
    let err = stderr(&o);
    assert!(o.status.success(), "{err}");
    assert!(
        err.contains("warning: skipping") && err.contains("thin.png"),
        "{err}"
    );
    let summary = std::fs::read_to_string(tmp.path().join("out/summary.json")).unwrap();
    assert!(summary.contains("d1/cat/thin.png"), "{summary}");
}

#[test]
fn preprocessor_sizes_no_image_could_take_are_refused_before_reading_images() {
    for (json, want) in [
        (
            r#"{"size": {"shortest_edge": 1000000}, "crop_size": 30}"#,
            "1000000x1000000",
        ),
        (r#"{"size": 30, "crop_size": 100000}"#, "100000x100000"),
        (
            r#"{"size": 30, "crop_size": {"height": 30, "width": 100000}}"#,
            "30x100000",
        ),
    ] {
        let tmp = tempfile::tempdir().unwrap();
        let model = model_with_preprocessor(tmp.path(), json);
        let images = image_dir(tmp.path(), &[("a.jpg", pacs_jpeg())]);
        let out = tmp.path().join("o.safetensors");
        let t = Instant::now();
        let o = fedclip(&[
            "embed",
            "--device",
            "cpu",
            "--model",
            s(&model),
            "--images",
            s(&images),
            "--out",
            s(&out),
        ]);
        let err = stderr(&o);
        assert!(!o.status.success(), "{json}");
        assert!(
            err.contains(want) && err.contains("preprocessor_config.json"),
            "{json}: {err}"
        );
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "{json}: {:?}",
            t.elapsed()
        );
        assert!(!out.exists());
    }
}
