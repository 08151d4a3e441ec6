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
    std::fs::write(images.join("a_good.jpg"), pacs_image("photo_dog_056_0001.jpg")).unwrap();
    std::fs::write(images.join("b_bomb.png"), png_claiming(100_000, 100_000)).unwrap();
    std::fs::write(images.join("c_bomb.jpg"), jpeg_claiming(65_535, 65_535)).unwrap();
    let out = tmp.path().join("o.safetensors");
    let args = embed_args(&images, &out);
    let o = run_embed(&args, &[]);
    let err = stderr(&o);
    assert!(!o.status.success());
    // One error lists both bad files, each with its claimed size.
    for want in ["b_bomb.png", "100000x100000", "c_bomb.jpg", "65535x65535", "2 images"] {
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
